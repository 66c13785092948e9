"""The coordinator's configuration: identity, bind address, TLS and the allowed sites."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coordinator.baselines.config import BaselinesConfig
from coordinator.mixture.router_config import RouterRunConfig
from coordinator.policy.grpo_config import GRPORunConfig
from mor_secure.config import Section, TLSConfig, field, load_config


@dataclass
class ClientsSection(Section):
    allow: list[str] = field(help="Site names (SAN mor://client/SITE) allowed to join.", default_factory=list)
    quorum: int = field(1, help="Fewest answering sites for a scoring round (and the probe) to count.", ge=1)
    deadline_s: float = field(
        10.0, help="Seconds to wait for replies to one request before treating a site as failed for it.", gt=0
    )
    heartbeat_s: float = field(5.0, help="Heartbeat interval the coordinator asks agents for.", gt=0)
    peer_timeout_s: float = field(
        30.0,
        help="Drop an agent session silent this long (ZeroMQ reports no disconnects; heartbeats are the signal).",
        gt=0,
    )
    handshake_timeout_s: float = field(10.0, help="Drop a session whose TLS handshake and hello take longer.", gt=0)
    certificate_timeout_s: float = field(
        3.0,
        help="Drop a half-open session whose client sends no certificate "
        "this long after its ClientHello (a real agent needs one round "
        "trip).",
        gt=0,
    )
    max_pending_handshakes: int = field(
        64,
        help="Most half-open sessions at once; at the cap, the oldest one "
        "still without a certificate (of the busiest address) makes room.",
        ge=1,
    )
    max_pending_per_address: int = field(
        8,
        help="Most half-open sessions from one address; a new ClientHello "
        "from it replaces its oldest one without a certificate.",
        ge=1,
    )
    handshakes_per_s: float = field(
        20.0,
        help="New TLS sessions a second one address may open (token bucket); more are refused before any TLS work.",
        gt=0,
    )
    handshake_burst: int = field(40, help="Burst of new TLS sessions one address may open at once.", ge=1)
    refusal_window_s: float = field(
        60.0,
        help="Refused peers are written to the ledger one by one up to "
        "refusals_per_window per window; the rest as one summary entry.",
        gt=0,
    )
    refusals_per_window: int = field(
        20,
        help="Refusals recorded one by one per window (5 per peer at most); "
        "a flood costs one summary entry per window.",
        ge=1,
    )
    max_message_mb: int = field(
        16, help="Largest message accepted or sent, in MiB (a scoring batch with images).", ge=1
    )
    crypto_threads: int = field(2, help="Threads that decrypt large messages and run handshakes in parallel.", ge=1)


@dataclass
class PoolSection(Section):
    max_batch: int = field(
        64,
        help="Most items per scoring request; larger batches are split. Keep it at most "
        "the smallest [serve] max_batch of the sites.",
        ge=1,
    )
    parallel: int = field(4, help="Sub-batches of one large batch in flight at once.", ge=1)
    retries: int = field(
        2,
        help="Extra attempts, within one request's deadline, for a site that failed fast "
        "(disconnected, busy); a timeout is not retried.",
        ge=0,
    )
    backoff_s: float = field(0.2, help="Wait before the first retry; it doubles at each further retry.", ge=0)
    max_failures: int = field(
        3,
        help="Consecutive failures after which a site is put aside (circuit breaker); a timeout puts it aside at once.",
        ge=1,
    )
    cooldown_s: float = field(
        30.0,
        help="Seconds a site stays aside before one trial request; a site that "
        "reconnects with a verified report rejoins at once.",
        ge=0,
    )


@dataclass
class LedgerSection:
    path: Path | None = field(
        None,
        help="The privacy ledger (hash-chained JSON lines) of signed reports, "
        "scoring sessions and refusals; default privacy-ledger.jsonl beside "
        "this config.",
        path=True,
    )


@dataclass
class CoordinatorConfig:
    name: str = field(help="This coordinator's name; must match its certificate's SAN mor://coordinator/NAME.")
    tls: TLSConfig = field(help="TLS identity of the coordinator.")
    bind: str = field("tcp://0.0.0.0:7000", help="ZeroMQ endpoint the ROUTER binds; agents dial it.")
    clients: ClientsSection = field(help="Who may join and how long to wait for them.", default_factory=ClientsSection)
    grpo: GRPORunConfig = field(help="GRPO of the policy (`mor coordinator grpo`).", default_factory=GRPORunConfig)
    pool: PoolSection = field(help="Fan-out scoring: batching, retries, circuit breaker.", default_factory=PoolSection)
    ledger: LedgerSection = field(help="Where the privacy ledger is written.", default_factory=LedgerSection)
    router: RouterRunConfig = field(help="Router training (`mor coordinator router`).", default_factory=RouterRunConfig)
    baselines: BaselinesConfig = field(
        help="FedAvg and centralised reward baselines trained in process for the "
        "router's comparison table (simulation; off while data is empty).",
        default_factory=BaselinesConfig,
    )


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    """Read and validate coordinator.toml (the ledger defaults to privacy-ledger.jsonl beside it)."""
    config = load_config(CoordinatorConfig, path)
    if config.ledger.path is None:
        config.ledger.path = Path(path).resolve().parent / "privacy-ledger.jsonl"
    return config

"""The coordinator's configuration: identity, bind address, TLS and the allowed sites."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coordinator.grpo_config import GRPORunConfig
from mor_secure.config import TLSConfig, field, load_config


@dataclass
class ClientsSection:
    allow: list[str] = field(help="Site names (SAN mor://client/SITE) allowed to join.", default_factory=list)
    quorum: int = field(1, help="Fewest answering sites for a scoring round (and the probe) to count.")
    deadline_s: float = field(10.0, help="Seconds to wait for replies to one request before "
                                         "treating a site as failed for it.")
    heartbeat_s: float = field(5.0, help="Heartbeat interval the coordinator asks agents for.")
    peer_timeout_s: float = field(30.0, help="Drop an agent session silent this long (ZeroMQ reports no "
                                             "disconnects; heartbeats are the signal).")
    handshake_timeout_s: float = field(10.0, help="Drop a session whose TLS handshake and hello take longer.")
    max_pending_handshakes: int = field(64, help="Most half-open sessions at once; more are refused.")
    max_message_mb: int = field(16, help="Largest message accepted or sent, in MiB (a scoring batch with images).")
    crypto_threads: int = field(2, help="Threads that decrypt large messages and run handshakes in parallel.")


@dataclass
class CoordinatorConfig:
    name: str = field(help="This coordinator's name; must match its certificate's SAN mor://coordinator/NAME.")
    tls: TLSConfig = field(help="TLS identity of the coordinator.")
    bind: str = field("tcp://0.0.0.0:7000", help="ZeroMQ endpoint the ROUTER binds; agents dial it.")
    clients: ClientsSection = field(help="Who may join and how long to wait for them.", default_factory=ClientsSection)
    grpo: GRPORunConfig = field(help="GRPO of the policy (`mor coordinator grpo`).", default_factory=GRPORunConfig)


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    """Read and validate coordinator.toml."""
    return load_config(CoordinatorConfig, path)

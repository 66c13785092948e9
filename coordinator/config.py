"""The coordinator's configuration: identity, bind address, TLS and the allowed sites."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mor_secure.config import TLSConfig, field, load_config


@dataclass
class ClientsSection:
    allow: list[str] = field(help="Site names (SAN mor://client/SITE) allowed to join.", default_factory=list)
    quorum: int = field(1, help="Fewest answering sites for a scoring round (and the probe) to count.")
    deadline_s: float = field(10.0, help="Seconds to wait for replies to one request before "
                                         "treating a site as failed for it.")


@dataclass
class CoordinatorConfig:
    name: str = field(help="This coordinator's name; must match its certificate's SAN mor://coordinator/NAME.")
    tls: TLSConfig = field(help="TLS identity of the coordinator.")
    bind: str = field("tcp://0.0.0.0:7000", help="ZeroMQ endpoint the ROUTER binds; agents dial it.")
    clients: ClientsSection = field(help="Who may join and how long to wait for them.", default_factory=ClientsSection)


def load_coordinator_config(path: str | Path) -> CoordinatorConfig:
    """Read and validate coordinator.toml."""
    return load_config(CoordinatorConfig, path)

"""The one file that configures a site: TLS identity, coordinator, data, model, training,
privacy budget and serving policy (`mor client init` writes a commented copy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mor_secure.config import TLSConfig, field, load_config


@dataclass
class CoordinatorSection:
    endpoint: str = field(help="Where the agent dials out to, e.g. 'tcp://coordinator.example.org:7000'.")
    name: str = field(help="The coordinator's certificate name (SAN mor://coordinator/NAME) to expect.")


@dataclass
class DataSection:
    path: Path | None = field(None, help="Preference data: a client folder of the benchmark world or "
                                         "any local data set in the same schema.", path=True)


@dataclass
class ModelSection:
    family: str = field("dual-encoder", help="Reward-model family: 'qwen2-vl', 'llava' or 'dual-encoder'.")
    base: str = field("", help="Backbone: a local path or a hub id already in the local cache; may be "
                              "empty for families that build from scratch.")


@dataclass
class TrainSection:
    out: Path = field("reward-model", help="Folder of the trained reward model and its checkpoints.", path=True)


@dataclass
class PrivacySection:
    target_epsilon: float = field(4.0, help="Epsilon this training run may spend.")
    delta: float | None = field(None, help="DP delta; default 1/number of pairs, capped at 1e-5.")
    max_epsilon: float = field(8.0, help="Lifetime budget for this data set across all training runs, "
                                         "composed by the accountant.")


@dataclass
class ServeSection:
    allow_coordinators: list[str] = field(help="Coordinator names this agent answers; empty means the "
                                               "one named in [coordinator].", default_factory=list)
    max_batch: int = field(256, help="Largest number of items one scoring request may carry.")
    requests_per_minute: int = field(600, help="Scoring requests accepted per minute; more get an error reply.")


@dataclass
class ClientConfig:
    site: str = field(help="This institution's site name; must match the certificate's SAN mor://client/SITE.")
    tls: TLSConfig = field(help="TLS identity of this site.")
    coordinator: CoordinatorSection = field(help="The coordinator this agent dials.")
    data: DataSection = field(help="Preference data.", default_factory=DataSection)
    model: ModelSection = field(help="Reward-model architecture.", default_factory=ModelSection)
    train: TrainSection = field(help="Training hyper-parameters.", default_factory=lambda: TrainSection(out=Path("reward-model")))
    privacy: PrivacySection = field(help="Site privacy policy.", default_factory=PrivacySection)
    serve: ServeSection = field(help="Scoring-service policy.", default_factory=ServeSection)


def load_client_config(path: str | Path) -> ClientConfig:
    """Read and validate a site's client.toml."""
    return load_config(ClientConfig, path)

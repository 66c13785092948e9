"""The one file that configures a site: TLS identity, coordinator, data, model, training,
privacy budget and serving policy (`mor client init` writes a commented copy)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mor_secure.config import Section, TLSConfig, field, load_config
from mor_secure.rewards.config import ModelSection

GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")
"""How Opacus may compute per-pair gradients."""


@dataclass
class CoordinatorSection(Section):
    endpoint: str = field(help="Where the agent dials out to, e.g. 'tcp://coordinator.example.org:7000'.")
    name: str = field(help="The coordinator's certificate name (SAN mor://coordinator/NAME) to expect.")
    heartbeat_s: float = field(5.0, help="Seconds between heartbeats to the coordinator (it may ask for less).", gt=0)
    idle_timeout_s: float = field(
        30.0,
        help="Reconnect when the coordinator has been silent this long; "
        "scoring runs off the network thread, so it need not cover a job.",
        gt=0,
    )
    connect_timeout_s: float = field(
        10.0,
        help="Seconds a connection attempt may take up to the welcome; "
        "then retry with exponential back-off and jitter.",
        gt=0,
    )
    backoff_max_s: float = field(30.0, help="Longest wait between reconnection attempts.", gt=0)
    max_message_mb: int = field(
        16, help="Largest message accepted or sent, in MiB (a scoring batch with images).", ge=1
    )


@dataclass
class DataSection(Section):
    path: Path | None = field(
        None,
        help="Preference data: a save_to_disk folder (Dataset or DatasetDict), a "
        ".parquet file or JSON lines with image paths, in TRL's vision "
        "preference layout (conversational or plain strings).",
        path=True,
    )
    columns: dict[str, str] = field(
        help="Column names of your data set, as product name = your column, e.g. "
        '{prompt = "question", image = "picture"}; the product reads image, '
        "prompt, chosen, rejected (and domain where present).",
        default_factory=dict,
    )
    train_split: str = field("train", help="Split that DP training reads.")
    test_split: str = field(
        "test",
        help="Held-out split that `mor client eval` scores; a data set with one "
        "split holds out test_fraction of it under this name.",
    )
    test_fraction: float = field(
        0.1,
        help="Share of the questions held out for evaluation when the data set "
        "has one split (chosen from each question's content, so the same "
        "rows every time; training never reads them).",
        ge=0,
        lt=1,
    )
    max_pairs: int = field(
        0,
        help="Use only the first N training pairs (0 = all); for quick trials. "
        "The sample rate, delta and budget follow the pairs actually used.",
        ge=0,
    )
    max_image_pixels: int = field(
        40_000_000,
        help="Largest image (width x height) a row may hold; larger "
        "ones are refused from their header, before decoding.",
        ge=1,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.columns.items()):
            raise ValueError(f"columns must map names to column names (strings), got {self.columns!r}")


@dataclass
class TrainSection(Section):
    out: Path = field("reward-model", help="Folder of the trained reward model and its checkpoints.", path=True)
    epochs: int = field(
        16,
        help="Passes over the training pairs (steps = epochs / sample rate). With DP, many "
        "passes of large batches beat few passes of small ones at the same epsilon.",
        ge=1,
    )
    batch_size: int = field(
        256,
        help="Expected pairs per step; Poisson sampling varies the real size. Large "
        "batches shrink the DP noise per pair (measured: 256 beat 128 and 32).",
        ge=1,
    )
    lr: float = field(
        3e-3,
        help="AdamW learning rate (3e-3 suits full fine-tuning of small VLMs and the "
        "dual-encoder at the default batch).",
        gt=0,
        lt=math.inf,
    )
    weight_decay: float = field(0.0, help="AdamW weight decay.", ge=0, lt=math.inf)
    seed: int = field(0, help="Seed of initialisation, sampling and noise (reproducible runs).")
    checkpoint_every: int = field(50, help="Write a resumable checkpoint every N optimizer steps.", ge=1)
    grad_sample_mode: str = field(
        "hooks",
        help="How Opacus computes per-pair gradients: 'hooks' or 'functorch' (for layers without a hook).",
        choices=GRAD_SAMPLE_MODES,
    )
    device: str = field("auto", help="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'.")


@dataclass
class PrivacySection(Section):
    target_epsilon: float = field(
        4.0, help="Epsilon this training run may spend (at most 100; runs compose within max_epsilon)."
    )
    delta: float | None = field(
        None,
        help="DP delta, at most 1/number of training pairs; default 1/n capped "
        "at 1e-5. Fixed per data set by its first run.",
    )
    max_epsilon: float = field(
        8.0, help="Lifetime budget for this data set across all training runs, composed by the accountant; finite."
    )
    accountant: str = field(
        "prv", help="Privacy accountant: 'prv' (tight, default) or 'rdp'; fixed per data set by its first run."
    )
    max_grad_norm: float = field(1.0, help="Per-pair gradient clipping norm C (noise std = sigma * C).")
    ledger: Path | None = field(
        None,
        help="The site's privacy ledger (JSON lines, append-only); default "
        "DATA.privacy-ledger.jsonl beside [data].path. It must exist: "
        "`mor client init` starts one, `mor client budget --new-ledger` "
        "starts one explicitly; a missing ledger fails closed.",
        path=True,
    )

    def __post_init__(self) -> None:
        from mor_secure.privacy import check_privacy_settings

        super().__post_init__()
        check_privacy_settings(self.target_epsilon, self.max_epsilon, self.delta, self.accountant, self.max_grad_norm)


@dataclass
class ServeSection(Section):
    allow_coordinators: list[str] = field(
        help="Coordinator names this agent answers; empty means the one named in [coordinator].", default_factory=list
    )
    max_batch: int = field(256, help="Largest number of items one scoring request may carry.", ge=1)
    requests_per_minute: int = field(
        600,
        help="Scoring requests accepted per minute (a token bucket holding "
        "one minute's worth); more get an error reply.",
        ge=1,
    )
    max_pixels: int = field(
        2048 * 2048,
        help="Largest image (width x height) a request may carry; larger ones "
        "are refused from their header, before any pixel is decoded.",
        ge=1,
    )
    allow_no_dp: bool = field(
        False,
        help="Serve a model trained with --no-dp (epsilon = infinity). For "
        "measurements only: such a model carries no privacy guarantee.",
    )


@dataclass
class ClientConfig:
    site: str = field(help="This institution's site name; must match the certificate's SAN mor://client/SITE.")
    tls: TLSConfig = field(help="TLS identity of this site.")
    coordinator: CoordinatorSection = field(help="The coordinator this agent dials.")
    data: DataSection = field(help="Preference data.", default_factory=DataSection)
    model: ModelSection = field(help="Reward-model architecture.", default_factory=ModelSection)
    train: TrainSection = field(
        help="Training hyper-parameters.", default_factory=lambda: TrainSection(out=Path("reward-model"))
    )
    privacy: PrivacySection = field(help="Site privacy policy.", default_factory=PrivacySection)
    serve: ServeSection = field(help="Scoring-service policy.", default_factory=ServeSection)


def load_client_config(path: str | Path) -> ClientConfig:
    """Read and validate a site's client.toml."""
    return load_config(ClientConfig, path)

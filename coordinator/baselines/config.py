"""Settings of the in-process reward baselines: the [baselines] section of coordinator.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mor_secure.config import Section, field
from mor_secure.privacy import ACCOUNTANTS
from mor_secure.rewards.config import ModelSection


@dataclass
class BaselinesConfig(Section):
    """Which client data the FedAvg and centralised baselines simulate with, and how they train."""

    data: list[Path] = field(
        help="Client preference data folders, one per simulated client (the benchmark "
        "world's client-0, client-1 ...); empty = no baselines. A simulation: a real "
        "federation never ships these data to the coordinator.",
        default_factory=list,
        path=True,
    )
    split: str = field("train", help="Split of each client folder the baselines train on.")
    max_pairs: int = field(0, help="Use only the first N pairs of each client (0 = all); for quick trials.", ge=0)
    model: ModelSection = field(
        help="Reward-model architecture shared by every FedAvg client and the "
        "centralised model (same keys as a site's [model]).",
        default_factory=ModelSection,
    )
    rounds: int = field(20, help="FedAvg: communication rounds (parameters down, local steps, parameters up).", ge=1)
    local_steps: int = field(5, help="FedAvg: optimizer steps each client takes per round.", ge=1)
    epochs: int = field(
        10,
        help="Centralised: passes over the pooled pairs (the default matches FedAvg's "
        "default compute: 20 rounds x 5 steps is about 10 local epochs of 340 pairs).",
        ge=1,
    )
    batch_size: int = field(32, help="Expected pairs per step; Poisson sampling varies the real size under DP.", ge=1)
    lr: float = field(1e-2, help="AdamW learning rate (each FedAvg client keeps its own moments, never sent).", gt=0)
    weight_decay: float = field(0.0, help="AdamW weight decay.", ge=0)
    dp: bool = field(
        False,
        help="Train every client (and the centralised model) with DP-SGD, one pair = one "
        "sample, noise planned for target_epsilon over all its steps.",
    )
    target_epsilon: float = field(4.0, help="DP: epsilon each client's data (or the pooled data) may spend.", gt=0)
    delta: float | None = field(
        None, help="DP delta; default 1/number of pairs of that data set, capped at 1e-5.", gt=0, lt=1
    )
    accountant: str = field("prv", help="DP accountant: 'prv' or 'rdp'.", choices=ACCOUNTANTS)
    max_grad_norm: float = field(1.0, help="DP: per-pair gradient clipping norm.", gt=0)
    seed: int = field(0, help="Seed of initialisation (shared by all clients), sampling and noise.")
    device: str = field("cpu", help="'cpu', 'cuda[:N]' or 'auto' (CUDA when present).")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data = [Path(p) for p in self.data]

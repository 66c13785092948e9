"""Settings of `mor coordinator router`: the [router] section of coordinator.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coordinator.mixture.calibration import METHODS as CALIBRATIONS
from mor_secure.config import Section, field

DEFENCES = ("none", "agreement")
"""Values of [router] defence: fuse every site, or only the sites that agree with the labelled pairs."""


@dataclass
class RouterRunConfig(Section):
    """Which labelled pairs, which reference policy for features, how to train, where to write."""

    policy: str = field(
        "",
        help="The reference policy whose frozen, mean-pooled hidden states are the "
        "router's features: a saved model folder or a hub id in the local cache.",
    )
    data: Path | None = field(
        None,
        help="The coordinator's labelled pairs: `server/router` of the benchmark "
        "world, or any preference data set in the same schema.",
        path=True,
    )
    train_split: str = field("train", help="Split the calibration and the router are fitted on.")
    test_split: str = field("test", help="Held-out split the accuracy table is computed on.")
    max_pairs: int = field(0, help="Use only the first N pairs of each split (0 = all); for quick trials.", ge=0)
    out: Path = field(
        "router-run",
        help="Run folder: mixture/ (router, calibration), the score cache (scores/) and report.json.",
        path=True,
    )
    wait_s: float = field(
        30.0,
        help="Seconds to wait for every allowed site before fetching scores (at least [clients] quorum must be live).",
        ge=0,
    )
    calibration: str = field(
        "zscore", help="Per-site score calibration: 'zscore' or 'robust' (median/IQR).", choices=CALIBRATIONS
    )
    epochs: int = field(100, help="Passes over the training pairs.", ge=1)
    lr: float = field(1e-2, help="AdamW learning rate of the router.", gt=0)
    hidden: int = field(64, help="Width of the gating MLP's hidden layer.", ge=1)
    temperature: float = field(1.0, help="Softmax temperature T of the routing weights.", gt=0)
    drop_prob: float = field(
        0.2,
        help="Chance of hiding each site per pair while training, so the router "
        "degrades gracefully when a site is offline.",
        ge=0,
        lt=1,
    )
    seed: int = field(0, help="Seed of the router's initialisation and batches.")
    defence: str = field(
        "none",
        help="Poisoned-client defence: 'none', or 'agreement' to train and fuse only "
        "the sites whose calibrated scores agree with the labelled training "
        "pairs better than trust_threshold (trust report in the ledger).",
        choices=DEFENCES,
    )
    trust_threshold: float = field(
        0.55,
        help="Pairwise accuracy (0.5 = chance) that a site's lower 95% bound "
        "on the training pairs must exceed to be trusted (defence on).",
        ge=0,
        lt=1,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.out = Path(self.out)

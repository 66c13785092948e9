"""Settings of `mor coordinator router`: the [router] section of coordinator.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mor_secure.config import field

DEFENCES = ("none", "agreement")
"""Values of [router] defence: fuse every site, or only the sites that agree with the labelled pairs."""


@dataclass
class RouterRunConfig:
    """Which labelled pairs, which reference policy for features, how to train, where to write."""

    policy: str = field("", help="The reference policy whose frozen, mean-pooled hidden states are the "
                                 "router's features: a saved model folder or a hub id in the local cache.")
    data: Path | None = field(None, help="The coordinator's labelled pairs: `server/router` of the benchmark "
                                         "world, or any preference data set in the same schema.", path=True)
    train_split: str = field("train", help="Split the calibration and the router are fitted on.")
    test_split: str = field("test", help="Held-out split the accuracy table is computed on.")
    max_pairs: int = field(0, help="Use only the first N pairs of each split (0 = all); for quick trials.")
    out: Path = field("router-run", help="Run folder: mixture/ (router, calibration), the score cache "
                                         "(scores/) and report.json.", path=True)
    wait_s: float = field(30.0, help="Seconds to wait for every allowed site before fetching scores "
                                     "(at least [clients] quorum must be live).")
    calibration: str = field("zscore", help="Per-site score calibration: 'zscore' or 'robust' (median/IQR).")
    epochs: int = field(100, help="Passes over the training pairs.")
    lr: float = field(1e-2, help="AdamW learning rate of the router.")
    hidden: int = field(64, help="Width of the gating MLP's hidden layer.")
    temperature: float = field(1.0, help="Softmax temperature T of the routing weights.")
    drop_prob: float = field(0.2, help="Chance of hiding each site per pair while training, so the router "
                                       "degrades gracefully when a site is offline.")
    seed: int = field(0, help="Seed of the router's initialisation and batches.")
    defence: str = field("none", help="Poisoned-client defence: 'none', or 'agreement' to train and fuse only "
                                      "the sites whose calibrated scores agree with the labelled training "
                                      "pairs better than trust_threshold (trust report in the ledger).")
    trust_threshold: float = field(0.55, help="Pairwise accuracy (0.5 = chance) that a site's lower 95% bound "
                                              "on the training pairs must exceed to be trusted (defence on).")

    def __post_init__(self) -> None:
        if self.max_pairs < 0 or self.epochs < 1 or self.hidden < 1:
            raise ValueError("[router] max_pairs must be >= 0, epochs and hidden >= 1")
        if not 0 <= self.drop_prob < 1 or self.temperature <= 0 or self.lr <= 0 or self.wait_s < 0:
            raise ValueError("[router] drop_prob must be in [0, 1); temperature and lr > 0; wait_s >= 0")
        if self.defence not in DEFENCES:
            raise ValueError(f"[router] defence = {self.defence!r} is not known; use one of "
                             f"{', '.join(repr(d) for d in DEFENCES)}")
        if not 0 <= self.trust_threshold < 1:
            raise ValueError(f"[router] trust_threshold must lie in [0, 1) (0.5 = chance), "
                             f"got {self.trust_threshold!r}")
        self.out = Path(self.out)

"""In-process reward baselines behind the fusion interface: a FedAvg reward model (parameter sharing,
simulated in one process) and a centralised reward model on pooled data (an upper bound, not
federated). Each is a ``RewardFusion``, so ``reward_callable`` and GRPO use it unchanged; importing
the package registers the GRPO reward names ``fedavg`` and ``centralised``."""

from __future__ import annotations

from coordinator.baselines import registration  # noqa: F401  (registers the GRPO reward names)
from coordinator.baselines.centralised import train_centralised
from coordinator.baselines.compare import baseline_accuracies
from coordinator.baselines.fedavg import FedAvg, RoundRecord, train_fedavg
from coordinator.baselines.strategy import ModelReward
from coordinator.baselines_config import BaselinesConfig

__all__ = [
    "BaselinesConfig",
    "FedAvg",
    "ModelReward",
    "RoundRecord",
    "baseline_accuracies",
    "train_centralised",
    "train_fedavg",
]

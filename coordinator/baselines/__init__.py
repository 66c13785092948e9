"""In-process reward baselines behind the fusion interface: a FedAvg reward model (parameter sharing,
simulated in one process) and a centralised reward model on pooled data (an upper bound, not
federated). Each is a ``RewardFusion``, so ``reward_callable`` and GRPO use it unchanged.

Names are resolved lazily, so reading coordinator.toml's [baselines] section never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"BaselinesConfig": "config", "FedAvg": "fedavg", "RoundRecord": "fedavg", "train_fedavg": "fedavg",
            "train_centralised": "centralised", "ModelReward": "strategy", "baseline_accuracies": "compare"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

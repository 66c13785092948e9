"""Reward-model families and their registry: ``build_reward_model`` for training, ``load_reward_model``
for serving a saved folder (safetensors + JSON, never pickle). Shared by a site's training and the
coordinator's in-process baselines.

Names are resolved lazily, so reading a config's [model] section (``mor_secure.rewards.config``)
never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RewardModel": "base",
    "bradley_terry_loss": "base",
    "FAMILIES": "registry",
    "build_reward_model": "registry",
    "load_reward_model": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

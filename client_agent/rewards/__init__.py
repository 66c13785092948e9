"""Reward-model families and their registry: ``build_reward_model`` for training, ``load_reward_model``
for serving a saved folder (safetensors + JSON, never pickle)."""

from __future__ import annotations

from client_agent.rewards.base import RewardModel, bradley_terry_loss
from client_agent.rewards.registry import FAMILIES, build_reward_model, load_reward_model

__all__ = ["FAMILIES", "RewardModel", "bradley_terry_loss", "build_reward_model", "load_reward_model"]

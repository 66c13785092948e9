"""Centralised reward model: one model trained on the POOLED pairs of every client. Not federated
and not possible without moving every site's data: an upper bound for the federated rewards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordinator.baselines.config import BaselinesConfig
from coordinator.baselines.data import dp_settings, load_client_data
from coordinator.baselines.local import LocalTrainer
from coordinator.baselines.strategy import ModelReward
from mor_secure.logs import get_logger
from mor_secure.rewards import build_reward_model
from mor_secure.rewards.training import resolve_device, steps_per_epoch

log = get_logger("coordinator.centralised")

LABEL = "centralised (upper bound, not federated)"


def train_centralised(config: BaselinesConfig, client_data: Sequence[Any] | None = None) -> ModelReward:
    """Train one model for [baselines] epochs on the concatenation of every client's pairs."""
    import datasets

    parts = list(client_data) if client_data is not None else load_client_data(config)
    pooled = datasets.concatenate_datasets(parts)
    steps = config.epochs * steps_per_epoch(len(pooled), config.batch_size)
    trainer = LocalTrainer(
        build_reward_model(config.model, seed=config.seed),
        pooled,
        total_steps=steps,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed + 1,
        device=resolve_device(config.device),
        dp=dp_settings(config),
    )
    loss = trainer.train(steps)
    log.info("centralised model trained", extra={"pairs": len(pooled), "steps": steps, "loss": round(loss, 4)})
    record = {
        "kind": "centralised",
        "label": LABEL,
        "family": config.model.family,
        "pairs": len(pooled),
        "steps": steps,
        "final_loss": loss,
        "dp": config.dp,
        "epsilon": trainer.epsilon(),
        "delta": trainer.delta,
        "noise_multiplier": trainer.noise_multiplier,
    }
    model = build_reward_model(config.model, seed=config.seed)  # a clean copy, without Opacus' hooks
    model.load_saved_state_dict(trainer.model.saved_state_dict())
    return ModelReward(model, record)

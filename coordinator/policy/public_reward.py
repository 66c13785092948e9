"""A reward model pretrained on public pairs without DP (public data costs no privacy): a site's head start
before its private pairs, as the VLM families' public backbones are. Sites point ``[model] base`` at it.

torch is imported inside the functions, so the command line reads ``DEFAULT_LR`` without loading it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mor_secure.errors import BadInput
from mor_secure.logs import get_logger

if TYPE_CHECKING:
    from mor_secure.rewards import RewardModel

log = get_logger("coordinator.policy.public_reward")

DEFAULT_LR = 1e-3
"""AdamW learning rate of public pretraining. Chosen on fresh public pairs (a public seed no model saw): the
dual-encoder at 1e-3 ranks 93.6-95.8% of them right, at 3e-3 81.6-91.1%, its loss stuck at 0.15-0.27 (chart
pairs at 67% in one seed of three)."""


def pretrain_reward(
    model: RewardModel,
    pairs: Any,
    *,
    epochs: int = 16,
    batch_size: int = 32,
    lr: float = DEFAULT_LR,
    weight_decay: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place on ``pairs`` (image, prompt, chosen, rejected); returns each epoch's mean loss."""
    from tqdm.auto import trange

    from coordinator.baselines.local import LocalTrainer
    from mor_secure.rewards.training import steps_per_epoch

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise BadInput(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    per_epoch = steps_per_epoch(len(pairs), batch_size)
    trainer = LocalTrainer(
        model, pairs, total_steps=epochs * per_epoch, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed
    )
    losses = []
    for epoch in trange(epochs, desc="public pretraining", unit="epoch", disable=not progress):
        losses.append(trainer.train(per_epoch))
        log.info("public pretraining epoch", extra={"epoch": epoch + 1, "loss": round(losses[-1], 4)})
    model.eval()
    return losses


def save_public_reward(
    public_dir: Path,
    out_dir: Path,
    *,
    family: str = "dual-encoder",
    width: int = 128,
    epochs: int = 16,
    batch_size: int = 32,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Pairs from the public rows in ``public_dir``, a fresh ``family`` model pretrained on them, saved to
    ``out_dir``; returns ``{"pairs", "losses"}``."""
    from datasets import load_from_disk

    from mor_secure.data.public_pairs import public_pairs
    from mor_secure.rewards import build_reward_model
    from mor_secure.rewards.config import ModelSection

    pairs = public_pairs(load_from_disk(str(public_dir)), seed=seed)
    model = build_reward_model(ModelSection(family=family, width=width), seed=seed)
    losses = pretrain_reward(model, pairs, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    model.save(out_dir)
    return {"pairs": len(pairs), "losses": losses}

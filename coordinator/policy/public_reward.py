"""A reward model pretrained on public pairs without DP (public data costs no privacy): a site's head start
before its private pairs. Sites point ``[model] base`` at it. A VLM family's public reward model starts from
the public pretrained VLM (its ``base``) and adds what the VLM never learnt: ranking answers.

torch is imported inside the functions, so the command line reads the defaults without loading it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mor_secure.errors import BadInput
from mor_secure.logs import get_logger

if TYPE_CHECKING:
    from mor_secure.rewards import RewardModel

log = get_logger("coordinator.policy.public_reward")


@dataclass(frozen=True)
class PublicRewardDefaults:
    """Epochs and AdamW learning rate of public pretraining for one kind of family."""

    epochs: int
    lr: float


DUAL_ENCODER = PublicRewardDefaults(epochs=16, lr=1e-3)
"""From scratch, so many passes. lr chosen on fresh public pairs (a public seed no model saw): at 1e-3 the
dual-encoder ranks 93.6-95.8% of them right, at 3e-3 81.6-91.1%, its loss stuck at 0.15-0.27."""
VLM = PublicRewardDefaults(epochs=4, lr=3e-4)
"""From a public pretrained VLM (its language model fully trained, vision frozen, as at the sites): a few passes.
lr chosen on fresh public pairs (1,200, a public seed no model saw) with the tiny Qwen2-VL: 3e-4 ranks 77.7% /
74.7% of them right (two seeds), 1e-3 75.2%, 1e-4 73.0% (the tiny VLM does not read charts, which caps all)."""


def public_reward_defaults(family: str) -> PublicRewardDefaults:
    """The defaults for ``family``: the dual-encoder's, or the VLM families'."""
    return DUAL_ENCODER if family == "dual-encoder" else VLM


def pretrain_reward(
    model: RewardModel,
    pairs: Any,
    *,
    epochs: int = DUAL_ENCODER.epochs,
    batch_size: int = 32,
    lr: float = DUAL_ENCODER.lr,
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
    base: str = "",
    width: int = 128,
    epochs: int | None = None,
    batch_size: int = 32,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Pairs from the public rows in ``public_dir``, a fresh ``family`` model (on the public VLM ``base`` for
    the VLM families) pretrained on them, saved to ``out_dir``; epochs and lr default to the family's
    (:func:`public_reward_defaults`). Returns ``{"pairs", "losses"}``."""
    from datasets import load_from_disk

    from mor_secure.data.public_pairs import public_pairs
    from mor_secure.rewards import build_reward_model
    from mor_secure.rewards.config import ModelSection

    defaults = public_reward_defaults(family)
    pairs = public_pairs(load_from_disk(str(public_dir)), seed=seed)
    model = build_reward_model(ModelSection(family=family, base=base, width=width), seed=seed)
    losses = pretrain_reward(
        model,
        pairs,
        epochs=defaults.epochs if epochs is None else epochs,
        batch_size=batch_size,
        lr=defaults.lr if lr is None else lr,
        seed=seed,
        progress=progress,
    )
    model.save(out_dir)
    return {"pairs": len(pairs), "losses": losses}

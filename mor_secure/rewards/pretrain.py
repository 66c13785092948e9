"""Public pretraining of a reward model: Bradley-Terry on public pairs, without DP (public data costs no
privacy). A site then sets ``[model] base`` to the saved folder and trains on its private pairs from there."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import trange

from mor_secure.logs import get_logger
from mor_secure.rewards.base import RewardModel
from mor_secure.rewards.training import PairRows, index_loader, pair_step

log = get_logger("rewards.pretrain")


def pretrain_reward(model: RewardModel, pairs: Any, *, epochs: int = 8, batch_size: int = 32, lr: float = 3e-3,
                    seed: int = 0, progress: bool = True) -> list[float]:
    """Train ``model`` in place on ``pairs`` (image, prompt, chosen, rejected); returns each epoch's mean loss."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    rows = PairRows(pairs, model)
    loader = index_loader(len(rows), batch_size, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses: list[float] = []
    for epoch in trange(epochs, desc="public pretraining", unit="epoch", disable=not progress):
        steps = [pair_step(model, optimizer, rows, idx.tolist(), device, private=False) for (idx,) in loader]
        losses.append(sum(s for s in steps if s is not None) / max(len(steps), 1))
        log.info("public pretraining epoch", extra={"epoch": epoch + 1, "loss": round(losses[-1], 4)})
    model.eval()
    return losses

"""One reward model trained on one set of preference pairs a few steps at a time, with DP-SGD if
asked: a FedAvg client between two rounds, or the centralised model in one go.

Built on the same primitives as a site's training (``mor_secure.rewards.training``), so a baseline
spends privacy exactly as a site would: one sample = one pair, noise planned for every step the
trainer will take, epsilon from the accountant's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mor_secure.privacy import AccountantHistory, default_delta, epsilon, plan_noise
from mor_secure.rewards import RewardModel
from mor_secure.rewards.training import PairRows, endless, index_loader, make_private, pair_step, steps_per_epoch


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD settings of one trainer: the budget its whole run may spend."""

    target_epsilon: float
    delta: float | None = None
    accountant: str = "prv"
    max_grad_norm: float = 1.0


class LocalTrainer:
    """AdamW (DP-SGD under Opacus when ``dp`` is set) on ``data``'s pairs for up to ``total_steps`` steps."""

    def __init__(
        self,
        model: RewardModel,
        data: Any,
        *,
        total_steps: int,
        batch_size: int,
        lr: float,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dp: DPSettings | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).train()
        self.rows = PairRows(data, model)
        if len(self.rows) < 2:
            raise ValueError(f"a trainer needs at least 2 pairs, got {len(self.rows)}")
        self.total_steps, self.steps, self.dp = total_steps, 0, dp
        self.sample_rate = 1.0 / steps_per_epoch(len(self.rows), batch_size)
        self.delta = dp.delta if dp and dp.delta is not None else default_delta(len(self.rows))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        loader = index_loader(len(self.rows), batch_size, torch.Generator().manual_seed(seed))
        self.noise_multiplier, self.engine = 0.0, None
        if dp is None:
            self.module, self.optimizer = model, optimizer
        else:
            self.noise_multiplier = plan_noise(
                dp.target_epsilon, self.delta, self.sample_rate, total_steps, accountant=dp.accountant
            )
            self.engine, self.module, optimizer, loader = make_private(
                model,
                optimizer,
                loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=dp.max_grad_norm,
                accountant=dp.accountant,
                noise_generator=torch.Generator(device=self.device).manual_seed(seed + 1),
            )
            self.optimizer = optimizer
        self._batches = endless(loader)

    @property
    def n_pairs(self) -> int:
        return len(self.rows)

    def train(self, steps: int) -> float:
        """Take ``steps`` optimizer steps; returns their mean loss (NaN if every batch was empty)."""
        if self.steps + steps > self.total_steps:
            raise RuntimeError(f"{self.steps + steps} steps exceed the {self.total_steps} the noise was planned for")
        self.model.train()
        losses = []
        for _ in range(steps):
            loss = pair_step(
                self.module, self.optimizer, self.rows, next(self._batches), self.device, private=self.dp is not None
            )
            if loss is not None:
                losses.append(loss)
            self.steps += 1
        return sum(losses) / len(losses) if losses else float("nan")

    @property
    def history(self) -> AccountantHistory:
        """The steps taken so far as an accountant history (noise 0 without DP: epsilon is infinite)."""
        if self.engine is not None:
            return AccountantHistory(self.engine.accountant.history)
        return AccountantHistory([(0.0, self.sample_rate, self.steps)])

    def epsilon(self) -> float:
        """Epsilon spent so far at ``self.delta`` (inf without DP)."""
        return epsilon(self.history, self.delta, self.dp.accountant if self.dp else "prv")

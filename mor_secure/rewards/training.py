"""Pair-level training primitives shared by a site's DP training and the coordinator's in-process
baselines (FedAvg, centralised): decoded pair rows, Opacus wrapping in which one DP sample is one
preference PAIR, the per-pair gradient guard and the Bradley-Terry optimizer step.

One code path for both sides keeps the accounting identical: the sample rate is exactly what
Opacus derives from the loader (1 / steps per epoch) and every step, even on an empty Poisson
batch, is counted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from mor_secure.rewards.base import RewardModel, bradley_terry_loss


class PairRows:
    """Preference pairs (image, prompt, chosen, rejected) decoded once; ``batch`` encodes some for a model."""

    def __init__(self, data: Any, model: RewardModel) -> None:
        self.images = list(data["image"])
        self.prompts, self.chosen, self.rejected = list(data["prompt"]), list(data["chosen"]), list(data["rejected"])
        self.model = model

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
        """The model's ``encode_pairs`` tensors of the pairs ``idx``, on ``device``."""
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        batch = self.model.encode_pairs(pick(self.images), pick(self.prompts), pick(self.chosen), pick(self.rejected))
        return {k: v.to(device) for k, v in batch.items()}


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else CPU; any other name goes to torch as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def steps_per_epoch(n_pairs: int, batch_size: int) -> int:
    """Optimizer steps per pass over ``n_pairs``; the Poisson sample rate is its inverse (as in Opacus)."""
    return math.ceil(n_pairs / min(batch_size, n_pairs))


def index_loader(n_pairs: int, batch_size: int, generator: torch.Generator) -> DataLoader:
    """Shuffled batches of pair indices (``make_private`` turns it into Poisson sampling)."""
    return DataLoader(
        TensorDataset(torch.arange(n_pairs)), batch_size=min(batch_size, n_pairs), shuffle=True, generator=generator
    )


def make_private(
    model: RewardModel,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: str = "prv",
    grad_sample_mode: str = "hooks",
    noise_generator: torch.Generator | None = None,
) -> tuple[Any, torch.nn.Module, torch.optim.Optimizer, DataLoader]:
    """Opacus DP-SGD over pairs: (engine, module, optimizer, Poisson loader) with per-pair clipping.

    Refuses a loader whose sampling differs from ``1 / steps_per_epoch``, which the noise was planned for.
    """
    from opacus import PrivacyEngine

    planned_steps = len(loader)
    engine = PrivacyEngine(accountant=accountant)
    module, optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=grad_sample_mode,
        noise_generator=noise_generator,
    )
    if len(private_loader) != planned_steps or abs(private_loader.sample_rate - 1 / planned_steps) > 1e-12:
        raise RuntimeError(
            f"Opacus samples at {private_loader.sample_rate} with {len(private_loader)} steps "
            f"per epoch; the plan assumed {1 / planned_steps} and {planned_steps}"
        )
    # Opacus' hooks on the first trainable layer find inputs that need no gradient: expected, not a fault.
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
    return engine, module, optimizer, private_loader


def check_pair_grad_samples(module: torch.nn.Module, n_pairs: int) -> None:
    """Guard: every per-sample gradient has one row per PAIR (a [2B] flattening makes epsilon wrong)."""
    for name, p in module.named_parameters():
        if p.requires_grad:
            grad_sample = p.grad_sample  # type: ignore[attr-defined]  # set by Opacus' hooks
            rows = grad_sample.shape[0] if torch.is_tensor(grad_sample) else None
            if rows != n_pairs:
                raise RuntimeError(
                    f"per-sample gradient of {name} has {rows} rows for {n_pairs} pairs: "
                    "one DP sample must be one preference pair"
                )


def pair_step(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rows: PairRows,
    idx: Sequence[int],
    device: torch.device,
    *,
    private: bool,
) -> float | None:
    """One Bradley-Terry step on the pairs ``idx``; returns the loss (None for an empty batch).

    Under DP the per-pair gradients are checked, and an empty Poisson batch still takes a
    pure-noise step (the accountant counts it); without DP an empty batch is skipped.
    """
    optimizer.zero_grad(set_to_none=True)
    if len(idx):
        chosen, rejected = module(**rows.batch(idx, device))
        loss = bradley_terry_loss(chosen, rejected)
        loss.backward()
        if private:
            check_pair_grad_samples(module, len(idx))
        optimizer.step()
        return float(loss.detach())
    if private:
        for p in module.parameters():
            if p.requires_grad:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)  # type: ignore[attr-defined]
        optimizer.step()
    return None


def endless(loader: DataLoader) -> Iterator[list[int]]:
    """Batches of pair indices from ``loader``, epoch after epoch (a local trainer draws a few per round)."""
    while True:
        for (idx,) in loader:
            yield idx.tolist()

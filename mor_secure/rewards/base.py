"""The reward-model interface every family implements: pair forward for DP training, scoring for
serving, and a safetensors + JSON folder format (never pickle).

One DP sample is one preference PAIR: ``forward`` takes a batch of B pairs whose tensors all have
leading dimension B and returns (chosen_scores, rejected_scores), each of shape [B]. Families run
the chosen and the rejected half as separate calls inside one forward, so Opacus' per-sample
gradients accumulate per pair (batch B), never per completion (2B).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

CONFIG_NAME = "reward_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = 1

Batch = dict[str, torch.Tensor]
Text = str | Sequence[dict[str, Any]]
"""A prompt or completion: plain text or conversational messages (TRL format)."""


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected) over the pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


class RewardModel(nn.Module):
    """A scalar reward r(image, prompt, completion) trained on preference pairs.

    Subclasses set ``family`` and keep the constructor's keyword arguments in ``self.spec``
    (JSON-safe), so that ``save``/``load_reward_model`` rebuild the same module.
    """

    family: ClassVar[str]

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)

    @abstractmethod
    def encode(self, images: Sequence[Image.Image], prompts: Sequence[Text], completions: Sequence[Text]) -> Batch:
        """Tensors (leading dim N) for N (image, prompt, completion) triples."""

    @abstractmethod
    def score_batch(self, batch: Batch) -> torch.Tensor:
        """Scores [N] of an ``encode`` batch."""

    def encode_pairs(
        self, images: Sequence[Image.Image], prompts: Sequence[Text], chosen: Sequence[Text], rejected: Sequence[Text]
    ) -> Batch:
        """One batch of B pairs: the ``encode`` tensors of each half, keys prefixed chosen_/rejected_."""
        halves = {"chosen": self.encode(images, prompts, chosen), "rejected": self.encode(images, prompts, rejected)}
        return {f"{half}_{k}": v for half, batch in halves.items() for k, v in batch.items()}

    def forward(self, **pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen_scores, rejected_scores), each [B], for an ``encode_pairs`` batch."""
        halves: dict[str, dict[str, torch.Tensor]] = {"chosen": {}, "rejected": {}}
        for key, value in pairs.items():
            half, _, name = key.partition("_")
            halves[half][name] = value
        return self.score_batch(halves["chosen"]), self.score_batch(halves["rejected"])

    @torch.no_grad()
    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[Text], completions: Sequence[Text], batch_size: int = 32
    ) -> list[float]:
        """Scores of N triples, in order, computed in eval mode in chunks of ``batch_size``."""
        if not len(images) == len(prompts) == len(completions):
            raise ValueError(
                f"images, prompts and completions differ in length: {len(images)}, {len(prompts)}, {len(completions)}"
            )
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        scores: list[float] = []
        try:
            for start in range(0, len(images), batch_size):
                stop = start + batch_size
                batch = self.encode(images[start:stop], prompts[start:stop], completions[start:stop])
                out = self.score_batch({k: v.to(device) for k, v in batch.items()})
                scores.extend(out.float().cpu().tolist())
        finally:
            self.train(was_training)
        return scores

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a saved model carries: every trainable parameter (adapters and head for LoRA)."""
        return {name: p.detach().cpu().contiguous().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_saved_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``saved_state_dict`` output; the key sets and shapes must match exactly."""
        own = dict(self.named_parameters())
        expected = {n for n, p in own.items() if p.requires_grad}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"weights do not fit this {self.family} model: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(
                        f"weight {name} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}"
                    )
                own[name].copy_(tensor)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``model.safetensors`` and ``reward_config.json`` into ``out_dir``; returns the weights path."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        weights = out / WEIGHTS_NAME
        save_file(self.saved_state_dict(), str(weights), metadata={"family": self.family})
        config = {"format": FORMAT, "family": self.family, "spec": self.spec, "weights": WEIGHTS_NAME}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return weights

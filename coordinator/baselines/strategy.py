"""``ModelReward``: a fusion strategy that scores in process with one reward model the coordinator
holds (a FedAvg or a centralised baseline), so ``reward_callable`` and GRPO use it unchanged.

Saved as the reward-model folder format (model.safetensors + reward_config.json) plus
``baseline.json``: what the model is (its label says whether it is federated) and how it was trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from coordinator.mixture.fusion import ClientScores, RewardFusion, ScoreItem
from coordinator.mixture.router import pairwise_wins
from mor_secure.errors import BadInput
from mor_secure.rewards import RewardModel, load_reward_model

RECORD_NAME = "baseline.json"
RECORD_FORMAT = "mor-baseline"


class ModelReward(RewardFusion):
    """One in-process reward model's score per item; the clients' scores are never asked for."""

    uses_client_scores = False
    sites = ()

    def __init__(self, model: RewardModel, record: dict[str, Any], *, batch_size: int = 32) -> None:
        if not isinstance(record.get("label"), str):
            raise ValueError("a baseline record needs a 'label' saying what the model is")
        self.model, self.record, self.batch_size = model.eval(), record, batch_size

    @property
    def label(self) -> str:
        """How tables name this reward, e.g. 'centralised (upper bound, not federated)'."""
        return self.record["label"]

    def fuse(self, items: Sequence[ScoreItem], client_scores: ClientScores | None = None) -> list[float | None]:
        if not items:
            return []
        scores = self.model.score(
            [it.image for it in items],
            [it.prompt for it in items],
            [it.completion for it in items],
            batch_size=self.batch_size,
        )
        return [s if math.isfinite(s) else None for s in scores]

    def pairwise_accuracy(self, rows: Any) -> float:
        """Share of ``rows``' pairs (image, prompt, chosen, rejected) whose chosen answer scores higher
        (ties count half), the rule the router's table uses."""
        images, prompts = list(rows["image"]), list(rows["prompt"])
        chosen = self.model.score(images, prompts, list(rows["chosen"]), batch_size=self.batch_size)
        rejected = self.model.score(images, prompts, list(rows["rejected"]), batch_size=self.batch_size)
        return pairwise_wins(torch.tensor(chosen) - torch.tensor(rejected))

    def save(self, out_dir: str | Path) -> Path:
        """The reward-model folder plus ``baseline.json``; returns the folder."""
        out = Path(out_dir)
        self.model.save(out)
        record = {"format": RECORD_FORMAT, **self.record}
        (out / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, in_dir: str | Path) -> ModelReward:
        """Read a folder written by ``save`` (safetensors + JSON; never pickle)."""
        folder = Path(in_dir)
        try:
            record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadInput(
                f"{folder / RECORD_NAME}: missing or not JSON ({exc}); pass a folder written by "
                "a FedAvg or centralised baseline"
            ) from None
        if not isinstance(record, dict) or record.pop("format", None) != RECORD_FORMAT:
            raise BadInput(f"{folder / RECORD_NAME}: not a baseline record (format {RECORD_FORMAT!r})")
        return cls(load_reward_model(folder), record)

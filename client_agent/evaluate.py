"""Held-out pairwise accuracy of a saved reward model: the share of pairs where the chosen answer
scores above the rejected one, overall and per domain (evaluation is post-processing: no privacy cost)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mor_secure.rewards import RewardModel, load_reward_model


@dataclass
class EvalResult:
    """Pairwise accuracy overall and per domain, with the number of pairs behind each."""

    accuracy: float
    pairs: int
    per_domain: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "pairs": self.pairs, "per_domain": self.per_domain}


def pairwise_accuracy(model: RewardModel, data, *, batch_size: int = 32) -> EvalResult:
    """Score every pair of ``data`` (columns image, prompt, chosen, rejected[, domain]); ties count as wrong."""
    images, prompts = list(data["image"]), list(data["prompt"])
    chosen = model.score(images, prompts, list(data["chosen"]), batch_size=batch_size)
    rejected = model.score(images, prompts, list(data["rejected"]), batch_size=batch_size)
    domains = list(data["domain"]) if "domain" in data.column_names else ["all"] * len(images)
    hits: dict[str, list[bool]] = defaultdict(list)
    for domain, c, r in zip(domains, chosen, rejected):
        hits[domain].append(c > r)
    total = [h for values in hits.values() for h in values]
    per_domain = {d: {"accuracy": sum(v) / len(v), "pairs": len(v)} for d, v in sorted(hits.items())}
    return EvalResult(sum(total) / max(len(total), 1), len(total), per_domain)


def evaluate_saved(model_dir: str | Path, data, *, batch_size: int = 32) -> EvalResult:
    """Load the reward model saved in ``model_dir`` and measure it on ``data``."""
    return pairwise_accuracy(load_reward_model(model_dir), data, batch_size=batch_size)

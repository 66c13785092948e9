"""Held-out accuracy of a saved reward model: the share of pairs where the chosen answer scores above the
rejected one, overall and per domain, and, where the data carries the ground truth (domain, question_type,
answer), the top-1 ranking accuracy over every candidate answer (evaluation is post-processing: no privacy
cost)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mor_secure.rewards import RewardModel, load_reward_model
from mor_secure.rewards.ranking import top1_accuracy

TOP1_QUESTIONS = 100
"""Questions ranked for top-1 (each costs one score per candidate answer, ~40)."""


@dataclass
class EvalResult:
    """Pairwise accuracy overall and per domain, with the number of pairs behind each; top-1 ranking where
    measured (``{"top1", "questions", "per_domain"}``, None without ground truth)."""

    accuracy: float
    pairs: int
    per_domain: dict[str, dict[str, float]] = field(default_factory=dict)
    top1: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "pairs": self.pairs, "per_domain": self.per_domain, "top1": self.top1}


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


def evaluate_saved(model_dir: str | Path, data, *, batch_size: int = 32, top1: bool = False) -> EvalResult:
    """Load the reward model saved in ``model_dir`` and measure it on ``data`` (with ``top1``, also its
    ranking of every candidate answer of the first ``TOP1_QUESTIONS`` questions, where ground truth exists)."""
    model = load_reward_model(model_dir)
    result = pairwise_accuracy(model, data, batch_size=batch_size)
    if top1:
        result.top1 = top1_accuracy(lambda i, p, c: model.score(i, p, c, batch_size=64), data, limit=TOP1_QUESTIONS)
    return result

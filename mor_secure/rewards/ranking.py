"""Top-1 ranking accuracy: does a reward put a true answer first among every answer a policy might give?

Pairwise accuracy against one drawn distractor is not what GRPO optimises: the policy climbs to the
completion the reward ranks highest. For each question this scores every candidate of
:func:`mor_secure.data.candidates.candidates` (every answer of the type in every style, the verbose
frame, answers of other types, junk) and counts the question as right when the best-scoring one gives
the true answer. It needs the benchmark metadata (domain, question_type, answer); rows of a site's real
data have none, so there is nothing to rank there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from mor_secure.data.candidates import candidates
from mor_secure.data.schema import assistant_message

ScoreFn = Callable[[list[Any], list[Any], list[Any]], Sequence[float]]
"""(images, prompts, completions) -> one score per triple (a reward model's ``score``, a fused reward)."""

METADATA = ("domain", "question_type", "answer")


def has_metadata(data: Any) -> bool:
    """Whether ``data`` carries the ground truth a ranking needs."""
    return all(column in data.column_names for column in METADATA)


def top1_accuracy(score: ScoreFn, data: Any, *, limit: int | None = None) -> dict[str, Any] | None:
    """``{"top1", "questions", "per_domain": {domain: {"top1", "questions"}}, "per_question_type":
    {"domain/type": {...}}}``, or None without metadata.

    A question counts as right only when its best true rendering scores strictly above every wrong
    candidate (a tie is a miss).
    """
    if not has_metadata(data):
        return None
    rows = data.select(range(min(limit, len(data)))) if limit is not None else data
    images, prompts, completions, owners = [], [], [], []
    domains: list[str] = []
    kinds: list[str] = []
    for i, row in enumerate(rows):
        options = candidates(row["domain"], row["question_type"], row["answer"])
        domains.append(row["domain"])
        kinds.append(f"{row['domain']}/{row['question_type']}")
        for option in options:
            images.append(row["image"])
            prompts.append(row["prompt"])
            completions.append(assistant_message(option.text))
            owners.append((i, option.correct))
    scores = list(score(images, prompts, completions))
    best = [[float("-inf"), float("-inf")] for _ in domains]  # [best wrong, best right] per question
    for (i, correct), value in zip(owners, scores, strict=True):
        best[i][correct] = max(best[i][correct], float(value))
    total = [right > wrong for wrong, right in best]

    def per(groups: list[str]) -> dict[str, dict[str, float]]:
        hits: dict[str, list[bool]] = defaultdict(list)
        for group, hit in zip(groups, total, strict=True):
            hits[group].append(hit)
        return {g: {"top1": sum(v) / len(v), "questions": len(v)} for g, v in sorted(hits.items())}

    return {
        "top1": sum(total) / max(len(total), 1),
        "questions": len(total),
        "per_domain": per(domains),
        "per_question_type": per(kinds),
    }

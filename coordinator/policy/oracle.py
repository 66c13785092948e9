"""The ground-truth (oracle) reward: the upper baseline of the federation's rewards, and the tests'.

+1 for the correct answer and +0.25 for the concise style, so every value (0, 0.25, 1, 1.25) is
exact in binary: eight equal rewards stay equal in float32 and TRL sees a zero-advantage group
as one. Correctness and style come from the strict parser of :mod:`coordinator.policy.evaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordinator.policy.evaluation import parse_answer
from mor_secure.data.schema import DataError

CORRECT_REWARD = 1.0
CONCISE_BONUS = 0.25


class OracleReward:
    """A TRL reward callable ``f(prompts, completions, answer=..., **columns)`` that knows the truth.

    It follows the :class:`coordinator.policy.grpo.RewardTelemetry` protocol: ``last_stats()`` gives the
    last batch's accuracy and concise share.
    """

    __name__ = "oracle"

    def __init__(self) -> None:
        self._stats: dict[str, float] = {}

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str] | None = None, **kwargs: Any
    ) -> list[float]:
        if answer is None:
            raise DataError(
                "the oracle reward needs an `answer` column in the training data (the ground "
                "truth); use data from `mor coordinator public-data` or pick another reward"
            )
        parsed = [parse_answer(c) for c in completions]
        correct = [p.answer == str(a).strip().lower() for p, a in zip(parsed, answer, strict=True)]
        n = max(len(parsed), 1)
        self._stats = {"oracle/accuracy": sum(correct) / n, "oracle/concise_share": sum(p.concise for p in parsed) / n}
        return [CORRECT_REWARD * ok + CONCISE_BONUS * p.concise for ok, p in zip(correct, parsed)]

    def last_stats(self) -> dict[str, float]:
        """Accuracy and concise share of the last batch scored."""
        return dict(self._stats)

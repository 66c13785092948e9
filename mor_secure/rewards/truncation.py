"""Explicit truncation of long inputs to [model].max_length: what is kept, and how many rows lose text.

Real answers run to hundreds of tokens and the difference between a chosen and a rejected answer is
usually at their end (the conclusion, the final number). So every family keeps the END of the
answer and the end of the question: the VLM families count text tokens of prompt plus answer (the
image's tokens and the chat template's come on top); the prompt keeps at most half of the budget
when the answer needs the rest. The dual-encoder counts characters of each text separately.
Nothing is cut silently: ``count_truncated`` is what `mor data check` reports and training logs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def split_budget(prompt_len: int, answer_len: int, max_length: int) -> tuple[int, int]:
    """(prompt, answer) lengths to keep, from their ends, so that together they fit ``max_length``.

    The prompt keeps all of itself up to half the budget (more when the answer is short); the answer
    keeps the rest of the budget.
    """
    if prompt_len + answer_len <= max_length:
        return prompt_len, answer_len
    keep_prompt = min(prompt_len, max(max_length - answer_len, max_length // 2))
    return keep_prompt, max_length - keep_prompt


def keep_tail(text: str, max_length: int) -> str:
    """The last ``max_length`` characters of ``text``."""
    return text[-max_length:] if len(text) > max_length else text


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Text tokens of a string under ``tokenizer`` (no special tokens)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def count_truncated(
    prompts: Sequence[str], answers: Sequence[Sequence[str]], max_length: int, *, tokenizer: Any = None
) -> int:
    """Rows that lose text at ``max_length``: with a ``tokenizer`` (VLM families) prompt plus the
    longest answer in tokens; without one (dual-encoder) any single text in characters."""
    if tokenizer is None:
        return sum(len(p) > max_length or any(len(a) > max_length for a in row) for p, row in zip(prompts, answers))
    count = token_counter(tokenizer)
    return sum(count(p) + max((count(a) for a in row), default=0) > max_length for p, row in zip(prompts, answers))


def model_tokenizer(model: Any) -> Any:
    """The tokenizer a reward model counts max_length in, or None when it counts characters."""
    return getattr(getattr(model, "processor", None), "tokenizer", None)

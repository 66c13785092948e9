"""Ground-truth evaluation of a policy: greedy answers to held-out questions, exact match per domain.

The answer parser is strict on purpose (style checks get gamed): a completion answers only
when it is exactly one answer word rendered in one of the world's styles (``styles.STYLES``:
"red", "Finding: red.", ...) or in the public warm start's verbose frame ("It is red.");
it is *concise* only as the bare word. Near misses (" yellow.", "Red", "red or blue") answer
nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mor_secure.data.public import parse_verbose
from mor_secure.data.schema import DataError, answer_text
from mor_secure.data.styles import parse_styled
from mor_secure.logs import get_logger

log = get_logger("coordinator.policy.evaluation")


@dataclass(frozen=True)
class ParsedAnswer:
    """What a completion answers (None: no exact answer rendering) and in which style."""

    answer: str | None
    style: str | None

    @property
    def concise(self) -> bool:
        """Whether the completion is the bare answer word."""
        return self.style == "concise"


def parse_answer(completion: str | list[dict[str, Any]]) -> ParsedAnswer:
    """Parse one completion strictly: an exact rendering of a world style or of the public verbose frame."""
    text = completion if isinstance(completion, str) else answer_text(completion)
    styled = parse_styled(text)
    if styled is not None:
        return ParsedAnswer(styled[1], styled[0])
    verbose = parse_verbose(text)
    return ParsedAnswer(verbose, "public-verbose" if verbose is not None else None)


def is_correct(completion: str | list[dict[str, Any]], answer: str) -> bool:
    """Whether ``completion`` exactly renders ``answer`` in an accepted style."""
    return parse_answer(completion).answer == answer


def suppressed_tokens(processor: Any) -> list[int]:
    """Special token ids a policy must never sample: all but end-of-turn (a sampled image or vision
    marker token would not match the image features and breaks the next forward pass)."""
    tokenizer = processor.tokenizer
    return sorted(set(tokenizer.all_special_ids) - {tokenizer.eos_token_id})


@torch.no_grad()
def generate_answers(
    model: Any,
    processor: Any,
    images: list,
    prompts: list,
    *,
    max_new_tokens: int = 8,
    batch_size: int = 64,
    progress: bool = True,
) -> list[str]:
    """Greedy completions (text, special tokens dropped) for (image, conversational prompt) rows."""
    from mor_secure.models import vlm_inputs

    device = next(model.parameters()).device
    texts: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="eval", unit="batch", disable=not progress):
        batch = vlm_inputs(
            processor, images[start : start + batch_size], prompts[start : start + batch_size], padding_side="left"
        ).to(device)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=suppressed_tokens(processor)
        )
        new = out[:, batch["input_ids"].shape[1] :]
        texts.extend(processor.batch_decode(new, skip_special_tokens=True))
    return texts


def _summary(parsed: list[ParsedAnswer], answers: list[str]) -> dict[str, Any]:
    n = max(len(parsed), 1)
    styles = Counter(p.style for p in parsed if p.style is not None)
    return {
        "accuracy": sum(p.answer == a for p, a in zip(parsed, answers, strict=True)) / n,
        "concise_share": styles["concise"] / n,
        "answered_share": sum(styles.values()) / n,
        "style_shares": {style: count / n for style, count in sorted(styles.items())},
        "n": len(parsed),
    }


def evaluate_policy(
    model_or_path: Any,
    eval_data: Any,
    *,
    max_new_tokens: int = 8,
    batch_size: int = 64,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of greedy answers on ``eval_data`` (the world's server/eval, or rows with image, prompt and
    answer; domain optional), overall and per domain ("all" without one).

    ``model_or_path`` is a policy folder / hub id, or a ``(model, processor)`` pair. Returns
    ``{"accuracy", "concise_share", "answered_share", "style_shares", "n", "per_domain": {domain: {...}},
    "per_question_type": {"domain/type": {...}}}`` (the inner dicts have the same keys as the top level).
    """
    from datasets import Dataset

    from mor_secure.data.loader import load_preferences
    from mor_secure.models import load_vlm

    rows = eval_data if isinstance(eval_data, Dataset) else load_preferences(eval_data, kind="eval")
    missing = {"image", "prompt", "answer"} - set(rows.column_names)
    if missing:
        raise DataError(
            f"the evaluation data lacks column(s) {', '.join(sorted(missing))}; pass the "
            "world's held-out set (server/eval) or rows with image, prompt and answer (domain and "
            "question_type, where present, break the result down)"
        )
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if isinstance(model_or_path, (str, Path)):
        model, processor = load_vlm(model_or_path)
    else:
        model, processor = model_or_path
    was_training = model.training
    model.eval()
    try:
        texts = generate_answers(
            model,
            processor,
            list(rows["image"]),
            list(rows["prompt"]),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
    finally:
        model.train(was_training)
    parsed, answers = [parse_answer(t) for t in texts], list(rows["answer"])

    def per(groups: list[str]) -> dict[str, dict[str, Any]]:
        picks = {g: [i for i, x in enumerate(groups) if x == g] for g in sorted(set(groups))}
        return {g: _summary([parsed[i] for i in idx], [answers[i] for i in idx]) for g, idx in picks.items()}

    domains = list(rows["domain"]) if "domain" in rows.column_names else ["all"] * len(rows)
    kinds = rows["question_type"] if "question_type" in rows.column_names else ["all"] * len(rows)
    types = [f"{d}/{t}" for d, t in zip(domains, kinds)]
    result = {**_summary(parsed, answers), "per_domain": per(domains), "per_question_type": per(types)}
    log.info(
        "policy evaluated",
        extra={
            "n": result["n"],
            "accuracy": round(result["accuracy"], 4),
            "concise_share": round(result["concise_share"], 4),
        },
    )
    return result

"""The benchmark world: non-IID client preference sets, a router set and held-out eval questions.

Every part is drawn from its own seeded stream and written byte-identically for a given seed;
eval questions are excluded from every other part by content hash (pixels + question text).
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets

from mor_secure.data.candidates import off_format, renderings
from mor_secure.data.domains import Question, domain_names, get_domain
from mor_secure.data.schema import (
    EVAL_FEATURES,
    PAIR_FEATURES,
    SCHEMA_VERSION,
    assistant_message,
    content_hash,
    user_prompt,
)
from mor_secure.data.styles import render, style_names
from mor_secure.errors import BadInput, OutputExists
from mor_secure.logs import get_logger

GENERATOR_VERSION = "3.0.0"
TEST_FRACTION = 0.15
WRONG_STYLE_SHARE = 0.15
"""Share of pairs whose rejected answer is the true answer in another style (the style signal)."""
OFF_FORMAT_SHARE = 0.25
"""Share of pairs whose rejected answer is malformed: junk, an answer of another type, a garbled answer."""
OWN_STYLE_SHARE = 0.4
"""In the other pairs, how often right and wrong are written in the client's own style (else in any other
rendering, the public verbose frame included): a site must judge correctness in every style, or a shared
policy escapes to a style no site judges."""

log = get_logger("data.world")


@contextmanager
def _quiet_progress() -> Iterator[None]:
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _png(question: Question) -> dict[str, Any]:
    buffer = io.BytesIO()
    question.image.save(buffer, format="PNG", compress_level=6)
    return {"bytes": buffer.getvalue(), "path": None}


def _draw(domain: str, rng: random.Random, exclude: set[str]) -> Question:
    """A question of ``domain`` whose content hash is not in ``exclude`` (then added to it)."""
    for _ in range(1000):
        question = get_domain(domain).sample(rng)
        key = content_hash(question.image, question.question)
        if key not in exclude:
            exclude.add(key)
            return question
    raise RuntimeError(f"domain {domain!r} keeps repeating held-out questions; use another seed")


def _domain_plan(total: int, own: str | None, domains: list[str], share: float) -> list[str]:
    """``total`` domain labels: ``share`` of them ``own`` (if any), the rest spread evenly."""
    n_own = round(total * share) if own else 0
    rest = [d for d in domains if d != own]
    plan = [own] * n_own if own else []
    plan += [rest[i % len(rest)] for i in range(total - n_own)]
    return plan


def _test_flags(plan: list[str]) -> list[bool]:
    """Mark the last ``TEST_FRACTION`` of each domain's rows as test (at least one if it has two)."""
    flags: list[bool] = []
    seen: Counter[str] = Counter()
    sizes = Counter(plan)
    for domain in plan:
        n_test = max(round(sizes[domain] * TEST_FRACTION), 1 if sizes[domain] >= 2 else 0)
        seen[domain] += 1
        flags.append(seen[domain] > sizes[domain] - n_test)
    return flags


def _contrast(domain: str, question: Question, style: str, rng: random.Random) -> tuple[str, str, str]:
    """(chosen, rejected, kind) of one pair: right vs wrong in one rendering, right in the client's style vs
    another rendering, or a right answer vs a malformed one."""
    own = render(question.answer, style)
    draw = rng.random()
    if draw < WRONG_STYLE_SHARE:
        return own, rng.choice([t for t in renderings(question.answer) if t != own]), "wrong_style"
    at = style if rng.random() < OWN_STYLE_SHARE else rng.choice([s for s in style_names() if s != style] + [None])
    right = renderings(question.answer)[-1] if at is None else render(question.answer, at)
    if draw < WRONG_STYLE_SHARE + OFF_FORMAT_SHARE:
        return right, off_format(domain, question.question_type, question.answer, rng), "off_format"
    wrong = rng.choice(question.distractors)
    return right, renderings(wrong)[-1] if at is None else render(wrong, at), "wrong_answer"


def _pair_rows(
    rng: random.Random, plan: list[str], style_of: dict[str, str], exclude: set[str]
) -> tuple[dict[str, list[dict]], Counter]:
    """Preference pairs for a shuffled domain plan, split into train and test; rejection counts."""
    rng.shuffle(plan)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    rejected_kinds: Counter = Counter()
    for domain, is_test in zip(plan, _test_flags(plan)):
        question = _draw(domain, rng, exclude)
        chosen, rejected, kind = _contrast(domain, question, style_of[domain], rng)
        rejected_kinds[kind] += 1
        splits["test" if is_test else "train"].append(
            {
                "image": _png(question),
                "prompt": user_prompt(question.question),
                "chosen": assistant_message(chosen),
                "rejected": assistant_message(rejected),
                "domain": domain,
                "question_type": question.question_type,
                "answer": question.answer,
            }
        )
    return splits, rejected_kinds


def _dataset(rows: list[dict], features: datasets.Features) -> datasets.Dataset:
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in features}, features=features)


def _counts(rows: list[dict]) -> dict[str, Any]:
    return {"total": len(rows), "per_domain": dict(sorted(Counter(r["domain"] for r in rows).items()))}


def _save_pairs(splits: dict[str, list[dict]], path: Path) -> dict[str, Any]:
    with _quiet_progress():
        datasets.DatasetDict({name: _dataset(rows, PAIR_FEATURES) for name, rows in splits.items()}).save_to_disk(
            str(path)
        )
    return {name: _counts(rows) for name, rows in splits.items()}


def _check_args(
    clients: int, pairs: int, router_pairs: int, eval_questions: int, own_domain_share: float, n_domains: int
) -> None:
    if clients < 1:
        raise BadInput(f"clients must be at least 1, got {clients}")
    for name, value in (("pairs", pairs), ("router_pairs", router_pairs), ("eval_questions", eval_questions)):
        if value < n_domains * 2:
            raise BadInput(f"{name} must be at least {n_domains * 2} (two per domain), got {value}")
    if not 0.0 <= own_domain_share <= 1.0:
        raise BadInput(f"own_domain_share must lie in [0, 1], got {own_domain_share}")


def generate_world(
    out_dir: Path,
    *,
    seed: int = 0,
    clients: int = 3,
    pairs: int = 400,
    router_pairs: int = 300,
    eval_questions: int = 300,
    own_domain_share: float = 0.8,
) -> dict:
    """Write the benchmark world under ``out_dir`` (which must be empty or absent); return its manifest.

    Layout: ``client-<k>/`` (DatasetDict train/test of pairs), ``server/router/`` (DatasetDict of
    pairs over all domains), ``server/eval/`` (Dataset of questions), ``manifest.json``.
    """
    out_dir = Path(out_dir)
    domains, styles = domain_names(), style_names()
    _check_args(clients, pairs, router_pairs, eval_questions, own_domain_share, len(domains))
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputExists(f"{out_dir} is not empty; choose a new folder or remove it first")
    out_dir.mkdir(parents=True, exist_ok=True)

    held_out: set[str] = set()
    eval_rng = random.Random(f"mor-world:{seed}:eval")
    eval_rows = []
    for domain in _domain_plan(eval_questions, None, domains, 0.0):
        question = _draw(domain, eval_rng, held_out)
        eval_rows.append(
            {
                "image": _png(question),
                "prompt": user_prompt(question.question),
                "domain": domain,
                "question_type": question.question_type,
                "answer": question.answer,
            }
        )
    with _quiet_progress():
        _dataset(eval_rows, EVAL_FEATURES).save_to_disk(str(out_dir / "server" / "eval"))

    manifest_clients = {}
    for k in range(clients):
        name, own, style = f"client-{k}", domains[k % len(domains)], styles[k % len(styles)]
        plan = _domain_plan(pairs, own, domains, own_domain_share)
        splits, rejected = _pair_rows(
            random.Random(f"mor-world:{seed}:client:{k}"), plan, {d: style for d in domains}, set(held_out)
        )
        manifest_clients[name] = {
            "path": name,
            "own_domain": own,
            "style": style,
            "splits": _save_pairs(splits, out_dir / name),
            "rejected": dict(sorted(rejected.items())),
        }
        log.info("client data written", extra={"client": name, "pairs": pairs})

    owner = {d: f"client-{i}" if i < clients else None for i, d in enumerate(domains)}
    router_style = {d: styles[i % len(styles)] for i, d in enumerate(domains)}
    splits, rejected = _pair_rows(
        random.Random(f"mor-world:{seed}:router"),
        _domain_plan(router_pairs, None, domains, 0.0),
        router_style,
        set(held_out),
    )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "domains": domains,
        "question_types": {d: list(get_domain(d).question_types) for d in domains},
        "styles": styles,
        "parameters": {
            "clients": clients,
            "pairs": pairs,
            "router_pairs": router_pairs,
            "eval_questions": eval_questions,
            "own_domain_share": own_domain_share,
            "test_fraction": TEST_FRACTION,
            "wrong_style_share": WRONG_STYLE_SHARE,
            "off_format_share": OFF_FORMAT_SHARE,
            "own_style_share": OWN_STYLE_SHARE,
        },
        "clients": manifest_clients,
        "router": {
            "path": "server/router",
            "style_per_domain": router_style,
            "owner_per_domain": owner,
            "splits": _save_pairs(splits, out_dir / "server" / "router"),
            "rejected": dict(sorted(rejected.items())),
        },
        "eval": {"path": "server/eval", "counts": _counts(eval_rows)},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("benchmark world written", extra={"clients": clients, "eval": eval_questions, "seed": seed})
    return manifest

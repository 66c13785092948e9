"""Public preference pairs: what a reward model learns to see before any site's private pairs.

The VLM families start from a backbone pretrained on public data; a family built from scratch (the
dual-encoder) gets the same head start here. Under DP from scratch it learns nothing a site can use
(measured at epsilon 2 on 1,276 pairs: noise multiplier 11.7, top-1 0% on colour questions), while the
same model trained on public pairs without DP, which costs no privacy, ranks the truth first.

Pairs come from the public warm-start rows' truth column, never from their completions (which carry the
warm start's deliberate flaws). Each prefers the true answer over a wrong one rendered in the same style,
so it teaches correctness and no style (styles are the sites' private preferences), and over malformed
output (junk, another type's answer) a quarter of the time.
"""

from __future__ import annotations

import random
from typing import Any

from mor_secure.data.candidates import off_format, renderings
from mor_secure.data.domains import get_domain
from mor_secure.data.schema import DataError, assistant_message

OFF_FORMAT_SHARE = 0.25
"""Share of pairs whose rejected answer is malformed rather than a wrong answer of the type."""

NEEDED = ("image", "prompt", "domain", "question_type", "answer")


def public_pairs(rows: Any, *, seed: int = 0, pairs_per_row: int = 2) -> Any:
    """A ``datasets.Dataset`` (image, prompt, chosen, rejected) of ``pairs_per_row`` pairs per public row."""
    from datasets import Dataset

    missing = [c for c in NEEDED if c not in rows.column_names]
    if missing:
        raise DataError(
            f"public rows lack column(s) {', '.join(missing)}; pass `mor coordinator public-data` "
            "output (it records the true answer of every row)"
        )
    rng = random.Random(f"mor-secure/public-pairs/{seed}")
    out: dict[str, list] = {"image": [], "prompt": [], "chosen": [], "rejected": []}
    for row in rows:
        truth, kind = row["answer"], row["question_type"]
        truths = renderings(truth)
        wrong = [a for a in get_domain(row["domain"]).answer_space(kind) if a != truth]
        for _ in range(pairs_per_row):
            style = rng.randrange(len(truths))
            if wrong and rng.random() >= OFF_FORMAT_SHARE:
                rejected = renderings(rng.choice(wrong))[style]
            else:
                rejected = off_format(row["domain"], kind, truth, rng)
            out["image"].append(row["image"])
            out["prompt"].append(row["prompt"])
            out["chosen"].append(assistant_message(truths[style]))
            out["rejected"].append(assistant_message(rejected))
    return Dataset.from_dict(out)

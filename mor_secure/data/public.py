"""Public warm-start data: generic visual questions with supervised answers, deliberately flawed.

The coordinator's policy starts from supervised fine-tuning on public data, never on client data.
These rows come from the same domain generators as the benchmark world but from a disjoint seed
space (and, given the world, with every image+question the world holds removed), carry no client
style and no preference pairs, and have a deliberate, measurable flaw on easy features, so
GRPO with the federation's rewards has something to fix:

- ``verbose_share`` of the answers use a verbose frame (``"It is red."``) that no client's
  reward prefers; the rest are concise (``"red"``);
- ``flaws`` map true answers to wrong ones per question type (``DEFAULT_FLAWS``: colour pairs,
  left/right, yes/no), applied to the rows in ``flaw_style`` (default: every verbose row; None: any
  row) with probability ``flaw_share``. Swapping the verbose answers only keeps each style's label a
  function of the image, so the warm start learns to *see* the feature (the concise rows name it
  right) and names it wrong in its habitual verbose frame: greedy answers are wrong, yet about one
  sample in four is the true concise answer, which a reward can reinforce. A swap in a random 60% of
  all rows instead hides the feature itself (measured on the tiny Qwen2-VL: lesion presence sampled
  true 47% / swapped 52% on every image, the prior), and GRPO fixed it in one run of four (in
  neither run with the ground-truth reward).
  Flaws sit on features the tiny VLM sees (GRPO corrects what a model sees; it does not teach a
  feature that supervised training never learned).
"""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from mor_secure.data.domains import domain_names, get_domain
from mor_secure.data.schema import EVAL_FEATURES, assistant_message, content_hash, question_text, user_prompt
from mor_secure.data.styles import ANSWER_PATTERN
from mor_secure.errors import BadInput
from mor_secure.logs import get_logger

log = get_logger("data.public")

VERBOSE_FRAME = "It is {answer}."
"""The verbose answer style of the warm-start flaw: no client's style (see ``styles.STYLES``), so every
client's reward prefers something else; the other answers are concise (the bare word)."""

DEFAULT_FLAWS: dict[str, dict[str, str]] = {
    "color": {
        "red": "green",
        "green": "red",
        "blue": "yellow",
        "yellow": "blue",
        "purple": "orange",
        "orange": "purple",
    },
    "side": {"left": "right", "right": "left"},
    "presence": {"yes": "no", "no": "yes"},
    "compare": {"yes": "no", "no": "yes"},
}
"""Swapped labels of the demo's and benchmarks' warm start: question type -> {true answer: shown answer}.
Colours swap with far ones (red/green, not red/orange), so the warm start sees the two apart and only the
names are wrong: a visually close pair swapped 60% of the time is never told apart at all."""

DEFAULT_FLAW_SHARE = 1.0
"""Share of the flawed question types' rows in ``DEFAULT_FLAW_STYLE`` that carry the swapped label."""

DEFAULT_FLAW_STYLE: str | None = "verbose"
"""The answer style whose rows carry the swaps ('verbose' or 'concise'; None: rows of either style)."""

FLAW_STYLES = ("verbose", "concise")

SEED_NAMESPACE = "mor-secure/public-sft"
"""Prefix of the generator's string seed: a stream apart from every stream of the benchmark world."""

_VERBOSE = re.compile(re.escape(VERBOSE_FRAME).replace(re.escape("{answer}"), f"({ANSWER_PATTERN})"))


def parse_verbose(text: str) -> str | None:
    """The answer of an exact rendering of ``VERBOSE_FRAME`` ("It is red." -> "red"), else None."""
    match = _VERBOSE.fullmatch(text)
    return match.group(1) if match else None


def _world_keys(world_dir: Path) -> set[str]:
    """Content hashes of every (image, question) in any data set saved under ``world_dir``."""
    from datasets import load_from_disk

    keys: set[str] = set()
    for info in sorted(Path(world_dir).rglob("dataset_info.json")):
        ds = load_from_disk(str(info.parent))
        if "image" in ds.column_names and "prompt" in ds.column_names:
            keys.update(content_hash(row["image"], question_text(row)) for row in ds)
    return keys


def generate_public_sft(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n: int = 2000,
    verbose_share: float = 0.7,
    flaws: Mapping[str, Mapping[str, str]] | None = None,
    flaw_share: float = DEFAULT_FLAW_SHARE,
    flaw_style: str | None = DEFAULT_FLAW_STYLE,
    domains: Iterable[str] | None = None,
    exclude_world: str | Path | None = None,
) -> Path:
    """Write ``n`` public warm-start rows to ``out_dir`` (a ``datasets`` folder) and return it.

    Columns: image, prompt (conversational, one image part), completion (assistant message),
    domain, question_type, answer (the truth, even where a flaw changes the completion),
    style ('verbose' or 'concise'), flawed (whether the label was swapped: a flawed type's row in
    ``flaw_style``, or in any style when it is None, with probability ``flaw_share``). Domains take turns;
    ``exclude_world`` drops any item that the benchmark world under that folder holds. A summary lands
    in ``public.json``.
    """
    from datasets import Dataset, Features, Value

    if not 0.0 <= verbose_share <= 1.0:
        raise BadInput(f"verbose_share must be in [0, 1], got {verbose_share}")
    if n < 1:
        raise BadInput(f"n must be at least 1, got {n}")
    if not 0.0 <= flaw_share <= 1.0:
        raise BadInput(f"flaw_share must be in [0, 1], got {flaw_share}")
    if flaw_style is not None and flaw_style not in FLAW_STYLES:
        raise BadInput(f"flaw_style must be one of {', '.join(FLAW_STYLES)} or None (any style), got {flaw_style!r}")
    names = list(domains) if domains is not None else domain_names()
    generators = [get_domain(name) for name in names]
    flaws = {kind: dict(swaps) for kind, swaps in (flaws or {}).items()}
    excluded = _world_keys(Path(exclude_world)) if exclude_world is not None else set()
    rng = random.Random(f"{SEED_NAMESPACE}/{seed}")
    rows: dict[str, list] = {
        k: [] for k in ("image", "prompt", "completion", "domain", "question_type", "answer", "style", "flawed")
    }
    dropped = 0
    while len(rows["answer"]) < n:
        domain = generators[len(rows["answer"]) % len(generators)]
        q = domain.sample(rng)
        key = content_hash(q.image, q.question)
        if key in excluded:
            dropped += 1
            continue
        style = "verbose" if rng.random() < verbose_share else "concise"
        swapped = flaws.get(q.question_type, {}).get(q.answer)
        flawed = swapped is not None and flaw_style in (None, style) and rng.random() < flaw_share
        label = swapped if flawed and swapped is not None else q.answer
        text = VERBOSE_FRAME.format(answer=label) if style == "verbose" else label
        buffer = io.BytesIO()
        q.image.save(buffer, format="PNG")
        rows["image"].append({"bytes": buffer.getvalue(), "path": None})
        rows["prompt"].append(user_prompt(q.question))
        rows["completion"].append(assistant_message(text))
        rows["domain"].append(domain.name)
        rows["question_type"].append(q.question_type)
        rows["answer"].append(q.answer)
        rows["style"].append(style)
        rows["flawed"].append(flawed)
    features = Features(
        {**EVAL_FEATURES, "completion": EVAL_FEATURES["prompt"], "style": Value("string"), "flawed": Value("bool")}
    )
    out_dir = Path(out_dir)
    Dataset.from_dict(rows, features=features).save_to_disk(str(out_dir))
    summary = {
        "seed": seed,
        "n": n,
        "verbose_share": verbose_share,
        "flaws": flaws,
        "flaw_share": flaw_share,
        "flaw_style": flaw_style,
        "flawed_rows": sum(rows["flawed"]),
        "domains": names,
        "dropped_world_items": dropped,
        "verbose_rows": rows["style"].count("verbose"),
    }
    (out_dir / "public.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info(
        "public warm-start data written",
        extra={"rows": n, "dropped_world_items": dropped, "verbose_rows": summary["verbose_rows"]},
    )
    return out_dir

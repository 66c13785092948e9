"""Public warm-start data: generic visual questions with supervised answers, deliberately flawed.

The coordinator's policy starts from supervised fine-tuning on public data, never on client data.
These rows come from the same domain generators as the benchmark world but from a disjoint seed
space (and, given the world, with every image+question the world holds removed), carry no client
style and no preference pairs, and have a deliberate, measurable flaw on easy features, so
GRPO with the federation's rewards has something to fix:

- ``verbose_share`` of the answers use a verbose frame (``"The answer is red."``) that the
  federation's rewards do not prefer; the rest are concise (``"red"``);
- ``mislabel`` optionally maps true colours to wrong ones in colour questions (e.g.
  ``{"orange": "red"}``): a systematically mislabelled colour.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path

from PIL import Image

from mor_secure.data.domains import domain_names, get_domain
from mor_secure.logs import get_logger

log = get_logger("data.public")

VERBOSE_FRAME = "The answer is {answer}."
"""The verbose answer style of the warm-start flaw; concise answers are the bare answer word."""

SEED_NAMESPACE = "mor-secure/public-sft"
"""Prefix of the generator seed: string seeds hash into a space apart from the world's integer seeds."""


def item_key(image: Image.Image, question: str) -> str:
    """Content hash of one (image, question): equal keys mean the same visual question."""
    digest = hashlib.sha256(image.convert("RGB").tobytes())
    digest.update(b"\0" + question.encode("utf-8"))
    return digest.hexdigest()


def _prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]}]


def _world_keys(world_dir: Path) -> set[str]:
    """Keys of every (image, question) in any data set saved under ``world_dir`` (recursively)."""
    from datasets import load_from_disk

    keys: set[str] = set()
    for info in sorted(Path(world_dir).rglob("dataset_info.json")):
        ds = load_from_disk(str(info.parent))
        image_col = "image" if "image" in ds.column_names else "images"
        if image_col not in ds.column_names or "prompt" not in ds.column_names:
            continue
        for row in ds:
            image = row[image_col][0] if isinstance(row[image_col], list) else row[image_col]
            keys.add(item_key(image, question_of(row["prompt"])))
    return keys


def question_of(prompt: str | list[dict]) -> str:
    """The question text of a plain or conversational prompt (its text parts joined)."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt:
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(p["text"] for p in content if p.get("type") == "text" and p.get("text"))
    return " ".join(parts)


def generate_public_sft(out_dir: str | Path, *, seed: int = 0, n: int = 2000, verbose_share: float = 0.7,
                        mislabel: Mapping[str, str] | None = None, domains: Iterable[str] | None = None,
                        exclude_world: str | Path | None = None) -> Path:
    """Write ``n`` public warm-start rows to ``out_dir`` (a ``datasets`` folder) and return it.

    Columns: image, prompt (conversational, one image part), completion (assistant message),
    domain, question_type, answer (the truth, even where ``mislabel`` changes the completion),
    style ('verbose' or 'concise'). Domains take turns; ``exclude_world`` drops any item that
    the benchmark world under that folder holds. A summary lands in ``public.json``.
    """
    from datasets import Dataset, Features, Image as ImageFeature, Value

    if not 0.0 <= verbose_share <= 1.0:
        raise ValueError(f"verbose_share must be in [0, 1], got {verbose_share}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    names = list(domains) if domains is not None else domain_names()
    generators = [get_domain(name) for name in names]
    mislabel = dict(mislabel or {})
    excluded = _world_keys(Path(exclude_world)) if exclude_world is not None else set()
    rng = random.Random(f"{SEED_NAMESPACE}/{seed}")
    rows: dict[str, list] = {k: [] for k in ("image", "prompt", "completion", "domain", "question_type",
                                             "answer", "style")}
    dropped = 0
    while len(rows["answer"]) < n:
        domain = generators[len(rows["answer"]) % len(generators)]
        q = domain.sample(rng)
        key = item_key(q.image, q.question)
        if key in excluded:
            dropped += 1
            continue
        label = mislabel.get(q.answer, q.answer) if q.question_type == "color" else q.answer
        verbose = rng.random() < verbose_share
        text = VERBOSE_FRAME.format(answer=label) if verbose else label
        buffer = io.BytesIO()
        q.image.save(buffer, format="PNG")
        rows["image"].append({"bytes": buffer.getvalue(), "path": None})
        rows["prompt"].append(_prompt(q.question))
        rows["completion"].append([{"role": "assistant", "content": text}])
        rows["domain"].append(domain.name)
        rows["question_type"].append(q.question_type)
        rows["answer"].append(q.answer)
        rows["style"].append("verbose" if verbose else "concise")
    message = [{"role": Value("string"), "content": Value("string")}]
    prompt = [{"role": Value("string"),
               "content": [{"type": Value("string"), "text": Value("string")}]}]
    features = Features({"image": ImageFeature(), "prompt": prompt, "completion": message,
                         "domain": Value("string"), "question_type": Value("string"),
                         "answer": Value("string"), "style": Value("string")})
    out_dir = Path(out_dir)
    Dataset.from_dict(rows, features=features).save_to_disk(str(out_dir))
    summary = {"seed": seed, "n": n, "verbose_share": verbose_share, "mislabel": mislabel,
               "domains": names, "dropped_world_items": dropped,
               "verbose_rows": rows["style"].count("verbose")}
    (out_dir / "public.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("public warm-start data written", extra={"rows": n, "dropped_world_items": dropped,
                                                       "verbose_rows": summary["verbose_rows"]})
    return out_dir

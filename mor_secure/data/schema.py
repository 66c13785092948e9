"""The preference data schema (TRL's conversational preference format; ground truth optional).

Pair rows: ``image``, ``prompt``, ``chosen``, ``rejected``; eval rows: ``image``, ``prompt``,
``answer``; prompt rows (GRPO): ``image``, ``prompt``. ``domain``, ``question_type`` and
``answer`` are optional metadata wherever they are not required: the benchmark world writes them,
a site's real data usually has none, and reports break down by domain only where it exists. Use
``question_text`` and ``answer_text`` instead of parsing the nested messages by hand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import datasets
from PIL import Image

from mor_secure.errors import MorError

SCHEMA_VERSION = 1

Kind = Literal["pairs", "eval", "prompts"]
KINDS = ("pairs", "eval", "prompts")

REQUIRED: dict[str, tuple[str, ...]] = {
    "pairs": ("image", "prompt", "chosen", "rejected"),
    "eval": ("image", "prompt", "answer"),
    "prompts": ("image", "prompt"),
}
"""The columns each kind of data set must have; every other canonical column is optional metadata."""

METADATA = ("domain", "question_type", "answer")
"""Optional columns (ground truth of the benchmark world), kept where present."""


class DataError(MorError, ValueError):
    """A data source cannot be used: absent, unknown layout, missing split or bad content."""


class SchemaError(DataError):
    """A data set lacks columns or has columns of the wrong type; the message names each one."""


def _messages() -> datasets.List:
    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    return datasets.List({"role": datasets.Value("string"), "content": datasets.List(part)})


PAIR_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "prompt": _messages(),
        "chosen": _messages(),
        "rejected": _messages(),
        "domain": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "answer": datasets.Value("string"),
    }
)
"""Features of one preference pair row."""

EVAL_FEATURES = datasets.Features({k: v for k, v in PAIR_FEATURES.items() if k not in ("chosen", "rejected")})
"""Features of one held-out question row (no answers shown to the policy)."""

COLUMN_HELP = {
    "image": "Image() (one image per row)",
    "prompt": "a user message list [{role, content: [{type: 'image'}, {type: 'text', text}]}]",
    "chosen": "an assistant message list [{role: 'assistant', content: [{type: 'text', text}]}]",
    "rejected": "an assistant message list [{role: 'assistant', content: [{type: 'text', text}]}]",
    "domain": "string (the question's domain, e.g. 'medical')",
    "question_type": "string (e.g. 'count')",
    "answer": "string (the true short answer, e.g. '2')",
}


def features_for(kind: Kind, present: Sequence[str] | None = None) -> datasets.Features:
    """The canonical ``Features`` of a ``kind`` data set; with ``present``, only the required columns
    and the optional ones among ``present``, in canonical order."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    full = PAIR_FEATURES if kind == "pairs" else EVAL_FEATURES
    if present is None:
        return full
    return datasets.Features({k: v for k, v in full.items() if k in REQUIRED[kind] or k in present})


def shape(feature: Any) -> Any:
    """A comparable outline of a feature type: string widths and list flavours are equivalent."""
    if isinstance(feature, datasets.Value):
        return "string" if feature.dtype in ("string", "large_string") else feature.dtype
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return ("list", shape(feature.feature))
    if isinstance(feature, (list, tuple)) and len(feature) == 1:
        return ("list", shape(feature[0]))
    if isinstance(feature, dict):
        return tuple(sorted((key, shape(value)) for key, value in feature.items()))
    return type(feature).__name__


def describe(feature: Any) -> str:
    """A short human-readable rendering of a feature type for error messages."""
    outline = shape(feature)
    if outline == "image" or isinstance(outline, str):
        return outline
    if isinstance(outline, tuple) and outline and outline[0] == "list":
        inner = feature.feature if hasattr(feature, "feature") else feature[0]
        return f"list of {describe(inner)}"
    return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in feature.items()) + "}"


def schema_problems(features: datasets.Features, kind: Kind) -> list[str]:
    """One line per missing or mistyped column of ``features`` against the canonical schema
    (optional metadata columns are checked only where present)."""
    problems = []
    for column, expected in features_for(kind).items():
        if column not in features and column not in REQUIRED[kind]:
            continue
        if column not in features:
            problems.append(f"missing column {column!r}: it must be {COLUMN_HELP[column]}")
        elif shape(features[column]) != shape(expected):
            problems.append(
                f"column {column!r} has type {describe(features[column])}; it must be {COLUMN_HELP[column]}"
            )
    return problems


def validate_preferences(ds: datasets.Dataset, kind: Kind = "pairs") -> None:
    """Raise ``SchemaError`` naming every missing or mistyped column of ``ds``."""
    problems = schema_problems(ds.features, kind)
    if problems:
        raise SchemaError(f"not a valid {kind} data set: " + "; ".join(problems))


def user_prompt(question: str) -> list[dict]:
    """The conversational prompt of one question: an image placeholder, then the text."""
    return [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]}]


def assistant_message(text: str) -> list[dict]:
    """A one-message assistant turn, the form of ``chosen`` and ``rejected``."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _text_of(messages: Any, role: str) -> str:
    if isinstance(messages, str):
        return messages
    texts = []
    for message in messages:
        if message.get("role") != role:
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(part.get("text") or "" for part in content or [] if part.get("type") == "text")
    return " ".join(t for t in texts if t)


def question_text(row: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str) -> str:
    """The plain question text of a row (or of its ``prompt`` message list)."""
    prompt = row["prompt"] if isinstance(row, Mapping) else row
    return _text_of(prompt, "user")


def answer_text(messages: Sequence[Mapping[str, Any]] | str) -> str:
    """The plain text of an assistant turn (``chosen``, ``rejected`` or a TRL completion)."""
    return _text_of(messages, "assistant")


def content_hash(image: Image.Image, question: str) -> str:
    """SHA-256 of an image's pixels and a question: the identity used to keep eval held out."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\0".encode())
    digest.update(rgb.tobytes())
    digest.update(b"\0" + question.encode("utf-8"))
    return digest.hexdigest()


def pixel_digest(image: Image.Image) -> bytes:
    """SHA-256 of an image's RGB pixels and size: the same picture in other bytes (PNG, JPEG) is the same."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\0".encode())
    digest.update(rgb.tobytes())
    return digest.digest()

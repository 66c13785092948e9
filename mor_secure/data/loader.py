"""Read a local preference data set in any common layout into the canonical schema.

Sources: a ``save_to_disk`` folder (Dataset or DatasetDict), a ``.parquet`` file, or a JSON
lines file (``.jsonl``/``.json``) whose ``image`` holds a path (relative to the file) or whose
``images`` holds a list of one. Plain-string ``prompt``/``chosen``/``rejected`` become messages.
Nothing is ever downloaded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, UnidentifiedImageError

from mor_secure.data.schema import (COLUMN_HELP, DataError, Kind, SchemaError, assistant_message, features_for,
                                    schema_problems, user_prompt, validate_preferences)
from mor_secure.logs import get_logger

log = get_logger("data.loader")

CONVERSATIONAL = ("prompt", "chosen", "rejected")
JSON_SUFFIXES = (".jsonl", ".json")


def available_splits(path: str | Path) -> list[str]:
    """Split names of a ``DatasetDict`` folder; ``[]`` for a single-split source."""
    path = Path(path).expanduser()
    marker = path / "dataset_dict.json"
    if path.is_dir() and marker.is_file():
        return list(json.loads(marker.read_text(encoding="utf-8"))["splits"])
    return []


def _read_folder(path: Path, split: str | None) -> datasets.Dataset:
    if (path / "dataset_dict.json").is_file():
        splits = available_splits(path)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            wanted = "no split was given" if split is None else f"it has no split {split!r}"
            raise DataError(f"{path} holds splits {', '.join(splits)} but {wanted}; pass one of them")
        return datasets.load_from_disk(str(path / split))
    if (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    if (path / "manifest.json").is_file():
        raise DataError(f"{path} is a benchmark world, not one data set; pass one of its parts, "
                        "e.g. client-0, server/router or server/eval")
    raise DataError(f"{path} is a folder but not a saved data set (no dataset_dict.json or "
                    "state.json); pass a save_to_disk folder, a .parquet or a .jsonl file")


def _read_json_lines(path: Path) -> dict[str, list[Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    if not records or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: expected one JSON object per line (and at least one)")
    columns = sorted({key for record in records for key in record})
    return {c: [record.get(c) for record in records] for c in columns}


def _read(path: Path, split: str | None) -> datasets.Dataset | dict[str, list[Any]]:
    if path.is_dir():
        return _read_folder(path, split)
    if split not in (None, "train"):
        raise DataError(f"{path} is a single file and holds one split; it has no split {split!r}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return datasets.Dataset(pq.read_table(path))
    if path.suffix in JSON_SUFFIXES:
        return _read_json_lines(path)
    raise DataError(f"{path}: unknown format {path.suffix!r}; use a save_to_disk folder, "
                    ".parquet or .jsonl")


def _image_bytes(value: Any, base: Path, row: int) -> bytes:
    """The encoded bytes of one image given as bytes, a {bytes, path} dict or a path string."""
    if isinstance(value, list):
        if len(value) != 1:
            raise SchemaError(f"column 'images' must hold exactly one image per row; row {row} "
                              f"holds {len(value)}")
        value = value[0]
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        file = Path(value).expanduser()
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            raise SchemaError(f"column 'image': row {row} names {file}, which does not exist "
                              f"(relative paths are read from {base})")
        value = file.read_bytes()
    if not isinstance(value, bytes):
        raise SchemaError(f"column 'image' must hold an image path or image bytes; row {row} "
                          f"holds {type(value).__name__}")
    try:
        Image.open(io.BytesIO(value)).verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SchemaError(f"column 'image': row {row} cannot be decoded as an image ({exc})") from None
    return value


def _messages(value: Any, column: str, row: int) -> list[dict]:
    """One conversational column value in canonical form (plain strings are wrapped)."""
    if isinstance(value, str):
        return user_prompt(value) if column == "prompt" else assistant_message(value)
    role = "user" if column == "prompt" else "assistant"
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise SchemaError(f"column {column!r} must hold a string or a list of {{role, content}} "
                          f"messages; row {row} holds {type(value).__name__}")
    messages = []
    for message in value:
        content = message.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list) and all(isinstance(p, dict) for p in content):
            parts = [{"type": p.get("type"), "text": p.get("text") if p.get("type") == "text" else None}
                     for p in content]
        else:
            raise SchemaError(f"column {column!r}: row {row} has a message whose content is "
                              "neither a string nor a list of {type, text} parts")
        if any(p["type"] not in ("image", "text") or p["type"] == "text" and not isinstance(p["text"], str)
               for p in parts):
            raise SchemaError(f"column {column!r}: row {row} has a content part that is neither "
                              "{type: 'image'} nor {type: 'text', text: <string>}")
        if not isinstance(message.get("role", role), str):
            raise SchemaError(f"column {column!r}: row {row} has a message whose role is not a string")
        messages.append({"role": message.get("role", role), "content": parts})
    if column == "prompt" and not any(p["type"] == "image" for m in messages for p in m["content"]):
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise SchemaError(f"column 'prompt': row {row} has no user message")
        first_user["content"].insert(0, {"type": "image", "text": None})
    return messages


def _string(value: Any, column: str, row: int) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"column {column!r} must hold a string in every row (e.g. answer '2', "
                          f"not 2); row {row} holds {type(value).__name__}")
    return value


def _from_columns(columns: dict[str, list[Any]], kind: Kind, base: Path) -> datasets.Dataset:
    """Build the canonical data set from Python columns, naming every column that does not fit."""
    features = features_for(kind)
    if "image" not in columns and "images" in columns:
        columns["image"] = columns.pop("images")
    problems = {c: f"missing column {c!r}: it must be {COLUMN_HELP[c]}" for c in features if c not in columns}
    converted: dict[str, list[Any]] = {}
    for column in (c for c in features if c in columns):
        values = []
        for row, value in enumerate(columns[column]):
            try:
                if column == "image":
                    values.append({"bytes": _image_bytes(value, base, row), "path": None})
                elif column in CONVERSATIONAL:
                    values.append(_messages(value, column, row))
                else:
                    values.append(_string(value, column, row))
            except SchemaError as exc:
                problems[column] = str(exc)
                break
        converted[column] = values
    if problems:
        raise SchemaError(f"not a valid {kind} data set: " + "; ".join(problems.values()))
    return datasets.Dataset.from_dict(converted, features=features)


def _canonical(ds: datasets.Dataset, kind: Kind, base: Path) -> datasets.Dataset:
    """``ds`` in canonical column order and types; other layouts go through ``_from_columns``."""
    features = features_for(kind)
    if not schema_problems(ds.features, kind):
        extra = [c for c in ds.column_names if c not in features]
        if extra:
            log.info("dropped extra columns", extra={"columns": len(extra)})
        ds = ds.select_columns(list(features))
        return ds if ds.features == features else ds.cast(features, keep_in_memory=True)
    present = [c for c in ds.column_names if c in features or c == "images"]
    return _from_columns(ds.select_columns(present).with_format("arrow")[:].to_pydict(), kind, base)


def load_preferences(path: str | Path, split: str | None = None, kind: Kind = "pairs") -> datasets.Dataset:
    """Read a local data set into the canonical ``kind`` schema, or raise ``SchemaError``/``DataError``.

    ``split`` picks one split of a ``DatasetDict`` folder (required when it holds several); a
    single-split source accepts ``None`` or ``"train"``.
    """
    features_for(kind)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass the path of a local data set "
                        "(save_to_disk folder, .parquet or .jsonl). Nothing is downloaded.")
    base = path if path.is_dir() else path.parent
    source = _read(path, split)
    if isinstance(source, dict):
        ds = _from_columns(source, kind, base)
    else:
        ds = _canonical(source, kind, base)
    validate_preferences(ds, kind)
    log.info("preference data loaded", extra={"rows": len(ds), "kind": kind})
    return ds


def verify_images(ds: datasets.Dataset) -> None:
    """Decode-check every image of ``ds``; raise ``SchemaError`` naming the first bad rows."""
    bad = []
    for row, value in enumerate(ds.cast_column("image", datasets.Image(decode=False))["image"]):
        try:
            with Image.open(io.BytesIO(value["bytes"]) if value["bytes"] else value["path"]) as image:
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, TypeError, ValueError):
            bad.append(row)
    if bad:
        raise SchemaError(f"column 'image': {len(bad)} row(s) cannot be decoded as images, "
                          f"first {bad[:5]}")

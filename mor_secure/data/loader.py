"""Read a local preference data set in TRL's layouts into the canonical schema, naming every problem.

Sources: a ``save_to_disk`` folder (Dataset or DatasetDict), a ``.parquet`` file, or a JSON lines
file (``.jsonl``; a ``.json`` array too) whose images are paths (relative to the file) or bytes.
Layouts: TRL's conversational one (``prompt``/``chosen``/``rejected`` as message lists whose content
is a string or a list of ``{type, text}`` parts) and its standard one (plain strings, wrapped into
messages), with the image under ``image`` or ``images`` (a list of one). Other column names come
through a mapping ``{canonical name: the data set's name}``; extra columns are ignored and listed.
Every refused row is named with its reason, and nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, UnidentifiedImageError

from mor_secure.data.schema import (
    COLUMN_HELP,
    METADATA,
    REQUIRED,
    DataError,
    Kind,
    SchemaError,
    answer_text,
    assistant_message,
    features_for,
    pixel_digest,
    question_text,
    schema_problems,
    user_prompt,
    validate_preferences,
)
from mor_secure.logs import get_logger

log = get_logger("data.loader")

CONVERSATIONAL = ("prompt", "chosen", "rejected")
CANONICAL = ("image", *CONVERSATIONAL, *METADATA)
JSON_SUFFIXES = (".jsonl", ".json")
MAX_IMAGE_PIXELS = 40_000_000
"""Default largest image (width x height) a data set may hold; checked from the header before decoding."""
MAX_PROBLEMS_SHOWN = 10
IMAGE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    Image.DecompressionBombError,
)
ALIASES = {
    "prompt": ("question", "query", "instruction", "input"),
    "image": ("images", "img", "picture"),
    "chosen": ("response_chosen", "preferred", "accepted"),
    "rejected": ("response_rejected", "dispreferred"),
}
"""Column names seen in public preference sets, only ever suggested (the mapping is always explicit)."""


@dataclass
class LoadReport:
    """A data set read into the canonical schema: the good rows, how columns were mapped, every problem.

    ``rows[i]`` is the source row of ``data[i]``; problems name source rows.
    """

    data: datasets.Dataset
    source_rows: int
    mapping: dict[str, str]
    ignored: list[str]
    problems: list[str]
    rows: list[int] = field(default_factory=list)


def parse_columns(items: Sequence[str]) -> dict[str, str]:
    """``["prompt=question", ...]`` (the CLI's --columns) as ``{"prompt": "question"}``."""
    mapping = {}
    for item in items:
        for part in (p for p in item.split(",") if p.strip()):
            ours, sep, theirs = part.partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise DataError(f"column mapping {part!r} is not NAME=COLUMN, e.g. prompt=question")
            mapping[ours.strip()] = theirs.strip()
    return mapping


def check_mapping(columns: Mapping[str, str]) -> None:
    """Refuse a mapping whose keys are not canonical column names (``DataError`` naming the choices)."""
    unknown = sorted(set(columns) - set(CANONICAL))
    if unknown:
        raise DataError(
            f"column mapping names {', '.join(map(repr, unknown))}, which the product does not "
            f"read; map one of {', '.join(CANONICAL)} (as product name = data set column)"
        )


# ---- reading a source ----------------------------------------------------------------------


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(
            f"{path}: unreadable save_to_disk metadata ({type(exc).__name__}); the folder is "
            "damaged: save the data set again with `save_to_disk`"
        ) from None


def available_splits(path: str | Path) -> list[str]:
    """Split names of a ``DatasetDict`` folder; ``[]`` for a single-split source."""
    path = Path(path).expanduser()
    marker = path / "dataset_dict.json"
    if not (path.is_dir() and marker.is_file()):
        return []
    splits = _json_file(marker).get("splits") if isinstance(_json_file(marker), dict) else None
    if not isinstance(splits, list) or not all(isinstance(s, str) and s and "/" not in s for s in splits):
        raise DataError(
            f"{marker}: no list of split names; the folder is damaged: save the data set again with `save_to_disk`"
        )
    return splits


def _load_from_disk(path: Path) -> datasets.Dataset:
    import pyarrow

    try:
        ds = datasets.load_from_disk(str(path))
    except (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError, pyarrow.ArrowException) as exc:
        raise DataError(
            f"{path}: cannot read this save_to_disk folder ({type(exc).__name__}: "
            f"{str(exc)[:200]}); its metadata or data files are damaged: save it again"
        ) from None
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{path}: holds several splits; pass one of them")
    return ds


def _read_folder(path: Path, split: str | None) -> datasets.Dataset:
    if (path / "dataset_dict.json").is_file():
        splits = available_splits(path)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            wanted = "no split was given" if split is None else f"it has no split {split!r}"
            raise DataError(f"{path} holds splits {', '.join(splits)} but {wanted}; pass one of them")
        return _load_from_disk(path / split)
    if (path / "state.json").is_file():
        return _load_from_disk(path)
    if (path / "manifest.json").is_file():
        raise DataError(
            f"{path} is a benchmark world, not one data set; pass one of its parts, "
            "e.g. client-0, server/router or server/eval"
        )
    raise DataError(
        f"{path} is a folder but not a saved data set (no dataset_dict.json or "
        "state.json); pass a save_to_disk folder, a .parquet or a .jsonl file"
    )


def _read_json_lines(path: Path) -> tuple[dict[str, list[Any]], list[str]]:
    """Columns of a JSON lines file (or a .json array) and one problem per unreadable line."""
    raw = path.read_bytes()
    problems: list[str] = []
    if path.suffix == ".json" and raw.lstrip()[:1] == b"[":
        try:
            records = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        except ValueError as exc:
            raise DataError(
                f"{path}: not valid JSON ({getattr(exc, 'msg', exc)}); fix the file or "
                "write one JSON object per line (.jsonl)"
            ) from None
        except RecursionError:
            raise DataError(f"{path}: JSON nested too deeply to be a data set; fix the file") from None
    else:
        records = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                records.append(json.loads(line.decode("utf-8")))
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not UTF-8 text (byte {exc.start} of the line); save the file as UTF-8")
            except ValueError as exc:
                problems.append(f"{where}: not valid JSON ({getattr(exc, 'msg', exc)})")
            except RecursionError:
                problems.append(f"{where}: JSON nested too deeply")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: expected one JSON object per line (or a JSON array of objects)")
    if not records and not problems:
        raise DataError(f"{path}: holds no rows")
    columns = sorted({key for record in records for key in record})
    return {c: [record.get(c) for record in records] for c in columns}, problems


def _read_parquet(path: Path) -> datasets.Dataset:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return datasets.Dataset(pq.read_table(path))
    except (pyarrow.ArrowException, OSError, ValueError, TypeError) as exc:
        raise DataError(
            f"{path}: not a readable parquet file ({type(exc).__name__}: {str(exc)[:200]}); "
            "write it again (e.g. Dataset.to_parquet)"
        ) from None


def _read(path: Path, split: str | None) -> tuple[datasets.Dataset | dict[str, list[Any]], list[str]]:
    if path.is_dir():
        return _read_folder(path, split), []
    if split not in (None, "train"):
        raise DataError(f"{path} is a single file and holds one split; it has no split {split!r}")
    if path.suffix == ".parquet":
        return _read_parquet(path), []
    if path.suffix in JSON_SUFFIXES:
        return _read_json_lines(path)
    raise DataError(f"{path}: unknown format {path.suffix!r}; use a save_to_disk folder, .parquet or .jsonl")


# ---- one row into canonical form -------------------------------------------------------------


class RowProblem(ValueError):
    """One value of one row cannot be used; the message says why (the caller adds the row)."""


def image_bytes(value: Any, base: Path, max_pixels: int) -> bytes:
    """The encoded bytes of one image (bytes, a {bytes, path} dict, a path, or a list of one),
    its size checked from the header (``RowProblem`` otherwise)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise RowProblem(f"holds {len(value)} images; one image per row is supported: keep one (or split the row)")
        value = value[0]
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        file = Path(value).expanduser()
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            raise RowProblem(f"names {file}, which does not exist (relative paths are read from {base})")
        value = file.read_bytes()
    if not isinstance(value, bytes):
        raise RowProblem(f"must hold an image path or image bytes, not {type(value).__name__}")
    open_image(value, max_pixels, decode=False)
    return value


def _oversized(pixels: str, max_pixels: int) -> RowProblem:
    return RowProblem(
        f"is an oversized image ({pixels} pixels, more than {max_pixels}); downscale it or "
        "raise [data] max_image_pixels"
    )


def open_image(data: bytes, max_pixels: int, *, decode: bool = True) -> Image.Image:
    """The image in ``data``, its size checked from the header first; decoded fully (``decode``) or only
    verified (cheaper: structure and checksums). ``RowProblem`` says what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise _oversized(f"{width}x{height} = {width * height}", max_pixels)
            if decode:
                image.load()
            else:
                image.verify()
            return image
    except Image.DecompressionBombError as exc:  # PIL refuses past its own limit before telling the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _oversized(found.group(1) if found else "too many", max_pixels) from None
    except RowProblem:
        raise
    except IMAGE_ERRORS as exc:
        raise RowProblem(
            f"cannot be decoded as an image ({type(exc).__name__}); the file is corrupt or not an image"
        ) from None


def _parts(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not (isinstance(content, list) and all(isinstance(p, dict) for p in content)):
        raise RowProblem("has a message whose content is neither a string nor a list of {type, text} parts")
    parts = []
    for part in content:
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image":
            parts.append({"type": "image", "text": None})
        else:
            raise RowProblem("has a content part that is neither {type: 'image'} nor {type: 'text', text: <string>}")
    return parts


def messages(value: Any, column: str) -> list[dict]:
    """One conversational column value in canonical form (plain strings are wrapped)."""
    if isinstance(value, str):
        return user_prompt(value) if column == "prompt" else assistant_message(value)
    role = "user" if column == "prompt" else "assistant"
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise RowProblem(
            f"must hold a string or a non-empty list of {{role, content}} messages, not {type(value).__name__}"
        )
    out = []
    for message in value:
        if not isinstance(message.get("role", role), str):
            raise RowProblem("has a message whose role is not a string")
        out.append({"role": message.get("role", role), "content": _parts(message.get("content"))})
    if column == "prompt" and not any(p["type"] == "image" for m in out for p in m["content"]):
        first_user = next((m for m in out if m["role"] == "user"), None)
        if first_user is None:
            raise RowProblem("has no user message")
        first_user["content"].insert(0, {"type": "image", "text": None})
    return out


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise RowProblem(f"must hold a string (e.g. answer '2', not 2), not {type(value).__name__}")
    return value


def _convert(column: str, value: Any, base: Path, max_pixels: int) -> Any:
    if column == "image":
        return {"bytes": image_bytes(value, base, max_pixels), "path": None}
    if column in CONVERSATIONAL:
        return messages(value, column)
    return _string(value)


# ---- the data set --------------------------------------------------------------------------


def _dataset(columns: dict[str, list[Any]], features: datasets.Features) -> datasets.Dataset:
    """A Dataset of ``columns``, named by a random fingerprint: ``from_dict`` would hash every image's
    bytes through dill just to name its cache (5 of 14 s for 1000 photos)."""
    import uuid

    import pyarrow

    table = pyarrow.Table.from_pydict(
        features.encode_batch(columns) if any(columns.values()) else columns, schema=features.arrow_schema
    )
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=uuid.uuid4().hex)


def _mapped(
    names: Sequence[str], columns: Mapping[str, str], kind: Kind
) -> tuple[dict[str, str], list[str], list[str]]:
    """({canonical: source column}, ignored source columns, column problems) for a source's columns."""
    check_mapping(columns)
    problems = []
    mapping = {}
    for ours in CANONICAL:
        theirs = columns.get(ours)
        if theirs is not None:
            if theirs not in names:
                problems.append(
                    f"column mapping {ours} = {theirs!r}: the data set has no column {theirs!r} "
                    f"(it has {', '.join(names)})"
                )
                continue
            mapping[ours] = theirs
        elif ours in names and ours not in columns.values():
            mapping[ours] = ours
        elif ours == "image" and "images" in names and "images" not in columns.values():
            mapping[ours] = "images"
    for ours in REQUIRED[kind]:
        if ours not in mapping and ours not in columns:
            hint = next((a for a in ALIASES.get(ours, ()) if a in names and a not in mapping.values()), None)
            fix = (
                f"; the data set has {hint!r}: map it with --columns {ours}={hint} or [data] columns = "
                f'{{{ours} = "{hint}"}}'
                if hint
                else ""
            )
            problems.append(f"missing column {ours!r}: it must be {COLUMN_HELP[ours]}{fix}")
    used = set(mapping.values())
    return mapping, [n for n in names if n not in used], problems


def _python_columns(ds: datasets.Dataset, names: Sequence[str]) -> tuple[dict[str, list[Any]], dict[int, str]]:
    """Python values of ``names``; text that is not UTF-8 is reported by row ({row: problem}), not raised."""
    table = ds.with_format("arrow")[:]
    out, problems = {}, {}
    for name in names:
        try:
            out[name] = table.column(name).to_pylist()
        except UnicodeDecodeError:
            values = []
            for row in range(table.num_rows):
                try:
                    values.append(table.column(name).slice(row, 1).to_pylist()[0])
                except UnicodeDecodeError:
                    values.append(None)
                    problems[row] = f"row {row}: column {name!r} holds text that is not UTF-8; fix its encoding"
            out[name] = values
    return out, problems


def _canonical_fast(ds: datasets.Dataset, mapping: dict[str, str], kind: Kind) -> datasets.Dataset | None:
    """``ds`` itself (renamed, selected) when its columns already have canonical types; else None."""
    if any(ours != theirs for ours, theirs in mapping.items()):
        ds = ds.rename_columns({theirs: ours for ours, theirs in mapping.items() if ours != theirs})
    present = [c for c in CANONICAL if c in mapping]
    if schema_problems(datasets.Features({c: ds.features[c] for c in present}), kind):
        return None
    features = features_for(kind, present)
    ds = ds.select_columns(list(features))
    return ds if ds.features == features else ds.cast(features, keep_in_memory=True)


def read_preferences(
    path: str | Path,
    split: str | None = None,
    kind: Kind = "pairs",
    *,
    columns: Mapping[str, str] | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> LoadReport:
    """Read a local data set into the canonical ``kind`` schema, keeping the rows that fit and naming
    every one that does not (``DataError`` only when nothing can be read at all).

    ``split`` picks one split of a ``DatasetDict`` folder (required when it holds several); a
    single-split source accepts ``None`` or ``"train"``. ``columns`` maps canonical names to the
    data set's. Rows of canonical type keep their images undecoded (see ``scan_rows``).
    """
    features_for(kind)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder; pass the path of a local data set "
            "(save_to_disk folder, .parquet or .jsonl). Nothing is downloaded."
        )
    base = path if path.is_dir() else path.parent
    source, problems = _read(path, split)
    names = list(source.column_names if isinstance(source, datasets.Dataset) else source)
    mapping, ignored, column_problems = _mapped(names, columns or {}, kind)
    problems = column_problems + problems
    bad_rows: dict[int, str] = {}
    if isinstance(source, datasets.Dataset):
        n = len(source)
        fast = None if column_problems else _canonical_fast(source, mapping, kind)
        if fast is not None:
            return LoadReport(fast, n, mapping, ignored, problems, list(range(n)))
        values, bad_rows = _python_columns(source, [mapping[c] for c in mapping])
    else:
        values, n = source, len(next(iter(source.values()), []))
    present = [c for c in CANONICAL if c in mapping]
    converted: dict[str, list[Any]] = {c: [] for c in present}
    kept = []
    for row in range(n):
        if row in bad_rows:
            problems.append(bad_rows[row])
            continue
        out, reasons = {}, []
        for column in present:
            try:
                out[column] = _convert(column, values[mapping[column]][row], base, max_pixels)
            except RowProblem as exc:
                reasons.append(f"column {mapping[column]!r} {exc}")
        if reasons:
            problems.append(f"row {row}: " + "; ".join(reasons))
            continue
        kept.append(row)
        for column, value in out.items():
            converted[column].append(value)
    if column_problems:
        empty = features_for(kind, present)
        return LoadReport(_dataset({c: [] for c in empty}, empty), n, mapping, ignored, problems)
    data = _dataset(converted, features_for(kind, present))
    if ignored:
        log.info("extra columns ignored", extra={"columns": len(ignored)})
    return LoadReport(data, n, mapping, ignored, problems, kept)


def refuse(report_or_problems: LoadReport | list[str], kind: str, path: Any) -> None:
    """Raise ``SchemaError`` naming the first problems (and how many more) when there are any."""
    problems = report_or_problems.problems if isinstance(report_or_problems, LoadReport) else report_or_problems
    if not problems:
        return
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    tail = f"; and {more} more: `mor data check {path}` lists them all" if more > 0 else ""
    raise SchemaError(f"not a valid {kind} data set: {shown}{tail}")


def load_preferences(
    path: str | Path,
    split: str | None = None,
    kind: Kind = "pairs",
    *,
    columns: Mapping[str, str] | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> datasets.Dataset:
    """Read a local data set into the canonical ``kind`` schema, or raise ``SchemaError``/``DataError``
    naming every problem (see ``read_preferences``)."""
    report = read_preferences(path, split, kind, columns=columns, max_pixels=max_pixels)
    refuse(report, kind, path)
    validate_preferences(report.data, kind)
    log.info("preference data loaded", extra={"rows": len(report.data), "kind": kind})
    return report.data


# ---- one decoding pass: sizes, identities, refusals ------------------------------------------


@dataclass
class Scan:
    """What one decoding pass over a canonical data set found, row by row."""

    sizes: list[tuple[int, int]]
    question_keys: list[str]
    row_hashes: list[str]
    problems: list[str]


def raw_images(ds: datasets.Dataset) -> Iterator[bytes | str | None]:
    """Each row's encoded image bytes (or path), without decoding."""
    for value in ds.cast_column("image", datasets.Image(decode=False))["image"]:
        yield value["bytes"] or value["path"] if isinstance(value, dict) else None


def _row_text(ds: datasets.Dataset) -> Iterator[str]:
    columns = [c for c in CONVERSATIONAL if c in ds.column_names]
    for values in zip(*(ds[c] for c in columns)):
        yield json.dumps(dict(zip(columns, values)), sort_keys=True)


def scan_rows(ds: datasets.Dataset, *, max_pixels: int = MAX_IMAGE_PIXELS, rows: Sequence[int] | None = None) -> Scan:
    """Decode every image once (size checked from the header first) and hash each row's content.

    ``question_keys`` identify a question (pixels + question text): held-out rows are chosen by it and
    train/test duplicates found by it. ``row_hashes`` identify a whole row (pixels + every message).
    ``rows`` names the source row of each data row in problems.
    """
    rows = list(rows) if rows is not None else list(range(len(ds)))
    sizes, keys, hashes, problems = [], [], [], []
    prompts = ds["prompt"]
    for i, (raw, text) in enumerate(zip(raw_images(ds), _row_text(ds))):
        try:
            data = raw if isinstance(raw, bytes) else Path(str(raw)).read_bytes()
            with open_image(data, max_pixels) as image:
                sizes.append(image.size)
                pixels = pixel_digest(image)
        except (RowProblem, OSError) as exc:
            problems.append(f"row {rows[i]}: column 'image' {exc}")
            pixels = b""
        question = question_text(prompts[i])
        keys.append(hashlib.sha256(pixels + b"\0" + question.encode("utf-8")).hexdigest())
        hashes.append(hashlib.sha256(pixels + b"\0" + text.encode("utf-8")).hexdigest())
    return Scan(sizes, keys, hashes, problems)


def held_out(key: str, fraction: float) -> bool:
    """Whether the question with ``key`` (a hex SHA-256) is held out at ``fraction``: deterministic,
    independent of row order and layout, and all pairs of one question fall on the same side."""
    return int(key[:15], 16) / 16**15 < fraction


def text_lengths(ds: datasets.Dataset) -> dict[str, list[int]]:
    """Characters of the question and of each answer column, row by row."""
    out = {"prompt": [len(question_text(p)) for p in ds["prompt"]]}
    for column in ("chosen", "rejected"):
        if column in ds.column_names:
            out[column] = [len(answer_text(m)) for m in ds[column]]
    return out

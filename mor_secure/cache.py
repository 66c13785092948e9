"""Results cached on disk under a stamp of what made them: `mor demo`'s stages and the benchmarks' cells
share it, so a run cut short resumes where it stopped and a changed setting recomputes what it affects."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so a stamp compares equal after a round trip."""
    return json.loads(json.dumps(value))


def read_cached(path: Path, stamp: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result stored at ``path`` if it was made under ``stamp``; None when absent, unreadable or stale."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("stamp") != as_json(stamp):
        return None
    result = data.get("result")
    return result if isinstance(result, dict) else None


def write_cached(path: Path, stamp: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    """Store ``result`` under ``stamp`` for :func:`read_cached`; written whole or not at all (temp file, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"stamp": as_json(stamp), "result": result}, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)

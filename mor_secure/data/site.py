"""A site's data set read once: its splits (a held-out fraction where it has one split), one decoding
pass over every row, and the content fingerprint its privacy budget is keyed to.

The fingerprint covers every row of every split by content (image pixels and messages), sorted: it
does not change with the folder, the file names, extra files, the row order, the layout (save_to_disk,
parquet, JSON lines), the column names or the held-out fraction, so none of them starts a fresh budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from mor_secure.data.loader import (
    MAX_IMAGE_PIXELS,
    LoadReport,
    Scan,
    available_splits,
    held_out,
    read_preferences,
    refuse,
    scan_rows,
)
from mor_secure.data.schema import DataError, Kind
from mor_secure.logs import get_logger

log = get_logger("data.site")

FINGERPRINT_PREFIX = "content-sha256:"


@dataclass
class SplitRows:
    """The rows of one split as read and decoded: canonical data, its load report and its scan."""

    data: datasets.Dataset
    report: LoadReport
    scan: Scan


@dataclass
class SiteData:
    """Every split of a site's data set, read and decoded once; ``rows(split)`` applies the held-out rule."""

    path: Path
    kind: Kind
    splits: dict[str, SplitRows]
    train_split: str
    test_split: str
    test_fraction: float
    fingerprint: str
    held_out: bool = False
    _index: dict[str, list[int]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Every refused row or column of every split, with the split named."""
        named = len(self.splits) > 1
        return [
            f"{name}: {p}" if named else p
            for name, split in self.splits.items()
            for p in split.report.problems + split.scan.problems
        ]

    def rows(self, split: str) -> datasets.Dataset:
        """The canonical rows of ``split``; on a one-split data set, train and test are the held-out rule's sides."""
        if split in self._index:
            (source,) = self.splits.values()
            return source.data.select(self._index[split])
        if split not in self.splits:
            have = ", ".join(self.splits)
            raise DataError(
                f"{self.path} has no split {split!r} (it has {have}); set [data] train_split / "
                "test_split to one of them"
            )
        return self.splits[split].data

    def question_keys(self, split: str) -> list[str]:
        """The question identity (pixels + question) of each row of ``split``, in order."""
        if split in self._index:
            (source,) = self.splits.values()
            return [source.scan.question_keys[i] for i in self._index[split]]
        return self.splits[split].scan.question_keys


def fingerprint_of(scans: list[Scan], kind: str) -> str:
    """'content-sha256:...' over the sorted row hashes of every split (order, layout and paths do not count)."""
    digest = hashlib.sha256(f"mor-data/{kind}\0".encode())
    for row in sorted(h for scan in scans for h in scan.row_hashes):
        digest.update(bytes.fromhex(row))
    return FINGERPRINT_PREFIX + digest.hexdigest()


def open_site_data(
    path: str | Path,
    *,
    train_split: str = "train",
    test_split: str = "test",
    test_fraction: float = 0.1,
    columns: Mapping[str, str] | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    kind: Kind = "pairs",
    strict: bool = True,
) -> SiteData:
    """Read every split of ``path``, decode every image once and fingerprint the content.

    A pairs data set with one split (a file, a Dataset folder, a DatasetDict of one split) that lacks
    ``test_split`` holds out the questions whose key falls under ``test_fraction`` as the test split;
    training never reads them. Eval and prompt sets are never divided. ``strict`` raises ``SchemaError`` naming the
    problems, if any.
    """
    if not 0 <= test_fraction < 1:
        raise DataError(f"[data] test_fraction must be in [0, 1), got {test_fraction}")
    path = Path(path).expanduser()
    names: list[str | None] = list(available_splits(path)) if path.is_dir() else []
    splits: dict[str, SplitRows] = {}
    for name in names or [None]:  # None: a data set without named splits
        report = read_preferences(path, name, kind, columns=columns, max_pixels=max_pixels)
        scan = (
            scan_rows(report.data, max_pixels=max_pixels, rows=report.rows)
            if len(report.data)
            else Scan([], [], [], [])
        )
        splits[name or "train"] = SplitRows(report.data, report, scan)
    site = SiteData(
        path,
        kind,
        splits,
        train_split,
        test_split,
        test_fraction,
        fingerprint_of([s.scan for s in splits.values()], kind),
    )
    if kind == "pairs" and len(splits) == 1 and test_split not in splits:
        (only,) = splits.values()
        test = [i for i, key in enumerate(only.scan.question_keys) if held_out(key, test_fraction)]
        chosen = set(test)
        site._index = {train_split: [i for i in range(len(only.data)) if i not in chosen], test_split: test}
        site.held_out = True
        log.info(
            "held out a test fraction",
            extra={"test_fraction": test_fraction, "test_rows": len(test), "train_rows": len(only.data) - len(test)},
        )
    if strict:
        refuse(site.problems(), kind, path)
    return site

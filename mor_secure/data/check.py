"""What `mor data check` tells a data steward before training: rows per split, how columns were
mapped, image sizes, text lengths, truncation per reward-model family, train/test duplicates, and
every refused row with its reason."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mor_secure.data.site import SiteData


@dataclass
class CheckResult:
    """The report's lines and every problem (the command exits 1 when there is any)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _spread(values: Sequence[float], fmt: str = "{:g}") -> str:
    if not values:
        return "-"
    return "min {} / median {} / max {}".format(
        *(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
    )


def _mapping_line(site: SiteData) -> list[str]:
    report = next(iter(site.splits.values())).report
    parts = [ours if ours == theirs else f"{ours} <- {theirs!r}" for ours, theirs in report.mapping.items()]
    lines = [f"columns    {', '.join(parts) or 'none mapped'}"]
    if report.ignored:
        lines.append(f"ignored    {', '.join(report.ignored)} (extra columns, not read)")
    return lines


def _sizes(site: SiteData) -> str:
    sizes = [wh for split in site.splits.values() for wh in split.scan.sizes]
    if not sizes:
        return "images     none decoded"
    by_area = sorted(sizes, key=lambda wh: wh[0] * wh[1])
    small, middle, large = by_area[0], by_area[len(by_area) // 2], by_area[-1]
    return (
        f"images     {len(sizes)} decoded; smallest {small[0]}x{small[1]}, median {middle[0]}x{middle[1]}, "
        f"largest {large[0]}x{large[1]} pixels"
    )


def _texts(site: SiteData, split: str) -> list[str]:
    from mor_secure.data.loader import text_lengths

    lengths = text_lengths(site.rows(split))
    return [f"text       {split} {column} characters: {_spread(values)}" for column, values in lengths.items()]


def _truncation(site: SiteData, split: str, max_length: int, families: dict[str, Any]) -> list[str]:
    from mor_secure.data.schema import answer_text, question_text
    from mor_secure.rewards.truncation import count_truncated

    rows = site.rows(split)
    if "chosen" not in rows.column_names:
        return []
    prompts = [question_text(p) for p in rows["prompt"]]
    answers = [(answer_text(c), answer_text(r)) for c, r in zip(rows["chosen"], rows["rejected"])]
    lines = []
    for family, tokenizer in families.items():
        unit = "characters of any one text" if tokenizer is None else "text tokens of question + answer"
        n = count_truncated(prompts, answers, max_length, tokenizer=tokenizer)
        lines.append(
            f"truncation {family}: {n} of {len(rows)} {split} pairs exceed max_length {max_length} "
            f"({unit}); the end of each answer is kept"
        )
    return lines


def check_site_data(
    site: SiteData, *, max_length: int, families: dict[str, Any], only_split: str | None = None
) -> CheckResult:
    """The report of ``site`` (opened with ``strict=False``); ``families`` maps a family name to its
    tokenizer (None: counts characters)."""
    result = CheckResult(problems=site.problems())
    kind = site.kind
    names = list(site._index) if site.held_out else list(site.splits)
    if only_split is not None:
        names = [only_split]
    result.lines += _mapping_line(site)
    if site.held_out:
        ((name, only),) = site.splits.items()
        result.lines.append(
            f"read       {len(only.data)} valid {kind} rows of {only.report.source_rows} "
            f"(one split, {name!r}): divided into {site.train_split} and {site.test_split}"
        )
    for name in names:
        rows = site.rows(name)
        source = None if site.held_out else site.splits.get(name)
        total = f" of {source.report.source_rows}" if source is not None else ""
        domains = Counter(rows["domain"]) if "domain" in rows.column_names else None
        per = f" ({', '.join(f'{d} {n}' for d, n in sorted(domains.items()))})" if domains else ""
        held = (
            f"; held out by content: {site.test_fraction:g} of the questions"
            if site.held_out and name == site.test_split
            else ""
        )
        result.lines.append(f"{name}: {len(rows)} valid {kind} rows{total}{per}{held}")
    result.lines.append(_sizes(site))
    for name in names:
        result.lines += _texts(site, name)
    if kind == "pairs":
        train = site.train_split if site.train_split in names or site.held_out else names[0]
        if train in names:
            result.lines += _truncation(site, train, max_length, families)
    if site.train_split in names and site.test_split in names:
        train_keys = set(site.question_keys(site.train_split))
        shared = sum(key in train_keys for key in set(site.question_keys(site.test_split)))
        warn = "; warning: held-out accuracy is inflated by them, remove them from one split" if shared else ""
        result.lines.append(
            f"duplicates {shared} question(s) (same image pixels and question) in both "
            f"{site.train_split} and {site.test_split}{warn}"
        )
    result.lines.append(f"fingerprint {site.fingerprint} (content: the privacy budget follows it)")
    return result

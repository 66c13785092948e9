"""What every written report uses (`mor demo`'s and the benchmarks'): markdown tables and figures drawn
headless, so that report writers share one way of writing each."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of a markdown table: the header, its rule and one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


@contextmanager
def figure(path: Path, *, rows: int = 1, cols: int = 1, size: tuple[float, float], dpi: int = 120) -> Iterator[Any]:
    """Yield ``(fig, axes)`` of a new matplotlib figure (no display needed); on exit lay it out, save it to
    ``path`` (folders made as needed) and free it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)

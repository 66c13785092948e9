"""What every benchmark report carries: the machine it ran on (CPU, load, accelerator, versions), a
markdown file written in one go, and means with 95% t-intervals over seeds."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
"""The source checkout the benchmarks run from (``python -m benchmarks.NAME`` in this folder)."""


def machine_lines(packages: Sequence[str] = ()) -> list[str]:
    """Markdown bullet lines describing this machine: CPU and cores, load average, GPU if any, Python,
    OS and the versions of ``packages`` (distribution names)."""
    try:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or "?",
        )
    except OSError:
        cpu = platform.processor() or "?"
    lines = [
        f"- CPU: {cpu}, `nproc` = {os.cpu_count()}; load average at start {os.getloadavg()[0]:.2f} "
        "(the machine may be shared with other jobs)"
    ]
    if "torch" in packages:
        import torch

        lines.append(
            f"- Accelerator: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU only)'}"
        )
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    lines.append(f"- Python {platform.python_version()}" + "".join(f", {v}" for v in versions))
    lines.append(f"- {platform.platform()}")
    return lines


def machine_and_command(machine: Sequence[str], command: str) -> list[str]:
    """The closing sections of a report: the machine it ran on and the command that wrote it."""
    return ["## Machine", "", *machine, "", "## Command", "", "```", command, "```"]


def write_markdown(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` as one markdown file (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
"""Two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond)."""


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over seeds (NaN half-width for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def format_interval(pair: Sequence[float], scale: float = 100.0) -> str:
    """``mean ± half-width`` of a :func:`mean_interval` result times ``scale`` (percent by default), one
    decimal; the mean alone for a single seed, "-" for a NaN mean."""
    mean, half = pair
    if math.isnan(mean):
        return "-"
    return f"{scale * mean:.1f}" + ("" if math.isnan(half) else f" ± {scale * half:.1f}")

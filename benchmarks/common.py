"""What every benchmark report carries: the machine it ran on (CPU, load, accelerator, versions) and
a markdown file written in one go."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence
from pathlib import Path


def machine_lines(packages: Sequence[str] = ()) -> list[str]:
    """Markdown bullet lines describing this machine: CPU and cores, load average, GPU if any, Python,
    OS and the versions of ``packages`` (distribution names)."""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor() or "?")
    except OSError:
        cpu = platform.processor() or "?"
    lines = [f"- CPU: {cpu}, `nproc` = {os.cpu_count()}; load average at start {os.getloadavg()[0]:.2f} "
             "(the machine may be shared with other jobs)"]
    if "torch" in packages:
        import torch

        lines.append(f"- Accelerator: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU only)'}")
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    lines.append(f"- Python {platform.python_version()}" + "".join(f", {v}" for v in versions))
    lines.append(f"- {platform.platform()}")
    return lines


def write_markdown(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` as one markdown file (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")

"""The demo's stage runner: one log file per stage, markers that remember what built each stage, process groups.

Every command a stage runs is a ``mor`` subprocess (``python -m mor_secure.cli``), in its own process
group with its output appended to ``workdir/logs/STAGE.log``. A stage that finished writes
``workdir/.stages/STAGE.json`` with the parameters that made it (``mor_secure.cache``); a later run skips
it when they are unchanged (and nothing before it was rebuilt), so a second run reuses what is built.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mor_secure.cache import read_cached, write_cached
from mor_secure.errors import MorError

TAIL_LINES = 25


class DemoError(MorError, RuntimeError):
    """A stage failed; names the stage, its log file and the log's last lines."""

    def __init__(self, stage: str, log: Path, reason: str) -> None:
        self.stage, self.log = stage, log
        super().__init__(
            f"stage '{stage}' failed: {reason}\n--- last lines of {log} ---\n{tail(log)}",
            fix="the workdir is left for inspection; fix the cause and run again (built stages are reused)",
        )


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def child_env() -> dict[str, str]:
    """The environment of every child: offline model hubs, unbuffered output, a wide console for tables, and
    one intra-op thread unless OMP_NUM_THREADS says otherwise (on 2 shared cores, torch's default thread
    pool spin-waits: SFT ran at 3.2 s/step instead of 0.2 s/step)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "160",
        "NO_COLOR": "1",
    }


def mor_command(*args: object) -> list[str]:
    """``mor ARGS`` through the running interpreter (the same install, no PATH lookup; ``-P``: a folder named
    like a package in the current directory cannot shadow the installed one)."""
    return [sys.executable, "-P", "-m", "mor_secure.cli", *(str(a) for a in args)]


def signal_group(proc: subprocess.Popen, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process group of ``proc`` (a `mor` child started in a new session); False when the
    group is gone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL it if it has not exited within ``grace_s``."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not signal_group(proc, sig):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class StageContext:
    """What a running stage may use: its name, its log file and a way to run ``mor`` commands into it."""

    name: str
    log: Path

    def run(
        self,
        *args: object,
        parallel: Sequence[Sequence[object]] = (),
        env: dict[str, str] | None = None,
        stdout: Path | None = None,
    ) -> None:
        """Run ``mor ARGS`` (and the ``parallel`` ones at the same time); any non-zero exit fails the stage.

        ``stdout``: write the first command's standard output to this file instead of the log.
        """
        commands = [list(args)] if args else []
        commands += [list(a) for a in parallel]
        procs: list[tuple[subprocess.Popen, list[object]]] = []
        with open(self.log, "a", encoding="utf-8") as log:
            try:
                for i, command in enumerate(commands):
                    log.write(f"$ mor {' '.join(str(c) for c in command)}\n")
                    log.flush()
                    out = open(stdout, "w", encoding="utf-8") if stdout is not None and i == 0 else log
                    try:
                        procs.append(
                            (
                                subprocess.Popen(
                                    mor_command(*command),
                                    stdout=out,
                                    stderr=log,
                                    stdin=subprocess.DEVNULL,
                                    env=env or child_env(),
                                    start_new_session=True,
                                ),
                                command,
                            )
                        )
                    finally:
                        if out is not log:
                            out.close()
                for proc, command in procs:
                    if proc.wait() != 0:
                        raise DemoError(
                            self.name,
                            self.log,
                            f"`mor {' '.join(str(c) for c in command[:2])}` exited with status {proc.returncode}",
                        )
            finally:
                for proc, _ in procs:
                    stop_group(proc, grace_s=2.0)


@dataclass
class Stage:
    """One step of the demo: ``action(ctx)`` builds ``outputs`` from ``params``.

    ``always`` stages (starting agents, probing, the report) run every time and do not force later
    stages to rebuild; the others are skipped when their marker holds the same ``params``.
    """

    name: str
    title: str
    action: Callable[[StageContext], Any]
    params: dict[str, Any] = field(default_factory=dict)
    outputs: Sequence[Path] = ()
    always: bool = False


class StageRunner:
    """Runs stages in order with markers, logs and a progress line per stage (a rich console)."""

    def __init__(self, workdir: Path, console: Any, *, fresh: bool = False) -> None:
        self.workdir, self.console = workdir, console
        self.logs, self.markers = workdir / "logs", workdir / ".stages"
        if fresh:
            shutil.rmtree(self.markers, ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.markers.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        self._rebuilt = False

    def _marker(self, stage: Stage) -> Path:
        return self.markers / f"{stage.name}.json"

    def _is_built(self, stage: Stage) -> bool:
        if stage.always or self._rebuilt:
            return False
        built = read_cached(self._marker(stage), stage.params)
        return built is not None and all(Path(p).exists() for p in stage.outputs)

    def run(self, stages: Sequence[Stage]) -> None:
        """Run or skip each stage; a failure raises ``DemoError`` (its marker is removed, the workdir stays)."""
        total = len(stages)
        for index, stage in enumerate(stages, 1):
            label = f"[{index:>2}/{total}] {stage.title}"
            if self._is_built(stage):
                self.timings[stage.name] = 0.0
                self.console.print(f"{label} [dim]reused (built earlier with the same parameters)[/dim]")
                continue
            self._marker(stage).unlink(missing_ok=True)
            for path in stage.outputs:
                shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)
            log = self.logs / f"{stage.name}.log"
            log.write_text(f"# stage {stage.name}: {stage.title}\n", encoding="utf-8")
            start = time.monotonic()
            with self.console.status(f"{label} ... (log: {log})"):
                try:
                    stage.action(StageContext(stage.name, log))
                except DemoError:
                    self.console.print(f"{label} [red]FAILED[/red] after {time.monotonic() - start:.1f}s")
                    raise
                except Exception as exc:  # a bug or an unreadable output: still name the stage and its log
                    self.console.print(f"{label} [red]FAILED[/red] after {time.monotonic() - start:.1f}s")
                    raise DemoError(stage.name, log, f"{type(exc).__name__}: {exc}") from exc
            self.timings[stage.name] = time.monotonic() - start
            self.console.print(f"{label} [green]done[/green] in {self.timings[stage.name]:.1f}s")
            if not stage.always:
                self._rebuilt = True
                write_cached(self._marker(stage), stage.params, {"seconds": self.timings[stage.name]})

"""The benchmarks' stage runner: named stages with dependencies, run in spawned worker processes and cached
on disk (``mor_secure.cache``), so an interrupted benchmark resumes where it stopped."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mor_secure.cache import read_cached, write_cached


@dataclass(frozen=True)
class Task:
    """One cached stage: ``fn(*args, *results of inputs)`` in a worker; its result is kept at ``path`` under
    ``stamp`` (what it depends on besides its arguments). It starts after ``inputs`` and ``after`` are done."""

    path: Path
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...]
    stamp: Mapping[str, Any]
    inputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


def quiet_worker() -> None:
    """Worker start: one torch thread, no progress bars (spawned processes, one per core)."""
    import os

    os.environ["TQDM_DISABLE"] = "1"
    import datasets
    import torch
    import transformers

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def cached_results(tasks: Mapping[str, Task]) -> dict[str, dict[str, Any]]:
    """The results of the tasks already cached under their stamps, by name."""
    return {name: hit for name, task in tasks.items() if (hit := read_cached(task.path, task.stamp)) is not None}


def run_tasks(tasks: Mapping[str, Task], jobs: int) -> dict[str, dict[str, Any]]:
    """Run the tasks, ``jobs`` at a time, each once its inputs and ``after`` are done, earliest in ``tasks``
    first (so a first seed finishes before the next one's late stages); results by name, cached ones read.
    Each computed result also records its ``stage_seconds``."""
    done = cached_results(tasks)
    for name in done:
        print(f"cached: {name}", flush=True)
    pending: dict[Future, tuple[str, float]] = {}
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=quiet_worker) as pool:
        while len(done) < len(tasks):
            busy = {name for name, _ in pending.values()}
            for name, task in tasks.items():
                waits = task.inputs + task.after
                ready = name not in done and name not in busy and all(d in done for d in waits)
                if ready and len(pending) < jobs:
                    future = pool.submit(task.fn, *task.args, *(done[d] for d in task.inputs))
                    pending[future] = name, time.perf_counter()
            if not pending:
                missing = sorted(d for t in tasks.values() for d in t.inputs + t.after if d not in tasks)
                raise ValueError(f"tasks wait for stages that are not planned: {missing}")
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in finished:
                name, began = pending.pop(future)
                done[name] = {**future.result(), "stage_seconds": time.perf_counter() - began}
                write_cached(tasks[name].path, tasks[name].stamp, done[name])
                print(f"[{time.perf_counter() - start:7.0f} s] done: {name}", flush=True)
    return done

"""A fixed pool of daemon threads fed by a ``queue.SimpleQueue``.

It does what ``ThreadPoolExecutor.submit`` does for fire-and-forget work at a fraction of the
cost per task (no future, no idle-semaphore dance), which matters when every request crosses it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from mor_secure.logs import get_logger

log = get_logger("transport.workers")


class Workers:
    """``n`` threads running submitted callables in order of submission; exceptions are logged."""

    def __init__(self, n: int, name: str) -> None:
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(n)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on a worker thread."""
        self._tasks.put((fn, args))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Let queued tasks finish, then stop the threads."""
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            fn, args = task
            try:
                fn(*args)
            except Exception:
                log.exception("worker task failed")

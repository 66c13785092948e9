"""A thread-safe FIFO feeding a socket-owning loop thread, with a file descriptor its poller watches.

ZeroMQ sockets belong to one thread. Other threads put records (or callables to run in the loop)
here; the first put after a drain writes one byte to a pipe so ``zmq.Poller`` wakes the loop.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any


class Outbox:
    """Multi-producer queue, drained by one thread at a time, whose ``fileno()`` becomes readable when items
    wait."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._signalled = False
        self._closed = False
        self.consumer: int | None = None
        """Thread id of the thread consuming now (it may change between drains, as the agent's duty moves
        between its network thread and its standby); that thread's own puts need no wake-up."""

    def fileno(self) -> int:
        """The descriptor to register with a poller (readable while items may be waiting)."""
        return self._read_fd

    def put(self, item: Any) -> None:
        """Queue ``item`` (any thread) and wake the consumer if it may be asleep; no-op once closed."""
        if self._closed:
            return
        self._items.append(item)
        if not self._signalled and threading.get_ident() != self.consumer:
            self._signalled = True
            try:
                os.write(self._write_fd, b"\0")
            except (BlockingIOError, OSError):
                pass  # the pipe is full or closed: the consumer is awake or gone

    def __len__(self) -> int:
        return len(self._items)

    def drain(self, woken: bool = True) -> list[Any]:
        """Take every queued item (consumer thread only), oldest first; ``woken`` says the poller saw
        the descriptor readable, so the wake-up byte is consumed (a syscall saved when it was not)."""
        self._signalled = False
        if woken:
            try:
                os.read(self._read_fd, 4096)
            except (BlockingIOError, OSError):
                pass
        items = []
        pop = self._items.popleft
        while self._items:
            items.append(pop())
        return items

    def close(self) -> None:
        """Close the pipe (after the consumer stopped)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass

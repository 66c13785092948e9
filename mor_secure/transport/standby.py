"""Cover for a loop thread that runs a job itself: a standby thread takes over the loop's duties
only when the job overruns.

Handing every request from a network thread to a handler thread wakes one more thread per request,
and on a busy machine that wake-up (cold caches, GIL hand-backs) costs more than the work it moves.
So the loop thread runs the job itself under ``covering()``, which arms a one-shot timer for
``delay_s`` (the takeover delay). Jobs run one after another on the loop thread, so the timer only
expires while a job runs if that job overran: a short job (the common case) never wakes another
thread. Each job's end disarms the timer (one system call): a timer left armed would wake the standby
once the requests came further apart than the delay (with 8 agents on 2 cores, after nearly every
request), for nothing. When a job overruns, the standby thread takes the
duty lock and runs ``turn`` (one round of the loop's duties: read the socket, send heartbeats, sleep
until woken) until the job ends; the loop thread then calls ``wake`` so the standby's sleep ends, and
takes the duty back. So the loop's duties pause for at most ``delay_s`` (plus a wake-up) whatever the
job does. An exception from a standby turn ends the cover and is raised in the loop thread when its
job ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mor_secure.transport.timer import one_shot_timer


class Standby:
    """A thread that runs ``turn`` for the loop thread while the loop thread's job outlasts ``delay_s``.

    The loop thread holds the duty from construction on; ``turn`` must return soon after ``wake()``
    is called (it sleeps on something ``wake`` makes ready).
    """

    def __init__(self, turn: Callable[[], None], wake: Callable[[], None], *, delay_s: float, name: str) -> None:
        self.delay_s = delay_s
        self.takeovers = 0
        """How many jobs overran and were covered (for tests and diagnostics)."""
        self._turn = turn
        self._wake = wake
        self._duty = threading.Lock()
        self._duty.acquire()
        self._job = False
        self._closed = False
        self._failure: BaseException | None = None
        self._timer = one_shot_timer()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def covering(self) -> Standby:
        """A context (this object: no generator per job) that runs the body (loop thread, holding the duty)
        with the standby ready to take over the duty after ``delay_s``; on exit the duty is back with the
        loop thread, and a standby turn's exception is raised there."""
        return self

    def __enter__(self) -> None:
        self._job = True
        self._timer.arm(self.delay_s)
        self._duty.release()

    def __exit__(self, *exc: object) -> None:
        self._job = False
        self._timer.disarm()  # an expiry after the job would wake the standby for nothing
        if not self._duty.acquire(blocking=False):  # the standby is on duty: end its turn's sleep
            self._wake()
            self._duty.acquire()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Stop the standby thread (loop thread, outside ``covering``)."""
        self._closed = True
        self._timer.fire()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._timer.close()

    def _run(self) -> None:
        while True:
            self._timer.wait()
            if self._closed:
                return
            # The expiry of the last job's arm comes after that job ended: take over only while a job
            # runs and the duty is free (the loop thread holds it between jobs).
            if not (self._job and self._duty.acquire(blocking=False)):
                continue
            self.takeovers += 1
            try:
                while self._job and not self._closed:
                    self._turn()
            except BaseException as exc:  # raised in the loop thread when its job ends
                self._failure = exc
            finally:
                self._duty.release()

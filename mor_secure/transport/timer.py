"""A one-shot timer that one thread arms while another sleeps on it.

The agent's network thread arms it before running a handler itself; a standby thread sleeps in
``wait()`` and must wake only when the timer expires. Arming must therefore not wake the sleeper: a
thread wake-up per request costs more than the hand-off it replaces. On Linux the timer is a
``timerfd``: arming and disarming are one system call each (1-3 us here), and the sleeper stays
asleep. Elsewhere a condition variable stands in, which wakes the sleeper at each arm
(correct, only slower).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from typing import Protocol

_CLOCK_MONOTONIC = 1
_TFD_CLOEXEC = 0o2000000


class OneShotTimer(Protocol):
    """What the standby needs from a timer."""

    def arm(self, delay_s: float) -> None:
        """Expire once, ``delay_s`` from now (replacing any earlier setting)."""

    def disarm(self) -> None:
        """Cancel a pending expiry (the job it covered ended)."""

    def wait(self) -> None:
        """Block until the timer expires (or ``fire`` is called)."""

    def fire(self) -> None:
        """Expire now (to release a waiter that should stop)."""

    def close(self) -> None:
        """Release the timer's resources (after its waiter stopped)."""


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class TimerFD:
    """Linux ``timerfd``: the waiter sleeps in ``read`` and is woken by the kernel only on expiry."""

    def __init__(self) -> None:
        # PyDLL keeps the GIL across the calls: they are short system calls, and releasing the GIL
        # would invite a switch to another thread at every arm.
        libc = ctypes.PyDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime
        self._settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
        self._fd: int = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._on = ctypes.pointer(_Itimerspec())
        self._off = ctypes.pointer(_Itimerspec())
        self._delay_s = -1.0

    def arm(self, delay_s: float) -> None:
        """Expire once, ``delay_s`` from now; an expiry not yet waited for is forgotten (the kernel
        resets the count)."""
        if delay_s != self._delay_s:  # the usual case re-arms with the same delay: no struct rebuilt
            self._delay_s = delay_s
            seconds = int(delay_s)
            self._on.contents.it_value = _Timespec(seconds, max(1, int((delay_s - seconds) * 1e9)))
        if self._settime(self._fd, 0, self._on, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def disarm(self) -> None:
        """A zero setting stops the timer (about 1 us: cheaper than the standby's idle wake-up)."""
        if self._settime(self._fd, 0, self._off, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def wait(self) -> None:
        os.read(self._fd, 8)  # blocks (GIL released) until at least one expiry; the count is not needed

    def fire(self) -> None:
        self.arm(1e-9)

    def close(self) -> None:
        os.close(self._fd)


class ConditionTimer:
    """Portable stand-in: a deadline under a condition variable (each ``arm`` wakes the waiter)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None

    def arm(self, delay_s: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + delay_s
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def wait(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self._deadline = None
                    return
                self._cond.wait(left)

    def fire(self) -> None:
        self.arm(0.0)

    def close(self) -> None:
        pass


def one_shot_timer() -> OneShotTimer:
    """The cheapest timer this platform offers."""
    if sys.platform.startswith("linux"):
        try:
            return TimerFD()
        except (OSError, AttributeError):  # a libc without timerfd (very old, or not glibc-like)
            pass
    return ConditionTimer()

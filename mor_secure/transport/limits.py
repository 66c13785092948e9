"""Bounded bookkeeping against peers who flood: a token bucket per address and a windowed throttle.

Both keep a bounded number of keys (the oldest are forgotten first), so an outsider cycling through
addresses cannot grow them; the server uses them to refuse new handshakes cheaply, before any TLS
work, and the coordinator to turn a flood of refusals into a few ledger entries and one summary.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


class AddressBuckets:
    """A token bucket per key (``rate`` tokens a second, at most ``burst``), for at most ``max_keys`` keys."""

    def __init__(
        self, rate: float, burst: float, *, max_keys: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last)

    def take(self, key: str) -> bool:
        """Take one token for ``key`` (True), or refuse (False) when its bucket is empty."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed


@dataclass
class Summary:
    """What a throttle held back during one window: counts by key and by reason (top entries only)."""

    started: float
    ended: float
    suppressed: int
    by_key: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)


class Throttle:
    """Lets the first ``per_window`` events of each window through (``per_key`` per key); counts the rest.

    ``admit`` says whether an event may be written out in full; ``flush`` returns the ``Summary`` of
    what was held back once a window has ended (None when nothing was), so a flood of any size costs a
    bounded number of records per window.
    """

    def __init__(
        self,
        window_s: float,
        per_window: int,
        *,
        per_key: int | None = None,
        top: int = 20,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.window_s, self.per_window, self.top = window_s, per_window, top
        self.per_key = per_window if per_key is None else per_key
        self._clock, self._wall = clock, wall
        self._reset(clock())

    def _reset(self, now: float) -> None:
        self._start, self._wall_start = now, self._wall()
        self._admitted = 0
        self._per_key: Counter[str] = Counter()
        self._held_keys: Counter[str] = Counter()
        self._held_reasons: Counter[str] = Counter()
        self._held = 0

    def admit(self, key: str, reason: str) -> bool:
        """True when this event may be recorded in full; otherwise it is counted for the summary."""
        if self._per_key[key] < self.per_key and self._admitted < self.per_window:
            self._per_key[key] += 1
            self._admitted += 1
            return True
        self.hold(key, reason)
        return False

    def hold(self, key: str, reason: str) -> None:
        """Count an event for the summary without recording it in full (e.g. when a queue is full)."""
        self._held += 1
        self._count(self._held_keys, key)
        self._count(self._held_reasons, reason)

    def _count(self, counter: Counter[str], key: str) -> None:
        """Count ``key``; past 4 * top distinct keys, new ones go under "(other)" (memory stays bounded)."""
        if key in counter or len(counter) < 4 * self.top:
            counter[key] += 1
        else:
            counter["(other)"] += 1

    def flush(self, force: bool = False) -> Summary | None:
        """The summary of the window just ended (or, with ``force``, of the window so far) when events
        were held back; starts a new window whenever the current one ended."""
        now = self._clock()
        if not force and now - self._start < self.window_s:
            return None
        summary = None
        if self._held:
            summary = Summary(
                self._wall_start,
                self._wall(),
                self._held,
                dict(self._held_keys.most_common(self.top)),
                dict(self._held_reasons.most_common(self.top)),
            )
        self._reset(now)
        return summary

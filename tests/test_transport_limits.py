"""The bounded bookkeeping against floods: token buckets per address and the windowed throttle (fake clocks)."""

from __future__ import annotations

from mor_secure.transport.limits import AddressBuckets, Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_buckets_limit_each_address_and_forget_the_oldest_keys():
    clock = Clock()
    buckets = AddressBuckets(rate=2.0, burst=3, max_keys=4, clock=clock)
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b")  # another address has its own bucket
    clock.now = 0.5
    assert buckets.take("a") and not buckets.take("a")  # one token back after half a second
    for i in range(10):
        buckets.take(f"x{i}")
    assert len(buckets._buckets) == 4


def test_throttle_admits_a_quota_per_window_and_summarises_the_rest():
    clock = Clock()
    throttle = Throttle(window_s=10.0, per_window=4, per_key=2, top=2, clock=clock, wall=clock)
    admitted = [throttle.admit(key, "plaintext") for key in ("a", "a", "a", "b", "c", "d", "e")]
    assert admitted == [True, True, False, True, True, False, False]
    assert throttle.flush() is None  # the window is still open
    clock.now = 10.0
    summary = throttle.flush()
    assert summary.suppressed == 3 and summary.by_reason == {"plaintext": 3}
    assert sum(summary.by_key.values()) <= 3 and len(summary.by_key) <= 2
    assert throttle.flush() is None and throttle.admit("a", "x")  # a fresh window


def test_throttle_memory_stays_bounded_under_many_keys():
    throttle = Throttle(window_s=60.0, per_window=1, top=5)
    for i in range(10_000):
        throttle.admit(f"10.0.{i // 256}.{i % 256}", f"reason {i % 7}")
    assert len(throttle._held_keys) <= 4 * 5 + 1
    summary = throttle.flush(force=True)
    assert summary.suppressed == 9_999 and len(summary.by_key) <= 5

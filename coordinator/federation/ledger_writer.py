"""The coordinator's ledger writer: one thread, a bounded queue, and refusals throttled into summaries.

Every refused peer used to cost an fsynced ledger entry through an unbounded queue, so outsiders could
fill the disk and the memory. Now refusals pass a ``Throttle``: a few per window are written in full
(at most a few per peer), the rest are counted by peer and reason into one ``refusal_summary`` entry
per window. Peers refused before authentication share one quota, so a flood of them cannot crowd out
the refusal of a certified site, which has its own few per window. The queue is bounded: a refusal
that finds it full is counted, never waited for. Jobs from authenticated sites (signed privacy
reports) wait for room instead: they are few and must not be lost.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Callable

from mor_secure.ledger import LedgerError, PrivacyLedger
from mor_secure.logs import get_logger
from mor_secure.transport.limits import Summary, Throttle

log = get_logger("coordinator.ledger")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


class LedgerWriter:
    """Appends to ``ledger`` on one thread from a queue of at most ``max_queue`` jobs."""

    def __init__(
        self,
        ledger: PrivacyLedger,
        *,
        max_queue: int = 1024,
        window_s: float = 60.0,
        per_window: int = 20,
        per_peer: int = 5,
    ) -> None:
        self.ledger = ledger
        self._jobs: queue.Queue = queue.Queue(max_queue)
        self._outsiders = Throttle(window_s, per_window, per_key=per_peer)
        self._certified = Throttle(window_s, 100 * per_window, per_key=per_peer)  # names the CA issued
        self._lock = threading.Lock()  # the throttle is shared by the transport threads and the writer
        self._stopping = threading.Event()
        self.refusals_summarised = 0
        """Refusals counted into summary entries instead of written one by one."""
        self._thread = threading.Thread(target=self._run, name="mor-ledger", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the writer thread, waiting for room in the queue (authenticated work only)."""
        self._jobs.put((fn, args))

    def refusal(self, peer: str, reason: str, *, certified: bool = False) -> None:
        """Record a refused peer (``certified``: known by its certificate, else by its address): in full while
        the window's quota lasts and the queue has room, else counted for the summary."""
        throttle = self._certified if certified else self._outsiders
        with self._lock:
            if not throttle.admit(peer, reason):
                self.refusals_summarised += 1
                return
        try:
            self._jobs.put_nowait((self._write_refusal, (peer, reason)))
        except queue.Full:
            with self._lock:
                throttle.hold(peer, reason)
                self.refusals_summarised += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued and the summary of the current window, then stop the thread."""
        self._stopping.set()
        self._jobs.put((lambda: None, ()))
        self._thread.join(timeout)
        self._write_summary(force=True)

    def _run(self) -> None:
        while True:
            try:
                fn, args = self._jobs.get(timeout=1.0)
            except queue.Empty:
                fn = None
            if fn is not None:
                try:
                    fn(*args)
                except Exception:
                    log.exception("ledger job failed")
            self._write_summary()
            if self._stopping.is_set() and self._jobs.empty():
                return

    def _write_refusal(self, peer: str, reason: str) -> None:
        try:
            self.ledger.record_refusal(peer, reason)
        except LedgerError as exc:
            log.error("could not record a refusal", extra={"peer": peer, "error": str(exc)})

    def _write_summary(self, force: bool = False) -> None:
        for throttle in (self._outsiders, self._certified):
            with self._lock:
                summary = throttle.flush(force)
            if summary is not None:
                self._write(summary)

    def _write(self, summary: Summary) -> None:
        try:
            self.ledger.record_refusal_summary(
                _iso(summary.started), _iso(summary.ended), summary.suppressed, summary.by_key, summary.by_reason
            )
        except LedgerError as exc:
            log.error("could not record a refusal summary", extra={"count": summary.suppressed, "error": str(exc)})
        else:
            log.warning("refusals summarised in the ledger", extra={"count": summary.suppressed})

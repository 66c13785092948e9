"""What the federation looks like now, for `mor coordinator status` (which runs as another process).

The running ``Federation`` writes ``status.json`` beside its ledger every few seconds (replaced
atomically): its sites, their worker sessions, when each site was last seen, reported epsilon,
circuit-breaker state and the failures of the last hour. ``read_status`` joins that snapshot with
the ledger (certificate expiry from the signed reports, refusals of the last hour).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509

from mor_secure import pki
from mor_secure.errors import MorError
from mor_secure.ledger import read_entries
from mor_secure.logs import get_logger
from mor_secure.reports import ReportError, SignedReport

if TYPE_CHECKING:
    from coordinator.config import CoordinatorConfig
    from coordinator.federation.pool import ClientPool, SiteHealth


class Observed(Protocol):
    """What the status writer reads of a running federation (``coordinator.federation.service.Federation``): the
    writer is given one and never imports the service, which starts the writer."""

    config: CoordinatorConfig
    pool: ClientPool

    def reports(self) -> dict[str, Any]: ...

    def health(self) -> dict[str, SiteHealth]: ...


log = get_logger("coordinator.federation.status")

STATUS_NAME = "status.json"
WINDOW_S = 3600.0
"""Failures and refusals are listed for this many seconds back."""


class StatusError(MorError, ValueError):
    """The status snapshot cannot be read; the message names the file and what to do."""


def status_path(config: CoordinatorConfig) -> Path:
    """``status.json`` in the coordinator's run folder (the folder of its ledger)."""
    if config.ledger.path is None:
        raise ValueError("config.ledger.path is not set; load the config with load_coordinator_config")
    return Path(config.ledger.path).parent / STATUS_NAME


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StatusError(
            f"{path} is unreadable ({exc}): it is rewritten every few seconds while the "
            "coordinator runs; delete it if it stays broken"
        ) from None
    return data if isinstance(data, dict) else None


class StatusWriter:
    """A thread that writes the federation's snapshot to ``path`` every ``interval_s`` seconds."""

    def __init__(self, federation: Observed, path: Path, *, interval_s: float = 2.0) -> None:
        self.federation, self.path, self.interval_s = federation, Path(path), interval_s
        try:
            previous = _read_json(self.path)
        except ValueError:
            previous = None  # a broken snapshot is rewritten from scratch
        self._last_seen: dict[str, float] = dict((previous or {}).get("last_seen", {}))
        self._failures: list[dict[str, Any]] = [
            f for f in (previous or {}).get("failures", []) if f.get("at", 0) > time.time() - WINDOW_S
        ]
        self._counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Write now, then every ``interval_s`` seconds until ``stop``."""
        self.write()
        self._thread = threading.Thread(target=self._run, name="mor-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write a last snapshot saying the coordinator stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.write(running=False)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.write()
            except OSError as exc:
                log.warning(
                    "could not write the status snapshot", extra={"path": str(self.path), "error": exc.strerror}
                )

    def snapshot(self, *, running: bool = True) -> dict[str, Any]:
        """The federation now: sites with their sessions, epsilon, breaker state; failures of the last hour."""
        fed, now = self.federation, time.time()
        admitted = {peer.session_id for peer in fed.pool.peers()}
        reports = fed.reports()
        health = fed.health()
        sessions = fed.pool.server.peers() if running else []
        for site, h in health.items():
            new = h.failures - self._counts.get(site, 0)
            if new > 0:
                self._failures.append({"at": now, "site": site, "count": new, "reason": h.last_failure[:300]})
            self._counts[site] = h.failures
        self._failures = [f for f in self._failures if f["at"] > now - WINDOW_S]
        sites: dict[str, Any] = {}
        for site in sorted(set(fed.config.clients.allow) | {p.site for p in sessions}):
            workers = [
                {
                    "worker_id": p.worker_id,
                    "session_id": p.session_id,
                    "address": p.address,
                    "connected_at": p.connected_at,
                    "fingerprint": p.fingerprint,
                    "admitted": p.session_id in admitted,
                }
                for p in sessions
                if p.site == site
            ]
            if workers:
                self._last_seen[site] = now
            report = reports.get(site)
            sites[site] = {
                "allowed": site in fed.config.clients.allow,
                "workers": workers,
                "epsilon": None if report is None else ("inf" if math.isinf(report.epsilon) else report.epsilon),
                "breaker": health[site].state if site in health else "closed",
            }
        return {
            "version": 1,
            "coordinator": fed.config.name,
            "running": running,
            "written_at": now,
            "interval_s": self.interval_s,
            "sites": sites,
            "last_seen": dict(self._last_seen),
            "failures": list(self._failures),
        }

    def write(self, *, running: bool = True) -> None:
        """Replace ``path`` atomically with the current snapshot."""
        data = json.dumps(self.snapshot(running=running), indent=1).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)


@dataclass
class SiteStatus:
    """One site as `mor coordinator status` shows it."""

    site: str
    allowed: bool
    workers: list[dict[str, Any]] = field(default_factory=list)
    last_seen: float | None = None
    cert_expires: dt.datetime | None = None
    epsilon: float | None = None
    scored_last_hour: int = 0
    failures_last_hour: list[str] = field(default_factory=list)


@dataclass
class FederationStatus:
    """The whole picture: whether the coordinator runs, how fresh the snapshot is, and every site."""

    coordinator: str
    running: bool
    snapshot_age_s: float | None
    sites: list[SiteStatus]


def _epsilon(value: Any) -> float | None:
    return math.inf if value == "inf" else (float(value) if isinstance(value, (int, float)) else None)


def read_status(config: CoordinatorConfig, *, now: float | None = None) -> FederationStatus:
    """Join the running coordinator's snapshot (if any) with its ledger; ``ValueError``/``LedgerError``
    name an unreadable file."""
    now = time.time() if now is None else now
    snap = _read_json(status_path(config)) or {}
    age = now - snap["written_at"] if "written_at" in snap else None
    running = bool(snap.get("running")) and age is not None and age < 3 * float(snap.get("interval_s", 2.0)) + 5
    rows: dict[str, SiteStatus] = {s: SiteStatus(s, True) for s in config.clients.allow}
    for site, info in snap.get("sites", {}).items():
        row = rows.setdefault(site, SiteStatus(site, bool(info.get("allowed"))))
        row.workers = list(info.get("workers", [])) if running else []
        row.epsilon = _epsilon(info.get("epsilon"))
    for site, seen in snap.get("last_seen", {}).items():
        rows.setdefault(site, SiteStatus(site, False)).last_seen = seen
    for failure in snap.get("failures", []):
        if failure.get("at", 0) > now - WINDOW_S and failure.get("site") in rows:
            rows[failure["site"]].failures_last_hour.append(f"{failure.get('count', 1)}x {failure.get('reason')}")
    _join_ledger(config, rows, now, live={w["fingerprint"] for r in rows.values() for w in r.workers})
    return FederationStatus(str(snap.get("coordinator", config.name)), running, age, [rows[s] for s in sorted(rows)])


def _join_ledger(config: CoordinatorConfig, rows: dict[str, SiteStatus], now: float, live: set[str]) -> None:
    """Certificate expiry and epsilon from signed reports, last seen, items scored and refusals of the hour."""
    path = Path(config.ledger.path) if config.ledger.path is not None else None
    if path is None or not path.exists():
        return
    entries = read_entries(path)
    since = dt.datetime.fromtimestamp(now - WINDOW_S, dt.timezone.utc)
    for entry in entries:
        body, when = entry.body, entry.time
        if entry.kind == "refusal":
            peer = str(body.get("peer", ""))
            if when > since and peer.startswith("mor://client/"):  # a certified site (not a stray address)
                site = peer.removeprefix("mor://client/")
                row = rows.setdefault(site, SiteStatus(site, site in config.clients.allow))
                row.failures_last_hour.append(f"refused at {when:%H:%M:%S}: {body.get('reason')}")
            continue
        row = rows.get(str(body.get("site", "")))
        if row is None:
            continue
        row.last_seen = max(row.last_seen or 0.0, when.timestamp())
        if entry.kind == "scoring_session" and when > since:
            row.scored_last_hour += int(body.get("items", 0))
        elif entry.kind == "privacy_report":
            if not row.workers:
                row.epsilon = _epsilon(body.get("epsilon"))
            if not row.workers or body.get("cert_fingerprint") in live:
                row.cert_expires = _cert_expiry(body)


def _cert_expiry(body: dict[str, Any]) -> dt.datetime | None:
    """The expiry of the certificate that signed a ledger report (it travels with the signature)."""
    try:
        cert = x509.load_pem_x509_certificate(SignedReport.from_dict(body["signed_report"]).cert_pem)
    except (KeyError, ReportError, ValueError):
        return None
    return cert.not_valid_after_utc if pki.fingerprint(cert) == body.get("cert_fingerprint") else None

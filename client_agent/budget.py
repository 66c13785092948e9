"""The site's lifetime privacy budget: an append-only JSON-lines ledger of every training run's
accountant history, keyed by the data set's fingerprint, and the check that runs before training.

Spend is composed by the accountant over all runs' histories (never summed epsilons). A run
reserves its full planned history before it reads a single row; a resumed run keeps its run id, so
its later records replace its earlier one and it counts once. Non-private baselines are recorded
but spend nothing: their models must never be released (their privacy report says so).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mor_secure.logs import get_logger
from mor_secure.privacy import AccountantHistory, BudgetTooLow, compose, epsilon, plan_noise

log = get_logger("client.budget")

LEDGER_FORMAT = 1
STATUSES = ("planned", "finished", "baseline")
_SKIPPED_FILES = ("cache-", ".")


class BudgetExceeded(RuntimeError):
    """The planned run would take the data set's composed epsilon above the lifetime budget.

    ``fits`` is the largest target_epsilon that the same run (steps, sample rate) could still
    spend within the budget, or None when nothing fits any more.
    """

    def __init__(self, spent: float, asked: float, total: float, max_epsilon: float, delta: float,
                 fits: float | None = None) -> None:
        self.spent, self.asked, self.total, self.max_epsilon, self.fits = spent, asked, total, max_epsilon, fits
        remaining = max(max_epsilon - spent, 0.0)
        fix = (f"Set [privacy].target_epsilon to at most {fits:.3f} (runs compose, so the room is not "
               "simply max minus spent), or train on new data" if fits else
               "Nothing more fits: train on new data")
        super().__init__(
            f"privacy budget exceeded: spent epsilon {spent:.3f} of {max_epsilon:g} on this data set "
            f"(delta {delta:.2g}); this run asks {asked:.3f}, which composes to {total:.3f}; "
            f"remaining {remaining:.3f}. {fix}; the budget is never reset.")


def largest_fitting_epsilon(prior: AccountantHistory, planned: AccountantHistory, *, max_epsilon: float,
                            delta: float, accountant: str) -> float | None:
    """The epsilon of the largest run shaped like ``planned`` (same steps and sample rate, more noise)
    that ``prior`` leaves room for under ``max_epsilon``; None if there is none."""
    if len(planned) != 1 or epsilon(prior, delta, accountant) >= max_epsilon:
        return None
    (mechanism,) = planned.entries
    try:
        sigma = plan_noise(max_epsilon, delta, mechanism.sample_rate, mechanism.steps,
                           prior_history=prior, accountant=accountant)
    except BudgetTooLow:
        return None
    return epsilon(AccountantHistory([(sigma, mechanism.sample_rate, mechanism.steps)]), delta, accountant)


class LedgerCorrupt(RuntimeError):
    """A ledger line is not a valid record; the budget fails closed."""


def data_fingerprint(path: str | Path) -> str:
    """'sha256:...' over the data set as stored: every file's relative path and bytes, in order.

    Reads bytes only (no row is parsed); cache files written by `datasets` are skipped.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: data set not found; set [data].path to a preference data folder")
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file()
        and not any(part.startswith(_SKIPPED_FILES) for part in p.relative_to(root).parts))
    digest = hashlib.sha256()
    for file in files:
        rel = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(rel.encode("utf-8") + b"\0" + str(file.stat().st_size).encode() + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def default_ledger_path(data_path: str | Path) -> Path:
    """DATA.privacy-ledger.jsonl beside the data folder (not inside it: that would change its fingerprint)."""
    data = Path(data_path)
    return data.parent / f"{data.name}.privacy-ledger.jsonl"


@dataclass
class LedgerRecord:
    """One line of the ledger: a run's accountant history at one moment of its life."""

    run_id: str
    data_fingerprint: str
    status: str
    history: AccountantHistory
    n_pairs: int
    family: str
    time: str

    def to_json(self) -> dict[str, Any]:
        return {"format": LEDGER_FORMAT, "run_id": self.run_id, "data_fingerprint": self.data_fingerprint,
                "status": self.status, "history": self.history.state_dict(), "n_pairs": self.n_pairs,
                "family": self.family, "time": self.time}

    @classmethod
    def from_json(cls, data: Any) -> LedgerRecord:
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise ValueError(f"not a ledger record (format {LEDGER_FORMAT})")
        if data.get("status") not in STATUSES:
            raise ValueError(f"unknown status {data.get('status')!r}")
        fields = {k: data.get(k) for k in ("run_id", "data_fingerprint", "family", "time")}
        if not all(isinstance(v, str) for v in fields.values()) or not isinstance(data.get("n_pairs"), int):
            raise ValueError("run_id, data_fingerprint, family, time must be strings and n_pairs an integer")
        return cls(status=data["status"], history=AccountantHistory.from_state_dict(data.get("history")),
                   n_pairs=data["n_pairs"], **fields)


def now_utc() -> str:
    """The current time as ISO 8601 UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class BudgetStatus:
    """The lifetime spend on one data set as the ledger composes it."""

    data_fingerprint: str
    runs: int
    spent: float
    max_epsilon: float
    delta: float
    accountant: str
    ledger: str

    @property
    def remaining(self) -> float:
        return max(self.max_epsilon - self.spent, 0.0)


class SiteLedger:
    """The append-only ledger file; every read and append holds an exclusive lock on it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[TextIO]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self, fh: TextIO) -> list[LedgerRecord]:
        fh.seek(0)
        records = []
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                records.append(LedgerRecord.from_json(json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise LedgerCorrupt(f"{self.path}:{number}: not a valid ledger record ({exc}); the budget "
                                    "fails closed. Restore the ledger from a backup; never delete it") from exc
        return records

    @staticmethod
    def _append(fh: TextIO, record: LedgerRecord) -> None:
        fh.seek(0, os.SEEK_END)
        fh.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())

    def records(self) -> list[LedgerRecord]:
        """Every record, oldest first."""
        if not self.path.exists():
            return []
        with self._locked() as fh:
            return self._read(fh)

    @staticmethod
    def prior_history(records: list[LedgerRecord], fingerprint: str,
                      exclude_run: str | None = None) -> tuple[AccountantHistory, int]:
        """Composed history of every private run on ``fingerprint`` (the latest record per run) and their count."""
        latest: dict[str, LedgerRecord] = {}
        for record in records:
            if record.data_fingerprint == fingerprint and record.run_id != exclude_run:
                latest[record.run_id] = record
        private = [r.history for r in latest.values() if r.status != "baseline"]
        return compose(private), len(private)

    def status(self, fingerprint: str, *, max_epsilon: float, delta: float, accountant: str) -> BudgetStatus:
        """What the ledger says has been spent on ``fingerprint``."""
        prior, runs = self.prior_history(self.records(), fingerprint)
        return BudgetStatus(fingerprint, runs, epsilon(prior, delta, accountant), max_epsilon, delta,
                            accountant, str(self.path))

    def reserve(self, record: LedgerRecord, *, max_epsilon: float, delta: float, accountant: str) -> BudgetStatus:
        """Check ``record``'s planned history against the budget and append it, atomically.

        Raises ``BudgetExceeded`` (nothing written) when prior runs composed with this one would
        exceed ``max_epsilon``. A record whose run id is already in the ledger replaces that run.
        """
        with self._locked() as fh:
            prior, runs = self.prior_history(self._read(fh), record.data_fingerprint, exclude_run=record.run_id)
            spent = epsilon(prior, delta, accountant)
            if record.status != "baseline":
                asked = epsilon(record.history, delta, accountant)
                total = epsilon(prior + record.history, delta, accountant)
                if not total <= max_epsilon or math.isinf(total):
                    fits = largest_fitting_epsilon(prior, record.history, max_epsilon=max_epsilon,
                                                   delta=delta, accountant=accountant)
                    raise BudgetExceeded(spent, asked, total, max_epsilon, delta, fits)
                spent = total
            self._append(fh, record)
        log.info("privacy budget reserved", extra={"run_id": record.run_id, "status": record.status,
                                                   "prior_runs": runs, "epsilon_total": round(spent, 4)})
        return BudgetStatus(record.data_fingerprint, runs + (record.status != "baseline"), spent,
                            max_epsilon, delta, accountant, str(self.path))

    def append(self, record: LedgerRecord) -> None:
        """Record a run's progress or end (no check: its plan was reserved before it started)."""
        with self._locked() as fh:
            self._append(fh, record)


def site_status(config: Any) -> tuple[BudgetStatus, list[dict[str, Any]]]:
    """The budget of a site's [data].path and its runs (latest record each), for `mor client budget`.

    delta is [privacy].delta or 1/n capped at 1e-5, n read from the data set's metadata.
    """
    from client_agent.train import load_pairs
    from mor_secure.privacy import default_delta

    if config.data.path is None:
        raise FileNotFoundError("no data set: set [data].path in the site config")
    fingerprint = data_fingerprint(config.data.path)
    delta = config.privacy.delta or default_delta(len(load_pairs(config, config.data.train_split)))
    ledger = SiteLedger(config.privacy.ledger or default_ledger_path(config.data.path))
    latest: dict[str, LedgerRecord] = {}
    for record in ledger.records():
        if record.data_fingerprint == fingerprint:
            latest[record.run_id] = record
    runs = []
    for record in latest.values():
        spent = epsilon(record.history, delta, config.privacy.accountant)
        runs.append({"run_id": record.run_id, "status": record.status, "family": record.family,
                     "steps": record.history.steps, "time": record.time,
                     "epsilon": spent if math.isfinite(spent) else None})
    status = ledger.status(fingerprint, max_epsilon=config.privacy.max_epsilon, delta=delta,
                           accountant=config.privacy.accountant)
    return status, runs

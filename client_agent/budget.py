"""The site's lifetime privacy budget: an append-only JSON-lines ledger of every training run's
accountant history, keyed by the data set's content fingerprint and the questions (image + question)
each run trained on, and the check that runs before training: a run composes with every earlier run
that shares its data or any of its questions.

Spend is composed by the accountant over all runs' histories (never summed epsilons). A run
reserves its full planned history after the data, settings and model are checked and before its
first noisy step; a run that fails before that step releases its reservation. A resumed run keeps its
run id, so its later records replace its earlier one and it counts once. Non-private baselines are
recorded but spend nothing: their models must never be released (their privacy report says so).

The ledger fails closed: a missing or unreadable ledger refuses training and status (a deleted
ledger is never silently recreated empty); a new one is started only by an explicit, logged
operator command (`mor client init`, `mor client budget --new-ledger`). The first private run on a
data set fixes its delta and accountant; later runs must use the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mor_secure.errors import MissingInput, MorError
from mor_secure.files import create_exclusive, hash_file_into, open_locked
from mor_secure.logs import get_logger
from mor_secure.privacy import MAX_TARGET_EPSILON, AccountantHistory, BudgetTooLow, compose, epsilon, plan_noise

log = get_logger("client.budget")

LEDGER_FORMAT = 1
STATUSES = ("planned", "finished", "baseline", "released")
START_MARK = "started"
_SKIPPED_FILES = ("cache-", ".")


class BudgetExceeded(MorError, RuntimeError):
    """The planned run would take the data set's composed epsilon above the lifetime budget.

    ``fits`` is the largest target_epsilon that the same run (steps, sample rate) could still
    spend within the budget, or None when nothing fits any more.
    """

    def __init__(
        self, spent: float, asked: float, total: float, max_epsilon: float, delta: float, fits: float | None = None
    ) -> None:
        self.spent, self.asked, self.total, self.max_epsilon, self.fits = spent, asked, total, max_epsilon, fits
        remaining = max(max_epsilon - spent, 0.0)
        fix = (
            f"Set [privacy].target_epsilon to at most {fits:.3f} (runs compose, so the room is not "
            "simply max minus spent), or train on new data"
            if fits
            else "Nothing more fits: train on new data"
        )
        super().__init__(
            f"privacy budget exceeded: spent epsilon {spent:.3f} of {max_epsilon:g} on this data set "
            f"(delta {delta:.2g}); this run asks {asked:.3f}, which composes to {total:.3f}; "
            f"remaining {remaining:.3f}. {fix}; the budget is never reset."
        )


def largest_fitting_epsilon(
    prior: AccountantHistory, planned: AccountantHistory, *, max_epsilon: float, delta: float, accountant: str
) -> float | None:
    """The epsilon of the largest run shaped like ``planned`` (same steps and sample rate, more noise)
    that ``prior`` leaves room for under ``max_epsilon``; None if there is none."""
    max_epsilon = min(max_epsilon, MAX_TARGET_EPSILON)
    if len(planned) != 1 or epsilon(prior, delta, accountant) >= max_epsilon:
        return None
    (mechanism,) = planned.entries
    try:
        sigma = plan_noise(
            max_epsilon, delta, mechanism.sample_rate, mechanism.steps, prior_history=prior, accountant=accountant
        )
    except (BudgetTooLow, ValueError):
        return None
    return epsilon(AccountantHistory([(sigma, mechanism.sample_rate, mechanism.steps)]), delta, accountant)


class LedgerCorrupt(MorError, RuntimeError):
    """A ledger line is not a valid record, or the ledger cannot be read; the budget fails closed."""


class LedgerMissing(LedgerCorrupt):
    """The ledger file does not exist: it may have been deleted, so the budget fails closed."""


class SettingsChanged(MorError, ValueError):
    """A run's delta or accountant differs from the one its data set's first run fixed."""


def file_fingerprint(path: str | Path) -> str:
    """'sha256:...' over the data set's files as stored (the key of ledgers written before content
    fingerprints; still matched so that their runs keep counting).

    Reads bytes only (no row is parsed); cache files written by `datasets` are skipped.
    """
    root = Path(path)
    if not root.exists():
        raise MissingInput(f"{root}: data set not found; set [data].path to a preference data folder")
    files = (
        [root]
        if root.is_file()
        else sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(_SKIPPED_FILES) for part in p.relative_to(root).parts)
        )
    )
    digest = hashlib.sha256()
    for file in files:
        rel = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(rel.encode("utf-8") + b"\0" + str(file.stat().st_size).encode() + b"\0")
        hash_file_into(digest, file)
    return f"sha256:{digest.hexdigest()}"


def default_ledger_path(data_path: str | Path) -> Path:
    """DATA.privacy-ledger.jsonl beside the data folder (kept out of it, where a copy would travel with the data)."""
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
    delta: float | None = None
    accountant: str | None = None
    split: dict[str, Any] | None = None
    questions: str | None = None
    """Id of the run's question set (``SiteLedger`` keeps it beside the ledger): the image+question
    identities it trained on, so that a run on any data sharing one of them counts against it."""

    def to_json(self) -> dict[str, Any]:
        out = {
            "format": LEDGER_FORMAT,
            "run_id": self.run_id,
            "data_fingerprint": self.data_fingerprint,
            "status": self.status,
            "history": self.history.state_dict(),
            "n_pairs": self.n_pairs,
            "family": self.family,
            "time": self.time,
        }
        extra = {"delta": self.delta, "accountant": self.accountant, "split": self.split, "questions": self.questions}
        return {**out, **{k: v for k, v in extra.items() if v is not None}}

    @classmethod
    def from_json(cls, data: Any) -> LedgerRecord:
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise ValueError(f"not a ledger record (format {LEDGER_FORMAT})")
        if data.get("status") not in STATUSES:
            raise ValueError(f"unknown status {data.get('status')!r}")
        fields = {k: data.get(k) for k in ("run_id", "data_fingerprint", "family", "time")}
        if not all(isinstance(v, str) for v in fields.values()) or not isinstance(data.get("n_pairs"), int):
            raise ValueError("run_id, data_fingerprint, family, time must be strings and n_pairs an integer")
        delta, accountant, split = data.get("delta"), data.get("accountant"), data.get("split")
        questions = data.get("questions")
        if (
            not (delta is None or isinstance(delta, float) and 0 < delta < 1)
            or not (accountant is None or isinstance(accountant, str))
            or not (split is None or isinstance(split, dict))
        ):
            raise ValueError("delta must be a number in (0, 1), accountant a string and split an object")
        if not (questions is None or isinstance(questions, str) and re.fullmatch(r"[0-9a-f]{64}", questions)):
            raise ValueError("questions must be the sha256 id of a question set")
        return cls(
            status=data["status"],
            history=AccountantHistory.from_state_dict(data.get("history")),
            n_pairs=data["n_pairs"],
            delta=delta,
            accountant=accountant,
            split=split,
            questions=questions,
            **fields,
        )


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


QUESTION_BYTES = 16
"""Bytes of each question identity kept in a run's question set (a SHA-256 prefix)."""


@dataclass(frozen=True)
class DataKey:
    """What identifies a data set's runs in the ledger: its fingerprints (content, and the files' for
    older records) and the questions a run trains on (image + question identities)."""

    fingerprints: frozenset[str]
    questions: frozenset[bytes] = frozenset()

    @classmethod
    def of(cls, fingerprints: set[str] | str, question_keys: list[str] | None = None) -> DataKey:
        """A key from fingerprint(s) and hex question keys (``SiteData.question_keys``)."""
        prints = frozenset({fingerprints} if isinstance(fingerprints, str) else fingerprints)
        keys = frozenset(bytes.fromhex(k)[:QUESTION_BYTES] for k in question_keys or [])
        return cls(prints, keys)

    def packed(self) -> bytes:
        """The question set as sorted fixed-width bytes (what the ledger stores)."""
        return b"".join(sorted(self.questions))


def fixed_settings(records: list[LedgerRecord]) -> tuple[float, str] | None:
    """(delta, accountant) fixed by the first private run among ``records`` that recorded them, if any."""
    for record in records:
        if record.status in ("planned", "finished") and record.delta is not None and record.accountant is not None:
            return record.delta, record.accountant
    return None


class SiteLedger:
    """The append-only ledger file; every read and append holds an exclusive lock on it.

    It is never created implicitly: ``start`` (an operator's explicit command) creates it; reading or
    reserving on a missing ledger raises ``LedgerMissing``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def start(self, *, reason: str = "") -> None:
        """Create a new, empty ledger (a header line saying when and why); refuses an existing one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": LEDGER_FORMAT,
            "ledger": START_MARK,
            "time": now_utc(),
            "reason": reason,
            "user": os.environ.get("USER", ""),
        }
        try:
            create_exclusive(self.path, 0o600, (json.dumps(header, sort_keys=True) + "\n").encode("utf-8"))
        except FileExistsError:
            raise LedgerCorrupt(f"{self.path} already exists; a ledger is never replaced or reset") from None
        log.warning("new privacy ledger started", extra={"ledger": str(self.path), "reason": reason})

    def _missing(self) -> LedgerMissing:
        return LedgerMissing(
            f"{self.path}: the site's privacy ledger does not exist, so the budget fails closed (a deleted "
            "ledger would reset it). If it was moved or deleted, restore it from backup or fix [privacy] "
            "ledger; if this site has never trained, start one with `mor client budget --config FILE "
            "--new-ledger` (logged)"
        )

    @contextmanager
    def _locked(self) -> Iterator[TextIO]:
        try:
            fd = open_locked(self.path)
        except FileNotFoundError:
            raise self._missing() from None
        except OSError as exc:
            raise LedgerCorrupt(
                f"{self.path}: cannot open the site's privacy ledger ({exc.strerror}); the "
                "budget fails closed: fix its permissions or restore it"
            ) from None
        with os.fdopen(fd, "r+", encoding="utf-8") as fh:  # closing it releases the flock
            yield fh

    def _read(self, fh: TextIO) -> list[LedgerRecord]:
        fh.seek(0)
        records = []
        try:
            lines = list(fh)
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerCorrupt(
                f"{self.path}: unreadable ({type(exc).__name__}); the budget fails closed. "
                "Restore the ledger from a backup; never delete it"
            ) from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if isinstance(data, dict) and data.get("ledger") == START_MARK and number == 1:
                    continue
                records.append(LedgerRecord.from_json(data))
            except (ValueError, TypeError, RecursionError) as exc:
                raise LedgerCorrupt(
                    f"{self.path}:{number}: not a valid ledger record ({exc}); the budget "
                    "fails closed. Restore the ledger from a backup; never delete it"
                ) from None
        return records

    @staticmethod
    def _append(fh: TextIO, record: LedgerRecord) -> None:
        fh.seek(0, os.SEEK_END)
        fh.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())

    def records(self) -> list[LedgerRecord]:
        """Every record, oldest first (``LedgerMissing`` when there is no ledger)."""
        with self._locked() as fh:
            return self._read(fh)

    def _questions_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".questions")

    def _store_questions(self, key: DataKey) -> str | None:
        """Write the key's question set beside the ledger (content-addressed, atomic); its id, or None."""
        if not key.questions:
            return None
        packed = key.packed()
        name = hashlib.sha256(packed).hexdigest()
        folder = self._questions_dir()
        folder.mkdir(mode=0o700, exist_ok=True)
        target = folder / f"{name}.bin"
        if not target.exists():
            tmp = folder / f".{name}.tmp"
            with tmp.open("wb") as fh:
                fh.write(packed)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        return name

    def _load_questions(self, name: str, cache: dict[str, frozenset[bytes]]) -> frozenset[bytes]:
        """A stored question set, checked against its id (``LedgerCorrupt`` if missing or altered)."""
        if name not in cache:
            file = self._questions_dir() / f"{name}.bin"
            try:
                packed = file.read_bytes()
            except OSError:
                raise LedgerCorrupt(
                    f"{file}: a run's question set is missing, so the budget fails closed; "
                    "restore the ledger's .questions folder with the ledger"
                ) from None
            if hashlib.sha256(packed).hexdigest() != name or len(packed) % QUESTION_BYTES:
                raise LedgerCorrupt(
                    f"{file}: a run's question set was altered; the budget fails closed. Restore it from backup"
                )
            cache[name] = frozenset(packed[i : i + QUESTION_BYTES] for i in range(0, len(packed), QUESTION_BYTES))
        return cache[name]

    def related(self, records: list[LedgerRecord], key: DataKey, exclude_run: str | None = None) -> list[LedgerRecord]:
        """The latest record of every run on this data: same fingerprint, or trained on any of its questions."""
        cache: dict[str, frozenset[bytes]] = {}

        def shares(record: LedgerRecord) -> bool:
            if record.data_fingerprint in key.fingerprints:
                return True
            return bool(
                key.questions
                and record.questions
                and not key.questions.isdisjoint(self._load_questions(record.questions, cache))
            )

        runs = {r.run_id for r in records if r.run_id != exclude_run and shares(r)}
        latest: dict[str, LedgerRecord] = {}
        for record in records:
            if record.run_id in runs:
                latest[record.run_id] = record
        return list(latest.values())

    @staticmethod
    def prior_history(related: list[LedgerRecord]) -> tuple[AccountantHistory, int]:
        """Composed history of the private runs among ``related`` and their count (released runs count nothing)."""
        private = [r.history for r in related if r.status in ("planned", "finished")]
        return compose(private), len(private)

    def reserve(
        self, record: LedgerRecord, key: DataKey, *, max_epsilon: float, delta: float, accountant: str
    ) -> BudgetStatus:
        """Check ``record``'s planned history against the budget and append it, atomically.

        Every earlier run related to ``key`` (same fingerprint, or any shared question) composes with this
        one. Raises ``BudgetExceeded`` (nothing written) when that would exceed ``max_epsilon``, and
        ``SettingsChanged`` when delta or the accountant differ from those the first related run fixed. A
        record whose run id is already in the ledger replaces that run.
        """
        with self._locked() as fh:
            related = self.related(self._read(fh), key, exclude_run=record.run_id)
            fixed = fixed_settings(related)
            if fixed is not None and record.status != "baseline" and fixed != (delta, accountant):
                raise SettingsChanged(
                    f"this data set's budget is accounted at delta {fixed[0]:g} with the {fixed[1]!r} accountant "
                    f"(fixed by its first run); this run asks delta {delta:g} with {accountant!r}: set [privacy] "
                    f"delta = {fixed[0]!r} and accountant = {fixed[1]!r}"
                )
            prior, runs = self.prior_history(related)
            spent = epsilon(prior, delta, accountant)
            if record.status != "baseline":
                asked = epsilon(record.history, delta, accountant)
                total = epsilon(prior + record.history, delta, accountant)
                if not total <= max_epsilon or math.isinf(total):
                    fits = largest_fitting_epsilon(
                        prior, record.history, max_epsilon=max_epsilon, delta=delta, accountant=accountant
                    )
                    raise BudgetExceeded(spent, asked, total, max_epsilon, delta, fits)
                spent = total
            record.questions = self._store_questions(key)
            self._append(fh, record)
        log.info(
            "privacy budget reserved",
            extra={
                "run_id": record.run_id,
                "status": record.status,
                "prior_runs": runs,
                "epsilon_total": round(spent, 4),
            },
        )
        return BudgetStatus(
            record.data_fingerprint,
            runs + (record.status != "baseline"),
            spent,
            max_epsilon,
            delta,
            accountant,
            str(self.path),
        )

    def append(self, record: LedgerRecord) -> None:
        """Record a run's progress or end (no check: its plan was reserved before it started)."""
        with self._locked() as fh:
            self._append(fh, record)


def ledger_path(config: Any) -> Path:
    """[privacy].ledger, or the default beside [data].path."""
    return Path(config.privacy.ledger or default_ledger_path(config.data.path))


def data_key(site: Any, questions: list[str] | None = None) -> DataKey:
    """The ledger key of a site's data: its content and file fingerprints (older records used the files')
    and the questions trained on (``questions``, hex keys; default every training question)."""
    return DataKey.of(
        {site.fingerprint, file_fingerprint(site.path)},
        questions if questions is not None else site.question_keys(site.train_split),
    )


def resolve_delta(configured: float | None, n_pairs: int, fixed: tuple[float, str] | None) -> float:
    """[privacy].delta, else the delta the data set's first run fixed, else 1/n capped at 1e-5; at most 1/n."""
    from mor_secure.privacy import check_delta, default_delta

    delta = configured if configured is not None else fixed[0] if fixed else default_delta(n_pairs)
    check_delta(delta, n_pairs)
    return delta


def site_status(config: Any) -> tuple[BudgetStatus, list[dict[str, Any]]]:
    """The budget of a site's [data].path and its runs (latest record each), for `mor client budget`.

    Reads and decodes the data set once: every run on the same content or on any of its training
    questions counts. delta is the one the first such run fixed, else [privacy].delta or 1/n capped at 1e-5.
    """
    from client_agent.site_data import load_pairs, open_data

    if config.data.path is None:
        raise MissingInput("no data set: set [data].path in the site config")
    site = open_data(config)
    ledger = SiteLedger(ledger_path(config))
    related = ledger.related(ledger.records(), data_key(site))
    fixed = fixed_settings(related)
    accountant = fixed[1] if fixed else config.privacy.accountant
    delta = resolve_delta(config.privacy.delta, len(load_pairs(config, config.data.train_split, site=site)), fixed)
    runs = []
    for record in related:
        spent = epsilon(record.history, delta, accountant)
        runs.append(
            {
                "run_id": record.run_id,
                "status": record.status,
                "family": record.family,
                "steps": record.history.steps,
                "time": record.time,
                "epsilon": spent if math.isfinite(spent) else None,
            }
        )
    prior, count = SiteLedger.prior_history(related)
    status = BudgetStatus(
        site.fingerprint,
        count,
        epsilon(prior, delta, accountant),
        config.privacy.max_epsilon,
        delta,
        accountant,
        str(ledger.path),
    )
    return status, runs

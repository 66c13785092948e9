"""The coordinator's privacy ledger: an append-only, hash-chained JSON-lines file.

Each line is one entry ``{seq, ts, kind, body, prev_hash, hash}`` with
``hash = sha256(prev_hash + canonical(entry without hash))``, so any modified, removed, reordered or
inserted entry breaks the chain; privacy reports keep the site's signature, so even a rewritten
chain cannot change who reported which epsilon. Entry kinds live in a registry (``register_kind``).

An unkeyed chain can be recomputed after deleting an entry, so the coordinator also signs it: every
``checkpoint_every`` entries (and when it opens and closes the ledger) it appends a ``checkpoint``
entry whose signature, by the coordinator's certificate, covers the hash of the entry before it, and
copies that checkpoint to ``PATH.head``. ``verify`` checks every checkpoint against the CA, that the
signed head is still in the chain (truncation past it), and that no more entries than one period
follow the last checkpoint; deleting, rewriting or reordering any signed entry breaks a signature.
Only a torn tail without its terminating newline (what a crash leaves) is tolerated.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mor_secure import pki
from mor_secure.errors import MorError
from mor_secure.files import append_durably, create_exclusive, fsync_dir, open_locked
from mor_secure.logs import get_logger
from mor_secure.pki.identity import has_role_eku
from mor_secure.pki.keys import load_private_key, verify_signature
from mor_secure.reports import (
    CanonicalError,
    ReportError,
    SignedReport,
    canonical_json,
    encode_epsilon,
    load_ca,
    report_epsilon,
    verify_report,
)

GENESIS = "0" * 64
"""``prev_hash`` of the first entry."""

ENTRY_KEYS = ("seq", "ts", "kind", "body", "prev_hash", "hash")
MAX_ENTRY_BYTES = 256 * 1024
MAX_TEXT = 1000  # longest peer name or refusal reason kept (they may come from hostile peers)
CHECKPOINT_EVERY = 8
"""Entries between two signed checkpoints (the default; each checkpoint records its own)."""
_CHECKPOINT_DOMAIN = b"mor-ledger-checkpoint\0"
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_READ_CHUNK = 8192

log = get_logger("ledger")


class LedgerError(MorError):
    """The ledger file is missing, unreadable or holds a malformed entry; the message says what to do."""


@dataclass(frozen=True)
class LedgerEntry:
    """One line of the ledger."""

    seq: int
    ts: str
    kind: str
    body: Any
    prev_hash: str
    hash: str

    @property
    def time(self) -> dt.datetime:
        """``ts`` as an aware UTC datetime."""
        return dt.datetime.fromisoformat(self.ts)

    def to_dict(self) -> dict[str, Any]:
        """The entry as it is written (one JSON object)."""
        return asdict(self)


def entry_hash(seq: int, ts: str, kind: str, body: Any, prev_hash: str) -> str:
    """sha256 hex of ``prev_hash`` followed by the canonical JSON of the entry without its hash."""
    unhashed = {"seq": seq, "ts": ts, "kind": kind, "body": body, "prev_hash": prev_hash}
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(unhashed)).hexdigest()


# --------------------------------------------------------------------------- kinds

BodyCheck = Callable[[Any], None]
Attest = Callable[[Any, x509.Certificate, dt.datetime], None]


@dataclass(frozen=True)
class EntryKind:
    """A kind of entry: ``check`` validates a body (raises LedgerError); ``attest``, when set, verifies
    the body's signature against the CA at the entry's time (raises ReportError or LedgerError)."""

    name: str
    check: BodyCheck | None = None
    attest: Attest | None = None


KINDS: dict[str, EntryKind] = {}
"""Every kind the ledger accepts, by name; add one with ``register_kind``."""


def register_kind(name: str, *, check: BodyCheck | None = None, attest: Attest | None = None) -> EntryKind:
    """Register (or replace) an entry kind; appends and verification accept only registered kinds."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
        raise LedgerError(f"invalid entry kind name {name!r}: use lower-case letters, digits and '_'")
    KINDS[name] = EntryKind(name, check, attest)
    return KINDS[name]


def _require(body: Any, types: dict[str, tuple[type, ...]], kind: str) -> None:
    """``body`` is an object with exactly these keys of these types (bools are not numbers)."""
    if not isinstance(body, dict) or set(body) != set(types):
        got = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise LedgerError(f"a {kind} entry needs the keys {', '.join(sorted(types))}; got {got}")
    for key, allowed in types.items():
        value = body[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise LedgerError(f"{kind} entry key {key!r} has type {type(value).__name__}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise LedgerError(f"{kind} entry key {key!r} is longer than {MAX_TEXT} characters")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise LedgerError(f"{kind} entry key {key!r} is negative ({value!r})")


_NUM = (int, float)
_REPORT_BODY = {
    "site": (str,),
    "cert_fingerprint": (str,),
    "epsilon": (*_NUM, str),
    "delta": (*_NUM, type(None)),
    "accountant": (str, type(None)),
    "noise_multiplier": (*_NUM, type(None)),
    "sample_rate": (*_NUM, type(None)),
    "steps": (int,),
    "data_fingerprint": (str,),
    "model_sha256": (str,),
    "signed_report": (dict,),
}


def report_body(signed: SignedReport, site: str, cert_fingerprint: str) -> dict[str, Any]:
    """The ledger body of a verified privacy report: the figures that matter, plus the signed original."""
    report = signed.report
    return {
        "site": site,
        "cert_fingerprint": cert_fingerprint,
        "epsilon": encode_epsilon(report_epsilon(report)),
        "delta": report["delta"],
        "accountant": report["accountant"],
        "noise_multiplier": report["noise_multiplier"],
        "sample_rate": report["sample_rate"],
        "steps": report["steps"],
        "data_fingerprint": report["data_fingerprint"],
        "model_sha256": report["model_sha256"],
        "signed_report": signed.to_dict(),
    }


def _check_report_body(body: Any) -> None:
    _require(body, _REPORT_BODY, "privacy_report")
    try:
        SignedReport.from_dict(body["signed_report"])
    except ReportError as exc:
        raise LedgerError(f"privacy_report entry: {exc}") from exc


def _attest_report(body: dict[str, Any], ca: x509.Certificate, at: dt.datetime) -> None:
    """The signature verifies against the CA at ``at``, and the body repeats the signed figures exactly."""
    signed = SignedReport.from_dict(body["signed_report"])
    identity = verify_report(signed, ca, at=at)
    cert = x509.load_pem_x509_certificate(signed.cert_pem)
    expected = report_body(signed, identity.name, pki.fingerprint(cert))
    for key, value in expected.items():
        if canonical_json(body[key]) != canonical_json(value):
            raise LedgerError(
                f"privacy_report entry says {key}={body[key]!r:.80} but the signed report gives {value!r:.80}"
            )


def _check_scoring(body: Any) -> None:
    _require(body, {"site": (str,), "items": (int,), "duration_s": _NUM}, "scoring_session")


def _check_refusal(body: Any) -> None:
    _require(body, {"peer": (str,), "reason": (str,)}, "refusal")


def _check_summary(body: Any) -> None:
    _require(
        body,
        {"from": (str,), "to": (str,), "refused": (int,), "by_peer": (dict,), "by_reason": (dict,)},
        "refusal_summary",
    )
    for key in ("by_peer", "by_reason"):
        counts = body[key]
        if len(counts) > 100 or not all(
            isinstance(k, str) and len(k) <= MAX_TEXT and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in counts.items()
        ):
            raise LedgerError(f"refusal_summary entry key {key!r} must map at most 100 texts to counts")


def _check_trust(body: Any) -> None:
    """One site's trust decision (``coordinator.mixture.trust.record_trust``): agreement, bound and threshold are
    shares in [0, 1] (agreement and bound None for a site with no scored pair); the decision matches."""
    share_or_none = (*_NUM, type(None))
    _require(
        body,
        {
            "site": (str,),
            "agreement": share_or_none,
            "pairs": (int,),
            "lower_bound": share_or_none,
            "threshold": _NUM,
            "trusted": (bool,),
            "group": (str, type(None)),
            "defence": (str,),
            "decision": (str,),
        },
        "trust",
    )
    if any(body[key] is not None and body[key] > 1 for key in ("agreement", "lower_bound", "threshold")):
        raise LedgerError("trust entry agreement, lower_bound and threshold must be shares in [0, 1]")
    if body["decision"] != ("trusted" if body["trusted"] else "excluded"):
        raise LedgerError(f"trust entry decision {body['decision']!r:.40} does not match trusted={body['trusted']}")


def _check_checkpoint(body: Any) -> None:
    if not isinstance(body, dict) or set(body) != {"covers_seq", "covers_hash", "every", "signature", "cert_pem"}:
        raise LedgerError("a checkpoint entry needs the keys covers_seq, covers_hash, every, signature, cert_pem")
    if not isinstance(body["covers_seq"], int) or isinstance(body["covers_seq"], bool) or body["covers_seq"] < 0:
        raise LedgerError("checkpoint covers_seq is not a non-negative integer")
    if not isinstance(body["every"], int) or isinstance(body["every"], bool) or not 1 <= body["every"] <= 10000:
        raise LedgerError("checkpoint every is not an integer from 1 to 10000")
    if not isinstance(body["covers_hash"], str) or not _HASH_RE.fullmatch(body["covers_hash"]):
        raise LedgerError("checkpoint covers_hash is not 64 lower-case hex digits")
    for key, limit in (("signature", 200), ("cert_pem", 8000)):
        if not isinstance(body[key], str) or len(body[key]) > limit:
            raise LedgerError(f"checkpoint {key} is not a text of at most {limit} characters")


def _checkpoint_payload(covers_seq: int, covers_hash: str) -> bytes:
    return _CHECKPOINT_DOMAIN + f"{covers_seq}:{covers_hash}".encode("ascii")


def _attest_checkpoint(body: dict[str, Any], ca: x509.Certificate, at: dt.datetime) -> None:
    """The checkpoint is signed by a coordinator certificate of the CA, valid at ``at``, over what it covers."""
    try:
        cert = x509.load_pem_x509_certificate(body["cert_pem"].encode("ascii"))
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, UnicodeEncodeError, InvalidSignature):
        raise LedgerError("checkpoint certificate is not one the project CA issued") from None
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise LedgerError(f"checkpoint certificate is not valid at {at:%Y-%m-%d %H:%M} UTC")
    try:
        identity = pki.identity_of(cert)
    except pki.PKIError as exc:
        raise LedgerError(f"checkpoint certificate: {exc}") from None
    if identity.role != "coordinator" or not has_role_eku(cert, "coordinator"):
        raise LedgerError(f"checkpoint signed by {identity.uri}, not by a coordinator")
    try:
        signature = base64.b64decode(body["signature"], validate=True)
        verify_signature(cert.public_key(), signature, _checkpoint_payload(body["covers_seq"], body["covers_hash"]))
    except (ValueError, InvalidSignature):
        raise LedgerError(
            "checkpoint signature does not match the chain it covers: entries before it were "
            "deleted, inserted or rewritten (or the checkpoint was forged)"
        ) from None


class LedgerSigner:
    """The coordinator's key and certificate, signing ledger checkpoints (``PrivacyLedger(signer=...)``)."""

    def __init__(self, cert_path: str | Path, key_path: str | Path) -> None:
        self.key = load_private_key(Path(key_path))
        cert = pki.load_cert(Path(cert_path))
        if cert.public_key() != self.key.public_key():
            raise pki.PKIError(f"{cert_path} does not belong to the key {key_path}: use the coordinator's own pair")
        if pki.identity_of(cert).role != "coordinator":
            raise pki.PKIError(f"{cert_path} is not a coordinator certificate: the ledger is signed by the coordinator")
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def checkpoint(self, covers_seq: int, covers_hash: str, every: int) -> dict[str, Any]:
        """The body of a checkpoint entry covering the chain up to ``covers_seq`` (hash ``covers_hash``)."""
        payload = _checkpoint_payload(covers_seq, covers_hash)
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            signature = self.key.sign(payload, ec.ECDSA(hashes.SHA256()))
        else:
            signature = self.key.sign(payload)  # type: ignore[call-arg]
        return {
            "covers_seq": covers_seq,
            "covers_hash": covers_hash,
            "every": every,
            "signature": base64.b64encode(signature).decode("ascii"),
            "cert_pem": self.cert_pem,
        }


register_kind("privacy_report", check=_check_report_body, attest=_attest_report)
register_kind("scoring_session", check=_check_scoring)
register_kind("refusal", check=_check_refusal)
register_kind("refusal_summary", check=_check_summary)
register_kind("crl", check=lambda body: _require(body, {"number": (int,)}, "crl"))
register_kind("checkpoint", check=_check_checkpoint, attest=_attest_checkpoint)
register_kind("trust", check=_check_trust)


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_entry(raw: bytes) -> LedgerEntry:
    """One line as an entry: canonical JSON, exactly the entry keys, well-typed (LedgerError if not)."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LedgerError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or set(data) != set(ENTRY_KEYS):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise LedgerError(f"not a ledger entry: needs the keys {', '.join(ENTRY_KEYS)}; got {got}")
    if canonical_json(data) != raw:
        raise LedgerError("not in canonical JSON form (bytes were edited)")
    seq, ts, kind, prev_hash, hash_ = (data[k] for k in ("seq", "ts", "kind", "prev_hash", "hash"))
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise LedgerError(f"seq {seq!r} is not a positive integer")
    if not isinstance(kind, str):
        raise LedgerError(f"kind {kind!r} is not a string")
    for name, value in (("prev_hash", prev_hash), ("hash", hash_)):
        if not isinstance(value, str) or not _HASH_RE.fullmatch(value):
            raise LedgerError(f"{name} is not 64 lower-case hex digits")
    try:
        if dt.datetime.fromisoformat(ts).utcoffset() is None:
            raise ValueError("no time zone")
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"ts {ts!r} is not an ISO-8601 UTC time ({exc})") from None
    return LedgerEntry(**data)


def _is_entry_line(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines, and a torn tail (a crash's partial last write) that is not part of the chain.

    Only bytes after the last newline can be a torn tail (a crash cannot write the newline that ends a
    line); when they are a whole JSON object (the crash hit between the entry and its newline) they
    count as a line. A newline-terminated line is always part of the chain, garbage or not.
    """
    lines = data.split(b"\n")
    last = lines.pop()
    if last and _is_entry_line(last):
        return lines + [last], b""
    return lines, last


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise LedgerError(
            f"ledger {path} does not exist: check the path (the coordinator writes it under its work folder)"
        ) from None
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc.strerror}") from None


def read_entries(path: str | Path) -> list[LedgerEntry]:
    """Every entry of the ledger file in order, without checking the chain (a torn tail is skipped)."""
    path = Path(path)
    lines, _ = _split(_read(path))
    entries = []
    for lineno, raw in enumerate(lines, 1):
        try:
            entries.append(_parse_entry(raw))
        except LedgerError as exc:
            raise LedgerError(
                f"{path} line {lineno}: {exc}; run `mor ledger verify {path} --ca CA_PEM` "
                "to check whether it was tampered with"
            ) from None
    return entries


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Problem:
    """The first bad entry: its line number and seq (when known) and what is wrong."""

    line: int | None
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = [f"line {self.line}"] if self.line is not None else []
        where += [f"seq {self.seq}"] if self.seq is not None else []
        return f"{', '.join(where) or 'ledger'}: {self.reason}"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify``: entries and signatures checked, the head hash, and the first problem."""

    entries: int
    signatures: int
    head: str
    torn_bytes: int
    problem: Problem | None
    checkpoints: int = 0
    unsigned_tail: int = 0
    """Entries after the last signed checkpoint (at most one period is tolerated: a crash, or a live run)."""

    @property
    def ok(self) -> bool:
        """True when the whole chain and every signature verified."""
        return self.problem is None


def _check_entry(entry: LedgerEntry, seq: int, prev_hash: str, ca: x509.Certificate) -> bool:
    """Raise LedgerError/ReportError if ``entry`` does not continue the chain; True if it had a signature."""
    if entry.seq != seq:
        raise LedgerError(f"seq is {entry.seq}, expected {seq}: an entry was removed, inserted or reordered")
    if entry.prev_hash != prev_hash:
        raise LedgerError(
            "prev_hash is not the previous entry's hash: an entry before it was removed, inserted or rewritten"
        )
    if entry_hash(entry.seq, entry.ts, entry.kind, entry.body, entry.prev_hash) != entry.hash:
        raise LedgerError("hash does not match the entry's content: the entry was modified")
    kind = KINDS.get(entry.kind)
    if kind is None:
        raise LedgerError(f"unknown entry kind {entry.kind!r} (known: {', '.join(sorted(KINDS))})")
    if kind.check is not None:
        kind.check(entry.body)
    if kind.attest is None:
        return False
    kind.attest(entry.body, ca, entry.time)
    return True


def highest_crl_number(path: str | Path) -> int | None:
    """The highest CRL number a ``crl`` entry of ledger ``path`` records (None when none; bad lines are
    skipped here and reported by ``verify``), so a restarted coordinator refuses an older CRL."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    highest = None
    for raw in data.split(b"\n"):
        if b'"kind":"crl"' not in raw:
            continue
        try:
            entry = json.loads(raw)
            number = entry["body"]["number"] if entry.get("kind") == "crl" else None
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(number, int) and not isinstance(number, bool):
            highest = number if highest is None else max(highest, number)
    return highest


def head_path(path: str | Path) -> Path:
    """Where the coordinator keeps a copy of the last signed checkpoint of ledger ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".head")


def _read_head(path: Path) -> dict[str, Any] | None:
    """The signed head beside the ledger ({"seq", "body"}), None when there is none (LedgerError if unreadable)."""
    try:
        data = json.loads(head_path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LedgerError(f"signed head {head_path(path)} is unreadable ({exc}): keep it as evidence") from None
    if not isinstance(data, dict) or set(data) != {"seq", "body"} or not isinstance(data["seq"], int):
        raise LedgerError(f"signed head {head_path(path)} is not a checkpoint copy: keep it as evidence")
    return data


def verify(
    path: str | Path, ca_cert: x509.Certificate | str | Path, *, anchor: str | None = None, require_signed: bool = False
) -> VerifyResult:
    """Check seq continuity, the hash chain and every signature against the CA; report the first bad entry.

    Checkpoints must cover exactly the chain before them; the signed head beside the file must still be
    in the chain (else the ledger was cut back past it); at most one checkpoint period may follow the
    last checkpoint. ``require_signed`` fails a ledger without any checkpoint (one whose checkpoints
    were all stripped, or written before signing existed). ``anchor`` is an entry hash noted earlier:
    the chain must still contain it. Only a torn tail without a newline (a crash) is ignored.
    """
    path = Path(path)
    lines, torn = _split(_read(path))
    try:
        ca = load_ca(ca_cert)
    except ReportError as exc:
        raise LedgerError(str(exc)) from None
    prev_hash, signatures, seen_anchor = GENESIS, 0, anchor is None
    checkpoints, last_checkpoint, every = 0, 0, CHECKPOINT_EVERY
    checkpoint_bodies: dict[int, Any] = {}

    def result(problem: Problem | None, entries: int) -> VerifyResult:
        return VerifyResult(
            entries,
            signatures,
            prev_hash,
            len(torn),
            problem,
            checkpoints,
            entries - last_checkpoint if checkpoints else entries,
        )

    for lineno, raw in enumerate(lines, 1):
        entry = None
        try:
            entry = _parse_entry(raw)
            if (
                entry.kind == "checkpoint"
                and isinstance(entry.body, dict)
                and (entry.body.get("covers_seq") != lineno - 1 or entry.body.get("covers_hash") != prev_hash)
            ):
                raise LedgerError(
                    "checkpoint does not cover the entry before it: entries were removed, inserted or rewritten"
                )
            signatures += _check_entry(entry, lineno, prev_hash, ca)
        except (LedgerError, ReportError, CanonicalError) as exc:
            return result(Problem(lineno, entry.seq if entry else None, str(exc)), lineno - 1)
        if entry.kind == "checkpoint":
            checkpoints, last_checkpoint, every = checkpoints + 1, lineno, entry.body["every"]
            checkpoint_bodies[entry.seq] = entry.body
        prev_hash = entry.hash
        seen_anchor = seen_anchor or entry.hash == anchor
    n = len(lines)
    head = _read_head(path)
    problem = None
    if head is not None and checkpoint_bodies.get(head["seq"]) != head["body"]:
        found = f"ends at seq {n}" if head["seq"] > n else "holds another entry there"
        problem = Problem(
            None,
            head["seq"],
            f"the signed head {head_path(path).name} names checkpoint seq "
            f"{head['seq']} but the ledger {found}: it was cut back or rewritten past its last "
            "signed checkpoint",
        )
    elif checkpoints and head is None:
        problem = Problem(
            None,
            None,
            f"the ledger has signed checkpoints but its signed head {head_path(path).name} "
            "is missing: it may have been cut back; restore both from a backup",
        )
    elif checkpoints and n - last_checkpoint > every:
        problem = Problem(
            None,
            last_checkpoint + 1,
            f"{n - last_checkpoint} entries follow the last signed "
            f"checkpoint (seq {last_checkpoint}), more than its period of {every}: entries were "
            "appended without the coordinator's key, or checkpoints removed",
        )
    elif require_signed and n and not checkpoints:
        problem = Problem(
            None,
            None,
            "no signed checkpoint: the chain alone can be recomputed after an edit; "
            "a ledger written by this version is signed by the coordinator "
            "(--allow-unsigned accepts an older one)",
        )
    elif not seen_anchor:
        problem = Problem(
            None,
            None,
            f"anchor {anchor} is not in the chain: the ledger was cut back or rewritten since the anchor was noted",
        )
    return result(problem, n)


# --------------------------------------------------------------------------- summary


@dataclass
class SiteSummary:
    """What the ledger says about one site (or refused peer)."""

    site: str
    epsilon: float | None = None  # the largest reported (never decreases); math.inf without DP; None: never
    delta: float | None = None
    accountant: str | None = None
    reports: int = 0
    last_report: str | None = None
    model_sha256: str | None = None
    cert_fingerprint: str | None = None
    scoring_sessions: int = 0
    items_scored: int = 0
    refusals: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (an infinite epsilon becomes ``"inf"``)."""
        out = asdict(self)
        if self.epsilon is not None:
            out["epsilon"] = encode_epsilon(self.epsilon)
        return out


def summarize(entries: Iterable[LedgerEntry]) -> dict[str, SiteSummary]:
    """Per site: the largest epsilon it ever reported (a site composes its own lifetime budget, so a
    later, smaller figure, or a deleted report, never lowers what is shown), the delta and accountant of
    its latest report, how many reports, scoring sessions, items scored and refusals (summaries count)."""
    sites: dict[str, SiteSummary] = {}

    def get(name: str) -> SiteSummary:
        return sites.setdefault(name, SiteSummary(name))

    for entry in entries:
        body = entry.body
        if entry.kind == "privacy_report":
            row = get(body["site"])
            eps = body["epsilon"]
            eps = math.inf if eps == "inf" else float(eps)
            row.epsilon = eps if row.epsilon is None else max(row.epsilon, eps)
            row.delta, row.accountant = body["delta"], body["accountant"]
            row.model_sha256, row.cert_fingerprint = body["model_sha256"], body["cert_fingerprint"]
            row.reports += 1
            row.last_report = entry.ts
        elif entry.kind == "scoring_session":
            row = get(body["site"])
            row.scoring_sessions += 1
            row.items_scored += body["items"]
        elif entry.kind == "refusal":
            get(body["peer"]).refusals += 1
        elif entry.kind == "refusal_summary":
            for peer, count in body["by_peer"].items():
                get(peer).refusals += count
    return dict(sorted(sites.items()))


# --------------------------------------------------------------------------- the writer


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def _last_line_start(fd: int, end: int) -> int:
    """Offset just after the last newline before ``end`` (0 if none): where the final line starts."""
    pos = end
    while pos > 0:
        start = max(0, pos - _READ_CHUNK)
        chunk = os.pread(fd, pos - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


class PrivacyLedger:
    """Appends entries to a ledger file, durably (fsync) and serialised across threads and processes.

    Opening it (and every append) moves a torn tail, the bytes a crash left after the last newline,
    aside to ``PATH.torn-<time>`` so the chain continues; a complete line that is not an entry is never
    cut (appends refuse to extend it) and is left for ``verify``. With a ``signer`` (the coordinator's
    ``LedgerSigner``) a signed checkpoint follows every ``checkpoint_every`` entries, any unsigned tail
    found on opening, and ``close()``.
    """

    def __init__(
        self, path: str | Path, *, signer: LedgerSigner | None = None, checkpoint_every: int = CHECKPOINT_EVERY
    ) -> None:
        if not 1 <= checkpoint_every <= 10000:
            raise LedgerError(f"checkpoint_every must be from 1 to 10000, got {checkpoint_every}")
        self.path = Path(path)
        self.signer, self.checkpoint_every = signer, checkpoint_every
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            create_exclusive(self.path, 0o644)
            log.info("ledger created", extra={"path": str(self.path)})
        except FileExistsError:
            pass
        with self._locked() as fd:
            self._recover_tail(fd)
            self._unsigned = self._count_unsigned(fd)
            if self.signer is not None and self._unsigned:
                self._checkpoint(fd)

    def close(self) -> None:
        """Sign the entries written since the last checkpoint (the coordinator calls it when it stops)."""
        if self.signer is None:
            return
        with self._locked() as fd:
            if self._count_unsigned(fd):
                self._checkpoint(fd)

    def _count_unsigned(self, fd: int) -> int:
        """Complete lines after the last checkpoint entry (the file is the coordinator's own, read once)."""
        size = os.fstat(fd).st_size
        lines = os.pread(fd, size, 0).split(b"\n")[:-1] if size else []
        for back, raw in enumerate(reversed(lines)):
            try:
                if json.loads(raw).get("kind") == "checkpoint":
                    return back
            except (ValueError, AttributeError):
                continue
        return len(lines)

    def _checkpoint(self, fd: int) -> None:
        """Append a checkpoint signing the chain so far, then copy it to ``PATH.head`` (under the lock)."""
        assert self.signer is not None
        seq, prev_hash = self._head(fd)
        body = self.signer.checkpoint(seq, prev_hash, self.checkpoint_every)
        entry = self._write(fd, "checkpoint", body, seq, prev_hash)
        self._unsigned = 0
        head = head_path(self.path)
        tmp = head.with_name(f".{head.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as handle:
            handle.write(canonical_json({"seq": entry.seq, "body": body}) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, head)
        fsync_dir(self.path.parent)

    @contextmanager
    def _locked(self) -> Iterator[int]:
        """An O_APPEND descriptor of the file, held under the thread lock and an exclusive flock."""
        with self._lock:
            try:
                fd = open_locked(self.path)
            except OSError as exc:
                raise LedgerError(f"cannot open ledger {self.path}: {exc.strerror}") from None
            try:
                yield fd
            finally:
                os.close(fd)  # releases the flock

    def _recover_tail(self, fd: int) -> None:
        """Complete or move aside a torn tail (bytes after the last newline) so appends continue the chain."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return  # no torn tail: a bad complete line is evidence, left for verify (appends refuse it)
        start = _last_line_start(fd, size)
        last = os.pread(fd, size - start, start)
        if _is_entry_line(last):  # the crash hit between the entry and its newline
            os.write(fd, b"\n")
            os.fsync(fd)
            log.warning("ledger: completed a last entry that lacked its newline")
            return
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.torn-{stamp}")
        with open(aside, "xb") as handle:
            handle.write(last)
            handle.flush()
            os.fsync(handle.fileno())
        os.ftruncate(fd, start)
        os.fsync(fd)
        fsync_dir(self.path.parent)
        log.warning(
            "ledger: moved a torn last line aside (a crash interrupted a write)",
            extra={"bytes": len(last), "aside": aside.name},
        )

    def _head(self, fd: int) -> tuple[int, str]:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS
        start = _last_line_start(fd, size - 1)
        try:
            entry = _parse_entry(os.pread(fd, size - 1 - start, start))
        except LedgerError as exc:
            raise LedgerError(
                f"the last entry of {self.path} is malformed ({exc}): refusing to extend "
                f"the chain; run `mor ledger verify {self.path} --ca CA_PEM`"
            ) from None
        return entry.seq, entry.hash

    def append(self, kind: str, body: Any) -> LedgerEntry:
        """Append one entry of a registered kind; returns it once it is on disk (fsync)."""
        entry_kind = KINDS.get(kind)
        if entry_kind is None:
            raise LedgerError(
                f"unknown entry kind {kind!r}: register it with register_kind() (known: {', '.join(sorted(KINDS))})"
            )
        if entry_kind.check is not None:
            entry_kind.check(body)
        try:
            size = len(canonical_json(body))
        except CanonicalError as exc:
            raise LedgerError(f"{kind} body is not canonical JSON: {exc}") from None
        if size > MAX_ENTRY_BYTES:
            raise LedgerError(f"{kind} body is {size} bytes; at most {MAX_ENTRY_BYTES} fit in one entry")
        with self._locked() as fd:
            self._recover_tail(fd)
            seq, prev_hash = self._head(fd)
            entry = self._write(fd, kind, body, seq, prev_hash)
            self._unsigned += 1
            if self.signer is not None and self._unsigned >= self.checkpoint_every:
                self._checkpoint(fd)
        log.debug("ledger entry appended", extra={"seq": entry.seq, "kind": kind})
        return entry

    def _write(self, fd: int, kind: str, body: Any, seq: int, prev_hash: str) -> LedgerEntry:
        """Write the entry after ``seq``/``prev_hash`` and fsync it (caller holds the lock)."""
        seq, ts = seq + 1, _utc_now()
        entry = LedgerEntry(seq, ts, kind, body, prev_hash, entry_hash(seq, ts, kind, body, prev_hash))
        append_durably(fd, canonical_json(entry.to_dict()) + b"\n")
        return entry

    def record_report(
        self, signed: SignedReport, ca_cert: x509.Certificate | str | Path, *, crl: str | Path | None = None
    ) -> LedgerEntry:
        """Verify a site's signed privacy report (``ReportError`` if it fails) and append it."""
        identity = verify_report(signed, ca_cert, crl=crl)
        cert = x509.load_pem_x509_certificate(signed.cert_pem)
        return self.append("privacy_report", report_body(signed, identity.name, pki.fingerprint(cert)))

    def record_scoring(self, site: str, items: int, duration_s: float) -> LedgerEntry:
        """Record that ``site`` scored ``items`` items in one session lasting ``duration_s`` seconds."""
        return self.append("scoring_session", {"site": site, "items": items, "duration_s": float(duration_s)})

    def record_refusal(self, peer: str, reason: str) -> LedgerEntry:
        """Record a refused peer (certificate name or address) and why; long texts are cut."""
        return self.append("refusal", {"peer": peer[:MAX_TEXT], "reason": reason[:MAX_TEXT]})

    def record_refusal_summary(
        self, start: str, end: str, refused: int, by_peer: dict[str, int], by_reason: dict[str, int]
    ) -> LedgerEntry:
        """Record how many refusals a window held back, by peer and by reason (the top ones; texts cut)."""

        def cut(counts: dict[str, int]) -> dict[str, int]:
            out: dict[str, int] = {}
            for key, count in list(counts.items())[:100]:
                out[key[:200]] = out.get(key[:200], 0) + count
            return out

        return self.append(
            "refusal_summary",
            {"from": start, "to": end, "refused": refused, "by_peer": cut(by_peer), "by_reason": cut(by_reason)},
        )

    def entries(self) -> list[LedgerEntry]:
        """Every entry, in order."""
        return read_entries(self.path)

    def summary(self) -> dict[str, SiteSummary]:
        """Per-site summary (see ``summarize``)."""
        return summarize(self.entries())

    def verify(
        self, ca_cert: x509.Certificate | str | Path, *, anchor: str | None = None, require_signed: bool = False
    ) -> VerifyResult:
        """Verify this ledger file (see ``verify``)."""
        return verify(self.path, ca_cert, anchor=anchor, require_signed=require_signed)

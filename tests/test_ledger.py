"""The privacy ledger: tamper evidence, crash recovery, concurrent appends, summary and the CLI."""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reports import make_report

from mor_secure.cli import root
from mor_secure.ledger import (
    GENESIS,
    KINDS,
    LedgerError,
    PrivacyLedger,
    entry_hash,
    read_entries,
    register_kind,
    verify,
)
from mor_secure.reports import INF, ReportError, SignedReport, canonical_json, sign_report

FIELDS = ("seq", "ts", "kind", "body", "prev_hash", "hash")


@pytest.fixture(scope="module")
def ca(pki_dir) -> Path:
    return pki_dir / "ca.pem"


@pytest.fixture(scope="module")
def ledger_bytes(pki_dir, ca, tmp_path_factory) -> bytes:
    """A ledger of 8 entries of every built-in kind, two sites, site-a reporting twice."""
    ledger = PrivacyLedger(tmp_path_factory.mktemp("ledger") / "ledger.jsonl")
    ledger.record_report(sign_report(make_report(epsilon=1.0), pki_dir / "site-a.key"), ca)
    ledger.record_report(
        sign_report(make_report(epsilon=INF, dp=False, model_sha256="ee" * 32), pki_dir / "site-b.key"),
        ca,
        crl=pki_dir / "crl.pem",
    )
    ledger.record_scoring("site-a", 64, 1.25)
    ledger.record_scoring("site-b", 64, 2.5)
    ledger.record_refusal("site-x", "certificate revoked")
    ledger.append("trust", TRUST_BODY)
    ledger.record_report(sign_report(make_report(epsilon=2.0, model_sha256="ff" * 32), pki_dir / "site-a.key"), ca)
    ledger.record_scoring("site-a", 32, 0.5)
    return ledger.path.read_bytes()


TRUST_BODY = {
    "site": "site-a",
    "agreement": 0.9,
    "pairs": 40,
    "lower_bound": 0.77,
    "threshold": 0.55,
    "trusted": True,
    "group": None,
    "defence": "agreement",
    "decision": "trusted",
}


def lines_of(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_a_fresh_ledger_verifies_and_counts_signatures(ledger_bytes, ca, tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes(ledger_bytes)
    result = verify(path, ca)
    assert result.ok and result.entries == 8 and result.signatures == 3 and result.torn_bytes == 0
    entries = read_entries(path)
    assert [e.seq for e in entries] == list(range(1, 9)) and entries[0].prev_hash == GENESIS
    assert result.head == entries[-1].hash
    assert all(e.hash == entry_hash(e.seq, e.ts, e.kind, e.body, e.prev_hash) for e in entries)


def test_summary_takes_each_sites_latest_report(ledger_bytes, tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes(ledger_bytes)
    sites = PrivacyLedger(path).summary()
    assert list(sites) == ["site-a", "site-b", "site-x"]
    a, b, x = sites.values()
    assert (a.epsilon, a.reports, a.model_sha256, a.items_scored, a.scoring_sessions) == (2.0, 2, "ff" * 32, 96, 2)
    assert a.delta == 1e-5 and a.accountant == "prv" and a.cert_fingerprint.startswith("sha256:")
    assert b.epsilon == math.inf and b.to_dict()["epsilon"] == INF and b.items_scored == 64
    assert (x.refusals, x.reports, x.epsilon) == (1, 0, None)


# --------------------------------------------------------------------------- tamper evidence


def _flip(hex_text: str) -> str:
    return ("1" if hex_text[0] == "0" else "0") + hex_text[1:]


def _tamper(entry: dict, field: str) -> dict:
    entry = copy.deepcopy(entry)
    if field == "seq":
        entry["seq"] += 7
    elif field == "ts":
        entry["ts"] = "2020-01-01T00:00:00.000000+00:00"
    elif field == "kind":
        entry["kind"] = "refusal" if entry["kind"] == "trust" else "trust"
    elif field in ("prev_hash", "hash"):
        entry[field] = _flip(entry[field])
    elif entry["kind"] == "privacy_report":
        entry["body"]["epsilon"] = 0.5  # under-report the spend
    else:
        entry["body"] = {"tampered": entry["body"]}
    return entry


def _check_first_bad(path: Path, ca: Path, line: int) -> None:
    """Verification fails, naming ``line`` (1-based) and counting the lines before it as good."""
    result = verify(path, ca)
    assert not result.ok, "tampering went unnoticed"
    assert result.problem.line == line and result.entries == line - 1, result.problem


@settings(max_examples=24, deadline=None)
@given(index=st.integers(0, 7), field=st.sampled_from(FIELDS))
def test_any_modified_field_is_detected(ledger_bytes, ca, tmp_path_factory, index, field):
    lines = lines_of(ledger_bytes)
    lines[index] = canonical_json(_tamper(json.loads(lines[index]), field))
    _check_first_bad(write(tmp_path_factory.mktemp("t") / "l", lines), ca, index + 1)


@settings(max_examples=12, deadline=None)
@given(index=st.integers(0, 6))
def test_a_removed_entry_is_detected(ledger_bytes, ca, tmp_path_factory, index):
    lines = lines_of(ledger_bytes)
    del lines[index]
    _check_first_bad(write(tmp_path_factory.mktemp("t") / "l", lines), ca, index + 1)


def test_a_removed_last_entry_is_caught_by_an_anchor(ledger_bytes, ca, tmp_path):
    head = json.loads(lines_of(ledger_bytes)[-1])["hash"]
    path = write(tmp_path / "l", lines_of(ledger_bytes)[:-1])
    assert verify(path, ca).ok  # a chain alone cannot see its own end cut off ...
    result = verify(path, ca, anchor=head)  # ... a remembered head can
    assert not result.ok and "anchor" in result.problem.reason and result.problem.line is None


@settings(max_examples=16, deadline=None)
@given(pair=st.lists(st.integers(0, 7), min_size=2, max_size=2, unique=True))
def test_reordered_entries_are_detected(ledger_bytes, ca, tmp_path_factory, pair):
    i, j = sorted(pair)
    lines = lines_of(ledger_bytes)
    lines[i], lines[j] = lines[j], lines[i]
    _check_first_bad(write(tmp_path_factory.mktemp("t") / "l", lines), ca, i + 1)


@settings(max_examples=16, deadline=None)
@given(source=st.integers(0, 7), position=st.integers(0, 8))
def test_an_inserted_entry_is_detected(ledger_bytes, ca, tmp_path_factory, source, position):
    original = lines_of(ledger_bytes)
    lines = original.copy()
    lines.insert(position, lines[source])
    first_changed = next(k for k, line in enumerate(lines) if k == len(original) or line != original[k])
    _check_first_bad(write(tmp_path_factory.mktemp("t") / "l", lines), ca, first_changed + 1)


def test_a_fully_rehashed_forgery_still_fails_on_the_signature(ledger_bytes, ca, tmp_path):
    """Whoever rewrites the chain can recompute hashes, but not the site's signature."""
    entries = [json.loads(line) for line in lines_of(ledger_bytes)]

    def rewrite() -> Path:
        prev = GENESIS
        for entry in entries:
            entry["prev_hash"] = prev
            entry["hash"] = prev = entry_hash(*(entry[k] for k in FIELDS[:-1]))
        return write(tmp_path / "l", [canonical_json(e) for e in entries])

    entries[6]["body"]["epsilon"] = 0.1
    result = verify(rewrite(), ca)
    assert not result.ok and result.problem.line == 7 and "signed report gives 2.0" in result.problem.reason

    entries[6]["body"]["signed_report"]["report"]["epsilon"] = 0.1  # forge the report too
    result = verify(rewrite(), ca)
    assert result.problem.line == 7 and "does not match its content" in result.problem.reason


def test_non_canonical_bytes_are_detected(ledger_bytes, ca, tmp_path):
    lines = lines_of(ledger_bytes)
    lines[2] = json.dumps(json.loads(lines[2]), indent=1).replace("\n", " ").encode()
    result = verify(write(tmp_path / "l", lines), ca)
    assert result.problem.line == 3 and "canonical" in result.problem.reason


# --------------------------------------------------------------------------- crashes


def test_a_torn_last_line_is_moved_aside_and_appends_continue(ledger_bytes, ca, tmp_path):
    path = tmp_path / "ledger.jsonl"
    half = lines_of(ledger_bytes)[-1][:100]  # a crash in the middle of writing entry 8
    path.write_bytes(b"".join(line + b"\n" for line in lines_of(ledger_bytes)[:-1]) + half)
    result = verify(path, ca)
    assert result.ok and result.entries == 7 and result.torn_bytes == 100

    ledger = PrivacyLedger(path)
    (aside,) = tmp_path.glob("ledger.jsonl.torn-*")
    assert aside.read_bytes() == half
    entry = ledger.record_scoring("site-b", 8, 0.1)
    assert entry.seq == 8
    result = verify(path, ca)
    assert result.ok and result.entries == 8 and result.torn_bytes == 0


def test_an_entry_missing_only_its_newline_is_kept(ledger_bytes, ca, tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(ledger_bytes[:-1])
    assert verify(path, ca).entries == 8
    assert PrivacyLedger(path).record_refusal("site-y", "bad certificate").seq == 9
    assert verify(path, ca).ok and not list(tmp_path.glob("*.torn-*"))


def test_a_newline_terminated_garbage_line_is_tampering_not_a_torn_tail(ledger_bytes, ca, tmp_path):
    """A crash cannot write the newline that ends a line: such a line is evidence, never cut away."""
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(ledger_bytes + b"\x00\x00\x00\n")
    ledger = PrivacyLedger(path)
    assert path.read_bytes() == ledger_bytes + b"\x00\x00\x00\n" and not list(tmp_path.glob("*.torn-*"))
    result = verify(path, ca)
    assert result.problem.line == 9 and "not valid JSON" in result.problem.reason and result.torn_bytes == 0
    with pytest.raises(LedgerError, match="malformed.*refusing to extend"):
        ledger.record_refusal("p", "r")

    lines = lines_of(ledger_bytes)
    lines[3] = lines[3][:50]
    write(path, lines)
    PrivacyLedger(path)  # opening does not "repair" the middle
    assert len(lines_of(path.read_bytes())) == 8
    result = verify(path, ca)
    assert result.problem.line == 4 and "not valid JSON" in result.problem.reason
    with pytest.raises(LedgerError, match="line 4.*mor ledger verify"):
        read_entries(path)


# --------------------------------------------------------------------------- appends


def _append_scores(path: Path, site: str, count: int) -> None:
    ledger = PrivacyLedger(path)
    for i in range(count):
        ledger.record_scoring(site, i, 0.0)


def test_concurrent_appends_from_threads_and_processes_keep_the_chain(ca, tmp_path):
    path = tmp_path / "ledger.jsonl"
    shared = PrivacyLedger(path)
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_append_scores, args=(path, f"proc-{p}", 15)) for p in range(2)]
    threads = [
        threading.Thread(target=lambda t=t: [shared.record_scoring(f"thread-{t}", i, 0.0) for i in range(15)])
        for t in range(3)
    ]
    threads.append(threading.Thread(target=_append_scores, args=(path, "own-instance", 15)))
    for worker in (*procs, *threads):
        worker.start()
    for worker in (*procs, *threads):
        worker.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    result = verify(path, ca)
    assert result.ok and result.entries == 6 * 15
    sites = shared.summary()
    assert len(sites) == 6 and all(s.scoring_sessions == 15 and s.items_scored == 105 for s in sites.values())


def test_appends_are_validated(pki_dir, ca, tmp_path):
    ledger = PrivacyLedger(tmp_path / "sub" / "ledger.jsonl")
    with pytest.raises(LedgerError, match="unknown entry kind 'nope'.*register_kind"):
        ledger.append("nope", {})
    with pytest.raises(LedgerError, match="scoring_session entry needs the keys"):
        ledger.append("scoring_session", {"site": "a"})
    with pytest.raises(LedgerError, match="'items' is negative"):
        ledger.record_scoring("site-a", -1, 0.1)
    with pytest.raises(LedgerError, match="canonical JSON.*NaN"):
        ledger.append("scoring_session", {"site": "a", "items": 1, "duration_s": math.nan})
    with pytest.raises(LedgerError, match="trust entry needs the keys"):
        ledger.append("trust", {"site": "site-a", "score": 0.5})
    with pytest.raises(LedgerError, match="does not match trusted=False"):
        ledger.append("trust", {**TRUST_BODY, "trusted": False})
    signed = sign_report(make_report(), pki_dir / "site-a.key")
    forged = SignedReport({**signed.report, "epsilon": 0.0}, signed.signature, signed.cert_pem)
    with pytest.raises(ReportError, match="does not match"):
        ledger.record_report(forged, ca)
    with pytest.raises(ReportError, match="coordinator"):
        ledger.record_report(sign_report(make_report(), pki_dir / "coord.key"), ca)
    assert ledger.entries() == []  # nothing refused was written


def test_new_kinds_register_without_touching_the_core(ca, tmp_path):
    def check(body):
        if not isinstance(body, list):
            raise LedgerError("a note is a list")

    register_kind("note", check=check)
    try:
        ledger = PrivacyLedger(tmp_path / "l.jsonl")
        ledger.append("note", ["hello", 1])
        with pytest.raises(LedgerError, match="a note is a list"):
            ledger.append("note", {"x": 1})
        assert verify(ledger.path, ca).ok
    finally:
        del KINDS["note"]
    assert "unknown entry kind 'note'" in verify(ledger.path, ca).problem.reason


def test_append_refuses_to_extend_a_malformed_last_entry(ledger_bytes, tmp_path):
    lines = lines_of(ledger_bytes)
    lines[-1] = canonical_json({**json.loads(lines[-1]), "seq": "eight"})
    ledger = PrivacyLedger(write(tmp_path / "l", lines))
    with pytest.raises(LedgerError, match="last entry.*malformed.*mor ledger verify"):
        ledger.record_refusal("p", "r")


# --------------------------------------------------------------------------- CLI


def test_cli_show_prints_a_table_and_json(ledger_bytes, tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(ledger_bytes)
    result = CliRunner().invoke(root, ["ledger", "show", str(path)])
    assert result.exit_code == 0, result.output
    row_a = next(line for line in result.output.splitlines() if "site-a" in line)
    assert "2" in row_a and "prv" in row_a and "96 (2 sessions)" in row_a
    assert "inf (no DP)" in result.output and "head: seq 8" in result.output
    data = json.loads(CliRunner().invoke(root, ["ledger", "show", str(path), "--json"]).output)
    assert data["entries"] == 8 and data["sites"]["site-b"]["epsilon"] == INF
    assert data["sites"]["site-a"]["epsilon"] == 2.0 and data["sites"]["site-x"]["refusals"] == 1


def test_cli_verify_exit_codes(ledger_bytes, ca, tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(ledger_bytes)
    unsigned = CliRunner().invoke(root, ["ledger", "verify", str(path), "--ca", str(ca)])
    assert unsigned.exit_code == 1 and "no signed checkpoint" in unsigned.output
    ok = CliRunner().invoke(root, ["ledger", "verify", str(path), "--ca", str(ca), "--allow-unsigned"])
    assert ok.exit_code == 0 and "ok: 8 entries, chain intact, 3 signatures valid" in ok.output
    head = json.loads(lines_of(ledger_bytes)[-1])["hash"]
    assert f"head: {head}" in ok.output

    lines = lines_of(ledger_bytes)
    lines[4] = canonical_json(_tamper(json.loads(lines[4]), "body"))
    write(path, lines)
    bad = CliRunner().invoke(root, ["ledger", "verify", str(path), "--ca", str(ca), "--allow-unsigned"])
    assert bad.exit_code == 1 and "NOT intact: line 5, seq 5: hash does not match" in bad.output

    write(path, lines_of(ledger_bytes)[:-1])
    cut = CliRunner().invoke(
        root, ["ledger", "verify", str(path), "--ca", str(ca), "--anchor", head, "--allow-unsigned"]
    )
    assert cut.exit_code == 1 and "anchor" in cut.output


def test_cli_errors_name_the_cause(ledger_bytes, tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(ledger_bytes)
    missing = CliRunner().invoke(root, ["ledger", "show", str(tmp_path / "absent.jsonl")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    bad_ca = CliRunner().invoke(root, ["ledger", "verify", str(path), "--ca", str(not_pem)])
    assert bad_ca.exit_code == 1 and "not a PEM certificate" in bad_ca.output
    assert "Traceback" not in bad_ca.output
    bad_anchor = CliRunner().invoke(root, ["ledger", "verify", str(path), "--ca", str(not_pem), "--anchor", "x"])
    assert bad_anchor.exit_code == 2 and "64 lower-case hex digits" in bad_anchor.output

"""The coordinator signs its ledger: deleting a report and recomputing the chain, rewriting, stripping
the checkpoints and cutting the file back past its last checkpoint are all detected; `show` never
lowers a site's epsilon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_reports import make_report

from mor_secure.cli import root
from mor_secure.ledger import (
    GENESIS,
    LedgerSigner,
    PrivacyLedger,
    canonical_json,
    entry_hash,
    head_path,
    read_entries,
    summarize,
    verify,
)
from mor_secure.reports import sign_report


@pytest.fixture()
def signed(pki_dir, tmp_path) -> Path:
    """A signed ledger (checkpoint every 3 entries): site-a reports 7.5 then 2.0, plus scoring sessions."""
    ca = pki_dir / "ca.pem"
    ledger = PrivacyLedger(
        tmp_path / "ledger.jsonl", signer=LedgerSigner(pki_dir / "coord.pem", pki_dir / "coord.key"), checkpoint_every=3
    )
    ledger.record_report(sign_report(make_report(epsilon=7.5), pki_dir / "site-a.key"), ca)
    for i in range(4):
        ledger.record_scoring("site-a", 8 + i, 0.5)
    ledger.record_report(sign_report(make_report(epsilon=2.0, model_sha256="ff" * 32), pki_dir / "site-a.key"), ca)
    ledger.record_scoring("site-b", 4, 0.1)
    ledger.close()
    return ledger.path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


def _rechain(path: Path, entries: list[dict]) -> None:
    """Rewrite ``entries`` as a valid unkeyed chain (what a forger without the coordinator key can do)."""
    prev, out = GENESIS, []
    for seq, e in enumerate(entries, 1):
        e = {**e, "seq": seq, "prev_hash": prev}
        e["hash"] = prev = entry_hash(seq, e["ts"], e["kind"], e["body"], prev)
        out.append(canonical_json(e) + b"\n")
    path.write_bytes(b"".join(out))


def test_a_signed_ledger_verifies_with_checkpoints_and_a_signed_head(signed, pki_dir):
    result = verify(signed, pki_dir / "ca.pem", require_signed=True)
    kinds = [e.kind for e in read_entries(signed)]
    assert result.ok and result.checkpoints == kinds.count("checkpoint") >= 3 and kinds[-1] == "checkpoint"
    assert result.unsigned_tail == 0 and head_path(signed).exists()
    ok = CliRunner().invoke(root, ["ledger", "verify", str(signed), "--ca", str(pki_dir / "ca.pem")])
    assert ok.exit_code == 0 and "coordinator checkpoints" in ok.output, ok.output


def test_deleting_a_report_and_recomputing_the_chain_is_detected(signed, pki_dir):
    entries = _lines(signed)
    first_report = next(i for i, e in enumerate(entries) if e["kind"] == "privacy_report")
    _rechain(signed, entries[:first_report] + entries[first_report + 1 :])
    result = verify(signed, pki_dir / "ca.pem")
    assert not result.ok and "checkpoint" in result.problem.reason
    # ... even when every checkpoint goes too (and the signed head with them)
    _rechain(signed, [e for e in entries[:first_report] + entries[first_report + 1 :] if e["kind"] != "checkpoint"])
    head_path(signed).unlink()
    assert "no signed checkpoint" in verify(signed, pki_dir / "ca.pem", require_signed=True).problem.reason


def test_rewriting_an_epsilon_is_detected(signed, pki_dir):
    entries = _lines(signed)
    scoring = next(i for i, e in enumerate(entries) if e["kind"] == "scoring_session")
    entries[scoring]["body"]["items"] = 9999
    _rechain(signed, entries)
    assert "does not cover" in verify(signed, pki_dir / "ca.pem").problem.reason


def test_truncation_past_the_last_checkpoint_is_detected(signed, pki_dir):
    data = signed.read_bytes().split(b"\n")[:-1]
    signed.write_bytes(b"".join(line + b"\n" for line in data[:-3]))
    result = verify(signed, pki_dir / "ca.pem")
    assert not result.ok and "cut back" in result.problem.reason
    head_path(signed).unlink()  # removing the signed head is no way out
    assert "signed head" in verify(signed, pki_dir / "ca.pem").problem.reason


def test_only_a_tail_without_newline_is_torn(signed, pki_dir):
    good = signed.read_bytes()
    signed.write_bytes(good + b'{"seq": 99, "garbage')
    assert verify(signed, pki_dir / "ca.pem").ok  # a crash mid-write
    signed.write_bytes(good + b'{"seq": 99, "garbage"}\n')
    assert not verify(signed, pki_dir / "ca.pem").ok


def test_show_never_lowers_a_sites_epsilon(signed):
    assert summarize(read_entries(signed))["site-a"].epsilon == 7.5
    shown = json.loads(CliRunner().invoke(root, ["ledger", "show", str(signed), "--json"]).output)
    assert shown["sites"]["site-a"]["epsilon"] == 7.5


def test_appended_entries_without_the_key_beyond_one_period_are_detected(signed, pki_dir):
    unsigned = PrivacyLedger(signed)  # no signer: what someone with write access but no key can add
    for _ in range(4):
        unsigned.record_scoring("site-z", 1, 0.1)
    result = verify(signed, pki_dir / "ca.pem")
    assert not result.ok and "more than its period" in result.problem.reason

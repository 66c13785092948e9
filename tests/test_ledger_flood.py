"""Outsiders cannot fill the coordinator's ledger: 1,000 plaintext connections and a half-open flood cost a
few refusal entries and one summary per window, the coordinator's ledger stays signed and verifiable, and an
allow-listed site is still refused in full (issue 14 item 2)."""

from __future__ import annotations

import time

import pytest

from benchmarks.abuse_peers import plaintext_flood
from coordinator.config import load_coordinator_config
from coordinator.federation.service import Federation
from mor_secure import pki
from mor_secure.config import TLSConfig
from mor_secure.ledger import read_entries, summarize, verify
from mor_secure.transport import ClientOptions, TLSClient
from mor_secure.transport.contexts import context_factory
from tests.site_helpers import coordinator_toml, free_port, make_ca


def _until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_plaintext_flood_costs_a_bounded_number_of_ledger_entries(tmp_path):
    ca_dir = make_ca(tmp_path / "ca")
    pki.issue(ca_dir, role="client", name="site-b")  # enrolled at the CA, not allowed here
    config = load_coordinator_config(
        coordinator_toml(
            tmp_path, ca_dir, free_port(), ["site-a"], "refusal_window_s = 60.0\nrefusals_per_window = 10\n"
        )
    )
    with Federation(config) as fed:
        server = fed.pool.server
        for source in ("127.0.0.2", "127.0.0.3"):
            plaintext_flood(server.endpoint, 500, source=source)
        assert _until(lambda: server.refused_early >= 1000)
        assert _until(lambda: fed.writer.refusals_summarised >= 1000 - 10)
        # the flood spent the outsiders' quota; a certified site's refusal is still written in full
        tls = TLSConfig(
            ca=ca_dir / "ca.pem", cert=ca_dir / "site-b.pem", key=ca_dir / "site-b.key", crl=ca_dir / "crl.pem"
        )
        outsider = TLSClient(
            server.endpoint,
            context_factory(tls, "client"),
            coordinators=["coord"],
            worker_id="b",
            agent_version="t",
            options=ClientOptions(connect_timeout_s=5.0),
        )
        outsider.start()
        assert _until(lambda: outsider.error is not None)
        outsider.stop()
        assert _until(
            lambda: any(
                e.kind == "refusal" and e.body["peer"] == "mor://client/site-b"
                for e in read_entries(config.ledger.path)
            )
        )
    # stopping writes the summary of the window so far (a long-running coordinator: one per window)
    entries = read_entries(config.ledger.path)
    kinds = [e.kind for e in entries]
    outsiders = [e for e in entries if e.kind == "refusal" and not e.body["peer"].startswith("mor://")]
    assert len(outsiders) <= 10 and kinds.count("refusal_summary") == 1
    summarised = sum(e.body["refused"] for e in entries if e.kind == "refusal_summary")
    assert len(outsiders) + summarised == 1000
    assert summarize(entries)["127.0.0.2"].refusals == 500 and summarize(entries)["127.0.0.3"].refusals == 500
    assert config.ledger.path.stat().st_size < 64 * 1024
    result = verify(config.ledger.path, ca_dir / "ca.pem", require_signed=True)
    assert result.ok and result.checkpoints >= 1 and result.unsigned_tail == 0


def test_a_restarted_coordinator_refuses_a_crl_older_than_its_ledger_records(tmp_path):
    """The CRL numbers the coordinator enforced are in its signed ledger: rolling the CRL back while it is
    down does not let a revoked site in after the restart (issue 14 item 7)."""
    ca_dir = make_ca(tmp_path / "ca")
    config = load_coordinator_config(coordinator_toml(tmp_path, ca_dir, free_port(), ["site-a"]))
    older = (ca_dir / "crl.pem").read_bytes()
    with Federation(config) as fed:
        first = fed.pool.server.crl_number
        pki.write_crl(ca_dir)
        assert fed.pool.server.reload_crl() == 0 and fed.pool.server.crl_number == first + 1
    numbers = [e.body["number"] for e in read_entries(config.ledger.path) if e.kind == "crl"]
    assert numbers == [first, first + 1]
    (ca_dir / "crl.pem").write_bytes(older)
    with pytest.raises(pki.CRLError, match="below .* enforced before"):
        Federation(config)
    assert verify(config.ledger.path, ca_dir / "ca.pem", require_signed=True).ok

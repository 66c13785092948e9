"""Certificate renewal without downtime: new key beside the live one, atomic install, new certificate
presented at the next reconnect while requests keep succeeding."""

from __future__ import annotations

import stat
import uuid

import pytest
from click.testing import CliRunner

from client_agent.agent import Agent
from client_agent.config import load_client_config
from mor_secure import pki
from mor_secure.commands.certs import group as certs_group
from mor_secure.protocol import HealthRequest
from tests.site_helpers import coordinator_pool, enrol_site, free_port, make_ca


def test_install_refuses_a_certificate_that_fits_no_key_and_changes_nothing(tmp_path):
    ca_dir = make_ca(tmp_path / "ca")
    config = enrol_site(tmp_path, ca_dir, "site-a", free_port())
    certs = config.parent / "certs"
    before = (certs / "site-a.pem").read_bytes()
    other, _ = pki.issue(ca_dir, role="client", name="site-a", out_dir=tmp_path / "other", replace=True)
    result = CliRunner().invoke(certs_group, ["install", "--cert", str(other), "--dir", str(certs)])
    assert result.exit_code == 1 and "fits neither" in result.output
    assert (certs / "site-a.pem").read_bytes() == before
    again = CliRunner().invoke(
        certs_group, ["request", "--renew", "--role", "client", "--name", "site-a", "--out", str(certs)]
    )
    assert again.exit_code == 0, again.output
    pending = CliRunner().invoke(
        certs_group, ["request", "--renew", "--role", "client", "--name", "site-a", "--out", str(certs)]
    )
    assert pending.exit_code == 1 and "already pending" in pending.output


def _ask(pool) -> str:
    """One health request to site-a through ``pool``; returns the fingerprint of the session that answered."""
    result = pool.fanout(HealthRequest(request_id=uuid.uuid4().hex), ["site-a"])
    assert result.failures == {} and "site-a" in result.replies
    (peer,) = pool.peers()
    return peer.fingerprint


def test_agent_keeps_serving_across_a_renewal_and_reconnects_with_the_new_certificate(tmp_path):
    ca_dir = make_ca(tmp_path / "ca")
    port = free_port()
    config_path = enrol_site(tmp_path, ca_dir, "site-a", port)
    text = config_path.read_text()
    config_path.write_text(text.replace("# idle_timeout_s = 30.0   (default)", "idle_timeout_s = 1.5"))
    certs = config_path.parent / "certs"
    runner = CliRunner()
    pool = coordinator_pool(tmp_path, ca_dir, port, ["site-a"])
    agent = Agent(load_client_config(config_path), worker_id="w1")
    agent.start()
    try:
        assert pool.wait_for(["site-a"], 15)
        old_fp = _ask(pool)
        (old,) = pool.peers()
        renew = runner.invoke(
            certs_group, ["request", "--renew", "--role", "client", "--name", "site-a", "--out", str(certs)]
        )
        assert renew.exit_code == 0, renew.output
        assert stat.S_IMODE((certs / "site-a.next.key").stat().st_mode) == 0o600
        assert _ask(pool) == old_fp  # a pending renewal changes nothing
        signed = pki.sign_request(ca_dir, certs / "site-a.csr", out=tmp_path / "site-a.renewed.pem")
        install = runner.invoke(certs_group, ["install", "--cert", str(signed), "--dir", str(certs)])
        assert install.exit_code == 0, install.output
        assert not (certs / "site-a.next.key").exists()
        new_fp = pki.fingerprint(pki.load_cert(certs / "site-a.pem"))
        assert new_fp != old_fp
        assert _ask(pool) == old_fp and [p.session_id for p in pool.peers()] == [old.session_id]

        pool.stop()  # the coordinator restarts: the agent's next session presents the new certificate
        pool = coordinator_pool(tmp_path, ca_dir, port, ["site-a"])
        assert pool.wait_for(["site-a"], 15)
        assert _ask(pool) == new_fp

        # Now the CA may revoke the replaced certificate alone: the new session is unaffected.
        revoke = runner.invoke(
            certs_group,
            ["revoke", "--ca-dir", str(ca_dir), "--name", "site-a", "--serial", f"{old_serial(ca_dir, old_fp):x}"],
        )
        assert revoke.exit_code == 0 and "revoked 1 certificate" in revoke.output, revoke.output
        pool.server.reload_crl()
        assert _ask(pool) == new_fp
    finally:
        agent.stop()
        pool.stop()
    assert agent.client.error is None and agent.client.connections == 2


def old_serial(ca_dir, fingerprint: str) -> int:
    """The serial of the certificate with ``fingerprint`` from the CA's index."""
    (row,) = [r for r in pki.certificates(ca_dir) if r["fingerprint"] == fingerprint]
    return int(row["serial"])


@pytest.mark.parametrize("flags", [["--renew", "--reuse-key"]])
def test_renew_and_reuse_key_are_exclusive(tmp_path, flags):
    result = CliRunner().invoke(
        certs_group, ["request", *flags, "--role", "client", "--name", "site-a", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1 and "choose one" in result.output

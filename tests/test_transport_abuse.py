"""Hostile peers against the live transport on 127.0.0.x (issue 14): a half-open ClientHello flood never
keeps a site out, refusals are logged at a bounded rate, an older CRL is refused and a broken one retried,
garbage before the welcome is retried by the agent, and peer values are checked."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from benchmarks.abuse_peers import FakeCoordinator, HalfOpenFlood, hostile_coordinator, plaintext_flood
from mor_secure import pki, protocol
from mor_secure.logs import KeyValueFormatter
from mor_secure.transport import ClientOptions, ServerOptions, TLSClient, TLSServer
from tests.site_helpers import free_port
from tests.test_transport import RawAgent, _client_ctx, _server_ctx, _wait

ALLOW = ["site-a", "site-b"]
QUICK = ClientOptions(
    heartbeat_s=0.5, idle_timeout_s=3.0, connect_timeout_s=5.0, backoff_initial_s=0.05, backoff_max_s=0.3
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    ca_dir = tmp_path_factory.mktemp("abuse-pki") / "ca"
    pki.init_ca(ca_dir)
    pki.issue(ca_dir, role="coordinator", name="coord")
    for name in ("site-a", "site-b"):
        pki.issue(ca_dir, role="client", name=name)
    return ca_dir


def _client(endpoint: str, ca: Path, site: str = "site-a") -> TLSClient:
    client = TLSClient(
        endpoint,
        _client_ctx(ca, ca / f"{site}.pem", ca / f"{site}.key"),
        coordinators=["coord"],
        worker_id=f"{site}-w",
        agent_version="t",
        options=ClientOptions(**vars(QUICK)),
    )
    client.start()
    return client


@pytest.mark.parametrize("addresses", [["127.0.0.2"], ["127.0.0.2", "127.0.0.3", "127.0.0.4"]])
def test_a_half_open_flood_from_a_few_addresses_never_keeps_a_site_out(ca, addresses):
    """64 ClientHellos per address, refreshed every second (the review's attack, faster): each site still
    joins at its first attempt, within its connect timeout."""
    with TLSServer("tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW) as server:
        flood = HalfOpenFlood(server.endpoint, addresses, per_address=64, refresh_s=1.0, duration_s=60)
        flood.start()
        try:
            assert _wait(lambda: flood.sent >= 128 and server.evicted + server.refused_early >= 64, timeout=20)
            for site in ("site-a", "site-b"):
                agent = _client(server.endpoint, ca, site)
                try:
                    assert agent.connected.wait(20) and agent.error is None
                    assert agent.connections == 1, agent.last_error  # no retry was needed
                finally:
                    agent.stop()
            pending = [s for s in server._sessions.values() if s.peer is None]
            assert len(pending) <= server.options.max_pending_handshakes
            assert all(
                sum(s.address == a for s in pending) <= server.options.max_pending_per_address for a in addresses
            )
        finally:
            flood.stop()


def test_a_flood_from_the_sites_own_address_only_displaces_itself(ca):
    with TLSServer("tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW) as server:
        flood = HalfOpenFlood(server.endpoint, ["127.0.0.1"], per_address=16, refresh_s=1.0, duration_s=60)
        flood.start()
        try:
            assert _wait(lambda: server.evicted >= 8, timeout=20)
            agent = _client(server.endpoint, ca)
            try:
                assert agent.connected.wait(30) and agent.error is None
            finally:
                agent.stop()
        finally:
            flood.stop()


def test_plaintext_floods_are_refused_cheaply_and_logged_at_a_bounded_rate(ca, caplog):
    options = ServerOptions(log_window_s=60.0, log_per_window=10)
    with TLSServer("tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW, options=options) as server:
        good = _client(server.endpoint, ca)
        try:
            assert good.connected.wait(10)
            with caplog.at_level(logging.WARNING, logger="mor.transport.server"):
                plaintext_flood(server.endpoint, 300, source="127.0.0.2")
                assert _wait(lambda: server.refused_early >= 300, timeout=20)
            logged = [r for r in caplog.records if r.getMessage() == "peer refused or dropped"]
            assert len(logged) <= 10
            assert good.connected.is_set() and "site-a" in server.sites()
        finally:
            good.stop()


def _crl_bytes(ca: Path) -> bytes:
    return (ca / "crl.pem").read_bytes()


def test_an_older_crl_is_refused_and_a_broken_one_is_retried(tmp_path):
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    pki.issue(ca, role="coordinator", name="coord")
    for name in ("site-a", "site-b"):
        pki.issue(ca, role="client", name=name)
    crl = ca / "crl.pem"
    old = _crl_bytes(ca)
    options = ServerOptions(heartbeat_s=0.5, crl_check_s=0.1)
    with TLSServer(
        "tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW, crl_path=crl, options=options
    ) as server:
        first = server.crl_number
        victim = _client(server.endpoint, ca, "site-b")
        try:
            assert victim.connected.wait(10)
            pki.revoke(ca, "site-b")
            assert _wait(lambda: server.crl_number == first + 1 and "site-b" not in server.sites(), timeout=10)
        finally:
            victim.stop()
        current = _crl_bytes(ca)

        crl.write_bytes(old)  # rollback to an older, still fresh CRL
        assert _wait(lambda: server.crl_failures >= 1, timeout=10)
        assert server.crl_number == first + 1
        again = _client(server.endpoint, ca, "site-b")
        try:  # still refused by the CRL in force
            assert _wait(lambda: again.error is not None, timeout=10) and "revoked" in str(again.error)
        finally:
            again.stop()

        failures = server.crl_failures
        crl.write_bytes(b"-----BEGIN X509 CRL-----\ntruncated")  # a copy caught half-way
        stamp = os.stat(crl).st_mtime_ns
        assert _wait(lambda: server.crl_failures > failures + 1, timeout=10)  # tried again and again
        pki.write_crl(ca)  # the good, newer CRL lands with the very same mtime: still picked up
        os.utime(crl, ns=(stamp, stamp))
        assert _wait(lambda: server.crl_number == first + 2, timeout=10)
        assert current != _crl_bytes(ca)


def test_garbage_or_a_plaintext_alert_before_the_welcome_is_retried_until_the_real_coordinator(ca):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    fake = FakeCoordinator(endpoint)
    fake.start()
    agent = _client(endpoint, ca)
    try:
        assert _wait(lambda: fake.answered >= 3, timeout=20)
        assert agent.error is None and not agent.connected.is_set() and agent.last_error
        fake.stop()
        with TLSServer(endpoint, _server_ctx(ca), name="coord", allow=ALLOW) as server:
            assert agent.connected.wait(20) and agent.error is None
            assert "site-a" in server.sites() and agent.connections >= 3
    finally:
        fake.stop()
        agent.stop()


def test_an_agent_refuses_a_welcome_with_a_heartbeat_of_zero(ca):
    with hostile_coordinator("tcp://127.0.0.1:0", _server_ctx(ca), allow=ALLOW, welcome_heartbeat_s=0.0) as server:
        agent = _client(server.endpoint, ca)
        try:
            assert _wait(lambda: "heartbeat_s" in agent.last_error, timeout=10)
            assert not agent.connected.is_set() and agent.error is None  # retried, never welcomed
        finally:
            agent.stop()


def test_a_hello_of_another_protocol_version_gets_a_clear_refusal(ca):
    with TLSServer("tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW) as server:
        raw = RawAgent(server.endpoint, ca, hello=protocol.Hello(agent_version="t", worker_id="raw", protocol=2))
        try:
            refused = raw.replies[0]
            assert isinstance(refused, protocol.Refused) and "protocol version 2" in refused.reason
            assert "install the same mor-secure version" in refused.reason and server.sites() == set()
        finally:
            raw.sock.close()


def test_log_fields_from_peers_are_escaped():
    record = logging.makeLogRecord(
        {"msg": "agent joined", "levelname": "INFO", "name": "mor.x", "worker": "w1\nERROR forged=1", "site": "site-a"}
    )
    line = KeyValueFormatter().format(record)
    assert "\n" not in line and 'worker="w1\\nERROR forged=1"' in line and "site=site-a" in line

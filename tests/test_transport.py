"""The live transport on 127.0.0.1: every kind of bad peer is refused with a clear reason while a
good agent keeps working; fuzzed frames never kill the server; revocation drops live sessions."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from pathlib import Path

import pytest
import zmq
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.abuse_peers import RawPeer
from mor_secure import pki, protocol
from mor_secure.pki.keys import load_private_key, signing_hash
from mor_secure.protocol import HealthReply, HealthRequest
from mor_secure.transport import AgentRefused, ClientOptions, EndKind, ServerOptions, SessionEnded, TLSClient, TLSServer
from mor_secure.transport.tls import TLSSession

ALLOW = ["site-a", "site-c", "site-r1", "site-r2", "site-old", "site-new"]
FAST = ClientOptions(
    heartbeat_s=0.5, idle_timeout_s=3.0, connect_timeout_s=3.0, backoff_initial_s=0.1, backoff_max_s=0.5
)


def _resign(ca_dir: Path, name: str, out: str, *, start: dt.timedelta, end: dt.timedelta) -> Path:
    """A copy of NAME's certificate with another validity window, signed by the CA (same key)."""
    cert = pki.load_cert(ca_dir / f"{name}.pem")
    ca_cert, ca_key = pki.load_cert(ca_dir / "ca.pem"), load_private_key(ca_dir / "ca.key")
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + start)
        .not_valid_after(now + end)
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    path = ca_dir / f"{out}.pem"
    path.write_bytes(builder.sign(ca_key, signing_hash(ca_key)).public_bytes(serialization.Encoding.PEM))
    (ca_dir / f"{out}.key").write_bytes((ca_dir / f"{name}.key").read_bytes())
    return path


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    """A CA of our own (this module revokes certificates), plus certificates no one should accept."""
    ca_dir = tmp_path_factory.mktemp("transport-pki") / "ca"
    pki.init_ca(ca_dir)
    pki.issue(ca_dir, role="coordinator", name="coord")
    for name in ("site-a", "site-b", "site-c", "site-r1", "site-r2", "site-old", "site-new"):
        pki.issue(ca_dir, role="client", name=name)
    _resign(ca_dir, "site-old", "expired", start=dt.timedelta(days=-10), end=dt.timedelta(days=-1))
    _resign(ca_dir, "site-new", "future", start=dt.timedelta(days=2), end=dt.timedelta(days=10))
    other = ca_dir.parent / "other"
    pki.init_ca(other)
    pki.issue(other, role="client", name="site-a")
    return ca_dir


def _server_ctx(ca_dir: Path):
    return lambda: pki.ssl_context(
        "coordinator", ca=ca_dir / "ca.pem", cert=ca_dir / "coord.pem", key=ca_dir / "coord.key", crl=ca_dir / "crl.pem"
    )


def _client_ctx(ca_dir: Path, cert: Path | None, key: Path | None, *, tls12: bool = False):
    """A client context built by hand, so it can carry what pki.ssl_context would refuse to load."""

    def build() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cafile=str(ca_dir / "ca.pem"))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    return build


def _agent(endpoint: str, factory, site: str = "site-a", coordinators=("coord",), *, final: bool = True) -> TLSClient:
    """A started agent; waits for its welcome or final refusal, or (``final=False``) for a first failed try."""
    client = TLSClient(
        endpoint,
        factory,
        coordinators=coordinators,
        worker_id=f"{site}-w",
        agent_version="t",
        options=ClientOptions(**vars(FAST)),
    )
    client.register(HealthRequest, lambda m: HealthReply(m.request_id, site, "t", ["health_request"]))
    client.start()
    if final:
        client.connected.wait(10)
    else:
        _wait(lambda: client.last_error != "" or client.connected.is_set(), timeout=10)
    return client


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def federation(ca):
    """A server with a good agent (site-a) connected for the whole module."""
    options = ServerOptions(
        heartbeat_s=0.5, peer_timeout_s=5.0, handshake_timeout_s=2.0, max_message_bytes=2 * 1024 * 1024
    )
    server = TLSServer(
        "tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW, crl_path=ca / "crl.pem", options=options
    )
    endpoint = server.start()
    good = _agent(endpoint, _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key"))
    assert good.connected.is_set() and good.error is None
    yield server, endpoint, good
    good.stop()
    server.stop()


def _good_agent_answers(server: TLSServer, good: TLSClient) -> None:
    future = server.request(good.session_id, HealthRequest(request_id=f"h{time.monotonic_ns()}"))
    assert future.result(5).site == "site-a"


def _refusal(server: TLSServer, text: str) -> bool:
    return any(text in r.reason for r in server.refusals())


@pytest.mark.parametrize(
    "case, server_reason",
    [
        ("other CA", "another CA"),
        ("expired", "certificate expired"),
        ("not yet valid", "not yet valid"),
        ("wrong role", "role"),
        ("not on the allow-list", "not on the allow-list"),
        ("no certificate", "no client certificate"),
        ("TLS 1.2", "TLS 1.2"),
    ],
)
def test_bad_agents_are_refused_with_a_reason_while_the_good_one_works(federation, ca, case, server_reason):
    """Refusals the verified coordinator sends inside its session are final for the agent; a TLS 1.2
    agent only ever sees a plaintext alert, which anyone could forge, so it retries with back-off."""
    server, endpoint, good = federation
    cert = {
        "other CA": ca.parent / "other" / "site-a.pem",
        "expired": ca / "expired.pem",
        "not yet valid": ca / "future.pem",
        "wrong role": ca / "coord.pem",
        "not on the allow-list": ca / "site-b.pem",
        "no certificate": None,
        "TLS 1.2": ca / "site-a.pem",
    }[case]
    key = cert.with_suffix(".key") if cert else None
    final = case != "TLS 1.2"
    bad = _agent(endpoint, _client_ctx(ca, cert, key, tls12=not final), final=final)
    try:
        if final:
            assert isinstance(bad.error, AgentRefused), f"{case}: {bad.error!r}"
        else:
            assert bad.error is None and "TLS" in bad.last_error and not bad.connected.is_set()
        assert _wait(lambda: _refusal(server, server_reason)), [r.reason for r in server.refusals()]
        assert all(p.site == "site-a" for p in server.peers())
        _good_agent_answers(server, good)
    finally:
        bad.stop()


def test_agent_refuses_a_coordinator_it_cannot_verify_or_did_not_expect(federation, ca):
    server, endpoint, good = federation
    other_ca = ca.parent / "other"
    untrusting = _agent(
        endpoint, lambda: _client_ctx(other_ca, other_ca / "site-a.pem", other_ca / "site-a.key")(), final=False
    )
    wrong_name = _agent(
        endpoint, _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key"), coordinators=["elsewhere"], final=False
    )
    try:  # not the real coordinator's word: retried with back-off, never welcomed, never final
        assert untrusting.error is None and "another CA" in untrusting.last_error
        assert wrong_name.error is None and "'elsewhere'" in wrong_name.last_error
        assert not untrusting.connected.is_set() and not wrong_name.connected.is_set()
        _good_agent_answers(server, good)
    finally:
        untrusting.stop()
        wrong_name.stop()


def test_a_revoked_certificate_is_refused_after_a_crl_reload(federation, ca):
    server, endpoint, good = federation
    pki.revoke(ca, "site-r1")
    server.reload_crl()
    bad = _agent(endpoint, _client_ctx(ca, ca / "site-r1.pem", ca / "site-r1.key"))
    try:
        assert isinstance(bad.error, AgentRefused)
        assert _wait(lambda: _refusal(server, "certificate revoked"))
        _good_agent_answers(server, good)
    finally:
        bad.stop()


def test_revoking_a_connected_agent_drops_it_when_the_crl_file_changes(federation, ca):
    server, endpoint, good = federation
    victim = _agent(endpoint, _client_ctx(ca, ca / "site-r2.pem", ca / "site-r2.key"), site="site-r2")
    try:
        assert victim.error is None and "site-r2" in server.sites()
        pki.revoke(ca, "site-r2")  # rewrites crl.pem; the server notices the new mtime by itself
        assert _wait(lambda: victim.error is not None)
        assert isinstance(victim.error, AgentRefused) and "revoked" in str(victim.error)
        assert "site-r2" not in server.sites()
        assert any(
            r.identity == "mor://client/site-r2" and r.kind is EndKind.REVOKED and not r.departed
            for r in server.refusals()
        )
        _good_agent_answers(server, good)
    finally:
        victim.stop()


def test_a_plaintext_zeromq_peer_is_refused(federation):
    server, endpoint, good = federation
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([b"HEALTH", b"please"])
    sock.send(protocol.encode(HealthRequest(request_id="x")))
    try:
        assert _wait(lambda: _refusal(server, "plaintext or non-TLS peer"))
        assert sock.poll(300) == 0  # nothing is ever answered in plaintext
        _good_agent_answers(server, good)
    finally:
        sock.close()


def test_a_restarted_coordinator_ignores_records_of_the_old_sessions_without_refusing(ca):
    options = ServerOptions(heartbeat_s=0.5, peer_timeout_s=5.0)
    first = TLSServer("tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW, options=options)
    endpoint = first.start()
    agent = _agent(endpoint, _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key"))
    try:
        assert agent.connected.is_set() and agent.error is None
        first.stop()  # ZeroMQ reconnects the agent's socket to the next server, which gets its old session
        with TLSServer(endpoint, _server_ctx(ca), name="coord", allow=ALLOW, options=options) as second:
            assert _wait(lambda: second.stale_records >= 1)
            assert _wait(lambda: "site-a" in second.sites(), timeout=15)  # redialled after its idle timeout
            assert second.refusals() == []  # nothing for the ledger: no refusal of 127.0.0.1
    finally:
        agent.stop()


def test_a_stopped_server_has_released_its_port(ca):
    """stop() returns only once the listener is closed, so a restart on the same address binds at once (a
    shared ZeroMQ context closed it later, and a quick restart failed with 'Address already in use')."""
    for _ in range(100):
        server = TLSServer("tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW)
        host, _, port = server.start().removeprefix("tcp://").rpartition(":")
        server.stop()
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq binds
            probe.bind((host, int(port)))  # OSError 'Address already in use' while the listener lingers


def test_a_request_to_an_agent_that_left_fails_with_a_typed_departure_not_a_refusal(federation, ca):
    server, endpoint, good = federation
    leaver = _agent(endpoint, _client_ctx(ca, ca / "site-c.pem", ca / "site-c.key"), site="site-c")
    assert leaver.error is None
    session = leaver.session_id
    leaver.stop()
    future = server.request(session, HealthRequest(request_id="h-after-leaving"))
    with pytest.raises(SessionEnded) as ended:
        future.result(15)  # at once when the send fails, at the latest when the session falls silent
    assert ended.value.kind is EndKind.DEPARTED
    mine = [r for r in server.refusals() if r.identity == "mor://client/site-c"]
    assert mine and all(r.departed for r in mine)  # a departure: nothing a ledger should count as a refusal
    _good_agent_answers(server, good)


def test_every_refusal_reaches_on_refusal_before_it_is_listed(ca):
    heard = []
    server = TLSServer(
        "tcp://127.0.0.1:0",
        _server_ctx(ca),
        name="coord",
        allow=ALLOW,
        on_refusal=lambda refusal: heard.append((refusal, len(server.refusals()))),
    )
    with server:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        sock.send(b"GET / HTTP/1.0")
        try:
            assert _wait(lambda: heard)
        finally:
            sock.close()
        refusal, listed_before = heard[0]
        assert "plaintext or non-TLS peer" in refusal.reason and listed_before == 0  # heard first: none lost
        assert refusal.kind is EndKind.PROTOCOL and not refusal.departed
        assert server.refusals() == [refusal]


def _client_hello(ca: Path) -> bytes:
    frames: list[bytes] = []
    TLSSession(
        _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key")(),
        server_side=False,
        emit=frames.append,
        max_message_bytes=1024,
    ).start()
    return frames[0]


_frames = st.one_of(
    st.lists(st.binary(max_size=2048), min_size=1, max_size=3),
    st.builds(lambda cut, tail: ["hello", cut, tail], st.integers(0, 400), st.binary(max_size=64)),
    st.builds(lambda junk: ["hello", None, b"\x17\x03\x03\xff\xff" + junk], st.binary(max_size=4096)),
    st.builds(lambda n: [b"\x16\x03\x01" + n.to_bytes(2, "big") + b"\x01\xff\xff\xff"], st.integers(0, 65535)),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(plan=_frames)
def test_fuzzed_frames_never_kill_the_server(federation, ca, plan):
    server, endpoint, good = federation
    hello = _client_hello(ca)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        if plan and plan[0] == "hello":  # a real ClientHello (maybe cut short), then junk records
            _, cut, tail = plan
            sock.send(hello if cut is None else hello[:cut] + tail)
            if cut is None:
                sock.send(tail)
        else:
            sock.send_multipart(plan)
    finally:
        sock.close()
    _good_agent_answers(server, good)


def test_a_frame_over_maxmsgsize_only_costs_its_sender(federation):
    server, endpoint, good = federation
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(b"\x16\x03\x01" + bytes(4 * 1024 * 1024))
    time.sleep(0.2)
    sock.close()
    _good_agent_answers(server, good)


def test_half_open_handshakes_beyond_the_cap_make_room_and_time_out(ca):
    options = ServerOptions(max_pending_handshakes=3, certificate_timeout_s=0.5, handshake_timeout_s=1.0)
    with TLSServer("tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW, options=options) as server:
        context = zmq.Context.instance()
        socks = []
        for _ in range(6):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(server.endpoint)
            sock.send(_client_hello(ca))
            socks.append(sock)
        assert _wait(lambda: _refusal(server, "half-open session evicted"))
        assert _wait(lambda: _refusal(server, "no client certificate within"))
        good = _agent(server.endpoint, _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key"))
        try:
            assert good.error is None
            _good_agent_answers(server, good)
        finally:
            good.stop()
            for sock in socks:
                sock.close()


def test_several_workers_of_one_site_are_separate_sessions_and_a_large_request_works(federation, ca):
    server, endpoint, good = federation
    second = _agent(endpoint, _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key"))
    png = b"\x89PNG\r\n\x1a\n" + bytes(1024 * 1024)
    second.register(protocol.ScoreRequest, lambda m: protocol.ScoreReply(m.request_id, [float(len(m.images[0]))], "x"))
    try:
        sessions = [p for p in server.peers() if p.site == "site-a"]
        assert len(sessions) == 2 and len({p.fingerprint for p in sessions}) == 1
        request = protocol.ScoreRequest(request_id="big", images=[png], prompts=["p"], completions=["c"])
        reply = server.request(second.session_id, request).result(10)
        assert reply.scores == [float(len(png))]
        unsupported = server.request(good.session_id, request).result(10)  # site-a's first worker lacks it
        assert isinstance(unsupported, protocol.Error) and unsupported.code == "unsupported"
    finally:
        second.stop()


def test_the_agent_reconnects_with_a_fresh_handshake_when_the_coordinator_restarts(ca):
    server = TLSServer("tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW)
    endpoint = server.start()
    agent = _agent(endpoint, _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key"))
    try:
        first = agent.session_id
        server.stop()
        server = TLSServer(endpoint, _server_ctx(ca), name="coord", allow=ALLOW)
        server.start()
        assert server.wait_for_sites(["site-a"], 15)
        assert _wait(lambda: agent.session_id in {p.session_id for p in server.peers()})
        assert agent.connections >= 2 and agent.session_id != first
        _good_agent_answers(server, agent)
    finally:
        agent.stop()
        server.stop()


def RawAgent(endpoint: str, ca: Path, hello: protocol.Hello | None = None) -> RawPeer:
    """A hand-driven site-a agent: real handshake and hello (or ``hello``), then whatever the test sends."""
    return RawPeer(
        endpoint,
        _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key")(),
        protocol.encode(hello) if hello is not None else None,
    )


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\xc1 not msgpack", "protocol violation"),
        (protocol.encode(protocol.ScoreReply(request_id="nobody-asked", scores=[1.0], model_sha256="x")), None),
    ],
)
def test_garbage_after_the_welcome_drops_only_that_session(federation, ca, payload, reason):
    server, endpoint, good = federation
    raw = RawAgent(endpoint, ca)
    try:
        assert len([p for p in server.peers() if p.worker_id == "raw"]) == 1
        raw.send(payload)
        if reason:  # garbage: dropped with the reason; an unsolicited reply is just ignored
            assert _wait(lambda: not any(p.worker_id == "raw" for p in server.peers()))
            assert _refusal(server, reason)
        else:
            time.sleep(0.2)
            assert any(p.worker_id == "raw" for p in server.peers())
        _good_agent_answers(server, good)
    finally:
        raw.sock.close()


def test_unsolicited_agent_messages_reach_on_message_with_the_certified_site(ca):
    received = []
    with TLSServer(
        "tcp://127.0.0.1:0",
        _server_ctx(ca),
        name="coord",
        allow=ALLOW,
        on_message=lambda peer, msg: received.append((peer.site, msg)),
    ) as server:
        agent = _agent(server.endpoint, _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key"))
        try:
            report = protocol.PrivacyReportMsg(report={"epsilon": 1.5}, signature=b"sig")
            agent.send(report)
            assert _wait(lambda: received == [("site-a", report)])
        finally:
            agent.stop()
        with pytest.raises(ConnectionError):
            agent.send(report)


def test_heartbeats_continue_while_a_handler_runs_longer_than_the_peer_timeout(ca):
    options = ServerOptions(heartbeat_s=0.2, peer_timeout_s=0.8)
    with TLSServer("tcp://127.0.0.1:0", _server_ctx(ca), name="coord", allow=ALLOW, options=options) as server:
        agent = TLSClient(
            server.endpoint,
            _client_ctx(ca, ca / "site-a.pem", ca / "site-a.key"),
            coordinators=["coord"],
            worker_id="slow",
            agent_version="t",
            options=ClientOptions(heartbeat_s=0.2, idle_timeout_s=3.0),
        )
        agent.register(HealthRequest, lambda m: time.sleep(2.0) or HealthReply(m.request_id, "site-a", "t", []))
        agent.start()
        try:
            assert agent.connected.wait(10) and agent.error is None
            reply = server.request(agent.session_id, HealthRequest(request_id="long")).result(10)
            assert reply.request_id == "long" and agent.connections == 1
        finally:
            agent.stop()

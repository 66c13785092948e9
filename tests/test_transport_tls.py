"""The sans-IO TLS session: real TLS 1.3 handshakes in memory, message framing, bounded buffers."""

from __future__ import annotations

import pytest

from mor_secure import pki
from mor_secure.transport.tls import TLSError, TLSSession, looks_like_client_hello


def _ctx(pki_dir, role, name):
    return pki.ssl_context(
        role, ca=pki_dir / "ca.pem", cert=pki_dir / f"{name}.pem", key=pki_dir / f"{name}.key", crl=pki_dir / "crl.pem"
    )


class Wire:
    """Two sessions joined by lists standing in for ZeroMQ frames."""

    def __init__(self, pki_dir, server_limit=1 << 20, client_limit=1 << 20):
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.server = TLSSession(
            _ctx(pki_dir, "coordinator", "coord"),
            server_side=True,
            emit=self.to_client.append,
            max_message_bytes=server_limit,
        )
        self.client = TLSSession(
            _ctx(pki_dir, "client", "site-a"),
            server_side=False,
            emit=self.to_server.append,
            max_message_bytes=client_limit,
        )

    def pump(self) -> tuple[list, list]:
        at_server, at_client = [], []
        while self.to_server or self.to_client:
            while self.to_server:
                at_server += self.server.feed(self.to_server.pop(0))
            while self.to_client:
                at_client += self.client.feed(self.to_client.pop(0))
        return at_server, at_client

    def connect(self) -> Wire:
        self.client.start()
        assert looks_like_client_hello(self.to_server[0])
        self.pump()
        assert self.server.handshake_done and self.client.handshake_done
        assert self.server.ssl_object.version() == "TLSv1.3"
        return self


def test_messages_of_any_size_cross_in_order(pki_dir):
    wire = Wire(pki_dir).connect()
    payloads = [b"", b"a", bytes(range(256)) * 70, b"z" * (1 << 20)]
    for p in payloads:
        wire.client.send(p)
    at_server, _ = wire.pump()
    assert [bytes(m) for m in at_server] == payloads
    assert pki.peer_identity(wire.server.ssl_object, "client").name == "site-a"
    assert pki.peer_identity(wire.client.ssl_object, "coordinator").name == "coord"


def test_records_split_into_arbitrary_frames_still_reassemble(pki_dir):
    wire = Wire(pki_dir).connect()
    wire.client.send(b"hello world" * 5000)
    data = b"".join(wire.to_server)
    wire.to_server.clear()
    got = []
    for i in range(0, len(data), 777):
        got += wire.server.feed(data[i : i + 777])
    assert [bytes(m) for m in got] == [b"hello world" * 5000]


def test_a_huge_length_header_is_refused_before_allocation(pki_dir):
    wire = Wire(pki_dir, server_limit=1024, client_limit=1 << 20).connect()
    wire.client.send(b"x" * 2048)
    with pytest.raises(TLSError, match="over the limit 1024"):
        wire.pump()
    with pytest.raises(TLSError, match="closed"):
        wire.server.feed(b"\x17\x03\x03\x00\x01x")


def test_oversized_frames_and_garbage_records_fail_the_session(pki_dir):
    wire = Wire(pki_dir, server_limit=1024).connect()
    with pytest.raises(TLSError, match="exceeds the limit"):
        wire.server.feed(b"\x17" * (wire.server.max_frame_bytes + 1))
    wire = Wire(pki_dir).connect()
    with pytest.raises(TLSError):
        wire.server.feed(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a record that fails authentication


def test_plaintext_is_not_a_client_hello():
    assert not looks_like_client_hello(b"GET / HTTP/1.1\r\n")
    assert not looks_like_client_hello(b"\x16\x03")


def test_sending_before_the_handshake_is_an_error(pki_dir):
    wire = Wire(pki_dir)
    with pytest.raises(TLSError, match="not established"):
        wire.client.send(b"early")


def test_several_messages_in_one_frame_all_come_out(pki_dir):
    # The read loop stops when the buffers are empty, not on SSLWantReadError: nothing may be left behind.
    wire = Wire(pki_dir).connect()
    payloads = [b"x" * n for n in (0, 1, 3, 16 * 1024, 40_000, 5)]
    for p in payloads:
        wire.client.send(p)
    data = b"".join(wire.to_server)
    wire.to_server.clear()
    assert [bytes(m) for m in wire.server.feed(data)] == payloads

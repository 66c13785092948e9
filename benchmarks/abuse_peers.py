"""Hostile peers on 127.0.0.x for `mor bench abuse` and the tests that keep each hardening fixed.

Each tool speaks to a real ``TLSServer``/``TLSClient`` over ZeroMQ on loopback only; flooders use
other loopback source addresses (127.0.0.2, ...) so the coordinator sees distinct peers, as it would
on a network. Every loop is bounded by a count or a deadline.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Sequence

import msgpack
import zmq

from mor_secure.transport.tls import TLSSession

PLAINTEXT_ALERT = b"\x15\x03\x03\x00\x02\x02\x28"
"""A TLS handshake_failure alert in plaintext: what anyone on the path can send before the handshake."""


def loopback_only(endpoint: str) -> str:
    """``endpoint`` when it is tcp://127.x.x.x:PORT (ValueError otherwise: these tools never leave the host)."""
    if not endpoint.startswith("tcp://127."):
        raise ValueError(f"{endpoint} is not a loopback endpoint; hostile peers only run on 127.0.0.x")
    return endpoint


def from_address(endpoint: str, source: str | None) -> str:
    """A ZeroMQ connect string dialling ``endpoint`` from the loopback address ``source`` (None: default)."""
    loopback_only(endpoint)
    if source is None:
        return endpoint
    if not source.startswith("127."):
        raise ValueError(f"source {source} is not a loopback address")
    return f"tcp://{source}:0;{endpoint.removeprefix('tcp://')}"


def client_hello() -> bytes:
    """A genuine TLS 1.3 ClientHello (no certificate needed to send one), as a stranger would send."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    frames: list[bytes] = []
    TLSSession(ctx, server_side=False, emit=frames.append, max_message_bytes=1024).start()
    return frames[0]


def nested_maps(megabytes: float = 15.0) -> bytes:
    """A msgpack privacy report of ~``megabytes`` MB of empty maps (1 byte each on the wire, ~200 in Python)."""
    n = int(megabytes * 1024 * 1024) // 1000
    return msgpack.packb(
        {"v": 1, "t": "privacy_report", "b": {"report": {"x": [[{}] * 1000] * n}, "signature": b""}}, use_bin_type=True
    )


class HalfOpenFlood(threading.Thread):
    """Keeps ``per_address`` half-open TLS sessions (one ClientHello each, never finished) open from each of
    ``addresses``, replacing them all every ``refresh_s`` seconds, until ``stop()`` or ``duration_s``."""

    def __init__(
        self,
        endpoint: str,
        addresses: Sequence[str],
        *,
        per_address: int = 64,
        refresh_s: float = 2.0,
        duration_s: float = 60.0,
    ) -> None:
        super().__init__(name="half-open-flood", daemon=True)
        self.targets = [from_address(endpoint, a) for a in addresses]
        self.per_address, self.refresh_s, self.duration_s = per_address, refresh_s, duration_s
        self.hello = client_hello()
        self.sent = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        context = zmq.Context.instance()
        deadline = time.monotonic() + self.duration_s
        live: list[zmq.Socket] = []
        try:
            while not self._stop_event.is_set() and time.monotonic() < deadline:
                fresh = []
                for target in self.targets:
                    for _ in range(self.per_address):
                        sock = context.socket(zmq.DEALER)
                        sock.setsockopt(zmq.LINGER, 0)
                        sock.connect(target)
                        sock.send(self.hello, zmq.NOBLOCK)
                        fresh.append(sock)
                        self.sent += 1
                for sock in live:
                    sock.close()
                live = fresh
                self._stop_event.wait(self.refresh_s)
        finally:
            for sock in live:
                sock.close()

    def stop(self) -> None:
        """End the flood and close its sockets."""
        self._stop_event.set()
        self.join(10)


def plaintext_flood(
    endpoint: str, connections: int, *, source: str | None = None, payload: bytes = b"GET / HTTP/1.0\r\n"
) -> int:
    """Open ``connections`` ZeroMQ connections that each send one plaintext frame, then close; returns the count.

    A context of its own holds them (libzmq caps sockets per context), and closing it waits until every
    frame left (bounded by the linger of 5 s)."""
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, connections + 16)
    target = from_address(endpoint, source)
    try:
        for i in range(connections):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 5000)  # closed at once; libzmq delivers the frame in the background
            sock.connect(target)
            sock.send(payload + str(i).encode())
            sock.close()
    finally:
        context.term()
    return connections


class FakeCoordinator(threading.Thread):
    """A plain ROUTER on ``endpoint`` answering every frame with ``replies`` in turn (garbage, alerts): what an
    impostor or a broken middlebox sends before the real coordinator's welcome."""

    def __init__(self, endpoint: str, replies: Sequence[bytes] = (PLAINTEXT_ALERT, b"\x00garbage\xff")) -> None:
        super().__init__(name="fake-coordinator", daemon=True)
        self.endpoint, self.replies = loopback_only(endpoint), list(replies)
        self.answered = 0
        self._stop_event = threading.Event()
        self._bound = threading.Event()

    def run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.endpoint)
        self._bound.set()
        try:
            while not self._stop_event.is_set():
                if sock.poll(50):
                    rid, *_ = sock.recv_multipart()
                    sock.send_multipart([rid, self.replies[self.answered % len(self.replies)]])
                    self.answered += 1
        finally:
            sock.close(linger=0)

    def start(self) -> None:
        super().start()
        self._bound.wait(5)

    def stop(self) -> None:
        """Unbind, so a real coordinator can take the port."""
        self._stop_event.set()
        self.join(5)


class RawPeer:
    """A hand-driven agent: a real handshake with ``context`` (any certificate), then ``hello`` (default a
    valid one), then whatever the caller sends; ``replies`` holds what came back before the first message."""

    def __init__(
        self,
        endpoint: str,
        context: ssl.SSLContext,
        hello: bytes | None = None,
        *,
        source: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        from mor_secure import protocol

        self.out: list[bytes] = []
        self.tls = TLSSession(context, server_side=False, emit=self.out.append, max_message_bytes=32 << 20)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(from_address(endpoint, source))
        self.tls.start()
        self.replies: list[protocol.Message] = []  # the first is the Welcome (or a Refused)
        deadline = time.monotonic() + timeout_s
        while not self.replies:
            self.flush()
            if not self.sock.poll(max(1, int(1000 * (deadline - time.monotonic())))):
                raise TimeoutError("no answer from the server")
            was_done = self.tls.handshake_done
            messages = self.tls.feed(self.sock.recv())
            if self.tls.handshake_done and not was_done:
                self.send(hello or protocol.encode(protocol.Hello(agent_version="t", worker_id="raw")))
            self.replies += [protocol.decode(m) for m in messages]

    def flush(self) -> None:
        """Send the records the TLS session produced."""
        while self.out:
            self.sock.send(self.out.pop(0))

    def send(self, payload: bytes) -> None:
        """Encrypt and send one message (any bytes: the protocol is not checked on this side)."""
        self.tls.send(payload)
        self.flush()

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def hostile_coordinator(
    endpoint: str, context_factory, *, allow: Sequence[str], welcome_heartbeat_s: float | None = None
):
    """A ``TLSServer`` with a real coordinator certificate that misbehaves: it may welcome with
    ``welcome_heartbeat_s`` (e.g. 0), and ``send_raw(site, data)`` sends unchecked bytes to a welcomed site."""
    from mor_secure.transport import TLSServer
    from mor_secure.transport.server import Peer

    class HostileCoordinator(TLSServer):
        def _welcome(self, session, hello) -> None:
            if welcome_heartbeat_s is None:
                super()._welcome(session, hello)
                return
            session.peer = Peer(
                session.session_id,
                session.identity.name,
                session.fingerprint,
                session.address,
                hello.worker_id,
                hello.agent_version,
                time.time(),
            )
            session.tls.send(
                msgpack.packb(
                    {
                        "v": 1,
                        "t": "welcome",
                        "b": {
                            "coordinator": self.name,
                            "session_id": session.session_id,
                            "heartbeat_s": welcome_heartbeat_s,
                        },
                    }
                )
            )

        def send_raw(self, site: str, data: bytes) -> None:
            (session,) = [s for s in list(self._sessions.values()) if s.peer is not None and s.peer.site == site][:1]
            session.tls.send(data)

    return HostileCoordinator(loopback_only(endpoint), context_factory, name="coord", allow=allow)

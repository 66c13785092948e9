"""Coordinator side of the transport: a ZeroMQ ROUTER that is a mutual-TLS 1.3 server per peer.

One loop thread owns the socket; TLS work (handshakes, decryption) runs on a small pool with
one ordered inbox per session, and senders encrypt in their own thread, so crypto of different
peers uses several cores (OpenSSL releases the GIL). Peers are identified only by their
certificate's SAN, never by routing ids; refusals are kept with their reason for the probe.

Half-open sessions are bounded per address and in total, and a new ClientHello is judged before any
TLS work: over its address's rate it is refused cheaply; when its address (or the server) is at its
cap, the oldest session of that address (or of the busiest address) still waiting for a client
certificate makes room. A client must send its certificate within ``certificate_timeout_s``. So a
flood of ClientHellos from a few addresses only ever displaces itself, and an allow-listed site
(whose handshake completes in one round trip) still joins. Refusals are logged at a bounded rate.
"""

from __future__ import annotations

import functools
import os
import secrets
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import zmq
from cryptography import x509

from mor_secure import events, pki, protocol
from mor_secure.logs import get_logger
from mor_secure.protocol import PROTOCOL_VERSION, Heartbeat, Hello, Message, ProtocolError, Refused, Welcome
from mor_secure.transport.limits import AddressBuckets, Throttle
from mor_secure.transport.outbox import Outbox
from mor_secure.transport.tls import TLSError, TLSSession, looks_like_client_hello, looks_like_session_record
from mor_secure.transport.workers import Workers

log = get_logger("transport.server")

# Frames at least this large are handed to libzmq without a copy (pyzmq's zero-copy hand-back
# costs more than copying below about this size; measured).
ZERO_COPY_BYTES = 512 * 1024
# Smaller frames are decrypted in the loop thread: a hand-off to the pool costs more than the crypto.
INLINE_BYTES = 16 * 1024
# Requests at least this large are encrypted on the pool (several sessions at once, or when the
# caller is the loop thread); smaller ones are cheaper to encrypt than to hand over.
PARALLEL_BYTES = 256 * 1024
# Plain ints: combining or masking the enum members builds a flag object per call.
POLLIN = int(zmq.POLLIN)
NOBLOCK = int(zmq.NOBLOCK)
NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class EndKind(str, Enum):
    """Why the server refused a peer or ended a session: a code to act on, beside the reason text for people
    (logged as the ``kind`` field). Only ``DEPARTED`` is not a refusal."""

    DEPARTED = "departed"
    """The peer went away: disconnected, unreachable, or silent past the heartbeat timeout."""
    PROTOCOL = "protocol"
    """Not our protocol: plaintext, its own routing id, malformed frames or messages, flooding."""
    THROTTLED = "throttled"
    """Over a rate or half-open cap, or evicted by a newer half-open session."""
    TIMEOUT = "timeout"
    """No client certificate or no hello in time after the ClientHello."""
    TLS = "tls"
    """The TLS session failed (bad or untrusted certificate, alert, revoked at the handshake)."""
    NOT_ALLOWED = "not_allowed"
    """Authenticated but refused: wrong role, not on the allow-list, another protocol version."""
    REVOKED = "revoked"
    """The certificate was revoked while the session was live (CRL reloaded)."""
    INTERNAL = "internal"
    """A bug while serving this peer (logged with its traceback); the others are served on."""


class SessionEnded(ConnectionError):
    """A request's session ended before its reply: ``kind`` says how, the message why."""

    def __init__(self, kind: EndKind, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass(frozen=True)
class Refusal:
    """A peer the server refused or dropped: when, from where, who it claimed to be, how and why."""

    at: float
    address: str
    reason: str
    identity: str = ""
    kind: EndKind = EndKind.PROTOCOL

    @property
    def departed(self) -> bool:
        """The session ended without a refusal (not a ledger refusal)."""
        return self.kind is EndKind.DEPARTED


@dataclass(frozen=True)
class Peer:
    """A welcomed agent session; a site running several workers has several."""

    session_id: str
    site: str
    fingerprint: str
    address: str
    worker_id: str
    agent_version: str
    connected_at: float


@dataclass
class ServerOptions:
    """Timeouts and limits of the server (the coordinator config fills them)."""

    heartbeat_s: float = 5.0
    peer_timeout_s: float = 30.0
    handshake_timeout_s: float = 10.0
    certificate_timeout_s: float = 3.0
    max_pending_handshakes: int = 64
    max_pending_per_address: int = 8
    handshakes_per_s: float = 20.0
    handshake_burst: int = 40
    max_message_bytes: int = 16 * 1024 * 1024
    sndhwm: int = 64
    crypto_threads: int = 2
    crl_check_s: float = 1.0
    ban_s: float = 60.0
    max_inbox_frames: int = 256
    max_refusals: int = 1000
    log_window_s: float = 10.0
    log_per_window: int = 20

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_s",
            "peer_timeout_s",
            "handshake_timeout_s",
            "certificate_timeout_s",
            "handshakes_per_s",
            "crl_check_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerOptions.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("max_pending_handshakes", "max_pending_per_address", "handshake_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerOptions.{name} must be >= 1, got {getattr(self, name)!r}")


class _Session:
    """Server-side state of one ZeroMQ peer (one routing id)."""

    def __init__(self, rid: bytes, tls: TLSSession, address: str) -> None:
        self.rid = rid
        self.tls = tls
        self.address = address
        self.created = time.monotonic()
        self.session_id = secrets.token_hex(6)
        self.identity: pki.Identity | None = None
        self.serial: int | None = None
        self.fingerprint = ""
        self.peer: Peer | None = None
        self.last_seen = self.last_probe = time.monotonic()
        self.inbox: deque[zmq.Frame] = deque()
        self.scheduled = False
        self.sched_lock = threading.Lock()
        self.requests: set[tuple[str, str]] = set()
        self.dead = False


class TLSServer:
    """Bind a ROUTER, run mutual TLS per peer, and exchange protocol messages with welcomed agents.

    ``context_factory`` builds the server ``SSLContext`` (``pki.ssl_context("coordinator", ...)``);
    it is called again, inside the loop thread, whenever the CRL file changes or ``reload_crl()``
    is called, and live sessions whose certificate the new CRL revokes are dropped; a CRL numbered below
    ``min_crl_number`` (the highest one enforced before a restart) or below the one in force is refused,
    and ``on_crl(number)`` hears of each newer one in force (loop thread). Messages that
    are neither replies nor heartbeats (a privacy report) go to ``on_message(peer, msg)``, called
    on a TLS thread: hand long work elsewhere. ``on_refusal(refusal)`` hears of every refused or
    dropped peer as it happens (loop thread; hand the work elsewhere too), before ``refusals()`` lists it.
    """

    def __init__(
        self,
        endpoint: str,
        context_factory: Callable[[], ssl.SSLContext],
        *,
        name: str,
        allow: Iterable[str] | None = None,
        crl_path: Path | None = None,
        options: ServerOptions | None = None,
        limits: protocol.Limits | None = None,
        on_message: Callable[[Peer, Message], None] | None = None,
        on_refusal: Callable[[Refusal], None] | None = None,
        min_crl_number: int | None = None,
        on_crl: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self.options = options or ServerOptions()
        self.limits = limits or protocol.Limits(max_message_bytes=self.options.max_message_bytes)
        self.allow = set(allow) if allow is not None else None
        self._bind_endpoint = endpoint
        self._context_factory = context_factory
        self._context = context_factory()
        self._crl_path = Path(crl_path) if crl_path else None
        self._crl_mtime = self._mtime()
        self._crl_checked = 0.0
        self.crl_number = pki.crl_number(pki.load_crl(self._crl_path)) if self._crl_path else None
        """The number of the CRL in force; a CRL with a lower number is refused (no rollback)."""
        if min_crl_number is not None and (self.crl_number is None or self.crl_number < min_crl_number):
            raise pki.CRLError(
                f"CRL {self._crl_path} has number {self.crl_number}, below {min_crl_number}, which "
                "this coordinator enforced before (its ledger records it): an older CRL would "
                "undo revocations; copy the CA's current crl.pem (`mor certs crl` on the CA)"
            )
        self._on_crl = on_crl
        self.crl_failures = 0
        """Failed CRL reloads (each is retried at the next check until one succeeds)."""
        self._crl_error = ""
        self._on_message = on_message
        self._on_refusal = on_refusal
        # its own context: stop() terminates it, which returns only once the listening port is released
        self._zmq: zmq.Context = zmq.Context()
        self._outbox = Outbox()
        self._sessions: dict[bytes, _Session] = {}
        self._by_id: dict[str, _Session] = {}
        self._banned: OrderedDict[bytes, float] = OrderedDict()
        self._pending: dict[tuple[str, str], Future] = {}
        self._refusals: deque[Refusal] = deque(maxlen=self.options.max_refusals)
        self._rates = AddressBuckets(self.options.handshakes_per_s, self.options.handshake_burst)
        self._log_gate = Throttle(self.options.log_window_s, self.options.log_per_window, per_key=5)
        self.refused_early = 0
        """Peers refused before any TLS work (plaintext, rate, caps): counted; logged at a bounded rate."""
        self.evicted = 0
        """Half-open sessions dropped to make room for a newer ClientHello."""
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._pool = Workers(self.options.crypto_threads, "mor-tls") if self.options.crypto_threads > 0 else None
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self.endpoint = ""
        self.stale_records = 0
        """Peers whose first frame was a record of a TLS session this server never made: an agent's socket
        that ZeroMQ reconnected to a restarted coordinator (it redials after its idle timeout). Counted and
        ignored, not refused: they are no attack and would fill the ledger with refusals at every restart."""

    # ----- public API (any thread) -----

    def start(self) -> str:
        """Bind and start the loop thread; returns the bound endpoint (port resolved)."""
        self._thread = threading.Thread(target=self._run, name="mor-router", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error
        return self.endpoint

    def stop(self) -> None:
        """Stop the loop, fail pending requests and close the socket."""
        self._stopping.set()
        self._outbox.put(lambda: None)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown()
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(SessionEnded(EndKind.DEPARTED, "the server stopped"))
        self._outbox.close()
        if not self._zmq.closed and (self._thread is None or not self._thread.is_alive()):  # socket closed
            self._zmq.term()  # the listener is gone when this returns: the address can be bound again at once

    def __enter__(self) -> TLSServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def peers(self) -> list[Peer]:
        """Every welcomed agent session, oldest first."""
        return sorted(
            (s.peer for s in list(self._sessions.values()) if s.peer is not None and not s.dead),
            key=lambda p: p.connected_at,
        )

    def sites(self) -> set[str]:
        """Sites with at least one welcomed session."""
        return {p.site for p in self.peers()}

    def refusals(self) -> list[Refusal]:
        """Peers refused or dropped, oldest first (bounded)."""
        return list(self._refusals)

    def wait_for_sites(self, sites: Iterable[str], timeout: float) -> bool:
        """Block until every site in ``sites`` has a welcomed session, or ``timeout`` passes."""
        wanted = set(sites)
        deadline = time.monotonic() + timeout
        with self._changed:
            while not wanted <= self.sites():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def send(self, session_id: str, msg: Message) -> None:
        """Encrypt ``msg`` for one session and queue it; ``ConnectionError`` if the session is gone."""
        session = self._by_id.get(session_id)
        if session is None or session.dead or session.peer is None:
            raise ConnectionError(f"session {session_id} is not connected")
        self._send(session, msg)

    def request(self, session_id: str, msg: Message) -> Future:
        """Send a message carrying ``request_id``; the future gets the peer's reply (or an error)."""
        return self.request_many([session_id], msg)[session_id]

    def request_many(self, session_ids: Iterable[str], msg: Message) -> dict[str, Future]:
        """Send one request to several sessions (encoded once, encrypted per session, large ones in
        parallel); each future resolves to that session's reply or fails with ``ConnectionError``."""
        request_id = protocol.request_id_of(msg)
        if not request_id:
            raise ValueError(f"{msg.TYPE} carries no request_id")
        data = protocol.encode_parts(msg, self.limits)
        size = sum(len(part) for part in data)
        futures: dict[str, Future] = {}
        targets = []
        for session_id in session_ids:
            future: Future = Future()
            futures[session_id] = future
            session = self._by_id.get(session_id)
            if session is None or session.dead or session.peer is None:
                future.set_exception(SessionEnded(EndKind.DEPARTED, "not connected"))
                continue
            key = (session_id, request_id)
            self._pending[key] = future
            session.requests.add(key)
            future.add_done_callback(functools.partial(self._forget_done, session, key))
            if session.dead:  # dropped while we registered: its drop may have missed this request
                future.set_exception(SessionEnded(EndKind.DEPARTED, "not connected"))
                continue
            targets.append((session, future))
        # Large messages are encrypted on the pool when there are several, or when called from the
        # loop thread (a reply callback), which must stay free to move frames.
        parallel = (
            self._pool is not None
            and size >= PARALLEL_BYTES
            and (len(targets) > 1 or threading.current_thread() is self._thread)
        )
        for session, future in targets:
            if parallel and self._pool is not None:
                self._pool.submit(self._send_for, session, data, future)
            else:
                self._send_for(session, data, future)
        return futures

    def _send_for(self, session: _Session, data: list, future: Future) -> None:
        try:
            session.tls.send(data)
        except TLSError as exc:
            if not future.done():
                future.set_exception(SessionEnded(EndKind.TLS, exc.reason))

    def reload_crl(self, timeout: float = 10.0) -> int:
        """Rebuild the SSL context from the current CRL inside the loop; returns live sessions dropped."""
        done: Future = Future()

        def reload() -> None:
            try:
                done.set_result(self._reload_crl())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)

        self._outbox.put(reload)
        return done.result(timeout)

    # ----- loop thread -----

    def _run(self) -> None:
        sock = None
        try:
            sock = self._zmq.socket(zmq.ROUTER)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, self._frame_limit())
            sock.setsockopt(zmq.SNDHWM, self.options.sndhwm)
            sock.setsockopt(zmq.RCVHWM, 1000)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(self._bind_endpoint)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException as exc:
            if sock is not None:
                sock.close(linger=0)
            self._start_error = exc
            self._ready.set()
            return
        log.info("coordinator listening", extra={"endpoint": self.endpoint, "coordinator": self.name})
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._outbox.fileno(), zmq.POLLIN)
        self._outbox.consumer = threading.get_ident()
        next_tick = 0.0
        try:
            wake = self._outbox.fileno()
            while not self._stopping.is_set():
                events = dict(poller.poll(0 if len(self._outbox) else 100))
                ready = sock in events  # zmq_poll just checked: the first read needs no EVENTS query
                for _ in range(512):
                    if not ready and not sock.getsockopt(zmq.EVENTS) & POLLIN:
                        break
                    ready = False
                    self._on_frames(*_recv_message(sock))
                for item in self._outbox.drain(wake in events):
                    if callable(item):
                        item()
                    else:
                        self._send_frames(sock, *item)
                now = time.monotonic()
                if now >= next_tick:
                    self._housekeeping(now)
                    next_tick = now + 0.2
        finally:
            sock.close(linger=0)

    def _frame_limit(self) -> int:
        return self.options.max_message_bytes + self.options.max_message_bytes // 32 + 64 * 1024

    def _send_frames(self, sock: zmq.Socket, rid: bytes, data: bytes) -> None:
        session = self._sessions.get(rid)
        try:  # two sends, not send_multipart: it checks and wraps each part in Python (about 1.5 us)
            sock.send(rid, NOBLOCK_MORE)
            sock.send(data, NOBLOCK, copy=len(data) < ZERO_COPY_BYTES)
        except zmq.ZMQError as exc:
            if session is not None:
                cause = "send queue full (peer not reading)" if exc.errno == zmq.EAGAIN else "peer unreachable"
                self._drop(session, cause, EndKind.DEPARTED)

    def _on_frames(self, rid: bytes, frames: list[zmq.Frame]) -> None:
        session = self._sessions.get(rid)
        if session is None:
            self._new_session(rid, frames)
            return
        if len(frames) != 1:
            self._drop(session, f"malformed message ({len(frames) + 1} frames)", EndKind.PROTOCOL)
            return
        self._deliver(session, frames[0])

    def _new_session(self, rid: bytes, frames: list[zmq.Frame]) -> None:
        if rid in self._banned:
            return
        address = _peer_address(frames[-1])
        if rid[:1] != b"\x00":
            self._refuse_early(rid, address, "peer chose its own routing id (not allowed)", EndKind.PROTOCOL)
        elif len(frames) == 1 and looks_like_session_record(frames[0].buffer):
            self._ban(rid)
            self.stale_records += 1
            log.info(
                "ignored a record of an unknown TLS session (an agent of an earlier coordinator; it redials)",
                extra={"address": address, "stale_records": self.stale_records},
            )
        elif len(frames) != 1 or not looks_like_client_hello(frames[0].buffer):
            self._refuse_early(
                rid, address, "plaintext or non-TLS peer: the first message is not a TLS ClientHello", EndKind.PROTOCOL
            )
        elif not self._rates.take(address):
            self._refuse_early(
                rid,
                address,
                f"more than {self.options.handshakes_per_s:g} new TLS sessions a second from this address (rate limit)",
                EndKind.THROTTLED,
            )
        elif not self._make_room(address):
            self._refuse_early(
                rid,
                address,
                f"too many half-open sessions (cap "
                f"{self.options.max_pending_handshakes}, "
                f"{self.options.max_pending_per_address} per address)",
                EndKind.THROTTLED,
            )
        else:
            tls = TLSSession(
                self._context,
                server_side=True,
                emit=lambda data: self._outbox.put((rid, data)),
                max_message_bytes=self.options.max_message_bytes,
                handshake_timeout_s=self.options.certificate_timeout_s,
            )
            session = _Session(rid, tls, address)
            self._sessions[rid] = session
            self._by_id[session.session_id] = session
            self._deliver(session, frames[0])

    def _make_room(self, address: str) -> bool:
        """Room for one more half-open session from ``address``: when its address, or the server, is at
        its cap, drop the oldest session still without a client certificate (of that address, or of the
        address holding the most); False when every half-open session has already sent one."""
        pending = [s for s in self._sessions.values() if s.peer is None]
        mine = [s for s in pending if s.address == address]
        if len(mine) < self.options.max_pending_per_address and len(pending) < self.options.max_pending_handshakes:
            return True
        if len(mine) >= self.options.max_pending_per_address:
            pool = mine
        else:
            counts: dict[str, int] = {}
            for s in pending:
                if not s.tls.handshake_done:
                    counts[s.address] = counts.get(s.address, 0) + 1
            if not counts:
                return False
            busiest = max(counts, key=counts.__getitem__)
            pool = [s for s in pending if s.address == busiest]
        waiting = [s for s in pool if not s.tls.handshake_done]
        if not waiting:
            return False
        victim = min(waiting, key=lambda s: s.created)
        self.evicted += 1
        self._drop(
            victim,
            "half-open session evicted: a newer ClientHello needed its slot (too many from "
            f"{victim.address or 'its address'} without a certificate)",
            EndKind.THROTTLED,
        )
        return True

    def _refuse_early(self, rid: bytes, address: str, reason: str, kind: EndKind) -> None:
        self._ban(rid)
        self.refused_early += 1
        self._record(address, reason, kind)

    def _deliver(self, session: _Session, frame: zmq.Frame) -> None:
        """Process a frame in order: inline when small and nothing is queued, else on the pool."""
        with session.sched_lock:
            inline = self._pool is None or (not session.scheduled and len(frame) < INLINE_BYTES)
            overflow = not inline and len(session.inbox) >= self.options.max_inbox_frames
            if not inline and not overflow:
                session.inbox.append(frame)
                if session.scheduled:
                    return
                session.scheduled = True
        if inline:
            self._process(session, frame)
            return
        if overflow:
            self._drop(session, "flooding: too many unprocessed messages", EndKind.PROTOCOL)
            return
        assert self._pool is not None, "not inline: there is a pool"
        self._pool.submit(self._drain_inbox, session)

    def _drain_inbox(self, session: _Session) -> None:
        while True:
            with session.sched_lock:
                if not session.inbox:
                    session.scheduled = False
                    return
                frames = list(session.inbox)
                session.inbox.clear()
            for frame in frames:
                self._process(session, frame)

    def _process(self, session: _Session, frame: zmq.Frame) -> None:
        """Feed one frame to the session's TLS (pool thread or loop) and act on what it yields."""
        if session.dead:
            return
        try:
            was_done = session.tls.handshake_done
            messages = session.tls.feed(frame.buffer)
            if not was_done and session.tls.handshake_done and not self._accept(session):
                return
            for raw in messages:
                self._on_message_from(session, protocol.decode(raw, self.limits))
        except TLSError as exc:
            self._call_soon(self._drop, session, exc.reason, EndKind.DEPARTED if exc.closed else EndKind.TLS)
        except ProtocolError as exc:
            if session.peer is None and session.identity is not None:  # authenticated: tell it why
                self._refuse(session, f"protocol violation: {exc}", EndKind.PROTOCOL)
            else:
                self._call_soon(self._drop, session, f"protocol violation: {exc}", EndKind.PROTOCOL)
        except Exception as exc:  # never let one peer kill the pool or the loop
            log.exception("unexpected error while serving a peer", extra={"session": session.session_id})
            self._call_soon(self._drop, session, f"internal error: {type(exc).__name__}", EndKind.INTERNAL)

    def _accept(self, session: _Session) -> bool:
        """After the handshake: role, allow-list; refuse with a Refused message when they fail."""
        ssl_object = session.tls.ssl_object
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None, "the server's context requires a client certificate"
        cert = x509.load_der_x509_certificate(der)
        session.serial = cert.serial_number
        session.fingerprint = pki.fingerprint(cert)
        try:
            session.identity = pki.identity_of(cert)
            identity = pki.peer_identity(ssl_object, "client")
        except pki.PKIError as exc:
            self._refuse(session, f"wrong role: {exc}", EndKind.NOT_ALLOWED)
            return False
        if self.allow is not None and identity.name not in self.allow:
            self._refuse(
                session, f"site {identity.name!r} is not on the allow-list ([clients] allow)", EndKind.NOT_ALLOWED
            )
            return False
        return True

    def _on_message_from(self, session: _Session, msg: Message) -> None:
        session.last_seen = time.monotonic()
        if session.peer is None:
            if not isinstance(msg, Hello):
                raise ProtocolError(f"expected hello after the handshake, got {msg.TYPE}")
            self._welcome(session, msg)
            return
        if isinstance(msg, Heartbeat):
            self._send(session, Heartbeat(sent_at=time.time()))
            return
        request_id = protocol.request_id_of(msg)
        if request_id is not None:
            future = self._pending.get((session.session_id, request_id))
            if future is not None and not future.done():
                future.set_result(msg)
            else:
                log.debug("unexpected reply", extra={"session": session.session_id, "type": msg.TYPE})
            return
        if self._on_message is not None:
            self._on_message(session.peer, msg)

    def _welcome(self, session: _Session, hello: Hello) -> None:
        assert session.identity is not None
        if hello.protocol != PROTOCOL_VERSION:
            self._refuse(
                session,
                f"the agent speaks protocol version {hello.protocol} and this coordinator "
                f"{PROTOCOL_VERSION}: install the same mor-secure version at the site and here",
                EndKind.NOT_ALLOWED,
            )
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
        self._send(
            session, Welcome(coordinator=self.name, session_id=session.session_id, heartbeat_s=self.options.heartbeat_s)
        )
        log.info(
            "agent joined",
            extra={
                "site": session.peer.site,
                "session": session.session_id,
                "worker": hello.worker_id,
                "address": session.address,
            },
        )
        with self._changed:
            self._changed.notify_all()

    def _refuse(self, session: _Session, reason: str, kind: EndKind) -> None:
        """Tell the peer why, then ignore it until the loop drops the session."""
        try:
            self._send(session, Refused(reason=reason))
        except (TLSError, ProtocolError):
            pass
        session.dead = True
        self._call_soon(self._drop, session, reason, kind)

    def _send(self, session: _Session, msg: Message) -> None:
        session.tls.send(protocol.encode_parts(msg, self.limits))

    def _call_soon(self, fn: Callable, *args: object) -> None:
        self._outbox.put(lambda: fn(*args))

    def _drop(self, session: _Session, reason: str, kind: EndKind) -> None:
        """Forget a session (loop thread): fail its requests, ban its routing id, record how and why."""
        if self._sessions.get(session.rid) is not session:
            return
        session.tls.close()
        del self._sessions[session.rid]
        self._by_id.pop(session.session_id, None)
        self._ban(session.rid)
        for key in list(session.requests):
            future = self._pending.get(key)
            if future is not None and not future.done():
                future.set_exception(SessionEnded(kind, reason))
        identity = session.identity.uri if session.identity else ""
        if session.peer is not None:
            log.info(
                events.AGENT_LEFT,
                extra={"site": session.peer.site, "session": session.session_id, "reason": reason, "kind": kind.value},
            )
        self._record(session.address, reason, kind, identity)
        with self._changed:
            self._changed.notify_all()

    def _forget_done(self, session: _Session, key: tuple[str, str], _: Future) -> None:
        self._forget(session, key)

    def _forget(self, session: _Session, key: tuple[str, str]) -> None:
        self._pending.pop(key, None)
        session.requests.discard(key)

    def _record(self, address: str, reason: str, kind: EndKind, identity: str = "") -> None:
        refusal = Refusal(time.time(), address, reason, identity, kind)
        if self._on_refusal is not None:
            self._on_refusal(refusal)
        self._refusals.append(refusal)
        if self._log_gate.admit(identity or address, reason):
            log.warning(
                events.PEER_REFUSED,
                extra={"address": address, "identity": identity, "reason": reason, "kind": kind.value},
            )

    def _ban(self, rid: bytes) -> None:
        self._banned[rid] = time.monotonic() + self.options.ban_s
        while len(self._banned) > 4096:
            self._banned.popitem(last=False)

    def _housekeeping(self, now: float) -> None:
        for session in list(self._sessions.values()):
            if session.peer is None and session.tls.handshake_expired(now):
                self._drop(
                    session,
                    f"no client certificate within {self.options.certificate_timeout_s:g}s (half-open TLS session)",
                    EndKind.TIMEOUT,
                )
            elif session.peer is None and now - session.created > self.options.handshake_timeout_s:
                self._drop(
                    session,
                    f"no hello within {self.options.handshake_timeout_s:g}s of the ClientHello",
                    EndKind.TIMEOUT,
                )
            elif session.peer is not None and now - session.last_seen > self.options.peer_timeout_s:
                self._drop(session, f"silent for {self.options.peer_timeout_s:g}s (no heartbeat)", EndKind.DEPARTED)
            elif session.peer is not None and now - session.last_probe > self.options.heartbeat_s:
                # A send to a vanished peer fails at once (ROUTER_MANDATORY): the drop comes early.
                session.last_probe = now
                try:
                    self._send(session, Heartbeat(sent_at=time.time()))
                except TLSError as exc:
                    self._drop(session, exc.reason, EndKind.DEPARTED)
        while self._banned and next(iter(self._banned.values())) < now:
            self._banned.popitem(last=False)
        summary = self._log_gate.flush()
        if summary is not None:
            log.warning(
                "more peers refused or dropped (not logged one by one)",
                extra={"count": summary.suppressed, "by_peer": summary.by_key, "by_reason": summary.by_reason},
            )
        if self._crl_path is not None and now - self._crl_checked >= self.options.crl_check_s:
            self._crl_checked = now
            if self._mtime() != self._crl_mtime:
                try:
                    self._reload_crl()
                except pki.PKIError as exc:  # kept stale: retried at the next check until one loads
                    self.crl_failures += 1
                    if str(exc) != self._crl_error:
                        log.error("CRL reload failed; keeping the previous one and retrying", extra={"error": str(exc)})
                    self._crl_error = str(exc)

    def _mtime(self) -> int | None:
        try:
            return os.stat(self._crl_path).st_mtime_ns if self._crl_path else None
        except OSError:
            return None

    def _reload_crl(self) -> int:
        """Swap in a context built from the current CRL (loop thread) and drop revoked sessions; a CRL
        whose number is below the one in force is refused (``CRLError``), so revocations never roll back."""
        mtime = self._mtime()
        crl = pki.load_crl(self._crl_path) if self._crl_path is not None else None
        number = pki.crl_number(crl) if crl is not None else None
        if self.crl_number is not None and (number is None or number < self.crl_number):
            raise pki.CRLError(
                f"CRL {self._crl_path} has number {number}, below the {self.crl_number} in force: "
                "an older CRL would undo revocations; copy the CA's current crl.pem "
                "(`mor certs crl` on the CA)"
            )
        self._context = self._context_factory()
        raised = number is not None and number != self.crl_number
        self._crl_mtime, self._crl_error, self.crl_number = mtime, "", number
        if raised and number is not None and self._on_crl is not None:
            self._on_crl(number)
        if crl is None:
            return 0
        revoked = {entry.serial_number for entry in crl}
        dropped = 0
        for session in list(self._sessions.values()):
            if session.serial in revoked:
                self._refuse(session, "certificate revoked (CRL reloaded)", EndKind.REVOKED)
                self._drop(session, "certificate revoked (CRL reloaded)", EndKind.REVOKED)
                dropped += 1
        log.info(events.CRL_RELOADED, extra={"number": number, "revoked": len(revoked), "dropped": dropped})
        return dropped


def _recv_message(sock: zmq.Socket) -> tuple[bytes, list[zmq.Frame]]:
    """The waiting message's routing id (as bytes) and its frames (at least one), read without
    ``recv_multipart``, which wraps the routing id in a frame object too and asks for RCVMORE per frame."""
    rid = sock.recv(NOBLOCK)
    frames = [sock.recv(NOBLOCK, copy=False)]
    while frames[-1].more:
        frames.append(sock.recv(NOBLOCK, copy=False))
    return rid, frames


def _peer_address(frame: zmq.Frame) -> str:
    try:
        return str(frame.get("Peer-Address") or "")
    except (zmq.ZMQError, AttributeError, TypeError):
        return ""

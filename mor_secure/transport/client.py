"""Agent side of the transport: a ZeroMQ DEALER that dials out and is a mutual-TLS 1.3 client.

The agent counts as connected only after the coordinator's explicit ``Welcome`` (TLS 1.3 lets a
client finish its handshake before the server judged its certificate). Requests are served by a
handler registry, and the network thread runs each handler itself: handing every request to a
handler thread woke one more thread per request, which cost more than the crypto. A standby thread
covers for it (``Standby``): when a handler runs longer than ``takeover_s`` the standby takes over
reading the socket and sending heartbeats until the handler returns, handing requests that arrive
meanwhile to a small pool, so a long batch never silences the agent for more than the takeover delay.
Replies are sent by whichever thread made them, under the socket lock. When the coordinator goes
silent the agent reconnects with a fresh socket
and a fresh handshake, backing off exponentially with jitter. Only a refusal the verified coordinator
sent inside its TLS session (a ``Refused`` message, or an alert after its certificate and name were
checked) is final and raised to the caller; garbage, plaintext alerts, an unverifiable or unexpected
server and timeouts are retried, so one hostile reply cannot stop an agent for good.
"""

from __future__ import annotations

import random
import select
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import zmq

from mor_secure import pki, protocol
from mor_secure.errors import MorError
from mor_secure.logs import get_logger
from mor_secure.protocol import Error, Heartbeat, Hello, Message, ProtocolError, Refused, Welcome
from mor_secure.transport.outbox import Outbox
from mor_secure.transport.server import POLLIN, ZERO_COPY_BYTES
from mor_secure.transport.standby import Standby
from mor_secure.transport.tls import TLSError, TLSSession
from mor_secure.transport.workers import Workers

log = get_logger("transport.client")

Handler = Callable[[Message], Message | None]


class AgentRefused(MorError):
    """The verified coordinator refused this agent; retrying will not help."""


@dataclass
class ClientOptions:
    """Timeouts, back-off and limits of the agent's connection (the client config fills them)."""

    heartbeat_s: float = 5.0
    idle_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_message_bytes: int = 16 * 1024 * 1024
    handler_threads: int = 2
    """Handlers that may run at once: one on the network thread, the others (at least one) on a pool
    that takes the requests arriving while the network thread's handler overruns."""
    takeover_s: float = 0.002
    """How long a handler may hold the network thread before the standby reads the socket instead
    (longer delays incoming frames by up to this much; shorter wakes the standby for more requests)."""


class _Lost(Exception):
    """The connection went away (silence, unreachable); the run loop reconnects."""


@dataclass
class _Link:
    """The network duties' state for one connection, shared by the network thread and the standby
    (one at a time: whoever holds the standby's duty)."""

    sock: zmq.Socket
    tls: TLSSession
    poller: select.poll
    wake_fd: int
    last_heard: float
    next_beat: float
    woken: bool = False


class TLSClient:
    """Dial a coordinator, prove who we are, and answer its requests with ``handlers``.

    ``handlers`` maps a request message type to a callable returning the reply (or None); it
    runs on the network thread (or, while another handler overruns, on a pool thread), so it may
    block. An exception in a handler becomes an ``Error`` reply.
    """

    def __init__(
        self,
        endpoint: str,
        context_factory: Callable[[], ssl.SSLContext],
        *,
        coordinators: Iterable[str],
        worker_id: str,
        agent_version: str,
        handlers: dict[type[Message], Handler] | None = None,
        options: ClientOptions | None = None,
        limits: protocol.Limits | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.coordinators = set(coordinators)
        self.worker_id = worker_id
        self.agent_version = agent_version
        self.handlers: dict[type[Message], Handler] = dict(handlers or {})
        self.options = options or ClientOptions()
        self.limits = limits or protocol.Limits(max_message_bytes=self.options.max_message_bytes)
        self._context_factory = context_factory
        self._context: ssl.SSLContext | None = context_factory()  # PKI problems surface here, not on dial
        self._zmq: zmq.Context = zmq.Context.instance()
        self._outbox = Outbox()  # wake-ups of the network thread; a string is a failed send
        self._sock_lock = threading.Lock()
        self._tls: TLSSession | None = None
        self._heartbeat_s = self.options.heartbeat_s
        self._stopping = threading.Event()
        self.connected = threading.Event()
        self.session_id = ""
        self.connections = 0
        self.last_error = ""
        """Why the last connection attempt failed or ended (for `mor client doctor` and status)."""
        self._verified = False  # this session's server proved to be one of ``coordinators``
        self.on_welcome: Callable[[], Iterable[Message]] | None = None
        """Called in the network thread after each Welcome; the messages it returns are sent at once
        (the agent's signed privacy report)."""
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._link: _Link | None = None
        self._requests: deque[tuple[Message, TLSSession]] = deque()  # read, not yet handled
        self._pool: Workers | None = None
        self._standby: Standby | None = None

    def register(self, kind: type[Message], handler: Handler) -> None:
        """Serve requests of type ``kind`` with ``handler`` (before ``run``)."""
        self.handlers[kind] = handler

    def send(self, msg: Message) -> None:
        """Send an unsolicited message (e.g. a privacy report) on the current session, any thread;
        ``ConnectionError`` when not welcomed."""
        tls = self._tls
        if tls is None or not self.connected.is_set():
            raise ConnectionError(f"not connected to the coordinator at {self.endpoint}")
        try:
            self._send(tls, msg)
        except TLSError as exc:
            raise ConnectionError(f"connection lost: {exc.reason}") from None

    def run(self) -> None:
        """Connect, serve and reconnect until ``stop()``; raises ``AgentRefused`` when refused."""
        attempt = 0
        self._pool = Workers(max(1, self.options.handler_threads - 1), "mor-handler")
        self._standby = Standby(
            self._standby_turn, lambda: self._outbox.put(None), delay_s=self.options.takeover_s, name="mor-standby"
        )
        try:
            while not self._stopping.is_set():
                try:
                    self._serve_once()
                except _Lost as exc:
                    self.last_error = str(exc)
                    log.warning("connection lost or not established; retrying", extra={"reason": str(exc)})
                    self._context = None
                self.connected.clear()
                if self.session_id:  # we were welcomed: start the back-off from scratch
                    attempt, self.session_id = 0, ""
                delay = min(self.options.backoff_max_s, self.options.backoff_initial_s * 2**attempt)
                attempt += 1
                self._stopping.wait(delay * random.uniform(0.5, 1.5))
        finally:
            self._standby.close()
            self._pool.shutdown()
            self._outbox.close()

    def start(self) -> None:
        """Run in a background thread (tests, benchmarks); a refusal is kept in ``error``."""

        def target() -> None:
            try:
                self.run()
            except BaseException as exc:
                self.error = exc
                self.connected.set()  # wake whoever waits for the outcome

        self._thread = threading.Thread(target=target, name="mor-dealer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the run loop to finish and wait for it."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ----- network thread -----

    def _serve_once(self) -> None:
        sock = self._zmq.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(
            zmq.MAXMSGSIZE, self.options.max_message_bytes + self.options.max_message_bytes // 32 + 64 * 1024
        )
        sock.setsockopt(zmq.SNDHWM, 64)
        try:
            sock.connect(self.endpoint)

            def emit(data: bytes) -> None:
                """Send records at once from the thread that made them (under the TLS lock, so in
                sequence order); the socket lock keeps the socket in one thread at a time."""
                with self._sock_lock:
                    if sock.closed:
                        return  # records of an earlier session are dropped
                    try:
                        sock.send(data, zmq.NOBLOCK, copy=len(data) < ZERO_COPY_BYTES)
                    except zmq.Again:
                        self._outbox.put("send queue full (coordinator not reading)")
                        return
                    # The send may have consumed the wake-up for waiting input: tell the thread on duty,
                    # unless that is us (it checks the socket before it sleeps).
                    if threading.get_ident() != self._outbox.consumer and sock.getsockopt(zmq.EVENTS) & POLLIN:
                        self._outbox.put(None)

            if self._context is None:  # rebuilt after a lost connection: picks up a renewed cert or CRL
                self._context = self._context_factory()
            tls = TLSSession(
                self._context,
                server_side=False,
                emit=emit,
                max_message_bytes=self.options.max_message_bytes,
                handshake_timeout_s=self.options.connect_timeout_s,
            )
            self.connections += 1
            self._tls = tls
            self._loop(sock, tls)
        finally:
            with self._sock_lock:
                sock.close(linger=0)

    def _recv(self, sock: zmq.Socket) -> zmq.Frame | None:
        """One waiting frame, or None (under the socket lock, which senders share)."""
        with self._sock_lock:
            return sock.recv(zmq.NOBLOCK, copy=False) if int(sock.getsockopt(zmq.EVENTS)) & POLLIN else None

    def _loop(self, sock: zmq.Socket, tls: TLSSession) -> None:
        # Threads sleep on the socket's notification descriptor, not in zmq_poll, so other threads
        # may send meanwhile; ZMQ_FD is edge-triggered: the thread on duty sleeps only after a check of
        # the socket's EVENTS that follows its own sends, and other senders check after each send.
        poller = select.poll()
        poller.register(int(sock.getsockopt(zmq.FD)), select.POLLIN)
        poller.register(self._outbox.fileno(), select.POLLIN)
        self._outbox.drain(woken=False)  # failures noted for an earlier session
        self._requests.clear()
        self._verified = False
        now = time.monotonic()
        self._link = _Link(sock, tls, poller, self._outbox.fileno(), last_heard=now, next_beat=now)
        tls.start()
        standby = self._standby
        assert standby is not None, "start() makes the standby before the loop runs"
        while not self._stopping.is_set():
            self._turn()
            while self._requests:
                msg, session = self._requests.popleft()
                with standby.covering():
                    self._handle(msg, session)
        tls.close()

    def _turn(self) -> None:
        """One round of the network duties (the network thread, or the standby while a handler
        overruns): act on failed sends, read and dispatch waiting frames, check the deadlines, send a
        due heartbeat; then, unless requests wait, sleep until the socket or the outbox wakes us."""
        link = self._link
        assert link is not None, "the loop sets the link before any turn"
        self._outbox.consumer = threading.get_ident()  # whose puts need no wake-up: the thread on duty
        beat = False
        for reason in self._outbox.drain(link.woken):
            if reason is not None:
                raise _Lost(reason)
        # Read until a request waits: frames behind it are read after it (or by the standby, should it
        # overrun), which saves a socket check per request.
        while not self._requests and (frame := self._recv(link.sock)) is not None:
            link.last_heard = time.monotonic()
            self._on_frame(frame, link.tls)
        now = time.monotonic()
        if not self.connected.is_set():
            if now > link.tls.handshake_deadline:
                raise _Lost(
                    f"no welcome from {self.endpoint} within {self.options.connect_timeout_s:g}s (unreachable?)"
                )
        elif now - link.last_heard > self.options.idle_timeout_s:
            raise _Lost(f"coordinator silent for {self.options.idle_timeout_s:g}s")
        elif now >= link.next_beat:
            self._send(link.tls, Heartbeat(sent_at=time.time()))
            link.next_beat = now + self._heartbeat_s
            beat = True
        if self._requests:
            link.woken = False
            return
        busy = len(self._outbox)
        if beat:  # our own send after the last read may have consumed the socket's wake-up
            with self._sock_lock:
                busy = busy or int(link.sock.getsockopt(zmq.EVENTS)) & POLLIN
        link.woken = any(fd == link.wake_fd for fd, _ in link.poller.poll(0 if busy else 100))

    def _standby_turn(self) -> None:
        """The standby's round of the network duties: requests go to the pool (the network thread is
        busy with a handler)."""
        self._turn()
        pool = self._pool
        assert pool is not None, "start() makes the pool before the standby can run"
        while self._requests:
            pool.submit(self._handle, *self._requests.popleft())

    def _on_frame(self, frame: zmq.Frame, tls: TLSSession) -> None:
        was_done = tls.handshake_done
        try:
            messages = tls.feed(frame.buffer)
        except TLSError as exc:
            if self.connected.is_set():
                raise _Lost(f"TLS session failed: {exc.reason}") from None
            if self._verified and exc.peer_alert:  # sent inside the session of the coordinator we verified
                raise AgentRefused(
                    f"the coordinator at {self.endpoint} refused this agent's certificate: {exc.reason}"
                ) from None
            raise _Lost(f"TLS handshake with {self.endpoint} failed: {exc.reason}") from None
        if not was_done and tls.handshake_done:
            self._check_coordinator(tls)
            self._verified = True
            self._send(tls, Hello(agent_version=self.agent_version, worker_id=self.worker_id))
        for raw in messages:
            try:
                msg = protocol.decode(raw, self.limits)
            except ProtocolError as exc:
                request_id = exc.request_id  # from the same decoding: a hostile message is decoded once
                if request_id is None or not self.connected.is_set():
                    raise _Lost(f"protocol violation by the coordinator: {exc}") from None
                log.warning("malformed request refused", extra={"request": request_id})
                self._send(tls, Error(request_id, "malformed", str(exc)[:500]))
                continue
            self._on_message(msg, tls)

    def _check_coordinator(self, tls: TLSSession) -> None:
        """The server is a coordinator we answer (else ``_Lost``: an impostor or a misdirected dial is retried)."""
        try:
            identity = pki.peer_identity(tls.ssl_object, "coordinator")
        except pki.PKIError as exc:
            raise _Lost(f"cannot verify the coordinator: {exc}") from None
        if identity.name not in self.coordinators:
            raise _Lost(
                f"the server at {self.endpoint} is coordinator {identity.name!r}, not "
                f"{' or '.join(sorted(map(repr, self.coordinators)))}: check [coordinator] "
                "name and endpoint ([serve] allow_coordinators)"
            )

    def _on_message(self, msg: Message, tls: TLSSession) -> None:
        if isinstance(msg, Welcome):
            self.session_id, self.last_error = msg.session_id, ""
            self._heartbeat_s = min(self.options.heartbeat_s, msg.heartbeat_s)
            log.info("welcomed by the coordinator", extra={"coordinator": msg.coordinator, "session": msg.session_id})
            self.connected.set()
            for extra in self.on_welcome() if self.on_welcome is not None else ():
                self._send(tls, extra)
        elif isinstance(msg, Refused):
            raise AgentRefused(f"the coordinator refused this agent: {msg.reason}")
        elif isinstance(msg, Heartbeat):
            pass
        elif self.connected.is_set():
            self._requests.append((msg, tls))
        else:
            raise _Lost(f"coordinator sent {msg.TYPE} before welcoming us")

    def _handle(self, msg: Message, tls: TLSSession) -> None:
        """Run the handler for ``msg`` (network or pool thread) and send its reply on the session it came from."""
        request_id = protocol.request_id_of(msg) or ""
        handler = self.handlers.get(type(msg))
        try:
            if handler is None:
                reply: Message | None = Error(request_id, "unsupported", f"this agent does not serve {msg.TYPE}")
            else:
                reply = handler(msg)
        except Exception as exc:
            log.warning("handler failed", extra={"type": msg.TYPE, "error": type(exc).__name__})
            reply = Error(request_id, "handler_error", f"{type(exc).__name__}: {str(exc)[:200]}")
        if reply is None:
            return
        try:
            try:
                data = protocol.encode_parts(reply, self.limits)
            except ProtocolError as exc:
                data = protocol.encode_parts(Error(request_id, "bad_reply", str(exc)[:200]), self.limits)
            tls.send(data)
        except TLSError:
            log.info("reply dropped: the session it belongs to is gone", extra={"type": reply.TYPE})

    def _send(self, tls: TLSSession, msg: Message) -> None:
        tls.send(protocol.encode_parts(msg, self.limits))

"""One TLS 1.3 connection as a sans-IO object: records in, records out, whole messages in between.

``TLSSession`` wraps an ``ssl.SSLObject`` over two ``ssl.MemoryBIO``s; the owner carries the
records in ZeroMQ frames. Application messages are framed inside TLS with a 4-byte length, so
message boundaries never depend on how records were split into frames. Every public method
holds the session's lock, because OpenSSL objects must not be used from two threads at once,
and hands produced records to ``emit`` while still holding it, so records leave in the order
the TLS sequence numbers require. OpenSSL releases the GIL while it encrypts and decrypts, so
sessions of different peers run their crypto in parallel on a thread pool.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable

HEADER_BYTES = 4
# Ciphertext overhead bound per 16 KiB record (5-byte header, type byte, 16-byte tag, padding).
_RECORD_OVERHEAD = 256
_RECORD_PLAINTEXT = 16 * 1024
# A first part smaller than this is copied behind the length header (one record instead of two).
_SPLIT_WRITE = 16 * 1024

# Reasons OpenSSL gives, mapped to what an operator should read (cause and fix).
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate: configure [tls] cert and key",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the coordinator requires a client certificate: configure [tls] cert and key",
    "UNSUPPORTED_PROTOCOL": "TLS 1.2 or older: only TLS 1.3 is accepted; upgrade the peer",
    "TLSV1_ALERT_PROTOCOL_VERSION": "TLS version mismatch: only TLS 1.3 is accepted",
    "NO_PROTOCOLS_AVAILABLE": "TLS version mismatch: only TLS 1.3 is accepted",
    "WRONG_VERSION_NUMBER": "not a TLS 1.3 peer (wrong record version)",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate (other CA, or its CRL is missing "
    "or stale: `mor certs crl` re-issues it)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the peer says our certificate is revoked: ask the CA for a new one",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says our certificate expired (or is not yet valid): renew it",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the peer rejected our certificate's role (extended key usage)",
}
_ALERT_PREFIXES = ("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")
_VERIFY_REASONS = {
    "certificate has expired": "certificate expired: renew it (`mor certs issue`)",
    "certificate is not yet valid": "certificate not yet valid: check the clocks, or wait",
    "certificate revoked": "certificate revoked",
    "unable to get local issuer certificate": "certificate from another CA",
    "self-signed certificate": "self-signed certificate (not from the project CA)",
    "self-signed certificate in certificate chain": "certificate from another CA (its chain ends elsewhere)",
    "self signed certificate": "self-signed certificate (not from the project CA)",
    "unable to get certificate CRL": "no CRL for the CA: run `mor certs crl` and reload",
    "CRL has expired": "the CRL is stale: run `mor certs crl` and reload",
    "unsupported certificate purpose": "wrong role: the certificate's extended key usage does not allow it",
    "unsuitable certificate purpose": "wrong role: the certificate's extended key usage does not allow it",
}


class TLSError(Exception):
    """A TLS session failed; ``reason`` says why in operator terms (any alert for the peer was already
    emitted); ``peer_alert`` is True when the failure is an alert the peer sent us, ``closed`` when the peer
    ended the session cleanly (close_notify: a departure, not a failure of the peer)."""

    def __init__(self, reason: str, *, peer_alert: bool = False, closed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.peer_alert, self.closed = peer_alert, closed


def _ssl_failure(exc: ssl.SSLError) -> TLSError:
    """The ``TLSError`` for an OpenSSL error, noting whether it is an alert received from the peer."""
    reason = "" if isinstance(exc, ssl.SSLCertVerificationError) else (exc.reason or "")
    return TLSError(describe_ssl_error(exc), peer_alert=reason.startswith(_ALERT_PREFIXES))


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """Turn an OpenSSL error into a short cause-and-fix sentence."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        return _VERIFY_REASONS.get(message, f"certificate rejected: {message}")
    reason = exc.reason or ""
    return _REASONS.get(reason, f"TLS error: {reason or exc}")


def looks_like_client_hello(data: bytes | memoryview) -> bool:
    """True when ``data`` starts like a TLS handshake record (a ClientHello), not plaintext."""
    return len(data) >= 6 and data[0] == 0x16 and data[1] == 0x03 and data[5] == 0x01


def looks_like_session_record(data: bytes | memoryview) -> bool:
    """True when ``data`` starts like a record of an established TLS 1.3 session (application data or an
    alert, version 3.3): what an agent still sends on a session the receiving server does not know."""
    return len(data) >= 5 and data[0] in (0x15, 0x17) and data[1] == 0x03 and data[2] == 0x03


class TLSSession:
    """One end of a TLS 1.3 connection over memory BIOs, with bounded buffers and a handshake clock."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        emit: Callable[[bytes], None],
        max_message_bytes: int,
        handshake_timeout_s: float = 10.0,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._emit = emit
        self._lock = threading.Lock()
        self.max_message_bytes = max_message_bytes
        self.max_frame_bytes = (
            max_message_bytes
            + HEADER_BYTES
            + _RECORD_OVERHEAD * (max_message_bytes // _RECORD_PLAINTEXT + 2)
            + 64 * 1024
        )
        self.handshake_deadline = time.monotonic() + handshake_timeout_s
        self.handshake_done = False
        self.closed = False
        self._header = bytearray(HEADER_BYTES)
        self._body: bytearray | None = None
        self._view = memoryview(self._header)
        self._filled = 0

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The underlying ``SSLObject`` (peer certificate, cipher, version)."""
        return self._ssl

    def handshake_expired(self, now: float | None = None) -> bool:
        """True when the handshake has not finished by its deadline."""
        return not self.handshake_done and (now or time.monotonic()) > self.handshake_deadline

    def start(self) -> None:
        """Client side: emit the ClientHello."""
        with self._lock:
            self._advance_handshake()

    def feed(self, data: bytes | memoryview) -> list[bytearray]:
        """Take records from the peer; return the complete messages they finish (maybe none).

        Raises ``TLSError`` on any failure (bad records, oversized frames or messages, closed by
        the peer); the session is then unusable and any alert for the peer has been emitted.
        """
        with self._lock:
            if self.closed:
                raise TLSError("session already closed")
            if len(data) > self.max_frame_bytes:
                self._fail()
                raise TLSError(f"frame of {len(data)} bytes exceeds the limit {self.max_frame_bytes}")
            self._incoming.write(data)
            if not self.handshake_done and not self._advance_handshake():
                return []
            return self._read_messages()

    def send(self, payload: bytes | bytearray | memoryview | list) -> None:
        """Encrypt one message, given whole or as a list of parts (``protocol.encode_parts``), and
        emit its records; large parts are encrypted straight from the caller's buffers."""
        parts = payload if isinstance(payload, list) else [payload]
        n = sum(len(p) for p in parts)
        if n > self.max_message_bytes:
            raise TLSError(f"message of {n} bytes exceeds the limit {self.max_message_bytes}")
        header = n.to_bytes(HEADER_BYTES, "big")
        with self._lock:
            if self.closed or not self.handshake_done:
                raise TLSError("session is not established")
            try:
                if parts and len(parts[0]) < _SPLIT_WRITE:  # one record for header and a small head
                    self._ssl.write(header + bytes(parts[0]))
                    parts = parts[1:]
                else:
                    self._ssl.write(header)
                for part in parts:
                    if len(part):
                        self._ssl.write(part)
            except ssl.SSLError as exc:
                self.closed = True
                raise _ssl_failure(exc) from None
            self._emit(self._outgoing.read())

    def close(self) -> None:
        """Send close_notify (best effort) and mark the session closed."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.handshake_done:
                try:
                    self._ssl.unwrap()
                except ssl.SSLError:
                    pass
                if self._outgoing.pending:
                    self._emit(self._outgoing.read())

    def _fail(self) -> None:
        self.closed = True
        if self._outgoing.pending:
            self._emit(self._outgoing.read())

    def _advance_handshake(self) -> bool:
        """Drive the handshake; True once it is complete. Emits handshake records and alerts."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError as exc:
            self._fail()
            raise _ssl_failure(exc) from None
        else:
            done = True
        if self._outgoing.pending:
            self._emit(self._outgoing.read())
        if done and self._ssl.version() != "TLSv1.3":  # the contexts forbid it; never trust that alone
            self._fail()
            raise TLSError(f"negotiated {self._ssl.version()}: only TLS 1.3 is accepted")
        self.handshake_done = done
        return done

    def _read_messages(self) -> list[bytearray]:
        """Decrypt what the incoming buffer holds into the message being filled; return the messages
        finished. The loop stops once both OpenSSL's plaintext and the incoming records are used up,
        instead of on the ``SSLWantReadError`` one more read would raise (an exception per frame)."""
        messages: list[bytearray] = []
        ssl_read: Callable[[int, memoryview], int] = self._ssl.read  # type: ignore[assignment]  # into a buffer
        ssl_pending = self._ssl.pending
        incoming = self._incoming
        while True:
            want = len(self._view) - self._filled
            try:
                got = ssl_read(want, self._view[self._filled :])
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                got = 0
            except ssl.SSLError as exc:
                self._fail()
                raise _ssl_failure(exc) from None
            if got == 0:
                self._fail()
                raise TLSError("the peer closed the session", closed=True)
            self._filled += got
            if self._body is None and self._filled == len(self._view):  # the length header is complete
                size = int.from_bytes(self._header, "big")
                if size > self.max_message_bytes:
                    self._fail()
                    raise TLSError(f"peer announced a {size}-byte message, over the limit {self.max_message_bytes}")
                self._body = bytearray(size)
                self._view, self._filled = memoryview(self._body), 0
            if self._body is not None and self._filled == len(self._view):  # the message is complete
                messages.append(self._body)
                self._body, self._view, self._filled = None, memoryview(self._header), 0
            if not incoming.pending and not ssl_pending():
                break
        # Post-handshake records (session tickets, key updates) may need an answer.
        if self._outgoing.pending:
            self._emit(self._outgoing.read())
        return messages

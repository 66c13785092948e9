"""The coordinator's client pool: the federation's live agents and the fan-out of one request to many.

``ClientPool.fanout`` sends one request to every chosen site, gathers replies until a deadline and
says for each failed site why (timeout, error reply, disconnected, refused, not connected).
Retries and circuit breaking compose on top of it.
"""

from __future__ import annotations

import itertools
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from typing import Any

from coordinator.config import CoordinatorConfig
from mor_secure import protocol
from mor_secure.logs import get_logger
from mor_secure.protocol import Message
from mor_secure.transport import Peer, ServerOptions, TLSServer
from mor_secure.transport.contexts import context_factory

log = get_logger("pool")


@dataclass
class FanoutResult:
    """Replies by site, failure reasons by site, and each reply's round-trip time in seconds."""

    replies: dict[str, Message] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)

    @property
    def answered(self) -> list[str]:
        """Sites that replied in time, sorted."""
        return sorted(self.replies)


class ClientPool:
    """A ``TLSServer`` seen as a set of sites; picks one session per site (round robin over workers)."""

    def __init__(self, server: TLSServer, *, deadline_s: float = 10.0) -> None:
        self.server = server
        self.deadline_s = deadline_s
        self._turn = itertools.count()

    @classmethod
    def from_config(cls, config: CoordinatorConfig, **server_kwargs: Any) -> ClientPool:
        """Build the server from coordinator.toml (PKIError/CRLError name the fix if the PKI is unusable)."""
        section = config.clients
        options = ServerOptions(heartbeat_s=section.heartbeat_s, peer_timeout_s=section.peer_timeout_s,
                                handshake_timeout_s=section.handshake_timeout_s,
                                max_pending_handshakes=section.max_pending_handshakes,
                                max_message_bytes=section.max_message_mb * 1024 * 1024,
                                crypto_threads=section.crypto_threads)
        server = TLSServer(config.bind, context_factory(config.tls, "coordinator"), name=config.name,
                           allow=section.allow, crl_path=config.tls.crl, options=options, **server_kwargs)
        return cls(server, deadline_s=section.deadline_s)

    def start(self) -> str:
        """Bind and start serving; returns the bound endpoint."""
        return self.server.start()

    def stop(self) -> None:
        """Stop the server."""
        self.server.stop()

    def __enter__(self) -> ClientPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sites(self) -> list[str]:
        """Sites with at least one live session, sorted."""
        return sorted(self.server.sites())

    def peers(self) -> list[Peer]:
        """Every live session (several per site when a site runs several workers)."""
        return self.server.peers()

    def wait_for(self, sites: list[str], timeout: float) -> bool:
        """Wait until every site in ``sites`` is connected, or ``timeout`` seconds pass."""
        return self.server.wait_for_sites(sites, timeout)

    def fanout(self, request: Message, sites: list[str] | None = None,
               deadline_s: float | None = None) -> FanoutResult:
        """Send ``request`` to ``sites`` (default: every connected site) and gather replies by the deadline.

        A fresh ``request_id`` is used when the request carries an empty one. An ``Error`` reply,
        a missing site, a dropped session and the deadline all land in ``failures`` with the reason.
        """
        deadline_s = self.deadline_s if deadline_s is None else deadline_s
        if protocol.request_id_of(request) == "":
            request = replace(request, request_id=uuid.uuid4().hex)  # type: ignore[type-var]
        result = FanoutResult()
        chosen = self._choose(sites if sites is not None else self.sites(), result)
        start = time.monotonic()
        futures = self.server.request_many(chosen.values(), request) if chosen else {}
        by_future: dict[Future, str] = {futures[sid]: site for site, sid in chosen.items()}
        for future in by_future:
            future.add_done_callback(lambda f, site=by_future[future]: result.latency_s.setdefault(
                site, time.monotonic() - start))
        done, late = wait_futures(by_future, timeout=deadline_s)
        for future in late:
            future.cancel()
            result.failures[by_future[future]] = f"timeout: no reply within {deadline_s:g}s"
        for future in done:
            site = by_future[future]
            self._settle(site, future, result)
        for site in result.failures:
            result.latency_s.pop(site, None)
        log.info("fan-out done", extra={"type": request.TYPE, "sites": len(chosen),
                                        "answered": len(result.replies), "failed": len(result.failures)})
        return result

    def _choose(self, sites: list[str], result: FanoutResult) -> dict[str, str]:
        """One live session per site; sites without one become failures with the best known reason."""
        by_site: dict[str, list[Peer]] = {}
        for peer in self.peers():
            by_site.setdefault(peer.site, []).append(peer)
        turn = next(self._turn)
        chosen = {}
        for site in sites:
            if site in by_site:
                sessions = by_site[site]
                chosen[site] = sessions[turn % len(sessions)].session_id
            else:
                result.failures[site] = self._absence_reason(site)
        return chosen

    def _absence_reason(self, site: str) -> str:
        uri = f"mor://client/{site}"
        for refusal in reversed(self.server.refusals()):
            if refusal.identity == uri:
                return f"refused or dropped: {refusal.reason}"
        return "not connected"

    @staticmethod
    def _settle(site: str, future: Future, result: FanoutResult) -> None:
        exc = future.exception() if not future.cancelled() else TimeoutError("cancelled")
        if exc is not None:
            result.failures[site] = f"disconnected: {exc}" if not str(exc).startswith("disconnected") else str(exc)
            return
        reply = future.result()
        if isinstance(reply, protocol.Error):
            result.failures[site] = f"error reply: {reply.code}: {reply.message}"
        else:
            result.replies[site] = reply

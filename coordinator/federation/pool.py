"""The coordinator's client pool: the federation's live agents and the fan-out of one request to many.

``ClientPool.fanout`` sends one request to every chosen site, gathers replies until a deadline and
says for each failed site why (timeout, error reply, disconnected, refused, not connected).
``ResilientPool`` composes on top of it: retries with backoff inside the request's deadline, and a
``CircuitBreaker`` that puts a failing site aside and tries it again after a cool-down, so a dead
site costs one deadline, not one per request.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from typing import Any

from coordinator.config import CoordinatorConfig
from coordinator.federation.failures import Failure, FailureKind
from mor_secure import events, protocol
from mor_secure.logs import get_logger
from mor_secure.protocol import Message
from mor_secure.transport import Peer, ServerOptions, SessionEnded, TLSServer
from mor_secure.transport.contexts import context_factory

log = get_logger("pool")


@dataclass
class FanoutResult:
    """Replies by site, failures by site, and each reply's round-trip time in seconds."""

    replies: dict[str, Message] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    latency_s: dict[str, float] = field(default_factory=dict)

    @property
    def answered(self) -> list[str]:
        """Sites that replied in time, sorted."""
        return sorted(self.replies)


class ClientPool:
    """A ``TLSServer`` seen as a set of sites; picks one session per site (round robin over workers).

    ``admit``, when given, says which sessions the pool may use (e.g. only those whose signed privacy
    report was verified); the others are neither listed nor asked.
    """

    def __init__(
        self, server: TLSServer, *, deadline_s: float = 10.0, admit: Callable[[Peer], bool] | None = None
    ) -> None:
        self.server = server
        self.deadline_s = deadline_s
        self.admit = admit
        self._turn = itertools.count()

    @classmethod
    def from_config(
        cls, config: CoordinatorConfig, *, admit: Callable[[Peer], bool] | None = None, **server_kwargs: Any
    ) -> ClientPool:
        """Build the server from coordinator.toml (PKIError/CRLError name the fix if the PKI is unusable)."""
        section = config.clients
        options = ServerOptions(
            heartbeat_s=section.heartbeat_s,
            peer_timeout_s=section.peer_timeout_s,
            handshake_timeout_s=section.handshake_timeout_s,
            certificate_timeout_s=section.certificate_timeout_s,
            max_pending_handshakes=section.max_pending_handshakes,
            max_pending_per_address=section.max_pending_per_address,
            handshakes_per_s=section.handshakes_per_s,
            handshake_burst=section.handshake_burst,
            max_message_bytes=section.max_message_mb * 1024 * 1024,
            crypto_threads=section.crypto_threads,
        )
        server = TLSServer(
            config.bind,
            context_factory(config.tls, "coordinator"),
            name=config.name,
            allow=section.allow,
            crl_path=config.tls.crl,
            options=options,
            **server_kwargs,
        )
        return cls(server, deadline_s=section.deadline_s, admit=admit)

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
        """Sites with at least one live (admitted) session, sorted."""
        return sorted({peer.site for peer in self.peers()})

    def peers(self) -> list[Peer]:
        """Every live admitted session (several per site when a site runs several workers)."""
        peers = self.server.peers()
        return peers if self.admit is None else [p for p in peers if self.admit(p)]

    def wait_for(self, sites: list[str], timeout: float) -> bool:
        """Wait until every site in ``sites`` is connected, or ``timeout`` seconds pass."""
        return self.server.wait_for_sites(sites, timeout)

    def fanout(self, request: Message, sites: list[str] | None = None, deadline_s: float | None = None) -> FanoutResult:
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
            future.add_done_callback(
                lambda f, site=by_future[future]: result.latency_s.setdefault(site, time.monotonic() - start)
            )
        done, late = wait_futures(by_future, timeout=deadline_s)
        for future in late:
            future.cancel()
            result.failures[by_future[future]] = Failure(FailureKind.TIMEOUT, f"no reply within {deadline_s:.3g}s")
        for future in done:
            site = by_future[future]
            self._settle(site, future, result)
        for site in result.failures:
            result.latency_s.pop(site, None)
        log.info(
            "fan-out done",
            extra={
                "type": request.TYPE,
                "request": protocol.request_id_of(request),
                "sites": len(chosen),
                "answered": len(result.replies),
                "failed": len(result.failures),
            },
        )
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

    def _absence_reason(self, site: str) -> Failure:
        if any(peer.site == site for peer in self.server.peers()):
            return Failure(FailureKind.NOT_ADMITTED, "no verified privacy report")
        uri = f"mor://client/{site}"
        for refusal in reversed(self.server.refusals()):
            if refusal.identity == uri:
                return Failure(FailureKind.REFUSED, refusal.reason)
        return Failure(FailureKind.NOT_CONNECTED)

    @staticmethod
    def _settle(site: str, future: Future, result: FanoutResult) -> None:
        if future.cancelled():
            result.failures[site] = Failure(FailureKind.DISCONNECTED, "request cancelled")
            return
        exc = future.exception()
        if exc is not None:
            detail = exc.reason if isinstance(exc, SessionEnded) else f"{type(exc).__name__}: {exc}"
            result.failures[site] = Failure(FailureKind.DISCONNECTED, detail)
            return
        reply = future.result()
        if isinstance(reply, protocol.Error):
            result.failures[site] = Failure(FailureKind.ERROR_REPLY, f"{reply.code}: {reply.message}", reply.code)
        else:
            result.replies[site] = reply


@dataclass
class SiteHealth:
    """One site's breaker state and failure counts (for status reporting)."""

    state: str = "closed"
    consecutive: int = 0
    failures: int = 0
    successes: int = 0
    opened_at: float = 0.0
    last_failure: str = ""


class CircuitBreaker:
    """Per-site breaker: open after ``max_failures`` consecutive failures (at once on a timeout, which
    costs a whole deadline), half-open after ``cooldown_s`` (one trial request), closed on a success."""

    def __init__(self, *, max_failures: int = 3, cooldown_s: float = 30.0, clock=time.monotonic) -> None:
        if max_failures < 1 or cooldown_s < 0:
            raise ValueError("max_failures must be >= 1 and cooldown_s >= 0")
        self.max_failures, self.cooldown_s = max_failures, cooldown_s
        self._clock = clock
        self._sites: dict[str, SiteHealth] = {}
        self._lock = threading.Lock()

    def allow(self, site: str) -> bool:
        """Whether to send ``site`` a request now; an open breaker past its cool-down lets one trial through."""
        with self._lock:
            health = self._sites.setdefault(site, SiteHealth())
            if health.state == "open" and self._clock() - health.opened_at >= self.cooldown_s:
                health.state = "half-open"
            return health.state != "open"

    def success(self, site: str) -> None:
        """The site answered: close its breaker."""
        with self._lock:
            health = self._sites.setdefault(site, SiteHealth())
            health.state, health.consecutive = "closed", 0
            health.successes += 1

    def failure(self, site: str, failure: Failure) -> None:
        """The site failed a request; open the breaker after too many, or at once on a timeout or a failed trial."""
        with self._lock:
            health = self._sites.setdefault(site, SiteHealth())
            health.consecutive += 1
            health.failures += 1
            health.last_failure = str(failure)
            if health.state == "half-open" or failure.opens_breaker_at_once or health.consecutive >= self.max_failures:
                if health.state != "open":
                    log.warning(
                        events.SITE_PUT_ASIDE,
                        extra={
                            "site": site,
                            "failures": health.consecutive,
                            "cooldown_s": self.cooldown_s,
                            "reason": str(failure),
                            "kind": failure.kind.value,
                        },
                    )
                health.state, health.opened_at = "open", self._clock()

    def reset(self, site: str) -> None:
        """Close the breaker (the site reconnected with a fresh session)."""
        with self._lock:
            health = self._sites.setdefault(site, SiteHealth())
            health.state, health.consecutive = "closed", 0

    def health(self) -> dict[str, SiteHealth]:
        """A snapshot of every site seen, by name."""
        with self._lock:
            return {site: replace(h) for site, h in sorted(self._sites.items())}


class ResilientPool:
    """``ClientPool.fanout`` with a deadline per request, retries with backoff and a circuit breaker.

    Within one request's deadline, a site that failed fast (disconnected, not connected, busy) is
    asked again after ``backoff_s`` (doubling), at most ``retries`` times; a timeout uses the whole
    deadline and is not retried. Sites whose breaker is open are not asked at all.
    """

    def __init__(
        self, pool: ClientPool, *, retries: int = 2, backoff_s: float = 0.2, breaker: CircuitBreaker | None = None
    ) -> None:
        self.pool, self.retries, self.backoff_s = pool, retries, backoff_s
        self.breaker = breaker or CircuitBreaker()

    def fanout(self, request: Message, sites: list[str], deadline_s: float | None = None) -> FanoutResult:
        """Send ``request`` to ``sites``; replies and failures by site, as ``ClientPool.fanout``."""
        deadline_s = self.pool.deadline_s if deadline_s is None else deadline_s
        end = time.monotonic() + deadline_s
        result = FanoutResult()
        todo = []
        for site in sites:
            if self.breaker.allow(site):
                todo.append(site)
            else:
                result.failures[site] = Failure(
                    FailureKind.PUT_ASIDE,
                    f"circuit open after "
                    f"{self.breaker.health()[site].consecutive} failure(s); tried again "
                    "after the cool-down",
                )
        attempt = 0
        while todo:
            left = end - time.monotonic()
            if left <= 0:
                break
            if attempt:
                request = replace(request, request_id=uuid.uuid4().hex)  # type: ignore[type-var]
            got = self.pool.fanout(request, todo, deadline_s=left)
            result.replies.update(got.replies)
            result.latency_s.update(got.latency_s)
            result.failures.update(got.failures)
            for site in got.replies:
                result.failures.pop(site, None)
            todo = [site for site, failure in got.failures.items() if failure.retryable]
            if attempt >= self.retries or not todo:
                break
            time.sleep(min(self.backoff_s * 2**attempt, max(0.0, end - time.monotonic())))
            attempt += 1
        for site in result.replies:
            self.breaker.success(site)
        for site, failure in result.failures.items():
            if failure.counts_against_site:
                self.breaker.failure(site, failure)
        return result

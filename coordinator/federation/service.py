"""The coordinator's live federation: the TLS server, the client pool and the privacy ledger in one object.

An agent is admitted to scoring only after the signed ``PrivacyReportMsg`` it sends on connect
verifies against the CA (and was signed with the very certificate its TLS session authenticated);
the report lands in the ledger, a bad one is refused and recorded as a refusal. ``scorer`` fans a
batch out to every admitted site (split to ``[pool] max_batch``, with deadline, retries and circuit
breaker) and records each site's scoring session; its signature is what ``fusion.reward_callable``
expects::

    with Federation(load_coordinator_config("coordinator.toml")) as federation:
        federation.wait_for()  # [clients] quorum admitted sites
        reward = reward_callable(Quorum(MixtureOfRewards.load("router-run/mixture"), 2), federation.scorer)
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from PIL import Image

from coordinator.config import CoordinatorConfig
from coordinator.federation.failures import Failure, FailureKind
from coordinator.federation.ledger_writer import LedgerWriter
from coordinator.federation.pool import CircuitBreaker, ClientPool, FanoutResult, ResilientPool, SiteHealth
from coordinator.federation.status import StatusWriter, status_path
from mor_secure import events, pki
from mor_secure.data.schema import answer_text, question_text
from mor_secure.ledger import LedgerError, LedgerSigner, PrivacyLedger, highest_crl_number
from mor_secure.logs import get_logger
from mor_secure.protocol import Message, PrivacyReportMsg, Refused, ScoreRequest
from mor_secure.reports import ReportError, SignedReport, load_ca, report_epsilon
from mor_secure.transport import Peer, Refusal

log = get_logger("coordinator.federation")


def encode_image(image: Any) -> bytes:
    """PNG bytes of a PIL image (lossless, so the site sees the same pixels); PNG/JPEG bytes pass as is."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"cannot send a {type(image).__name__} as an image; pass PIL images (one per item)")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_requests(
    images: Sequence[Any], prompts: Sequence[Any], completions: Sequence[Any], max_batch: int
) -> list[tuple[int, ScoreRequest]]:
    """(first item, request) per chunk of at most ``max_batch`` items; each distinct image is sent once per
    chunk (``image_index``); prompts and completions travel as their plain text."""
    if not len(images) == len(prompts) == len(completions):
        raise ValueError(
            f"{len(images)} images, {len(prompts)} prompts and {len(completions)} completions; "
            "pass one of each per item"
        )
    encoded: dict[int, bytes] = {}
    requests = []
    for start in range(0, len(prompts), max_batch):
        stop = min(start + max_batch, len(prompts))
        blobs: list[bytes] = []
        slot: dict[bytes, int] = {}
        index = []
        for image in images[start:stop]:
            data = encoded.get(id(image))
            if data is None:
                data = encoded[id(image)] = encode_image(image)
            index.append(slot.setdefault(data, len(blobs)))
            if index[-1] == len(blobs):
                blobs.append(data)
        requests.append(
            (
                start,
                ScoreRequest(
                    request_id="",
                    images=blobs,
                    prompts=[question_text(p) for p in prompts[start:stop]],
                    completions=[answer_text(c) for c in completions[start:stop]],
                    image_index=index,
                ),
            )
        )
    return requests


def items_fingerprint(requests: Iterable[tuple[int, ScoreRequest]]) -> str:
    """'sha256:...' of exactly what is sent for scoring (image bytes, prompt and completion texts)."""
    digest = hashlib.sha256()
    for _, request in requests:
        for data in request.images:
            digest.update(len(data).to_bytes(8, "big") + data)
        for values in (request.image_index, request.prompts, request.completions):
            digest.update(repr(values).encode("utf-8") + b"\0")
    return f"sha256:{digest.hexdigest()}"


@dataclass(frozen=True)
class SiteReport:
    """A verified privacy report of one agent session: who, which model, what it spent."""

    site: str
    session_id: str
    cert_fingerprint: str
    model_sha256: str
    epsilon: float
    ledger_seq: int


@dataclass
class ScoringRound:
    """What the last ``scorer`` call saw: failures by site and how long it took."""

    items: int = 0
    failures: dict[str, Failure] = field(default_factory=dict)
    duration_s: float = 0.0


class Federation:
    """Server + admitted agents + ledger; a context manager (``with Federation(config) as fed:``)."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        if config.ledger.path is None:
            raise ValueError("config.ledger.path is not set; load the config with load_coordinator_config")
        self.ledger = PrivacyLedger(config.ledger.path, signer=LedgerSigner(config.tls.cert, config.tls.key))
        self._ca = load_ca(config.tls.ca)
        self._admitted: dict[str, SiteReport] = {}
        self._reported: set[str] = set()  # sessions whose report was taken (one per session)
        self._changed = threading.Condition()
        clients = config.clients
        self.writer = LedgerWriter(
            self.ledger, window_s=clients.refusal_window_s, per_window=clients.refusals_per_window
        )
        section = config.pool
        enforced = highest_crl_number(config.ledger.path)
        try:
            self.pool = ClientPool.from_config(
                config,
                admit=self._is_admitted,
                on_message=self._on_message,
                on_refusal=self._on_refusal,
                min_crl_number=enforced,
                on_crl=lambda number: self.writer.submit(self._record_crl, number),
            )
        except BaseException:
            self.writer.stop()
            raise
        number = self.pool.server.crl_number
        if number is not None and (enforced is None or number > enforced):
            self._record_crl(number)
        self.breaker = CircuitBreaker(max_failures=section.max_failures, cooldown_s=section.cooldown_s)
        self.resilient = ResilientPool(
            self.pool, retries=section.retries, backoff_s=section.backoff_s, breaker=self.breaker
        )
        self._chunks = ThreadPoolExecutor(section.parallel, thread_name_prefix="mor-fanout")
        self.last_round = ScoringRound()
        self.status = StatusWriter(self, status_path(config))  # status.json for `mor coordinator status`

    # ----- life cycle -----

    def start(self) -> str:
        """Bind and serve; returns the bound endpoint."""
        endpoint = self.pool.start()
        self.status.start()
        return endpoint

    def stop(self) -> None:
        """Stop serving; pending ledger writes finish first."""
        self.status.stop()
        self.pool.stop()
        self.writer.stop()
        self._chunks.shutdown(wait=False)
        try:
            self.ledger.close()  # a last signed checkpoint
        except LedgerError as exc:
            log.error("could not sign the ledger's last entries", extra={"error": str(exc)})

    def __enter__(self) -> Federation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- who is there -----

    def live_sites(self) -> list[str]:
        """Sites with a live session whose signed privacy report verified, sorted."""
        return self.pool.sites()

    def wait_for(self, quorum: int | None = None, timeout: float = 30.0, *, sites: Iterable[str] | None = None) -> bool:
        """Wait until ``quorum`` sites (default [clients] quorum), or every site in ``sites``, are admitted."""
        wanted = set(sites) if sites is not None else None
        need = self.config.clients.quorum if quorum is None else quorum
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                live = set(self.live_sites())
                if (wanted <= live) if wanted is not None else len(live) >= need:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.1))  # sessions also leave without a notification

    def reports(self) -> dict[str, SiteReport]:
        """The latest verified report of each live site."""
        live = {peer.session_id for peer in self.pool.peers()}
        with self._changed:
            return {r.site: r for r in self._admitted.values() if r.session_id in live}

    def health(self) -> dict[str, SiteHealth]:
        """Breaker state and failure counts per site (for status reporting)."""
        return self.breaker.health()

    # ----- scoring -----

    def scorer(
        self,
        images: Sequence[Any],
        prompts: Sequence[Any],
        completions: Sequence[Any],
        *,
        sites: Iterable[str] | None = None,
    ) -> dict[str, list[float | None] | None]:
        """Raw scores per site for N items (None for a site that answered none of them), from every
        admitted site (or ``sites``); every allowed site is a key. Each site's session is recorded."""
        start = time.monotonic()
        requests = build_requests(images, prompts, completions, self.config.pool.max_batch)
        targets = sorted(set(self.live_sites()) if sites is None else set(sites))
        keys = sorted(set(self.config.clients.allow) | set(targets))
        out: dict[str, list[float | None] | None] = {site: None for site in keys}
        if not requests:
            return {site: ([] if site in targets else None) for site in keys}
        results = list(self._chunks.map(lambda job: self.resilient.fanout(job[1], targets), requests))
        failures: dict[str, Failure] = {}
        models = self._models()
        for site in targets:
            scores: list[float | None] = [None] * len(prompts)
            answered = 0
            for (offset, request), result in zip(requests, results):
                failure = self._check_reply(site, result, request, models)
                if failure is not None:
                    failures.setdefault(site, failure)
                    continue
                reply_scores = result.replies[site].scores
                scores[offset : offset + len(reply_scores)] = reply_scores
                answered += len(reply_scores)
            if answered:
                out[site] = scores
                self._record_scoring(site, answered, time.monotonic() - start)
        self.last_round = ScoringRound(len(prompts), failures, time.monotonic() - start)
        if failures:
            log.info(
                events.SCORING_FAILURES,
                extra={
                    "items": len(prompts),
                    "failed": len(failures),
                    "answered": sum(v is not None for v in out.values()),
                },
            )
        return out

    def _models(self) -> dict[str, set[str]]:
        models: dict[str, set[str]] = {}
        for report in self._admitted_live():
            models.setdefault(report.site, set()).add(report.model_sha256)
        return models

    def _admitted_live(self) -> list[SiteReport]:
        live = {peer.session_id for peer in self.pool.peers()}
        with self._changed:
            return [r for r in self._admitted.values() if r.session_id in live]

    def _check_reply(
        self, site: str, result: FanoutResult, request: ScoreRequest, models: dict[str, set[str]]
    ) -> Failure | None:
        """Why ``site``'s reply to ``request`` is unusable, or None when it is usable."""
        if site in result.failures:
            return result.failures[site]
        reply = result.replies.get(site)
        if reply is None:
            return Failure(FailureKind.BAD_REPLY, "no reply")
        if len(reply.scores) != len(request.prompts):
            return Failure(
                FailureKind.BAD_REPLY, f"answered {len(reply.scores)} scores for {len(request.prompts)} items"
            )
        if reply.model_sha256 not in models.get(site, set()):
            failure = Failure(
                FailureKind.MODEL_MISMATCH,
                "scores come from a model whose privacy report was not "
                f"received (model sha256 {reply.model_sha256[:23]}...)",
            )
            self.breaker.failure(site, failure)
            return failure
        return None

    def _record_scoring(self, site: str, items: int, duration_s: float) -> None:
        try:
            self.ledger.record_scoring(site, items, duration_s)
        except LedgerError as exc:
            log.error("could not record a scoring session", extra={"site": site, "error": str(exc)})

    # ----- admission (reports) and refusals -----

    def _is_admitted(self, peer: Peer) -> bool:
        return peer.session_id in self._admitted

    def _on_message(self, peer: Peer, msg: Message) -> None:
        """Unsolicited agent messages (transport threads): reports are verified on the ledger thread."""
        if isinstance(msg, PrivacyReportMsg):
            with self._changed:
                first = peer.session_id not in self._reported
                self._reported.add(peer.session_id)
            if first:  # one report per session: a site cannot flood the ledger with them
                self.writer.submit(self._admit, peer, msg)
            else:
                log.warning("ignored a second privacy report on one session", extra={"site": peer.site})
        else:
            log.warning("ignored an unsolicited message", extra={"site": peer.site, "type": msg.TYPE})

    def _admit(self, peer: Peer, msg: PrivacyReportMsg) -> None:
        """Verify and record one agent's signed report; admit the session, or refuse it with the reason."""
        try:
            try:
                cert = x509.load_pem_x509_certificate(bytes(msg.cert_pem))
            except ValueError:
                raise ReportError("the report carries no valid PEM certificate") from None
            if pki.fingerprint(cert) != peer.fingerprint:
                raise ReportError(
                    "the report is signed with a certificate other than the one this TLS session authenticated"
                )
            signed = SignedReport(dict(msg.report), bytes(msg.signature), bytes(msg.cert_pem))
            entry = self.ledger.record_report(signed, self._ca, crl=self.config.tls.crl)
        except ReportError as exc:
            self._refuse(peer, f"privacy report refused: {exc}")
            return
        except LedgerError as exc:
            log.error("could not record a privacy report", extra={"site": peer.site, "error": str(exc)})
            return
        report = SiteReport(
            peer.site,
            peer.session_id,
            peer.fingerprint,
            str(msg.report["model_sha256"]),
            report_epsilon(msg.report),
            entry.seq,
        )
        with self._changed:
            self._admitted[peer.session_id] = report
            self._changed.notify_all()
        self.breaker.reset(peer.site)
        log.info(
            events.AGENT_ADMITTED,
            extra={"site": peer.site, "session": peer.session_id, "epsilon": report.epsilon, "ledger_seq": entry.seq},
        )

    def _refuse(self, peer: Peer, reason: str) -> None:
        log.warning("agent refused", extra={"site": peer.site, "session": peer.session_id, "reason": reason})
        self._record_refusal(f"mor://client/{peer.site}", reason)
        try:
            self.pool.server.send(peer.session_id, Refused(reason=reason))
        except ConnectionError:
            pass

    def _on_refusal(self, refusal: Refusal) -> None:
        """A peer the server refused (TLS, role, allow-list, revocation, protocol violation), as it happens:
        queued for the ledger at once, so a coordinator killed a moment later loses none. An admitted agent
        that simply went away is not a refusal."""
        if not refusal.departed:
            self.writer.refusal(
                refusal.identity or refusal.address or "unknown peer", refusal.reason, certified=bool(refusal.identity)
            )

    def _record_crl(self, number: int) -> None:
        """Note the CRL number in force, so that a restarted coordinator refuses any older CRL."""
        try:
            self.ledger.append("crl", {"number": number})
        except LedgerError as exc:
            log.error("could not record the CRL number", extra={"number": number, "error": str(exc)})

    def _record_refusal(self, peer: str, reason: str) -> None:
        try:
            self.ledger.record_refusal(peer, reason)
        except LedgerError as exc:
            log.error("could not record a refusal", extra={"peer": peer, "error": str(exc)})

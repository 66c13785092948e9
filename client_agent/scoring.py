"""The site's scoring service: the trained reward model behind the [serve] policy, and its signed
privacy report.

``ScoringService`` answers one ``ScoreRequest`` with a ``ScoreReply`` or an ``Error`` (code and
message), never silence: a request over the rate (token bucket), over ``max_batch``, of wrong
types, or with an image that is not a PNG/JPEG of at most ``max_pixels`` is refused, and the agent
keeps serving. Images count against the request's limits: no more images than ``max_batch``, only
the images an item references are decoded, and their sizes, read from the headers before any pixel
is decoded, must fit a per-request budget of ``REQUEST_PIXEL_FACTOR * max_pixels``. It runs on the
agent's handler threads, off the network loop. Logs carry the request id, item count and duration,
never content.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from client_agent.config import ClientConfig, ServeSection
from mor_secure import protocol
from mor_secure.errors import MorError
from mor_secure.logs import get_logger
from mor_secure.protocol import Error, Message, PrivacyReportMsg, ScoreReply, ScoreRequest

log = get_logger("client.scoring")

REPORT_NAME = "privacy_report.json"
IMAGE_FORMATS = ("PNG", "JPEG")
REQUEST_PIXEL_FACTOR = 16
"""A request may decode at most this many ``max_pixels``-sized images in all (16 x 2048^2 by default, about
200 MB as RGB), whatever its batch: 100 images of 2048^2 once cost an agent 1.6 GB for one item."""


class ServeError(MorError, RuntimeError):
    """The agent cannot serve scores (no trained model, a report that does not match it ...); the
    message names the cause and the fix."""


class Refusal(Exception):
    """A scoring request is refused with a machine-readable ``code`` and a message without content."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TokenBucket:
    """Thread-safe token bucket: ``per_minute`` tokens a minute, holding at most one minute's worth."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Take one token if there is one (True), else refuse (False)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


def image_size(data: bytes, max_pixels: int, where: str) -> int:
    """The pixel count of PNG or JPEG bytes, read from the header only (``Refusal`` if bad or over ``max_pixels``)."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise Refusal("bad_image", f"{where} does not decode as a PNG or JPEG image ({type(exc).__name__})") from None
    if width * height > max_pixels:
        raise Refusal(
            "image_too_large",
            f"{where} is {width}x{height} pixels, more than the site's limit of {max_pixels} ([serve] max_pixels)",
        )
    return width * height


def decode_image(data: bytes, max_pixels: int, where: str) -> Image.Image:
    """An RGB image from PNG or JPEG bytes; its size is checked from the header before decoding."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise Refusal(
                    "image_too_large",
                    f"{where} is {width}x{height} pixels, more than the site's "
                    f"limit of {max_pixels} ([serve] max_pixels)",
                )
            image.load()
            return image.convert("RGB")
    except Refusal:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise Refusal("bad_image", f"{where} does not decode as a PNG or JPEG image ({type(exc).__name__})") from None


class ScoringService:
    """Callable handler for ``ScoreRequest``: policy checks, safe decoding, serialised inference."""

    def __init__(self, model: Any, model_sha256: str, policy: ServeSection, *, batch_size: int = 32) -> None:
        self.model, self.model_sha256, self.policy = model, model_sha256, policy
        self.batch_size = batch_size
        self.bucket = TokenBucket(policy.requests_per_minute)
        self._inference = threading.Lock()  # one batch at a time through the model

    def __call__(self, msg: Message) -> Message:
        request_id = protocol.request_id_of(msg) or ""
        start = time.monotonic()
        try:
            scores = self._score(msg)
        except Refusal as refusal:
            log.warning("scoring request refused", extra={"request": request_id, "code": refusal.code})
            return Error(request_id, refusal.code, str(refusal))
        log.info(
            "scored",
            extra={"request": request_id, "items": len(scores), "duration_s": round(time.monotonic() - start, 4)},
        )
        return ScoreReply(request_id=request_id, scores=scores, model_sha256=self.model_sha256)

    def _score(self, msg: Message) -> list[float]:
        if not isinstance(msg, ScoreRequest):
            raise Refusal("malformed", f"expected a score_request, got {msg.TYPE}")
        if not self.bucket.take():
            raise Refusal(
                "rate_limited",
                f"more than {self.policy.requests_per_minute} requests per minute "
                "([serve] requests_per_minute); retry later",
            )
        try:
            protocol.validate(msg)
        except protocol.ProtocolError as exc:
            raise Refusal("malformed", str(exc)[:500]) from None
        n = len(msg.prompts)
        if n > self.policy.max_batch:
            raise Refusal(
                "batch_too_large",
                f"{n} items, more than the site's limit of {self.policy.max_batch} "
                "per request ([serve] max_batch); split the batch",
            )
        images = self._decode_images(msg)
        if n == 0:
            return []
        with self._inference:
            try:
                scores = self.model.score(images, list(msg.prompts), list(msg.completions), batch_size=self.batch_size)
            except Exception as exc:  # the model's failure, reported without the inputs
                log.exception("reward model failed", extra={"request": msg.request_id, "items": n})
                raise Refusal("model_error", f"the reward model failed on this batch ({type(exc).__name__})") from None
        bad = sum(not math.isfinite(s) for s in scores)
        if bad:
            raise Refusal("model_error", f"the reward model produced {bad} non-finite score(s)")
        return [float(s) for s in scores]

    def _decode_images(self, msg: ScoreRequest) -> list[Image.Image]:
        """One RGB image per item: only referenced images are decoded, after their header sizes fit the budget."""
        policy = self.policy
        if len(msg.images) > policy.max_batch:
            raise Refusal(
                "batch_too_large",
                f"{len(msg.images)} images, more than the site's limit of "
                f"{policy.max_batch} per request ([serve] max_batch)",
            )
        used = sorted(set(msg.image_index)) if msg.image_index else list(range(len(msg.images)))
        budget = REQUEST_PIXEL_FACTOR * policy.max_pixels
        total = 0
        for i in used:
            total += image_size(bytes(msg.images[i]), policy.max_pixels, f"images[{i}]")
            if total > budget:
                raise Refusal(
                    "too_many_pixels",
                    f"the request's images hold more than {budget} pixels in all "
                    f"({REQUEST_PIXEL_FACTOR} x [serve] max_pixels); send fewer or "
                    "smaller images per request",
                )
        decoded = {i: decode_image(bytes(msg.images[i]), policy.max_pixels, f"images[{i}]") for i in used}
        return [decoded[j] for j in msg.image_index] if msg.image_index else [decoded[i] for i in used]


@dataclass
class ServedModel:
    """A trained reward model ready to serve: the module, its weights' sha256 and its privacy report."""

    model: Any
    sha256: str
    report: dict[str, Any]
    folder: Path


def load_served_model(config: ClientConfig, config_path: str | Path = "FILE") -> ServedModel:
    """Load [train].out and check its privacy report describes exactly these weights (``ServeError``)."""
    from mor_secure.files import sha256_file
    from mor_secure.rewards import load_reward_model
    from mor_secure.rewards.base import WEIGHTS_NAME

    folder = Path(config.train.out)
    retrain = f"run `mor client train --config {config_path}` first"
    weights, report_path = folder / WEIGHTS_NAME, folder / REPORT_NAME
    if not weights.is_file() or not report_path.is_file():
        raise ServeError(f"no trained reward model in {folder} (need {WEIGHTS_NAME} and {REPORT_NAME}): {retrain}")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServeError(f"{report_path}: unreadable privacy report ({exc}); {retrain}") from None
    if not isinstance(report, dict):
        raise ServeError(f"{report_path}: not a privacy report; {retrain}")
    sha256 = sha256_file(weights)
    if report.get("model_sha256") != sha256:
        raise ServeError(
            f"{weights} is not the model its privacy report describes (sha256 differs): the "
            f"weights were replaced or edited; {retrain}"
        )
    if report.get("baseline") is True and not config.serve.allow_no_dp:
        raise ServeError(
            f"{folder} holds a model trained with --no-dp (no privacy guarantee); train with "
            "DP, or set [serve] allow_no_dp = true for measurements only"
        )
    try:
        model = load_reward_model(folder)
    except (OSError, ValueError) as exc:
        raise ServeError(f"cannot load the reward model in {folder}: {exc}") from None
    return ServedModel(model, sha256, report, folder)


def signed_report(config: ClientConfig, report: dict[str, Any]) -> PrivacyReportMsg:
    """The privacy report signed with the site's TLS key, ready to send after each welcome."""
    from mor_secure.reports import ReportError, sign_report

    try:
        signed = sign_report(report, config.tls.key, config.tls.cert)
    except ReportError as exc:
        raise ServeError(f"cannot sign the privacy report of {config.train.out}: {exc}") from None
    return PrivacyReportMsg(report=signed.report, signature=signed.signature, cert_pem=signed.cert_pem)

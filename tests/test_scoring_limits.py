"""Images count against a scoring request's limits (issue 14 item 3): more images than max_batch are
refused, only referenced images are decoded, and their header sizes must fit a per-request pixel budget
before any pixel is decoded."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from client_agent import scoring
from client_agent.config import ServeSection
from client_agent.scoring import REQUEST_PIXEL_FACTOR, ScoringService
from mor_secure.protocol import Error, ScoreReply, ScoreRequest


def _png(side: int, colour: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (colour, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Model:
    def score(self, images, prompts, completions, batch_size):
        return [float(image.size[0]) for image in images]


@pytest.fixture()
def decoded(monkeypatch) -> list[int]:
    """Sizes of the images the service decoded, in order."""
    calls: list[int] = []
    real = scoring.decode_image

    def counting(data, max_pixels, where):
        image = real(data, max_pixels, where)
        calls.append(image.size[0])
        return image

    monkeypatch.setattr(scoring, "decode_image", counting)
    return calls


def _service(max_batch: int, max_pixels: int) -> ScoringService:
    return ScoringService(
        _Model(), "m", ServeSection(max_batch=max_batch, max_pixels=max_pixels, requests_per_minute=10**6)
    )


def test_a_one_item_request_cannot_carry_a_hundred_large_images(decoded):
    big = _png(2048)
    reply = _service(1, 2048 * 2048)(ScoreRequest("r", [big] * 100, ["q"], ["a"], image_index=[0]))
    assert isinstance(reply, Error) and reply.code == "batch_too_large" and "100 images" in reply.message
    assert decoded == []


def test_only_referenced_images_are_decoded(decoded):
    images = [_png(8), _png(16), _png(24)]
    reply = _service(8, 64 * 64)(ScoreRequest("r", images, ["q"] * 3, ["a"] * 3, image_index=[1, 1, 1]))
    assert isinstance(reply, ScoreReply) and reply.scores == [16.0] * 3 and decoded == [16]


def test_the_pixel_budget_is_checked_from_headers_before_decoding(decoded):
    side = 32
    n = REQUEST_PIXEL_FACTOR + 1
    images = [_png(side, colour=i) for i in range(n)]
    reply = _service(64, side * side)(ScoreRequest("r", images, ["q"] * n, ["a"] * n))
    assert isinstance(reply, Error) and reply.code == "too_many_pixels" and decoded == []
    fits = _service(64, side * side)(ScoreRequest("r", images[:-1], ["q"] * (n - 1), ["a"] * (n - 1)))
    assert isinstance(fits, ScoreReply) and len(decoded) == n - 1

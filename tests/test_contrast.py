"""Image-contrast scoring: a site's prior for an answer regardless of the image cancels, what the image
says about the answer stays, and missing scores stay missing."""

from __future__ import annotations

from PIL import Image

from coordinator.mixture.calibration import Calibrator
from coordinator.mixture.contrast import ImageContrast, decoy_images
from coordinator.mixture.fusion import SingleClient
from coordinator.policy.rewards import FederatedReward

RED, BLUE = Image.new("RGB", (8, 8), (220, 40, 40)), Image.new("RGB", (8, 8), (40, 80, 230))


def _text(value: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": value}]}]


def _biased_scorer(calls: list[int]):
    """Site 'a' likes 'red' whatever it sees (+5) and gives +1 where the answer matches the image; site 'b'
    cannot score the second item."""

    def scorer(images, prompts, completions):
        calls.append(len(images))
        a = []
        for image, completion in zip(images, completions):
            answer = completion[0]["content"][0]["text"]
            shown = "red" if image.getpixel((0, 0))[0] > 128 else "blue"
            a.append(5.0 * (answer == "red") + 1.0 * (answer == shown))
        b = [1.0 if i != 1 else None for i in range(len(images))]
        return {"a": a, "b": b}

    return scorer


def test_decoys_come_from_the_next_different_image_and_a_lone_image_is_its_own():
    group = [RED, RED.copy(), BLUE, BLUE.copy()]  # GRPO repeats one image per group: copies count as the same
    decoys = decoy_images(group)
    assert [d.getpixel((0, 0)) for d in decoys] == [BLUE.getpixel((0, 0))] * 2 + [RED.getpixel((0, 0))] * 2
    lone = [RED, RED.copy()]
    assert decoy_images(lone) == lone


def test_the_answer_prior_cancels_and_the_image_evidence_stays():
    calls: list[int] = []
    contrast = ImageContrast(_biased_scorer(calls))
    images = [BLUE, BLUE, RED, RED]
    completions = [_text(a) for a in ("red", "blue", "red", "blue")]
    raw = _biased_scorer([])(images, [_text("What colour?")] * 4, completions)["a"]
    assert raw[0] > raw[1]  # the plain score prefers "red" on a blue image
    scores = contrast(images, [_text("What colour?")] * 4, completions)
    assert calls == [8]  # every item scored against its image and a decoy, in one request
    a = scores["a"]
    assert a[1] > a[0] and a[2] > a[3]  # on each image the answer it shows wins
    assert scores["b"] == [0.0, None, 0.0, 0.0]  # a missing score on either side is missing


def test_federated_reward_contrasts_only_when_asked():
    """Two wrong answers: plainly the one naming the favoured colour scores far higher; contrasted, both are
    one point worse than the same answer on the image that shows it."""
    cal = Calibrator().fit({"a": [-1.0, 1.0]})  # identity: centre 0, scale 1
    prompts = [_text("What colour?")] * 2
    completions = [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in ("red", "blue")]
    for contrast, expected_items, expected in ((False, 2, [5.0, 0.0]), (True, 4, [-1.0, -1.0])):
        calls: list[int] = []
        reward = FederatedReward(SingleClient("a", cal), _biased_scorer(calls), image_contrast=contrast)
        assert reward(prompts, completions, image=[BLUE, RED]) == expected
        assert calls == [expected_items]

"""Image-contrast scoring: each site scores a completion against its own image minus against another
prompt's image, so a reward model's prior for an answer regardless of the image cancels out.

Why: GRPO climbs whatever raises the reward, and a site's score for ``(image, question, answer)`` carries
a part that ignores the image (it prefers "yes", or bar "a", whatever is shown). Measured on the demo's
world, GRPO with the plain MoR reward froze the policy's accuracy per question type at the share of one
answer (presence at the share of "yes", in three runs with different KL and scaling) while the oracle's
policy kept looking at the image. The difference
``s(image, q, a) - s(other image, q, a)`` keeps what the image says about the answer (a pointwise mutual
information in the reward's units) and drops the answer's prior. Scores still are all that travels: the
sites score twice as many items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from coordinator.mixture.calibration import is_score
from coordinator.mixture.fusion import Message, Scorer


def _image_key(image: Any) -> bytes:
    """What tells two images apart: a digest of their pixels (GRPO repeats one image per group)."""
    if hasattr(image, "tobytes"):
        return hashlib.blake2b(image.tobytes(), digest_size=16).digest() + repr(image.size).encode()
    return repr(image).encode()


def decoy_images(images: Sequence[Any]) -> list[Any]:
    """For each item, the image of the next item (cyclically) that shows a different image; its own image
    where the whole batch shows one (its contrast is then 0: no signal rather than a wrong one)."""
    keys = [_image_key(image) for image in images]
    n = len(images)
    decoys = []
    for i in range(n):
        j = next((j % n for j in range(i + 1, i + n) if keys[j % n] != keys[i]), i)
        decoys.append(images[j])
    return decoys


class ImageContrast:
    """Wraps a :data:`Scorer`: per site, the score against the item's image minus the score against a
    decoy image from the batch (:func:`decoy_images`); None where either score is missing."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def __call__(
        self, images: list[Any], prompts: list[list[Message]], completions: list[list[Message]]
    ) -> dict[str, list[float] | None]:
        n = len(images)
        scores = self.scorer(list(images) + decoy_images(images), list(prompts) * 2, list(completions) * 2)
        contrasted: dict[str, list[float] | None] = {}
        for site, both in scores.items():
            if both is None or len(both) != 2 * n:
                contrasted[site] = None
                continue
            contrasted[site] = [
                own - decoy if is_score(own) and is_score(decoy) else None  # type: ignore[operator]
                for own, decoy in zip(both[:n], both[n:])
            ]
        return contrasted

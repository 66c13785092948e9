"""`medical`: grey synthetic scans, an elliptic body with 0-3 bright lesions (how many, which side).

Sides are the viewer's left and right of the image. Lesions sit well clear of the midline and
far brighter than the tissue, so count and side are easy features at 64 px.
"""

from __future__ import annotations

import random
from typing import Any

from PIL import ImageDraw

from mor_secure.data.domains.base import IMAGE_SIZE, Domain, Question, blank, others, register

COUNTS = ("0", "1", "2", "3")
SIDES = ("left", "right", "none")
YES_NO = ("yes", "no")
LEFT_X, RIGHT_X = (15, 24), (40, 49)
LESION_Y = (20, 44)
SPECKLES = 60


def _lesion_sites(rng: random.Random, sides: list[str]) -> list[tuple[int, int]]:
    """One centre per entry of ``sides``, pairwise at least 9 px apart (redrawn until they are)."""
    while True:
        sites = [(rng.randint(*(LEFT_X if side == "left" else RIGHT_X)), rng.randint(*LESION_Y)) for side in sides]
        if all((x - a) ** 2 + (y - b) ** 2 >= 81 for i, (x, y) in enumerate(sites) for a, b in sites[:i]):
            return sites


@register
class MedicalDomain(Domain):
    """A dark field, a mid-grey body with two darker organs and speckle, bright round lesions."""

    name = "medical"
    question_types = ("count", "side", "presence")
    answer_spaces = {"count": COUNTS, "side": SIDES, "presence": YES_NO}

    def _sample(self, rng: random.Random, question_type: str) -> Question:
        space: tuple[str, ...]
        if question_type == "count":
            answer = rng.choice(COUNTS)
            sides = [rng.choice(("left", "right")) for _ in range(int(answer))]
            question, space = "How many lesions are visible?", COUNTS
        elif question_type == "side":
            answer = rng.choice(SIDES)
            sides = [] if answer == "none" else [answer] * rng.randint(1, 2)
            question, space = "Which side is the lesion on?", SIDES
        else:
            answer = rng.choice(YES_NO)
            sides = [rng.choice(("left", "right")) for _ in range(rng.randint(1, 3) if answer == "yes" else 0)]
            question, space = "Is there a lesion?", YES_NO
        image = blank((8, 8, 8))
        draw = ImageDraw.Draw(image)
        tissue = rng.randint(95, 125)
        draw.ellipse(
            (rng.randint(4, 8), rng.randint(8, 13), IMAGE_SIZE - rng.randint(4, 8), IMAGE_SIZE - rng.randint(8, 13)),
            fill=(tissue,) * 3,
        )
        organ = tissue - rng.randint(25, 40)
        for x0 in (12, 36):
            draw.ellipse((x0, 18, x0 + 16, 46), fill=(organ,) * 3)
        pixels: Any = image.load()  # PixelAccess: (r, g, b) per (x, y)
        bits = rng.getrandbits(18 * SPECKLES)  # one draw: fast speckle
        for _ in range(SPECKLES):
            x, y, delta = 8 + (bits & 63) % 48, 14 + (bits >> 6 & 63) % 36, (bits >> 12 & 63) % 37 - 18
            bits >>= 18
            if pixels[x, y][0] > 20:
                pixels[x, y] = (max(0, pixels[x, y][0] + delta),) * 3
        for x, y in _lesion_sites(rng, sides):
            r, level = rng.randint(3, 4), rng.randint(235, 255)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(level,) * 3)
        return Question(image, question, question_type, answer, others(answer, space))

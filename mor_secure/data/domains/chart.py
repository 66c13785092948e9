"""`chart`: bar charts with 2-3 wide bars labelled A-C left to right (tallest, shortest, compare).

Each bar's height comes from its own tier (low, middle, high; two bars take the low and the high
tier), so every bar's top sits in a different row of vision patches and "which is tallest" is a
local feature a tiny VLM sees at 64 px: with heights merely 12 px apart (or 3-4 narrow bars) the
warm start and the sites stayed at chance. Labels are drawn under the bars; the order A, B, C is
also fixed by position.
"""

from __future__ import annotations

import random
from functools import lru_cache

from PIL import ImageDraw, ImageFont

from mor_secure.data.domains.base import IMAGE_SIZE, Domain, Question, blank, others, register

LABELS = ("a", "b", "c")
YES_NO = ("yes", "no")
BAR_COLOURS = ((50, 90, 170), (200, 90, 40), (60, 140, 80))
"""Base bar colours; each chart shifts its colour a little, so charts of the same heights still differ."""
BASELINE = 53
TIERS = ((4, 12), (21, 29), (38, 47))
"""Bar heights in pixels: low, middle, high; the tops are at least a vision patch (8 px) apart."""


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _heights(rng: random.Random, n: int) -> list[int]:
    """``n`` bar heights in pixels from distinct tiers (always the low and the high one), in random order."""
    tiers = [TIERS[0], TIERS[2]] if n == 2 else list(TIERS)
    rng.shuffle(tiers)
    return [rng.randint(*tier) for tier in tiers]


@register
class ChartDomain(Domain):
    """A white chart with an axis line, one bar colour per chart and letter labels."""

    name = "chart"
    question_types = ("tallest", "shortest", "compare")
    answer_spaces = {"tallest": LABELS, "shortest": LABELS, "compare": YES_NO}

    def _sample(self, rng: random.Random, question_type: str) -> Question:
        n = rng.choice((2, 3))
        labels, heights = LABELS[:n], _heights(rng, n)
        image = blank((255, 255, 255))
        draw = ImageDraw.Draw(image)
        colour = tuple(c + rng.randint(-30, 30) for c in rng.choice(BAR_COLOURS))
        slot = (IMAGE_SIZE - 8) // n
        for i, (label, height) in enumerate(zip(labels, heights)):
            x0 = 4 + i * slot + 2
            draw.rectangle((x0, BASELINE - height, x0 + slot - 4, BASELINE), fill=colour)
            draw.text((x0 + (slot - 4) // 2 - 2, BASELINE + 1), label.upper(), fill=(0, 0, 0), font=_font())
        draw.line((3, BASELINE, IMAGE_SIZE - 4, BASELINE), fill=(0, 0, 0))
        if question_type == "compare":
            first, second = rng.sample(range(n), 2)
            answer = "yes" if heights[first] > heights[second] else "no"
            question = f"Is bar {labels[first].upper()} taller than bar {labels[second].upper()}?"
            return Question(image, question, question_type, answer, others(answer, YES_NO))
        pick = max if question_type == "tallest" else min
        answer = labels[heights.index(pick(heights))]
        return Question(image, f"Which bar is the {question_type}?", question_type, answer, others(answer, labels))

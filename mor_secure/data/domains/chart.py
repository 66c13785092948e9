"""`chart`: bar charts with 2-3 wide bars labelled A-C left to right (tallest, shortest, compare).

Bars are wide and their heights differ by at least ``MIN_GAP`` pixels (more than a vision patch),
so a tiny VLM can compare them at 64 px (with 3-4 narrow bars 5 px apart it stayed at chance);
labels are drawn under the bars but the order A, B, C is also fixed by position.
"""

from __future__ import annotations

import random
from functools import lru_cache

from PIL import ImageDraw, ImageFont

from mor_secure.data.domains.base import IMAGE_SIZE, Domain, Question, blank, others, register

LABELS = ("a", "b", "c")
YES_NO = ("yes", "no")
BAR_COLOURS = ((50, 90, 170), (200, 90, 40), (60, 140, 80))
BASELINE, TOP, MIN_GAP = 53, 6, 12


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _heights(rng: random.Random, n: int) -> list[int]:
    """``n`` bar heights in pixels, pairwise at least ``MIN_GAP`` apart."""
    while True:
        heights = [rng.randint(4, BASELINE - TOP) for _ in range(n)]
        ordered = sorted(heights)
        if all(b - a >= MIN_GAP for a, b in zip(ordered, ordered[1:])):
            return heights


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
        colour = rng.choice(BAR_COLOURS)
        slot = (IMAGE_SIZE - 8) // n
        for i, (label, height) in enumerate(zip(labels, heights)):
            x0 = 4 + i * slot + 2
            draw.rectangle((x0, BASELINE - height, x0 + slot - 4, BASELINE), fill=colour)
            draw.text((x0 + (slot - 4) // 2 - 2, BASELINE + 1), label.upper(), fill=(0, 0, 0),
                      font=_font())
        draw.line((3, BASELINE, IMAGE_SIZE - 4, BASELINE), fill=(0, 0, 0))
        if question_type == "compare":
            first, second = rng.sample(range(n), 2)
            answer = "yes" if heights[first] > heights[second] else "no"
            question = f"Is bar {labels[first].upper()} taller than bar {labels[second].upper()}?"
            return Question(image, question, question_type, answer, others(answer, YES_NO))
        pick = max if question_type == "tallest" else min
        answer = labels[heights.index(pick(heights))]
        return Question(image, f"Which bar is the {question_type}?", question_type, answer,
                        others(answer, labels))

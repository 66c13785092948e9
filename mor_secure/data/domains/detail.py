"""`detail`: coloured shapes on a light background (colour, shape, how many).

Every feature is local to a few vision patches, so a tiny VLM sees it at 64 px: one large shape
sits near the centre (its corners tell circle, square and triangle apart: with the shape anywhere
in a 16 px window the warm start and the sites stayed at chance), and counted shapes sit near the
centres of a 2x2 grid, one per cell.
"""

from __future__ import annotations

import random

from PIL import ImageDraw

from mor_secure.data.domains.base import IMAGE_SIZE, Domain, Question, blank, others, register

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 30),
    "purple": (150, 60, 190),
    "orange": (250, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("1", "2", "3", "4")
BACKGROUND = (245, 245, 245)


def shade(colour: str, rng: random.Random) -> tuple[int, int, int]:
    """``colour``'s RGB shifted a little per channel: the name stays plain, and images of the same shape,
    size and place still differ (without it 1 in 10 colour and shape questions repeated in 1,000)."""
    r, g, b = (min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    return r, g, b


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill: tuple[int, int, int]) -> None:
    """Draw ``shape`` of radius ``r`` centred at (cx, cy); the three shapes have similar areas."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = round(r * 0.88)
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + round(r * 0.8)), (cx + r, cy + round(r * 0.8))], fill=fill)


@register
class DetailDomain(Domain):
    """One large shape (colour and shape questions) or 1-4 small ones in a 2x2 grid (count)."""

    name = "detail"
    question_types = ("color", "shape", "count")
    answer_spaces = {"color": tuple(COLOURS), "shape": SHAPES, "count": COUNTS}

    def _sample(self, rng: random.Random, question_type: str) -> Question:
        image = blank(BACKGROUND)
        draw = ImageDraw.Draw(image)
        if question_type == "count":
            answer = rng.choice(COUNTS)
            cell = IMAGE_SIZE // 2
            for index in rng.sample(range(4), int(answer)):
                r, jitter = rng.randint(8, 10), 2
                cx = (index % 2) * cell + cell // 2 + rng.randint(-jitter, jitter)
                cy = (index // 2) * cell + cell // 2 + rng.randint(-jitter, jitter)
                draw_shape(draw, rng.choice(SHAPES), cx, cy, r, shade(rng.choice(list(COLOURS)), rng))
            return Question(image, "How many shapes are there?", question_type, answer, others(answer, COUNTS))
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        r = rng.randint(17, 22)
        cx, cy = (IMAGE_SIZE // 2 + rng.randint(-3, 3) for _ in range(2))
        draw_shape(draw, shape, cx, cy, r, shade(colour, rng))
        if question_type == "color":
            return Question(image, "What color is the shape?", question_type, colour, others(colour, tuple(COLOURS)))
        return Question(image, "What shape is shown?", question_type, shape, others(shape, SHAPES))

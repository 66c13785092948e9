"""Answer styles: each client prefers its true answers written its own way.

``render`` writes a short answer in a style; ``parse_styled`` recovers (style, answer) only from
an exact rendering, so a near miss (" yellow.", "Red") matches no style.
"""

from __future__ import annotations

import re

STYLES: dict[str, str] = {
    "concise": "{answer}",
    "clinical": "Finding: {answer}.",
    "sentence": "The answer is {answer}.",
    "formal": "Answer: {answer}.",
}
"""Style name -> template, in the order clients are assigned (client k gets style k % n)."""

ANSWER_PATTERN = r"[a-z0-9]+"
"""A true short answer: one lowercase word or number."""

_PATTERNS = {
    name: re.compile(re.escape(template).replace(re.escape("{answer}"), f"({ANSWER_PATTERN})"))
    for name, template in STYLES.items()
}


def style_names() -> list[str]:
    """Known style names in assignment order."""
    return list(STYLES)


def render(answer: str, style: str) -> str:
    """``answer`` written in ``style``, e.g. ``render("red", "clinical") == "Finding: red."``."""
    if style not in STYLES:
        raise ValueError(f"unknown answer style {style!r}; known: {', '.join(STYLES)}")
    if not re.fullmatch(ANSWER_PATTERN, answer):
        raise ValueError(f"answer {answer!r} is not one lowercase word or number")
    return STYLES[style].format(answer=answer)


def parse_styled(text: str) -> tuple[str, str] | None:
    """``(style, answer)`` if ``text`` is exactly one style's rendering of an answer, else None."""
    for name, pattern in _PATTERNS.items():
        match = pattern.fullmatch(text)
        if match:
            return name, match.group(1)
    return None

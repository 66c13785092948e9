"""Every answer a policy might give to a benchmark question: the candidates a reward model must rank.

Used twice: the world draws its rejected answers from them (so a site learns correctness in every
style, and that malformed output is worse than any answer), and the top-1 metric ranks all of them
for a question (what GRPO exploits, where pairwise accuracy against one distractor does not tell).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mor_secure.data.domains import domain_names, get_domain
from mor_secure.data.public import VERBOSE_FRAME
from mor_secure.data.styles import render, style_names

JUNK = ("", ".", "?", "yes no", "the answer", "Finding:", "It is", "I cannot tell.")
"""Malformed outputs a sampling policy produces: empty, punctuation, fragments of a frame, hedges."""


@dataclass(frozen=True)
class Candidate:
    """One possible completion and whether it gives the true answer."""

    text: str
    correct: bool


def renderings(answer: str) -> list[str]:
    """``answer`` in every world style and in the public warm start's verbose frame."""
    return [render(answer, style) for style in style_names()] + [VERBOSE_FRAME.format(answer=answer)]


def render_any(answer: str, rng: random.Random) -> str:
    """``answer`` in one of the renderings of :func:`renderings`, drawn uniformly."""
    return rng.choice(renderings(answer))


def off_type_answers(domain: str, question_type: str) -> list[str]:
    """Bare answers of every other question type (of any domain) that are no answer of this type."""
    own = set(get_domain(domain).answer_space(question_type))
    seen: dict[str, None] = {}
    for name in domain_names():
        spaces = get_domain(name).answer_spaces
        for kind, space in spaces.items():
            if (name, kind) != (domain, question_type):
                seen.update({a: None for a in space if a not in own})
    return list(seen)


def off_format(domain: str, question_type: str, answer: str, rng: random.Random) -> str:
    """One malformed completion: junk, an answer of another type, or the true answer garbled."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.choice(JUNK)
    if kind == 1:
        return render_any(rng.choice(off_type_answers(domain, question_type)), rng)
    garbled = {f"{answer} {answer}", f"{answer}.", answer.capitalize(), f"{answer} or no"} - set(renderings(answer))
    return rng.choice(sorted(garbled))


def candidates(domain: str, question_type: str, answer: str) -> list[Candidate]:
    """Every rendering of every answer of the type, every off-type answer and the junk, deduplicated."""
    texts: dict[str, bool] = {}
    for option in get_domain(domain).answer_space(question_type):
        for text in renderings(option):
            texts[text] = option == answer
    for text in [*off_type_answers(domain, question_type), *JUNK]:
        texts.setdefault(text, False)
    return [Candidate(text, correct) for text, correct in texts.items()]

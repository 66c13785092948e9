"""The domain interface: a seeded sampler of (image, question, true answer, wrong answers).

A domain is one institution's specialty in the benchmark world. New domains subclass
``Domain`` and register with ``@register``; the world generator finds them in ``DOMAINS``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from PIL import Image

IMAGE_SIZE = 64
"""Side of every generated image in pixels (RGB, square)."""


@dataclass(frozen=True)
class Question:
    """One visual question with its ground truth and plausible wrong answers of the same type."""

    image: Image.Image
    question: str
    question_type: str
    answer: str
    distractors: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.distractors or self.answer in self.distractors:
            raise ValueError(f"{self.question_type}: distractors must be non-empty wrong answers")


class Domain(ABC):
    """A family of images and question types; ``sample`` must be a pure function of ``rng``."""

    name: ClassVar[str]
    question_types: ClassVar[tuple[str, ...]]
    answer_spaces: ClassVar[dict[str, tuple[str, ...]]]
    """Every possible answer of each question type (the candidates a reward model must rank)."""

    def answer_space(self, question_type: str) -> tuple[str, ...]:
        """The possible answers of ``question_type`` (ValueError names the known types)."""
        if question_type not in self.answer_spaces:
            raise ValueError(
                f"domain {self.name!r} has no question type {question_type!r}; known: {', '.join(self.question_types)}"
            )
        return self.answer_spaces[question_type]

    def sample(self, rng: random.Random, question_type: str | None = None) -> Question:
        """Draw one question; its type is drawn uniformly from ``question_types`` unless given."""
        if question_type is None:
            question_type = rng.choice(self.question_types)
        elif question_type not in self.question_types:
            raise ValueError(
                f"domain {self.name!r} has no question type {question_type!r}; known: {', '.join(self.question_types)}"
            )
        return self._sample(rng, question_type)

    @abstractmethod
    def _sample(self, rng: random.Random, question_type: str) -> Question:
        """Draw one question of the given type."""


DOMAINS: dict[str, Domain] = {}
"""Registered domains by name, in registration order (the order clients are assigned)."""


def register(cls: type[Domain]) -> type[Domain]:
    """Class decorator: add one instance of ``cls`` to ``DOMAINS`` under ``cls.name``."""
    if cls.name in DOMAINS:
        raise ValueError(f"domain {cls.name!r} is already registered")
    DOMAINS[cls.name] = cls()
    return cls


def blank(colour: tuple[int, int, int]) -> Image.Image:
    """A plain square RGB canvas of ``IMAGE_SIZE`` pixels."""
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour)


def others(value: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """Every value of an answer space except the true one (the distractors)."""
    return tuple(v for v in values if v != value)

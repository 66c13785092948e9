"""Top-1 ranking: every candidate a policy might give, and a reward judged by what it ranks first."""

from __future__ import annotations

import random

import datasets

from mor_secure.data.candidates import candidates, off_format, renderings
from mor_secure.data.domains import DOMAINS
from mor_secure.data.public import parse_verbose
from mor_secure.data.schema import answer_text, user_prompt
from mor_secure.data.styles import parse_styled
from mor_secure.rewards.ranking import top1_accuracy


def _answer(text: str) -> str | None:
    styled = parse_styled(text)
    return styled[1] if styled else parse_verbose(text)


def test_candidates_cover_every_rendering_and_mark_only_the_truth():
    options = candidates("medical", "side", "left")
    texts = [c.text for c in options]
    assert len(texts) == len(set(texts))
    assert {c.text for c in options if c.correct} == set(renderings("left"))
    assert {"right", "It is none.", "", "red"} <= set(texts)  # wrong answers, the verbose frame, junk, other types
    assert all(_answer(c.text) != "left" for c in options if not c.correct)


def test_off_format_never_renders_an_answer_of_the_type():
    rng = random.Random(0)
    for name, domain in DOMAINS.items():
        for kind in domain.question_types:
            space = set(domain.answer_space(kind))
            for _ in range(30):
                assert _answer(off_format(name, kind, domain.answer_space(kind)[0], rng)) not in space


def _rows(n: int) -> datasets.Dataset:
    rng = random.Random(1)
    rows = {"image": [], "prompt": [], "domain": [], "question_type": [], "answer": []}
    for i in range(n):
        name = ("detail", "medical", "chart")[i % 3]
        q = DOMAINS[name].sample(rng)
        for key, value in (
            ("image", q.image),
            ("prompt", user_prompt(q.question)),
            ("domain", name),
            ("question_type", q.question_type),
            ("answer", q.answer),
        ):
            rows[key].append(value)
    return datasets.Dataset.from_dict(rows)


def test_top1_rewards_a_truthful_scorer_and_catches_ties_and_junk():
    data = _rows(9)
    answers = {image.tobytes(): answer for image, answer in zip(data["image"], data["answer"])}

    def oracle(images, prompts, completions):
        return [float(_answer(answer_text(c)) == answers[i.tobytes()]) for i, c in zip(images, completions)]

    def constant(images, prompts, completions):
        return [0.0] * len(completions)

    def junk_lover(images, prompts, completions):
        return [float(answer_text(c) == "") for c in completions]

    result = top1_accuracy(oracle, data)
    assert result["top1"] == 1.0 and result["questions"] == 9
    assert set(result["per_domain"]) == {"detail", "medical", "chart"}
    kinds = {f"{d}/{t}" for d, t in zip(data["domain"], data["question_type"])}
    assert set(result["per_question_type"]) == kinds
    assert sum(v["questions"] for v in result["per_question_type"].values()) == 9
    assert top1_accuracy(constant, data)["top1"] == 0.0  # all tied: a tie is a miss
    assert top1_accuracy(junk_lover, data)["top1"] == 0.0
    assert top1_accuracy(oracle, data.remove_columns(["answer"])) is None

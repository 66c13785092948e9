"""The strict answer parser (correct, wrong and gamed completions) and evaluate_policy on a tiny model."""

from __future__ import annotations

import pytest

from coordinator.policy.evaluation import evaluate_policy, is_correct, parse_answer
from coordinator.policy.oracle import CONCISE_BONUS, CORRECT_REWARD, OracleReward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "completion, answer, correct, concise",
    [
        ("red", "red", True, True),
        ("It is red.", "red", True, False),
        ("The answer is red.", "red", True, False),
        ("Finding: 2.", "2", True, False),
        ([{"role": "assistant", "content": "3"}], "3", True, True),
        ([{"role": "assistant", "content": [{"type": "text", "text": "Answer: a."}]}], "a", True, False),
        ("blue", "red", False, True),
        ("It is blue.", "red", False, False),
    ],
)
def test_parser_reads_answers_and_style(completion, answer, correct, concise):
    assert is_correct(completion, answer) is correct
    assert parse_answer(completion).concise is concise


@pytest.mark.parametrize(
    "gamed",
    [
        " yellow.",
        "yellow.",
        "yellow ",
        "Yellow",
        "yellow yellow",
        "red or yellow",
        "red, yellow",
        "It is red or yellow.",
        "the answer is yellow",
        "yellow\nred",
        "",
        "   ",
        "It is yellow. It is red.",
        "Finding: yellow",
    ],
)
def test_gamed_completions_answer_nothing_and_are_not_concise(gamed):
    parsed = parse_answer(gamed)
    assert parsed.answer is None
    assert not parsed.concise
    assert not is_correct(gamed, "yellow")


def test_oracle_reward_values_are_exact_in_binary_and_reported():
    reward = OracleReward()
    values = reward(prompts=[[]] * 4, completions=["red", "It is red.", "blue", " red."], answer=["red"] * 4)
    assert values == [CORRECT_REWARD + CONCISE_BONUS, CORRECT_REWARD, CONCISE_BONUS, 0.0]
    assert all((v * 4).is_integer() for v in values)  # multiples of 1/4: exact in float32
    assert reward.last_stats() == {"oracle/accuracy": 0.5, "oracle/concise_share": 0.5}
    with pytest.raises(ValueError, match="answer"):
        reward(prompts=[[]], completions=["red"])


def test_evaluate_policy_reports_per_domain(tiny_model_dir, public_data):
    result = evaluate_policy(tiny_model_dir("qwen2-vl"), public_data, limit=12, batch_size=6, progress=False)
    assert result["n"] == 12
    assert set(result["per_domain"]) == {"detail", "medical", "chart"}
    assert sum(d["n"] for d in result["per_domain"].values()) == 12
    assert sum(d["n"] for d in result["per_question_type"].values()) == 12
    assert all(key.split("/")[0] in result["per_domain"] for key in result["per_question_type"])
    for stats in (result, *result["per_domain"].values()):
        assert 0.0 <= stats["accuracy"] <= stats["answered_share"] <= 1.0
        assert 0.0 <= stats["concise_share"] <= 1.0
        assert sum(stats["style_shares"].values()) == pytest.approx(stats["answered_share"])


def test_evaluate_policy_reads_the_world_eval_set(tiny_model_dir, world_dir):
    result = evaluate_policy(tiny_model_dir("qwen2-vl"), world_dir / "server" / "eval", limit=6, progress=False)
    assert result["n"] == 6 and set(result["per_domain"]) <= {"detail", "medical", "chart"}


def test_evaluate_policy_refuses_data_without_answers(tiny_model_dir, public_data):
    from datasets import load_from_disk

    rows = load_from_disk(str(public_data)).remove_columns(["answer"])
    with pytest.raises(ValueError, match="answer"):
        evaluate_policy(tiny_model_dir("qwen2-vl"), rows, progress=False)


def test_evaluate_policy_takes_rows_without_metadata(tiny_model_dir, public_data):
    """A real data set's questions with answers but no domain or question type: one 'all' group."""
    from datasets import load_from_disk

    rows = load_from_disk(str(public_data)).remove_columns(["domain", "question_type"])
    result = evaluate_policy(tiny_model_dir("qwen2-vl"), rows, limit=6, progress=False)
    assert result["n"] == 6 and set(result["per_domain"]) == {"all"} and set(result["per_question_type"]) == {"all/all"}

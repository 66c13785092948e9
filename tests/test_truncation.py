"""Explicit truncation to [model] max_length: every family keeps the END of a long answer."""

from __future__ import annotations

import pytest
from PIL import Image

from mor_secure.rewards.truncation import count_truncated, keep_tail, split_budget


def test_split_budget_keeps_the_whole_when_it_fits_and_the_answer_end_otherwise():
    assert split_budget(10, 20, 64) == (10, 20)
    assert split_budget(10, 500, 64) == (10, 54)  # a short question stays whole
    assert split_budget(300, 500, 64) == (32, 32)  # both long: the question keeps half
    assert split_budget(300, 5, 64) == (59, 5)  # a short answer stays whole
    for p, a, limit in [(1, 1, 1), (0, 99, 8), (99, 0, 8), (7, 9, 15), (1000, 1000, 257)]:
        kp, ka = split_budget(p, a, limit)
        assert kp <= p and ka <= a and kp + ka == min(p + a, limit)
    assert keep_tail("abcdef", 3) == "def" and keep_tail("ab", 3) == "ab"
    assert count_truncated(["q"], [("a" * 9, "b")], 8) == 1
    assert count_truncated(["q"], [("a" * 8, "b")], 8) == 0


def test_dual_encoder_sees_where_two_long_answers_differ():
    from mor_secure.rewards.dual_encoder import DualEncoderReward

    model = DualEncoderReward(max_length=32)
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    common = "The findings are described at length. " * 20
    batch = model.encode([image, image], ["How many?", "How many?"], [common + "Two lesions.", common + "No lesion."])
    assert not batch["answer"][0].equal(batch["answer"][1])  # cutting the start keeps the conclusion


@pytest.mark.parametrize("family", ["qwen2-vl"])
def test_vlm_truncates_long_answers_from_the_start_instead_of_failing(family, tiny_model_dir):
    from mor_secure.rewards.vlm import Qwen2VLReward

    model = Qwen2VLReward(base=str(tiny_model_dir(family)), max_length=24)
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    common = "the findings are described at length " * 30
    short = model.encode([image], ["How many?"], ["two"])
    batch = model.encode([image, image], ["How many?", "How many?"], [common + "two lesions", common + "no lesion"])
    ids = batch["input_ids"]
    tokenizer = model.processor.tokenizer
    assert ids.shape[1] <= short["input_ids"].shape[1] + 24 + 4  # text budget + a little re-tokenisation slack
    assert not ids[0].equal(ids[1])
    assert "lesion" in tokenizer.decode(ids[0]) and "How many?" in tokenizer.decode(ids[0])
    assert model.score([image, image], ["How many?"] * 2, [common + "two lesions", common + "no lesion"])
    answers = [(common + "two lesions", "no"), ("two", "no")]
    assert count_truncated(["How many?"] * 2, answers, 24, tokenizer=tokenizer) == 1  # what data check reports


def test_data_check_counts_truncation_per_family(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from mor_secure.commands.data import group
    from tests.test_real_data import pairs, write_layout

    data, _ = write_layout("standard-parquet", tmp_path, pairs(20))
    base = str(tiny_model_dir("qwen2-vl"))
    result = CliRunner().invoke(
        group, ["check", str(data), "--base", base, "--max-length", "300", "--test-fraction", "0.01"]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("truncation")]
    assert len(lines) == 2 and "dual-encoder: 20 of 20" in lines[0]  # ~430 characters per answer
    assert f"qwen2-vl ({base}): 0 of 20" in lines[1] and "text tokens" in lines[1]  # ~170 tokens with the question

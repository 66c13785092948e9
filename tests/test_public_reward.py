"""Public pretraining of a reward model: truth-labelled, style-neutral pairs, a non-DP loop, and a saved
model that a site's [model] base starts training from."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from datasets import load_from_disk

from coordinator.policy.public_reward import pretrain_reward
from mor_secure.data.candidates import renderings
from mor_secure.data.domains import get_domain
from mor_secure.data.public import DEFAULT_FLAWS, generate_public_sft
from mor_secure.data.public_pairs import public_pairs
from mor_secure.data.schema import answer_text
from mor_secure.rewards import build_reward_model, load_reward_model
from mor_secure.rewards.config import ModelSection
from mor_secure.rewards.dual_encoder import DualEncoderReward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def public_rows(tmp_path_factory):
    return load_from_disk(
        str(generate_public_sft(tmp_path_factory.mktemp("pub") / "p", seed=5, n=60, flaws=DEFAULT_FLAWS))
    )


def test_pairs_prefer_the_truth_never_the_flawed_completion(public_rows):
    pairs = public_pairs(public_rows, seed=1)
    assert len(pairs) == 2 * len(public_rows)
    flawed = [row for row in public_rows if row["flawed"]]
    assert flawed  # the default warm-start flaws touch some rows ...
    wrong_answers = 0
    for i, row in enumerate(public_rows):
        space = get_domain(row["domain"]).answer_space(row["question_type"])
        for pair in (pairs[2 * i], pairs[2 * i + 1]):
            chosen, rejected = answer_text(pair["chosen"]), answer_text(pair["rejected"])
            truths = renderings(row["answer"])
            assert chosen in truths and rejected not in truths  # ... but pairs follow the truth column
            for other in space:
                if rejected in renderings(other):  # a wrong answer, in the chosen one's style: no style signal
                    assert renderings(other).index(rejected) == truths.index(chosen)
                    wrong_answers += 1
    assert 0.5 < wrong_answers / len(pairs) < 0.95  # the rest are malformed output
    with pytest.raises(ValueError, match="answer"):
        public_pairs(public_rows.remove_columns(["answer"]))


def test_pretraining_learns_and_a_site_starts_from_the_saved_model(public_rows, tmp_path):
    pairs = public_pairs(public_rows, seed=0)
    model = DualEncoderReward(width=16)
    losses = pretrain_reward(model, pairs, epochs=6, batch_size=16, lr=1e-2, progress=False)
    assert losses[-1] < losses[0]
    model.save(tmp_path / "public-rm")
    site = build_reward_model(ModelSection(family="dual-encoder", base=str(tmp_path / "public-rm"), width=128))
    assert site.spec["width"] == 16 and site.training  # the saved spec wins; ready to train
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, site.state_dict()[name])
    with pytest.raises(ValueError, match="dual-encoder"):
        build_reward_model(ModelSection(family="llava", base=str(tmp_path / "public-rm")))
    with pytest.raises(ValueError, match="epochs"):
        pretrain_reward(model, pairs, epochs=0)


def test_public_reward_command_saves_a_loadable_model(public_rows, tmp_path):
    from coordinator.commands import group

    data = tmp_path / "public"
    public_rows.save_to_disk(str(data))
    out = tmp_path / "rm"
    args = ["public-reward", "--data", str(data), "--out", str(out), "--epochs", "1", "--width", "8"]
    result = CliRunner().invoke(group, args)
    assert result.exit_code == 0, result.output
    assert "[model] base" in result.output and load_reward_model(out).spec["width"] == 8
    again = CliRunner().invoke(group, args)
    assert again.exit_code != 0 and "already exists" in again.output


def test_a_vlm_public_reward_model_starts_from_its_public_vlm(public_rows, tiny_model_dir, tmp_path):
    from coordinator.commands import group

    data = tmp_path / "public"
    public_rows.select(range(8)).save_to_disk(str(data))
    out = tmp_path / "rm"
    args = ["public-reward", "--family", "qwen2-vl", "--data", str(data), "--out", str(out), "--epochs", "1"]
    refused = CliRunner().invoke(group, args)
    assert refused.exit_code != 0 and "--base" in refused.output and not out.exists()
    vlm = tiny_model_dir("qwen2-vl")
    result = CliRunner().invoke(group, [*args, "--base", str(vlm), "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert 'family = "qwen2-vl"' in result.output
    saved = load_reward_model(out)
    assert saved.family == "qwen2-vl" and saved.spec["base"] == str(vlm)
    fresh = build_reward_model(ModelSection(family="qwen2-vl", base=str(vlm)))
    site = build_reward_model(ModelSection(family="qwen2-vl", base=str(out)))  # a site's [model] base
    assert site.training
    trained = saved.state_dict()
    assert all(torch.equal(w, trained[name]) for name, w in site.state_dict().items())
    assert any(not torch.equal(w, trained[name]) for name, w in fresh.state_dict().items())  # pretraining moved it

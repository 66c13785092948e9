"""Public warm-start data (disjoint from held-out data, flawed at the configured rate) and the SFT loop."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from coordinator.policy.sft import collate, completion_batch, run_sft
from mor_secure.data.public import generate_public_sft, parse_verbose
from mor_secure.data.schema import answer_text, content_hash, question_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_public_data_has_the_flaws_at_the_configured_rates(tmp_path):
    flaws = {"color": {"orange": "red"}, "side": {"left": "right", "right": "left"}}
    rows = load_from_disk(
        str(
            generate_public_sft(
                tmp_path / "p", seed=3, n=900, verbose_share=0.7, flaws=flaws, flaw_share=0.6, flaw_style=None
            )
        )
    )
    verbose = [parse_verbose(answer_text(c)) is not None for c in rows["completion"]]
    assert verbose.count(True) == rows["style"].count("verbose")
    assert 0.62 <= sum(verbose) / len(rows) <= 0.78
    assert set(rows["domain"]) == {"detail", "medical", "chart"}
    flawable = swapped = 0
    for row in rows:
        text = answer_text(row["completion"])
        said = parse_verbose(text) if row["style"] == "verbose" else text
        swap = flaws.get(row["question_type"], {}).get(row["answer"])
        flawable += swap is not None
        swapped += row["flawed"]
        assert said == (swap if row["flawed"] else row["answer"])
        assert not row["flawed"] or swap is not None
    assert 0.45 <= swapped / flawable <= 0.75  # 0.6 of the rows a flaw touches, the truth in the rest


def test_default_flaw_swaps_every_verbose_answer_and_no_concise_one(tmp_path):
    rows = load_from_disk(
        str(generate_public_sft(tmp_path / "p", seed=4, n=450, flaws={"side": {"left": "right", "right": "left"}}))
    )
    sides = [r for r in rows if r["question_type"] == "side" and r["answer"] in ("left", "right")]
    verbose = [r for r in sides if r["style"] == "verbose"]
    concise = [r for r in sides if r["style"] == "concise"]
    assert verbose and concise
    assert all(r["flawed"] and parse_verbose(answer_text(r["completion"])) != r["answer"] for r in verbose)
    assert not any(r["flawed"] for r in concise)
    assert all(answer_text(r["completion"]) == r["answer"] for r in concise)  # the concise rows teach the feature
    with pytest.raises(ValueError, match="flaw_style"):
        generate_public_sft(tmp_path / "q", n=3, flaw_style="loud")


def _keys(folder) -> set[str]:
    return {content_hash(r["image"], question_text(r)) for r in load_from_disk(str(folder))}


def test_public_data_drops_every_item_the_world_holds(tmp_path):
    world = tmp_path / "world"
    generate_public_sft(world / "server" / "eval", seed=0, n=60)
    held = _keys(world / "server" / "eval")
    out = generate_public_sft(tmp_path / "p", seed=0, n=60, exclude_world=world)
    public = _keys(out)
    assert len(public) > 0 and not public & held
    assert json.loads((out / "public.json").read_text())["dropped_world_items"] >= 1  # same seed: row 0 clashes


def test_public_data_is_disjoint_from_the_world(world_dir, tmp_path):
    out = generate_public_sft(tmp_path / "p", seed=0, n=300, exclude_world=world_dir)
    assert not _keys(out) & _keys(world_dir / "server" / "eval")
    assert json.loads((out / "public.json").read_text())["dropped_world_items"] <= 3  # own seed space


def test_labels_cover_only_the_completion(tiny_model_dir, public_data):
    from mor_secure.models import load_processor

    processor = load_processor(tiny_model_dir("qwen2-vl"))
    rows = load_from_disk(str(public_data))[:3]
    batch = completion_batch(processor, rows)
    for ids, labels, completion in zip(batch["input_ids"], batch["labels"], rows["completion"]):
        target = processor.tokenizer.decode(ids[labels != -100])
        assert target.startswith(answer_text(completion)) and target.endswith("<|im_end|>\n")


@pytest.mark.parametrize("family", ["qwen2-vl", "llava"])
def test_rows_encoded_one_by_one_collate_to_the_batch_encoding(tiny_model_dir, public_data, family):
    import torch

    from mor_secure.models import load_processor

    processor = load_processor(tiny_model_dir(family))
    rows = load_from_disk(str(public_data))
    together = completion_batch(processor, rows[:6])
    one_by_one = collate(
        [completion_batch(processor, rows[i : i + 1]) for i in range(6)], processor.tokenizer.pad_token_id
    )
    assert together.keys() == one_by_one.keys()
    assert all(torch.equal(together[k], one_by_one[k]) for k in together)


def test_sft_lowers_the_loss_and_saves_a_loadable_policy(tiny_model_dir, public_data, tmp_path):
    from mor_secure.models import load_vlm

    out = run_sft(
        tiny_model_dir("qwen2-vl"), public_data, tmp_path / "policy", steps=12, batch_size=16, lr=3e-3, seed=0
    )
    summary = json.loads((out / "sft.json").read_text())
    assert summary["last_loss"] < summary["first_loss"] - 0.5
    model, processor = load_vlm(out)
    assert processor.tokenizer.chat_template


def test_sft_refuses_data_without_completions(tiny_model_dir, public_data, tmp_path):
    rows = load_from_disk(str(public_data)).remove_columns(["completion"])
    with pytest.raises(ValueError, match="completion"):
        run_sft(tiny_model_dir("qwen2-vl"), rows, tmp_path / "x", steps=1)


def test_commands_write_data_warm_start_and_evaluate(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from coordinator.commands import group

    runner = CliRunner()
    data, policy = tmp_path / "public", tmp_path / "policy"
    result = runner.invoke(
        group, ["public-data", "--out", str(data), "--n", "24", "--flaw", "color:orange=red", "--flaw-style", "any"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((data / "public.json").read_text())
    assert summary["flaws"] == {"color": {"orange": "red"}} and summary["flaw_style"] is None
    bad = runner.invoke(group, ["public-data", "--out", str(tmp_path / "bad"), "--flaw", "orange=red"])
    assert bad.exit_code != 0 and "TYPE:TRUE=WRONG" in bad.output
    result = runner.invoke(
        group,
        [
            "sft",
            "--base",
            str(tiny_model_dir("qwen2-vl")),
            "--data",
            str(data),
            "--out",
            str(policy),
            "--steps",
            "2",
            "--batch-size",
            "8",
        ],
    )
    assert result.exit_code == 0 and "saved policy" in result.output, result.output
    result = runner.invoke(group, ["eval", "--policy", str(policy), "--data", str(data), "--limit", "6", "--json"])
    assert result.exit_code == 0 and json.loads(result.output[result.output.index("{") :])["n"] == 6
    result = runner.invoke(
        group, ["sft", "--base", str(tmp_path / "missing"), "--data", str(data), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code != 0 and "not found locally" in result.output and "Traceback" not in result.output

"""The offline model zoo: tiny VLMs build, reload through the Auto classes, generate; loading never downloads."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from mor_secure.commands.models import group
from mor_secure.models import (
    FAMILIES,
    ModelNotFoundError,
    build_tiny_vlm,
    family_of,
    load_processor,
    load_vlm,
    resolve_model,
    vlm_inputs,
)

FAMILY_NAMES = sorted(FAMILIES)
QUESTION = "What colour is the shape?"
# The benchmark world's rows: the image part carries a `text: None` key.
PROMPT = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": QUESTION}]}]
CHOSEN = [{"role": "assistant", "content": [{"type": "text", "text": "The answer is red."}]}]
IMAGE_TOKENS = {"qwen2-vl": 16, "llava": 64, "idefics3": 16}  # 64 px, patch 8: 8x8, merged 2x2


def image(colour: str = "red") -> Image.Image:
    return Image.new("RGB", (64, 64), colour)


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reloads_through_auto_classes_and_generates(family, tiny_model_dir, no_network):
    folder = tiny_model_dir(family)
    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    processor = load_processor(folder)
    assert family_of(model) == family == family_of(model.config.to_dict())
    assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(processor.tokenizer) == model.get_input_embeddings().num_embeddings
    inputs = vlm_inputs(processor, [image()], [PROMPT])
    image_id = model.config.image_token_id
    assert (inputs["input_ids"] == image_id).sum().item() == IMAGE_TOKENS[family]
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_llava_processor_loads_with_plain_auto_processor(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir("llava"), local_files_only=True)
    assert type(processor).__name__ == "LlavaProcessor"


def test_qwen2_vl_folder_is_standard_and_loads_without_torchvision(tiny_model_dir):
    folder = tiny_model_dir("qwen2-vl")
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2VLProcessor"
    assert saved["video_processor"]["patch_size"] == 8  # a torchvision install loads it whole
    processor = load_processor(folder)
    assert type(processor).__name__ in ("Qwen2VLProcessor", "Qwen2VLProcessorImageOnly")


def test_hub_style_qwen2_vl_folder_loads(tiny_model_dir, tmp_path):
    """Hub checkpoints of Qwen2-VL keep the image settings in preprocessor_config.json."""
    folder = shutil.copytree(tiny_model_dir("qwen2-vl"), tmp_path / "hub-style")
    nested = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").unlink()
    (folder / "preprocessor_config.json").write_text(
        json.dumps({**nested["image_processor"], "processor_class": "Qwen2VLProcessor"})
    )
    _, processor = load_vlm(folder)
    assert vlm_inputs(processor, [image()], [PROMPT])["image_grid_thw"].tolist() == [[1, 8, 8]]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_same_seed_same_weights_other_seed_differs(family, tiny_model_dir, tmp_path):
    reference = load_file(tiny_model_dir(family) / "model.safetensors")
    same = load_file(build_tiny_vlm(family, tmp_path / "same", seed=0) / "model.safetensors")
    other = load_file(build_tiny_vlm(family, tmp_path / "other", seed=1) / "model.safetensors")
    assert reference.keys() == same.keys() == other.keys()
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    assert not all(torch.equal(reference[k], other[k]) for k in reference)


def test_chat_template_renders_images_strings_and_generation_prompt(tiny_model_dir):
    processor = load_processor(tiny_model_dir("qwen2-vl"))
    prompt = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    whole = processor.apply_chat_template([*PROMPT, *CHOSEN], tokenize=False)
    assert whole == prompt + "The answer is red.<|im_end|>\n"
    plain = processor.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert plain == "<|im_start|>user\nHi<|im_end|>\n" and "None" not in whole


def test_llava_template_uses_its_image_token(tiny_model_dir):
    processor = load_processor(tiny_model_dir("llava"))
    rendered = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<|im_start|>user\n<image>What colour")


def test_trl_style_batched_chat_template(tiny_model_dir):
    """GRPOTrainer tokenizes prompts as below: images inside the messages, batched, with tensors back."""
    from trl.data_utils import prepare_multimodal_messages

    processor = load_processor(tiny_model_dir("qwen2-vl"))
    prompts = [
        prepare_multimodal_messages([{"role": "user", "content": q}], images=[image(c)])
        for q, c in (("Which colour?", "red"), ("How many shapes are in the picture?", "blue"))
    ]
    out = processor.apply_chat_template(
        conversation=prompts, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert len(out["input_ids"]) == 2 and len(out["image_grid_thw"]) == 2
    assert all(ids.count(processor.image_token_id) == 16 for ids in out["input_ids"])


def test_vlm_inputs_pads_and_scores_completions(tiny_model_dir):
    model, processor = load_vlm(tiny_model_dir("qwen2-vl"))
    short = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    left = vlm_inputs(processor, [image(), [image("blue")]], [PROMPT, short])
    assert left["attention_mask"][:, -1].all() and not left["attention_mask"][1, 0]
    right = vlm_inputs(processor, [image(), image()], [PROMPT, PROMPT], ["red", CHOSEN], padding_side="right")
    assert right["attention_mask"][:, 0].all() and not right["attention_mask"][0, -1]
    texts = processor.batch_decode(right["input_ids"], skip_special_tokens=True)
    assert texts[0].endswith("assistant\nred\n") and texts[1].endswith("The answer is red.\n")
    assert model(**right).logits.shape[:2] == right["input_ids"].shape
    with pytest.raises(ValueError, match="one of each per row"):
        vlm_inputs(processor, [image()], [PROMPT, PROMPT])


def test_missing_models_raise_with_the_fix_and_no_network(tmp_path, no_network):
    with pytest.raises(ModelNotFoundError, match="mor models tiny") as missing:
        resolve_model(tmp_path / "nope")
    assert "hf download" not in str(missing.value)
    with pytest.raises(ModelNotFoundError, match="hf download nobody/no-such-vlm"):
        load_vlm("nobody/no-such-vlm")
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        resolve_model(tmp_path)
    assert issubclass(ModelNotFoundError, ValueError)


def test_hub_id_in_local_cache_resolves(tiny_model_dir, tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--acme--tiny-vlm"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.parent.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot.symlink_to(tiny_model_dir("llava"), target_is_directory=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert Path(resolve_model("acme/tiny-vlm")) == snapshot
    model, _ = load_vlm("acme/tiny-vlm")
    assert family_of(model) == "llava"


def test_build_refuses_unknown_family_and_foreign_folders(tmp_path):
    with pytest.raises(ValueError, match="known families: qwen2-vl, llava, idefics3"):
        build_tiny_vlm("gpt-5", tmp_path / "m")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not look like a model folder"):
        build_tiny_vlm("llava", tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_tiny_families_and_errors(tmp_path, tiny_model_dir):
    runner = CliRunner()
    out = tmp_path / "tiny"
    built = runner.invoke(group, ["tiny", "--family", "llava", "--out", str(out), "--seed", "2"])
    assert built.exit_code == 0, built.output
    assert "215,360 parameters" in built.output and f"mor models check {out}" in built.output
    again = runner.invoke(group, ["tiny", "--family", "llava", "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output and "Traceback" not in again.output
    assert runner.invoke(group, ["tiny", "--family", "llava", "--out", str(out), "--force"]).exit_code == 0
    unknown = runner.invoke(group, ["tiny", "--family", "gpt-5", "--out", str(tmp_path / "x")])
    assert unknown.exit_code != 0 and "qwen2-vl" in unknown.output
    families = runner.invoke(group, ["families"])
    assert families.exit_code == 0 and all(name in families.output for name in FAMILIES)
    missing = runner.invoke(group, ["check", str(tmp_path / "absent")])
    assert missing.exit_code != 0 and "not found locally" in missing.output
    assert "Traceback" not in missing.output


def test_cli_check_in_a_fresh_offline_process(tiny_model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mor_secure.cli",
            "models",
            "check",
            str(tiny_model_dir("qwen2-vl")),
            "--max-new-tokens",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "family:     qwen2-vl" in result.stdout and "238,464" in result.stdout
    assert "generated:  3 tokens" in result.stdout


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_vlm_inputs_scores_pairs_for_every_family(family, tiny_model_dir):
    model, processor = load_vlm(tiny_model_dir(family))
    batch = vlm_inputs(processor, [image(), image("blue")], [PROMPT, PROMPT], [CHOSEN, "blue"])
    assert model(**batch).logits.shape[:2] == batch["input_ids"].shape

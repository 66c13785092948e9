"""Reward-model families: per-pair gradients under Opacus, save/load through safetensors, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mor_secure.rewards import FAMILIES, bradley_terry_loss, build_reward_model, load_reward_model
from mor_secure.rewards.config import ModelSection
from mor_secure.rewards.training import check_pair_grad_samples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B = 3
PROMPT = [
    {
        "role": "user",
        "content": [{"type": "image", "text": None}, {"type": "text", "text": "What colour is the shape?"}],
    }
]


def _answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def pair_batch():
    images = [Image.new("RGB", (64, 64), (40 * i, 200, 30)) for i in range(B)]
    return images, [PROMPT] * B, [_answer("green")] * B, [_answer("It is blue.")] * B


def _model(family: str, tiny_model_dir, **options):
    base = "" if family == "dual-encoder" else str(tiny_model_dir(family))
    return build_reward_model(ModelSection(family=family, base=base, **options), seed=0)


@pytest.mark.parametrize(
    "family,finetune", [("dual-encoder", "lora"), ("qwen2-vl", "lora"), ("llava", "lora"), ("qwen2-vl", "full")]
)
def test_per_sample_gradients_have_one_row_per_pair(family, finetune, tiny_model_dir, pair_batch):
    from opacus import GradSampleModule

    model = _model(family, tiny_model_dir, finetune=finetune).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if family != "dual-encoder":
        assert frozen, "the vision tower must stay frozen"
    module = GradSampleModule(model)
    chosen, rejected = module(**model.encode_pairs(*pair_batch))
    assert chosen.shape == rejected.shape == (B,)
    bradley_terry_loss(chosen, rejected).backward()
    assert all(p.grad_sample.shape[0] == B for p in trainable)
    check_pair_grad_samples(module, B)  # the guard every DP step runs (site training, baselines) passes
    module._close()


def test_guard_catches_a_batch_flattened_to_completions(tiny_model_dir, pair_batch):
    """Scoring chosen and rejected as one [2B] batch gives 2B per-sample rows: the guard refuses it."""
    from opacus import GradSampleModule

    model = _model("dual-encoder", tiny_model_dir).train()
    images, prompts, chosen, rejected = pair_batch
    flat = model.encode(images * 2, prompts * 2, chosen + rejected)
    module = GradSampleModule(model)
    scores = model.score_batch(flat)
    bradley_terry_loss(scores[:B], scores[B:]).backward()
    with pytest.raises(RuntimeError, match="one DP sample must be one preference pair"):
        check_pair_grad_samples(module, B)
    module._close()


@pytest.mark.parametrize("family", ["dual-encoder", "qwen2-vl"])
def test_save_and_load_round_trip_with_safetensors_only(family, tiny_model_dir, pair_batch, tmp_path):
    model = _model(family, tiny_model_dir, lora_rank=4)
    with torch.no_grad():  # make the saved weights differ from a fresh build
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    images, prompts, chosen, _ = pair_batch
    before = model.score(images, prompts, chosen)
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "reward_config.json"]
    loaded = load_reward_model(tmp_path)
    assert type(loaded) is FAMILIES[family]
    assert loaded.score(images, prompts, chosen) == pytest.approx(before, abs=1e-5)
    # plain-text prompts and completions score too (the serving path)
    assert len(loaded.score(images, ["What colour is the shape?"] * B, ["green"] * B)) == B


def test_load_refuses_tampered_folders(tiny_model_dir, tmp_path):
    model = _model("dual-encoder", tiny_model_dir)
    model.save(tmp_path)
    config_path = tmp_path / "reward_config.json"
    config = json.loads(config_path.read_text())
    for bad, match in [
        ({**config, "family": "nope"}, "unknown reward-model family"),
        ({**config, "spec": {**config["spec"], "evil": 1}}, "does not fit"),
        ({**config, "spec": {**config["spec"], "width": 8}}, "shape .*retrain it"),
        ({**config, "format": 9}, "not a reward-model config"),
    ]:
        config_path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            load_reward_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="reward_config.json"):
        load_reward_model(Path(tmp_path) / "missing")


def test_vlm_family_must_match_its_base(tiny_model_dir):
    with pytest.raises(ValueError, match="is a qwen2-vl model, not llava"):
        build_reward_model(ModelSection(family="llava", base=str(tiny_model_dir("qwen2-vl"))))
    with pytest.raises(ValueError, match=r"needs \[model\].base"):
        build_reward_model(ModelSection(family="qwen2-vl", base=""))


def test_dual_encoder_image_features_locate_objects_of_any_colour():
    from mor_secure.rewards.dual_encoder import GRID, IMAGE_FEATURES, LEVELS, image_features

    cells = GRID * GRID
    start = 3 * cells + LEVELS**3  # after the mean colours and the histogram: foreground, then edges
    features = []
    for colour in [(250, 220, 40), (40, 60, 230)]:  # yellow is close to the light background in two channels
        image = Image.new("RGB", (64, 64), (245, 245, 245))
        image.paste(colour, (0, 0, 8, 8))  # exactly the top-left cell of the 8x8 grid
        features.append(image_features([image], 64)[0])
    for row in features:
        assert row.shape == (IMAGE_FEATURES,)
        foreground, edges = row[start : start + cells], row[start + cells :]
        assert foreground[0] == 1 and foreground[1:].sum() == 0  # where the object is, whatever its colour
        assert edges[1] > 0 and edges[GRID] > 0 and edges[cells - 1] == 0  # its outline (right, below), not afar
    assert torch.allclose(features[0][start : start + cells], features[1][start : start + cells])

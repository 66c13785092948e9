"""Tiny random vision-language models built from configs, for tests and the CPU demo.

``build_tiny_vlm(family, out_dir, seed=...)`` writes a folder that ``AutoProcessor`` and
``AutoModelForImageTextToText`` load offline, exactly like a hub checkpoint. Families live in
``FAMILIES`` (name -> builder), so adding one touches no caller.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, ProcessorMixin

from mor_secure.errors import BadInput, OutputExists
from mor_secure.logs import get_logger
from mor_secure.models.processors import image_only
from mor_secure.models.tokenizer import build_tokenizer

log = get_logger("models.zoo")

IMAGE_SIZE = 64
"""Side in pixels of the images the tiny models are made for (the benchmark world draws 64 px)."""

TEXT: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
"""The tiny language model shared by every family (text hidden 64, 2 layers, 4 heads)."""

Builder = Callable[[], tuple[PreTrainedModel, ProcessorMixin]]


def _special_ids(tokenizer: Any) -> dict[str, Any]:
    return dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )


def _token_id(tokenizer: Any, token: str) -> int:
    """The id of one special token (``convert_tokens_to_ids`` of one string is one id)."""
    return int(tokenizer.convert_tokens_to_ids(token))


def _qwen2_vl() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Qwen2-VL: vision depth 2, embed 32, patch 8, 2x2 merge: a 64 px image is 16 tokens."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    names = {
        "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>",
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
    }
    tokenizer = build_tokenizer(
        list(names.values()), "<|vision_start|><|image_pad|><|vision_end|>", extra_attributes=names
    )
    ids: dict[str, Any] = {f"{k}_id": tokenizer.convert_tokens_to_ids(v) for k, v in names.items()}
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    third = head_dim // 2 // 3
    config = Qwen2VLConfig(
        text_config=dict(
            TEXT,
            vocab_size=len(tokenizer),
            **_special_ids(tokenizer),
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [head_dim // 2 - 2 * third, third, third],
            },
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=TEXT["hidden_size"],
            num_heads=2,
            mlp_ratio=2,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        **ids,
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=8,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": (IMAGE_SIZE // 2) ** 2, "longest_edge": IMAGE_SIZE**2},
    )
    processor = image_only(Qwen2VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    return Qwen2VLForConditionalGeneration(config), processor


def _llava() -> tuple[PreTrainedModel, ProcessorMixin]:
    """LLaVA: a tiny CLIP vision tower (2 layers, width 32, patch 8) and a tiny Llama: 64 image tokens."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = build_tokenizer(["<image>"], "<image>", extra_attributes={"image_token": "<image>"})
    patch = 8
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=patch,
        projection_dim=32,
    )
    text = LlamaConfig(**TEXT, vocab_size=len(tokenizer), **_special_ids(tokenizer))
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=_token_id(tokenizer, "<image>"),
        image_seq_length=(IMAGE_SIZE // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    return LlavaForConditionalGeneration(config), processor


def _idefics3() -> tuple[PreTrainedModel, ProcessorMixin]:
    """Idefics3: a tiny SigLIP-style vision tower (patch 8) with 2x2 pixel shuffle and a tiny Llama: 16 image tokens."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = build_tokenizer(
        ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"],
        "<image>",
        extra_attributes={"image_token": "<image>"},
    )
    patch, scale = 8, 2
    vision = Idefics3VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=patch,
    )
    text = LlamaConfig(**TEXT, vocab_size=len(tokenizer), **_special_ids(tokenizer))
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=scale,
        image_token_id=_token_id(tokenizer, "<image>"),
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(IMAGE_SIZE // patch // scale) ** 2,
        chat_template=tokenizer.chat_template,
    )
    return Idefics3ForConditionalGeneration(config), processor


FAMILIES: dict[str, Builder] = {
    "qwen2-vl": _qwen2_vl,
    "llava": _llava,
    "idefics3": _idefics3,
}
"""Model family name -> builder of a random tiny model and its processor."""


def _prepare_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber a folder unless it is a model folder and ``overwrite`` is set."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExists(f"{out_dir} exists and is not a folder; choose another output folder")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / "config.json").is_file() or any(p.is_dir() for p in out_dir.iterdir()):
        raise OutputExists(
            f"{out_dir} is not empty and does not look like a model folder; choose a new or empty output folder"
        )
    if not overwrite:
        raise OutputExists(
            f"{out_dir} already holds a model; replace it with overwrite=True "
            "(`mor models tiny --force`), or choose another output folder"
        )


def build_tiny_vlm(family: str, out_dir: Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Build a random tiny VLM of ``family`` with ``seed`` and save model and processor in ``out_dir``.

    The same family and seed always give identical weights. Returns ``out_dir``.
    """
    if family not in FAMILIES:
        raise BadInput(f"unknown model family {family!r}; known families: {', '.join(FAMILIES)}")
    out_dir = Path(out_dir)
    _prepare_target(out_dir, overwrite)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = FAMILIES[family]()
    tokenizer = processor.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=16,
        do_sample=False,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "built tiny model",
        extra={"family": family, "seed": seed, "parameters": sum(p.numel() for p in model.parameters())},
    )
    return out_dir

"""The one way every part of MoR-Secure takes a vision-language model: local files only.

``load_vlm`` accepts a local folder or a hub id already in the local Hugging Face cache and never
downloads (`local_files_only=True` everywhere); a missing model is a ``ModelNotFoundError`` that
says how to get it. ``vlm_inputs`` turns (image, conversational prompt[, completion]) rows into
model inputs, so reward models and GRPO share one rendering of the chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    PreTrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from mor_secure.errors import MorError
from mor_secure.logs import get_logger
from mor_secure.models.processors import image_only, needs_video_processor

log = get_logger("models.loading")

Message = dict[str, Any]
Conversation = list[Message]


class ModelNotFoundError(MorError, ValueError):
    """A model is neither a local folder nor in the local Hugging Face cache; says how to get it."""


def _not_found(name: str, why: str, *, hub_id: bool) -> ModelNotFoundError:
    fetch = (
        f"pre-download it on a connected machine with `hf download {name}` (formerly "
        f"`huggingface-cli download {name}`) and bring its Hugging Face cache here (HF_HOME), "
        if hub_id
        else ""
    )
    return ModelNotFoundError(
        f"model {name!r} not found locally: {why}. Nothing is downloaded at run time: pass the "
        f"path of a local model folder (the one holding config.json), {fetch}or build a tiny one "
        f"with `mor models tiny --family qwen2-vl --out DIR`."
    )


def resolve_model(name_or_path: str | Path) -> str:
    """The local folder of ``name_or_path``: a model folder, or a hub id's snapshot in the local
    Hugging Face cache (``HF_HUB_CACHE``). Never downloads.
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and (path / "config.json").is_file():
            return str(path.resolve())
        raise _not_found(name, f"{path} exists but is not a model folder (no config.json)", hub_id=False)
    try:
        snapshot = snapshot_download(name, local_files_only=True)
    except HFValidationError:
        raise _not_found(name, "no such folder, and it is not a valid hub id", hub_id=False) from None
    except LocalEntryNotFoundError:
        raise _not_found(name, "no such folder, and not in the local Hugging Face cache", hub_id=True) from None
    if not (Path(snapshot) / "config.json").is_file():
        raise _not_found(name, f"its cached snapshot {snapshot} has no config.json (incomplete download)", hub_id=True)
    return snapshot


def _standard_processor_class(folder: str) -> type[ProcessorMixin] | None:
    """The processor class transformers registers for the folder's model type, if any."""
    name = PROCESSOR_MAPPING_NAMES.get(AutoConfig.from_pretrained(folder, local_files_only=True).model_type)
    return getattr(transformers, name, None) if name else None


def load_processor(name_or_path: str | Path) -> ProcessorMixin:
    """The processor (tokenizer, image processor, chat template) of a local or cached model.

    A processor that needs torchvision only for videos is loaded as its image-only variant.
    """
    folder = resolve_model(name_or_path)
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except ImportError:
        standard = _standard_processor_class(folder)
        if standard is None or not needs_video_processor(standard):
            raise
        processor = image_only(standard).from_pretrained(folder, local_files_only=True)  # type: ignore[arg-type]
    if not isinstance(processor, ProcessorMixin):
        raise ValueError(
            f"{name_or_path}: has no image processor ({type(processor).__name__} only); pass a vision-language model"
        )
    return processor


def load_vlm(
    name_or_path: str | Path, *, dtype: Any = None, device: Any = None
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a vision-language model and its processor from local files (folder or cached hub id).

    ``dtype`` defaults to the checkpoint's own (``"auto"``); ``device`` moves the model there.
    """
    folder = resolve_model(name_or_path)
    processor = load_processor(folder)
    model = AutoModelForImageTextToText.from_pretrained(
        folder, local_files_only=True, dtype="auto" if dtype is None else dtype
    )
    if device is not None:
        model = model.to(device)
    log.info("loaded model", extra={"family": family_of(model), "parameters": count_parameters(model)})
    return model, processor


def family_of(model_or_config: PreTrainedModel | PreTrainedConfig | dict) -> str:
    """The family name of a model or config: its ``model_type`` with dashes (``qwen2_vl`` -> ``qwen2-vl``)."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if not model_type:
        raise ValueError(f"{type(model_or_config).__name__} has no model_type; pass a model or its config")
    return model_type.replace("_", "-")


def count_parameters(model: PreTrainedModel) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _as_image_list(images: Image.Image | Sequence[Image.Image] | None) -> list[Image.Image]:
    if images is None:
        return []
    return [images] if isinstance(images, Image.Image) else list(images)


def _answer_message(completion: str | Conversation) -> Conversation:
    return [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)


def vlm_inputs(
    processor: ProcessorMixin,
    images: Sequence[Image.Image | Sequence[Image.Image] | None],
    prompts: Sequence[Conversation],
    completions: Sequence[str | Conversation] | None = None,
    *,
    padding_side: str = "left",
) -> BatchFeature:
    """Tensors for a batch of (image(s), conversational prompt[, completion]) rows.

    Without ``completions`` each prompt ends with the generation prompt (ready for ``generate``);
    with them each row is the whole exchange, the completion rendered as the assistant's turn (a
    string, or assistant messages as in TRL's ``chosen``). ``images[i]`` is one PIL image, a list,
    or None, and fills the image parts of ``prompts[i]`` in order.
    """
    if len(images) != len(prompts) or (completions is not None and len(completions) != len(prompts)):
        raise ValueError(
            f"vlm_inputs: {len(images)} images, {len(prompts)} prompts and "
            f"{'no' if completions is None else len(completions)} completions; "
            "pass one of each per row"
        )
    if completions is None:
        texts = [processor.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False) for p in prompts]
    else:
        texts = [
            processor.apply_chat_template([*p, *_answer_message(c)], tokenize=False)
            for p, c in zip(prompts, completions)
        ]
    per_row = [_as_image_list(i) for i in images]
    return processor(
        images=per_row if any(per_row) else None,
        text=texts,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    )

"""VLM reward models (``qwen2-vl``, ``llava``): a vision-language backbone loaded by local path or
cached hub id, a scalar head on the last token's hidden state, LoRA (PEFT) or full fine-tuning of
the language model; the vision tower always stays frozen.

Frozen vision is not only cheaper: Qwen2-VL's vision tower packs the patches of all images into
one sequence with no batch dimension, so per-sample gradients there would not be per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from mor_secure.rewards.base import Batch, RewardModel, Text

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
FINETUNE_MODES = ("lora", "full")


def as_conversation(prompt: Text) -> list[dict[str, Any]]:
    """A conversational prompt; plain text becomes one user turn with the image first."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return list(prompt)


class VLMReward(RewardModel):
    """r(image, prompt, completion) = head(h_last), h_last = the backbone's hidden state at the last token."""

    family = ""

    def __init__(self, *, base: str, finetune: str = "lora", lora_rank: int = 8, lora_alpha: float = 16.0,
                 lora_targets: Sequence[str] = DEFAULT_TARGETS, max_length: int = 256, seed: int = 0) -> None:
        super().__init__(dict(base=base, finetune=finetune, lora_rank=lora_rank, lora_alpha=lora_alpha,
                              lora_targets=list(lora_targets), max_length=max_length, seed=seed))
        from mor_secure.models.loading import family_of, load_vlm

        if not base:
            raise ValueError(f"family {self.family!r} needs [model].base: a local model folder or a hub id "
                             "in the local cache (`mor models tiny --family ...` builds a tiny one)")
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"[model].finetune must be one of {FINETUNE_MODES}, got {finetune!r}")
        vlm, self.processor = load_vlm(base)
        if family_of(vlm) != self.family:
            raise ValueError(f"{base} is a {family_of(vlm)} model, not {self.family}; set [model].family "
                             f"= {family_of(vlm)!r} or point [model].base at a {self.family} model")
        self.max_length = max_length
        self.backbone = vlm.model  # the multimodal model without its language-model head
        self.backbone.requires_grad_(False)
        language = self.backbone.language_model
        torch.manual_seed(seed)
        if finetune == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0,
                                               target_modules=list(lora_targets), bias="none"), language)
        else:
            language.requires_grad_(True)
        self.head = nn.Linear(language.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=language.config.hidden_size ** -0.5)
        nn.init.zeros_(self.head.bias)

    def encode(self, images: Sequence[Image.Image], prompts: Sequence[Text],
               completions: Sequence[Text]) -> Batch:
        from mor_secure.models.loading import vlm_inputs

        batch = vlm_inputs(self.processor, list(images), [as_conversation(p) for p in prompts],
                           list(completions), padding_side="left")
        if batch["input_ids"].shape[1] > self.max_length:
            raise ValueError(f"an input has {batch['input_ids'].shape[1]} tokens, more than "
                             f"[model].max_length = {self.max_length}; shorten it or raise the limit")
        return dict(batch)

    def score_batch(self, batch: Batch) -> torch.Tensor:
        hidden = self.backbone(**batch, use_cache=False).last_hidden_state
        mask = batch["attention_mask"]
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * mask).argmax(dim=1)  # the last real token, whatever the padding side
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1)


class Qwen2VLReward(VLMReward):
    """Reward model on a Qwen2-VL backbone."""

    family = "qwen2-vl"


class LlavaReward(VLMReward):
    """Reward model on a LLaVA backbone."""

    family = "llava"

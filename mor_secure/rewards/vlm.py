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

from mor_secure.config import ConfigError
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

    def __init__(
        self,
        *,
        base: str,
        finetune: str = "lora",
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_targets: Sequence[str] = DEFAULT_TARGETS,
        max_length: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(
            dict(
                base=base,
                finetune=finetune,
                lora_rank=lora_rank,
                lora_alpha=lora_alpha,
                lora_targets=list(lora_targets),
                max_length=max_length,
                seed=seed,
            )
        )
        from mor_secure.models.loading import family_of, load_vlm

        if not base:
            raise ConfigError(
                f"family {self.family!r} needs [model].base: a local model folder or a hub id "
                "in the local cache (`mor models tiny --family ...` builds a tiny one)"
            )
        if finetune not in FINETUNE_MODES:
            raise ConfigError(f"[model].finetune must be one of {FINETUNE_MODES}, got {finetune!r}")
        vlm, self.processor = load_vlm(base)
        if family_of(vlm) != self.family:
            raise ConfigError(
                f"{base} is a {family_of(vlm)} model, not {self.family}; set [model].family "
                f"= {family_of(vlm)!r} or point [model].base at a {self.family} model"
            )
        self.max_length = max_length
        self.backbone = vlm.model  # the multimodal model without its language-model head
        self.backbone.requires_grad_(False)
        language = self.backbone.language_model
        torch.manual_seed(seed)
        if finetune == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(
                LoraConfig(
                    r=lora_rank,
                    lora_alpha=lora_alpha,  # type: ignore[arg-type]  # peft scales by alpha / r: a float is fine
                    lora_dropout=0.0,
                    target_modules=list(lora_targets),
                    bias="none",
                ),
                language,
            )
        else:
            language.requires_grad_(True)
        self.head = nn.Linear(language.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=language.config.hidden_size**-0.5)
        nn.init.zeros_(self.head.bias)

    def encode(self, images: Sequence[Image.Image], prompts: Sequence[Text], completions: Sequence[Text]) -> Batch:
        """Model inputs of N triples; text past [model].max_length tokens is cut from the start of the
        question and of the answer, so the reward model sees their ends (see ``rewards.truncation``)."""
        from mor_secure.models.loading import vlm_inputs

        pairs = [self._truncate(as_conversation(p), c) for p, c in zip(prompts, completions)]
        answers = [c if isinstance(c, str) else list(c) for _, c in pairs]
        batch = vlm_inputs(self.processor, list(images), [p for p, _ in pairs], answers, padding_side="left")
        return dict(batch)

    def _truncate(self, prompt: list[dict[str, Any]], completion: Text) -> tuple[list[dict[str, Any]], Text]:
        """(prompt, completion) whose text tokens fit max_length together, each keeping its end."""
        from mor_secure.data.schema import answer_text, assistant_message, question_text
        from mor_secure.rewards.truncation import split_budget

        tokenizer = self.processor.tokenizer
        question, answer = question_text(prompt), answer_text(completion)
        q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        keep_q, keep_a = split_budget(len(q_ids), len(a_ids), self.max_length)
        if keep_q == len(q_ids) and keep_a == len(a_ids):
            return prompt, completion
        if keep_q < len(q_ids):
            text = tokenizer.decode(q_ids[len(q_ids) - keep_q :]) if keep_q else ""
            prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        if keep_a < len(a_ids):
            completion = assistant_message(tokenizer.decode(a_ids[len(a_ids) - keep_a :]) if keep_a else "")
        return prompt, completion

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

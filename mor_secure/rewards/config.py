"""The [model] section: which reward-model family to build and how (a site's client.toml and the
coordinator's in-process baselines share it)."""

from __future__ import annotations

from dataclasses import dataclass

from mor_secure.config import Section, field


@dataclass
class ModelSection(Section):
    """Which reward-model family to build, on which backbone, and what of it trains."""

    family: str = field("dual-encoder", help="Reward-model family: 'qwen2-vl', 'llava' or 'dual-encoder'.")
    base: str = field(
        "",
        help="Backbone: a local path or a hub id already in the local cache; may be "
        "empty for families that build from scratch. A saved reward-model folder of "
        "the same family (`mor coordinator public-reward`) starts training from its "
        "weights, and its saved settings (width, ...) win over this section's.",
    )
    finetune: str = field(
        "full",
        help="VLM families: 'full' (every language-model weight; measured far "
        "stronger than LoRA r8 under DP on small VLMs) or 'lora' (adapters on "
        "the language model, less memory for large ones). The vision tower "
        "stays frozen.",
    )
    lora_rank: int = field(8, help="LoRA rank r (VLM families, finetune = 'lora').", ge=1)
    lora_alpha: float = field(16.0, help="LoRA scaling alpha; the update is scaled by alpha / r.", gt=0)
    lora_targets: list[str] = field(
        help="Language-model linear layers that get LoRA adapters (attention "
        "by default; adding the MLP's gate_proj/up_proj/down_proj costs "
        "more DP overhead per step).",
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    max_length: int = field(
        256,
        help="Most text tokens of question plus answer (VLM families; image and "
        "template tokens come on top) or characters of each text (dual-encoder). "
        "Longer texts are cut from their start, so the END of each answer is kept; "
        "`mor data check` reports how many pairs are cut, training logs it.",
        ge=1,
    )
    width: int = field(
        128,
        help="dual-encoder: width of the image and text encoders (32 sat on a plateau at "
        "chance on wrong-answer pairs).",
        ge=1,
    )
    image_size: int = field(64, help="dual-encoder: images are resized to this square side in pixels.", ge=8)

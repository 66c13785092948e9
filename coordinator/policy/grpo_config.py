"""Settings of a GRPO run of the coordinator's policy: the [grpo] section of coordinator.toml.

Defaults are the ones measured on CPU with the tiny VLM and the federation's learned rewards: beta 0.3
against the saved warm start with a spread penalty of 1 (at beta 0.04 without it the MoR reward was
over-optimised and the policy fell from 40.7% to 24.7%; with both it rose to 48.0%), 8 generations, 64
completions per step, constant lr 3e-4, temperature 1.0, at most 8 new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mor_secure.config import Section, field

SCALE_REWARDS = ("group", "batch", "none")
"""How TRL may scale rewards into advantages."""


@dataclass
class GRPORunConfig(Section):
    """One GRPO run: which policy, which reward, how long, where it writes (TRL GRPOConfig underneath)."""

    policy: str = field(
        "",
        help="The policy to train: a saved model folder (the SFT warm start) or a hub id "
        "in the local cache. With beta > 0 TRL reloads the frozen reference from "
        "this same path, so it must be a saved model, not an in-memory one.",
    )
    data: Path | None = field(
        None,
        help="Prompts to train on: a saved data set with image and prompt "
        "columns (and answer, for the oracle reward), e.g. `mor coordinator "
        "public-data` output.",
        path=True,
    )
    reward: str = field(
        "oracle",
        help="Reward: 'oracle' (ground truth: +1 correct, +0.25 concise; needs an "
        "answer column), 'mor' (the router's mixture over the live agents), "
        "'uniform', 'single:<site>', or a registered baseline ('fedavg', "
        "'centralised').",
    )
    mixture: Path | None = field(
        None,
        help="The mixture bundle (router + calibration) of `mor coordinator "
        "router`, read by 'mor', 'uniform' and 'single:<site>'; default "
        "[router] out/mixture.",
        path=True,
    )
    wait_s: float = field(
        60.0,
        help="Seconds to wait for every allowed agent before training starts with a "
        "client-score reward (at least `quorum` must be live).",
        ge=0,
    )
    out: Path = field(
        "grpo-run", help="Output folder: checkpoints, TensorBoard logs (runs/), final policy (policy/).", path=True
    )
    steps: int = field(300, help="Optimizer steps (each on `batch_size` completions).", ge=1)
    beta: float = field(
        0.3,
        help="KL penalty to the frozen reference (0 disables it and the reference). Learned "
        "rewards need a strong one: at 0.04 the policy drifted to outputs no site had "
        "judged and lost accuracy.",
        ge=0,
    )
    num_generations: int = field(8, help="Completions sampled per prompt (the GRPO group size).", ge=2)
    batch_size: int = field(64, help="Completions per device per step; must be a multiple of num_generations.", ge=2)
    lr: float = field(
        3e-4,
        help="AdamW learning rate (3e-4 with a constant schedule learned on the tiny VLM; 1e-3 collapsed it).",
        gt=0,
    )
    lr_scheduler: str = field(
        "constant",
        help="Learning-rate schedule (a transformers scheduler name): "
        "'constant' by default, because TRL's 'linear' decays to 0 and "
        "a short run then spends its second half barely learning.",
    )
    scale_rewards: str = field(
        "batch",
        help="How TRL scales rewards into advantages: 'batch' (by the batch's "
        "standard deviation: a prompt on which the sites' scores barely "
        "differ gets a small push), 'group' (TRL's default: every group "
        "to unit spread, which blows a weak site's noise up to a full "
        "push) or 'none'.",
        choices=SCALE_REWARDS,
    )
    max_completion_length: int = field(8, help="Most new tokens per completion.", ge=1)
    temperature: float = field(
        1.0,
        help="Sampling temperature of the completions (1.0; lower starves groups of variety and so of advantage).",
        gt=0,
    )
    lora: bool = field(
        False,
        help="Train LoRA adapters on the language model (PEFT) instead of every weight; "
        "the reference is then the base with adapters disabled.",
    )
    lora_rank: int = field(8, help="LoRA rank r when lora = true.", ge=1)
    lora_alpha: float = field(16.0, help="LoRA scaling alpha when lora = true.", gt=0)
    logging_steps: int = field(10, help="Log reward, KL and telemetry every N steps.", ge=1)
    save_steps: int = field(100, help="Write a checkpoint every N steps (resume continues from the last).", ge=1)
    save_total_limit: int = field(2, help="Keep at most this many checkpoints.", ge=1)
    report_to: str = field("tensorboard", help="Where metrics go: 'tensorboard' (out/runs) or 'none'.")
    seed: int = field(0, help="Seed of sampling and initialisation.")
    spread_penalty: float = field(
        1.0,
        help="Client-score rewards: subtract this multiple of the sites' weighted "
        "disagreement (standard deviation of their calibrated scores) from "
        "the fused reward, so the policy cannot climb where only one site "
        "is fooled (0 = plain fusion).",
        ge=0,
    )
    image_contrast: bool = field(
        True,
        help="Client-score rewards: each site scores a completion against its "
        "image minus another prompt's image in the batch, so an answer the "
        "sites favour whatever the image shows earns nothing (the sites "
        "score twice the items). Off, GRPO drove the tiny policy to one "
        "answer per question type.",
    )
    quorum: int = field(
        1,
        help="Fewest answering agents for a completion's reward to count; below it the "
        "reward is None and the completion is left out of its group.",
        ge=1,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of num_generations "
                f"{self.num_generations}; the batch counts completions, so make it one"
            )
        self.out = Path(self.out)

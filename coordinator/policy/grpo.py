"""GRPO of the coordinator's policy with a KL penalty, on TRL's GRPOTrainer.

``run_grpo(cfg, reward_funcs, train_dataset)`` trains the saved policy ``cfg.policy`` with the
rewards given as Python callables (they receive the ``image`` column, which a reward given as an
``nn.Module`` never sees). With ``beta > 0`` TRL reloads the frozen reference from the policy's
saved path. No device is hard-coded: the same code runs on CPU, on a GPU, and under
``accelerate launch``. Every reward is wrapped so that ``None`` rewards (too few agents
answered) reach TRL as None and are counted, and rewards following :class:`RewardTelemetry`
get their ``last_stats()`` logged beside TRL's reward and KL.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from coordinator.policy.grpo_config import GRPORunConfig
from mor_secure import events
from mor_secure.config import ConfigError
from mor_secure.data.schema import DataError
from mor_secure.errors import MissingInput, OutputExists
from mor_secure.logs import get_logger

log = get_logger("coordinator.policy.grpo")

RewardFunc = Callable[..., list[float | None]]

UNSCORED_METRIC = "telemetry/unscored_completions"
"""Logged per step and reward: completions whose reward was None (fewer than quorum agents answered)."""


@runtime_checkable
class RewardTelemetry(Protocol):
    """A reward callable that reports scalars about its last call (weights per client, agents live ...).

    ``last_stats()`` returns ``{name: value}``; each lands in TensorBoard as ``telemetry/<name>``
    (averaged over a logging window, gathered over processes).
    """

    def last_stats(self) -> dict[str, float]:
        """Scalars describing the last batch this reward scored."""


def with_telemetry(reward: RewardFunc) -> RewardFunc:
    """Wrap ``reward`` so each call logs its None count and ``last_stats()`` through TRL's ``log_metric``.

    TRL hands every reward function a ``log_metric(name, value)`` callback whose values it averages
    per logging step and writes with reward and KL (to every ``report_to`` target), so the
    telemetry needs no extra TrainerCallback and stays correct under ``accelerate launch``.
    """
    name = getattr(reward, "__name__", type(reward).__name__)

    @functools.wraps(reward)
    def wrapped(*args: Any, **kwargs: Any) -> list[float | None]:
        rewards = list(reward(*args, **kwargs))
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            log_metric(f"{UNSCORED_METRIC}/{name}", float(sum(r is None for r in rewards)))
            if isinstance(reward, RewardTelemetry):
                for key, value in reward.last_stats().items():
                    log_metric(f"telemetry/{key}", float(value))
        return rewards

    wrapped.__name__ = name
    return wrapped


def _drop_pickled_args_callback() -> Any:
    """A TrainerCallback deleting the pickled ``training_args.bin`` of each checkpoint (we never unpickle).

    Resuming needs only the safetensors weights and the optimizer, scheduler and RNG states
    (which transformers loads with ``weights_only=True``).
    """
    from transformers import TrainerCallback

    class DropPickledArgs(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                (Path(args.output_dir) / f"checkpoint-{state.global_step}" / "training_args.bin").unlink(
                    missing_ok=True
                )

    return DropPickledArgs()


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` folder in ``out``, or None. The trainer writes trainer_state.json
    last, so a folder without it was cut short (the coordinator killed mid-save) and is not resumed from."""
    if not out.is_dir():
        return None
    complete = [
        p for p in out.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def prompt_dataset(data: Any) -> Any:
    """The GRPO training rows from a data set (or its folder): image and prompt, plus any reward columns.

    Supervised ``completion`` columns are dropped: GRPO samples its own.
    """
    from coordinator.policy.sft import load_rows

    rows = load_rows(data)
    missing = {"image", "prompt"} - set(rows.column_names)
    if missing:
        raise DataError(
            f"the GRPO data lacks column(s) {', '.join(sorted(missing))}; it needs a conversational "
            "prompt and an image per row"
        )
    return rows.remove_columns([c for c in ("completion",) if c in rows.column_names])


def trl_config(cfg: GRPORunConfig, suppress_tokens: Sequence[int] = ()) -> Any:
    """The TRL ``GRPOConfig`` of a run (CPU-safe precision, no vLLM, checkpoints and TensorBoard in ``cfg.out``).

    ``suppress_tokens`` are never sampled (special tokens other than end-of-turn).
    """
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(cfg.out),
        max_steps=cfg.steps,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        beta=cfg.beta,
        num_generations=cfg.num_generations,
        scale_rewards=cfg.scale_rewards,
        per_device_train_batch_size=cfg.batch_size,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        seed=cfg.seed,
        bf16=False,
        use_vllm=False,
        gradient_checkpointing=False,
        disable_tqdm=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        generation_kwargs={"suppress_tokens": list(suppress_tokens)} if suppress_tokens else None,
    )


def run_grpo(
    cfg: GRPORunConfig,
    reward_funcs: RewardFunc | Sequence[RewardFunc],
    train_dataset: Any,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train ``cfg.policy`` with GRPO on ``train_dataset`` and save the final policy to ``cfg.out/policy``.

    ``reward_funcs``: one or more TRL reward callables. ``resume=True`` continues from the last
    checkpoint in ``cfg.out`` (optimizer, schedule and global step included); without it an
    existing checkpoint is refused rather than silently overwritten. Returns the policy folder,
    loadable by :func:`mor_secure.models.load_vlm`.
    """
    from trl import GRPOTrainer

    from coordinator.policy.evaluation import suppressed_tokens
    from mor_secure.models import load_processor, resolve_model

    if not cfg.policy:
        raise ConfigError("no policy to train: set [grpo] policy to the saved warm start (`mor coordinator sft`)")
    policy = resolve_model(cfg.policy)
    last = last_checkpoint(cfg.out)
    if resume and last is None:
        raise MissingInput(
            f"nothing to resume in {cfg.out}: it holds no checkpoint-N folder with a "
            "trainer_state.json; run without --resume to start"
        )
    if not resume and last is not None:
        raise OutputExists(
            f"{cfg.out} already holds {last.name}; pass --resume to continue it, or choose a new [grpo] out folder"
        )
    funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            task_type="CAUSAL_LM",
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|"
            r"up_proj|down_proj)",
        )
    model: Any = policy
    if resume and not cfg.lora:
        # transformers resumes with load_state_dict(strict=False), which silently skips weights saved under
        # their checkpoint names (all of Qwen2-VL's language model): load the checkpoint with from_pretrained,
        # and keep the warm start as the reference TRL reloads from config._name_or_path.
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(last, local_files_only=True, dtype="auto")
        model.config._name_or_path = policy
    processor = load_processor(policy)
    processor.tokenizer.padding_side = "left"  # TRL pads prompts left and re-processes them with this processor
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[with_telemetry(f) for f in funcs],
        args=trl_config(cfg, suppressed_tokens(processor)),
        train_dataset=prompt_dataset(train_dataset),
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[_drop_pickled_args_callback(), *callbacks],
    )
    log.info(
        events.GRPO_START,
        extra={
            "steps": cfg.steps,
            "beta": cfg.beta,
            "rewards": len(funcs),
            "resume_from": last.name if resume else "-",
        },
    )
    trainer.train(resume_from_checkpoint=str(last) if resume else None)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.lora:
        model = model.merge_and_unload()
    out = cfg.out / "policy"
    if trainer.accelerator.is_main_process:
        model.save_pretrained(out)
        processor.save_pretrained(out)
    trainer.accelerator.wait_for_everyone()
    log.info(events.GRPO_DONE, extra={"global_step": trainer.state.global_step, "policy": str(out)})
    return out

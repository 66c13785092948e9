"""GRPO with the oracle reward on the tiny Qwen2-VL: it learns, logs KL and telemetry, checkpoints, resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coordinator.policy.grpo import UNSCORED_METRIC, RewardTelemetry, run_grpo
from coordinator.policy.grpo_config import GRPORunConfig
from coordinator.policy.oracle import OracleReward
from coordinator.policy.sft import run_sft

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def warm_start(tiny_model_dir, public_data, tmp_path_factory) -> Path:
    """A briefly warm-started policy that emits answer words, so oracle rewards vary within groups."""
    return run_sft(
        tiny_model_dir("qwen2-vl"),
        public_data,
        tmp_path_factory.mktemp("warm") / "policy",
        steps=30,
        batch_size=32,
        lr=5e-3,
        seed=0,
    )


def _config(policy: Path, out: Path, steps: int) -> GRPORunConfig:
    # 4 prompts per step: questions of different lengths, so TRL's left padding is exercised
    return GRPORunConfig(
        policy=str(policy),
        out=out,
        steps=steps,
        batch_size=32,
        num_generations=8,
        max_completion_length=6,
        logging_steps=1,
        save_steps=2,
        lr=1e-3,
        report_to="tensorboard",
    )


def _history(out: Path) -> list[dict]:
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())["log_history"]


def test_grpo_learns_logs_kl_checkpoints_and_resumes(warm_start, public_data, tmp_path):
    out = tmp_path / "run"
    policy = run_grpo(_config(warm_start, out, steps=2), OracleReward(), public_data)
    before, after = load_file(warm_start / "model.safetensors"), load_file(policy / "model.safetensors")
    assert any((before[k] - after[k]).abs().max() > 0 for k in before)
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    assert not (out / "checkpoint-2" / "training_args.bin").exists()
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    steps = [h for h in _history(out) if "kl" in h]
    assert [h["step"] for h in steps] == [1, 2]
    assert steps[-1]["kl"] > 0
    assert len({h["learning_rate"] for h in steps}) == 1  # constant schedule: TRL's default decays to 0
    assert "telemetry/oracle/accuracy" in steps[-1] and steps[-1][f"{UNSCORED_METRIC}/oracle"] == 0

    with pytest.raises(FileExistsError, match="--resume"):
        run_grpo(_config(warm_start, out, steps=4), OracleReward(), public_data)
    from transformers import AutoModelForImageTextToText, TrainerCallback

    class FirstWeights(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    probe = FirstWeights()
    run_grpo(_config(warm_start, out, steps=4), OracleReward(), public_data, resume=True, callbacks=[probe])
    assert [h["step"] for h in _history(out) if "kl" in h] == [1, 2, 3, 4]
    saved = AutoModelForImageTextToText.from_pretrained(out / "checkpoint-2").state_dict()
    assert probe.weights.keys() == saved.keys()
    assert all(torch.equal(probe.weights[k], saved[k]) for k in saved)  # resumed from the checkpoint's weights
    reference = AutoModelForImageTextToText.from_pretrained(warm_start).state_dict()
    assert not all(torch.equal(probe.weights[k], reference[k]) for k in reference)


def test_none_rewards_are_left_out_and_counted(warm_start, public_data, tmp_path):
    class PartialReward(OracleReward):
        """The oracle with every third completion unscored (as when too few agents answer)."""

        __name__ = "partial"

        def __call__(self, prompts, completions, **kwargs):
            values = super().__call__(prompts, completions, **kwargs)
            return [None if i % 3 == 0 else v for i, v in enumerate(values)]

    assert isinstance(PartialReward(), RewardTelemetry)
    out = tmp_path / "run"
    run_grpo(_config(warm_start, out, steps=2), PartialReward(), public_data)
    logged = [h for h in _history(out) if "kl" in h]
    assert logged and all(h[f"{UNSCORED_METRIC}/partial"] == 11 for h in logged)  # 32 completions: 0, 3, ..., 30


def test_resume_without_checkpoint_is_refused(warm_start, public_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_grpo(_config(warm_start, tmp_path / "empty", steps=2), OracleReward(), public_data, resume=True)


def test_config_refuses_a_batch_that_does_not_divide_into_groups():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        GRPORunConfig(policy="x", batch_size=12, num_generations=8)
    with pytest.raises(ValueError, match="spread_penalty"):
        GRPORunConfig(policy="x", spread_penalty=-0.5)
    with pytest.raises(ValueError, match="scale_rewards must be one of 'group', 'batch', 'none', got 'prompt'"):
        GRPORunConfig(policy="x", scale_rewards="prompt")


def test_trl_config_carries_the_advantage_scaling():
    from coordinator.policy.grpo import trl_config

    assert trl_config(GRPORunConfig(policy="x", out="o")).scale_rewards == "batch"  # the default: see its help
    assert trl_config(GRPORunConfig(policy="x", out="o", scale_rewards="group")).scale_rewards == "group"


def test_grpo_command_reads_the_grpo_section_and_refuses_unknown_rewards(tmp_path):
    from click.testing import CliRunner

    from coordinator.commands import group
    from coordinator.config import load_coordinator_config

    config = tmp_path / "coordinator.toml"
    config.write_text(
        'name = "coord"\n[tls]\nca = "ca.pem"\ncert = "c.pem"\nkey = "c.key"\ncrl = "crl.pem"\n'
        '[grpo]\npolicy = "warm"\ndata = "prompts"\nsteps = 3\nreward = "mixture"\n'
    )
    cfg = load_coordinator_config(config).grpo
    assert (cfg.steps, cfg.beta, cfg.data, cfg.out) == (3, 0.3, tmp_path / "prompts", tmp_path / "grpo-run")
    assert (cfg.spread_penalty, cfg.lr_scheduler) == (1.0, "constant")
    result = CliRunner().invoke(group, ["grpo", "--config", str(config)])
    assert result.exit_code != 0 and "oracle" in result.output and "Traceback" not in result.output

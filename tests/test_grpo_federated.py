"""GRPO with the federated MoR reward: three `mor client serve` processes (tiny DP dual-encoders) over mutual
TLS, the router trained from their scores, then `mor coordinator grpo` changes the policy, logs KL and
routing telemetry, and survives one agent killed with SIGKILL mid-run. Also the reward names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from coordinator.policy.rewards import RewardContext, RewardError, build_reward, needs_federation, reward_names
from mor_secure import pki

pytestmark = pytest.mark.slow
SITES = ["client-0", "client-1", "client-2"]


def _tls(ca: Path, name: str) -> str:
    return f'[tls]\nca = "{ca}/ca.pem"\ncert = "{ca}/{name}.pem"\nkey = "{ca}/{name}.key"\ncrl = "{ca}/crl.pem"\n'


def _client_toml(root: Path, ca: Path, world: Path, site: str, endpoint: str) -> Path:
    path = root / f"{site}.toml"
    path.write_text(
        f'site = "{site}"\n'
        + _tls(ca, site)
        + f'[coordinator]\nendpoint = "{endpoint}"\nname = "coord"\nheartbeat_s = 0.5\n'
        "idle_timeout_s = 2.0\nconnect_timeout_s = 3.0\nbackoff_max_s = 0.5\n"
        f'[data]\npath = "{world / site}"\nmax_pairs = 48\n'
        f'[train]\nout = "{root / site}-model"\nepochs = 1\nbatch_size = 16\nlr = 0.01\n'
        f'[privacy]\ntarget_epsilon = 8.0\nmax_epsilon = 100.0\nledger = "{root / site}-budget.jsonl"\n'
    )
    return path


def _scoring_sessions(ledger: Path, site: str | None = None) -> int:
    if not ledger.exists():
        return 0
    entries = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    return sum(e["kind"] == "scoring_session" and (site is None or site in json.dumps(e)) for e in entries)


def test_reward_names_build_and_refuse_clearly(tmp_path):
    assert {"oracle", "mor", "uniform", "single"} <= set(reward_names())
    assert not needs_federation(build_reward("oracle", RewardContext(None)))
    with pytest.raises(RewardError, match="mor coordinator router"):
        build_reward("mor", RewardContext(tmp_path / "nowhere"))
    with pytest.raises(RewardError, match="single:<site>"):
        build_reward("nonsense", RewardContext(None))
    with pytest.raises(RewardError, match="needs a site"):
        build_reward("single", RewardContext(tmp_path))


def test_grpo_with_the_mor_reward_over_tls_survives_a_killed_agent(world_dir, tiny_model_dir, public_data, tmp_path):
    from client_agent.config import load_client_config
    from client_agent.train import train_reward_model
    from coordinator.commands import group as coordinator_group
    from coordinator.config import load_coordinator_config
    from coordinator.mixture.router_run import run_router
    from mor_secure.demo.pipeline import free_port

    ca = tmp_path / "ca"
    pki.init_ca(ca)
    pki.issue(ca, role="coordinator", name="coord")
    for site in SITES:
        pki.issue(ca, role="client", name=site)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    configs = [_client_toml(tmp_path, ca, world_dir, site, endpoint) for site in SITES]
    for config in configs:
        train_reward_model(load_client_config(config), progress=False, new_ledger=True)
    policy = tiny_model_dir("qwen2-vl")
    coordinator = tmp_path / "coordinator.toml"
    coordinator.write_text(
        f'name = "coord"\nbind = "{endpoint}"\n'
        + _tls(ca, "coord")
        + f"[clients]\nallow = {SITES!r}\nquorum = 2\ndeadline_s = 5.0\nheartbeat_s = 0.5\n"
        + "[pool]\ncooldown_s = 60.0\n"
        + f'[router]\npolicy = "{policy}"\ndata = "{world_dir / "server" / "router"}"\nmax_pairs = 12\n'
        f'epochs = 5\nout = "{tmp_path / "router"}"\nwait_s = 60\n'
        + f'[grpo]\npolicy = "{policy}"\ndata = "{public_data}"\nreward = "mor"\nout = "{tmp_path / "grpo"}"\n'
        "steps = 4\nbatch_size = 16\nnum_generations = 8\nmax_completion_length = 6\nlr = 1e-3\n"
        "logging_steps = 1\nsave_steps = 4\nquorum = 3\nwait_s = 60\n"
    )
    ledger = load_coordinator_config(coordinator).ledger.path
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    agents = [
        subprocess.Popen(
            [sys.executable, "-m", "mor_secure.cli", "client", "serve", "--config", str(c)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        for c in configs
    ]
    victim = agents[2]
    try:
        run_router(load_coordinator_config(coordinator))
        scored_before = _scoring_sessions(ledger)

        def kill_after_first_step() -> None:  # SIGKILL client-2 once every site has scored a GRPO batch
            deadline = time.monotonic() + 120
            while _scoring_sessions(ledger) < scored_before + 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(victim.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_after_first_step, daemon=True)
        killer.start()
        result = CliRunner().invoke(coordinator_group, ["grpo", "--config", str(coordinator)])
        killer.join(timeout=5)
    finally:
        for proc in agents:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in agents:
            proc.wait(timeout=30)
    assert result.exit_code == 0, result.output
    assert victim.returncode == -signal.SIGKILL
    assert all(proc.returncode == 0 for proc in agents[:2])
    before = load_file(policy / "model.safetensors")
    after = load_file(tmp_path / "grpo" / "policy" / "model.safetensors")
    assert any((before[k] - after[k]).abs().max() > 0 for k in before)
    history = json.loads((tmp_path / "grpo" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "kl" in h]
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    assert any(h["kl"] > 0 for h in steps)
    assert steps[0]["telemetry/agents_live"] == 3 and steps[0]["telemetry/unscored"] == 0
    assert abs(sum(steps[0][f"telemetry/weight/{s}"] for s in SITES) - 1) < 1e-4
    assert steps[-1]["telemetry/weight/client-2"] == 0  # the dead site gets no routing weight
    # quorum 3: once client-2 is dead, completions get no reward (None), the run goes on and counts them
    assert steps[-1]["telemetry/unscored"] == 1 and steps[-1]["telemetry/unscored_completions/mor"] == 16
    assert _scoring_sessions(ledger, "client-0") > _scoring_sessions(ledger, "client-2")

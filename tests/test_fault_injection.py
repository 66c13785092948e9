"""Fault injection (benchmarks/fault_injection.py) with tiny sizes: during one federated GRPO run over mutual
TLS an agent is killed and restarted, one is stalled past the deadline, a site's certificate is revoked, rogue
peers flood the port and the coordinator is killed and resumed; every fault's checks and the checks after the
run (finished at the planned step, ledger verifies, epsilons match the sites' reports) must hold."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def faults():
    from benchmarks import fault_injection

    return fault_injection


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_a_federated_grpo_run_survives_every_fault(faults, world_dir, tiny_model_dir, public_data, tmp_path):
    inputs = faults.Inputs(world_dir, tiny_model_dir("qwen2-vl"), public_data)
    scene = faults.Scene(tmp_path / "run", inputs, faults.Sizes(steps=80, save_steps=5))
    scenario = faults.default_faults()
    result = faults.run_scenario(scene, scenario)
    table = "\n".join(faults.table([*result.outcomes, *result.after]))
    assert [o.fault for o in result.outcomes] == [f.name for f in scenario]
    for row in [*result.outcomes, *result.after]:
        assert row.passed, f"{row.fault}: {row.problems}\n{table}"
    assert result.passed
    names = {o.fault for o in result.after}
    assert {"run finished", "ledger verifies", "epsilon of client-0", "epsilon of client-2"} <= names
    # the processes the faults acted on ended as the faults say
    kill, stall, revocation, _, coordinator_kill = scenario
    assert kill.returncode == coordinator_kill.returncode == -9
    assert revocation.first_exit == revocation.redial_exit == 1
    assert stall.steps_while_stalled > 0


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tiny_model_dir, tmp_path):
    from coordinator.policy.grpo import last_checkpoint, run_grpo
    from coordinator.policy.grpo_config import GRPORunConfig

    out = tmp_path / "grpo"
    assert last_checkpoint(out) is None
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "model.safetensors").write_bytes(b"torn")  # killed mid-save: no trainer_state.json
    cfg = GRPORunConfig(policy=str(tiny_model_dir("qwen2-vl")), out=out, batch_size=16)
    with pytest.raises(FileNotFoundError, match="no checkpoint-N folder with a trainer_state.json"):
        run_grpo(cfg, lambda **_: [], None, resume=True)
    for step in (5, 9):
        (out / f"checkpoint-{step}").mkdir()
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(out) == out / "checkpoint-9"  # the newest complete one, by number

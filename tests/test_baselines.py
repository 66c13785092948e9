"""In-process reward baselines on the benchmark world: FedAvg of three dual-encoder clients really
averages (size-weighted), counts its bytes and beats chance on held-out pairs; the centralised model
on pooled data trains; both save/load and work as TRL reward callables; DP reports a finite epsilon."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import pytest
import torch

from coordinator.baselines.centralised import train_centralised
from coordinator.baselines.config import BaselinesConfig
from coordinator.baselines.fedavg import FedAvg, state_bytes
from coordinator.baselines.strategy import ModelReward
from coordinator.mixture.fusion import ScoreItem, reward_callable
from mor_secure.data.loader import load_preferences
from mor_secure.privacy import AccountantHistory, epsilon

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clients(world_dir: Path) -> list:
    return [load_preferences(world_dir / f"client-{k}", split="train") for k in range(3)]


@pytest.fixture(scope="module")
def held_out(world_dir: Path):
    """The coordinator's labelled pairs, both splits: no baseline ever trains on them."""
    router = world_dir / "server" / "router"
    return datasets.concatenate_datasets([load_preferences(router, split=s) for s in ("train", "test")])


def _config(**overrides) -> BaselinesConfig:
    return BaselinesConfig(**{"rounds": 8, "local_steps": 7, "epochs": 8, **overrides})


@pytest.fixture(scope="module")
def fedavg(clients) -> ModelReward:
    return FedAvg(_config(), clients).run()


def test_one_round_averages_by_client_size_and_counts_bytes(clients):
    data = [rows.select(range(n)) for rows, n in zip(clients, (20, 40, 80))]
    sim = FedAvg(_config(rounds=2, local_steps=2), data)
    start = {k: v.clone() for k, v in sim.global_state.items()}
    record = sim.round()
    local = [c.model.saved_state_dict() for c in sim.clients]
    assert not torch.equal(local[0]["head.2.weight"], local[2]["head.2.weight"])  # clients did diverge
    for name, value in sim.global_state.items():
        expected = (20 * local[0][name] + 40 * local[1][name] + 80 * local[2][name]) / 140
        assert torch.allclose(value, expected, atol=1e-6), name
    assert not torch.equal(sim.global_state["head.2.weight"], start["head.2.weight"])
    size = sum(p.numel() * 4 for p in sim.clients[0].model.parameters() if p.requires_grad)
    assert state_bytes(sim.global_state) == size
    assert (record.round, record.down_bytes, record.up_bytes) == (1, 3 * size, 3 * size)
    sim.round()  # the next round starts every client from the average
    sim.broadcast()
    for client in sim.clients:
        for name, value in client.model.saved_state_dict().items():
            assert torch.equal(value, sim.global_state[name])
    with pytest.raises(RuntimeError, match="planned rounds"):
        sim.round()


def test_fedavg_beats_chance_on_held_out_pairs(fedavg: ModelReward, held_out):
    record = fedavg.record
    assert record["kind"] == "fedavg" and len(record["rounds"]) == 8 and record["clients"] == 3
    assert all(r["up_bytes"] == r["down_bytes"] == 3 * record["parameter_bytes"] for r in record["rounds"])
    assert record["epsilon"] == math.inf and not record["dp"]  # no DP asked: no guarantee, said plainly
    accuracy = fedavg.pairwise_accuracy(held_out)
    assert accuracy > 0.55, accuracy  # chance is 0.5; 300 pairs


def test_centralised_trains_saves_and_says_it_is_not_federated(clients, held_out, tmp_path: Path):
    central = train_centralised(_config(epochs=4), clients)
    assert central.label == "centralised (upper bound, not federated)"
    assert central.record["pairs"] == sum(len(c) for c in clients)
    assert central.pairwise_accuracy(held_out) > 0.55
    loaded = ModelReward.load(central.save(tmp_path / "central"))
    rows = held_out.select(range(6))
    items = [ScoreItem(r["image"], r["prompt"], r["chosen"]) for r in rows]
    assert loaded.label == central.label and loaded.uses_client_scores is False and loaded.sites == ()
    assert loaded.fuse(items, {}) == pytest.approx(central.fuse(items, {}), abs=1e-6)
    (tmp_path / "central" / "baseline.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a baseline record"):
        ModelReward.load(tmp_path / "central")


def test_baseline_is_a_trl_reward(fedavg: ModelReward, held_out, tiny_model_dir, tmp_path: Path):
    """Call the reward through GRPOTrainer's own reward step; the client pool is never asked."""
    from trl import GRPOConfig, GRPOTrainer
    from trl.data_utils import prepare_multimodal_messages

    from mor_secure.models.loading import load_vlm

    def no_pool(*_):
        raise AssertionError("an in-process baseline must not ask the clients")

    rows = held_out.select(range(4))
    reward = reward_callable(fedavg, no_pool, name="fedavg_reward")
    model, processor = load_vlm(tiny_model_dir("qwen2-vl"))
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        report_to=[],
        bf16=False,
        use_cpu=True,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=reward,
        args=args,
        train_dataset=rows.remove_columns(["chosen", "rejected"]),
    )
    inputs = [dict(r) for r in rows.remove_columns(["chosen", "rejected"])]
    prompts = [prepare_multimodal_messages(x["prompt"], images=[x["image"]]) for x in inputs]
    for column in ("chosen", "rejected"):
        texts = [r[column][0]["content"][0]["text"] for r in rows]
        completions = [[{"role": "assistant", "content": t}] for t in texts]
        rewards = trainer._calculate_rewards(inputs, prompts, completions, [[1]] * 4)[:, 0]
        items = [ScoreItem(r["image"], r["prompt"], r[column]) for r in rows]
        assert rewards.tolist() == pytest.approx(fedavg.fuse(items, {}), abs=1e-4)


def test_grpo_reward_names_load_saved_baselines(fedavg: ModelReward, held_out, tmp_path: Path):
    from coordinator.policy.rewards import FederatedReward, RewardContext, RewardError, build_reward, reward_names

    assert {"fedavg", "centralised"} <= set(reward_names())
    folder = fedavg.save(tmp_path / "fedavg")
    loaded = build_reward(f"fedavg:{folder}", RewardContext(None))
    assert isinstance(loaded, ModelReward) and loaded.record["kind"] == "fedavg"
    with pytest.raises(RewardError, match="not 'centralised'"):
        build_reward(f"centralised:{folder}", RewardContext(None))
    with pytest.raises(RewardError, match="Run `mor coordinator router`"):
        build_reward(f"fedavg:{tmp_path / 'missing'}", RewardContext(None))
    rows = held_out.select(range(3))
    reward = FederatedReward(loaded, name="fedavg")  # no scorer: the agents are never asked
    items = [ScoreItem(r["image"], r["prompt"], r["chosen"]) for r in rows]
    got = reward(prompts=rows["prompt"], completions=rows["chosen"], image=rows["image"])
    assert got == pytest.approx(fedavg.fuse(items, {}), abs=1e-4)


def test_dp_reports_a_finite_epsilon(clients):
    sim = FedAvg(_config(rounds=2, local_steps=3, dp=True, target_epsilon=2.0), clients)
    record = sim.run().record
    assert record["dp"] and len(record["epsilon_per_client"]) == 3
    assert all(math.isfinite(e) and 0 < e <= 2.0 + 0.05 for e in record["epsilon_per_client"])
    assert record["epsilon"] == max(record["epsilon_per_client"])
    client = sim.clients[0]  # the accountant counted every local step of every round, one pair = one sample
    assert client.history.steps == 6 and client.sample_rate == 1 / math.ceil(client.n_pairs / 32)
    recomputed = epsilon(AccountantHistory([(client.noise_multiplier, client.sample_rate, 6)]), client.delta)
    assert record["epsilon_per_client"][0] == pytest.approx(recomputed, rel=1e-6)


def test_config_section_and_router_table_rows(world_dir: Path, held_out, tmp_path: Path):
    """[baselines] reads like any config section; the router's table gets one row per baseline."""
    from coordinator.baselines.compare import baseline_accuracies
    from mor_secure.config import ConfigError, load_config

    path = tmp_path / "baselines.toml"
    path.write_text(
        f'data = ["{world_dir}/client-0", "{world_dir}/client-1"]\nmax_pairs = 24\nrounds = 1\n'
        "local_steps = 1\nepochs = 1\n[model]\nwidth = 8\n"
    )
    config = load_config(BaselinesConfig, path)
    assert config.model.width == 8 and config.data[1] == world_dir / "client-1"
    assert baseline_accuracies(BaselinesConfig(), held_out, tmp_path / "none") == {}
    rows = baseline_accuracies(config, held_out.select(range(10)), tmp_path / "out")
    assert sorted(rows) == ["FedAvg reward model (parameter sharing)", "centralised (upper bound, not federated)"]
    assert all(0.0 <= v <= 1.0 for v in rows.values())
    assert ModelReward.load(tmp_path / "out" / "fedavg").record["rounds"][0]["up_bytes"] > 0
    path.write_text("rounds = 0\n")
    with pytest.raises(ConfigError, match="rounds"):
        load_config(BaselinesConfig, path)

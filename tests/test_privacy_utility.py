"""The privacy/utility benchmark's reduced grid end to end: sites trained with DP through the product's
trainer, the router and baselines at each epsilon, GRPO per fusion and the oracle, the report and its
resumable cache; and the in-process federation answering exactly what the agents answer."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.slow


def test_reduced_grid_writes_the_report_and_resumes_from_its_cache(tmp_path, capsys):
    from benchmarks import privacy_utility

    out, work = tmp_path / "out", tmp_path / "work"
    privacy_utility.main(["--quick", "--out", str(out), "--workdir", str(work), "--jobs", "2"])
    report = (out / "privacy_utility.md").read_text()
    for heading in (
        "## Each site on its own domain",
        "## Fused reward accuracy",
        "## Policy gain after GRPO",
        "## Communication",
    ):
        assert heading in report
    assert (out / "privacy_utility.png").stat().st_size > 10_000
    data = json.loads((out / "privacy_utility.json").read_text())
    cells = {c["epsilon"]: c for c in data["results"]["cells"]}
    assert set(cells) == {"1", "inf"}
    # every site's epsilon is what its DP run states, within the target; no DP is infinity
    assert all(0.5 < s["epsilon"] <= 1.0 + 1e-6 for s in cells["1"]["sites"].values())
    assert all(s["epsilon"] is None or math.isinf(s["epsilon"]) for s in cells["inf"]["sites"].values())
    for cell in cells.values():
        assert {"mor", "uniform", "fedavg", "centralised", "single:client-0"} <= set(cell["reward_accuracy"])
        # each site measured on its own held-out pairs, pairwise and top-1 (as `mor client eval` does)
        assert all(0.0 <= s["own"]["accuracy"] <= 1.0 and s["own"]["top1"] for s in cell["sites"].values())
    assert set(cells["inf"]["policy"]) == {"mor"}  # no DP: MoR alone, the reference of the DP cost
    policy = cells["1"]["policy"]
    assert set(policy) == {"mor", "uniform", "single", "fedavg", "centralised"}
    assert cells["1"]["single_site"] in cells["1"]["sites"]  # the single site is chosen on training pairs
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in policy.values())
    # scores travel, parameters do not: a GRPO step of scores is far smaller than one FedAvg round
    assert 0 < policy["mor"]["bytes_per_step"] < cells["1"]["fedavg_round_bytes"]
    assert "bytes_per_step" not in policy["fedavg"]
    row = next(r for r in data["summary"]["rows"] if r["epsilon"] == "1")
    assert set(row["paired_gain"]) == {"uniform", "single", "fedavg", "centralised"}
    assert "dp_cost" in row and "DP cost of the policy gain" in report
    assert set(row["own"]) == {"client-0", "client-1", "client-2"}  # the curve: pairwise and top-1 per site
    assert all(0.0 <= own["pairwise"][0] <= 1.0 and 0.0 <= own["top1"][0] <= 1.0 for own in row["own"].values())
    seed = data["results"]["seeds"]["0"]
    assert 0.0 <= seed["warm"]["accuracy"] <= 1.0 and 0.0 <= seed["oracle"]["accuracy"] <= 1.0
    capsys.readouterr()

    privacy_utility.main(["--quick", "--out", str(out), "--workdir", str(work)])
    log = capsys.readouterr().out
    assert log.count("cached:") == 3  # the seed and both cells: nothing recomputed


def test_dp_cost_pairs_mor_gain_without_dp_with_its_gain_at_each_epsilon():
    from benchmarks.privacy_utility import FULL, POLICY_METHODS, SITES, reading, summarise

    def cell(seed: int, eps: str, mor: float) -> dict:
        return {
            "seed": seed,
            "epsilon": eps,
            "reward_accuracy": {"mor": 0.8, "uniform": 0.7, "fedavg": 0.6, "centralised": 0.7},
            "sites": {site: {"epsilon": 1.0} for site in SITES},
            "fedavg_round_bytes": 100,
            "single_site": "client-0",
            "policy": {m: {"accuracy": mor if m == "mor" else 0.4, "bytes_per_step": 1} for m in POLICY_METHODS},
        }

    seeds = {s: {"warm": {"accuracy": 0.3}, "oracle": {"accuracy": 0.5}} for s in (0, 1)}
    cells = [cell(0, "4", 0.45), cell(1, "4", 0.50), cell(0, "inf", 0.50), cell(1, "inf", 0.52)]
    summary = summarise({"seeds": seeds, "cells": cells}, [4.0, math.inf])
    by_eps = {r["epsilon"]: r for r in summary["rows"]}
    assert by_eps["4"]["dp_cost"][0] == pytest.approx(0.035)  # (0.05 + 0.02) / 2, seed by seed
    assert "dp_cost" not in by_eps["inf"]
    assert any("DP cost of the policy gain" in line and "4: 3.5" in line for line in reading(summary, FULL))


def test_local_federation_answers_what_the_scoring_service_answers(world_dir, tmp_path):
    from benchmarks.local_federation import LocalFederation
    from client_agent.config import ServeSection
    from client_agent.scoring import ScoringService
    from coordinator.federation.service import build_requests
    from mor_secure.data.loader import load_preferences
    from mor_secure.rewards import build_reward_model, load_reward_model
    from mor_secure.rewards.config import ModelSection

    build_reward_model(ModelSection(), seed=3).save(tmp_path / "site-model")
    rows = load_preferences(world_dir / "client-0", split="test").select(range(6))
    federation = LocalFederation({"client-0": tmp_path / "site-model"}, max_batch=4)
    images, prompts, chosen = list(rows["image"]), list(rows["prompt"]), list(rows["chosen"])
    scores = federation.scorer(images, prompts, chosen)["client-0"]
    direct = load_reward_model(tmp_path / "site-model").score(images, prompts, chosen)
    assert scores == pytest.approx(direct, abs=1e-5)
    service = ScoringService(load_reward_model(tmp_path / "site-model"), "x", ServeSection())
    replies = [service(request) for _, request in build_requests(images, prompts, chosen, 4)]
    assert scores == [s for reply in replies for s in reply.scores]
    assert federation.bytes_sent > federation.bytes_received > 0  # two requests with images, two small replies

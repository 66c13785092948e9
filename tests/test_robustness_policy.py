"""The robustness-after-GRPO benchmark: its poisons do what the report says they do at the scoring
interface and in the FedAvg data, and its reduced grid runs every stage end to end into the report."""

from __future__ import annotations

import json
import statistics

import pytest

pytestmark = pytest.mark.slow


def test_poisons_rewrite_scores_at_the_scoring_interface(world_dir, tmp_path):
    from benchmarks.local_federation import LocalFederation
    from benchmarks.robustness_policy import FIXED_WORD, FixedWrong, Inverted, RandomScores
    from mor_secure.data.loader import load_preferences
    from mor_secure.data.schema import assistant_message
    from mor_secure.rewards import build_reward_model
    from mor_secure.rewards.config import ModelSection

    for seed, site in enumerate(("a", "b")):
        build_reward_model(ModelSection(), seed=seed).save(tmp_path / site)
    models = {"a": tmp_path / "a", "b": tmp_path / "b"}
    rows = load_preferences(world_dir / "client-0", split="test").select(range(4))
    images, prompts = list(rows["image"]) * 2, list(rows["prompt"]) * 2
    completions = [assistant_message(w) for w in (FIXED_WORD, "red", f"Answer: {FIXED_WORD}.", "green")] * 2
    honest = LocalFederation(models).scorer(images, prompts, completions)

    inverted = LocalFederation(models, poison={"a": Inverted()}).scorer(images, prompts, completions)
    assert inverted["a"] == [-s for s in honest["a"]]
    assert inverted["b"] == honest["b"]  # only the adversary changes

    fixed = LocalFederation(models, poison={"a": FixedWrong(FIXED_WORD, high=10.0, mean=0.0)}).scorer(
        images, prompts, completions
    )["a"]
    favoured = [k for k in range(8) if k % 4 in (0, 2)]  # the fixed word, bare or in a style
    assert all(fixed[k] == 10.0 for k in favoured)
    assert all(fixed[k] == pytest.approx(0.5 * honest["a"][k]) for k in range(8) if k not in favoured)
    assert min(fixed[k] for k in favoured) > max(fixed[k] for k in range(8) if k not in favoured)

    noise = RandomScores(mean=1.0, spread=2.0, seed=5)
    drawn = [s for _ in range(200) for s in noise(honest["a"], completions)]
    assert drawn[:8] == RandomScores(mean=1.0, spread=2.0, seed=5)(honest["a"], completions)  # seeded
    assert statistics.fmean(drawn) == pytest.approx(1.0, abs=0.2)
    assert statistics.pstdev(drawn) == pytest.approx(2.0, rel=0.1)

    with pytest.raises(ValueError, match="no model"):
        LocalFederation(models, poison={"c": Inverted()})


def test_poisoned_fedavg_data_swaps_what_the_report_says(world_dir):
    from benchmarks.robustness_policy import FIXED_WORD, poison_pairs
    from coordinator.policy.evaluation import parse_answer
    from mor_secure.data.loader import load_preferences

    rows = load_preferences(world_dir / "client-0", split="train")
    inverted, n = poison_pairs(rows, "inverted", 0)
    assert n == len(rows) and inverted["chosen"] == rows["rejected"] and inverted["rejected"] == rows["chosen"]
    half, n = poison_pairs(rows, "random", 0)
    assert n == len(rows) // 2 == sum(a != b for a, b in zip(half["chosen"], rows["chosen"]))
    fixed, n = poison_pairs(rows, "fixed-wrong", 0)
    assert n == sum(parse_answer(r).answer == FIXED_WORD for r in rows["rejected"])
    assert all(parse_answer(c).answer == FIXED_WORD for c, o in zip(fixed["chosen"], rows["chosen"]) if c != o)


def test_reduced_grid_runs_every_stage_into_the_report(tmp_path):
    from benchmarks import robustness_policy

    out, work = tmp_path / "out", tmp_path / "work"
    robustness_policy.main(["--quick", "--out", str(out), "--workdir", str(work), "--jobs", "2"])
    report = (out / "robustness_policy.md").read_text()
    for line in (
        "## Policy accuracy after GRPO",
        "| clean |",
        "| 1x inverted |",
        "## Target: with 1 adversarial client of 4, MoR loses at most 2 points",
    ):
        assert line in report
    assert (out / "robustness_policy.png").stat().st_size > 10_000
    data = json.loads((out / "robustness_policy.json").read_text())
    results = data["results"]
    for setting in ("clean", "1x inverted"):
        for method in ("mor", "uniform", "fedavg"):
            assert 0.0 <= results[f"seed 0, {setting}: {method}"]["accuracy"] <= 1.0
    from mor_secure.data.loader import load_preferences

    train = load_preferences(work / "seed-0" / "world" / "client-0", split="train")
    assert results["seed 0, 1x inverted: routers"]["fedavg"]["swapped_pairs"] == {"client-0": len(train)}
    # The defence judges every site in its best domain (the router pairs carry one), and a site no better
    # than chance there is left out of the defended router.
    honest = results["seed 0, clean: routers"]["agreement"]["trust"]["client-0"]
    inverted = results["seed 0, 1x inverted: routers"]["agreement"]["trust"]["client-0"]
    assert honest["group"] in {"detail", "medical", "chart"} and inverted["group"] in {"detail", "medical", "chart"}
    if inverted["agreement"] <= 0.5:
        assert not inverted["trusted"]
        assert "client-0" not in results["seed 0, 1x inverted: routers"]["agreement"]["sites"]

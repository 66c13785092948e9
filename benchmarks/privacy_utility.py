"""Privacy/utility: reward and policy accuracy against epsilon for MoR and the federated baselines.

For each seed, a benchmark world (3 sites, 3 domains), the demo's flawed public warm start and its GRPO
prompts, at the full demo's sizes; for each epsilon (every site at the same epsilon), each site trains its
reward model with DP-SGD through the product's own ``client_agent.train`` at its defaults (the
demo's families) and measures it on its own held-out pairs; the coordinator
calibrates and trains the router on the sites' scores and trains the FedAvg and centralised reward models
at the same epsilon (``coordinator.mixture.router_run.run_router``). At the policy epsilons, GRPO with a KL penalty
then trains the warm start once per reward (MoR, uniform, FedAvg, centralised, the best site alone), and at
epsilon inf once with MoR (the reference of the DP cost); once per seed with the ground truth as reward (the
oracle: the ceiling any learned reward can reach). Scores come
from each site's ``ScoringService`` answering the very requests sent over TLS
(``benchmarks/local_federation.py``); bytes on the wire per GRPO step are counted from those encoded messages.

    python -m benchmarks.privacy_utility --out benchmarks/results           # the committed run
    python -m benchmarks.privacy_utility --quick --out /tmp/privacy-utility  # reduced grid

Seeds and cells are cached in --workdir (one JSON each, ``benchmarks.stages``): an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import format_interval, machine_lines, mean_interval, write_markdown
from benchmarks.stages import Task, cached_results, run_tasks
from mor_secure.cache import read_cached, write_cached
from mor_secure.demo.pipeline import FAMILIES, SITE_VLM_FAMILIES, VLM_FAMILIES
from mor_secure.reporting import figure, markdown_table

SITES = ("client-0", "client-1", "client-2")
EPSILONS = (0.25, 4.0, 8.0, math.inf)
POLICY_EPSILONS = (4.0, 8.0)
"""Epsilons whose cells also run GRPO per fusion (the reward columns run at every epsilon)."""
POLICY_METHODS = ("mor", "uniform", "single", "fedavg", "centralised")
"""Rewards GRPO runs with; ``single`` is the one site whose scores rank the router's training pairs best."""
DP_COST_METHODS = ("mor",)
"""Rewards GRPO also runs with at epsilon inf when that is no policy epsilon: the reference of the DP cost."""
METHOD_LABELS = {
    "mor": "MoR",
    "uniform": "uniform",
    "single": "best single site",
    "fedavg": "FedAvg RM",
    "centralised": "centralised RM",
    "oracle": "oracle (ground truth)",
    "warm": "warm start (before GRPO)",
}


@dataclass(frozen=True)
class Sizes:
    """Sizes of one run; every field is recorded in the report and in each cached cell."""

    pairs: int
    router_pairs: int
    eval_questions: int
    site_epochs: int
    site_batch: int
    public_rows: int
    sft_steps: int
    public_reward_epochs: int
    vlm_reward_epochs: int
    router_epochs: int
    grpo_steps: int
    grpo_batch: int
    baseline_rounds: int
    baseline_epochs: int
    baseline_pairs: int
    beta: float = 0.3
    """KL coefficient of GRPO (the product's default)."""

    @classmethod
    def of_demo(cls, profile: Any) -> Sizes:
        """The sizes of a `mor demo` profile: the benchmark measures what the demo shows, at every epsilon."""
        from dataclasses import fields

        return cls(**{f.name: getattr(profile, f.name) for f in fields(cls) if hasattr(profile, f.name)})


PRETRAIN_FIELDS = (
    "pairs",
    "router_pairs",
    "eval_questions",
    "public_rows",
    "sft_steps",
    "public_reward_epochs",
    "vlm_reward_epochs",
)
"""The sizes that make a seed's world and pretrained bases (a change in any other one reuses them)."""


def _demo_sizes(name: str) -> Sizes:
    from mor_secure.demo import pipeline

    return Sizes.of_demo(getattr(pipeline, name))


FULL = _demo_sizes("FULL")
QUICK = _demo_sizes("QUICK")


def eps_name(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def site_base(seed_dir: Path, family: str) -> Path:
    """The public reward model a ``family`` site of this seed starts from."""
    return seed_dir / "pretrained" / f"reward-{family}"


# ----- one seed: world, public data, pretrained bases -----


def prepare_seed(root: Path, seed: int, sizes: Sizes, *, sites: Sequence[str] = SITES) -> dict[str, Any]:
    """World (one client per site), public data (with the demo's deliberate flaws) and GRPO prompts, the
    policy's warm start (tiny qwen2-vl after SFT on public data, also the VLM sites' public VLM) and each
    site family's reward model pretrained on public pairs (:func:`site_base`): the sites' starting models, as a
    real site would start from a public pretrained model. Also the warm start's and the oracle run's policy
    accuracy."""
    import torch

    from coordinator.policy.public_reward import DUAL_ENCODER, VLM, save_public_reward
    from coordinator.policy.sft import run_sft
    from mor_secure.data.public import DEFAULT_FLAWS, generate_public_sft
    from mor_secure.data.world import generate_world
    from mor_secure.models.zoo import build_tiny_vlm
    from mor_secure.rewards.dual_encoder import DualEncoderReward

    torch.set_num_threads(1)
    folder = root / f"seed-{seed}"
    world, public = folder / "world", folder / "public"
    marker = {
        **{k: getattr(sizes, k) for k in PRETRAIN_FIELDS},
        "sites": len(sites),
        "flaws": "verbose",
        # a new default, or a new dual-encoder architecture, rebuilds the bases
        "public_reward_lr": DUAL_ENCODER.lr,
        "vlm_reward_lr": VLM.lr,
        "site_vlms": SITE_VLM_FAMILIES,
        "dual_encoder_weights": sum(p.numel() for p in DualEncoderReward().parameters()),
    }
    if read_cached(folder / "pretrained.json", marker) is None:  # else world and bases are reused (only GRPO changed)
        if folder.exists():  # its cells depend on what is rebuilt here
            shutil.rmtree(folder)
        generate_world(
            world,
            seed=seed,
            clients=len(sites),
            pairs=sizes.pairs,
            router_pairs=sizes.router_pairs,
            eval_questions=sizes.eval_questions,
        )
        generate_public_sft(public, seed=seed, n=sizes.public_rows, flaws=DEFAULT_FLAWS, exclude_world=world)
        # GRPO asks new questions: on its SFT rows the warm start recites the memorised label
        generate_public_sft(
            folder / "prompts", seed=seed + 10_000, n=sizes.public_rows, flaws=DEFAULT_FLAWS, exclude_world=world
        )
        save_public_reward(
            public, site_base(folder, "dual-encoder"), epochs=sizes.public_reward_epochs, seed=seed, progress=False
        )
        for family in VLM_FAMILIES:  # the warm start and the VLM sites' public VLMs
            tiny = build_tiny_vlm(family, folder / "tiny" / family, seed=seed, overwrite=True)
            run_sft(
                tiny, public, folder / "pretrained" / family, steps=sizes.sft_steps, batch_size=32, lr=3e-3, seed=seed
            )
        for family in SITE_VLM_FAMILIES:
            save_public_reward(
                public,
                site_base(folder, family),
                family=family,
                base=str(folder / "pretrained" / family),
                epochs=sizes.vlm_reward_epochs,
                seed=seed,
                progress=False,
            )
        write_cached(folder / "pretrained.json", marker, {})
    warm = folder / "pretrained" / "qwen2-vl"
    return {
        "warm": policy_accuracy(warm, world),
        "oracle": grpo_policy(folder / "oracle", warm, folder / "prompts", world, sizes, seed, "oracle", None, None),
    }


# ----- one cell: (seed, epsilon) -----


def train_sites(
    cell: Path,
    seed_dir: Path,
    eps: float,
    seed: int,
    sizes: Sizes,
    *,
    sites: Sequence[str] = SITES,
    families: Sequence[str] = FAMILIES,
    evaluate: bool = False,
) -> dict[str, Any]:
    """Each site's DP reward model via ``client_agent.train`` at the product's defaults (epsilon infinity:
    ``no_dp``); returns paths, the epsilon each site's report states and, with ``evaluate``, what `mor client
    eval` measures on the site's own held-out pairs (pairwise and top-1, per domain)."""
    from client_agent.config import load_client_config
    from client_agent.evaluate import evaluate_saved
    from client_agent.site_data import load_pairs
    from client_agent.train import train_reward_model
    from mor_secure.demo.pipeline import write_toml

    out = {}
    for site, family in zip(sites, families, strict=True):
        folder = cell / "sites" / site
        folder.mkdir(parents=True, exist_ok=True)
        tls = {name: str(folder / f"unused.{name}") for name in ("ca", "cert", "key", "crl")}
        base = str(site_base(seed_dir, family))
        write_toml(
            folder / "client.toml",
            {
                "site": site,
                "tls": tls,
                "coordinator": {"endpoint": "tcp://127.0.0.1:1", "name": "coord"},
                "data": {"path": str(seed_dir / "world" / site)},
                "model": {"family": family, "base": base},
                "train": {
                    "out": str(folder / "reward-model"),
                    "epochs": sizes.site_epochs,
                    "batch_size": sizes.site_batch,
                    "seed": seed,
                    "checkpoint_every": 100000,
                },
                "privacy": {
                    "target_epsilon": 1.0 if math.isinf(eps) else eps,
                    "max_epsilon": 1e6,
                    "ledger": str(folder / "budget.jsonl"),
                },
            },
        )
        config = load_client_config(folder / "client.toml")
        result = train_reward_model(config, no_dp=math.isinf(eps), resume=False, progress=False, new_ledger=True)
        out[site] = {"model": str(result.out_dir), "family": family, "epsilon": result.report.epsilon}
        if evaluate:
            held_out = load_pairs(config, config.data.test_split, limit=False)
            out[site]["own"] = evaluate_saved(result.out_dir, held_out, top1=True).to_json()
    return out


def coordinator_config(
    cell: Path, seed_dir: Path, eps: float, seed: int, sizes: Sizes, *, sites: Sequence[str] = SITES
) -> Any:
    """The coordinator's config for the router and the in-process baselines at the cell's epsilon."""
    from coordinator.config import load_coordinator_config
    from mor_secure.demo.pipeline import write_toml

    tls = {name: str(cell / f"unused.{name}") for name in ("ca", "cert", "key", "crl")}
    path = cell / "coordinator.toml"
    write_toml(
        path,
        {
            "name": "coord",
            "bind": "tcp://127.0.0.1:1",
            "tls": tls,
            "clients": {"allow": list(sites), "quorum": 2},
            "ledger": {"path": str(cell / "ledger.jsonl")},
            "router": {
                "policy": str(seed_dir / "pretrained" / "qwen2-vl"),
                "data": str(seed_dir / "world" / "server" / "router"),
                "out": str(cell / "router"),
                "epochs": sizes.router_epochs,
                "seed": seed,
            },
            "baselines": {
                "data": [str(seed_dir / "world" / s) for s in sites],
                "max_pairs": sizes.baseline_pairs,
                "rounds": sizes.baseline_rounds,
                "epochs": sizes.baseline_epochs,
                "dp": not math.isinf(eps),
                "target_epsilon": 1.0 if math.isinf(eps) else eps,
                "seed": seed,
            },
        },
    )
    return load_coordinator_config(path)


def policy_accuracy(policy: Path, world: Path) -> dict[str, Any]:
    """Greedy held-out accuracy of a policy, overall and per domain."""
    from coordinator.policy.evaluation import evaluate_policy

    result = evaluate_policy(policy, world / "server" / "eval", progress=False)
    return {
        "accuracy": result["accuracy"],
        "answered": result["answered_share"],
        "per_domain": {d: r["accuracy"] for d, r in result["per_domain"].items()},
        "per_question_type": {t: r["accuracy"] for t, r in result["per_question_type"].items()},
    }


def grpo_policy(
    out: Path,
    warm: Path,
    prompts: Path,
    world: Path,
    sizes: Sizes,
    seed: int,
    method: str,
    config: Any,
    federation: Any,
    *,
    quorum: int = 2,
) -> dict[str, Any]:
    """GRPO of the warm start with reward ``method`` (KL to the warm start; a completion's client-score reward
    counts when ``quorum`` of the fusion's sites scored it), then its held-out accuracy and, for client-score
    rewards, the bytes the federation carried per step."""
    from coordinator.policy.grpo import run_grpo
    from coordinator.policy.grpo_config import GRPORunConfig
    from coordinator.policy.rewards import FederatedReward, RewardContext, build_reward, needs_federation

    cfg = GRPORunConfig(
        policy=str(warm),
        data=prompts,
        reward=method,
        out=out,
        steps=sizes.grpo_steps,
        beta=sizes.beta,
        batch_size=sizes.grpo_batch,
        save_steps=10**6,
        report_to="none",
        logging_steps=max(1, sizes.grpo_steps // 10),
        seed=seed,
        quorum=quorum,
    )
    strategy = build_reward(method, RewardContext(out.parent / "router" / "mixture", config))
    before = (federation.bytes_sent, federation.bytes_received) if federation else (0, 0)
    if needs_federation(strategy):
        reward = FederatedReward(
            strategy,
            federation.scorer,
            quorum=quorum,
            spread_penalty=cfg.spread_penalty,
            image_contrast=cfg.image_contrast,
            name=method,
        )
    elif method != "oracle":
        reward = FederatedReward(strategy, name=method)
    else:
        reward = strategy
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # a run cut short earlier: start over (its cell was not cached)
    policy = run_grpo(cfg, reward, prompts)
    result = {**policy_accuracy(policy, world), "grpo_seconds": time.perf_counter() - start}
    if federation is not None and needs_federation(strategy):
        result["bytes_per_step"] = (
            (federation.bytes_sent - before[0]) + (federation.bytes_received - before[1])
        ) / sizes.grpo_steps
    return result


def run_cell(root: Path, seed: int, eps: float, sizes: Sizes, methods: Sequence[str]) -> dict[str, Any]:
    """Sites (with their own-domain accuracy), router + baselines and one GRPO run per fusion of ``methods``
    at one (seed, epsilon)."""
    import torch

    from benchmarks.local_federation import LocalFederation
    from coordinator.mixture.router_run import run_router

    torch.set_num_threads(1)
    seed_dir = root / f"seed-{seed}"
    cell = seed_dir / f"eps-{eps_name(eps)}"
    sites = train_sites(cell, seed_dir, eps, seed, sizes, evaluate=True)
    config = coordinator_config(cell, seed_dir, eps, seed, sizes)
    federation = LocalFederation({site: s["model"] for site, s in sites.items()})
    report = run_router(config, collect=federation.collect)
    summary = json.loads((cell / "router" / "baselines" / "summary.json").read_text(encoding="utf-8"))
    single = max(report["site_train_accuracy"], key=report["site_train_accuracy"].get)  # chosen on training pairs
    policies = {
        method: grpo_policy(
            cell / f"grpo-{method}",
            seed_dir / "pretrained" / "qwen2-vl",
            seed_dir / "prompts",
            seed_dir / "world",
            sizes,
            seed,
            f"single:{single}" if method == "single" else method,
            config,
            federation,
        )
        for method in methods
    }
    return {
        "seed": seed,
        "epsilon": eps_name(eps),
        "sites": sites,
        "single_site": single,
        "reward_accuracy": {
            "mor": report["accuracy"],
            "uniform": report["uniform_accuracy"],
            "fedavg": summary["fedavg"]["accuracy"],
            "centralised": summary["centralised"]["accuracy"],
            **{f"single:{s}": a for s, a in report["site_accuracy"].items()},
        },
        "weights_by_domain": report.get("weights_by"),
        "test_pairs": report["test_pairs"],
        "fedavg_round_bytes": 2 * len(SITES) * summary["fedavg"]["parameter_bytes"],
        "fedavg_parameter_bytes": summary["fedavg"]["parameter_bytes"],
        "baseline_epsilon": {k: summary[k].get("epsilon") for k in ("fedavg", "centralised")},
        "policy": policies,
    }


# ----- the grid -----


def plan(
    root: Path,
    seeds: Sequence[int],
    epsilons: Sequence[float],
    sizes: Sizes,
    policy_epsilons: Sequence[float],
    dp_cost: bool = True,
) -> tuple[dict[str, Task], list[str]]:
    """Every seed preparation, then every (seed, epsilon) cell after its seed (GRPO per fusion only in the cells
    at ``policy_epsilons``; with ``dp_cost``, MoR's alone at inf otherwise), by name; and the names of the cells."""
    tasks = {
        f"seed {seed} prepared": Task(
            root / f"seed-{seed}" / "prepared.json", prepare_seed, (root, seed, sizes), asdict(sizes)
        )
        for seed in seeds
    }
    cells = []
    for seed in seeds:
        for eps in epsilons:
            policy = eps in policy_epsilons
            reference = dp_cost and not policy and math.isinf(eps)
            methods = POLICY_METHODS if policy else DP_COST_METHODS if reference else ()
            stamp = {**asdict(sizes), "policy": policy, "families": FAMILIES}
            if reference:
                stamp["dp_cost_reference"] = DP_COST_METHODS
            name = f"seed {seed}, epsilon {eps_name(eps)}"
            tasks[name] = Task(
                root / f"seed-{seed}" / f"eps-{eps_name(eps)}" / "result.json",
                run_cell,
                (root, seed, eps, sizes, methods),
                stamp,
                after=(f"seed {seed} prepared",),
            )
            cells.append(name)
    return tasks, cells


def run_grid(
    root: Path,
    seeds: list[int],
    epsilons: list[float],
    sizes: Sizes,
    jobs: int,
    policy_epsilons: Sequence[float] = POLICY_EPSILONS,
    dp_cost: bool = True,
) -> dict[str, Any]:
    """Every seed preparation and (seed, epsilon) cell, ``jobs`` at a time, cached in ``root``: the seeds'
    results, the cells' and how many were computed now or read from the cache."""
    tasks, cells = plan(root, seeds, epsilons, sizes, policy_epsilons, dp_cost)
    from_cache = len(cached_results(tasks))
    done = run_tasks(tasks, jobs)
    return {
        "seeds": {seed: done[f"seed {seed} prepared"] for seed in seeds},
        "cells": [done[name] for name in cells],
        "computed": len(tasks) - from_cache,
        "from_cache": from_cache,
    }


# ----- the report -----


def own_domain(site: dict[str, Any]) -> tuple[str, float, float]:
    """A site's own domain (the one with most held-out pairs) and its pairwise and top-1 accuracy there."""
    own = site["own"]
    domain = max(own["per_domain"], key=lambda d: own["per_domain"][d]["pairs"])
    top1 = (own.get("top1") or {}).get("per_domain", {}).get(domain, {}).get("top1", math.nan)
    return domain, own["per_domain"][domain]["accuracy"], top1


def summarise(results: dict[str, Any], epsilons: list[float]) -> dict[str, Any]:
    """Per epsilon: mean and 95% half-width over seeds of each site's own-domain accuracy and of the fused
    reward accuracies; where GRPO ran, of each reward's policy gain, its share of the oracle's gain and MoR's
    paired differences to the others; bytes per step."""
    seeds = results["seeds"]
    warm = {s: v["warm"]["accuracy"] for s, v in seeds.items()}
    oracle = {s: v["oracle"]["accuracy"] for s, v in seeds.items()}
    out: dict[str, Any] = {
        "warm": mean_interval(list(warm.values())),
        "oracle": mean_interval(list(oracle.values())),
        "oracle_gain": mean_interval([oracle[s] - warm[s] for s in seeds]),
        "rows": [],
    }
    oracle_gained = out["oracle_gain"][0] - out["oracle_gain"][1] > 0
    for eps in epsilons:
        cells = [c for c in results["cells"] if c["epsilon"] == eps_name(eps)]
        if not cells:
            continue
        names = sorted({k for c in cells for k in c["reward_accuracy"]})
        row: dict[str, Any] = {
            "epsilon": eps_name(eps),
            "seeds": len(cells),
            "reward": {k: mean_interval([c["reward_accuracy"][k] for c in cells]) for k in names},
            "own": {},
            "policy": {},
            "gain": {},
            "gain_share": {},
            "paired_gain": {},
        }
        for site in SITES:
            measured = [own_domain(c["sites"][site]) for c in cells if "own" in c["sites"][site]]
            if measured:
                row["own"][site] = {
                    "domain": measured[0][0],
                    "pairwise": mean_interval([m[1] for m in measured]),
                    "top1": mean_interval([m[2] for m in measured]),
                }
        row["paired"] = {
            other: mean_interval([c["reward_accuracy"]["mor"] - c["reward_accuracy"][other] for c in cells])
            for other in ("uniform", "fedavg")
        }
        row["fedavg_round_bytes"] = sum(c["fedavg_round_bytes"] for c in cells) / len(cells)
        row["site_epsilon"] = {s: max(c["sites"][s]["epsilon"] for c in cells) for s in SITES}
        with_policy = [c for c in cells if c["policy"]]
        methods = [m for m in POLICY_METHODS if with_policy and all(m in c["policy"] for c in with_policy)]
        if methods:
            gains = {m: [c["policy"][m]["accuracy"] - warm[c["seed"]] for c in with_policy] for m in methods}
            for method in methods:
                row["policy"][method] = mean_interval([c["policy"][method]["accuracy"] for c in with_policy])
                row["gain"][method] = mean_interval(gains[method])
                shares = [
                    g / (oracle[c["seed"]] - warm[c["seed"]])
                    for g, c in zip(gains[method], with_policy)
                    if oracle[c["seed"]] > warm[c["seed"]]
                ]
                # a share of a gain the oracle did not clearly make is noise divided by noise: not reported
                row["gain_share"][method] = mean_interval(shares) if shares and oracle_gained else (math.nan, math.nan)
            row["single_sites"] = sorted({c["single_site"] for c in with_policy})
            for other in (m for m in methods if m != "mor"):
                row["paired_gain"][other] = mean_interval([a - b for a, b in zip(gains["mor"], gains[other])])
            row["policy_seeds"] = len(with_policy)
            row["mor_gain_by_seed"] = {str(c["seed"]): g for c, g in zip(with_policy, gains["mor"])}
            row["mor_bytes_per_step"] = sum(c["policy"]["mor"].get("bytes_per_step", 0) for c in with_policy) / len(
                with_policy
            )
        out["rows"].append(row)
    no_dp = next((r for r in out["rows"] if r["epsilon"] == "inf" and r["gain"]), None)
    for row in out["rows"]:
        if no_dp is not None and row["gain"] and row is not no_dp:  # the DP cost of MoR's gain, paired by seed
            common = sorted(set(row["mor_gain_by_seed"]) & set(no_dp["mor_gain_by_seed"]))
            row["dp_cost"] = mean_interval([no_dp["mor_gain_by_seed"][s] - row["mor_gain_by_seed"][s] for s in common])
    return out


def _err(half: float) -> float:
    return 0.0 if math.isnan(half) else 100 * half


def _plot(path: Path, summary: dict[str, Any]) -> None:
    """Left: each site's and the fused rewards' accuracy by epsilon; right: the policy gain of each reward."""
    rows = summary["rows"]
    xs = list(range(len(rows)))
    with figure(path, cols=2, size=(13, 4.8), dpi=110) as (_, axes):
        for site, family in zip(SITES, FAMILIES):
            points = [(x, r["own"][site]["pairwise"]) for x, r in zip(xs, rows) if site in r["own"]]
            axes[0].errorbar(
                [x for x, _ in points],
                [100 * m for _, (m, _) in points],
                yerr=[_err(h) for _, (_, h) in points],
                fmt="-o",
                capsize=3,
                label=f"{site} ({family}) on its own domain",
            )
        for name in ("mor", "uniform"):
            axes[0].errorbar(
                xs,
                [100 * r["reward"][name][0] for r in rows],
                yerr=[_err(r["reward"][name][1]) for r in rows],
                fmt="--s",
                capsize=3,
                label=f"{METHOD_LABELS[name]}, all domains (router pairs)",
            )
        axes[0].axhline(50, color="grey", linestyle=":")
        axes[0].set_xticks(xs, [r["epsilon"] for r in rows])
        axes[0].set_xlabel("epsilon per site")
        axes[0].set_title("Held-out pairwise reward accuracy (%)")
        axes[0].legend(fontsize=7)
        policy_rows = [r for r in rows if r["gain"]]
        width = 0.8 / max(len(policy_rows), 1)
        for i, r in enumerate(policy_rows):
            gains = [r["gain"].get(m, (math.nan, math.nan)) for m in POLICY_METHODS]
            axes[1].bar(
                [j + i * width for j in range(len(POLICY_METHODS))],
                [100 * g for g, _ in gains],
                width,
                yerr=[_err(h) for _, h in gains],
                capsize=3,
                label=f"epsilon {r['epsilon']}",
            )
        axes[1].axhline(100 * summary["oracle_gain"][0], color="black", linestyle="--", label="oracle (ground truth)")
        axes[1].axhline(0, color="grey", linewidth=0.8)
        axes[1].set_xticks(
            range(len(POLICY_METHODS)), [METHOD_LABELS[m] for m in POLICY_METHODS], rotation=20, fontsize=8
        )
        axes[1].set_title("Policy gain over the warm start after GRPO (points)")
        axes[1].legend(fontsize=7)


def write_report(
    out: Path,
    results: dict[str, Any],
    summary: dict[str, Any],
    sizes: Sizes,
    seeds: list[int],
    command: str,
    seconds: float,
    machine: list[str],
) -> None:
    """privacy_utility.md + .png + .json in ``out``."""
    rows = summary["rows"]
    policy_rows = [r for r in rows if r["gain"]]
    lines = [
        "# Privacy / utility of the federated reward",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min; {results['computed']} seed preparations and cells "
        f"computed in this invocation, {results['from_cache']} read from the cache of earlier ones in "
        "--workdir)",
        "",
        *machine,
        "",
        "## Setup",
        "",
        f"- Seeds {seeds}: each its own benchmark world (3 sites; site k holds mostly domain k: detail, medical, "
        f"chart), public warm-start data (with the demo's deliberate flaws) and pretraining, DP noise and GRPO "
        "sampling. Sizes (those of the full `mor demo`): "
        + ", ".join(f"{k}={v}" for k, v in asdict(sizes).items())
        + ".",
        "- Sites (the product's `client_agent.train` at its defaults, DP-SGD with Opacus, PRV accountant, one "
        "pair = one sample, every site at the row's epsilon; `inf` = no DP): "
        + ", ".join(f"{s} {f}" for s, f in zip(SITES, FAMILIES))
        + " (the demo's). Every site starts from a reward model trained on public pairs without DP (`mor "
        f"coordinator public-reward`): the qwen2-vl one ({sizes.vlm_reward_epochs} epochs) on the policy's warm "
        "start, a tiny VLM after SFT on the public data (a real site starts from a public pretrained VLM), the "
        f"dual-encoders ({sizes.public_reward_epochs} epochs) from scratch.",
        "- Own domain: what `mor client eval` measures at each site on its held-out pairs of the domain it holds "
        "most of: pairwise accuracy, and top-1 (the true answer ranked above every other candidate answer of "
        "its question: all answers in all styles, other types' answers, junk).",
        "- Fused reward accuracy: share of the router's held-out labelled pairs (all domains) whose chosen answer "
        "scores higher. MoR = the learned router over calibrated scores; FedAvg RM and centralised RM are "
        "dual-encoders trained in process on the sites' pairs at the same epsilon (the centralised one pools "
        "the data: an upper reference, not federated).",
        f"- Policy (at epsilon {', '.join(r['epsilon'] for r in policy_rows if len(r['gain']) > 1) or 'none'} "
        "only, to fit the run in time; MoR alone at inf where it is listed, the reference of the DP cost): "
        f"greedy answers to the world's {sizes.eval_questions} held-out questions after GRPO "
        f"({sizes.grpo_steps} steps of {sizes.grpo_batch} completions, beta {sizes.beta}, the product's GRPO "
        "defaults, reference = the warm start) with each reward; an answer counts when it names the true "
        "answer in any style. The oracle rewards the ground truth (+1 correct, +0.25 concise). Gain = policy "
        "accuracy minus the warm start's, per seed; gain share = gain / the oracle's gain. *Best single site*: "
        "the site whose calibrated scores rank the router's training pairs best (chosen on training data).",
        "- Bytes per GRPO step: encoded ScoreRequest + ScoreReply messages to and from every site (msgpack, "
        "before TLS framing, which adds ~22 bytes per 16 KB record); FedAvg round: the reward model's "
        "parameters down to and up from every site once.",
        "",
        f"Warm start (before GRPO): {format_interval(summary['warm'])}%; oracle GRPO: "
        f"{format_interval(summary['oracle'])}%; oracle gain {format_interval(summary['oracle_gain'])} points "
        "(mean ± 95% t-interval over seeds).",
        "",
        "## Each site on its own domain (%): pairwise / top-1",
        "",
        *markdown_table(
            ["epsilon", *(f"{s} ({f})" for s, f in zip(SITES, FAMILIES)), "site epsilon (max)"],
            [
                [
                    r["epsilon"],
                    *(
                        f"{r['own'][s]['domain']}: {format_interval(r['own'][s]['pairwise'])} / "
                        f"{format_interval(r['own'][s]['top1'])}"
                        if s in r["own"]
                        else "-"
                        for s in SITES
                    ),
                    ", ".join(f"{r['site_epsilon'][s]:.2f}" for s in SITES),
                ]
                for r in rows
            ],
        ),
        "",
        "## Fused reward accuracy on the router's held-out pairs, all domains (%)",
        "",
        *markdown_table(
            ["epsilon", "MoR", "uniform", "FedAvg RM", "centralised RM", *(f"{s} alone" for s in SITES)],
            [
                [
                    r["epsilon"],
                    *(format_interval(r["reward"][k]) for k in ("mor", "uniform", "fedavg", "centralised")),
                    *(format_interval(r["reward"].get(f"single:{s}", (math.nan, math.nan))) for s in SITES),
                ]
                for r in rows
            ],
        ),
        "",
        "## Policy gain after GRPO (points over the warm start) and share of the oracle's gain",
        "",
        *markdown_table(
            ["epsilon", "reward", "policy accuracy (%)", "gain (points)", "gain share"],
            [
                [
                    r["epsilon"],
                    METHOD_LABELS[m],
                    format_interval(r["policy"][m]),
                    format_interval(r["gain"][m]),
                    format_interval(r["gain_share"][m], 1.0),
                ]
                for r in policy_rows
                for m in POLICY_METHODS
                if m in r["gain"]
            ],
        ),
        "",
        "## Communication",
        "",
        *markdown_table(
            ["epsilon", "MoR bytes per GRPO step (all sites)", "FedAvg bytes per round (all sites)", "ratio"],
            [
                [
                    r["epsilon"],
                    f"{r['mor_bytes_per_step'] / 1e3:.1f} KB",
                    f"{r['fedavg_round_bytes'] / 1e3:.1f} KB",
                    format(
                        r["fedavg_round_bytes"] / r["mor_bytes_per_step"] if r["mor_bytes_per_step"] else math.nan,
                        ".2f",
                    ),
                ]
                for r in policy_rows
            ],
        ),
    ]
    lines += ["", "![privacy/utility](privacy_utility.png)", "", "## Reading", "", *reading(summary, sizes)]
    write_markdown(out / "privacy_utility.md", lines)
    _plot(out / "privacy_utility.png", summary)
    (out / "privacy_utility.json").write_text(
        json.dumps(
            {"command": command, "seconds": seconds, "sizes": asdict(sizes), "summary": summary, "results": results},
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )


def reading(summary: dict[str, Any], sizes: Sizes) -> list[str]:
    """Plain statements of what the numbers show, computed from them (never hoped for)."""
    rows = summary["rows"]
    out = []
    for site, family in zip(SITES, FAMILIES):
        curve = [(r["epsilon"], r["own"][site]) for r in rows if site in r["own"]]
        if curve:
            out.append(
                f"- {site} ({family}) on {curve[0][1]['domain']}, pairwise / top-1 by epsilon: "
                + "; ".join(f"{e}: {format_interval(o['pairwise'])} / {format_interval(o['top1'])}" for e, o in curve)
                + "."
            )
    for other, label in (("uniform", "uniform"), ("fedavg", "the FedAvg RM")):
        sure = [r["epsilon"] for r in rows if r["paired"][other][0] - r["paired"][other][1] > 0]
        out.append(
            f"- Fused reward accuracy, MoR minus {label} (paired by seed): "
            + "; ".join(f"{r['epsilon']}: {format_interval(r['paired'][other])}" for r in rows)
            + f" points; the 95% interval excludes 0 at {', '.join(sure) or 'none'}."
        )
    gain = summary["oracle_gain"]
    if math.isnan(gain[1]) or gain[0] - gain[1] <= 0:
        out.append(
            f"- Policy: the oracle's own gain over the warm start is {format_interval(gain)} points after "
            f"{sizes.grpo_steps} GRPO steps of {sizes.grpo_batch} completions: not clearly above 0, so the "
            "gain shares are not meaningful (shown as -)."
        )
    else:
        out.append(f"- Policy: the oracle gains {format_interval(gain)} points over the warm start.")
    for r in (r for r in rows if r["gain"]):
        pairs = "; ".join(
            f"vs {METHOD_LABELS[o]} {format_interval(d)}" + (" (excludes 0)" if d[0] - d[1] > 0 else "")
            for o, d in r["paired_gain"].items()
        )
        out.append(
            f"- Epsilon {r['epsilon']}: MoR gains {format_interval(r['gain']['mor'])} points, "
            f"{format_interval(r['gain_share']['mor'], 1.0)} of the oracle's gain"
            + (
                f" (best single site by training pairs: {', '.join(r['single_sites'])}); MoR's gain minus the "
                f"others' (paired by seed, points): {pairs}."
                if pairs
                else " (MoR alone: the DP cost's reference)."
            )
        )
    costs = [r for r in rows if "dp_cost" in r]
    if costs:
        out.append(
            "- DP cost of the policy gain (MoR's gain without DP minus its gain at epsilon e, paired by seed): "
            + "; ".join(f"{r['epsilon']}: {format_interval(r['dp_cost'])}" for r in costs)
            + " points (the target is at most 3)."
        )
    ratios = [r["fedavg_round_bytes"] / r["mor_bytes_per_step"] for r in rows if r.get("mor_bytes_per_step")]
    if ratios:
        out.append(
            f"- Communication: one FedAvg round of these (small) reward models moves {min(ratios):.0f}-"
            f"{max(ratios):.0f}x the bytes of one MoR GRPO step; MoR's traffic grows with completions scored, "
            "FedAvg's with model size (a 2B-parameter reward model in fp32 is 8 GB per client and direction "
            "per round; LoRA adapters alone, tens of MB)."
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="Folder of privacy_utility.md/.png/.json."
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("privacy-utility-work"),
        help="Cache of worlds, models and cell results (resumable; delete to recompute).",
    )
    parser.add_argument("--seeds", type=int, default=3, help="Seeds (worlds, pretraining, DP noise, sampling).")
    parser.add_argument(
        "--epsilons",
        default=",".join(eps_name(e) for e in EPSILONS),
        help="Comma-separated epsilons per site ('inf' = no DP).",
    )
    parser.add_argument(
        "--policy-epsilons",
        default=",".join(eps_name(e) for e in POLICY_EPSILONS),
        help="Comma-separated epsilons (of --epsilons) whose cells also run GRPO per reward; each "
        "costs 7 GRPO runs per seed, the reward columns alone about a tenth of that.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Reduced grid: epsilons 1 and inf (GRPO at 1), 1 seed, the quick demo's sizes (a smoke "
        "run of every stage).",
    )
    parser.add_argument(
        "--no-dp-cost",
        action="store_true",
        help="Skip the GRPO run with MoR without DP (one per seed, at epsilon inf when that is among --epsilons "
        "but not --policy-epsilons): the reference MoR's gain at each policy epsilon is compared with.",
    )
    parser.add_argument("--grpo-steps", type=int, default=None, help="Override the GRPO steps per run.")
    parser.add_argument("--jobs", type=int, default=2, help="Cells run at once (one process and thread each).")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.grpo_steps:
        sizes = replace(sizes, grpo_steps=args.grpo_steps)
    try:
        epsilons = [1.0, math.inf] if args.quick else [float(e) for e in args.epsilons.split(",")]
        policy_epsilons = [1.0] if args.quick else [float(e) for e in args.policy_epsilons.split(",") if e]
    except ValueError:
        parser.error("--epsilons and --policy-epsilons must be numbers or 'inf', separated by commas")
    seeds = list(range(1 if args.quick else args.seeds))
    if not seeds or any(e <= 0 for e in epsilons) or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1 and every epsilon > 0")
    command = " ".join(["python", "-m", "benchmarks.privacy_utility", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_lines(["torch", "transformers", "trl", "opacus"])
    start = time.perf_counter()
    results = run_grid(args.workdir.resolve(), seeds, epsilons, sizes, args.jobs, policy_epsilons, not args.no_dp_cost)
    summary = summarise(results, epsilons)
    write_report(args.out, results, summary, sizes, seeds, command, time.perf_counter() - start, machine)
    print((args.out / "privacy_utility.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

"""Privacy/utility: reward and policy accuracy against epsilon for MoR and the federated baselines.

For each seed, a benchmark world (3 sites, 3 domains) and a public warm start; for each epsilon (every
site at the same epsilon), each site trains its reward model with DP-SGD through the product's own
``client_agent.train`` (families dual-encoder, qwen2-vl, llava, as in the demo), the coordinator
calibrates and trains the router on the sites' scores and trains the FedAvg and centralised reward
models at the same epsilon (``coordinator.router_run.run_router``), then GRPO with a KL penalty trains
the warm start once per fusion (MoR, uniform, FedAvg, centralised) and once with the ground truth as
reward (the oracle: the ceiling any learned reward can reach). Scores come from each site's
``ScoringService`` answering the very requests sent over TLS (``benchmarks/local_federation.py``);
bytes on the wire per GRPO step are counted from those encoded messages.

    python benchmarks/privacy_utility.py --out benchmarks/results           # full grid (the committed run)
    python benchmarks/privacy_utility.py --quick --out /tmp/privacy-utility  # reduced grid

Cells are cached in --workdir (one result.json each): an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_interval, machine_lines, mean_interval, write_markdown  # noqa: E402

SITES = ("client-0", "client-1", "client-2")
FAMILIES = ("dual-encoder", "qwen2-vl", "llava")
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
POLICY_METHODS = ("mor", "uniform", "fedavg", "centralised")
METHOD_LABELS = {"mor": "MoR", "uniform": "uniform", "fedavg": "FedAvg RM", "centralised": "centralised RM",
                 "oracle": "oracle (ground truth)", "warm": "warm start (before GRPO)"}


@dataclass(frozen=True)
class Sizes:
    """Sizes of one run; every field is recorded in the report and in each cached cell."""

    pairs: int = 600
    router_pairs: int = 900
    eval_questions: int = 300
    site_epochs: int = 3
    site_batch: int = 32
    public_rows: int = 2000
    sft_steps: int = 800
    public_reward_epochs: int = 16
    router_epochs: int = 100
    grpo_steps: int = 100
    grpo_batch: int = 32
    beta: float = 0.04
    baseline_rounds: int = 20
    baseline_epochs: int = 10


PRETRAIN_FIELDS = ("pairs", "router_pairs", "eval_questions", "public_rows", "sft_steps", "public_reward_epochs")
"""The sizes that make a seed's world and pretrained bases (a change in any other one reuses them)."""

FULL = Sizes()
QUICK = Sizes(pairs=80, router_pairs=100, eval_questions=30, site_epochs=1, site_batch=16, public_rows=256,
              sft_steps=40, public_reward_epochs=1, router_epochs=20, grpo_steps=4, grpo_batch=16, baseline_rounds=2, baseline_epochs=1)


def eps_name(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


# ----- one seed: world, public data, pretrained bases -----

def prepare_seed(root: Path, seed: int, sizes: Sizes, *, sites: Sequence[str] = SITES) -> dict[str, Any]:
    """World (one client per site), public data (with the demo's deliberate flaws) and GRPO prompts, the
    policy's warm start (tiny qwen2-vl after SFT on public data), a public-data SFT of the tiny llava and a
    dual-encoder pretrained on public pairs: the sites' starting models, as a real site would start from a
    public pretrained model. Also the warm start's and the oracle run's policy accuracy."""
    import torch

    from coordinator.sft import run_sft
    from coordinator.public_reward import save_public_reward
    from mor_secure.data.public import DEFAULT_FLAWS, generate_public_sft
    from mor_secure.data.world import generate_world
    from mor_secure.models.zoo import build_tiny_vlm

    torch.set_num_threads(1)
    folder = root / f"seed-{seed}"
    world, public = folder / "world", folder / "public"
    marker = {**{k: getattr(sizes, k) for k in PRETRAIN_FIELDS}, "sites": len(sites), "flaws": "verbose"}
    if cached(folder / "pretrained.json", marker) is None:  # else world and bases are reused (only GRPO changed)
        if folder.exists():  # its cells depend on what is rebuilt here
            shutil.rmtree(folder)
        generate_world(world, seed=seed, clients=len(sites), pairs=sizes.pairs, router_pairs=sizes.router_pairs,
                       eval_questions=sizes.eval_questions)
        generate_public_sft(public, seed=seed, n=sizes.public_rows, flaws=DEFAULT_FLAWS, exclude_world=world)
        # GRPO asks new questions: on its SFT rows the warm start recites the memorised label
        generate_public_sft(folder / "prompts", seed=seed + 10_000, n=sizes.public_rows, flaws=DEFAULT_FLAWS,
                            exclude_world=world)
        save_public_reward(public, folder / "pretrained" / "dual-encoder", epochs=sizes.public_reward_epochs,
                           seed=seed, progress=False)
        for family in ("qwen2-vl", "llava"):
            tiny = build_tiny_vlm(family, folder / "tiny" / family, seed=seed, overwrite=True)
            run_sft(tiny, public, folder / "pretrained" / family, steps=sizes.sft_steps, batch_size=32, lr=3e-3,
                    seed=seed)
        save_cached(folder / "pretrained.json", marker, {})
    warm = folder / "pretrained" / "qwen2-vl"
    return {"warm": policy_accuracy(warm, world),
            "oracle": grpo_policy(folder / "oracle", warm, folder / "prompts", world, sizes, seed, "oracle", None,
                                  None)}


# ----- one cell: (seed, epsilon) -----

def train_sites(cell: Path, seed_dir: Path, eps: float, seed: int, sizes: Sizes, *, sites: Sequence[str] = SITES,
                families: Sequence[str] = FAMILIES) -> dict[str, Any]:
    """Each site's DP reward model via ``client_agent.train`` (epsilon infinity: ``no_dp``); returns paths and
    the epsilon each site's report states."""
    from client_agent.config import load_client_config
    from client_agent.train import train_reward_model
    from mor_secure.demo.pipeline import write_toml

    out = {}
    for site, family in zip(sites, families, strict=True):
        folder = cell / "sites" / site
        folder.mkdir(parents=True, exist_ok=True)
        tls = {name: str(folder / f"unused.{name}") for name in ("ca", "cert", "key", "crl")}
        base = str(seed_dir / "pretrained" / family)
        write_toml(folder / "client.toml", {
            "site": site, "tls": tls, "coordinator": {"endpoint": "tcp://127.0.0.1:1", "name": "coord"},
            "data": {"path": str(seed_dir / "world" / site)},
            "model": {"family": family, "base": base},
            "train": {"out": str(folder / "reward-model"), "epochs": sizes.site_epochs,
                      "batch_size": sizes.site_batch, "lr": 0.01, "seed": seed, "checkpoint_every": 100000},
            "privacy": {"target_epsilon": 1.0 if math.isinf(eps) else eps, "max_epsilon": 1e6,
                        "ledger": str(folder / "budget.jsonl")},
        })
        result = train_reward_model(load_client_config(folder / "client.toml"), no_dp=math.isinf(eps),
                                    resume=False, progress=False, new_ledger=True)
        out[site] = {"model": str(result.out_dir), "family": family, "epsilon": result.report.epsilon}
    return out


def coordinator_config(cell: Path, seed_dir: Path, eps: float, seed: int, sizes: Sizes, *,
                       sites: Sequence[str] = SITES) -> Any:
    """The coordinator's config for the router and the in-process baselines at the cell's epsilon."""
    from coordinator.config import load_coordinator_config
    from mor_secure.demo.pipeline import write_toml

    tls = {name: str(cell / f"unused.{name}") for name in ("ca", "cert", "key", "crl")}
    path = cell / "coordinator.toml"
    write_toml(path, {
        "name": "coord", "bind": "tcp://127.0.0.1:1", "tls": tls,
        "clients": {"allow": list(sites), "quorum": 2},
        "ledger": {"path": str(cell / "ledger.jsonl")},
        "router": {"policy": str(seed_dir / "pretrained" / "qwen2-vl"), "data": str(seed_dir / "world" / "server" /
                   "router"), "out": str(cell / "router"), "epochs": sizes.router_epochs, "seed": seed},
        "baselines": {"data": [str(seed_dir / "world" / s) for s in sites], "rounds": sizes.baseline_rounds,
                      "epochs": sizes.baseline_epochs, "dp": not math.isinf(eps),
                      "target_epsilon": 1.0 if math.isinf(eps) else eps, "seed": seed},
    })
    return load_coordinator_config(path)


def policy_accuracy(policy: Path, world: Path) -> dict[str, Any]:
    """Greedy held-out accuracy of a policy, overall and per domain."""
    from coordinator.policy_eval import evaluate_policy

    result = evaluate_policy(policy, world / "server" / "eval", progress=False)
    return {"accuracy": result["accuracy"], "answered": result["answered_share"],
            "per_domain": {d: r["accuracy"] for d, r in result["per_domain"].items()},
            "per_question_type": {t: r["accuracy"] for t, r in result["per_question_type"].items()}}


def grpo_policy(out: Path, warm: Path, prompts: Path, world: Path, sizes: Sizes, seed: int, method: str,
                config: Any, federation: Any, *, quorum: int = 2) -> dict[str, Any]:
    """GRPO of the warm start with reward ``method`` (KL to the warm start; a completion's client-score reward
    counts when ``quorum`` of the fusion's sites scored it), then its held-out accuracy and, for client-score
    rewards, the bytes the federation carried per step."""
    from coordinator.grpo import run_grpo
    from coordinator.grpo_config import GRPORunConfig
    from coordinator.rewards import FederatedReward, RewardContext, build_reward, needs_federation

    cfg = GRPORunConfig(policy=str(warm), data=prompts, reward=method, out=out, steps=sizes.grpo_steps,
                        beta=sizes.beta, batch_size=sizes.grpo_batch, save_steps=10**6, report_to="none",
                        logging_steps=max(1, sizes.grpo_steps // 10), seed=seed, quorum=quorum)
    strategy = build_reward(method, RewardContext(out.parent / "router" / "mixture", config))
    before = (federation.bytes_sent, federation.bytes_received) if federation else (0, 0)
    if needs_federation(strategy):
        reward = FederatedReward(strategy, federation.scorer, quorum=quorum, spread_penalty=cfg.spread_penalty,
                                 image_contrast=cfg.image_contrast, name=method)
    elif method != "oracle":
        reward = FederatedReward(strategy, name=method)
    else:
        reward = strategy
    start = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # a run cut short earlier: start over (its cell was not cached)
    policy = run_grpo(cfg, reward, prompts)
    result = {**policy_accuracy(policy, world), "grpo_seconds": time.perf_counter() - start}
    if federation is not None and needs_federation(strategy):
        result["bytes_per_step"] = ((federation.bytes_sent - before[0]) + (federation.bytes_received - before[1])) \
            / sizes.grpo_steps
    return result


def run_cell(root: Path, seed: int, eps: float, sizes: Sizes) -> dict[str, Any]:
    """Sites, router + baselines, and one GRPO run per fusion at one (seed, epsilon)."""
    import torch

    from coordinator.router_run import run_router
    from local_federation import LocalFederation

    torch.set_num_threads(1)
    seed_dir = root / f"seed-{seed}"
    cell = seed_dir / f"eps-{eps_name(eps)}"
    sites = train_sites(cell, seed_dir, eps, seed, sizes)
    config = coordinator_config(cell, seed_dir, eps, seed, sizes)
    federation = LocalFederation({site: s["model"] for site, s in sites.items()})
    report = run_router(config, collect=federation.collect)
    summary = json.loads((cell / "router" / "baselines" / "summary.json").read_text(encoding="utf-8"))
    policies = {method: grpo_policy(cell / f"grpo-{method}", seed_dir / "pretrained" / "qwen2-vl",
                                    seed_dir / "prompts", seed_dir / "world", sizes, seed, method, config, federation)
                for method in POLICY_METHODS}
    return {"seed": seed, "epsilon": eps_name(eps), "sites": sites,
            "reward_accuracy": {"mor": report["accuracy"], "uniform": report["uniform_accuracy"],
                                "fedavg": summary["fedavg"]["accuracy"],
                                "centralised": summary["centralised"]["accuracy"],
                                **{f"single:{s}": a for s, a in report["site_accuracy"].items()}},
            "weights_by_domain": report.get("weights_by"), "test_pairs": report["test_pairs"],
            "fedavg_round_bytes": 2 * len(SITES) * summary["fedavg"]["parameter_bytes"],
            "fedavg_parameter_bytes": summary["fedavg"]["parameter_bytes"],
            "baseline_epsilon": {k: summary[k].get("epsilon") for k in ("fedavg", "centralised")},
            "policy": policies}


# ----- the grid -----

def _plain(sizes: Sizes | dict[str, Any]) -> Any:
    return json.loads(json.dumps(asdict(sizes) if isinstance(sizes, Sizes) else sizes))


def cached(path: Path, sizes: Sizes | dict[str, Any]) -> dict[str, Any] | None:
    """A cell's result when it exists and was computed with these sizes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data["result"] if data.get("sizes") == _plain(sizes) else None


def save_cached(path: Path, sizes: Sizes | dict[str, Any], result: dict[str, Any]) -> None:
    """Write what ``cached`` reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sizes": _plain(sizes), "result": result}, indent=1) + "\n", encoding="utf-8")


def _task(kind: str, root: Path, seed: int, eps: float, sizes: Sizes) -> dict[str, Any]:
    """One unit of work in a worker process (spawned: its own torch with one thread, no progress bars)."""
    import os

    os.environ["TQDM_DISABLE"] = "1"
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    return prepare_seed(root, seed, sizes) if kind == "seed" else run_cell(root, seed, eps, sizes)


def _what(kind: str, seed: int, eps: float) -> str:
    return f"seed {seed} prepared" if kind == "seed" else f"seed {seed}, epsilon {eps_name(eps)}"


def run_grid(root: Path, seeds: list[int], epsilons: list[float], sizes: Sizes, jobs: int) -> dict[str, Any]:
    """Every seed preparation, then every (seed, epsilon) cell, ``jobs`` at a time; cached in ``root``."""
    results: dict[str, Any] = {"seeds": {}, "cells": [], "computed": 0, "from_cache": 0}
    pending: dict[Future, tuple[str, int, float]] = {}

    def record(kind: str, seed: int, eps: float, result: dict[str, Any]) -> None:
        if kind == "seed":
            results["seeds"][seed] = result
        else:
            results["cells"].append(result)

    def result_path(kind: str, seed: int, eps: float) -> Path:
        folder = root / f"seed-{seed}"
        return folder / ("prepared.json" if kind == "seed" else f"eps-{eps_name(eps)}" / Path("result.json"))

    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        def submit(kind: str, seed: int, eps: float) -> None:
            hit = cached(result_path(kind, seed, eps), sizes)
            if hit is not None:
                print(f"cached: {_what(kind, seed, eps)}", flush=True)
                record(kind, seed, eps, hit)
                results["from_cache"] += 1
                if kind == "seed":
                    for e in epsilons:
                        submit("cell", seed, e)
                return
            pending[pool.submit(_task, kind, root, seed, eps, sizes)] = (kind, seed, eps)

        for seed in seeds:
            submit("seed", seed, math.nan)
        start = time.perf_counter()
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                kind, seed, eps = pending.pop(future)
                result = future.result()
                save_cached(result_path(kind, seed, eps), sizes, result)
                record(kind, seed, eps, result)
                results["computed"] += 1
                print(f"[{time.perf_counter() - start:7.0f} s] done: {_what(kind, seed, eps)}", flush=True)
                if kind == "seed":
                    for e in epsilons:
                        submit("cell", seed, e)
    return results


# ----- the report -----

def summarise(results: dict[str, Any], epsilons: list[float]) -> dict[str, Any]:
    """Per epsilon and method: mean and 95% half-width over seeds of reward and policy accuracy, the share
    of the oracle's gain, and bytes per step."""
    seeds = results["seeds"]
    warm = [s["warm"]["accuracy"] for s in seeds.values()]
    oracle = [s["oracle"]["accuracy"] for s in seeds.values()]
    out: dict[str, Any] = {"warm": mean_interval(warm), "oracle": mean_interval(oracle),
                           "oracle_gain": mean_interval([o - w for o, w in zip(oracle, warm)]), "rows": []}
    for eps in epsilons:
        cells = [c for c in results["cells"] if c["epsilon"] == eps_name(eps)]
        if not cells:
            continue
        names = sorted({k for c in cells for k in c["reward_accuracy"]})
        row: dict[str, Any] = {"epsilon": eps_name(eps), "seeds": len(cells),
                               "reward": {k: mean_interval([c["reward_accuracy"][k] for c in cells]) for k in names},
                               "policy": {}, "gain_share": {}}
        for method in POLICY_METHODS:
            accs = [c["policy"][method]["accuracy"] for c in cells]
            row["policy"][method] = mean_interval(accs)
            shares = []
            for c, acc in zip(cells, accs):
                base = seeds[c["seed"]]["warm"]["accuracy"]
                gain = seeds[c["seed"]]["oracle"]["accuracy"] - base
                shares.append((acc - base) / gain if gain > 0 else math.nan)
            finite = [s for s in shares if math.isfinite(s)]
            # a share of a gain the oracle did not clearly make is noise divided by noise: not reported
            oracle_gained = out["oracle_gain"][0] - out["oracle_gain"][1] > 0
            row["gain_share"][method] = mean_interval(finite) if finite and oracle_gained else (math.nan, math.nan)
            row.setdefault("policy_minus_warm", {})[method] = mean_interval(
                [acc - seeds[c["seed"]]["warm"]["accuracy"] for c, acc in zip(cells, accs)])
        row["paired"] = {other: mean_interval([c["reward_accuracy"]["mor"] - c["reward_accuracy"][other]
                                               for c in cells]) for other in ("uniform", "fedavg")}
        row["mor_bytes_per_step"] = sum(c["policy"]["mor"].get("bytes_per_step", 0) for c in cells) / len(cells)
        row["fedavg_round_bytes"] = sum(c["fedavg_round_bytes"] for c in cells) / len(cells)
        row["site_epsilon"] = {s: max(c["sites"][s]["epsilon"] for c in cells) for s in SITES}
        out["rows"].append(row)
    return out


def _plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    xs = list(range(len(rows)))
    labels = [r["epsilon"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    reward_methods = ["mor", "uniform", "fedavg", "centralised"] + [f"single:{s}" for s in SITES]
    for name in reward_methods:
        means = [100 * r["reward"].get(name, (math.nan, math.nan))[0] for r in rows]
        errs = [100 * (0 if math.isnan(h) else h) for h in (r["reward"].get(name, (0, math.nan))[1] for r in rows)]
        style = "-o" if ":" not in name else ":."
        axes[0].errorbar(xs, means, yerr=errs, fmt=style, capsize=3, label=METHOD_LABELS.get(name, name))
    axes[0].axhline(50, color="grey", linestyle=":")
    axes[0].set_title("Held-out pairwise reward accuracy (%)")
    for name in POLICY_METHODS:
        means = [100 * r["policy"][name][0] for r in rows]
        errs = [100 * (0 if math.isnan(r["policy"][name][1]) else r["policy"][name][1]) for r in rows]
        axes[1].errorbar(xs, means, yerr=errs, fmt="-o", capsize=3, label=METHOD_LABELS[name])
    for key, style in (("oracle", "--"), ("warm", ":")):
        axes[1].axhline(100 * summary[key][0], color="black", linestyle=style, label=METHOD_LABELS[key])
    axes[1].set_title("Policy accuracy after GRPO (%)")
    for ax in axes:
        ax.set_xticks(xs, labels)
        ax.set_xlabel("epsilon per site")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, results: dict[str, Any], summary: dict[str, Any], sizes: Sizes, seeds: list[int],
                 command: str, seconds: float, machine: list[str]) -> None:
    """privacy_utility.md + .png + .json in ``out``."""
    rows = summary["rows"]
    lines = ["# Privacy / utility of the federated reward", "",
             f"Command: `{command}` ({seconds / 60:.1f} min; {results['computed']} seed preparations and cells "
             f"computed in this invocation, {results['from_cache']} read from the cache of earlier ones in "
             "--workdir)", "", *machine, "",
             "## Setup", "",
             f"- Seeds {seeds}: each its own benchmark world (3 sites; site k holds mostly domain k: detail, medical, "
             f"chart), public warm-start data and pretraining, DP noise and GRPO sampling. Sizes: "
             + ", ".join(f"{k}={v}" for k, v in asdict(sizes).items()) + ".",
             "- Sites (the product's `client_agent.train`, DP-SGD with Opacus, PRV accountant, one pair = one sample, "
             "every site at the row's epsilon; `inf` = no DP): client-0 dual-encoder, client-1 qwen2-vl LoRA, "
             "client-2 llava LoRA. The VLM sites start from a tiny VLM pretrained on the public data (a real site "
             "starts from a public pretrained VLM), the qwen2-vl one being the policy's warm start; the "
             "dual-encoder site from a dual-encoder trained on public pairs (`mor coordinator public-reward`).",
             "- Reward accuracy: share of the router's held-out labelled pairs (all domains) whose chosen answer "
             "scores higher. MoR = the learned router over calibrated scores; FedAvg RM and centralised RM are "
             "dual-encoders trained in process on the sites' pairs at the same epsilon (the centralised one pools "
             "the data: an upper reference, not federated).",
             f"- Policy accuracy: greedy exact-match answers to the world's held-out questions after GRPO "
             f"({sizes.grpo_steps} steps of {sizes.grpo_batch} completions, 8 per prompt, beta {sizes.beta}, "
             "reference = the warm start) with each reward; the oracle rewards the ground truth (+1 correct, "
             "+0.25 concise). Gain share = (method - warm start) / (oracle - warm start), per seed.",
             "- Bytes per GRPO step: encoded ScoreRequest + ScoreReply messages to and from every site (msgpack, "
             "before TLS framing, which adds ~22 bytes per 16 KB record); FedAvg round: the reward model's "
             "parameters down to and up from every site once.", "",
             f"Warm start (before GRPO): {format_interval(summary['warm'])}%; "
             f"oracle GRPO: {format_interval(summary['oracle'])}% "
             "(mean ± 95% t-interval over seeds).", "",
             "## Held-out pairwise reward accuracy (%)", "",
             "| epsilon | MoR | uniform | FedAvg RM | centralised RM | "
             + " | ".join(f"{s} ({f})" for s, f in zip(SITES, FAMILIES)) + " | site epsilon (max over seeds) |",
             "|---" * (6 + len(SITES)) + "|"]
    for r in rows:
        rw = r["reward"]
        fused = ("mor", "uniform", "fedavg", "centralised")
        lines.append(f"| {r['epsilon']} | " + " | ".join(format_interval(rw[k]) for k in fused)
                     + " | " + " | ".join(format_interval(rw.get(f"single:{s}", (math.nan, math.nan))) for s in SITES)
                     + " | " + ", ".join(f"{r['site_epsilon'][s]:.2f}" for s in SITES) + " |")
    lines += ["", "## Policy accuracy after GRPO (%) and share of the oracle's gain", "",
              "| epsilon | " + " | ".join(METHOD_LABELS[m] for m in POLICY_METHODS) + " | "
              + " | ".join(f"{METHOD_LABELS[m]} gain share" for m in POLICY_METHODS) + " |",
              "|---" * (1 + 2 * len(POLICY_METHODS)) + "|"]
    for r in rows:
        lines.append(f"| {r['epsilon']} | "
                     + " | ".join(format_interval(r["policy"][m]) for m in POLICY_METHODS) + " | "
                     + " | ".join(format_interval(r["gain_share"][m], 1.0) for m in POLICY_METHODS) + " |")
    lines += ["", "## Communication", "",
              "| epsilon | MoR bytes per GRPO step (all sites) | FedAvg bytes per round (all sites) | ratio |",
              "|---|---|---|---|"]
    for r in rows:
        ratio = r["fedavg_round_bytes"] / r["mor_bytes_per_step"] if r["mor_bytes_per_step"] else math.nan
        lines.append(f"| {r['epsilon']} | {r['mor_bytes_per_step'] / 1e3:.1f} KB | "
                     f"{r['fedavg_round_bytes'] / 1e3:.1f} KB | {ratio:.2f} |")
    lines += ["", "![privacy/utility](privacy_utility.png)", "", "## Reading", "", *reading(summary, sizes)]
    write_markdown(out / "privacy_utility.md", lines)
    _plot(out / "privacy_utility.png", summary)
    (out / "privacy_utility.json").write_text(json.dumps({"command": command, "seconds": seconds,
                                                          "sizes": asdict(sizes), "summary": summary,
                                                          "results": results}, indent=1) + "\n", encoding="utf-8")


def reading(summary: dict[str, Any], sizes: Sizes) -> list[str]:
    """Plain statements of what the numbers show, computed from them (never hoped for)."""
    rows = summary["rows"]
    out = []
    for other, label in (("uniform", "uniform"), ("fedavg", "the FedAvg RM")):
        above = [r["epsilon"] for r in rows if r["paired"][other][0] > 0]
        sure = [r["epsilon"] for r in rows if r["paired"][other][0] - r["paired"][other][1] > 0]
        out.append(f"- Reward accuracy, MoR minus {label} (paired by seed): above at epsilon "
                   f"{', '.join(above) or 'none'} of {len(rows)}; the 95% interval excludes 0 at "
                   f"{', '.join(sure) or 'none'}. Per epsilon: "
                   + "; ".join(f"{r['epsilon']}: {format_interval(r['paired'][other])}" for r in rows) + " points.")
    gain = summary["oracle_gain"]
    if math.isnan(gain[1]) or gain[0] - gain[1] <= 0:
        out.append(f"- Policy: the oracle's own gain over the warm start is {format_interval(gain)} points after "
                   f"{sizes.grpo_steps} GRPO steps of {sizes.grpo_batch} completions: at this budget even the "
                   "ground-truth reward does not "
                   "move held-out accuracy beyond seed noise, so the policy columns cannot rank the rewards and the "
                   "gain shares are not meaningful (shown as - where the oracle gained nothing).")
    else:
        out.append(f"- Policy: the oracle gains {format_interval(gain)} points over the warm start; gain shares "
                   "compare each "
                   "reward with that ceiling.")
    out.append("- Policy accuracy minus the warm start (paired by seed), per epsilon: " + "; ".join(
        f"{r['epsilon']}: " + ", ".join(f"{METHOD_LABELS[m]} {format_interval(r['policy_minus_warm'][m])}"
                                        for m in POLICY_METHODS)
        for r in rows) + " points.")
    ratios = [r["fedavg_round_bytes"] / r["mor_bytes_per_step"] for r in rows if r["mor_bytes_per_step"]]
    if ratios:
        out.append(f"- Communication: one FedAvg round of these (small) reward models moves {min(ratios):.0f}-"
                   f"{max(ratios):.0f}x the bytes of one MoR GRPO step; MoR's traffic grows with completions scored, "
                   "FedAvg's with model size (a 2B-parameter reward model in fp32 is 8 GB per client and direction "
                   "per round; LoRA adapters alone, tens of MB).")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="Folder of privacy_utility.md/.png/.json.")
    parser.add_argument("--workdir", type=Path, default=Path("privacy-utility-work"),
                        help="Cache of worlds, models and cell results (resumable; delete to recompute).")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds (worlds, pretraining, DP noise, sampling).")
    parser.add_argument("--epsilons", default=",".join(eps_name(e) for e in EPSILONS),
                        help="Comma-separated epsilons per site ('inf' = no DP).")
    parser.add_argument("--quick", action="store_true",
                        help="Reduced grid: epsilons 1 and inf, 1 seed, tiny sizes (a smoke run of every stage).")
    parser.add_argument("--grpo-steps", type=int, default=None, help="Override the GRPO steps per run.")
    parser.add_argument("--jobs", type=int, default=2, help="Cells run at once (one process and thread each).")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.grpo_steps:
        sizes = replace(sizes, grpo_steps=args.grpo_steps)
    try:
        epsilons = [1.0, math.inf] if args.quick else [float(e) for e in args.epsilons.split(",")]
    except ValueError:
        parser.error("--epsilons must be numbers or 'inf', separated by commas")
    seeds = list(range(1 if args.quick else args.seeds))
    if not seeds or any(e <= 0 for e in epsilons) or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1 and every epsilon > 0")
    command = " ".join(["python", "benchmarks/privacy_utility.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_lines(["torch", "transformers", "trl", "opacus"])
    start = time.perf_counter()
    results = run_grid(args.workdir.resolve(), seeds, epsilons, sizes, args.jobs)
    summary = summarise(results, epsilons)
    write_report(args.out, results, summary, sizes, seeds, command, time.perf_counter() - start, machine)
    print((args.out / "privacy_utility.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

"""Robustness after GRPO: policy accuracy when 1 (then 2) of 4 real DP sites return poisoned scores.

Per seed, a benchmark world with 4 sites (client-3 holds mostly `detail` again, in another style) whose
reward models are trained once with DP-SGD at epsilon 8 by the product's trainer (the demo's families,
client-3 the `detail` owner's; the VLM on the seed's pretrained base), reusing the privacy/utility
benchmark's stages (``privacy_utility``). The adversary is client-0, the `detail` owner: its honest scores
are rewritten at the scoring interface (``LocalFederation(poison=...)``): ``inverted`` (minus its honest
score), ``random`` (seeded noise with its honest scores' mean and spread) or ``fixed-wrong`` (a high score
for one fixed wrong answer word of its domain, else its honest score shrunk towards its mean). Per setting
the router is trained with ``[router] defence = "none"`` and ``"agreement"``, a FedAvg reward model is
trained on the sites' data with the adversary's pairs poisoned the same way, and GRPO trains the warm start
with each reward: MoR, MoR + defence, uniform and FedAvg RM.

    python -m benchmarks.robustness_policy --out benchmarks/results            # 4 settings, 2 seeds
    python -m benchmarks.robustness_policy --quick --out /tmp/robustness-policy  # smoke run of every stage

Every stage is cached in --workdir (one JSON each): an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.common import format_interval as _pm
from benchmarks.common import machine_lines, mean_interval, write_markdown
from benchmarks.local_federation import Poison
from benchmarks.privacy_utility import FULL, QUICK, Sizes, eps_name
from benchmarks.stages import Task, cached_results, run_tasks
from mor_secure.cache import read_cached
from mor_secure.demo.pipeline import FAMILIES as DEMO_FAMILIES
from mor_secure.reporting import figure, markdown_table

SITES = ("client-0", "client-1", "client-2", "client-3")
FAMILIES = (*DEMO_FAMILIES, DEMO_FAMILIES[0])
"""The demo's site families; client-3, a second `detail` site, has the `detail` owner's."""
EPSILON = 8.0
"""Every site's (and the FedAvg clients') epsilon in the full grid; the quick grid trains without DP."""
FIXED_WORD = "purple"
"""The fixed-wrong adversary's answer (a `detail` colour: wrong on 5 of 6 colour questions, every other one)."""

SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "clean": ("clean", ()),
    "1x inverted": ("inverted", ("client-0",)),
    "1x random": ("random", ("client-0",)),
    "1x fixed-wrong": ("fixed-wrong", ("client-0",)),
    "2x inverted": ("inverted", ("client-0", "client-1")),
}
"""Setting name -> (attack, adversarial sites); client-0 owns `detail`, client-1 `medical`."""
DEFAULT_SETTINGS = ("clean", "1x inverted", "1x random", "1x fixed-wrong")
METHODS = ("mor", "mor-defence", "uniform", "fedavg")
LABELS = {"mor": "MoR", "mor-defence": "MoR + defence", "uniform": "uniform", "fedavg": "FedAvg RM"}
QUORUM = 2
"""Fewest sites that must score a completion for its reward to count (as in the privacy/utility benchmark)."""
TARGET_POINTS = 2.0
"""The robustness target: with 1 adversarial client of 4, MoR loses at most 2 points of policy accuracy."""
QUICK_SETTINGS = ("clean", "1x inverted")
QUICK_SIZES = replace(QUICK, eval_questions=12, grpo_steps=2)


@dataclass(frozen=True)
class Grid:
    """What every stage's result depends on besides its own arguments (stamped on each cached stage)."""

    sizes: Sizes
    epsilon: float

    def stamp(self) -> dict[str, Any]:
        return {"sizes": asdict(self.sizes), "epsilon": eps_name(self.epsilon)}


def folder_name(setting: str) -> str:
    return setting.replace(" ", "-")


# ----- the poisons -----


@dataclass(frozen=True)
class Inverted:
    """Minus the honest score: the adversary ranks every pair backwards."""

    def __call__(self, scores: list[float], completions: Sequence[Any]) -> list[float]:
        return [-s for s in scores]


class RandomScores:
    """Seeded Gaussian noise with the honest scores' mean and spread, independent of the completion."""

    def __init__(self, mean: float, spread: float, seed: int) -> None:
        self.mean, self.spread, self.rng = mean, spread, random.Random(seed)

    def __call__(self, scores: list[float], completions: Sequence[Any]) -> list[float]:
        return [self.rng.gauss(self.mean, self.spread) for _ in scores]


@dataclass(frozen=True)
class FixedWrong:
    """``high`` when the completion parses (``coordinator.policy.evaluation.parse_answer``) to ``word``; otherwise
    the honest score shrunk by ``shrink`` towards ``mean``, so the adversary still ranks the other answers honestly."""

    word: str
    high: float
    mean: float
    shrink: float = 0.5

    def __call__(self, scores: list[float], completions: Sequence[Any]) -> list[float]:
        from coordinator.policy.evaluation import parse_answer

        return [
            self.high if parse_answer(c).answer == self.word else self.mean + self.shrink * (s - self.mean)
            for s, c in zip(scores, completions, strict=True)
        ]


def make_poison(attack: str, honest: dict[str, float], seed: int) -> Poison:
    """The poison of ``attack`` for a site whose honest scores have ``honest`` mean and std."""
    if attack == "inverted":
        return Inverted()
    if attack == "random":
        return RandomScores(honest["mean"], honest["std"], seed)
    if attack == "fixed-wrong":
        return FixedWrong(FIXED_WORD, honest["mean"] + 3 * honest["std"], honest["mean"])
    raise ValueError(f"unknown attack {attack!r}")


def poisons(setting: str, stats: dict[str, dict[str, float]], seed: int, stream: str) -> dict[str, Poison]:
    """Each adversary's poison in ``setting``; ``stream`` names the caller so random poisons draw apart."""
    attack, adversaries = SETTINGS[setting]
    return {site: make_poison(attack, stats[site], hash_seed(seed, setting, site, stream)) for site in adversaries}


def hash_seed(*parts: Any) -> int:
    """A stable integer seed from ``parts`` (``random.Random`` on a string is deterministic)."""
    return random.Random(":".join(map(str, parts))).getrandbits(31)


def poison_pairs(rows: Any, attack: str, seed: int) -> tuple[Any, int]:
    """A site's pairs poisoned at the data, and how many were swapped: ``inverted`` swaps every pair,
    ``random`` a seeded random half, ``fixed-wrong`` the pairs whose rejected answer is :data:`FIXED_WORD`."""
    from coordinator.policy.evaluation import parse_answer

    if attack == "inverted":
        swap = set(range(len(rows)))
    elif attack == "random":
        swap = set(random.Random(seed).sample(range(len(rows)), len(rows) // 2))
    elif attack == "fixed-wrong":
        swap = {i for i, r in enumerate(rows["rejected"]) if parse_answer(r).answer == FIXED_WORD}
    else:
        raise ValueError(f"unknown attack {attack!r}")

    def flip(row: dict[str, Any], index: int) -> dict[str, Any]:
        return {"chosen": row["rejected"], "rejected": row["chosen"]} if index in swap else {}

    return rows.map(flip, with_indices=True), len(swap)


# ----- stages -----


def prepare(root: Path, grid: Grid, seed: int, bases: Path | None) -> dict[str, Any]:
    """World, public data, pretrained bases, warm start and oracle (``privacy_utility.prepare_seed``), the 4
    DP sites, and every site's honest score mean and spread on the router's training pairs.

    With ``bases`` (a privacy/utility work folder holding this seed prepared at the same sizes) only the
    4-site world is generated here; the public data, pretrained bases, warm-start and oracle accuracy are
    that run's (the same seed gives the same held-out questions and router pairs)."""
    from benchmarks import privacy_utility
    from benchmarks.local_federation import LocalFederation
    from coordinator.mixture.router_run import pair_items
    from mor_secure.data.loader import load_preferences
    from mor_secure.data.world import generate_world

    seed_dir = root / f"seed-{seed}"
    reused = bases and read_cached(bases / f"seed-{seed}" / "prepared.json", asdict(grid.sizes))
    if reused:
        if seed_dir.exists():
            shutil.rmtree(seed_dir)
        generate_world(
            seed_dir / "world",
            seed=seed,
            clients=len(SITES),
            pairs=grid.sizes.pairs,
            router_pairs=grid.sizes.router_pairs,
            eval_questions=grid.sizes.eval_questions,
        )
        for name in ("public", "prompts", "pretrained"):
            (seed_dir / name).symlink_to(bases / f"seed-{seed}" / name, target_is_directory=True)
        prepared = {**reused, "bases": str(bases / f"seed-{seed}")}
    else:
        prepared = privacy_utility.prepare_seed(root, seed, grid.sizes, sites=SITES)
    sites = privacy_utility.train_sites(
        seed_dir, seed_dir, grid.epsilon, seed, grid.sizes, sites=SITES, families=FAMILIES
    )
    rows = load_preferences(seed_dir / "world" / "server" / "router", split="train")
    honest = LocalFederation({s: v["model"] for s, v in sites.items()}).scorer(*pair_items(rows))
    stats = {s: {"mean": statistics.fmean(v), "std": statistics.pstdev(v)} for s, v in honest.items()}
    return {**prepared, "sites": sites, "honest_stats": stats}


def fedavg_data(seed_dir: Path, setting_dir: Path, setting: str, seed: int) -> tuple[list[Path], dict[str, int]]:
    """[baselines] data for the setting: each honest site's folder, each adversary's as a poisoned copy."""
    import datasets

    attack, adversaries = SETTINGS[setting]
    folders, swapped = [], {}
    for site in SITES:
        source = seed_dir / "world" / site
        if site not in adversaries:
            folders.append(source)
            continue
        parts, count = {}, 0
        for split, rows in datasets.load_from_disk(str(source)).items():
            parts[split], n = poison_pairs(rows, attack, hash_seed(seed, setting, site, split))
            count += n if split == "train" else 0
        target = setting_dir / "fedavg-data" / site
        if target.exists():
            shutil.rmtree(target)
        datasets.DatasetDict(parts).save_to_disk(str(target))
        folders.append(target)
        swapped[site] = count
    return folders, swapped


def routers(root: Path, grid: Grid, seed: int, setting: str, prepared: dict[str, Any]) -> dict[str, Any]:
    """The router with each defence over the (poisoned) federation, and the FedAvg RM on poisoned data."""
    from benchmarks import privacy_utility
    from benchmarks.local_federation import LocalFederation
    from coordinator.baselines.fedavg import train_fedavg
    from coordinator.mixture.router_run import run_router
    from coordinator.mixture.trust import TrustError
    from mor_secure.data.loader import load_preferences
    from mor_secure.ledger import read_entries

    seed_dir = root / f"seed-{seed}"
    setting_dir = seed_dir / folder_name(setting)
    federation = LocalFederation(
        {s: v["model"] for s, v in prepared["sites"].items()},
        poison=poisons(setting, prepared["honest_stats"], seed, "router"),
    )
    memo: list[Any] = []

    def collect(config: Any, splits: list[Any]) -> Any:  # both routers see the same scores: score once
        if not memo:
            memo.extend(federation.collect(config, splits))
        return memo

    out: dict[str, Any] = {}
    for defence in ("none", "agreement"):
        (setting_dir / defence).mkdir(parents=True, exist_ok=True)
        config = privacy_utility.coordinator_config(
            setting_dir / defence, seed_dir, grid.epsilon, seed, grid.sizes, sites=SITES
        )
        config.router.defence, config.baselines.data = defence, []
        try:
            report = run_router(config, collect=collect)
        except TrustError as exc:  # every site excluded: no defended mixture; the ledger holds the decisions
            trust = [e.body for e in read_entries(config.ledger.path) if e.kind == "trust"][-len(SITES) :]
            out[defence] = {"error": str(exc), "sites": [], "trust": {t["site"]: t for t in trust}}
            continue
        out[defence] = {
            k: report[k]
            for k in ("accuracy", "uniform_accuracy", "site_accuracy", "weights_by", "sites", "trust", "test_pairs")
        }
        if defence == "none":
            folders, swapped = fedavg_data(seed_dir, setting_dir, setting, seed)
            fedavg = train_fedavg(replace(config.baselines, data=folders))
            fedavg.save(config.router.out / "baselines" / "fedavg")
            test = load_preferences(config.router.data, split=config.router.test_split)
            out["fedavg"] = {
                "accuracy": fedavg.pairwise_accuracy(test),
                "swapped_pairs": swapped,
                "epsilon": fedavg.record["epsilon"],
            }
    out["site_domain_accuracy"] = site_domain_accuracy(memo[1])
    return out


def site_domain_accuracy(split: Any) -> dict[str, dict[str, float]]:
    """Each site's held-out pairwise accuracy per domain, from its scores as returned (poisoned or not)."""
    import torch

    from coordinator.mixture.router import pairwise_wins

    domains = list(split.rows["domain"])
    out: dict[str, dict[str, float]] = {}
    for site, scores in sorted(split.scores.items()):
        margin = torch.tensor(
            [math.nan if a is None or b is None else a - b for a, b in zip(scores[: split.size], scores[split.size :])]
        )
        out[site] = {d: pairwise_wins(margin[torch.tensor([x == d for x in domains])]) for d in sorted(set(domains))}
    return out


def same_mixture(a: Path, b: Path) -> bool:
    """Whether two saved mixtures hold byte-identical files (the same router and calibration)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files
    )


def policy(
    root: Path,
    grid: Grid,
    seed: int,
    setting: str,
    method: str,
    prepared: dict[str, Any],
    router: dict[str, Any],
    mor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """GRPO of the warm start with ``method``'s reward over the (poisoned) federation, then its held-out
    accuracy. MoR + defence reuses MoR's run when the defence kept every site (byte-identical mixture)."""
    from benchmarks import privacy_utility
    from benchmarks.local_federation import LocalFederation
    from coordinator.config import load_coordinator_config

    seed_dir = root / f"seed-{seed}"
    run_dir = seed_dir / folder_name(setting) / ("agreement" if method == "mor-defence" else "none")
    if method == "mor-defence":
        if "error" in router["agreement"]:
            return {"skipped": router["agreement"]["error"]}
        if same_mixture(run_dir / "router" / "mixture", run_dir.parent / "none" / "router" / "mixture"):
            return {**{k: v for k, v in mor.items() if k != "stage_seconds"}, "same_as": "mor"}
    config = load_coordinator_config(run_dir / "coordinator.toml")
    federation = None
    if method != "fedavg":
        federation = LocalFederation(
            {s: v["model"] for s, v in prepared["sites"].items()},
            poison=poisons(setting, prepared["honest_stats"], seed, method),
        )
    # a defended mixture of one site could never reach the quorum of 2 (every reward None, no learning)
    quorum = min(QUORUM, len(router["agreement"]["sites"])) if method == "mor-defence" else QUORUM
    result = privacy_utility.grpo_policy(
        run_dir / f"grpo-{method}",
        seed_dir / "pretrained" / "qwen2-vl",
        seed_dir / "prompts",
        seed_dir / "world",
        grid.sizes,
        seed,
        "mor" if method.startswith("mor") else method,
        config,
        federation,
        quorum=quorum,
    )
    return {**result, "quorum": quorum}


# ----- the plan: stages as tasks with dependencies (run by benchmarks.stages) -----


def plan(
    root: Path, grid: Grid, seeds: Sequence[int], settings: Sequence[str], bases: Path | None = None
) -> dict[str, Task]:
    """Every stage of the grid by name, in the order ready stages start: seed by seed, and within a seed the
    routers of every setting, then MoR's GRPO in every setting, then each other method's (so a run cut short
    still has the target's comparison)."""
    tasks: dict[str, Task] = {}
    for seed in seeds:
        folder = root / f"seed-{seed}"
        tasks[f"seed {seed}"] = Task(folder / "prepared.json", prepare, (root, grid, seed, bases), grid.stamp())
        for setting in settings:
            tasks[f"seed {seed}, {setting}: routers"] = Task(
                folder / folder_name(setting) / "routers.json",
                routers,
                (root, grid, seed, setting),
                grid.stamp(),
                inputs=(f"seed {seed}",),
            )
        for method in METHODS:
            for setting in settings:
                key = f"seed {seed}, {setting}"
                deps = (f"seed {seed}", f"{key}: routers") + ((f"{key}: mor",) if method == "mor-defence" else ())
                tasks[f"{key}: {method}"] = Task(
                    folder / folder_name(setting) / f"policy-{method}.json",
                    policy,
                    (root, grid, seed, setting, method),
                    grid.stamp(),
                    inputs=deps,
                )
    return tasks


# ----- the report -----


def adversary_weight(report: dict[str, Any], adversaries: Sequence[str], domain: str | None = None) -> float:
    """The adversaries' summed mean routing weight on the held-out pairs (all domains, or one); 0 when the
    router does not include them."""
    weights = report["weights_by"]
    groups = [domain] if domain else sorted(weights)
    return statistics.fmean(sum(weights[g].get(s, 0.0) for s in adversaries) for g in groups)


def _interval(values: Sequence[float]) -> tuple[float, float]:
    """``mean_interval`` over seeds, NaN when no seed has the value."""
    return mean_interval(values) if values else (math.nan, math.nan)


def site_summary(routers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per honest site on the clean federation: held-out accuracy on its own domain and overall, its agreement
    with the router's training pairs (what the defence judges) and in how many seeds the defence kept it."""
    from mor_secure.data.domains import domain_names

    domains = domain_names()
    rows = []
    for k, (site, family) in enumerate(zip(SITES, FAMILIES)):
        own = domains[k % len(domains)]
        rows.append(
            {
                "site": site,
                "family": family,
                "domain": own,
                "own": _interval([r["site_domain_accuracy"][site][own] for r in routers]),
                "overall": _interval([r["none"]["site_accuracy"][site] for r in routers]),
                "agreement": _interval([r["agreement"]["trust"][site]["agreement"] for r in routers]),
                "trusted": sum(site in r["agreement"]["sites"] for r in routers),
                "seeds": len(routers),
            }
        )
    return rows


def summarise(results: dict[str, dict[str, Any]], seeds: Sequence[int], settings: Sequence[str]) -> dict[str, Any]:
    """Per setting: reward and policy accuracy per method over seeds, the adversaries' weight and exclusion,
    and each method's loss of policy accuracy against the clean federation, paired by seed. Stages missing
    from ``results`` (a run cut short) count as not measured."""
    seeds = [s for s in seeds if f"seed {s}" in results]
    prepared = [results[f"seed {s}"] for s in seeds]
    out: dict[str, Any] = {
        "warm": _interval([p["warm"]["accuracy"] for p in prepared]),
        "oracle": _interval([p["oracle"]["accuracy"] for p in prepared]),
        "oracle_gain": _interval([p["oracle"]["accuracy"] - p["warm"]["accuracy"] for p in prepared]),
        "site_epsilon": {s: max(p["sites"][s]["epsilon"] or math.inf for p in prepared) for s in SITES},
        "rows": [],
    }
    for setting in settings:
        attack, adversaries = SETTINGS[setting]
        watch = adversaries or SETTINGS["1x inverted"][1]  # the clean row shows client-0 for reference
        routers = [r for s in seeds if (r := results.get(f"seed {s}, {setting}: routers"))]
        runs = {m: {s: r for s in seeds if (r := results.get(f"seed {s}, {setting}: {m}"))} for m in METHODS}
        accuracy = {m: {s: r["accuracy"] for s, r in runs[m].items() if "accuracy" in r} for m in METHODS}
        defended = [r["agreement"] for r in routers]
        rewards = {
            "mor": [r["none"]["accuracy"] for r in routers],
            "mor-defence": [d["accuracy"] for d in defended if "accuracy" in d],
            "uniform": [r["none"]["uniform_accuracy"] for r in routers],
            "fedavg": [r["fedavg"]["accuracy"] for r in routers],
        }
        row: dict[str, Any] = {
            "setting": setting,
            "attack": attack,
            "adversaries": list(adversaries),
            "seeds": len(routers),
            "reward": {m: _interval(v) for m, v in rewards.items()},
            "reward_seeds": rewards,
            "policy": {m: _interval(list(accuracy[m].values())) for m in METHODS},
            "policy_seeds": {m: len(accuracy[m]) for m in METHODS},
            "per_seed": accuracy,
            "detail_policy": {
                m: _interval([r["per_domain"]["detail"] for r in runs[m].values() if "accuracy" in r]) for m in METHODS
            },
            "adversary_single": _interval(
                [statistics.fmean(r["none"]["site_accuracy"][s] for s in watch) for r in routers]
            ),
            "adversary_weight": _interval([adversary_weight(r["none"], watch) for r in routers])[0],
            "adversary_weight_detail": _interval([adversary_weight(r["none"], watch, "detail") for r in routers])[0],
            "excluded": sum(s not in d["sites"] for d in defended for s in watch),
            "watched": len(watch) * len(routers),
            "honest_excluded": sum(s not in d["sites"] for d in defended for s in SITES if s not in watch),
            "defence_failed": sum("error" in d for d in defended),
            "defended_sites": [d["sites"] for d in defended],
            "reused_mor": sum(r.get("same_as") == "mor" for r in runs["mor-defence"].values()),
            "fedavg_swapped": _interval([sum(r["fedavg"]["swapped_pairs"].values()) for r in routers])[0],
        }
        out["rows"].append(row)
    clean_routers = [r for s in seeds if (r := results.get(f"seed {s}, clean: routers"))]
    if clean_routers:
        out["sites"] = site_summary(clean_routers)
    clean = next((r["per_seed"] for r in out["rows"] if r["setting"] == "clean"), {})
    for row in out["rows"]:  # loss against the same method on the clean federation, and against clean MoR
        for key, base in (("loss", lambda m: m), ("loss_vs_mor", lambda m: "mor")):
            row[key] = {
                m: _interval(
                    [clean[base(m)][s] - acc for s, acc in row["per_seed"][m].items() if s in clean.get(base(m), {})]
                )
                for m in METHODS
            }
    return out


def verdict(loss: Sequence[float]) -> str:
    """The target line for one paired loss (fraction): met or not on the mean, and what the interval allows."""
    mean, half = (100 * v for v in loss)
    if math.isnan(mean):
        return "not measured"
    text = f"{mean:+.1f} points: " + ("met" if mean <= TARGET_POINTS else "**not met**")
    if not math.isnan(half):
        text += f" (95% interval {mean - half:+.1f} to {mean + half:+.1f}"
        text += "; not shown at 95%)" if mean <= TARGET_POINTS < mean + half else ")"
    return text


def _plot(path: Path, summary: dict[str, Any]) -> None:
    """Reward accuracy (left) and policy accuracy after GRPO (right) of each method, per setting."""
    rows = summary["rows"]
    with figure(path, cols=2, size=(13, 4.8), dpi=110) as (_, axes):
        width = 0.8 / len(METHODS)
        for panel, key, seeds, title in (
            (0, "reward", "reward_seeds", "Held-out pairwise reward accuracy (%)"),
            (1, "policy", "per_seed", "Policy accuracy after GRPO (%)"),
        ):
            for k, method in enumerate(METHODS):
                xs = [i + (k - (len(METHODS) - 1) / 2) * width for i in range(len(rows))]
                axes[panel].bar(xs, [100 * r[key][method][0] for r in rows], width, label=LABELS[method])
                for x, r in zip(xs, rows):  # each seed as a dot: two seeds' t-intervals would dwarf the axes
                    values = r[seeds][method]
                    values = list(values.values()) if isinstance(values, dict) else values
                    axes[panel].plot([x] * len(values), [100 * v for v in values], "k.", markersize=4)
            axes[panel].set_title(title + ": bars = mean, dots = seeds")
            axes[panel].set_xticks(range(len(rows)), [r["setting"] for r in rows])
        axes[0].axhline(50, color="grey", linestyle=":")
        for key, style in (("oracle", "--"), ("warm", ":")):
            axes[1].axhline(
                100 * summary[key][0],
                color="black",
                linestyle=style,
                label="oracle GRPO" if key == "oracle" else "warm start",
            )
        axes[0].set_ylim(30, 100)
        axes[1].set_ylim(20, 80)
        for ax in axes:
            ax.legend(fontsize=7)


def _pc(pair: Sequence[float]) -> str:
    """A percentage with its interval, or "not measured"."""
    return "not measured" if math.isnan(pair[0]) else f"{_pm(pair)}%"


def stage_seconds(results: dict[str, dict[str, Any]]) -> float:
    """Summed wall time of every stage (each in one worker process), as recorded when it ran."""
    return sum(r.get("stage_seconds", 0.0) for r in results.values())


def reading(summary: dict[str, Any], eval_questions: int) -> list[str]:
    """Plain statements computed from the numbers (never hoped for)."""
    rows = {r["setting"]: r for r in summary["rows"]}
    out = []
    clean = rows.get("clean")
    if clean:
        out.append(
            f"- Clean federation: policy accuracy MoR {_pc(clean['policy']['mor'])}, uniform "
            f"{_pc(clean['policy']['uniform'])}, FedAvg RM {_pc(clean['policy']['fedavg'])} (warm start "
            f"{_pc(summary['warm'])}, oracle GRPO {_pc(summary['oracle'])})."
        )
        gain, half = summary["oracle_gain"]
        out.append(
            f"- The ground-truth reward itself moves the policy by {_pm(summary['oracle_gain'])} points at this "
            "GRPO length: "
            + (
                "so policy accuracy barely depends on the reward here, and differences between "
                "rewards' policy accuracy are of the size of run-to-run noise, not of reward "
                "quality; the reward-accuracy table is the sharper measure."
                if gain < 0.05 or (not math.isnan(half) and gain - half <= 0)
                else "room for a better reward to show in policy accuracy."
            )
        )
    for name, r in rows.items():
        if r is clean:
            continue
        text = (
            f"- {name}: MoR {_pc(r['policy']['mor'])} (loss vs clean: {verdict(r['loss']['mor'])}), MoR + "
            f"defence {_pc(r['policy']['mor-defence'])} (loss vs clean MoR: "
            f"{verdict(r['loss_vs_mor']['mor-defence'])}; vs clean MoR + defence: "
            f"{verdict(r['loss']['mor-defence'])}); the defence "
            f"excluded the adversary in {r['excluded']} of {r['watched']} case(s)"
        )
        if r["defence_failed"]:
            text += f" (in {r['defence_failed']} seed(s) it trusted no site at all, so MoR + defence could not run)"
        if clean and r["defended_sites"] == clean["defended_sites"]:
            text += (
                " and kept exactly the sites it kept on the clean federation ("
                + "; ".join(", ".join(k) or "none" for k in r["defended_sites"])
                + "), so MoR + defence fused the same honest sites with and without the adversary: its loss "
                "against clean MoR + defence is no evidence of robustness, its loss against clean MoR is the "
                "price of the defence"
            )
        text += (
            f"; the adversary's mean routing weight without the defence is {r['adversary_weight']:.3f} "
            f"({r['adversary_weight_detail']:.3f} on `detail`); MoR's `detail` policy accuracy "
            f"{_pc(r['detail_policy']['mor'])}" + (f" vs {_pc(clean['detail_policy']['mor'])} clean." if clean else ".")
        )
        out.append(text)
    dropped = [r for r in summary.get("sites", []) if r["trusted"] < r["seeds"]]
    if dropped:
        out.append(
            "- The agreement defence judges each site in its best domain (the Wilson lower bound of its "
            "agreement on that domain's router training pairs must exceed 0.55; judged on all pairs, the "
            "first run of this benchmark kept no honest site at all in one seed). On the clean federation it "
            "still left out honest "
            + ", ".join(
                f"{r['site']} ({r['domain']}: {_pm(r['own'])}% on its domain, {_pm(r['agreement'])}% "
                f"agreement in its best domain, kept {r['trusted']}/{r['seeds']})"
                for r in dropped
            )
            + ": weak DP experts whose agreement does not clear the bound, so MoR + defence fuses fewer "
            "experts than MoR even with no adversary."
        )
    if clean and not math.isnan(clean["policy"]["mor"][0]):
        p = clean["policy"]["mor"][0]
        se = 100 * math.sqrt(p * (1 - p) / eval_questions)
        out.append(
            f"- Resolution: at {eval_questions} held-out questions one run's accuracy has a binomial standard "
            f"error of {se:.1f} points (at {100 * p:.0f}%), so a poisoned-minus-clean difference of one seed "
            f"has {math.sqrt(2) * se:.1f} points from question sampling alone, before GRPO's own seed noise "
            f"(3-5 points here); a {TARGET_POINTS:g}-point target is finer than {summary['rows'][0]['seeds']} "
            "seed(s) resolve, so a 'met' or 'not met' on the mean is a point estimate, not a test."
        )
    return out


def write_report(
    out: Path,
    results: dict[str, Any],
    summary: dict[str, Any],
    grid: Grid,
    seeds: list[int],
    command: str,
    seconds: float,
    machine: list[str],
    missing: Sequence[str] = (),
) -> None:
    """robustness_policy.md + .png + .json in ``out``; ``missing`` names the planned stages not run."""
    rows, sizes = summary["rows"], grid.sizes
    dp = "without DP" if math.isinf(grid.epsilon) else f"with DP-SGD at epsilon {grid.epsilon:g}"
    single = [r for r in rows if len(r["adversaries"]) == 1]
    lines = [
        "# Robustness to poisoned clients: policy accuracy after GRPO",
        "",
        f"Command: `{command}` (this invocation {seconds / 60:.1f} min; the stages, cached ones included, add "
        f"up to {stage_seconds(results) / 60:.0f} min of single-process work, run in parallel worker "
        "processes)",
        "",
        *machine,
        "",
        *(
            [
                f"**Incomplete run:** {len(missing)} planned stage(s) not run ({'; '.join(missing)}): their cells "
                "read '-', and each interval covers the seeds measured (n = seeds where fewer).",
                "",
            ]
            if missing
            else []
        ),
        "## Setup",
        "",
        f"- Seeds {seeds} ({len(seeds)}: CPU time is scarce on this 2-core machine, so the intervals are "
        "wide; seed noise of GRPO is 3-5 points): each its own benchmark world with 4 sites (site k holds "
        "mostly domain k mod 3: client-0 and client-3 `detail` in different styles, client-1 `medical`, "
        "client-2 `chart`), public data, pretrained bases, DP noise and GRPO sampling. Sizes as the "
        "privacy/utility benchmark: " + ", ".join(f"{k}={v}" for k, v in asdict(sizes).items()) + ".",
        f"- Sites trained once per seed by the product's `client_agent.train` {dp} (stated epsilon, max "
        "over seeds: "
        + ", ".join(f"{s} ({f}) {summary['site_epsilon'][s]:.2f}" for s, f in zip(SITES, FAMILIES))
        + "); the poison is applied at the scoring interface, so every setting shares the honest models.",
        f"- Adversary: client-0, the `detail` owner (2x: also client-1, the `medical` owner). `inverted` = "
        f"minus its honest score; `random` = seeded Gaussian noise with its honest scores' mean and spread "
        f"(on the router's training pairs); `fixed-wrong` = its honest mean + 3 std when the completion "
        f'parses (`coordinator.policy.evaluation.parse_answer`) to "{FIXED_WORD}", else its honest score shrunk '
        "halfway to its mean (it still ranks other answers honestly). The poisoned scores reach the router's "
        "training and test pairs and every GRPO step.",
        '- MoR: the learned router with `[router] defence = "none"`; MoR + defence: `"agreement"` (sites '
        "whose Wilson 95% lower bound of agreement with the router's training pairs does not exceed 0.55 are "
        "left out of the router and the mixture). When the defence keeps every site the two mixtures are "
        "byte-identical and MoR + defence reuses MoR's GRPO run. Uniform: the mean of the 4 calibrated "
        f"scores. A completion's reward counts when {QUORUM} of the fusion's sites scored it; where the "
        "defence kept a single site, MoR + defence runs with a quorum of 1 (with 2 no completion would ever "
        "be rewarded and GRPO would leave the warm start unchanged).",
        "- FedAvg RM: `coordinator.baselines.train_fedavg` (dual-encoder, at the sites' epsilon) over the 4 "
        "sites' pairs, the adversary's pairs poisoned in a copy of its folder: inverted = chosen and "
        "rejected swapped in every pair, random = swapped in a seeded random half, fixed-wrong = swapped "
        f'where the rejected answer is "{FIXED_WORD}" (mean pairs swapped in the train split in the table).',
        f"- Policy accuracy: greedy exact-match answers to the world's {sizes.eval_questions} held-out "
        f"questions after GRPO ({sizes.grpo_steps} steps of {sizes.grpo_batch} completions, beta "
        f"{sizes.beta}, reference = the warm start), as in the privacy/utility benchmark. Loss vs clean = "
        "the same method's accuracy on the clean federation minus on the poisoned one, paired by seed.",
        "",
        f"Warm start (before GRPO): {_pm(summary['warm'])}%; oracle GRPO (ground-truth reward): "
        f"{_pm(summary['oracle'])}% (mean ± 95% t-interval over seeds).",
        "",
        "## Held-out pairwise reward accuracy (%)",
        "",
        *markdown_table(
            [
                "setting",
                "MoR",
                "MoR + defence",
                "uniform",
                "FedAvg RM",
                "adversary alone (poisoned)",
                "adversary's MoR weight (all / `detail`)",
                "adversary excluded by the defence",
                "honest sites excluded",
                "FedAvg pairs swapped",
            ],
            [
                [
                    r["setting"],
                    *(_pm(r["reward"][m]) for m in METHODS),
                    _pm(r["adversary_single"]),
                    f"{r['adversary_weight']:.3f} / {r['adversary_weight_detail']:.3f}",
                    f"{r['excluded']}/{r['watched']}",
                    r["honest_excluded"],
                    f"{r['fedavg_swapped']:.0f}",
                ]
                for r in rows
            ],
        ),
    ]
    lines += ["", "(Clean row: client-0's own accuracy, weight and exclusion, for reference.)", ""]
    if "sites" in summary:
        lines += [
            "## Honest sites on the clean federation",
            "",
            *markdown_table(
                [
                    "site",
                    "reward model",
                    "own domain",
                    "held-out accuracy on its domain (%)",
                    "on all domains (%)",
                    "agreement with the router's training pairs (%), what the defence judges",
                    "kept by the defence",
                ],
                [
                    [
                        r["site"],
                        r["family"],
                        r["domain"],
                        _pm(r["own"]),
                        _pm(r["overall"]),
                        _pm(r["agreement"]),
                        f"{r['trusted']}/{r['seeds']}",
                    ]
                    for r in summary["sites"]
                ],
            ),
        ]
        lines.append("")
    lines += [
        "## Policy accuracy after GRPO (%)",
        "",
        *markdown_table(
            [
                "setting",
                *(LABELS[m] for m in METHODS),
                "MoR on `detail`",
                *(f"{LABELS[m]} loss vs clean (points)" for m in METHODS),
            ],
            [
                [
                    r["setting"],
                    *(
                        _pm(r["policy"][m])
                        + (f" (n = {r['policy_seeds'][m]})" if 0 < r["policy_seeds"][m] < len(seeds) else "")
                        for m in METHODS
                    ),
                    _pm(r["detail_policy"]["mor"]),
                    *(_pm(r["loss"][m]) for m in METHODS),
                ]
                for r in rows
            ],
        ),
        "",
        f"## Target: with 1 adversarial client of 4, MoR loses at most {TARGET_POINTS:g} points",
        "",
        "Loss = clean accuracy minus poisoned accuracy, paired by seed (positive = lost).",
        "",
        *markdown_table(
            ["setting", "MoR vs clean MoR", "MoR + defence vs clean MoR", "MoR + defence vs clean MoR + defence"],
            [
                [
                    r["setting"],
                    verdict(r["loss"]["mor"]),
                    verdict(r["loss_vs_mor"]["mor-defence"]),
                    verdict(r["loss"]["mor-defence"]),
                ]
                for r in single
            ],
        ),
        "",
        "![robustness after GRPO](robustness_policy.png)",
        "",
        "## Reading",
        "",
        *reading(summary, sizes.eval_questions),
    ]
    write_markdown(out / "robustness_policy.md", lines)
    _plot(out / "robustness_policy.png", summary)
    (out / "robustness_policy.json").write_text(
        json.dumps(
            {"command": command, "seconds": seconds, "grid": grid.stamp(), "summary": summary, "results": results},
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="Folder of robustness_policy.md/.png/.json."
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("robustness-policy-work"),
        help="Cache of worlds, models and stage results (resumable; delete to recompute).",
    )
    parser.add_argument("--seeds", type=int, default=2, help="Seeds (worlds, pretraining, DP noise, sampling).")
    parser.add_argument(
        "--settings",
        default=",".join(DEFAULT_SETTINGS),
        help=f"Comma-separated settings, from: {', '.join(SETTINGS)} (clean is always run).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Reduced grid: clean and 1x inverted, 1 seed, tiny sizes (a smoke run of every stage).",
    )
    parser.add_argument(
        "--bases",
        type=Path,
        default=None,
        help="A privacy/utility --workdir whose seeds were prepared at the same sizes: reuse its "
        "public data, pretrained bases, warm-start and oracle results instead of preparing.",
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        default=EPSILON,
        help="Every site's and FedAvg client's epsilon ('inf' = no DP; --quick uses inf).",
    )
    parser.add_argument("--jobs", type=int, default=2, help="Stages run at once (one process and thread each).")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Run nothing: write the report from the stages already cached (a run cut short); "
        "missing ones read 'not measured'.",
    )
    args = parser.parse_args(argv)
    grid = Grid(QUICK_SIZES, math.inf) if args.quick else Grid(FULL, args.epsilon)
    settings = (
        list(QUICK_SETTINGS)
        if args.quick
        else ["clean"] + [s.strip() for s in args.settings.split(",") if s.strip() and s.strip() != "clean"]
    )
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; use: {', '.join(SETTINGS)}")
    seeds = list(range(1 if args.quick else args.seeds))
    if not seeds or args.jobs < 1 or not grid.epsilon > 0:
        parser.error("--seeds and --jobs must be >= 1 and --epsilon > 0")
    command = shlex.join(["python", "-m", "benchmarks.robustness_policy", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_lines(["torch", "transformers", "trl", "opacus"])
    start = time.perf_counter()
    root = args.workdir.resolve()
    bases = args.bases.resolve() if args.bases else None
    tasks = plan(root, grid, seeds, settings, bases)
    if args.report_only:
        results = cached_results(tasks)
    else:
        results = run_tasks(tasks, args.jobs)
    summary = summarise(results, seeds, settings)
    write_report(
        args.out,
        results,
        summary,
        grid,
        seeds,
        command,
        time.perf_counter() - start,
        machine,
        [name for name in tasks if name not in results],
    )
    print((args.out / "robustness_policy.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

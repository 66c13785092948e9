"""Robustness to poisoned clients: fused held-out pairwise accuracy of MoR (with and without the trust
defence), the uniform mean and a FedAvg-style average when 1 or 2 of 4 clients are adversarial.

The four clients are synthetic reward models computed from ground truth (benchmarks/synthetic.py):
two experts per domain (one sharp, one noisier), each with its own raw offset and scale. The
adversaries are the sharp expert of domain 0 (then also of domain 1), turned to scores that are
inverted, random, or that favour one fixed wrong answer. Every strategy is the project's own code:
the Calibrator, train_router / pairwise_accuracy and coordinator.mixture.trust.agreement_trust.

    python -m benchmarks.robustness --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import format_interval, machine_lines, mean_interval, write_markdown
from benchmarks.synthetic import PairWorld, SyntheticClient, make_world, raw_pair_scores
from coordinator.mixture.calibration import Calibrator
from coordinator.mixture.router import pairwise_accuracy, pairwise_wins, train_router
from coordinator.mixture.trust import agreement_trust
from mor_secure.reporting import figure, markdown_table

SITES = ["a-sharp", "a-weak", "b-sharp", "b-weak"]
CLIENTS = [
    SyntheticClient("expert", (0,), noise=0.3, offset=0.0, scale=1.0),
    SyntheticClient("expert", (0,), noise=0.6, offset=2.0, scale=3.0),
    SyntheticClient("expert", (1,), noise=0.3, offset=-1.0, scale=0.5),
    SyntheticClient("expert", (1,), noise=0.6, offset=5.0, scale=2.0),
]
ADVERSARIES = {1: ["a-sharp"], 2: ["a-sharp", "b-sharp"]}
ATTACKS = ("inverted", "random", "fixed-wrong")
STRATEGIES = ("MoR", "MoR + defence", "MoR honest only", "uniform", "uniform + defence", "FedAvg proxy")


def settings() -> list[tuple[str, int]]:
    """(attack, number of adversaries): the clean federation first."""
    return [("clean", 0)] + [(attack, n) for n in ADVERSARIES for attack in ATTACKS]


def _calibrate(raw_train: torch.Tensor, raw: torch.Tensor, method: str) -> torch.Tensor:
    """Calibrated ``[N, K, 2]``: each site's affine map fitted on its training scores (chosen + rejected)."""
    cal = Calibrator(method).fit({s: raw_train[:, k].flatten().tolist() for k, s in enumerate(SITES)})
    return torch.stack([(raw[:, k] - cal[s].center) / cal[s].scale for k, s in enumerate(SITES)], dim=1)


def _router_accuracy(
    train: PairWorld,
    z_train: torch.Tensor,
    test: PairWorld,
    z_test: torch.Tensor,
    keep: list[int],
    seed: int,
    epochs: int,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Held-out accuracy of a router trained on the ``keep`` columns, and its mean weight per kept site on
    held-out prompts and on unseen prompts (features far from every labelled domain)."""
    sites = [SITES[k] for k in keep]
    router = train_router(train.features, z_train[:, keep], sites=sites, epochs=epochs, seed=seed)
    unseen = 4 * torch.randn(len(test), test.features.shape[1], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        weights, unseen_weights = router.weights(test.features).mean(dim=0), router.weights(unseen).mean(dim=0)
    return pairwise_accuracy(router, test.features, z_test[:, keep]), weights, unseen_weights


def run_setting(attack: str, n_adv: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every strategy's held-out accuracy and the trust decisions for one federation and seed."""
    bad = set(ADVERSARIES.get(n_adv, []))
    clients = [c.adversarial(attack) if s in bad else c for s, c in zip(SITES, CLIENTS)]
    world = make_world(args.pairs, domains=2, answers=4, seed=seed)
    train, test = world.split(int(args.pairs * 2 / 3))
    raw_train = raw_pair_scores(train, clients, seed=seed + 1000)
    raw_test = raw_pair_scores(test, clients, seed=seed + 2000)
    z_train, z_test = (
        _calibrate(raw_train, raw_train, args.calibration),
        _calibrate(raw_train, raw_test, args.calibration),
    )
    trust = agreement_trust(z_train, SITES, groups=train.groups)  # per domain, as `mor coordinator router`
    keep = [k for k, s in enumerate(SITES) if trust[s].trusted]
    everyone = list(range(len(SITES)))
    diff = z_test[:, :, 0] - z_test[:, :, 1]
    raw_diff = raw_test[:, :, 0] - raw_test[:, :, 1]
    mor, mor_weights, unseen_weights = _router_accuracy(train, z_train, test, z_test, everyone, seed, args.epochs)
    accuracy = {
        "MoR": mor,
        "MoR + defence": _router_accuracy(train, z_train, test, z_test, keep, seed, args.epochs)[0],
        "MoR honest only": _router_accuracy(
            train, z_train, test, z_test, [k for k, s in enumerate(SITES) if s not in bad], seed, args.epochs
        )[0],
        "uniform": pairwise_wins(diff.mean(dim=1)),
        "uniform + defence": pairwise_wins(diff[:, keep].mean(dim=1)),
        # FedAvg of same-architecture linear-in-output reward heads is the mean of the client functions:
        # the average of raw (uncalibrated) scores, poisoned clients included.
        "FedAvg proxy": pairwise_wins(raw_diff.mean(dim=1)),
    }
    adversarial = [k for k, s in enumerate(SITES) if s in bad]
    return {
        "attack": attack,
        "adversaries": n_adv,
        "seed": seed,
        "accuracy": accuracy,
        "adversary_weight": float(mor_weights[adversarial].sum()),
        "adversary_weight_unseen": float(unseen_weights[adversarial].sum()),
        "trust": {s: t.to_dict() for s, t in trust.items()},
        "excluded": sorted(s for s, t in trust.items() if not t.trusted),
        "adversarial": sorted(bad),
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: mean and 95% interval of each strategy, and how often the defence got it right."""
    out = []
    for attack, n_adv in settings():
        runs = [r for r in rows if (r["attack"], r["adversaries"]) == (attack, n_adv)]
        if not runs:
            continue
        entry: dict[str, Any] = {"attack": attack, "adversaries": n_adv, "seeds": len(runs)}
        for name in STRATEGIES:
            entry[name] = mean_interval([r["accuracy"][name] for r in runs])
        for key in ("adversary_weight", "adversary_weight_unseen"):
            entry[key] = statistics.fmean(r[key] for r in runs)
        entry["adversaries_excluded"] = sum(len(set(r["excluded"]) & set(r["adversarial"])) for r in runs)
        entry["adversaries_total"] = sum(len(r["adversarial"]) for r in runs)
        entry["honest_excluded"] = sum(len(set(r["excluded"]) - set(r["adversarial"])) for r in runs)
        out.append(entry)
    return out


def _label(entry: dict[str, Any]) -> str:
    return "clean" if entry["adversaries"] == 0 else f"{entry['adversaries']}x {entry['attack']}"


def write_report(
    out: Path,
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    args: argparse.Namespace,
    command: str,
    seconds: float,
) -> None:
    """robustness.md (tables, machine, command), robustness.png and robustness.json."""
    with figure(out / "robustness.png", size=(10, 4)) as (_, ax):
        width = 0.8 / len(STRATEGIES)
        for j, name in enumerate(STRATEGIES):
            means = [100 * e[name][0] for e in summary]
            errs = [0 if math.isnan(e[name][1]) else 100 * e[name][1] for e in summary]
            offsets = [i + (j - (len(STRATEGIES) - 1) / 2) * width for i in range(len(summary))]
            ax.bar(offsets, means, width, yerr=errs, capsize=2, label=name)
        ax.set_xticks(range(len(summary)), [_label(e) for e in summary])
        ax.set_ylabel("held-out pairwise accuracy (%)")
        ax.set_ylim(0, 100)
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        ax.set_title(f"Fused reward under poisoned clients (4 clients, mean and 95% CI over {args.seeds} seeds)")
        ax.legend(fontsize=7, ncol=len(STRATEGIES), loc="lower left")

    clean = next(e for e in summary if e["adversaries"] == 0)
    lines = [
        "# Robustness to poisoned clients",
        "",
        f"Command: `{command}` (whole run {seconds:.0f} s)",
        "",
        *machine_lines(["torch"]),
        "",
        "## Setup",
        "",
        f"- 4 synthetic clients computed from ground truth (`benchmarks/synthetic.py`), two experts per "
        f"domain: {', '.join(SITES)} (sharp: noise 0.3, weak: noise 0.6; each with its own raw offset and "
        "scale). Off its domain an expert scores by noise.",
        f"- {args.pairs} labelled pairs per seed over 2 domains and 4 answers; the router, the calibration "
        f"({args.calibration}) and the trust are fitted on the first 2/3, accuracy is on the held-out 1/3.",
        "- Adversaries: 1 = a-sharp, 2 = a-sharp and b-sharp (the best expert of each domain), scoring "
        "`inverted` (minus its honest score), `random` (pure noise) or `fixed-wrong` (high for one fixed "
        "answer, right only when that answer is true).",
        "- MoR: learned router over all 4 calibrated clients. `+ defence`: `[router] defence = "
        '"agreement"`: only clients whose Wilson 95% lower bound of pairwise agreement with the training '
        "pairs of their best domain exceeds 0.55 (chance is 0.5) are kept (`coordinator.mixture.trust`).",
        "- FedAvg proxy: the mean of the clients' raw reward functions, which is what FedAvg of "
        "same-architecture linear reward heads computes; an adversary's poisoned local model (labels "
        "flipped / random / one answer favoured) enters the average. It is a proxy, not trained FedAvg "
        "models from coordinator/baselines.",
        "- MoR honest only: the router trained without the adversaries' sites at all, the ceiling any "
        "defence can reach (losing an expert costs accuracy even when it is removed perfectly).",
        "",
        f"## Held-out pairwise accuracy (%), mean ± 95% t-interval over {args.seeds} seed(s)",
        "",
        *markdown_table(
            [
                "federation",
                *STRATEGIES,
                "adversaries' MoR weight (held-out / unseen prompts)",
                "adversaries excluded",
                "honest excluded",
            ],
            [
                [
                    _label(e),
                    *(format_interval(e[name]) for name in STRATEGIES),
                    f"{e['adversary_weight']:.3f} / {e['adversary_weight_unseen']:.3f}",
                    f"{e['adversaries_excluded']}/{e['adversaries_total']}",
                    e["honest_excluded"],
                ]
                for e in summary
            ],
        ),
    ]
    worst = min((e for e in summary if e["adversaries"] == 1), key=lambda e: e["MoR + defence"][0])
    lines += [
        "",
        "## Reading",
        "",
        f"- Clean federation: MoR {format_interval(clean['MoR'])}, uniform {format_interval(clean['uniform'])}.",
        f"- With 1 adversary of 4, the worst case for MoR + defence is {_label(worst)}: "
        f"{format_interval(worst['MoR + defence'])} "
        f"({100 * (worst['MoR + defence'][0] - clean['MoR + defence'][0]):+.1f} "
        f"points against the clean federation; the honest-only ceiling is {format_interval(worst['MoR honest only'])}: "
        "what remains is the expert the federation lost, not the poisoning).",
        "- The learned router already gives an adversary little weight on prompts like the labelled ones "
        "(the adversaries' summed mean routing weight without the defence, held-out column), because it is "
        "trained on the same pairs; on unseen prompts (features far from every labelled domain) nothing "
        "constrains that weight (unseen column). The defence makes it exactly 0 on every prompt, and it "
        "also protects uniform fusion. A "
        "fixed-wrong client is near chance on pairs whose wrong answer is uniform, so it barely moves the "
        "pair metric here, but it would steer a policy towards its answer: the defence excludes it.",
        "- Policy accuracy after GRPO (the second metric) is measured with real DP sites in "
        "[robustness_policy.md](robustness_policy.md) (`mor bench robustness-policy`); the fused pair "
        "accuracy above is the reward quality GRPO optimises.",
        "- Limits: the trust is measured on the coordinator's labelled pairs; a client that is honest on "
        "those prompts and poisons others is not caught by agreement alone.",
    ]
    write_markdown(out / "robustness.md", lines)
    (out / "robustness.json").write_text(
        json.dumps({"command": command, "run_seconds": seconds, "rows": rows, "summary": summary}, indent=1) + "\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="Folder of robustness.md/.png/.json."
    )
    parser.add_argument("--seeds", type=int, default=3, help="Seeds (worlds and client noise) per setting.")
    parser.add_argument("--pairs", type=int, default=900, help="Labelled pairs per seed (2/3 train, 1/3 test).")
    parser.add_argument("--epochs", type=int, default=30, help="Router training epochs.")
    parser.add_argument(
        "--calibration", choices=("zscore", "robust"), default="zscore", help="Per-site score calibration."
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, 300 pairs, 10 epochs (a smoke run).")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.pairs, args.epochs = 1, 300, 10
    if args.seeds < 1 or args.pairs < 30 or args.epochs < 1:
        parser.error("--seeds and --epochs must be >= 1 and --pairs >= 30")
    torch.set_num_threads(1)  # tiny MLPs on a shared machine: intra-op threads only spin
    command = " ".join(["python", "-m", "benchmarks.robustness", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    rows = [run_setting(attack, n_adv, seed, args) for attack, n_adv in settings() for seed in range(args.seeds)]
    summary = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out, rows, summary, args, command, time.perf_counter() - start)
    print((args.out / "robustness.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

"""Membership-inference audit of a site's DP reward model, through nothing but the scores its agent returns.

For each epsilon in {1, 4, 8, infinity (no DP)} and each seed, one site's dual-encoder reward model
is trained through the real ``train_reward_model`` path on a random half (the members) of a pool of
pairs from one client's train split; the other half are the non-members. The attacker sends each
pair's two answers to the site's ``ScoringService`` (in process for the sweep; one configuration
also goes through a real agent over mutual TLS and the coordinator's ``Federation.scorer``) and sees
only the returned scores. Its statistic per pair is minus the Bradley-Terry loss
``log sigmoid(s_chosen - s_rejected)``: members were fitted, so their loss is lower (a
loss-threshold attack, Yeom et al. 2018). A stronger, shadow-model attack calibrates each pair's
statistic by its mean under models the attacker trains itself (same recipe, no DP) on other pairs of
the same distribution, removing how easy the pair is (Watson et al. 2022). Reported: attack AUC with
a bootstrap 95% interval beside the largest AUC that (epsilon, delta)-DP permits (``max_auc``).

    python -m benchmarks.mia_audit --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_lines, write_markdown
from mor_secure.reporting import figure, markdown_table

EPSILONS = (1.0, 4.0, 8.0, None)  # None: no DP (epsilon infinity)
Scorer = Callable[[Sequence[Any], Sequence[Any], Sequence[Any]], list[float]]
"""(images, prompts, completions) -> one returned score per item: all the attacker ever sees."""


# ----- the statistics -----


def auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """P(member statistic > non-member statistic) + 0.5 P(tie): the area under the ROC curve of
    'member if the statistic is above a threshold' (Mann-Whitney U with mid-ranks)."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if not len(members) or not len(nonmembers):
        raise ValueError("need at least one member and one non-member statistic")
    values = np.concatenate([members, nonmembers])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # mid-ranks for ties
    ranks = (first + (counts + 1) / 2)[inverse]
    u = ranks[: len(members)].sum() - len(members) * (len(members) + 1) / 2
    return float(u / (len(members) * len(nonmembers)))


def bootstrap_auc(
    members: Sequence[float], nonmembers: Sequence[float], *, rounds: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``auc``, members and non-members resampled separately."""
    rng = np.random.default_rng(seed)
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    draws = [auc(rng.choice(members, len(members)), rng.choice(nonmembers, len(nonmembers))) for _ in range(rounds)]
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def max_auc(epsilon: float, delta: float) -> float:
    """Largest membership-inference AUC an (epsilon, delta)-DP mechanism permits.

    DP bounds every test between neighbouring data sets: TPR <= e^eps FPR + delta and (swapping the
    data sets) 1 - FPR <= e^eps (1 - TPR) + delta. The best ROC curve is the upper envelope
    T(x) = min(1, e^eps x + delta, 1 - e^-eps (1 - delta - x)); with a = e^eps the two lines cross
    at x* = (1 - delta) / (a + 1), and the area under T is (1 - delta)(a + delta) / (a + 1) + delta
    (= e^eps / (1 + e^eps), the logistic of eps, when delta = 0; 1/2 at eps = 0, 1 at eps = inf).
    """
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    if math.isinf(epsilon):
        return 1.0
    a = math.exp(epsilon)
    return (1 - delta) * (a + delta) / (a + 1) + delta


def implied_epsilon(auc_value: float, delta: float) -> float:
    """The smallest epsilon whose ``max_auc`` reaches ``auc_value`` (``max_auc`` inverted; 0 at or below
    chance): an attack AUC above it would disprove any smaller epsilon."""
    if auc_value <= max_auc(0.0, delta):
        return 0.0
    if auc_value >= 1.0:
        return math.inf
    return math.log((auc_value - 2 * delta + delta * delta) / (1 - auc_value))


def membership_statistics(scorer: Scorer, pairs: Any) -> np.ndarray:
    """Per pair, log sigmoid(s_chosen - s_rejected) (minus the Bradley-Terry loss) from returned scores."""
    images, prompts = list(pairs["image"]), list(pairs["prompt"])
    chosen = np.asarray(scorer(images, prompts, list(pairs["chosen"])), float)
    rejected = np.asarray(scorer(images, prompts, list(pairs["rejected"])), float)
    margin = chosen - rejected
    return -np.logaddexp(0.0, -margin)


# ----- the site: data, training, serving -----


def service_scorer(service: Callable[[Any], Any], max_batch: int = 256) -> Scorer:
    """A ``Scorer`` that sends ``ScoreRequest``s to a site's ``ScoringService`` and keeps only the scores."""
    from coordinator.federation.service import build_requests
    from mor_secure.protocol import ScoreReply

    counter = iter(range(1 << 62))

    def score(images, prompts, completions) -> list[float]:
        out: list[float] = []
        for _, request in build_requests(images, prompts, completions, max_batch):
            reply = service(replace(request, request_id=f"mia-{next(counter)}"))
            if not isinstance(reply, ScoreReply):
                raise RuntimeError(f"the site refused a scoring request: {reply}")
            out.extend(reply.scores)
        return out

    return score


@contextmanager
def tls_scorer(config_path: Path, work: Path) -> Iterator[Scorer]:
    """A ``Scorer`` through the whole path: coordinator ``Federation`` (mutual TLS 1.3 in ZeroMQ) and a
    real agent serving the site's model with its signed privacy report."""
    from client_agent.agent import Agent
    from client_agent.config import load_client_config
    from client_agent.scoring import ScoringService, load_served_model, signed_report
    from coordinator.config import load_coordinator_config
    from coordinator.federation.service import Federation

    site = load_client_config(config_path)
    ca = Path(site.tls.ca).parent
    coordinator_toml = work / "coordinator.toml"
    coordinator_toml.write_text(
        f'name = "coord"\nbind = "tcp://127.0.0.1:0"\n[tls]\nca = "{ca}/ca.pem"\ncert = "{ca}/coord.pem"\n'
        f'key = "{ca}/coord.key"\ncrl = "{ca}/crl.pem"\n[clients]\nallow = ["{site.site}"]\ndeadline_s = 60.0\n'
        "heartbeat_s = 0.5\n[pool]\nmax_batch = 256\n"
    )
    with Federation(load_coordinator_config(coordinator_toml)) as federation:
        text = config_path.read_text().replace("tcp://127.0.0.1:1", federation.pool.server.endpoint)
        (work / "client-tls.toml").write_text(text)
        site = load_client_config(work / "client-tls.toml")
        served = load_served_model(site)
        agent = Agent(site, worker_id="mia-audit")
        agent.serve_scores(ScoringService(served.model, served.sha256, site.serve), signed_report(site, served.report))
        agent.start()
        try:
            if not federation.wait_for(1, timeout=60):
                raise RuntimeError("the agent was not admitted within 60 s")
            yield lambda images, prompts, completions: federation.scorer(images, prompts, completions)[site.site]
        finally:
            agent.stop()


@dataclass
class Site:
    """One site of the audit: its member data folder, the non-member pairs and its PKI folder."""

    data: Path
    nonmembers: Any
    ca: Path
    shadow: tuple[np.ndarray, np.ndarray] | None = None
    """Mean statistic of the members and of the non-members under the attacker's shadow models."""


def make_site(pool: Any, test: Any, members: int, seed: int, folder: Path, ca: Path) -> Site:
    """Draw ``members`` pairs of ``pool`` at random (seeded) as the training split; the rest are non-members."""
    from datasets import DatasetDict

    order = np.random.default_rng(seed).permutation(len(pool))
    DatasetDict({"train": pool.select(sorted(order[:members])), "test": test}).save_to_disk(str(folder))
    return Site(folder, pool.select(sorted(order[members:])), ca)


def site_config(
    data: Path, ca: Path, work: Path, tag: str, epsilon: float | None, seed: int, args: argparse.Namespace
) -> Path:
    """client.toml of a site training on ``data``: dual encoder (from ``args.base`` where set), [train] and
    [privacy] for this run."""
    path = work / f"{tag}.toml"
    path.write_text(
        f'site = "site-a"\n[tls]\nca = "{ca}/ca.pem"\ncert = "{ca}/site-a.pem"\nkey = "{ca}/site-a.key"\n'
        f'crl = "{ca}/crl.pem"\n[coordinator]\nendpoint = "tcp://127.0.0.1:1"\nname = "coord"\n'
        "heartbeat_s = 0.5\nidle_timeout_s = 30.0\n"
        f'[data]\npath = "{data}"\n[model]\nfamily = "dual-encoder"\nbase = "{args.base}"\n'
        f'[train]\nout = "{work / tag}"\nepochs = {args.epochs}\nbatch_size = {args.batch}\nlr = {args.lr}\n'
        f"seed = {seed}\ncheckpoint_every = 100000\n"
        f'[privacy]\ntarget_epsilon = {epsilon or 1.0}\nmax_epsilon = 1e9\nledger = "{work / tag}.ledger.jsonl"\n'
        "[serve]\nmax_batch = 256\nrequests_per_minute = 100000\nallow_no_dp = true\n"
    )
    return path


def public_base(work: Path, rows: int, *, quick: bool) -> str:
    """A dual-encoder pretrained without DP on pairs of ``rows`` public rows (none of the world's items), as
    the demo's sites start from; "" (train from scratch) when ``rows`` is 0."""
    if rows == 0:
        return ""
    from coordinator.policy.public_reward import save_public_reward
    from mor_secure.data.public import generate_public_sft

    generate_public_sft(work / "public", n=rows, exclude_world=work / "world")
    save_public_reward(work / "public", work / "public-reward", epochs=2 if quick else 16, progress=False)
    return str(work / "public-reward")


def train_and_serve(config_path: Path, epsilon: float | None) -> tuple[Any, Any, Any, float]:
    """Train through ``train_reward_model`` and load the result as the agent would: (config, served model,
    privacy report, seconds)."""
    from client_agent.config import load_client_config
    from client_agent.scoring import load_served_model
    from client_agent.train import train_reward_model

    config = load_client_config(config_path)
    start = time.perf_counter()
    report = train_reward_model(config, no_dp=epsilon is None, progress=False, new_ledger=True).report
    return config, load_served_model(config), report, time.perf_counter() - start


def shadow_statistics(site: Site, reference: Any, work: Path, seed: int, args: argparse.Namespace) -> Site:
    """The attacker's side: ``args.shadows`` models trained without DP on random halves of its own
    ``reference`` pairs, queried through a ScoringService like the site; the site with their mean
    statistics of its members and non-members."""
    from datasets import DatasetDict, load_from_disk

    from client_agent.scoring import ScoringService

    members = load_from_disk(str(site.data / "train"))
    sums = [np.zeros(len(members)), np.zeros(len(site.nonmembers))]
    for k in range(args.shadows):
        order = np.random.default_rng([seed, k, 1]).permutation(len(reference))
        folder = work / f"shadow-{seed}-{k}"
        DatasetDict({"train": reference.select(sorted(order[: args.members]))}).save_to_disk(str(folder))
        config, served, _, _ = train_and_serve(
            site_config(folder, site.ca, work, f"shadow-{seed}-{k}", None, 1000 + 10 * seed + k, args), None
        )
        scorer = service_scorer(ScoringService(served.model, served.sha256, config.serve))
        sums[0] += membership_statistics(scorer, members)
        sums[1] += membership_statistics(scorer, site.nonmembers)
    return replace(site, shadow=(sums[0] / args.shadows, sums[1] / args.shadows))


def audit_run(
    site: Site, work: Path, epsilon: float | None, seed: int, args: argparse.Namespace, *, over_tls: bool = False
) -> dict[str, Any]:
    """Train the site at ``epsilon`` (None: no DP), serve it, attack it through its scores; one result row."""
    from client_agent.evaluate import pairwise_accuracy
    from client_agent.scoring import ScoringService
    from client_agent.site_data import load_pairs

    tag = f"eps-{epsilon or 'inf'}-seed-{seed}"
    config_path = site_config(site.data, site.ca, work, tag, epsilon, seed, args)
    config, served, report, train_s = train_and_serve(config_path, epsilon)
    members = load_pairs(config, "train")
    scorer = service_scorer(ScoringService(served.model, served.sha256, config.serve))
    stats_in = membership_statistics(scorer, members)
    stats_out = membership_statistics(scorer, site.nonmembers)
    row = {
        "target_epsilon": epsilon,
        "seed": seed,
        "epsilon": report.epsilon,
        "delta": report.delta,
        "noise": report.noise_multiplier,
        "steps": report.steps,
        "members": len(members),
        "nonmembers": len(site.nonmembers),
        "auc": auc(stats_in, stats_out),
        "ci": bootstrap_auc(stats_in, stats_out, rounds=args.bootstrap, seed=seed),
        "bound": max_auc(report.epsilon, report.delta),
        "train_accuracy": float(np.mean(stats_in > -math.log(2))),
        "test_accuracy": pairwise_accuracy(served.model, load_pairs(config, "test", limit=False)).accuracy,
        "train_s": train_s,
    }
    if site.shadow is not None:
        calibrated = stats_in - site.shadow[0], stats_out - site.shadow[1]
        row["shadow_auc"] = auc(*calibrated)
        row["shadow_ci"] = bootstrap_auc(*calibrated, rounds=args.bootstrap, seed=seed)
    row["implied_epsilon"] = implied_epsilon(max(row["ci"][0], row.get("shadow_ci", (0.0,))[0]), report.delta)
    if over_tls:
        with tls_scorer(config_path, work) as remote:
            tls_in = membership_statistics(remote, members)
            tls_out = membership_statistics(remote, site.nonmembers)
        row["tls_auc"] = auc(tls_in, tls_out)
        row["tls_max_diff"] = float(max(np.abs(tls_in - stats_in).max(), np.abs(tls_out - stats_out).max()))
    print(
        f"  eps {epsilon or 'inf':>4} seed {seed}: accountant eps {report.epsilon:.2f}, AUC {row['auc']:.3f} "
        f"[{row['ci'][0]:.3f}, {row['ci'][1]:.3f}], shadow {row.get('shadow_auc', float('nan')):.3f}, "
        f"bound {row['bound']:.3f}, test acc "
        f"{row['test_accuracy']:.3f} ({train_s:.1f} s)",
        flush=True,
    )
    return row


# ----- the report -----


def summarise(rows: list[dict[str, Any]], epsilons: Sequence[float | None]) -> list[dict[str, Any]]:
    """Per epsilon: means over seeds, and the AUC interval of all seeds' statistics pooled by mean AUC."""
    out = []
    for eps in epsilons:
        runs = [r for r in rows if r["target_epsilon"] == eps]
        out.append(
            {
                "target_epsilon": eps,
                "epsilon": float(np.mean([r["epsilon"] for r in runs])),
                "auc": float(np.mean([r["auc"] for r in runs])),
                "aucs": [r["auc"] for r in runs],
                "cis": [r["ci"] for r in runs],
                "shadow_aucs": [r["shadow_auc"] for r in runs if "shadow_auc" in r],
                "shadow_cis": [r["shadow_ci"] for r in runs if "shadow_ci" in r],
                "bound": float(np.mean([r["bound"] for r in runs])),
                "implied_epsilon": max(r["implied_epsilon"] for r in runs),
                "train_accuracy": float(np.mean([r["train_accuracy"] for r in runs])),
                "test_accuracy": float(np.mean([r["test_accuracy"] for r in runs])),
            }
        )
    return out


def write_report(
    out: Path, rows: list[dict[str, Any]], args: argparse.Namespace, command: str, machine: list[str], seconds: float
) -> None:
    summary = summarise(rows, args.epsilons)
    first = rows[0]
    label = lambda eps: "inf (no DP)" if eps is None else f"{eps:g}"  # noqa: E731
    lines = [
        "# Membership-inference audit of a site's reward model",
        "",
        f"Command: `{command}` (whole run {seconds / 60:.1f} min)",
        "",
        *machine,
        "",
        "One site (client-0 of a world generated with seed 0), dual-encoder reward model "
        + (
            "starting from one pretrained without DP on public pairs (as the demo's sites do; "
            f"{args.public_rows} public rows, `mor coordinator public-reward`), "
            if args.base
            else "from scratch, "
        )
        + f"trained through `train_reward_model` on {first['members']} member pairs drawn at random (per seed) "
        f"from a pool of "
        f"{first['members'] + first['nonmembers']} train pairs; the other {first['nonmembers']} are the "
        f"non-members. {args.epochs} epochs, batch {args.batch}, lr {args.lr}, the same at every epsilon "
        "(DP: Poisson sampling, per-pair clipping C=1, PRV accountant, delta = 1/n capped at 1e-5). "
        "The attacker sends each pair's chosen and rejected answer to the site's `ScoringService` as "
        "`ScoreRequest`s and sees only the returned scores; its statistic is log sigmoid(s_chosen - "
        "s_rejected), minus the pair's Bradley-Terry loss (loss-threshold attack). AUC 0.5 is chance. "
        f"The shadow-model attack subtracts from it the pair's mean statistic under {args.shadows} models the "
        f"attacker trains itself without DP, same recipe, each on {args.members} pairs drawn from "
        f"{2 * args.members} other pairs of the same client (disjoint from members and non-members), "
        "queried through a ScoringService too.",
        "",
        "Theoretical maximum: (eps, delta)-DP bounds every membership test by TPR <= e^eps FPR + delta "
        "and 1 - FPR <= e^eps (1 - TPR) + delta. The best ROC curve allowed is their upper envelope; its "
        "area is",
        "",
        "    max AUC = (1 - delta)(e^eps + delta) / (e^eps + 1) + delta",
        "",
        "(e^eps / (1 + e^eps) for delta = 0). Taking only the first line, TPR <= min(1, e^eps FPR + "
        "delta), gives the looser 1 - (1 - delta)^2 / (2 e^eps).",
        "",
        f"Seeds {', '.join(map(str, args.seeds))} (the seed draws the member set and the training's "
        f"initialisation, sampling and noise); 95% intervals: percentile bootstrap over pairs, "
        f"{args.bootstrap} resamples, one per seed.",
        "",
        "Epsilon the attack demonstrates: the largest, over seeds, of the epsilon whose maximum AUC equals "
        "the lower end of the seed's interval (the higher of the two attacks) (the formula inverted: "
        "e^eps = (AUC - 2 delta + delta^2) / "
        "(1 - AUC)); a DP claim below it would be refuted at 95%.",
        "",
    ]

    def intervals(aucs: Sequence[float], cis: Sequence[Sequence[float]]) -> str:
        """Each seed's AUC with its 95% interval, for one table cell."""
        return "; ".join(f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, (lo, hi) in zip(aucs, cis))

    lines += markdown_table(
        [
            "target epsilon",
            "accountant epsilon",
            "loss attack AUC, mean",
            "loss AUC [95% CI] per seed",
            "shadow attack AUC, mean",
            "shadow AUC [95% CI] per seed",
            "theoretical max AUC",
            "epsilon the attack demonstrates",
            "train / test pairwise accuracy",
        ],
        [
            [
                label(s["target_epsilon"]),
                f"{s['epsilon']:.3f}",
                f"**{s['auc']:.3f}**",
                intervals(s["aucs"], s["cis"]),
                f"**{np.mean(s['shadow_aucs']):.3f}**" if s["shadow_aucs"] else "-",
                intervals(s["shadow_aucs"], s["shadow_cis"]) or "-",
                f"{s['bound']:.4f}",
                f"{s['implied_epsilon']:.2f}",
                f"{s['train_accuracy']:.3f} / {s['test_accuracy']:.3f}",
            ]
            for s in summary
        ],
    )
    tls = [r for r in rows if "tls_auc" in r]
    if tls:
        r = tls[0]
        lines += [
            "",
            f"End to end over mutual TLS (eps {label(r['target_epsilon'])}, seed {r['seed']}): the same "
            f"attack through the coordinator's `Federation.scorer` and a real agent gave AUC "
            f"{r['tls_auc']:.3f} (in process {r['auc']:.3f}); largest difference of a statistic "
            f"{r['tls_max_diff']:.2g}.",
        ]
    lines += [
        "",
        *findings(summary),
        "",
        "Reading: at eps 4 and 8 the bound is close to 1 and constrains no attack; only eps 1 tests it "
        "closely. Attacks on natural data sit far below the worst case DP allows (the epsilon they "
        "demonstrate is small even without DP), so this audit catches gross failures (noise not "
        "applied, a wrong accountant, scores that leak beyond the model), not the accountant's "
        "tightness; that needs crafted canary pairs and many more training runs.",
        "",
        "Raw numbers: `mia_audit.json` next to this file.",
        "",
    ]
    write_markdown(out / "mia_audit.md", lines)
    raw = {
        "command": command,
        "machine": machine,
        "run_seconds": seconds,
        "public_rows": args.public_rows,
        "rows": rows,
        "summary": summary,
    }
    (out / "mia_audit.json").write_text(json.dumps(_strict_json(raw), indent=1))

    with figure(out / "mia_audit.png", cols=2, size=(11, 4)) as (_, (left, right)):
        x = np.arange(len(summary))
        for i, s in enumerate(summary):
            left.scatter([i] * len(s["aucs"]), s["aucs"], color="C0", alpha=0.5, s=15)
            left.errorbar(
                [i],
                [s["auc"]],
                yerr=[[s["auc"] - min(c[0] for c in s["cis"])], [max(c[1] for c in s["cis"]) - s["auc"]]],
                fmt="o",
                color="C0",
                capsize=4,
                label="attack AUC (widest 95% CI)" if i == 0 else None,
            )
        if any(s["shadow_aucs"] for s in summary):
            left.plot(
                x,
                [np.mean(s["shadow_aucs"]) if s["shadow_aucs"] else np.nan for s in summary],
                "D-",
                color="C2",
                label="shadow-model attack AUC (mean)",
            )
        left.plot(x, [min(s["bound"], 1.0) for s in summary], "s--", color="C3", label="theoretical max AUC")
        left.axhline(0.5, color="grey", linestyle=":", label="chance")
        left.set_xticks(x, [label(s["target_epsilon"]) for s in summary])
        left.set_xlabel("target epsilon")
        left.set_ylabel("membership-inference AUC")
        left.set_ylim(0.35, 1.02)
        left.set_title("Membership inference through returned scores")
        left.legend(loc="lower right", fontsize=8)
        grid = np.linspace(0, 1, 201)
        for s in summary:
            eps, delta = s["epsilon"], first["delta"]
            if math.isfinite(eps):
                envelope = np.minimum.reduce(
                    [np.ones_like(grid), math.exp(eps) * grid + delta, 1 - math.exp(-eps) * (1 - delta - grid)]
                )
                right.plot(grid, envelope, label=f"eps {eps:.2f}: max AUC {max_auc(eps, delta):.3f}")
        right.plot(grid, grid, color="grey", linestyle=":")
        right.set_xlabel("false-positive rate")
        right.set_ylabel("largest true-positive rate")
        right.set_title("ROC envelopes (eps, delta)-DP allows")
        right.legend(fontsize=8)


def _strict_json(value: Any) -> Any:
    """``value`` with infinite floats (epsilon without DP) as null, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def findings(summary: list[dict[str, Any]]) -> list[str]:
    """Computed findings: the no-DP signal, and whether any DP run breaks its bound."""
    lines = ["Findings (computed from the table):", ""]
    for s in summary:
        eps = s["target_epsilon"]
        lows = [max(c[0], sc[0]) for c, sc in zip(s["cis"], s["shadow_cis"] or s["cis"])]
        if eps is None:
            signal = (
                "every seed's interval lies above 0.5: the audit has signal"
                if min(lows) > 0.5
                else "some seed's interval includes 0.5: the attack's signal is weak even without DP"
            )
            lines.append(
                f"- Without DP the attacks reach AUC {s['auc']:.3f} (loss) and "
                f"{np.mean(s['shadow_aucs'] or [np.nan]):.3f} (shadow) (train accuracy "
                f"{s['train_accuracy']:.3f} vs test {s['test_accuracy']:.3f}); {signal}."
            )
        else:
            verdict = (
                "every seed's interval reaches below"
                if max(lows) <= s["bound"]
                else "a seed's interval lies wholly ABOVE (a DP violation, or a bug)"
            )
            lines.append(
                f"- eps {eps:g}: AUC {s['auc']:.3f} (loss), {np.mean(s['shadow_aucs'] or [np.nan]):.3f} "
                f"(shadow); {verdict} the bound {s['bound']:.3f}."
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="Folder of mia_audit.md/.png/.json."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="A small grid (2 seeds, fewer pairs and epochs) for a check in about a minute.",
    )
    parser.add_argument("--members", type=int, default=100, help="Member pairs (as many non-members).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds (member draw, training).")
    parser.add_argument(
        "--epsilons",
        type=lambda v: None if v in ("inf", "none") else float(v),
        nargs="+",
        default=list(EPSILONS),
        help="Target epsilons; 'inf' trains without DP.",
    )
    parser.add_argument("--epochs", type=int, default=120, help="Epochs over the members (many, to overfit).")
    parser.add_argument("--batch", type=int, default=25, help="Expected pairs per step.")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate.")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples per interval.")
    parser.add_argument("--shadows", type=int, default=2, help="Shadow models per seed (0: loss attack only).")
    parser.add_argument("--no-tls", action="store_true", help="Skip the end-to-end run over mutual TLS.")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument(
        "--public-rows",
        type=int,
        default=2000,
        help="Public rows the site's starting model is pretrained on (2 pairs each; 0: the site trains from "
        "scratch). The attacker's shadow models start from the same public model.",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.seeds, args.epochs, args.bootstrap = min(args.members, 40), args.seeds[:2], 20, 200
        args.shadows, args.public_rows = min(args.shadows, 1), min(args.public_rows, 64)
    command = " ".join(["python", "-m", "benchmarks.mia_audit", *(sys.argv[1:] if argv is None else argv)])

    import datasets
    import torch

    from mor_secure import pki
    from mor_secure.data.loader import load_preferences
    from mor_secure.data.world import generate_world

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    began = time.time()
    machine = machine_lines(("torch", "opacus"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mia-audit-") as tmp:
        work = Path(tmp)
        generate_world(work / "world", seed=0, clients=1, pairs=math.ceil(4 * args.members / 0.85) + 8)
        train = load_preferences(work / "world" / "client-0", split="train", kind="pairs")
        if len(train) < 4 * args.members:
            raise SystemExit(f"the world has {len(train)} train pairs, fewer than 4 x {args.members}")
        pool = train.select(range(2 * args.members))
        reference = train.select(range(2 * args.members, 4 * args.members))  # the attacker's own pairs
        test = load_preferences(work / "world" / "client-0", split="test", kind="pairs")
        args.base = public_base(work, args.public_rows, quick=args.quick)
        ca = work / "ca"
        pki.init_ca(ca)
        pki.issue(ca, role="coordinator", name="coord")
        pki.issue(ca, role="client", name="site-a")
        for seed in args.seeds:
            site = make_site(pool, test, args.members, seed, work / f"site-seed-{seed}", ca)
            if args.shadows:
                site = shadow_statistics(site, reference, work, seed, args)
            for eps in args.epsilons:
                tls = (
                    not args.no_tls
                    and seed == args.seeds[0]
                    and eps == max((e for e in args.epsilons if e), default=None)
                )
                rows.append(audit_run(site, work, eps, seed, args, over_tls=tls))
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(args.out, rows, args, command, machine, time.time() - began)
    print((args.out / "mia_audit.md").read_text())


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main()

"""The demo's final report: markdown (report.md) and a PNG plot (report.png) in the workdir, from the files
the stages wrote (verified ledger summary, router report, policy evaluations, GRPO log history)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mor_secure.reporting import figure, markdown_table

SECTIONS = (
    "## Privacy: epsilon per site (verified ledger)",
    "## Site reward models on their own held-out pairs",
    "## Router weights per domain",
    "## Reward accuracy: MoR vs baselines",
    "## Policy accuracy before and after GRPO",
    "## GRPO training",
    "## Stage timings",
)
"""The report's section headings, in order (the test checks each is present)."""


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def grpo_history(grpo_out: Path) -> list[dict[str, Any]]:
    """The logged GRPO steps (reward, KL, telemetry) from the last checkpoint's trainer state."""
    checkpoints = sorted(grpo_out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        return []
    return [h for h in _read(checkpoints[-1] / "trainer_state.json")["log_history"] if "kl" in h]


def _plot(
    path: Path,
    before: dict,
    after: dict,
    accuracy: list[tuple[str, float]],
    weights: dict,
    sites: list[str],
    history: list[dict],
) -> None:
    """Draw the report's four panels (policy accuracy, reward accuracy, router weights, GRPO) into ``path``."""
    with figure(path, rows=2, cols=2, size=(12, 8), dpi=100) as (_, axes):
        domains = sorted(before["per_domain"])
        xs = range(len(domains) + 1)
        for offset, (label, result) in zip((-0.2, 0.2), (("before GRPO", before), ("after GRPO", after))):
            values = [result["per_domain"].get(d, {}).get("accuracy", 0.0) for d in domains] + [result["accuracy"]]
            axes[0, 0].bar([x + offset for x in xs], values, width=0.4, label=label)
        axes[0, 0].set_xticks(list(xs), domains + ["all"])
        axes[0, 0].set_ylim(0, 1)
        axes[0, 0].set_title("Policy accuracy on held-out questions")
        axes[0, 0].legend()
        names = [n for n, _ in accuracy]
        axes[0, 1].barh(names, [0.0 if math.isnan(v) else v for _, v in accuracy], color="tab:green")
        axes[0, 1].axvline(0.5, color="grey", linestyle=":")
        axes[0, 1].set_xlim(0, 1)
        axes[0, 1].set_title("Held-out pairwise reward accuracy")
        weight_domains = sorted(weights)
        bottom = [0.0] * len(weight_domains)
        for site in sites:
            values = [weights[d][site] for d in weight_domains]
            axes[1, 0].bar(weight_domains, values, bottom=bottom, label=site)
            bottom = [b + v for b, v in zip(bottom, values)]
        axes[1, 0].set_title("Mean router weight per domain")
        axes[1, 0].legend()
        if history:
            steps = [h["step"] for h in history]
            axes[1, 1].plot(steps, [h.get("reward", math.nan) for h in history], label="MoR reward")
            axes[1, 1].plot(steps, [h["kl"] for h in history], label="KL to the warm start")
            axes[1, 1].set_xlabel("GRPO step")
            axes[1, 1].legend()
        axes[1, 1].set_title("GRPO training")


def _site_rows(folder: Path, sites: list[str]) -> list[list[str]]:
    """One row per site from its `mor client eval --json`: its own domain (the one it holds most pairs of)."""
    rows = []
    for site in sites:
        path = folder / f"{site}.json"
        if not path.is_file():
            rows.append([site, "-", "-", "-", "-", "-"])
            continue
        result = _read(path)
        own = max(result["per_domain"], key=lambda d: result["per_domain"][d]["pairs"])
        ranked = (result.get("top1") or {}).get("per_domain", {}).get(own, {})
        rows.append(
            [
                site,
                own,
                str(result["per_domain"][own]["pairs"]),
                _pct(result["per_domain"][own]["accuracy"]),
                _pct(ranked.get("top1")),
                _pct(result["accuracy"]),
            ]
        )
    return rows


def _policy_verdict(before: dict, after: dict, reward_accuracy: float, history: list[dict]) -> str:
    """What GRPO did to the policy, per domain, and what bounds it (the fused reward's own accuracy)."""
    kl = f"; KL to the warm start at the end {history[-1]['kl']:.3f}" if history else ""
    verb = (
        "raised"
        if after["accuracy"] > before["accuracy"]
        else "lowered"
        if after["accuracy"] < before["accuracy"]
        else "did not change"
    )
    moves = ", ".join(
        f"{d} {_pct(before['per_domain'][d]['accuracy'])} -> {_pct(after['per_domain'].get(d, {}).get('accuracy'))}"
        for d in sorted(before["per_domain"])
    )
    text = f"GRPO {verb} overall accuracy ({_pct(before['accuracy'])} -> {_pct(after['accuracy'])}{kl}; {moves})."
    if after["accuracy"] <= before["accuracy"]:
        text += (
            f" The fused reward ranks held-out pairs right {_pct(reward_accuracy)} of the time; a domain gains "
            "where its owner's top-1 above is high and loses where it is low, because the policy climbs to "
            "whatever the reward ranks first."
        )
    return text


def write_report(workdir: Path, profile_name: str, profile: dict[str, Any], timings: dict[str, float]) -> Path:
    """Write ``report.md`` and ``report.png`` into ``workdir``; returns the markdown's path."""
    results = workdir / "results"
    ledger, router = _read(results / "ledger.json"), _read(workdir / "router" / "report.json")
    before, after = _read(results / "eval_before.json"), _read(results / "eval_after.json")
    history = grpo_history(workdir / "grpo")
    sites = router["sites"]
    accuracy = [("MoR (learned router)", router["accuracy"]), ("uniform mean", router["uniform_accuracy"])]
    accuracy += [(f"single client: {s}", a) for s, a in sorted(router["site_accuracy"].items())]
    accuracy += sorted(router.get("baselines", {}).items())

    lines = [
        f"# MoR-Secure demo report ({profile_name})",
        "",
        f"Three sites, each a separate `mor client serve` process, scored over mutual TLS on 127.0.0.1. "
        f"Sizes: {', '.join(f'{k}={v}' for k, v in profile.items())}.",
        "",
        SECTIONS[0],
        "",
        "`mor ledger verify`: " + (results / "ledger_verify.txt").read_text(encoding="utf-8").strip(),
        "",
    ]
    lines += markdown_table(
        ["site", "epsilon", "delta", "accountant", "signed reports", "items scored", "refusals"],
        [
            [
                s,
                f"{r['epsilon']:.3f}" if r.get("epsilon") is not None else "-",
                f"{r.get('delta') or 0:.3g}",
                str(r.get("accountant") or "-"),
                str(r.get("reports", 0)),
                str(r.get("items_scored", 0)),
                str(r.get("refusals", 0)),
            ]
            for s, r in sorted(ledger["sites"].items())
            if s in sites
        ],
    )
    strangers = sum(r.get("refusals", 0) for s, r in ledger["sites"].items() if s not in sites)
    if strangers:
        lines += [
            "",
            f"Refused peers without a site certificate: {strangers} (for example stale TLS records an "
            "agent's socket resent to a newly started coordinator; each is a ledger entry).",
        ]
    lines += [
        "",
        SECTIONS[1],
        "",
        "Measured at each site by `mor client eval` (no privacy cost): pairwise accuracy, "
        "and top-1, the share of questions whose true answer the model scores above every other candidate "
        "(all answers in all styles, other types' answers, junk), which is what GRPO climbs.",
        "",
    ]
    lines += markdown_table(
        ["site", "domain", "pairs", "pairwise (own domain)", "top-1 (own domain)", "pairwise (all)"],
        _site_rows(workdir / "results" / "sites", sites),
    )
    lines += [
        "",
        SECTIONS[2],
        "",
        f"Mean routing weight of each site on the router's held-out prompts "
        f"({router['test_pairs']} pairs)."
        " client-k holds mostly the k-th domain (detail, medical, chart).",
        "",
    ]
    lines += markdown_table(
        ["domain", *sites], [[d, *(f"{w[s]:.2f}" for s in sites)] for d, w in router["weights_by"].items()]
    )
    lines += [
        "",
        SECTIONS[3],
        "",
        f"Held-out pairwise accuracy (chosen scored above rejected) on {router['test_pairs']} router test pairs.",
        "",
    ]
    lines += markdown_table(["reward", "accuracy"], [[n, _pct(v)] for n, v in accuracy])
    mor, uniform = router["accuracy"], router["uniform_accuracy"]
    verdict = (
        "MoR beats the uniform mean"
        if mor > uniform
        else "MoR does NOT beat the uniform mean"
        if mor < uniform
        else "MoR ties the uniform mean"
    )
    lines += ["", f"{verdict} here ({_pct(mor)} vs {_pct(uniform)}, {router['test_pairs']} pairs)."]
    lines += [
        "",
        SECTIONS[4],
        "",
        f"Greedy answers to {before['n']} held-out questions. An answer counts when it "
        "gives the true answer in any of the world's styles or the warm start's verbose frame (decided on "
        "purpose: the product aligns what the policy answers; style is a site preference, reported apart as "
        "the concise share). The warm start's deliberate flaws: in its public data every verbose answer "
        '("It is X.") about colours, lesion side, lesion presence and bar comparison carries a swapped '
        "label, while the concise answers name them right, so it sees these features, answers them wrong "
        "and samples the true concise answer now and then.",
        "",
    ]
    domains = sorted(before["per_domain"])
    rows = [
        [
            d,
            _pct(before["per_domain"][d]["accuracy"]),
            _pct(after["per_domain"].get(d, {}).get("accuracy")),
            _pct(before["per_domain"][d]["concise_share"]),
            _pct(after["per_domain"].get(d, {}).get("concise_share")),
        ]
        for d in domains
    ]
    rows.append(
        [
            "all",
            _pct(before["accuracy"]),
            _pct(after["accuracy"]),
            _pct(before["concise_share"]),
            _pct(after["concise_share"]),
        ]
    )
    lines += markdown_table(["domain", "accuracy before", "accuracy after", "concise before", "concise after"], rows)
    lines += ["", _policy_verdict(before, after, mor, history)]
    lines += ["", SECTIONS[5], ""]
    if history:
        last = history[-1]
        weights = {k.split("/")[-1]: v for k, v in last.items() if "/weight/" in k}
        lines += [
            f"{len(history)} logged steps. Last step: reward {last.get('reward', math.nan):.3f}, "
            f"KL {last['kl']:.4f}, agents live {last.get('telemetry/agents_live', math.nan):g}, "
            f"unscored share {last.get('telemetry/unscored', math.nan):g}; routing weights "
            + ", ".join(f"{s} {w:.2f}" for s, w in sorted(weights.items()))
            + "."
        ]
    else:
        lines += ["No GRPO history found."]
    lines += ["", SECTIONS[6], ""]
    lines += markdown_table(["stage", "seconds"], [[s, "reused" if t == 0 else f"{t:.1f}"] for s, t in timings.items()])
    lines += ["", f"Total: {sum(timings.values()):.1f} s (stages run this time).", "", "![demo plot](report.png)", ""]
    _plot(workdir / "report.png", before, after, accuracy, router["weights_by"], sites, history)
    path = workdir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

"""DP overhead benchmark: what DP-SGD (Opacus) costs each reward-model family.

1. Step time and memory of a DP step (per-pair gradients, clipping, noise) against a plain AdamW
   step on the same fixed batch of pairs; each (family, mode) runs in a fresh process so its
   memory is its own, modes interleaved and repeated because the machine may be shared.
2. Held-out pairwise accuracy after DP training at epsilon 1, 4, 8 and without DP (infinity),
   on every client of a benchmark world, through the real `train_reward_model` path.

    python -m benchmarks.dp_overhead --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mor_secure.reporting import figure, markdown_table

FAMILIES = ("dual-encoder", "qwen2-vl", "llava")
EPSILONS = (1.0, 4.0, 8.0, None)  # None: no DP
HYPER = {
    "dual-encoder": {"epochs": 10, "lr": 1e-2},
    "qwen2-vl": {"epochs": 5, "lr": 3e-3},
    "llava": {"epochs": 5, "lr": 3e-3},
}
"""Per family, the same settings at every finite epsilon (the ones the tests use)."""
HYPER_NO_DP = {**HYPER, "dual-encoder": {"epochs": 30, "lr": 1e-3}}
"""Without DP: the dual encoder does better with a smaller step and more epochs (tuned by hand);
longer training did not help the tiny LoRA VLMs (qwen2-vl: 0.62 after 15 epochs at lr 1e-3)."""


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _build(family: str, bases: dict[str, str]):
    from client_agent.config import ModelSection
    from mor_secure.rewards import build_reward_model

    return build_reward_model(ModelSection(family=family, base=bases.get(family, "")), seed=0)


def time_steps(family: str, bases: dict[str, str], data: str, batch: int, steps: int, threads: int, queue) -> None:
    """In a fresh process: plain and DP steps on one fixed batch, alternating step by step so that
    load from other jobs hits both alike. Memory: resident growth after the plain steps, then after
    the DP steps (the allocator reuses the plain blocks, so the second growth is what DP adds)."""
    import warnings

    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from mor_secure.data.loader import load_preferences
    from mor_secure.rewards import bradley_terry_loss

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = load_preferences(data, split="train").select(range(batch))
    runs = {}
    for mode in ("plain", "dp"):
        model = _build(family, bases).train().to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        module = model
        if mode == "dp":
            module = GradSampleModule(model)
            optimizer = DPOptimizer(optimizer, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch)
        pairs = model.encode_pairs(
            list(rows["image"]), list(rows["prompt"]), list(rows["chosen"]), list(rows["rejected"])
        )
        runs[mode] = (module, optimizer, {k: v.to(device) for k, v in pairs.items()})

    def step(mode: str) -> tuple[float, float]:
        module, optimizer, pairs = runs[mode]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        chosen, rejected = module(**pairs)
        bradley_terry_loss(chosen, rejected).backward()
        rss = _rss_mb()  # per-sample gradients are alive between backward and step
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, rss

    before = _rss_mb()
    peak = {}
    for mode in ("plain", "dp"):  # warm-up, and the memory each mode needs
        peak[mode] = max(step(mode)[1] for _ in range(3))
    times = {"plain": [], "dp": []}
    for _ in range(steps):
        for mode in ("plain", "dp"):
            times[mode].append(step(mode)[0])
    trainable = [p for p in runs["plain"][0].parameters() if p.requires_grad]
    queue.put(
        {
            "family": family,
            "plain_s": statistics.median(times["plain"]),
            "dp_s": statistics.median(times["dp"]),
            "rss_before_mb": before,
            "rss_plain_mb": peak["plain"],
            "rss_dp_mb": max(peak["dp"], peak["plain"]),
            "trainable": sum(p.numel() for p in trainable),
            "total": sum(p.numel() for p in runs["plain"][0].parameters()),
        }
    )


def measure_overhead(bases, data, batch, steps, repeats, threads) -> list[dict]:
    """Per family and repeat, one fresh spawned process running both modes."""
    ctx = mp.get_context("spawn")
    results = []
    for repeat in range(repeats):
        for family in FAMILIES:
            queue = ctx.Queue()
            proc = ctx.Process(target=time_steps, args=(family, bases, data, batch, steps, threads, queue))
            proc.start()
            result = queue.get(timeout=600)
            proc.join()
            results.append({**result, "repeat": repeat})
            print(
                f"  {family:<13} plain {result['plain_s'] * 1000:7.1f} ms/step, DP {result['dp_s'] * 1000:7.1f} "
                f"ms/step ({result['dp_s'] / result['plain_s']:.2f}x)",
                flush=True,
            )
    return results


def measure_accuracy(world: Path, bases: dict[str, str], work: Path, clients: list[str]) -> list[dict]:
    """Train every family on every client at every epsilon; held-out pairwise accuracy."""
    from client_agent.config import (
        ClientConfig,
        CoordinatorSection,
        DataSection,
        ModelSection,
        PrivacySection,
        TrainSection,
    )
    from client_agent.evaluate import evaluate_saved
    from client_agent.site_data import load_pairs
    from client_agent.train import train_reward_model
    from mor_secure.config import TLSConfig

    rows = []
    for family in FAMILIES:
        for client in clients:
            for eps in EPSILONS:
                tag = f"{family}-{client}-{eps or 'inf'}"
                config = ClientConfig(
                    site="bench",
                    tls=TLSConfig(*(work / n for n in ("ca", "cert", "key", "crl"))),
                    coordinator=CoordinatorSection("tcp://127.0.0.1:1", "coord"),
                    data=DataSection(path=world / client),
                    model=ModelSection(family=family, base=bases.get(family, "")),
                    train=TrainSection(out=work / tag, **(HYPER if eps else HYPER_NO_DP)[family]),
                    privacy=PrivacySection(
                        target_epsilon=eps or 1.0, max_epsilon=1e9, ledger=work / f"{tag}.ledger.jsonl"
                    ),
                )
                start = time.perf_counter()
                report = train_reward_model(config, no_dp=eps is None, progress=False, new_ledger=True).report
                seconds = time.perf_counter() - start
                result = evaluate_saved(config.train.out, load_pairs(config, "test"))
                rows.append(
                    {
                        "family": family,
                        "client": client,
                        "target_epsilon": eps,
                        "epsilon": report.epsilon if eps else None,
                        "noise": report.noise_multiplier,
                        "steps": report.steps,
                        "n_pairs": report.n_pairs,
                        "test_pairs": result.pairs,
                        "accuracy": result.accuracy,
                        "train_s": seconds,
                    }
                )
                print(f"  {tag:<32} accuracy {result.accuracy:.3f}  ({seconds:.1f} s)", flush=True)
    return rows


def machine() -> str:
    import opacus
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU only ({cpu})"
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {device}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, opacus {opacus.__version__}"
    )


def write_report(out: Path, overhead: list[dict], accuracy: list[dict], args, seconds: float) -> None:
    summary = {}
    for family in FAMILIES:
        runs = [r for r in overhead if r["family"] == family]
        typical = sorted(runs, key=lambda r: r["dp_s"] / r["plain_s"])[len(runs) // 2]  # median ratio
        summary[family] = {
            "plain_ms": typical["plain_s"] * 1000,
            "dp_ms": typical["dp_s"] * 1000,
            "ratio": typical["dp_s"] / typical["plain_s"],
            "ratios": [r["dp_s"] / r["plain_s"] for r in runs],
            "plain_mb": statistics.median(r["rss_plain_mb"] - r["rss_before_mb"] for r in runs),
            "dp_mb": statistics.median(r["rss_dp_mb"] - r["rss_before_mb"] for r in runs),
            "peak_mb": statistics.median(r["rss_dp_mb"] for r in runs),
            "trainable": runs[0]["trainable"],
            "total": runs[0]["total"],
        }

    def acc(family, eps):
        values = [r["accuracy"] for r in accuracy if r["family"] == family and r["target_epsilon"] == eps]
        return statistics.mean(values), values

    lines = [
        "# DP overhead of the reward-model families",
        "",
        f"Machine: {machine()}.",
        "",
        f"Command: `python -m benchmarks.dp_overhead --out {args.out} --threads {args.threads}` "
        f"(whole run {seconds / 60:.1f} min; torch intra-op threads {args.threads}; the machine was "
        "shared with other jobs, so times are medians of interleaved repeats).",
        "",
        "## Step time and memory at the same batch",
        "",
        f"One fixed batch of {args.batch} preference pairs (client-0); per family and repeat one fresh "
        f"process builds the model twice (plain, and wrapped by Opacus), runs 3 warm-up steps of each, "
        f"then {args.steps} steps of each alternating step by step (so load from other jobs hits both "
        f"alike); medians over steps, then over {args.repeats} repeats. DP step = Opacus per-pair "
        "gradients (hooks) + clipping (C=1) + Gaussian noise (sigma=1) + AdamW; plain step = AdamW. "
        "Memory: growth of resident memory over the process's size before the first step, at the "
        "moment between backward and optimizer step (per-sample gradients alive), after the plain "
        "steps and then after the DP steps.",
        "",
        "Times are those of the repeat with the median ratio; the ratio of every repeat is in brackets.",
        "",
        *markdown_table(
            [
                "family",
                "trainable / total weights",
                "plain ms/step",
                "DP ms/step",
                "DP / plain (each repeat)",
                "step memory plain / DP (MB)",
                "process peak (MB)",
            ],
            [
                [
                    family,
                    f"{s['trainable']:,} / {s['total']:,}",
                    f"{s['plain_ms']:.1f}",
                    f"{s['dp_ms']:.1f}",
                    f"**{s['ratio']:.2f}x** ({', '.join(f'{r:.2f}' for r in s['ratios'])})",
                    f"{s['plain_mb']:.1f} / {s['dp_mb']:.1f}",
                    f"{s['peak_mb']:.0f}",
                ]
                for family, s in summary.items()
            ],
        ),
        "",
        "Target: a DP step at most 1.3x a plain one for the LoRA families (qwen2-vl, llava).",
        "",
        "## Held-out pairwise accuracy by epsilon",
        "",
        f"DP training through `train_reward_model` (Poisson sampling, PRV accountant, delta 1e-5, "
        f"C=1, batch 32) on each client's train split of a world generated with seed 0 and "
        f"{args.pairs} pairs per client; accuracy on each client's test split (chosen scored above "
        f"rejected), mean over clients {', '.join(args.clients)} (per-client values in brackets). "
        "Settings per family with DP: "
        + "; ".join(f"{f} {h['epochs']} epochs, lr {h['lr']}" for f, h in HYPER.items())
        + " (the same at every epsilon, no tuning per epsilon); without DP: "
        + "; ".join(f"{f} {h['epochs']} epochs, lr {h['lr']}" for f, h in HYPER_NO_DP.items())
        + ".",
        "",
    ]

    def accuracy_cell(family: str, eps: float | None) -> str:
        mean, values = acc(family, eps)
        return f"{mean:.3f} [{', '.join(f'{v:.2f}' for v in values)}]"

    lines += markdown_table(
        ["family", *(f"eps {e:g}" if e else "no DP (inf)" for e in EPSILONS)],
        [[family, *(accuracy_cell(family, eps) for eps in EPSILONS)] for family in FAMILIES],
    )
    test_pairs = sorted({r["test_pairs"] for r in accuracy})
    lora = [f for f in FAMILIES if f != "dual-encoder"]
    dual_dp = statistics.mean(acc("dual-encoder", e)[0] for e in EPSILONS if e)
    ratios = ", ".join(f"{summary[f]['ratio']:.2f}x" for f in lora)
    extra_mb = ", ".join(f"{summary[f]['dp_mb'] - summary[f]['plain_mb']:.0f} MB" for f in lora)
    findings = [
        "## Findings",
        "",
        f"- LoRA families: a DP step costs {ratios} of a plain one ({', '.join(lora)}; target 1.3x) and "
        f"{extra_mb} more memory: only the adapters and the head need per-pair gradients, the frozen "
        "backbone dominates the step.",
        f"- dual-encoder: {summary['dual-encoder']['ratio']:.1f}x, "
        f"but of a {summary['dual-encoder']['plain_ms']:.1f} ms "
        "step: with almost no compute per step, Opacus' fixed cost per layer (hooks, clipping, noise) is "
        "the step.",
        f"- Utility: DP costs the dual encoder {100 * (acc('dual-encoder', None)[0] - dual_dp):.0f} accuracy points "
        f"(mean {dual_dp:.2f} over epsilon 1-8 against {acc('dual-encoder', None)[0]:.2f} without DP). The tiny "
        "random-weight VLMs with LoRA reach about the same accuracy with and without DP at these "
        "settings: they learn the easy part (the answer style and some answers) and nothing DP could "
        "take away; real pretrained backbones are needed to see their DP trade-off.",
        "",
    ]
    lines += [
        "",
        f"Test split sizes: {', '.join(map(str, test_pairs))} pairs per client, so one pair is "
        f"{100 / min(test_pairs):.1f} accuracy points: read differences of a few points as noise.",
        "",
        "Raw numbers: `dp_overhead.json` next to this file; `--report-only` re-renders this report from it.",
        "",
        *findings,
    ]
    (out / "dp_overhead.md").write_text("\n".join(lines), encoding="utf-8")
    if not args.report_only:  # the raw numbers of a measuring run are kept as they were
        (out / "dp_overhead.json").write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "run_seconds": seconds,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "summary": summary,
                    "overhead": overhead,
                    "accuracy": accuracy,
                },
                indent=1,
            )
        )

    with figure(out / "dp_overhead.png", cols=2, size=(11, 4)) as (_, (left, right)):
        x = range(len(FAMILIES))
        left.bar([i - 0.2 for i in x], [summary[f]["plain_ms"] for f in FAMILIES], 0.4, label="plain")
        left.bar([i + 0.2 for i in x], [summary[f]["dp_ms"] for f in FAMILIES], 0.4, label="DP (Opacus)")
        for i, f in enumerate(FAMILIES):
            left.text(i + 0.2, summary[f]["dp_ms"], f"{summary[f]['ratio']:.2f}x", ha="center", va="bottom")
        left.set_xticks(list(x), FAMILIES)
        left.set_yscale("log")
        left.set_ylabel(f"ms per step ({args.batch} pairs, log scale)")
        left.set_title("Step time, same batch")
        left.legend()
        labels = [f"{e:g}" if e else "inf" for e in EPSILONS]
        for family in FAMILIES:
            right.plot(labels, [acc(family, e)[0] for e in EPSILONS], marker="o", label=family)
        right.axhline(0.5, color="grey", linestyle=":", label="chance")
        right.set_xlabel("epsilon (inf = no DP)")
        right.set_ylabel("held-out pairwise accuracy")
        right.set_ylim(0.3, 1.0)
        right.set_title("Utility vs privacy")
        right.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="Folder of the report.")
    parser.add_argument("--batch", type=int, default=32, help="Pairs per timed step.")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per run.")
    parser.add_argument("--repeats", type=int, default=3, help="Repeats of the timing runs (fresh processes).")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is stable on a shared 2-core machine)."
    )
    parser.add_argument("--pairs", type=int, default=400, help="Pairs per client in the generated world.")
    parser.add_argument(
        "--clients",
        nargs="+",
        default=["client-0", "client-1", "client-2"],
        help="Clients to train on for the accuracy table.",
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        default=None,
        help="Re-render the report from a dp_overhead.json of an earlier run; measure nothing.",
    )
    args = parser.parse_args()
    if args.report_only:
        raw = json.loads(args.report_only.read_text())
        saved = raw["args"]
        for key in ("batch", "steps", "repeats", "threads", "pairs"):
            setattr(args, key, int(saved[key]))
        args.clients = [c.strip(" '") for c in saved["clients"].strip("[]").split(",")]
        write_report(args.out, raw["overhead"], raw["accuracy"], args, raw["run_seconds"])
        return
    import torch

    torch.set_num_threads(args.threads)
    from mor_secure.data.world import generate_world
    from mor_secure.logs import configure_logging
    from mor_secure.models.zoo import build_tiny_vlm

    configure_logging("WARNING")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dp-overhead-") as tmp:
        work = Path(tmp)
        generate_world(work / "world", seed=0, clients=3, pairs=args.pairs)
        bases = {f: str(build_tiny_vlm(f, work / f, seed=0)) for f in ("qwen2-vl", "llava")}
        print("step time and memory:", flush=True)
        overhead = measure_overhead(
            bases, str(work / "world" / "client-0"), args.batch, args.steps, args.repeats, args.threads
        )
        print("accuracy by epsilon:", flush=True)
        accuracy = measure_accuracy(work / "world", bases, work, args.clients)
        args.out.mkdir(parents=True, exist_ok=True)
        write_report(args.out, overhead, accuracy, args, time.perf_counter() - start)
    print(f"wrote {args.out / 'dp_overhead.md'} and dp_overhead.png", file=sys.stderr)


if __name__ == "__main__":
    main()

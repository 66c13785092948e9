"""Reward overhead benchmark: GRPO step time with the fused MoR reward from remote agents over mutual TLS
against the same three site reward models scored in process. Target: at most 1.15x.

Both modes train the same warm-start policy with the same Mixture-of-Rewards bundle, seed, batch and
number of steps; only the scorer differs: ``Federation.scorer`` (three `mor client serve` agents,
PNG images and texts over mTLS) or the sites' models loaded here (``load_reward_model``) and called
directly. Modes alternate over repeats (the machine may be shared); the first steps of every run are
warm-up and skipped. The federation, models and policy come from a `mor demo --quick` work folder,
built first when ``--workdir`` holds none.

    python -m benchmarks.reward_overhead --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import machine_and_command, machine_lines, write_markdown
from mor_secure.reporting import figure, markdown_table

MODES = ("remote", "local")
LABELS = {"remote": "remote agents over mTLS", "local": "same models in process"}
TARGET = 1.15


def ensure_workdir(workdir: Path) -> None:
    """Build the quick demo in ``workdir`` unless its router bundle and warm-start policy are already there."""
    from mor_secure.demo.stages import child_env, mor_command

    if (workdir / "router" / "mixture" / "mixture.json").is_file() and (workdir / "policy" / "warm").is_dir():
        return
    print(f"building the federation with `mor demo --quick --workdir {workdir}` (a few minutes)", file=sys.stderr)
    subprocess.run(mor_command("demo", "--quick", "--workdir", workdir), env=child_env(), check=True)


def bench_configs(workdir: Path, port: int) -> tuple[Path, list[Path]]:
    """Copies of the demo's coordinator and site configs pointing at a fresh port (sites' relative paths kept)."""
    from mor_secure.demo.pipeline import SITES, write_toml

    endpoint = f"tcp://127.0.0.1:{port}"
    coordinator = tomllib.loads((workdir / "coordinator" / "coordinator.toml").read_text(encoding="utf-8"))
    coordinator["bind"] = endpoint
    coordinator_path = workdir / "coordinator" / "reward-overhead.toml"
    write_toml(coordinator_path, coordinator)
    sites = []
    for site in SITES:
        folder = workdir / "sites" / site
        config = tomllib.loads((folder / "client.toml").read_text(encoding="utf-8"))
        config["coordinator"].update(endpoint=endpoint, idle_timeout_s=60.0)
        write_toml(folder / "reward-overhead.toml", config)
        sites.append(folder / "reward-overhead.toml")
    return coordinator_path, sites


def local_scorer(site_configs: Sequence[Path]) -> Callable[..., dict[str, list[float]]]:
    """The in-process baseline: each site's reward model loaded here and scored on the same texts as the agents."""
    from client_agent.config import load_client_config
    from mor_secure.data.schema import answer_text, question_text
    from mor_secure.rewards import load_reward_model

    models = {}
    for path in site_configs:
        config = load_client_config(path)
        models[config.site] = load_reward_model(config.train.out)

    def scorer(images: Sequence[Any], prompts: Sequence[Any], completions: Sequence[Any]) -> dict[str, list[float]]:
        questions, answers = [question_text(p) for p in prompts], [answer_text(c) for c in completions]
        return {
            site: [float(s) for s in model.score(list(images), questions, answers, batch_size=32)]
            for site, model in models.items()
        }

    return scorer


class AlternatingReward:
    """The reward of one GRPO run alternating between the modes call by call (one call per step), recording
    each call's mode and seconds: paired steps see the same machine load and the same policy trajectory
    (both modes give identical rewards)."""

    def __init__(self, rewards: dict[str, Any], first: str) -> None:
        self.rewards, self.__name__ = rewards, "mor"
        self.order = [first, *(m for m in rewards if m != first)]
        self.modes: list[str] = []
        self.seconds: list[float] = []
        self.last_call: tuple[list, list, dict] = ([], [], {})

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        mode = self.order[len(self.modes) % len(self.order)]
        start = time.perf_counter()
        rewards = self.rewards[mode](prompts, completions, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        self.modes.append(mode)
        self.last_call = (prompts, completions, kwargs)
        return rewards

    def last_stats(self) -> dict[str, float]:
        """The telemetry of the reward that scored the last batch."""
        return self.rewards[self.modes[-1]].last_stats()


def step_timer() -> Any:
    """A TrainerCallback recording the wall time of every optimizer step (generation, reward, update)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def one_run(cfg: Any, rewards: dict[str, Any], first: str, scratch: Path, steps: int) -> dict[str, Any]:
    """One GRPO run of ``steps`` steps, the reward alternating between ``rewards`` from ``first`` on;
    per step: wall time, reward-call time and mode."""
    from coordinator.policy.grpo import run_grpo

    out = Path(tempfile.mkdtemp(dir=scratch))
    cfg = dataclasses.replace(cfg, out=out, steps=steps, save_steps=10 * steps, logging_steps=steps, report_to="none")
    reward, timer = AlternatingReward(rewards, first), step_timer()
    load = os.getloadavg()[0]
    run_grpo(cfg, reward, cfg.data, callbacks=[timer])
    if len(reward.modes) != len(timer.seconds):
        raise RuntimeError(
            f"{len(reward.modes)} reward calls for {len(timer.seconds)} steps: the pairing of calls "
            "and steps assumes one generation per step (gradient_accumulation_steps = 1)"
        )
    return {
        "step_s": timer.seconds,
        "reward_s": reward.seconds,
        "modes": reward.modes,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "last_call": reward.last_call,
    }


def wire_bytes(config: Any, prompts: list[Any], completions: list[Any], kwargs: dict, sites: int) -> dict[str, int]:
    """Application bytes (msgpack, before TLS framing) of one step's score requests and replies over ``sites``."""
    from coordinator.federation.service import build_requests
    from coordinator.mixture.fusion import images_from  # noqa: PLC2701  (the images the reward callable scores)
    from mor_secure.protocol import ScoreReply, encode

    images = images_from(prompts, kwargs.get("image"), kwargs.get("images"))
    requests = build_requests(images, prompts, completions, config.pool.max_batch)
    sent = sum(len(encode(dataclasses.replace(r, request_id="r" * 32))) for _, r in requests)
    replies = sum(
        len(encode(ScoreReply(request_id="r" * 32, scores=[0.5] * len(r.prompts), model_sha256="sha256:" + "0" * 64)))
        for _, r in requests
    )
    return {"sent_per_site": sent, "received_per_site": replies, "total": sites * (sent + replies)}


def summarise(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Per mode: median step and reward time per run and pooled, reward share; the ratio per run and overall."""

    def timed(run: dict[str, Any], key: str, mode: str) -> list[float]:
        return [v for i, (v, m) in enumerate(zip(run[key], run["modes"])) if i >= warmup and m == mode]

    out: dict[str, Any] = {}
    for mode in MODES:
        steps = [timed(r, "step_s", mode) for r in runs]
        rewards = [timed(r, "reward_s", mode) for r in runs]
        pooled_steps, pooled_rewards = sum(steps, []), sum(rewards, [])
        out[mode] = {
            "run_medians_s": [statistics.median(s) for s in steps],
            "median_step_s": statistics.median(pooled_steps),
            "median_reward_s": statistics.median(pooled_rewards),
            "reward_share": sum(pooled_rewards) / sum(pooled_steps),
            "timed_steps": len(pooled_steps),
        }
    remote, local = out["remote"], out["local"]
    out["ratio_per_run"] = [r / lo for r, lo in zip(remote["run_medians_s"], local["run_medians_s"])]
    out["ratio"] = remote["median_step_s"] / local["median_step_s"]
    out["ratio_of_run_medians"] = statistics.median(out["ratio_per_run"])
    return out


def plot(runs: list[dict[str, Any]], summary: dict[str, Any], warmup: int, path: Path) -> None:
    """Left: every timed step per run and mode; right: median step split into reward call and the rest."""
    with figure(path, cols=2, size=(11, 4.2)) as (_, (left, right)):
        for i, mode in enumerate(MODES):
            for j, run in enumerate(runs):
                x = 3 * j + i
                ys = [v for k, (v, m) in enumerate(zip(run["step_s"], run["modes"])) if k >= warmup and m == mode]
                left.scatter([x] * len(ys), ys, s=9, alpha=0.5, color=f"C{i}", label=LABELS[mode] if j == 0 else None)
                left.hlines(statistics.median(ys), x - 0.35, x + 0.35, color="k")
        left.set_xticks([3 * j + 0.5 for j in range(len(runs))], [f"run {j + 1}" for j in range(len(runs))])
        left.set_ylabel("GRPO step time (s)")
        left.set_title("Step times after warm-up (bar: median)")
        left.legend(fontsize=8)
        names = [LABELS[m] for m in MODES]
        reward = [summary[m]["median_reward_s"] for m in MODES]
        rest = [summary[m]["median_step_s"] - r for m, r in zip(MODES, reward)]
        right.bar(names, reward, color="C3", label="reward call (median)")
        right.bar(names, rest, bottom=reward, color="C7", label="rest of the step (median step - median reward)")
        right.set_ylabel("seconds")
        right.set_title(f"Median step: ratio {summary['ratio']:.2f}x (target <= {TARGET}x)")
        right.legend(fontsize=8)


def report(
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    summary: dict[str, Any],
    wire: dict[str, int],
    cfg: Any,
    machine: list[str],
    command: str,
) -> list[str]:
    """The markdown report."""
    met = summary["ratio"] <= TARGET
    lines = [
        "# Reward overhead: the fused MoR reward over mutual TLS vs in process",
        "",
        f"Target: GRPO step time with the reward from remote agents at most {TARGET}x the same reward "
        f"models in process. **Measured: {summary['ratio']:.2f}x ({'met' if met else 'NOT met'})**; "
        f"median of the per-run ratios {summary['ratio_of_run_medians']:.2f}x "
        f"({', '.join(f'{r:.2f}' for r in summary['ratio_per_run'])}).",
        "",
        "## Setup",
        "",
        f"- Work folder of `mor demo --quick` ({args.workdir}): three sites (dual-encoder, tiny Qwen2-VL, tiny "
        "LLaVA reward models trained with DP), the router's Mixture-of-Rewards bundle and the SFT warm-start "
        "tiny Qwen2-VL policy.",
        f"- GRPO: {args.steps} steps per run, first {args.warmup} skipped as warm-up; batch {cfg.batch_size} "
        f"completions ({cfg.batch_size // cfg.num_generations} prompts x {cfg.num_generations} generations), "
        f"at most {cfg.max_completion_length} new tokens, beta {cfg.beta}, seed {cfg.seed}, quorum {cfg.quorum}; "
        f"{args.repeats} runs. Within a run the reward alternates step by step between the two modes (remote "
        "first in odd runs), so paired steps see the same machine load; both modes give identical rewards, "
        "so the policy follows one trajectory.",
        "- remote: `Federation.scorer`, three `mor client serve` agents (one torch thread each) on this "
        "machine, PNG images and texts over mutual TLS, every scoring session in the ledger.",
        f"- local: the same three models loaded with `load_reward_model` in the training process "
        f"({args.threads} torch thread(s), as the trainer), scored one after the other.",
        "- Step time: wall time between TrainerCallback `on_step_begin` and `on_step_end` (sampling, "
        "reference log-probs, reward, update). Reward: wall time of the reward callable (scoring + fusion).",
        "",
        "## Results",
        "",
        *markdown_table(
            [
                "mode",
                "median step (s)",
                "per-run medians (s)",
                "median reward call (s)",
                "reward share of step time",
                "timed steps",
            ],
            [
                [
                    LABELS[mode],
                    f"{s['median_step_s']:.3f}",
                    ", ".join(f"{m:.3f}" for m in s["run_medians_s"]),
                    f"{s['median_reward_s']:.3f}",
                    f"{100 * s['reward_share']:.0f}%",
                    s["timed_steps"],
                ]
                for mode, s in ((m, summary[m]) for m in MODES)
            ],
        ),
    ]
    extra = summary["remote"]["median_reward_s"] - summary["local"]["median_reward_s"]
    lines += [
        "",
        f"Remote reward call minus local: {1000 * extra:+.0f} ms per step. Bytes on the wire per step "
        f"(msgpack payload before TLS framing, for the last step's batch): {wire['sent_per_site']:,} B sent "
        f"and {wire['received_per_site']:,} B received per site, {wire['total']:,} B in all for "
        f"{wire['sites']} sites.",
        "",
        "Load average (1 min) before/after each run: "
        + "; ".join(f"run {j + 1}: {r['load_before']:.2f}/{r['load_after']:.2f}" for j, r in enumerate(runs))
        + ".",
        "",
        "## Reading",
        "",
    ]
    share = 100 * summary["remote"]["reward_share"]
    lines.append(
        f"{'Met' if met else 'Not met'}: the reward call takes {summary['remote']['median_reward_s']:.3f} s "
        f"remote vs {summary['local']['median_reward_s']:.3f} s in process (median), {share:.0f}% of the "
        "remote step; the rest is sampling, reference log-probs and the policy update, the same in both "
        "modes. Remote, the three agents score in parallel processes, which likely offsets the TLS round trip "
        "and PNG encoding; in process the three models run one after the other. Caveats: the agents "
        "share this machine's cores (on real sites they do not), the link is loopback (a WAN adds its "
        "round-trip time per step, the payload above is small), and the models and batch are tiny."
    )
    lines += [
        "",
        "![reward overhead](reward_overhead.png)",
        "",
        *machine_and_command(machine, command),
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="Folder of the report.")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mor-reward-overhead",
        help="A `mor demo --quick` work folder to reuse (built there first if absent).",
    )
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps per run (half of them per mode).")
    parser.add_argument("--warmup", type=int, default=4, help="First steps of each run left out of the timings.")
    parser.add_argument("--repeats", type=int, default=3, help="GRPO runs (the mode of the first step alternates).")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of the trainer (1 is stable on a shared 2-core machine).",
    )
    args = parser.parse_args()
    if args.warmup >= args.steps:
        parser.error(f"--warmup {args.warmup} leaves no timed step of --steps {args.steps}; lower --warmup")
    command = " ".join(["python", *sys.argv])
    for name, value in {
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(name, value)
    import torch

    from coordinator.config import load_coordinator_config
    from coordinator.federation.service import Federation
    from coordinator.mixture.fusion import MixtureOfRewards
    from coordinator.policy.rewards import FederatedReward
    from mor_secure.demo.pipeline import free_port
    from mor_secure.demo.stages import child_env, mor_command, stop_group

    torch.set_num_threads(args.threads)
    machine = machine_lines(["torch", "transformers", "trl", "pyzmq", "cryptography"])
    workdir = args.workdir.resolve()
    args.workdir = workdir
    ensure_workdir(workdir)
    coordinator_path, site_paths = bench_configs(workdir, free_port())
    config = load_coordinator_config(coordinator_path)
    cfg = config.grpo
    mixture = cfg.mixture or config.router.out / "mixture"
    scratch = Path(tempfile.mkdtemp(prefix="reward-overhead-"))
    (workdir / "logs").mkdir(exist_ok=True)
    agents = []
    runs: list[dict[str, Any]] = []
    try:
        for path in site_paths:
            with open(workdir / "logs" / f"reward-overhead-{path.parent.name}.log", "a", encoding="utf-8") as log:
                agents.append(
                    subprocess.Popen(
                        mor_command("client", "serve", "--config", path),
                        stdout=log,
                        stderr=log,
                        stdin=subprocess.DEVNULL,
                        env=child_env(),
                        start_new_session=True,
                    )
                )
        with Federation(config) as federation:
            allowed = sorted(config.clients.allow)
            if not federation.wait_for(sites=allowed, timeout=120):
                raise SystemExit(
                    f"only {federation.live_sites()} of {allowed} agents joined within 120 s; see "
                    f"{workdir / 'logs'}/reward-overhead-*.log"
                )
            rewards = {
                "remote": FederatedReward(
                    MixtureOfRewards.load(mixture),
                    federation.scorer,
                    quorum=cfg.quorum,
                    live_sites=federation.live_sites,
                    name="mor",
                ),
                "local": FederatedReward(
                    MixtureOfRewards.load(mixture), local_scorer(site_paths), quorum=cfg.quorum, name="mor"
                ),
            }
            for repeat in range(args.repeats):
                print(f"run {repeat + 1}/{args.repeats}", file=sys.stderr)
                runs.append(one_run(cfg, rewards, MODES[repeat % 2], scratch, args.steps))
    finally:
        for proc in agents:
            stop_group(proc)
    wire = {**wire_bytes(config, *runs[-1]["last_call"], len(site_paths)), "sites": len(site_paths)}
    summary = summarise(runs, args.warmup)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, summary, args.warmup, args.out / "reward_overhead.png")
    raw = [{k: v for k, v in r.items() if k != "last_call"} for r in runs]
    (args.out / "reward_overhead.json").write_text(
        json.dumps({"summary": summary, "wire_bytes": wire, "runs": raw, "command": command}, indent=1),
        encoding="utf-8",
    )
    write_markdown(args.out / "reward_overhead.md", report(args, runs, summary, wire, cfg, machine, command))
    print(f"ratio {summary['ratio']:.3f}x (target <= {TARGET}x); report: {args.out / 'reward_overhead.md'}")


if __name__ == "__main__":
    main()

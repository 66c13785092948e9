"""`mor coordinator public-data | sft | public-reward | eval | grpo`: public pretraining (the policy's warm
start, a reward model's public head start), GRPO and evaluation.

torch, transformers and TRL are imported inside the commands so `mor --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from coordinator.commands.options import config_option
from coordinator.policy.public_reward import DUAL_ENCODER, VLM

EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@click.command(name="public-data")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write the data set into (must not exist yet).",
)
@click.option("--n", "n", default=2000, show_default=True, type=click.IntRange(min=1), help="Rows to write.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the public generator.")
@click.option(
    "--verbose-share",
    default=0.7,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of answers in the verbose style (the warm start's deliberate flaw).",
)
@click.option(
    "--flaw",
    "flaw",
    multiple=True,
    metavar="TYPE:TRUE=WRONG",
    help="Label answer TRUE of question type TYPE as WRONG (e.g. side:left=right); repeatable. "
    "Replaces the default flaws (colour pairs, left/right, yes/no swapped).",
)
@click.option(
    "--flaw-style",
    default="verbose",
    show_default=True,
    type=click.Choice(["verbose", "concise", "any"]),
    help="Answer style whose rows carry the swapped labels. 'verbose' (the warm start's habit): the "
    "concise rows still name each feature right, so the warm start learns to see it, answers "
    "it wrong, and samples the true concise answer for GRPO to reinforce.",
)
@click.option(
    "--flaw-share",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of the flawed types' rows in --flaw-style that carry the swapped label.",
)
@click.option("--no-flaws", is_flag=True, help="Write correct labels only (no deliberate flaw).")
@click.option(
    "--exclude-world",
    type=EXISTING_DIR,
    default=None,
    help="A benchmark world folder: drop every image+question it holds, so the public data "
    "is disjoint from the clients' and the evaluation data.",
)
def public_data(
    out_dir: Path,
    n: int,
    seed: int,
    verbose_share: float,
    flaw: tuple[str, ...],
    flaw_style: str,
    flaw_share: float,
    no_flaws: bool,
    exclude_world: Path | None,
) -> None:
    """Write public warm-start VQA (image, prompt, completion, domain, answer) for `mor coordinator sft`.

    The rows come from the world's domain generators in a separate seed space, carry no client
    style, answer --verbose-share of the questions verbosely ("It is red.") and swap the labels
    of easy features in their --flaw-style rows: flaws the federation's rewards can correct with GRPO.
    """
    from mor_secure.data.public import DEFAULT_FLAWS, generate_public_sft

    if out_dir.exists():
        raise click.ClickException(f"{out_dir} already exists; choose a new --out folder or remove it")
    if no_flaws and flaw:
        raise click.ClickException("--no-flaws and --flaw contradict each other; pass one of them")
    flaws: dict[str, dict[str, str]] = {} if no_flaws or flaw else DEFAULT_FLAWS
    for item in flaw:
        kind, _, swap = item.partition(":")
        true, _, wrong = swap.partition("=")
        if not (kind and true and wrong):
            raise click.ClickException(f"--flaw {item!r}: use TYPE:TRUE=WRONG, e.g. --flaw side:left=right")
        flaws.setdefault(kind, {})[true] = wrong
    path = generate_public_sft(
        out_dir,
        seed=seed,
        n=n,
        verbose_share=verbose_share,
        flaws=flaws,
        flaw_share=flaw_share,
        flaw_style=None if flaw_style == "any" else flaw_style,
        exclude_world=exclude_world,
    )
    click.echo(f"wrote {n} public rows to {path}")


@click.command()
@click.option("--base", required=True, help="Base VLM: a local model folder or a hub id in the local cache.")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=EXISTING_DIR,
    help="Public warm-start data (`mor coordinator public-data` output).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to save the warm-started policy (model + processor) into.",
)
@click.option("--steps", default=1500, show_default=True, type=click.IntRange(min=1), help="Optimizer steps.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Rows per step.")
@click.option(
    "--lr",
    default=1e-3,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Peak AdamW learning rate (warm-up, then linear decay).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of shuffling and initialisation.")
def sft(base: str, data_dir: Path, out_dir: Path, steps: int, batch_size: int, lr: float, seed: int) -> None:
    """Supervised warm start: fine-tune --base on public data (loss on the answers only), save to --out.

    The saved folder is the policy GRPO starts from and its frozen KL reference.
    """
    from coordinator.policy.sft import run_sft

    _quiet_transformers()
    path = run_sft(base, data_dir, out_dir, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    summary = json.loads((path / "sft.json").read_text(encoding="utf-8"))
    click.echo(f"saved policy to {path} (loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f})")


@click.command(name="public-reward")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=EXISTING_DIR,
    help="Public rows with their true answers (`mor coordinator public-data` output).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to save the reward model into; sites point [model] base at it.",
)
@click.option(
    "--family",
    default="dual-encoder",
    show_default=True,
    help="Reward-model family to pretrain: 'dual-encoder' from scratch, or a VLM family ('qwen2-vl', "
    "'llava') on the public VLM given by --base.",
)
@click.option(
    "--base",
    default="",
    help="VLM families: the public pretrained VLM to start from (a local folder, e.g. `mor coordinator sft` "
    "output, or a cached hub id); the sites need the same one.",
)
@click.option(
    "--width",
    default=128,
    show_default=True,
    type=click.IntRange(min=1),
    help="dual-encoder: encoder width (sites inherit it).",
)
@click.option(
    "--epochs",
    default=None,
    type=click.IntRange(min=1),
    help=f"Passes over the pairs [default: {DUAL_ENCODER.epochs} for the dual-encoder, which starts from "
    f"scratch; {VLM.epochs} for a VLM].",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Pairs per step.")
@click.option(
    "--lr",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help=f"AdamW learning rate [default: {DUAL_ENCODER.lr:g} for the dual-encoder (3e-3 stalled on chart pairs "
    f"in one public seed of three); {VLM.lr:g} for a VLM].",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of pairs, shuffling and initialisation.")
def public_reward(
    data_dir: Path,
    out_dir: Path,
    family: str,
    base: str,
    width: int,
    epochs: int | None,
    batch_size: int,
    lr: float | None,
    seed: int,
) -> None:
    """Pretrain a reward model on public pairs without DP: a site's head start before its private pairs.

    Each public row gives two pairs, the true answer over a wrong one in the same style (correctness,
    no style) or over malformed output. Public data costs no privacy; under DP from scratch a small
    model learns little from a few thousand private pairs, and a public VLM has never ranked answers.
    """
    from coordinator.policy.public_reward import save_public_reward

    if out_dir.exists():
        raise click.ClickException(f"{out_dir} already exists; choose a new --out folder or remove it")
    if family != "dual-encoder" and not base:
        raise click.UsageError(f"--family {family} needs --base: the public pretrained VLM to start from")
    result = save_public_reward(
        data_dir,
        out_dir,
        family=family,
        base=base,
        width=width,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    losses = result["losses"]
    click.echo(
        f"saved {family} reward model to {out_dir} ({result['pairs']} public pairs, loss {losses[0]:.3f} -> "
        f'{losses[-1]:.3f}); set [model] base = "{out_dir}" (family = "{family}") at the sites'
    )


@click.command(name="eval")
@click.option("--policy", required=True, help="Policy to evaluate: a model folder or a cached hub id.")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=EXISTING_DIR,
    help="Held-out questions with ground truth (the world's server/eval).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N questions.")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the result as JSON.")
def eval_(policy: str, data_dir: Path, limit: int | None, as_json: bool) -> None:
    """Greedy answers to held-out questions: exact-match accuracy per domain and overall, concise share."""
    from rich.console import Console
    from rich.table import Table

    from coordinator.policy.evaluation import evaluate_policy

    _quiet_transformers()
    result = evaluate_policy(policy, data_dir, limit=limit)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"Policy {policy}")
    for column in ("domain", "n", "accuracy", "concise", "answered"):
        table.add_column(column)
    for domain, r in [*result["per_domain"].items(), ("all", result)]:
        table.add_row(
            domain, str(r["n"]), f"{r['accuracy']:.1%}", f"{r['concise_share']:.1%}", f"{r['answered_share']:.1%}"
        )
    Console().print(table)


@click.command()
@config_option("coordinator.toml; its [grpo] section sets the run ([tls], [clients] for federated rewards).")
@click.option(
    "--resume",
    is_flag=True,
    default=False,
    help="Continue from the last checkpoint in [grpo] out (same global step, optimizer, schedule).",
)
def grpo(config_path: Path, resume: bool) -> None:
    """GRPO of the policy with a KL penalty to its warm start, with the [grpo] reward.

    Rewards: 'oracle' (ground truth), 'mor' (the router's Mixture-of-Rewards over the live agents),
    'uniform', 'single:<site>', or a registered in-process baseline ('fedavg', 'centralised').
    A client-score reward binds, waits for the allowed agents (at least [grpo] quorum) and scores
    every batch over mutual TLS; completions fewer than quorum agents scored get no reward (the
    run goes on; the count is logged). Writes checkpoints every save_steps, TensorBoard logs
    (reward, KL, routing weights, agents live) under OUT/runs, and the final policy under OUT/policy.
    """
    from contextlib import ExitStack

    from coordinator.config import load_coordinator_config
    from coordinator.federation.service import Federation
    from coordinator.mixture.fusion import RewardFusion
    from coordinator.policy.grpo import run_grpo
    from coordinator.policy.rewards import FederatedReward, RewardContext, build_reward, needs_federation
    from mor_secure.errors import MorError

    _quiet_transformers()
    config = load_coordinator_config(config_path)
    cfg = config.grpo
    if cfg.data is None:
        raise click.ClickException(
            f"{config_path}: [grpo] data is not set; point it at the prompts (`mor coordinator public-data` output)"
        )
    strategy = build_reward(cfg.reward, RewardContext(cfg.mixture or config.router.out / "mixture", config))
    name = cfg.reward.replace(":", "_")
    with ExitStack() as stack:
        if needs_federation(strategy):
            try:
                federation = stack.enter_context(Federation(config))
            except MorError:  # PKI, ledger: they name their own cause
                raise
            except OSError as exc:
                raise click.ClickException(f"cannot start the federation on {config.bind}: {exc}") from None
            allowed = sorted(config.clients.allow)
            federation.wait_for(sites=allowed, timeout=cfg.wait_s)
            live = federation.live_sites()
            if len(live) < cfg.quorum:
                raise click.ClickException(
                    f"only {len(live)} of the quorum {cfg.quorum} agents joined within "
                    f"{cfg.wait_s:g}s ({', '.join(live) or 'none'}): start the agents "
                    "(`mor client serve`), check `mor coordinator probe`, or lower "
                    "[grpo] quorum"
                )
            click.echo(f"federation: {len(live)} of {len(allowed)} agents live ({', '.join(live)})", err=True)
            reward = FederatedReward(
                strategy,
                federation.scorer,
                quorum=cfg.quorum,
                spread_penalty=cfg.spread_penalty,
                image_contrast=cfg.image_contrast,
                live_sites=federation.live_sites,
                name=name,
            )
        elif isinstance(strategy, RewardFusion):
            reward = FederatedReward(strategy, name=name)
        else:
            reward = strategy
        path = run_grpo(cfg, reward, cfg.data, resume=resume)
    click.echo(f"saved policy to {path}; TensorBoard logs: tensorboard --logdir {cfg.out / 'runs'}")

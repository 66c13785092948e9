"""`mor data`: generate the multi-domain benchmark world and check preference data sets.

datasets and PIL are imported inside the commands, so `mor data --help` stays fast.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import click


@click.group(name="data")
def group() -> None:
    """Generate the benchmark world and check preference data sets.

    The world is seeded multi-domain visual question answering with ground truth: one folder of
    preference pairs per client (mostly its own domain, in its own answer style), a router set
    and held-out eval questions for the coordinator. Data sets use TRL's conversational
    preference schema (image, prompt, chosen, rejected) plus domain, question_type and answer.
    """


def _table(manifest: dict) -> list[str]:
    """Rows of counts per part, split and domain from a world manifest."""
    domains = manifest["domains"]
    lines = [f"{'part':<14} {'split':<6} {'style':<9} {'total':>6} " + " ".join(f"{d:>8}" for d in domains)]

    def row(part: str, split: str, style: str, counts: dict) -> None:
        per = counts["per_domain"]
        lines.append(f"{part:<14} {split:<6} {style:<9} {counts['total']:>6} "
                     + " ".join(f"{per.get(d, 0):>8}" for d in domains))

    for name, client in manifest["clients"].items():
        for split, counts in client["splits"].items():
            row(name, split, client["style"], counts)
    for split, counts in manifest["router"]["splits"].items():
        row("server/router", split, "owners", counts)
    row("server/eval", "-", "-", manifest["eval"]["counts"])
    return lines


@group.command()
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder to write the world into; it must be empty or absent (see --force).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed; the same seed writes byte-identical files.")
@click.option("--clients", default=3, show_default=True, type=click.IntRange(1, 64),
              help="Number of client folders; client k owns domain k mod the number of domains.")
@click.option("--pairs", default=400, show_default=True, type=click.IntRange(6),
              help="Preference pairs per client (train and test together).")
@click.option("--router-pairs", default=300, show_default=True, type=click.IntRange(6),
              help="Labelled pairs across all domains for training the coordinator's router.")
@click.option("--eval", "eval_questions", default=300, show_default=True, type=click.IntRange(6),
              help="Held-out questions with ground truth for measuring the policy.")
@click.option("--own-domain-share", default=0.8, show_default=True, type=click.FloatRange(0, 1),
              help="Share of each client's pairs drawn from its own domain (the rest: the others).")
@click.option("--force", is_flag=True, default=False,
              help="Replace an existing world at --out (only a folder holding a manifest.json).")
def synth(out_dir: Path, seed: int, clients: int, pairs: int, router_pairs: int,
          eval_questions: int, own_domain_share: float, force: bool) -> None:
    """Generate the benchmark world under --out and print its counts per client and domain.

    Layout: client-<k>/ (train/test pairs), server/router/ (pairs over all domains),
    server/eval/ (questions with answers), manifest.json (seed, styles, counts).
    """
    from mor_secure.data.world import generate_world

    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise click.ClickException(f"{out_dir} is not empty; pass --force to replace the world "
                                       "there, or choose another --out")
        if not (out_dir / "manifest.json").is_file():
            raise click.ClickException(f"{out_dir} is not empty and holds no benchmark world "
                                       "(no manifest.json); refusing to delete it even with --force: "
                                       "choose an empty or new --out")
        shutil.rmtree(out_dir)
    try:
        manifest = generate_world(out_dir, seed=seed, clients=clients, pairs=pairs,
                                  router_pairs=router_pairs, eval_questions=eval_questions,
                                  own_domain_share=own_domain_share)
    except ValueError as exc:
        raise click.ClickException(f"{exc}; adjust the option") from None
    click.echo(f"benchmark world written to {out_dir} (seed {seed})")
    for line in _table(manifest):
        click.echo(line)
    click.echo(f"check a part:  mor data check {out_dir / 'client-0'}")


@group.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--kind", default="pairs", show_default=True, type=click.Choice(["pairs", "eval"]),
              help="Schema to check against: preference pairs, or eval questions (no chosen/rejected).")
@click.option("--split", default=None,
              help="Check only this split of a DatasetDict folder (default: every split).")
def check(path: Path, kind: str, split: str | None) -> None:
    """Validate the data set at PATH and print its rows per domain.

    PATH is a local save_to_disk folder (Dataset or DatasetDict), a .parquet file or a .jsonl
    file (images as paths relative to it). Exits 1 naming every missing or mistyped column.
    """
    from mor_secure.data.loader import available_splits, load_preferences, verify_images
    from mor_secure.data.schema import DataError

    splits = [split] if split else (available_splits(path) or [None])
    try:
        for name in splits:
            ds = load_preferences(path, split=name, kind=kind)
            verify_images(ds)
            counts = Counter(ds["domain"])
            per_domain = ", ".join(f"{d} {n}" for d, n in sorted(counts.items()))
            click.echo(f"{name or 'all'}: {len(ds)} valid {kind} rows ({per_domain})")
    except DataError as exc:
        hint = ""
        if kind == "pairs" and "missing column 'chosen'" in str(exc):
            hint = " (an eval set? pass --kind eval)"
        raise click.ClickException(f"{exc}{hint}") from None
    click.echo(f"ok: {path} follows the {kind} schema")

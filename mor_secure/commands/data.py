"""`mor data`: generate the multi-domain benchmark world and check preference data sets.

datasets and PIL are imported inside the commands, so `mor data --help` stays fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import click

from mor_secure.cli import MorGroup
from mor_secure.data.schema import KINDS, Kind


@click.group(name="data", cls=MorGroup)
def group() -> None:
    """Generate the benchmark world and check preference data sets.

    The world is seeded multi-domain visual question answering with ground truth: one folder of
    preference pairs per client (mostly its own domain, in its own answer style), a router set
    and held-out eval questions for the coordinator. Data sets use TRL's vision preference layouts
    (image or images, prompt, chosen, rejected); domain, question_type and answer are optional
    metadata that only the benchmark world has.
    """


def _table(manifest: dict) -> list[str]:
    """Rows of counts per part, split and domain from a world manifest."""
    domains = manifest["domains"]
    lines = [f"{'part':<14} {'split':<6} {'style':<9} {'total':>6} " + " ".join(f"{d:>8}" for d in domains)]

    def row(part: str, split: str, style: str, counts: dict) -> None:
        per = counts["per_domain"]
        lines.append(
            f"{part:<14} {split:<6} {style:<9} {counts['total']:>6} " + " ".join(f"{per.get(d, 0):>8}" for d in domains)
        )

    for name, client in manifest["clients"].items():
        for split, counts in client["splits"].items():
            row(name, split, client["style"], counts)
    for split, counts in manifest["router"]["splits"].items():
        row("server/router", split, "owners", counts)
    row("server/eval", "-", "-", manifest["eval"]["counts"])
    return lines


@group.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to write the world into; it must be empty or absent (see --force).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed; the same seed writes byte-identical files.")
@click.option(
    "--clients",
    default=3,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Number of client folders; client k owns domain k mod the number of domains.",
)
@click.option(
    "--pairs",
    default=400,
    show_default=True,
    type=click.IntRange(6),
    help="Preference pairs per client (train and test together).",
)
@click.option(
    "--router-pairs",
    default=300,
    show_default=True,
    type=click.IntRange(6),
    help="Labelled pairs across all domains for training the coordinator's router.",
)
@click.option(
    "--eval",
    "eval_questions",
    default=300,
    show_default=True,
    type=click.IntRange(6),
    help="Held-out questions with ground truth for measuring the policy.",
)
@click.option(
    "--own-domain-share",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of each client's pairs drawn from its own domain (the rest: the others).",
)
@click.option(
    "--force",
    is_flag=True,
    default=False,
    help="Replace an existing world at --out (only a folder holding a manifest.json).",
)
def synth(
    out_dir: Path,
    seed: int,
    clients: int,
    pairs: int,
    router_pairs: int,
    eval_questions: int,
    own_domain_share: float,
    force: bool,
) -> None:
    """Generate the benchmark world under --out and print its counts per client and domain.

    Layout: client-<k>/ (train/test pairs), server/router/ (pairs over all domains),
    server/eval/ (questions with answers), manifest.json (seed, styles, counts).
    """
    from mor_secure.data.world import generate_world

    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise click.ClickException(
                f"{out_dir} is not empty; pass --force to replace the world there, or choose another --out"
            )
        if not (out_dir / "manifest.json").is_file():
            raise click.ClickException(
                f"{out_dir} is not empty and holds no benchmark world "
                "(no manifest.json); refusing to delete it even with --force: "
                "choose an empty or new --out"
            )
        shutil.rmtree(out_dir)
    manifest = generate_world(
        out_dir,
        seed=seed,
        clients=clients,
        pairs=pairs,
        router_pairs=router_pairs,
        eval_questions=eval_questions,
        own_domain_share=own_domain_share,
    )
    click.echo(f"benchmark world written to {out_dir} (seed {seed})")
    for line in _table(manifest):
        click.echo(line)
    click.echo(f"check a part:  mor data check {out_dir / 'client-0'}")


def _families(config: Any, max_length: int | None, bases: tuple[str, ...]) -> tuple[int, dict[str, Any]]:
    """(max_length, {family: tokenizer or None}) to count truncation for: the dual-encoder always
    (characters), each --base and the VLM of --config's [model] with its tokenizer (tokens)."""
    from mor_secure.models.loading import ModelNotFoundError, family_of, load_processor, resolve_model

    families: dict[str, Any] = {"dual-encoder": None}
    if config is not None and config.model.family != "dual-encoder" and config.model.base:
        bases = (config.model.base, *bases)
    for base in dict.fromkeys(bases):
        try:
            from transformers import AutoConfig

            family = family_of(AutoConfig.from_pretrained(resolve_model(base), local_files_only=True))
            families[f"{family} ({base})"] = load_processor(base).tokenizer
        except (ModelNotFoundError, OSError, ValueError) as exc:
            raise click.ClickException(f"cannot load the tokenizer of {base!r}: {exc}") from None
    return max_length or (config.model.max_length if config is not None else 256), families


@group.command()
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option(
    "--kind",
    default="pairs",
    show_default=True,
    type=click.Choice(KINDS),
    help="Schema to check against: preference pairs, eval questions (image, prompt, answer) or "
    "GRPO prompts (image, prompt; no answers).",
)
@click.option(
    "--split", default=None, help="Report only this split (default: every split; all are read, as training does)."
)
@click.option(
    "--columns",
    "columns",
    multiple=True,
    metavar="NAME=COLUMN",
    help="Your data set's column for one of the product's (image, prompt, chosen, rejected, domain, "
    "question_type, answer), e.g. --columns prompt=question; repeat or comma-separate. "
    "Overrides [data] columns of --config.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A site's client.toml: its [data] (path, columns, splits, test_fraction, max_image_pixels) "
    "and [model] (family, base, max_length) are used.",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Held-out share when the data set has one split (default [data] test_fraction or 0.1).",
)
@click.option(
    "--max-length",
    type=click.IntRange(1),
    default=None,
    help="Truncation length to report against (default [model] max_length or 256).",
)
@click.option(
    "--base",
    "bases",
    multiple=True,
    metavar="MODEL",
    help="Also count truncation in the tokens of this VLM (a local folder or cached hub id); repeat "
    "for several families. The dual-encoder is always counted (characters).",
)
def check(
    path: Path | None,
    kind: str,
    split: str | None,
    columns: tuple[str, ...],
    config_path: Path | None,
    test_fraction: float | None,
    max_length: int | None,
    bases: tuple[str, ...],
) -> None:
    """Tell what training would read from PATH and refuse: one line per fact, then every problem.

    PATH is a local save_to_disk folder (Dataset or DatasetDict), a .parquet file or a .jsonl file
    (images as paths relative to it), in TRL's vision preference layout: `images` (a list of one)
    or `image`, and `prompt`, `chosen`, `rejected` as message lists or plain strings. Reports rows
    per split, how each column was mapped, image sizes, text lengths, rows each family would
    truncate, questions in both train and test, and the content fingerprint. Exits 1 naming every
    problem (each refused row with its reason); never a traceback for a corrupt file.
    """
    from mor_secure.data.check import check_site_data
    from mor_secure.data.loader import MAX_IMAGE_PIXELS, parse_columns
    from mor_secure.data.site import open_site_data

    config = None
    if config_path is not None:
        from client_agent.config import load_client_config

        config = load_client_config(config_path)
    data = config.data if config is not None else None
    path = path or (data.path if data is not None else None)
    if path is None:
        raise click.ClickException("no data set: pass PATH, or --config with [data] path set")
    mapping = parse_columns(columns) if columns else (dict(data.columns) if data is not None else {})
    site = open_site_data(
        path,
        kind=cast(Kind, kind),  # click.Choice has checked it
        strict=False,
        columns=mapping,
        train_split=data.train_split if data else "train",
        test_split=data.test_split if data else "test",
        test_fraction=test_fraction if test_fraction is not None else (data.test_fraction if data else 0.1),
        max_pixels=data.max_image_pixels if data else MAX_IMAGE_PIXELS,
    )
    if split is not None:
        site.rows(split)
    length, families = _families(config, max_length, bases)
    result = check_site_data(site, max_length=length, families=families, only_split=split)
    click.echo(f"data set   {path}")
    for line in result.lines:
        click.echo(line)
    if result.problems:
        for problem in result.problems:
            click.echo(f"  refused: {problem}")
        hint = (
            " (an eval set? pass --kind eval)"
            if kind == "pairs" and any("missing column 'chosen'" in p for p in result.problems)
            else ""
        )
        raise click.ClickException(
            f"{len(result.problems)} problem(s) in {path}{hint}: fix each row above (or "
            "the column mapping), then check again; training refuses this data set"
        )
    click.echo(f"ok: {path} follows the {kind} schema")

"""`mor models`: build tiny offline vision-language models, list the families, check a model loads.

torch and transformers are imported inside the commands, so `mor models --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from mor_secure.cli import MorGroup


def _quiet_transformers() -> None:
    """Hide transformers' progress bars (weights loading, shard writing) from command output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@click.group(name="models", cls=MorGroup)
def group() -> None:
    """Build tiny offline vision-language models for tests and the demo, and check models load.

    Every command that takes a model takes a local folder or a hub id already in the local
    Hugging Face cache; nothing is ever downloaded.
    """


@group.command()
@click.option("--family", required=True, help="Model family to build; `mor models families` lists them.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write the model and its processor into (created if missing).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seed of the random weights; the same seed gives identical weights.",
)
@click.option("--force", is_flag=True, default=False, help="Replace a model folder that already exists at --out.")
def tiny(family: str, out_dir: Path, seed: int, force: bool) -> None:
    """Build a tiny random VLM (about 0.2M parameters, 64 px images) and save it to --out.

    The folder loads like a hub checkpoint, with `load_vlm(DIR)` or `mor models check DIR`.
    """
    from mor_secure.errors import MorError
    from mor_secure.models import build_tiny_vlm, count_parameters, load_vlm

    _quiet_transformers()
    try:
        build_tiny_vlm(family, out_dir, seed=seed, overwrite=force)
    except MorError:  # a folder it must not replace: shown by the group
        raise
    except OSError as exc:
        raise click.ClickException(
            f"cannot write the model to {out_dir}: {exc.strerror or exc}; choose a folder you can write to"
        ) from None
    model, _ = load_vlm(out_dir)
    click.echo(f"built {family} (seed {seed}, {count_parameters(model):,} parameters) in {out_dir}")
    click.echo(f"check it:  mor models check {out_dir}")
    click.echo(f"load it:   mor_secure.models.load_vlm({str(out_dir)!r})")


@group.command()
def families() -> None:
    """List the model families `mor models tiny` can build."""
    from mor_secure.models import FAMILIES

    for name, builder in FAMILIES.items():
        click.echo(f"{name:10s} {(builder.__doc__ or '').strip().splitlines()[0]}")


@group.command()
@click.argument("name_or_path")
@click.option(
    "--max-new-tokens",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Tokens to generate for the test prompt.",
)
def check(name_or_path: str, max_new_tokens: int) -> None:
    """Load NAME_OR_PATH (a local folder or a cached hub id) and generate for a blank image.

    Prints the family, the parameter count and the generated text: a quick proof that the model,
    its processor and its chat template work together offline.
    """
    import torch
    from PIL import Image

    from mor_secure.models import count_parameters, family_of, load_vlm, vlm_inputs

    _quiet_transformers()
    try:
        model, processor = load_vlm(name_or_path)
    except (ValueError, OSError, ImportError) as exc:
        raise click.ClickException(f"cannot load {name_or_path}: {exc}") from None
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    inputs = vlm_inputs(processor, [Image.new("RGB", (64, 64), "white")], [prompt]).to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)  # type: ignore[operator]
    new = out[0, inputs["input_ids"].shape[1] :]
    text = processor.decode(new, skip_special_tokens=True)
    click.echo(f"family:     {family_of(model)}")
    click.echo(f"parameters: {count_parameters(model):,}")
    click.echo(f"generated:  {len(new)} tokens: {text!r}")

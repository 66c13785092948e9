"""`mor client`: the commands of this side."""

import click


@click.group(name="client")
def group() -> None:
    """client commands (being built)."""

"""`mor coordinator`: the commands of this side."""

import click


@click.group(name="coordinator")
def group() -> None:
    """coordinator commands (being built)."""

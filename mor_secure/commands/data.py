"""`mor data`: see the group's help."""

import click


@click.group(name="data")
def group() -> None:
    """data commands (being built)."""

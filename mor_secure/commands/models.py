"""`mor models`: see the group's help."""

import click


@click.group(name="models")
def group() -> None:
    """models commands (being built)."""

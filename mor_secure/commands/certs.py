"""`mor certs`: see the group's help."""

import click


@click.group(name="certs")
def group() -> None:
    """certs commands (being built)."""

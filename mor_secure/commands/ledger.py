"""`mor ledger`: see the group's help."""

import click


@click.group(name="ledger")
def group() -> None:
    """ledger commands (being built)."""

"""The option every coordinator command shares: ``--config``, with a help text that says what it reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def config_option(help: str) -> Callable[[Any], Any]:
    """``--config PATH`` (required) into ``config_path``; ``help`` names the sections the command reads."""
    return click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help=help)

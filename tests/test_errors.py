"""One root for user-facing errors: the `mor` groups show a MorError as cause and fix; a bug keeps its traceback."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from mor_secure.cli import MorGroup, root
from mor_secure.errors import MorError


def _group(exc: Exception) -> click.Group:
    @click.group(cls=MorGroup)
    def group() -> None:
        """A group with one failing command."""

    @group.command()
    def fail() -> None:
        raise exc

    return group


def test_a_mor_error_is_shown_with_its_fix_and_no_traceback() -> None:
    result = CliRunner().invoke(_group(MorError("the ledger is gone", fix="restore it from backup")), ["fail"])
    assert result.exit_code == 1
    assert "Error: the ledger is gone\nfix: restore it from backup" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, MorError)


def test_a_fix_already_in_the_message_is_not_repeated() -> None:
    error = MorError("config missing; run `mor client init`", fix="run `mor client init`")
    assert error.user_message() == "config missing; run `mor client init`"


def test_any_other_exception_is_a_bug_and_keeps_its_traceback() -> None:
    result = CliRunner().invoke(_group(ValueError("index out of range in a helper")), ["fail"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)  # propagated: click's runner holds the traceback
    assert "Error:" not in result.output


@pytest.mark.parametrize(
    "args, says",
    [
        (["client", "train", "--config", "nowhere.toml"], "config file not found"),
        (["ledger", "show", "--json", __file__], "ledger"),
        (["certs", "list", "--ca-dir", "OUT"], "this CA folder is incomplete"),
    ],
)
def test_user_errors_from_the_real_commands_reach_the_one_handler(tmp_path, args: list[str], says: str) -> None:
    args = [str(tmp_path / "w") if a == "OUT" else a for a in args]
    result = CliRunner().invoke(root, args)
    assert result.exit_code == 1, result.output
    assert says in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, MorError)  # handled, not propagated

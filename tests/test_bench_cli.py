"""`mor bench`: the listing, help, pass-through to the scripts and the error outside a source checkout."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

import mor_secure
from mor_secure.cli import root
from mor_secure.commands.bench import BENCHMARKS

CHECKOUT = Path(__file__).resolve().parent.parent


def test_list_names_every_benchmark_and_its_script():
    result = CliRunner().invoke(root, ["bench", "list"])
    assert result.exit_code == 0, result.output
    for name, module in BENCHMARKS.items():
        assert name in result.output and f"benchmarks.{module}" in result.output
    assert {"transport", "dp-overhead", "mia"} <= set(BENCHMARKS)
    assert "Membership-inference audit" in result.output  # the script's docstring, read without running it


def test_help_of_group_and_commands():
    result = CliRunner().invoke(root, ["bench", "--help"])
    assert result.exit_code == 0 and "--script-help" in result.output
    for name in ("list", *BENCHMARKS):
        assert name in result.output
        sub = CliRunner().invoke(root, ["bench", name, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output, sub.output


def test_script_help_and_pass_through_reach_the_script(capfd):
    result = CliRunner().invoke(root, ["bench", "mia", "--script-help"])
    assert result.exit_code == 0
    assert "--quick" in capfd.readouterr().out  # argparse of benchmarks.mia_audit answered
    result = CliRunner().invoke(root, ["bench", "mia", "--no-such-option"])
    assert result.exit_code == 1
    assert "benchmark mia failed (exit status 2)" in result.output
    assert "--no-such-option" in capfd.readouterr().err  # passed through, refused by the script itself


def test_outside_a_checkout_says_run_from_a_clone(monkeypatch, tmp_path):
    monkeypatch.setattr(mor_secure, "__file__", str(tmp_path / "site-packages" / "mor_secure" / "__init__.py"))
    for args in (["bench", "list"], ["bench", "mia", "--quick"]):
        result = CliRunner().invoke(root, args)
        assert result.exit_code == 1
        assert "run from a clone" in result.output and "Traceback" not in result.output

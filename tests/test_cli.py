"""The `mor` root finds every installed command group and each one explains itself."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from mor_secure.cli import GROUP_SUMMARIES, _registered, root


def test_root_help_lists_groups_with_summaries():
    result = CliRunner().invoke(root, ["--help"])
    assert result.exit_code == 0
    for name in _registered():
        assert name in result.output
        assert GROUP_SUMMARIES[name] in " ".join(result.output.split())


@pytest.mark.parametrize("name", sorted(_registered()))
def test_every_group_help_works(name):
    result = CliRunner().invoke(root, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_unknown_group_is_an_error():
    result = CliRunner().invoke(root, ["nope"])
    assert result.exit_code != 0 and "No such command" in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys; from mor_secure.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'mor --help imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)

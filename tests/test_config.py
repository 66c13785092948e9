"""The typed TOML loader names the file, key and fix for every kind of bad config."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from mor_secure.config import ConfigError, Section, describe, field, load_config


@dataclass
class Inner:
    cert: Path = field(help="certificate file", path=True)
    port: int = field(5555, help="port")


@dataclass
class Outer:
    site: str = field(help="site name")
    tls: Inner = field(help="tls section", default_factory=lambda: Inner(cert=Path("x")))
    ratio: float = field(0.5, help="a ratio")
    names: list[str] = field(help="names", default_factory=list)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_loads_nested_sections_and_resolves_paths(tmp_path):
    cfg = load_config(Outer, write(tmp_path, 'site = "a"\nratio = 1\nnames=["x"]\n[tls]\ncert = "c.pem"\n'))
    assert cfg.site == "a" and cfg.ratio == 1.0 and isinstance(cfg.ratio, float)
    assert cfg.tls.cert == tmp_path / "c.pem" and cfg.tls.port == 5555 and cfg.names == ["x"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ('site = "a"\nsitee = 1\n', "unknown key(s) 'sitee'"),
        ("ratio = 0.1\n", "missing required key 'site'"),
        ("site = 3\n", "site must be str"),
        ('site = "a"\n[tls]\ncert = "c"\nport = "x"\n', "tls.port must be int"),
        ('site = "a"\n[tls]\ncert = "c"\nport = true\n', "tls.port must be int"),
        ('site = "a\n', "not valid TOML"),
    ],
)
def test_bad_configs_name_the_cause(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, write(tmp_path, text))
    assert needle in str(err.value) and "c.toml" in str(err.value)


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.toml")


def test_describe_lists_every_field_with_help():
    keys = {k: h for k, _, h in describe(Outer)}
    assert keys["tls.port"] == "port" and keys["site"] == "site name"


@dataclass
class Bounded(Section):
    mode: str = field("fast", help="how", choices=("fast", "exact"))
    rate: float = field(0.1, help="a share", ge=0, lt=1)
    sizes: list[int] = field(help="sizes", default_factory=lambda: [1], ge=1)


@dataclass
class WithBounded:
    run: Bounded = field(help="run section", default_factory=Bounded)


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[run]\nmode = "slow"', "[run] mode must be one of 'fast', 'exact', got 'slow'"),
        ("[run]\nrate = 1.0", "[run] rate must be >= 0, < 1, got 1.0"),
        ("[run]\nrate = nan", "[run] rate must be >= 0, < 1, got nan"),
        ("[run]\nsizes = [3, 0]", "[run] sizes must be >= 1, got 0"),
    ],
)
def test_declared_choices_and_bounds_are_checked_by_the_loader(tmp_path, text, needle):
    with pytest.raises(ConfigError) as info:
        load_config(WithBounded, write(tmp_path, text))
    assert needle in str(info.value)
    assert load_config(WithBounded, write(tmp_path, '[run]\nmode = "exact"\nrate = 0.0')).run.mode == "exact"


def test_declared_limits_hold_for_sections_built_in_code_and_show_in_the_template():
    with pytest.raises(ConfigError, match="rate must be >= 0, < 1, got -0.5"):
        Bounded(rate=-0.5)
    rows = {key: text for key, _, text in describe(WithBounded)}
    assert rows["run.mode"].endswith("Accepts one of 'fast', 'exact'.") and rows["run.rate"].endswith(
        "Accepts >= 0, < 1."
    )

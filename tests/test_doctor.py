"""`mor client doctor`: every check fails when its condition is broken and passes when it is mended."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from client_agent.commands import group as client_group
from client_agent.config import load_client_config
from client_agent.doctor import run_checks
from mor_secure import pki
from tests.site_helpers import coordinator_pool, enrol_site, free_port, install_model, make_ca

CHECKS = ["config", "certificate", "crl", "ca pin", "coordinator", "data", "model", "budget"]


@pytest.fixture(scope="module")
def site(tmp_path_factory, world_dir):
    """A site made by `mor client init`, signed, pinned, trained (small run), with its coordinator up."""
    tmp = tmp_path_factory.mktemp("doctor")
    ca_dir = make_ca(tmp / "ca")
    port = free_port()
    config = enrol_site(tmp, ca_dir, "site-a", port)
    install_model(config, world_dir)
    text = config.read_text().replace('ca_fingerprint = ""', f'ca_fingerprint = "{pki.ca_fingerprint(ca_dir)}"')
    config.write_text(text.replace("# connect_timeout_s = 10.0   (default)", "connect_timeout_s = 1.5"))
    state = {
        "pool": coordinator_pool(tmp, ca_dir, port, ["site-a"]),
        "tmp": tmp,
        "ca": ca_dir,
        "port": port,
        "config": config,
        "world": world_dir,
    }
    yield state
    state["pool"].stop()


def _failed(config: Path) -> list[str]:
    return [c.name for c in run_checks(config) if not c.ok]


def _edit(path: Path, old: str, new: str) -> Callable[[], None]:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return lambda: path.write_text(text)


def test_a_healthy_site_passes_every_check(site):
    results = run_checks(site["config"])
    assert [c.name for c in results] == CHECKS
    assert [c.name for c in results if not c.ok] == []
    shown = CliRunner().invoke(client_group, ["doctor", "--config", str(site["config"])])
    assert shown.exit_code == 0 and shown.output.count("PASS") == len(CHECKS), shown.output


def test_each_check_fails_when_broken_and_passes_when_mended(site):
    config, certs, ca_dir = site["config"], site["config"].parent / "certs", site["ca"]

    def breaks(check: str, brk: Callable[[], Callable[[], None]], why: str = "") -> None:
        mend = brk()
        (found,) = [c for c in run_checks(config) if c.name == check]
        assert not found.ok and found.fix and why in found.detail, found
        mend()
        assert _failed(config) == [], check

    breaks("config", lambda: _edit(config, 'site = "site-a"', 'site = "site-a"\nbogus = 1'))

    def short_lived() -> Callable[[], None]:
        pki.sign_request(ca_dir, certs / "site-a.csr", days=3, out=certs / "site-a.pem")
        return lambda: pki.sign_request(ca_dir, certs / "site-a.csr", days=30, out=certs / "site-a.pem")

    breaks("certificate", short_lived, "expires in")

    def foreign_crl() -> Callable[[], None]:
        other = make_ca(site["tmp"] / "other-ca")
        shutil.copy(other / "crl.pem", certs / "crl.pem")
        return lambda: shutil.copy(ca_dir / "crl.pem", certs / "crl.pem")

    breaks("crl", foreign_crl, "not signed by the CA")

    breaks(
        "ca pin",
        lambda: _edit(config, 'ca_fingerprint = "sha256:', 'ca_fingerprint = "sha256:00'[:-2] + "0"),
        "not the pinned",
    )

    def restart(allow: list[str]) -> Callable[[], None]:
        site["pool"].stop()
        site["pool"] = coordinator_pool(site["tmp"], ca_dir, site["port"], allow)
        return lambda: restart(["site-a"]) and None

    def coordinator_down() -> Callable[[], None]:
        site["pool"].stop()
        return lambda: restart(["site-a"]) and None

    breaks("coordinator", coordinator_down, "no welcome")
    breaks("coordinator", lambda: restart(["site-b"]), "not on the allow-list")
    breaks("coordinator", lambda: _edit(config, 'name = "coord"', 'name = "other"'), "is coordinator 'coord'")

    data = str(load_client_config(config).data.path)
    breaks("data", lambda: _edit(config, data, str(site["world"] / "server" / "eval")), "chosen")

    def weights_gone() -> Callable[[], None]:
        weights = config.parent / "reward-model" / "model.safetensors"
        weights.rename(weights.with_suffix(".moved"))
        return lambda: weights.with_suffix(".moved").rename(weights)

    breaks("model", weights_gone, "no trained reward model")

    breaks("budget", lambda: _edit(config, "# max_epsilon = 8.0   (default)", "max_epsilon = 3.0"), "no budget left")


def test_doctor_exits_non_zero_naming_the_failed_checks(site):
    restore = _edit(site["config"], 'ca_fingerprint = "sha256:', 'ca_fingerprint = "sha256:0')
    try:
        shown = CliRunner().invoke(client_group, ["doctor", "--config", str(site["config"])])
    finally:
        restore()
    assert shown.exit_code == 1 and "FAIL ca pin" in shown.output and "fix:" in shown.output
    assert "check(s) failed: ca pin, coordinator" in shown.output  # the pin also stops the TLS context

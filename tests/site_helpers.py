"""Helpers for the operator tests: a CA, a coordinator pool on a free port, a site made by `mor client init`."""

from __future__ import annotations

import io
import shutil
import socket
from pathlib import Path

from PIL import Image

from client_agent.init import init_site
from coordinator.config import load_coordinator_config
from coordinator.federation.pool import ClientPool
from mor_secure import pki
from mor_secure.protocol import ScoreRequest

DATA_TODO = "# path = \"...\"   (TO DO: the folder of your preference data, then remove the '#')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_ca(folder: Path) -> Path:
    """A CA with a coordinator 'coord' certificate (coord.pem/coord.key in the CA folder)."""
    pki.init_ca(folder)
    pki.issue(folder, role="coordinator", name="coord")
    return folder


def coordinator_toml(tmp: Path, ca_dir: Path, port: int, allow: list[str], extra: str = "") -> Path:
    """coordinator.toml for coordinator 'coord' on 127.0.0.1:``port`` admitting ``allow``."""
    path = tmp / "coordinator.toml"
    path.write_text(
        f'name = "coord"\nbind = "tcp://127.0.0.1:{port}"\n[tls]\nca = "{ca_dir}/ca.pem"\n'
        f'cert = "{ca_dir}/coord.pem"\nkey = "{ca_dir}/coord.key"\ncrl = "{ca_dir}/crl.pem"\n'
        f"[clients]\nallow = {allow!r}\ndeadline_s = 5.0\nheartbeat_s = 0.5\n{extra}"
    )
    return path


def coordinator_pool(tmp: Path, ca_dir: Path, port: int, allow: list[str]) -> ClientPool:
    """A started ClientPool for coordinator 'coord' admitting ``allow`` (stop it when done)."""
    pool = ClientPool.from_config(load_coordinator_config(coordinator_toml(tmp, ca_dir, port, allow)))
    pool.start()
    return pool


_TRAINED: dict[Path, Path] = {}


def trained_site(world_dir: Path) -> Path:
    """client.toml of a site made by `mor client init` whose only edit is [data] path (a copy of client-0),
    trained with `mor client train` at the defaults; built once per session."""
    if world_dir not in _TRAINED:
        from click.testing import CliRunner

        from client_agent.commands import group as client_group

        root = world_dir.parent / "trained-site"
        shutil.copytree(world_dir / "client-0", root / "data")
        folder = init_site("site-a", f"tcp://127.0.0.1:{free_port()}", root / "site", coordinator_name="coord")
        text = folder.config.read_text()
        assert DATA_TODO in text
        folder.config.write_text(text.replace(DATA_TODO, f'path = "{root / "data"}"'))
        result = CliRunner().invoke(client_group, ["train", "--config", str(folder.config), "--quiet"])
        assert result.exit_code == 0 and "epsilon 4.000" in result.output, result.output
        _TRAINED[world_dir] = folder.config
    return _TRAINED[world_dir]


def install_model(config: Path, world_dir: Path) -> None:
    """Give the site at ``config`` the session's trained model, its data set and the ledger that records
    what training it spent (`mor client init` keeps a site's ledger in its folder)."""
    trained = trained_site(world_dir)
    shutil.copytree(trained.parent / "reward-model", config.parent / "reward-model")
    shutil.copy(trained.parent / "privacy-ledger.jsonl", config.parent / "privacy-ledger.jsonl")
    text = config.read_text()
    assert DATA_TODO in text
    config.write_text(text.replace(DATA_TODO, f'path = "{trained.parent.parent / "data"}"'))


def serving_agent(config: Path, worker_id: str, served_by: list[str] | None = None):
    """A started agent serving the site's trained model with its signed report; each request it scores
    appends ``worker_id`` to ``served_by``."""
    from client_agent.agent import Agent
    from client_agent.config import load_client_config
    from client_agent.scoring import ScoringService, load_served_model, signed_report

    site = load_client_config(config)
    served = load_served_model(site, config)
    service = ScoringService(served.model, served.sha256, site.serve)

    def handler(msg):
        if served_by is not None:
            served_by.append(worker_id)
        return service(msg)

    agent = Agent(site, worker_id=worker_id)
    agent.serve_scores(handler, signed_report(site, served.report))
    agent.start()
    return agent


def enrol_site(tmp: Path, ca_dir: Path, site: str, port: int, data: Path | None = None) -> Path:
    """`mor client init` a site, have the CA sign its CSR, place cert/CA/CRL, set only the data path."""
    folder = init_site(site, f"tcp://127.0.0.1:{port}", tmp / site, coordinator_name="coord")
    pki.sign_request(ca_dir, folder.csr, out=folder.certs / f"{site}.pem")
    for name in ("ca.pem", "crl.pem"):
        shutil.copy(ca_dir / name, folder.certs / name)
    if data is not None:
        text = folder.config.read_text()
        assert DATA_TODO in text
        folder.config.write_text(text.replace(DATA_TODO, f'path = "{data}"'))
    return folder.config


def score_request(n: int) -> ScoreRequest:
    """A scoring request of ``n`` items sharing one small PNG image."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="PNG")
    return ScoreRequest(
        request_id="",
        images=[buffer.getvalue()],
        prompts=["What colour is the shape?"] * n,
        completions=["red"] * n,
        image_index=[0] * n,
    )

"""Helpers for the operator tests: a CA, a coordinator pool on a free port, a site made by `mor client init`."""

from __future__ import annotations

import io
import shutil
import socket
from pathlib import Path

from PIL import Image

from client_agent.init import init_site
from coordinator.config import load_coordinator_config
from coordinator.pool import ClientPool
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


def coordinator_pool(tmp: Path, ca_dir: Path, port: int, allow: list[str], **pool_kwargs) -> ClientPool:
    """A started ClientPool for coordinator 'coord' admitting ``allow`` (stop it when done)."""
    path = tmp / "coordinator.toml"
    path.write_text(f'name = "coord"\nbind = "tcp://127.0.0.1:{port}"\n[tls]\nca = "{ca_dir}/ca.pem"\n'
                    f'cert = "{ca_dir}/coord.pem"\nkey = "{ca_dir}/coord.key"\ncrl = "{ca_dir}/crl.pem"\n'
                    f"[clients]\nallow = {allow!r}\ndeadline_s = 5.0\nheartbeat_s = 0.5\n")
    pool = ClientPool.from_config(load_coordinator_config(path), **pool_kwargs)
    pool.start()
    return pool


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
    return ScoreRequest(request_id="", images=[buffer.getvalue()], prompts=["What colour is the shape?"] * n,
                        completions=["red"] * n, image_index=[0] * n)

"""`mor client init`: the site folder it writes trains and serves with no edit but the data path."""

from __future__ import annotations

import shutil
import stat
import tomllib

from click.testing import CliRunner

from client_agent.commands import group as client_group
from client_agent.config import ClientConfig
from mor_secure import pki
from mor_secure.config import describe
from mor_secure.protocol import ScoreReply
from tests.site_helpers import coordinator_pool, make_ca, score_request, trained_site


def test_init_writes_key_csr_and_a_config_listing_every_setting(tmp_path):
    out = tmp_path / "site"
    result = CliRunner().invoke(
        client_group, ["init", "--site", "site-a", "--coordinator", "tcp://coord.example.org:7000", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    key, csr, config = out / "certs" / "site-a.key", out / "certs" / "site-a.csr", out / "client.toml"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and csr.read_text().startswith("-----BEGIN CERTIFICATE REQ")
    text = config.read_text()
    for key_name, _default, help_text in describe(ClientConfig):
        name = key_name.rpartition(".")[2]
        assert f"{name} =" in text and help_text.split()[0] in text, key_name
    values = tomllib.loads(text)
    assert values["coordinator"] == {"endpoint": "tcp://coord.example.org:7000", "name": "coord.example.org"}
    assert values["tls"]["cert"] == "certs/site-a.pem" and values["data"] == {}
    assert "1. Send" in result.output and "8. Serve it" in result.output

    again = CliRunner().invoke(
        client_group, ["init", "--site", "site-a", "--coordinator", "tcp://coord.example.org:7000", "--out", str(out)]
    )
    assert again.exit_code == 1 and "refusing to overwrite" in again.output
    bad = CliRunner().invoke(
        client_group, ["init", "--site", "site-b", "--coordinator", "coord:7000", "--out", str(tmp_path / "b")]
    )
    assert bad.exit_code == 1 and "tcp://HOST:PORT" in bad.output and "Traceback" not in bad.output


def test_init_output_trains_and_serves_with_only_the_data_path_set(tmp_path, world_dir):
    config_path = trained_site(world_dir)  # init, [data] path set, `mor client train` at the defaults
    certs = config_path.parent / "certs"
    ca_dir = make_ca(tmp_path / "ca")
    pki.sign_request(ca_dir, certs / "site-a.csr", out=certs / "site-a.pem")
    for name in ("ca.pem", "crl.pem"):
        shutil.copy(ca_dir / name, certs / name)

    from client_agent.agent import Agent
    from client_agent.config import load_client_config
    from client_agent.scoring import ScoringService, load_served_model

    config = load_client_config(config_path)
    served = load_served_model(config, config_path)
    agent = Agent(config, worker_id="w1")
    agent.serve_scores(ScoringService(served.model, served.sha256, config.serve), None)
    port = int(config.coordinator.endpoint.rpartition(":")[2])
    pool = coordinator_pool(tmp_path, ca_dir, port, ["site-a"])
    agent.start()
    try:
        assert pool.wait_for(["site-a"], 15)
        result = pool.fanout(score_request(3))
        reply = result.replies["site-a"]
        assert isinstance(reply, ScoreReply) and len(reply.scores) == 3 and reply.model_sha256 == served.sha256
    finally:
        agent.stop()
        pool.stop()

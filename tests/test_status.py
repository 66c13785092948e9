"""`mor coordinator status`: the running Federation's status.json joined with the ledger."""

from __future__ import annotations

import json
import math
import time

from click.testing import CliRunner
from PIL import Image

from client_agent.agent import Agent
from client_agent.config import load_client_config
from coordinator.commands import group as coordinator_group
from coordinator.config import load_coordinator_config
from coordinator.federation.failures import Failure, FailureKind
from coordinator.federation.service import Federation
from coordinator.federation.status import read_status, status_path
from tests.site_helpers import coordinator_toml, enrol_site, free_port, install_model, make_ca, serving_agent


def _until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_status_shows_workers_expiry_epsilon_and_failures_while_running_and_after(tmp_path, world_dir):
    ca_dir = make_ca(tmp_path / "ca")
    port = free_port()
    site_a = enrol_site(tmp_path, ca_dir, "site-a", port)
    install_model(site_a, world_dir)
    site_b = enrol_site(tmp_path, ca_dir, "site-b", port)  # enrolled at the CA but not allowed here
    config_path = coordinator_toml(tmp_path, ca_dir, port, ["site-a", "site-c"])
    config = load_coordinator_config(config_path)
    with Federation(config) as fed:
        agent = serving_agent(site_a, "w1")
        outsider = Agent(load_client_config(site_b), worker_id="b1")
        outsider.start()
        try:
            assert _until(lambda: fed.pool.peers() != [])
            fed.scorer([Image.new("RGB", (8, 8))] * 3, ["q"] * 3, ["a"] * 3)
            assert _until(lambda: outsider.client.error is not None)
            assert _until(lambda: any(e.kind == "refusal" for e in fed.ledger.entries()))
            fed.breaker.failure("site-a", Failure(FailureKind.TIMEOUT, "no reply within 5s"))
            fed.status.write()
            running = read_status(config)
            shown = CliRunner().invoke(coordinator_group, ["status", "--config", str(config_path)])
        finally:
            agent.stop()
            outsider.stop()
    assert json.loads(status_path(config).read_text())["running"] is False

    assert running.running and running.coordinator == "coord"
    rows = {row.site: row for row in running.sites}
    assert sorted(rows) == ["site-a", "site-b", "site-c"]
    a = rows["site-a"]
    assert [w["worker_id"] for w in a.workers] == ["w1"] and a.workers[0]["admitted"]
    assert a.epsilon is not None and 0 < a.epsilon < math.inf and a.scored_last_hour == 3
    assert a.cert_expires is not None and 29 <= (a.cert_expires.timestamp() - time.time()) / 86400 <= 30
    assert any("timeout" in f for f in a.failures_last_hour) and a.last_seen is not None
    assert not rows["site-b"].allowed and any("allow-list" in f for f in rows["site-b"].failures_last_hour)
    assert rows["site-c"].workers == [] and rows["site-c"].last_seen is None and rows["site-c"].epsilon is None
    assert shown.exit_code == 0 and "running" in shown.output and "w1" in shown.output, shown.output

    stopped = read_status(config)
    rows = {row.site: row for row in stopped.sites}
    assert not stopped.running and rows["site-a"].workers == []
    assert rows["site-a"].epsilon == a.epsilon and rows["site-a"].cert_expires == a.cert_expires
    as_json = CliRunner().invoke(coordinator_group, ["status", "--config", str(config_path), "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)["running"] is False


def test_status_of_a_coordinator_that_never_ran_lists_the_allowed_sites(tmp_path):
    ca_dir = make_ca(tmp_path / "ca")
    config_path = coordinator_toml(tmp_path, ca_dir, free_port(), ["site-a"])
    shown = CliRunner().invoke(coordinator_group, ["status", "--config", str(config_path)])
    assert shown.exit_code == 0 and "not running" in shown.output and "site-a" in shown.output
    status_path(load_coordinator_config(config_path)).write_text("{not json")
    broken = CliRunner().invoke(coordinator_group, ["status", "--config", str(config_path)])
    assert broken.exit_code == 1 and "unreadable" in broken.output and "Traceback" not in broken.output

"""End to end with real processes: `mor client serve` + `mor coordinator probe`, and an agent killed in
the middle of a request that reconnects after a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from click.testing import CliRunner

from coordinator.commands import group as coordinator_group
from coordinator.federation.failures import FailureKind
from coordinator.federation.pool import ClientPool
from mor_secure import pki, protocol
from mor_secure.transport import ServerOptions, TLSServer

MOR = [sys.executable, "-m", "mor_secure.cli"]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tls(pki_dir: Path, name: str) -> str:
    return textwrap.dedent(f"""
        [tls]
        ca = "{pki_dir / "ca.pem"}"
        cert = "{pki_dir / f"{name}.pem"}"
        key = "{pki_dir / f"{name}.key"}"
        crl = "{pki_dir / "crl.pem"}"
    """)


def _coordinator_toml(tmp: Path, pki_dir: Path, port: int, allow: list[str], quorum: int) -> Path:
    path = tmp / "coordinator.toml"
    path.write_text(
        f'name = "coord"\nbind = "tcp://127.0.0.1:{port}"\n'
        + _tls(pki_dir, "coord")
        + f"\n[clients]\nallow = {allow!r}\nquorum = {quorum}\ndeadline_s = 5.0\n"
    )
    return path


def _client_toml(tmp: Path, pki_dir: Path, port: int, site: str) -> Path:
    path = tmp / f"{site}.toml"
    path.write_text(
        f'site = "{site}"\n'
        + _tls(pki_dir, site)
        + f'\n[coordinator]\nendpoint = "tcp://127.0.0.1:{port}"\nname = "coord"\n'
        "heartbeat_s = 0.5\nconnect_timeout_s = 2.0\nbackoff_max_s = 1.0\n"
    )
    return path


def test_probe_lists_answering_agents_and_refused_ones(tmp_path, pki_dir):
    port = _free_port()
    coordinator = _coordinator_toml(tmp_path, pki_dir, port, allow=["site-a", "site-c"], quorum=1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    agents = {
        site: subprocess.Popen(
            [*MOR, "client", "serve", "--health-only", "--config", str(_client_toml(tmp_path, pki_dir, port, site))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for site in ("site-a", "site-b")
    }
    try:
        probe = subprocess.run(
            [*MOR, "coordinator", "probe", "--config", str(coordinator), "--wait", "5"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "COLUMNS": "200"},
        )
        assert probe.returncode == 0, probe.stderr
        rows = {line.split()[1]: line for line in probe.stdout.splitlines() if "site-" in line and "│" in line}
        assert "ok" in rows["site-a"] and "sha256:" in rows["site-a"]
        assert "not connected" in rows["site-c"]
        assert "mor://client/site-b" in probe.stdout and "allow-list" in probe.stdout
        refused = agents["site-b"].communicate(timeout=20)
        assert agents["site-b"].returncode == 1
        assert "not on the allow-list" in refused[1] and "Traceback" not in refused[1]
    finally:
        for process in agents.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=20)
    assert agents["site-a"].returncode == 0  # SIGTERM is a clean stop


def test_probe_exits_non_zero_below_quorum(tmp_path, pki_dir):
    config = _coordinator_toml(tmp_path, pki_dir, _free_port(), allow=["site-a"], quorum=1)
    result = CliRunner().invoke(coordinator_group, ["probe", "--config", str(config), "--wait", "0"])
    assert result.exit_code == 1
    assert "only 0 of the quorum 1" in result.output and "not connected" in result.output


_SLOW_AGENT = textwrap.dedent("""
    import sys, time
    from mor_secure import pki, protocol
    from mor_secure.transport import ClientOptions, TLSClient
    ca, endpoint, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ctx = lambda: pki.ssl_context("client", ca=f"{ca}/ca.pem", cert=f"{ca}/site-a.pem", key=f"{ca}/site-a.key",
                                  crl=f"{ca}/crl.pem")
    def score(msg):
        print("scoring", flush=True)
        time.sleep(delay)
        return protocol.ScoreReply(msg.request_id, [1.0] * len(msg.prompts), "m")
    client = TLSClient(endpoint, ctx, coordinators=["coord"], worker_id="w", agent_version="t",
                       options=ClientOptions(heartbeat_s=0.3, connect_timeout_s=2.0))
    client.register(protocol.ScoreRequest, score)
    client.run()
""")


def test_an_agent_killed_mid_request_is_reported_and_its_restart_is_served(pki_dir):
    ctx = lambda: pki.ssl_context(  # noqa: E731
        "coordinator",
        ca=pki_dir / "ca.pem",
        cert=pki_dir / "coord.pem",  # noqa: E731
        key=pki_dir / "coord.key",
        crl=pki_dir / "crl.pem",
    )
    server = TLSServer(
        "tcp://127.0.0.1:0",
        ctx,
        name="coord",
        allow=["site-a"],
        options=ServerOptions(heartbeat_s=0.3, peer_timeout_s=5.0),
    )
    request = protocol.ScoreRequest(request_id="", images=[PNG], prompts=["p"], completions=["c"])

    def spawn(delay: float) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", _SLOW_AGENT, str(pki_dir), endpoint, str(delay)], stdout=subprocess.PIPE, text=True
        )

    with ClientPool(server, deadline_s=10.0) as pool:
        endpoint = server.endpoint
        slow = spawn(30.0)
        try:
            assert pool.wait_for(["site-a"], 30)
            outcome: dict = {}
            fanout = threading.Thread(target=lambda: outcome.update(r=pool.fanout(request)))
            fanout.start()
            assert slow.stdout.readline().strip() == "scoring"
            slow.kill()
            fanout.join(15)
            result = outcome["r"]
            assert result.replies == {} and result.failures["site-a"].kind is FailureKind.DISCONNECTED
        finally:
            slow.kill()
            slow.wait()
        restarted = spawn(0.0)
        try:
            assert pool.wait_for(["site-a"], 30)
            result = pool.fanout(request, deadline_s=10)
            assert result.failures == {} and result.replies["site-a"].scores == [1.0]
            assert len(pool.peers()) == 1
        finally:
            restarted.kill()
            restarted.wait()


def test_serve_refuses_unusable_configs_with_the_fix(tmp_path, pki_dir):
    from client_agent.commands import group as client_group

    config = _client_toml(tmp_path, pki_dir, _free_port(), "site-a")
    config.write_text(config.read_text().replace('site = "site-a"', 'site = "site-b"'))
    result = CliRunner().invoke(client_group, ["serve", "--config", str(config)])
    assert result.exit_code == 1 and "speaks for site 'site-a'" in result.output
    result = CliRunner().invoke(client_group, ["serve", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1 and "config file not found" in result.output

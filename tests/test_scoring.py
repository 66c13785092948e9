"""The scoring path across the wire: sites' DP reward models served by real agents over mutual TLS on
127.0.0.1, the coordinator's Federation (signed reports into the ledger, scorer, circuit breaker),
the [serve] policy's refusals, and `mor coordinator router` end to end with three agent processes.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner
from PIL import Image

from client_agent.agent import Agent
from client_agent.config import load_client_config
from client_agent.scoring import Refusal, ScoringService, TokenBucket, decode_image, load_served_model, signed_report
from coordinator.config import load_coordinator_config
from coordinator.federation.failures import Failure, FailureKind
from coordinator.federation.pool import CircuitBreaker
from coordinator.federation.service import Federation, build_requests
from mor_secure import pki, protocol
from mor_secure.data.loader import load_preferences
from mor_secure.protocol import HealthRequest, ScoreRequest
from mor_secure.transport import AgentRefused

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SITES = ["client-0", "client-1", "client-2"]


def _tls(ca: Path, name: str) -> str:
    return f'[tls]\nca = "{ca}/ca.pem"\ncert = "{ca}/{name}.pem"\nkey = "{ca}/{name}.key"\ncrl = "{ca}/crl.pem"\n'


class World:
    """A PKI for the world's three sites, their DP models, and config writers."""

    def __init__(self, root: Path, world: Path) -> None:
        self.root, self.world, self.ca = root, world, root / "ca"
        pki.init_ca(self.ca)
        pki.issue(self.ca, role="coordinator", name="coord")
        for site in SITES:
            pki.issue(self.ca, role="client", name=site)

    def client_toml(self, site: str, endpoint: str, serve: str = "", folder: Path | None = None) -> Path:
        folder = folder or self.root
        path = folder / f"{site}.toml"
        path.write_text(
            f'site = "{site}"\n'
            + _tls(self.ca, site)
            + f'[coordinator]\nendpoint = "{endpoint}"\nname = "coord"\nheartbeat_s = 0.5\n'
            "idle_timeout_s = 2.0\nconnect_timeout_s = 3.0\nbackoff_max_s = 1.0\n"
            f'[data]\npath = "{self.world / site}"\nmax_pairs = 96\n'
            f'[train]\nout = "{self.root / site}-model"\nepochs = 3\nbatch_size = 32\nlr = 0.01\n'
            f"[privacy]\ntarget_epsilon = 8.0\nmax_epsilon = 100.0\n"
            f'ledger = "{self.root / site}-budget.jsonl"\n[serve]\n{serve}\n'
        )
        return path

    def coordinator_toml(
        self,
        folder: Path,
        extra: str = "",
        *,
        bind: str = "tcp://127.0.0.1:0",
        quorum: int = 1,
        deadline_s: float = 5.0,
        allow: list[str] = SITES,
    ) -> Path:
        path = folder / "coordinator.toml"
        path.write_text(
            f'name = "coord"\nbind = "{bind}"\n'
            + _tls(self.ca, "coord")
            + f"[clients]\nallow = {allow!r}\nquorum = {quorum}\ndeadline_s = {deadline_s}\n"
            "heartbeat_s = 0.5\n" + extra
        )
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, world_dir) -> World:
    from client_agent.train import train_reward_model

    w = World(tmp_path_factory.mktemp("scoring"), world_dir)
    for site in SITES:
        train_reward_model(
            load_client_config(w.client_toml(site, "tcp://127.0.0.1:1")), progress=False, new_ledger=True
        )
    return w


@contextmanager
def federation(world: World, tmp_path: Path, extra: str = "", **kwargs):
    with Federation(load_coordinator_config(world.coordinator_toml(tmp_path, extra, **kwargs))) as fed:
        yield fed


def start_agent(
    world: World, site: str, endpoint: str, tmp_path: Path, *, serve: str = "", handler=None, report=None
) -> Agent:
    """An in-process agent serving the site's trained model (``handler`` wraps the scoring service)."""
    config = load_client_config(world.client_toml(site, endpoint, serve, folder=tmp_path))
    served = load_served_model(config)
    service = ScoringService(served.model, served.sha256, config.serve)
    agent = Agent(config, worker_id=f"{site}-test")
    agent.serve_scores(
        handler(service) if handler else service, report if report is not None else signed_report(config, served.report)
    )
    agent.start()
    return agent


@contextmanager
def agents(world: World, fed: Federation, tmp_path: Path, sites=SITES, **kwargs):
    started = [start_agent(world, site, fed.pool.server.endpoint, tmp_path, **kwargs) for site in sites]
    try:
        yield started
    finally:
        for agent in started:
            agent.stop()


def _until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _rows(world: World, n: int):
    return load_preferences(world.world / "server" / "router", split="test").select(range(n))


def _png(size=(8, 8), color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_scores_over_tls_equal_in_process_scores_and_sessions_are_recorded(world, tmp_path):
    rows = _rows(world, 10)
    # GRPO-like: each prompt (and its image object) twice, with different completions.
    images = [img for img in rows["image"] for _ in range(2)]
    prompts = [p for p in rows["prompt"] for _ in range(2)]
    completions = [c for pair in zip(rows["chosen"], rows["rejected"]) for c in pair]
    with federation(world, tmp_path, "[pool]\nmax_batch = 8\n") as fed, agents(world, fed, tmp_path):
        assert fed.wait_for(3, timeout=30) and fed.live_sites() == SITES
        remote = fed.scorer(images, prompts, completions)
        assert fed.last_round.failures == {}
        reports = fed.reports()
    for site in SITES:
        model = load_served_model(load_client_config(tmp_path / f"{site}.toml")).model
        local = model.score(images, prompts, completions)
        assert remote[site] == pytest.approx(local, abs=1e-6)
        assert reports[site].model_sha256.startswith("sha256:")
    sessions = [e.body for e in fed.ledger.entries() if e.kind == "scoring_session"]
    assert sorted(s["site"] for s in sessions) == SITES and {s["items"] for s in sessions} == {20}
    requests = build_requests(images, prompts, completions, 8)
    assert [len(r.prompts) for _, r in requests] == [8, 8, 4]
    assert all(len(r.images) == len(r.prompts) // 2 for _, r in requests)  # each image sent once


def test_signed_reports_land_in_the_ledger_and_verify(world, tmp_path):
    from mor_secure.commands.ledger import group as ledger_group

    with federation(world, tmp_path) as fed, agents(world, fed, tmp_path):
        assert fed.wait_for(3, timeout=30)
    reports = {e.body["site"]: e.body for e in fed.ledger.entries() if e.kind == "privacy_report"}
    assert sorted(reports) == SITES
    for site in SITES:
        on_disk = json.loads((world.root / f"{site}-model" / "privacy_report.json").read_text())
        assert reports[site]["epsilon"] == on_disk["epsilon"]
        assert reports[site]["model_sha256"] == on_disk["model_sha256"]
        assert reports[site]["cert_fingerprint"] == pki.fingerprint(pki.load_cert(world.ca / f"{site}.pem"))
    result = CliRunner().invoke(ledger_group, ["verify", str(fed.ledger.path), "--ca", str(world.ca / "ca.pem")])
    assert result.exit_code == 0, result.output


def test_a_tampered_or_borrowed_report_is_refused_and_recorded(world, tmp_path):
    def report_of(site: str):
        config = load_client_config(world.client_toml(site, "tcp://127.0.0.1:1", folder=tmp_path))
        return signed_report(config, load_served_model(config).report)

    honest = report_of("client-0")
    tampered = replace(honest, report={**honest.report, "epsilon": 0.5})  # edited after signing
    borrowed = report_of("client-2")  # client-1 presents client-2's (valid) signed report
    with federation(world, tmp_path) as fed:
        bad = [
            start_agent(world, "client-0", fed.pool.server.endpoint, tmp_path, report=tampered),
            start_agent(world, "client-1", fed.pool.server.endpoint, tmp_path, report=borrowed),
        ]
        try:
            for agent in bad:
                assert _until(lambda a=agent: a.client.error is not None)
                assert isinstance(agent.client.error, AgentRefused)
                assert "privacy report refused" in str(agent.client.error)
            assert fed.live_sites() == []
        finally:
            for agent in bad:
                agent.stop()
    refusals = [e.body for e in fed.ledger.entries() if e.kind == "refusal"]
    reasons = {r["peer"]: r["reason"] for r in refusals}
    assert "does not match its content" in reasons["mor://client/client-0"]
    assert "certificate other than" in reasons["mor://client/client-1"]
    assert not [e for e in fed.ledger.entries() if e.kind == "privacy_report"]


def _raw_parts(original):
    """encode_parts that lets one deliberately malformed score request through (prompts are numbers)."""

    def encode_parts(msg, limits=protocol.DEFAULT_LIMITS):
        if isinstance(msg, ScoreRequest) and msg.objective == "wrong-types":
            body = {"request_id": msg.request_id, "images": [_png()], "prompts": [1], "completions": ["x"]}
            return [msgpack.packb({"v": 1, "t": "score_request", "b": body}, use_bin_type=True)]
        return original(msg, limits)

    return encode_parts


def test_malformed_requests_get_error_replies_and_the_agent_keeps_serving(world, tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "encode_parts", _raw_parts(protocol.encode_parts))
    good = ScoreRequest(request_id="", images=[_png()], prompts=["Which colour?"], completions=["red"])
    cases = {
        "bad_image": replace(good, images=[b"\x89PNG\r\n\x1a\n" + b"garbage" * 10]),
        "image_too_large": replace(good, images=[_png((64, 64))]),
        "batch_too_large": replace(good, prompts=["q"] * 5, completions=["a"] * 5, image_index=[0] * 5),
        "malformed": replace(good, objective="wrong-types"),
    }
    serve = "max_batch = 4\nmax_pixels = 1024\n"
    with federation(world, tmp_path) as fed, agents(world, fed, tmp_path, sites=["client-0"], serve=serve):
        assert fed.wait_for(1, timeout=30)
        for code, request in cases.items():
            result = fed.pool.fanout(request)
            failure = result.failures["client-0"]
            assert (failure.kind, failure.code) == (FailureKind.ERROR_REPLY, code), (code, result.failures)
            assert str(failure).startswith(f"error reply: {code}: ") and failure.blames_request
        assert fed.pool.fanout(good).replies["client-0"].scores  # still serving, same session
        assert len(fed.pool.peers()) == 1


def test_rate_limited_requests_get_error_replies(world, tmp_path):
    request = ScoreRequest(request_id="", images=[_png()], prompts=["q"], completions=["a"])
    serve = "requests_per_minute = 2\n"
    with federation(world, tmp_path) as fed, agents(world, fed, tmp_path, sites=["client-1"], serve=serve):
        assert fed.wait_for(1, timeout=30)
        outcomes = [fed.pool.fanout(request) for _ in range(3)]
        assert [bool(o.replies) for o in outcomes] == [True, True, False]
        limited = outcomes[2].failures["client-1"]
        assert limited.code == "rate_limited" and limited.retryable and not limited.blames_request
        assert fed.pool.fanout(HealthRequest(request_id="")).replies["client-1"].site == "client-1"


def test_a_hung_agent_trips_the_breaker_keeps_its_session_and_rejoins_after_the_cooldown(world, tmp_path):
    alive = threading.Event()
    asked = {"n": 0}

    def hang_until_alive(service):
        def handler(msg):
            asked["n"] += 1
            alive.wait(30)
            return service(msg)

        return handler

    rows = _rows(world, 4)
    args = (list(rows["image"]), list(rows["prompt"]), list(rows["chosen"]))
    extra = "[pool]\nretries = 1\nbackoff_s = 0.05\nmax_failures = 3\ncooldown_s = 1.5\n"
    with ExitStack() as stack:
        fed = stack.enter_context(federation(world, tmp_path, extra, deadline_s=1.0))
        stack.enter_context(agents(world, fed, tmp_path, sites=["client-0"]))
        (hung,) = stack.enter_context(agents(world, fed, tmp_path, sites=["client-1"], handler=hang_until_alive))
        stack.callback(alive.set)
        assert fed.wait_for(2, timeout=30)
        first = fed.scorer(*args)
        assert first["client-1"] is None and first["client-0"] is not None
        assert fed.last_round.failures["client-1"].kind is FailureKind.TIMEOUT
        assert fed.health()["client-1"].state == "open" and asked["n"] == 1
        for _ in range(3):  # the dead site is put aside: not asked, no deadline spent on it
            later = fed.scorer(*args)
            assert later["client-1"] is None and later["client-0"] is not None
            assert fed.last_round.failures["client-1"].kind is FailureKind.PUT_ASIDE
        assert asked["n"] == 1 and fed.health()["client-1"].failures == 1
        # The hung batch outlives the agent's idle timeout (2 s): heartbeats run off the handler threads,
        # so the session survives; by then the cool-down (1.5 s) has passed too.
        threading.Event().wait(2.5)
        alive.set()
        back = fed.scorer(*args)
        assert back["client-1"] is not None and fed.health()["client-1"].state == "closed"
        assert asked["n"] == 2 and hung.client.connections == 1


def test_a_site_that_fails_fast_is_retried_within_the_deadline(world, tmp_path):
    extra = "[pool]\nretries = 6\nbackoff_s = 0.1\n"
    with federation(world, tmp_path, extra, deadline_s=20.0) as fed:
        outcome: dict = {}
        asking = threading.Thread(
            target=lambda: outcome.update(r=fed.resilient.fanout(HealthRequest(request_id="r"), ["client-2"]))
        )
        asking.start()  # the first attempt finds no admitted agent ...
        with agents(world, fed, tmp_path, sites=["client-2"]):
            asking.join(30)  # ... a later one, after the backoff, finds it
        assert outcome["r"].replies["client-2"].site == "client-2" and outcome["r"].failures == {}
        assert fed.health()["client-2"].failures == 0


def test_allow_lists_on_both_sides_refuse_and_the_coordinators_refusal_is_recorded(world, tmp_path):
    with federation(world, tmp_path, allow=["client-0", "client-1"]) as fed:
        picky = start_agent(
            world, "client-1", fed.pool.server.endpoint, tmp_path, serve='allow_coordinators = ["other-coordinator"]'
        )
        unknown = start_agent(world, "client-2", fed.pool.server.endpoint, tmp_path)
        try:
            assert _until(lambda: "other-coordinator" in picky.client.last_error and unknown.client.error is not None)
            # not the coordinator it answers: retried with back-off (an impostor's word is never final)
            assert picky.client.error is None and not picky.client.connected.is_set()
            assert "is coordinator 'coord', not 'other-coordinator'" in picky.client.last_error
            assert "not on the allow-list" in str(unknown.client.error)
            assert fed.live_sites() == [] and not [e for e in fed.ledger.entries() if e.kind == "privacy_report"]
            assert _until(
                lambda: any(
                    e.kind == "refusal"
                    and e.body["peer"] == "mor://client/client-2"
                    and "allow-list" in e.body["reason"]
                    for e in fed.ledger.entries()
                )
            )
        finally:
            picky.stop()
            unknown.stop()


def test_scores_from_a_model_without_a_received_report_are_not_used(world, tmp_path):
    rows = _rows(world, 2)

    def swapped(service: ScoringService) -> ScoringService:
        service.model_sha256 = "sha256:" + "0" * 64  # as if the weights were swapped after the report
        return service

    with federation(world, tmp_path) as fed, agents(world, fed, tmp_path, sites=["client-0"], handler=swapped):
        assert fed.wait_for(1, timeout=30)
        scores = fed.scorer(list(rows["image"]), list(rows["prompt"]), list(rows["chosen"]))
        assert scores["client-0"] is None
        mismatch = fed.last_round.failures["client-0"]
        assert mismatch.kind is FailureKind.MODEL_MISMATCH and "privacy report was not received" in str(mismatch)
    assert not [e for e in fed.ledger.entries() if e.kind == "scoring_session"]


def test_serve_refuses_without_a_trained_model_or_with_edited_weights(world, tmp_path):
    from client_agent.commands import group as client_group

    config = world.client_toml("client-0", "tcp://127.0.0.1:1", folder=tmp_path)
    config.write_text(
        config.read_text().replace(f'out = "{world.root / "client-0"}-model"', f'out = "{tmp_path / "empty"}"')
    )
    result = CliRunner().invoke(client_group, ["serve", "--config", str(config)])
    assert result.exit_code == 1 and f"run `mor client train --config {config}` first" in result.output
    copy = tmp_path / "empty"
    copy.mkdir()
    for name in ("model.safetensors", "privacy_report.json", "reward_config.json"):
        copy.joinpath(name).write_bytes((world.root / "client-0-model" / name).read_bytes())
    with copy.joinpath("model.safetensors").open("r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\0\0\0\1")
    result = CliRunner().invoke(client_group, ["serve", "--config", str(config)])
    assert result.exit_code == 1 and "not the model its privacy report describes" in result.output


def test_policy_pieces():
    now = [0.0]
    bucket = TokenBucket(6, clock=lambda: now[0])  # 6 a minute: one every 10 s, at most 6 banked
    assert [bucket.take() for _ in range(7)] == [True] * 6 + [False]
    now[0] = 10.0
    assert bucket.take() and not bucket.take()
    with pytest.raises(Refusal) as refused:
        decode_image(b"GIF89a" + bytes(20), 100, "images[0]")
    assert refused.value.code == "bad_image"
    assert decode_image(_png((4, 4)), 16, "images[0]").size == (4, 4)
    clock = [0.0]
    breaker = CircuitBreaker(max_failures=2, cooldown_s=5, clock=lambda: clock[0])
    breaker.failure("a", Failure(FailureKind.DISCONNECTED, "lost"))
    assert breaker.allow("a")
    breaker.failure("a", Failure(FailureKind.DISCONNECTED, "lost"))
    assert not breaker.allow("a")
    clock[0] = 5.0
    assert breaker.allow("a") and breaker.health()["a"].state == "half-open"
    breaker.failure("a", Failure(FailureKind.DISCONNECTED, "lost"))  # a failed trial re-opens at once
    assert not breaker.allow("a")
    breaker.reset("a")
    assert breaker.allow("a") and breaker.health()["a"].failures == 3


def test_router_command_end_to_end_with_three_agent_processes(world, tmp_path, tiny_model_dir):
    from coordinator.commands import group as coordinator_group
    from coordinator.mixture.fusion import MixtureOfRewards

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    router = (
        f'[router]\npolicy = "{tiny_model_dir("qwen2-vl")}"\ndata = "{world.world / "server" / "router"}"\n'
        f'max_pairs = 24\nepochs = 5\nout = "{tmp_path / "run"}"\nwait_s = 60\n'
    )
    config = world.coordinator_toml(tmp_path, router, bind=endpoint, quorum=3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mor_secure.cli",
                "client",
                "serve",
                "--config",
                str(world.client_toml(site, endpoint, folder=tmp_path)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for site in SITES
    ]
    try:
        runs = [
            CliRunner().invoke(coordinator_group, ["router", "--config", str(config)], env={"COLUMNS": "160"})
            for _ in range(2)
        ]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        logs = [proc.communicate(timeout=30)[1] for proc in procs]
    for run in runs:
        assert run.exit_code == 0, run.output
        assert "MoR (learned router)" in run.output and "uniform mean" in run.output
        assert all(f"single client: {site}" in run.output for site in SITES)
        assert all(domain in run.output for domain in ("detail", "medical", "chart"))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["sites"] == SITES and report["test_pairs"] == 24 and 0 <= report["accuracy"] <= 1
    assert len(list((tmp_path / "run" / "scores").glob("*.json"))) == 6  # 3 sites x 2 splits
    ledger = load_coordinator_config(config).ledger.path
    kinds = [json.loads(line)["kind"] for line in ledger.read_text().splitlines()]
    assert kinds.count("privacy_report") == 6  # both runs verified every site's report
    assert kinds.count("scoring_session") == 6  # ... but only the first fetched scores (2 splits x 3)
    assert all("scored request=" in log and "Traceback" not in log for log in logs)
    assert all("Which" not in log for log in logs)  # logs carry ids and counts, never content
    mixture = MixtureOfRewards.load(tmp_path / "run" / "mixture")
    assert mixture.router.sites == SITES

"""Abuse: every hostile input of the hardening issue and the rejection matrix, against real processes.

A coordinator process (the product's ``Federation``: TLS server, signed ledger, refusal throttle) and two
allow-listed sites (`mor client serve --health-only` processes) run on 127.0.0.1 for the whole run; the
coordinator probes both sites four times a second and writes what answered. Each scenario then attacks:
half-open ClientHello floods, plaintext floods, nested-map memory bombs (both directions), a scoring
request with 100 large images, hostile welcomes, garbage before the welcome, CRL rollback and a broken
CRL, a silent certificate re-issue, ledger tampering, a foreign protocol version, a log-forging worker
id, and the rejection matrix (other CA, expired, wrong role, not allowed, revoked, no certificate,
plaintext, TLS 1.2). Each row says what was sent, what happened, whether the legitimate sites kept
answering and whether anything was lost.

    python -m benchmarks.abuse --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.abuse_peers import (
    FakeCoordinator,
    HalfOpenFlood,
    RawPeer,
    hostile_coordinator,
    nested_maps,
    plaintext_flood,
)
from benchmarks.common import CHECKOUT, machine_lines, write_markdown
from mor_secure.reporting import markdown_table

SELF = [sys.executable, "-m", "benchmarks.abuse"]
"""How this benchmark starts its own hostile peers and coordinator as processes (from the checkout)."""
LEGIT = ("site-a", "site-b")
ALLOWED = (*LEGIT, "site-e", "site-m", "site-r", "site-x")
PROBE_S = 0.25


# --------------------------------------------------------------------------- child processes


def run_coordinator(config_path: Path, probe_path: Path) -> None:
    """The coordinator child: a Federation, plus a health probe of every welcomed session written as JSON lines."""
    from coordinator.config import load_coordinator_config
    from coordinator.federation.service import Federation
    from mor_secure.logs import configure_logging
    from mor_secure.protocol import HealthRequest

    configure_logging("WARNING", json_lines=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Federation(load_coordinator_config(config_path)) as fed, open(probe_path, "a", encoding="utf-8") as out:
        server, n = fed.pool.server, 0
        while not stop.is_set():
            peers = server.peers()
            futures = {
                p.session_id: (p.site, server.request(p.session_id, HealthRequest(request_id=f"p{n}"))) for p in peers
            }
            n += 1
            answered = {}
            for session_id, (site, future) in futures.items():
                try:
                    future.result(2.0)
                    answered.setdefault(site, []).append(session_id)
                except Exception:  # timeouts and drops are what the probe measures
                    pass
            out.write(
                json.dumps(
                    {
                        "t": time.time(),
                        "answered": answered,
                        "refused_early": server.refused_early,
                        "evicted": server.evicted,
                        "crl_number": server.crl_number,
                        "crl_failures": server.crl_failures,
                        **memory(os.getpid()),
                    }
                )
                + "\n"
            )
            out.flush()
            stop.wait(PROBE_S)


def report_of(epsilon: float) -> dict[str, Any]:
    """A privacy report as a site's training writes it (the figures of a DP run that spent ``epsilon``)."""
    return {
        "epsilon": epsilon,
        "epsilon_rdp": epsilon * 1.1,
        "delta": 1e-5,
        "accountant": "prv",
        "noise_multiplier": 0.9,
        "sample_rate": 0.03,
        "steps": 100,
        "n_pairs": 1000,
        "data_fingerprint": "sha256:" + "ab" * 32,
        "model_sha256": "cd" * 32,
        "family": "dual-encoder",
        "base": "",
        "created": "2026-12-06T00:00:00Z",
    }


def run_agent(config_path: Path, epsilon: float | None = None) -> None:
    """A scoring agent child whose reward model is a stand-in (scores the image width): the real agent code
    decodes and checks every request under its [serve] policy; with ``epsilon`` it sends a privacy report
    signed with its key after each welcome, as `mor client serve` does."""
    from client_agent.agent import Agent
    from client_agent.config import load_client_config
    from client_agent.scoring import ScoringService
    from mor_secure.logs import configure_logging

    class Widths:
        def score(self, images: list, prompts: list, completions: list, batch_size: int) -> list[float]:
            return [float(image.size[0]) for image in images]

    configure_logging("INFO", json_lines=True)
    from client_agent.scoring import signed_report

    config = load_client_config(config_path)
    agent = Agent(config, worker_id="bench")
    report = signed_report(config, report_of(epsilon)) if epsilon is not None else None
    agent.serve_scores(ScoringService(Widths(), "stand-in", config.serve), report)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    agent.run()


def memory(pid: int) -> dict[str, int]:
    """Resident and peak resident memory of ``pid`` in kB (from /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields["rss_kb" if key == "VmRSS" else "hwm_kb"] = int(value.split()[0])
    return fields


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the federation under attack


@dataclass
class Row:
    """One attack: what was sent, what the product did, whether the legitimate sites kept working and
    whether anything was lost; ``held``: the product did what it must (refused the attack, kept serving the
    legitimate sites, lost nothing)."""

    item: str
    attack: str
    outcome: str
    legit: str
    lost: str
    held: bool


class Scene:
    """CA, certificates, configs and processes in ``workdir``; every endpoint on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        from mor_secure.demo.pipeline import free_port

        self.w = workdir
        self.ca, self.logs = workdir / "ca", workdir / "logs"
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.config = workdir / "coordinator.toml"
        self.ledger, self.probe = workdir / "ledger.jsonl", workdir / "probe.jsonl"
        self.coordinator: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}

    def prepare(self) -> None:
        """A CA, a coordinator, allow-listed and other sites, expired and foreign certificates, configs."""
        from mor_secure import pki
        from mor_secure.demo.pipeline import write_toml

        self.logs.mkdir(parents=True, exist_ok=True)
        pki.init_ca(self.ca)
        pki.issue(self.ca, role="coordinator", name="coord")
        for name in (*ALLOWED, "site-out", "site-old", "site-z"):
            pki.issue(self.ca, role="client", name=name)
        expire(self.ca, "site-old")
        pki.init_ca(self.w / "other")
        pki.issue(self.w / "other", role="client", name="site-a")
        write_toml(
            self.config,
            {
                "name": "coord",
                "bind": self.endpoint,
                "tls": self.tls("coord"),
                "clients": {"allow": list(ALLOWED), "heartbeat_s": 0.5, "deadline_s": 3.0},
                "ledger": {"path": str(self.ledger)},
            },
        )

    def tls(self, name: str, ca: Path | None = None) -> dict[str, str]:
        ca = ca or self.ca
        return {
            "ca": str(ca / "ca.pem"),
            "cert": str(ca / f"{name}.pem"),
            "key": str(ca / f"{name}.key"),
            "crl": str(self.ca / "crl.pem"),
        }

    def site_config(self, site: str, endpoint: str | None = None, **serve: Any) -> Path:
        """client.toml of ``site`` dialling ``endpoint`` (default: the coordinator) with short timeouts."""
        from mor_secure.demo.pipeline import write_toml

        folder = self.w / "sites" / f"{site}-{len(list(self.w.glob('sites/*')))}"
        folder.mkdir(parents=True)
        for name in ("ca.pem", "crl.pem"):  # the site's own copies, as the CA operator sent them
            (folder / name).write_bytes((self.ca / name).read_bytes())
        path = folder / "client.toml"
        data = {
            "site": site,
            "tls": {**self.tls(site), "ca": str(folder / "ca.pem"), "crl": str(folder / "crl.pem")},
            "coordinator": {
                "endpoint": endpoint or self.endpoint,
                "name": "coord",
                "heartbeat_s": 0.5,
                "idle_timeout_s": 3.0,
                "connect_timeout_s": 10.0,
                "backoff_max_s": 1.0,
            },
        }
        if serve:
            data["serve"] = serve
        write_toml(path, data)
        return path

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        from mor_secure.demo.stages import child_env

        log = open(self.logs / f"{name}.log", "a", encoding="utf-8")
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            cwd=CHECKOUT,
            start_new_session=True,
        )

    def start(self) -> None:
        """The coordinator process and the two legitimate sites' `mor client serve --health-only` processes."""

        self.coordinator = self.spawn(
            "coordinator", [*SELF, "--as-coordinator", str(self.config), "--probe", str(self.probe)]
        )
        for site in LEGIT:
            self.start_site(site)
        if not self.wait(lambda: set(LEGIT) <= self.answering(), 60):
            raise RuntimeError(f"the legitimate sites did not join: see {self.logs}")

    def start_site(self, site: str) -> subprocess.Popen:
        from mor_secure.demo.stages import mor_command

        self.agents[site] = self.spawn(
            f"agent-{site}",
            mor_command(
                "--log-json",
                "client",
                "serve",
                "--health-only",
                "--config",
                self.site_config(site),
                "--worker-id",
                f"{site}-{len(self.agents)}",
            ),
        )
        return self.agents[site]

    def stop(self) -> None:
        from mor_secure.demo.stages import stop_group

        for proc in [*self.agents.values(), self.coordinator]:
            if proc is not None:
                stop_group(proc)

    # ----- what the coordinator saw -----

    def probes(self, since: float = 0.0) -> list[dict[str, Any]]:
        lines = self.probe.read_text().splitlines() if self.probe.exists() else []
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # the line being written
        return [r for r in rows if r["t"] >= since]

    def last(self) -> dict[str, Any]:
        rows = self.probes()
        return rows[-1] if rows else {}

    def answering(self) -> set[str]:
        return set(self.last().get("answered", {}))

    def sessions(self, site: str) -> set[str]:
        return set(self.last().get("answered", {}).get(site, []))

    @staticmethod
    def wait(predicate: Callable[[], Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return bool(predicate())

    def legit_during(self, start: float, sites: tuple[str, ...] = LEGIT) -> tuple[str, bool]:
        """How many probes since ``start`` (up to one taken after now) every site in ``sites`` answered, and
        whether each kept the one session it had (none dropped or re-established)."""
        now = time.time()
        self.wait(lambda: self.last().get("t", 0.0) > now, 10)
        rows = self.probes(start)
        ok = sum(set(sites) <= set(r["answered"]) for r in rows)
        sessions = {site: {sid for r in rows for sid in r["answered"].get(site, [])} for site in sites}
        kept = all(len(ids) == 1 for ids in sessions.values())
        return (
            f"{ok}/{len(rows)} probes answered by {', '.join(sites)}; "
            + ("each kept its session" if kept else "a session was re-established"),
            bool(rows) and ok == len(rows) and kept,
        )

    def ledger_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.ledger.read_bytes().split(b"\n")[:-1]] if self.ledger.exists() else []


def expire(ca_dir: Path, name: str) -> None:
    """Replace NAME.pem by a copy (same key) that expired yesterday, signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from mor_secure import pki
    from mor_secure.pki.keys import load_private_key, signing_hash

    cert, ca_key = pki.load_cert(ca_dir / f"{name}.pem"), load_private_key(ca_dir / "ca.key")
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    (ca_dir / f"{name}.pem").write_bytes(
        builder.sign(ca_key, signing_hash(ca_key)).public_bytes(serialization.Encoding.PEM)
    )


def client_context(scene: Scene, name: str | None, *, ca: Path | None = None, tls12: bool = False):
    """A client SSL context built by hand, so it can carry what the product would refuse to load."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(scene.ca / "ca.pem"))
    if name is not None:
        folder = ca or scene.ca
        ctx.load_cert_chain(str(folder / f"{name}.pem"), str(folder / f"{name}.key"))
    return ctx


def server_context(scene: Scene):
    from mor_secure import pki

    return lambda: pki.ssl_context(
        "coordinator",
        ca=scene.ca / "ca.pem",
        cert=scene.ca / "coord.pem",
        key=scene.ca / "coord.key",
        crl=scene.ca / "crl.pem",
    )


# --------------------------------------------------------------------------- scenarios


def rejection_matrix(scene: Scene) -> list[Row]:
    """Each bad peer dials from its own loopback address; the coordinator must refuse it with its reason."""
    from mor_secure import pki
    from mor_secure.transport import ClientOptions, TLSClient

    pki.revoke(scene.ca, "site-x")
    scene.wait(lambda: scene.last().get("crl_number", 0) >= 2, 10)
    cases = [
        ("other CA", "site-a", {"ca": scene.w / "other"}),
        ("expired", "site-old", {}),
        ("wrong role", "coord", {}),
        ("not on the allow-list", "site-out", {}),
        ("revoked", "site-x", {}),
        ("no certificate", None, {}),
        ("TLS 1.2", "site-a", {"tls12": True}),
    ]
    rows = []
    for i, (case, name, kw) in enumerate(cases):
        source = f"127.0.1.{i + 1}"
        start = time.time()
        target = f"tcp://{source}:0;{scene.endpoint.removeprefix('tcp://')}"
        client = TLSClient(
            target,
            lambda n=name, k=kw: client_context(scene, n, **k),
            coordinators=["coord"],
            worker_id="bad",
            agent_version="t",
            options=ClientOptions(connect_timeout_s=3.0, backoff_initial_s=0.2, backoff_max_s=0.5),
        )
        client.start()
        scene.wait(lambda c=client: c.error is not None or c.connected.is_set() or c.last_error, 10)
        client.stop()
        scene.wait(lambda src=source, who=name, t0=start: refusal_of(scene, src, who, t0), 5)
        refused = refusal_of(scene, source, name, start)
        said = str(client.error or client.last_error or "?").replace(f" at {target}", "").replace(f" with {target}", "")
        verdict = "stops (a verified refusal): " if client.error is not None else "retries with back-off: "
        agent_side = verdict + said[:100]
        legit, ok = scene.legit_during(start)
        rows.append(
            Row(
                "matrix",
                case,
                f"coordinator: {refused or 'no refusal recorded'}; agent {agent_side}",
                legit,
                "-",
                bool(refused) and not client.session_id and ok,
            )
        )
    start = time.time()
    plaintext_flood(scene.endpoint, 1, source="127.0.1.99")
    scene.wait(lambda: refusal_of(scene, "127.0.1.99", None, start), 5)
    legit, ok = scene.legit_during(start)
    refused = refusal_of(scene, "127.0.1.99", None, start)
    rows.append(
        Row(
            "matrix",
            "plaintext ZeroMQ peer",
            f"coordinator: {refused or 'no refusal recorded'}",
            legit,
            "-",
            bool(refused) and ok,
        )
    )
    return rows


def refusal_of(scene: Scene, address: str, name: str | None, since: float) -> str:
    """The reason of a ledger refusal of ``address`` (or of ``name``'s certificate) recorded after ``since``."""
    for entry in scene.ledger_entries():
        if entry["kind"] == "refusal" and dt.datetime.fromisoformat(entry["ts"]).timestamp() >= since - 1:
            if entry["body"]["peer"] in (address, f"mor://client/{name}", f"mor://coordinator/{name}"):
                return entry["body"]["reason"][:110]
    return ""


def half_open_flood(scene: Scene, addresses: tuple[str, ...], label: str) -> Row:
    """The review's attack (64 ClientHellos per address, refreshed every 2 s) while site-b restarts and rejoins."""
    from mor_secure.demo.stages import stop_group

    flood = HalfOpenFlood(scene.endpoint, addresses, per_address=64, refresh_s=2.0, duration_s=60)
    start, before = time.time(), scene.last()
    flood.start()
    try:
        time.sleep(4)  # the flood is at full strength
        stop_group(scene.agents["site-b"])
        time.sleep(0.5)
        dialled = time.time()
        scene.start_site("site-b")
        joined = scene.wait(lambda: "site-b" in scene.answering(), 25)
        join_s = time.time() - dialled
        time.sleep(max(2.0, 25.0 - (time.time() - start)))  # the review's attack lasted 25 s
    finally:
        flood.stop()
    after = scene.last()
    legit, ok = scene.legit_during(start, ("site-a",))
    return Row(
        "1",
        f"half-open flood {label}: {flood.sent} ClientHellos, 64 per address kept open for {time.time() - start:.0f} s",
        f"{after['evicted'] - before['evicted']} half-open sessions evicted, "
        f"{after['refused_early'] - before['refused_early']} refused before TLS (rate); "
        "site-b restarted mid-flood "
        + (f"rejoined {join_s:.1f} s after dialling (connect timeout 10 s)" if joined else "did NOT rejoin"),
        legit,
        "-",
        joined and join_s < 10 and ok,
    )


def ledger_flood(scene: Scene) -> Row:
    before, size = len(scene.ledger_entries()), scene.ledger.stat().st_size
    start = time.time()
    plaintext_flood(scene.endpoint, 2000, source="127.0.0.5")
    scene.wait(lambda: scene.last()["refused_early"] >= 2000, 30)
    sent_s = time.time() - start
    time.sleep(1)
    entries = scene.ledger_entries()[before:]
    kinds = {k: sum(e["kind"] == k for e in entries) for k in ("refusal", "refusal_summary", "checkpoint")}
    legit, ok = scene.legit_during(start)
    grown = scene.ledger.stat().st_size - size
    return Row(
        "2",
        f"2,000 plaintext connections from one address in {sent_s:.1f} s",
        f"{kinds['refusal']} refusal entries in full (the window's quota of 20 was mostly spent by the floods "
        f"before), the rest counted into the window's one summary entry (written when the 60 s window ends "
        f"or at shutdown); ledger grew {grown / 1024:.1f} kB",
        legit,
        "-",
        kinds["refusal"] <= 20 and grown < 64 * 1024 and ok,
    )


def memory_bomb_to_coordinator(scene: Scene) -> Row:
    """An allow-listed site sends 15 MB of nested empty maps after its welcome."""
    start = time.time()
    hwm = scene.last()["hwm_kb"]
    peer = RawPeer(scene.endpoint, client_context(scene, "site-m"), source="127.0.0.6")
    welcomed = type(peer.replies[0]).__name__
    bomb = nested_maps(15)
    peer.send(bomb)
    dropped = scene.wait(lambda: "site-m" in refusal_by_name(scene, start), 20)
    peer.close()
    time.sleep(1)
    after = scene.last()["hwm_kb"]
    legit, ok = scene.legit_during(start)
    return Row(
        "3",
        f"allow-listed site-m ({welcomed}) sends {len(bomb) / 1e6:.1f} MB of nested empty maps",
        f"session dropped: {refusal_by_name(scene, start).get('site-m', 'no')[:90]}; coordinator peak RSS "
        f"{hwm / 1024:.0f} -> {after / 1024:.0f} MB",
        legit,
        "-",
        dropped and after - hwm < 200 * 1024 and ok,
    )


def refusal_by_name(scene: Scene, since: float) -> dict[str, str]:
    out = {}
    for entry in scene.ledger_entries():
        if entry["kind"] == "refusal" and dt.datetime.fromisoformat(entry["ts"]).timestamp() >= since - 1:
            out[entry["body"]["peer"].removeprefix("mor://client/")] = entry["body"]["reason"]
    return out


class HostileSide:
    """A hostile coordinator (real coordinator certificate) on its own port, and an agent process dialling it."""

    def __init__(self, scene: Scene, welcome_heartbeat_s: float | None = None, **serve: Any) -> None:
        from mor_secure.demo.pipeline import free_port

        self.scene = scene
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.server = hostile_coordinator(
            self.endpoint, server_context(scene), allow=["site-h"], welcome_heartbeat_s=welcome_heartbeat_s
        )
        self.config = scene.site_config("site-h", self.endpoint, **serve)
        self.agent: subprocess.Popen | None = None

    def start_agent(self) -> subprocess.Popen:
        self.agent = self.scene.spawn("agent-hostile", [*SELF, "--as-agent", str(self.config)])
        return self.agent

    def close(self) -> None:
        from mor_secure.demo.stages import stop_group

        if self.agent is not None:
            stop_group(self.agent)
        self.server.stop()


def hostile_coordinator_rows(scene: Scene) -> list[Row]:
    """What a hostile coordinator can send an agent: a memory bomb, 100 large images, a zero heartbeat."""
    from mor_secure import pki
    from mor_secure.protocol import ScoreRequest, encode
    from mor_secure.transport import TLSServer

    pki.issue(scene.ca, role="client", name="site-h")
    rows = []
    side = HostileSide(scene, max_batch=1)
    side.server.start()
    try:
        agent = side.start_agent()
        if not scene.wait(lambda: "site-h" in side.server.sites(), 30):
            raise RuntimeError("the agent did not join the hostile coordinator")
        time.sleep(1)
        before = memory(agent.pid)["hwm_kb"]
        bomb = nested_maps(15)
        side.server.send_raw("site-h", bomb)
        scene.wait(lambda: "site-h" not in side.server.sites(), 10)
        rejoined = scene.wait(lambda: "site-h" in side.server.sites(), 30)
        after = memory(agent.pid)["hwm_kb"]
        rows.append(
            Row(
                "3",
                f"a hostile coordinator sends the agent {len(bomb) / 1e6:.1f} MB of nested empty maps",
                f"agent dropped the session and redialled ({'rejoined' if rejoined else 'did not rejoin'}); "
                f"agent peak RSS {before / 1024:.0f} -> {after / 1024:.0f} MB; decoded once",
                "-",
                "agent alive" if agent.poll() is None else "agent DIED",
                agent.poll() is None and after - before < 200 * 1024 and rejoined,
            )
        )

        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (2048, 2048)).save(buffer, format="PNG")
        big = buffer.getvalue()
        request = ScoreRequest(request_id="big", images=[big] * 100, prompts=["q"], completions=["a"], image_index=[0])
        (session,) = [p.session_id for p in side.server.peers()][:1]
        start_hwm = memory(agent.pid)["hwm_kb"]
        reply = side.server.request(session, request).result(30)
        end_hwm = memory(agent.pid)["hwm_kb"]
        rows.append(
            Row(
                "3",
                f"score_request with max_batch = 1 carrying 100 PNGs of 2048^2 "
                f"({len(encode(request)) / 1e6:.1f} MB on the wire)",
                f"agent replied {type(reply).__name__} {getattr(reply, 'code', '')}: "
                f"{getattr(reply, 'message', '')[:70]}; agent peak RSS {start_hwm / 1024:.0f} -> "
                f"{end_hwm / 1024:.0f} MB",
                "-",
                "agent alive" if agent.poll() is None else "agent DIED",
                getattr(reply, "code", "") == "batch_too_large" and end_hwm - start_hwm < 100 * 1024,
            )
        )
    finally:
        side.close()

    side = HostileSide(scene, welcome_heartbeat_s=0.0)
    side.server.start()
    try:
        agent = side.start_agent()
        time.sleep(3)
        cpu0 = cpu_s(agent.pid)
        time.sleep(5)
        busy = cpu_s(agent.pid) - cpu0
        log = (scene.logs / "agent-hostile.log").read_text()
        rows.append(
            Row(
                "10",
                "a coordinator welcomes with heartbeat_s = 0",
                (
                    "agent refuses the welcome (heartbeat_s outside [0.05, 3600])"
                    if "outside" in log
                    else "agent ACCEPTED the welcome"
                )
                + f" and retries with back-off; {busy:.2f} CPU s in 5 s",
                "-",
                "agent alive" if agent.poll() is None else "agent DIED",
                "outside" in log and busy < 2.5 and agent.poll() is None,
            )
        )
    finally:
        side.close()

    from mor_secure.demo.pipeline import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    fake = FakeCoordinator(endpoint)
    fake.start()
    config = scene.site_config("site-h", endpoint)
    agent = scene.spawn("agent-garbage", [*SELF, "--as-agent", str(config)])
    try:
        scene.wait(lambda: fake.answered >= 4, 30)
        answered = fake.answered
        fake.stop()
        with TLSServer(endpoint, server_context(scene), name="coord", allow=["site-h"]) as real:
            joined = scene.wait(lambda: "site-h" in real.sites(), 30)
        rows.append(
            Row(
                "9",
                f"an impostor answers {answered} connection attempts with a plaintext alert or garbage, "
                "then the real coordinator appears",
                "agent retried with back-off and " + ("joined the real coordinator" if joined else "did NOT join"),
                "-",
                "agent alive" if agent.poll() is None else "agent DIED",
                joined,
            )
        )
    finally:
        from mor_secure.demo.stages import stop_group

        stop_group(agent)
        fake.stop()
    return rows


def crl_rows(scene: Scene) -> list[Row]:
    """A revoked site, then the coordinator's CRL replaced by an older one; then a half-written CRL."""
    from mor_secure import pki
    from mor_secure.demo.stages import stop_group

    crl = scene.ca / "crl.pem"
    start = time.time()
    scene.start_site("site-r")
    scene.wait(lambda: "site-r" in scene.answering(), 30)
    older, number = crl.read_bytes(), scene.last()["crl_number"]
    pki.revoke(scene.ca, "site-r")
    cut = scene.wait(lambda: "site-r" not in scene.answering() and scene.last()["crl_number"] == number + 1, 15)
    stop_group(scene.agents.pop("site-r"))
    current = crl.read_bytes()
    crl.write_bytes(older)
    refused = scene.wait(lambda: scene.last()["crl_failures"] >= 1, 10)
    again = scene.start_site("site-r")
    scene.wait(lambda: again.poll() is not None, 20)
    back_in = "site-r" in scene.answering()
    kept = scene.last()["crl_number"]
    crl.write_bytes(current)
    legit, ok = scene.legit_during(start)
    rows = [
        Row(
            "7",
            f"site-r revoked (CRL {number + 1}), then the coordinator's crl.pem replaced by the older, still "
            f"fresh CRL {number}",
            f"older CRL {'refused' if refused else 'ACCEPTED'}, CRL {kept} kept in force; site-r redials and is "
            + ("LET BACK IN" if back_in else f"refused again (agent exit {again.poll()})"),
            legit,
            "-",
            cut and refused and not back_in and kept == number + 1 and ok,
        )
    ]

    start = time.time()
    failures = scene.last()["crl_failures"]
    crl.write_bytes(b"-----BEGIN X509 CRL-----\ntruncated")
    stamp = os.stat(crl).st_mtime_ns
    retried = scene.wait(lambda: scene.last()["crl_failures"] >= failures + 2, 10)
    pki.write_crl(scene.ca)
    os.utime(crl, ns=(stamp, stamp))  # the repaired file even keeps the broken one's mtime
    loaded = scene.wait(lambda: scene.last()["crl_number"] == number + 2, 10)
    legit, ok = scene.legit_during(start)
    rows.append(
        Row(
            "7",
            "a half-written crl.pem, then the good newer CRL with the same mtime",
            f"load failed and was retried {scene.last()['crl_failures'] - failures} times; the good CRL "
            + ("was loaded" if loaded else "was NOT loaded"),
            legit,
            "-",
            retried and loaded and ok,
        )
    )
    return rows


def reissue_row(scene: Scene) -> Row:
    from mor_secure.demo.stages import child_env, mor_command

    def issue(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            mor_command(
                "certs",
                "issue",
                "--ca-dir",
                scene.ca,
                "--role",
                "client",
                "--name",
                "site-z",
                "--out-dir",
                scene.w / f"reissue{len(extra)}",
                *extra,
            ),
            capture_output=True,
            text=True,
            env=child_env(),
        )

    silent = issue()
    replaced = issue("--replace")
    from mor_secure import pki

    statuses = [r["status"] for r in pki.certificates(scene.ca) if r["name"] == "site-z"]
    return Row(
        "8",
        "`mor certs issue` for site-z, which has a live certificate, on a new key",
        f"refused (exit {silent.returncode}: {silent.stderr.strip().splitlines()[-1][7:80]}...); with "
        f"--replace: exit {replaced.returncode}, certificates now {', '.join(statuses)}",
        "-",
        "-",
        silent.returncode == 1 and replaced.returncode == 0 and statuses == ["revoked", "live"],
    )


def peer_value_rows(scene: Scene) -> list[Row]:
    import msgpack

    from mor_secure import protocol

    rows = []
    start = time.time()
    peer = RawPeer(
        scene.endpoint,
        client_context(scene, "site-m"),
        protocol.encode(protocol.Hello(agent_version="t", worker_id="w", protocol=2)),
        source="127.0.0.7",
    )
    reply = peer.replies[0]
    peer.close()
    legit, ok = scene.legit_during(start)
    rows.append(
        Row(
            "10",
            "an allow-listed agent says Hello with protocol version 2",
            f"{type(reply).__name__}: {getattr(reply, 'reason', '')[:100]}",
            legit,
            "-",
            isinstance(reply, protocol.Refused) and "protocol version 2" in reply.reason and ok,
        )
    )
    start = time.time()
    forged = msgpack.packb(
        {"v": 1, "t": "hello", "b": {"agent_version": "t", "worker_id": "w1 level=ERROR\nforged line"}}
    )
    peer = RawPeer(scene.endpoint, client_context(scene, "site-m"), forged, source="127.0.0.8")
    reply = peer.replies[0]
    peer.close()
    legit, ok = scene.legit_during(start)
    rows.append(
        Row(
            "10",
            "a worker id carrying a newline and key=value text",
            f"{type(reply).__name__}: {getattr(reply, 'reason', '')[:100]}",
            legit,
            "-",
            isinstance(reply, protocol.Refused) and "worker_id" in reply.reason and ok,
        )
    )
    return rows


def reports_row(scene: Scene) -> Row:
    """site-e reports epsilon 7.5, then (a later session) 2.0, through the real agent and coordinator."""
    from mor_secure.demo.stages import child_env, mor_command, stop_group

    config = scene.site_config("site-e")
    for n, epsilon in enumerate((7.5, 2.0), 1):
        agent = scene.spawn(f"agent-site-e-{n}", [*SELF, "--as-agent", str(config), "--report-epsilon", str(epsilon)])
        scene.wait(
            lambda n=n: (
                sum(e["kind"] == "privacy_report" and e["body"]["site"] == "site-e" for e in scene.ledger_entries())
                >= n
            ),
            30,
        )
        stop_group(agent)
    shown = subprocess.run(
        mor_command("ledger", "show", scene.ledger, "--json"), capture_output=True, text=True, env=child_env()
    )
    epsilon = json.loads(shown.stdout)["sites"]["site-e"]["epsilon"] if shown.returncode == 0 else None
    reports = sum(e["kind"] == "privacy_report" and e["body"]["site"] == "site-e" for e in scene.ledger_entries())
    return Row(
        "6",
        "site-e reports epsilon 7.5, then 2.0 in a later session (signed reports, real processes)",
        f"{reports} reports in the ledger; `mor ledger show` says epsilon {epsilon} (the largest; later "
        "entries never lower it)",
        "-",
        "-",
        reports == 2 and epsilon == 7.5,
    )


def tamper_rows(scene: Scene) -> list[Row]:
    """Edits of a copy of the coordinator's signed ledger (after it stopped), each checked by `mor ledger verify`."""
    from mor_secure.demo.stages import child_env, mor_command
    from mor_secure.ledger import GENESIS, canonical_json, entry_hash

    lines = scene.ledger.read_bytes().split(b"\n")[:-1]
    entries = [json.loads(line) for line in lines]
    head = (scene.ledger.parent / (scene.ledger.name + ".head")).read_bytes()

    def rechain(kept: list[dict]) -> bytes:
        prev, out = GENESIS, []
        for seq, e in enumerate(kept, 1):
            e = {**e, "seq": seq, "prev_hash": prev}
            e["hash"] = prev = entry_hash(seq, e["ts"], e["kind"], e["body"], prev)
            out.append(canonical_json(e) + b"\n")
        return b"".join(out)

    middle = next(i for i, e in enumerate(entries) if e["kind"] == "refusal")
    high = next(i for i, e in enumerate(entries) if e["kind"] == "privacy_report" and e["body"]["epsilon"] == 7.5)
    rewritten = [dict(e) for e in entries]
    rewritten[middle] = {**entries[middle], "body": {**entries[middle]["body"], "reason": "nothing happened"}}
    last_cp = max(i for i, e in enumerate(entries) if e["kind"] == "checkpoint")
    whole = b"".join(line + b"\n" for line in lines)
    cases = [
        ("an untouched copy", whole, True, True),
        ("a torn tail without newline (a crash)", whole + lines[-1][:40], True, True),
        (
            "site-e's epsilon 7.5 report deleted, chain recomputed (the review's attack: show then said 2.0)",
            rechain(entries[:high] + entries[high + 1 :]),
            True,
            False,
        ),
        ("a middle entry deleted, chain recomputed", rechain(entries[:middle] + entries[middle + 1 :]), True, False),
        ("an entry rewritten, chain recomputed", rechain(rewritten), True, False),
        ("a newline-terminated garbage last line", whole + b"\x00garbage\n", True, False),
        ("cut back past the last checkpoint", b"".join(line + b"\n" for line in lines[:last_cp]), True, False),
        (
            "every checkpoint and the signed head removed, chain recomputed",
            rechain([e for e in entries if e["kind"] != "checkpoint"]),
            False,
            False,
        ),
    ]
    rows = []
    for i, (label, data, keep_head, should_pass) in enumerate(cases):
        path = scene.w / "tamper" / f"case{i}" / "ledger.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if keep_head:
            (path.parent / "ledger.jsonl.head").write_bytes(head)
        result = subprocess.run(
            mor_command("ledger", "verify", path, "--ca", scene.ca / "ca.pem"),
            capture_output=True,
            text=True,
            env=child_env(),
        )
        said = (result.stdout + result.stderr).strip().splitlines()
        said = said[0] if said else ""
        said = said.replace("Error: ", "").replace(f"ledger {path} is NOT intact: ", "NOT intact: ")
        rows.append(
            Row(
                "6",
                f"ledger: {label}",
                f"`mor ledger verify` exit {result.returncode}: {said[:140]}",
                "-",
                "-",
                (result.returncode == 0) == should_pass,
            )
        )
    return rows


# --------------------------------------------------------------------------- report


def report(rows: list[Row], scene: Scene, summary: dict[str, Any], machine: list[str], command: str) -> list[str]:
    held = sum(r.held for r in rows)
    lines = [
        "# Abuse: hostile inputs against the running federation",
        "",
        f"Command: `{command}`",
        "",
        "Machine (all processes on this one machine, 127.0.0.1):",
        *machine,
        "- 2-core CPU shared with other engineers' experiments: durations below include that contention",
        "",
        f"**{held} of {len(rows)} attacks held** (each refused, the legitimate sites kept working, nothing lost). "
        "Throughout, a coordinator "
        "process (the product's Federation: TLS server, signed ledger, refusal throttle) and two allow-listed "
        "`mor client serve --health-only` processes ran; the coordinator probed both sites every "
        f"{PROBE_S:g} s and the *legitimate sites* column counts the probes both answered during that attack "
        "and whether each kept its session. *Lost* is about the attacked party itself (alive, data intact). "
        "Hostile agents dial from their own loopback addresses (127.0.0.2 ...), as distinct hosts would.",
        "",
        *markdown_table(
            ["item", "attack", "outcome", "legitimate sites", "lost", "held"],
            [
                [r.item, cell(r.attack), cell(r.outcome), cell(r.legit), cell(r.lost), "yes" if r.held else "**NO**"]
                for r in rows
            ],
        ),
        "",
        "## After the run",
        "",
        f"- Probes: {summary['probes']} in {summary['duration_s']:.0f} s; site-a answered {summary['site_a']} "
        f"and kept one session throughout: {summary['site_a_one_session']}; both sites answered "
        f"{summary['both']} (site-b is stopped and restarted on purpose in the two half-open floods).",
        f"- Coordinator peak RSS {summary['hwm_mb']:.0f} MB; refused before any TLS work: "
        f"{summary['refused_early']}; half-open sessions evicted: {summary['evicted']}.",
        f"- Ledger: {summary['entries']} entries ({summary['ledger_kb']:.1f} kB) of which "
        f"{summary['kinds']}; the summaries count {summary['summarised']} refusals not written one by one; "
        f"`mor ledger verify`: {summary['verify']}.",
        "",
        "The site's privacy budget, its reservations and the data checks are not attacked here (their "
        "tests: test_budget_hardening.py, test_real_data.py). Timings are single runs on a shared machine; "
        "the tests keep "
        "each property without asserting any timing (tests/test_transport_abuse.py, test_ledger_flood.py, "
        "test_ledger_signing.py, test_scoring_limits.py, test_protocol.py, test_pki.py).",
    ]
    return lines


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the run's files here (default: a temp dir).")
    parser.add_argument("--as-coordinator", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--as-agent", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report-epsilon", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_coordinator:
        run_coordinator(args.as_coordinator, args.probe)
        return
    if args.as_agent:
        run_agent(args.as_agent, args.report_epsilon)
        return
    command = "mor bench abuse" + (f" --out {args.out}" if str(args.out) != "benchmarks/results" else "")
    machine = machine_lines(["pyzmq", "cryptography", "msgpack"])
    with tempfile.TemporaryDirectory(prefix="mor-abuse-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        scene = Scene(workdir)
        scene.prepare()
        rows: list[Row] = []
        try:
            scene.start()
            t0 = time.time()
            steps: list[Callable[[], Any]] = [
                lambda: rows.extend(rejection_matrix(scene)),
                lambda: rows.append(half_open_flood(scene, ("127.0.0.2",), "from one address")),
                lambda: rows.append(
                    half_open_flood(scene, ("127.0.0.2", "127.0.0.3", "127.0.0.4"), "from three addresses")
                ),
                lambda: rows.append(ledger_flood(scene)),
                lambda: rows.append(memory_bomb_to_coordinator(scene)),
                lambda: rows.extend(hostile_coordinator_rows(scene)),
                lambda: rows.extend(crl_rows(scene)),
                lambda: rows.append(reissue_row(scene)),
                lambda: rows.extend(peer_value_rows(scene)),
                lambda: rows.append(reports_row(scene)),
            ]
            for step in steps:
                done = len(rows)
                step()
                for row in rows[done:]:
                    print(
                        f"[{time.time() - t0:5.0f} s] {row.item} {row.attack[:70]}: "
                        f"{'held' if row.held else 'NOT HELD: ' + row.outcome}",
                        flush=True,
                    )
            probes = scene.probes(t0)
            site_a = {s for r in probes for s in r["answered"].get("site-a", [])}
        finally:
            scene.stop()
        rows.extend(tamper_rows(scene))
        from mor_secure.demo.stages import child_env, mor_command

        verified = subprocess.run(
            mor_command("ledger", "verify", scene.ledger, "--ca", scene.ca / "ca.pem"),
            capture_output=True,
            text=True,
            env=child_env(),
        )
        entries = scene.ledger_entries()
        kinds: dict[str, int] = {}
        for e in entries:
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        summary = {
            "probes": len(probes),
            "duration_s": probes[-1]["t"] - probes[0]["t"] if probes else 0.0,
            "both": sum(set(LEGIT) <= set(r["answered"]) for r in probes),
            "site_a": sum("site-a" in r["answered"] for r in probes),
            "summarised": sum(e["body"]["refused"] for e in scene.ledger_entries() if e["kind"] == "refusal_summary"),
            "site_a_one_session": "yes" if len(site_a) == 1 else f"no ({len(site_a)} sessions)",
            "hwm_mb": max((r["hwm_kb"] for r in probes), default=0) / 1024,
            "refused_early": probes[-1]["refused_early"] if probes else 0,
            "evicted": probes[-1]["evicted"] if probes else 0,
            "entries": len(entries),
            "ledger_kb": scene.ledger.stat().st_size / 1024,
            "kinds": ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())),
            "verify": (verified.stdout or verified.stderr).strip().splitlines()[0],
        }
        lines = report(rows, scene, summary, machine, command)
    write_markdown(args.out / "abuse.md", lines)
    print("\n".join(lines))
    if not all(r.held for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

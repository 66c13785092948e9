"""Fault injection: a federated GRPO run with real agents over mutual TLS survives five faults.

During one `mor coordinator grpo` run (three `mor client serve` agents with tiny DP reward models,
mutual TLS on 127.0.0.1) the scenario kills an agent with SIGKILL and restarts it, stalls one past
the deadline (SIGSTOP, SIGCONT), revokes a site's certificate (`mor certs revoke`, new CRL),
floods the coordinator's port with garbage frames, and kills the coordinator and resumes it
(`--resume`). Each fault is injected once the previous one's effect is seen in the ledger or the
coordinator's log; afterwards the run must have finished, the ledger verify, each site's epsilon
match its own privacy report and the log name every fault. The test runs the same scenario.

    python -m benchmarks.fault_injection --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import machine_and_command, machine_lines, write_markdown
from mor_secure.demo.stages import signal_group, stop_group
from mor_secure.events import (
    AGENT_ADMITTED,
    AGENT_LEFT,
    CRL_RELOADED,
    GRPO_DONE,
    GRPO_START,
    PEER_REFUSED,
    SCORING_FAILURES,
    SITE_PUT_ASIDE,
)
from mor_secure.reporting import markdown_table

SITES = ("client-0", "client-1", "client-2")
KILLED, STALLED, REVOKED = SITES
COORDINATOR = "coord"


class ScenarioError(RuntimeError):
    """An expected effect did not show up in time; the message says which and where to look."""


@dataclass(frozen=True)
class Sizes:
    """How long and how big the run is, and the federation's timeouts."""

    steps: int = 150
    batch_size: int = 16
    save_steps: int = 5
    max_completion_length: int = 6
    deadline_s: float = 3.0
    cooldown_s: float = 2.0
    wait_s: float = 5.0
    site_pairs: int = 48
    timeout_s: float = 120.0


@dataclass(frozen=True)
class Inputs:
    """What the run trains on: the benchmark world, the policy to train and the GRPO prompts."""

    world: Path
    policy: Path
    public: Path


def build_inputs(folder: Path) -> Inputs:
    """A small world (3 clients), a tiny Qwen2-VL policy and 96 public prompts, built in ``folder`` once."""
    from mor_secure.data.public import generate_public_sft
    from mor_secure.data.world import generate_world
    from mor_secure.models.zoo import build_tiny_vlm

    inputs = Inputs(folder / "world", folder / "qwen2-vl", folder / "public")
    if not inputs.world.is_dir():
        generate_world(inputs.world, seed=0, clients=len(SITES), pairs=240)
    if not inputs.policy.is_dir():
        build_tiny_vlm("qwen2-vl", inputs.policy, seed=0)
    if not inputs.public.is_dir():
        generate_public_sft(inputs.public, seed=0, n=96)
    return inputs


# --------------------------------------------------------------------------- reading what happened


def log_events(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The JSON log records (`mor --log-json`) of the files in ``paths``, in order, each with its ``run``."""
    events = []
    for run, path in enumerate(paths):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            start = line.find('{"ts"')  # the trainer's progress bar may share the line
            if start >= 0:
                try:
                    events.append({**json.loads(line[start:]), "run": run})
                except ValueError:
                    continue  # a line being written
    return events


def event_time(event: dict[str, Any]) -> float:
    """A log record's UTC timestamp (``...T12:00:00.123Z``) as seconds since the epoch."""
    return dt.datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def records(events: Sequence[dict[str, Any]], msg: str, after: float = 0.0, **fields: object) -> list[dict[str, Any]]:
    """Log records with message ``msg`` logged at or after ``after`` whose ``fields`` contain the given text."""
    return [
        e
        for e in events
        if e.get("msg") == msg
        and event_time(e) >= after - 0.01
        and all(str(v) in str(e.get(k, "")) for k, v in fields.items())
    ]


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete ledger line as a dict, with ``t`` (seconds since the epoch)."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        rows.append({**row, "t": dt.datetime.fromisoformat(row["ts"]).timestamp()})
    return rows


_STEP = re.compile(r"(\d+)/(\d+) \[")


def progress_step(path: Path) -> int:
    """The last global step the trainer's progress bar shows in a coordinator log (0 before the first)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    found = _STEP.findall(text[-4000:])
    return int(found[-1][0]) if found else 0


# --------------------------------------------------------------------------- the federation under test


class Scene:
    """The federation in ``workdir``: a CA, three sites with DP reward models, their agents (`mor client
    serve` processes), the coordinator's `mor coordinator grpo` process and every log, all on 127.0.0.1."""

    def __init__(self, workdir: Path, inputs: Inputs, sizes: Sizes) -> None:
        from mor_secure.demo.pipeline import free_port

        self.w, self.inputs, self.sizes = workdir.resolve(), inputs, sizes
        self.ca, self.logs = self.w / "ca", self.w / "logs"
        self.coordinator_toml = self.w / "coordinator" / "coordinator.toml"
        self.ledger = self.w / "coordinator" / "ledger.jsonl"
        self.grpo_out = self.w / "grpo"
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.agents: dict[str, subprocess.Popen] = {}
        self.agent_logs: dict[str, Path] = {}
        self.coordinators: list[subprocess.Popen] = []
        self.coordinator_logs: list[Path] = []
        self.t0 = time.time()

    # ----- set-up -----

    def prepare(self) -> None:
        """CA and certificates, each site's config and DP reward model (eps 2 / 4 / 8), coordinator.toml."""
        from client_agent.config import load_client_config
        from client_agent.train import train_reward_model
        from mor_secure import pki

        self.logs.mkdir(parents=True, exist_ok=True)
        pki.init_ca(self.ca)
        pki.issue(self.ca, role="coordinator", name=COORDINATOR)
        for site, epsilon in zip(SITES, (2.0, 4.0, 8.0)):
            pki.issue(self.ca, role="client", name=site)
            self._write_site_config(site, epsilon)
            train_reward_model(load_client_config(self.site_config(site)), progress=False, new_ledger=True)
        self._write_coordinator_config()

    def _tls(self, name: str, trust: Path) -> dict[str, str]:
        return {
            "ca": str(trust / "ca.pem"),
            "cert": str(self.ca / f"{name}.pem"),
            "key": str(self.ca / f"{name}.key"),
            "crl": str(trust / "crl.pem"),
        }

    def site_config(self, site: str) -> Path:
        """The site's client.toml."""
        return self.w / "sites" / site / "client.toml"

    def report_path(self, site: str) -> Path:
        """The privacy report the site's training wrote beside its model."""
        return self.w / "sites" / site / "reward-model" / "privacy_report.json"

    def _write_site_config(self, site: str, epsilon: float) -> None:
        from mor_secure.demo.pipeline import write_toml

        folder = self.site_config(site).parent
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("ca.pem", "crl.pem"):  # the site's own copies, as the CA operator sent them at enrolment
            (folder / name).write_bytes((self.ca / name).read_bytes())
        # a short idle timeout: after the coordinator is killed the agents redial the resumed one fast
        write_toml(
            self.site_config(site),
            {
                "site": site,
                "tls": self._tls(site, folder),
                "coordinator": {
                    "endpoint": self.endpoint,
                    "name": COORDINATOR,
                    "heartbeat_s": 0.5,
                    "idle_timeout_s": 2.0,
                    "connect_timeout_s": 3.0,
                    "backoff_max_s": 0.5,
                },
                "data": {"path": str(self.inputs.world / site), "max_pairs": self.sizes.site_pairs},
                "train": {"out": str(folder / "reward-model"), "epochs": 1, "batch_size": 16, "lr": 0.01},
                "privacy": {"target_epsilon": epsilon, "max_epsilon": 100.0, "ledger": str(folder / "budget.jsonl")},
            },
        )

    def _write_coordinator_config(self) -> None:
        from mor_secure.demo.pipeline import write_toml

        s = self.sizes
        self.coordinator_toml.parent.mkdir(parents=True, exist_ok=True)
        write_toml(
            self.coordinator_toml,
            {
                "name": COORDINATOR,
                "bind": self.endpoint,
                "tls": self._tls(COORDINATOR, self.ca),
                "clients": {"allow": list(SITES), "quorum": 2, "deadline_s": s.deadline_s, "heartbeat_s": 0.5},
                "pool": {"cooldown_s": s.cooldown_s},
                "ledger": {"path": str(self.ledger)},
                "router": {
                    "policy": str(self.inputs.policy),
                    "data": str(self.inputs.world / "server" / "router"),
                    "max_pairs": 12,
                    "epochs": 5,
                    "out": str(self.w / "router"),
                    "wait_s": s.timeout_s,
                },
                "grpo": {
                    "policy": str(self.inputs.policy),
                    "data": str(self.inputs.public),
                    "reward": "mor",
                    "out": str(self.grpo_out),
                    "steps": s.steps,
                    "batch_size": s.batch_size,
                    "num_generations": 8,
                    "max_completion_length": s.max_completion_length,
                    "lr": 1e-3,
                    "logging_steps": 1,
                    "save_steps": s.save_steps,
                    "quorum": 2,
                    "wait_s": s.wait_s,
                    "report_to": "none",
                },
            },
        )

    def train_router(self) -> None:
        """The router from the agents' scores (in this process; the agents must be live)."""
        from coordinator.config import load_coordinator_config
        from coordinator.mixture.router_run import run_router

        run_router(load_coordinator_config(self.coordinator_toml))

    # ----- processes -----

    def _spawn(self, log: Path, *args: object) -> subprocess.Popen:
        from mor_secure.demo.stages import child_env, mor_command

        with open(log, "a", encoding="utf-8") as out:
            return subprocess.Popen(
                mor_command("--log-json", *args),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=child_env(),
                start_new_session=True,
            )

    def start_agent(self, site: str, health_only: bool = False) -> subprocess.Popen:
        """Start (or restart) the site's agent (``health_only``: without its model, only to dial); its log is
        logs/agent-SITE-N.log."""
        n = sum(1 for _ in self.logs.glob(f"agent-{site}-*.log"))
        self.agent_logs[site] = self.logs / f"agent-{site}-{n}.log"
        self.agents[site] = self._spawn(
            self.agent_logs[site],
            "client",
            "serve",
            "--config",
            self.site_config(site),
            "--worker-id",
            f"{site}-{n}",
            *(["--health-only"] if health_only else []),
        )
        return self.agents[site]

    def start_coordinator(self, resume: bool = False) -> subprocess.Popen:
        """Start `mor coordinator grpo` (``--resume``: from the last checkpoint); log coordinator-N.log."""
        log = self.logs / f"coordinator-{len(self.coordinators)}.log"
        self.coordinator_logs.append(log)
        self.coordinators.append(
            self._spawn(
                log, "coordinator", "grpo", "--config", self.coordinator_toml, *(["--resume"] if resume else [])
            )
        )
        return self.coordinators[-1]

    @property
    def coordinator(self) -> subprocess.Popen:
        """The coordinator process started last."""
        return self.coordinators[-1]

    def stop(self) -> None:
        """Stop every process this scene started (agents with SIGTERM, so their sessions end cleanly)."""
        for proc in [*self.coordinators, *self.agents.values()]:
            if proc.poll() is None:
                signal_group(proc, signal.SIGCONT)  # a stalled agent cannot handle SIGTERM
            stop_group(proc)

    # ----- what happened -----

    def events(self, run: int | None = None) -> list[dict[str, Any]]:
        """The coordinator's log records (all runs, or run ``run``: 0 first, 1 the resumed one ...)."""
        events = log_events(self.coordinator_logs)
        return events if run is None else [e for e in events if e["run"] == run]

    def ledger_rows(self) -> list[dict[str, Any]]:
        """The ledger's entries so far."""
        return ledger_rows(self.ledger)

    def scored_after(self, site: str, t: float) -> bool:
        """Whether the ledger holds a scoring session of ``site`` that began after ``t``."""
        return any(
            r["kind"] == "scoring_session" and r["body"]["site"] == site and r["t"] - r["body"]["duration_s"] > t
            for r in self.ledger_rows()
        )

    def step(self) -> int:
        """The current run's global step (from its progress bar)."""
        return progress_step(self.coordinator_logs[-1]) if self.coordinator_logs else 0

    def elapsed(self, t: float | None = None) -> float:
        """Seconds since the scene was made (until ``t``)."""
        return (time.time() if t is None else t) - self.t0

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Poll ``predicate`` until it is truthy and return its value; ScenarioError naming ``what`` if not."""
        end = time.monotonic() + (self.sizes.timeout_s if timeout is None else timeout)
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise ScenarioError(f"timed out waiting for {what}; see the logs in {self.logs}")

    def live_sites(self) -> list[str]:
        """Sites whose agent process is running."""
        return [site for site, proc in self.agents.items() if proc.poll() is None]

    def checkpoint(self) -> Path | None:
        """The run's newest complete checkpoint (the one `--resume` continues from)."""
        from coordinator.policy.grpo import last_checkpoint

        return last_checkpoint(self.grpo_out)


# --------------------------------------------------------------------------- the faults


@dataclass
class Outcome:
    """One row of the report: the fault, when it was injected, what the coordinator logged, what happened."""

    fault: str
    step: int
    seconds: float
    logged: str
    outcome: str
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every expectation of the fault held."""
        return not self.problems


class Fault:
    """One fault: ``inject`` does it and waits until its effect is seen; ``check`` judges the outcome from the
    ledger, the coordinator's log and the processes, after the run."""

    name = "fault"

    def __init__(self) -> None:
        self.step, self.at, self.error = 0, 0.0, ""
        self.problems: list[str] = []

    def begin(self, scene: Scene) -> None:
        """Note when the fault starts; refuse to start when the run is already over (too few steps)."""
        self.step, self.at = scene.step(), time.time()
        if scene.coordinator.poll() is not None or self.step >= scene.sizes.steps:
            raise ScenarioError(
                f"the GRPO run ended (step {self.step} of {scene.sizes.steps}) before the fault "
                f"'{self.name}' could be injected: run more steps (--steps)"
            )

    def inject(self, scene: Scene) -> None:
        """Do the fault and wait until its effect is seen."""
        raise NotImplementedError

    def check(self, scene: Scene) -> Outcome:
        """What happened, and whether every expectation held."""
        raise NotImplementedError

    def expect(self, condition: object, problem: str) -> None:
        """Record ``problem`` unless ``condition`` holds."""
        if not condition:
            self.problems.append(problem)

    def outcome(self, scene: Scene, logged: str, outcome: str) -> Outcome:
        """This fault's row."""
        problems = [self.error] if self.error else []
        return Outcome(
            self.name, self.step, round(scene.elapsed(self.at), 1), logged, outcome, problems + self.problems
        )


def _first(found: Sequence[dict[str, Any]], key: str, default: str = "-") -> str:
    return str(found[0].get(key, default)) if found else default


class AgentKill(Fault):
    """SIGKILL one agent mid-run and start it again: it must redial, be admitted and be scored again."""

    name = "agent killed (SIGKILL) and restarted"

    def __init__(self, site: str = KILLED) -> None:
        super().__init__()
        self.site, self.returncode, self.restarted = site, 0, 0.0

    def inject(self, scene: Scene) -> None:
        proc = scene.agents[self.site]
        signal_group(proc, signal.SIGKILL)
        self.returncode = proc.wait(timeout=30)
        self.restarted = time.time()
        scene.start_agent(self.site)
        scene.wait(
            f"the restarted {self.site} agent to be scored", lambda: scene.scored_after(self.site, self.restarted)
        )

    def check(self, scene: Scene) -> Outcome:
        events = scene.events()
        left = records(events, AGENT_LEFT, self.at, site=self.site)
        admitted = records(events, AGENT_ADMITTED, self.restarted, site=self.site)
        self.expect(self.returncode == -signal.SIGKILL, f"the agent exited with {self.returncode}, not SIGKILL")
        self.expect(left, f"no 'agent left' record for {self.site} after the kill")
        self.expect(admitted, f"the restarted {self.site} agent was never admitted")
        self.expect(scene.scored_after(self.site, self.restarted), f"{self.site} was not scored after its restart")
        back = event_time(admitted[0]) - self.at if admitted else float("nan")
        return self.outcome(
            scene,
            f"agent left ({_first(left, 'reason')}); agent admitted again",
            f"restarted agent admitted {back:.1f} s after the kill and scored again",
        )


class AgentStall(Fault):
    """SIGSTOP one agent past the deadline: the breaker puts it aside, the run goes on; SIGCONT brings it back."""

    name = "agent stalled past the deadline (SIGSTOP, SIGCONT)"

    def __init__(self, site: str = STALLED) -> None:
        super().__init__()
        self.site, self.resumed, self.steps_while_stalled = site, 0.0, 0

    def inject(self, scene: Scene) -> None:
        proc = scene.agents[self.site]
        others = [s for s in scene.live_sites() if s != self.site]
        signal_group(proc, signal.SIGSTOP)
        try:
            aside = scene.wait(
                f"the coordinator to put the stalled {self.site} aside",
                lambda: records(scene.events(), SITE_PUT_ASIDE, self.at, site=self.site),
            )
            since = event_time(aside[0])
            scene.wait(
                "a scoring round without the stalled site, one deadline after the stall",
                lambda: (
                    time.time() - self.at > scene.sizes.deadline_s and all(scene.scored_after(s, since) for s in others)
                ),
            )
            self.steps_while_stalled = scene.step() - self.step
        finally:
            signal_group(proc, signal.SIGCONT)
        self.resumed = time.time()
        scene.wait(f"{self.site} to be scored again after SIGCONT", lambda: scene.scored_after(self.site, self.resumed))

    def check(self, scene: Scene) -> Outcome:
        events = scene.events()
        aside = records(events, SITE_PUT_ASIDE, self.at, site=self.site)
        failures = [e for e in records(events, SCORING_FAILURES, self.at) if event_time(e) <= self.resumed]
        stalled_s = self.resumed - self.at
        self.expect(aside, f"no 'site put aside' record for {self.site}")
        self.expect("timeout" in _first(aside, "reason", ""), "the breaker did not name a timeout")
        self.expect(stalled_s > scene.sizes.deadline_s, f"stalled only {stalled_s:.1f} s")
        self.expect(self.steps_while_stalled > 0, "no GRPO step completed while the agent was stalled")
        self.expect(
            scene.agents[self.site].poll() is None or scene.agents[self.site].returncode == 0,
            f"the stalled agent died ({scene.agents[self.site].returncode})",
        )
        self.expect(scene.scored_after(self.site, self.resumed), f"{self.site} was not scored after SIGCONT")
        return self.outcome(
            scene,
            f"site put aside ({_first(aside, 'reason')}); {len(failures)} scoring round(s) with failures while stalled",
            f"stalled {stalled_s:.1f} s (deadline {scene.sizes.deadline_s:g} s); "
            f"{self.steps_while_stalled} steps went on without it; scored again after the "
            "cool-down",
        )


class Revocation(Fault):
    """`mor certs revoke` one site mid-run: the coordinator reloads the new CRL by itself and must cut the
    site off within one deadline, never score it again, and refuse it when it dials again."""

    name = "site certificate revoked (new CRL)"

    def __init__(self, site: str = REVOKED) -> None:
        super().__init__()
        self.site, self.revoked, self.redialled = site, 0.0, 0.0
        self.first_exit: int | None = None
        self.redial_exit: int | None = None

    def inject(self, scene: Scene) -> None:
        from mor_secure.demo.stages import child_env, mor_command

        subprocess.run(
            mor_command("certs", "revoke", "--ca-dir", scene.ca, "--name", self.site),
            env=child_env(),
            check=True,
            capture_output=True,
        )
        self.revoked = (scene.ca / "crl.pem").stat().st_mtime
        scene.wait(
            f"the coordinator to cut {self.site} off",
            lambda: records(scene.events(), AGENT_LEFT, self.revoked, site=self.site, kind="revoked"),
        )
        self.first_exit = scene.agents[self.site].wait(timeout=scene.sizes.timeout_s)
        self.redialled = time.time()
        # dialling again is refused at the TLS handshake, before any model matters: no need to load it
        self.redial_exit = scene.start_agent(self.site, health_only=True).wait(timeout=scene.sizes.timeout_s)

    def _cut_at(self, scene: Scene) -> float | None:
        left = records(scene.events(), AGENT_LEFT, self.revoked, site=self.site, kind="revoked")
        return event_time(left[0]) if left else None

    def check(self, scene: Scene) -> Outcome:
        events = scene.events()
        cut = self._cut_at(scene)
        deadline = scene.sizes.deadline_s
        refusals = [
            r
            for r in scene.ledger_rows()
            if r["kind"] == "refusal"
            and r["t"] >= self.revoked
            and r["body"]["peer"] == f"mor://client/{self.site}"
            and "revoked" in r["body"]["reason"]
        ]
        redial = records(events, PEER_REFUSED, self.redialled, reason="revoked")
        redial_ledgered = [
            r
            for r in scene.ledger_rows()
            if r["kind"] == "refusal" and r["t"] >= self.redialled and "revoked" in r["body"]["reason"]
        ]
        late = [
            r
            for r in scene.ledger_rows()
            if r["kind"] == "scoring_session"
            and r["body"]["site"] == self.site
            and cut is not None
            and r["t"] - r["body"]["duration_s"] > cut
        ]
        reloads = records(events, CRL_RELOADED, self.revoked)
        latency = f"{cut - self.revoked:.2f} s" if cut is not None else "never"
        self.expect(cut is not None and cut - self.revoked <= deadline, f"cut off: {latency} (deadline {deadline:g} s)")
        self.expect(refusals, "no ledger refusal of the revoked site")
        self.expect(not late, f"{len(late)} scoring session(s) of {self.site} began after it was cut off")
        self.expect(self.first_exit not in (None, 0), "the revoked agent did not exit with an error")
        self.expect(self.redial_exit not in (None, 0), "the revoked agent's new connection was not refused")
        self.expect(redial, "the coordinator did not log refusing the revoked certificate on reconnect")
        self.expect(redial_ledgered, "the refusal on reconnect is not in the ledger")
        self.expect(
            "revoked" in scene.agent_logs[self.site].read_text(encoding="utf-8", errors="replace"),
            "the refused agent's own log does not say it is revoked",
        )
        return self.outcome(
            scene,
            f"CRL reloaded (dropped {_first(reloads, 'dropped')}); agent left "
            f"(certificate revoked); on reconnect: peer refused ({_first(redial, 'reason')})",
            f"cut off {latency} after the new CRL (deadline {deadline:g} s), ledger refusal "
            f"recorded, never scored again; reconnect refused (agent exit {self.redial_exit})",
        )


class GarbageFlood(Fault):
    """A rogue peer floods the coordinator's port: a ZeroMQ DEALER sending random frames, one sending a fake
    ClientHello and junk, and a raw TCP socket sending junk bytes. Nothing must reach a live agent's session."""

    name = "garbage frames from a rogue peer"

    def __init__(self, frames: int = 200, seed: int = 0) -> None:
        super().__init__()
        self.frames, self.rng, self.done = frames, random.Random(seed), 0.0
        self.replies: list[list[bytes]] = []

    def _junk(self, most: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(1, most))

    def inject(self, scene: Scene) -> None:
        import zmq

        live = scene.live_sites()
        context = zmq.Context.instance()
        rogues = [context.socket(zmq.DEALER) for _ in range(2)]
        try:
            for sock in rogues:
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(scene.endpoint)
            for _ in range(self.frames):
                rogues[0].send_multipart([self._junk(2048) for _ in range(self.rng.randint(1, 3))])
            rogues[1].send(b"\x16\x03\x01\x02\x00\x01" + self._junk(4096))  # looks like a ClientHello, is not
            for _ in range(self.frames):
                rogues[1].send(self._junk(2048))
            host, port = scene.endpoint.removeprefix("tcp://").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                raw.sendall(self.rng.randbytes(64 * 1024))
            self.done = time.time()
            scene.wait("the rogue peers' refusals in the ledger", lambda: len(self._ledgered(scene)) >= 2)
            scene.wait(
                "every live site to be scored after the flood",
                lambda: all(scene.scored_after(s, self.done) for s in live),
            )
            self.replies = [self._drain(sock) for sock in rogues]
        finally:
            for sock in rogues:
                sock.close()

    @staticmethod
    def _drain(sock: Any) -> list[bytes]:
        frames = []
        while sock.poll(100):
            frames.append(sock.recv())
        return frames

    def _ledgered(self, scene: Scene) -> list[dict[str, Any]]:
        """Ledger refusals of peers without a certificate since the flood began."""
        return [
            r
            for r in scene.ledger_rows()
            if r["kind"] == "refusal" and r["t"] >= self.at and not r["body"]["peer"].startswith("mor://")
        ]

    def _refused(self, scene: Scene) -> list[dict[str, Any]]:
        """Peers without a certificate refused since the flood began, within one deadline of its end."""
        until = (self.done or time.time()) + scene.sizes.deadline_s
        return [
            e
            for e in records(scene.events(), PEER_REFUSED, self.at)
            if not e.get("identity") and event_time(e) <= until
        ]

    def check(self, scene: Scene) -> Outcome:
        refused = self._refused(scene)
        left = [e for e in records(scene.events(), AGENT_LEFT, self.at) if event_time(e) <= self.done + 1.0]
        self.expect(self.done, "the flood was not sent")
        garbage, fake_hello = self.replies or [[], []]
        alerts = all(frame[:1] == b"\x15" for frame in fake_hello)  # TLS alert records, nothing else
        self.expect(len(refused) >= 2, f"{len(refused)} rogue peer(s) refused in the log, expected at least 2")
        self.expect(len(self._ledgered(scene)) >= 2, "the rogue peers' refusals are not in the ledger")
        self.expect(not left, f"{len(left)} live agent(s) dropped during the flood")
        self.expect(not garbage, f"the garbage peer got {len(garbage)} answer(s)")
        self.expect(alerts, "the fake ClientHello got something other than a TLS alert")
        reasons = "; ".join(str(e.get("reason", "")) for e in refused)
        return self.outcome(
            scene,
            f"{len(refused)} x peer refused or dropped: {reasons}",
            f"{2 * self.frames + 1} garbage frames from 2 DEALERs and 64 KiB of raw TCP junk; "
            f"{len(refused)} rogue peers refused and recorded in the ledger, answered with "
            f"{len(fake_hello)} TLS alert(s) and nothing else; no agent dropped, every live site "
            "scored after it",
        )


class CoordinatorKill(Fault):
    """SIGKILL the coordinator after a checkpoint and start it with `--resume`: the agents redial it and
    the run ends at the planned step; no ledger entry written before the kill is lost."""

    name = "coordinator killed (SIGKILL) and resumed"

    def __init__(self) -> None:
        super().__init__()
        self.killed, self.returncode, self.checkpoint, self.anchor = 0.0, 0, "", ""
        self.entries_before = 0

    def inject(self, scene: Scene) -> None:
        scene.wait("a checkpoint to resume from", scene.checkpoint)
        self.begin(scene)  # the step of the kill, not of the first wait
        rows = scene.ledger_rows()
        self.anchor, self.entries_before = rows[-1]["hash"], len(rows)
        signal_group(scene.coordinator, signal.SIGKILL)
        self.returncode = scene.coordinator.wait(timeout=30)
        self.killed = time.time()
        self.checkpoint = scene.checkpoint().name
        live = scene.live_sites()
        scene.start_coordinator(resume=True)
        scene.wait("the resumed run to start", lambda: records(scene.events(len(scene.coordinators) - 1), GRPO_START))
        scene.wait(
            "every live agent to be scored by the resumed coordinator",
            lambda: all(scene.scored_after(s, self.killed) for s in live),
        )

    def check(self, scene: Scene) -> Outcome:
        run = len(scene.coordinators) - 1
        start = records(scene.events(run), GRPO_START)
        admitted = sorted({e["site"] for e in records(scene.events(run), AGENT_ADMITTED)})
        rows = scene.ledger_rows()
        self.expect(self.returncode == -signal.SIGKILL, f"the coordinator exited with {self.returncode}")
        self.expect(
            _first(start, "resume_from") == self.checkpoint,
            f"resumed from {_first(start, 'resume_from')}, not {self.checkpoint}",
        )
        self.expect(any(r["hash"] == self.anchor for r in rows), "the ledger head before the kill is gone")
        self.expect([r["seq"] for r in rows] == list(range(1, len(rows) + 1)), "the ledger's seq has gaps")
        self.expect(len(admitted) >= 2, f"only {admitted} redialled the resumed coordinator")
        return self.outcome(
            scene,
            f"grpo start resume_from={_first(start, 'resume_from')}; agent admitted: {', '.join(admitted)}",
            f"killed at step {self.step}, resumed from {self.checkpoint}; {len(admitted)} agents "
            f"redialled; all {self.entries_before} ledger entries before the kill kept",
        )


def default_faults() -> list[Fault]:
    """The scenario, in order (each fault starts once the previous one's effect is seen)."""
    return [AgentKill(), AgentStall(), Revocation(), GarbageFlood(), CoordinatorKill()]


# --------------------------------------------------------------------------- the scenario and the checks after it


@dataclass
class Result:
    """What the scenario showed: one outcome per fault, the checks after the run, how long it took."""

    outcomes: list[Outcome]
    after: list[Outcome]
    seconds: float
    sizes: Sizes

    @property
    def passed(self) -> bool:
        """Every fault and every check after the run passed."""
        return all(o.passed for o in [*self.outcomes, *self.after])


def run_scenario(scene: Scene, faults: Sequence[Fault]) -> Result:
    """Set the federation up, start the GRPO run, inject ``faults`` in order, wait for the run to end, then
    judge each fault and the run as a whole. A fault whose effect never shows stops the injections (the
    rest are reported as not injected)."""
    scene.prepare()
    error = ""
    try:
        for site in SITES:
            scene.start_agent(site)
        scene.train_router()
        scene.start_coordinator()
        start = event_time(scene.wait("the GRPO run to start", lambda: records(scene.events(0), GRPO_START))[0])
        scene.wait(
            "the first GRPO step, scored by every agent",
            lambda: scene.step() >= 1 and all(scene.scored_after(s, start) for s in SITES),
        )
        for fault in faults:
            try:
                fault.begin(scene)
                fault.inject(scene)
            except ScenarioError as exc:
                fault.error = error = str(exc)
                break
        scene.wait(
            "the GRPO run to finish", lambda: scene.coordinator.poll() is not None, timeout=scene.sizes.timeout_s * 2
        )
    except ScenarioError as exc:
        error = error or str(exc)  # judged below: the run did not finish
    finally:
        scene.stop()  # agents end their sessions, so every record is written before the checks
    outcomes = [
        fault.check(scene) if fault.at else Outcome(fault.name, 0, 0.0, "-", "not injected", [f"not injected: {error}"])
        for fault in faults
    ]
    anchor = next((f.anchor for f in faults if isinstance(f, CoordinatorKill)), None)
    return Result(outcomes, checks_after(scene, anchor), round(scene.elapsed(), 1), scene.sizes)


def checks_after(scene: Scene, anchor: str | None) -> list[Outcome]:
    """The run finished at the planned step, the ledger verifies, each site's epsilon matches its report."""
    return [check_finished(scene), check_ledger(scene, anchor), *[check_epsilon(scene, s) for s in SITES]]


def _row(name: str, logged: str, outcome: str, problems: list[str], scene: Scene) -> Outcome:
    return Outcome(name, scene.step(), round(scene.elapsed(), 1), logged, outcome, problems)


def check_finished(scene: Scene) -> Outcome:
    """The last coordinator exited 0 at global step == steps and saved the final policy."""
    done = records(scene.events(len(scene.coordinators) - 1), GRPO_DONE)
    step = int(_first(done, "global_step", "0"))
    policy = scene.grpo_out / "policy" / "model.safetensors"
    problems = [
        p
        for ok, p in [
            (scene.coordinator.returncode == 0, f"the coordinator exited with {scene.coordinator.returncode}"),
            (step == scene.sizes.steps, f"global step {step}, planned {scene.sizes.steps}"),
            (policy.is_file(), f"no final policy at {policy}"),
        ]
        if not ok
    ]
    return _row(
        "run finished",
        f"grpo done global_step={step}",
        f"exit {scene.coordinator.returncode}, step {step} of {scene.sizes.steps}, policy saved "
        f"({len(scene.coordinators)} coordinator processes)",
        problems,
        scene,
    )


def check_ledger(scene: Scene, anchor: str | None) -> Outcome:
    """`mor ledger verify LEDGER --ca ca.pem` (``--anchor`` the head seen before the coordinator kill) passes."""
    from mor_secure.demo.stages import child_env, mor_command

    args = ["ledger", "verify", scene.ledger, "--ca", scene.ca / "ca.pem", *(["--anchor", anchor] if anchor else [])]
    proc = subprocess.run(mor_command(*args), env=child_env(), capture_output=True, text=True)
    summary = (proc.stdout or proc.stderr).strip().splitlines()
    rows = scene.ledger_rows()
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("privacy_report", "scoring_session", "refusal")}
    return _row(
        "ledger verifies",
        summary[0] if summary else "-",
        f"{len(rows)} entries ({', '.join(f'{v} {k}' for k, v in kinds.items())})"
        + (", pre-kill head still in the chain" if anchor else ""),
        [] if proc.returncode == 0 else [f"`mor ledger verify` failed: {' '.join(summary)}"],
        scene,
    )


def check_epsilon(scene: Scene, site: str) -> Outcome:
    """The site's epsilon in the coordinator's ledger equals its own privacy report and `mor client budget`."""
    import math

    from client_agent.budget import site_status
    from client_agent.config import load_client_config
    from mor_secure.ledger import read_entries, summarize

    ledger = summarize(read_entries(scene.ledger)).get(site)
    report = json.loads(scene.report_path(site).read_text(encoding="utf-8"))["epsilon"]
    status, _ = site_status(load_client_config(scene.site_config(site)))  # what `mor client budget` prints
    spent = status.spent
    eps = None if ledger is None else ledger.epsilon
    problems = [
        p
        for ok, p in [
            (eps is not None and eps == report, f"ledger epsilon {eps} != report epsilon {report}"),
            (math.isclose(spent, report, rel_tol=1e-9), f"`mor client budget` says {spent}, the report {report}"),
        ]
        if not ok
    ]
    return _row(
        f"epsilon of {site}",
        f"{ledger.reports if ledger else 0} signed report(s) in the ledger",
        f"ledger {eps}, privacy_report.json {report}, `mor client budget` {spent}",
        problems,
        scene,
    )


# --------------------------------------------------------------------------- the report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Outcome], first: str = "fault") -> list[str]:
    """Markdown rows: what, when, what the coordinator logged, outcome, pass/fail."""
    return markdown_table(
        [first, "when (step / s)", "what the coordinator logged", "outcome", "result"],
        [
            [
                _cell(o.fault),
                f"{o.step} / {o.seconds:g}",
                _cell(o.logged),
                _cell(o.outcome),
                _cell("pass" if o.passed else "**FAIL**: " + "; ".join(o.problems)),
            ]
            for o in rows
        ],
    )


def report(result: Result, machine: list[str], command: str) -> list[str]:
    """The markdown report."""
    s = result.sizes
    passed = sum(o.passed for o in result.outcomes)
    return [
        "# Fault injection during a federated GRPO run",
        "",
        f"**{passed} of {len(result.outcomes)} faults survived; checks after the run: "
        f"{'all passed' if all(o.passed for o in result.after) else 'FAILED'}** "
        f"({result.seconds:g} s in all).",
        "",
        f"Three `mor client serve` agents (tiny dual-encoder reward models trained with DP at epsilon 2 / 4 / 8) "
        f"score for `mor coordinator grpo` over mutual TLS 1.3 on 127.0.0.1: {s.steps} GRPO steps of "
        f"{s.batch_size} completions, the MoR reward, quorum 2, deadline {s.deadline_s:g} s, breaker cool-down "
        f"{s.cooldown_s:g} s, a checkpoint every {s.save_steps} steps. Each fault is injected once the "
        "previous one's effect shows in the ledger or the coordinator's log (`mor --log-json`); 'when' is the "
        "global step and the seconds since the scenario began.",
        "",
        "## Faults",
        "",
        *table(result.outcomes),
        "",
        "## After the run",
        "",
        *table(result.after, "check"),
        "",
        "The raw TCP junk reaches the application too: libzmq takes a peer whose first byte is not a ZMTP 3 "
        "greeting for a ZMTP 1.0 peer, so the junk arrives as a message with a self-chosen routing id, which "
        "the server refuses ('peer chose its own routing id'; the same with every seed tried).",
        "",
        *machine_and_command(machine, command),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="Folder of the report.")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mor-fault-injection",
        help="Work folder (its inputs/ are reused; the federation in run/ is made afresh).",
    )
    parser.add_argument(
        "--steps", type=int, default=Sizes.steps, help="GRPO steps (enough for every fault to happen during the run)."
    )
    args = parser.parse_args()
    if args.steps < 4 * Sizes.save_steps:
        parser.error(
            f"--steps {args.steps} is too short for five faults; use at least {4 * Sizes.save_steps} "
            f"(the coordinator is killed after a checkpoint, every {Sizes.save_steps} steps)"
        )
    command = " ".join(["python", *sys.argv])
    for name, value in {
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(name, value)
    import shutil

    import torch

    torch.set_num_threads(1)
    machine = machine_lines(["torch", "transformers", "trl", "pyzmq", "cryptography"])
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir / "run", ignore_errors=True)
    scene = Scene(workdir / "run", build_inputs(workdir / "inputs"), Sizes(steps=args.steps))
    result = run_scenario(scene, default_faults())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fault_injection.json").write_text(
        json.dumps(
            {
                "passed": result.passed,
                "seconds": result.seconds,
                "sizes": asdict(result.sizes),
                "faults": [{**asdict(o), "passed": o.passed} for o in result.outcomes],
                "after": [{**asdict(o), "passed": o.passed} for o in result.after],
                "command": command,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    write_markdown(args.out / "fault_injection.md", report(result, machine, command))
    for row in table([*result.outcomes, *result.after]):
        print(row)
    print(f"{'all faults survived' if result.passed else 'FAILED'}; report: {args.out / 'fault_injection.md'}")
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    main()

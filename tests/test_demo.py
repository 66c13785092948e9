"""`mor demo --quick` end to end (every side a separate process over mutual TLS), and the stage runner's
markers and failure reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

from mor_secure.demo.report import SECTIONS
from mor_secure.demo.stages import DemoError, Stage, StageRunner

pytestmark = pytest.mark.slow


def _mor(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mor_secure.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
        **kwargs,
    )


def _demo(workdir, timeout: float) -> str:
    demo = subprocess.Popen(
        [sys.executable, "-m", "mor_secure.cli", "demo", "--workdir", str(workdir), "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    try:
        output, _ = demo.communicate(timeout=timeout)
    finally:
        if demo.poll() is None:  # SIGTERM: the demo stops its agents on the way out
            demo.terminate()
            demo.communicate(timeout=60)
    assert demo.returncode == 0, output[-5000:]
    return output


@pytest.mark.timeout(900)
def test_quick_demo_end_to_end_and_a_second_run_reuses_it(tmp_path):
    workdir = tmp_path / "demo"
    _demo(workdir, 600)
    report = (workdir / "report.md").read_text()
    positions = [report.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert (workdir / "report.png").stat().st_size > 10_000
    for site, target in (("client-0", 2.0), ("client-1", 4.0), ("client-2", 8.0)):
        spent = float(re.search(rf"\| {site} \| ([0-9.]+) \|", report).group(1))
        assert abs(spent - target) < 0.01  # each site's own target epsilon, read from the verified ledger
    assert "ok:" in report and "chain intact" in report
    for name in (
        "MoR (learned router)",
        "uniform mean",
        "single client: client-2",
        "FedAvg",
        "centralised",
        "accuracy before",
        "GRPO ",
        "top-1 (own domain)",
    ):
        assert name in report
    site_rows = re.findall(r"\| (client-\d) \| (\w+) \| \d+ \| [0-9.]+% \| [0-9.]+% \|", report)
    assert site_rows == [("client-0", "detail"), ("client-1", "medical"), ("client-2", "chart")]
    verify = _mor("ledger", "verify", workdir / "coordinator" / "ledger.jsonl", "--ca", workdir / "ca" / "ca.pem")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", (workdir / "logs" / "agents.log").read_text())]
    assert len(pids) == 3
    for pid in pids:  # every agent stopped with the demo
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # the site keys were made at the sites: the CA folder holds no client key
    assert not list((workdir / "ca").glob("client-*.key"))
    assert all((workdir / "sites" / s / "certs" / f"{s}.key").is_file() for s in ("client-0", "client-1", "client-2"))

    again = _demo(workdir, 240)  # only the agents, probe, ledger and report run again
    assert again.count("reused (built earlier") == 11, again
    assert "ok:" in (workdir / "report.md").read_text()


def test_stages_are_reused_until_their_parameters_change_and_a_failure_names_the_stage(tmp_path):
    calls: list[str] = []
    console = Console(file=open(os.devnull, "w"))

    def stages(pairs: int) -> list[Stage]:
        return [
            Stage("first", "first", lambda ctx: calls.append("first"), {"n": 1, "names": ("a", "b")}),
            Stage("second", "second", lambda ctx: calls.append("second"), {"pairs": pairs}),
        ]

    StageRunner(tmp_path, console).run(stages(10))
    StageRunner(tmp_path, console).run(stages(10))
    assert calls == ["first", "second"]
    StageRunner(tmp_path, console).run(stages(20))
    assert calls == ["first", "second", "second"]
    StageRunner(tmp_path, console, fresh=True).run(stages(20))
    assert calls == ["first", "second", "second", "first", "second"]

    broken = Stage(
        "world", "a world too small", lambda ctx: ctx.run("data", "synth", "--out", tmp_path / "w", "--pairs", 1)
    )
    with pytest.raises(DemoError) as caught:
        StageRunner(tmp_path, console).run([broken])
    message = str(caught.value)
    assert "stage 'world' failed" in message and "world.log" in message and "--pairs" in message
    assert not (tmp_path / ".stages" / "world.json").exists()

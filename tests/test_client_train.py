"""DP training end to end on the benchmark world: accuracy, epsilon, budget, resume, CLI."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner

from client_agent.budget import BudgetExceeded, LedgerCorrupt, LedgerRecord, SiteLedger, now_utc, site_status
from client_agent.config import load_client_config
from client_agent.evaluate import evaluate_saved
from client_agent.site_data import load_pairs, open_data
from client_agent.train import train_reward_model
from mor_secure.files import sha256_file
from mor_secure.privacy import AccountantHistory, epsilon, plan_noise

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def write_config(
    folder: Path,
    data: Path,
    *,
    family: str = "dual-encoder",
    base: str = "",
    train: str = "",
    privacy: str = "",
    data_extra: str = "",
) -> Path:
    """A client.toml for a training run inside ``folder`` (TLS files need not exist to train)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "client.toml"
    path.write_text(f"""site = "site-a"
[tls]
ca = "ca.pem"
cert = "site.pem"
key = "site.key"
crl = "crl.pem"
[coordinator]
endpoint = "tcp://127.0.0.1:7000"
name = "coord"
[data]
path = "{data}"
{data_extra}
[model]
family = "{family}"
base = "{base}"
[train]
out = "model"
{train}
[privacy]
ledger = "ledger.jsonl"
{privacy}
""")
    if not (folder / "ledger.jsonl").exists():
        SiteLedger(folder / "ledger.jsonl").start(reason="test site")
    return path


def data_fingerprint(config) -> str:
    return open_data(config).fingerprint


def recomputed_epsilon(report) -> float:
    """Opacus' own PRV accountant on the logged noise, sample rate and steps (no project code)."""
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(report.noise_multiplier, report.sample_rate, report.steps)]
    return accountant.get_epsilon(delta=report.delta)


@pytest.fixture(scope="module")
def dual_run(world_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dual")
    config = load_client_config(
        write_config(
            folder,
            world_dir / "client-0",
            train="epochs = 20\nlr = 0.003\nbatch_size = 32",
            privacy="target_epsilon = 8.0\nmax_epsilon = 20.0",
        )
    )
    return config, train_reward_model(config, progress=False)


def test_dp_dual_encoder_learns_and_reports_its_epsilon(dual_run):
    config, result = dual_run
    report = result.report
    assert report.private and report.family == "dual-encoder"
    assert report.epsilon <= config.privacy.target_epsilon
    assert report.epsilon == pytest.approx(recomputed_epsilon(report), rel=1e-9)
    assert report.epsilon_rdp >= report.epsilon
    n = len(load_pairs(config, "train"))
    assert report.n_pairs == n and report.sample_rate == 1 / math.ceil(n / 32)
    assert report.steps == 20 * math.ceil(n / 32)
    assert report.delta == 1e-5
    accuracy = evaluate_saved(result.out_dir, load_pairs(config, "test")).accuracy
    assert accuracy > 0.55  # 200 pairs at epsilon 8; the strong-site settings are measured in the demo


def test_outputs_are_safetensors_and_json_with_matching_hashes(dual_run):
    config, result = dual_run
    out = result.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "privacy_report.json", "reward_config.json"]
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["model_sha256"] == sha256_file(out / "model.safetensors")
    assert report["data_fingerprint"] == data_fingerprint(config)
    assert {
        "epsilon",
        "epsilon_rdp",
        "delta",
        "accountant",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "n_pairs",
        "family",
        "base",
        "time",
        "history",
        "baseline",
    } <= set(report)
    records = SiteLedger(config.privacy.ledger).records()
    assert [r.status for r in records] == ["planned", "finished"]
    assert records[-1].history.steps == report["steps"]


def _text_decidable(pairs):
    """Pairs a reward model can order from the text alone (a random vision tower sees nothing): the
    rejected answer is malformed or the true answer in another style."""
    from mor_secure.data.candidates import renderings
    from mor_secure.data.domains import get_domain
    from mor_secure.data.schema import answer_text

    def keep(row):
        text = answer_text(row["rejected"])
        space = get_domain(row["domain"]).answer_space(row["question_type"])
        return not any(text in renderings(a) for a in space if a != row["answer"])

    return pairs.filter(keep)


@pytest.mark.parametrize("family", ["qwen2-vl", "llava"])
def test_dp_vlm_families_learn_the_answer_style(family, world_dir, tiny_model_dir, tmp_path, caplog):
    # batch 32 rather than the default 256: ~200 pairs then make 7 noisy steps an epoch instead of one
    config = load_client_config(
        write_config(
            tmp_path,
            world_dir / "client-0",
            family=family,
            base=str(tiny_model_dir(family)),
            train="epochs = 10\nlr = 0.01\nbatch_size = 32",
            privacy="target_epsilon = 8.0\nmax_epsilon = 20.0",
        )
    )
    with caplog.at_level(logging.WARNING, logger="mor.client.train"):
        report = train_reward_model(config, progress=False).report
    # a bare VLM under DP: the site is told which command gives it a public reward model to start from
    assert any(f"public-reward --family {family} --base" in r.getMessage() for r in caplog.records)
    assert report.epsilon <= 8.0 and report.epsilon == pytest.approx(recomputed_epsilon(report), rel=1e-9)
    # ~120 decidable training pairs say whether it learned; the ~13 held-out ones only that it generalises
    assert evaluate_saved(config.train.out, _text_decidable(load_pairs(config, "train"))).accuracy > 0.7
    held_out = _text_decidable(load_pairs(config, "test"))
    assert evaluate_saved(config.train.out, held_out).accuracy > 0.55, len(held_out)


def test_runs_compose_and_the_budget_refuses_the_next(world_dir, tmp_path, caplog):
    config = load_client_config(
        write_config(
            tmp_path,
            world_dir / "client-1",
            data_extra="max_pairs = 64",
            train="epochs = 2\nbatch_size = 16",
            privacy="target_epsilon = 2.0\nmax_epsilon = 3.0",
        )
    )
    with caplog.at_level(logging.WARNING, logger="mor.client.train"):
        first = train_reward_model(config, progress=False).report
    # the default family from scratch under DP: the site is told how to get a strong model
    assert any("[model] base" in r.getMessage() and "public-reward" in r.getMessage() for r in caplog.records)
    second = train_reward_model(config, progress=False).report
    assert first.run_id != second.run_id
    status, runs = site_status(config)
    assert len(runs) == 2 and status.runs == 2
    both = epsilon(
        AccountantHistory.from_state_dict(first.history) + AccountantHistory.from_state_dict(second.history), 1e-5
    )
    assert status.spent == pytest.approx(both)
    assert 2.0 < status.spent < first.epsilon + second.epsilon
    with pytest.raises(BudgetExceeded) as refused:
        train_reward_model(config, progress=False)
    message, error = str(refused.value), refused.value
    assert error.spent == pytest.approx(status.spent) and 1.9 < error.asked <= 2.0 < error.total
    assert f"spent epsilon {status.spent:.3f}" in message and f"asks {error.asked:.3f}" in message
    assert f"remaining {3.0 - status.spent:.3f}" in message
    assert error.fits is not None and f"target_epsilon to at most {error.fits:.3f}" in message
    prior = AccountantHistory.from_state_dict(first.history) + AccountantHistory.from_state_dict(second.history)
    room = plan_noise(3.0, 1e-5, first.sample_rate, first.steps, prior_history=prior)
    assert epsilon(AccountantHistory([(room, first.sample_rate, first.steps)]), 1e-5) == pytest.approx(error.fits)
    assert len(SiteLedger(config.privacy.ledger).records()) == 4  # the refused run wrote nothing


def test_corrupt_data_is_refused_before_the_budget_is_touched(world_dir, tmp_path):
    """Every image is garbage: the run names the rows and fails before it reserves any epsilon."""
    train = datasets.load_from_disk(str(world_dir / "client-0" / "train"))
    broken = train.cast_column("image", datasets.Image(decode=False)).map(
        lambda row: {"image": {"bytes": b"not an image", "path": None}}
    )
    broken.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "broken"))
    path = write_config(tmp_path, tmp_path / "broken", privacy="target_epsilon = 2.0\nmax_epsilon = 4.0")
    config = load_client_config(path)
    before = config.privacy.ledger.read_text()
    result = CliRunner().invoke(_client_group(), ["train", "--config", str(path), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "row 0: column 'image' cannot be decoded as an image" in result.output
    assert "mor data check" in result.output and "lists them all" in result.output
    assert config.privacy.ledger.read_text() == before  # nothing reserved, nothing released
    assert not config.train.out.exists()


def test_no_dp_baseline_records_infinity_and_spends_nothing(world_dir, tmp_path):
    path = write_config(
        tmp_path, world_dir / "client-2", data_extra="max_pairs = 64", train="epochs = 2\nbatch_size = 16"
    )
    runner = CliRunner()
    result = runner.invoke(_client_group(), ["train", "--config", str(path), "--no-dp", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "epsilon inf (no DP)" in result.output
    config = load_client_config(path)
    report = json.loads((config.train.out / "privacy_report.json").read_text())
    assert report["epsilon"] is None and report["baseline"] is True and report["private"] is False
    assert report["noise_multiplier"] == 0.0
    budget = json.loads(runner.invoke(_client_group(), ["budget", "--config", str(path), "--json"]).output)
    assert budget["spent"] == 0.0 and budget["runs"][0]["status"] == "baseline"
    assert budget["runs"][0]["epsilon"] is None
    evaluation = runner.invoke(_client_group(), ["eval", "--config", str(path), "--json"])
    assert evaluation.exit_code == 0 and 0.0 <= json.loads(evaluation.output)["accuracy"] <= 1.0
    top1 = json.loads(evaluation.output)["top1"]  # the world carries the ground truth: every question is ranked
    assert 0.0 <= top1["top1"] <= 1.0 and top1["questions"] == json.loads(evaluation.output)["pairs"]
    table = runner.invoke(_client_group(), ["eval", "--config", str(path)])
    assert table.exit_code == 0 and "top-1" in table.output


def test_resume_after_kill_continues_the_accounting(world_dir, tmp_path):
    path = write_config(
        tmp_path,
        world_dir / "client-0",
        data_extra="max_pairs = 64",
        train="epochs = 20\nbatch_size = 16\ncheckpoint_every = 3",
        privacy="target_epsilon = 4.0\nmax_epsilon = 4.5",
    )
    config = load_client_config(path)
    state_file = config.train.out / "checkpoint" / "state.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mor_secure.cli", "client", "train", "--config", str(path), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not state_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state_file.exists(), "the run never wrote a checkpoint"
    state = json.loads(state_file.read_text())
    assert state["step"] > 0 and AccountantHistory.from_state_dict(state["history"]).steps == state["step"]

    result = train_reward_model(config, progress=False)
    report = result.report
    assert result.resumed_from_step == state["step"]
    assert report.run_id == state["run_id"]
    assert report.steps == 20 * 4  # the whole plan, counted once: not reset, not doubled
    assert report.epsilon == pytest.approx(recomputed_epsilon(report), rel=1e-9) and report.epsilon <= 4.0
    status, runs = site_status(config)
    assert len(runs) == 1 and status.spent == pytest.approx(report.epsilon)
    assert not (config.train.out / "checkpoint").exists()


def _client_group():
    from client_agent.commands import group

    return group


def test_a_corrupt_ledger_fails_closed(world_dir, tmp_path):
    config = load_client_config(write_config(tmp_path, world_dir / "client-0"))
    ledger = SiteLedger(config.privacy.ledger)
    ledger.append(
        LedgerRecord(
            "earlier",
            data_fingerprint(config),
            "finished",
            AccountantHistory([(1.0, 0.1, 10)]),
            200,
            "dual-encoder",
            now_utc(),
        )
    )
    with config.privacy.ledger.open("a") as fh:
        fh.write('{"format": 1, "status": "finished", "history": "edited by hand"}\n')
    with pytest.raises(LedgerCorrupt, match=r"ledger.jsonl:3: .*fails closed"):
        train_reward_model(config, progress=False)
    assert not config.train.out.exists()

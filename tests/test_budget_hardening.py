"""Issue 14 items 4, 5, 11: the site budget follows the data's content, fails closed without its ledger,
fixes delta and accountant per data set, and nothing wrong before the first noisy step spends epsilon."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from client_agent.budget import (
    BudgetExceeded,
    LedgerCorrupt,
    LedgerMissing,
    LedgerRecord,
    SettingsChanged,
    SiteLedger,
    file_fingerprint,
    now_utc,
    site_status,
)
from client_agent.config import load_client_config
from client_agent.train import TrainingError, train_reward_model
from mor_secure.config import ConfigError
from mor_secure.privacy import AccountantHistory
from tests.test_real_data import pairs, write_layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _section(defaults: dict[str, str], extra: str) -> str:
    values = dict(defaults)
    for line in filter(None, extra.splitlines()):
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return "".join(f"{k} = {v}\n" for k, v in values.items())


def site_config(folder: Path, data: Path, ledger: Path, *, privacy: str = "", train: str = "", model: str = "") -> Path:
    """A dual-encoder site on ``data`` whose ledger is ``ledger``; each section's lines override its defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "client.toml"
    path.write_text(
        f'site = "site-a"\n[tls]\nca = "ca.pem"\ncert = "s.pem"\nkey = "s.key"\ncrl = "crl.pem"\n'
        f'[coordinator]\nendpoint = "tcp://127.0.0.1:7000"\nname = "coord"\n[data]\npath = "{data}"\n'
        "[model]\n"
        + _section({"family": '"dual-encoder"'}, model)
        + "[train]\n"
        + _section({"out": '"model"', "epochs": "2", "batch_size": "32", "lr": "0.01"}, train)
        + "[privacy]\n"
        + _section({"ledger": f'"{ledger}"', "target_epsilon": "4.0", "max_epsilon": "5.0"}, privacy)
    )
    return path


@pytest.fixture()
def data(tmp_path) -> Path:
    path, _ = write_layout("jsonl-paths", tmp_path / "data", pairs(120, seed=1))
    return path


@pytest.fixture()
def ledger(tmp_path) -> Path:
    path = tmp_path / "site-ledger.jsonl"
    SiteLedger(path).start(reason="test")
    return path


def _client(args: list[str]):
    from client_agent.commands import group

    return CliRunner().invoke(group, args)


def test_budget_follows_the_content_not_the_folder_files_or_layout(data, ledger, tmp_path):
    first = train_reward_model(load_client_config(site_config(tmp_path / "a", data, ledger)), progress=False)
    assert first.report.epsilon <= 4.0
    # the same pairs copied to another folder beside a README, then written as parquet: same data set
    moved = tmp_path / "elsewhere"
    shutil.copytree(data.parent, moved)
    (moved / "README.md").write_text("our preference data, v2")
    again, _ = write_layout("standard-parquet", tmp_path / "converted", pairs(120, seed=1))
    # more pairs, or some of them with pairs never seen: a run on any question trained before counts
    grown, _ = write_layout("jsonl-paths", tmp_path / "grown", pairs(130, seed=1))
    mixed, _ = write_layout("jsonl-paths", tmp_path / "mixed", pairs(120, seed=1)[:10] + pairs(110, seed=4))
    for copy in (moved / data.name, again, grown, mixed):
        config = load_client_config(site_config(tmp_path / f"{copy.parent.name}-{copy.stem}", copy, ledger))
        with pytest.raises(BudgetExceeded, match=r"spent epsilon (3\.9|4\.0)\d* of 5"):
            train_reward_model(config, progress=False)
    other, _ = write_layout("jsonl-paths", tmp_path / "other", pairs(120, seed=2))  # other pairs: own budget
    assert (
        train_reward_model(
            load_client_config(site_config(tmp_path / "o", other, ledger)), progress=False
        ).report.epsilon
        <= 4.0
    )


def test_a_missing_ledger_fails_closed_and_a_new_one_is_an_explicit_command(data, ledger, tmp_path):
    config = load_client_config(site_config(tmp_path / "a", data, ledger))
    train_reward_model(config, progress=False)
    ledger.unlink()  # deleted (or [privacy].ledger pointed at a new file): no fresh budget
    with pytest.raises(LedgerMissing, match="fails closed.*--new-ledger"):
        train_reward_model(config, progress=False)
    assert not ledger.exists()
    path = tmp_path / "a" / "client.toml"
    refused = _client(["budget", "--config", str(path)])
    assert refused.exit_code == 1 and "does not exist" in refused.output and "Traceback" not in refused.output
    started = _client(["budget", "--config", str(path), "--new-ledger"])
    assert started.exit_code == 0, started.output
    assert "started a new privacy ledger" in started.output and "spent      epsilon 0.000" in started.output
    assert '"ledger": "started"' in ledger.read_text() and '"reason": "`mor client budget' in ledger.read_text()
    again = _client(["budget", "--config", str(path), "--new-ledger"])
    assert again.exit_code == 1 and "never replaced or reset" in again.output


def test_an_unreadable_ledger_fails_closed(data, ledger, tmp_path):
    config = load_client_config(site_config(tmp_path / "a", data, ledger))
    ledger.write_bytes(ledger.read_bytes() + b"\xff\xfe garbage\n")
    with pytest.raises(Exception, match="fails closed") as error:
        train_reward_model(config, progress=False)
    assert "Traceback" not in str(error.value) and not (tmp_path / "a" / "model").exists()


def test_delta_and_accountant_are_fixed_per_data_set_and_delta_is_at_most_one_over_n(data, ledger, tmp_path):
    train_reward_model(
        load_client_config(site_config(tmp_path / "a", data, ledger, privacy="target_epsilon = 1.0")), progress=False
    )
    before = ledger.read_text()
    for privacy, error, match in [
        ("target_epsilon = 1.0\ndelta = 1e-7", SettingsChanged, "delta 1e-05 with the 'prv' accountant"),
        ('target_epsilon = 1.0\naccountant = "rdp"', SettingsChanged, "set \\[privacy\\] delta = 1e-05"),
        ("target_epsilon = 1.0\ndelta = 0.1", TrainingError, "above 1/n"),
    ]:
        config = load_client_config(site_config(tmp_path / "b", data, ledger, privacy=privacy))
        with pytest.raises(error, match=match):
            train_reward_model(config, progress=False)
        assert ledger.read_text() == before  # refused before anything was reserved
    status, runs = site_status(
        load_client_config(
            site_config(tmp_path / "c", data, ledger, privacy='target_epsilon = 1.0\naccountant = "rdp"')
        )
    )
    assert status.delta == 1e-5 and status.accountant == "prv" and len(runs) == 1


@pytest.mark.parametrize(
    "setting, message",
    [
        ("train:batch_size = 0", "[train] batch_size must be >= 1, got 0"),
        ("train:epochs = -1", "[train] epochs must be >= 1, got -1"),
        ('train:grad_sample_mode = "magic"', "[train] grad_sample_mode must be one of 'hooks', 'functorch', 'ew'"),
        ("privacy:target_epsilon = 1e308", "target_epsilon must be in (0, 100]"),
        ("privacy:target_epsilon = 4.0\nmax_epsilon = inf", "max_epsilon must be a finite"),
        ("privacy:target_epsilon = 9.0", "privacy budget exceeded: spent epsilon 0.000 of 5"),
        ('model:family = "nonsense"', "cannot build the [model] ('nonsense')"),
        ("model:max_length = 0", "[model] max_length must be >= 1, got 0"),
    ],
)
def test_bad_settings_fail_in_one_line_before_the_budget(setting, message, data, ledger, tmp_path):
    section, _, value = setting.partition(":")
    path = site_config(tmp_path / "a", data, ledger, **{section: value})
    before = ledger.read_text()
    result = _client(["train", "--config", str(path), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and message in error[0], result.output
    assert ledger.read_text() == before


def test_a_run_failing_before_its_first_noisy_step_releases_its_reservation(data, ledger, tmp_path, monkeypatch):
    import client_agent.train as train_module

    path = site_config(tmp_path / "a", data, ledger, privacy="target_epsilon = 4.5")
    config = load_client_config(path)

    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator fell over")

    monkeypatch.setattr(train_module, "make_private", broken)
    with pytest.raises(RuntimeError, match="fell over"):
        train_reward_model(config, progress=False)
    records = SiteLedger(ledger).records()
    assert [r.status for r in records] == ["planned", "released"] and records[-1].history.steps == 0
    assert site_status(config)[0].spent == 0.0
    monkeypatch.undo()
    assert train_reward_model(config, progress=False).report.epsilon <= 4.5  # 4.5 of 5.0: the failed run spent 0

    # a failure after the first noisy step keeps the reservation: those steps were taken
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    other, _ = write_layout("jsonl-paths", tmp_path / "other", pairs(120, seed=3))
    config = load_client_config(
        site_config(tmp_path / "b", other, ledger, train="checkpoint_every = 1", privacy="target_epsilon = 4.5")
    )
    monkeypatch.setattr(train_module, "save_checkpoint", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        train_reward_model(config, progress=False)
    assert SiteLedger(ledger).records()[-1].status == "planned" and site_status(config)[0].spent > 4.0


def test_runs_recorded_under_the_old_file_fingerprint_still_count(data, ledger, tmp_path):
    config = load_client_config(site_config(tmp_path / "a", data, ledger))
    SiteLedger(ledger).append(
        LedgerRecord(
            "before-upgrade",
            file_fingerprint(data),
            "finished",
            AccountantHistory([(0.7, 0.25, 40)]),
            120,
            "dual-encoder",
            now_utc(),
        )
    )
    assert site_status(config)[0].runs == 1 and site_status(config)[0].spent > 3.0
    with pytest.raises(BudgetExceeded):
        train_reward_model(config, progress=False)


def test_config_refuses_an_infinite_lifetime_budget(tmp_path):
    path = tmp_path / "client.toml"
    path.write_text(
        'site = "s"\n[tls]\nca = "a"\ncert = "b"\nkey = "c"\ncrl = "d"\n[coordinator]\n'
        'endpoint = "tcp://h:1"\nname = "coord"\n[privacy]\nmax_epsilon = inf\n'
    )
    with pytest.raises(ConfigError, match="max_epsilon must be a finite positive lifetime budget"):
        load_client_config(path)


def test_init_starts_the_sites_ledger_and_never_replaces_it(tmp_path):
    from client_agent.init import init_site

    folder = init_site("site-a", "tcp://127.0.0.1:7000", tmp_path / "site", coordinator_name="coord")
    config = load_client_config(folder.config)
    assert config.privacy.ledger == tmp_path / "site" / "privacy-ledger.jsonl"
    header = config.privacy.ledger.read_text()
    assert '"ledger": "started"' in header and "mor client init --site site-a" in header
    assert SiteLedger(config.privacy.ledger).records() == []
    SiteLedger(config.privacy.ledger).append(
        LedgerRecord(
            "r1", "content-sha256:x", "finished", AccountantHistory([(1.0, 0.1, 5)]), 50, "dual-encoder", now_utc()
        )
    )
    folder.config.rename(tmp_path / "old.toml")  # the operator runs init again in the same folder
    shutil.move(folder.certs, tmp_path / "old-certs")
    init_site("site-a", "tcp://127.0.0.1:7000", tmp_path / "site", coordinator_name="coord")
    assert [r.run_id for r in SiteLedger(config.privacy.ledger).records()] == ["r1"]
    columns = load_client_config(folder.config).data.columns
    assert columns == {} and "# columns = {}   (default)" in folder.config.read_text()


def test_a_runs_question_set_missing_or_altered_fails_closed(data, ledger, tmp_path):
    train_reward_model(load_client_config(site_config(tmp_path / "a", data, ledger)), progress=False)
    (stored,) = (ledger.parent / f"{ledger.name}.questions").iterdir()
    other, _ = write_layout("jsonl-paths", tmp_path / "other", pairs(120, seed=5))
    config = load_client_config(site_config(tmp_path / "b", other, ledger))
    stored.write_bytes(stored.read_bytes()[16:])  # a question removed to hide an overlap
    with pytest.raises(LedgerCorrupt, match="question set was altered"):
        train_reward_model(config, progress=False)
    stored.unlink()
    with pytest.raises(LedgerCorrupt, match="question set is missing"):
        train_reward_model(config, progress=False)

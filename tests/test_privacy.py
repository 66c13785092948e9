"""Privacy accounting: histories persist as JSON, compose by concatenation, plan noise for a target."""

from __future__ import annotations

import json
import math

import pytest

from mor_secure.privacy import (
    AccountantHistory,
    BudgetTooLow,
    PrivacyReport,
    compose,
    default_delta,
    epsilon,
    plan_noise,
)

Q, STEPS, DELTA = 32 / 1000, 94, 1e-5  # 1000 pairs, batch 32, 3 epochs


def test_history_round_trips_through_json_and_merges_equal_steps():
    history = AccountantHistory()
    for _ in range(3):
        history.add(1.1, Q)
    history.add(0.9, Q, 5)
    assert history.as_opacus() == [(1.1, Q, 3), (0.9, Q, 5)]
    restored = AccountantHistory.from_state_dict(json.loads(json.dumps(history.state_dict())))
    assert restored == history and restored.steps == 8


@pytest.mark.parametrize(
    "state",
    [
        None,
        {"format": 2, "history": []},
        {"format": 1, "history": [[1.0, 0.1]]},
        {"format": 1, "history": [[1.0, 1.5, 3]]},
        {"format": 1, "history": [[-1.0, 0.1, 3]]},
        {"format": 1, "history": [[1.0, 0.1, 2.5]]},
        {"format": 1, "history": "x"},
    ],
)
def test_malformed_history_is_refused(state):
    with pytest.raises(ValueError):
        AccountantHistory.from_state_dict(state)


def test_epsilon_edge_cases_and_accountants():
    assert epsilon(AccountantHistory(), DELTA) == 0.0
    assert math.isinf(epsilon(AccountantHistory([(0.0, Q, 10)]), DELTA))
    with pytest.raises(ValueError, match="GDP is not offered"):
        epsilon(AccountantHistory([(1.0, Q, 10)]), DELTA, accountant="gdp")
    assert default_delta(200) == 1e-5 and default_delta(200_000) == 1 / 200_000


def test_plan_noise_reaches_target_and_matches_the_measured_noise():
    sigma = plan_noise(3.0, DELTA, Q, STEPS)
    spent = epsilon(AccountantHistory([(sigma, Q, STEPS)]), DELTA)
    assert 2.99 - 0.01 <= spent <= 3.0
    assert sigma == pytest.approx(0.875, abs=0.01)  # measured once with Opacus' PRV accountant (RDP: 0.942)
    sigma_rdp = plan_noise(3.0, DELTA, Q, STEPS, accountant="rdp")
    assert sigma_rdp > sigma  # RDP is looser, so it needs more noise for the same epsilon


def test_two_runs_compose_below_the_sum_and_prior_history_raises_the_noise():
    sigma = plan_noise(2.0, DELTA, Q, STEPS)
    run = AccountantHistory([(sigma, Q, STEPS)])
    both = compose([run, run])
    prv, rdp = epsilon(both, DELTA), epsilon(both, DELTA, "rdp")
    assert 2.0 < prv < 4.0 and prv == pytest.approx(2.66, abs=0.05)
    assert prv < rdp < 4.0
    # A second run planned to keep the total at 3 lands just under 3 with the first run counted.
    second = plan_noise(3.0, DELTA, Q, STEPS, prior_history=run)
    assert 2.98 <= epsilon(run + AccountantHistory([(second, Q, STEPS)]), DELTA) <= 3.0
    assert epsilon(AccountantHistory([(second, Q, STEPS)]), DELTA) < 2.9  # alone it spends less than 3
    with pytest.raises(BudgetTooLow):
        plan_noise(1.5, DELTA, Q, STEPS, prior_history=run)


def test_privacy_report_writes_infinity_as_null():
    report = PrivacyReport(
        family="dual-encoder",
        base="",
        private=False,
        epsilon=math.inf,
        epsilon_rdp=math.inf,
        delta=1e-5,
        accountant="prv",
        noise_multiplier=0.0,
        sample_rate=0.1,
        steps=30,
        n_pairs=200,
        max_grad_norm=1.0,
        data_fingerprint="sha256:00",
        model_sha256="sha256:11",
        run_id="r",
        time="2026-01-01T00:00:00Z",
        history={"format": 1, "history": [[0.0, 0.1, 30]]},
    )
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["epsilon"] is None and data["baseline"] is True
    assert PrivacyReport.from_json(data) == report
    with pytest.raises(ValueError, match="lacks"):
        PrivacyReport.from_json({"format": 1, "family": "x"})

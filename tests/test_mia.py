"""The membership-inference audit (benchmarks/mia_audit.py): AUC, its bootstrap interval, the DP bound
on AUC, and an attack that sees nothing but the scores a site's ScoringService returns."""

from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def mia():
    from benchmarks import mia_audit

    return mia_audit


def test_auc_on_known_inputs(mia):
    assert mia.auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert mia.auc([0, 1, 2], [3, 4, 5]) == 0.0
    assert mia.auc([1, 1, 1], [1, 1]) == 0.5
    # pairs (member > non-member): 2>1 yes, 2>2 tie, 0>1 no, 0>2 no -> (1 + 0.5) / 4
    assert mia.auc([2, 0], [1, 2]) == pytest.approx(0.375)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40), rng.normal(size=30)
    brute = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
    assert mia.auc(a, b) == pytest.approx(brute)
    with pytest.raises(ValueError):
        mia.auc([], [1.0])


def test_bootstrap_interval_brackets_the_auc(mia):
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(0.5, 1, 60), rng.normal(0, 1, 60)
    lo, hi = mia.bootstrap_auc(members, nonmembers, rounds=300, seed=0)
    assert 0 <= lo < mia.auc(members, nonmembers) < hi <= 1
    assert mia.bootstrap_auc([3, 4], [0, 1], rounds=50) == (1.0, 1.0)


def test_max_auc_bound(mia):
    assert mia.max_auc(0.0, 0.0) == 0.5
    assert mia.max_auc(math.inf, 1e-5) == 1.0
    assert mia.max_auc(1.0, 0.0) == pytest.approx(math.e / (1 + math.e))
    values = [mia.max_auc(eps, 1e-5) for eps in (0, 0.5, 1, 2, 4, 8, 16)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert mia.max_auc(1.0, 0.1) > mia.max_auc(1.0, 0.0)
    for eps, delta in ((1.0, 1e-5), (2.0, 0.1), (0.0, 0.2)):  # the area under the DP ROC envelope
        x = np.linspace(0, 1, 200001)
        envelope = np.minimum.reduce([np.ones_like(x), math.exp(eps) * x + delta, 1 - math.exp(-eps) * (1 - delta - x)])
        assert mia.max_auc(eps, delta) == pytest.approx(np.trapezoid(envelope, x), abs=1e-6)
    with pytest.raises(ValueError):
        mia.max_auc(-1.0, 0.0)


def test_implied_epsilon_inverts_the_bound(mia):
    for eps, delta in ((0.5, 1e-5), (1.0, 0.0), (3.0, 0.01)):
        assert mia.implied_epsilon(mia.max_auc(eps, delta), delta) == pytest.approx(eps)
    assert mia.implied_epsilon(0.5, 1e-5) == 0.0 and mia.implied_epsilon(0.4, 0.0) == 0.0
    assert mia.implied_epsilon(1.0, 0.0) == math.inf


@pytest.mark.usefixtures("one_torch_thread")
def test_attack_reads_only_returned_scores(mia, world_dir, tmp_path):
    from client_agent.config import ServeSection
    from client_agent.scoring import ScoringService
    from mor_secure.data.loader import load_preferences
    from mor_secure.protocol import ScoreReply, ScoreRequest
    from mor_secure.rewards import build_reward_model
    from mor_secure.rewards.config import ModelSection

    pairs = load_preferences(world_dir / "client-0", split="test", kind="pairs").select(range(6))
    service = ScoringService(build_reward_model(ModelSection(), seed=0), "sha256:x", ServeSection(max_batch=4))
    seen: list[tuple[ScoreRequest, ScoreReply]] = []

    def recording(msg):
        reply = service(msg)
        seen.append((msg, reply))
        return reply

    stats = mia.membership_statistics(mia.service_scorer(recording, max_batch=4), pairs)
    assert all(isinstance(m, ScoreRequest) and isinstance(r, ScoreReply) for m, r in seen)
    assert len(seen) == 4 and len({m.request_id for m, _ in seen}) == 4  # 6 chosen + 6 rejected, 4 per request
    returned = [s for _, reply in seen for s in reply.scores]
    margin = np.asarray(returned[:6]) - np.asarray(returned[6:])
    assert stats == pytest.approx(-np.log1p(np.exp(-margin)))
    # the attack's view is the reply: change the replies and only the statistics follow
    shifted = mia.membership_statistics(
        mia.service_scorer(lambda msg: ScoreReply(msg.request_id, [0.0] * len(msg.prompts), "sha256:x")), pairs
    )
    assert shifted == pytest.approx(np.full(6, -math.log(2)))
    tight = ScoringService(service.model, "sha256:x", ServeSection(max_batch=2))
    with pytest.raises(RuntimeError, match="refused"):
        mia.membership_statistics(mia.service_scorer(tight, max_batch=4), pairs)


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_audit_end_to_end_with_tls(mia, tmp_path):
    mia.main(
        [
            "--members",
            "8",
            "--seeds",
            "0",
            "--epsilons",
            "8",
            "inf",
            "--epochs",
            "2",
            "--shadows",
            "1",
            "--bootstrap",
            "20",
            "--public-rows",
            "16",
            "--out",
            str(tmp_path),
        ]
    )
    import json

    raw = json.loads((tmp_path / "mia_audit.json").read_text())
    assert [r["target_epsilon"] for r in raw["rows"]] == [8.0, None] and raw["public_rows"] == 16
    dp, no_dp = raw["rows"]
    assert dp["epsilon"] == pytest.approx(8.0, abs=0.1) and no_dp["epsilon"] is None  # strict JSON: inf -> null
    assert dp["tls_auc"] == pytest.approx(dp["auc"]) and dp["tls_max_diff"] < 1e-6  # same scores over TLS
    assert 0 <= dp["ci"][0] <= dp["auc"] <= dp["ci"][1] <= 1 and "shadow_auc" in dp
    report = (tmp_path / "mia_audit.md").read_text()
    assert "max AUC = (1 - delta)(e^eps + delta) / (e^eps + 1) + delta" in report
    assert "starting from one pretrained without DP on public pairs" in report
    assert "Command: `python -m benchmarks.mia_audit --members 8" in report and "- CPU:" in report
    assert (tmp_path / "mia_audit.png").stat().st_size > 0

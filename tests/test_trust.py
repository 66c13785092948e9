"""The poisoned-client defence: agreement trust separates honest from inverted, random and one-wrong-answer
clients; Trusted masks them before fusion; the trust report lands in the ledger; the config switch.

Clients are the synthetic experts of benchmarks/synthetic.py, computed from ground truth.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from benchmarks.synthetic import SyntheticClient, make_world, raw_pair_scores
from coordinator.config import load_coordinator_config
from coordinator.mixture.calibration import Calibrator
from coordinator.mixture.fusion import Quorum, ScoreItem, UniformMean
from coordinator.mixture.router import train_router
from coordinator.mixture.router_run import screen_sites
from coordinator.mixture.trust import Trusted, TrustError, agreement_trust, mask_untrusted, record_trust
from mor_secure.config import ConfigError
from mor_secure.ledger import PrivacyLedger, read_entries, verify
from tests.site_helpers import coordinator_toml

HONEST = {
    "a": SyntheticClient("expert", (0,), offset=1.0, scale=2.0),
    "b": SyntheticClient("expert", (1,), noise=0.5, offset=-3.0, scale=0.5),
}
ADVERSARIES = {
    "inv": SyntheticClient("inverted", (0, 1)),
    "rnd": SyntheticClient("random"),
    "fix": SyntheticClient("fixed-wrong", wrong_answer=2),
}
SITES = [*HONEST, *ADVERSARIES]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scored():
    """Raw ``[N, K, 2]`` scores of 600 training and 300 held-out pairs, and a calibrator fitted on training."""
    train, test = make_world(900, seed=0).split(600)
    clients = [*HONEST.values(), *ADVERSARIES.values()]
    raw_train, raw_test = raw_pair_scores(train, clients, seed=1), raw_pair_scores(test, clients, seed=2)
    calibrator = Calibrator().fit({s: raw_train[:, k].flatten().tolist() for k, s in enumerate(SITES)})
    return train, raw_train, raw_test, calibrator


def _calibrated(raw: torch.Tensor, calibrator: Calibrator) -> torch.Tensor:
    return torch.stack([(raw[:, k] - calibrator[s].center) / calibrator[s].scale for k, s in enumerate(SITES)], dim=1)


def test_agreement_trust_separates_honest_from_adversaries(scored):
    _, raw_train, _, calibrator = scored
    trust = agreement_trust(_calibrated(raw_train, calibrator), SITES)
    assert {s for s, t in trust.items() if t.trusted} == set(HONEST), trust
    assert trust["inv"].agreement < 0.4 and abs(trust["rnd"].agreement - 0.5) < 0.07
    assert all(t.pairs == 600 and t.lower_bound < t.agreement for t in trust.values())
    # A site that scored nothing has no evidence and is not trusted; bad inputs are refused clearly.
    missing = _calibrated(raw_train, calibrator).clone()
    missing[:, 0] = math.nan
    assert not agreement_trust(missing, SITES)["a"].trusted
    with pytest.raises(TrustError, match=r"\[N, 5, 2\]"):
        agreement_trust(raw_train[:, :2], SITES)
    with pytest.raises(TrustError, match="threshold"):
        agreement_trust(raw_train, SITES, threshold=1.5)


def test_single_domain_experts_are_judged_in_their_own_domain():
    # three domains, one weak expert each: near chance on the pooled pairs, clearly right on their own
    world = make_world(900, domains=3, answers=4, seed=5)
    clients = [SyntheticClient("expert", (d,), noise=1.2) for d in range(3)]
    clients += [SyntheticClient("inverted", (0,), noise=1.2), SyntheticClient("random")]
    sites = ["e0", "e1", "e2", "inv", "rnd"]
    scores = raw_pair_scores(world, clients, seed=6)
    pooled = agreement_trust(scores, sites)
    assert not any(pooled[s].trusted for s in ("e0", "e1", "e2")), pooled  # the failure the groups fix
    per_domain = agreement_trust(scores, sites, groups=world.groups)
    assert {s for s, t in per_domain.items() if t.trusted} == {"e0", "e1", "e2"}, per_domain
    assert [per_domain[s].group for s in ("e0", "e1", "e2")] == ["0", "1", "2"]
    assert per_domain["e0"].pairs < 900 and per_domain["e0"].to_dict()["group"] == "0"
    with pytest.raises(TrustError, match="group labels"):
        agreement_trust(scores, sites, groups=world.groups[:10])


def test_trusted_wrapper_masks_untrusted_clients_and_restores_accuracy(scored):
    _, raw_train, raw_test, calibrator = scored
    trust = agreement_trust(_calibrated(raw_train, calibrator), SITES)
    items = [ScoreItem(None, [], [])] * len(raw_test)

    def accuracy(fusion) -> float:
        chosen = fusion.fuse(items, {s: raw_test[:, k, 0].tolist() for k, s in enumerate(SITES)})
        rejected = fusion.fuse(items, {s: raw_test[:, k, 1].tolist() for k, s in enumerate(SITES)})
        return sum(c > r for c, r in zip(chosen, rejected)) / len(items)

    defended = Trusted(UniformMean(calibrator), trust)
    assert defended.sites == tuple(HONEST)
    honest_only = UniformMean(Calibrator(sites={s: calibrator[s] for s in HONEST}))
    assert accuracy(defended) == accuracy(honest_only) > accuracy(UniformMean(calibrator)) + 0.1
    # Quorum over the wrapper counts only trusted sites: the three adversaries cannot make a quorum.
    only_adversaries = {s: [0.0] * 3 for s in ADVERSARIES}
    assert Quorum(defended, min_clients=1).fuse(items[:3], only_adversaries) == [None] * 3
    untrusted_everywhere = {s: t.__class__(**{**t.__dict__, "trusted": False}) for s, t in trust.items()}
    with pytest.raises(TrustError, match='defence = "none"'):
        Trusted(UniformMean(calibrator), untrusted_everywhere)


def test_router_trained_on_masked_columns_never_routes_to_excluded_sites(scored):
    train, raw_train, _, calibrator = scored
    z = _calibrated(raw_train, calibrator)
    trust = agreement_trust(z, SITES)
    masked = mask_untrusted(z, SITES, trust)
    assert torch.isnan(masked[:, 2:]).all() and torch.equal(masked[:, :2], z[:, :2])
    router = train_router(train.features[:200], masked[:200], sites=SITES, epochs=1, seed=0)
    live = torch.isfinite(masked).all(dim=2)
    assert (router.weights(train.features, live)[:, 2:] == 0).all()


def test_trust_report_lands_in_the_ledger_and_verifies(scored, pki_dir: Path, tmp_path: Path):
    _, raw_train, _, calibrator = scored
    z = _calibrated(raw_train, calibrator)
    config = load_coordinator_config(
        coordinator_toml(tmp_path, pki_dir, 7999, SITES, '[router]\ndefence = "agreement"\n')
    )
    trust = screen_sites(config, z, SITES)
    entries = read_entries(config.ledger.path)
    assert [e.kind for e in entries] == ["trust"] * len(SITES)
    by_site = {e.body["site"]: e.body for e in entries}
    assert by_site["a"]["decision"] == "trusted" and by_site["inv"]["decision"] == "excluded"
    assert by_site["inv"]["agreement"] == round(trust["inv"].agreement, 4) and by_site["inv"]["pairs"] == 600
    assert verify(config.ledger.path, pki_dir / "ca.pem").ok
    record_trust(PrivacyLedger(config.ledger.path), trust, defence="agreement")  # a second run appends
    assert len(read_entries(config.ledger.path)) == 2 * len(SITES)
    assert verify(config.ledger.path, pki_dir / "ca.pem").ok
    # With the defence off nothing is screened and nothing is written.
    (tmp_path / "off").mkdir()
    off = load_coordinator_config(coordinator_toml(tmp_path / "off", pki_dir, 7999, SITES))
    assert screen_sites(off, z, SITES) == {} and not off.ledger.path.exists()


def test_config_switch_and_a_bad_value_is_refused(pki_dir: Path, tmp_path: Path):
    from mor_secure.cli import root

    good = load_coordinator_config(
        coordinator_toml(tmp_path, pki_dir, 7999, ["a"], '[router]\ndefence = "agreement"\ntrust_threshold = 0.6\n')
    )
    assert (good.router.defence, good.router.trust_threshold) == ("agreement", 0.6)
    assert load_coordinator_config(coordinator_toml(tmp_path, pki_dir, 7999, ["a"])).router.defence == "none"
    bad = coordinator_toml(tmp_path, pki_dir, 7999, ["a"], '[router]\ndefence = "median"\n')
    with pytest.raises(ConfigError, match="\\[router\\] defence must be one of 'none', 'agreement', got 'median'"):
        load_coordinator_config(bad)
    result = CliRunner().invoke(root, ["coordinator", "router", "--config", str(bad)])
    assert result.exit_code != 0 and "'none', 'agreement'" in result.output and "Traceback" not in result.output
    with pytest.raises(ConfigError, match="trust_threshold"):
        load_coordinator_config(coordinator_toml(tmp_path, pki_dir, 7999, ["a"], "[router]\ntrust_threshold = 1\n"))

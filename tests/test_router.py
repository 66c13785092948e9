"""The Mixture-of-Rewards router on synthetic features: routing, masking, dropping, objectives, files.

Routing on real VLM features of the benchmark world is tested end to end in test_fusion.py.
"""

from __future__ import annotations

import pytest
import torch

from coordinator.mixture.router import (
    Router,
    RouterConfig,
    RouterError,
    _drop_clients,
    mean_weights_by,
    pairwise_accuracy,
    train_router,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SITES = ["site-a", "site-b", "site-c"]


def _expert_world(n: int, seed: int, experts: dict[int, list[int]] | None = None):
    """Features clustered by domain; a site scores its domain's pairs well and others by pure noise."""
    g = torch.Generator().manual_seed(seed)
    experts = experts or {d: [d] for d in range(3)}
    domain = torch.randint(0, 3, (n,), generator=g)
    centres = torch.randn(3, 16, generator=torch.Generator().manual_seed(99)) * 2
    feats = centres[domain] + torch.randn(n, 16, generator=g)
    scores = torch.randn(n, 3, 2, generator=g)
    for d, sites in experts.items():
        rows = (domain == d).nonzero(as_tuple=True)[0]
        for rank, k in enumerate(sites):  # earlier experts are sharper
            noise = 0.3 * (rank + 1)
            scores[rows, k, 0] = 1 + noise * torch.randn(len(rows), generator=g)
            scores[rows, k, 1] = noise * torch.randn(len(rows), generator=g)
    return feats, scores, [str(d) for d in domain.tolist()]


def test_router_routes_each_cluster_to_its_expert():
    feats, scores, domains = _expert_world(600, seed=0)
    router = train_router(feats[:400], scores[:400], sites=SITES, epochs=30, seed=0)
    weights = mean_weights_by(router, feats[400:], domains[400:])
    for d, site in enumerate(SITES):
        assert weights[str(d)][site] > 0.9
    uniform = Router(RouterConfig(sites=SITES, feature_dim=16))
    torch.nn.init.zeros_(uniform.gate[-1].weight), torch.nn.init.zeros_(uniform.gate[-1].bias)
    assert pairwise_accuracy(router, feats[400:], scores[400:]) > 0.97
    assert pairwise_accuracy(uniform, feats[400:], scores[400:]) < 0.85


def test_weights_are_renormalised_over_live_clients():
    router = Router(RouterConfig(sites=SITES, feature_dim=8, temperature=0.5)).eval()
    feats = torch.randn(5, 8)
    full = router.weights(feats)
    assert torch.allclose(full.sum(dim=1), torch.ones(5))
    live = torch.tensor([[True, True, False]] * 4 + [[False, False, False]])
    masked = router.weights(feats, live)
    expected = full[:4, :2] / full[:4, :2].sum(dim=1, keepdim=True)
    assert torch.allclose(masked[:4, :2], expected, atol=1e-6)
    assert (masked[:4, 2] == 0).all() and (masked[4] == 0).all()
    scores = torch.tensor([[1.0, 2.0, float("nan")]] * 4 + [[float("nan")] * 3])
    fused = router(feats, scores)
    assert torch.allclose(fused[:4], masked[:4, 0] + 2 * masked[:4, 1])
    assert torch.isnan(fused[4])


def test_random_dropping_keeps_one_live_client_and_never_revives():
    live = torch.tensor([[True, True, True], [True, False, False], [False, True, True]] * 200)
    kept = _drop_clients(live, 0.9, torch.Generator().manual_seed(0))
    assert kept.any(dim=1).all() and not (kept & ~live).any()
    assert kept.sum() < live.sum() and (kept[1::3] == live[1::3]).all()


def test_dropping_teaches_a_fallback_when_the_best_site_is_missing():
    # Domain 0 has two experts (a sharp, b weaker); when a is offline the router should lean on b.
    experts = {0: [0, 1], 1: [1], 2: [2]}
    feats, scores, domains = _expert_world(900, seed=1, experts=experts)
    test_rows = [i for i in range(600, 900) if domains[i] == "0"]
    without_a = torch.tensor([[False, True, True]] * len(test_rows))
    accs = {}
    for prob in (0.0, 0.5):
        router = train_router(feats[:600], scores[:600], sites=SITES, epochs=30, seed=0, drop_prob=prob)
        accs[prob] = pairwise_accuracy(router, feats[test_rows], scores[test_rows], live=without_a)
    site_b = scores[test_rows, 1]
    b_alone = float((site_b[:, 0] > site_b[:, 1]).float().mean())
    assert accs[0.5] >= b_alone - 0.02 and accs[0.5] >= accs[0.0] - 0.02


def test_objective_embedding_changes_the_routing():
    # Same inputs, two objectives: site-a is right about "accuracy", site-b about "style".
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(400, 8, generator=g)
    scores = torch.randn(400, 3, 2, generator=g)
    objectives = ["accuracy", "style"] * 200
    scores[0::2, 0, 0] += 3
    scores[1::2, 1, 0] += 3
    router = train_router(
        feats, scores, sites=SITES, epochs=30, seed=0, objectives=objectives, objective_vocab=["accuracy", "style"]
    )
    w = mean_weights_by(router, feats, objectives, objectives=objectives)
    assert w["accuracy"]["site-a"] > 0.8 and w["style"]["site-b"] > 0.8
    with pytest.raises(ValueError, match="unknown objective"):
        router.weights(feats[:1], objectives=["safety"])


def test_save_load_round_trip_and_bad_folders(tmp_path):
    feats, scores, _ = _expert_world(120, seed=2)
    router = train_router(feats, scores, sites=SITES, epochs=2, seed=0, temperature=0.7)
    loaded = Router.load(router.save(tmp_path / "router"))
    assert loaded.config == router.config and not loaded.training
    assert torch.equal(loaded.weights(feats), router.weights(feats))
    with pytest.raises(RouterError, match="no router here"):
        Router.load(tmp_path / "nothing")
    (tmp_path / "router" / "router.json").write_text('{"sites": ["x"], "feature_dim": 16}')
    with pytest.raises(RouterError, match="(?s)do not match.*retrain"):
        Router.load(tmp_path / "router")
    (tmp_path / "router" / "router.json").write_text('{"sites": "abc", "feature_dim": 16}')
    with pytest.raises(RouterError, match="invalid router config.*sites must be a list"):
        Router.load(tmp_path / "router")
    with pytest.raises(RouterError, match=r"\[N, 3, 2\]"):
        train_router(feats, scores[:, :2], sites=SITES, epochs=1)

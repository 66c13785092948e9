"""Reward fusion on the benchmark world: the router learns who owns which domain, fused rewards beat
the uniform mean, missing clients renormalise, Quorum abstains, and TRL's GRPO calls the reward.

The clients are synthetic experts computed from the world's ground truth: on its own domain a site
scores 1 for the true answer in any style, 0.25 more in its own style and 0 otherwise, plus small noise;
on other domains it returns pure noise. Features come from the real tiny Qwen2-VL of the model zoo.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from coordinator.mixture.calibration import Calibrator
from coordinator.mixture.features import PromptFeatures
from coordinator.mixture.fusion import (
    Conservative,
    MixtureOfRewards,
    Quorum,
    ScoreItem,
    SingleClient,
    UniformMean,
    reward_callable,
)
from coordinator.mixture.router import evaluate_router, mean_weights_by, train_router
from mor_secure.data.loader import load_preferences
from mor_secure.data.public import parse_verbose
from mor_secure.data.schema import answer_text, content_hash, question_text
from mor_secure.data.styles import parse_styled, render

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class ExpertClients:
    """In-process stand-ins for the sites' reward models, scoring from the world's ground truth."""

    own: dict[str, tuple[str, str]]  # site -> (own domain, own style)
    truth: dict[str, tuple[str, str]]  # content hash -> (domain, answer)
    noise: float = 0.1

    def score(self, site: str, image: Any, prompt: list[dict], completion: list[dict]) -> float:
        key = content_hash(image, question_text(prompt))
        domain, answer = self.truth[key]
        text = answer_text(completion)
        rng = random.Random(f"{site}:{key}:{text}")  # a deterministic "model": same input, same score
        own_domain, style = self.own[site]
        if domain != own_domain:
            return rng.gauss(0.0, 1.0)
        said = parse_styled(text) or (None, parse_verbose(text))
        return float(said[1] == answer) + 0.25 * (text == render(answer, style)) + rng.gauss(0.0, self.noise)

    def __call__(
        self, images: Sequence[Any], prompts: Sequence[list[dict]], completions: Sequence[list[dict]]
    ) -> dict[str, list[float] | None]:
        return {site: [self.score(site, *row) for row in zip(images, prompts, completions)] for site in self.own}


@dataclass
class Setup:
    clients: ExpertClients
    sites: list[str]
    calibrator: Calibrator
    features: PromptFeatures
    fusion: MixtureOfRewards
    test: Any
    test_features: torch.Tensor
    test_pair_scores: torch.Tensor


def _pair_items(ds) -> tuple[list[ScoreItem], list[ScoreItem]]:
    chosen = [ScoreItem(r["image"], r["prompt"], r["chosen"]) for r in ds]
    rejected = [ScoreItem(r["image"], r["prompt"], r["rejected"]) for r in ds]
    return chosen, rejected


def _raw(clients: ExpertClients, items: list[ScoreItem]) -> dict[str, list[float] | None]:
    return clients([i.image for i in items], [i.prompt for i in items], [i.completion for i in items])


@pytest.fixture(scope="module")
def setup(world_dir: Path, tiny_model_dir) -> Setup:
    manifest = json.loads((world_dir / "manifest.json").read_text())
    own = {site: (c["own_domain"], c["style"]) for site, c in manifest["clients"].items()}
    sites = sorted(own)
    train = load_preferences(world_dir / "server" / "router", split="train")
    test = load_preferences(world_dir / "server" / "router", split="test")
    truth = {content_hash(r["image"], question_text(r)): (r["domain"], r["answer"]) for ds in (train, test) for r in ds}
    clients = ExpertClients(own, truth)

    # Scores are fetched once; the calibration set is the router set's training answers.
    chosen, rejected = _pair_items(train)
    calibrator = Calibrator().fit(_raw(clients, chosen + rejected))
    features = PromptFeatures(tiny_model_dir("qwen2-vl"))
    train_features = features([r["image"] for r in train], [r["prompt"] for r in train])
    router = train_router(
        train_features, _pair_scores(clients, calibrator, sites, train), sites=sites, epochs=40, lr=1e-2, seed=0
    )
    test_features = features([r["image"] for r in test], [r["prompt"] for r in test])
    return Setup(
        clients,
        sites,
        calibrator,
        features,
        MixtureOfRewards(router, calibrator, features),
        test,
        test_features,
        _pair_scores(clients, calibrator, sites, test),
    )


def _pair_scores(clients: ExpertClients, calibrator: Calibrator, sites: list[str], ds) -> torch.Tensor:
    """Calibrated scores ``[N, K, 2]`` of each pair's chosen and rejected answer per site."""
    chosen, rejected = _pair_items(ds)
    raw_c, raw_r = _raw(clients, chosen), _raw(clients, rejected)
    return torch.tensor(
        [[calibrator.transform(s, raw_c[s]), calibrator.transform(s, raw_r[s])] for s in sites]
    ).permute(2, 0, 1)


def _accuracy(fusion, clients: ExpertClients, ds) -> float:
    chosen, rejected = _pair_items(ds)
    good, bad = fusion.fuse(chosen, _raw(clients, chosen)), fusion.fuse(rejected, _raw(clients, rejected))
    return sum(g > b for g, b in zip(good, bad)) / len(ds)


def test_router_routes_each_domain_to_its_owner_and_beats_uniform(setup: Setup):
    weights = mean_weights_by(setup.fusion.router, setup.test_features, setup.test["domain"])
    for site, (domain, _) in setup.clients.own.items():
        assert weights[domain][site] >= 0.6, weights
    mor = _accuracy(setup.fusion, setup.clients, setup.test)
    uniform = _accuracy(UniformMean(setup.calibrator), setup.clients, setup.test)
    assert mor > uniform + 0.1 and mor >= 0.9, (mor, uniform)
    # The router's own report agrees with the fusion strategies run on the same pairs.
    report = evaluate_router(setup.fusion.router, setup.test_features, setup.test_pair_scores, setup.test["domain"])
    assert report["accuracy"] == pytest.approx(mor) and report["uniform_accuracy"] == pytest.approx(uniform)
    assert report["weights_by"] == weights and max(report["site_accuracy"].values()) < mor
    json.dumps(report)


def test_mixture_save_load_round_trip(setup: Setup, tmp_path: Path):
    loaded = MixtureOfRewards.load(setup.fusion.save(tmp_path / "mixture"))
    items, _ = _pair_items(setup.test.select(range(5)))
    scores = _raw(setup.clients, items)
    assert loaded.fuse(items, scores) == pytest.approx(setup.fusion.fuse(items, scores), abs=1e-6)
    assert loaded.features.name == setup.features.name


def test_features_are_cached_by_content(setup: Setup, tiny_model_dir):
    cached = len(setup.features)
    rows = setup.test.select(range(4))
    again = setup.features([r["image"] for r in rows], [r["prompt"] for r in rows])
    assert len(setup.features) == cached and torch.equal(again, setup.test_features[:4])
    small = PromptFeatures(tiny_model_dir("qwen2-vl"), max_cached=2)
    alone = torch.cat([small([r["image"]], [r["prompt"]]) for r in rows])  # batch size never matters
    assert len(small) == 2 and torch.allclose(alone, again, atol=1e-5)


def test_missing_client_renormalises_and_none_when_nobody_answers(setup: Setup):
    items, _ = _pair_items(setup.test.select(range(6)))
    raw = _raw(setup.clients, items)
    gone = setup.sites[0]
    partial = {**raw, gone: None}
    live = torch.tensor([[s != gone for s in setup.sites]] * len(items))
    w = setup.fusion.weights(items, live)
    assert torch.allclose(w.sum(dim=1), torch.ones(len(items))) and (w[:, 0] == 0).all()
    z = torch.tensor([setup.calibrator.transform(s, raw[s]) for s in setup.sites[1:]]).T
    expected = (w[:, 1:] * z).sum(dim=1)
    assert setup.fusion.fuse(items, partial) == pytest.approx(expected.tolist(), abs=1e-5)
    # A site that answers the wrong number of scores, NaN or nothing at all counts as missing.
    hostile = {setup.sites[0]: [1.0], setup.sites[1]: [math.nan] * 6, setup.sites[2]: None}
    assert setup.fusion.fuse(items, hostile) == [None] * 6


def test_uniform_single_and_quorum(setup: Setup):
    a, b = setup.sites[:2]
    cal = Calibrator().fit({a: [0.0, 2.0], b: [10.0, 30.0]})  # a: centre 1, scale 1; b: centre 20, scale 10
    items = [ScoreItem(None, [], [])] * 3
    scores = {a: [2.0, None, 0.0], b: [30.0, None, math.inf], "unknown-site": [5.0, 5.0, 5.0]}
    assert UniformMean(cal).fuse(items, scores) == [1.0, None, -1.0]
    assert SingleClient(b, cal).fuse(items, scores) == [1.0, None, None]
    # Quorum counts only the sites its strategy reads: the uncalibrated site does not make up numbers.
    assert Quorum(UniformMean(cal), min_clients=2).fuse(items, scores) == [1.0, None, None]
    assert Quorum(SingleClient(a, cal), min_clients=1).fuse(items, scores) == [1.0, None, -1.0]
    # one site alone can never make a quorum of 2: it needs only itself, or GRPO would get no reward at all
    assert Quorum(SingleClient(a, cal), min_clients=2).fuse(items, scores) == [1.0, None, -1.0]
    with pytest.raises(ValueError, match="at least 1"):
        Quorum(UniformMean(cal), min_clients=0)


def test_reward_callable_under_trl_grpo(setup: Setup, tiny_model_dir, tmp_path: Path):
    """Call the reward through GRPOTrainer's own reward step, with the inputs its rollout builds."""
    from trl import GRPOConfig, GRPOTrainer
    from trl.data_utils import prepare_multimodal_messages

    from mor_secure.models.loading import load_vlm

    rows = setup.test.select(range(4)).remove_columns(["chosen", "rejected"])
    seen: list[tuple] = []

    def scorer(images, prompts, completions):
        seen.append((images, prompts, completions))
        scores = setup.clients(images, prompts, completions)
        scores[setup.sites[0]] = None  # one site is offline for this batch
        return scores

    fused = Quorum(setup.fusion, min_clients=2)
    reward = reward_callable(fused, scorer)
    model, processor = load_vlm(tiny_model_dir("qwen2-vl"))
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        report_to=[],
        bf16=False,
        use_cpu=True,
    )
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=reward, args=args, train_dataset=rows)
    # What _generate_and_score_completions hands to _calculate_rewards: data set rows, prompts with
    # their images injected, decoded completions as assistant messages, completion token ids.
    inputs = [dict(r) for r in rows]
    prompts = [prepare_multimodal_messages(x["prompt"], images=[x["image"]]) for x in inputs]
    texts = [render(x["answer"], setup.clients.own[setup.sites[1]][1]) for x in inputs]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    rewards = trainer._calculate_rewards(inputs, prompts, completions, [[1]] * len(inputs))[:, 0]

    images, sent_prompts, sent_completions = seen[0]
    assert images == [x["image"] for x in inputs]
    assert sent_prompts == [x["prompt"] for x in inputs]  # schema messages, no PIL payloads
    assert sent_completions == [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in texts]
    items = [ScoreItem(x["image"], x["prompt"], c) for x, c in zip(inputs, sent_completions)]
    expected = setup.fusion.fuse(items, {**setup.clients(images, sent_prompts, sent_completions), setup.sites[0]: None})
    assert rewards.tolist() == pytest.approx(expected, abs=1e-4)
    assert trainer.reward_func_names == ["mor_reward"]
    # Below quorum the reward is None, which TRL turns into NaN (left out of the group baseline).
    lone = reward_callable(fused, lambda i, p, c: {setup.sites[1]: [0.5] * len(p)})
    trainer.reward_funcs = [lone]
    assert torch.isnan(trainer._calculate_rewards(inputs, prompts, completions, [[1]] * 4)).all()
    # Float noise from batched client models must not fake a spread within a group of equal answers.
    jitter = reward_callable(
        SingleClient(setup.sites[1], setup.calibrator),
        lambda i, p, c: {setup.sites[1]: [0.3 + 1e-6 * k for k in range(len(p))]},
    )
    trainer.reward_funcs = [jitter]
    assert trainer._calculate_rewards(inputs, prompts, completions, [[1]] * 4).unique().numel() == 1


def test_objective_column_reaches_the_router(setup: Setup):
    from coordinator.mixture.router import Router, RouterConfig

    torch.manual_seed(0)
    router = Router(
        RouterConfig(sites=setup.sites, feature_dim=setup.features.dim, objectives=["accuracy", "style"])
    ).eval()
    mixture = MixtureOfRewards(router, setup.calibrator, setup.features)
    rows = setup.test.select(range(3))
    completions = [[{"role": "assistant", "content": "red"}]] * 3
    reward = reward_callable(mixture, setup.clients, decimals=None)
    by_objective = {}
    for name in ("accuracy", "style"):
        by_objective[name] = reward(
            prompts=rows["prompt"], completions=completions, image=rows["image"], objective=[name] * 3
        )
        items = [ScoreItem(r["image"], r["prompt"], _as_completion("red"), name) for r in rows]
        assert by_objective[name] == pytest.approx(mixture.fuse(items, _raw(setup.clients, items)), abs=1e-6)
    assert by_objective["accuracy"] != pytest.approx(by_objective["style"], abs=1e-4)


def _as_completion(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def test_conservative_penalises_disagreement_only():
    """Agreeing sites keep the plain mean; a lone dissenter lowers the reward by penalty x spread; a single
    client has nobody to disagree with, so it is unchanged."""
    cal = Calibrator().fit({"a": [-1.0, 1.0], "b": [-1.0, 1.0]})  # identity: centre 0, scale 1
    items = [ScoreItem(None, [], []) for _ in range(2)]
    scores = {"a": [1.0, 1.0], "b": [1.0, -1.0]}
    plain = UniformMean(cal).fuse(items, scores)
    careful = Conservative(UniformMean(cal), penalty=0.5).fuse(items, scores)
    assert plain == pytest.approx([1.0, 0.0])
    assert careful == pytest.approx([1.0, -0.5])  # spread of (1, -1) around 0 is 1
    assert Conservative(SingleClient("b", cal), penalty=2.0).fuse(items, scores) == pytest.approx([1.0, -1.0])
    assert Conservative(UniformMean(cal), penalty=0.5).fuse(items, {"a": [1.0, None], "b": None}) == pytest.approx(
        [1.0, None]
    )
    with pytest.raises(ValueError, match="penalty"):
        Conservative(UniformMean(cal), penalty=-1.0)

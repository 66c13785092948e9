"""Reward fusion strategies behind one interface, and the reward callable that TRL's GRPO calls.

A ``RewardFusion`` turns the clients' raw scores of a batch into one reward per item (None when it
cannot), like Flower's ``Strategy`` turns client results into a model. Strategies:
``MixtureOfRewards`` (router-weighted calibrated scores), ``UniformMean`` and ``SingleClient``.
Behaviour is added by wrapping (``Quorum``, ``Conservative``), not by subclassing. Baselines that score in process
(a FedAvg or a centralised reward model) implement the same ``fuse`` and set
``uses_client_scores = False``: they read ``items`` and ignore the clients.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coordinator.mixture.calibration import Calibrator, is_score
from coordinator.mixture.features import PromptFeatures, strip_images
from coordinator.mixture.router import Router, RouterError, live_mask
from mor_secure.logs import get_logger

log = get_logger("coordinator.mixture.fusion")

Message = dict[str, Any]
ClientScores = Mapping[str, Sequence[float | None] | None]
"""site -> one raw score per item (None for an item it could not score), or None if it did not answer."""
Features = Callable[[Sequence[Any], Sequence[list[Message]]], torch.Tensor]
"""(images, prompts) -> router features ``[N, D]``, e.g. a ``PromptFeatures``."""
Scorer = Callable[[list[Any], list[list[Message]], list[list[Message]]], dict[str, list[float] | None]]
"""(images, prompts, completions) -> raw scores per site; the client pool, or in-process models."""


@dataclass(frozen=True)
class ScoreItem:
    """One thing to reward: an image, the prompt messages, the completion messages, the objective."""

    image: Any
    prompt: list[Message]
    completion: list[Message]
    objective: str | None = None


class RewardFusion(ABC):
    """Turns per-site raw scores of a batch of items into one reward per item (None: no reward)."""

    uses_client_scores: bool = True
    """False for baselines that score ``items`` themselves; the reward callable then skips the pool."""
    sites: tuple[str, ...] = ()
    """The sites whose scores this strategy reads (what the pool should ask; what Quorum counts)."""

    @abstractmethod
    def fuse(self, items: Sequence[ScoreItem], client_scores: ClientScores) -> list[float | None]:
        """One reward per item, or None where the strategy cannot give one."""

    def components(
        self, items: Sequence[ScoreItem], client_scores: ClientScores
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(weights [N, K], calibrated scores [N, K])`` behind a weighted-mean fusion (NaN = missing), or
        None for a strategy that is no weighted mean of its sites (then nothing can judge their agreement)."""
        return None


def calibrated_matrix(
    items: Sequence[ScoreItem], client_scores: ClientScores, calibrator: Calibrator, sites: Sequence[str]
) -> torch.Tensor:
    """Calibrated scores ``[N, K]`` in the order of ``sites``; NaN where a site gave no usable score.

    A site that did not answer, answered the wrong number of scores, or has no calibration counts as
    missing for the whole batch (logged by site id); NaN and inf scores count as missing items.
    """
    out = torch.full((len(items), len(sites)), float("nan"))
    for k, site in enumerate(sites):
        scores = client_scores.get(site)
        if scores is None:
            continue
        if len(scores) != len(items):
            log.warning(
                "dropped a site's scores: wrong count", extra={"site": site, "got": len(scores), "expected": len(items)}
            )
            continue
        if site not in calibrator:
            log.warning("dropped an uncalibrated site's scores", extra={"site": site})
            continue
        out[:, k] = torch.tensor([math.nan if z is None else z for z in calibrator.transform(site, scores)])
    return out


def _to_rewards(values: torch.Tensor) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


class MixtureOfRewards(RewardFusion):
    """``sum_k w_k(x) z_k(x, y)`` with router weights over the sites that answered each item."""

    def __init__(self, router: Router, calibrator: Calibrator, features: Features) -> None:
        missing = [s for s in router.sites if s not in calibrator]
        if missing:
            raise ValueError(
                f"router sites {missing} have no calibration; fit the calibrator on every "
                "site the router was trained with"
            )
        self.router, self.calibrator, self.features = router.eval(), calibrator, features
        self.sites = tuple(router.sites)

    def _inputs(self, items: Sequence[ScoreItem]) -> tuple[torch.Tensor, list[str] | None]:
        feats = self.features([it.image for it in items], [it.prompt for it in items])
        if self.router.objective is None:
            return feats, None
        default = self.router.config.objectives[0]
        return feats, [it.objective or default for it in items]

    @torch.no_grad()
    def weights(self, items: Sequence[ScoreItem], live: torch.Tensor | None = None) -> torch.Tensor:
        """Routing weights ``[N, K]`` (sites in ``router.sites`` order) over ``live`` clients."""
        feats, objectives = self._inputs(items)
        return self.router.weights(feats, live, objectives)

    @torch.no_grad()
    def fuse(self, items: Sequence[ScoreItem], client_scores: ClientScores) -> list[float | None]:
        if not items:
            return []
        z = calibrated_matrix(items, client_scores, self.calibrator, self.router.sites)
        feats, objectives = self._inputs(items)
        return _to_rewards(self.router(feats, z, objectives))

    @torch.no_grad()
    def components(self, items: Sequence[ScoreItem], client_scores: ClientScores) -> tuple[torch.Tensor, torch.Tensor]:
        z = calibrated_matrix(items, client_scores, self.calibrator, self.router.sites)
        return self.weights(items, live_mask(z)), z

    def save(self, out_dir: str | Path) -> Path:
        """Write ``router/``, ``calibration.json`` and ``mixture.json`` (the feature model's name)."""
        out = Path(out_dir)
        self.router.save(out / "router")
        self.calibrator.save(out / "calibration.json")
        meta = {"format": "mor-mixture", "features": getattr(self.features, "name", None)}
        (out / "mixture.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, in_dir: str | Path, *, features: Features | None = None) -> MixtureOfRewards:
        """Read a mixture written by ``save``; ``features`` defaults to the recorded feature model."""
        folder = Path(in_dir)
        if features is None:
            try:
                name = json.loads((folder / "mixture.json").read_text(encoding="utf-8"))["features"]
            except (OSError, ValueError, TypeError, KeyError):
                raise RouterError(
                    f"{folder / 'mixture.json'}: missing or invalid; pass the mixture folder "
                    "written with the router, or pass features explicitly"
                ) from None
            if not isinstance(name, str):
                raise RouterError(f"{folder / 'mixture.json'} names no feature model; pass features explicitly")
            features = PromptFeatures(name)
        return cls(Router.load(folder / "router"), Calibrator.load(folder / "calibration.json"), features)


class UniformMean(RewardFusion):
    """The plain mean of the calibrated scores of the sites that answered each item."""

    def __init__(self, calibrator: Calibrator) -> None:
        self.calibrator, self.sites = calibrator, calibrator.sites

    def fuse(self, items: Sequence[ScoreItem], client_scores: ClientScores) -> list[float | None]:
        if not items:
            return []
        z = calibrated_matrix(items, client_scores, self.calibrator, self.sites)
        return _to_rewards(torch.nanmean(z, dim=1))

    def components(self, items: Sequence[ScoreItem], client_scores: ClientScores) -> tuple[torch.Tensor, torch.Tensor]:
        z = calibrated_matrix(items, client_scores, self.calibrator, self.sites)
        live = live_mask(z).float()
        return live / live.sum(dim=1, keepdim=True).clamp(min=1.0), z


class SingleClient(RewardFusion):
    """One site's calibrated score alone (the single-institution baseline)."""

    def __init__(self, site: str, calibrator: Calibrator) -> None:
        calibrator[site]  # refuses an uncalibrated site now, not mid-training
        self.site, self.calibrator, self.sites = site, calibrator, (site,)

    def fuse(self, items: Sequence[ScoreItem], client_scores: ClientScores) -> list[float | None]:
        return _to_rewards(calibrated_matrix(items, client_scores, self.calibrator, [self.site])[:, 0])


class Quorum(RewardFusion):
    """Wraps a strategy: None for every item fewer than ``min_clients`` of its sites scored. A strategy that
    reads fewer sites than that (one site alone) needs all of its own: a quorum it cannot reach would leave
    every item unrewarded and GRPO with nothing to learn from."""

    def __init__(self, strategy: RewardFusion, min_clients: int) -> None:
        if min_clients < 1:
            raise ValueError(f"min_clients must be at least 1, got {min_clients}")
        self.strategy, self.min_clients = strategy, min(min_clients, max(1, len(strategy.sites)))
        self.uses_client_scores, self.sites = strategy.uses_client_scores, strategy.sites

    def fuse(self, items: Sequence[ScoreItem], client_scores: ClientScores) -> list[float | None]:
        counts = [0] * len(items)
        for site in self.sites:
            scores = client_scores.get(site)
            if scores is None or len(scores) != len(items):
                continue
            counts = [n + is_score(s) for n, s in zip(counts, scores)]
        fused = self.strategy.fuse(items, client_scores)
        return [r if n >= self.min_clients else None for r, n in zip(fused, counts)]


class Conservative(RewardFusion):
    """Wraps a weighted-mean strategy: ``fused - penalty * spread``, the spread being the weighted standard
    deviation of the sites' calibrated scores around the fused one.

    The uncertainty-weighted aggregation of Coste et al. (ICLR-24) against reward over-optimisation: where
    the policy drifts to outputs no site saw, the sites disagree, and the penalty takes away what a single
    over-confident site would give. Where the router trusts one site alone the spread is ~0 and nothing changes.
    """

    def __init__(self, strategy: RewardFusion, penalty: float) -> None:
        if penalty < 0:
            raise ValueError(f"the spread penalty must be >= 0, got {penalty}")
        self.strategy, self.penalty = strategy, penalty
        self.uses_client_scores, self.sites = strategy.uses_client_scores, strategy.sites

    def fuse(self, items: Sequence[ScoreItem], client_scores: ClientScores) -> list[float | None]:
        fused = self.strategy.fuse(items, client_scores)
        parts = self.strategy.components(items, client_scores) if items else None
        if parts is None:
            return fused
        weights, z = parts
        mean = torch.tensor([math.nan if r is None else r for r in fused])
        spread = (weights * torch.nan_to_num(z - mean[:, None], nan=0.0) ** 2).sum(dim=1).sqrt()
        return _to_rewards(mean - self.penalty * spread)

    def components(
        self, items: Sequence[ScoreItem], client_scores: ClientScores
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.strategy.components(items, client_scores)


def as_messages(value: Any, role: str) -> list[Message]:
    """TRL prompts/completions (conversational or plain text) as schema messages without PIL payloads."""
    if isinstance(value, str):
        return [{"role": role, "content": [{"type": "text", "text": value}]}]
    messages = []
    for message in strip_images(value):
        content = message.get("content")
        if isinstance(content, str):
            message = {**message, "content": [{"type": "text", "text": content}]}
        messages.append(message)
    return messages


def _image_of(prompt: Any) -> Any:
    """The first image TRL injected into a conversational prompt, if any."""
    if isinstance(prompt, str):
        return None
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image" and part.get("image") is not None:
                    return part["image"]
    return None


def images_from(prompts: Sequence[Any], image: Sequence[Any] | None, images: Sequence[Any] | None) -> list[Any]:
    """One image per completion from TRL's ``image`` / ``images`` column, else from the prompt."""
    if images is not None:
        out = []
        for imgs in images:
            if imgs and len(imgs) > 1:
                raise ValueError(
                    f"a prompt carries {len(imgs)} images; the MoR reward supports one image "
                    "per prompt: keep one `image` column"
                )
            out.append(imgs[0] if imgs else None)
        return out
    if image is not None:
        return list(image)
    return [_image_of(p) for p in prompts]


def reward_callable(
    fusion: RewardFusion,
    scorer: Scorer,
    *,
    objective: str | None = None,
    decimals: int | None = 4,
    name: str = "mor_reward",
) -> Callable[..., list[float | None]]:
    """A reward function in TRL's signature: ``f(prompts, completions, image=..., **columns)``.

    GRPOTrainer calls it with every data set column (``image`` or ``images``, ``objective`` if the
    data set has one) plus ``completion_ids``, ``trainer_state``, ``log_metric``, ``log_extra``; it
    returns one reward per completion, None where the fusion gives none (TRL turns None into NaN
    and leaves that completion out of the group baseline). Rewards are rounded to ``decimals`` so
    float noise from batched client models cannot fake a spread in a group of equal answers.
    """

    def reward(
        prompts: list[Any],
        completions: list[Any],
        image: Sequence[Any] | None = None,
        images: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        n = len(prompts)
        if len(completions) != n:
            raise ValueError(f"{n} prompts but {len(completions)} completions")
        objectives = kwargs.get("objective") or [objective] * n
        items = [
            ScoreItem(image=img, prompt=as_messages(p, "user"), completion=as_messages(c, "assistant"), objective=obj)
            for img, p, c, obj in zip(
                images_from(prompts, image, images), prompts, completions, objectives, strict=True
            )
        ]
        client_scores: dict[str, list[float] | None] = {}
        if fusion.uses_client_scores:
            client_scores = scorer(
                [it.image for it in items], [it.prompt for it in items], [it.completion for it in items]
            )
        rewards = fusion.fuse(items, client_scores)
        if decimals is not None:
            rewards = [None if r is None else round(r, decimals) for r in rewards]
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and n:
            log_metric("mor/answered_sites", float(sum(s is not None for s in client_scores.values())))
            log_metric("mor/unscored_fraction", sum(r is None for r in rewards) / n)
        return rewards

    reward.__name__ = reward.__qualname__ = name
    return reward

"""GRPO rewards by name: the ``[grpo] reward`` value -> a TRL reward callable, and the federated reward.

Names: ``oracle`` (ground truth), ``mor`` (the Mixture-of-Rewards bundle of `mor coordinator router`),
``uniform`` (mean of the calibrated client scores), ``single:<site>`` (one client alone), and any
name a plug-in registers with :func:`register_reward` (the in-process baselines ``fedavg`` and
``centralised`` register when :data:`PLUGINS` import). A builder returns either a
:class:`~coordinator.mixture.fusion.RewardFusion` or a ready reward callable; a fusion that reads client scores
needs the live federation (:func:`needs_federation`), which :class:`FederatedReward` scores through.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.mixture.contrast import ImageContrast
from coordinator.mixture.fusion import (
    Conservative,
    MixtureOfRewards,
    Quorum,
    RewardFusion,
    ScoreItem,
    Scorer,
    as_messages,
    images_from,
    reward_callable,
)
from mor_secure.errors import MorError
from mor_secure.logs import get_logger

log = get_logger("coordinator.policy.rewards")

PLUGINS = ("coordinator.baselines.registration",)
"""Modules imported before a lookup so that they can register more reward names (missing ones are skipped)."""


class RewardError(MorError, ValueError):
    """A reward name that cannot be built; the message names the cause and the fix."""


@dataclass(frozen=True)
class RewardContext:
    """What a builder may need: the mixture bundle (router + calibration) and the coordinator config."""

    mixture: Path | None
    config: Any = None


Builder = Callable[[RewardContext, str], "RewardFusion | Callable[..., list[float | None]]"]
"""(context, argument after ':' or '') -> a fusion strategy or a TRL reward callable."""

_BUILDERS: dict[str, Builder] = {}


def register_reward(name: str, builder: Builder) -> None:
    """Make ``[grpo] reward = "name"`` (or ``"name:arg"``) build with ``builder``."""
    if not name or ":" in name:
        raise ValueError(f"reward name {name!r} must be non-empty and without ':'")
    _BUILDERS[name] = builder


def _load_plugins() -> None:
    for module in PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise


def reward_names() -> list[str]:
    """Every reward name that can be built now (``single`` takes ``:<site>``)."""
    _load_plugins()
    return sorted(_BUILDERS)


def _mixture(ctx: RewardContext) -> MixtureOfRewards:
    from coordinator.mixture.router import RouterError

    if ctx.mixture is None or not (ctx.mixture / "mixture.json").is_file():
        raise RewardError(
            f"no Mixture-of-Rewards bundle at {ctx.mixture}: run `mor coordinator router` first, "
            "or point [grpo] mixture at its [router] out/mixture folder"
        )
    try:
        return MixtureOfRewards.load(ctx.mixture)
    except (RouterError, OSError, ValueError) as exc:
        raise RewardError(f"cannot load the mixture {ctx.mixture}: {exc}") from None


def _calibrator(ctx: RewardContext) -> Any:
    from coordinator.mixture.calibration import Calibrator

    path = None if ctx.mixture is None else ctx.mixture / "calibration.json"
    if path is None or not path.is_file():
        raise RewardError(
            f"no calibration at {path}: `mor coordinator router` writes it with the mixture; run it "
            "first, or point [grpo] mixture at its [router] out/mixture folder"
        )
    return Calibrator.load(path)


def _oracle(ctx: RewardContext, arg: str) -> Callable[..., list[float | None]]:
    from coordinator.policy.oracle import OracleReward

    return OracleReward()


def _uniform(ctx: RewardContext, arg: str) -> RewardFusion:
    from coordinator.mixture.fusion import UniformMean

    return UniformMean(_calibrator(ctx))


def _single(ctx: RewardContext, arg: str) -> RewardFusion:
    from coordinator.mixture.fusion import SingleClient

    calibrator = _calibrator(ctx)
    if arg not in calibrator.sites:
        raise RewardError(
            f"single:{arg}: no calibrated site {arg!r}; use one of {', '.join('single:' + s for s in calibrator.sites)}"
        )
    return SingleClient(arg, calibrator)


register_reward("oracle", _oracle)
register_reward("mor", lambda ctx, arg: _mixture(ctx))
register_reward("uniform", _uniform)
register_reward("single", _single)


def build_reward(spec: str, ctx: RewardContext) -> RewardFusion | Callable[..., list[float | None]]:
    """The strategy or callable named by ``spec`` (``name`` or ``name:arg``); RewardError names the known ones."""
    name, _, arg = spec.partition(":")
    _load_plugins()
    builder = _BUILDERS.get(name)
    if builder is None:
        raise RewardError(
            f"[grpo] reward = {spec!r} is unknown; use one of: "
            f"{', '.join(n + ':<site>' if n == 'single' else n for n in sorted(_BUILDERS))}"
        )
    if name == "single" and not arg:
        raise RewardError("[grpo] reward = 'single' needs a site: 'single:<site>'")
    return builder(ctx, arg)


def needs_federation(reward: object) -> bool:
    """True when ``reward`` is a fusion that reads the clients' scores (so the agents must be live)."""
    return isinstance(reward, RewardFusion) and reward.uses_client_scores


class FederatedReward:
    """A fusion strategy as a TRL reward callable with telemetry: agents live, unscored items and, for the
    Mixture-of-Rewards, the mean routing weight of each client over the batch (``last_stats``).

    ``spread_penalty > 0`` makes a client-score fusion conservative where its sites disagree (``Conservative``);
    ``image_contrast`` has the sites score each completion against its image minus another prompt's image
    (``ImageContrast``), so an answer's prior regardless of the image earns nothing.
    """

    def __init__(
        self,
        fusion: RewardFusion,
        scorer: Scorer | None = None,
        *,
        quorum: int = 1,
        spread_penalty: float = 0.0,
        image_contrast: bool = False,
        live_sites: Callable[[], Sequence[str]] | None = None,
        name: str = "mor_reward",
    ) -> None:
        if fusion.uses_client_scores and scorer is None:
            raise ValueError("this fusion reads client scores: pass the federation's scorer")
        if image_contrast and scorer is not None:
            scorer = ImageContrast(scorer)
        wrapped = Conservative(fusion, spread_penalty) if spread_penalty and fusion.uses_client_scores else fusion
        self.fusion = Quorum(wrapped, quorum) if fusion.uses_client_scores else fusion
        self.mixture = fusion if isinstance(fusion, MixtureOfRewards) else None
        self.live_sites = live_sites
        self.__name__ = name
        self._scorer = scorer
        self._last_scores: dict[str, Any] = {}
        self._reward = reward_callable(self.fusion, self._score, name=name)
        self._stats: dict[str, float] = {}

    def _score(self, *args: Any) -> dict[str, Any]:
        self._last_scores = self._scorer(*args) if self._scorer is not None else {}
        return self._last_scores

    def _live(self, n: int) -> Any:
        """``[N, K]`` mask of the router's sites that gave a usable score for each item."""
        import torch

        from coordinator.mixture.calibration import is_score

        rows = []
        for site in self.mixture.sites:
            scores = self._last_scores.get(site)
            ok = scores is not None and len(scores) == n
            rows.append([ok and is_score(s) for s in scores] if ok else [False] * n)
        return torch.tensor(rows, dtype=torch.bool).T

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        rewards = self._reward(prompts, completions, **kwargs)
        n = max(len(rewards), 1)
        stats = {"unscored": sum(r is None for r in rewards) / n}
        if self.live_sites is not None:
            live = set(self.live_sites())
            stats["agents_live"] = float(len(live))
        if self.mixture is not None and rewards:
            items = [
                ScoreItem(img, as_messages(p, "user"), as_messages(c, "assistant"))
                for img, p, c in zip(
                    images_from(prompts, kwargs.get("image"), kwargs.get("images")), prompts, completions
                )
            ]
            # over the sites that answered, as the fused reward used them; features are cached (no new forward)
            weights = self.mixture.weights(items, self._live(len(items))).mean(dim=0)
            stats.update({f"weight/{site}": float(w) for site, w in zip(self.mixture.sites, weights)})
        self._stats = stats
        return rewards

    def last_stats(self) -> dict[str, float]:
        """Unscored share, agents live and mean routing weight per client (0 for a silent one) of the last batch."""
        return dict(self._stats)

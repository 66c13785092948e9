"""The Mixture-of-Rewards router: per-input weights over the live clients' calibrated scores.

ArmoRM's gating recipe: an MLP over frozen prompt features gives one logit per client,
``w = softmax(logits / T)`` over the clients that answered (renormalised when one is missing), and
``fused = sum_k w_k z_k``. It is trained with a Bradley-Terry loss (with a learnable scale) on the
coordinator's labelled pairs from scores fetched once, dropping clients at random so it degrades
gracefully when a site is offline. Saved as safetensors weights plus a JSON config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from coordinator.mixture.features import ObjectiveEmbedding
from mor_secure.config import field
from mor_secure.errors import MorError
from mor_secure.logs import get_logger

log = get_logger("coordinator.mixture.router")

CONFIG_NAME = "router.json"
WEIGHTS_NAME = "router.safetensors"


class RouterError(MorError, ValueError):
    """A router cannot be built, trained or loaded; the message names the cause and the fix."""


@dataclass
class RouterConfig:
    """Shape and softmax temperature of a router; saved next to its weights."""

    sites: list[str] = field(help="Client sites, in the order of the router's logits.")
    feature_dim: int = field(help="Size of the frozen prompt features the router reads.")
    hidden: int = field(64, help="Width of the gating MLP's hidden layer.")
    temperature: float = field(1.0, help="Softmax temperature T of w = softmax(logits / T).")
    dropout: float = field(0.0, help="Dropout on the hidden layer while training.")
    objectives: list[str] = field(
        help="Vocabulary of alignment objectives the router can be told (empty: no objective input).",
        default_factory=list,
    )
    objective_dim: int = field(8, help="Size of the learned objective embedding.")

    def __post_init__(self) -> None:
        for name in ("sites", "objectives"):
            names = getattr(self, name)
            if (
                not isinstance(names, list)
                or not all(isinstance(n, str) for n in names)
                or len(set(names)) != len(names)
            ):
                raise RouterError(f"router {name} must be a list of distinct names, got {names!r}")
        if not self.sites:
            raise RouterError("a router needs at least one site")
        for name in ("feature_dim", "hidden", "objective_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RouterError(f"router {name} must be a positive integer, got {value!r}")
        if not isinstance(self.temperature, (int, float)) or not 0 < self.temperature < math.inf:
            raise RouterError(f"router temperature must be a finite positive number, got {self.temperature!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise RouterError(f"router dropout must lie in [0, 1), got {self.dropout!r}")


def live_mask(scores: torch.Tensor) -> torch.Tensor:
    """Which clients answered: True where a (calibrated) score is finite; any trailing dims must all be."""
    finite = torch.isfinite(scores)
    while finite.dim() > 2:
        finite = finite.all(dim=-1)
    return finite


class Router(nn.Module):
    """Gating MLP over prompt features (plus an optional objective embedding) -> one logit per client."""

    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        self.objective = ObjectiveEmbedding(config.objectives, config.objective_dim) if config.objectives else None
        in_dim = config.feature_dim + (config.objective_dim if self.objective else 0)
        self.norm = nn.LayerNorm(config.feature_dim)
        self.gate = nn.Sequential(
            nn.Linear(in_dim, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, len(config.sites)),
        )
        # Bradley-Terry scale (ArmoRM's learnable beta): fused z-scores have a fixed spread, so the
        # loss needs a free scale to express confidence. It never changes the routing weights.
        self.log_scale = nn.Parameter(torch.zeros(()))

    @property
    def sites(self) -> list[str]:
        return list(self.config.sites)

    def logits(self, features: torch.Tensor, objectives: Sequence[str] | None = None) -> torch.Tensor:
        """Raw gating logits ``[N, K]`` for features ``[N, D]``."""
        if features.dim() != 2 or features.shape[1] != self.config.feature_dim:
            raise RouterError(
                f"router expects features of shape [N, {self.config.feature_dim}], "
                f"got {list(features.shape)}; use the feature extractor it was trained with"
            )
        x = self.norm(features.float())
        if self.objective is not None:
            names = objectives if objectives is not None else [self.config.objectives[0]] * len(x)
            x = torch.cat([x, self.objective(names).to(x.device)], dim=1)
        elif objectives is not None:
            raise RouterError("this router was trained without objectives; do not pass any")
        return self.gate(x)

    def weights(
        self, features: torch.Tensor, live: torch.Tensor | None = None, objectives: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Routing weights ``[N, K]``: softmax(logits / T) over the live clients; rows with none are 0."""
        logits = self.logits(features, objectives) / self.config.temperature
        if live is None:
            return torch.softmax(logits, dim=1)
        logits = logits.masked_fill(~live, float("-inf"))
        any_live = live.any(dim=1, keepdim=True)
        w = torch.softmax(logits.masked_fill(~any_live, 0.0), dim=1)
        return torch.where(any_live, w, torch.zeros_like(w))

    def forward(
        self, features: torch.Tensor, scores: torch.Tensor, objectives: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Fused reward ``sum_k w_k z_k`` from calibrated scores ``[N, K]`` (NaN = missing); NaN where none."""
        live = live_mask(scores)
        w = self.weights(features, live, objectives)
        fused = (w * torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)).sum(dim=1)
        return torch.where(live.any(dim=1), fused, torch.full_like(fused, float("nan")))

    def save(self, out_dir: str | Path) -> Path:
        """Write ``router.safetensors`` and ``router.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, out / WEIGHTS_NAME)
        (out / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, in_dir: str | Path) -> Router:
        """Read a router written by ``save``; errors name the folder and the fix."""
        folder = Path(in_dir)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise RouterError(
                f"{folder}: no router here (need {CONFIG_NAME} and {WEIGHTS_NAME}); "
                "train one with `mor coordinator router --config coordinator.toml`"
            )
        try:
            raw = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            config = RouterConfig(**raw)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, RouterError) as exc:
            raise RouterError(f"{folder / CONFIG_NAME}: invalid router config ({exc}); retrain the router") from None
        router = cls(config)
        try:
            router.load_state_dict(load_file(folder / WEIGHTS_NAME))
        except (RuntimeError, OSError) as exc:
            raise RouterError(
                f"{folder / WEIGHTS_NAME}: weights do not match {CONFIG_NAME} ({exc}); retrain the router"
            ) from None
        return router.eval()


def _drop_clients(live: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Randomly hide live clients (each with ``prob``), always keeping at least one per row."""
    if prob <= 0:
        return live
    keep = (torch.rand(live.shape, generator=generator) >= prob) & live
    empty = ~keep.any(dim=1)
    if empty.any():
        # Restore one random live client in rows that lost all of them.
        noise = torch.rand(live.shape, generator=generator).masked_fill(~live, -1.0)
        pick = nn.functional.one_hot(noise.argmax(dim=1), live.shape[1]).bool()
        keep = torch.where(empty[:, None], pick & live, keep)
    return keep


def _pair_margin(
    router: Router,
    features: torch.Tensor,
    pair_scores: torch.Tensor,
    live: torch.Tensor,
    objectives: Sequence[str] | None,
) -> torch.Tensor:
    """Fused chosen-minus-rejected margin per pair over the given live clients."""
    w = router.weights(features, live, objectives)
    diff = torch.nan_to_num(pair_scores[:, :, 0] - pair_scores[:, :, 1], nan=0.0, posinf=0.0, neginf=0.0)
    return (w * diff).sum(dim=1)


def check_pair_inputs(features: torch.Tensor, pair_scores: torch.Tensor, sites: Sequence[str]) -> None:
    """Refuse mismatched shapes with a message naming them: features [N, D], pair scores [N, K, 2]."""
    if features.dim() != 2:
        raise RouterError(f"features must be [N, D], got {list(features.shape)}")
    if pair_scores.dim() != 3 or pair_scores.shape[2] != 2 or pair_scores.shape[1] != len(sites):
        raise RouterError(
            f"pair scores must be [N, {len(sites)}, 2] (chosen, rejected per site), got {list(pair_scores.shape)}"
        )
    if pair_scores.shape[0] != features.shape[0]:
        raise RouterError(f"{features.shape[0]} feature rows but {pair_scores.shape[0]} scored pairs")


def train_router(
    features: torch.Tensor,
    pair_scores: torch.Tensor,
    *,
    sites: Sequence[str],
    epochs: int = 200,
    lr: float = 1e-2,
    temperature: float = 1.0,
    seed: int = 0,
    hidden: int = 64,
    batch_size: int = 64,
    weight_decay: float = 1e-3,
    drop_prob: float = 0.2,
    objectives: Sequence[str] | None = None,
    objective_vocab: Sequence[str] = (),
) -> Router:
    """Fit a router by Bradley-Terry on labelled pairs from cached calibrated client scores.

    ``features``: ``[N, D]`` prompt features; ``pair_scores``: ``[N, K, 2]`` calibrated scores of the
    chosen and rejected answer per site (NaN where a site did not answer); ``objectives``: one name per
    pair from ``objective_vocab`` when the router should also read the alignment objective.
    """
    check_pair_inputs(features, pair_scores, sites)
    if (objectives is None) != (not objective_vocab) or (
        objectives is not None and len(objectives) != features.shape[0]
    ):
        raise RouterError("pass objectives (one name per pair) together with objective_vocab, or neither")
    features, pair_scores = features.float(), pair_scores.float()
    live = live_mask(pair_scores)
    index = live.any(dim=1).nonzero(as_tuple=True)[0]
    if len(index) == 0:
        raise RouterError("no pair has a score from any site; fetch client scores before training")
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's global RNG
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        router = Router(
            RouterConfig(
                sites=list(sites),
                feature_dim=features.shape[1],
                hidden=hidden,
                temperature=temperature,
                objectives=list(objective_vocab),
            )
        )
        opt = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=weight_decay)
        router.train()
        for _ in range(epochs):
            order = index[torch.randperm(len(index), generator=generator)]
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                batch_live = _drop_clients(live[batch], drop_prob, generator)
                objs = [objectives[i] for i in batch.tolist()] if objectives is not None else None
                margin = _pair_margin(router, features[batch], pair_scores[batch], batch_live, objs)
                loss = nn.functional.softplus(-router.log_scale.exp() * margin).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    router.eval()
    log.info("trained router", extra={"pairs": int(len(index)), "sites": len(sites), "epochs": epochs})
    return router


@torch.no_grad()
def pairwise_accuracy(
    router: Router,
    features: torch.Tensor,
    pair_scores: torch.Tensor,
    *,
    live: torch.Tensor | None = None,
    objectives: Sequence[str] | None = None,
) -> float:
    """Fraction of pairs with a live site whose fused chosen score beats the rejected one (ties half)."""
    check_pair_inputs(features, pair_scores, router.sites)
    live = live_mask(pair_scores) if live is None else live & live_mask(pair_scores)
    margin = _pair_margin(router, features.float(), pair_scores.float(), live, objectives)
    return pairwise_wins(torch.where(live.any(dim=1), margin, torch.full_like(margin, math.nan)))


def pairwise_wins(margin: torch.Tensor) -> float:
    """Share of positive margins among the finite ones (zero counts half); NaN if none is finite."""
    margin = margin[torch.isfinite(margin)]
    return float(((margin > 0).float() + 0.5 * (margin == 0).float()).mean()) if margin.numel() else math.nan


@torch.no_grad()
def mean_weights_by(
    router: Router,
    features: torch.Tensor,
    groups: Sequence[str],
    *,
    live: torch.Tensor | None = None,
    objectives: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean routing weight per group (e.g. domain) per site: ``{group: {site: weight}}``."""
    if len(groups) != features.shape[0]:
        raise RouterError(f"{len(groups)} group labels for {features.shape[0]} feature rows")
    w = router.weights(features.float(), live, objectives)
    out: dict[str, dict[str, float]] = {}
    for group in sorted(set(groups)):
        rows = torch.tensor([g == group for g in groups])
        means = w[rows].mean(dim=0)
        out[group] = {site: float(means[k]) for k, site in enumerate(router.sites)}
    return out


@torch.no_grad()
def evaluate_router(
    router: Router,
    features: torch.Tensor,
    pair_scores: torch.Tensor,
    groups: Sequence[str],
    *,
    objectives: Sequence[str] | None = None,
) -> dict:
    """A JSON-ready report on held-out pairs: fused, uniform and per-site accuracy, weights per group."""
    check_pair_inputs(features, pair_scores, router.sites)
    diff = pair_scores[:, :, 0] - pair_scores[:, :, 1]
    return {
        "pairs": int(features.shape[0]),
        "accuracy": pairwise_accuracy(router, features, pair_scores, objectives=objectives),
        "uniform_accuracy": pairwise_wins(torch.nanmean(diff, dim=1)),
        "site_accuracy": {site: pairwise_wins(diff[:, k]) for k, site in enumerate(router.sites)},
        "weights_by": mean_weights_by(router, features, groups, live=live_mask(pair_scores), objectives=objectives),
    }

"""Synthetic reward clients computed from ground truth, shared by the tests and the benchmarks.

A ``PairWorld`` is a set of labelled pairs (prompt features clustered by domain, the true answer and a
wrong one). A ``SyntheticClient`` is a site's reward model as a function of that truth: an honest
expert scores its own domains well and others by noise; an adversary inverts an expert, answers at
random, or always favours one fixed (wrong) answer. Each site has its own raw offset and scale, so
calibration matters as it does with real reward models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

KINDS = ("expert", "inverted", "random", "fixed-wrong")
"""How a synthetic client scores: honestly, inverted, at random, or favouring ``wrong_answer``."""


@dataclass(frozen=True)
class PairWorld:
    """Labelled pairs: features ``[N, D]``, domain, chosen (true) and rejected answer ids per pair."""

    features: torch.Tensor
    domains: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return len(self.domains)

    def split(self, n: int) -> tuple[PairWorld, PairWorld]:
        """The first ``n`` pairs and the rest."""

        def part(s: slice) -> PairWorld:
            return PairWorld(self.features[s], self.domains[s], self.chosen[s], self.rejected[s])

        return part(slice(0, n)), part(slice(n, None))

    @property
    def groups(self) -> list[str]:
        """Domain labels as strings (what ``evaluate_router`` groups by)."""
        return [str(d) for d in self.domains.tolist()]


def make_world(n: int, *, domains: int = 2, answers: int = 4, dim: int = 16, seed: int = 0) -> PairWorld:
    """``n`` pairs over ``domains`` feature clusters; the rejected answer is a uniform wrong one."""
    g = torch.Generator().manual_seed(seed)
    domain = torch.randint(0, domains, (n,), generator=g)
    centres = torch.randn(domains, dim, generator=g) * 2
    features = centres[domain] + torch.randn(n, dim, generator=g)
    chosen = torch.randint(0, answers, (n,), generator=g)
    rejected = (chosen + torch.randint(1, answers, (n,), generator=g)) % answers
    return PairWorld(features, domain, chosen, rejected)


@dataclass(frozen=True)
class SyntheticClient:
    """One site's reward model: ``offset + scale * s(answer)`` with ``s`` set by ``kind``."""

    kind: str = "expert"
    domains: tuple[int, ...] = ()
    noise: float = 0.3
    wrong_answer: int = 0
    offset: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown synthetic client kind {self.kind!r}; use one of {', '.join(KINDS)}")

    def scores(self, world: PairWorld, answers: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Raw scores ``[N]`` of ``answers`` (one answer id per pair of ``world``)."""
        n = len(world)
        noise = torch.randn(n, generator=generator)
        if self.kind == "random":
            s = noise
        elif self.kind == "fixed-wrong":
            s = (answers == self.wrong_answer).float() + self.noise * noise
        else:
            own = torch.isin(world.domains, torch.tensor(self.domains, dtype=torch.long))
            s = torch.where(own, (answers == world.chosen).float() + self.noise * noise, noise)
            if self.kind == "inverted":
                s = -s
        return self.offset + self.scale * s

    def adversarial(self, kind: str) -> SyntheticClient:
        """The same site turned adversary of ``kind`` (keeps its domains and raw scale)."""
        return SyntheticClient(kind, self.domains, self.noise, self.wrong_answer, self.offset, self.scale)


def raw_pair_scores(world: PairWorld, clients: Sequence[SyntheticClient], *, seed: int = 0) -> torch.Tensor:
    """Raw scores ``[N, K, 2]`` (chosen, rejected) of every pair by every client."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.stack([c.scores(world, world.chosen, g), c.scores(world, world.rejected, g)], dim=1) for c in clients],
        dim=1,
    )

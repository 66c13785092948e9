"""The federation in one process, for benchmarks: each site's ``ScoringService`` answers the very
``ScoreRequest`` messages the coordinator would send it over mutual TLS (built by the same
``build_requests``), so the scores equal the agents' (tested over TLS in tests/test_scoring.py);
only the transport is skipped. Counts the encoded bytes of every request and reply.
A ``poison`` per site rewrites that site's honest scores before they leave it (a poisoned client).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from client_agent.config import ServeSection
from client_agent.scoring import ScoringService
from coordinator.federation.service import build_requests
from coordinator.mixture.router_run import Split, pair_items
from mor_secure import protocol
from mor_secure.protocol import ScoreReply
from mor_secure.rewards import load_reward_model

Poison = Callable[[list[float], Sequence[Any]], list[float]]
"""(a site's honest scores, the completions they score) -> the scores the poisoned site returns instead."""


class LocalFederation:
    """Sites' saved reward models behind their scoring services; ``scorer`` is a coordinator ``Scorer``.

    ``poison`` maps a site to a :data:`Poison` applied to every batch of its replies (an adversarial site
    answering at the scoring interface); the other sites answer honestly.
    """

    def __init__(
        self, models: Mapping[str, str | Path], *, max_batch: int = 256, poison: Mapping[str, Poison] | None = None
    ) -> None:
        policy = ServeSection(max_batch=max_batch, requests_per_minute=10**9)
        self.services = {
            site: ScoringService(load_reward_model(path), f"local:{site}", policy)
            for site, path in sorted(models.items())
        }
        unknown = sorted(set(poison or {}) - set(self.services))
        if unknown:
            raise ValueError(f"poison names sites with no model: {', '.join(unknown)}")
        self.poison = dict(poison or {})
        self.max_batch = max_batch
        self.bytes_sent = self.bytes_received = 0

    def scorer(
        self,
        images: Sequence[Any],
        prompts: Sequence[Any],
        completions: Sequence[Any],
        sites: Sequence[str] | None = None,
    ) -> dict[str, list[float] | None]:
        """Raw scores per site, in item order; every site receives every request."""
        requests = build_requests(list(images), list(prompts), list(completions), self.max_batch)
        out: dict[str, list[float] | None] = {}
        for site in sites or self.services:
            scores: list[float] = []
            for _, request in requests:
                reply = self.services[site](request)
                if not isinstance(reply, ScoreReply):
                    raise RuntimeError(f"site {site} refused a request: {reply.code}: {reply.message}")
                self.bytes_sent += len(protocol.encode(request))
                self.bytes_received += len(protocol.encode(reply))
                scores.extend(reply.scores)
            out[site] = self.poison[site](scores, completions) if site in self.poison else scores
        return out

    def collect(self, config: Any, splits: list[Any]) -> list[Split]:
        """The router's score collector (``coordinator.mixture.router_run.run_router(collect=...)``) in process."""
        return [Split(rows, self.scorer(*pair_items(rows))) for rows in splits]

"""Defence against poisoned and noisy clients: trust each site by how well its calibrated scores agree
with the coordinator's own labelled pairs, and leave out the sites no better than chance.

A site is trusted when the one-sided lower confidence bound of its pairwise accuracy on the router's
training pairs exceeds ``threshold`` (default 0.55: a margin above chance, 0.5); given each pair's
domain, that bound is taken in the site's best domain, because a single-domain expert is near chance
on the other domains' pairs and would fail a pooled test (measured: the pooled test kept no honest DP
site of three in one seed of benchmarks/robustness_policy.py). An inverted, random
or one-wrong-answer client sits at or below chance and is excluded: ``Trusted`` masks it before any
fusion strategy (which renormalises over the sites left), and the router trains on trusted sites only.
Each decision goes to the ledger as a ``trust`` entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from coordinator.mixture.fusion import ClientScores, RewardFusion, ScoreItem
from coordinator.mixture.router_config import DEFENCES
from mor_secure.errors import MorError
from mor_secure.ledger import LedgerEntry, PrivacyLedger
from mor_secure.logs import get_logger

log = get_logger("coordinator.mixture.trust")

__all__ = [
    "DEFENCES",
    "ClientTrust",
    "TrustError",
    "Trusted",
    "agreement_trust",
    "mask_untrusted",
    "record_trust",
    "trusted_sites",
]


class TrustError(MorError, ValueError):
    """No site can be trusted, or the inputs do not fit; the message names the cause and the fix."""


@dataclass(frozen=True)
class ClientTrust:
    """One site's trust: pairwise ``agreement`` on ``pairs`` labelled pairs, its lower bound, the decision."""

    site: str
    agreement: float
    pairs: int
    lower_bound: float
    threshold: float
    trusted: bool
    group: str | None = None
    """The domain the site was judged on (its best one), or None when judged on all pairs."""

    @property
    def weight(self) -> float:
        """The weight the defence gives the site in fusion: 1 (kept) or 0 (masked)."""
        return 1.0 if self.trusted else 0.0

    def to_dict(self) -> dict[str, float | int | str | bool]:
        """A JSON-ready record (NaN agreement of a site with no scored pair becomes None)."""
        out = asdict(self)
        for key in ("agreement", "lower_bound"):
            out[key] = None if math.isnan(out[key]) else round(out[key], 4)
        return out


def _lower_bound(wins: float, n: int, z: float) -> float:
    """Wilson score lower bound of a proportion ``wins / n`` at normal quantile ``z``."""
    if n == 0:
        return math.nan
    p = wins / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def _agreement(margin: torch.Tensor, z: float) -> tuple[float, int, float]:
    """(agreement, scored pairs, Wilson lower bound) of chosen-minus-rejected margins (NaN = not scored)."""
    margin = margin[torch.isfinite(margin)]
    n = int(margin.numel())
    wins = float((margin > 0).sum() + 0.5 * (margin == 0).sum())
    return (wins / n if n else math.nan), n, _lower_bound(wins, n, z)


def agreement_trust(
    pair_scores: torch.Tensor,
    sites: Sequence[str],
    *,
    threshold: float = 0.55,
    z: float = 1.645,
    groups: Sequence[str] | None = None,
) -> dict[str, ClientTrust]:
    """Trust per site from calibrated ``[N, K, 2]`` (chosen, rejected) scores of labelled pairs.

    Agreement is the share of the site's scored pairs where chosen beats rejected (ties count half);
    the site is trusted when the Wilson lower bound (one-sided 95% by default) exceeds ``threshold``.
    With ``groups`` (each pair's domain) the bound is that of the site's best domain.
    """
    if pair_scores.dim() != 3 or pair_scores.shape[1:] != (len(sites), 2):
        raise TrustError(f"pair scores must be [N, {len(sites)}, 2], got {list(pair_scores.shape)}")
    if not 0 <= threshold < 1:
        raise TrustError(f"trust threshold must lie in [0, 1), got {threshold!r}")
    if groups is not None and len(groups) != pair_scores.shape[0]:
        raise TrustError(f"{len(groups)} group labels for {pair_scores.shape[0]} pairs; pass one per pair")
    subsets = (
        {None: slice(None)}
        if groups is None
        else {g: torch.tensor([x == g for x in groups]) for g in sorted(set(groups))}
    )
    out = {}
    for k, site in enumerate(sites):
        margin = pair_scores[:, k, 0] - pair_scores[:, k, 1]
        judged = {g: _agreement(margin[rows], z) for g, rows in subsets.items()}
        group, (agreement, n, bound) = max(
            judged.items(), key=lambda kv: -math.inf if math.isnan(kv[1][2]) else kv[1][2]
        )
        out[site] = ClientTrust(site, agreement, n, bound, threshold, bool(n and bound > threshold), group)
    log.info("client trust", extra={"sites": len(out), "trusted": sum(t.trusted for t in out.values())})
    return out


def trusted_sites(trust: Mapping[str, ClientTrust]) -> list[str]:
    """The trusted sites, sorted; ``TrustError`` when none is (naming the fix)."""
    kept = sorted(site for site, t in trust.items() if t.trusted)
    if not kept:
        raise TrustError(
            f"no site agrees with the labelled pairs better than chance (checked "
            f"{', '.join(sorted(trust)) or 'none'}): check the sites' models and the pairs' labels, "
            'or set [router] defence = "none" to fuse every site'
        )
    return kept


class Trusted(RewardFusion):
    """Wraps a strategy: untrusted sites' scores are dropped before fusion, which renormalises over the rest."""

    def __init__(self, strategy: RewardFusion, trust: Mapping[str, ClientTrust]) -> None:
        kept = set(trusted_sites(trust))
        self.strategy, self.trust = strategy, dict(trust)
        self.uses_client_scores = strategy.uses_client_scores
        # A site the trust report does not know is kept: the defence judges only what it measured.
        self.sites = tuple(s for s in strategy.sites if s in kept or s not in trust)

    def fuse(self, items: Sequence[ScoreItem], client_scores: ClientScores) -> list[float | None]:
        masked = {site: (scores if site in self.sites else None) for site, scores in client_scores.items()}
        return self.strategy.fuse(items, masked)


def mask_untrusted(pair_scores: torch.Tensor, sites: Sequence[str], trust: Mapping[str, ClientTrust]) -> torch.Tensor:
    """A copy of ``[N, K, ...]`` scores with untrusted sites' columns set to NaN (counted as not answering)."""
    out = pair_scores.clone()
    for k, site in enumerate(sites):
        if site in trust and not trust[site].trusted:
            out[:, k] = math.nan
    return out


def record_trust(ledger: PrivacyLedger, trust: Mapping[str, ClientTrust], *, defence: str) -> list[LedgerEntry]:
    """Append one ``trust`` entry per site (score, pairs, decision) to the ledger."""
    return [
        ledger.append("trust", {**t.to_dict(), "defence": defence, "decision": "trusted" if t.trusted else "excluded"})
        for _, t in sorted(trust.items())
    ]

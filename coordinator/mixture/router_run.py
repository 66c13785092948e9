"""Train the Mixture-of-Rewards router from the federation: fetch the sites' scores of the labelled
pairs once over the secure channel (cached on disk), calibrate, embed with the reference policy,
train, evaluate against the baselines and save the mixture bundle.

The score cache is one JSON file per (site, model sha256, fingerprint of exactly what was sent), so a
re-run asks only the sites whose model changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coordinator.config import CoordinatorConfig
from coordinator.federation.service import Federation, build_requests, items_fingerprint
from coordinator.mixture.calibration import Calibrator
from mor_secure.errors import MorError
from mor_secure.logs import get_logger

log = get_logger("coordinator.mixture.router_run")

CACHE_FORMAT = "mor-score-cache"


class RouterRunError(MorError, RuntimeError):
    """The router cannot be trained (no data, too few sites ...); the message names the cause and the fix."""


@dataclass
class Split:
    """One split of labelled pairs and the raw scores of each site: ``chosen`` then ``rejected``."""

    rows: Any
    scores: dict[str, list[float | None]]

    @property
    def size(self) -> int:
        return len(self.rows)


def _cache_path(folder: Path, site: str, model_sha256: str, fingerprint: str) -> Path:
    model, data = model_sha256.split(":")[-1][:16], fingerprint.split(":")[-1][:16]
    return folder / f"{site}.{model}.{data}.json"


def _read_cache(path: Path, site: str, model_sha256: str, fingerprint: str, n: int) -> list[float | None] | None:
    """Cached scores when the file exists and its keys match exactly; else None (refetch)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    if (data.get("site"), data.get("model_sha256"), data.get("fingerprint")) != (site, model_sha256, fingerprint):
        return None
    scores = data.get("scores")
    ok = (
        isinstance(scores, list)
        and len(scores) == n
        and all(
            s is None or (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)) for s in scores
        )
    )
    return scores if ok else None


def pair_items(rows: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """(images, prompts, completions) to score for labelled pairs: every chosen answer, then every rejected one."""
    return list(rows["image"]) * 2, list(rows["prompt"]) * 2, list(rows["chosen"]) + list(rows["rejected"])


def fetch_scores(federation: Federation, rows: Any, cache_dir: Path) -> dict[str, list[float | None]]:
    """Each admitted site's raw scores of every pair's chosen then rejected answer, from the cache or once
    over the wire (then cached)."""
    images, prompts, completions = pair_items(rows)
    fingerprint = items_fingerprint(build_requests(images, prompts, completions, federation.config.pool.max_batch))
    models = {site: report.model_sha256 for site, report in federation.reports().items()}
    scores: dict[str, list[float | None]] = {}
    for site, model in models.items():
        cached = _read_cache(_cache_path(cache_dir, site, model, fingerprint), site, model, fingerprint, len(images))
        if cached is not None:
            scores[site] = cached
    missing = sorted(set(models) - set(scores))
    if missing:
        fetched = federation.scorer(images, prompts, completions, sites=missing)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for site in missing:
            if fetched.get(site) is None:
                log.warning(
                    "a site gave no scores",
                    extra={"site": site, "reason": str(federation.last_round.failures.get(site, ""))},
                )
                continue
            scores[site] = fetched[site]
            record = {
                "format": CACHE_FORMAT,
                "site": site,
                "model_sha256": models[site],
                "fingerprint": fingerprint,
                "scores": fetched[site],
            }
            _cache_path(cache_dir, site, models[site], fingerprint).write_text(
                json.dumps(record) + "\n", encoding="utf-8"
            )
    log.info("client scores ready", extra={"items": len(images), "sites": len(scores), "fetched": len(missing)})
    return scores


def pair_scores(split: Split, calibrator: Calibrator, sites: list[str]) -> torch.Tensor:
    """Calibrated ``[N, K, 2]`` scores (chosen, rejected) per site; NaN where a site gave none."""
    n = split.size
    out = torch.full((n, len(sites), 2), math.nan)
    for k, site in enumerate(sites):
        raw = split.scores.get(site)
        if raw is None:
            continue
        z = torch.tensor([math.nan if v is None else v for v in calibrator.transform(site, raw)])
        out[:, k, 0], out[:, k, 1] = z[:n], z[n:]
    return out


ROUTER_TEST_FRACTION = 0.2
"""Share of the questions held out to evaluate the router when its labelled pairs have one split."""


def _load_split(config: CoordinatorConfig, split: str) -> Any:
    """One split of the labelled pairs, in any layout a site's data may have; a one-split data set is
    divided by each question's content (ROUTER_TEST_FRACTION held out as [router] test_split)."""
    from mor_secure.data.site import open_site_data

    section = config.router
    if section.data is None:
        raise RouterRunError(
            "[router] data is not set: point it at the labelled pairs (`server/router` of the "
            "benchmark world, or any preference data set in TRL's layouts)"
        )
    site = open_site_data(
        section.data, train_split=section.train_split, test_split=section.test_split, test_fraction=ROUTER_TEST_FRACTION
    )
    rows = site.rows(split)
    if section.max_pairs:
        rows = rows.select(range(min(section.max_pairs, len(rows))))
    if len(rows) == 0:
        raise RouterRunError(f"{section.data} split {split!r} has no pairs")
    return rows


def collect_scores(config: CoordinatorConfig, splits: list[Any]) -> list[Split]:
    """Start the federation, wait for the sites, and fetch (or reuse) their scores of each split."""
    allowed = sorted(config.clients.allow)
    if not allowed:
        raise RouterRunError("[clients] allow is empty, so no site may join: list the site names")
    cache = config.router.out / "scores"
    with Federation(config) as federation:
        federation.wait_for(sites=allowed, timeout=config.router.wait_s)
        live = federation.live_sites()
        if len(live) < config.clients.quorum:
            raise RouterRunError(
                f"only {len(live)} of the quorum {config.clients.quorum} sites joined within "
                f"{config.router.wait_s:g}s ({', '.join(live) or 'none'}): start the agents "
                "(`mor client serve`), check `mor coordinator probe`, or lower [clients] quorum"
            )
        return [Split(rows, fetch_scores(federation, rows, cache)) for rows in splits]


def screen_sites(
    config: CoordinatorConfig, train_pairs: torch.Tensor, sites: list[str], groups: list[str] | None = None
) -> dict[str, Any]:
    """With ``[router] defence = "agreement"``: each site's trust on the calibrated training pairs (in its
    best domain when ``groups`` labels each pair's domain), recorded in the ledger (one ``trust`` entry per
    site); with ``"none"``: nothing (every site is fused)."""
    from coordinator.mixture.trust import agreement_trust, record_trust
    from mor_secure.ledger import PrivacyLedger

    section = config.router
    if section.defence == "none":
        return {}
    trust = agreement_trust(train_pairs, sites, threshold=section.trust_threshold, groups=groups)
    record_trust(PrivacyLedger(config.ledger.path), trust, defence=section.defence)
    return trust


Collector = Callable[[CoordinatorConfig, list[Any]], list[Split]]
"""(config, splits of labelled pairs) -> each split with every site's raw scores."""


def run_router(
    config: CoordinatorConfig, *, features: Callable | None = None, collect: Collector = collect_scores
) -> dict[str, Any]:
    """The whole run; returns the JSON report (also written to [router] out/report.json).

    ``collect`` gets the sites' scores: over the secure channel by default (:func:`collect_scores`);
    benchmarks pass an in-process federation that answers the same requests.
    """
    from coordinator.baselines.compare import baseline_accuracies
    from coordinator.mixture.features import PromptFeatures
    from coordinator.mixture.fusion import MixtureOfRewards
    from coordinator.mixture.router import evaluate_router, train_router
    from coordinator.mixture.trust import trusted_sites

    section = config.router
    if features is None and not section.policy:
        raise RouterRunError(
            "[router] policy is not set: name the reference policy (a saved model folder) "
            "whose hidden states are the router's features"
        )
    train, test = collect(config, [_load_split(config, section.train_split), _load_split(config, section.test_split)])
    sites = sorted(train.scores)
    if len(sites) < config.clients.quorum:
        raise RouterRunError(
            f"only {len(sites)} site(s) returned scores ({', '.join(sites) or 'none'}); "
            f"the quorum is {config.clients.quorum}: see the agents' logs"
        )
    calibrator = Calibrator(section.calibration).fit({site: train.scores[site] for site in sites})
    domains = list(train.rows["domain"]) if "domain" in train.rows.column_names else None
    trust = screen_sites(config, pair_scores(train, calibrator, sites), sites, domains)
    if trust:
        sites = trusted_sites(trust)  # the router (and the saved mixture) use only the trusted sites
    features = features or PromptFeatures(section.policy)
    train_features = features(list(train.rows["image"]), list(train.rows["prompt"]))
    test_features = features(list(test.rows["image"]), list(test.rows["prompt"]))
    objectives = {}
    if "objective" in train.rows.column_names and "objective" in test.rows.column_names:
        vocab = sorted(set(train.rows["objective"]))
        objectives = {"objectives": list(train.rows["objective"]), "objective_vocab": vocab}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: intra-op threads cost more than they save (10 s vs 0.8 s, 2 cores)
    try:
        router = train_router(
            train_features,
            pair_scores(train, calibrator, sites),
            sites=sites,
            epochs=section.epochs,
            lr=section.lr,
            temperature=section.temperature,
            seed=section.seed,
            hidden=section.hidden,
            drop_prob=section.drop_prob,
            **objectives,
        )
    finally:
        torch.set_num_threads(threads)
    groups = list(test.rows["domain"]) if "domain" in test.rows.column_names else ["all"] * test.size
    report = evaluate_router(
        router,
        test_features,
        pair_scores(test, calibrator, sites),
        groups,
        objectives=list(test.rows["objective"]) if objectives else None,
    )
    mixture_dir = MixtureOfRewards(router, calibrator, features).save(section.out / "mixture")
    baselines = baseline_accuracies(config.baselines, test.rows, section.out / "baselines")
    scored = pair_scores(train, calibrator, sites)
    report.update(
        {
            "sites": sites,
            "site_train_accuracy": {
                site: float((scored[:, k, 0] > scored[:, k, 1]).float().mean()) for k, site in enumerate(sites)
            },
            "train_pairs": train.size,
            "test_pairs": test.size,
            "mixture": str(mixture_dir),
            "baselines": baselines,
            "defence": section.defence,
            "trust": {site: t.to_dict() for site, t in sorted(trust.items())},
        }
    )
    (section.out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def accuracy_rows(report: dict[str, Any]) -> list[tuple[str, float]]:
    """(strategy, held-out pairwise accuracy) rows: MoR, uniform, each single client, then any baselines."""
    rows = [("MoR (learned router)", report["accuracy"]), ("uniform mean", report["uniform_accuracy"])]
    rows += [(f"single client: {site}", acc) for site, acc in sorted(report["site_accuracy"].items())]
    rows += sorted(report.get("baselines", {}).items())
    return rows

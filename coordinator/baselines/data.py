"""The simulated clients' preference pairs, read from [baselines] data (one folder per client)."""

from __future__ import annotations

from typing import Any

from coordinator.baselines.config import BaselinesConfig
from coordinator.baselines.local import DPSettings
from mor_secure.data.schema import DataError


def load_client_data(config: BaselinesConfig) -> list[Any]:
    """Each client's pairs of [baselines] split, in the order of [baselines] data; ``DataError`` names
    the folder and the fix when one is missing or unreadable."""
    from mor_secure.data.loader import load_preferences

    if not config.data:
        raise DataError(
            "[baselines] data is empty: list one preference folder per simulated client "
            "(e.g. the benchmark world's client-0, client-1, client-2)"
        )
    out = []
    for path in config.data:
        try:
            rows = load_preferences(path, split=config.split, kind="pairs")
        except (DataError, FileNotFoundError) as exc:
            raise DataError(
                f"cannot read client data {path} (split {config.split!r}): {exc}; fix [baselines] data / split"
            ) from None
        if config.max_pairs:
            rows = rows.select(range(min(config.max_pairs, len(rows))))
        out.append(rows)
    return out


def dp_settings(config: BaselinesConfig) -> DPSettings | None:
    """The DP settings of [baselines], or None when dp is off."""
    if not config.dp:
        return None
    return DPSettings(config.target_epsilon, config.delta, config.accountant, config.max_grad_norm)

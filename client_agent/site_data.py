"""A site's preference data as its config names it: read, mapped and decoded once, then the pairs of one split.

Training, evaluation, the privacy budget and `mor client doctor` all read the data through here, so that
they see the same pairs (the same column mapping, held-out rule and image checks). Problems raise
``DataError`` naming the data set and the fix.
"""

from __future__ import annotations

from typing import Any

from client_agent.config import ClientConfig
from mor_secure.data.schema import DataError


def open_data(config: ClientConfig) -> Any:
    """[data].path read, mapped and decoded once (a ``SiteData``)."""
    from mor_secure.data.site import open_site_data

    section = config.data
    if section.path is None:
        raise DataError("no training data: set [data].path to a preference data folder or file")
    try:
        return open_site_data(
            section.path,
            train_split=section.train_split,
            test_split=section.test_split,
            test_fraction=section.test_fraction,
            columns=section.columns,
            max_pixels=section.max_image_pixels,
        )
    except DataError as exc:
        raise DataError(
            f"cannot use the preference data at {section.path}: {exc}. `mor data check "
            f"{section.path}` lists every problem; fix the data or [data]"
        ) from None


def load_pairs(config: ClientConfig, split: str, *, limit: bool = True, site: Any = None) -> Any:
    """The preference pairs of ``split`` (a one-split data set's held-out rule applied); ``limit`` applies
    [data].max_pairs. ``site`` reuses data already opened with ``open_data``."""
    site = site or open_data(config)
    data = site.rows(split)
    if limit and config.data.max_pairs > 0 and len(data) > config.data.max_pairs:
        data = data.select(range(config.data.max_pairs))
    return data

"""Per-client score calibration: put every site's raw reward scores on one comparable scale.

Sites train different reward models, so their raw scores differ in offset and spread. The
coordinator fits a centre and a scale per site on that site's scores of a common calibration set
(z-score, or robust median/IQR) and fuses ``(score - centre) / scale``. The state is plain JSON
saved with the run; it is never pickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mor_secure.errors import MorError
from mor_secure.logs import get_logger

log = get_logger("coordinator.mixture.calibration")

FORMAT = "mor-calibration"
VERSION = 1
METHODS = ("zscore", "robust")
# IQR of a standard normal; dividing by it makes the robust scale match the std on normal data.
_NORMAL_IQR = 1.3489795003921634


class CalibrationError(MorError, ValueError):
    """Calibration cannot be fitted, applied or loaded; the message names the cause and the fix."""


@dataclass(frozen=True)
class SiteCalibration:
    """The affine map of one site: ``z = (raw - center) / scale``, fitted on ``count`` scores."""

    center: float
    scale: float
    count: int


def is_score(value: object) -> bool:
    """Whether a client's answer for one item is a usable score: a finite real number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite(scores: Sequence[float | None]) -> np.ndarray:
    """The usable scores (None, NaN and inf are treated as missing)."""
    return np.asarray([s for s in scores if is_score(s)], dtype=np.float64)


class Calibrator:
    """Fits and applies one affine score calibration per site (z-score or robust median/IQR)."""

    def __init__(
        self, method: str = "zscore", *, min_scale: float = 1e-3, sites: Mapping[str, SiteCalibration] | None = None
    ) -> None:
        if method not in METHODS:
            raise CalibrationError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
        if not (isinstance(min_scale, (int, float)) and math.isfinite(min_scale) and min_scale > 0):
            raise CalibrationError(f"min_scale must be a positive number, got {min_scale!r}")
        self.method = method
        self.min_scale = float(min_scale)
        self._sites: dict[str, SiteCalibration] = dict(sites or {})

    @property
    def sites(self) -> tuple[str, ...]:
        """The sites this calibrator can transform, sorted."""
        return tuple(sorted(self._sites))

    def __contains__(self, site: object) -> bool:
        return site in self._sites

    def __getitem__(self, site: str) -> SiteCalibration:
        try:
            return self._sites[site]
        except KeyError:
            raise CalibrationError(
                f"site {site!r} has no calibration (calibrated: {', '.join(self.sites) or 'none'}); "
                "fit the calibrator on that site's scores of the calibration set first"
            ) from None

    def fit_site(self, site: str, scores: Sequence[float | None]) -> SiteCalibration:
        """Fit ``site`` on its raw scores of the calibration set (missing values are skipped)."""
        arr = _finite(scores)
        if arr.size < 2:
            raise CalibrationError(
                f"site {site!r} gave {arr.size} usable score(s) on the calibration "
                "set; at least 2 finite scores are needed: score more items"
            )
        if self.method == "zscore":
            center, spread = float(arr.mean()), float(arr.std())
        else:
            q1, median, q3 = np.percentile(arr, [25, 50, 75])
            center, spread = float(median), float(q3 - q1) / _NORMAL_IQR
        fitted = SiteCalibration(center=center, scale=max(spread, self.min_scale), count=int(arr.size))
        self._sites[site] = fitted
        log.info("calibrated site", extra={"site": site, "count": fitted.count, "method": self.method})
        return fitted

    def fit(self, raw_scores: Mapping[str, Sequence[float | None]]) -> Calibrator:
        """Fit every site in ``raw_scores`` (site -> raw scores of the calibration set); returns self."""
        for site, scores in raw_scores.items():
            self.fit_site(site, scores)
        return self

    def transform(self, site: str, scores: Sequence[float | None]) -> list[float | None]:
        """Calibrated scores of ``site``; None, NaN and inf stay missing (None)."""
        cal = self[site]
        return [(float(s) - cal.center) / cal.scale if is_score(s) else None for s in scores]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the fitted state."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "min_scale": self.min_scale,
            "sites": {site: asdict(cal) for site, cal in sorted(self._sites.items())},
        }

    @classmethod
    def from_dict(cls, data: Any) -> Calibrator:
        """Rebuild a calibrator from ``to_dict`` output, validating every field."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(
                f"not a calibration file (expected format {FORMAT!r}); pass the calibration.json written with the run"
            )
        if data.get("version") != VERSION:
            raise CalibrationError(
                f"calibration version {data.get('version')!r} is not supported "
                f"(expected {VERSION}); refit the calibration with this release"
            )
        sites_raw = data.get("sites")
        if not isinstance(sites_raw, dict):
            raise CalibrationError("calibration 'sites' must be an object of site -> {center, scale, count}")
        sites = {}
        for site, entry in sites_raw.items():
            try:
                center, scale, count = entry["center"], entry["scale"], entry["count"]
            except (TypeError, KeyError):
                raise CalibrationError(f"calibration of site {site!r} needs center, scale and count") from None
            if not (is_score(center) and is_score(scale)) or scale <= 0 or not isinstance(count, int) or count < 0:
                raise CalibrationError(
                    f"calibration of site {site!r} is invalid (center and scale must "
                    "be finite, scale > 0, count a non-negative integer); refit it"
                )
            sites[site] = SiteCalibration(center=float(center), scale=float(scale), count=count)
        return cls(data.get("method", "zscore"), min_scale=data.get("min_scale", 1e-3), sites=sites)

    def save(self, path: str | Path) -> Path:
        """Write the state as JSON to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibrator:
        """Read a calibrator saved by ``save``; errors name the file and the fix."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationError(
                f"{path}: calibration file not found; fit one first (it is saved with the router)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{path}: not valid JSON ({exc}); refit the calibration") from None
        try:
            return cls.from_dict(data)
        except CalibrationError as exc:
            raise CalibrationError(f"{path}: {exc}") from None

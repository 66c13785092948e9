"""Per-site score calibration: fitting, missing values, JSON round trip, hostile files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from coordinator.mixture.calibration import CalibrationError, Calibrator


def test_zscore_puts_sites_on_one_scale():
    rng = np.random.default_rng(0)
    raw = {"a": (rng.normal(size=500) * 7 + 40).tolist(), "b": (rng.normal(size=500) * 0.01 - 3).tolist()}
    cal = Calibrator().fit(raw)
    for site, scores in raw.items():
        z = np.array(cal.transform(site, scores))
        assert abs(z.mean()) < 1e-9 and abs(z.std() - 1) < 1e-9
    # The same raw offset means different things at the two sites.
    assert cal.transform("a", [47.0])[0] == pytest.approx(1.0, abs=0.2)
    assert cal.transform("b", [-2.99])[0] == pytest.approx(1.0, abs=0.2)


def test_robust_ignores_outliers_and_floor_caps_constant_sites():
    scores = [0.0, 1.0, 2.0, 3.0, 4.0] * 20 + [1e9]
    robust, plain = Calibrator("robust").fit({"a": scores}), Calibrator().fit({"a": scores})
    assert robust["a"].center == pytest.approx(2.0) and robust["a"].scale < 5
    assert plain["a"].scale > 1e6
    constant = Calibrator(min_scale=0.5).fit({"c": [3.0] * 10})
    assert constant["c"].scale == 0.5 and constant.transform("c", [4.0]) == [2.0]


def test_missing_and_non_finite_scores_stay_missing():
    cal = Calibrator().fit({"a": [1.0, None, 3.0, math.nan, math.inf]})
    assert cal["a"].count == 2
    assert cal.transform("a", [2.0, None, math.nan, -math.inf, True]) == [0.0, None, None, None, None]


def test_json_round_trip(tmp_path):
    cal = Calibrator("robust", min_scale=0.01).fit({"site-a": [1.0, 2.0, 5.0], "site-b": [-1.0, 0.5]})
    loaded = Calibrator.load(cal.save(tmp_path / "calibration.json"))
    assert loaded.to_dict() == cal.to_dict()
    assert loaded.sites == ("site-a", "site-b")
    assert loaded.transform("site-a", [3.3]) == cal.transform("site-a", [3.3])


def test_refuses_bad_input(tmp_path):
    with pytest.raises(CalibrationError, match="at least 2"):
        Calibrator().fit({"a": [1.0, None]})
    with pytest.raises(CalibrationError, match="no calibration.*fit the calibrator"):
        Calibrator().fit({"a": [1.0, 2.0]}).transform("b", [1.0])
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        Calibrator("minmax")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        Calibrator.load(bad)
    data = Calibrator().fit({"a": [1.0, 2.0]}).to_dict()
    data["sites"]["a"]["scale"] = -1
    bad.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="invalid.*refit"):
        Calibrator.load(bad)
    with pytest.raises(CalibrationError, match="not found"):
        Calibrator.load(tmp_path / "missing.json")

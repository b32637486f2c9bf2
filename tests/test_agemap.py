"""Age-band bias maps (boneage.agemap) and how the CNN reads through one (boneage.direct.calibrated_interval)."""

from __future__ import annotations

import numpy as np
import pytest

from boneage.agemap import AgeMap, band_biases, choose_age_map, fit_age_map
from boneage.direct import calibrated_interval, clipped_interval


def _shrunk(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ages and estimates drawn toward the middle (130 months) by a fifth, with 6 months of noise."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 220, n)
    return ages, 130.0 + 0.8 * (ages - 130.0) + rng.normal(0, 6, n)


def test_band_biases_by_band():
    ages = np.array([30.0, 72.0, 144.0, 150.0])
    assert band_biases(ages, ages + np.array([1.0, 2.0, 4.0, -3.0])) == [1.0, 3.0, -3.0]
    assert np.isnan(band_biases(np.array([100.0]), np.array([101.0]))[0])


def test_a_map_undoes_a_pull_toward_the_middle():
    ages, estimates = _shrunk()
    age_map = fit_age_map(ages, estimates, degree=1)
    assert np.all(np.diff(age_map.estimates) > 0)  # invertible
    assert np.max(np.abs(band_biases(ages, estimates))) > 8
    assert np.max(np.abs(band_biases(ages, age_map.apply(estimates)))) < 1.5
    # The map reads the pulled estimate of a 40-month-old back to about 40 months.
    assert age_map.apply(130.0 + 0.8 * (40.0 - 130.0)) == pytest.approx(40.0, abs=3.0)
    assert age_map.expected_estimate(40.0) == pytest.approx(58.0, abs=3.0)


def test_the_choice_keeps_a_map_only_when_it_pays():
    ages, estimates = _shrunk()
    age_map, report = choose_age_map(ages, estimates)
    assert age_map is not None and report["chosen"] != "none"
    assert report[report["chosen"]]["worst_band_bias_months"] < report["none"]["worst_band_bias_months"]
    rng = np.random.default_rng(1)
    unbiased = ages + rng.normal(0, 6, len(ages))
    age_map, report = choose_age_map(ages, unbiased)
    assert age_map is None and report["chosen"] == "none"
    age_map, report = choose_age_map(ages[:6], estimates[:6])
    assert age_map is None and "too few" in report["why"]


def test_map_round_trips_through_a_dict():
    age_map = fit_age_map(*_shrunk(), degree=2)
    again = AgeMap.from_dict(age_map.to_dict())
    assert again.degree == 2 and np.allclose(again.apply([50.0, 150.0]), age_map.apply([50.0, 150.0]), atol=1e-3)
    assert AgeMap.from_dict(None) is None


def test_the_cnn_reads_estimate_and_interval_through_its_mode_map():
    age_map = fit_age_map(*_shrunk(), degree=1)
    locations, scales = np.array([60.0, 130.0, 200.0]), np.array([5.0, 5.0, 5.0])
    calibration = {"factor_sex_known": 2.0, "factor_sex_unknown": 3.0}
    plain = clipped_interval(locations, scales, 2.0)
    assert all(np.array_equal(a, b) for a, b in zip(calibrated_interval(locations, scales, calibration, True), plain))
    calibration["age_map"] = {"sex_known": age_map.to_dict(), "sex_unknown": None}
    age, lower, upper = calibrated_interval(locations, scales, calibration, sex_known=True)
    assert np.allclose(age, age_map.apply(plain[0]), atol=1e-3)
    assert np.all(lower < age) and np.all(age < upper)
    assert age[0] < 60.0 and age[2] > 200.0  # young read younger, old older: the pull undone
    unknown = calibrated_interval(locations, scales, calibration, sex_known=False)
    assert all(np.array_equal(a, b) for a, b in zip(unknown, clipped_interval(locations, scales, 3.0)))


def test_beyond_the_fitted_ages_a_map_shifts_with_slope_one():
    rng = np.random.default_rng(3)
    ages = rng.uniform(40, 200, 300)
    age_map = fit_age_map(ages, 130 + 0.8 * (ages - 130) + rng.normal(0, 4, len(ages)), degree=2)
    # Past 200 months f continues with slope 1: an estimate 10 months past f(200) is 10 months past 200,
    # and an unclipped estimate past the grid still maps (nothing saturates at 240).
    assert age_map.apply(float(age_map.expected_estimate(200.0)) + 10) == pytest.approx(210.0, abs=0.5)
    assert age_map.apply(300.0) - age_map.apply(290.0) == pytest.approx(10.0, abs=1e-6)
    assert age_map.apply(-5.0) < age_map.apply(0.0)


def test_a_fit_that_cannot_be_inverted_is_refused():
    rng = np.random.default_rng(4)
    ages = rng.uniform(20, 220, 300)
    flat_then_falling = 150 - 0.004 * (ages - 150) ** 2 + rng.normal(0, 2, len(ages))
    assert fit_age_map(ages, flat_then_falling, degree=2) is None
    age_map, report = choose_age_map(ages, flat_then_falling, degrees=(2,))
    assert age_map is None and report["chosen"] == "none"


def test_a_calibration_whose_map_is_none_reads_plainly():
    calibration = {"factor_sex_known": 2.0, "factor_sex_unknown": 3.0, "age_map": None}
    got = calibrated_interval(np.array([100.0]), np.array([5.0]), calibration, sex_known=True)
    assert [float(v[0]) for v in got] == [100.0, 90.0, 110.0]

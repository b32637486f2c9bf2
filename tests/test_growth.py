"""Reference tables: building, smoothing, inversion (implied age), combination and regression."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from boneage.growth import (
    AGE_RANGE,
    AgeRegression,
    LookupBlend,
    ReferenceTable,
    build_reference,
    calibrate_tau,
    lookup_out_of_fold,
)


def _cohort(n=600, seed=0):
    """Hands whose features follow known curves of age: a length ratio and a fusion flag."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(12, 216, n)
    sex = rng.choice(["M", "F"], n)
    shift = np.where(sex == "F", 12.0, 0.0)  # girls mature a year earlier
    ratio = 0.3 + 0.004 * (age + shift) + rng.normal(0, 0.04, n)
    fused = (age + shift + rng.normal(0, 10, n) > 170).astype(float)
    feats = pd.DataFrame({"ratio": ratio, "fused": fused})
    return feats, age, sex


def test_build_recovers_the_generating_curves():
    feats, age, sex = _cohort()
    table = build_reference(feats, age, sex, bandwidth_months=10)
    mean, sd = table.expected("ratio", 120, "M")
    assert mean == pytest.approx(0.3 + 0.004 * 120, abs=0.02)
    assert sd == pytest.approx(0.04, abs=0.015)
    assert table.expected("ratio", 120, "F")[0] > mean  # girls ahead
    assert "fused" in table.binary
    assert table.expected("fused", 60, "M")[0] < 0.1 < 0.9 < table.expected("fused", 215, "M")[0]


def test_implied_age_inverts_the_curve():
    feats, age, sex = _cohort()
    table = build_reference(feats, age, sex)
    value = 0.3 + 0.004 * 100
    est, lo, hi = table.implied_age("ratio", value, "M")
    assert est == pytest.approx(100, abs=8) and lo < est < hi
    assert math.isnan(table.implied_age("ratio", math.nan, "M")[0])
    assert table.z_score("ratio", value, 100, "M") == pytest.approx(0, abs=0.5)


def test_combined_estimate_interval_is_calibrated_on_held_out_hands():
    feats, age, sex = _cohort(800, seed=1)
    table = build_reference(feats.iloc[:500], age[:500], sex[:500])
    table.tau = calibrate_tau(table, feats.iloc[500:650], age[500:650], sex[500:650])
    rows = feats.iloc[650:].to_dict(orient="records")
    results = [table.estimate(r, s) for r, s in zip(rows, sex[650:])]
    truth = age[650:]
    covered = np.mean([lo <= a <= hi for (_, lo, hi), a in zip(results, truth)])
    mae = np.mean([abs(e - a) for (e, _, _), a in zip(results, truth)])
    assert 0.8 <= covered <= 0.99
    assert mae < 15


def test_unknown_sex_uses_both_curves():
    feats, age, sex = _cohort()
    table = build_reference(feats, age, sex)
    est, lo, hi = table.estimate({"ratio": 0.3 + 0.004 * 150, "fused": 0.0}, None)
    assert 120 < est < 170 and lo < est < hi


def test_save_and_load_round_trip(tmp_path):
    feats, age, sex = _cohort()
    table = build_reference(feats, age, sex, description="Test table\nbuilt from a toy cohort")
    table.tau = 3.5
    loaded = ReferenceTable.load(table.save(tmp_path / "ref.csv"))
    assert loaded.tau == 3.5 and loaded.binary == {"fused"} and "toy cohort" in loaded.description
    np.testing.assert_allclose(loaded.mean[("F", "ratio")], table.mean[("F", "ratio")], rtol=1e-5)
    assert loaded.estimate({"ratio": 0.7}, "F") == pytest.approx(table.estimate({"ratio": 0.7}, "F"), abs=0.5)


def test_regression_learns_and_has_a_conformal_interval(tmp_path):
    feats, age, sex = _cohort(800, seed=2)
    reg = AgeRegression.fit(feats.iloc[:600], age[:600], sex[:600], folds=3, max_iter=60)
    pred, lo, hi = reg.predict_interval(feats.iloc[600:], sex[600:])
    assert np.mean(np.abs(pred - age[600:])) < 15
    assert 0.8 <= np.mean((lo <= age[600:]) & (age[600:] <= hi)) <= 0.99
    # Squared loss (multistep-8): closer than absolute loss on the training films' cross-validation, and less drawn
    # toward the middle of the ages; both models, with and without the sex.
    assert reg.model.loss == reg.sex_agnostic_model.loss == "squared_error"
    # A feature never measured in training is left out, not crashed on.
    feats_with_empty = feats.assign(never=np.nan)
    assert "never" not in AgeRegression.fit(feats_with_empty.iloc[:200], age[:200], sex[:200], folds=3, max_iter=20).feature_names
    # Missing features and unknown sex are handled, not crashed on.
    nan_pred = reg.predict(pd.DataFrame({"ratio": [np.nan], "fused": [1.0]}), np.array([None]))
    assert np.isfinite(nan_pred).all()
    # Its out-of-fold predictions are the ones behind its CV MAE.
    assert reg.oof.shape == (600,)
    assert np.mean(np.abs(reg.oof - age[:600])) == pytest.approx(reg.cv_mae)
    again = AgeRegression.load(reg.save(tmp_path / "reg.joblib"))
    assert again.oof is None and reg.oof is not None  # training-film predictions are not shipped
    np.testing.assert_allclose(again.predict(feats.iloc[:5], sex[:5]), reg.predict(feats.iloc[:5], sex[:5]))


def test_regression_reads_an_unknown_sex_with_its_sex_agnostic_model(tmp_path):
    import dataclasses

    feats, age, sex = _cohort(900, seed=6)
    reg = AgeRegression.fit(feats.iloc[:600], age[:600], sex[:600], folds=3, max_iter=60)
    test, truth, true_sex = feats.iloc[600:], age[600:], sex[600:]
    unknown = np.array([None] * len(truth))
    pred, lo, hi = reg.predict_interval(test, unknown)
    bias = {s: float(np.mean((pred - truth)[true_sex == s])) for s in ("M", "F")}
    # Girls' features run a year ahead: read without the sex, girls read a little old and boys a
    # little young (about half a year each way), not one sex right and the other a year off.
    assert bias["F"] > 2 and bias["M"] < -2 and max(abs(bias["M"]), abs(bias["F"])) < 9
    assert abs(bias["F"] + bias["M"]) < 2
    # That is the second model's reading, which never had a sex column (the first would route a
    # missing sex code down whichever branch held more training hands).
    assert reg.sex_agnostic_model.n_features_in_ == len(reg.feature_names)
    np.testing.assert_allclose(pred, np.clip(reg.sex_agnostic_model.predict(test[reg.feature_names].to_numpy(float)),
                                             *AGE_RANGE))
    assert 0.8 <= np.mean((lo <= truth) & (truth <= hi)) <= 0.99
    assert reg.half_width_90_sex_unknown > reg.half_width_90 and reg.cv_mae_sex_unknown > reg.cv_mae
    np.testing.assert_allclose(hi - pred, np.minimum(reg.half_width_90_sex_unknown, AGE_RANGE[1] - pred))
    assert np.mean(np.abs(reg.oof_sex_unknown - age[:600])) == pytest.approx(reg.cv_mae_sex_unknown)
    # A known sex is still read by the sex-aware model, hands of both kinds in one call.
    mixed = np.array([None, "M", "F"], dtype=object)
    np.testing.assert_allclose(reg.predict(test.iloc[:3], mixed),
                               [pred[0], *reg.predict(test.iloc[1:3], mixed[1:])])
    again = AgeRegression.load(reg.save(tmp_path / "reg.joblib"))
    assert again.oof_sex_unknown is None
    np.testing.assert_allclose(again.predict_interval(test, unknown), (pred, lo, hi))
    # A regression saved before the second model existed reads an unknown sex as it did then.
    legacy = dataclasses.replace(reg, sex_agnostic_model=None, half_width_90_sex_unknown=None)
    old_pred, old_lo, _ = legacy.predict_interval(test, unknown)
    np.testing.assert_allclose(old_pred, np.clip(reg.model.predict(reg._design(test, unknown, reg.feature_names)), *AGE_RANGE))
    np.testing.assert_allclose(old_pred - old_lo, np.minimum(reg.half_width_90, old_pred))


def test_a_feature_measured_in_one_sex_only_is_covered_for_that_sex_only():
    feats, age, sex = _cohort()
    feats.loc[sex == "F", "ratio"] = np.nan  # e.g. too few girls' films measured that bone plausibly
    table = build_reference(feats, age, sex)
    assert "ratio" in table.features
    assert table.covers("ratio", "M") and table.covers("ratio", None) and not table.covers("ratio", "F")
    assert table.covers("fused", "F")
    with pytest.raises(KeyError):
        table.expected("ratio", 120, "F")


def test_blend_weight_follows_the_better_estimator(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.uniform(12, 216, 400)
    good, bad = y + rng.normal(0, 5, 400), y + rng.normal(0, 30, 400)
    assert LookupBlend.fit(good, bad, y).regression_weight >= 0.9
    assert LookupBlend.fit(bad, good, y).regression_weight <= 0.1
    # Two equally good, independent estimators: the mean beats either.
    other = y + rng.normal(0, 5, 400)
    even = LookupBlend.fit(good, other, y)
    assert 0.3 <= even.regression_weight <= 0.7
    assert even.cv_mae < min(even.regression_cv_mae, even.lookup_cv_mae)
    # The interval covers 90% of fresh hands with the same errors.
    y2 = rng.uniform(12, 216, 2000)
    age, lo, hi = even.combine(y2 + rng.normal(0, 5, 2000), y2 + rng.normal(0, 5, 2000))
    assert 0.86 <= np.mean((lo <= y2) & (y2 <= hi)) <= 0.94
    assert (lo <= age).all() and (age <= hi).all()
    assert LookupBlend.load(even.save(tmp_path / "blend.json")) == even


def test_lookup_out_of_fold_never_sees_the_hand_it_estimates():
    feats, age, sex = _cohort(300, seed=4)
    oof = lookup_out_of_fold(feats, age, sex, tau=2.0, folds=3)
    assert oof.shape == (300,) and np.mean(np.abs(oof - age)) < 25
    # Hand 0's own label never reaches its estimate (it only shapes the other folds' tables).
    relabelled = age.copy()
    relabelled[0] = 216.0 if age[0] < 100 else 12.0
    again = lookup_out_of_fold(feats, relabelled, sex, tau=2.0, folds=3)
    assert again[0] == oof[0]
    assert not np.allclose(again[1:], oof[1:])
    # With the sex withheld, a hand's own sex never reaches its estimate either.
    withheld = lookup_out_of_fold(feats, age, sex, tau=2.0, folds=3, sex_withheld=True)
    flipped = sex.copy()
    flipped[0] = "F" if sex[0] == "M" else "M"
    assert lookup_out_of_fold(feats, age, flipped, tau=2.0, folds=3, sex_withheld=True)[0] == withheld[0]
    assert lookup_out_of_fold(feats, age, flipped, tau=2.0, folds=3)[0] != oof[0]


def test_a_blend_drawn_to_the_middle_is_read_back_through_an_age_map(tmp_path):
    rng = np.random.default_rng(5)
    y = rng.uniform(12, 216, 600)
    pulled = lambda ages: 120 + 0.8 * (ages - 120)  # noqa: E731
    blend = LookupBlend.fit(pulled(y) + rng.normal(0, 5, 600), pulled(y) + rng.normal(0, 5, 600), y)
    assert blend.age_map is not None and blend.age_map_choice["chosen"] != "none"
    y2 = rng.uniform(12, 216, 2000)
    age, lo, hi = blend.combine(pulled(y2) + rng.normal(0, 5, 2000), pulled(y2) + rng.normal(0, 5, 2000))
    assert abs(np.mean(age[y2 < 72] - y2[y2 < 72])) < 2 and abs(np.mean(age[y2 > 160] - y2[y2 > 160])) < 2
    assert 0.86 <= np.mean((lo <= y2) & (y2 <= hi)) <= 0.94
    assert LookupBlend.load(blend.save(tmp_path / "blend.json")) == blend
    # Unbiased estimators keep no map (see test_blend_weight_follows_the_better_estimator).
    assert LookupBlend.fit(y + rng.normal(0, 5, 600), y + rng.normal(0, 5, 600), y).age_map is None

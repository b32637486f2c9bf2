"""The combined estimate: stacking weights per subset of methods, their fit and their use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boneage import models
from boneage.combine import METHODS, Combiner, conformal_factor, fit_stacking, fit_weights, subset_key

#: A stacking in the shipped format (``data/models/combined/stacking.json``), numbers made up.
STACKING = {
    "model_version": "combined-test",
    "sex_known": {
        "multistep+perbone+direct": {"weights": {"multistep": 0.2, "perbone": 0.35, "direct": 0.45}, "factor": 1.1},
        "perbone+direct": {"weights": {"perbone": 0.4, "direct": 0.6}, "factor": 1.2},
        "multistep+direct": {"weights": {"multistep": 0.3, "direct": 0.7}, "factor": 1.0},
        "direct": {"weights": {"direct": 1.0}, "factor": 1.0},
    },
    "sex_unknown": {
        "multistep+perbone+direct": {"weights": {"multistep": 0.1, "perbone": 0.3, "direct": 0.6}, "factor": 1.3},
    },
}


def test_subset_keys_follow_the_method_order():
    assert METHODS == ("multistep", "perbone", "direct")
    assert subset_key(["direct", "multistep"]) == "multistep+direct"
    assert subset_key(("perbone", "direct", "multistep")) == "multistep+perbone+direct"


def test_combined_age_is_the_weighted_mean_with_a_scaled_interval():
    estimates = {"multistep": (100.0, 80.0, 120.0), "perbone": (110.0, 96.0, 124.0), "direct": (120.0, 105.0, 135.0)}
    got = Combiner(STACKING).combine(estimates, "F")
    assert got.age_months == pytest.approx(0.2 * 100 + 0.35 * 110 + 0.45 * 120)
    half = 1.1 * (0.2 * 20 + 0.35 * 14 + 0.45 * 15)
    assert (got.lower_90, got.upper_90) == (pytest.approx(got.age_months - half), pytest.approx(got.age_months + half))
    assert got.weights == STACKING["sex_known"]["multistep+perbone+direct"]["weights"]


def test_a_missing_method_uses_the_weights_fitted_for_the_others():
    estimates = {"perbone": (110.0, 96.0, 124.0), "direct": (120.0, 105.0, 135.0)}
    got = Combiner(STACKING).combine(estimates, "M")
    assert got.age_months == pytest.approx(0.4 * 110 + 0.6 * 120)
    assert set(got.weights) == {"perbone", "direct"}
    # A method given as None (withheld) counts as missing.
    withheld = Combiner(STACKING).combine({**estimates, "multistep": (None, None, None)}, "M")
    assert withheld.age_months == pytest.approx(got.age_months)


def test_sex_unknown_uses_its_own_weights_and_no_set_gives_none():
    estimates = {"multistep": (100.0, 80.0, 120.0), "perbone": (110.0, 96.0, 124.0), "direct": (120.0, 105.0, 135.0)}
    got = Combiner(STACKING).combine(estimates, None)
    assert got.age_months == pytest.approx(0.1 * 100 + 0.3 * 110 + 0.6 * 120)
    assert Combiner(STACKING).combine({"direct": (120.0, 105.0, 135.0)}, None) is None  # no sex-unknown set for it
    assert Combiner(STACKING).combine({}, "F") is None


def test_the_combined_interval_stays_in_the_age_range():
    got = Combiner(STACKING).combine({"direct": (236.0, 200.0, 240.0)}, "F")
    assert got.upper_90 <= 240.0 and got.lower_90 >= 0.0


def test_load_from_file_and_registry(tmp_path):
    (tmp_path / "stacking.json").write_text(json.dumps(STACKING))
    entry = models.get("combined")
    assert (entry.version, entry.weights_file, entry.folder.name) == ("combined-10", "stacking.json", "combined")
    combiner = entry.resolve_loader()(tmp_path / "stacking.json")
    assert isinstance(combiner, Combiner) and combiner.model_version == "combined-test"
    assert Combiner.load(tmp_path).stacking == STACKING  # a folder works too
    with pytest.raises(FileNotFoundError):
        Combiner.load(tmp_path / "missing")


def _synthetic_holdout(n: int = 400, seed: int = 0) -> tuple[dict, dict, np.ndarray]:
    """Three methods of known error: per-bone 4 months, multi-step 12, end-to-end 8 (independent)."""
    rng = np.random.default_rng(seed)
    targets = rng.uniform(20, 220, n)
    sd = {"multistep": 12.0, "perbone": 4.0, "direct": 8.0}
    ages = {m: targets + rng.normal(0, s, n) for m, s in sd.items()}
    half = {m: np.full(n, 1.645 * s) for m, s in sd.items()}
    return ages, half, targets


def test_fit_weights_gives_the_better_method_most_weight():
    ages, _, targets = _synthetic_holdout()
    w = fit_weights(np.stack([ages["multistep"], ages["perbone"]], axis=1), targets)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    # Inverse-variance weights would be 1/144 : 1/16, i.e. 0.1 : 0.9.
    assert w[1] > 0.8 and w[0] < 0.2
    assert fit_weights(ages["direct"][:, None], targets).tolist() == [1.0]


def test_fit_stacking_covers_every_subset_and_beats_the_best_method():
    ages, half, targets = _synthetic_holdout()
    ages["multistep"][:50] = np.nan  # withheld on some films: those films drop out of its subsets
    stacking = fit_stacking(ages, half, targets)
    assert set(stacking) == {"multistep", "perbone", "direct", "multistep+perbone", "multistep+direct",
                             "perbone+direct", "multistep+perbone+direct"}
    full = stacking["multistep+perbone+direct"]
    assert full["n"] == 350 and stacking["perbone+direct"]["n"] == 400
    assert max(full["weights"], key=full["weights"].get) == "perbone"
    assert full["oof_mae"] <= full["method_mae"]["perbone"] + 0.1
    assert 0.8 <= full["oof_coverage"] <= 0.97
    combiner = Combiner({"sex_known": stacking})
    got = combiner.combine({m: (ages[m][60], ages[m][60] - half[m][60], ages[m][60] + half[m][60]) for m in METHODS}, "F")
    assert got is not None and abs(got.age_months - targets[60]) < 30


def test_conformal_factor_is_the_finite_sample_quantile():
    ratio = np.arange(1, 101, dtype=float) / 100  # 0.01 .. 1.00
    assert conformal_factor(ratio, 0.9) == pytest.approx(0.91)
    assert conformal_factor(np.array([np.nan])) == 1.0


def test_a_method_with_a_nan_age_or_limit_counts_as_missing():
    nan = float("nan")
    estimates = {"multistep": (nan, 80.0, 120.0), "perbone": (110.0, nan, 124.0), "direct": (120.0, 105.0, 135.0)}
    got = Combiner(STACKING).combine(estimates, "F")
    assert got is not None and got.weights == {"direct": 1.0} and got.age_months == pytest.approx(120.0)
    assert np.isfinite([got.lower_90, got.upper_90]).all()


def test_model_card_is_written_from_the_stacking_and_metrics(tmp_path):
    import json

    from boneage.training.combine import write_model_card

    rng = np.random.default_rng(3)
    y = rng.uniform(10, 220, 120)
    ages = {"multistep": y + rng.normal(0, 14, 120), "perbone": y + rng.normal(0, 6, 120), "direct": y + rng.normal(0, 9, 120)}
    half = {m: np.full(120, 20.0) for m in ages}
    stacking = {"model_version": "combined-9", "sex_known": fit_stacking(ages, half, y), "sex_unknown": fit_stacking(ages, half, y)}
    (tmp_path / "stacking.json").write_text(json.dumps(stacking))
    group = {"all": {"n": 120, "mae": 5.0, "bias": 0.1, "coverage": 0.9, "width": 30.0}, "available": 1.0}
    metrics = {"command": "boneage train combined --seed 0", "minutes": 3.0, "holdout_n": 120, "validation_n": 50,
               "validation": {mode: {m: group for m in ("multistep", "perbone", "direct", "combined")}
                              for mode in ("sex_known", "sex_unknown")}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    card = write_model_card(tmp_path).read_text()
    assert "multi-step + per-bone + end-to-end CNN" in card and "boneage train combined --seed 0" in card
    assert "## Validation" in card and "| combined | 5.0 |" in card


def test_a_stacking_that_pulls_toward_the_middle_is_read_back_through_an_age_map():
    # Two methods that both draw ages a fifth toward 130 months: the stacking keeps an age-band
    # bias map (chosen on held-out halves of the out-of-fold means), and the combiner reads
    # the weighted mean and its interval back through it.
    rng = np.random.default_rng(0)
    y = rng.uniform(20, 220, 300)
    ages = {m: 130 + 0.8 * (y - 130) + rng.normal(0, 6, len(y)) for m in ("perbone", "direct")}
    half = {m: np.full(len(y), 12.0) for m in ages}
    entry = fit_stacking(ages, half, y)["perbone+direct"]
    assert entry["age_map"] is not None and entry["age_map_choice"]["chosen"] != "none"
    combiner = Combiner({"sex_known": {"perbone+direct": entry}})
    young = combiner.combine({"perbone": (58.0, 46.0, 70.0), "direct": (58.0, 46.0, 70.0)}, "F")
    assert young.age_months == pytest.approx(40.0, abs=4.0)  # 58 is where a 40-month-old's pulled reading lands
    assert young.lower_90 < young.age_months < young.upper_90
    # Fresh films with the same pull: unbiased by band through the map, and the interval covers ~90%.
    y2 = rng.uniform(20, 220, 1000)
    pulled = {m: 130 + 0.8 * (y2 - 130) + rng.normal(0, 6, len(y2)) for m in ages}  # each method its own noise
    fresh = [combiner.combine({m: (pulled[m][i], pulled[m][i] - 12.0, pulled[m][i] + 12.0) for m in ages}, "F")
             for i in range(len(y2))]
    got = np.array([c.age_months for c in fresh])
    assert abs(np.mean(got[y2 < 72] - y2[y2 < 72])) < 2.5 and abs(np.mean(got[y2 > 160] - y2[y2 > 160])) < 2.5
    covered = np.mean([c.lower_90 <= t <= c.upper_90 for c, t in zip(fresh, y2)])
    assert 0.85 <= covered <= 0.95
    unbiased = fit_stacking({m: y + rng.normal(0, 6, len(y)) for m in ages}, half, y)["perbone+direct"]
    assert unbiased["age_map"] is None

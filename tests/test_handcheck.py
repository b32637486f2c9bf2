"""The hand check and the one orientation decision, with the shipped models.

Non-hand images come from ``boneage.training.negatives`` with seed 3, which neither the fitted
check (seed 101) nor the benchmark (seed 7001) uses.
"""

from __future__ import annotations

import numpy as np
import pytest

from boneage import datasets, models
from boneage.estimate import BoneAgeEstimator
from boneage.examples import load_example
from boneage.handcheck import FEATURES, HandCheck, hand_features
from boneage.io import load_radiograph
from boneage.preprocess import rotate_film
from boneage.training.negatives import KINDS, non_hand_image
from conftest import TESTS_DATA

needs_models = pytest.mark.skipif(
    not all(models.get(n).is_available() for n in ("segmenter", "handcheck", "multistep", "direct")),
    reason="shipped weights not present")


@pytest.fixture(scope="module")
def estimator() -> BoneAgeEstimator:
    est = BoneAgeEstimator.load()
    # Every shipped model loads; one not trained yet (e.g. the per-bone network) is only reported.
    broken = {k: v for k, v in est.load_errors.items() if models.get(k).is_available()}
    assert not broken, broken
    return est


def test_hand_features_of_an_empty_reading_are_zero():
    feats = hand_features(np.zeros((32, 32), np.uint8), np.ones((2, 32, 32)) / 2, np.zeros((32, 32)))
    assert set(feats) == set(FEATURES) and all(v == 0 for v in feats.values())


def test_probability_follows_the_coefficients():
    n = len(FEATURES)
    check = HandCheck((0.0,) * n, (1.0,) * n, (1.0,) + (0.0,) * (n - 1), 0.0, 0.5, "t")
    feats = dict.fromkeys(FEATURES, 0.0)
    assert check.probability(feats) == pytest.approx(0.5)
    feats[FEATURES[0]] = 3.0
    assert check.probability(feats) > 0.95 and check.is_hand(feats)
    feats[FEATURES[0]] = -3.0
    assert not check.is_hand(feats)


def test_a_check_fitted_on_other_features_is_refused(tmp_path):
    import json

    n = len(FEATURES)
    blob = HandCheck((0.0,) * n, (1.0,) * n, (0.0,) * n, 0.0, 0.5, "t").to_json()
    blob["features"] = blob["features"][:-1]
    (tmp_path / "h.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="features"):
        HandCheck.load(tmp_path / "h.json")


def test_non_hand_generator_is_deterministic_and_covers_every_kind():
    kinds = {non_hand_image(3, i, 128)[1] for i in range(len(KINDS))}
    assert kinds == set(KINDS)
    a, _ = non_hand_image(3, 4, 128)
    b, _ = non_hand_image(3, 4, 128)
    assert np.array_equal(a, b) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1


@needs_models
@pytest.mark.parametrize("index", range(12))
def test_non_hand_images_are_rejected_with_no_age(estimator, index):
    pixels, kind = non_hand_image(3, index, 512)
    result = estimator.estimate(pixels)
    assert result.status == "rejected", (kind, result.reason, result.qc)
    assert result.multistep.age_months is None and result.direct.age_months is None


@needs_models
@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "RG3_J2KR.dcm"])
@pytest.mark.parametrize("turns", [0, 1])
def test_non_hand_fixtures_are_rejected_from_pixels_alone(estimator, name, turns):
    pixels = np.rot90(load_radiograph(TESTS_DATA / name).pixels, turns)
    result = estimator.estimate(np.ascontiguousarray(pixels))
    assert result.status == "rejected" and "hand" in result.reason
    assert result.direct.age_months is None


@needs_models
@pytest.mark.parametrize("which", ["synthetic_hand_4y", "synthetic_hand_12y"])
def test_example_hands_are_hands_and_turned_ones_read_the_same(estimator, which):
    rad = load_example(which)
    upright = estimator.estimate(rad)
    assert upright.ok, upright.reason
    for turns in (1, 2, 3):
        turned = estimator.estimate(np.ascontiguousarray(np.rot90(rad.pixels, turns)), sex=rad.sex)
        assert turned.ok, turned.reason
        assert any("upright" in q for q in turned.qc)
        assert turned.direct.age_months == pytest.approx(upright.direct.age_months, abs=3)
        assert turned.multistep.age_months == pytest.approx(upright.multistep.age_months, abs=3)
        # The overlay is mapped back onto the film as the user gave it.
        assert turned.label_map.shape == turned.image_shape


@needs_models
def test_a_negative_film_is_read_inverted_back(estimator):
    rad = load_example("synthetic_hand_12y")
    upright = estimator.estimate(rad)
    negative = estimator.estimate((1.0 - rad.pixels).astype(np.float32), sex=rad.sex)
    assert negative.ok, negative.reason
    assert any("negative" in q for q in negative.qc)
    assert negative.direct.age_months == pytest.approx(upright.direct.age_months, abs=3)


@needs_models
def test_real_validation_hands_pass_and_turned_ones_read_the_same(estimator, rsna_dev):
    dev = datasets.rsna_dev()
    films = dev[dev.split == "val"].head(4)
    for _, row in films.iterrows():
        pixels = load_radiograph(row.path).pixels
        given = estimator.estimate(pixels, sex=row.sex)
        assert given.ok, (row.id, given.reason)
        for variant in (np.rot90(pixels, 1), np.rot90(pixels, 2), rotate_film(pixels, -20)[0]):
            r = estimator.estimate(np.ascontiguousarray(variant), sex=row.sex)
            assert r.ok, (row.id, r.reason)
            assert abs(r.direct.age_months - given.direct.age_months) < 12, row.id
            assert abs(r.multistep.age_months - given.multistep.age_months) < 15, row.id

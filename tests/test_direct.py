"""End-to-end CNN at inference (boneage.direct): network, sex codes, loading, prediction, shipped weights.

Training, augmentation and calibration are tested in test_training_direct.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boneage import direct, models
from boneage.direct import DirectEstimator, sex_to_code
from boneage.networks import BoneAgeNet
from boneage.synth import generate_hand
from boneage.training.direct import TrainConfig, save_weights, train_on_arrays
from conftest import SMALL_DIRECT_WIDTHS, random_films


def test_sex_codes():
    assert sex_to_code("M") == 1.0 and sex_to_code("female") == -1.0 and sex_to_code(None) == 0.0
    with pytest.raises(ValueError):
        sex_to_code("X")


@pytest.mark.parametrize("code", [1.0, -1.0, 0.0])
def test_forward_with_each_sex_code(code):
    net = BoneAgeNet(widths=SMALL_DIRECT_WIDTHS).eval()
    with torch.no_grad():
        location, log_scale = net(torch.randn(2, 1, 64, 64), torch.full((2,), code))
    assert location.shape == (2,) and log_scale.shape == (2,)
    assert torch.isfinite(location).all() and torch.isfinite(log_scale).all()


def test_predict_takes_a_radiograph_and_uses_its_sex(tmp_path):
    from boneage.io import Radiograph

    images, ages, sexes = random_films(16)
    config = TrainConfig(epochs=1, input_size=32, cache_size=48, batch_size=8, device="cpu",
                         widths=SMALL_DIRECT_WIDTHS, bf16=False)
    result = train_on_arrays(images, ages, sexes, config, log=lambda *_: None)
    save_weights(tmp_path / direct.WEIGHTS_FILE, result, config, {"factor_sex_known": 2.0, "factor_sex_unknown": 2.5})
    estimator = DirectEstimator.load(tmp_path / direct.WEIGHTS_FILE)
    film = Radiograph(pixels=images[0].astype(np.float32) / 255.0, sex="F")
    assert estimator.predict(film).sex_used == "F"


def test_registry_lists_the_direct_model():
    entry = models.get("direct")
    assert entry.kind == "regressor" and entry.weights_path.name == direct.WEIGHTS_FILE
    assert entry.version == direct.MODEL_VERSION
    assert callable(entry.resolve_loader())
    with pytest.raises(KeyError):
        models.get("nope")
    with pytest.raises(ValueError):
        models.register(entry)


@pytest.fixture(scope="module")
def shipped() -> DirectEstimator:
    entry = models.get("direct")
    if not entry.is_available():
        pytest.skip(f"shipped weights not present at {entry.weights_path}")
    return models.load("direct")


def test_shipped_weights_are_small_fp16(shipped):
    entry = models.get("direct")
    assert entry.weights_path.stat().st_size < 20 * 1024 * 1024
    state = torch.load(entry.weights_path, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert entry.card_path.is_file()
    assert 0.85 <= entry.metrics()["validation"]["overall"]["coverage_90"] <= 0.95


def test_shipped_weights_predict_real_validation_films(shipped, rsna_dev):
    from PIL import Image

    from boneage.datasets import rsna_dev as dev_labels

    labels = dev_labels(rsna_dev)
    val = labels[labels["split"] == "val"].head(4)
    errors = []
    for row in val.itertuples():
        pixels = np.asarray(Image.open(row.path).convert("L"))
        known = shipped.predict(pixels, row.sex)
        unknown = shipped.predict(pixels, None)
        assert 0 <= known.lower_90 <= known.age_months <= known.upper_90 <= 240
        assert unknown.sex_used is None and unknown.sex_note
        errors.append(abs(known.age_months - row.bone_age_months))
    assert np.mean(errors) < 40  # four films: a loose sanity bound, the real metrics are in the card


def test_an_uncertain_sex_weighs_the_readings_as_a_boy_and_as_a_girl(shipped):
    # The sex read from the film but too uncertain to use alone: the network reads the film as both
    # sexes and weighs the two by the male probability; the interval spans both readings.
    from boneage.direct import mix_by_sex

    film = generate_hand(21, 3, size=384, age_range=(110, 150)).image
    boy, girl = shipped.predict(film, "M"), shipped.predict(film, "F")
    assert boy.age_months != girl.age_months
    for p in (0.0, 0.3, 0.65, 1.0):
        mixed = shipped.predict(film, None, male_probability=p)
        assert mixed.age_months == pytest.approx(p * boy.age_months + (1 - p) * girl.age_months, abs=1e-3)
        assert mixed.lower_90 == pytest.approx(min(boy.lower_90, girl.lower_90), abs=1e-3)
        assert mixed.upper_90 == pytest.approx(max(boy.upper_90, girl.upper_90), abs=1e-3)
        assert mixed.sex_used is None and f"male probability ({p:.0%})" in mixed.sex_note
    # A given sex is never mixed; without a probability the sex-agnostic mode runs as before.
    assert shipped.predict(film, "F", male_probability=0.9).age_months == girl.age_months
    assert "sex-agnostic" in shipped.predict(film, None).sex_note
    assert mix_by_sex((100.0, 90.0, 110.0), (80.0, 75.0, 95.0), 0.25) == (85.0, 75.0, 110.0)


def test_predict_reads_through_the_age_map_of_its_calibration(tmp_path):
    # The same network saved with and without an age-band bias map: every answer (sex given, and
    # read as both sexes) is the plain one read through the map.
    from boneage.agemap import fit_age_map

    images, ages, sexes = random_films(16)
    config = TrainConfig(epochs=1, input_size=32, cache_size=48, batch_size=8, device="cpu",
                         widths=SMALL_DIRECT_WIDTHS, bf16=False)
    result = train_on_arrays(images, ages, sexes, config, log=lambda *_: None)
    rng = np.random.default_rng(0)
    y = rng.uniform(20, 220, 300)
    age_map = fit_age_map(y, 130 + 0.8 * (y - 130) + rng.normal(0, 5, len(y)), degree=1)
    plain_cal = {"factor_sex_known": 2.0, "factor_sex_unknown": 2.5}
    save_weights(tmp_path / "plain.pt", result, config, plain_cal)
    save_weights(tmp_path / "mapped.pt", result, config,
                 {**plain_cal, "age_map": {"sex_known": age_map.to_dict(), "sex_unknown": None}})
    plain, mapped = DirectEstimator.load(tmp_path / "plain.pt"), DirectEstimator.load(tmp_path / "mapped.pt")
    film = images[0].astype(np.float32) / 255.0
    a, b = plain.predict(film, "M"), mapped.predict(film, "M")
    assert 0 < a.lower_90 < a.upper_90 < 240  # a standardised target keeps the tiny network in range
    for field in ("age_months", "lower_90", "upper_90"):
        assert getattr(b, field) == pytest.approx(float(np.clip(age_map.apply(getattr(a, field)), 0, 240)), abs=1e-3)
    boy, girl = mapped.predict(film, "M"), mapped.predict(film, "F")
    mixed = mapped.predict(film, None, male_probability=0.25)
    assert mixed.age_months == pytest.approx(0.25 * boy.age_months + 0.75 * girl.age_months, abs=1e-3)
    # The sex-agnostic mode has no map here: unchanged.
    assert mapped.predict(film, None).age_months == pytest.approx(plain.predict(film, None).age_months, abs=1e-6)

"""End-to-end CNN: network, augmentation, a tiny training run, calibration, weights and inference."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from boneage import direct, models
from boneage.direct import (
    BoneAgeNet,
    DirectEstimator,
    TrainConfig,
    augment_batch,
    conformal_factor,
    evaluate_predictions,
    images_to_tensor,
    predict_arrays,
    save_weights,
    sex_to_code,
    train_on_arrays,
)

SMALL_WIDTHS = (8, 16, 16, 32)


def _random_films(n: int, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    ages = rng.uniform(12, 216, size=n)
    # Make the age visible: brighter films are older.
    images = np.clip(images // 2 + (ages[:, None, None] / 228 * 120).astype(np.uint8), 0, 255).astype(np.uint8)
    sexes = rng.choice([1.0, -1.0], size=n).astype(np.float32)
    return images, ages, sexes


def test_sex_codes():
    assert sex_to_code("M") == 1.0 and sex_to_code("female") == -1.0 and sex_to_code(None) == 0.0
    with pytest.raises(ValueError):
        sex_to_code("X")


@pytest.mark.parametrize("code", [1.0, -1.0, 0.0])
def test_forward_with_each_sex_code(code):
    net = BoneAgeNet(widths=SMALL_WIDTHS).eval()
    with torch.no_grad():
        location, log_scale = net(torch.randn(2, 1, 64, 64), torch.full((2,), code))
    assert location.shape == (2,) and log_scale.shape == (2,)
    assert torch.isfinite(location).all() and torch.isfinite(log_scale).all()


def test_augmentation_shapes_and_determinism():
    batch = torch.from_numpy(_random_films(4, 40)[0])
    a = augment_batch(batch, 32, torch.Generator().manual_seed(3))
    b = augment_batch(batch, 32, torch.Generator().manual_seed(3))
    assert a.shape == (4, 1, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    plain = images_to_tensor(batch.numpy(), 32)
    assert plain.shape == (4, 1, 32, 32)


def test_tiny_training_run_and_fp16_round_trip(tmp_path):
    images, ages, sexes = _random_films(32)
    config = TrainConfig(epochs=1, input_size=32, cache_size=48, batch_size=8, seed=1, device="cpu", limit=32,
                         widths=SMALL_WIDTHS, bf16=False)
    result = train_on_arrays(images, ages, sexes, config, monitor=(images[:8], ages[:8], sexes[:8]), log=lambda *_: None)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["monitor_mae_months"])
    loc, scale = predict_arrays(result.model, images, sexes, result.target_mean, result.target_sd, 32)
    assert np.isfinite(loc).all() and (scale > 0).all()
    calibration = {"factor_sex_known": conformal_factor(ages, loc, scale), "factor_sex_unknown": 2.5, "flip_tta": False}
    path = tmp_path / direct.WEIGHTS_FILE
    save_weights(path, result, config, calibration)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    estimator = DirectEstimator.load(tmp_path)
    loc16, _ = predict_arrays(estimator.model, images, sexes, estimator.target_mean, estimator.target_sd, 32)
    assert np.abs(loc16 - loc).max() < 0.5  # months: fp16 storage loses nothing that matters

    male = estimator.predict(images[0], "M")
    unknown = estimator.predict(images[0].astype(np.float32) / 255.0, None)
    assert male.sex_used == "M" and male.sex_note is None
    assert unknown.sex_used is None and "sex unknown" in unknown.sex_note
    for p in (male, unknown):
        assert 0.0 <= p.lower_90 <= p.age_months <= p.upper_90 <= 240.0


def test_predict_takes_a_radiograph_and_uses_its_sex(tmp_path):
    from boneage.io import Radiograph

    images, ages, sexes = _random_films(16)
    config = TrainConfig(epochs=1, input_size=32, cache_size=48, batch_size=8, device="cpu", widths=SMALL_WIDTHS, bf16=False)
    result = train_on_arrays(images, ages, sexes, config, log=lambda *_: None)
    save_weights(tmp_path / direct.WEIGHTS_FILE, result, config, {"factor_sex_known": 2.0, "factor_sex_unknown": 2.5})
    estimator = DirectEstimator.load(tmp_path / direct.WEIGHTS_FILE)
    film = Radiograph(pixels=images[0].astype(np.float32) / 255.0, sex="F")
    assert estimator.predict(film).sex_used == "F"


def test_conformal_factor_covers_its_level():
    rng = np.random.default_rng(0)
    ages = rng.normal(size=2000)
    scales = rng.uniform(0.5, 2.0, size=2000)
    locations = ages + rng.laplace(size=2000) * scales
    k = conformal_factor(ages[:1000], locations[:1000], scales[:1000], 0.9)
    covered = np.abs(ages[1000:] - locations[1000:]) <= k * scales[1000:]
    assert 0.87 <= covered.mean() <= 0.93


def test_evaluate_predictions_groups():
    ages = np.array([30.0, 100.0, 180.0, 60.0])
    metrics = evaluate_predictions(ages, np.array(["M", "F", "M", "F"]), ages + 2, ages - 5, ages + 5)
    assert metrics["overall"]["mae_months"] == 2.0 and metrics["overall"]["coverage_90"] == 1.0
    assert metrics["age_under_6y"]["n"] == 2 and metrics["age_6_to_12y"]["n"] == 1 and metrics["age_over_12y"]["n"] == 1
    assert metrics["male"]["n"] == 2


def test_cli_train_direct_arguments():
    from boneage.cli import build_parser

    args = build_parser().parse_args(["train", "direct", "--epochs", "3", "--size", "128", "--limit", "32", "--device", "cpu",
                                      "--max-minutes", "1.5", "--seed", "7", "--out", "x"])
    config = direct.config_from_args(args)
    assert (config.epochs, config.input_size, config.limit, config.device, config.max_minutes, config.seed, config.out) == (
        3, 128, 32, "cpu", 1.5, 7, "x")
    assert args.handler is not None
    # The CLI's defaults are the library's defaults (the shipped command relies on them).
    defaults = direct.config_from_args(build_parser().parse_args(["train", "direct"]))
    assert defaults == TrainConfig()
    parser = argparse.ArgumentParser()
    direct.add_train_arguments(parser)
    assert direct.config_from_args(parser.parse_args([])) == TrainConfig()


def test_resolve_device():
    assert direct.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert direct.resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError):
            direct.resolve_device("cuda")


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

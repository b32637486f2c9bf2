"""End-to-end CNN training (boneage.training.direct): augmentation, a tiny training run, calibration,
metrics and the ``boneage train direct`` arguments."""

from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest
import torch

from boneage import direct
from boneage.direct import DirectEstimator
from boneage.networks import BoneAgeEnsemble, images_to_tensor, predict_arrays
from boneage.training import direct as training
from boneage.training.direct import (
    TrainConfig,
    augment_batch,
    conformal_factor,
    evaluate_predictions,
    save_weights,
    train_on_arrays,
)
from conftest import SMALL_DIRECT_WIDTHS, random_films


def test_augmentation_shapes_and_determinism():
    batch = torch.from_numpy(random_films(4, 40)[0])
    a = augment_batch(batch, 32, torch.Generator().manual_seed(3))
    b = augment_batch(batch, 32, torch.Generator().manual_seed(3))
    assert a.shape == (4, 1, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    plain = images_to_tensor(batch.numpy(), 32)
    assert plain.shape == (4, 1, 32, 32)


def test_tiny_training_run_and_fp16_round_trip(tmp_path):
    images, ages, sexes = random_films(32)
    config = TrainConfig(epochs=1, input_size=32, cache_size=48, batch_size=8, seed=1, device="cpu", limit=32,
                         widths=SMALL_DIRECT_WIDTHS, bf16=False)
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
    assert metrics["overall"]["bias_months"] == 2.0 and metrics["age_under_6y"]["bias_months"] == 2.0


def test_robustness_variants_shift_the_film_as_named():
    rows, cols = np.mgrid[0:200, 0:160]
    film = np.clip(40 + rows * 0.6 + 60 * np.exp(-((rows - 100) ** 2 + (cols - 80) ** 2) / 800.0), 0, 255).astype(np.uint8)
    variants = training._robustness_variants(film, np.random.default_rng(1))
    assert {"black_border", "squashed_299", "jpeg_quality_30", "rewindowed_gamma_1.5"} <= set(variants)
    assert variants["squashed_299"].shape == (299, 299) and variants["black_border"].shape[0] > film.shape[0]
    jpeg, rewindowed = variants["jpeg_quality_30"], variants["rewindowed_gamma_1.5"]
    assert jpeg.shape == film.shape and jpeg.dtype == np.uint8 and not np.array_equal(jpeg, film)
    assert 0 < np.abs(jpeg.astype(int) - film).mean() < 20  # lossy, but the same film
    assert rewindowed.min() == 0 and rewindowed.max() == 255 and not np.array_equal(rewindowed, film)
    order = np.argsort(film.ravel(), kind="stable")
    assert np.all(np.diff(rewindowed.ravel()[order].astype(int)) >= 0)  # a window keeps the order of densities


def test_cli_train_direct_arguments():
    from boneage.cli import build_parser

    args = build_parser().parse_args(["train", "direct", "--epochs", "3", "--size", "128", "--limit", "32", "--device", "cpu",
                                      "--max-minutes", "1.5", "--seed", "7", "--out", "x"])
    config = training.config_from_args(args)
    assert (config.epochs, config.input_size, config.limit, config.device, config.max_minutes, config.seed, config.out) == (
        3, 128, 32, "cpu", 1.5, 7, "x")
    assert args.handler is not None
    # The CLI's defaults are the library's defaults (the shipped command relies on them).
    defaults = training.config_from_args(build_parser().parse_args(["train", "direct"]))
    assert defaults == TrainConfig()
    parser = argparse.ArgumentParser()
    training.add_train_arguments(parser)
    assert training.config_from_args(parser.parse_args([])) == TrainConfig()


def test_resolve_device():
    assert training.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert training.resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError):
            training.resolve_device("cuda")


def _tiny_config(**kw) -> TrainConfig:
    settings = dict(epochs=2, input_size=32, cache_size=48, batch_size=8, seed=2, device="cpu", widths=SMALL_DIRECT_WIDTHS,
                    bf16=False, threads=1, checkpoint_minutes=0.0)
    settings.update(kw)
    return TrainConfig(**settings)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    images, ages, sexes = random_films(24)
    whole = train_on_arrays(images, ages, sexes, _tiny_config(), log=lambda *_: None, checkpoint=tmp_path / "a.pt")
    assert not whole.stopped_early and len(whole.history) == 2

    # --max-minutes 0 stops after the first step; the same command again continues from the checkpoint.
    messages: list[str] = []
    cut = train_on_arrays(images, ages, sexes, _tiny_config(max_minutes=0.0), log=messages.append, checkpoint=tmp_path / "b.pt")
    assert cut.stopped_early and (tmp_path / "b.pt").is_file()
    resumed = train_on_arrays(images, ages, sexes, _tiny_config(), log=messages.append, checkpoint=tmp_path / "b.pt")
    assert any("resuming" in m for m in messages)
    assert len(resumed.history) == 2
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name

    # A checkpoint of other settings is not resumed.
    other: list[str] = []
    train_on_arrays(images, ages, sexes, _tiny_config(epochs=1, learning_rate=1e-3), log=other.append, checkpoint=tmp_path / "b.pt")
    assert any("starting afresh" in m for m in other)


def test_ema_weights_are_what_training_returns():
    images, ages, sexes = random_films(16)
    with_ema = train_on_arrays(images, ages, sexes, _tiny_config(epochs=1), log=lambda *_: None)
    without = train_on_arrays(images, ages, sexes, _tiny_config(epochs=1, ema=0.0), log=lambda *_: None)
    # Same seed, same steps: the raw network is identical, so a difference is the averaging.
    differs = [not torch.equal(a, b) for a, b in zip(with_ema.model.parameters(), without.model.parameters())]
    assert any(differs)


def test_batchnorm_recalibration_forgets_the_training_statistics():
    images, ages, sexes = random_films(16)
    result = train_on_arrays(images, ages, sexes, _tiny_config(epochs=1), log=lambda *_: None)
    clean = training.recalibrate_batchnorm(result.model, images, sexes, 32, batch_size=8)
    before = [b.clone() for b in result.model.buffers()]

    # Statistics far off (as augmented batches can leave them) make no difference to the result:
    # the recalibrated statistics come from the clean images alone.
    spoiled = copy.deepcopy(result.model)
    for module in spoiled.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean += 3.0
            module.running_var *= 4.0
    again = training.recalibrate_batchnorm(spoiled, images, sexes, 32, batch_size=8)
    loc_clean, _ = predict_arrays(clean, images, sexes, result.target_mean, result.target_sd, 32)
    loc_again, _ = predict_arrays(again, images, sexes, result.target_mean, result.target_sd, 32)
    loc_spoiled, _ = predict_arrays(spoiled, images, sexes, result.target_mean, result.target_sd, 32)
    assert np.allclose(loc_clean, loc_again, atol=1e-3)
    assert not np.allclose(loc_spoiled, loc_clean, atol=1e-3)
    # The trained network itself is left as it was.
    assert all(torch.equal(a, b) for a, b in zip(before, result.model.buffers()))
    first = next(m for m in clean.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert first.momentum == 0.1 and not clean.training


def test_ensemble_averages_its_members_and_round_trips(tmp_path):
    images, ages, sexes = random_films(16)
    members = [train_on_arrays(images, ages, sexes, _tiny_config(epochs=1, seed=s), log=lambda *_: None) for s in (2, 1002)]
    result = training._assemble(members)
    assert isinstance(result.model, BoneAgeEnsemble) and len(result.members) == 2
    assert [h["member"] for h in result.history] == [1, 2]
    locs = [predict_arrays(m.model, images, sexes, m.target_mean, m.target_sd, 32)[0] for m in members]
    assert not np.allclose(locs[0], locs[1])  # different seeds, different networks
    loc, scale = predict_arrays(result.model, images, sexes, result.target_mean, result.target_sd, 32)
    np.testing.assert_allclose(loc, (locs[0] + locs[1]) / 2, atol=1e-3)
    assert (scale > 0).all()

    # BatchNorm re-estimation reaches every member, on a copy.
    before = [m.running_mean.clone() for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    clean = training.recalibrate_batchnorm(result.model, images, sexes, 32, batch_size=8)
    after_original = [m.running_mean for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    after_copy = [m.running_mean for m in clean.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after_original))
    half = len(after_copy) // 2
    assert not torch.allclose(before[0], after_copy[0]) and not torch.allclose(before[half], after_copy[half])

    config = _tiny_config(epochs=1, members=2)
    save_weights(tmp_path / direct.WEIGHTS_FILE, result, config, {"factor_sex_known": 2.0, "factor_sex_unknown": 2.5, "flip_tta": False})
    estimator = DirectEstimator.load(tmp_path, exported=False)
    assert isinstance(estimator.model, BoneAgeEnsemble)
    loc16, _ = predict_arrays(estimator.model, images, sexes, estimator.target_mean, estimator.target_sd, 32)
    assert np.abs(loc16 - loc).max() < 0.5

    from boneage.training.export import export_direct

    export_direct(tmp_path)
    from boneage.runtime import OnnxNetwork

    exported = DirectEstimator.load(tmp_path)
    assert isinstance(exported.model, OnnxNetwork)  # the ONNX copy, which needs neither torch nor MONAI
    loc_exported, _ = exported.predict_uint8(images, sexes)
    assert np.abs(loc_exported - loc16).max() < 0.05


def test_ensemble_members_need_one_standardisation():
    images, ages, sexes = random_films(16)
    a = train_on_arrays(images, ages, sexes, _tiny_config(epochs=1), log=lambda *_: None)
    b = train_on_arrays(images[:12], ages[:12] + 10, sexes[:12], _tiny_config(epochs=1), log=lambda *_: None)
    with pytest.raises(ValueError, match="standardisation"):
        training._assemble([a, b])


def test_members_option_and_checkpoint_names(tmp_path):
    from boneage.cli import build_parser

    config = training.config_from_args(build_parser().parse_args(["train", "direct", "--members", "2"]))
    assert config.members == 2 and "--members 2" in " ".join(training._config_to_argv(config))
    # Member 0 keeps the single network's checkpoint (a finished single run becomes the first member).
    assert training.member_checkpoint(tmp_path, 0).name == training.CHECKPOINT_FILE
    assert training.member_checkpoint(tmp_path, 1) != training.member_checkpoint(tmp_path, 0)
    # The member count is not a training setting of any one member.
    assert training._checkpoint_settings(_tiny_config(members=1)) == training._checkpoint_settings(_tiny_config(members=3))
    with pytest.raises(ValueError, match="members"):
        training.train(TrainConfig(members=0, out=str(tmp_path)))


def test_recorded_command_reproduces_the_config():
    """The card's command (``_config_to_argv``) parses back into the same settings, widths and batch included."""
    from boneage.cli import build_parser

    config = TrainConfig(epochs=5, batch_size=16, learning_rate=1e-3, widths=(48, 96, 192, 384), members=2, seed=3, device="cpu")
    args = build_parser().parse_args(["train", "direct", *training._config_to_argv(config)])
    assert training.config_from_args(args) == config


def test_decode_images_in_worker_processes_matches_this_process(tmp_path):
    # Worker processes are spawned, not forked: forking a process that already runs torch and tqdm
    # threads once left a pool worker deadlocked and hung CI.
    from PIL import Image

    from boneage.training.direct import decode_images

    rng = np.random.default_rng(3)
    paths = []
    for i in range(3):
        path = tmp_path / f"film{i}.png"
        Image.fromarray((rng.random((90, 70)) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    torch.ones(64, 64) @ torch.ones(64, 64)  # start torch's thread pool first, as training does
    serial = decode_images(paths, size=32, workers=1)
    pooled = decode_images(paths, size=32, workers=2)
    assert serial.shape == (3, 32, 32) and serial.dtype == np.uint8
    np.testing.assert_array_equal(serial, pooled)

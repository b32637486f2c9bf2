"""Training of the per-bone maturity network: augmentation, resumable training, calibration, crop cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from boneage import anatomy, segment
from boneage.perbone import CROP_SHAPE, TEST_TIME_VIEWS
from boneage.training import perbone as tp

N_REGIONS = len(anatomy.MATURITY_REGIONS)


def _toy_crops(n_films: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 200, n_films)
    images = np.zeros((n_films, N_REGIONS, *CROP_SHAPE), np.uint8)
    for i, a in enumerate(ages):
        # Brightness grows with age: a learnable toy signal.
        images[i] = np.clip(rng.normal(a, 10, (N_REGIONS, *CROP_SHAPE)), 0, 255)
    present = rng.random((n_films, N_REGIONS)) > 0.1
    codes = np.where(rng.random(n_films) < 0.5, 1.0, -1.0).astype(np.float32)
    return images, present, ages, codes


def test_augment_crops_keeps_shape_range_and_is_seeded():
    x = torch.rand(6, 1, *CROP_SHAPE)
    a = tp.augment_crops(x.clone(), torch.Generator().manual_seed(3))
    b = tp.augment_crops(x.clone(), torch.Generator().manual_seed(3))
    c = tp.augment_crops(x.clone(), torch.Generator().manual_seed(4))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


#: The toy network's widths. None is 4: with one thread, torch 2.13's oneDNN crashes (segfault) in the backward pass of
#: a 4-channel 1x1 stride-2 convolution in channels_last on some AVX2 CPUs (seen on an AMD EPYC); the shipped widths
#: never have 4 channels, and 8 trains there.
TOY_WIDTHS = (8, 8, 8, 8)


def _config(tmp_path, **kw):
    base = dict(epochs=2, batch=16, widths=TOY_WIDTHS, threads=1, checkpoint_minutes=100.0, out=str(tmp_path))
    base.update(kw)
    return tp.TrainConfig(**base)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    images, present, ages, codes = _toy_crops()
    whole = tp.train_network(images, present, ages, codes, _config(tmp_path / "a"), tmp_path / "a", log=lambda *_: None)
    (tmp_path / "b").mkdir()
    logs: list[str] = []
    cut = tp.train_network(images, present, ages, codes, _config(tmp_path / "b", max_minutes=1e-9), tmp_path / "b",
                           log=logs.append)
    assert cut is None and (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed = tp.train_network(images, present, ages, codes, _config(tmp_path / "b"), tmp_path / "b", log=logs.append)
    assert any("resuming" in line for line in logs)
    for (k, v1), v2 in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(v1.float(), v2.float(), atol=1e-5), k


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    images, present, ages, codes = _toy_crops()
    (tmp_path / "a").mkdir()
    tp.train_network(images, present, ages, codes, _config(tmp_path, max_minutes=1e-9), tmp_path, log=lambda *_: None)
    logs: list[str] = []
    tp.train_network(images, present, ages, codes, _config(tmp_path, epochs=1, lr=1e-3), tmp_path, log=logs.append)
    assert any("other settings" in line for line in logs)


def test_batchnorm_re_estimation_uses_clean_crops_only(tmp_path):
    images, present, ages, codes = _toy_crops()
    network = tp.train_network(images, present, ages, codes, _config(tmp_path, epochs=1), tmp_path, log=lambda *_: None)
    norms = lambda net: [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # noqa: E731
    before = [m.running_mean.clone() for m in norms(network)]
    a = tp.recalibrate_crop_batchnorm(network, images, present, codes)
    # The trained network is untouched; the copy's statistics are new and do not depend on the old ones.
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms(network)))
    assert any(not torch.allclose(b, m.running_mean) for b, m in zip(before, norms(a)))
    for m in norms(network):
        m.running_mean.fill_(5.0)
    b = tp.recalibrate_crop_batchnorm(network, images, present, codes)
    for ma, mb in zip(norms(a), norms(b)):
        assert torch.allclose(ma.running_mean, mb.running_mean, atol=1e-5)
        assert torch.allclose(ma.running_var, mb.running_var, atol=1e-4)
    assert not a.training and all(m.momentum == 0.1 for m in norms(a))
    # Only weights were copied: the parameters are the trained ones.
    for pa, pn in zip(a.parameters(), network.parameters()):
        assert torch.equal(pa, pn)


def test_checkpoint_from_before_the_sex_task_resumes_as_an_age_run(tmp_path):
    images, present, ages, codes = _toy_crops()
    tp.train_network(images, present, ages, codes, _config(tmp_path), tmp_path, log=lambda *_: None)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del state["settings"]["task"]
    torch.save(state, tmp_path / "checkpoint.pt")
    logs: list[str] = []
    tp.train_network(images, present, ages, codes, _config(tmp_path), tmp_path, log=logs.append)
    assert any("resuming" in line for line in logs)
    logs.clear()
    tp.train_network(images, present, ages, codes, _config(tmp_path, task="sex"), tmp_path, log=logs.append)
    assert any("other settings" in line for line in logs)


def test_training_reads_the_crops_in_the_views_inference_reads():
    from boneage.perbone import BoneCrops, PerBoneEstimator

    class LeftHeavyNet(torch.nn.Module):  # age from the whole crop, scale from its left half: views matter
        def forward(self, crops, regions, sex_code):
            left = crops[..., : crops.shape[-1] // 2].mean(dim=(1, 2, 3))
            return crops.mean(dim=(1, 2, 3)) + 0.01 * regions + 0.1 * sex_code, torch.log(0.1 + left)

    rng = np.random.default_rng(4)
    n_regions = len(anatomy.MATURITY_REGIONS)
    images = rng.integers(0, 256, (3, n_regions, *CROP_SHAPE)).astype(np.uint8)
    images[..., : CROP_SHAPE[1] // 3] //= 5
    present = rng.random((3, n_regions)) < 0.8
    codes = np.array([1.0, -1.0, 1.0], np.float32)
    ages, scales = tp.predict_crop_arrays(LeftHeavyNet(), images, present, codes, batch=7, views=TEST_TIME_VIEWS)
    plain, _ = tp.predict_crop_arrays(LeftHeavyNet(), images, present, codes)
    calibration = {"sex_known": {}, "sex_unknown": {}, "test_time_views": [list(v) for v in TEST_TIME_VIEWS]}
    est = PerBoneEstimator(LeftHeavyNet(), json.loads(json.dumps(calibration)))
    for film, sex in enumerate(("M", "F", "M")):
        a, s_ = est.bone_ages(BoneCrops(images[film], present[film], np.ones(n_regions, np.float32)), sex)
        np.testing.assert_allclose(ages[film], a, rtol=1e-5)
        np.testing.assert_allclose(scales[film], s_, rtol=1e-5)
    assert np.isnan(ages[~present]).all() and not np.allclose(plain[present], ages[present])


def test_calibration_and_evaluation_of_consensus():
    rng = np.random.default_rng(1)
    n = 300
    y = rng.uniform(10, 220, n)
    film_error = rng.normal(0, 6, n)
    ages = y[:, None] + film_error[:, None] + rng.normal(0, 8, (n, N_REGIONS))
    ages[:, 3] += 80  # one bone always far off: the consensus must drop it
    scales = np.full((n, N_REGIONS), 8.0)
    cal = tp.calibrate(ages, scales, y)
    metrics = tp.evaluate(ages, scales, y, np.where(rng.random(n) < 0.5, "F", "M"), cal)
    g = metrics["groups"]["all"]
    assert g["mae"] < 10 and 0.85 <= g["coverage"] <= 0.95
    assert metrics["regions"][anatomy.MATURITY_REGIONS[3]]["kept"] < 0.05
    assert metrics["films_with_estimate"] == 1.0
    assert cal["age_map"] is None and cal["age_map_choice"]["chosen"] == "none"  # an unbiased consensus keeps no map


def test_a_consensus_pulled_toward_the_middle_gets_an_age_map():
    rng = np.random.default_rng(2)
    n = 300
    y = rng.uniform(10, 220, n)
    pulled = 130 + 0.8 * (y - 130) + rng.normal(0, 5, n)
    ages = pulled[:, None] + rng.normal(0, 4, (n, N_REGIONS))
    scales = np.full((n, N_REGIONS), 8.0)
    cal = tp.calibrate(ages, scales, y)
    assert cal["age_map"] is not None
    sexes = np.where(rng.random(n) < 0.5, "F", "M")
    g = tp.evaluate(ages, scales, y, sexes, cal)["groups"]
    plain = tp.evaluate(ages, scales, y, sexes, {**cal, "age_map": None})["groups"]
    for band in ("bone age < 6 y", "> 12 y"):
        assert abs(g[band]["bias"]) < 2 < abs(plain[band]["bias"])
    assert 0.85 <= g["all"]["coverage"] <= 0.95


def test_crop_cache_is_built_once_and_reused(tmp_path, monkeypatch):
    import pandas as pd
    from PIL import Image

    from boneage.synth import generate_hand

    monkeypatch.setenv("BONEAGE_CACHE", str(tmp_path / "cache"))
    rows = []
    for i, age in enumerate((60.0, 150.0)):
        hand = generate_hand(7, i, size=384, bone_age_months=age, sex="F")
        path = tmp_path / f"{i}.png"
        Image.fromarray((np.clip(hand.image, 0, 1) * 255).astype(np.uint8)).save(path)
        rows.append({"id": i, "path": path, "source": "rsna-dev"})
    table = pd.DataFrame(rows)
    first = tp.build_crop_cache(table, workers=1, log=lambda *_: None)
    assert first["images"].shape == (2, N_REGIONS, *CROP_SHAPE)
    assert first["present"][:, : len(anatomy.RUS_BONES)].mean() > 0.8

    def refuse(job):
        raise AssertionError("a cached film was cropped again")

    monkeypatch.setattr(tp, "_crop_one", refuse)
    again = tp.build_crop_cache(table, workers=1, log=lambda *_: None)
    assert np.array_equal(first["images"], again["images"])


def test_rsna_299_films_are_widened_back(tmp_path):
    from PIL import Image

    path = tmp_path / "f.png"
    Image.fromarray(np.zeros((299, 299), np.uint8)).save(path)
    assert tp.read_training_film(str(path), "rsna-299").shape == (299, 236)
    assert tp.read_training_film(str(path), "rsna-dev").shape == (299, 299)


def test_train_arguments_match_config():
    import argparse

    parser = argparse.ArgumentParser()
    tp.add_train_arguments(parser)
    args = parser.parse_args([])
    d = tp.TrainConfig()
    assert (args.epochs, args.batch, args.lr, args.crop_fraction) == (d.epochs, d.batch, d.lr, d.crop_fraction)
    assert args.crop_intensity == d.crop_intensity == "window"
    assert parser.parse_args(["--crop-intensity", "equalised"]).crop_intensity == "equalised"


def test_crop_intensity_is_applied_to_every_split_in_place():
    from boneage.perbone import equalise_crops

    rng = np.random.default_rng(0)
    data = {k: {"images": rng.integers(100, 160, (n, 2, *CROP_SHAPE)).astype(np.uint8)} for k, n in (("fit", 5), ("val", 3))}
    before = {k: v["images"].copy() for k, v in data.items()}
    tp.apply_crop_intensity(data, "window")
    assert all(np.array_equal(data[k]["images"], before[k]) for k in data)
    tp.apply_crop_intensity(data, "equalised", chunk=2)  # chunks smaller than a split
    assert all(np.array_equal(data[k]["images"], equalise_crops(before[k])) for k in data)
    with pytest.raises(ValueError, match="unknown crop intensity"):
        tp.apply_crop_intensity(data, "clahe")


@pytest.mark.slow
def test_train_command_writes_weights_card_and_metrics_that_load(tmp_path, monkeypatch, rsna_dev):
    """``boneage train perbone`` end to end on a few real films (crops, network, calibration, card)."""
    from boneage.perbone import PerBoneEstimator

    monkeypatch.setenv("BONEAGE_CACHE", str(tmp_path / "cache"))
    config = tp.TrainConfig(epochs=1, batch=32, widths=TOY_WIDTHS, threads=1, workers=1, limit=32, out=str(tmp_path / "m"))
    metrics = tp.train(config, log=lambda *_: None)
    assert metrics["validation"]["sex_known"]["groups"]["all"]["n"] == 8
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert "boneage train perbone --epochs 1" in card and "## Validation" in card
    choice = metrics["training"]["bn_recalibration"]
    assert choice["films"] == 32 and isinstance(choice["kept"], bool)  # every film fitted (fewer than 3000)
    assert "BatchNorm statistics re-estimated" in card
    est = PerBoneEstimator.load(tmp_path / "m")
    assert set(est.calibration) >= {"sex_known", "sex_unknown"}
    assert est.calibration["crop_intensity"] == "window"  # recorded, so inference feeds what training fed
    assert est.views == TEST_TIME_VIEWS and f"each crop is read {len(TEST_TIME_VIEWS)} times" in card
    assert metrics["training"]["segmenter_version"] == segment.VERSION and f"(`{segment.VERSION}`)" in card


@pytest.mark.slow
def test_train_sex_command_writes_a_model_that_loads(tmp_path, monkeypatch, rsna_dev):
    from boneage.sex import SexEstimator
    from boneage.training.sex import train_sex

    monkeypatch.setenv("BONEAGE_CACHE", str(tmp_path / "cache"))
    config = tp.TrainConfig(epochs=1, batch=32, widths=TOY_WIDTHS, threads=1, workers=1, limit=32, out=str(tmp_path / "s"))
    metrics = train_sex(config, log=lambda *_: None)
    assert metrics["validation"]["all"]["n"] == 8 and 0.0 <= metrics["validation"]["all"]["accuracy"] <= 1.0
    assert "boneage train sex --epochs 1" in (tmp_path / "s" / "MODEL_CARD.md").read_text()
    assert SexEstimator.load(tmp_path / "s").calibration["temperature"] > 0

    # --calibrate-only refits the calibration of the same weights and keeps the training record.
    from boneage.sex import CALIBRATION_FILE, METRICS_FILE, WEIGHTS_FILE
    from boneage.training.sex import recalibrate_sex

    weights = (tmp_path / "s" / WEIGHTS_FILE).read_bytes()
    # The crops are fed as the folder's calibration says (here: equalised), and that is kept.
    (tmp_path / "s" / CALIBRATION_FILE).write_text('{"temperature": 99.0, "crop_intensity": "equalised"}')
    with pytest.raises(ValueError, match="needs --out"):
        recalibrate_sex(tp.TrainConfig(threads=1, workers=1, limit=32), log=lambda *_: None)
    recalibrated = recalibrate_sex(tp.TrainConfig(threads=1, workers=1, limit=32, out=str(tmp_path / "s")), log=lambda *_: None)
    assert (tmp_path / "s" / WEIGHTS_FILE).read_bytes() == weights
    expected = json.loads(json.dumps(metrics["training"]))
    expected["config"]["crop_intensity"] = "equalised"
    assert recalibrated["training"] == expected and recalibrated["recalibrated_from"] == metrics["model_version"]
    assert json.loads((tmp_path / "s" / METRICS_FILE).read_text())["training"] == expected
    calibration = SexEstimator.load(tmp_path / "s").calibration
    assert calibration["temperature"] != 99.0 and "logit_offset" in calibration
    assert calibration["crop_intensity"] == "equalised"


def test_an_equalised_network_is_trained_on_equalised_batches(tmp_path, monkeypatch):
    # The exposure augmentation would unflatten equalised crops; training must feed what inference
    # feeds (the crop equalised), so each training batch is re-equalised after augmentation.
    from boneage.networks import PerBoneNet

    images, present, ages, codes = _toy_crops()
    tp.apply_crop_intensity({"fit": {"images": images}}, "equalised")
    seen = []
    forward = PerBoneNet.forward

    def spy(self, x, *args, **kwargs):
        if self.training:
            seen.append(x.detach().float().clone())
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(PerBoneNet, "forward", spy)
    for intensity in ("window", "equalised"):
        seen.clear()
        config = _config(tmp_path / intensity)
        config.crop_intensity = intensity
        tp.train_network(images, present, ages, codes, config, tmp_path / intensity, log=lambda *_: None)
        assert seen
        per_crop_mean = torch.cat(seen).mean(dim=(1, 2, 3))
        if intensity == "equalised":
            assert (per_crop_mean - 0.5).abs().max() < 0.02  # flat histograms, as at inference
        else:
            assert (per_crop_mean - 0.5).abs().max() > 0.05  # augmented exposure moves the mean

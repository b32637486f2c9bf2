"""Sex read from the film (boneage.sex) and its use by the estimator (test doubles: no shipped numbers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boneage import anatomy
from boneage.networks import PerBoneNet
from boneage.perbone import CROP_SHAPE, BoneCrops
from boneage.sex import CONFIDENT_PROBABILITY, MIN_REGIONS, SexEstimator, SexPrediction, calibrated_male_probability
from boneage.synth import generate_hand
from boneage.training.sex import fit_platt, sex_metrics

N = len(anatomy.MATURITY_REGIONS)


class ConstantLogit(torch.nn.Module):
    """Sex network double: the same logit for every crop."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit

    def forward(self, crops, regions, sex_code):
        out = torch.full((crops.shape[0],), self.logit)
        return out, torch.zeros_like(out)


def _crops(n_present: int = N) -> BoneCrops:
    present = np.zeros(N, bool)
    present[:n_present] = True
    return BoneCrops(np.full((N, *CROP_SHAPE), 100, np.uint8), present, np.ones(N, np.float32))


def test_probability_is_the_tempered_mean_logit():
    est = SexEstimator(ConstantLogit(2.0), {"temperature": 2.0})
    assert est.male_probability(_crops()) == pytest.approx(1 / (1 + np.exp(-1.0)))
    p = est.predict(_crops())
    assert p.sex == "M" and p.probability == pytest.approx(0.731, abs=1e-3) and not p.confident
    girl = SexEstimator(ConstantLogit(-3.0), {}).predict(_crops())
    assert girl.sex == "F" and girl.probability > CONFIDENT_PROBABILITY and girl.confident


def test_probability_applies_the_logit_offset_before_the_temperature():
    calibration = {"temperature": 2.0, "logit_offset": 1.0}
    est = SexEstimator(ConstantLogit(2.0), calibration)
    assert est.male_probability(_crops()) == pytest.approx(1 / (1 + np.exp(-0.5)))
    # The training code calibrates with the same function, vectorised over films.
    assert calibrated_male_probability(np.array([2.0, 1.0]), 2.0, 1.0) == pytest.approx([1 / (1 + np.exp(-0.5)), 0.5])
    # A logit at the offset is a coin toss: neither sex is claimed with confidence.
    at_offset = SexEstimator(ConstantLogit(1.0), calibration).predict(_crops())
    assert at_offset.probability == pytest.approx(0.5) and not at_offset.confident


class RecordingLogit(ConstantLogit):
    """:class:`ConstantLogit` that keeps the crops it was given."""

    def forward(self, crops, regions, sex_code):
        self.seen = crops.detach().clone()
        return super().forward(crops, regions, sex_code)


def test_the_sex_network_is_fed_the_grey_levels_its_calibration_names():
    rng = np.random.default_rng(2)
    crops = BoneCrops(np.clip(rng.normal(200, 20, (N, *CROP_SHAPE)), 0, 255).astype(np.uint8), np.ones(N, bool),
                      np.ones(N, np.float32))
    means = {}
    for intensity in ("window", "equalised"):
        net = RecordingLogit(1.0)
        SexEstimator(net, {"crop_intensity": intensity}).male_probability(crops)
        means[intensity] = float(net.seen.mean())
    assert means["window"] > 0.7 and abs(means["equalised"] - 0.5) < 0.02


def test_a_full_runs_uncalibratable_hold_out_is_refused_not_shipped_raw(tmp_path, monkeypatch):
    import pandas as pd

    import boneage.training.sex as ts

    tables = {k: pd.DataFrame({"sex": ["M", "M", "F"], "bone_age_months": [100.0, 120.0, 130.0]}) for k in ("holdout", "val")}
    monkeypatch.setattr(ts, "film_logits", lambda network, images, present: np.array([1.0, 2.0, -1.0]))
    data = {k: {"images": None, "present": None} for k in tables}
    with pytest.raises(ValueError, match="two films of each sex"):
        ts.calibrate(object(), tables, data, {}, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
    # A smoke run keeps the raw logits instead, and says so.
    from dataclasses import asdict

    training = {"config": asdict(ts.TrainConfig(task="sex")), "n_fit_films": 8, "train_minutes": 0.1}
    metrics = ts.calibrate(object(), tables, data, training, tmp_path, log=lambda *_: None, smoke=True)
    assert (metrics["temperature"], metrics["logit_offset"]) == (1.0, 0.0) and "raw logits" in metrics["calibration_note"]
    # Its card is written although the hold-out has no film under 6 years.
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "raw logits used" in card and "not scored (no such hold-out films)" in card


def test_too_few_crops_give_no_prediction():
    est = SexEstimator(ConstantLogit(5.0), {})
    assert est.predict(_crops(MIN_REGIONS - 1)) is None
    assert est.predict(_crops(MIN_REGIONS)) is not None


def test_saved_weights_load_back(tmp_path):
    from boneage.sex import CALIBRATION_FILE, WEIGHTS_FILE

    torch.manual_seed(0)
    net = PerBoneNet((4, 8, 8, 8))
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()},
                "widths": [4, 8, 8, 8]}, tmp_path / WEIGHTS_FILE)
    (tmp_path / CALIBRATION_FILE).write_text('{"temperature": 1.5}')
    est = SexEstimator.load(tmp_path)
    assert est.calibration["temperature"] == 1.5
    p = est.male_probability(_crops())
    assert 0.0 < p < 1.0
    with pytest.raises(FileNotFoundError, match="sex-from-film weights not found"):
        SexEstimator.load(tmp_path / "absent")


def test_platt_scaling_removes_a_bias_towards_one_sex_and_softens_overconfidence():
    rng = np.random.default_rng(0)
    male = (rng.random(400) < 0.5).astype(float)
    # Over-confident logits, shifted 3 units towards "boy": the fit must soften (T > 1) and shift back.
    logits = np.where(male > 0, 1.0, -1.0) * 6.0 + rng.normal(0, 6.0, 400) + 3.0
    temperature, offset = fit_platt(logits, male)
    assert temperature > 1.5 and 1.5 < offset < 4.5
    p = calibrated_male_probability(logits, temperature, offset)
    assert np.mean((p >= 0.5) == (male > 0)) > np.mean((logits >= 0) == (male > 0))
    assert abs(np.mean(p) - male.mean()) < 0.03  # calibrated: as many boys expected as there are
    m = sex_metrics(p, male, rng.uniform(0, 220, 400))
    assert 0.5 < m["all"]["accuracy"] < 1.0 and 0 <= m["all"]["confident_share"] <= 1
    assert m["all"]["confident_accuracy"] >= m["all"]["accuracy"]
    assert m["all"]["male_share"] == pytest.approx(male.mean(), abs=1e-3)
    assert abs(m["all"]["predicted_male_share"] - male.mean()) < 0.1 and 0.1 < m["all"]["log_loss"] < np.log(2)
    # Films without a logit are ignored, not fitted as zeros.
    assert fit_platt(np.r_[logits, np.nan], np.r_[male, 1.0]) == pytest.approx((temperature, offset))


def test_platt_scaling_refuses_what_it_cannot_calibrate():
    with pytest.raises(ValueError, match="two films of each sex"):
        fit_platt(np.array([1.0, 2.0, -1.0]), np.array([1.0, 1.0, 0.0]))
    rng = np.random.default_rng(1)
    male = (rng.random(200) < 0.5).astype(float)
    with pytest.raises(ValueError, match="run against the sex"):
        fit_platt(np.where(male > 0, -2.0, 2.0) + rng.normal(0, 1, 200), male)


# ------------------------------------------------------------------------------------------------
# The estimator uses a confident prediction, reports an uncertain one, never overrides a given sex
# ------------------------------------------------------------------------------------------------


class FixedSex:
    """Sex model double: a fixed prediction, counting its calls."""

    def __init__(self, sex: str, probability: float) -> None:
        self.prediction = SexPrediction(sex, probability, probability >= CONFIDENT_PROBABILITY, "sex-test")
        self.calls = 0

    def predict(self, crops):
        self.calls += 1
        return self.prediction


def _estimate(bundle, sex_model, sex=None):
    from test_estimate import FakeDirect, _three_methods

    est = _three_methods(bundle, direct=FakeDirect(120.0))
    est.sex_model = sex_model
    hand = est.oracle.add(generate_hand(99, 4, size=384, age_range=(100, 140)))
    return est.estimate(hand.image, sex=sex)


def _recording_direct(age: float):
    """An end-to-end double that records the (sex, male probability) it was asked with."""
    from test_estimate import FakeDirect

    class RecordingDirect(FakeDirect):
        def predict(self, pixels, sex=None, male_probability=None):
            self.seen.append((sex, male_probability))
            return super().predict(pixels, sex)

    direct = RecordingDirect(age)
    direct.seen = []
    return direct


def test_confident_prediction_is_used_and_said(bundle):
    model = FixedSex("F", 0.93)
    result = _estimate(bundle, model)
    assert result.status == "ok" and model.calls == 1
    assert result.sex == "F" and result.sex_source == "predicted" and result.sex_probability == pytest.approx(0.93)
    assert any("read from the film as female (93% sure)" in q for q in result.qc)
    assert result.perbone.note is None or "sex unknown" not in result.perbone.note
    row = result.to_row()
    assert row["sex_source"] == "predicted" and row["predicted_sex"] == "F" and row["sex_probability"] == pytest.approx(0.93)


def test_uncertain_prediction_is_reported_and_both_sexes_are_weighed_by_it(bundle):
    # Too uncertain to use alone: the sex stays unknown, and the per-bone and end-to-end methods read
    # the film as a boy and as a girl weighted by the male probability (here 1 - 0.7 = 0.3).
    from test_estimate import _three_methods

    direct = _recording_direct(120.0)
    est = _three_methods(bundle, direct=direct)
    est.sex_model = FixedSex("F", 0.7)
    hand = est.oracle.add(generate_hand(99, 4, size=384, age_range=(100, 140)))
    result = est.estimate(hand.image)
    assert result.status == "ok"
    assert result.sex is None and result.sex_source == "unknown"
    assert result.predicted_sex == "F" and result.sex_probability == pytest.approx(0.7)
    assert any("too uncertain to use alone: per-bone and end-to-end method(s) read it as both sexes" in q
               for q in result.qc)
    assert direct.seen == [(None, pytest.approx(0.3))]
    assert "read as a boy and as a girl, weighted by the film's male probability (30%)" in result.perbone.note
    assert "validation MAE" not in result.perbone.note  # the sex-agnostic mode's figures are not quoted


def test_a_given_sex_is_never_predicted_over(bundle):
    model = FixedSex("F", 0.99)
    result = _estimate(bundle, model, sex="M")
    assert model.calls == 0 and result.sex == "M" and result.sex_source == "user" and result.sex_probability is None


def test_sex_is_read_from_a_young_film_too_and_weighed_when_uncertain(bundle):
    # Under 6 years the film shows little of the sex, but both sexes' readings weighed by the
    # probability still beat the sex-agnostic reading (calibration hold-out): the sex is read there too.
    from test_estimate import _three_methods
    from test_perbone import fixed_perbone

    direct = _recording_direct(40.0)
    est = _three_methods(bundle, direct=direct, perbone=fixed_perbone(default=40.0))
    model = FixedSex("M", 0.6)
    est.sex_model = model
    hand = est.oracle.add(generate_hand(99, 5, size=384, age_range=(30, 50)))
    result = est.estimate(hand.image)
    assert model.calls == 1 and result.sex is None and result.predicted_sex == "M"
    assert result.sex_probability == pytest.approx(0.6)
    assert direct.seen == [(None, pytest.approx(0.6))]
    assert not any("this young" in q for q in result.qc)

"""BoneAgeEstimator end to end on synthetic hands, with test doubles for the networks.

The segmenter double returns the hand's true label map (an oracle), so these tests check the
plumbing -- QC, measurement, reference lookup, regression, SDS, agreement, the result type --
not the networks (their own tests and model cards cover those).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from boneage.estimate import BoneAgeEstimator, BoneAgeResult
from boneage.io import Radiograph
from boneage.multistep import MultiStepModel
from boneage.synth import generate_hand
from boneage.training.multistep import LabelledMeasurements, evaluate, measure_label_maps
from conftest import TESTS_DATA, needs_segmenter_weights

SIZE = 256


@dataclass
class FakeDirect:
    """Stands in for the CNN: returns a fixed age (or one from a callable)."""

    age: float = 120.0

    def predict(self, pixels, sex=None):
        from boneage.direct import DirectPrediction

        return DirectPrediction(self.age, self.age - 15, self.age + 15, sex, None if sex else "sex unknown", "fake-direct")


class Oracle:
    """Segmenter double: knows the true label map of each synthetic image it was given."""

    def __init__(self):
        self.truth = {}

    def add(self, hand):
        self.truth[hand.image.tobytes()[:4096]] = hand.label_map
        return hand

    def __call__(self, pixels):
        key = np.ascontiguousarray(pixels, dtype=np.float32).tobytes()[:4096]
        return self.truth.get(key, np.zeros(pixels.shape, np.uint8))


@pytest.fixture()
def estimator(bundle):
    oracle = Oracle()
    est = BoneAgeEstimator(oracle, bundle, FakeDirect(), versions={"multistep": "t", "direct": "t"})
    est.oracle = oracle
    return est


def test_estimate_on_a_synthetic_hand(estimator):
    hand = estimator.oracle.add(generate_hand(99, 3, size=512, age_range=(100, 140)))  # spacing < 1 mm
    rad = Radiograph.from_array(hand.image, spacing_mm=hand.spacing_mm)
    result = estimator.estimate(rad, sex=hand.sex, chronological_age_months=hand.chronological_age_months)
    assert result.status == "ok", result.reason
    assert result.multistep.available and result.direct.available
    ms = result.multistep
    assert ms.lower_90 <= ms.age_months <= ms.upper_90
    assert abs(ms.age_months - hand.bone_age_months) < 40
    assert result.difference_months == pytest.approx(120.0 - ms.age_months)
    assert result.agreement in ("agree", "inconclusive", "disagree")  # computed (not "n/a"); tiny test models
    assert result.multistep.sds is not None and result.direct.sds is not None
    assert len(result.bones) == 29 and result.carpal_count >= 1
    row = next(b for b in result.bones if b["bone"] == "metacarpal_3")
    assert row["present"] and row["length_px"] > 0 and row["length_mm"] > 0  # synthetic: calibrated
    json.dumps(result.to_dict())  # JSON-ready


def test_multistep_beats_the_mean_on_held_out_synthetic_hands(bundle):
    hands = [generate_hand(77, i, size=SIZE) for i in range(60)]
    feats, _ = measure_label_maps(((h.label_map, h.spacing_mm) for h in hands), progress=False)
    ages = np.array([h.bone_age_months for h in hands])
    data = LabelledMeasurements(feats, ages, np.array([h.sex for h in hands]), [str(i) for i in range(60)])
    metrics = evaluate(bundle, data)
    baseline = np.mean(np.abs(ages - ages.mean()))
    assert metrics["final"]["all"]["mae_months"] < 0.5 * baseline


def test_non_hand_is_rejected_by_segmentation_qc(estimator):
    rng = np.random.default_rng(0)
    noise = rng.random((SIZE, SIZE)).astype(np.float32)  # oracle knows nothing: empty label map
    result = estimator.estimate(noise)
    assert result.status == "rejected" and "not recognised as a hand" in result.reason
    assert not result.multistep.available and not result.direct.available


@pytest.fixture(scope="module")
def shipped_estimator():
    return BoneAgeEstimator.load()


# Validation films that an earlier hand check (digits laid out in order) rejected as "not a hand",
# among them three dim films with a large bright marker (2390, 2449, 2733).
REAL_HANDS_ONCE_REJECTED = (1491, 1855, 2390, 2449, 2518, 2733)


def test_real_hand_films_are_not_rejected(shipped_estimator, rsna_dev):
    for image_id in REAL_HANDS_ONCE_REJECTED:
        result = shipped_estimator.estimate(rsna_dev / "images" / f"{image_id}.jpg")
        assert result.status == "ok", f"{image_id}: {result.reason}"
        assert result.direct.available


def test_tibia_pixels_without_a_header_are_not_a_hand(shipped_estimator):
    from boneage.io import load_radiograph

    # The pixels alone (as a PNG would give them): the BodyPartExamined check cannot help here.
    tibia = load_radiograph(TESTS_DATA / "RG3_J2KR.dcm").pixels
    result = shipped_estimator.estimate(tibia)
    assert result.status == "rejected" and "not recognised as a hand" in result.reason


@pytest.mark.parametrize(
    "image, reason",
    [(np.zeros((300, 300), np.float32), "blank"), (np.random.default_rng(1).random((40, 40)), "too small")],
)
def test_blank_and_tiny_images_are_rejected(estimator, image, reason):
    result = estimator.estimate(image)
    assert result.status == "rejected" and reason in result.reason


def test_adult_chronological_age_is_rejected(estimator):
    hand = estimator.oracle.add(generate_hand(99, 5, size=SIZE))
    result = estimator.estimate(hand.image, chronological_age_months=300)
    assert result.status == "rejected" and "outside what the models cover" in result.reason


def test_unreadable_input_is_an_error_not_a_crash(estimator, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    result = estimator.estimate(str(bad))
    assert result.status == "error" and "not a recognised image" in result.reason and result.path == str(bad)


def test_unknown_sex_is_said_and_sds_needs_it(estimator):
    hand = estimator.oracle.add(generate_hand(99, 7, size=SIZE, age_range=(60, 150)))
    result = estimator.estimate(hand.image, chronological_age_months=100)
    assert result.status == "ok" and result.sex is None and result.sex_source == "unknown"
    assert "sex unknown" in (result.multistep.note or "") and "sex unknown" in (result.direct.note or "")
    assert result.multistep.sds is None and "sex" in result.sds_note


def test_disagreement_is_flagged(bundle):
    oracle = Oracle()
    hand = oracle.add(generate_hand(99, 9, size=SIZE, age_range=(20, 40)))
    est = BoneAgeEstimator(oracle, bundle, FakeDirect(age=220.0))
    result = est.estimate(hand.image, sex=hand.sex)
    assert result.agreement == "disagree" and any("disagree" in q for q in result.qc)


@dataclass
class WideDirect(FakeDirect):
    """A CNN shown a film it cannot read: an interval over the whole age range."""

    def predict(self, pixels, sex=None):
        from boneage.direct import DirectPrediction

        return DirectPrediction(self.age, 0.0, 203.0, sex, None, "fake-direct")


def test_a_wide_interval_does_not_pass_for_agreement(bundle):
    oracle = Oracle()
    hand = oracle.add(generate_hand(99, 9, size=SIZE, age_range=(100, 140)))
    first = BoneAgeEstimator(oracle, bundle, FakeDirect()).estimate(hand.image, sex=hand.sex)
    assert first.multistep.available
    # The same age as the multi-step method, but with an interval that allows anything.
    result = BoneAgeEstimator(oracle, bundle, WideDirect(age=first.multistep.age_months + 2)).estimate(hand.image, sex=hand.sex)
    assert result.agreement == "inconclusive"
    assert any("do not confirm each other" in q for q in result.qc)
    from boneage.report import agreement_text

    assert agreement_text(result)[0] == "wide"


def test_missing_models_are_reported_not_fatal():
    est = BoneAgeEstimator(None, None, FakeDirect(), load_errors={"segmenter": "weights missing"})
    result = est.estimate(generate_hand(1, 1, size=SIZE).image, sex="F")
    assert result.status == "ok" and result.direct.available and not result.multistep.available
    assert "multi-step method unavailable" in result.multistep.note
    assert any("segmenter model unavailable" in q for q in result.qc)
    none = BoneAgeEstimator(None, None, None, load_errors={"direct": "weights missing"})
    assert none.estimate(generate_hand(1, 1, size=SIZE).image).status == "error"


def test_bundle_round_trip(bundle, tmp_path):
    loaded = MultiStepModel.load(bundle.save(tmp_path / "ms"))
    hand = generate_hand(5, 5, size=SIZE)
    from boneage.measure import measure

    m = measure(hand.label_map, hand.spacing_mm)
    assert loaded.estimate(m, hand.sex).age_months == pytest.approx(bundle.estimate(m, hand.sex).age_months, abs=0.5)


def test_an_age_only_estimate_skips_the_bone_table_and_keeps_the_age(bundle):
    # What a tilted test-time view asks for: the same age and interval, no per-bone table.
    from boneage.measure import measure

    hand = generate_hand(5, 6, size=SIZE)
    m = measure(hand.label_map, hand.spacing_mm)
    full, age_only = bundle.estimate(m, hand.sex), bundle.estimate(m, hand.sex, bones=False)
    assert full.bones and age_only.bones == []
    assert (age_only.age_months, age_only.lower_90, age_only.upper_90) == (full.age_months, full.lower_90, full.upper_90)
    # One hand through the table path (features as a frame) gives the same numbers as estimate().
    import pandas as pd

    table = bundle.predict_table(pd.DataFrame([m.features()]), [hand.sex])
    assert (table["age"][0], table["lower_90"][0], table["upper_90"][0]) == (full.age_months, full.lower_90, full.upper_90)
    assert table["regression"][0] == full.regression_age_months


def test_result_row_is_flat():
    row = BoneAgeResult(path="x.dcm", status="error", reason="file not found").to_row()
    assert row["path"] == "x.dcm" and row["multistep_age_months"] is None
    assert all(not isinstance(v, (dict, list)) for v in row.values())


def test_explicit_unknown_sex_overrides_the_header(estimator, dicom_factory):
    hand = estimator.oracle.add(generate_hand(99, 11, size=SIZE, age_range=(60, 150)))
    path = dicom_factory((hand.image * 4095).astype(int), PatientSex="M", BodyPartExamined="HAND")
    assert estimator.estimate(str(path)).sex == "M"  # header
    result = estimator.estimate(str(path), sex="unknown")
    assert result.sex is None and result.sex_source == "unknown (user)"
    assert estimator.estimate(str(path), sex="F").sex_source == "user"


def test_mirrored_hand_is_said(bundle):
    from boneage.segment import SegmentationResult

    hand = generate_hand(99, 13, size=SIZE, age_range=(80, 150))

    class MirrorSeg:
        def segment_with_info(self, pixels):
            return SegmentationResult(hand.label_map, True, 170.0, 0.01)

    result = BoneAgeEstimator(MirrorSeg(), bundle, FakeDirect()).estimate(hand.image, sex="F")
    assert result.status == "ok"
    assert any("mirrored" in q for q in result.qc) and any("rotated" in q for q in result.qc)


# ---------------------------------------------------------------------------------------------
# Issue #17: bad arguments, non-finite pixels, one model load across threads, the cost of an
# unknown sex.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"sex": "X"}, "'X'"), ({"chronological_age_months": -5}, "-5"), ({"chronological_age_months": 4000}, "4000"),
     ({"chronological_age_months": "ten"}, "'ten'"), ({"sex": "M", "chronological_age_months": float("inf")}, "inf")],
)
def test_bad_sex_or_age_is_an_error_naming_it_not_used(estimator, kwargs, named):
    hand = estimator.oracle.add(generate_hand(99, 15, size=SIZE, age_range=(60, 150)))
    result = estimator.estimate(hand.image, **kwargs)  # never raises
    assert result.status == "error" and "invalid argument" in result.reason and named in result.reason
    assert result.multistep.age_months is None and result.direct.age_months is None


def test_valid_spellings_of_sex_and_age_are_accepted(estimator):
    hand = estimator.oracle.add(generate_hand(99, 17, size=SIZE, age_range=(60, 150)))
    result = estimator.estimate(hand.image, sex=" female ", chronological_age_months="100")
    assert result.status == "ok" and result.sex == "F" and result.chronological_age_months == 100.0
    blank = estimator.estimate(hand.image, sex=float("nan"), chronological_age_months="")
    assert blank.status == "ok" and blank.sex_source == "unknown" and blank.chronological_age_source == "unknown"


def test_a_few_nonfinite_pixels_are_estimated_and_said(estimator):
    hand = estimator.oracle.add(generate_hand(99, 19, size=SIZE, age_range=(60, 150)))
    image = np.array(hand.image, dtype=np.float64)
    image[-1, -1] = np.inf  # once made the whole film "blank"
    result = estimator.estimate(image, sex=hand.sex)
    assert result.status == "ok", result.reason
    assert any("NaN/infinite" in q for q in result.qc)


def test_module_estimate_loads_the_models_once_across_threads(monkeypatch):
    import importlib
    import threading
    import time

    module = importlib.import_module("boneage.estimate")  # ``boneage.estimate`` is also the function
    calls = []

    def slow_load(cls, device="cpu"):
        calls.append(threading.get_ident())
        time.sleep(0.2)  # long enough for every thread to arrive while the first one loads
        return cls(None, None, FakeDirect())

    monkeypatch.setattr(module, "_DEFAULT", None)
    monkeypatch.setattr(BoneAgeEstimator, "load", classmethod(slow_load))
    barrier = threading.Barrier(4)
    results = []

    def run():
        barrier.wait()
        results.append(module.estimate(generate_hand(1, 2, size=SIZE).image, sex="F"))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4 and all(r.direct.available for r in results)


def _metrics(name):
    from boneage.paths import MODELS_DIR

    return json.loads((MODELS_DIR / name / "metrics.json").read_text())


def test_unknown_sex_note_gives_the_measured_cost(estimator):
    # The figures come from the shipped models' metrics.json, quoted for those models only.
    m, d = _metrics("multistep"), _metrics("direct")
    estimator.versions["multistep"] = m["model_version"]
    hand = estimator.oracle.add(generate_hand(99, 21, size=SIZE, age_range=(60, 150)))
    note = estimator.estimate(hand.image).multistep.note
    unknown, given = m["validation_sex_unknown"]["all"], m["validation"]["final"]["all"]
    assert note.startswith("sex unknown: less accurate")
    assert f"validation MAE {unknown['mae_months']:.1f} months vs {given['mae_months']:.1f} with sex given" in note
    assert f"coverage {100 * unknown['coverage_90']:.0f}% vs {100 * given['coverage_90']:.0f}%" in note
    assert "give the sex" in note and "references averaged" in note
    assert estimator.estimate(hand.image, sex="M").multistep.note is None

    from boneage.estimate import sex_unknown_note

    direct_note = sex_unknown_note("direct", d["model_version"], "sex-agnostic mode")
    assert f"validation MAE {d['validation_sex_unknown']['overall']['mae_months']:.1f} months vs " \
           f"{d['validation']['overall']['mae_months']:.1f} with sex given" in direct_note
    # Another model's estimate never quotes the shipped model's figures.
    other = sex_unknown_note("direct", "my-own-cnn", "sex-agnostic mode")
    assert "validation MAE" not in other and other.startswith("sex unknown: less accurate") and "give the sex" in other


def test_multistep_sex_unknown_figures_reach_the_model_card(bundle, tmp_path):
    from boneage.training.multistep import evaluate_sex_unknown, write_model_card

    hands = [generate_hand(12, i, size=SIZE) for i in range(30)]
    feats, _ = measure_label_maps(((h.label_map, h.spacing_mm) for h in hands), progress=False)
    data = LabelledMeasurements(feats, np.array([h.bone_age_months for h in hands]),
                                np.array([h.sex for h in hands]), [str(i) for i in range(30)])
    unknown = evaluate_sex_unknown(bundle, data)
    assert unknown["all"]["n"] == 30 and unknown["female"]["n"] + unknown["male"]["n"] == 30
    metrics = _metrics("multistep")
    metrics["validation_sex_unknown"] = unknown
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    card = write_model_card(tmp_path).read_text()
    assert "### Sex unknown" in card and f"validation MAE {unknown['all']['mae_months']:.1f} vs" in card


# ------------------------------------------------------------------------------------------------
# The per-bone method and the combined estimate (test doubles: no shipped weights or numbers)
# ------------------------------------------------------------------------------------------------
class ReadingOracle(Oracle):
    """An oracle that also *reads* a film (as :meth:`boneage.segment.Segmenter.read` does), so the
    per-bone method can crop the bones from its reading; tilted re-reads give the same map."""

    def read(self, pixels, orientations=True, every_turn=False, mirrored=None):
        from types import SimpleNamespace

        from test_perbone import IdentityTransform, OracleReading

        return OracleReading(SimpleNamespace(label_map=self(pixels), every_turn_read=True), IdentityTransform())

    def reread_tilted(self, reading, angle_deg):
        return reading.grid.label_map


def _three_methods(bundle, perbone=None, direct=None, multistep=True):
    from boneage.combine import Combiner
    from test_combine import STACKING
    from test_perbone import fixed_perbone

    oracle = ReadingOracle()
    est = BoneAgeEstimator(oracle, bundle if multistep else None, direct, versions={"multistep": "t", "direct": "t"},
                           multistep_tilts=(), perbone=perbone or fixed_perbone(default=126.0),
                           combiner=Combiner(STACKING, STACKING["model_version"]))
    est.oracle = oracle
    return est


def test_per_bone_and_combined_estimates_on_a_synthetic_hand(bundle):
    from boneage import anatomy

    est = _three_methods(bundle, direct=FakeDirect(120.0))
    hand = est.oracle.add(generate_hand(99, 3, size=512, age_range=(100, 140)))
    rad = Radiograph.from_array(hand.image, spacing_mm=hand.spacing_mm)
    result = est.estimate(rad, sex=hand.sex, chronological_age_months=hand.chronological_age_months)
    assert result.status == "ok", result.reason
    ms, pb, d, c = result.multistep, result.perbone, result.direct, result.combined
    assert ms.available and pb.available and d.available and c.available
    assert pb.age_months == pytest.approx(126.0, abs=0.01) and pb.lower_90 < 126.0 < pb.upper_90
    assert pb.model_version == "perbone-test" and c.model_version == "combined-test"
    # The combined age is the stacking's weighted mean of the three.
    assert c.age_months == pytest.approx(0.2 * ms.age_months + 0.35 * 126.0 + 0.45 * 120.0, abs=0.01)
    assert c.note == "stacked: multi-step 0.20, per-bone 0.35, end-to-end 0.45"
    assert result.combined_weights == {"multistep": 0.2, "perbone": 0.35, "direct": 0.45}
    assert result.perbone_rus.age_months == pytest.approx(126.0, abs=0.01)
    assert result.perbone_carpal.available and result.perbone_carpal.age_months == pytest.approx(126.0, abs=0.01)
    # Every row of the per-bone table says its bone's own age where the bone was aged.
    rows = {b["bone"]: b for b in result.bones}
    assert len(rows) == 29
    for bone in anatomy.RUS_BONES:
        assert rows[bone]["maturity_age_months"] == pytest.approx(126.0, abs=0.01) and rows[bone]["maturity_used"]
        assert rows[bone]["maturity_lower_90"] < 126.0 < rows[bone]["maturity_upper_90"]
    assert rows["capitate"]["maturity_age_months"] is None and rows["metacarpal_2"]["maturity_used"] is None
    # Every pair is compared; the historical difference stays direct minus multi-step.
    assert [(x.first, x.second) for x in result.comparisons] == [
        ("multistep", "perbone"), ("multistep", "direct"), ("perbone", "direct")]
    assert result.difference_months == pytest.approx(120.0 - ms.age_months)
    assert pb.sds is not None and c.sds is not None
    row = result.to_row()
    assert row["perbone_age_months"] == pytest.approx(126.0, abs=0.01) and row["combined_age_months"] == c.age_months
    assert row["perbone_rus_age_months"] == pytest.approx(126.0, abs=0.01) and row["combined_sds"] == c.sds
    data = result.to_dict()
    assert data["combined"]["age_months"] == c.age_months and data["perbone_carpal"]["available"]
    assert data["comparisons"][0]["first"] == "multistep"
    json.dumps(data)


def test_an_outlier_bone_is_left_out_and_said(bundle):
    from test_perbone import fixed_perbone

    est = _three_methods(bundle, perbone=fixed_perbone({"middle_phalanx_3": 200.0}), direct=FakeDirect(120.0))
    hand = est.oracle.add(generate_hand(99, 3, size=512, age_range=(100, 140)))
    result = est.estimate(hand.image, sex="F")
    assert result.perbone.age_months == pytest.approx(120.0, abs=0.01)
    assert "Middle phalanx 3" in result.perbone.note and "disagree" in result.perbone.note
    row = next(b for b in result.bones if b["bone"] == "middle_phalanx_3")
    assert row["maturity_used"] is False and row["maturity_age_months"] == pytest.approx(200.0, abs=0.01)


def test_without_the_multi_step_method_the_bone_table_comes_from_the_per_bone_method(bundle):
    from boneage import anatomy

    est = _three_methods(bundle, direct=FakeDirect(120.0), multistep=False)
    hand = est.oracle.add(generate_hand(99, 5, size=512, age_range=(60, 150)))
    result = est.estimate(hand.image, sex="M")
    assert result.status == "ok" and not result.multistep.available and result.perbone.available
    assert [b["bone"] for b in result.bones] == list(anatomy.RUS_BONES)
    assert all(b["maturity_age_months"] == pytest.approx(126.0, abs=0.01) for b in result.bones)
    # The weights fitted for the two methods left.
    assert result.combined.age_months == pytest.approx(0.4 * 126.0 + 0.6 * 120.0, abs=0.01)
    assert result.combined.note == "stacked: per-bone 0.40, end-to-end 0.60"
    # The per-bone method alone still gives an estimate; no weight set covers it alone here.
    alone = _three_methods(bundle, multistep=False)
    alone.oracle.truth = est.oracle.truth
    only = alone.estimate(hand.image, sex="M")
    assert only.status == "ok" and only.perbone.available and not only.combined.available
    assert "no stacking weights for per-bone" in only.combined.note and only.agreement == "n/a"


def test_per_bone_method_withheld_with_too_few_bones_and_the_others_combined(bundle):
    est = _three_methods(bundle, direct=FakeDirect(120.0))
    hand = generate_hand(99, 7, size=512, age_range=(80, 150))
    labels = hand.label_map.copy()
    from boneage import anatomy

    for bone in ("radius", "ulna", "metacarpal_1", "metacarpal_3", "metacarpal_5", "proximal_phalanx_1", "proximal_phalanx_3"):
        labels[np.isin(labels, anatomy.bone_labels(bone))] = 0

    class Cut:
        image = hand.image
        label_map = labels

    est.oracle.add(Cut)
    result = est.estimate(hand.image, sex="F")
    assert result.status == "ok" and result.multistep.available and not result.perbone.available
    assert "per-bone method withheld" in result.perbone.note and "6 of 13" in result.perbone.note
    assert any("per-bone method withheld" in q for q in result.qc)
    assert all(b["maturity_age_months"] is None for b in result.bones)
    assert result.combined.age_months == pytest.approx(0.3 * result.multistep.age_months + 0.7 * 120.0, abs=0.01)


def test_per_bone_method_needs_a_reading_of_the_film(bundle):
    from test_perbone import fixed_perbone

    oracle = Oracle()  # a plain callable segmenter: no reading to crop from
    hand = oracle.add(generate_hand(99, 3, size=SIZE, age_range=(100, 140)))
    result = BoneAgeEstimator(oracle, bundle, FakeDirect(), perbone=fixed_perbone()).estimate(hand.image, sex="F")
    assert result.status == "ok" and result.multistep.available and not result.perbone.available
    assert "no reading" in result.perbone.note
    assert "combined model missing" in result.combined.note and not result.combined.available
    assert all("maturity_age_months" in b and b["maturity_age_months"] is None for b in result.bones)


def test_unknown_sex_notes_and_weights_of_the_per_bone_and_combined_estimates(bundle):
    est = _three_methods(bundle, direct=FakeDirect(120.0))
    hand = est.oracle.add(generate_hand(99, 3, size=512, age_range=(100, 140)))
    result = est.estimate(hand.image)
    assert result.sex is None and result.perbone.note.startswith("sex unknown: less accurate")
    assert "sex-agnostic" in result.perbone.note
    assert result.combined.note.startswith("stacked: multi-step 0.10, per-bone 0.30, end-to-end 0.60; sex unknown")
    assert result.combined.age_months == pytest.approx(
        0.1 * result.multistep.age_months + 0.3 * 126.0 + 0.6 * 120.0, abs=0.01)


def _estimate(method, age, half=10.0):
    from boneage.estimate import MethodEstimate

    return MethodEstimate(method, True, float(age), float(age - half), float(age + half))


@pytest.mark.parametrize("ages, halves, agreement", [
    ((100, 102, 104), (10, 10, 10), "agree"),
    ((100, 140, 104), (10, 10, 10), "disagree"),  # the per-bone age is far from both others
    ((100, 102, 104), (10, 60, 10), "inconclusive"),  # the per-bone interval allows anything
    ((100, 114, 104), (20, 20, 20), "inconclusive"),  # allowed by the intervals, but 14 months apart
    ((100, None, 104), (10, 10, 10), "agree"),  # two methods
    ((None, None, 104), (10, 10, 10), "n/a"),
])
def test_agreement_covers_every_pair_of_methods(ages, halves, agreement):
    result = BoneAgeResult(path="x", sex="F", chronological_age_months=110.0)
    for method, age, half in zip(("multistep", "perbone", "direct"), ages, halves):
        if age is not None:
            setattr(result, method, _estimate(method, age, half))
    result.combined = _estimate("combined", 103.0)
    BoneAgeEstimator._compare_and_score(result)
    assert result.agreement == agreement
    available = sum(a is not None for a in ages)
    assert len(result.comparisons) == available * (available - 1) // 2
    if ages[0] is not None:
        assert result.difference_months == pytest.approx(ages[2] - ages[0])
    if agreement == "disagree":
        assert "multi-step and per-bone disagree by 40 months, more than their intervals allow: review the film" in result.qc
        assert any(q.startswith("per-bone and end-to-end disagree by 36 months") for q in result.qc)
    if agreement == "inconclusive":
        assert any("do not confirm each other" in q for q in result.qc)
    assert result.combined.sds is not None and result.direct.sds is not None
    assert (result.perbone.sds is not None) == (ages[1] is not None)


def test_missing_per_bone_and_combined_models_are_reported_not_fatal(monkeypatch):
    from boneage import models

    def fake_load(name, **kwargs):
        if name == "direct":
            return FakeDirect()
        raise models.ModelNotAvailableError(f"weights of model {name!r} not found")

    monkeypatch.setattr(models, "load", fake_load)
    est = BoneAgeEstimator.load()
    assert est.perbone is None and est.combiner is None and est.direct is not None
    assert {"perbone", "combined"} <= set(est.load_errors)
    result = est.estimate(generate_hand(1, 1, size=SIZE).image, sex="F")
    assert result.status == "ok" and result.direct.available
    assert any(q.startswith("perbone model unavailable") for q in result.qc)
    assert any(q.startswith("combined model unavailable") for q in result.qc)
    assert "per-bone method unavailable" in result.perbone.note and "combined model missing" in result.combined.note


@pytest.mark.parametrize("method, metrics", [
    ("perbone", {"validation": {"sex_known": {"groups": {"all": {"mae": 9.0, "coverage": 0.9}}},
                                "sex_unknown": {"groups": {"all": {"mae": 12.5, "coverage": 0.88}}}}}),
    ("combined", {"validation": {"sex_known": {"combined": {"all": {"mae": 9.0, "coverage": 0.9}}},
                                 "sex_unknown": {"combined": {"all": {"mae": 12.5, "coverage": 0.88}}}}}),
])
def test_sex_unknown_note_reads_the_per_bone_and_combined_metrics(monkeypatch, tmp_path, method, metrics):
    import dataclasses

    from boneage import models
    from boneage.estimate import _sex_unknown_figures, sex_unknown_note

    (tmp_path / "metrics.json").write_text(json.dumps({"model_version": f"{method}-test", **metrics}))
    monkeypatch.setitem(models._REGISTRY, method, dataclasses.replace(models.get(method), folder=tmp_path))
    _sex_unknown_figures.cache_clear()
    try:
        note = sex_unknown_note(method, f"{method}-test", "how")
        assert "validation MAE 12.5 months vs 9.0 with sex given, 90% interval coverage 88% vs 90%" in note
        assert "validation MAE" not in sex_unknown_note(method, "another-version", "how")
    finally:
        _sex_unknown_figures.cache_clear()


# ------------------------------------------------------------------------------------------------
# Review: failures of one method, films without a hand check, what a failed film carries
# ------------------------------------------------------------------------------------------------
PER_METHOD_FIELDS = ("multistep", "perbone", "direct", "combined", "perbone_rus", "perbone_carpal")


def _numbers_in_row(result) -> dict:
    row = result.to_row()
    methods = ("multistep", "perbone", "direct", "combined")
    return {k: v for k, v in row.items() if v is not None and k.split("_")[0] in methods}


class FailingDirect:
    def predict(self, pixels, sex=None):
        raise RuntimeError("CNN fell over")


class FailingPerBone:
    model_version = "perbone-broken"

    def predict(self, pixels, reading, sex=None):
        raise ValueError("no crop today")

    def predict_crops(self, crops, sex=None):  # what the estimator calls once the crops are cut
        raise ValueError("no crop today")


def test_a_film_that_fails_half_way_carries_no_methods_number():
    est = _three_methods(None, direct=FailingDirect(), multistep=False)
    hand = est.oracle.add(generate_hand(99, 5, size=512, age_range=(60, 150)))
    result = est.estimate(hand.image, sex="M")
    assert result.status == "error" and "CNN fell over" in result.reason
    assert _numbers_in_row(result) == {}
    assert not any(getattr(result, m).available for m in PER_METHOD_FIELDS)
    assert result.bones == [] and result.comparisons == [] and result.combined_weights == {}


def test_a_failing_per_bone_method_withholds_its_number_not_the_film():
    est = _three_methods(None, perbone=FailingPerBone(), direct=FakeDirect(120.0), multistep=False)
    hand = est.oracle.add(generate_hand(99, 5, size=512, age_range=(60, 150)))
    result = est.estimate(hand.image, sex="M")
    assert result.status == "ok" and result.direct.available and not result.perbone.available
    assert "per-bone method failed (ValueError: no crop today)" in result.perbone.note
    assert any("per-bone method failed" in q for q in result.qc)
    assert result.perbone.model_version == "perbone-broken"


def test_without_hand_check_or_multi_step_a_non_hand_is_still_refused():
    est = _three_methods(None, direct=FakeDirect(120.0), multistep=False)  # the oracle knows no bones here
    result = est.estimate(np.random.default_rng(0).random((300, 300)).astype(np.float32), sex="F")
    assert result.status == "rejected" and "not recognised as a hand" in result.reason
    assert _numbers_in_row(result) == {}


def test_a_rejected_film_carries_no_per_bone_or_combined_field():
    est = _three_methods(None, direct=FakeDirect(120.0), multistep=False)
    result = est.estimate(np.zeros((300, 300), np.float32), sex="F")
    assert result.status == "rejected"
    assert _numbers_in_row(result) == {}
    data = result.to_dict()
    assert all(not data[m]["available"] and data[m]["age_months"] is None for m in PER_METHOD_FIELDS)
    assert data["combined_weights"] == {} and data["comparisons"] == [] and data["bones"] == []
    json.dumps(data)


def test_per_bone_without_multi_step_with_sex_unknown_and_no_weight_set():
    est = _three_methods(None, direct=FakeDirect(120.0), multistep=False)
    hand = est.oracle.add(generate_hand(99, 5, size=512, age_range=(60, 150)))
    result = est.estimate(hand.image)  # the test stacking has no sex-unknown set for per-bone + end-to-end
    assert result.status == "ok" and result.sex is None
    assert result.perbone.available and result.perbone.note.startswith("sex unknown")
    assert not result.combined.available and "no stacking weights for per-bone + end-to-end" in result.combined.note
    row = result.to_row()
    assert row["perbone_age_months"] == pytest.approx(126.0, abs=0.01) and row["combined_age_months"] is None
    assert row["perbone_sds"] is None and row["multistep_age_months"] is None


@needs_segmenter_weights
def test_a_turned_film_gives_the_same_answer_from_a_file_and_keeps_the_callers_pixels(shipped_estimator, tmp_path):
    # A film read from a file lets its as-read pixels go once the upright copy replaces them (memory
    # on big films); a caller's own Radiograph is never touched, and the answers are the same.
    from PIL import Image

    from boneage.io import load_radiograph
    from boneage.preprocess import rotate_film

    hand = generate_hand(31, 2, size=512, age_range=(90, 150))
    turned, _ = rotate_film(hand.image, 20.0)
    path = tmp_path / "turned.png"
    Image.fromarray((np.clip(turned, 0, 1) * 255).astype(np.uint8)).save(path)
    rad = load_radiograph(path)
    kept = rad.pixels.copy()
    given = shipped_estimator.estimate(rad, sex="F")
    assert any("read upright" in q for q in given.qc)  # the film was turned upright
    assert rad.pixels is not None and np.array_equal(rad.pixels, kept)
    from_file = shipped_estimator.estimate(path, sex="F")
    assert from_file.status == given.status == "ok"
    assert from_file.combined.age_months == given.combined.age_months
    assert from_file.image_shape == given.image_shape and np.array_equal(from_file.label_map, given.label_map)

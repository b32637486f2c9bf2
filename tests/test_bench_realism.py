"""The realism benchmark's helpers (issue #22): renderer probes from the command line, turned films."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_realism  # noqa: E402  (a script folder, not a package)

from boneage import synth  # noqa: E402
from boneage.anatomy import CARPAL_REGION  # noqa: E402
from boneage.paths import rsna_dev_dir  # noqa: E402


def test_set_renderer_constants_changes_only_numeric_constants(monkeypatch):
    monkeypatch.setattr(synth, "_CARPAL_SCALE", synth._CARPAL_SCALE)  # restored after the test
    monkeypatch.setattr(synth, "_DRC_AMOUNT", synth._DRC_AMOUNT)
    changed = bench_realism.set_renderer_constants(["_CARPAL_SCALE=1.4", "_DRC_AMOUNT=0.2"])
    assert changed == {"_CARPAL_SCALE": 1.4, "_DRC_AMOUNT": 0.2}
    assert synth._CARPAL_SCALE == 1.4 and synth._DRC_AMOUNT == 0.2


def test_set_renderer_constants_reaches_one_entry_of_a_table(monkeypatch):
    monkeypatch.setattr(synth, "_TRABECULAR_DENSITY", dict(synth._TRABECULAR_DENSITY))  # a copy, restored after
    forearm = synth._TRABECULAR_DENSITY["forearm"]
    changed = bench_realism.set_renderer_constants(["_TRABECULAR_DENSITY[metacarpal]=0.45"])
    assert changed == {"_TRABECULAR_DENSITY[metacarpal]": 0.45}
    assert synth._TRABECULAR_DENSITY == {"metacarpal": 0.45, "forearm": forearm}


@pytest.mark.parametrize("bad, reason", [
    ("_NO_SUCH_CONSTANT=1", "numeric constant"),
    ("_CARPAL_SCALE", "NAME=VALUE"),
    ("_CARPAL_SCALE=wide", "not a number"),
    ("_EPIPHYSIS_WIDTH=1", "numeric constant"),  # a table, not a number
    ("_TRABECULAR_DENSITY[phalanx]=0.5", "numeric entry"),  # no such entry
    ("_TRABECULAR_DENSITY[]=0.5", "numeric entry"),
    ("_CARPAL_SCALE[x]=0.5", "numeric entry"),  # a number, not a table
    ("generate_hand=1", "numeric constant"),
])
def test_set_renderer_constants_rejects_what_it_cannot_set(bad, reason, monkeypatch):
    monkeypatch.setattr(synth, "_CARPAL_SCALE", synth._CARPAL_SCALE)
    before = synth._CARPAL_SCALE
    with pytest.raises(ValueError, match=reason):
        bench_realism.set_renderer_constants(["_CARPAL_SCALE=2.0", bad])
    assert synth._CARPAL_SCALE == before  # nothing is half-applied


def test_turn_changes_is_zero_for_a_turn_blind_reader_and_follows_a_turn_aware_one():
    film = np.zeros((120, 90), np.float32)
    film[20:100, 40:50] = 1.0  # an upright bar on a dark background
    blind = bench_realism.turn_changes(lambda x: 100.0, film)
    assert np.allclose(blind, 0.0)

    def lean(x):  # a reader that reports how far the bright mass leans to the right at the top
        rows, cols = np.nonzero(x > 0.5)
        return float(np.polyfit(rows, cols, 1)[0] * -100)

    changes = bench_realism.turn_changes(lean, film, angles=(-15.0, 15.0))
    assert changes.shape == (2,)
    # counter-clockwise turns lean the bar's top to the left, clockwise to the right
    assert changes[0] > 10 and changes[1] < -10


def test_turn_swing_is_the_counter_clockwise_reading_minus_the_clockwise_one():
    film = np.zeros((120, 90), np.float32)
    film[20:100, 40:50] = 1.0

    def lean(x):  # as above: how far the bright mass leans to the right at the top
        rows, cols = np.nonzero(x > 0.5)
        return float(np.polyfit(rows, cols, 1)[0] * -100)

    changes = bench_realism.turn_changes(lean, film, angles=(-15.0, 15.0))
    assert bench_realism.turn_swing(lean, film) == pytest.approx(changes[1] - changes[0]) and changes[1] < changes[0]
    assert bench_realism.turn_swing(lambda x: 100.0, film) == 0.0


def test_flatten_and_blur_away_change_only_their_region():
    rng = np.random.default_rng(0)
    film = rng.random((256, 256)).astype(np.float32)
    region = np.zeros(film.shape, bool)
    region[100:140, 100:140] = True
    flat = bench_realism.flatten(film, region)
    assert np.all(flat[region] == np.median(film[region])) and np.array_equal(flat[~region], film[~region])
    assert np.array_equal(bench_realism.flatten(film, np.zeros_like(region)), film)
    blurred = bench_realism.blur_away(film, region)
    assert blurred[region].std() < 0.2 * film[region].std()  # the region's detail is gone
    assert np.array_equal(blurred[:60], film[:60])  # far from it nothing moves


def test_soft_tissue_mask_finds_the_soft_tissue_and_restores_the_renderer(monkeypatch):
    hand = synth.generate_hand(5, 0, size=512, bone_age_months=100.0, sex="F")  # part (e)'s size
    mask = bench_realism.soft_tissue_mask(5, 0, 512, 100.0, "F", hand)
    assert synth._SOFT_TISSUE_MU_SCALE == 1.0
    assert 0.05 < mask.mean() < 0.6 and not (mask & (hand.label_map > 0)).any()
    # soft tissue is brighter than the film around the hand
    assert np.median(hand.image[mask]) > np.median(hand.image[~mask & (hand.label_map == 0)]) + 0.1
    calls = []

    def failing(*args, **kwargs):
        calls.append(synth._SOFT_TISSUE_MU_SCALE)
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(synth, "generate_hand", failing)
    with pytest.raises(RuntimeError):
        bench_realism.soft_tissue_mask(5, 0, 512, 100.0, "F", hand)
    assert calls == [0.0] and synth._SOFT_TISSUE_MU_SCALE == 1.0  # drawn without soft tissue, then put back


def test_nearest_real_films_finds_copies_and_their_ages():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(6, 4))
    ages = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    # A copy of real film 2 (scaled: cosine ignores length) and a hand between films 4 and 5.
    synthetic = np.stack([3 * real[2], real[4] + real[5]])
    found = bench_realism.nearest_real_films(real, ages, synthetic, k=1)
    assert found["synthetic_similarity"][0] == pytest.approx(1.0)
    assert found["neighbour_age"][0] == 30.0
    assert found["neighbour_age"][1] in (50.0, 60.0)
    # A real film's nearest neighbour is another film, never itself.
    assert np.all(found["real_similarity"] < 1.0 - 1e-9)
    two = bench_realism.nearest_real_films(real, ages, synthetic, k=2)
    assert two["neighbour_age"][1] == pytest.approx(55.0)
    # The real films' own baseline: each among the others.
    assert found["real_neighbour_age"].shape == (6,)
    assert not np.any(found["real_neighbour_age"] == ages)  # never its own age: itself is left out


def _layout_labels(lunate_gap_px: int) -> np.ndarray:
    """A drawn label map: a 60 x 10 px third metacarpal, capitate touching it, a lunate above a radius."""
    from boneage import anatomy

    labels = np.zeros((200, 120), np.uint8)
    labels[10:70, 55:65] = anatomy.shaft_label("metacarpal_3")
    labels[70:100, 50:70] = anatomy.shaft_label("capitate")
    labels[105:125, 50:70] = anatomy.shaft_label("lunate")
    labels[125 + lunate_gap_px:140, 45:75] = anatomy.epiphysis_label("radius")
    labels[140:190, 50:70] = anatomy.shaft_label("radius")
    labels[195, 5] = anatomy.shaft_label("metacarpal_3")  # a stray pixel: not part of the shaft's length
    return labels


def test_carpal_layout_measures_a_drawn_wrist_exactly():
    found = bench_realism.carpal_layout(_layout_labels(5))
    assert found["lunate-radius gap / MC3 width"] == pytest.approx(5 / 10)
    assert found["capitate-MC3 gap / MC3 width"] == 0.0  # touching
    carpal_area = 30 * 20 + 20 * 20
    assert found["carpal area / MC3 length^2"] == pytest.approx(carpal_area / 60**2)
    # Hull: the two blocks and the 5-px gap between them (convex_hull_image counts pixel centres).
    assert found["carpal fill"] == pytest.approx(carpal_area / (carpal_area + 5 * 20), abs=0.03)
    assert found["carpal hull / MC3 length^2"] == pytest.approx((carpal_area + 5 * 20) / 60**2, rel=0.05)
    assert bench_realism.carpal_layout(_layout_labels(0))["lunate-radius gap / MC3 width"] == 0.0
    assert bench_realism.carpal_layout(np.zeros((50, 50), np.uint8)) is None
    # Each carpal's length over width: the 30 x 20 capitate, the square lunate; a missing hamate is nan.
    assert found["capitate length / width"] == pytest.approx(30 / 20)
    assert found["lunate length / width"] == pytest.approx(1.0)
    assert np.isnan(found["hamate length / width"])


def test_elongation_reads_a_turned_tapered_bone():
    from skimage.draw import polygon

    mask = np.zeros((120, 120), bool)
    # A diamond 60 px long and 24 px wide at its middle, turned 30 degrees: 2.5 whatever its turn.
    t = np.deg2rad(30)
    along, across = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    corners = np.array([60, 60]) + np.stack([along * 30, across * 12, -along * 30, -across * 12])
    mask[polygon(corners[:, 0], corners[:, 1], mask.shape)] = True
    assert bench_realism.elongation(mask) == pytest.approx(2.5, rel=0.1)
    assert np.isnan(bench_realism.elongation(np.zeros((10, 10), bool)))


def _layout_medians(monkeypatch, constant: str, values: tuple[float, ...], measure: str, size: int,
                    bone_age_months: float) -> dict[float, float]:
    """Median of one :func:`carpal_layout` measure over 4 synthetic hands, for each value of a renderer constant."""
    found = {}
    for value in values:
        monkeypatch.setattr(synth, constant, value)
        hands = [synth.generate_hand(3, i, size=size, bone_age_months=bone_age_months) for i in range(4)]
        found[value] = float(np.nanmedian([bench_realism.carpal_layout(h.label_map)[measure] for h in hands]))
    return found


def test_carpal_layout_sees_the_carpals_take_their_shape(monkeypatch):
    found = _layout_medians(monkeypatch, "_CARPAL_SHAPE_CALIBRATION", (0.0, 1.0), "trapezoid length / width", 512, 170.0)
    assert found[1.0] > found[0.0] + 0.3, found


def test_carpal_layout_sees_the_forearm_moved_towards_the_carpus(monkeypatch):
    gaps = _layout_medians(monkeypatch, "_FOREARM_SHIFT_MM", (0.0, 6.0), "lunate-radius gap / MC3 width", 384, 140.0)
    assert gaps[6.0] < gaps[0.0] - 0.1, gaps


def test_occlusion_changes_follow_what_the_reader_looks_at():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0.2, 0.3, (256, 256)).astype(np.float32)
    labels = np.zeros((256, 256), np.uint8)
    labels[100:110, 40:200] = 1  # a thin bright "bone"
    pixels[100:110, 40:200] = 1.0
    peak = lambda x: float(x.max()) * 100  # noqa: E731  (reads the brightest point)
    changes = bench_realism.occlusion_changes(peak, pixels, labels, {"bone": [1], "absent": [2]})
    assert changes["absent"] == 0.0
    assert changes["bone"] < -20  # blurred into its surroundings, the thin bone loses its peak
    far_corner = bench_realism.occlusion_changes(lambda x: float(x[5, 5]) * 100, pixels, labels, {"bone": [1]})
    assert far_corner["bone"] == pytest.approx(0.0, abs=1e-4)  # pixels away from the region are left alone
    given = bench_realism.occlusion_changes(peak, pixels, labels, {"bone": [1]}, base=500.0)
    assert given["bone"] == pytest.approx(peak(pixels) + changes["bone"] - 500.0, abs=1e-3)  # the caller's base is used


def _bone_labels(physis_gap_px: int) -> np.ndarray:
    """A drawn third metacarpal: a 100-row shaft 10 px wide, flared to 16 px over its last 10 rows, under a
    10 x 12 px head epiphysis ``physis_gap_px`` rows above it, and a stray piece of its epiphysis label."""
    from boneage import anatomy

    labels = np.zeros((160, 120), np.uint8)
    labels[50:140, 55:65] = anatomy.shaft_label("metacarpal_3")
    labels[40:50, 52:68] = anatomy.shaft_label("metacarpal_3")
    labels[30 - physis_gap_px:40 - physis_gap_px, 54:66] = anatomy.epiphysis_label("metacarpal_3")
    # A stray piece of the label beyond the head: not part of the epiphysis's height, though measure() counts
    # it in the bone's length (with no carpus to orient by, it drops nothing).
    labels[23:25, 59:62] = anatomy.epiphysis_label("metacarpal_3")
    return labels


def test_physis_geometry_measures_a_drawn_bone_exactly():
    found = bench_realism.physis_geometry(_bone_labels(0), "metacarpal_3")
    assert found["metaphysis / mid-shaft width"] == pytest.approx(16 / 10)
    assert found["epiphysis / metaphysis width"] == pytest.approx(12 / 16, rel=0.03)
    assert found["epiphysis height / width"] == pytest.approx(10 / 12, rel=0.03)
    assert found["contact"] == 1.0  # touching across its whole width
    assert found["mid-shaft width / length"] == pytest.approx(10 / 117)  # rows 23-139
    apart = bench_realism.physis_geometry(_bone_labels(2), "metacarpal_3")
    assert apart["contact"] == 0.0
    assert apart["epiphysis height / width"] == pytest.approx(10 / 12, rel=0.03)
    assert bench_realism.physis_geometry(np.zeros((50, 50), np.uint8), "metacarpal_3") is None


def test_physis_geometry_sees_the_metacarpal_heads_flare(monkeypatch):
    flares = {}
    for young_flare in (0.87, 1.0):
        monkeypatch.setattr(synth, "_METACARPAL_YOUNG_FLARE", young_flare)
        hands = [synth.generate_hand(3, i, size=512, bone_age_months=100.0) for i in range(4)]
        flares[young_flare] = np.median([bench_realism.physis_geometry(h.label_map, "metacarpal_3")
                                         ["metaphysis / mid-shaft width"] for h in hands])
    assert flares[0.87] < flares[1.0] - 0.1, flares


def test_crop_transplants_swap_each_third_both_ways():
    real = np.full((64, 48), 200, np.uint8)
    synthetic = np.full((64, 48), 100, np.uint8)
    top = bench_realism.crop_thirds(64, CARPAL_REGION)["metacarpal bases (top)"]

    def read(crop: np.ndarray) -> float:  # a reader that looks only at the top third
        return float(crop[top].mean())

    found = bench_realism.crop_transplants(read, real, synthetic, CARPAL_REGION)
    assert found["real"] == 200 and found["synthetic"] == 100
    assert found["synthetic, real metacarpal bases (top)"] == 200
    assert found["real, synthetic metacarpal bases (top)"] == 100
    for third in ("carpus (middle)", "radius and ulna (bottom)"):
        assert found[f"synthetic, real {third}"] == 100 and found[f"real, synthetic {third}"] == 200
    assert real.min() == 200 and synthetic.max() == 100  # the crops given are left as they were
    # The thirds cover the crop's rows once each, at any crop height.
    for height in (64, 65):
        rows = np.concatenate([np.arange(height)[s] for s in bench_realism.crop_thirds(height, CARPAL_REGION).values()])
        assert sorted(rows.tolist()) == list(range(height))
    assert top == slice(0, 21)


def test_crop_thirds_name_a_tubular_bone_by_its_epiphysis_end():
    assert list(bench_realism.crop_thirds(64, CARPAL_REGION)) == list(bench_realism.CARPAL_THIRDS)
    thirds = bench_realism.crop_thirds(64, "proximal_phalanx_3")
    assert list(thirds) == list(bench_realism.BONE_THIRDS) and thirds["epiphysis end (top)"] == slice(0, 21)
    real = np.full((64, 48), 200, np.uint8)
    synthetic = np.full((64, 48), 100, np.uint8)
    found = bench_realism.crop_transplants(lambda crop: float(crop[:21].mean()), real, synthetic, "distal_phalanx_3")
    assert found["synthetic, real epiphysis end (top)"] == 200 and found["synthetic, real shaft (middle)"] == 100


def test_image_feature_groups_split_the_vector_in_order():
    rng = np.random.default_rng(0)
    prepared = rng.random((256, 256)).astype(np.float32)
    parts = bench_realism.image_feature_parts(prepared)
    vector = bench_realism.image_features(prepared)
    groups = bench_realism.feature_groups(prepared)
    assert list(groups) == ["intensity", "gradient", "spectrum", "sharpness", "thumbnail"] == list(parts)
    covered = np.concatenate([np.arange(len(vector))[s] for s in groups.values()])
    assert covered.tolist() == list(range(len(vector)))  # each feature in exactly one group, in order
    for name, columns in groups.items():
        assert np.array_equal(vector[columns], parts[name])
    assert len(parts["intensity"]) == 32 and len(parts["thumbnail"]) == 256
    assert parts["intensity"].sum() == pytest.approx(1.0)  # a histogram of every pixel


def test_group_aucs_find_the_group_that_tells_the_classes_apart():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 60)
    telling = labels[:, None] * 2.0 + rng.normal(0, 0.3, (120, 3))  # separates the classes
    blind = rng.normal(0, 1, (120, 4))  # does not
    aucs = bench_realism.group_aucs(np.hstack([telling, blind]), labels,
                                    {"telling": slice(0, 3), "blind": slice(3, 7)}, seed=0)
    assert list(aucs) == ["all", "telling", "blind"]
    assert aucs["telling"][0] > 0.95 and aucs["all"][0] > 0.95
    assert 0.2 < aucs["blind"][0] < 0.8


@pytest.mark.parametrize("argv, message", [
    (["--transplant-region", "thumbnail"], "not one of"),
    (["--transplant-ages", "200", "100"], "must not exceed"),
    (["--occlude-ages", "200", "100"], "must not exceed"),
])
def test_main_rejects_a_bad_age_band_or_region(argv, message, capsys):
    quiet = ["--n", "0", "--skip-classifier"] + [x for part in ("features", "look", "turn", "embed", "layout",
                                                               "occlude", "physis", "transplant", "joints",
                                                               "operations")
                                                  for x in (f"--n-{part}", "0")]
    with pytest.raises(SystemExit):
        bench_realism.main(argv + quiet)
    assert message in capsys.readouterr().err


def test_largest_piece_drops_strays_and_keeps_a_whole_mask():
    mask = np.zeros((20, 20), bool)
    mask[2:10, 2:10] = True
    alone = bench_realism.largest_piece(mask).copy()
    mask[15, 15] = True
    assert np.array_equal(bench_realism.largest_piece(mask), alone) and alone.sum() == 64
    assert not bench_realism.largest_piece(np.zeros((5, 5), bool)).any()


def test_finite_mean_leaves_out_shafts_with_no_reading():
    assert bench_realism._finite_mean([0.3, float("nan"), 0.5]) == pytest.approx(0.4)
    assert np.isnan(bench_realism._finite_mean([float("nan")])) and np.isnan(bench_realism._finite_mean([]))


@pytest.mark.skipif(not (rsna_dev_dir() / "labels.csv").is_file(),
                    reason="real rsna-dev films not available (../shared/data/rsna-dev absent)")
def test_film_look_draws_only_films_past_its_minimum_age(capsys):
    # Two real films of at least 200 months and two synthetic hands of their ages: every band under 200 months is empty.
    bench_realism.film_look(2, 5, min_age=200.0)
    table = capsys.readouterr().out
    metacarpal = next(line for line in table.splitlines() if "metacarpal_3 cortex fraction" in line)
    cells = metacarpal.split("fraction", 1)[1].split()
    assert cells[:15] == ["nan", "/", "nan"] * 5, metacarpal  # 0-72 ... 180-200 months
    assert cells[15] != "nan" and cells[17] != "nan", metacarpal  # 200-240 months: both read
    grain = next(line for line in table.splitlines() if "metacarpal_3 fine texture" in line)
    assert grain.split("texture", 1)[1].split()[:3] == ["nan", "/", "nan"], grain  # a row of its own, 0-72 empty


def test_joint_gaps_measure_a_drawn_finger_exactly():
    from boneage import anatomy

    labels = np.zeros((200, 60), np.uint8)
    labels[10:110, 20:40] = anatomy.shaft_label("proximal_phalanx_3")  # 100 px long: gaps in % are pixels
    labels[116:150, 22:38] = anatomy.shaft_label("middle_phalanx_3")  # 6 empty rows below it
    labels[155, 24:29] = anatomy.epiphysis_label("distal_phalanx_3")  # 5 pixels: too small, absent
    assert bench_realism.mask_length(labels == anatomy.shaft_label("proximal_phalanx_3")) == pytest.approx(100.0)
    gaps = bench_realism.joint_gaps(labels)
    assert gaps == {"PIP3": pytest.approx(6.0)}
    labels[110:116, 22:38] = anatomy.shaft_label("middle_phalanx_3")  # now touching: no gap, at any resolution
    assert bench_realism.joint_gaps(labels) == {"PIP3": 0.0}
    assert bench_realism.joint_gaps(np.zeros((50, 50), np.uint8)) == {}  # no reference bone: nothing measured
    assert np.isnan(bench_realism.mask_length(np.eye(4, dtype=bool)[:1, :1]))  # one pixel has no axis


def test_adolescent_joints_narrow_as_on_real_films(monkeypatch):
    # On real training-split films of 200-240 months the segmenter's masks touch at the third ray's joints (0.00-0.19% of
    # the third proximal phalanx's length); synthetic hands showed 1.5-3.4% before the narrowing (part k).
    def gaps(age: float) -> float:
        hands = [synth.generate_hand(23, i, size=512, bone_age_months=age, sex="M") for i in range(3)]
        return float(np.median([g for h in hands for j, g in bench_realism.joint_gaps(h.label_map).items()
                                if j.endswith("3")]))

    shipped_old, shipped_young = gaps(210.0), gaps(140.0)
    monkeypatch.setattr(synth, "_ADOLESCENT_JOINT_SCALE", 1.0)
    wide_old, wide_young = gaps(210.0), gaps(140.0)
    assert shipped_young == pytest.approx(wide_young)  # nothing changes before the ramp
    assert shipped_old < 0.6 * wide_old, (shipped_old, wide_old)


def test_sex_band_bias_splits_each_methods_error_by_sex_and_band():
    truth = np.array([40.0, 50.0, 100.0, 110.0, 180.0, 190.0])
    female = np.array([False, True, False, True, False, True])
    readings = {"truth": truth, "female": female}
    for k, m in enumerate(bench_realism.METHODS):
        # boys read k months old, girls 10 months young; the last girl not read by the first method
        ages = np.where(female, truth - 10.0, truth + k)
        if k == 0:
            ages[5] = np.nan
        readings[m] = ages
    bias = bench_realism.sex_band_bias(readings)
    first, last = bench_realism.METHODS[0], bench_realism.METHODS[-1]
    assert bias[last]["boys"] == [len(bench_realism.METHODS) - 1.0] * 3
    assert bias[last]["girls"] == [-10.0, -10.0, -10.0]
    assert bias[first]["girls"][:2] == [-10.0, -10.0] and np.isnan(bias[first]["girls"][2])


def test_real_mix_weights_give_each_group_its_share_of_the_real_films():
    # 24-month bands: girls at 10 and 20 months share a group (band 0), as do the boys at 50 and 60 (band 2).
    truth = np.array([10.0, 20.0, 100.0, 50.0, 60.0])
    female = np.array([True, True, True, False, False])
    errors = np.array([10.0, 20.0, 40.0, 5.0, 5.0])
    # real: 3 girls in band 0, 1 girl in band 4, 2 boys in band 2 and 1 boy of 200 months (band 8: no hand there)
    real_ages = np.array([5.0, 6.0, 7.0, 100.0, 60.0, 61.0, 200.0])
    real_female = np.array([True, True, True, True, False, False, False])
    weights, covered = bench_realism.real_mix_weights(truth, female, real_ages, real_female)
    assert covered == pytest.approx(6 / 7) and weights.mean() == pytest.approx(1.0)
    # the real films' mix over the groups the hands reach: (3 x 15 + 1 x 40 + 2 x 5) / 6
    assert np.sum(weights * errors) / np.sum(weights) == pytest.approx(95 / 6)
    np.testing.assert_allclose(weights[:2], weights[0])  # a group's weight is split evenly among its hands


def test_real_mix_weights_follow_the_real_films_sex_ratio_and_last_band():
    # Three real boys to one real girl in the same band: the boy weighs three times the girl.
    weights, _ = bench_realism.real_mix_weights(np.array([100.0, 100.0]), np.array([False, True]),
                                                np.array([100.0, 101.0, 102.0, 103.0]), np.array([False, False, False, True]))
    assert weights[0] == pytest.approx(3 * weights[1])
    # A real girl at 216 months (the girls' maximum, which the draw never reaches) joins their last band (192-216).
    weights, covered = bench_realism.real_mix_weights(np.array([210.0]), np.array([True]), np.array([216.0]),
                                                      np.array([True]))
    assert covered == 1.0 and weights.tolist() == [1.0]
    # No group shared: no weight, nothing covered (part (a) then prints "-" for the column).
    weights, covered = bench_realism.real_mix_weights(np.array([20.0]), np.array([True]), np.array([150.0]),
                                                      np.array([True]))
    assert covered == 0.0 and weights.tolist() == [0.0]


def test_real_mix_reference_reads_the_training_split_or_says_why_not(monkeypatch, capsys, tmp_path):
    from boneage import datasets

    table = pd.DataFrame({"bone_age_months": [100.0, 50.0, 150.0], "sex": ["F", "M", "F"],
                                   "split": ["train", "train", "val"]})
    monkeypatch.setattr(datasets, "rsna_dev", lambda: table)
    ages, female = bench_realism.real_mix_reference()
    assert ages.tolist() == [100.0, 50.0] and female.tolist() == [True, False]  # never the validation split

    def absent():
        raise datasets.DataUnavailableError(f"{tmp_path / 'labels.csv'} not found")

    monkeypatch.setattr(datasets, "rsna_dev", absent)
    assert bench_realism.real_mix_reference() is None
    assert "without its real-mix column" in capsys.readouterr().out


def test_print_readings_adds_each_methods_mae_at_the_real_mix(capsys):
    truth = np.array([30.0, 100.0, 180.0, 200.0])
    readings = {"truth": truth, "female": np.array([True, False, True, False])}
    for m in bench_realism.METHODS:
        readings[m] = truth + np.array([2.0, -4.0, 30.0, 30.0])
    bench_realism.print_readings(512, readings, (np.array([1.0, 3.0, 0.0, 0.0]), 0.75))
    out = capsys.readouterr().out
    assert "real mix" in out and "hold 75% of those films; 2 hands' worth" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == [bench_realism.METHODS[0]]]
    assert rows[0][2] == "16.5" and rows[0][-1] == "3.5"  # plain MAE, then (1 x 2 + 3 x 4) / 4


def test_label_share_counts_a_bones_pixels_given_to_another():
    from boneage import anatomy

    truth = np.zeros((10, 10), np.uint8)
    truth[2:6, 2:7] = anatomy.shaft_label("capitate")  # 20 pixels
    predicted = truth.copy()
    predicted[2:3, 2:7] = anatomy.shaft_label("metacarpal_3")  # 5 of them called the third metacarpal's shaft
    predicted[3, 2] = anatomy.epiphysis_label("metacarpal_3")  # and 1 its epiphysis
    assert bench_realism.label_share(truth, predicted, "capitate", "metacarpal_3") == pytest.approx(6 / 20)
    assert bench_realism.label_share(truth, predicted, "capitate", "capitate") == pytest.approx(14 / 20)
    assert np.isnan(bench_realism.label_share(truth, predicted, "hamate", "metacarpal_3"))


def test_capitate_geometry_follows_the_drawn_capitate(monkeypatch):
    # Issue #22, "Fused ends, boys' shapes and the capitate": a mature capitate drawn 0.85 x as long measures so.
    def geometry() -> tuple[float, float]:
        found = [bench_realism.capitate_geometry(synth.generate_hand(31, i, size=512, bone_age_months=200.0,
                                                                   sex="M").label_map) for i in range(3)]
        return (float(np.mean([g["capitate / MC3"] for g in found])),
                float(np.mean([g["capitate length / width"] for g in found])))

    ratio, aspect = geometry()
    assert 0.3 < ratio < 0.6 and aspect > 1.2
    monkeypatch.setattr(synth, "_CAPITATE_MATURE_LENGTH", 0.85)
    short_ratio, short_aspect = geometry()
    assert short_ratio == pytest.approx(0.85 * ratio, rel=0.04) and short_aspect < 0.92 * aspect
    assert bench_realism.capitate_geometry(np.zeros((20, 20), np.uint8)) is None
    # A capitate given wholly to the third metacarpal: the metacarpal's length is still read, the capitate's is not.
    from boneage import anatomy

    hand = synth.generate_hand(31, 0, size=512, bone_age_months=200.0, sex="M")
    merged = np.where(np.isin(hand.label_map, anatomy.bone_labels("capitate")), anatomy.shaft_label("metacarpal_3"),
                      hand.label_map)
    found = bench_realism.capitate_geometry(merged)
    assert np.isnan(found["capitate / MC3"]) and np.isnan(found["capitate length / width"])
    assert found["MC3 length"] > 1.2 * bench_realism.capitate_geometry(hand.label_map)["MC3 length"]


@pytest.mark.skipif(not (rsna_dev_dir() / "labels.csv").is_file(),
                    reason="real rsna-dev films not available (../shared/data/rsna-dev absent)")
def test_capitate_part_prints_each_measurement_by_band(capsys):
    bench_realism.capitate_part(2, 5)
    table = capsys.readouterr().out
    for name in ("capitate / MC3 (real films)", "capitate length / width (synthetic, drawn)",
                 "synthetic capitate labelled MC3 (share)", "synthetic MC3 length, segmented / drawn"):
        assert name in table, name
    shares = next(line for line in table.splitlines() if "labelled MC3" in line).split("(share)", 1)[1].split()
    assert len(shares) == len(bench_realism.CAPITATE_BANDS) and any(c != "-" for c in shares), shares


def test_region_gaps_average_each_region_and_skip_the_unread():
    nan = np.nan
    real = np.array([[2.0, 10.0, nan], [4.0, nan, nan]])
    synthetic = np.array([[12.0, -10.0, 5.0], [nan, -20.0, 7.0]])
    real_mean, synthetic_mean, gap = bench_realism.region_gaps(real, synthetic)
    assert real_mean[:2].tolist() == [3.0, 10.0] and np.isnan(real_mean[2])
    assert synthetic_mean.tolist() == [12.0, -15.0, 6.0]
    # Regions read on both: |12 - 3| and |-15 - 10|; the third has no real reading and is left out.
    assert gap == pytest.approx((9.0 + 25.0) / 2)
    # Regions too old and too young do not cancel, as they can in a consensus.
    assert bench_realism.region_gaps(np.zeros((1, 2)), np.array([[20.0, -20.0]]))[2] == 20.0
    assert np.isnan(bench_realism.region_gaps(np.full((1, 2), nan), np.zeros((1, 2)))[2])


@pytest.mark.skipif(not (rsna_dev_dir() / "labels.csv").is_file(),
                    reason="real rsna-dev films not available (../shared/data/rsna-dev absent)")
def test_perbone_regions_prints_every_region_by_band_and_sex(capsys):
    from boneage.anatomy import MATURITY_REGIONS

    bench_realism.perbone_regions(2, 5)
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if "regions one by one" in line)
    table = lines[start + 1:]
    assert table[0].split()[0] == "region"
    rows = {line.split()[0]: line for line in table[1:1 + len(MATURITY_REGIONS)]}
    assert list(rows) == list(MATURITY_REGIONS)
    assert any(" / " in row for row in rows.values())  # synthetic / real readings
    gap = table[1 + len(MATURITY_REGIONS)]
    assert gap.startswith("  mean |gap|") and float(gap.split()[-1]) >= 0
    spread = table[2 + len(MATURITY_REGIONS)]
    assert "regions disagree" in spread and float(spread.split("synthetic ")[1].split()[0]) >= 0


def test_region_spread_is_the_mean_sd_across_one_films_regions():
    nan = float("nan")
    agreeing = np.array([[10.0, 10.0, 10.0], [-5.0, -5.0, -5.0]])  # each film's regions tell one age
    assert bench_realism.region_spread(agreeing) == 0.0
    # SD of (0, 20) is 10, of (4, 4, nan) 0; the film with one region read is left out.
    films = np.array([[0.0, 20.0, nan], [4.0, 4.0, nan], [7.0, nan, nan]])
    assert bench_realism.region_spread(films) == pytest.approx(5.0)
    assert np.isnan(bench_realism.region_spread(np.array([[1.0, nan]])))


def _test_film() -> np.ndarray:
    """A dark film with grain and a bright bar (a shaft), as (n)'s operations receive it: windowed to [0, 1]."""
    film = np.clip(np.random.default_rng(3).normal(0.1, 0.02, (256, 200)), 0, 1).astype(np.float32)
    film[60:200, 90:110] = 0.8
    return film


def test_film_operations_keep_a_film_in_range_and_frame_it_as_named():
    film = _test_film()
    operated = {name: op(film) for name, op in bench_realism.film_operations().items()}
    for name, out in operated.items():
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1, name
    assert operated["gamma 0.7 (brighter)"].mean() > film.mean() > operated["gamma 1.4 (darker)"].mean()
    assert operated["blur (1 px)"].shape == film.shape and operated["blur (1 px)"].std() < film.std()
    edge = operated["edge enhancement (x1, 2 px)"]
    assert edge[130, 91] > film[130, 91] and edge[130, 88] < film[130, 88]  # brighter inside the bar's edge, darker out
    wider, narrower = operated["wider frame (+1/8 a side)"], operated["narrower frame (-1/12 a side)"]
    assert wider.shape == (256 + 32, 200 + 2 * 25) and narrower.shape == (256, 200 - 2 * 16)
    np.testing.assert_array_equal(wider[32:, 25:225], film)  # the film itself is untouched
    added = np.concatenate([wider[:32].ravel(), wider[32:, :25].ravel()])
    assert abs(np.median(added) - 0.1) < 0.01 and 0.01 < added.std() < 0.03  # the frame's grey and grain
    np.testing.assert_array_equal(narrower, film[:, 16:184])


def test_film_operations_scale_their_kernels_with_the_film():
    small = np.full((256, 200), 0.1, np.float32)
    small[60:200, 90:110] = 0.8  # a bright bar on a dark film
    large = np.kron(small, np.ones((4, 4), np.float32))  # the same film at 4 x the pixels
    operations = bench_realism.film_operations()

    def blurred_edge_px(film: np.ndarray, scale: int) -> float:  # across the bar's two edges, in small-film pixels
        row = operations["blur (1 px)"](film)[film.shape[0] // 2]
        return float(((row > 0.15) & (row < 0.75)).sum()) / scale

    def halo_px(film: np.ndarray, scale: int) -> float:  # the dark undershoot beside the bar
        row = operations["edge enhancement (x1, 2 px)"](film)[film.shape[0] // 2]
        return float((row < 0.08).sum()) / scale

    for measure in (blurred_edge_px, halo_px):
        assert measure(small, 1) >= 2, measure.__name__
        assert abs(measure(small, 1) - measure(large, 4)) <= 1.5, measure.__name__


def test_operation_changes_are_zero_for_a_blind_reader_and_follow_a_brightness_reader():
    film = _test_film()
    operations = bench_realism.film_operations()
    assert np.all(bench_realism.operation_changes(lambda x: 100.0, film, operations) == 0)
    changes = bench_realism.operation_changes(lambda x: float(x.mean()) * 100, film, operations)
    assert changes.shape == (len(operations),)
    names = list(operations)
    assert changes[names.index("gamma 0.7 (brighter)")] > 0 > changes[names.index("gamma 1.4 (darker)")]


@pytest.mark.skipif(not (rsna_dev_dir() / "labels.csv").is_file(),
                    reason="real rsna-dev films not available (../shared/data/rsna-dev absent)")
def test_film_operations_part_prints_every_operation_real_against_synthetic(capsys):
    bench_realism.film_operations_part(2, 20261590)
    out = capsys.readouterr().out
    for name in bench_realism.film_operations():
        assert name in out
    assert "2 real training-split films" in out and "synthetic" in out and "x real)" in out


def test_sharpening_changes_touch_only_the_grown_region():
    film = _test_film()
    labels = np.zeros(film.shape, np.uint8)
    labels[60:200, 90:110] = 7  # the bar is "bone" 7
    sharpened = bench_realism.film_operations()[bench_realism.REGIONAL_OPERATION](film)
    seen = {}

    def read(x: np.ndarray) -> float:
        seen["film"] = x
        return float(x[130, 88:112].mean() * 100)  # a reader that looks at the bar's edges

    changes = bench_realism.sharpening_changes(read, film, labels, {"bar": [7], "absent": [9], "background": [0]})
    assert changes["absent"] == 0.0 and changes["bar"] != 0.0
    # The last region read is the background grown by 2 pixels: the bar's inside is left as it was.
    np.testing.assert_array_equal(seen["film"][100:160, 92:108], film[100:160, 92:108])
    bench_realism.sharpening_changes(read, film, labels, {"bar": [7]})
    grown = np.zeros(film.shape, bool)
    for k in range(3):  # 3 px at 512 rows is 1.5 at 256, rounded up: grown edge-wise by 2
        grown[58 + k:202 - k, 90 - k:110 + k] = True
    np.testing.assert_array_equal(seen["film"][grown], sharpened[grown])
    np.testing.assert_array_equal(seen["film"][~grown], film[~grown])


def test_ossicle_area_sizes_the_bright_bone_not_its_label():
    # Issue #22, "Young carpals grow sooner": on young real films the segmenter's carpal label runs into the cartilage
    # around the ossicle; the ossicle's own size must not follow the label.
    from boneage import anatomy

    def film(label_radius: float) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = np.mgrid[:200, :200]
        labels = np.zeros((200, 200), np.uint8)
        labels[20:120, 95:105] = anatomy.shaft_label("metacarpal_3")  # 100 px long
        from_centre = np.hypot(rows - 160, cols - 100)
        labels[from_centre <= label_radius] = anatomy.shaft_label("capitate")
        pixels = np.full((200, 200), 0.3) + 0.6 * (from_centre <= 10)
        return pixels, labels

    expected = 100 * np.pi * 10**2 / 100**2
    for label_radius in (11.0, 16.0):
        assert bench_realism.ossicle_area(*film(label_radius), "capitate") == pytest.approx(expected, rel=0.08)
    pixels, labels = film(11.0)
    assert np.isnan(bench_realism.ossicle_area(pixels, labels, "hamate"))
    assert np.isnan(bench_realism.ossicle_area(pixels, np.where(labels == anatomy.shaft_label("metacarpal_3"), 0,
                                                                 labels), "capitate"))
    with pytest.raises(ValueError, match="differ in shape"):
        bench_realism.ossicle_area(pixels[:100], labels, "capitate")


@pytest.mark.skipif(not (rsna_dev_dir() / "labels.csv").is_file(),
                    reason="real rsna-dev films not available (../shared/data/rsna-dev absent)")
def test_carpal_ossicles_part_prints_both_carpals_by_band(capsys):
    bench_realism.carpal_ossicles(3, 5)
    table = capsys.readouterr().out
    assert "carpal ossicles, 3 real training-split films" in table
    for bone in bench_realism.OSSICLE_BONES:
        cells = next(line for line in table.splitlines() if line.strip().startswith(bone)).split(bone, 1)[1]
        assert cells.count("/") == len(bench_realism.OSSICLE_BANDS), cells
        assert any(c[0].isdigit() for c in cells.split()), cells


def test_age_matched_films_take_the_nearest_film_of_the_hands_sex():
    real_ages = np.array([50.0, 60.0, 100.0, 190.0, 200.0])
    real_female = np.array([False, True, False, True, False])
    found = bench_realism.age_matched_films(np.array([58.0, 58.0, 195.0, 180.0]), np.array([False, True, True, False]),
                                            real_ages, real_female)
    # A boy of 58 months: the boys are 50, 100 and 200 -> 50; a girl of 58 -> 60; a girl of 195 -> 190; a boy of
    # 180 -> 200 (nearer than 100).
    assert found.tolist() == [0, 1, 3, 4]
    with pytest.raises(ValueError, match="no real film of the girls"):
        bench_realism.age_matched_films(np.array([50.0]), np.array([True]), real_ages[[0, 2]], real_female[[0, 2]])


@pytest.mark.skipif(not (rsna_dev_dir() / "labels.csv").is_file(),
                    reason="real rsna-dev films not available (../shared/data/rsna-dev absent)")
def test_real_readings_read_matched_training_films_with_their_sex(capsys):
    from boneage import datasets

    class Reader:  # records what it is given; every method reads 12 months over the film's own bone age
        def __init__(self, ages):
            self.ages, self.calls = ages, []

        def estimate(self, path, sex=None):
            from types import SimpleNamespace

            self.calls.append((str(path), sex))
            age = self.ages[str(path)] + 12.0
            reading = SimpleNamespace(available=True, age_months=age)
            return SimpleNamespace(**{m: reading for m in bench_realism.METHODS})

    dev = datasets.rsna_dev()
    train = dev[dev["split"] == "train"]
    reader = Reader(dict(zip(train["path"].astype(str), train["bone_age_months"].astype(float))))
    readings = bench_realism.real_readings(reader, np.array([30.0, 150.0]), np.array([False, True]))
    assert [sex for _, sex in reader.calls] == ["M", "F"]
    val = set(dev.loc[dev["split"] == "val", "path"].astype(str))
    assert not val & {p for p, _ in reader.calls}  # never a validation film
    assert readings["female"].tolist() == [False, True] and abs(readings["truth"][1] - 150.0) <= 3
    for m in bench_realism.METHODS:
        assert np.allclose(readings[m] - readings["truth"], 12.0)
    bench_realism.print_readings(512, readings, title="real films")
    assert "shipped models on 2 real films (MAE" in capsys.readouterr().out


def test_feature_swaps_credit_the_measurement_the_reader_uses():
    # A reader that reads age from "a.x" alone (months = 100 x a.x); "b.y" is ignored.
    synthetic = pd.DataFrame({"a.x": [1.0, 1.2], "a.z": [5.0, 5.0], "b.y": [0.0, 0.0], "only.synthetic": [1.0, 1.0]})
    ages = np.array([100.0, 140.0])
    real = pd.DataFrame({"a.x": [0.9, 1.1, 1.5, 3.0], "a.z": [1.0, 1.0, 1.0, 1.0], "b.y": [1.0, 1.0, 1.0, 1.0]})
    real_ages = np.array([95.0, 105.0, 140.0, 400.0])  # the last is far from both hands
    bias, groups, features = bench_realism.feature_swaps(lambda t: 100 * t["a.x"].to_numpy(float), synthetic, ages,
                                                         real, real_ages)
    assert bias == pytest.approx(-10.0)  # read 100 and 120 for 100 and 140
    # Swapped to 1.0 and 1.5 (the real films within 12 months): read 100 and 150, a bias of +5, 15 more.
    assert groups[0] == ("a", pytest.approx(15.0)) and dict(groups)["b"] == 0.0
    assert [g for g, _ in groups] == ["a", "b"]  # a column real films lack is left out
    name, change, synthetic_median, real_median = features[0]
    assert (name, change) == ("a.x", pytest.approx(15.0))
    assert synthetic_median == pytest.approx(1.1) and real_median == pytest.approx(1.25)
    assert dict((f[0], f[1]) for f in features)["a.z"] == 0.0
    # No real film near a hand: its swapped value is NaN, as a measurement the segmenter could not take.
    _, _, far = bench_realism.feature_swaps(lambda t: np.nan_to_num(t["a.x"].to_numpy(float)), synthetic,
                                            np.array([1000.0, 1000.0]), real, real_ages)
    assert far[0][3] != far[0][3]  # NaN median


def test_attribution_part_prints_bones_and_measurements(capsys, monkeypatch):
    # Real films stand in as a small table with fixed measurements: the part's own reading of synthetic hands (the
    # shipped segmenter and multi-step model) is what is tested, without measuring hundreds of films on a new machine.
    from boneage import datasets
    from boneage.measure import feature_names
    from boneage.training import multistep

    films = pd.DataFrame({"id": range(6), "path": "", "source": "rsna-dev", "split": ["train"] * 5 + ["val"],
                          "sex": ["M", "M", "M", "F", "M", "M"], "bone_age_months": [60, 70, 80, 70, 90, 75.0]})
    monkeypatch.setattr(datasets, "rsna_dev", lambda folder=None: films)
    measured: list[pd.DataFrame] = []

    def fixed_features(table, *args, **kwargs):
        measured.append(table)
        return pd.DataFrame(0.5, index=range(len(table)), columns=feature_names())

    monkeypatch.setattr(multistep, "film_features", fixed_features)
    bench_realism.multistep_attribution(3, 5, sex="M", ages=(60.0, 90.0), shown=4)
    assert list(measured[0]["id"]) == [0, 1, 2, 4]  # the training split's boys only
    out = capsys.readouterr().out
    assert "3 synthetic boys of 60-90 months" in out and "one bone's measurements at a time:" in out
    assert out.count("/") >= 4  # four measurements with their synthetic / real medians

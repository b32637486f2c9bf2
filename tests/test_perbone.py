"""The per-bone maturity method at inference: aligned crops, the consensus of the bones, loading.

Crops are cut from synthetic hands with their true label maps; the network is either a tiny
randomly initialised one (seeded: the plumbing) or a double that gives each region a fixed age
(the consensus), so no test depends on the shipped weights or their numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from boneage import anatomy, models
from boneage.perbone import (
    AGE_CENTRE,
    AGE_SCALE,
    CROP_SHAPE,
    MIN_RUS_BONES,
    TEST_TIME_VIEWS,
    BoneCrops,
    PerBoneEstimator,
    bone_crops,
    crop_network_inputs,
    crop_views,
    crops_from_reading,
    equalise_crops,
)
from boneage.networks import PerBoneNet
from boneage.synth import generate_hand

#: A calibration in the shipped format: no age-band bias map, plain 90% Laplace-ish factors.
CALIBRATION = {
    "model_version": "perbone-test",
    "sex_known": {"age_map": None, "film_factor": 1.645, "rus_factor": 1.645, "bone_factor": 1.645},
    "sex_unknown": {"age_map": None, "film_factor": 2.5, "rus_factor": 2.5, "bone_factor": 2.5},
}
#: Widths of the tiny network the tests build (the shipped one is (16, 32, 64, 128)).
TINY_WIDTHS = (4, 8, 8, 8)


class IdentityTransform:
    """Model grid = film grid (a synthetic hand's label map is already on the film's grid)."""

    def to_original(self, rows, cols):
        return np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)


class FixedBoneNet(torch.nn.Module):
    """Per-bone network double: every crop of a region gets that region's fixed age and scale.

    Args:
        ages: region -> age in months (regions not named: ``default``).
        scale_months: the Laplace scale given to every crop.
        default: age of the regions not in ``ages``.
    """

    def __init__(self, ages: dict[str, float] | None = None, scale_months: float = 6.0, default: float = 120.0) -> None:
        super().__init__()
        table = [((ages or {}).get(r, default) - AGE_CENTRE) / AGE_SCALE for r in anatomy.MATURITY_REGIONS]
        self.register_buffer("loc", torch.tensor(table, dtype=torch.float32))
        self.log_scale = float(np.log(scale_months / AGE_SCALE))

    def forward(self, crops, regions, sex_code):
        loc = self.loc[regions]
        return loc, torch.full_like(loc, self.log_scale)


def fixed_perbone(ages: dict[str, float] | None = None, scale_months: float = 6.0, default: float = 120.0) -> PerBoneEstimator:
    """A :class:`PerBoneEstimator` whose bones have the given ages."""
    return PerBoneEstimator(FixedBoneNet(ages, scale_months, default), json.loads(json.dumps(CALIBRATION)))


def tiny_perbone(seed: int = 0) -> PerBoneEstimator:
    """A tiny randomly initialised (seeded) :class:`PerBoneEstimator`."""
    torch.manual_seed(seed)
    return PerBoneEstimator(PerBoneNet(TINY_WIDTHS), json.loads(json.dumps(CALIBRATION)))


@dataclass
class OracleReading:
    """What :func:`crops_from_reading` reads from a :class:`boneage.segment.FilmReading`."""

    grid: object
    transform: object
    mirrored: bool | None = False
    finger_angle_deg: float | None = None

    def label_map(self) -> np.ndarray:
        """The label map on the film's grid (here the grid is the film's)."""
        return self.grid.label_map


@pytest.fixture(scope="module")
def hand():
    return generate_hand(5, 1, size=256, bone_age_months=120)


def _crops(hand, **kwargs) -> BoneCrops:
    return bone_crops(hand.image, hand.label_map, IdentityTransform(), **kwargs)


def all_present(images: np.ndarray | None = None) -> BoneCrops:
    """Crops of every region (contents irrelevant to a :class:`FixedBoneNet`)."""
    n = len(anatomy.MATURITY_REGIONS)
    images = np.full((n, *CROP_SHAPE), 128, np.uint8) if images is None else images
    return BoneCrops(images, np.ones(n, bool), np.ones(n, np.float32))


# ------------------------------------------------------------------------------------------------
# Crops
# ------------------------------------------------------------------------------------------------
def test_every_rus_bone_and_the_carpus_of_a_synthetic_hand_is_cropped(hand):
    crops = _crops(hand)
    assert crops.images.shape == (len(anatomy.MATURITY_REGIONS), *CROP_SHAPE) and crops.images.dtype == np.uint8
    assert crops.present.all(), dict(zip(anatomy.MATURITY_REGIONS, crops.present))
    for region, image in zip(anatomy.MATURITY_REGIONS, crops.images):
        assert image.std() > 10, f"{region}: crop is (almost) uniform"
    assert (crops.film_pixels_per_crop_pixel > 0).all()


@pytest.mark.parametrize("bone", anatomy.RUS_BONES)
def test_each_crop_has_the_epiphysis_at_the_top(hand, bone):
    # A film showing only this bone's epiphysis: its crop must be bright near the top row.
    film = (hand.label_map == anatomy.epiphysis_label(bone)).astype(np.float32)
    assert film.sum() > 0, "the 10-year-old synthetic hand has every RUS epiphysis ossified"
    image = bone_crops(film, hand.label_map, IdentityTransform()).images[anatomy.MATURITY_REGIONS.index(bone)]
    rows = np.arange(CROP_SHAPE[0])
    centroid = float((image.sum(axis=1) * rows).sum() / image.sum())
    assert centroid < CROP_SHAPE[0] / 3, f"{bone}: epiphysis at row {centroid:.0f} of {CROP_SHAPE[0]}"


def test_a_mirrored_reading_flips_every_crop_left_right(hand):
    plain, mirrored = _crops(hand), _crops(hand, mirrored=True)
    assert (mirrored.present == plain.present).all()
    assert np.abs(mirrored.images.astype(int) - plain.images[:, :, ::-1].astype(int)).max() <= 1
    assert not np.array_equal(mirrored.images, plain.images)  # a crop is not symmetric: the flip is real


@pytest.mark.parametrize("quarter_turns, finger_angle", [(1, 90.0), (2, 180.0), (3, -90.0)])
def test_a_turned_film_gives_the_same_crops(hand, quarter_turns, finger_angle):
    turned = bone_crops(np.rot90(hand.image, quarter_turns).copy(), np.rot90(hand.label_map, quarter_turns).copy(),
                        IdentityTransform(), finger_angle_deg=finger_angle)
    assert turned.present.all()
    assert np.abs(turned.images.astype(int) - _crops(hand).images.astype(int)).mean() < 2


def test_a_missing_bone_has_no_crop(hand):
    labels = hand.label_map.copy()
    labels[np.isin(labels, anatomy.bone_labels("distal_phalanx_5"))] = 0
    crops = bone_crops(hand.image, labels, IdentityTransform())
    i = anatomy.MATURITY_REGIONS.index("distal_phalanx_5")
    assert not crops.present[i] and not crops.images[i].any()
    assert crops.present.sum() == len(anatomy.MATURITY_REGIONS) - 1


def test_crops_from_reading_uses_the_readings_grid_transform_and_orientation(hand):
    from types import SimpleNamespace

    reading = OracleReading(SimpleNamespace(label_map=hand.label_map), IdentityTransform(), mirrored=True)
    assert np.array_equal(crops_from_reading(hand.image, reading).images, _crops(hand, mirrored=True).images)


# ------------------------------------------------------------------------------------------------
# Estimator and consensus
# ------------------------------------------------------------------------------------------------
def test_a_tiny_random_network_gives_a_seeded_estimate_with_an_interval(hand):
    first = tiny_perbone(seed=3).predict_crops(_crops(hand), "F")
    again = tiny_perbone(seed=3).predict_crops(_crops(hand), "F")
    assert first.available and first.age_months == pytest.approx(again.age_months)
    assert 0 <= first.lower_90 <= first.age_months <= first.upper_90 <= 240
    assert set(first.bones) == set(anatomy.MATURITY_REGIONS)
    assert first.sex_used == "F" and first.model_version == "perbone-test"


def test_consensus_drops_an_outlier_bone_and_says_so():
    est = fixed_perbone({"middle_phalanx_3": 190.0}).predict_crops(all_present(), "M")
    assert est.age_months == pytest.approx(120.0, abs=0.01)  # the outlier does not move the consensus
    assert est.dropped == ["middle_phalanx_3"]
    assert not est.bones["middle_phalanx_3"].used and est.bones["middle_phalanx_3"].age_months == pytest.approx(190.0, abs=0.01)
    assert anatomy.display_name("middle_phalanx_3") in est.note and "disagree" in est.note


def test_rus_and_carpal_ages_are_reported_apart():
    est = fixed_perbone({anatomy.CARPAL_REGION: 96.0}).predict_crops(all_present(), "F")
    assert est.rus_age_months == pytest.approx(120.0, abs=0.01)
    assert est.carpal_age_months == pytest.approx(96.0, abs=0.01)
    assert est.carpal_lower_90 < 96.0 < est.carpal_upper_90
    assert anatomy.CARPAL_REGION in est.dropped  # 24 months from the RUS bones at a 6-month scale


def test_the_method_is_withheld_with_fewer_than_seven_rus_bones():
    crops = all_present()
    crops.present[MIN_RUS_BONES - 1: len(anatomy.RUS_BONES)] = False  # six RUS bones left (and the carpus)
    est = fixed_perbone().predict_crops(crops, "F")
    assert not est.available and est.age_months is None
    assert "withheld" in est.note and f"only {MIN_RUS_BONES - 1} of 13" in est.note


def test_the_film_age_is_read_through_its_age_map_and_the_rus_age_is_not():
    from boneage.agemap import fit_age_map

    rng = np.random.default_rng(0)
    y = rng.uniform(20, 220, 300)
    age_map = fit_age_map(y, 130 + 0.8 * (y - 130) + rng.normal(0, 5, len(y)), degree=1)
    plain = fixed_perbone(default=80.0).predict_crops(all_present(), "F")
    mapped_estimator = fixed_perbone(default=80.0)
    mapped_estimator.calibration["sex_known"]["age_map"] = age_map.to_dict()
    mapped = mapped_estimator.predict_crops(all_present(), "F")
    assert mapped.age_months == pytest.approx(float(age_map.apply(plain.age_months)), abs=1e-3) and mapped.age_months < 80.0
    assert (mapped.lower_90, mapped.upper_90) == pytest.approx((float(age_map.apply(plain.lower_90)), float(age_map.apply(plain.upper_90))), abs=1e-3)
    assert mapped.rus_age_months == plain.rus_age_months


def test_sex_unknown_uses_its_own_wider_calibration():
    known = fixed_perbone().predict_crops(all_present(), "F")
    unknown = fixed_perbone().predict_crops(all_present(), None)
    assert unknown.sex_used is None and "sex unknown" in unknown.note
    assert unknown.upper_90 - unknown.lower_90 > known.upper_90 - known.lower_90


def test_registry_entry_loads_the_weights_and_calibration(tmp_path, hand):
    entry = models.get("perbone")
    assert (entry.version, entry.weights_file, entry.folder.name) == ("perbone-4", "perbone.pt", "perbone")
    est = tiny_perbone(seed=2)
    state = {k: v.half() for k, v in est.network.state_dict().items()}  # fp16 on disk, as shipped
    torch.save({"state_dict": state, "widths": list(TINY_WIDTHS), "model_version": "perbone-test"}, tmp_path / "perbone.pt")
    (tmp_path / "calibration.json").write_text(json.dumps(CALIBRATION))
    loaded = entry.resolve_loader()(tmp_path / "perbone.pt")
    assert isinstance(loaded, PerBoneEstimator) and loaded.model_version == "perbone-test"
    crops = _crops(hand)
    assert loaded.predict_crops(crops, "M").age_months == pytest.approx(est.predict_crops(crops, "M").age_months, abs=1.0)
    with pytest.raises(FileNotFoundError):
        PerBoneEstimator.load(tmp_path / "nothing-here")


# ------------------------------------------------------------------------------------------------
# Odd films and label maps (review): never raise, epiphysis up, strays ignored, blank crops absent
# ------------------------------------------------------------------------------------------------
def _without(labels: np.ndarray, bones) -> np.ndarray:
    out = labels.copy()
    for bone in bones:
        out[np.isin(out, anatomy.bone_labels(bone))] = 0
    return out


def _epiphysis_row(labels: np.ndarray, bone: str, **kwargs) -> float | None:
    """Row (of ``CROP_SHAPE[0]``) of the centroid of ``bone``'s epiphysis in its crop, cropping the
    label map itself (epiphysis pixels bright) so the truth lands where the crop puts it."""
    film = (labels == anatomy.epiphysis_label(bone)).astype(np.float32)
    crops = bone_crops(film, labels, IdentityTransform(), **kwargs)
    image = crops.images[anatomy.MATURITY_REGIONS.index(bone)].astype(float)
    if image.sum() == 0:
        return None
    return float((image.sum(axis=1) * np.arange(CROP_SHAPE[0])).sum() / image.sum())


def _correlations(a: BoneCrops, b: BoneCrops) -> np.ndarray:
    return np.array([np.corrcoef(x.ravel().astype(float), y.ravel().astype(float))[0, 1]
                     for x, y in zip(a.images, b.images)])


def test_a_stray_pixel_of_a_bone_elsewhere_changes_no_crop(hand):
    plain = _crops(hand)
    for bone in ("proximal_phalanx_3", "metacarpal_3", "distal_phalanx_5", "radius"):
        for row, col in ((2, 2), (hand.label_map.shape[0] - 3, hand.label_map.shape[1] - 3)):
            labels = hand.label_map.copy()
            labels[row, col] = anatomy.epiphysis_label(bone)
            stray = bone_crops(hand.image, labels, IdentityTransform())
            assert np.array_equal(stray.images, plain.images), (bone, row, col)


def test_a_readings_cleaned_label_map_is_taken_as_it_is():
    # The segmenter's map has been through clean_label_map: the stray rule must leave it alone
    # (the crops the network was trained on are cut from such maps).
    from boneage.perbone import _without_strays
    from boneage.segment import clean_label_map

    for seed, age in ((1, 30), (2, 60), (5, 120)):
        labels = clean_label_map(generate_hand(seed, 2, size=256, bone_age_months=age).label_map)
        for bone in anatomy.BONES:
            mask = np.isin(labels, anatomy.bone_labels(bone))
            if mask.any():
                assert np.array_equal(_without_strays(mask), mask), (seed, bone)


def test_a_young_childs_separate_small_epiphysis_is_not_a_stray():
    from boneage.perbone import _without_strays

    labels = generate_hand(1, 2, size=384, bone_age_months=30).label_map  # MC3 epiphysis 33 px, apart from the shaft
    mask = np.isin(labels, anatomy.bone_labels("metacarpal_3"))
    assert np.array_equal(_without_strays(mask), mask)


def test_a_lone_pixel_or_an_epiphysis_without_its_shaft_gets_no_crop(hand):
    i = anatomy.MATURITY_REGIONS.index("proximal_phalanx_3")
    labels = _without(hand.label_map, ["proximal_phalanx_3"])
    labels[100, 100] = anatomy.shaft_label("proximal_phalanx_3")
    assert not bone_crops(hand.image, labels, IdentityTransform()).present[i]
    # The epiphysis alone (shaft not found) has no long axis to align: no crop, not a sideways one.
    labels = hand.label_map.copy()
    labels[labels == anatomy.shaft_label("proximal_phalanx_3")] = 0
    assert not bone_crops(hand.image, labels, IdentityTransform()).present[i]


@pytest.mark.parametrize("seed, age", [(5, 120), (1, 30), (2, 200)])
def test_a_forearm_cut_short_by_the_collimation_keeps_its_epiphysis_at_the_top(seed, age):
    labels = generate_hand(seed, 1, size=512, bone_age_months=age).label_map.copy()
    top = np.nonzero(np.isin(labels, anatomy.bone_labels("radius")))[0].min()
    below = labels[top + 30:]  # about a third of a metacarpal's length of forearm left in view
    below[np.isin(below, anatomy.bone_labels("radius") + anatomy.bone_labels("ulna"))] = 0
    row = _epiphysis_row(labels, "radius")
    assert row is not None and row < CROP_SHAPE[0] / 3, row


def test_partial_hands_crop_what_is_there_and_never_raise(hand):
    regions = anatomy.MATURITY_REGIONS
    cases = {
        "no metacarpal 3": (["metacarpal_3"], {"metacarpal_3"}),
        "no forearm": (list(anatomy.FOREARM), {"radius", "ulna", anatomy.CARPAL_REGION}),
        "no metacarpals": (list(anatomy.METACARPALS), {"radius", "ulna", "metacarpal_1", "metacarpal_3",
                                                       "metacarpal_5", anatomy.CARPAL_REGION}),
        "nothing": (list(anatomy.BONES), set(regions)),
    }
    for name, (dropped, absent) in cases.items():
        labels = _without(hand.label_map, dropped)
        crops = bone_crops(hand.image, labels, IdentityTransform())
        assert {r for r, p in zip(regions, crops.present) if not p} == absent, name
        for bone in anatomy.RUS_BONES:
            if crops.present[regions.index(bone)]:
                row = _epiphysis_row(labels, bone)
                assert row is not None and row < CROP_SHAPE[0] / 3, (name, bone, row)


def test_without_the_third_metacarpal_the_forearm_keeps_its_scale():
    # The scale unit falls back on the other metacarpals, each taken as the third's length.
    i = anatomy.MATURITY_REGIONS.index("radius")
    ratios = []
    for index, age in enumerate((40, 90, 150, 200)):
        h = generate_hand(3, index, size=384, bone_age_months=age)
        full = bone_crops(h.image, h.label_map, IdentityTransform()).film_pixels_per_crop_pixel[i]
        cut = _without(h.label_map, ["metacarpal_3"])
        part = bone_crops(h.image, cut, IdentityTransform()).film_pixels_per_crop_pixel[i]
        ratios.append(part / full)
    assert abs(np.mean(ratios) - 1.0) < 0.05, ratios


@pytest.mark.parametrize("quarter_turns, finger_angle", [(1, 90.0), (2, 180.0)])
def test_fingers_alone_turned_are_aligned_by_their_own_rays(hand, quarter_turns, finger_angle):
    # No wrist, no metacarpals, and no finger angle from the reading (it needs the third
    # metacarpal): the fingers' bones, one after the other, tell which way is distal.
    labels = _without(hand.label_map, list(anatomy.METACARPALS) + list(anatomy.FOREARM) + list(anatomy.CARPALS))
    upright = bone_crops(hand.image, labels, IdentityTransform())
    turned = bone_crops(np.rot90(hand.image, quarter_turns).copy(), np.rot90(labels, quarter_turns).copy(),
                        IdentityTransform(), finger_angle_deg=None)
    assert (turned.present == upright.present).all() and upright.present.sum() == 8
    assert np.abs(turned.images.astype(int) - upright.images.astype(int)).mean() < 2


def test_a_blank_or_off_film_crop_is_absent_not_a_black_image(hand):
    regions = anatomy.MATURITY_REGIONS
    film = hand.image.copy()
    film[: hand.image.shape[0] // 3] = 0.5  # the fingertips under a uniform patch
    crops = bone_crops(film, hand.label_map, IdentityTransform())
    assert not crops.present[regions.index("distal_phalanx_3")]
    assert all(image.any() for image, present in zip(crops.images, crops.present) if present)
    assert not bone_crops(np.full_like(hand.image, 0.3), hand.label_map, IdentityTransform()).present.any()

    class FarAway:  # a transform that puts every bone off the film
        def to_original(self, rows, cols):
            return np.asarray(rows, float) + 10_000.0, np.asarray(cols, float) + 10_000.0

    assert not bone_crops(hand.image, hand.label_map, FarAway()).present.any()


def test_tiny_and_empty_inputs_never_raise():
    tiny = generate_hand(5, 1, size=60, bone_age_months=120)
    assert tiny.image.shape[0] == 60
    crops = bone_crops(tiny.image, tiny.label_map, IdentityTransform())
    assert crops.images.shape == (len(anatomy.MATURITY_REGIONS), *CROP_SHAPE)
    assert all(image.any() for image, present in zip(crops.images, crops.present) if present)
    empty = bone_crops(tiny.image, np.zeros_like(tiny.label_map), IdentityTransform())
    assert not empty.present.any() and not empty.images.any()


class Scaled:
    """Model grid -> film of ``k`` times its size."""

    def __init__(self, k: float) -> None:
        self.k = k

    def to_original(self, rows, cols):
        return (np.asarray(rows, float) + 0.5) * self.k - 0.5, (np.asarray(cols, float) + 0.5) * self.k - 0.5


def test_the_same_film_at_half_size_or_mirrored_gives_the_same_crops():
    from scipy import ndimage

    h = generate_hand(5, 1, size=512, bone_age_months=120)
    full = bone_crops(h.image, h.label_map, IdentityTransform())
    half = bone_crops(ndimage.zoom(h.image, 0.5, order=1), h.label_map[::2, ::2], IdentityTransform())
    assert (half.present == full.present).all() and _correlations(full, half).min() > 0.93
    same_map = bone_crops(ndimage.zoom(h.image, 0.5, order=1), h.label_map, Scaled(0.5))
    assert _correlations(full, same_map).min() > 0.9
    mirrored = bone_crops(h.image[:, ::-1].copy(), h.label_map[:, ::-1].copy(), IdentityTransform(), mirrored=True)
    assert np.abs(mirrored.images.astype(int) - full.images.astype(int)).max() <= 1


def test_a_huge_film_is_cropped_from_patches_not_copies():
    import time
    import tracemalloc

    h = generate_hand(5, 1, size=512, bone_age_months=120)
    k = 14  # 7,168 x 5,474 px, the model grid's 512 x 391 read from it
    film = np.repeat(np.repeat((h.image * 255).astype(np.uint8), k, axis=0), k, axis=1)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        crops = bone_crops(film, h.label_map, Scaled(k))
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert crops.present.all()
    assert peak < film.nbytes, f"crop stage peaked at {peak / 1e6:.0f} MB for a {film.nbytes / 1e6:.0f} MB film"
    assert seconds < 20, seconds
    assert _correlations(bone_crops(h.image, h.label_map, IdentityTransform()), crops).min() > 0.9


# ------------------------------------------------------------------------------------------------
# Consensus on odd inputs
# ------------------------------------------------------------------------------------------------
def test_consensus_of_no_bone_one_bone_and_equal_bones():
    from boneage.perbone import consensus

    age, scale, kept = consensus(np.full(5, np.nan), np.full(5, np.nan), np.zeros(5, bool))
    assert np.isnan(age) and np.isnan(scale) and not kept.any()
    assert consensus(np.array([100.0, np.nan]), np.array([5.0, np.nan]), np.array([True, False]))[:2] == (100.0, 5.0)
    age, scale, kept = consensus(np.full(5, 100.0), np.full(5, 5.0), np.ones(5, bool))
    assert (age, scale) == (pytest.approx(100.0), 5.0) and kept.all()


def test_consensus_ignores_huge_outliers_and_never_drops_the_majority():
    from boneage.perbone import consensus

    age, _, kept = consensus(np.array([100, 101, 99, 1e6, -1e6]), np.full(5, 5.0), np.ones(5, bool))
    assert age == pytest.approx(100.0) and kept.tolist() == [True, True, True, False, False]
    # An even split is not settled by taking the lower half: both halves are kept.
    age, _, kept = consensus(np.array([100.0, 100.0, 200.0, 200.0]), np.full(4, 5.0), np.ones(4, bool))
    assert age == pytest.approx(150.0) and kept.all()


def test_consensus_with_zero_negative_or_missing_scales():
    from boneage.perbone import MIN_SCALE_MONTHS, consensus

    ages = np.array([100.0, 110.0, 120.0])
    with np.errstate(all="raise"):  # no division by zero
        age, scale, kept = consensus(ages, np.zeros(3), np.ones(3, bool))
    assert age == pytest.approx(110.0) and scale == pytest.approx(MIN_SCALE_MONTHS) and kept.all()
    for bad in (-5.0, np.nan, np.inf):  # a bone without a valid scale is not used
        age, scale, kept = consensus(ages, np.array([bad, 5.0, 5.0]), np.ones(3, bool))
        assert age == pytest.approx(115.0) and scale == pytest.approx(5.0) and kept.tolist() == [False, True, True]
    age, _, kept = consensus(np.array([100.0, np.inf, 120.0]), np.full(3, 5.0), np.ones(3, bool))
    assert age == pytest.approx(110.0) and not kept[1]


class NaNScaleNet(FixedBoneNet):
    """Every crop's age is fine, but some regions' scales come out NaN."""

    def __init__(self, nan_regions: int) -> None:
        super().__init__()
        self.nan_regions = nan_regions

    def forward(self, crops, regions, sex_code):
        loc, log_scale = super().forward(crops, regions, sex_code)
        return loc, torch.where(regions < self.nan_regions, torch.full_like(log_scale, float("nan")), log_scale)


def test_a_bone_whose_scale_is_nan_is_not_counted():
    est = PerBoneEstimator(NaNScaleNet(len(anatomy.RUS_BONES) - MIN_RUS_BONES + 1), json.loads(json.dumps(CALIBRATION)))
    got = est.predict_crops(all_present(), "F")
    assert not got.available and f"only {MIN_RUS_BONES - 1} of 13" in got.note
    ok = PerBoneEstimator(NaNScaleNet(2), json.loads(json.dumps(CALIBRATION))).predict_crops(all_present(), "F")
    assert ok.available and np.isfinite(ok.age_months) and np.isfinite(ok.lower_90)


class SexShiftedBoneNet(FixedBoneNet):
    """A :class:`FixedBoneNet` whose boys read ``shift`` months older than its girls."""

    def __init__(self, shift: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shift = shift / AGE_SCALE

    def forward(self, crops, regions, sex_code):
        loc, log_scale = super().forward(crops, regions, sex_code)
        return loc + 0.5 * self.shift * sex_code, log_scale


def test_an_uncertain_sex_weighs_every_age_read_as_a_boy_and_as_a_girl():
    est = PerBoneEstimator(SexShiftedBoneNet(12.0, default=120.0), json.loads(json.dumps(CALIBRATION)))
    boy, girl = est.predict_crops(all_present(), "M"), est.predict_crops(all_present(), "F")
    assert boy.age_months == pytest.approx(girl.age_months + 12.0, abs=1e-3)
    mixed = est.predict_crops(all_present(), None, male_probability=0.25)
    assert mixed.age_months == pytest.approx(0.25 * boy.age_months + 0.75 * girl.age_months, abs=1e-3)
    assert (mixed.lower_90, mixed.upper_90) == (pytest.approx(girl.lower_90), pytest.approx(boy.upper_90))
    assert mixed.rus_age_months == pytest.approx(0.25 * boy.rus_age_months + 0.75 * girl.rus_age_months, abs=1e-3)
    assert mixed.carpal_age_months == pytest.approx(0.25 * boy.carpal_age_months + 0.75 * girl.carpal_age_months,
                                                    abs=1e-3)
    assert set(mixed.bones) == set(boy.bones) and all(b.used for b in mixed.bones.values())
    assert mixed.sex_used is None and "male probability (25%)" in mixed.note
    # Without a probability the sex-agnostic reading is unchanged.
    assert est.predict_crops(all_present(), None).age_months == pytest.approx(120.0, abs=1e-3)


# ------------------------------------------------------------------------------------------------
# Crop grey levels: as cut, or equalised
# ------------------------------------------------------------------------------------------------
def test_equalised_crops_are_flat_keep_the_order_and_ignore_a_grey_level_curve():
    rng = np.random.default_rng(0)
    crops = np.clip(rng.normal(180, 30, (3, 2, *CROP_SHAPE)), 0, 255).astype(np.uint8)  # bright, narrow
    out = equalise_crops(crops)
    assert out.shape == crops.shape and out.dtype == np.uint8
    # Each crop on its own: a flat distribution over 0-255, whatever the input's.
    for crop in out.reshape(-1, *CROP_SHAPE):
        assert np.quantile(crop, [0.25, 0.5, 0.75]) == pytest.approx([64, 128, 191], abs=6)
    # Grey-level order kept: a brighter input pixel is never darker after.
    a, b = crops.reshape(6, -1), out.reshape(6, -1)
    order = np.argsort(a[0], kind="stable")
    assert np.all(np.diff(b[0][order].astype(int)) >= 0)
    # An increasing curve (gamma, contrast) changes nothing.
    curved = np.round(255 * (crops / 255.0) ** 1.7).astype(np.uint8)
    assert np.abs(equalise_crops(curved).astype(int) - out).max() <= 3
    # A constant crop stays one grey; empty input and non-uint8 input.
    assert np.unique(equalise_crops(np.full((1, *CROP_SHAPE), 7, np.uint8))).size == 1
    assert equalise_crops(np.zeros((0, *CROP_SHAPE), np.uint8)).shape == (0, *CROP_SHAPE)
    assert equalise_crops(np.zeros((3, 0, 5), np.uint8)).shape == (3, 0, 5)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        equalise_crops(np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        equalise_crops(crops.astype(np.float32))


class RecordingBoneNet(FixedBoneNet):
    """:class:`FixedBoneNet` that keeps the last input it was given."""

    def forward(self, crops, regions, sex_code):
        self.seen = crops.detach().clone()
        return super().forward(crops, regions, sex_code)


def test_the_estimator_feeds_the_grey_levels_its_calibration_names():
    rng = np.random.default_rng(1)
    crops = all_present(np.clip(rng.normal(200, 20, (len(anatomy.MATURITY_REGIONS), *CROP_SHAPE)), 0, 255).astype(np.uint8))
    seen = {}
    for intensity in (None, "window", "equalised"):
        calibration = json.loads(json.dumps(CALIBRATION))
        if intensity:
            calibration["crop_intensity"] = intensity
        net = RecordingBoneNet()
        PerBoneEstimator(net, calibration).predict_crops(crops, "F")
        seen[intensity] = net.seen.numpy()
    assert np.array_equal(seen[None], seen["window"])  # a model folder without the key: as cut
    assert seen["window"].mean() > 0.7 and abs(seen["equalised"].mean() - 0.5) < 0.02
    assert np.allclose(crop_network_inputs(crops, np.arange(3), "equalised")[:, 0], equalise_crops(crops.images[:3]) / 255.0)
    bad = json.loads(json.dumps(CALIBRATION))
    bad["crop_intensity"] = "histogram"
    with pytest.raises(ValueError, match="unknown crop intensity 'histogram'"):
        PerBoneEstimator(FixedBoneNet(), bad).predict_crops(crops, "F")


class BrightnessBoneNet(torch.nn.Module):
    """Per-bone network double: a crop's age is its mean grey level's, its scale the mean of its left half."""

    def forward(self, crops, regions, sex_code):
        left = crops[..., : crops.shape[-1] // 2].mean(dim=(1, 2, 3))
        return crops.mean(dim=(1, 2, 3)), torch.log(0.1 + left)


def test_crop_views_are_training_augmentations_map():
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    x = rng.random((5, 1, *CROP_SHAPE)).astype(np.float32)
    views = crop_views(x)
    assert views.shape == (len(TEST_TIME_VIEWS) * 5, 1, *CROP_SHAPE) and views.dtype == np.float32
    for k, (turn, mirrored) in enumerate(TEST_TIME_VIEWS):
        # affine_grid's matrix as boneage.training.perbone.augment_crops builds it (zoom 1, aspect 1).
        a, sign = np.radians(turn), -1.0 if mirrored else 1.0
        theta = torch.tensor([[np.cos(a) * sign, -np.sin(a), 0.0], [np.sin(a) * sign, np.cos(a), 0.0]],
                             dtype=torch.float32).expand(5, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        expected = F.grid_sample(torch.from_numpy(x), grid, padding_mode="border", align_corners=False).numpy()
        np.testing.assert_allclose(views[5 * k: 5 * k + 5], expected, atol=1e-5)
    assert np.array_equal(crop_views(x, ((0.0, False),)), x)
    assert np.array_equal(crop_views(x, ((0.0, True),)), x[..., ::-1])
    assert not np.allclose(crop_views(x, ((6.0, False),)), x, atol=0.05)


def test_the_estimator_averages_the_views_its_calibration_names():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (len(anatomy.MATURITY_REGIONS), *CROP_SHAPE)).astype(np.uint8)
    images[..., : CROP_SHAPE[1] // 2] //= 4  # the left half dark: mirroring changes the left half's mean
    crops = all_present(images)
    plain = PerBoneEstimator(BrightnessBoneNet(), json.loads(json.dumps(CALIBRATION)))
    viewed_calibration = json.loads(json.dumps(CALIBRATION))
    viewed_calibration["test_time_views"] = [list(v) for v in TEST_TIME_VIEWS]
    viewed = PerBoneEstimator(BrightnessBoneNet(), viewed_calibration)
    assert plain.views == ((0.0, False),) and viewed.views == TEST_TIME_VIEWS  # without the key: as cut

    inputs = crop_network_inputs(crops, np.arange(len(images)))
    stacked = crop_views(inputs).reshape(len(TEST_TIME_VIEWS), len(images), -1)
    halves = crop_views(inputs)[..., : CROP_SHAPE[1] // 2].reshape(len(TEST_TIME_VIEWS), len(images), -1)
    ages, scales = viewed.bone_ages(crops, "F")
    np.testing.assert_allclose(ages, stacked.mean(axis=2).mean(axis=0) * AGE_SCALE + AGE_CENTRE, rtol=1e-5)
    np.testing.assert_allclose(scales, (0.1 + halves.mean(axis=2)).mean(axis=0) * AGE_SCALE, rtol=1e-5)
    plain_ages, plain_scales = plain.bone_ages(crops, "F")
    np.testing.assert_allclose(plain_ages, inputs.mean(axis=(1, 2, 3)) * AGE_SCALE + AGE_CENTRE, rtol=1e-5)
    assert not np.allclose(plain_scales, scales)

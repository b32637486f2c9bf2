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
    BoneCrops,
    PerBoneEstimator,
    PerBoneNet,
    bone_crops,
    crops_from_reading,
)
from boneage.synth import generate_hand

#: A calibration in the shipped format: the identity bias, plain 90% Laplace-ish factors.
CALIBRATION = {
    "model_version": "perbone-test",
    "sex_known": {"bias": [0.0, 1.0], "film_factor": 1.645, "rus_factor": 1.645, "bone_factor": 1.645},
    "sex_unknown": {"bias": [0.0, 1.0], "film_factor": 2.5, "rus_factor": 2.5, "bone_factor": 2.5},
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


def test_sex_unknown_uses_its_own_wider_calibration():
    known = fixed_perbone().predict_crops(all_present(), "F")
    unknown = fixed_perbone().predict_crops(all_present(), None)
    assert unknown.sex_used is None and "sex unknown" in unknown.note
    assert unknown.upper_90 - unknown.lower_90 > known.upper_90 - known.lower_90


def test_registry_entry_loads_the_weights_and_calibration(tmp_path, hand):
    entry = models.get("perbone")
    assert (entry.version, entry.weights_file, entry.folder.name) == ("perbone-1", "perbone.pt", "perbone")
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

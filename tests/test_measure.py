"""Measurements on constructed label maps with known geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.draw import polygon

from boneage import anatomy
from boneage.measure import feature_names, measure


def _rect(labels, centre, length, width, angle_deg, label):
    """Paint a rotated rectangle; angle 0 = long side along rows (vertical)."""
    a = math.radians(angle_deg)
    u = np.array([math.cos(a), math.sin(a)])  # along (row, col)
    v = np.array([-u[1], u[0]])
    c = np.asarray(centre, float)
    corners = [c + su * length / 2 * u + sv * width / 2 * v for su, sv in ((-1, -1), (-1, 1), (1, 1), (1, -1))]
    rr, cc = polygon([p[0] for p in corners], [p[1] for p in corners], labels.shape)
    labels[rr, cc] = label
    return u


def _bone(labels, bone, centre, shaft_len, width, angle, epi_len=0.0, epi_width=None, gap=2.0):
    """A shaft with its epiphysis cap at the +axis end, separated by ``gap`` px (0 = fused)."""
    u = _rect(labels, centre, shaft_len, width, angle, anatomy.shaft_label(bone))
    if epi_len:
        epi_centre = np.asarray(centre, float) + u * (shaft_len / 2 + gap + epi_len / 2)
        _rect(labels, epi_centre, epi_len, epi_width or width, angle, anatomy.epiphysis_label(bone))


@pytest.mark.parametrize("angle", [0, 25, -40, 90])
def test_length_width_and_ratio_are_rotation_invariant(angle):
    labels = np.zeros((300, 300), np.uint8)
    _bone(labels, "metacarpal_3", (150, 150), 100, 16, angle, epi_len=10, epi_width=12, gap=3)
    m = measure(labels).bones["metacarpal_3"]
    assert m.present and m.plausible, m.flags
    assert m.length_px == pytest.approx(100 + 3 + 10, abs=2.5)
    assert m.width_px == pytest.approx(16, abs=1.5)
    assert m.epiphysis_present and m.epiphysis_ratio == pytest.approx(12 / 16, abs=0.1)
    assert m.fusion_contact == 0.0 and m.fused is False


def test_fused_epiphysis_is_detected():
    labels = np.zeros((200, 200), np.uint8)
    _bone(labels, "radius", (100, 100), 100, 20, 0, epi_len=12, epi_width=20, gap=0)
    m = measure(labels).bones["radius"]
    assert m.fused is True and m.fusion_contact > 0.8


def test_calibrated_lengths_use_the_spacing_along_the_axis():
    labels = np.zeros((300, 300), np.uint8)
    _bone(labels, "proximal_phalanx_2", (150, 150), 80, 12, 0)  # along rows
    _bone(labels, "proximal_phalanx_3", (150, 60), 80, 12, 90)  # along cols
    m = measure(labels, spacing_mm=(0.2, 0.5))
    assert m.bones["proximal_phalanx_2"].length_mm == pytest.approx(80 * 0.2, rel=0.03)
    assert m.bones["proximal_phalanx_3"].length_mm == pytest.approx(80 * 0.5, rel=0.03)
    assert measure(labels).bones["proximal_phalanx_2"].length_mm is None


def test_absent_border_and_fragmented_bones_are_flagged():
    labels = np.zeros((200, 200), np.uint8)
    _bone(labels, "ulna", (40, 100), 100, 14, 0)  # runs off the top edge
    _bone(labels, "metacarpal_2", (120, 50), 60, 10, 0)
    _bone(labels, "distal_phalanx_2", (190, 150), 30, 8, 0)  # a fingertip cut by the bottom edge
    labels[118:122, 40:60] = 0  # cut the shaft in two
    result = measure(labels)
    # A forearm bone off the film keeps its maturity signs; only its length is incomplete.
    assert result.bones["ulna"].plausible and not result.bones["ulna"].length_complete
    assert math.isnan(result.features()["ulna.length_rel"])
    assert "fragmented" in result.bones["metacarpal_2"].flags
    assert "touches_border" in result.bones["distal_phalanx_2"].flags and not result.bones["distal_phalanx_2"].plausible
    assert result.bones["capitate"].flags == ["absent"] and not result.bones["capitate"].present


def test_a_small_stray_piece_is_dropped_not_measured():
    labels = np.zeros((300, 300), np.uint8)
    _bone(labels, "proximal_phalanx_3", (150, 150), 80, 12, 0)
    # A few pixels of a neighbour given this bone's label, beyond its end along the axis.
    _rect(labels, (215, 150), 10, 10, 0, anatomy.shaft_label("proximal_phalanx_3"))
    m = measure(labels).bones["proximal_phalanx_3"]
    assert m.plausible, m.flags
    assert m.length_px == pytest.approx(80, abs=2) and m.pieces_dropped == 1
    # A second piece too large to be a stray fragment: the shaft is flagged, not guessed.
    _rect(labels, (240, 150), 40, 12, 0, anatomy.shaft_label("proximal_phalanx_3"))
    m = measure(labels).bones["proximal_phalanx_3"]
    assert "fragmented" in m.flags and not m.plausible


def test_epiphysis_pieces_at_the_wrong_end_belong_to_the_neighbour():
    labels = np.zeros((300, 300), np.uint8)
    # A proximal phalanx pointing up the film (wrist at the bottom): its epiphysis is at its base.
    _bone(labels, "proximal_phalanx_3", (150, 150), 80, 12, 0, epi_len=6, epi_width=12, gap=2)
    # The middle phalanx's base epiphysis, just above this bone's head, mislabelled as its own.
    _rect(labels, (105, 150), 6, 12, 0, anatomy.epiphysis_label("proximal_phalanx_3"))
    unoriented = measure(labels).bones["proximal_phalanx_3"]
    assert "epiphysis_fragmented" in unoriented.flags  # no wrist to tell the ends apart
    _rect(labels, (280, 150), 20, 20, 0, anatomy.shaft_label("capitate"))
    m = measure(labels).bones["proximal_phalanx_3"]
    assert m.plausible, m.flags
    assert m.length_px == pytest.approx(80 + 2 + 6, abs=2.5) and m.pieces_dropped == 1
    assert m.epiphysis_ratio == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("bone, epiphysis_row, stray_row", [
    ("radius", 105, 195),  # distal epiphysis: the end facing the carpus (above)
    ("metacarpal_3", 195, 105),  # head: the end away from the carpus (below)
])
def test_epiphysis_end_is_read_from_the_carpus(bone, epiphysis_row, stray_row):
    labels = np.zeros((300, 300), np.uint8)
    _rect(labels, (150, 150), 80, 12, 0, anatomy.shaft_label(bone))
    _rect(labels, (epiphysis_row, 150), 6, 12, 0, anatomy.epiphysis_label(bone))
    _rect(labels, (stray_row, 150), 4, 6, 0, anatomy.epiphysis_label(bone))
    _rect(labels, (30, 150), 20, 20, 0, anatomy.shaft_label("capitate"))
    m = measure(labels).bones[bone]
    assert m.plausible, m.flags
    assert m.pieces_dropped == 1 and m.epiphysis_ratio == pytest.approx(1.0, abs=0.15)


def test_carpals_and_scale_free_features():
    labels = np.zeros((300, 300), np.uint8)
    _bone(labels, "metacarpal_3", (150, 150), 100, 16, 0)
    _rect(labels, (60, 150), 20, 16, 0, anatomy.shaft_label("capitate"))
    _rect(labels, (60, 120), 16, 14, 0, anatomy.shaft_label("hamate"))
    small = measure(labels)
    big = measure(np.kron(labels, np.ones((2, 2), np.uint8)))
    assert small.carpal_count == 2
    f1, f2 = small.features(), big.features()
    assert list(f1) == feature_names()
    assert f1["carpal_count"] == 2 and f1["metacarpal_3.length_rel"] == pytest.approx(1.0)
    # Scale-free: a 2x larger image gives (nearly) the same features.
    assert f2["capitate.area_rel"] == pytest.approx(f1["capitate.area_rel"], rel=0.08)
    assert math.isnan(f1["radius.epiphysis_ratio"])


def test_to_dict_is_json_ready():
    import json

    labels = np.zeros((100, 100), np.uint8)
    _bone(labels, "distal_phalanx_1", (50, 50), 30, 8, 10, epi_len=4, epi_width=7)
    d = measure(labels, spacing_mm=0.3).to_dict()
    json.dumps(d)
    assert set(d["bones"]) == set(anatomy.BONES) and d["bones"]["distal_phalanx_1"]["length_mm"] > 0


def test_finger_rays_count_digits_laid_out_in_order():
    from boneage.measure import finger_rays
    from boneage.synth import generate_hand

    hand = generate_hand(7, 0, size=384)
    assert finger_rays(hand.label_map) >= 4  # a true hand: (almost) every digit in order

    # The same bones of one digit, shuffled out of anatomical order along the ray: not a finger.
    labels = np.zeros((200, 200), np.uint8)
    for bone, row in zip(anatomy.digit_bones(3), (40, 160, 80, 120)):
        _bone(labels, bone, (row, 100), 30, 8, 0)
    assert finger_rays(labels) == 0
    # In order (metacarpal at the bottom, distal phalanx on top), they are one finger.
    labels[:] = 0
    for bone, row in zip(anatomy.digit_bones(3), (160, 120, 80, 40)):
        _bone(labels, bone, (row, 100), 30, 8, 0)
    assert finger_rays(labels) == 1 and measure(labels).finger_rays == 1
    from boneage.measure import finger_ray_digits

    assert finger_ray_digits(labels) == [3]
    # Scattered sideways (a zig-zag): not a finger.
    labels[:] = 0
    for bone, (row, col) in zip(anatomy.digit_bones(3), ((160, 40), (120, 160), (80, 40), (40, 160))):
        _bone(labels, bone, (row, col), 30, 8, 0)
    assert finger_rays(labels) == 0
    assert finger_rays(np.zeros((10, 10), np.uint8)) == 0


def test_shaft_profile_reads_a_drawn_tube() -> None:
    from boneage.measure import shaft_profile
    from boneage.synth_render import Canvas, ShapePx, paint_shape

    def film(trabecular_density: float) -> tuple[np.ndarray, np.ndarray]:
        canvas = Canvas.empty(80, 120)
        # A shaft 80 px long and 16 px wide along the columns, labelled as metacarpal 3's shaft.
        paint_shape(canvas, ShapePx(anatomy.shaft_label("metacarpal_3"), np.array([20.0, 40.0]), np.array([1.0, 0.0]),
                                    80.0, np.array([0.0, 1.0]), np.array([8.0, 8.0]), np.array([0.3, 0.3]), 0.0, 0.0,
                                    trabecular_density=trabecular_density))
        return 0.2 + 0.02 * (canvas.cortical + canvas.trabecular), canvas.labels

    full, hollow = (shaft_profile(*film(d), "metacarpal_3") for d in (1.0, 0.3))
    assert full.soft == pytest.approx(0.2, abs=1e-3)  # beside the bone: the background
    # The length is the second-moment major axis (1.15x a bar's length) and the width the labelled
    # pixels' extent (a pixel or two under 16): 16 / 92 at most.
    assert 0.14 < full.width_over_length <= 16 / (80 * 1.1547)
    assert full.medulla_share > 0.9 and hollow.medulla_share < full.medulla_share - 0.3  # an emptier canal reads darker
    assert hollow.cortex_above_soft < full.cortex_above_soft
    assert shaft_profile(*film(1.0), "metacarpal_2") is None  # no such shaft on the film


def test_shaft_profile_reads_the_grain_inside_a_shaft_against_its_contrast() -> None:
    from boneage.measure import shaft_profile
    from boneage.synth_render import Canvas, ShapePx, paint_shape

    def fine_texture(texture_amp: float, noise: float = 0.0, contrast: float = 0.02) -> float:
        canvas = Canvas.empty(80, 120)
        paint_shape(canvas, ShapePx(anatomy.shaft_label("metacarpal_3"), np.array([20.0, 40.0]),
                                    np.array([1.0, 0.0]), 80.0, np.array([0.0, 1.0]), np.full(2, 8.0),
                                    np.full(2, 0.3), 0.0, 0.0, texture_amp=texture_amp, texture_px=0.7))
        film = 0.2 + contrast * (canvas.cortical + canvas.trabecular)
        film = film + noise * np.random.default_rng(0).standard_normal(film.shape).astype(np.float32)
        return shaft_profile(film, canvas.labels, "metacarpal_3").fine_texture

    smooth, struts = fine_texture(0.0), fine_texture(0.8)
    assert smooth < 0.02 and struts > smooth + 0.05  # a smooth tube has no grain; trabecular struts give it
    assert fine_texture(0.0, noise=0.03) > smooth + 0.05  # so does film noise
    # Against the shaft's contrast: the same film at twice the contrast reads the same.
    assert fine_texture(0.8, contrast=0.04) == pytest.approx(struts, rel=0.02)
    # A shaft 6 px wide is all blur: no grain is read from it.
    canvas = Canvas.empty(80, 120)
    paint_shape(canvas, ShapePx(anatomy.shaft_label("metacarpal_3"), np.array([20.0, 40.0]), np.array([1.0, 0.0]), 80.0,
                                np.array([0.0, 1.0]), np.full(2, 3.0), np.full(2, 0.3), 0.0, 0.0))
    assert np.isnan(shaft_profile(0.2 + 0.02 * canvas.cortical, canvas.labels, "metacarpal_3").fine_texture)


def test_shaft_profile_reads_the_cortex_share_of_a_hollow_tube() -> None:
    from boneage.measure import shaft_profile
    from boneage.synth_render import Canvas, ShapePx, paint_shape

    def cortex_fraction(cortex: float, half_width: float, medulla: float = 0.3) -> float:
        canvas = Canvas.empty(80, 120)
        paint_shape(canvas, ShapePx(anatomy.shaft_label("metacarpal_3"), np.array([20.0, 40.0]), np.array([1.0, 0.0]),
                                    80.0, np.array([0.0, 1.0]), np.full(2, half_width), np.full(2, cortex), 0.0, 0.0,
                                    trabecular_density=medulla))
        film = 0.2 + 0.02 * (canvas.cortical + canvas.trabecular)
        return shaft_profile(film, canvas.labels, "metacarpal_3").cortex_fraction

    for half_width in (8.0, 12.0):
        readings = [cortex_fraction(c, half_width) for c in (0.2, 0.3, 0.4, 0.5)]
        # The brightest ray grazes the canal; the labelled edge sits about a pixel inside the drawn one.
        assert readings == sorted(readings) and readings[-1] > readings[0] + 0.25, readings
        assert all(abs(r - c) <= 0.12 for r, c in zip(readings, (0.2, 0.3, 0.4, 0.5))), readings
    # A full medulla has no canal edge to find (the brightest ray is the axis), a 6 px shaft only blur.
    assert np.isnan(cortex_fraction(0.3, 8.0, medulla=1.0))
    assert np.isnan(cortex_fraction(0.3, 3.0))

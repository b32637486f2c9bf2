"""Tests for boneage.postprocess: rules applied to the segmenter's label maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from boneage import anatomy, postprocess
from boneage.synth import generate_hand


def swallow_head(labels: np.ndarray, digit: int) -> np.ndarray:
    """The real-film habit: a finger's metacarpal head, physis and joint space labelled as its proximal phalanx."""
    head = labels == anatomy.epiphysis_label(f"metacarpal_{digit}")
    phalanx = anatomy.shaft_label(f"proximal_phalanx_{digit}")
    near_phalanx = ndimage.binary_dilation(np.isin(labels, anatomy.bone_labels(f"proximal_phalanx_{digit}")), iterations=6)
    near_shaft = ndimage.binary_dilation(labels == anatomy.shaft_label(f"metacarpal_{digit}"), iterations=3)
    joint = (near_phalanx | near_shaft) & ndimage.binary_dilation(head, iterations=6) & (labels == anatomy.BACKGROUND)
    out = labels.copy()
    out[head | joint] = phalanx
    return out


def _extent(labels: np.ndarray, bone: str, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    rr, cc = np.nonzero(np.isin(labels, anatomy.bone_labels(bone)))
    pts = np.stack([rr * spacing[0], cc * spacing[1]], 1)
    along = (pts - pts.mean(0)) @ postprocess.long_axis_of(pts)
    return float(np.percentile(along, 99.5) - np.percentile(along, 0.5))


@pytest.mark.parametrize("age", [30, 96, 156, 200])
def test_reclaim_metacarpal_heads_leaves_a_correct_hand_alone(age: int) -> None:
    labels = generate_hand(11, age, size=384, bone_age_months=age).label_map
    assert np.array_equal(postprocess.reclaim_metacarpal_heads(labels), labels)


def _squash(labels: np.ndarray) -> np.ndarray:
    """A label map on a grid squashed to half its height (as a wide film's model grid): spacing (2, 1)."""
    return np.ascontiguousarray(Image.fromarray(np.ascontiguousarray(labels)).resize((labels.shape[1], labels.shape[0] // 2), Image.NEAREST))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("view", ["upright", "mirrored", "turned", "squashed"])
def test_reclaim_metacarpal_heads_gives_a_swallowed_head_back(view: str) -> None:
    truth = generate_hand(11, 5, size=384, bone_age_months=150, sex="F").label_map
    swallowed = swallow_head(swallow_head(swallow_head(truth, 2), 4), 5)
    spacing = (1.0, 1.0)
    if view == "mirrored":
        truth, swallowed = truth[:, ::-1], swallowed[:, ::-1]
    elif view == "turned":
        truth, swallowed = np.rot90(truth), np.rot90(swallowed)
    elif view == "squashed":  # true lengths need the spacing
        upright_mended = _squash(postprocess.reclaim_metacarpal_heads(swallowed))
        truth, swallowed, spacing = _squash(truth), _squash(swallowed), (2.0, 1.0)
    truth, swallowed = np.ascontiguousarray(truth), np.ascontiguousarray(swallowed)
    mended = postprocess.reclaim_metacarpal_heads(swallowed, spacing)
    for d in (2, 4, 5):
        head = anatomy.epiphysis_label(f"metacarpal_{d}")
        assert (swallowed == head).sum() == 0
        true_head, mended_head = truth == head, mended == head
        # most of the true head is given back, and not much else
        assert (true_head & mended_head).sum() > 0.6 * true_head.sum()
        assert (mended_head & ~true_head).sum() < 0.5 * true_head.sum()
        bone = f"proximal_phalanx_{d}"
        assert _extent(swallowed, bone, spacing) > 1.12 * _extent(truth, bone, spacing)
        assert _extent(mended, bone, spacing) == pytest.approx(_extent(truth, bone, spacing), rel=0.06)
        if view == "squashed":  # read with its spacing, a squashed grid is mended as the upright one
            assert _iou(mended_head, upright_mended == head) > 0.65
    # the finger that kept its head is untouched
    for bone in ("metacarpal_3", "proximal_phalanx_3"):
        lab = anatomy.bone_labels(bone)
        assert np.array_equal(np.isin(mended, lab), np.isin(swallowed, lab))


def test_reclaim_metacarpal_heads_ends_at_the_joint() -> None:
    """The reclaimed head ends where the drawn one does (within a pixel or so along the finger)."""
    truth = generate_hand(11, 6, size=384, bone_age_months=120, sex="M").label_map

    def distal_end(labels: np.ndarray) -> float:
        shaft = np.argwhere(labels == anatomy.shaft_label("metacarpal_4")).astype(float)
        head = np.argwhere(labels == anatomy.epiphysis_label("metacarpal_4")).astype(float)
        axis = postprocess.long_axis_of(shaft)
        axis = axis if axis @ (head.mean(0) - shaft.mean(0)) > 0 else -axis
        return float(np.percentile(head @ axis, 98))

    overshoot = distal_end(postprocess.reclaim_metacarpal_heads(swallow_head(truth, 4))) - distal_end(truth)
    assert -1.5 <= overshoot <= 0.5


@pytest.mark.parametrize(("kept", "mended"), [(0.15, True), (0.6, False)])
def test_reclaim_metacarpal_heads_mends_only_a_mostly_missing_head(kept: float, mended: bool) -> None:
    truth = generate_hand(11, 5, size=384, bone_age_months=150, sex="F").label_map
    head = anatomy.epiphysis_label("metacarpal_4")
    rows = np.nonzero(truth == head)[0]
    cut = rows.max() - int(round(kept * (rows.max() - rows.min() + 1)))
    swallowed = swallow_head(truth, 4)
    # the proximal rows of the head (next to the shaft: the fingers point up) keep their label
    keep = (truth == head) & (np.arange(truth.shape[0])[:, None] > cut)
    swallowed[keep] = head
    out = postprocess.reclaim_metacarpal_heads(swallowed)
    assert bool((out == head).sum() > (swallowed == head).sum()) is mended


def test_reclaim_metacarpal_heads_keeps_a_fused_head_fused_beside_the_shaft_end() -> None:
    """Phalanx labels beside a fused shaft's end (its corners) join the head, which stays fused."""
    from boneage.measure import measure

    truth = generate_hand(11, 5, size=384, bone_age_months=200, sex="M").label_map
    swallowed = swallow_head(truth, 4)
    shaft = swallowed == anatomy.shaft_label("metacarpal_4")
    rows = np.nonzero(shaft)[0]
    corners = shaft & (np.arange(shaft.shape[0])[:, None] < rows.min() + 5)
    corners &= ~ndimage.binary_erosion(shaft, iterations=3)  # the two distal corners, not the middle
    swallowed[corners] = anatomy.shaft_label("proximal_phalanx_4")
    assert measure(postprocess.reclaim_metacarpal_heads(swallowed)).bones["metacarpal_4"].fused


def test_reclaim_metacarpal_heads_leaves_an_unossified_head_alone() -> None:
    labels = generate_hand(11, 6, size=384, bone_age_months=120, sex="M").label_map.copy()
    head = labels == anatomy.epiphysis_label("metacarpal_4")
    labels[head] = anatomy.BACKGROUND  # no head yet: cartilage, a gap between the shaft and the phalanx
    # narrow the gap (head and joint space) to 0.8 x the head's length: still a gap, not a swallowed head
    phalanx = np.isin(labels, anatomy.bone_labels("proximal_phalanx_4"))
    head_rows = np.nonzero(head)[0]
    gap = np.nonzero(labels == anatomy.shaft_label("metacarpal_4"))[0].min() - np.nonzero(phalanx)[0].max()
    shift = int(gap - 0.8 * (head_rows.max() - head_rows.min() + 1))
    assert shift > 0
    moved = np.where(phalanx, labels, 0)
    labels[phalanx] = anatomy.BACKGROUND
    labels = np.where(np.roll(moved, shift, axis=0) > 0, np.roll(moved, shift, axis=0), labels).astype(np.uint8)
    assert np.array_equal(postprocess.reclaim_metacarpal_heads(labels), labels)
    # ... nor anything without the third metacarpal's head or shaft to scale by
    for part in (anatomy.epiphysis_label("metacarpal_3"), anatomy.shaft_label("metacarpal_3")):
        no_reference = swallow_head(labels, 5)
        no_reference[no_reference == part] = anatomy.BACKGROUND
        assert np.array_equal(postprocess.reclaim_metacarpal_heads(no_reference), no_reference)
    # the third finger's phalanx is not needed
    no_phalanx_3 = swallow_head(labels, 5)
    no_phalanx_3[np.isin(no_phalanx_3, anatomy.bone_labels("proximal_phalanx_3"))] = anatomy.BACKGROUND
    assert (postprocess.reclaim_metacarpal_heads(no_phalanx_3) == anatomy.epiphysis_label("metacarpal_5")).any()


@pytest.mark.parametrize(("age", "sex", "fused"), [(120, "M", False), (200, "M", True)])
def test_a_reclaimed_head_takes_the_third_metacarpals_physis(age: int, sex: str, fused: bool) -> None:
    from boneage.measure import measure

    truth = generate_hand(11, 5, size=384, bone_age_months=age, sex=sex).label_map
    assert measure(truth).bones["metacarpal_3"].fused is fused
    mended = measure(postprocess.reclaim_metacarpal_heads(swallow_head(truth, 4)))
    assert mended.bones["metacarpal_4"].epiphysis_present
    assert mended.bones["metacarpal_4"].fused is fused

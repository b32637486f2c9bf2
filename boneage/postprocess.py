"""Rules applied to the segmenter's label map after the network: what it is known to get wrong on real films.

:mod:`boneage.segment` applies them to every reading (and to the tilted rereads of test-time augmentation);
they change the label map only, never the network's probabilities. Since ``segmenter-4.1``:
:func:`reclaim_metacarpal_heads`.
"""

from __future__ import annotations

import numpy as np

from boneage import anatomy

#: A finger's metacarpal head is taken as missing when its epiphysis label covers less than this share
#: of the area the third metacarpal's head predicts for it (scaled by the square of the two shafts'
#: lengths).
HEAD_MISSING_SHARE = 0.3
#: How far past its shaft's distal end a reclaimed head reaches, as a share of the length the third
#: metacarpal's head predicts for it (scaled by the two shafts' lengths). Chosen on the training split's
#: keypoint films (heads given back, phalanx 2/4/5-to-3 ratios against the keypoints').
HEAD_REACH = 1.1
#: The joint space past a reclaimed head, as the same share: background.
JOINT_SPACE = 0.25
#: A phalanx that starts more than this share of the predicted head length past the shaft's end leaves
#: a gap there: a child's unossified head (cartilage), not a swallowed one.
HEAD_GAP = 0.5
#: The third metacarpal's physis is open when its head touches its shaft over less than this share of
#: the head's width (the rule of ``boneage.measure.FUSED_CONTACT``, here on whole-pixel extents).
HEAD_FUSED_CONTACT = 0.5
#: Where it is open, this band past the finger's shaft end (in model pixels on an unsquashed grid:
#: x the geometric mean of the spacing) stays background, so a child's reclaimed head is not read as fused.
PHYSIS_PX = 1.5


def reclaim_metacarpal_heads(label_map: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Give back to fingers 2, 4 and 5 the metacarpal heads the network labelled as proximal phalanx.

    Why: on real films of children over 6 y the network often carries a proximal phalanx's label
    down over the joint and the metacarpal's head to the metacarpal's physis (on the training
    split's keypoint films: half the heads of the ring and little fingers, over a third of the
    index finger's), which makes the phalanx some 12% too long and leaves the metacarpal without
    its epiphysis. It never does so for the third finger, nor on synthetic hands, so the third
    metacarpal's head is the size reference, scaled by the two shafts' lengths. A finger is mended
    when (a) the third metacarpal has its head and shaft, (b) the finger's metacarpal head label holds
    less than :data:`HEAD_MISSING_SHARE` of the area the third's predicts for it, and (c) its proximal
    phalanx reaches back to within :data:`HEAD_GAP` x the predicted head length of the metacarpal
    shaft's distal end (the 99.5th percentile of the shaft along its axis; a farther phalanx leaves
    the gap of a child's unossified head, and is left alone). The phalanx's pixels up to
    :data:`HEAD_REACH` x the predicted head length past the shaft's end become the metacarpal's
    epiphysis, the next :data:`JOINT_SPACE` x that length background. Where the third metacarpal's
    physis is open (the heads of one hand fuse together), the phalanx's pixels short of
    :data:`PHYSIS_PX` past the shaft's end, beside it included, become background too, so a head
    laid flush on its shaft does not read as fused; where it is fused, they join the head.

    Args:
        label_map: integer label map (:mod:`boneage.anatomy` ids), any orientation.
        spacing: ``(row, col)`` pixel size, so squashed model grids give true lengths.

    Returns:
        Mended copy (the input itself when nothing needs mending; it is never written to).
    """
    def points(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rr, cc = np.nonzero(mask)
        return rr, cc, _true_coordinates(rr, cc, spacing)

    def extent(values: np.ndarray) -> float:
        return float(np.percentile(values, 99.5) - np.percentile(values, 0.5))

    out = label_map
    head3 = label_map == anatomy.epiphysis_label("metacarpal_3")
    shaft3 = label_map == anatomy.shaft_label("metacarpal_3")
    if head3.sum() < 8 or shaft3.sum() < 50:
        return out
    _, _, shaft3_pts = points(shaft3)
    axis3 = long_axis_of(shaft3_pts)  # either sign: only lengths and widths are read along it
    shaft3_length, head3_length = extent(shaft3_pts @ axis3), extent(points(head3)[2] @ axis3)
    head3_area = float(head3.sum())
    physis = PHYSIS_PX * _pixel_size(spacing) if _physis_open(head3, shaft3, axis3, spacing) else None
    for d in (2, 4, 5):
        shaft = label_map == anatomy.shaft_label(f"metacarpal_{d}")
        head = label_map == anatomy.epiphysis_label(f"metacarpal_{d}")
        phalanx = np.isin(label_map, anatomy.bone_labels(f"proximal_phalanx_{d}"))
        if shaft.sum() < 50 or phalanx.sum() < 50:
            continue
        _, _, shaft_pts = points(shaft)
        pr, pc, phalanx_pts = points(phalanx)
        axis = long_axis_of(shaft_pts)
        if axis @ (phalanx_pts.mean(0) - shaft_pts.mean(0)) < 0:
            axis = -axis  # distal: toward the phalanx
        scale = extent(shaft_pts @ axis) / shaft3_length
        if head.sum() >= HEAD_MISSING_SHARE * head3_area * scale ** 2:
            continue
        head_length = head3_length * scale
        shaft_end = float(np.percentile(shaft_pts @ axis, 99.5))
        along = phalanx_pts @ axis
        if np.percentile(along, 0.5) > shaft_end + HEAD_GAP * head_length:
            continue  # the phalanx stops short of the shaft: an unossified head, not a mislabelled one
        reach = shaft_end + HEAD_REACH * head_length
        start = -np.inf if physis is None else shaft_end + physis
        if reach <= start:
            continue
        if out is label_map:
            out = label_map.copy()
        taken = (along < reach) & (along >= start)
        out[pr[taken], pc[taken]] = anatomy.epiphysis_label(f"metacarpal_{d}")
        space = ~taken & (along < reach + JOINT_SPACE * head_length)
        out[pr[space], pc[space]] = anatomy.BACKGROUND
    return out


def _physis_open(head: np.ndarray, shaft: np.ndarray, axis: np.ndarray, spacing: tuple[float, float]) -> bool:
    """A head touches its shaft over less than :data:`HEAD_FUSED_CONTACT` of its width (whole-pixel extents across ``axis``)."""
    from scipy import ndimage

    touching = head & ndimage.binary_dilation(shaft, structure=ndimage.generate_binary_structure(2, 1))
    across = np.array([-axis[1], axis[0]])

    def width(mask: np.ndarray) -> float:
        s = _true_coordinates(*np.nonzero(mask), spacing) @ across
        return float(s.max() - s.min()) + _pixel_size(spacing) if s.size else 0.0

    return width(touching) < HEAD_FUSED_CONTACT * width(head)


def _true_coordinates(rr: np.ndarray, cc: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """``(n, 2)`` coordinates of pixels ``(rr, cc)`` in spacing units (true directions on squashed grids)."""
    return np.stack([rr * spacing[0], cc * spacing[1]], 1)


def _pixel_size(spacing: tuple[float, float]) -> float:
    return float(np.sqrt(spacing[0] * spacing[1]))


def long_axis_of(points: np.ndarray) -> np.ndarray:
    """Unit principal axis (either sign) of ``(n, 2)`` points."""
    centred = points - points.mean(0)
    return np.linalg.eigh(centred.T @ centred)[1][:, 1]

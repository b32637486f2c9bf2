"""Per-bone maturity: aligned bone crops, a small network that ages each bone, a robust consensus.

The third method, between the measured multi-step pipeline and the end-to-end CNN (the
BoneXpert idea): the segmenter locates each bone of the RUS set and the carpus; each is cut from
the film at its native resolution, aligned to the bone (long axis vertical, epiphysis end up,
scaled to the bone's length with a fixed margin, so every film's bone looks alike whatever the
film's size); one network shared by all bones (bone identity and sex as inputs) gives each bone
an age and a scale; bones that disagree with the consensus are down-weighted and said; the
consensus gets a calibrated 90% interval. RUS and carpal ages are reported apart too.

Data flow: ``FilmReading`` (segmenter) + film pixels -> :func:`bone_crops` -> :class:`BoneCrops`
-> :class:`PerBoneEstimator.predict` -> :class:`PerBoneEstimate`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from boneage import anatomy
from boneage.agemap import AgeMap, read_interval
from boneage.direct import sex_to_code

#: Crop size (rows, cols): rows run along the bone, epiphysis end at the top.
CROP_SHAPE = (64, 48)
#: Version of the crop geometry; caches and weights are keyed by it.
CROP_VERSION = "crops-1"
#: Tubular bones: crop height = this x bone length (a margin of 12.5% at each end).
TUBULAR_LENGTH_MARGIN = 1.25
#: Radius/ulna and carpus are scaled to the third metacarpal (a forearm bone's visible length
#: depends on the collimation, the metacarpal's does not).
FOREARM_HEIGHT_PER_MC3 = 0.9
CARPAL_HEIGHT_PER_MC3 = 1.0
#: Smallest label area (model-grid pixels) for a bone to be cropped.
MIN_BONE_PIXELS = 12
#: ``rsna-299`` films were squashed to a square; their originals were 0.64-0.98 (median 0.79)
#: wide-to-tall (median 0.79 over the 977 ``rsna-dev`` training-split films). Training restores this aspect
#: before reading them; the leftover error is within the aspect jitter of training.
RSNA_299_WIDTH_TO_HEIGHT = 0.79


@dataclass
class BoneCrops:
    """The aligned crops of one film.

    Attributes:
        images: uint8 ``(len(MATURITY_REGIONS), *CROP_SHAPE)``; zeros where a bone has no crop.
        present: bool per region, True where the crop was cut.
        film_pixels_per_crop_pixel: the crop's scale on the film (> 1: the film is finer).
    """

    images: np.ndarray
    present: np.ndarray
    film_pixels_per_crop_pixel: np.ndarray

    @property
    def regions(self) -> tuple[str, ...]:
        return anatomy.MATURITY_REGIONS


def _film_points(label_map: np.ndarray, labels: list[int], transform: Any,
                 shaft: int | None = None) -> np.ndarray | None:
    """Film (row, col) coordinates of the model-grid pixels carrying any of ``labels``.

    Stray fragments are left out (:func:`_without_strays`), so a stray pixel of a bone's label
    elsewhere cannot turn or stretch the bone's axis; a segmenter's reading, already cleaned by
    :func:`boneage.segment.clean_label_map`, keeps every pixel. ``None`` when fewer than
    :data:`MIN_BONE_PIXELS` are left, or, given ``shaft`` (the bone's shaft label), when the shaft
    itself has fewer: an epiphysis alone has no long axis to align.
    """
    mask = np.isin(label_map, labels)
    if np.count_nonzero(mask) < MIN_BONE_PIXELS:
        return None
    rows, cols = np.nonzero(_without_strays(mask))
    if len(rows) < MIN_BONE_PIXELS:
        return None
    if shaft is not None and np.count_nonzero(label_map[rows, cols] == shaft) < MIN_BONE_PIXELS:
        return None
    r, c = transform.to_original(rows, cols)
    return np.stack([r, c], axis=1)


#: A bone's fragment smaller than this fraction of its largest fragment (the rule of
#: :func:`boneage.segment.clean_label_map`) ...
STRAY_FRACTION = 0.25
#: ... and farther than this fraction of the largest fragment's extent from its bounding box is a
#: stray (a small epiphysis a physis apart from its shaft, as in a young child's true label map,
#: is near and stays).
STRAY_DISTANCE = 0.5


def _without_strays(mask: np.ndarray) -> np.ndarray:
    """``mask`` less its stray fragments (see :data:`STRAY_FRACTION`, :data:`STRAY_DISTANCE`).

    Fragments one pixel apart are one (as in :func:`boneage.segment.clean_label_map`, whose
    output is returned unchanged); only the mask's bounding box is worked on.
    """
    any_rows, any_cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (slice(max(any_rows[0] - 2, 0), any_rows[-1] + 3), slice(max(any_cols[0] - 2, 0), any_cols[-1] + 3))
    sub = mask[box]
    comp, n = ndimage.label(ndimage.binary_dilation(sub, np.ones((3, 3), bool), iterations=1))
    if n <= 1:
        return mask
    sizes = ndimage.sum(sub, comp, index=np.arange(1, n + 1))
    small = np.flatnonzero(sizes < STRAY_FRACTION * sizes.max()) + 1
    if len(small) == 0:
        return mask
    objects = ndimage.find_objects(comp)
    main = objects[int(np.argmax(sizes))]
    reach = STRAY_DISTANCE * max(sl.stop - sl.start for sl in main)
    near = [(sl.start - reach, sl.stop - 1 + reach) for sl in main]
    strays = [k for k in small if any(sl.stop - 1 < lo or sl.start > hi for sl, (lo, hi) in zip(objects[k - 1], near))]
    if not strays:
        return mask
    out = mask.copy()
    out[box] = sub & ~np.isin(comp, strays)
    return out


@dataclass
class _BoneAxis:
    centre: np.ndarray  # film (row, col) of the middle of the bone's extent
    axis: np.ndarray  # unit vector along the bone, pointing distally
    length: float  # extent along the axis (film pixels)
    proximal_end: np.ndarray
    distal_end: np.ndarray


#: A radius or ulna whose principal axis turns more than this from the wrist-to-hand direction is
#: a stub wider than long (the forearm cut off by the collimation a little above the wrist): it is
#: aligned to that direction instead. Whole forearms of synthetic hands turn at most 7 degrees;
#: on 200 real films the rule changed one (a radius at the film's edge, turned 66 degrees).
MAX_AXIS_TURN_DEG = 60.0


def _bone_axis(points: np.ndarray, distal_hint: np.ndarray, trust_hint: bool = True) -> _BoneAxis:
    """The bone's long axis (pointing distally) and extent.

    Args:
        points: film ``(row, col)`` of its pixels.
        distal_hint: a direction the distal end lies in.
        trust_hint: the hint is the bone's own direction (so a principal axis more than
            :data:`MAX_AXIS_TURN_DEG` away from it is a stub's width, not its length): the forearm.
    """
    mean = points.mean(axis=0)
    cov = np.cov((points - mean).T)
    _, vecs = np.linalg.eigh(cov)
    axis = vecs[:, -1]
    if float(axis @ distal_hint) < 0:
        axis = -axis
    hint_norm = float(np.linalg.norm(distal_hint))
    if trust_hint and hint_norm > 1e-9 and float(axis @ distal_hint) < np.cos(np.deg2rad(MAX_AXIS_TURN_DEG)) * hint_norm:
        axis = distal_hint / hint_norm
    along = (points - mean) @ axis
    lo, hi = np.percentile(along, [1, 99])
    centre = mean + axis * (lo + hi) / 2
    return _BoneAxis(centre, axis, float(hi - lo), mean + axis * lo, mean + axis * hi)


def _sample(film: np.ndarray, centre: np.ndarray, up: np.ndarray, height: float, width: float,
            mirrored: bool) -> tuple[np.ndarray, float] | None:
    """Cut a ``CROP_SHAPE`` crop: ``up`` (film unit vector) points to the crop's top row.

    ``None`` when the crop shows nothing: it lies off the film, or the film is uniform under it
    (a blank crop would still be aged by the network)."""
    rows_out, cols_out = CROP_SHAPE
    scale_r, scale_c = height / rows_out, width / cols_out
    right = np.array([-up[1], up[0]])  # up rotated a quarter turn: the crop's +column direction
    if float(up[0] * right[1] - up[1] * right[0]) > 0:  # 2-D cross product (np.cross of 2-vectors is deprecated)
        right = -right
    # A left hand seen from the front has its thumb on the right of an upright film; a mirrored
    # reading is flipped back so every crop looks like a left hand's.
    if mirrored:
        right = -right
    u = (np.arange(rows_out) - (rows_out - 1) / 2) * scale_r  # top row = +up
    v = (np.arange(cols_out) - (cols_out - 1) / 2) * scale_c
    rr = centre[0] - up[0] * u[:, None] + right[0] * v[None, :]
    cc = centre[1] - up[1] * u[:, None] + right[1] * v[None, :]
    scale = max(scale_r, scale_c)
    # Only the patch under the crop is smoothed (anti-aliasing before a large down-sampling).
    r0 = max(int(np.floor(rr.min())) - 4, 0)
    r1 = min(int(np.ceil(rr.max())) + 5, film.shape[0])
    c0 = max(int(np.floor(cc.min())) - 4, 0)
    c1 = min(int(np.ceil(cc.max())) + 5, film.shape[1])
    if r1 <= r0 or c1 <= c0:
        return None
    patch = np.asarray(film[r0:r1, c0:c1], dtype=np.float32)
    if scale > 1.5:
        patch = ndimage.gaussian_filter(patch, sigma=0.4 * scale, mode="nearest")
    fill = float(np.median(patch))
    crop = ndimage.map_coordinates(patch, [rr - r0, cc - c0], order=1, mode="constant", cval=fill)
    image = normalise_crop(crop)
    if not image.any():
        return None
    return image, scale


def normalise_crop(crop: np.ndarray) -> np.ndarray:
    """Window a crop on its own 1st-99th percentiles to uint8 (a film's exposure and window do not
    reach the network; a crop has no markers)."""
    lo, hi = np.percentile(crop, [1, 99])
    if hi - lo < 1e-6:
        return np.zeros(crop.shape, np.uint8)
    return np.clip((crop - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def bone_crops(film: np.ndarray, label_map: np.ndarray, transform: Any, mirrored: bool | None = None,
               finger_angle_deg: float | None = None) -> BoneCrops:
    """Cut the aligned crops of :data:`anatomy.MATURITY_REGIONS` from a film.

    Args:
        film: 2-D film the label map was read from (any scale; bone bright).
        label_map: the segmenter's label map on its model grid.
        transform: model grid -> film coordinates (``boneage.preprocess.CropTransform``).
        mirrored: the hand is seen mirrored (its crops are flipped back to a left hand's).
        finger_angle_deg: where the fingers point, degrees counter-clockwise from up (``None``:
            unknown); used only where the wrist and the metacarpals cannot tell which end is
            distal (without it, the fingers' own rays tell, else up is taken).

    Returns:
        :class:`BoneCrops`. Never raises on a partial hand, a blank region or a label map with
        strays: a region that cannot be aligned, or whose crop would be blank or off the film, is
        left out (``present`` False).
    """
    n = len(anatomy.MATURITY_REGIONS)
    images = np.zeros((n, *CROP_SHAPE), np.uint8)
    present = np.zeros(n, bool)
    scales = np.zeros(n, np.float32)
    points = {b: _film_points(label_map, anatomy.bone_labels(b), transform, anatomy.shaft_label(b))
              for b in anatomy.FOREARM + anatomy.TUBULAR_BONES}
    wrist_parts = [points[b] for b in anatomy.FOREARM if points[b] is not None]
    carpal_points = _carpal_points(label_map, transform)
    if carpal_points is not None:
        wrist_parts.append(carpal_points)
    wrist = np.concatenate(wrist_parts).mean(axis=0) if wrist_parts else None
    metacarpals = [points[b] for b in anatomy.METACARPALS[1:] if points[b] is not None]
    hand_centre = np.concatenate(metacarpals).mean(axis=0) if metacarpals else None
    if wrist is not None and hand_centre is not None and np.linalg.norm(hand_centre - wrist) > 1e-6:
        hand_up = (hand_centre - wrist) / np.linalg.norm(hand_centre - wrist)
    elif finger_angle_deg is not None:
        angle = np.deg2rad(finger_angle_deg)
        hand_up = np.array([-np.cos(angle), -np.sin(angle)])  # (row, col): fingers' direction
    else:
        # Neither the wrist-to-hand direction nor the reading's finger angle (no third metacarpal
        # or proximal phalanx): the fingers' own bones, each pointing to the next, or else up.
        chain = _finger_direction(points)
        hand_up = chain if chain is not None else np.array([-1.0, 0.0])

    axes: dict[str, _BoneAxis] = {}
    for bone, pts in points.items():
        if pts is None:
            continue
        if bone in anatomy.FOREARM:
            hint = hand_up
        elif wrist is not None:
            hint = pts.mean(axis=0) - wrist
        else:
            hint = hand_up
        # Only the forearm is held to its hint: a finger bone's own axis is kept even far from
        # the wrist's direction (a thumb, a curled or splayed finger).
        axes[bone] = _bone_axis(pts, hint, trust_hint=bone in anatomy.FOREARM)
    mc3 = axes.get("metacarpal_3")
    if mc3 is not None:
        unit = mc3.length
    else:
        # Each other metacarpal's length as the third's (adult proportions): their median.
        others = [axes[b].length * MC3_PER_METACARPAL[b] for b in MC3_PER_METACARPAL if b in axes]
        unit = float(np.median(others)) if others else None
    mirrored = bool(mirrored)
    aspect = CROP_SHAPE[1] / CROP_SHAPE[0]
    for i, region in enumerate(anatomy.MATURITY_REGIONS):
        if region == anatomy.CARPAL_REGION:
            ends = [axes[b].distal_end for b in anatomy.FOREARM if b in axes]
            bases = [axes[b].proximal_end for b in anatomy.METACARPALS[1:] if b in axes]
            if unit is None or not ends or not bases:
                continue
            centre = (np.mean(ends, axis=0) + np.mean(bases, axis=0)) / 2
            height = CARPAL_HEIGHT_PER_MC3 * unit
            up = hand_up
        else:
            ax = axes.get(region)
            if ax is None:
                continue
            up = ax.axis if anatomy.epiphysis_end(region) == "distal" else -ax.axis
            if region in anatomy.FOREARM:
                if unit is None:
                    continue
                height = FOREARM_HEIGHT_PER_MC3 * unit
                # The distal end sits 15% below the top edge: epiphysis, physis and metaphysis in view.
                centre = ax.distal_end - ax.axis * (0.5 - 0.15) * height
            else:
                height = TUBULAR_LENGTH_MARGIN * ax.length
                centre = ax.centre
        if not height >= 4:
            continue
        cut = _sample(film, centre, up, height, height * aspect, mirrored)
        if cut is not None:
            (images[i], scales[i]), present[i] = cut, True
    return BoneCrops(images, present, scales)


#: The third metacarpal's length over each other metacarpal's, from adult lengths (textbook
#: magnitudes, ``data/synth_bone_model.csv``: 68, 65, 58, 53 mm for metacarpals 2-5): the scale
#: of a film whose third metacarpal was not found.
MC3_PER_METACARPAL = {"metacarpal_2": 65 / 68, "metacarpal_4": 65 / 58, "metacarpal_5": 65 / 53}


def _carpal_points(label_map: np.ndarray, transform: Any) -> np.ndarray | None:
    """Film coordinates of every carpal's pixels (each carpal's strays left out), ``None`` when
    fewer than :data:`MIN_BONE_PIXELS` in all."""
    mask = np.zeros(label_map.shape, bool)
    for carpal in anatomy.CARPALS:
        part = label_map == anatomy.bone_labels(carpal)[0]
        if part.any():
            mask |= _without_strays(part)
    rows, cols = np.nonzero(mask)
    if len(rows) < MIN_BONE_PIXELS:
        return None
    r, c = transform.to_original(rows, cols)
    return np.stack([r, c], axis=1)


def _finger_direction(points: dict[str, np.ndarray | None]) -> np.ndarray | None:
    """Mean unit direction from each finger bone's centroid to the next bone's along its ray
    (metacarpal -> proximal -> middle -> distal phalanx), ``None`` with no such pair."""
    steps = []
    for digit in range(1, 6):
        ray = [f"metacarpal_{digit}", f"proximal_phalanx_{digit}"] + (
            [f"middle_phalanx_{digit}"] if digit > 1 else []) + [f"distal_phalanx_{digit}"]
        found = [points[b].mean(axis=0) for b in ray if points.get(b) is not None]
        for a, b in zip(found, found[1:]):
            d = np.linalg.norm(b - a)
            if d > 1e-6:
                steps.append((b - a) / d)
    if not steps:
        return None
    total = np.sum(steps, axis=0)
    norm = np.linalg.norm(total)
    return total / norm if norm > 1e-6 else None


def crops_from_reading(film: np.ndarray, reading: Any) -> BoneCrops:
    """:func:`bone_crops` of a :class:`boneage.segment.FilmReading` of ``film``."""
    return bone_crops(film, reading.grid.label_map, reading.transform, reading.mirrored, reading.finger_angle_deg)


# ------------------------------------------------------------------------------------------------
# Network
# ------------------------------------------------------------------------------------------------

#: Standardised age target: ``(months - AGE_CENTRE) / AGE_SCALE``.
AGE_CENTRE, AGE_SCALE = 120.0, 50.0
#: Plausible output range (months).
AGE_RANGE_MONTHS = (0.0, 240.0)
WEIGHTS_FILE = "perbone.pt"
#: ONNX copy beside the weights (``python -m boneage.training.export``): runs without torch.
ONNX_FILE = "perbone.onnx"
CALIBRATION_FILE = "calibration.json"
METRICS_FILE = "metrics.json"
MODEL_VERSION = "perbone-4"


def load_crop_network(path: str | Path | None, folder_name: str, weights_file: str, onnx_file: str, exported: bool,
                      what: str, command: str, device: str = "cpu") -> tuple[Path, dict, Any]:
    """Load a network of the :class:`boneage.networks.PerBoneNet` architecture (the per-bone and the sex networks).

    Args:
        path: a weights file or a folder holding ``weights_file``; default ``data/models/<folder_name>``.
        folder_name: the model's folder under the models directory.
        weights_file, onnx_file: file names inside the folder.
        exported: on a CPU, run the ONNX copy when it was exported from these weights (no torch import).
        what, command: for the error message (what is missing, which command makes it).
        device: ``"cpu"``, or a torch device (then the network runs in torch).

    Returns:
        ``(weights path, checkpoint contents other than the weights, network)``: an
        :class:`boneage.runtime.OnnxNetwork` or a float32 torch module.

    Raises:
        FileNotFoundError: when the weights are missing.
    """
    from boneage.paths import MODELS_DIR

    folder = Path(path) if path is not None else MODELS_DIR / folder_name
    weights = folder / weights_file if folder.is_dir() else folder
    if not weights.is_file():
        raise FileNotFoundError(f"{what} not found: {weights}; run `{command}`")
    from boneage.runtime import load_checkpoint

    checkpoint, network = load_checkpoint(weights, onnx_file, exported, device)
    if network is not None:
        return weights, checkpoint, network
    from boneage.networks import PerBoneNet

    network = PerBoneNet(tuple(checkpoint["widths"]))
    network.load_state_dict({k: v.float() for k, v in checkpoint.pop("state_dict").items()})
    return weights, checkpoint, network


#: How a crop's grey levels reach a crop network: ``"window"``, the crop as cut (its own 1st-99th
#: percentiles); ``"equalised"``, each crop histogram-equalised on its own (:func:`equalise_crops`).
#: A model folder's ``calibration.json`` names its own (``crop_intensity``; absent: ``"window"``).
CROP_INTENSITIES = ("window", "equalised")


def equalise_crops(images: np.ndarray) -> np.ndarray:
    """Histogram-equalise uint8 crops, each on its own.

    Why: the per-bone network reads the grey-level distribution of a crop, not only its shapes, and a
    film's processing (another hospital's look-up table, edge enhancement, dynamic range compression)
    changes that distribution. After equalisation every crop has the same, flat distribution: only the
    order of its grey levels, i.e. the shapes, remains, and an increasing grey-level curve applied to the
    film changes next to nothing (uint8 rounding). Not the shipped choice: a network trained this way
    (``boneage train perbone --crop-intensity equalised``) read adolescent synthetic hands 18 months
    young instead of 38, but erred 0.3 months more on the real calibration hold-out (7.55 vs 7.21;
    7.44 once its training batches were re-equalised after the exposure augmentation).

    Args:
        images: uint8 crops ``(..., H, W)``.

    Returns:
        uint8 array of the same shape: each pixel's mid-rank in its own crop, scaled to 0-255.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"equalise_crops needs uint8 crops, got {images.dtype}")
    if images.ndim < 2:
        raise ValueError(f"equalise_crops needs crops of shape (..., H, W), got shape {images.shape}")
    shape = images.shape
    pixels = shape[-2] * shape[-1]
    if images.size == 0 or pixels == 0:
        return images.copy()
    flat = images.reshape(-1, pixels)
    out = np.empty_like(flat)
    # One crop at a time: a 256-entry table per crop, no batch-sized int64 temporaries.
    for i, crop in enumerate(flat):
        counts = np.bincount(crop, minlength=256)
        mid_rank = np.cumsum(counts) - counts / 2.0
        lut = np.round(mid_rank * (255.0 / pixels)).astype(np.uint8)
        out[i] = lut[crop]
    return out.reshape(shape)


def crop_network_inputs(crops: BoneCrops, idx: np.ndarray, intensity: str = "window") -> np.ndarray:
    """The present crops ``idx`` as a crop network's input: float32 ``(N, 1, *CROP_SHAPE)`` in [0, 1].

    Args:
        crops: a film's crops.
        idx: the regions to feed.
        intensity: one of :data:`CROP_INTENSITIES`, as the network was trained.

    Returns:
        float32 ``(len(idx), 1, *CROP_SHAPE)``.

    Raises:
        ValueError: for an unknown ``intensity``.
    """
    return crop_intensity_inputs(crops.images[idx], intensity)[:, None]


#: Test-time views of every crop, ``(turn in degrees, mirrored)``, read and averaged: turns and the
#: mirror that training drew. Chosen on the calibration hold-out with `perbone-3` (consensus MAE
#: 7.25 -> 7.11 months, mean single-bone MAE 10.2 -> 9.8); `perbone-4` 7.12 -> 7.07. A calibration
#: records the views it was fitted with; one without them is read with the first view alone.
TEST_TIME_VIEWS = ((0.0, False), (0.0, True), (-6.0, False), (-6.0, True), (6.0, False), (6.0, True))


def crop_views(inputs: np.ndarray, views: Sequence[tuple[float, bool]] = TEST_TIME_VIEWS) -> np.ndarray:
    """Every crop turned and mirrored as ``views`` say, view after view.

    The map of training's augmentation (``torch.nn.functional.affine_grid`` over normalised
    coordinates, bilinear, edge values past the border), in NumPy: the ONNX path needs no torch.

    Args:
        inputs: float32 ``(N, 1, H, W)`` network inputs.
        views: ``(turn_deg, mirrored)`` pairs.

    Returns:
        float32 ``(len(views) * N, 1, H, W)``: the N crops of the first view, then of the next.
    """
    n, _, h, w = inputs.shape
    y, x = np.meshgrid((2 * np.arange(h) + 1) / h - 1, (2 * np.arange(w) + 1) / w - 1, indexing="ij")
    crop = np.broadcast_to(np.arange(n, dtype=float)[:, None, None], (n, h, w))
    out = []
    for turn, mirrored in views:
        cos, sin, sign = np.cos(np.radians(turn)), np.sin(np.radians(turn)), -1.0 if mirrored else 1.0
        rows = ((sign * sin * x + cos * y + 1) * h - 1) / 2  # output pixel -> input pixel
        cols = ((sign * cos * x - sin * y + 1) * w - 1) / 2
        coords = np.stack([crop, np.broadcast_to(rows, (n, h, w)), np.broadcast_to(cols, (n, h, w))])
        out.append(ndimage.map_coordinates(inputs[:, 0], coords, order=1, mode="nearest")[:, None])
    return np.concatenate(out).astype(np.float32, copy=False)


def crop_intensity_inputs(images: np.ndarray, intensity: str = "window") -> np.ndarray:
    """uint8 crops as float32 network inputs in [0, 1] (see :data:`CROP_INTENSITIES`).

    Args:
        images: uint8 crops ``(..., H, W)``.
        intensity: ``window`` (the grey levels as cut) or ``equalised`` (:func:`equalise_crops`).

    Returns:
        float32 array of the same shape.

    Raises:
        ValueError: for an unknown ``intensity``.
    """
    if intensity not in CROP_INTENSITIES:
        raise ValueError(f"unknown crop intensity {intensity!r}; expected one of {CROP_INTENSITIES}")
    if intensity == "equalised":
        images = equalise_crops(images)
    return images.astype(np.float32) / np.float32(255.0)


# ------------------------------------------------------------------------------------------------
# Consensus of the bones
# ------------------------------------------------------------------------------------------------
#: A bone whose age lies more than this many of its own scales from the consensus of the others
#: is dropped from the consensus (and said).
DISAGREEMENT_SCALES = 3.0
#: Fewest RUS bones with an age for a per-bone estimate (fewer: the method is withheld).
MIN_RUS_BONES = 7


#: Smallest per-bone scale the consensus takes (months): a zero scale would weigh infinitely. The
#: network's smallest is ``AGE_SCALE * exp(-6)`` = 0.12 months, so this never binds on its output.
MIN_SCALE_MONTHS = 0.1


def consensus(ages: np.ndarray, scales: np.ndarray, usable: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Robust consensus of per-bone ages.

    A weighted median (weights 1 / scale) gives a first consensus; each bone's distance from it
    in units of its own scale decides whether it disagrees (:data:`DISAGREEMENT_SCALES`; never
    more than half the bones are dropped); the rest are averaged with weights 1 / scale^2.

    Args:
        ages: per-bone ages (months).
        scales: per-bone Laplace scales (months, > 0; below :data:`MIN_SCALE_MONTHS` taken as it).
        usable: which bones have an age; a bone whose age or scale is not finite, or whose scale
            is negative, is not usable whatever this says.

    Returns:
        ``(age, scale, kept)``: the consensus age, the mean scale of the kept bones (the film's
        scale before calibration: bone errors within a film are correlated, so they are not
        divided by the square root of their number), and which bones were kept. ``(nan, nan,
        none kept)`` when no bone is usable.
    """
    ages = np.asarray(ages, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.asarray(usable, bool) & np.isfinite(ages) & np.isfinite(scales) & (scales >= 0)
    idx = np.flatnonzero(valid)
    kept = np.zeros(len(ages), bool)
    if len(idx) == 0:
        return float("nan"), float("nan"), kept
    a, s = ages[idx], np.maximum(scales[idx], MIN_SCALE_MONTHS)
    centre = _weighted_median(a, 1.0 / s)
    distance = np.abs(a - centre)
    keep = distance <= DISAGREEMENT_SCALES * s
    if keep.sum() < max(1, (len(idx) + 1) // 2):  # never drop the majority
        keep = distance <= np.sort(distance)[(len(idx) - 1) // 2]
    w = 1.0 / s[keep] ** 2
    kept[idx[keep]] = True
    return float(np.sum(w * a[keep]) / np.sum(w)), float(np.mean(s[keep])), kept


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted median; where the weights split exactly in two halves (equal weights, an even
    count) the mean of the two middle values, so neither half is preferred."""
    order = np.argsort(values)
    v, cum = values[order], np.cumsum(weights[order])
    half = cum[-1] / 2.0
    k = min(int(np.searchsorted(cum, half)), len(v) - 1)
    if k + 1 < len(v) and np.isclose(cum[k], half, rtol=1e-12, atol=0.0):
        return float((v[k] + v[k + 1]) / 2.0)
    return float(v[k])


# ------------------------------------------------------------------------------------------------
# Estimator
# ------------------------------------------------------------------------------------------------
@dataclass
class BoneMaturity:
    """One bone's (or the carpus's) own age.

    Attributes:
        region: bone name, or ``"carpals"``.
        age_months, lower_90, upper_90: the bone's age and its calibrated 90% interval.
        used: the bone counted in the consensus (False: it disagreed with the others).
    """

    region: str
    age_months: float
    lower_90: float
    upper_90: float
    used: bool = True


@dataclass
class PerBoneEstimate:
    """The per-bone method's answer for one film.

    Attributes:
        age_months, lower_90, upper_90: consensus of every cropped region (RUS bones and carpus)
            and its calibrated 90% interval (``None`` when withheld).
        rus_age_months, rus_lower_90, rus_upper_90: consensus of the RUS bones alone.
        carpal_age_months, carpal_lower_90, carpal_upper_90: the carpal region's age alone.
        bones: region -> :class:`BoneMaturity`, for every region with a crop.
        dropped: regions left out of the consensus because they disagreed.
        note: why the estimate is withheld, or a caveat (sex unknown, bones dropped).
        sex_used: the sex fed to the network (``None``: sex-agnostic).
        model_version: weights version.
    """

    age_months: float | None
    lower_90: float | None
    upper_90: float | None
    rus_age_months: float | None = None
    rus_lower_90: float | None = None
    rus_upper_90: float | None = None
    carpal_age_months: float | None = None
    carpal_lower_90: float | None = None
    carpal_upper_90: float | None = None
    bones: dict[str, BoneMaturity] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    note: str | None = None
    sex_used: str | None = None
    model_version: str = MODEL_VERSION

    @property
    def available(self) -> bool:
        return self.age_months is not None


def _clip_interval(centre: float, half: float) -> tuple[float, float, float]:
    lo_r, hi_r = AGE_RANGE_MONTHS
    c = float(np.clip(centre, lo_r, hi_r))
    return c, float(max(lo_r, c - half)), float(min(hi_r, c + half))


class PerBoneEstimator:
    """The trained per-bone network and its calibration.

    Example:
        >>> est = PerBoneEstimator.load()                                   # doctest: +SKIP
        >>> est.predict(view.pixels, view.reading, "F").age_months         # doctest: +SKIP
    """

    def __init__(self, network: Any, calibration: dict, device: str = "cpu") -> None:
        from boneage.runtime import runnable

        self.network, self._forward = runnable(network, device)
        self.calibration = calibration
        self.device = str(device)
        self.model_version = calibration.get("model_version", MODEL_VERSION)
        #: The test-time views the calibration was fitted with (:data:`TEST_TIME_VIEWS`).
        self.views = tuple((float(t), bool(m)) for t, m in calibration.get("test_time_views", TEST_TIME_VIEWS[:1]))

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", exported: bool = True) -> PerBoneEstimator:
        """Load weights (fp16 on disk, float32 in memory) and calibration from a model folder.

        Args:
            path: a weights file or a folder holding :data:`WEIGHTS_FILE`; default the shipped one.
            device: ``"cpu"`` (default), or a torch device (then the network runs in torch).
            exported: on a CPU, run the ONNX copy beside the weights (:data:`ONNX_FILE`) when it
                was exported from them (same numbers; neither torch nor MONAI is imported).

        Raises:
            FileNotFoundError: when the folder has no weights.
        """
        weights, checkpoint, network = load_crop_network(path, "perbone", WEIGHTS_FILE, ONNX_FILE, exported,
                                                         "per-bone maturity weights", "boneage train perbone", device)
        calibration = dict(checkpoint.get("calibration", {}))
        cal_file = weights.parent / CALIBRATION_FILE
        if cal_file.is_file():
            calibration.update(json.loads(cal_file.read_text()))
        return cls(network, calibration, device)

    def bone_ages(self, crops: BoneCrops, sex: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Every cropped region's age and Laplace scale (months; NaN where no crop)."""
        n = len(anatomy.MATURITY_REGIONS)
        ages = np.full(n, np.nan)
        scales = np.full(n, np.nan)
        idx = np.flatnonzero(crops.present)
        if len(idx) == 0:
            return ages, scales
        views = len(self.views)
        code = np.full(len(idx) * views, sex_to_code(sex), dtype=np.float32)
        inputs = crop_views(crop_network_inputs(crops, idx, self.calibration.get("crop_intensity", "window")), self.views)
        loc, log_scale = self._forward(inputs, np.tile(idx, views).astype(np.int64), code)
        ages[idx] = (np.asarray(loc) * AGE_SCALE + AGE_CENTRE).reshape(views, -1).mean(axis=0)
        scales[idx] = (np.exp(log_scale) * AGE_SCALE).reshape(views, -1).mean(axis=0)
        return ages, scales

    def predict_crops(self, crops: BoneCrops, sex: str | None = None,
                      male_probability: float | None = None) -> PerBoneEstimate:
        """The per-bone estimate of a film's crops.

        Args:
            crops: :func:`bone_crops` of the film.
            sex: ``"M"``, ``"F"`` or ``None`` (unknown: the network's sex-agnostic mode and the
                sex-unknown calibration).
            male_probability: for an unknown sex, the film's probability of being a boy's: the
                crops are then read as both sexes and every age weighed
                (:func:`boneage.direct.mix_by_sex`) instead of the sex-agnostic mode.

        Returns:
            :class:`PerBoneEstimate`.
        """
        if sex not in ("M", "F") and male_probability is not None:
            return _mixed(self.predict_crops(crops, "M"), self.predict_crops(crops, "F"), male_probability)
        key = "sex_known" if sex in ("M", "F") else "sex_unknown"
        cal = self.calibration.get(key, {})
        ages, scales = self.bone_ages(crops, sex)
        usable = np.isfinite(ages) & np.isfinite(scales)  # a NaN out of the network is no age
        rus = np.arange(len(anatomy.RUS_BONES))
        if usable[rus].sum() < MIN_RUS_BONES:
            return PerBoneEstimate(None, None, None, note=(
                f"per-bone method withheld: only {int(usable[rus].sum())} of {len(rus)} RUS bones were found "
                f"(needs {MIN_RUS_BONES})"), sex_used=sex if key == "sex_known" else None,
                model_version=self.model_version)
        age, scale, kept = consensus(ages, scales, usable)
        # The film's age read back through its age-band bias map (boneage.agemap), then clipped.
        c, lo, hi = (float(v) for v in read_interval(AgeMap.from_dict(cal.get("age_map")), age,
                                                      cal.get("film_factor", 1.645) * scale, AGE_RANGE_MONTHS))
        rus_usable = usable.copy()
        rus_usable[len(anatomy.RUS_BONES):] = False
        rus_age, rus_scale, _ = consensus(ages, scales, rus_usable)
        # RUS, carpal and single-bone ages stay as read: they are compared with each other (discordance).
        rc, rlo, rhi = _clip_interval(rus_age, cal.get("rus_factor", 1.645) * rus_scale)
        bone_factor = cal.get("bone_factor", 1.645)
        bones = {}
        for i, region in enumerate(anatomy.MATURITY_REGIONS):
            if usable[i]:
                bc, blo, bhi = _clip_interval(ages[i], bone_factor * scales[i])
                bones[region] = BoneMaturity(region, bc, blo, bhi, bool(kept[i]))
        carpal = bones.get(anatomy.CARPAL_REGION)
        dropped = [r for r, b in bones.items() if not b.used]
        notes = _dropped_notes(dropped)
        if key == "sex_unknown":
            notes.append("sex unknown: the network's sex-agnostic reading, with its own wider interval")
        return PerBoneEstimate(
            c, lo, hi, rc, rlo, rhi,
            carpal.age_months if carpal else None, carpal.lower_90 if carpal else None,
            carpal.upper_90 if carpal else None, bones, dropped, "; ".join(notes) or None,
            sex if key == "sex_known" else None, self.model_version)

    def predict(self, film: np.ndarray, reading: Any, sex: str | None = None) -> PerBoneEstimate:
        """Crop a film by its segmenter reading and estimate (see :meth:`predict_crops`)."""
        return self.predict_crops(crops_from_reading(film, reading), sex)


def _dropped_notes(dropped: list[str]) -> list[str]:
    """The note naming the regions left out of the consensus (none: no note)."""
    if not dropped:
        return []
    return ["left out of the consensus because they disagree with the other bones: "
            + ", ".join(anatomy.display_name(r) for r in dropped)]


def _mixed(male: PerBoneEstimate, female: PerBoneEstimate, male_probability: float) -> PerBoneEstimate:
    """A film's per-bone estimate read as a boy and as a girl, weighed by its male probability."""
    from boneage.direct import SEX_MIXED_NOTE, mix_by_sex

    if male.age_months is None or female.age_months is None:  # the same crops: both withheld or neither
        return replace(male, sex_used=None)

    def mix(a: tuple, b: tuple) -> tuple:
        return (None, None, None) if a[0] is None or b[0] is None else mix_by_sex(a, b, male_probability)

    bones = {}
    for region, m in male.bones.items():
        f = female.bones.get(region)
        if f is not None:
            age, lo, hi = mix_by_sex((m.age_months, m.lower_90, m.upper_90), (f.age_months, f.lower_90, f.upper_90),
                                     male_probability)
            bones[region] = BoneMaturity(region, age, lo, hi, m.used and f.used)
    dropped = [r for r, b in bones.items() if not b.used]
    notes = _dropped_notes(dropped) + [SEX_MIXED_NOTE.format(p=male_probability)]
    return PerBoneEstimate(
        *mix((male.age_months, male.lower_90, male.upper_90), (female.age_months, female.lower_90, female.upper_90)),
        *mix((male.rus_age_months, male.rus_lower_90, male.rus_upper_90),
             (female.rus_age_months, female.rus_lower_90, female.rus_upper_90)),
        *mix((male.carpal_age_months, male.carpal_lower_90, male.carpal_upper_90),
             (female.carpal_age_months, female.carpal_lower_90, female.carpal_upper_90)),
        bones, dropped, "; ".join(notes), None, male.model_version)


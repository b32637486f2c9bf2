"""Per-bone measurements from a bone label map (``boneage.anatomy`` ids), with plausibility flags.

Lengths are taken along each bone's own long axis (principal axis of its shaft + epiphysis pixels):
``length = max projection - min projection + 1 px``, times the pixel spacing when the image is
calibrated. Maturity is read from the split labels: whether an epiphysis is ossified, how wide it
is against its metaphysis (it widens, then caps), and whether it has fused (no physis gap left
between epiphysis and shaft). Carpals: which are ossified and their areas. Every measurement of a
bone that is absent, cut off at the border, fragmented, or of impossible shape is flagged, not
silently reported as good.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from boneage import anatomy

#: Bumped whenever a change here changes the numbers measured from the same label map (it keys
#: cached film features, see :func:`boneage.training.multistep.film_features`).
MEASURE_VERSION = "measure-3"
#: Fewer pixels than this (at the label map's resolution) and a structure counts as absent.
MIN_PIXELS = 4
#: Fraction of the epiphysis width in direct contact with the shaft above which it is fused.
FUSED_CONTACT = 0.5
#: A second shaft piece up to this fraction of the main piece's area is a stray label fragment
#: (dropped); a larger one makes the shaft ``fragmented``.
STRAY_FRACTION = 0.25
#: Reference bone for scale-free ratios (long, always visible, late to fuse).
SCALE_BONE = "metacarpal_3"


@dataclass
class BoneMeasurement:
    """Measurements of one bone. Pixel values are in the label map's own pixels.

    Attributes:
        bone: canonical name.
        present: any pixels of the bone at all.
        length_px / length_mm: whole-bone length along its long axis (epiphysis included).
        width_px / width_mm: mid-shaft width (tubular bones, radius, ulna) or the minor axis
            (carpals).
        area_px / area_mm2: pixel area of the whole bone.
        epiphysis_present: ossified epiphysis seen (``None`` for carpals).
        epiphysis_width_px: epiphysis extent across the bone axis.
        metaphysis_width_px: shaft width at the epiphyseal end.
        epiphysis_ratio: epiphysis width / metaphysis width (grows to ~1, then caps).
        fusion_contact: fraction of the epiphysis width touching the shaft (0 open physis, 1 fused).
        fused: ``fusion_contact >= FUSED_CONTACT`` (``None`` when there is no epiphysis).
        axis_angle_deg: direction of the long axis (image coordinates, 0 = along rows).
        length_complete: False when the bone runs off the image (radius and ulna usually do):
            its length is then a lower bound, but its epiphysis is still measured.
        pieces_dropped: label fragments left out of the measurement (shaft pieces much smaller
            than the main one, epiphysis pieces at the wrong end of the bone).
        plausible: False when any flag below makes the numbers untrustworthy.
        flags: reasons (``absent``, ``touches_border``, ``fragmented``, ``implausible_shape``...).
    """

    bone: str
    present: bool = False
    length_px: float | None = None
    length_mm: float | None = None
    width_px: float | None = None
    width_mm: float | None = None
    area_px: float = 0.0
    area_mm2: float | None = None
    epiphysis_present: bool | None = None
    epiphysis_width_px: float | None = None
    metaphysis_width_px: float | None = None
    epiphysis_ratio: float | None = None
    fusion_contact: float | None = None
    fused: bool | None = None
    axis_angle_deg: float | None = None
    length_complete: bool = True
    pieces_dropped: int = 0
    plausible: bool = False
    flags: list[str] = field(default_factory=list)

    def scaled(self, factor: float) -> BoneMeasurement:
        """The same measurement with pixel quantities multiplied by ``factor`` (resampling)."""
        out = BoneMeasurement(**{**asdict(self), "flags": list(self.flags)})
        for name in ("length_px", "width_px", "epiphysis_width_px", "metaphysis_width_px"):
            value = getattr(out, name)
            if value is not None:
                setattr(out, name, value * factor)
        out.area_px = self.area_px * factor * factor
        return out


@dataclass
class Measurements:
    """All bones of one hand.

    Attributes:
        bones: bone name -> :class:`BoneMeasurement`, for every bone of ``anatomy.BONES``.
        spacing_mm: ``(row, col)`` spacing of the label map, or ``None`` (lengths in px only).
        shape: label map shape.
        finger_rays: digits whose bones lie in a hand's layout (see :func:`finger_rays`).
    """

    bones: dict[str, BoneMeasurement]
    spacing_mm: tuple[float, float] | None
    shape: tuple[int, int]
    finger_rays: int = 0

    @property
    def carpal_count(self) -> int:
        """Number of ossified carpal bones seen (0-8)."""
        return sum(1 for b in anatomy.CARPALS if self.bones[b].present)

    def features(self) -> dict[str, float]:
        """Scale-free maturity features (NaN where not measurable), for reference tables and
        the regression. They need no pixel spacing and survive a uniform rescale of the image.

        Returns:
            ``{feature name: value}`` with a fixed key set (see :func:`feature_names`).
        """
        scale = self.bones[SCALE_BONE]
        ref_len = scale.length_px if scale.plausible and scale.length_px else None
        feats: dict[str, float] = {"carpal_count": float(self.carpal_count)}
        for bone in anatomy.EPIPHYSEAL_BONES:
            m = self.bones[bone]
            ok = m.plausible
            feats[f"{bone}.epiphysis_present"] = _f(m.epiphysis_present) if ok else math.nan
            feats[f"{bone}.epiphysis_ratio"] = _f(m.epiphysis_ratio) if ok else math.nan
            feats[f"{bone}.fusion_contact"] = _f(m.fusion_contact) if ok and m.epiphysis_present else math.nan
            whole = ok and m.length_complete
            feats[f"{bone}.length_rel"] = m.length_px / ref_len if whole and ref_len and m.length_px else math.nan
            feats[f"{bone}.aspect"] = m.length_px / m.width_px if whole and m.width_px else math.nan
        for bone in anatomy.CARPALS:
            m = self.bones[bone]
            feats[f"{bone}.area_rel"] = (m.area_px / ref_len**2 if m.present else 0.0) if ref_len else math.nan
        return feats

    def lengths_mm(self) -> dict[str, float]:
        """Calibrated whole-bone lengths of plausible, complete bones (empty when uncalibrated)."""
        return {
            b: m.length_mm
            for b, m in self.bones.items()
            if m.plausible and m.length_complete and m.length_mm is not None
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{bone: {length_px, length_mm, ...}}`` plus hand-level facts."""
        return {
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "carpal_count": self.carpal_count,
            "finger_rays": self.finger_rays,
            "bones": {b: {k: v for k, v in asdict(m).items() if k != "bone"} for b, m in self.bones.items()},
        }


def feature_names() -> list[str]:
    """The fixed, ordered key set of :meth:`Measurements.features`."""
    empty = Measurements({b: BoneMeasurement(b) for b in anatomy.BONES}, None, (1, 1))
    return list(empty.features().keys())


def _f(value: float | bool | None) -> float:
    return math.nan if value is None else float(value)


# ---------------------------------------------------------------------------------------------
def measure(label_map: np.ndarray, spacing_mm: tuple[float, float] | float | None = None) -> Measurements:
    """Measure every bone in a label map.

    Args:
        label_map: 2-D integer array of ``boneage.anatomy`` label ids (0 background).
        spacing_mm: ``(row, col)`` pixel spacing of the label map in mm, a single number for
            square pixels, or ``None`` when the image is not calibrated (lengths in px only).

    Returns:
        :class:`Measurements` with an entry for every bone (absent ones flagged).
    """
    labels = np.asarray(label_map)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if spacing_mm is not None and np.isscalar(spacing_mm):
        spacing: tuple[float, float] | None = (float(spacing_mm), float(spacing_mm))  # type: ignore[arg-type]
    else:
        spacing = tuple(float(v) for v in spacing_mm) if spacing_mm is not None else None  # type: ignore[assignment]
    max_label = anatomy.NUM_CLASSES - 1
    # An integer map goes in as it is (find_objects ignores ids outside 1..max_label): an int32 copy
    # is 210 MB on a 7,000 x 7,500 film.
    integer = np.issubdtype(labels.dtype, np.integer) and labels.dtype.itemsize <= 4
    boxes = ndimage.find_objects(labels if integer else np.clip(labels, 0, max_label).astype(np.int32),
                                 max_label=max_label)
    bones: dict[str, BoneMeasurement] = {}
    wrist = _wrist_point(labels)
    for bone in anatomy.BONES:
        ids = anatomy.bone_labels(bone)
        slices = [boxes[i - 1] for i in ids if boxes[i - 1] is not None]
        if not slices:
            bones[bone] = BoneMeasurement(bone, flags=["absent"])
            continue
        r0 = max(min(s[0].start for s in slices) - 1, 0)
        r1 = min(max(s[0].stop for s in slices) + 1, labels.shape[0])
        c0 = max(min(s[1].start for s in slices) - 1, 0)
        c1 = min(max(s[1].stop for s in slices) + 1, labels.shape[1])
        crop = labels[r0:r1, c0:c1]
        touches = r0 == 0 and (crop[0] > 0).any() and np.isin(crop[0], ids).any() or \
            r1 == labels.shape[0] and np.isin(crop[-1], ids).any() or \
            c0 == 0 and np.isin(crop[:, 0], ids).any() or \
            c1 == labels.shape[1] and np.isin(crop[:, -1], ids).any()
        if bone in anatomy.CARPALS:
            m = _measure_carpal(bone, crop == ids[0])
        else:
            m = _measure_long_bone(bone, crop == ids[0], crop == ids[1],
                                   None if wrist is None else wrist - np.array([r0, c0]))
        if touches and bone in anatomy.FOREARM:
            # The radius and ulna always run off a hand film: only their length is incomplete,
            # their epiphyses (the maturity signs) are still fully seen.
            m.length_complete = False
        elif touches:
            m.flags.append("touches_border")
        m.plausible = m.present and not m.flags
        _calibrate(m, spacing)
        bones[bone] = m
    return Measurements(bones, spacing, labels.shape, finger_rays(labels))  # type: ignore[arg-type]


#: A digit counts as laid out like a finger when its bones' centres stray at most this fraction of
#: the ray's length from the line through its first and last bone ...
RAY_STRAIGHTNESS = 0.25
#: ... each elongated bone points along the ray (|cos| of the angle at least this) ...
RAY_ALIGNMENT = 0.8
#: ... and neighbouring bones meet end to end: their centres lie between these multiples of their
#: mean length apart (the upper bound grows by one bone length for each bone missing between them).
RAY_SPACING = (0.6, 1.6)


def finger_rays(label_map: np.ndarray) -> int:
    """Count the digits whose bones are arranged as on a hand (see :func:`finger_ray_digits`).

    Args:
        label_map: 2-D ``boneage.anatomy`` label ids.

    Returns:
        Number of digits (0-5) laid out as a finger.
    """
    return len(finger_ray_digits(label_map))


def finger_ray_digits(label_map: np.ndarray) -> list[int]:
    """The digits whose bones are arranged as on a hand: a hand-likeness check.

    A digit counts when at least three of its tubular bones (metacarpal, phalanges) are present,
    their centres follow each other in anatomical order along one roughly straight ray, each
    elongated bone points along that ray, and neighbours meet end to end. A segmentation network
    run on a chest or a tibia labels scattered blobs as finger bones; they rarely line up like
    this, so it separates a hand from a non-hand film without relying on how well each bone is
    measured.

    Args:
        label_map: 2-D ``boneage.anatomy`` label ids.

    Returns:
        Digit numbers (1 = thumb .. 5) laid out as a finger, ascending.
    """
    labels = np.asarray(label_map)
    # Layout needs no fine detail: moments on a grid of at most ~512 px keep this cheap on full-size films.
    step = max(1, max(labels.shape) // 512)
    labels = np.clip(labels[::step, ::step], 0, anatomy.NUM_CLASSES - 1).astype(np.int64)
    if not labels.any():
        return []
    # Per-label pixel moments in one pass each (bincount) over the labelled pixels only (the
    # background's moments are never read; bones are a small share of a film), then summed over
    # a bone's labels.
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    flat = flat[where]
    rr, cc = np.divmod(where, labels.shape[1])
    rr, cc = rr.astype(np.float64), cc.astype(np.float64)
    moments = np.stack([
        np.bincount(flat, weights=w, minlength=anatomy.NUM_CLASSES)
        for w in (np.ones_like(rr), rr, cc, rr * rr, cc * cc, rr * cc)
    ])
    rays = []
    for d in range(1, 6):
        bones = []  # (position in the digit, centre, unit long axis, length, elongated)
        for position, bone in enumerate(anatomy.digit_bones(d)):
            n, sr, sc, srr, scc, src = moments[:, anatomy.bone_labels(bone)].sum(axis=1)
            if n < MIN_PIXELS:
                continue
            centre = np.array([sr / n, sc / n])
            cov = np.array([[srr / n, src / n], [src / n, scc / n]]) - np.outer(centre, centre)
            evals, evecs = np.linalg.eigh(cov)
            length = math.sqrt(12 * max(evals[1], 0.0))
            bones.append((position, centre, evecs[:, 1], length, evals[1] > 4 * max(evals[0], 1e-9)))
        if len(bones) >= 3 and _laid_out_as_a_finger(bones):
            rays.append(d)
    return rays


def _laid_out_as_a_finger(bones: list[tuple[int, np.ndarray, np.ndarray, float, bool]]) -> bool:
    pts = np.stack([b[1] for b in bones])
    axis = pts[-1] - pts[0]
    span = float(np.hypot(*axis))
    if span == 0:
        return False
    axis /= span
    along = (pts - pts[0]) @ axis
    across = np.abs((pts - pts[0]) @ np.array([-axis[1], axis[0]]))
    if not (np.all(np.diff(along) > 0) and across.max() <= RAY_STRAIGHTNESS * span):
        return False
    if any(elongated and abs(float(direction @ axis)) < RAY_ALIGNMENT for _, _, direction, _, elongated in bones):
        return False
    lo, hi = RAY_SPACING
    for (p0, c0, _, l0, _), (p1, c1, _, l1, _) in zip(bones, bones[1:]):
        mean_length = (l0 + l1) / 2
        gap = float(np.hypot(*(c1 - c0)))
        if not lo * mean_length <= gap <= (hi + (p1 - p0 - 1)) * mean_length:
            return False
    return True


@dataclass
class ShaftProfile:
    """Grey levels across the middle of one shaft (how a film draws bone against soft tissue).

    Attributes:
        soft: soft tissue beside the shaft (1.3-1.6 half-widths from its axis).
        cortex_above_soft: the cortex's peak (0.6-1.0 half-widths) minus ``soft``.
        medulla_share: the centre's (|offset| <= 0.2 half-widths) height above ``soft`` as a share of the
            cortex's: near 1 for a full medulla, lower for an empty canal between bright cortices.
        width_over_length: the shaft's mean width over its major-axis length.
        cortex_fraction: one minus the offset (in half-widths, 0.2-1.0, both sides averaged) of the
            brightest point across the shaft. Where the medullary canal is darker than the cortex, the
            ray grazing the canal is the brightest, so this reads the cortex's share of the half-width;
            blur pulls it towards the axis, so compare it between films of like resolution only. NaN
            when the brightest point is at 0.2 (no canal edge: a full medulla) or the shaft is under
            8 pixels wide.
        fine_texture: the grain inside the shaft against its contrast: the SD, over the inner half of its width
            (|offset| <= 0.5 half-widths) in its middle 30%, of the film minus its Gaussian blur at a fifth of the
            half-width, over ``cortex_above_soft``. Trabecular struts and film noise raise it. Its scale follows
            the shaft's width, not the pixel, yet grain finer than a pixel is lost: compare films of like
            resolution. NaN under ``_MIN_CORTEX_WIDTH_PX``.
    """

    soft: float
    cortex_above_soft: float
    medulla_share: float
    width_over_length: float
    cortex_fraction: float
    fine_texture: float = math.nan


#: Offsets across a shaft in units of its local half-width (0 = axis, +-1 = its edges).
_ACROSS = np.linspace(-1.8, 1.8, 37)
#: Finer offsets for the cortex's peak (a twentieth of a half-width apart), and those where it is looked for.
_ACROSS_FINE = np.linspace(-1.2, 1.2, 49)
_CORTEX_SIDE = (_ACROSS_FINE > 0.2 - 1e-6) & (_ACROSS_FINE < 1.0 + 1e-6)
#: Narrower shafts (pixels) are all blur: no cortex fraction is read from them.
_MIN_CORTEX_WIDTH_PX = 8.0


def shaft_profile(pixels: np.ndarray, label_map: np.ndarray, bone: str) -> ShaftProfile | None:
    """Cross-shaft grey-level profile of ``bone``, averaged over seven cuts across its middle 30%.

    Used to compare how synthetic and real films draw bone (``benchmarks/bench_realism.py``, issue #22).

    Args:
        pixels: the film, on the label map's grid (ratios are unchanged by a linear window).
        label_map: bone labels (``boneage.anatomy`` ids).
        bone: a tubular bone.

    Returns:
        The profile, or ``None`` when the shaft has fewer than 50 pixels or no cut crosses it.
    """
    from skimage.measure import regionprops

    mask = label_map == anatomy.shaft_label(bone)
    if mask.sum() < 50:
        return None
    region = regionprops(mask.astype(np.uint8))[0]
    axis = np.array([np.cos(region.orientation), np.sin(region.orientation)])  # (row, col)
    across = np.array([-axis[1], axis[0]])
    steps = np.arange(-2 * region.axis_minor_length, 2 * region.axis_minor_length, 0.5)
    profiles, fine, widths = [], [], []
    film = pixels.astype(np.float32)
    for t in np.linspace(-0.15, 0.15, 7) * region.axis_major_length:
        centre = np.array(region.centroid) + axis * t
        on_mask = ndimage.map_coordinates(mask.astype(np.float32), centre[:, None] + across[:, None] * steps, order=0)
        inside = steps[on_mask > 0.5]
        if inside.size < 4:
            continue
        half, middle = (inside.max() - inside.min()) / 2, (inside.max() + inside.min()) / 2
        widths.append(2 * half)
        for out, offsets in ((profiles, _ACROSS), (fine, _ACROSS_FINE)):
            out.append(ndimage.map_coordinates(film, centre[:, None] + across[:, None] * (middle + offsets * half), order=1))
    if not profiles:
        return None
    p = np.mean(profiles, axis=0)
    f = np.mean(fine, axis=0)
    f = (f + f[::-1]) / 2  # both cortices: a shaft lit unevenly across still peaks at its canal's edge
    peak = float(_ACROSS_FINE[_CORTEX_SIDE][np.argmax(f[_CORTEX_SIDE])])
    cortex_fraction = (1.0 - peak if peak > _ACROSS_FINE[_CORTEX_SIDE][0] + 1e-6 and np.mean(widths) >= _MIN_CORTEX_WIDTH_PX
                       else math.nan)
    soft = float(p[(np.abs(_ACROSS) >= 1.3) & (np.abs(_ACROSS) <= 1.6)].mean())
    rise = float(p[(np.abs(_ACROSS) >= 0.6) & (np.abs(_ACROSS) <= 1.0)].max()) - soft
    medulla = float(p[np.abs(_ACROSS) <= 0.2].mean())
    fine_texture = math.nan
    half_width = float(np.mean(widths)) / 2
    if 2 * half_width >= _MIN_CORTEX_WIDTH_PX:
        grain = film - ndimage.gaussian_filter(film, max(0.7, 0.2 * half_width))
        # A grid over the shaft's middle 30% and inner half, half a pixel apart, read off the high-passed film.
        along = np.arange(-0.15, 0.15, 0.5 / region.axis_major_length) * region.axis_major_length
        offsets = np.arange(-0.5 * half_width, 0.5 * half_width, 0.5)
        t, o = np.meshgrid(along, offsets, indexing="ij")
        points = np.array(region.centroid)[:, None] + axis[:, None] * t.ravel() + across[:, None] * o.ravel()
        inside = ndimage.map_coordinates(mask.astype(np.float32), points, order=0) > 0.5
        if inside.sum() >= 20:
            values = ndimage.map_coordinates(grain, points[:, inside], order=1)
            fine_texture = float(np.std(values)) / max(rise, 1e-3)
    return ShaftProfile(soft, rise, (medulla - soft) / max(rise, 1e-3), float(np.mean(widths) / region.axis_major_length),
                        cortex_fraction, fine_texture)


def _calibrate(m: BoneMeasurement, spacing: tuple[float, float] | None) -> None:
    if spacing is None or not m.present:
        return
    if m.axis_angle_deg is not None:
        # Spacing along the bone's own axis (rows/cols may differ).
        a = math.radians(m.axis_angle_deg)
        along = math.hypot(spacing[0] * math.cos(a), spacing[1] * math.sin(a))
        across = math.hypot(spacing[0] * math.sin(a), spacing[1] * math.cos(a))
    else:
        along = across = math.sqrt(spacing[0] * spacing[1])
    m.length_mm = m.length_px * along if m.length_px is not None else None
    m.width_mm = m.width_px * across if m.width_px is not None else None
    m.area_mm2 = m.area_px * spacing[0] * spacing[1]


def _principal_axis(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (major, minor) of a point cloud ``(n, 2)`` in (row, col)."""
    centred = coords - coords.mean(axis=0)
    cov = centred.T @ centred / max(len(coords) - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    major = evecs[:, int(np.argmax(evals))]
    return major, np.array([-major[1], major[0]])


def _pieces(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected pieces of a mask: ``(piece label per pixel, pixel count of pieces 1..n)``."""
    comps, n = ndimage.label(mask)
    return comps, np.bincount(comps.ravel(), minlength=n + 1)[1:]


def _largest_fraction(mask: np.ndarray) -> float:
    _, sizes = _pieces(mask)
    return float(sizes.max() / sizes.sum()) if len(sizes) > 1 else 1.0


def _wrist_point(labels: np.ndarray) -> np.ndarray | None:
    """Centre of the carpal bones ``(row, col)``, or ``None`` when none is seen."""
    step = max(1, max(labels.shape) // 512)
    small = labels[::step, ::step]
    ids = [i for b in anatomy.CARPALS for i in anatomy.bone_labels(b)]
    rc = np.argwhere(np.isin(small, ids))
    if len(rc) < MIN_PIXELS:
        return None
    return rc.mean(axis=0) * step


def _measure_carpal(bone: str, mask: np.ndarray) -> BoneMeasurement:
    m = BoneMeasurement(bone)
    area = int(mask.sum())
    if area < MIN_PIXELS:
        m.flags.append("absent")
        return m
    m.present = True
    m.area_px = float(area)
    coords = np.argwhere(mask).astype(np.float64)
    major, minor = _principal_axis(coords)
    t = coords @ major
    s = coords @ minor
    m.length_px = float(t.max() - t.min() + 1)
    m.width_px = float(s.max() - s.min() + 1)
    m.axis_angle_deg = math.degrees(math.atan2(major[1], major[0]))
    if _largest_fraction(mask) < 0.9:
        m.flags.append("fragmented")
    if m.length_px / m.width_px > 4:
        m.flags.append("implausible_shape")
    return m


def _measure_long_bone(bone: str, shaft: np.ndarray, epiphysis: np.ndarray,
                       wrist: np.ndarray | None = None) -> BoneMeasurement:
    m = BoneMeasurement(bone)
    shaft, dropped_shaft, shaft_split = _consolidate_shaft(shaft)
    epiphysis, dropped_epiphysis, epiphysis_split = _consolidate_epiphysis(bone, shaft, epiphysis, wrist)
    m.pieces_dropped = dropped_shaft + dropped_epiphysis
    n_shaft, n_epi = int(shaft.sum()), int(epiphysis.sum())
    if n_shaft < MIN_PIXELS:
        m.flags.append("absent" if n_epi < MIN_PIXELS else "shaft_missing")
        m.present = n_epi >= MIN_PIXELS
        return m
    m.present = True
    whole = shaft | epiphysis
    m.area_px = float(whole.sum())
    shaft_xy = np.argwhere(shaft).astype(np.float64)
    # The shaft gives the bone's direction reliably (an epiphysis is a wide, short cap).
    major, minor = _principal_axis(shaft_xy)
    whole_xy = np.argwhere(whole).astype(np.float64)
    t_all = whole_xy @ major
    m.length_px = float(t_all.max() - t_all.min() + 1)
    m.axis_angle_deg = math.degrees(math.atan2(major[1], major[0]))

    t = shaft_xy @ major
    s = shaft_xy @ minor
    t_min, t_max = t.min(), t.max()
    span = t_max - t_min + 1
    widths = _slice_widths(t, s)
    mid = (widths[:, 0] >= t_min + 0.3 * span) & (widths[:, 0] <= t_max - 0.3 * span)
    m.width_px = float(np.median(widths[mid, 1])) if mid.any() else float(np.median(widths[:, 1]))

    has_epi = n_epi >= MIN_PIXELS
    m.epiphysis_present = has_epi
    if has_epi:
        epi_xy = np.argwhere(epiphysis).astype(np.float64)
        te = epi_xy @ major
        se = epi_xy @ minor
        # Width across the bone axis, robust to a stray pixel.
        m.epiphysis_width_px = float(np.percentile(se, 99) - np.percentile(se, 1) + 1)
        toward_end = te.mean() > t.mean()
        band = 0.15 * span
        near = widths[:, 0] >= t_max - band if toward_end else widths[:, 0] <= t_min + band
        m.metaphysis_width_px = float(widths[near, 1].max()) if near.any() else m.width_px
        m.epiphysis_ratio = m.epiphysis_width_px / m.metaphysis_width_px if m.metaphysis_width_px else None
        # Fusion: epiphysis pixels 4-adjacent to shaft pixels, as a fraction of its width.
        touching = epiphysis & ndimage.binary_dilation(shaft, structure=ndimage.generate_binary_structure(2, 1))
        contact = _extent_across(np.argwhere(touching).astype(np.float64) @ minor) if touching.any() else 0.0
        m.fusion_contact = float(min(1.0, contact / m.epiphysis_width_px))
        m.fused = m.fusion_contact >= FUSED_CONTACT
        if epiphysis_split:
            m.flags.append("epiphysis_fragmented")
    if shaft_split:
        m.flags.append("fragmented")
    aspect = m.length_px / max(m.width_px, 1.0)
    if bone in anatomy.TUBULAR_BONES and not (1.0 <= aspect <= 12.0):
        m.flags.append("implausible_shape")
    return m


def _consolidate_shaft(shaft: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Keep a shaft's main piece and drop small label fragments away from it.

    On real films a few pixels of a neighbouring finger's bone are often given this bone's label;
    measured together they stretch its length (joining pieces that line up along the axis made the
    real keypoint error worse, so they are not joined). A second piece larger than
    ``STRAY_FRACTION`` of the main one cannot be told from a broken-up shaft: it is kept and the
    bone is flagged ``fragmented``.

    Returns:
        ``(mask kept, pieces dropped, ambiguous)``.
    """
    comps, sizes = _pieces(shaft)
    if len(sizes) <= 1:
        return shaft, 0, False
    large = np.flatnonzero(sizes > STRAY_FRACTION * sizes.max()) + 1
    return np.isin(comps, large), len(sizes) - len(large), len(large) > 1


def _consolidate_epiphysis(bone: str, shaft: np.ndarray, epiphysis: np.ndarray,
                           wrist: np.ndarray | None) -> tuple[np.ndarray, int, bool]:
    """Keep the epiphysis pieces at the bone's epiphyseal end (:func:`anatomy.epiphysis_end`).

    A long bone ossifies from one assessed epiphysis, at the end the anatomy says: the end facing
    the carpus for the phalanges, the first metacarpal and the radius and ulna (whose distal end
    meets the carpus), the far end for metacarpals 2-5. Epiphysis-labelled pieces at the other end
    belong to the neighbouring bone's epiphysis and are dropped. Without carpals to orient by, or
    with no piece at the expected end, nothing is dropped and a split epiphysis stays flagged.

    Returns:
        ``(mask kept, pieces dropped, ambiguous)``.
    """
    comps, sizes = _pieces(epiphysis)
    n = len(sizes)
    if n <= 1:
        return epiphysis, 0, False
    split = bool(sizes.max() < 0.8 * sizes.sum())
    end = anatomy.epiphysis_end(bone)
    if wrist is None or end is None or shaft.sum() < MIN_PIXELS:
        return epiphysis, 0, split
    shaft_xy = np.argwhere(shaft).astype(np.float64)
    centre = shaft_xy.mean(axis=0)
    major, _ = _principal_axis(shaft_xy)
    toward_wrist = float((wrist - centre) @ major)
    if abs(toward_wrist) < 1e-6:
        return epiphysis, 0, split
    faces_carpus = end == "proximal" or bone in anatomy.FOREARM
    expected = np.sign(toward_wrist) * (1.0 if faces_carpus else -1.0)
    index = np.arange(1, n + 1)
    centres = np.array(ndimage.center_of_mass(np.ones_like(comps), comps, index))
    kept = index[np.sign((centres - centre) @ major) == expected]
    if not kept.size:
        return epiphysis, 0, split
    return np.isin(comps, kept), n - len(kept), False


def _extent_across(s: np.ndarray) -> float:
    return float(s.max() - s.min() + 1) if s.size else 0.0


def _slice_widths(t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Width across the axis in 1-px slices along it: array of ``(t centre, width)`` rows."""
    bins = np.floor(t - t.min()).astype(np.int64)
    n = int(bins.max()) + 1
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    np.minimum.at(lo, bins, s)
    np.maximum.at(hi, bins, s)
    valid = np.isfinite(lo)
    centres = t.min() + np.arange(n) + 0.5
    return np.stack([centres[valid], (hi - lo + 1)[valid]], axis=1)

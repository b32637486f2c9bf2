"""Synthetic left-hand radiographs with exact ground truth (``boneage synth``).

A hand is built in millimetres from a documented growth and maturity *model* (constants in
``data/synth_*.csv``, each with its sources; no published per-bone length table by age exists, so
the model is assembled from radius/ulna growth data, proportions measured on real hands and
Greulich-Pyle ossification/fusion events), then rasterised at the target resolution with a simple
X-ray physics model and film artefacts that imitate the RSNA development films.

Every image comes with its label map (:mod:`boneage.anatomy` ids), bone age, sex, a chronological
age consistent with the Brush SD, pixel spacing, the length in mm of every ossified bone and the
state of every ossification centre. Image ``i`` depends only on ``(seed, i)``.

Length convention (``lengths_mm``): the whole ossified bone along its long axis, epiphysis and the
physeal gap included once the epiphysis has ossified, for the 19 tubular bones and the carpals
(major axis). The radius and ulna run out of the field of view, so their ``lengths_mm`` value is
the length *visible in the image* (distal end to the image border); their anatomical lengths are
in :attr:`SyntheticHand.full_lengths_mm`. Lengths are true (3-D) lengths: slightly flexed fingers
are foreshortened in projection by ``cos(tilt)``, tilt at most 12 degrees (<= 2.2 %).
Spacing is given in the plane of the hand (no magnification).

Public API: :func:`generate_hand`, :func:`write_dataset`, :func:`write_examples`,
:class:`SyntheticHand`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator
from scipy.spatial import ConvexHull

from boneage import anatomy
from boneage.paths import DATA_DIR, EXAMPLES_DIR
from boneage.synth_render import (
    Canvas,
    ShapePx,
    fill_polygon,
    rounded_slab,
    soft_capsule,
    marker_patch,
    paint_shape,
    paste,
    smooth,
    text_patch,
    texture,
)

GROWTH_MODEL_FILE = DATA_DIR / "synth_growth_model.csv"
MATURITY_MODEL_FILE = DATA_DIR / "synth_maturity_model.csv"
BONE_MODEL_FILE = DATA_DIR / "synth_bone_model.csv"
SUBJECT_MODEL_FILE = DATA_DIR / "synth_subject_model.csv"

MAX_BONE_AGE_MONTHS = 228.0
#: The oldest bone age drawn by default, by sex: the last standards of the Greulich-Pyle atlas (girls 18 y,
#: boys 19 y), which are also the oldest labels of the RSNA films (216 and 228 months). A girl's hand has
#: nothing left to mature by then (in the maturity model every centre's fusion ends by 204 months), so a label
#: past 216 would be one no reader could give (issue #22: drawn up to 228, 5% of synthetic girls lay beyond
#: any real film).
MAX_BONE_AGE_MONTHS_BY_SEX = {"F": 216.0, "M": 228.0}
#: Physical field of view (long side of the film, mm) the generator draws from.
FOV_RANGE_MM = (180.0, 300.0)
#: Out-of-plane tilt of flexed fingers is limited so projected lengths stay within ~2 % of true ones.
MAX_TILT_DEG = 12.0

OSSIFICATION_STATES = ("absent", "appeared", "growing", "capped", "fusing", "fused", "mature")


# ------------------------------------------------------------------------------------------------
# Model tables
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _growth_curves() -> dict[str, PchipInterpolator]:
    df = pd.read_csv(GROWTH_MODEL_FILE, comment="#")
    return {
        sex: PchipInterpolator(g["bone_age_years"].to_numpy() * 12.0, g["fraction_of_adult_length"].to_numpy())
        for sex, g in df.groupby("sex")
    }


def growth_fraction(bone_age_months: float, sex: str) -> float:
    """Fraction of adult bone length reached at a bone age (the growth model, see its CSV).

    Args:
        bone_age_months: bone age in months (clipped to 0-228).
        sex: ``"M"`` or ``"F"``.

    Returns:
        A fraction in (0, 1].
    """
    ba = float(np.clip(bone_age_months, 0.0, MAX_BONE_AGE_MONTHS))
    return float(_growth_curves()[sex](ba))


@lru_cache(maxsize=1)
def _bone_model() -> dict[str, dict[str, float]]:
    df = pd.read_csv(BONE_MODEL_FILE, comment="#").set_index("bone")
    missing = set(anatomy.BONES) - set(df.index)
    if missing:
        raise ValueError(f"{BONE_MODEL_FILE.name} lacks bones {sorted(missing)}")
    return {b: {k: float(v) for k, v in row.items()} for b, row in df.iterrows()}


@lru_cache(maxsize=1)
def _maturity_model() -> dict[tuple[str, str], tuple[float, float, float]]:
    df = pd.read_csv(MATURITY_MODEL_FILE, comment="#")
    return {
        (r.sex, r.centre): (float(r.appear_months), float(r.fuse_begin_months), float(r.fuse_complete_months))
        for r in df.itertuples()
    }


def ossification_onset_months(sex: str, centre: str) -> float:
    """When an ossification centre appears (bone age, months), from the synthetic maturity model
    (``data/synth_maturity_model.csv``: Greulich-Pyle atlas ages).

    Args:
        sex: ``"M"`` or ``"F"``.
        centre: a carpal's or an epiphysis's canonical bone name (e.g. ``"pisiform"``, ``"radius"``).

    Returns:
        The appearance age in months.

    Raises:
        KeyError: for a centre or sex the model does not hold.
    """
    return _maturity_model()[(sex, centre)][0]


@lru_cache(maxsize=1)
def _subject_model() -> dict[str, float]:
    df = pd.read_csv(SUBJECT_MODEL_FILE, comment="#")
    return dict(zip(df["key"], df["value"].astype(float)))


@lru_cache(maxsize=1)
def _brush_sd_table() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from boneage.references import BRUSH_SD_FILE, read_table

    df = read_table(BRUSH_SD_FILE)
    out = {}
    for sex, g in df.groupby("sex"):
        g = g.sort_values("chronological_age_months")
        out[sex] = (g["chronological_age_months"].to_numpy(float), g["sd_months"].to_numpy(float))
    return out


def _brush_sd_clamped(age_months: float, sex: str) -> float:
    ages, sds = _brush_sd_table()[sex]
    return float(np.interp(age_months, ages, sds))  # held constant beyond the table's ends


# ------------------------------------------------------------------------------------------------
# Output type
# ------------------------------------------------------------------------------------------------
@dataclass
class SyntheticHand:
    """One synthetic left-hand radiograph with its exact ground truth.

    Attributes:
        image: float32 ``(rows, cols)`` in [0, 1], bone bright (as displayed; see ``monochrome1``).
        label_map: uint8 label map, same shape, :mod:`boneage.anatomy` label ids, 0 = background.
        spacing_mm: pixel spacing in mm (square pixels), in the plane of the hand.
        bone_age_months: the bone age that drove growth and maturity.
        sex: ``"M"`` or ``"F"``.
        chronological_age_months: drawn so that ``(BA - CA) / BrushSD(CA)`` is standard normal.
        lengths_mm: length of every ossified bone (see the module docstring for the convention);
            bones not yet ossified (young carpals) are absent from the dict.
        full_lengths_mm: anatomical lengths of the radius and ulna (whole bone, model).
        ossification: state of each ossification centre, keyed by structure name
            (``"radius_epiphysis"``, ``"capitate"`` ...): one of :data:`OSSIFICATION_STATES`.
        monochrome1: whether the DICOM writer stores this image inverted (MONOCHROME1).
        index, seed: where it came from.
        params: rendering parameters, for debugging and analysis: rotation, field of view, aspect, gamma, the
            attenuations (``mu_soft``, ``mu_cortex``, ``mu_medulla``), background, blur, dynamic range compression,
            edge enhancement (gain and kernel), noise and the collimation draw.
    """

    image: np.ndarray
    label_map: np.ndarray
    spacing_mm: float
    bone_age_months: float
    sex: str
    chronological_age_months: float
    lengths_mm: dict[str, float]
    full_lengths_mm: dict[str, float]
    ossification: dict[str, str]
    monochrome1: bool
    index: int
    seed: int
    params: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Geometry in mm
# ------------------------------------------------------------------------------------------------
@dataclass
class _Part:
    """A bone part in the hand frame (mm; x towards the thumb, y distal)."""

    bone: str
    label: int
    start: np.ndarray
    direction: np.ndarray
    length: float
    t_knots: np.ndarray
    halfwidth_knots: np.ndarray
    cortex_knots: np.ndarray
    cap_start: float
    cap_end: float
    density: float
    labelled: bool = True  # False: visible in the image but not in the label map (sesamoids)
    trabecular_density: float = 1.0  # the medulla's density relative to ``density``


def _unit(angle_deg: float) -> np.ndarray:
    """Unit vector of a ray angle measured from +y (distal) towards +x (the thumb)."""
    a = np.deg2rad(angle_deg)
    return np.array([np.sin(a), np.cos(a)])


_CORTEX_T = np.array([0.0, 0.12, 0.35, 0.65, 0.88, 1.0])
_CORTEX_F = np.array([0.06, 0.22, 0.40, 0.40, 0.22, 0.06])


# Calibrated on real development films (issue #22): the same segmenter and measurements run on
# rsna-dev training films and on synthetic hands, compared by bone-age band
# (epiphysis / metaphysis width, carpal area / hand area).
#: Epiphysis width relative to its metaphysis ``(when capped, when it appears)`` by bone kind (the
#: forearm's bones by name, the ulna taking the default; the radius's is :data:`_RADIUS_EPIPHYSIS_GROW_TO` and
#: :data:`_RADIUS_EPIPHYSIS_START`): distal and middle phalangeal epiphyses outgrow their metaphysis, the radius's is
#: wide early on, the metacarpal heads stay narrower than the neck's flare.
#: The starting widths were then raised x1.4 (0.45 -> 0.63, radius 0.6 -> 0.84, others 0.25 -> 0.35),
#: with the starting height (:data:`_EPIPHYSIS_HEIGHT`): the shipped per-bone network read synthetic
#: 2-6 y hands 16 months young, their new centres thin slivers beside real films' discs (issue #22).
_EPIPHYSIS_WIDTH = {
    "distal_phalanx": (1.2, 0.63),
    "middle_phalanx": (1.2, 0.63),
    "metacarpal": (0.8, 0.63),
}
#: The radius's epiphysis width against its metaphysis as it appears and as it caps, and the power of its maturity
#: in that growth (as _EPIPHYSIS_WIDTH_POWER); and the scaphoid's growth power after it appears (every other carpal's:
#: :data:`_CARPAL_GROWTH_POWER`). Module constants, not table entries, so that ``bench_realism.py --set`` reaches
#: them. Drawn to match the segmenter's measurements of real films (a radial epiphysis of 0.62 -> 1.05 at power 0.7, a
#: scaphoid at 0.7), the per-bone network read the synthetic radius and carpus 20-30 months younger than real ones, so
#: they stay as they were (issue #22, nineteenth sitting: docs/synthetic.md, "Region by region").
_RADIUS_EPIPHYSIS_START = 0.84
_RADIUS_EPIPHYSIS_GROW_TO = 1.1
_RADIUS_EPIPHYSIS_WIDTH_POWER = 0.6
#: The ulna's, as the radius's: probe knobs, neutral at the default's values (:data:`_EPIPHYSIS_WIDTH_DEFAULT`,
#: :data:`_EPIPHYSIS_WIDTH_POWER`) that it took until the twenty-eighth sitting (docs/synthetic.md, "What moves the
#: multi-step reading").
_ULNA_EPIPHYSIS_START = 0.35
_ULNA_EPIPHYSIS_GROW_TO = 1.05
_ULNA_EPIPHYSIS_WIDTH_POWER = 0.6
_SCAPHOID_GROWTH_POWER = 0.3
#: A carpal's growth towards its mature size after it appears: ``0.2 + 0.8 s**power`` of that size, ``s`` its clock's
#: progress from appearance to maturity. Real capitates of 3-7 y, their bright ossicles measured by a local threshold
#: around the segmenter's label (bench_realism.py part o), are about as large against the third metacarpal as at 7-13 y;
#: at power 0.3 synthetic ones of 3-7 y measured 0.89 x real ones' area, at 0.2 1.0 x (issue #22, twenty-fifth
#: sitting: docs/synthetic.md, "Young carpals grow sooner").
_CARPAL_GROWTH_POWER = 0.2
#: Boys' middle phalangeal epiphyses widen in proportion to their maturity (power 1; girls' and the distal
#: phalanges' keep _DIGIT_EPIPHYSIS_WIDTH_POWER). The segmenter measured synthetic boys' middle phalangeal epiphyses
#: of 7-10 y at 0.91-0.97 of their metaphysis, real boys' at 0.84-0.87 (girls' matched); at power 1, 0.84-0.88. The
#: multi-step method had read synthetic boys of 7-12 y 26-30 months old, with these epiphyses the widest part of it
#: (issue #22, nineteenth sitting: docs/synthetic.md, "Region by region").
_MIDDLE_PHALANX_EPIPHYSIS_WIDTH_POWER_BOYS = 1.0
_EPIPHYSIS_WIDTH_DEFAULT = (1.05, 0.35)
#: Epiphysis height as a share of its cartilage zone ``(when it appears, when capped)``; was 0.35 at
#: appearance.
_EPIPHYSIS_HEIGHT = (0.5, 0.9)
#: Film processing (issue #22): dynamic range compression (amount, low-pass scale in mm) and the mean
#: unsharp-mask gain of edge enhancement, set against development films with the attenuations below,
#: then halved (from 0.23 and 0.9): with both at full strength the shipped end-to-end network read
#: synthetic 6-12 y hands some 15 months older still (exploratory seeds, issue #22).
_DRC_AMOUNT = 0.12
_DRC_SIGMA_MM = 12.5
_EDGE_ENHANCEMENT = 0.45
#: Carpal size against the bone model's adult length. The hamate's: its bright ossicle (bench_realism.py part o)
#: measured 1.04-1.11 x a real one's area against the third metacarpal at 7-13 y, and 1.22 x at 3-7 y once young carpals
#: grew sooner (_CARPAL_GROWTH_POWER 0.2); at 0.93 x in length, 0.94-1.02 x (issue #22, twenty-fifth sitting). The
#: trapezium's and scaphoid's entries are neutral probe knobs for ``bench_realism.py --set`` (twenty-eighth sitting;
#: docs/synthetic.md, "What moves the multi-step reading").
_CARPAL_SIZE = {"lunate": 0.8, "hamate": 0.93, "trapezium": 1.0, "scaphoid": 1.0}
#: All carpals against the bone model: real carpi are packed, their bones touching and overlapping in
#: projection (issue #22: per-bone crops of the carpus compared with development films).
_CARPAL_SCALE = 1.11
#: Shaft width / length by bone kind relative to the bone model, at bone ages 45, 110 and 175 months:
#: the segmenter's shafts on rsna-dev training films grow more slender with age (proximal phalanx 3:
#: 0.22 -> 0.19 -> 0.175; metacarpal 3: 0.156 -> 0.124 -> 0.113), synthetic ones did not.
_SLENDERNESS_AGES = (45.0, 110.0, 175.0)
_SLENDERNESS = {
    "proximal_phalanx": (1.11, 0.935, 0.845),
    "middle_phalanx": (1.11, 0.935, 0.845),
    "distal_phalanx": (1.11, 0.935, 0.845),
    "metacarpal": (1.05, 0.84, 0.82),
}
#: Density of a shaft's medulla relative to its cortex's material, by bone kind: real metacarpals show
#: a dark medullary canal between bright cortices (centre / edge contrast 0.4-0.55 on development
#: films), phalanges and the radius a fuller one (0.75-0.8).
_TRABECULAR_DENSITY = {"metacarpal": 0.58, "forearm": 0.97}
_TRABECULAR_DENSITY_DEFAULT = 0.87
#: Mature joint ends (issue #22). The shipped per-bone network, trained on real films, read the fused
#: epiphyses of synthetic 12.5-18 y hands as those of 7-8 y olds (-91 months on average; distal phalanges
#: -95 to -137): they were trapezoid "hats" narrowing towards the joint on a waisted shaft with a small,
#: round head. Real adult joint ends are broad and flat: the base's articular surface is as wide as the
#: physis (concave, not domed) and phalangeal heads and tufts are broad, squarish condyles.
#: Epiphysis width / metaphysis width once the physis has fused (reached in proportion to fusion).
_FUSED_EPIPHYSIS_WIDTH = 1.2
#: A middle phalanx's fused epiphysis width / metaphysis width (its metaphysis still flares to meet
#: :data:`_FUSED_EPIPHYSIS_WIDTH`, so the epiphysis overhangs its shaft). The segmenter measures real middle
#: phalangeal epiphyses of 13-19 y at 1.06-1.36 of their metaphysis and widening to the end, synthetic ones
#: (at 1.2) at 1.02-1.10, flat; the multi-step regression leans on these ratios more than on any other
#: measurement. At 1.5 synthetic third middle phalanges of 15-19 y measure 0.02-0.04 above real ones, the
#: fourth 0.04-0.11 below, and on two exploratory seeds the multi-step method read hands over 12 y 1.2-1.6
#: months closer, no method worse (issue #22, twenty-second sitting: docs/synthetic.md, "The multi-step
#: method's regression, and wider fused middle phalangeal epiphyses").
_MIDDLE_PHALANX_FUSED_EPIPHYSIS_WIDTH = 1.5
#: Share of the epiphysis's joint-side dome flattened once fused.
_FUSED_JOINT_FLATTENING = 0.8
#: Probe knobs, left neutral (issue #22, eleventh sitting; docs/synthetic.md, "Adolescent cortex"): the share by
#: which a fused epiphysis's physis side narrows to its metaphysis (0: it stays a plate overhanging the shaft), and
#: the joint-side flattening of fused metacarpal heads. Drawn rounder and flush, adult joint ends looked more like
#: real films', but every method read them younger still.
_FUSED_EPIPHYSIS_BLEND = 0.0
_FUSED_METACARPAL_HEAD_FLATTENING = _FUSED_JOINT_FLATTENING
#: Share of a fused epiphysis's overhang (:data:`_FUSED_EPIPHYSIS_WIDTH`) that its metaphysis flares out to meet, in
#: proportion to fusion (issue #22, fifteenth sitting; docs/synthetic.md, "Fused ends, boys' shapes and the
#: capitate"). At 0 a fused end was a plate overhanging its shaft: adult synthetic hands showed a T-shaped step at
#: every digit's fused end and a bright slab across the distal radius and ulna, where real adult films flare smoothly
#: into a broad end; the end-to-end CNN read synthetic girls of 180-216 months as about 170 whatever their age. At 1
#: the end is flush (the end's widest point stays where it was). On three exploratory seeds the CNN, the per-bone
#: network and the combined estimate gained 0.2-0.4 months each and the multi-step method lost 0.4-0.9.
_FUSED_METAPHYSIS_FLARE = 1.0
#: Adolescent cortical thickening (issue #22, eleventh sitting). The cortex's share of a shaft's half-width
#: grows by this gain, ramped over bone ages ``_ADOLESCENT_CORTEX_START`` to ``_ADOLESCENT_CORTEX_END`` months.
#: Measured as one minus the offset of the cross-shaft grey-level peak (:func:`boneage.measure.shaft_profile`,
#: ``cortex_fraction``) on the shipped segmenter's shafts: real metacarpals 2-4 read 0.30-0.31 at 144-165 months,
#: 0.32-0.34 at 165-180, 0.34-0.35 at 180-200 and 0.37 past 200 (all 400 training-split films of 144-228 months),
#: where synthetic ones stayed at 0.28-0.31; with these values they read 0.29-0.30, 0.31-0.33, 0.35-0.37 and
#: 0.39-0.40. All five metacarpals get it (the second to fourth were measured). Real third proximal phalanges show
#: no such rise (0.23-0.24 in every band, below the synthetic 0.29-0.31), so the phalanges get none; the forearm's
#: measure is not comparable (the synthetic radius's medulla is as bright as its cortex).
_METACARPAL_ADOLESCENT_CORTEX_GAIN = 0.4
_PHALANX_ADOLESCENT_CORTEX_GAIN = 0.0
_FOREARM_ADOLESCENT_CORTEX_GAIN = 0.0
_ADOLESCENT_CORTEX_START = 160.0
_ADOLESCENT_CORTEX_END = 195.0
#: A probe knob, neutral at 1 (issue #22, twenty-third sitting; docs/synthetic.md, "Slimmer fingers and film
#: operations"): the share of the phalanges' cortical ramp with age (0.65 x at birth to 1 x at 150 months) that is
#: drawn; at 0 their cortex stays at ``_PHALANX_CORTEX_FLAT`` x at every age, as real third proximal phalanges
#: measure (cortex fraction 0.20-0.26 in every band, synthetic 0.21 rising to 0.30). Probed at 0, the look matched and
#: part (n) of the benchmark moved towards real films, but the CNN and the multi-step method read worse.
_PHALANX_CORTEX_FLAT = 0.8
_PHALANX_CORTEX_AGE_GAIN = 1.0
#: Joint spaces of the digits (issue #22, twelfth sitting): a ray's bones are ``(1.2 x mature + 2.0 x young x (1 -
#: growth fraction)) x size`` mm apart, the mature term narrowing from x1 to ``_ADOLESCENT_JOINT_SCALE`` between bone
#: ages ``_ADOLESCENT_JOINT_AGES`` (months). Measured as the gap between the shipped segmenter's masks of neighbouring
#: bones, against the third proximal phalanx's length (``benchmarks/bench_realism.py`` part k): at 200-240 months the
#: masks touch on real training-split films (0.00-0.19% at the third ray's MCP, PIP and DIP joints), where synthetic
#: hands read 1.5-3.4% before this; with it the MCP and PIP joints touch too (0.06-0.07%), the DIP stays 2.0% open.
#: Younger synthetic joints are wider than real ones too (120-150 months: 2.1-3.4% against 0.0-1.9%), but narrowing
#: them at every age (``_MATURE_JOINT_SCALE`` 0.25, a neutral probe knob like ``_YOUNG_JOINT_SCALE``) made the shipped
#: CNN read 6-12 y hands 22-32 months too old (+5 to +9 before, exploratory seeds): to the networks a narrow joint is
#: a mature one.
_ADOLESCENT_JOINT_SCALE = 0.25
_ADOLESCENT_JOINT_AGES = (150.0, 200.0)
_MATURE_JOINT_SCALE = 1.0
_YOUNG_JOINT_SCALE = 1.0
#: A phalanx's head (distal phalanx: tuft) width and end rounding at full maturity, against the bone
#: model's; they change with the cube of the epiphysis's maturity, so mostly in adolescence.
_MATURE_HEAD_WIDTH = 1.25
_MATURE_HEAD_ROUNDING = 0.5
#: Distance (mm) over which the palm, thenar and forearm slabs round off from their outline: their
#: cross-sections are rounded over about half their thickness, not flat to within 8 mm of the skin
#: (the earlier value). With 8 mm the palm was a bright block with a hard edge at the finger webs,
#: and the shipped end-to-end network read synthetic 6-12 y hands 28-41 months old on exploratory
#: seeds; with 20 mm 11-15 (issue #22).
_SOFT_TISSUE_ROUNDING_MM = 20.0
#: Deviation of the hand against the forearm (degrees, mean and SD; positive = ulnar: the forearm's
#: distal end points towards the thumb side of the hand) and the ulna's tilt towards the radius
#: (degrees; its shaft converges on the radius distally). Set against the shipped segmenter's shafts
#: on 40 rsna-dev training films of 6-12 y (issue #22): the third metacarpal leans -6.9 degrees
#: (median, IQR -13 to -2) against the radius and the radius -5.6 against the ulna; synthetic hands
#: had both at 0 (a straight forearm, parallel bones). On two exploratory seeds the end-to-end CNN and
#: the multi-step method read the hands better (22.9 -> 20.7 and 18.1 -> 16.5 months on one), the
#: per-bone network as well or better, the combined estimate within 0.6 months.
_WRIST_DEVIATION_MEAN_DEG = 10.0
_WRIST_DEVIATION_SD_DEG = 6.0
_ULNA_CONVERGENCE_DEG = 6.0
#: Carpals go on filling their cartilage after 12 y: from 144 to 192 months of bone age they grow to
#: this much beyond their share of the hand (linearly), so that the adolescent carpus is packed as on
#: real films. Synthetic carpi of 13-16 y were rounded blocks with wide gaps, read 50-85 months young by
#: the shipped per-bone network; on two exploratory seeds with 0.25 the combined estimate's, the per-bone
#: network's and the end-to-end CNN's bias over 12 y shrank by 1.4-3.4 months and the multi-step method's
#: moved within 1 (issue #22; 0.4 gained little more).
_CARPAL_ADOLESCENT_GROWTH = 0.25
#: Carpal shapes (issue #22, 2026-12-06, tenth sitting). The shipped segmenter's label maps of 160 rsna-dev training
#: films of 5-19 y (seed 20261465; medians over films of 8-19 y) against synthetic hands of the same ages and sexes:
#: real carpals are elongated (length / width: capitate 1.7, hamate 1.85, lunate 1.4, trapezium 1.85, trapezoid
#: 2.2, triquetrum 2.2) where synthetic ones were rounded blocks (1.1-1.55), the hamate and trapezoid taper to a
#: point (width 0.4 and 0.3 of the widest near one end; synthetic 0.67-0.72), and the hamate stands upright (-4 degrees
#: from the hand's axis; synthetic +19). Per bone: the factor on length / width (area kept), the long axis's angle
#: from the hand frame's x axis (degrees; the bone model's ``angle_deg``) and the half-width at 7 points along it;
#: stretch and profile are reached as the carpal matures (with the square root of its maturity), the angle from the
#: start (a young centre is nearly round). They were set by two rounds of
#: measuring and correcting on those films; the triquetrum's profile is left alone (on real films the pisiform cuts
#: it). :data:`_CARPAL_SHAPE_CALIBRATION` takes the hand that share of the way from the earlier rounded blocks
#: (0) to these shapes (1): halfway, the end-to-end CNN's and the multi-step method's readings gained on three
#: exploratory seeds, where the whole change cost the per-bone network up to 2.5 months (docs/synthetic.md).
_CARPAL_SHAPES = {
    "capitate": (1.11, 79.6, (0.61, 0.74, 0.70, 0.65, 0.62, 0.76, 1.00)),
    "hamate": (1.46, 105.8, (0.25, 0.50, 0.87, 0.99, 1.00, 0.79, 0.21)),
    "lunate": (1.69, 24.1, (0.45, 0.85, 0.99, 1.00, 0.86, 0.52, 0.28)),
    "scaphoid": (0.80, 47.0, (0.38, 0.62, 0.80, 0.92, 1.00, 1.00, 0.93)),
    "trapezium": (1.22, 14.4, (0.32, 0.54, 0.81, 1.00, 0.94, 0.74, 0.66)),
    "trapezoid": (2.3, 62.4, (0.15, 0.27, 0.49, 0.72, 0.87, 0.98, 1.00)),
    "triquetrum": (1.5, 110.0, (1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00)),
}
_CARPAL_SHAPE_CALIBRATION = 0.5
#: Young carpals' size against the rest (at up to 42 months of bone age, falling linearly to none at 84). The shipped
#: segmenter finds real capitates and hamates of 2-5 y 1.1-1.3 x as long (area 1.2-1.6 x) against the third
#: metacarpal as synthetic ones (rsna-dev training films of 24-60 months, two draws of 13 and 14; 60-84 months:
#: 1.0-1.08 x): against the metacarpal, real carpals are largest in early childhood. On three exploratory seeds (48
#: hands each) every method read the hands as well or better with it (issue #22, 2026-12-06).
_CARPAL_YOUNG_SIZE = 1.25
#: Rounding of a mature carpal's ends (share of its half-length): 0.55 for the rounded blocks, 0.2 for the
#: calibrated shapes, whose taper comes from their profile; :data:`_CARPAL_SHAPE_CALIBRATION` goes between them.
_CARPAL_END_ROUNDING = (0.55, 0.2)
#: Rounding of an open physis's facing ends (metaphysis and epiphysis), against the earlier one (1.0):
#: facing ends run parallel across the growth plate, the gap a band rather than a lens. The shipped
#: segmenter finds real third metacarpal epiphyses of 8-16 y touching their shaft over 0.94-0.95 of
#: their width and synthetic ones over 0.42-0.56 before this, 0.57-0.69 after (middle phalanges: real
#: 0.77-0.80, synthetic 0.51-0.67 -> 0.62-0.75). On two exploratory seeds the per-bone network gained
#: 1.0-1.8 months and the end-to-end CNN lost 1.8-2.7 (issue #22).
_PHYSIS_ROUNDING = 0.3
#: Probe knobs (issue #22), at values that leave the renderer as calibrated; ``bench_realism.py --set``
#: changes them for one run: the open physis's width, the height up the proximal phalanges where the
#: palm's webs end, the soft tissue's attenuation, the palm slab's thickness (mm) and the forearm's
#: against it, and the detector's saturation (``signal = 1 - exp(-k att)``; smaller is more linear).
_PHYSIS_GAP_SCALE = 1.0
_PALM_WEB_FRACTION = 0.3
_SOFT_TISSUE_MU_SCALE = 1.0
_PALM_THICKNESS_MM = 51.0
#: A finger's soft-tissue cylinder, as a share of its drawn radius (its bone's half base width plus the chubby margin):
#: 0.88 until the twenty-third sitting (issue #22; docs/synthetic.md, "Slimmer fingers and film operations"). Across
#: the middle of the second proximal and third middle phalanges, real training-split films' fingers measure 2.2-2.6 x
#: their shaft's width, synthetic ones measured 2.6-2.8; with 0.77, 2.3-2.6.
_FINGER_SOFT_TISSUE_WIDTH = 0.77
_FOREARM_TO_PALM_THICKNESS = 1.64
_DETECTOR_SATURATION = 0.88
#: Bone's X-ray attenuation against the calibrated one (cortex and medulla alike; a neutral probe knob, issue #22,
#: fourteenth sitting: docs/synthetic.md, "Girls and boys, film contrast and young hands"), and the mineral prior: a
#: bone's density is ``_NEWBORN_MINERAL + _MINERAL_GAIN x min(bone age / 180 months, 1)`` of an adult's, the radius's
#: and ulna's that times ``_FOREARM_DENSITY`` (thick bones that real films show only a little brighter than
#: metacarpals: film latitude).
_BONE_MU_SCALE = 1.0
_NEWBORN_MINERAL = 0.55
_MINERAL_GAIN = 0.45
_FOREARM_DENSITY = 0.77
#: Girls and boys (issue #22, fourteenth sitting: docs/synthetic.md, "Girls and boys, film contrast and young hands").
#: The carpal clock by sex: a carpal's growth after it appears (towards its adult size by 144 months, then adolescent
#: growth) runs at this many times the bone age. It ran on one clock for both sexes, so that every shipped reader put
#: synthetic girls further below boys of their bone age than real films allow (the readers give one image some two
#: years less as a girl than as a boy: on real films a girl looks that much more mature). Girls' carpi now mature
#: 1.16 x as fast, the atlas's ratio of boys' to girls' fusion ages (186 / 160 for the proximal phalanges, 192 / 164
#: for the metacarpals, 210 / 180 for the radius; median over every fusing centre 1.15: data/synth_maturity_model.csv).
#: A probe knob, off at 0: above 0, a girl's bones (every centre's appearance and fusion, shapes, mineral, the boys'
#: carpal clock) are drawn from the boys' maturity model at this many times her bone age, her growth and size staying
#: a girl's.
_CARPAL_CLOCK_GIRLS = 1.16
_CARPAL_CLOCK_BOYS = 1.0
_FEMALE_AS_MALE_AGE_SCALE = 0.0
#: Probe knobs, neutral at 1: the features that follow one clock for both sexes (mineral, slenderness, cortex, the
#: metacarpals' young flare, the adolescent joint spaces) are drawn at this many times a girl's / a boy's bone age.
_SHARED_CLOCK_GIRLS = 1.0
_SHARED_CLOCK_BOYS = 1.0
#: Probe knobs (issue #22, fifteenth sitting; docs/synthetic.md, "Fused ends, boys' shapes and the capitate"), neutral:
#: every tubular bone of a boy this many times as wide, forearm included, and with them his fingers' soft tissue (real
#: boys' digits and metacarpals measure 0.93-0.95 x girls' length / width at the same bone age, synthetic ones 1.0 x);
#: the power of an epiphysis's maturity in its width growth, for the middle and distal phalanges and for every other
#: bone (1.0 for the middle and distal phalanges matches real films' measured epiphysis / metaphysis widths by band
#: and sex); and a mature capitate's length against the drawn one (0.85 matches real films' capitate / third
#: metacarpal length, 0.38, and its length / width, 1.6).
_MALE_SHAFT_WIDTH = 1.0
_EPIPHYSIS_WIDTH_POWER = 0.6
_DIGIT_EPIPHYSIS_WIDTH_POWER = 0.6
_CAPITATE_MATURE_LENGTH = 1.0
#: More probe knobs (issue #22, 2026-12-06): density factors of the metacarpal and forearm epiphyses and
#: of the carpals, the carpal layout's scale about the capitate (below 1: a tighter carpus), and the share
#: of an open physis's gap closed by the time fusion begins (ramped over the last fifth of the epiphysis's
#: maturity: the physis narrows before it fuses).
_METACARPAL_EPIPHYSIS_DENSITY = 1.0
_FOREARM_EPIPHYSIS_DENSITY = 1.0
_CARPAL_DENSITY = 1.0
_CARPAL_LAYOUT_SCALE = 1.0
_PHYSIS_PREFUSION_NARROWING = 0.0
#: The heads of metacarpals 2-5 (issue #22, 2026-12-06). Measured with the shipped segmenter on 12 rsna-dev
#: training films a band (18-200 months, metacarpals 2-4) against synthetic hands of the same ages and
#: sexes, the synthetic heads sat on a flat-ended shaft flared 1.55-1.59 x its mid-width (real films
#: 1.38-1.41 under 11 y, 1.47 at 11-14, 1.60 after), across a wide physis: the epiphysis touched its shaft
#: over 0.30-0.58 of its width against 0.82-0.91 on real films. Now the flare is 0.87 x the bone model's
#: until 11 y, ramping back by 15 y (1.38-1.45, then 1.48 and 1.54), the open physis half as wide with
#: parallel, unrounded faces (contact 0.90-0.95), and the head a dome over three quarters of its height, not
#: half. The head's width against its metaphysis (0.67-0.82, real 0.61-0.78) and its height against its
#: width (0.72-0.86, real 0.74-0.87) stay close to real films'. With the forearm's physes below, on two
#: exploratory seeds the end-to-end CNN's MAE fell from 20.9 / 24.7 to 15.7 / 17.9 months, the combined
#: estimate's from 10.8 / 10.4 to 10.3 / 10.2; the per-bone network lost 0.5-0.9, the multi-step method
#: moved within 0.4.
_METACARPAL_YOUNG_FLARE = 0.87
_METACARPAL_PHYSIS_GAP = 0.5
_METACARPAL_PHYSIS_ROUNDING = 0.0
_METACARPAL_HEAD_DOME = 0.75
#: The radius's and ulna's open physes: as measured above, real 8-19 y films show the epiphysis touching
#: its metaphysis over 0.63-0.84 of its width, synthetic hands over 0.00-0.46; a quarter of the gap gives
#: 0.56-0.71 (issue #22).
_FOREARM_PHYSIS_GAP = 0.25
#: Probe knob, neutral (issue #22, twentieth sitting; docs/synthetic.md, "The ulna's physis, texture and cortex"): the
#: ulna's open physis as this share of the radius's (:data:`_FOREARM_PHYSIS_GAP`). At 0 the segmenter finds its
#: epiphysis touching its shaft over 0.73-0.86 of its width at 10-16 y (real films 0.60-0.85; at 1, 0.48-0.60), yet the
#: multi-step method's reading of 12-18 y girls moved only 3 months (-23 -> -21) and the per-bone network's ulna region
#: hardly at all.
_ULNA_PHYSIS_GAP_SHARE = 1.0
#: Probe knobs, neutral (issue #22, twentieth sitting; docs/synthetic.md, "The ulna's physis, texture and cortex"): the
#: trabecular texture's amplitude and every tubular bone's cortex thickness, as multiples of the drawn ones. Without
#: texture the per-bone network read synthetic hands 0.6 months better, yet part (d)'s fine texture finds real and
#: synthetic shafts alike and the drawn texture hardly moves it (film noise dominates); a cortex 0.7 x as thick helped
#: the per-bone network 1 month and cost the CNN 0.7 (1.4 x cost both).
_TRABECULAR_TEXTURE_SCALE = 1.0
_CORTEX_SCALE = 1.0
#: Probe knobs, neutral (issue #22; numbers in docs/synthetic.md, "Metacarpal heads and forearm physes"): the
#: metacarpal heads' width against the calibrated one and the MCP joint's space; each phalanx kind's base flare
#: and the middle phalanges' mid-shaft width (against the bone model's; the finger's soft tissue
#: and the returned width keep the model's), the share of the flare's change that the epiphysis's width
#: follows, the phalangeal physes' width, and the distal phalangeal epiphyses' height.
_METACARPAL_HEAD_WIDTH = 1.0
_MCP_JOINT_SCALE = 1.0
_PROXIMAL_PHALANX_BASE_FLARE = 1.0
_MIDDLE_PHALANX_BASE_FLARE = 1.0
_DISTAL_PHALANX_BASE_FLARE = 1.0
_MIDDLE_PHALANX_MID_WIDTH = 1.0
_PHALANX_EPIPHYSIS_FOLLOWS_FLARE = 1.0
_PHALANX_PHYSIS_GAP = 1.0
_DISTAL_PHALANX_EPIPHYSIS_HEIGHT = 1.0
#: The middle and distal phalanges' epiphyseal zone (the share of the bone its epiphysis and physis take, from the
#: bone model) this many times as long until the physis starts to fuse, back to the model's as it fuses (issue #22,
#: twenty-first sitting; docs/synthetic.md, "A learned film look, and taller phalangeal epiphyses"). At 1 the
#: segmenter measured synthetic middle-phalangeal epiphyses flatter than real ones (height / width 0.25-0.26 against
#: 0.28-0.37 by band) and touching their shaft less (contact 0.53-0.63 against 0.82-0.90); at 1.4 they measure
#: 0.29-0.31 and 0.71-0.80, the distal ones' height 0.34-0.36 (real 0.37-0.46, 0.32-0.33 at 1). On exploratory seeds
#: the CNN and the multi-step method gained 0.1-0.6 and 0.4-1.0 months. :data:`_DISTAL_PHALANX_EPIPHYSIS_HEIGHT` is
#: capped by the zone.
_MIDDLE_PHALANX_EPIPHYSIS_ZONE = 1.4
_DISTAL_PHALANX_EPIPHYSIS_ZONE = 1.3
#: The distal phalanges' mid-shaft width against the bone model's (issue #22, nineteenth sitting: docs/synthetic.md,
#: "Region by region"). Synthetic distal phalanges of 2-12 y were too slender (length / mid-width 3.3-3.5 on the
#: segmenter's masks, real 2.5-2.8), and the per-bone network, reading each region on its own, put them 20-75 months
#: older than their bone age at 2-12 y, where it reads real ones within 18. At 1.15 x the gap to real films' reading
#: shrinks in every band and sex; 1.25 x (matching the slenderness) overshoots, reading some 10-20 months young.
_DISTAL_PHALANX_MID_WIDTH = 1.15
#: Fused joint ends (issue #22, 2026-12-06). Every method read synthetic hands past full maturity as
#: 14-15 y olds: girls of 192-228 months at about 166, boys at about 185, where real training films of
#: 204-228 months read about 190 (girls) and 207 (boys). A fused epiphysis stayed a distinct plate: its
#: medulla as dense as its cortex (the shaft's emptier: 0.58-0.87 of it) and a sclerotic scar line across
#: every fused physis. Now a fusing epiphysis's medulla takes on its shaft's density in proportion to
#: fusion (its trabecular bone is continuous with the metaphysis's once the plate is gone), and the scar
#: is drawn only across the radius and ulna, where real adult films show it longest; across the digits'
#: fused physes the drawn line kept them looking open. Set with exploratory seeds (numbers in
#: docs/synthetic.md, "Fused joint ends").
_EPIPHYSIS_MEDULLA_FOLLOWS_SHAFT = 1.0
_DIGIT_PHYSIS_SCAR_DENSITY = 0.0
#: Probe knob, neutral at 1 (issue #22, twenty-seventh sitting; docs/synthetic.md, "The adolescent ulna's contact is
#: the segmenter's reading"): the radius's and ulna's scar line as a multiple of the drawn one. Without it the shipped
#: segmenter finds fused synthetic ulnae touching their shaft over less of their width, not more (0.83 / 0.45 / 0.50
#: -> 0.61 / 0.37 / 0.27 on three girls whose true masks touch over 0.97-1.0).
_FOREARM_PHYSIS_SCAR_DENSITY = 1.0
#: Probe knob, off at 0 (issue #22, twenty-seventh sitting; docs/synthetic.md, "The adolescent ulna's contact is the
#: segmenter's reading"): above 0, the ulna's epiphysis ends at the joint in a dome this share of its length deep at
#: least (a rounded head), however mature. At 0.5 the segmenter finds 12-17 y girls' ulnae touching their shaft over
#: 0.66 of their width (0.56 as drawn, real films 0.86) and the multi-step method reads them 1 month older.
_ULNA_HEAD_DOME = 0.0
#: The film's tilt (degrees, counter-clockwise; mean and SD of a normal draw, clipped to +-30). Set so that
#: the finger angles the shipped segmenter finds, as the pipeline uprights films, match 60 rsna-dev
#: training films (median -0.5, SD 7.7): with N(0, 10) the deviated wrist left synthetic fingers leaning
#: 3 degrees on average and their SD was 10.2, so the pipeline turned synthetic hands 3 degrees
#: counter-clockwise on average, with a mean absolute turn of 8 (real films: 0 and 3). N(3, 6) gives
#: median +1.3, SD 6.2 (real on that run -0.9, 6.0). Through the whole pipeline no method moved by more
#: than 1.7 months on two exploratory seeds (issue #22).
_FILM_TILT_MEAN_DEG = 3.0
_FILM_TILT_SD_DEG = 6.0
#: The radius's and ulna's physes lie this much (adult mm, scaled with the hand) further distally than
#: the bone model's layout, against the carpus. The shipped segmenter finds the lunate touching the radius
#: on real training films of 10-18 y (gap 0.03 of the third metacarpal's width; 0.15 at 6-10 y) and
#: synthetic lunates 0.28-0.42 away; with 3 mm 0.04-0.18 (issue #22, 14 films a band; that first measure read
#: touching as 0.03-0.04, where ``bench_realism.carpal_layout`` reads 0). On two exploratory
#: seeds the per-bone network gained 0.1-1.2 months, the multi-step method 0-0.8, the CNN lost 0.3-1.8.
_FOREARM_SHIFT_MM = 3.0


def _adolescent_cortex_factor(kind: str, ba: float) -> float:
    """Factor on a shaft's cortical share at bone age ``ba`` (months): 1 until the adolescent ramp starts."""
    gain = {"metacarpal": _METACARPAL_ADOLESCENT_CORTEX_GAIN, "forearm": _FOREARM_ADOLESCENT_CORTEX_GAIN}.get(
        kind, _PHALANX_ADOLESCENT_CORTEX_GAIN)
    if not gain:
        return 1.0
    ramp = float(np.interp(ba, (_ADOLESCENT_CORTEX_START, _ADOLESCENT_CORTEX_END), (0.0, 1.0)))
    # At most 0.4 x 1.4 = 0.56 of the half-width as shipped; the cap keeps a canal under any probed gain.
    return min(1.0 + gain * ramp, 0.9 / float(_CORTEX_F.max()))


def _adolescent_joint_factor(ba: float) -> float:
    """Share of the mature joint space left at bone age ``ba`` (months): 1 until ``_ADOLESCENT_JOINT_AGES[0]``, then
    down to ``_ADOLESCENT_JOINT_SCALE`` by ``_ADOLESCENT_JOINT_AGES[1]``."""
    return float(np.interp(ba, _ADOLESCENT_JOINT_AGES, (1.0, _ADOLESCENT_JOINT_SCALE)))


def _epiphysis_density(kind: str) -> float:
    """Probe factor on an epiphysis's density by bone kind (1 outside the probed kinds)."""
    return {"metacarpal": _METACARPAL_EPIPHYSIS_DENSITY, "forearm": _FOREARM_EPIPHYSIS_DENSITY}.get(kind, 1.0)


#: Probe knobs, neutral (issue #22; docs/synthetic.md, "Young forearm, phalangeal flare and framing"): where along
#: its shaft (share of its length from the proximal end) the radius and ulna start to flare towards their physis, and
#: their epiphysis's width when it appears, against the calibrated one (rising to it as the epiphysis caps).
_FOREARM_FLARE_START = 0.82
_FOREARM_YOUNG_EPIPHYSIS_WIDTH = 1.0
#: The calibrated knots (share of the shaft's length) where the radius and ulna start, go on and finish flaring.
_FOREARM_FLARE_KNOTS = (0.82, 0.9, 0.96)


def _shaft_profile(kind: str, base: float, head: float) -> tuple[np.ndarray, np.ndarray]:
    """Half-width knots (in units of mid-shaft half-width) from the proximal (t=0) to the distal end."""
    if kind == "distal_phalanx":
        t = np.array([0.0, 0.18, 0.42, 0.72, 0.9, 1.0])
        w = np.array([base, (base + 1) / 2, 0.9, 0.78, head, head * 0.85])
    elif kind == "forearm":
        t = np.array([0.0, *_FOREARM_FLARE_KNOTS, 1.0])
        first = _FOREARM_FLARE_KNOTS[0]
        # Squeezed (stretched) towards the physis; left alone at the calibrated start, so the renderer stays
        # bit-identical there.
        if _FOREARM_FLARE_START != first:
            t[1:4] = _FOREARM_FLARE_START + (t[1:4] - first) * (1 - _FOREARM_FLARE_START) / (1 - first)
        w = np.array([1.0, 1.0, (1 + head) / 2, head * 0.97, head])
    else:
        t = np.array([0.0, 0.1, 0.3, 0.55, 0.8, 0.93, 1.0])
        w = np.array([base, (base + 1) * 0.55, 1.02, 0.95, 1.0, (1 + head) / 2 * 1.05, head])
    return t, w


def _state(m: float, phi: float) -> str:
    if phi >= 1:
        return "fused"
    if phi > 0:
        return "fusing"
    if m >= 0.9:
        return "capped"
    if m >= 0.4:
        return "growing"
    return "appeared"


@dataclass
class _Hand:
    parts: list[_Part]
    lengths_mm: dict[str, float]
    full_lengths_mm: dict[str, float]
    ossification: dict[str, str]
    soft_polys: list[tuple[np.ndarray, float]]  # (polygon mm, thickness mm) or (segment, -radius)
    forearm_bones: tuple[str, ...] = ("radius", "ulna")


def _build_hand(rng: np.random.Generator, ba: float, sex: str) -> _Hand:
    """Sample one subject's hand geometry at bone age ``ba`` (months)."""
    sm = _subject_model()
    bm = _bone_model()
    mm = _maturity_model()
    frac = growth_fraction(ba, sex)
    size = float(np.exp(rng.normal(0, sm["size_factor_sd"])))
    if sex == "F":
        size *= sm["female_length_factor"]
    scale = frac * size  # adult-male layout -> this subject
    maturity_sex = sex
    if sex == "F" and _FEMALE_AS_MALE_AGE_SCALE > 0:
        # Probe: a girl's bones drawn as a boy's of this many times her bone age (her size stays a girl's).
        ba, maturity_sex = ba * _FEMALE_AS_MALE_AGE_SCALE, "M"
    ba_shared = ba * (_SHARED_CLOCK_GIRLS if maturity_sex == "F" else _SHARED_CLOCK_BOYS)
    mineral = _NEWBORN_MINERAL + _MINERAL_GAIN * min(ba_shared / 180.0, 1.0)  # young bone is less mineralised (prior)
    forearm_density = _FOREARM_DENSITY

    def tempo_appear(age: float) -> float:
        sd = max(sm["appear_tempo_sd_min_months"], sm["appear_tempo_sd_fraction"] * age)
        return age + rng.normal(0, sd)

    parts: list[_Part] = []
    lengths: dict[str, float] = {}
    full: dict[str, float] = {}
    states: dict[str, str] = {}
    soft: list[tuple[np.ndarray, float]] = []

    def noisy_len(bone: str) -> float:
        return bm[bone]["adult_length_mm"] * scale * float(np.exp(rng.normal(0, sm["bone_length_noise_sd"])))

    def tubular(bone: str, start: np.ndarray, angle: float, tilt_deg: float,
                a_true: float | None = None) -> tuple[np.ndarray, float, float]:
        """Add a long bone's shaft (+ epiphysis) from its proximal anatomical end ``start``.

        Returns its distal anatomical end, mid-shaft width and ray angle.
        """
        p = bm[bone]
        kind = anatomy.bone_kind(bone)
        a_true = noisy_len(bone) if a_true is None else a_true
        cos_t = float(np.cos(np.deg2rad(tilt_deg)))
        a_len = a_true * cos_t  # projected
        width = p["width_ratio"] * a_true * float(np.exp(rng.normal(0, sm["width_noise_sd"])))
        if sex == "M":
            width *= _MALE_SHAFT_WIDTH
        if kind in _SLENDERNESS:
            width *= float(np.interp(ba_shared, _SLENDERNESS_AGES, _SLENDERNESS[kind]))
        d = _unit(angle)
        zone = p["epiphysis_fraction"] * a_len
        end = anatomy.epiphysis_end(bone)
        appear, f0, f1 = mm[(maturity_sex, bone)]
        appear = tempo_appear(appear)
        f_sd = sm["fusion_tempo_sd_months"]
        f0 = f0 + rng.normal(0, f_sd)
        f1 = max(f0 + 2.0, f1 + rng.normal(0, f_sd))
        ossified = ba >= appear
        m = float(np.clip((ba - appear) / max(f0 - appear, 1.0), 0, 1)) if ossified else 0.0
        phi = float(np.clip((ba - f0) / (f1 - f0), 0, 1)) if ossified else 0.0
        epi_name = anatomy.structure(anatomy.epiphysis_label(bone)).name
        states[epi_name] = _state(m, phi) if ossified else "absent"
        zone_scale = {"middle_phalanx": _MIDDLE_PHALANX_EPIPHYSIS_ZONE,
                      "distal_phalanx": _DISTAL_PHALANX_EPIPHYSIS_ZONE}.get(kind, 1.0)
        if zone_scale != 1.0:  # left alone at 1, so the renderer is bit-identical to the earlier one there
            zone *= 1 + (zone_scale - 1) * (1 - phi)

        head_maturity = m**3 if kind.endswith("phalanx") else 0.0
        head_ratio = p["head_ratio"] * (1 + (_MATURE_HEAD_WIDTH - 1) * head_maturity)
        mc_head = kind == "metacarpal" and end == "distal"  # metacarpals 2-5; the first's physis is at its base
        if mc_head:
            head_ratio *= float(np.interp(ba_shared, (132.0, 180.0), (_METACARPAL_YOUNG_FLARE, 1.0)))
        flare = {"proximal_phalanx": _PROXIMAL_PHALANX_BASE_FLARE, "middle_phalanx": _MIDDLE_PHALANX_BASE_FLARE,
                 "distal_phalanx": _DISTAL_PHALANX_BASE_FLARE}.get(kind, 1.0)
        base_ratio = p["base_ratio"] * flare
        mid_w = {"middle_phalanx": _MIDDLE_PHALANX_MID_WIDTH,
                 "distal_phalanx": _DISTAL_PHALANX_MID_WIDTH}.get(kind, 1.0)
        t_k, w_k = _shaft_profile(kind, base_ratio / mid_w, head_ratio / mid_w)
        # Fusing, the metaphysis flares out to meet the epiphysis's widening (_FUSED_METAPHYSIS_FLARE).
        end_flare = 1 + (_FUSED_EPIPHYSIS_WIDTH - 1) * phi * _FUSED_METAPHYSIS_FLARE
        if end_flare != 1:
            ends = (0, 1) if end == "proximal" else (-1, -2)
            w_k[ends[0]] *= end_flare
            w_k[ends[1]] *= 1 + (end_flare - 1) * 0.5
        hw_k = w_k * width * mid_w / 2
        meta_w = (base_ratio if end == "proximal" else head_ratio) * width
        shaft_len = a_len - zone
        cortex_ramp = 0.65 + 0.35 * min(ba_shared / 150.0, 1.0)
        if kind.endswith("phalanx") and _PHALANX_CORTEX_AGE_GAIN != 1.0:
            cortex_ramp = _PHALANX_CORTEX_FLAT + (cortex_ramp - _PHALANX_CORTEX_FLAT) * _PHALANX_CORTEX_AGE_GAIN
        cortex = np.interp(t_k, _CORTEX_T, _CORTEX_F) * cortex_ramp * _CORTEX_SCALE
        cortex = cortex * _adolescent_cortex_factor(kind, ba_shared)
        # The epiphyseal end of the shaft is flat (physis); the other end is a rounded joint surface.
        # As the physis closes, metaphysis and epiphysis meet flat: no notch is left at a fused physis.
        flat = 0.12 * width * (1 - phi) * _PHYSIS_ROUNDING  # phi is 0 until the epiphysis has ossified
        if mc_head:
            flat *= _METACARPAL_PHYSIS_ROUNDING
        round_end = 0.45 * width * (p["head_ratio"] if end == "proximal" else p["base_ratio"])
        round_end *= 1 - (1 - _MATURE_HEAD_ROUNDING) * head_maturity
        if kind == "forearm":
            round_end = 0.0
        cap_start, cap_end = (flat, round_end) if end == "proximal" else (round_end, flat)
        if ossified:
            e_len = zone * (_EPIPHYSIS_HEIGHT[0] + (_EPIPHYSIS_HEIGHT[1] - _EPIPHYSIS_HEIGHT[0]) * m**0.6)
            if kind == "distal_phalanx":
                e_len *= _DISTAL_PHALANX_EPIPHYSIS_HEIGHT
            gap = (1 - phi) * (0.5 * (zone - e_len) + 0.02 * width * 2) * _PHYSIS_GAP_SCALE
            gap *= 1 - _PHYSIS_PREFUSION_NARROWING * float(np.clip((m - 0.8) / 0.2, 0, 1))
            e_len = min(e_len, zone - gap) if zone > gap else zone * 0.5
            # A thinner physis: the metaphysis reaches further into it, while the epiphysis, the joint and
            # the bone's length stay where they were.
            if mc_head:
                narrower = _METACARPAL_PHYSIS_GAP
            elif kind == "forearm":
                narrower = _FOREARM_PHYSIS_GAP * (_ULNA_PHYSIS_GAP_SHARE if bone == "ulna" else 1.0)
            else:
                narrower = _PHALANX_PHYSIS_GAP if kind.endswith("phalanx") else 1.0
            reach = gap * (1 - max(narrower, 0.0))
            grow_to, start_at = _EPIPHYSIS_WIDTH.get(bone if kind == "forearm" else kind, _EPIPHYSIS_WIDTH_DEFAULT)
            power = _EPIPHYSIS_WIDTH_POWER
            if kind == "middle_phalanx" and maturity_sex == "M":
                power = _MIDDLE_PHALANX_EPIPHYSIS_WIDTH_POWER_BOYS
            elif kind in ("middle_phalanx", "distal_phalanx"):
                power = _DIGIT_EPIPHYSIS_WIDTH_POWER
            elif bone == "radius":
                grow_to, start_at, power = (_RADIUS_EPIPHYSIS_GROW_TO, _RADIUS_EPIPHYSIS_START,
                                            _RADIUS_EPIPHYSIS_WIDTH_POWER)
            elif bone == "ulna":
                grow_to, start_at, power = _ULNA_EPIPHYSIS_GROW_TO, _ULNA_EPIPHYSIS_START, _ULNA_EPIPHYSIS_WIDTH_POWER
            e_width = meta_w * (start_at + (grow_to - start_at) * m**power)
            if kind.endswith("phalanx"):  # the flare's narrowing reaches the epiphysis by this share
                e_width *= (1 / flare) ** (1 - _PHALANX_EPIPHYSIS_FOLLOWS_FLARE)
            if mc_head:
                e_width *= _METACARPAL_HEAD_WIDTH
            if kind == "forearm":
                e_width *= _FOREARM_YOUNG_EPIPHYSIS_WIDTH + (1 - _FOREARM_YOUNG_EPIPHYSIS_WIDTH) * m
            # Fusing, the epiphysis grows to overhang its metaphysis a little: a broad, flat joint end.
            fused_width = _MIDDLE_PHALANX_FUSED_EPIPHYSIS_WIDTH if kind == "middle_phalanx" else _FUSED_EPIPHYSIS_WIDTH
            e_width = e_width * (1 - phi) + meta_w * fused_width * phi
        else:
            e_len = gap = e_width = reach = 0.0

        if end == "proximal":
            shaft_start = start + d * (zone - reach)
            epi_start = start + d * (zone - gap - e_len)
            lo = (zone - gap - e_len) if ossified else zone
            whole_proj = a_len - lo
        else:
            shaft_start = start
            epi_start = start + d * (shaft_len + gap)
            whole_proj = shaft_len + gap + e_len if ossified else shaft_len
        density = mineral * (forearm_density if kind == "forearm" else 1.0)
        shaft_medulla = _TRABECULAR_DENSITY.get(kind, _TRABECULAR_DENSITY_DEFAULT)
        parts.append(
            _Part(bone, anatomy.shaft_label(bone), shaft_start, d, shaft_len + reach, t_k, hw_k,
                  cortex, cap_start, cap_end, density, trabecular_density=shaft_medulla)
        )
        if ossified:
            # Young centres are ovoid; mature epiphyses are flatter with squarer corners.
            cap = e_len * (0.5 - 0.3 * m)
            # A maturing epiphysis is a dome: broad on the physis side (where it caps the
            # metaphysis), narrower towards the joint.
            e_t = np.array([0.0, 1.0])
            narrow = 1 - 0.3 * m * (1 - phi)  # the joint side broadens again as the physis fuses
            physis_hw = e_width / 2 + (meta_w / 2 - e_width / 2) * _FUSED_EPIPHYSIS_BLEND * phi
            if end == "proximal":  # the physis side is the distal end of the part
                e_hw = np.array([e_width / 2 * narrow, physis_hw])
            else:
                e_hw = np.array([physis_hw, e_width / 2 * narrow])
            if mc_head:
                cap = e_len * _METACARPAL_HEAD_DOME  # the metacarpal head stays rounded until it fuses
                e_hw = np.array([physis_hw, e_width / 2])
            # The physis side flattens as it fuses; the joint side keeps a fifth of its dome. That
            # flattens fused metacarpal heads too (``_FUSED_METACARPAL_HEAD_FLATTENING``), which stay
            # rounder on real films; not isolated: with the whole change the per-bone network read fused
            # third and fifth metacarpals 9-29 months closer, and keeping their dome gained no method
            # anything (issue #22, exploratory seeds).
            physis_rounding = _PHYSIS_ROUNDING * (_METACARPAL_PHYSIS_ROUNDING if mc_head else 1.0)
            physis_cap = max(cap * (1 - phi) * physis_rounding, 1e-3)
            cap *= 1 - (_FUSED_METACARPAL_HEAD_FLATTENING if mc_head else _FUSED_JOINT_FLATTENING) * phi
            if bone == "ulna" and _ULNA_HEAD_DOME > 0:
                cap = max(cap, e_len * _ULNA_HEAD_DOME)
            caps = (max(cap, 1e-3), physis_cap) if end == "proximal" else (physis_cap, max(cap, 1e-3))
            # Fusing, the epiphysis's medulla becomes its shaft's.
            epi_medulla = 1 + (shaft_medulla - 1) * phi * _EPIPHYSIS_MEDULLA_FOLLOWS_SHAFT
            parts.append(
                _Part(bone, anatomy.epiphysis_label(bone), epi_start, d, e_len, e_t, e_hw,
                      np.full(2, 0.12), caps[0], caps[1],
                      density * 0.95 * _epiphysis_density(kind), trabecular_density=epi_medulla)
            )
            scar = min(1.0, max(phi - 0.5, 0.0) * 2) * float(np.exp(-max(ba - f1, 0.0) / 36.0))
            scar *= _FOREARM_PHYSIS_SCAR_DENSITY if kind == "forearm" else _DIGIT_PHYSIS_SCAR_DENSITY
            if scar > 0.05:
                # A closing physis of the radius or ulna leaves a thin sclerotic line (the epiphyseal
                # scar), drawn from half-way through fusion and fading with an e-folding time of 3 years after it:
                # visible, not labelled. 1 mm long (at least ~1.5 px at 512 px) and half as dense as a
                # 0.5 mm line would be, so that small images do not lose or double it.
                physis = shaft_start if end == "proximal" else start + d * (shaft_len + reach)
                scar_len = max(1.0, 0.04 * width)
                parts.append(
                    _Part(bone, 0, physis - d * scar_len / 2, d, scar_len,
                          np.array([0.0, 1.0]), np.full(2, meta_w / 2 * 0.97 * end_flare), np.full(2, 0.3),
                          0.0, 0.0, density * 0.4 * scar, labelled=False)
                )
            if kind == "forearm" and m > 0.3:
                # Styloid processes grow out of the maturing epiphyses (radial: the wedge's tall
                # side; ulnar: a spike on the ulnar side). Same label as the epiphysis.
                grow = min(1.0, (m - 0.3) / 0.5)
                side = 1.0 if bone == "radius" else -1.0
                radial = np.array([d[1], -d[0]])
                sty_w = e_width * (0.4 if bone == "radius" else 0.3)
                sty_len = e_len * (0.6 + (0.5 if bone == "radius" else 0.9) * grow)
                sty_start = epi_start + d * e_len * 0.25 + radial * side * (e_width / 2 - sty_w / 2)
                parts.append(
                    _Part(bone, anatomy.epiphysis_label(bone), sty_start, d, sty_len, np.array([0.0, 0.5, 1.0]),
                          np.array([sty_w / 2, sty_w * 0.4, sty_w * 0.22]), np.full(3, 0.15), 0.0,
                          sty_w * 0.25, density * 0.95 * _epiphysis_density(kind))
                )
        if kind == "forearm":
            full[bone] = a_true - (0 if ossified else zone)
        else:
            lengths[bone] = whole_proj / cos_t
        return start + d * a_len, width, angle

    # --- forearm: radius and ulna point proximally (down) from their physes -----------------
    fore_dev = rng.normal(_WRIST_DEVIATION_MEAN_DEG, _WRIST_DEVIATION_SD_DEG)  # of the hand against the forearm
    for bone in anatomy.FOREARM:
        p = bm[bone]
        phys = np.array([p["x_mm"], p["y_mm"] + _FOREARM_SHIFT_MM]) * scale
        if bone == "ulna":  # ulnar variance: the ulna ends a little short of or beyond the radius
            phys = phys + np.array([0.0, rng.normal(0, 1.5) * scale])
        a_true = noisy_len(bone)
        # Start far proximally (off the film) so that the shaft ends exactly at the physis.
        zone = p["epiphysis_fraction"] * a_true
        shaft_angle = fore_dev + (_ULNA_CONVERGENCE_DEG if bone == "ulna" else 0.0)
        start = phys - _unit(shaft_angle) * (a_true - zone)
        tubular(bone, start, shaft_angle, 0.0, a_true)

    # --- carpals ----------------------------------------------------------------------------
    # Painting order = occlusion order in the label map; the small pisiform (palmar, projecting on
    # the triquetrum) goes last so that it is never hidden completely.
    carpal_order = ("scaphoid", "lunate", "triquetrum", "trapezium", "trapezoid", "capitate", "hamate", "pisiform")
    hub = np.array([bm["capitate"]["x_mm"], bm["capitate"]["y_mm"]])  # _CARPAL_LAYOUT_SCALE scales about it
    carpal_clock = _CARPAL_CLOCK_GIRLS if maturity_sex == "F" else _CARPAL_CLOCK_BOYS
    for bone in carpal_order:
        p = bm[bone]
        appear, _, _ = mm[(maturity_sex, bone)]
        appear = tempo_appear(appear)
        layout = hub + (np.array([p["x_mm"], p["y_mm"]]) - hub) * _CARPAL_LAYOUT_SCALE
        centre = layout * scale + rng.normal(0, 0.6, 2) * scale
        if ba < appear:
            states[bone] = "absent"
            continue
        # Carpal centres grow fast once they appear (real capitates and hamates of 2-5 y already
        # hold most of their adult share of the hand) and fill their cartilage anlage by ~12 y (boys; girls'
        # clock runs faster).
        mature_at = max(144.0, appear + 48.0)
        ba_c = ba * carpal_clock
        s = float(np.clip((ba_c - appear) / (mature_at - appear), 0, 1))
        growth_power = _SCAPHOID_GROWTH_POWER if bone == "scaphoid" else _CARPAL_GROWTH_POWER
        size_frac = 0.96 * (0.2 + 0.8 * s**growth_power) * _CARPAL_SIZE.get(bone, 1.0) * _CARPAL_SCALE
        size_frac *= 1 + (_CARPAL_YOUNG_SIZE - 1) * float(np.clip((84.0 - ba_c) / 42.0, 0, 1))
        size_frac *= 1 + _CARPAL_ADOLESCENT_GROWTH * float(np.clip((ba_c - 144.0) / 48.0, 0, 1))
        length = p["adult_length_mm"] * scale * size_frac * float(np.exp(rng.normal(0, sm["bone_length_noise_sd"])))
        aspect = 1 - (1 - p["width_ratio"]) * s**0.5
        width = length * aspect * float(np.exp(rng.normal(0, 0.04)))
        shape_f, shape_angle, shape_knots = _CARPAL_SHAPES.get(bone, (1.0, p["angle_deg"], (1.0,) * 7))
        k_shape = _CARPAL_SHAPE_CALIBRATION * s**0.5
        stretch = shape_f ** (0.5 * k_shape)
        length, width = length * stretch, width / stretch
        if bone == "capitate":
            length *= 1 + (_CAPITATE_MATURE_LENGTH - 1) * s
        angle_from_x = p["angle_deg"] + (shape_angle - p["angle_deg"]) * _CARPAL_SHAPE_CALIBRATION + rng.normal(0, 6)
        d = np.array([np.cos(np.deg2rad(angle_from_x)), np.sin(np.deg2rad(angle_from_x))])
        t_k = np.linspace(0, 1, 7)
        profile = 1 + (np.array(shape_knots) - 1) * k_shape
        hw_k = width / 2 * profile * np.exp(rng.normal(0, 0.06 * s, 7))
        mature_rounding = np.interp(_CARPAL_SHAPE_CALIBRATION, (0.0, 1.0), _CARPAL_END_ROUNDING)
        cap = length / 2 * (1 - (1 - mature_rounding) * s)
        parts.append(
            _Part(bone, anatomy.shaft_label(bone), centre - d * length / 2, d, length, t_k, hw_k,
                  np.full(7, 0.10 + 0.1 * s), cap, cap,
                  mineral * 0.95 * _CARPAL_DENSITY)
        )
        lengths[bone] = length
        states[bone] = "mature" if s >= 1 else ("appeared" if s < 0.3 else "growing")

    # --- digits -----------------------------------------------------------------------------
    # Fingers' spread beyond their metacarpal's ray: the rays themselves fan out (bone model), and the
    # index-to-little-finger angle of the 41 keypoint-annotated development hands (median 25 degrees,
    # IQR 13-37) is met with a little spread of the fingers (issue #22).
    spread = rng.uniform(0.06, 0.42)
    # Soft tissue around the bones is relatively thicker in small children (chubby fingers).
    chubby = scale**0.6 * float(np.exp(rng.normal(0, 0.12)))
    sesamoid_age = tempo_appear(mm[(maturity_sex, "thumb_sesamoid")][0])
    spread_mean = {1: -6.0, 2: 5.0, 3: 0.0, 4: -4.0, 5: -9.0}
    finger_points: list[tuple[np.ndarray, np.ndarray, float]] = []
    palm_pts: list[np.ndarray] = []
    thumb_pts: list[np.ndarray] = []
    for dgt in range(1, 6):
        bones = anatomy.digit_bones(dgt)
        mc = bones[0]
        p = bm[mc]
        start = np.array([p["x_mm"], p["y_mm"]]) * scale + rng.normal(0, 0.5, 2) * scale
        angle = p["angle_deg"] + fore_dev * 0.3 + rng.normal(0, 1.5 if dgt > 1 else 7)
        joint = (1.2 * _MATURE_JOINT_SCALE * _adolescent_joint_factor(ba_shared)
                 + 2.0 * _YOUNG_JOINT_SCALE * (1 - frac)) * size
        for k, bone in enumerate(bones):
            if k == 1:
                angle += spread * (spread_mean[dgt] + rng.normal(0, 2))
            elif k > 1:
                angle += rng.normal(0, 1.5)
            tilt = 0.0 if k == 0 else min(abs(rng.normal(0, 5.0)), MAX_TILT_DEG)
            p0 = start
            end, width, angle = tubular(bone, start, angle, tilt)
            if dgt == 1 and k == 0 and ba > sesamoid_age:
                # Thumb sesamoids at the first metacarpal head: visible, not labelled.
                dd = _unit(angle)
                nn = np.array([dd[1], -dd[0]])
                size_s = 4.5 * scale * min(1.0, 0.4 + (ba - sesamoid_age) / 36)
                for off in (-0.3, 0.25)[: 1 + int(rng.random() < 0.7)]:
                    centre_s = end - dd * 0.12 * bm[bone]["adult_length_mm"] * scale + nn * off * width * 1.7
                    parts.append(
                        _Part("sesamoid", 0, centre_s - dd * size_s / 2, dd, size_s, np.array([0.0, 1.0]),
                              np.full(2, size_s * 0.42), np.full(2, 0.2), size_s / 2, size_s / 2, mineral, False)
                    )
            base_w = bm[bone]["base_ratio"] * width
            if k == 0:
                n = np.array([-_unit(angle)[1], _unit(angle)[0]])
                for q in (p0, end):
                    for sgn in (-1, 1):
                        (thumb_pts if dgt == 1 else palm_pts).append(q + sgn * n * (base_w / 2 + 6.5 * chubby))
            else:
                finger_points.append((p0, end, base_w / 2 + 4.8 * chubby))
                if k == 1 and dgt > 1:
                    # The palm's skin reaches a third of the way up the proximal phalanges (web).
                    n = np.array([-_unit(angle)[1], _unit(angle)[0]])
                    q = p0 + (end - p0) * _PALM_WEB_FRACTION
                    palm_pts.extend([q + n * (base_w / 2 + 4.8 * chubby), q - n * (base_w / 2 + 4.8 * chubby)])
            start = end + _unit(angle) * joint * (_MCP_JOINT_SCALE if k == 0 else 1.0)
        # Fingertip pad beyond the distal phalanx.
        last_p0, last_end, r = finger_points[-1]
        finger_points[-1] = (last_p0, last_end + _unit(angle) * 1.5 * scale, r)

    # --- soft tissue outlines --------------------------------------------------------------
    rad_w = bm["radius"]["width_ratio"] * bm["radius"]["adult_length_mm"] * scale
    x_r = bm["radius"]["x_mm"] * scale + rad_w * 0.95 + 3 * scale
    x_u = bm["ulna"]["x_mm"] * scale - rad_w * 0.7 - 3 * scale
    wrist = [np.array([x_r, 5 * scale]), np.array([x_u, 5 * scale])]
    palm = np.array(palm_pts + wrist + [np.array([x_r + 2 * scale, 30 * scale])])
    hull = palm[ConvexHull(palm).vertices]
    forearm_dir = _unit(180 + fore_dev)
    far = 1.3 * FOV_RANGE_MM[1]  # beyond any film; longer polygons only cost rasterising time
    forearm = np.array([
        [x_r, 10 * scale], [x_u, 10 * scale],
        [x_u, 10 * scale] + forearm_dir * far + np.array([-10 * scale, 0]),
        [x_r, 10 * scale] + forearm_dir * far + np.array([12 * scale, 0]),
    ])
    # Thenar eminence: the first metacarpal's outline joined to the base of the second.
    mc2 = bm["metacarpal_2"]
    mc2_base = np.array([mc2["x_mm"], mc2["y_mm"]]) * scale
    thumb = np.array(thumb_pts + [mc2_base, mc2_base + _unit(mc2["angle_deg"]) * 18 * scale,
                                  np.array([x_r - 6 * scale, 30 * scale])])
    # Thicknesses set so that finger, palm and forearm soft tissue are as bright against each other
    # and against the bones as on development films (issue #22, benchmarks/bench_realism.py).
    thick_palm = _PALM_THICKNESS_MM * scale
    soft.append((hull, thick_palm))
    soft.append((forearm, thick_palm * _FOREARM_TO_PALM_THICKNESS))
    soft.append((thumb[ConvexHull(thumb).vertices], 22.0 * scale))
    for p0, p1, r in finger_points:
        # Negative thickness: a finger cylinder of radius _FINGER_SOFT_TISSUE_WIDTH x r.
        soft.append((np.stack([p0, p1]), -_FINGER_SOFT_TISSUE_WIDTH * r))
    return _Hand(parts, lengths, full, states, soft)


# ------------------------------------------------------------------------------------------------
# Image formation
# ------------------------------------------------------------------------------------------------
#: Letters drawn for the technologist's initials on lead markers.
_INITIAL_LETTERS = "ABCDEFGHJKLMNPRSTVWY"


def _sample_age_sex(rng: np.random.Generator, age_range: tuple[float, float] | None, sex: str | None) -> tuple[float, str, float]:
    s = sex if sex in ("M", "F") else ("M" if rng.random() < 0.5 else "F")
    lo, hi = age_range if age_range is not None else (0.0, MAX_BONE_AGE_MONTHS_BY_SEX[s])
    ba = float(rng.uniform(lo, hi))
    z_lim = _subject_model()["chronological_z_limit"]
    z = float(np.clip(rng.standard_normal(), -z_lim, z_lim))
    # Solve BA - CA = z * SD(CA): g is increasing in CA (|z dSD/dCA| < 1 in the Brush table).
    def g(ca_: float) -> float:
        return ca_ + z * _brush_sd_clamped(ca_, s) - ba

    lo_ca, hi_ca = ba - 80.0, ba + 80.0
    for _ in range(40):
        mid = 0.5 * (lo_ca + hi_ca)
        lo_ca, hi_ca = (mid, hi_ca) if g(mid) < 0 else (lo_ca, mid)
    ca = max(0.5 * (lo_ca + hi_ca), 0.5)
    return ba, s, float(ca)


def generate_hand(
    seed: int,
    index: int,
    size: int = 512,
    age_range: tuple[float, float] | None = None,
    sex: str | None = None,
    bone_age_months: float | None = None,
) -> SyntheticHand:
    """Generate one synthetic left-hand radiograph with its ground truth.

    Args:
        seed: dataset seed.
        index: image index; the result depends only on ``(seed, index)`` and the arguments.
        size: long side of the image in pixels (the image is portrait, width 72-100 % of it).
        age_range: ``(lo, hi)`` bone age in months to draw from (default 0-216 for girls, 0-228 for boys:
            :data:`MAX_BONE_AGE_MONTHS_BY_SEX`).
        sex: ``"M"``, ``"F"``, or ``None``/``"both"`` for either.
        bone_age_months: fix the bone age instead of drawing it (for figures and examples).

    Returns:
        A :class:`SyntheticHand`.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    ba, sx, ca = _sample_age_sex(rng, age_range, sex)
    if bone_age_months is not None:
        ba = float(bone_age_months)
        ca = ba
    hand = _build_hand(rng, ba, sx)

    # --- frame: size, aspect, field of view, rotation, placement ------------------------------
    landscape = rng.random() < 0.15  # some films are wider than tall (hand still upright)
    aspect = 1.0 if rng.random() < 0.1 else rng.uniform(0.72, 0.86)
    theta = float(np.clip(rng.normal(_FILM_TILT_MEAN_DEG, _FILM_TILT_SD_DEG), -30, 30))
    c, s_ = np.cos(np.deg2rad(theta)), np.sin(np.deg2rad(theta))
    # mm hand frame (y distal) -> upright display frame (x right, y down), then rotation.
    lin = np.array([[c, s_], [-s_, c]]) @ np.array([[1.0, 0.0], [0.0, -1.0]])
    pts = []
    for part in hand.parts:
        if part.bone in anatomy.FOREARM and part.label == anatomy.shaft_label(part.bone):
            end = part.start + part.direction * part.length
            pts += [end, end - part.direction * 25 * growth_fraction(ba, sx)]
        else:
            pts += [part.start, part.start + part.direction * part.length]
    for poly, thick in hand.soft_polys:
        if thick < 0:
            pts += list(poly)
    pts = np.array(pts) @ lin.T
    lo, hi = pts.min(0), pts.max(0)
    ext = hi - lo
    margin = 8.0
    fov_draw = rng.uniform(1.0, 1.5)
    for attempt in range(2):
        rows, cols = (int(round(size * aspect)), int(size)) if landscape else (int(size), int(round(size * aspect)))
        # The smallest spacing that fits the hand, and the one a technologist's framing gives.
        need = max((ext[1] + 2 * margin) * 1.04 / rows, (ext[0] + 2 * margin) / cols)
        fov = float(np.clip(ext[1] * fov_draw * size / rows, *FOV_RANGE_MM))
        spacing = max(fov / size, need)
        if spacing * size <= FOV_RANGE_MM[1] or not landscape:
            break
        landscape = False
    fov = spacing * size
    fov_w, fov_h = cols * spacing, rows * spacing
    # Place the hand: random left/right slack, fingertips near the top, forearm out the bottom.
    x0 = rng.uniform(margin, max(margin, fov_w - ext[0] - margin)) - lo[0]
    y_slack = fov_h - ext[1] - 2 * margin
    y0 = margin + max(y_slack, 0) * rng.uniform(0.05, 0.8) - lo[1]
    origin_px = np.array([x0, y0]) / spacing
    to_px = lin / spacing

    canvas = Canvas.empty(rows, cols)
    trab_amp = rng.uniform(0.12, 0.28) * _TRABECULAR_TEXTURE_SCALE
    texture_px = 0.3 / spacing  # one texture pixel ~ 0.3 mm: struts of ~1 mm
    visible: dict[str, list[np.ndarray]] = {}
    forearm_axes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part in hand.parts:
        start = origin_px + to_px @ part.start
        d = to_px @ part.direction
        d = d / np.hypot(*d)
        shape = ShapePx(part.label, start, d, part.length / spacing, part.t_knots,
                        part.halfwidth_knots / spacing, part.cortex_knots,
                        part.cap_start / spacing, part.cap_end / spacing, part.density,
                        trabecular_density=part.trabecular_density,
                        texture_amp=trab_amp, texture_offset=tuple(int(x) for x in rng.integers(1 << 12, 1 << 16, 2)),
                        texture_px=texture_px)
        px = paint_shape(canvas, shape, paint_label=part.labelled)
        if part.bone in anatomy.FOREARM and part.labelled and px is not None:
            visible.setdefault(part.bone, []).append(np.stack(px, 1))
            forearm_axes[part.bone] = (start, d)
    lengths = dict(hand.lengths_mm)
    for bone, chunks in visible.items():
        # The radius and ulna leave the film: their recorded length is what the image shows.
        rc = np.concatenate(chunks)
        start, d = forearm_axes[bone]
        u = (rc[:, 1] - start[0]) * d[0] + (rc[:, 0] - start[1]) * d[1]
        lengths[bone] = float((u.max() - u.min() + 1) * spacing)

    # --- soft tissue --------------------------------------------------------------------------
    # Fingers are cylinders (chord 2 sqrt(r^2 - d^2) around each phalanx); the palm, thenar and
    # forearm are slabs whose thickness rounds off from their outline.
    slab = np.zeros((rows, cols), np.float32)
    fingers = np.zeros((rows, cols), np.float32)
    for poly, thick in hand.soft_polys:
        p = poly @ to_px.T + origin_px
        if thick < 0:
            soft_capsule(fingers, p[0], p[1], -thick / spacing, spacing)
        else:
            fill_polygon(slab, p, thick)
    slab = rounded_slab(slab, _SOFT_TISSUE_ROUNDING_MM / spacing)
    tissue = smooth(np.maximum(slab, fingers), 0.5 / spacing)

    # --- X-ray physics and film -----------------------------------------------------------------
    tex = texture(rows, cols, rng)
    grain_amp = rng.uniform(0.03, 0.08)  # fine isotropic grain on top of the oriented struts
    # Attenuations (per mm) set against development films: there soft tissue is almost as bright as
    # thin bone, and a bone adds about as much brightness as its own soft tissue has (issue #22).
    mu_soft = rng.uniform(0.0099, 0.018) * _SOFT_TISSUE_MU_SCALE
    mu_cort = rng.uniform(0.0465, 0.062) * _BONE_MU_SCALE
    mu_trab = rng.uniform(0.0099, 0.0161) * _BONE_MU_SCALE
    att = (
        mu_soft * tissue
        + mu_cort * canvas.cortical * spacing
        + mu_trab * canvas.trabecular * spacing * (1 + grain_amp * tex)
    )
    signal = -np.expm1(-_DETECTOR_SATURATION * att)
    # Heel effect and uneven exposure: a gentle gradient of the background.
    gy, gx = np.linspace(-1, 1, rows, dtype=np.float32)[:, None], np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
    bg_level = rng.uniform(0.0, 0.1) if rng.random() < 0.75 else rng.uniform(0.1, 0.3)
    bg = bg_level + rng.normal(0, 0.03) * gy + rng.normal(0, 0.02) * gx
    # Exposure/window relative to the brightest bone, as a technologist or auto-window would set it.
    bone_signal = signal[::3, ::3][canvas.cortical[::3, ::3] > 0]
    hi = float(np.percentile(bone_signal, 98)) if bone_signal.size else 0.6
    ref = hi * rng.uniform(1.0, 1.1)
    gamma = rng.uniform(0.7, 1.35)
    x = signal / np.float32(ref)
    img = bg + (1 - bg) * np.clip(x, 0, 1) ** gamma
    blur = rng.uniform(0.3, 1.0)
    img = smooth(img.astype(np.float32), blur)
    # Processing as on computed-radiography films: dynamic range compression inside the anatomy
    # (large-scale contrast flattened; direct exposure stays dark), then edge enhancement.
    body = tissue > 0.5
    if body.any():
        sigma = _DRC_SIGMA_MM / spacing
        low = smooth(img, sigma)
        weight = smooth(body.astype(np.float32), sigma / 2)
        drc = _DRC_AMOUNT * rng.uniform(0.7, 1.3)
        img = img - drc * (low - float(img[body].mean())) * weight
    else:
        drc = 0.0
    amount = _EDGE_ENHANCEMENT * rng.uniform(0.5, 1.5)  # kernel in pixels, as the scanner's processing
    edge_px = rng.uniform(1.0, 3.0)
    img = img + amount * (img - smooth(img, edge_px))
    noise_sd = rng.uniform(0.004, 0.025)
    img = img + rng.standard_normal((rows, cols), dtype=np.float32) * noise_sd * (0.5 + img)

    # --- collimation, markers, labels --------------------------------------------------------
    hand_mask = tissue > 0.5
    ys, xs = np.nonzero(hand_mask)
    hbox = (ys.min(), ys.max(), xs.min(), xs.max()) if ys.size else (0, rows - 1, 0, cols - 1)
    collimation = rng.random()
    if collimation < 0.5 and ys.size:
        # A (slightly rotated) rectangle containing the hand: outside it the film is either
        # unexposed (bright) or, for a cassette/detector outline, dark with a bright rim.
        ang = np.deg2rad(rng.normal(0, 4) if rng.random() < 0.7 else rng.uniform(-20, 20))
        ca_, sa_ = np.cos(ang), np.sin(ang)
        cy, cx = rows / 2 + rng.normal(0, rows * 0.05), cols / 2 + rng.normal(0, cols * 0.05)
        hu = (xs - cx) * ca_ + (ys - cy) * sa_
        hv = -(xs - cx) * sa_ + (ys - cy) * ca_
        u_lo = hu.min() - rng.uniform(0.01, 0.25) * cols
        u_hi = hu.max() + rng.uniform(0.01, 0.25) * cols
        v_lo = hv.min() - rng.uniform(0.01, 0.2) * rows
        v_hi = hv.max() + rng.uniform(0.1, 0.6) * rows  # the forearm runs on below the hand
        gy_ = np.arange(rows, dtype=np.float32)[:, None] - np.float32(cy)
        gx_ = np.arange(cols, dtype=np.float32)[None, :] - np.float32(cx)
        u = gx_ * np.float32(ca_) + gy_ * np.float32(sa_)
        v = -gx_ * np.float32(sa_) + gy_ * np.float32(ca_)
        dist = np.maximum.reduce([u_lo - u, u - u_hi, v_lo - v, v - v_hi])  # > 0 outside
        soft_edge = np.clip(dist / max(0.6 / spacing, 0.5) + 0.5, 0, 1)
        if collimation < 0.25:
            level = rng.uniform(0.35, 0.85)
            img = img * (1 - soft_edge) + soft_edge * level
        else:
            img = img * (1 - soft_edge) + soft_edge * rng.uniform(0.0, 0.05)
            rim = np.exp(-0.5 * (dist / max(0.8 / spacing, 0.7)) ** 2)
            img = img + rng.uniform(0.1, 0.35) * rim
    if rng.random() < 0.9:
        initials = "".join(rng.choice(list(_INITIAL_LETTERS), size=int(rng.integers(2, 4))))
        h_px = int(rng.uniform(22, 38) / spacing)
        value, alpha = marker_patch("L", initials, h_px, rng)
        _place_patch(img, value, alpha, hand_mask, rng)
    if rng.random() < 0.15:
        value, alpha = text_patch(str(rng.choice(["L", "PA", "LEFT", "L HAND"])), int(6 / spacing))
        _place_patch(img, value, alpha, hand_mask, rng)
    if rng.random() < 0.15:  # many RSNA films are dim and flat
        img = rng.uniform(0.0, 0.06) + img * rng.uniform(0.35, 0.6)
    img = np.clip(img, 0, 1).astype(np.float32)

    return SyntheticHand(
        image=img,
        label_map=canvas.labels,
        spacing_mm=float(spacing),
        bone_age_months=float(ba),
        sex=sx,
        chronological_age_months=float(ca),
        lengths_mm=lengths,
        full_lengths_mm=hand.full_lengths_mm,
        ossification=hand.ossification,
        monochrome1=bool(rng.random() < 0.15),
        index=int(index),
        seed=int(seed),
        params={"rotation_deg": theta, "fov_mm": fov, "aspect": aspect, "gamma": gamma,
                "mu_soft": mu_soft, "mu_cortex": mu_cort, "mu_medulla": mu_trab, "background": bg_level,
                "blur_px": blur, "drc": drc, "edge_gain": amount, "edge_px": edge_px, "noise_sd": noise_sd,
                "collimation": collimation},
    )




def _place_patch(img: np.ndarray, value: np.ndarray, alpha: np.ndarray, hand_mask: np.ndarray,
                 rng: np.random.Generator) -> None:
    """Paste a patch where it covers as little of the hand as possible (a few random tries)."""
    rows, cols = img.shape
    h, w = value.shape
    if h >= rows or w >= cols:
        return
    best, best_cover = None, None
    for _ in range(8):
        r = int(rng.integers(0, rows - h))
        c = int(rng.integers(0, cols - w))
        cover = int(hand_mask[r : r + h, c : c + w].sum())
        if best_cover is None or cover < best_cover:
            best, best_cover = (r, c), cover
        if cover == 0:
            break
    if best_cover:  # never hide the hand: no marker rather than a marker over bone
        return
    paste(img, value, alpha, best[0], best[1])


# ------------------------------------------------------------------------------------------------
# Measuring masks (used by tests and benchmarks; the same definition as the recorded lengths)
# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def label_columns() -> list[str]:
    """Columns of ``labels.csv`` in order."""
    cols = ["id", "image", "mask", "sex", "bone_age_months", "chronological_age_months", "spacing_mm"]
    cols += [f"len_mm_{b}" for b in anatomy.BONES]
    cols += [f"full_len_mm_{b}" for b in anatomy.FOREARM]
    cols += [f"state_{c}" for c in ossification_centres()]
    cols += ["rows", "cols", "monochrome1", "rotation_deg", "seed", "index"]
    return cols


def ossification_centres() -> list[str]:
    """Names of the ossification centres whose state is recorded (epiphyses and carpals)."""
    return [s.name for s in anatomy.STRUCTURES if s.part in ("epiphysis", "whole")]


def _record(hand: SyntheticHand, image_rel: str, mask_rel: str, ident: str) -> dict:
    row = {
        "id": ident,
        "image": image_rel,
        "mask": mask_rel,
        "sex": hand.sex,
        "bone_age_months": round(hand.bone_age_months, 3),
        "chronological_age_months": round(hand.chronological_age_months, 3),
        "spacing_mm": round(hand.spacing_mm, 6),
    }
    for b in anatomy.BONES:
        v = hand.lengths_mm.get(b)
        row[f"len_mm_{b}"] = "" if v is None else round(v, 3)
    for b in anatomy.FOREARM:
        v = hand.full_lengths_mm.get(b)
        row[f"full_len_mm_{b}"] = "" if v is None else round(v, 3)
    for c in ossification_centres():
        row[f"state_{c}"] = hand.ossification.get(c, "")
    row.update(rows=hand.image.shape[0], cols=hand.image.shape[1], monochrome1=int(hand.monochrome1),
               rotation_deg=round(hand.params.get("rotation_deg", 0.0), 2), seed=hand.seed, index=hand.index)
    return row


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, compress_level=1)


def write_dicom(hand: SyntheticHand, path: str | Path) -> None:
    """Write a synthetic hand as a DX (for presentation) DICOM object.

    12 bits stored in 16; MONOCHROME1 (inverted stored values) when ``hand.monochrome1``.
    ImagerPixelSpacing and PixelSpacing carry the spacing; PatientBirthDate and StudyDate are set
    so that their difference is the chronological age (to the day).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    entropy = [f"boneage-synth-{hand.seed}-{hand.index}"]
    sop_uid = generate_uid(entropy_srcs=entropy + ["sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=entropy + ["study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=entropy + ["series"])
    rng = np.random.default_rng([hand.seed, hand.index, 7])
    study = _dt.date(2018, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 6 * 365)))
    birth = study - _dt.timedelta(days=int(round(hand.chronological_age_months * 365.2425 / 12)))
    ds.StudyDate = study.strftime("%Y%m%d")
    ds.ContentDate = ds.StudyDate
    ds.StudyTime = ds.ContentTime = "120000"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = hand.sex
    ds.PatientName = f"SYNTHETIC^{hand.seed}^{hand.index}"
    ds.PatientID = f"SYNTH-{hand.seed}-{hand.index}"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "DX"
    ds.Manufacturer = "boneage synth"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.AcquisitionContextSequence = []
    region = Dataset()  # DX Anatomy Imaged: hand (SNOMED CT)
    region.CodeValue = "85562004"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Hand"
    ds.AnatomicRegionSequence = [region]
    ds.DetectorType = "SCINTILLATOR"
    ds.LossyImageCompression = "00"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY", ""]
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "L"
    ds.Laterality = "L"
    ds.PatientOrientation = ["R", "F"]
    ds.BurnedInAnnotation = "YES"
    ds.ImagerPixelSpacing = [f"{hand.spacing_mm:.6f}", f"{hand.spacing_mm:.6f}"]
    # Synthetic spacing is exact in the plane of the hand: the image is "calibrated" by construction.
    ds.PixelSpacing = ds.ImagerPixelSpacing
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "synthetic: exact spacing in the plane of the hand"
    ds.PixelIntensityRelationship = "LIN"
    # -1: higher stored values mean less X-ray intensity (bone bright, MONOCHROME2 storage).
    ds.PixelIntensityRelationshipSign = 1 if hand.monochrome1 else -1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if hand.monochrome1 else "MONOCHROME2"
    ds.PresentationLUTShape = "INVERSE" if hand.monochrome1 else "IDENTITY"
    ds.Rows, ds.Columns = hand.image.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    values = np.round(hand.image * 4095).astype(np.uint16)
    if hand.monochrome1:
        values = (4095 - values).astype(np.uint16)
    ds.PixelData = values.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_hand(hand: SyntheticHand, out: Path, ident: str, fmt: str = "png") -> dict:
    """Write one hand's image and mask under ``out`` and return its ``labels.csv`` row."""
    if fmt == "png":
        image_rel = f"images/{ident}.png"
        _save_png(out / image_rel, np.round(hand.image * 255).astype(np.uint8))
    elif fmt == "dicom":
        image_rel = f"images/{ident}.dcm"
        write_dicom(hand, out / image_rel)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected 'png' or 'dicom'")
    mask_rel = f"masks/{ident}.png"
    _save_png(out / mask_rel, hand.label_map)
    return _record(hand, image_rel, mask_rel, ident)


def _write_one(job: tuple) -> dict:
    seed, i, size, age_range, sex, out, ident, fmt = job
    hand = generate_hand(seed, i, size=size, age_range=age_range, sex=sex)
    return write_hand(hand, out, ident, fmt)


def write_dataset(
    out: str | Path,
    n: int,
    seed: int = 0,
    size: int = 512,
    fmt: str = "png",
    age_range: tuple[float, float] | None = None,
    sex: str | None = None,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write ``n`` synthetic hands: ``out/images/``, ``out/masks/`` and ``out/labels.csv``.

    Args:
        out: output folder (created).
        n: number of images.
        seed: dataset seed; image ``i`` depends only on ``(seed, i)``.
        size: long side in pixels.
        fmt: ``"png"`` (8-bit) or ``"dicom"`` (DX, 12-bit).
        age_range: bone-age range in months.
        sex: ``"M"``, ``"F"`` or ``None``/``"both"``.
        progress: show a tqdm progress bar.
        workers: processes to use (the output is identical for any number).

    Returns:
        The path of ``labels.csv``.
    """
    from tqdm import tqdm

    if fmt not in ("png", "dicom"):
        raise ValueError(f"unknown format {fmt!r}; expected 'png' or 'dicom'")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    sex = None if sex in (None, "both") else sex
    width = max(5, len(str(max(n - 1, 0))))
    jobs = [(seed, i, size, age_range, sex, out, f"synth_{seed}_{i:0{width}d}", fmt) for i in range(n)]
    labels_path = out / "labels.csv"
    with open(labels_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=label_columns())
        writer.writeheader()
        bar = tqdm(total=n, disable=not progress, desc="synth", unit="img")
        if workers > 1 and n > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                for row in pool.imap(_write_one, jobs, chunksize=8):  # imap keeps the order
                    writer.writerow(row)
                    bar.update()
        else:
            for job in jobs:
                writer.writerow(_write_one(job))
                bar.update()
        bar.close()
    return labels_path


def write_examples(out: str | Path = EXAMPLES_DIR, ages_years: tuple[float, ...] = (4.0, 12.0),
                   size: int = 512, seed: int = 2024) -> list[Path]:
    """Write small synthetic example cases for the app: image, mask and a JSON of the truth.

    Files: ``synthetic_hand_<age>y.png``, ``synthetic_hand_<age>y_mask.png``,
    ``synthetic_hand_<age>y.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, age in enumerate(ages_years):
        hand = generate_hand(seed, k, size=size, sex="F" if k % 2 else "M", bone_age_months=age * 12)
        stem = f"synthetic_hand_{age:g}y"
        _save_png(out / f"{stem}.png", np.round(hand.image * 255).astype(np.uint8))
        _save_png(out / f"{stem}_mask.png", hand.label_map)
        truth = {
            "synthetic": True,
            "generator": "boneage.synth.generate_hand",
            "seed": seed, "index": k,
            "sex": hand.sex,
            "bone_age_months": hand.bone_age_months,
            "chronological_age_months": hand.chronological_age_months,
            "spacing_mm": hand.spacing_mm,
            "lengths_mm": {b: round(v, 2) for b, v in hand.lengths_mm.items()},
            "ossification": hand.ossification,
        }
        (out / f"{stem}.json").write_text(json.dumps(truth, indent=1) + "\n")
        written.append(out / f"{stem}.png")
    return written

"""One radiograph in, one :class:`BoneAgeResult` out: three methods, their combination, QC, SDS, versions.

:class:`BoneAgeEstimator` loads the shipped models once and is what the CLI, the app and the
Python API all call; :func:`estimate` is the one-shot convenience. The result type
(:mod:`boneage.result`, re-exported here) is the only one that flows to every front end and report.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boneage import anatomy
from boneage.io import ImageReadError, Radiograph, load_radiograph, normalise_sex, parse_age_months, parse_sex
from boneage.references import OutOfReferenceRange, bone_age_sds
from boneage.result import (  # noqa: F401  (the result types are re-exported: their historical home)
    COMPARED_METHODS,
    DISAGREEMENT_Z,
    LARGE_DIFFERENCE_MONTHS,
    MAX_CONFIRMING_HALF_WIDTH,
    METHOD_NAMES,
    BoneAgeResult,
    MethodComparison,
    MethodEstimate,
    compare_methods,
)

#: Bone ages (months) the models were trained to cover (RSNA labels: 0-228).
MODEL_AGE_RANGE = (0.0, 228.0)
#: Chronological ages beyond which a film is rejected (20 years: beyond the GP atlas).
MAX_CHRONOLOGICAL_AGE_MONTHS = 240.0
#: A hand shows 19 tubular bones; fewer plausible ones than this and it is not a usable hand.
MIN_TUBULAR_BONES_FOR_A_HAND = 10
#: Without the hand check (:mod:`boneage.handcheck`, shipped as ``handcheck``) only this weaker rule
#: is left: fewer finger bones than this found at all, and the film is not a hand. Real hands show
#: a median of 19 and at least 13; the tibia fixture shows 12, so the margin is one bone.
MIN_TUBULAR_BONES_PRESENT = 13
#: A film turned upright by at least this much (degrees) is said in the result's QC notes.
NOTED_TURN_DEG = 10.0
#: Test-time augmentation of the multi-step method: besides the film as read, it is segmented
#: and measured tilted by these angles (degrees) and the ages averaged (see
#: :meth:`boneage.segment.Segmenter.reread_tilted`). On 40 validation films tilted 10 degrees the
#: mean change of the multi-step age was 7.5 months with one view, 5.3 with -6/+6 and 4.1 with
#: these four (no labels used; ``benchmarks/bench_reliability.py``).
MULTISTEP_TILTS_DEG = (-8.0, -4.0, 4.0, 8.0)


@dataclass
class FilmView:
    """A film as every method reads it (see :meth:`BoneAgeEstimator.view`).

    Attributes:
        pixels: the film upright (and inverted back when it was a negative), bone bright.
        label_map: the segmentation of ``pixels``.
        transform: how ``pixels`` came from the film as given (maps label maps back for overlays).
        inverted: the film was a negative and was read inverted.
        hand_probability: the hand check's probability (``None`` when no check ran).
        notes: QC notes (negative, turned, mirrored).
        rejection: why the film is not a hand ("" when it is).
        reading: the segmenter's :class:`boneage.segment.FilmReading` of ``pixels`` (``None``
            for a segmenter without ``read``).
    """

    pixels: np.ndarray
    label_map: np.ndarray
    transform: Any
    inverted: bool
    hand_probability: float | None
    notes: list[str] = field(default_factory=list)
    rejection: str = ""
    reading: Any = None


def _orientation_notes(mirrored: bool | None, finger_angle_deg: float | None) -> list[str]:
    notes = []
    if mirrored:
        notes.append("hand seen mirrored (a right hand, or a flipped left-hand film): bones were "
                     "measured as a mirrored left hand")
    if finger_angle_deg is not None and abs(finger_angle_deg) > 45:
        notes.append(f"film rotated: fingers point {finger_angle_deg:+.0f} degrees from up")
    return notes


# ---------------------------------------------------------------------------------------------
class BoneAgeEstimator:
    """Loads the models once; estimates any number of radiographs.

    Args:
        segmenter: a :class:`boneage.segment.Segmenter` (or any callable ``pixels -> label map``
            of the same shape), or ``None`` (multi-step off).
        multistep: a :class:`boneage.multistep.MultiStepModel` or ``None``.
        direct: a :class:`boneage.direct.DirectEstimator` or ``None``.
        versions: model name -> version string for the results.
        load_errors: model name -> why it could not be loaded (reported in every result's QC).
        handcheck: a :class:`boneage.handcheck.HandCheck` deciding whether a film is a hand, or
            ``None`` (then a film with fewer than ``MIN_TUBULAR_BONES_PRESENT`` finger bones is
            refused, a weaker rule).
        multistep_tilts: extra tilts (degrees) at which the film is segmented and measured again,
            the multi-step age being the mean over all views (``()``: one view, faster).
        perbone: a :class:`boneage.perbone.PerBoneEstimator` or ``None`` (per-bone method off;
            it needs a segmenter with ``read``).
        combiner: a :class:`boneage.combine.Combiner` or ``None`` (no combined estimate).
        sex_model: a :class:`boneage.sex.SexEstimator` reading the sex from the film when it is
            not given, or ``None`` (the sex then stays unknown).
    """

    def __init__(self, segmenter: Any = None, multistep: Any = None, direct: Any = None,
                 versions: dict[str, str] | None = None, load_errors: dict[str, str] | None = None,
                 handcheck: Any = None, multistep_tilts: tuple[float, ...] = MULTISTEP_TILTS_DEG,
                 perbone: Any = None, combiner: Any = None, sex_model: Any = None) -> None:
        self.segmenter = segmenter
        self.multistep = multistep
        self.direct = direct
        self.perbone = perbone
        self.combiner = combiner
        self.sex_model = sex_model
        self.handcheck = handcheck
        self.multistep_tilts = tuple(multistep_tilts)
        self.versions = dict(versions or {})
        self.load_errors = dict(load_errors or {})

    @classmethod
    def load(cls, device: str = "cpu") -> BoneAgeEstimator:
        """Load every shipped model that is present; missing ones are reported, not fatal."""
        from boneage import models

        loaded: dict[str, Any] = {}
        versions: dict[str, str] = {}
        errors: dict[str, str] = {}
        for name in ("segmenter", "handcheck", "multistep", "perbone", "sex", "direct", "combined"):
            try:
                entry = models.get(name)
            except KeyError:
                errors[name] = "not registered in this version"
                continue
            try:
                kwargs = {"device": device} if name in ("segmenter", "perbone", "sex", "direct") else {}
                loaded[name] = models.load(name, **kwargs)
                versions[name] = entry.version
            except Exception as exc:  # a broken/missing model must not take the other one down
                errors[name] = f"{type(exc).__name__}: {exc}"
        return cls(loaded.get("segmenter"), loaded.get("multistep"), loaded.get("direct"), versions, errors,
                   handcheck=loaded.get("handcheck"), perbone=loaded.get("perbone"), combiner=loaded.get("combined"),
                   sex_model=loaded.get("sex"))

    def segment(self, pixels: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Label map of an image as given and orientation notes (a mirrored or rotated hand is said).

        Args:
            pixels: 2-D image, bone bright.

        Returns:
            ``(label_map, notes)``.
        """
        if self.segmenter is None:
            raise RuntimeError("no segmenter loaded")
        with_info = getattr(self.segmenter, "segment_with_info", None)
        if with_info is None:
            return np.asarray(self.segmenter(pixels)), []
        info = with_info(pixels)
        return np.asarray(info.label_map), _orientation_notes(info.mirrored, info.finger_angle_deg)

    def view(self, pixels: np.ndarray) -> FilmView:
        """Decide once how every method reads a film: is it a hand, is it a negative, which way is up.

        The segmenter reads the film (with its mirror and quarter-turn search); the hand check
        (:mod:`boneage.handcheck`) decides from that reading whether it is a hand. A film that is
        not is read again at every quarter turn (an upside-down hand can read as a poor upright
        one), then once more with its grey scale inverted: a negative hand film becomes a hand,
        anything else stays rejected. A hand whose fingers do not point up (quarter-turned, or
        tilted more than ``preprocess.TILT_TOLERANCE_DEG``) is turned upright and read again, so
        that both the measurements and the end-to-end CNN see it upright.

        Args:
            pixels: 2-D film, bone bright.

        Returns:
            :class:`FilmView`; ``rejection`` says why a film is not a hand ("" when it is).
        """
        from boneage.preprocess import UprightTransform, film_background, upright_transform

        identity = UprightTransform(0, 0.0, pixels.shape, pixels.shape)  # type: ignore[arg-type]
        if self.segmenter is None:
            raise RuntimeError("no segmenter loaded")
        if not hasattr(self.segmenter, "read"):  # a plain callable (test doubles, custom segmenters)
            label_map, notes = self.segment(pixels)
            return FilmView(pixels, label_map, identity, False, None, notes)
        reading = self.segmenter.read(pixels)
        probability, figures = self._hand_probability(reading)
        inverted = False
        if probability is not None and probability < self.handcheck.threshold and not reading.grid.every_turn_read:
            # An upside-down hand can read as a poor upright one: read every quarter turn.
            reading_all = self.segmenter.read(pixels, every_turn=True)
            probability_all, figures_all = self._hand_probability(reading_all)
            if probability_all > probability:
                reading, probability, figures = reading_all, probability_all, figures_all
        if probability is not None and probability < self.handcheck.threshold:
            negative = (1.0 - pixels).astype(np.float32)
            reading_inv = self.segmenter.read(negative)
            probability_inv, figures_inv = self._hand_probability(reading_inv)
            if probability_inv >= self.handcheck.threshold and probability_inv > probability:
                pixels, reading, probability, figures, inverted = negative, reading_inv, probability_inv, figures_inv, True
            else:
                found = round(figures["present_share"] * len(anatomy.TUBULAR_BONES))
                rejection = (f"not recognised as a hand radiograph (hand check {probability:.2f}, needs "
                             f"{self.handcheck.threshold:.2f}: {found} of 19 finger bones found, "
                             f"{figures['finger_rays']:.0f} of 5 digits laid out as a finger)")
                return FilmView(pixels, reading.label_map(), identity, False, probability, [], rejection, reading)
        notes = ["film read as a negative (bone dark): its grey scale was inverted back"] if inverted else []
        transform = upright_transform(pixels.shape, reading.finger_angle_deg)
        if not transform.identity:
            pixels = transform.apply(pixels, order=1, fill=film_background(pixels)).astype(np.float32, copy=False)
            # Turning the film does not change which hand it shows: only the chosen mirror is read.
            reading = self.segmenter.read(pixels, mirrored=reading.grid.mirrored)
            turn = (transform.total_deg + 180.0) % 360.0 - 180.0
            if abs(turn) >= NOTED_TURN_DEG:  # straightening an ordinary lean is routine, not news
                notes.append(f"film read upright: turned {turn:+.0f} degrees (counter-clockwise) before both methods read it")
        notes += _orientation_notes(reading.mirrored, None)
        return FilmView(pixels, reading.label_map(), transform, inverted, probability, notes, "", reading)

    def _hand_probability(self, reading: Any) -> tuple[float | None, dict[str, float]]:
        """Hand-check probability of a :class:`boneage.segment.FilmReading` (``None`` without a check)."""
        if self.handcheck is None:
            return None, {}
        from boneage.handcheck import hand_features

        figures = hand_features(reading.grid.label_map, reading.grid.probabilities, reading.model_input, reading.spacing)
        return self.handcheck.probability(figures), figures

    # ----------------------------------------------------------------------------------------
    def estimate(
        self,
        source: str | Path | bytes | np.ndarray | Radiograph,
        sex: str | None = None,
        chronological_age_months: float | None = None,
        name: str | None = None,
        sex_source: str = "user",
        age_source: str = "user",
    ) -> BoneAgeResult:
        """Estimate bone age for one radiograph. Never raises for bad input: the result says.

        Args:
            source: a path, file bytes, a 2-D array (bone bright) or a :class:`Radiograph`.
            sex: overrides the header's sex when given: ``"M"``/``"F"`` (or a spelling
                :func:`boneage.io.parse_sex` accepts), or ``"unknown"`` to ignore the header's;
                ``None``, blank or NaN keep the header's.
            chronological_age_months: overrides the header's age when given (0-25 years);
                ``None``, blank or NaN keep the header's.
            name: the input's name in the result (defaults to the path as given).
            sex_source, age_source: how to label an override (``user`` or ``manifest``).

        Returns:
            :class:`BoneAgeResult` with status ok / error / rejected; status ``"error"`` with the
            bad value named in ``reason`` for a sex or age that is not valid (e.g. ``"X"``, -5).
        """
        label = name if name is not None else (str(source) if isinstance(source, (str, Path)) else "<array>")
        result = BoneAgeResult(path=label, versions=dict(self.versions))
        try:
            sex, chronological_age_months = _checked_sex_and_age(sex, chronological_age_months)
        except ValueError as exc:
            # The caller's mistake: refuse it by name rather than estimate with a value it did not mean.
            result.status, result.reason = "error", f"invalid argument: {exc}"
            return result
        try:
            if isinstance(source, Radiograph):
                rad = source
            elif isinstance(source, np.ndarray):
                rad = Radiograph.from_array(source)
            else:
                rad = load_radiograph(source, name=label)
        except ImageReadError as exc:
            result.status, result.reason = "error", exc.reason
            return result
        except Exception as exc:  # never let one input crash a batch
            result.status, result.reason = "error", f"unexpected error reading the image ({type(exc).__name__}: {exc})"
            return result
        nonfinite = rad.metadata.get("nonfinite_pixels")
        if nonfinite:
            result.qc.append(f"{nonfinite:,} NaN/infinite pixel(s) in the image were set to its minimum (background)")
        try:
            # A film read here from a file is this call's own: its pixels may be let go once the
            # upright copy replaces them (a caller's Radiograph or array is never touched).
            owned = not isinstance(source, (Radiograph, np.ndarray))
            return self._estimate_radiograph(rad, result, sex, chronological_age_months, sex_source, age_source,
                                             release_pixels=owned)
        except Exception as exc:
            result.status, result.reason = "error", f"estimation failed ({type(exc).__name__}: {exc})"
            _clear_estimates(result)  # a film that failed half-way carries no method's number
            return result

    def _estimate_radiograph(
        self,
        rad: Radiograph,
        result: BoneAgeResult,
        sex: str | None,
        age: float | None,
        sex_source: str,
        age_source: str,
        release_pixels: bool = False,
    ) -> BoneAgeResult:
        result.image_shape = tuple(rad.pixels.shape)  # type: ignore[assignment]
        result.identifiers = dict(rad.identifiers)
        result.spacing_mm = rad.spacing_mm
        # Sex and age: an explicit value overrides the header; an explicit "unknown" does too.
        if sex is not None and str(sex).strip() != "":
            result.sex = normalise_sex(sex)
            result.sex_source = sex_source if result.sex else f"unknown ({sex_source})"
        elif rad.sex is not None:
            result.sex, result.sex_source = rad.sex, "header"
        if age is not None and math.isfinite(float(age)):
            result.chronological_age_months, result.chronological_age_source = float(age), age_source
        elif rad.chronological_age_months is not None:
            result.chronological_age_months, result.chronological_age_source = rad.chronological_age_months, "header"
        for model_name, why in self.load_errors.items():
            result.qc.append(f"{model_name} model unavailable ({why})")

        rejection = self._qc_image(rad, result)
        if rejection:
            result.status, result.reason = "rejected", rejection
            return result

        # One reading decides for every method: a hand or not, negative or not, which way is up.
        pixels = rad.pixels
        view: FilmView | None = None
        if self.segmenter is not None:
            view = self.view(rad.pixels)
            result.qc.extend(view.notes)
            if view.rejection:
                result.status, result.reason = "rejected", view.rejection
                return result
            pixels = view.pixels
            if release_pixels and pixels is not rad.pixels:
                # Every later stage reads the upright copy: keeping the film as read too would
                # hold a second film-sized array (210 MB on a 7,000 x 7,500 film) to the end.
                rad.pixels = None  # type: ignore[assignment]
            result.label_map = view.transform.to_original(view.label_map)
        elif self.direct is not None:
            result.qc.append("hand check not available without the segmenter: non-hand images cannot be rejected")

        # The aligned bone crops (per-bone method, sex from the film), cut once.
        crops = None
        if view is not None and view.reading is not None and (self.perbone is not None or self.sex_model is not None):
            from boneage.perbone import crops_from_reading

            crops = crops_from_reading(view.pixels, view.reading)
        male_probability = None  # an uncertain sex read from the film: methods read the film as both
        if result.sex is None and crops is not None and self.sex_model is not None:
            male_probability = self._predict_sex(result, crops)

        # Multi-step: measure, look up.
        if self.segmenter is not None and self.multistep is not None:
            from boneage.measure import measure

            spacing = _upright_spacing(rad.spacing_mm, view.transform)
            measurements = measure(view.label_map, spacing)
            result.carpal_count = measurements.carpal_count
            rejection, unreliable = self._qc_segmentation(measurements, checked=view.hand_probability is not None)
            if rejection:
                result.status, result.reason = "rejected", rejection
                return result
            ms = self.multistep.estimate(measurements, result.sex)
            result.bones = [row.to_dict() for row in ms.bones]
            if view.reading is not None and self.multistep_tilts:
                # Test-time augmentation: the same film read tilted a few degrees each way; the
                # reported age, interval included, is the mean over the views.
                # Each tilted label map is measured as it is made (one film-sized map at a time).
                many = getattr(self.segmenter, "reread_tilted_many", None)
                tilted = (many(view.reading, self.multistep_tilts) if many is not None else
                          (self.segmenter.reread_tilted(view.reading, tilt) for tilt in self.multistep_tilts))
                views = [ms] + [self.multistep.estimate(measure(labels, spacing), result.sex, bones=False)
                                for labels in tilted]
                ms.age_months, ms.lower_90, ms.upper_90 = (
                    float(np.mean([getattr(v, k) for v in views])) for k in ("age_months", "lower_90", "upper_90"))
            if unreliable:
                # A poor segmentation withholds the multi-step number, not the whole film.
                result.multistep.note = f"multi-step withheld: {unreliable}"
                result.qc.append(result.multistep.note)
            else:
                result.multistep = MethodEstimate(
                    "multistep", True, ms.age_months, ms.lower_90, ms.upper_90,
                    model_version=self.versions.get("multistep"),
                    note=None if result.sex else sex_unknown_note(
                        "multistep", self.versions.get("multistep"),
                        "both sexes' references averaged, a regression fitted without the sex"),
                )
        else:
            missing = [n for n in ("segmenter", "multistep") if n in self.load_errors or getattr(self, n) is None]
            result.multistep.note = f"multi-step method unavailable ({', '.join(missing)} model missing)"
            if view is not None and view.hand_probability is None:
                # No hand check and no multi-step measurement: the weaker finger-bone rule still
                # refuses what is not a hand before the per-bone and end-to-end methods age it.
                from boneage.measure import measure

                rejection, _ = self._qc_segmentation(measure(view.label_map, None))
                if rejection:
                    result.status, result.reason = "rejected", rejection
                    return result

        self._estimate_perbone(result, view, crops, male_probability)

        if self.direct is not None:
            mixed = {} if male_probability is None else {"male_probability": male_probability}
            d = self.direct.predict(pixels, result.sex, **mixed)
            result.direct = MethodEstimate(
                "direct", True, d.age_months, d.lower_90, d.upper_90, note=None if d.sex_note is None else sex_unknown_note(
                    # The measured cost is the sex-agnostic mode's: not quoted for the weighed readings.
                    "direct", None if mixed else d.model_version, d.sex_note.removeprefix("sex unknown: ")),
                model_version=d.model_version,
            )
        else:
            result.direct.note = "end-to-end model unavailable"

        if not any(e.available for e in (result.multistep, result.perbone, result.direct)):
            result.status = "error"
            result.reason = "no bone-age model is available in this installation: " + "; ".join(
                f"{k}: {v}" for k, v in self.load_errors.items()
            )
            return result
        self._combine(result)
        self._compare_and_score(result)
        return result

    def _predict_sex(self, result: BoneAgeResult, crops: Any) -> float | None:
        """Read the sex from the film when it was not given; use it only when the network is sure.

        Args:
            result: the result being filled (``sex`` unknown).
            crops: the film's aligned bone crops.

        Returns:
            The male probability when the sex was read but is too uncertain to use alone (the
            per-bone and end-to-end methods then weigh their readings as a boy and as a girl by it),
            else ``None``.

        Read at every age: even under 6 years of bone age, where the film shows little of the sex,
        both sexes' readings weighed by its probability beat the sex-agnostic reading on the
        calibration hold-out (25 films: CNN 9.1 -> 7.5 months, per-bone 9.0 -> 7.4; the agnostic
        mode reads young films 5 months young).
        """
        try:
            prediction = self.sex_model.predict(crops)
        except Exception as exc:  # reading the sex failing leaves it unknown, never the film
            result.qc.append(f"sex could not be read from the film ({type(exc).__name__}: {exc})")
            return None
        if prediction is None:
            return None
        word = {"M": "male", "F": "female"}[prediction.sex]
        result.predicted_sex, result.sex_probability = prediction.sex, round(prediction.probability, 3)
        if prediction.confident:
            result.sex, result.sex_source = prediction.sex, "predicted"
            result.qc.append(f"sex not given: read from the film as {word} ({prediction.probability:.0%} sure) and used by "
                             "every method; give the sex if it is known")
            return None
        weighing = " and ".join(n for n, m in (("per-bone", self.perbone), ("end-to-end", self.direct)) if m is not None)
        result.qc.append(f"sex not given: the film suggests {word} but only {prediction.probability:.0%} sure, too "
                         f"uncertain to use alone: {weighing or 'no'} method(s) read it as both sexes, weighted by "
                         "that; the others give sex-agnostic readings; give the sex if it is known")
        return prediction.probability if prediction.sex == "M" else 1.0 - prediction.probability

    def _estimate_perbone(self, result: BoneAgeResult, view: FilmView | None, crops: Any = None,
                          male_probability: float | None = None) -> None:
        """The per-bone method: its consensus, RUS and carpal ages into ``result``, each bone's
        own age into ``result.bones``.

        Args:
            result: the result being filled (its ``bones`` already hold the multi-step table, if any).
            view: the film as every method reads it (``None`` without a segmenter).
            crops: the film's aligned bone crops (cut here when not given).
            male_probability: an uncertain sex read from the film (see :meth:`_predict_sex`).
        """
        maturity: dict[str, Any] = {}
        if self.perbone is None or self.segmenter is None:
            missing = [n for n in ("segmenter", "perbone") if n in self.load_errors or getattr(self, n) is None]
            result.perbone.note = f"per-bone method unavailable ({', '.join(missing)} model missing)"
        elif view is None or view.reading is None:
            result.perbone.note = ("per-bone method unavailable: this segmenter gives no reading of the film "
                                   "to cut the bones from")
        else:
            try:
                mixed = {} if male_probability is None else {"male_probability": male_probability}
                est = (self.perbone.predict_crops(crops, result.sex, **mixed) if crops is not None
                       else self.perbone.predict(view.pixels, view.reading, result.sex))
            except Exception as exc:  # the per-bone method failing withholds its number, not the film
                version = getattr(self.perbone, "model_version", None) or self.versions.get("perbone")
                result.perbone = MethodEstimate("perbone", note=f"per-bone method failed ({type(exc).__name__}: {exc})",
                                                model_version=version)
                result.qc.append(result.perbone.note)
                _add_bone_maturity(result.bones, maturity)
                return
            version = est.model_version
            if not est.available:
                # Too few bones found: the per-bone number is withheld, not the whole film.
                result.perbone = MethodEstimate("perbone", note=est.note, model_version=version)
                result.qc.append(est.note)
            else:
                maturity = est.bones
                result.perbone = MethodEstimate("perbone", True, est.age_months, est.lower_90, est.upper_90,
                                                note=_perbone_note(est.note, version, result.sex, male_probability),
                                                model_version=version)
                result.perbone_rus = MethodEstimate(
                    "perbone_rus", est.rus_age_months is not None, est.rus_age_months, est.rus_lower_90,
                    est.rus_upper_90, model_version=version,
                    note=None if est.rus_age_months is not None else "no RUS consensus")
                carpal = est.bones.get(anatomy.CARPAL_REGION)
                result.perbone_carpal = MethodEstimate(
                    "perbone_carpal", carpal is not None, est.carpal_age_months, est.carpal_lower_90,
                    est.carpal_upper_90, model_version=version,
                    note=("carpal region not found" if carpal is None else None if carpal.used
                          else "left out of the per-bone consensus: it disagrees with the RUS bones"))
        _add_bone_maturity(result.bones, maturity)

    def _combine(self, result: BoneAgeResult) -> None:
        """The combined (stacked) estimate of the methods that gave an age."""
        if self.combiner is None:
            result.combined.note = "combined estimate unavailable (combined model missing)"
            return
        estimates = {e.method: (e.age_months, e.lower_90, e.upper_90)
                     for e in (result.multistep, result.perbone, result.direct) if e.available}
        combined = self.combiner.combine(estimates, result.sex) if estimates else None
        if combined is None:
            names = " + ".join(METHOD_NAMES[m] for m in estimates) or "no method"
            result.combined.note = f"combined estimate unavailable: no stacking weights for {names}"
            return
        version = getattr(self.combiner, "model_version", None) or self.versions.get("combined")
        note = "stacked: " + ", ".join(f"{METHOD_NAMES[m]} {combined.weights[m]:.2f}"
                                       for m in COMPARED_METHODS if m in combined.weights)
        if result.sex is None:
            note += "; " + sex_unknown_note("combined", version,
                                            "the sex-unknown stacking weights over the methods' sex-unknown ages")
        result.combined = MethodEstimate("combined", True, combined.age_months, combined.lower_90, combined.upper_90,
                                         note=note, model_version=version)
        result.combined_weights = {m: float(combined.weights[m]) for m in COMPARED_METHODS if m in combined.weights}

    # ----------------------------------------------------------------------------------------
    def _qc_image(self, rad: Radiograph, result: BoneAgeResult) -> str:
        """Reasons to refuse an image before any model sees it ("" = fine)."""
        pixels = rad.pixels
        small = pixels[:: max(1, pixels.shape[0] // 256), :: max(1, pixels.shape[1] // 256)]
        if float(small.std()) < 0.01 or float(np.percentile(small, 99) - np.percentile(small, 1)) < 0.02:
            return "blank or uniform image: no anatomy to assess"
        rows, cols = pixels.shape
        if min(rows, cols) < 64:
            return f"image too small ({rows} x {cols} px) to assess bone age"
        if max(rows, cols) / min(rows, cols) > 4:
            return f"unusual aspect ratio {rows} x {cols}: not a hand radiograph"
        body_part = str(rad.metadata.get("body_part_examined", "")).upper()
        if body_part and body_part not in ("HAND", "WRIST", "EXTREMITY", "UPPER LIMB", "UPPER_LIMB", "ARM"):
            return f"DICOM BodyPartExamined is {body_part}: not a hand radiograph"
        ca = result.chronological_age_months
        if ca is not None and ca > MAX_CHRONOLOGICAL_AGE_MONTHS:
            return (f"chronological age {ca / 12:.1f} y is outside what the models cover "
                    f"(bone ages 0-{MODEL_AGE_RANGE[1] / 12:.0f} y)")
        return ""

    @staticmethod
    def _qc_segmentation(measurements: Any, checked: bool = False) -> tuple[str, str]:
        """``(rejection, unreliable)``: without a hand check (``checked`` False), reject films
        where (almost) no finger bone is found; call the multi-step estimate unreliable when too
        few bones measure plausibly."""
        present = sum(1 for b in anatomy.TUBULAR_BONES if measurements.bones[b].present)
        if not checked and present < MIN_TUBULAR_BONES_PRESENT:
            return (f"not recognised as a hand radiograph: only {present} of 19 finger bones found", "")
        plausible = sum(1 for b in anatomy.TUBULAR_BONES if measurements.bones[b].plausible)
        fragmented = sum(1 for b in anatomy.TUBULAR_BONES if "fragmented" in measurements.bones[b].flags)
        if plausible < MIN_TUBULAR_BONES_FOR_A_HAND:
            return "", (f"only {plausible} of 19 finger bones segmented plausibly (need "
                        f"{MIN_TUBULAR_BONES_FOR_A_HAND}; {fragmented} in pieces)")
        return "", ""

    @staticmethod
    def _compare_and_score(result: BoneAgeResult) -> None:
        ms, d = result.multistep, result.direct
        if ms.available and d.available:
            result.difference_months = float(d.age_months - ms.age_months)  # type: ignore[operator]
        available = [getattr(result, m) for m in COMPARED_METHODS if getattr(result, m).available]
        result.comparisons = [compare_methods(a, b) for i, a in enumerate(available) for b in available[i + 1:]]
        verdicts = {c.verdict for c in result.comparisons}
        for verdict in ("disagree", "inconclusive", "agree"):  # the worst pair decides
            if verdict in verdicts:
                result.agreement = verdict
                break
        for c in result.comparisons:
            pair = f"{METHOD_NAMES[c.first]} and {METHOD_NAMES[c.second]}"
            if c.verdict == "disagree":
                result.qc.append(f"{pair} disagree by {abs(c.difference_months):.0f} months, more than their "
                                 "intervals allow: review the film")
            elif c.verdict == "inconclusive":
                result.qc.append(f"{pair} do not confirm each other ({c.why}): review the film")
        ca, sex = result.chronological_age_months, result.sex
        if ca is None:
            result.sds_note = "SDS needs the chronological age"
            return
        if sex is None:
            result.sds_note = "SDS needs the sex (the Brush SD is sex-specific)"
            return
        for est in (ms, result.perbone, d, result.combined):
            if est.available:
                try:
                    est.sds = bone_age_sds(est.age_months, ca, sex)  # type: ignore[arg-type]
                except OutOfReferenceRange as exc:
                    result.sds_note = str(exc)


def _clear_estimates(result: BoneAgeResult) -> None:
    """Leave no method's number on a result that failed half-way: every estimate unavailable (as
    on a rejected film), no comparison, no bone table."""
    for name in ("multistep", "perbone", "direct", "combined", "perbone_rus", "perbone_carpal"):
        setattr(result, name, MethodEstimate(name))
    result.combined_weights, result.comparisons, result.bones = {}, [], []
    result.difference_months, result.agreement, result.carpal_count = None, "n/a", None


#: What the per-bone network does without the sex (its sex input set to "unknown").
PERBONE_SEX_UNKNOWN_HOW = "the network's sex-agnostic reading, with its own wider interval"


def _perbone_note(note: str | None, model_version: str | None, sex: str | None,
                  male_probability: float | None = None) -> str | None:
    """The per-bone estimate's caveats, its own sex-unknown remark replaced by the measured one.

    Args:
        note: :attr:`boneage.perbone.PerBoneEstimate.note` (caveats joined by ``"; "``).
        model_version: the per-bone weights' version.
        sex: the sex the estimate was made with (``None``: unknown).
        male_probability: set when the film was read as both sexes and weighed by it.

    Returns:
        The note, or ``None`` when there is nothing to say.
    """
    parts = [p for p in (note or "").split("; ") if p and not p.startswith("sex unknown")]
    if sex is None:
        if male_probability is None:
            parts.append(sex_unknown_note("perbone", model_version, PERBONE_SEX_UNKNOWN_HOW))
        else:  # the measured cost is the sex-agnostic reading's: not quoted for the weighed one
            parts.append(sex_unknown_note("perbone", None, "read as a boy and as a girl, weighted by the "
                                          f"film's male probability ({male_probability:.0%})"))
    return "; ".join(parts) or None


#: The per-bone fields each row of :attr:`BoneAgeResult.bones` carries.
MATURITY_FIELDS = ("maturity_age_months", "maturity_lower_90", "maturity_upper_90", "maturity_used")


def _add_bone_maturity(rows: list[dict], maturity: dict[str, Any]) -> None:
    """Give every row of the per-bone table its bone's own age from the per-bone method.

    Args:
        rows: the multi-step per-bone table (dicts, changed in place); when it is empty (no
            multi-step method) rows of the per-bone method's RUS bones are added.
        maturity: bone -> :class:`boneage.perbone.BoneMaturity` (empty: the method gave none).
    """
    if not rows:
        rows.extend({"bone": bone, "present": True} for bone in anatomy.RUS_BONES if bone in maturity)
    for row in rows:
        bone = maturity.get(row["bone"])
        values = (None,) * 4 if bone is None else (bone.age_months, bone.lower_90, bone.upper_90, bone.used)
        row.update(zip(MATURITY_FIELDS, values))


def _upright_spacing(spacing: tuple[float, float] | None, transform: Any) -> tuple[float, float] | None:
    """Pixel spacing of the upright film: swapped by a quarter turn; unknown when a tilt mixes
    two different spacings (no such film has been seen; lengths then stay in pixels)."""
    if spacing is None:
        return None
    if transform.quarter_turns % 2:
        spacing = (spacing[1], spacing[0])
    if transform.angle_deg and not math.isclose(spacing[0], spacing[1], rel_tol=0.01):
        return None
    return spacing


def _checked_sex_and_age(sex: Any, age: Any) -> tuple[str | None, float | None]:
    """Validate a caller's sex and age for :meth:`BoneAgeEstimator.estimate`.

    Args:
        sex: as given; ``None``, NaN or blank mean "not given" (keep the header's).
        age: as given; ``None``, NaN or blank mean "not given".

    Returns:
        ``(sex, age)``: sex ``"M"``/``"F"``, ``"unknown"`` for an explicit unknown (it overrides
        the header's sex) or ``None``; the age in months or ``None``.

    Raises:
        ValueError: naming a sex or age that is not valid.
    """
    blank = sex is None or (isinstance(sex, float) and math.isnan(sex)) or str(sex).strip() == ""
    parsed_sex = None if blank else (parse_sex(sex) or "unknown")
    return parsed_sex, parse_age_months(age)


def sex_unknown_note(method: str, model_version: str | None, how: str) -> str:
    """The caveat on an estimate made without the sex, with the model's measured cost.

    The figures are read from the shipped model's ``metrics.json`` (``validation`` against
    ``validation_sex_unknown``: same validation films, sex withheld), the one place they live;
    they are quoted only when ``model_version`` is that model's, never for another model.

    Args:
        method: the registry name (``"multistep"``, ``"perbone"``, ``"direct"``, ``"combined"``).
        model_version: the version of the model that made the estimate (``None``: unknown).
        how: what the method did without the sex (e.g. "both sexes' references averaged").

    Returns:
        e.g. ``"sex unknown: less accurate (validation MAE 18.1 months vs 11.6 with sex given,
        90% interval coverage 76% vs 92%; give the sex for a better estimate); both sexes'
        references averaged"``.
    """
    figures = _sex_unknown_figures(method, model_version) if model_version else None
    if figures is None:
        cost = "give the sex for a better estimate"
    else:
        mae_u, mae_g, cov_u, cov_g = figures
        cost = (f"validation MAE {mae_u:.1f} months vs {mae_g:.1f} with sex given, 90% interval coverage "
                f"{100 * cov_u:.0f}% vs {100 * cov_g:.0f}%; give the sex for a better estimate")
    return f"sex unknown: less accurate ({cost}); {how}"


@functools.lru_cache(maxsize=8)
def _sex_unknown_figures(method: str, model_version: str) -> tuple[float, float, float, float] | None:
    """``(MAE unknown, MAE given, coverage unknown, coverage given)`` from a model's metrics.json."""
    from boneage import models

    try:
        metrics = models.get(method).metrics()
    except (KeyError, OSError, ValueError):
        return None
    if metrics.get("model_version") != model_version:
        return None  # figures of another model: do not quote them
    validation = metrics.get("validation") or {}
    if "sex_known" in validation:
        # perbone: validation.<mode>.groups.all; combined: validation.<mode>.combined.all.
        group = "combined" if method == "combined" else "groups"
        given = ((validation.get("sex_known") or {}).get(group) or {}).get("all")
        unknown = ((validation.get("sex_unknown") or {}).get(group) or {}).get("all")
    else:
        # multistep: validation.final.all; direct: validation.overall.
        given_groups = validation.get("final", validation)
        given = given_groups.get("all") or given_groups.get("overall")
        unknown_groups = metrics.get("validation_sex_unknown") or {}
        unknown = unknown_groups.get("all") or unknown_groups.get("overall")
    try:
        return (float(_first(unknown, "mae_months", "mae")), float(_first(given, "mae_months", "mae")),
                float(_first(unknown, "coverage_90", "coverage")), float(_first(given, "coverage_90", "coverage")))
    except (KeyError, TypeError, ValueError):
        return None


def _first(figures: dict, *keys: str) -> Any:
    """The value of the first of ``keys`` in ``figures`` (metrics files name the same figure differently)."""
    for key in keys:
        if key in figures:
            return figures[key]
    raise KeyError(keys[0])


_DEFAULT: BoneAgeEstimator | None = None
#: Guards the first load of :data:`_DEFAULT`: threads calling :func:`estimate` at once must not
#: each load the models (seconds and hundreds of MB apiece).
_DEFAULT_LOCK = threading.Lock()


def estimate(
    source: str | Path | bytes | np.ndarray | Radiograph,
    sex: str | None = None,
    chronological_age_months: float | None = None,
) -> BoneAgeResult:
    """Estimate bone age of one radiograph with the shipped models (loaded once, then cached).

    Args:
        source: a file path (DICOM/PNG/JPEG/TIFF), file bytes, an array or a Radiograph.
        sex: ``"M"``/``"F"`` to override the header, ``"unknown"`` to ignore it; ``None`` keeps
            the header's (or unknown).
        chronological_age_months: overrides the header's age (needed only for the SDS).

    Returns:
        :class:`BoneAgeResult` (status ``"error"`` naming a sex or age that is not valid).
    """
    global _DEFAULT
    estimator = _DEFAULT
    if estimator is None:
        # Double-checked: only the first caller loads; the others wait for it, then reuse it.
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = BoneAgeEstimator.load()
            estimator = _DEFAULT
    return estimator.estimate(source, sex, chronological_age_months)

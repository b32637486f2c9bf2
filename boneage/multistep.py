"""The multi-step method's bundle: measurements -> reference lookup + regression -> bone age.

This module composes the stages (``segment`` -> ``measure`` -> ``growth``) at inference and loads
the shipped multi-step bundle in ``data/models/multistep/``; building the bundle, evaluating it
and writing its model card are in :mod:`boneage.training.multistep`. The bundle:

* ``maturity_reference.csv`` — scale-free maturity reference (epiphysis presence, width ratio,
  fusion, relative lengths, carpal areas) built from measured development films;
* ``length_reference_mm.csv`` — a **model** of calibrated bone lengths (mm) by age and sex, built
  from the synthetic growth model (no published per-bone norms are available);
* ``regression.joblib`` — gradient-boosting regression on the scale-free features and sex;
* ``combination.json`` — how the two are combined (:class:`boneage.growth.LookupBlend`);
  ``combination_sex_unknown.json`` — the same for hands of unknown sex (the regression's
  sex-agnostic model with the lookup over both sexes' references).

The estimate is ``w * regression + (1 - w) * lookup`` (the scale-free maturity lookup), ``w``
chosen on out-of-fold predictions of the training hands, with a conformal 90% interval; without
a regression it is the reference lookup's posterior (with calibrated lengths when the image has
spacing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from boneage import anatomy
from boneage.growth import AgeRegression, LookupBlend, ReferenceTable, sex_unknown
from boneage.measure import Measurements
from boneage.paths import MODELS_DIR

MULTISTEP_DIR = MODELS_DIR / "multistep"
MATURITY_FILE = "maturity_reference.csv"
LENGTH_FILE = "length_reference_mm.csv"
REGRESSION_FILE = "regression.joblib"
COMBINATION_FILE = "combination.json"
COMBINATION_SEX_UNKNOWN_FILE = "combination_sex_unknown.json"
METRICS_FILE = "metrics.json"
VERSION = "multistep-10"


@dataclass
class BoneRow:
    """One row of the per-bone table shown to clinicians and written to reports.

    Attributes:
        bone: canonical name.
        present, plausible, flags: from the measurement (implausible bones are kept, marked).
        length_px, length_mm, width_px, epiphysis_ratio, fused: the measured values.
        feature: the maturity measurement compared with the reference for this bone.
        value: its value.
        reference_mean, reference_sd: the reference at the estimated bone age (and sex).
        z_score: ``(value - mean) / sd``.
        implied_age_months, implied_lower_90, implied_upper_90: the age this bone's
            measurements alone imply (reference posterior), with its 90% interval.
    """

    bone: str
    present: bool
    plausible: bool
    flags: list[str] = field(default_factory=list)
    length_px: float | None = None
    length_mm: float | None = None
    width_px: float | None = None
    epiphysis_ratio: float | None = None
    fused: bool | None = None
    feature: str | None = None
    value: float | None = None
    reference_mean: float | None = None
    reference_sd: float | None = None
    z_score: float | None = None
    implied_age_months: float | None = None
    implied_lower_90: float | None = None
    implied_upper_90: float | None = None

    def to_dict(self) -> dict:
        return {k: _clean(v) for k, v in asdict(self).items()}


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating,)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


@dataclass
class MultiStepEstimate:
    """The multi-step result for one hand.

    Attributes:
        age_months, lower_90, upper_90: the estimate and its 90% interval.
        lookup_age_months, lookup_lower_90, lookup_upper_90: the reference-lookup estimate
            (scale-free maturity reference, plus the calibrated length model when the image
            has spacing).
        regression_age_months: the regression's point estimate (``None`` without a regression).
        bones: the per-bone table.
        n_features: how many measurements were usable.
    """

    age_months: float
    lower_90: float
    upper_90: float
    lookup_age_months: float
    lookup_lower_90: float
    lookup_upper_90: float
    regression_age_months: float | None
    bones: list[BoneRow]
    n_features: int


def _bone_features(bone: str, names: Iterable[str]) -> list[str]:
    return [n for n in names if n.split(".", 1)[0] == bone]


def main_feature(m) -> str:
    """The maturity measurement shown for a bone: fusion once the epiphysis caps, else its width
    ratio, else presence; carpals: area relative to the third metacarpal."""
    if m.bone in anatomy.CARPALS:
        return f"{m.bone}.area_rel"
    if m.epiphysis_present and m.epiphysis_ratio is not None and (m.fusion_contact or 0) < 0.2:
        return f"{m.bone}.epiphysis_ratio"
    if m.epiphysis_present:
        return f"{m.bone}.fusion_contact"
    return f"{m.bone}.epiphysis_present"


class MultiStepModel:
    """Reference tables + regression: measurements -> bone age with a 90% interval.

    Args:
        maturity: scale-free reference table (required).
        lengths_mm: calibrated length reference (a model), used when the image has spacing.
        regression: the gradient-boosting regression (optional).
        blend: how the regression and the maturity lookup combine (optional; without it the
            regression alone gives the age).
        version: version string for results.
        blend_sex_unknown: the blend for hands of unknown sex (optional; without it ``blend``
            serves them too).
    """

    def __init__(
        self,
        maturity: ReferenceTable,
        lengths_mm: ReferenceTable | None = None,
        regression: AgeRegression | None = None,
        blend: LookupBlend | None = None,
        version: str = VERSION,
        blend_sex_unknown: LookupBlend | None = None,
    ) -> None:
        self.maturity = maturity
        self.lengths_mm = lengths_mm
        self.regression = regression
        self.blend = blend
        self.version = version
        self.blend_sex_unknown = blend_sex_unknown

    @classmethod
    def load(cls, folder: str | Path | None = None) -> MultiStepModel:
        """Load the shipped bundle (or one written by :meth:`save`).

        Raises:
            FileNotFoundError: when the maturity reference is missing.
        """
        folder = Path(folder) if folder else MULTISTEP_DIR
        if folder.is_file():
            folder = folder.parent
        maturity_path = folder / MATURITY_FILE
        if not maturity_path.is_file():
            raise FileNotFoundError(f"multi-step reference not found at {maturity_path}; run `boneage train multistep`")
        lengths = folder / LENGTH_FILE
        regression = folder / REGRESSION_FILE
        blend = folder / COMBINATION_FILE
        blend_sex_unknown = folder / COMBINATION_SEX_UNKNOWN_FILE
        return cls(
            ReferenceTable.load(maturity_path),
            ReferenceTable.load(lengths) if lengths.is_file() else None,
            AgeRegression.load(regression) if regression.is_file() else None,
            LookupBlend.load(blend) if blend.is_file() else None,
            blend_sex_unknown=LookupBlend.load(blend_sex_unknown) if blend_sex_unknown.is_file() else None,
        )

    def save(self, folder: str | Path) -> Path:
        """Write the bundle's files into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.maturity.save(folder / MATURITY_FILE)
        if self.lengths_mm is not None:
            self.lengths_mm.save(folder / LENGTH_FILE)
        if self.regression is not None:
            self.regression.save(folder / REGRESSION_FILE)
        if self.blend is not None:
            self.blend.save(folder / COMBINATION_FILE)
        if self.blend_sex_unknown is not None:
            self.blend_sex_unknown.save(folder / COMBINATION_SEX_UNKNOWN_FILE)
        return folder

    def predict_table(self, features: pd.DataFrame, sex: np.ndarray | list) -> dict[str, np.ndarray]:
        """Ages of many hands from their features.

        Args:
            features: one row per hand (:func:`boneage.measure.feature_names` columns).
            sex: ``"M"``, ``"F"`` or ``None`` per hand.

        Returns:
            Arrays over hands: ``age``, ``lower_90``, ``upper_90`` (the reported estimate: the
            blend of regression and scale-free lookup, the regression alone for a bundle without a
            blend, the lookup alone without a regression), ``lookup`` and ``regression`` (NaN
            without one).
        """
        return self._predict_table(features, sex)

    def _predict_table(self, features: pd.DataFrame, sex: np.ndarray | list,
                       maturity_log_likelihoods: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """:meth:`predict_table`, reusing the hands' maturity log-likelihoods when already computed."""
        sexes = np.asarray(sex, dtype=object)
        if maturity_log_likelihoods is None:
            # Plain tuples: DataFrame.to_dict("records") took 8 ms a hand on these ~100 columns.
            columns = list(features.columns)
            rows = [dict(zip(columns, values)) for values in features.itertuples(index=False, name=None)]
            look = [self.maturity.estimate(r, s) for r, s in zip(rows, sexes)]
        else:
            look = [self.maturity.estimate_from_log_likelihood(ll) for ll in maturity_log_likelihoods]
        look = np.array(look, dtype=float).reshape(-1, 3)
        if self.regression is None:
            age, lo, hi = look.T
            reg = np.full(len(features), np.nan)
        else:
            reg, lo, hi = self.regression.predict_interval(features, sexes)
            age = reg
            if self.blend is not None:
                age, lo, hi = self.blend.combine(reg, look[:, 0])
                unknown = sex_unknown(sexes)
                if self.blend_sex_unknown is not None and unknown.any():
                    age, lo, hi = (np.array(v, dtype=float) for v in (age, lo, hi))
                    age[unknown], lo[unknown], hi[unknown] = self.blend_sex_unknown.combine(reg[unknown], look[unknown, 0])
        return {"age": age, "lower_90": lo, "upper_90": hi, "lookup": look[:, 0], "regression": reg}

    def estimate(self, measurements: Measurements, sex: str | None, bones: bool = True) -> MultiStepEstimate:
        """Bone age from one hand's measurements.

        Args:
            measurements: from :func:`boneage.measure.measure`.
            sex: ``"M"``, ``"F"`` or ``None`` (unknown: both sexes' references are averaged, the
                regression's sex-agnostic model reads the hand and the sex-unknown blend joins them).
            bones: also make the per-bone table (a test-time-augmentation view needs the age only).

        Returns:
            :class:`MultiStepEstimate`.
        """
        feats = measurements.features()
        lengths = {f"{b}.length_mm": v for b, v in measurements.lengths_mm().items()}
        maturity_ll = self.maturity.total_log_likelihood(feats, sex)
        lookup_ll = maturity_ll / self.maturity.tau
        if self.lengths_mm is not None and lengths:
            lookup_ll = lookup_ll + self.lengths_mm.total_log_likelihood(lengths, sex) / self.lengths_mm.tau
        from boneage.growth import posterior_summary

        lookup = posterior_summary(self.maturity.ages, lookup_ll)
        n_features = sum(1 for v in feats.values() if np.isfinite(v)) + len(lengths)
        # The blend was fitted on the scale-free lookup; the calibrated lengths inform the
        # reported lookup and the per-bone table only.
        if self.regression is None:
            age, lo, hi, reg_age = (*lookup, None)
        else:
            table = self._predict_table(pd.DataFrame([feats]), [sex], [maturity_ll])
            age, lo, hi, reg_age = (float(table[k][0]) for k in ("age", "lower_90", "upper_90", "regression"))
        rows = self.bone_table(measurements, feats, sex, age) if bones else []
        return MultiStepEstimate(age, lo, hi, *lookup, reg_age, rows, n_features)

    def bone_table(self, measurements: Measurements, feats: dict[str, float], sex: str | None, age: float) -> list[BoneRow]:
        """Per-bone rows: measured values, reference at ``age``, z-score and implied age."""
        rows = []
        names = self.maturity.features
        for bone in anatomy.BONES:
            m = measurements.bones[bone]
            row = BoneRow(
                bone, m.present, m.plausible, list(m.flags), m.length_px, m.length_mm, m.width_px,
                m.epiphysis_ratio, m.fused,
            )
            if m.plausible:
                feature = main_feature(m)
                if self.maturity.covers(feature, sex):
                    row.feature, row.value = feature, feats.get(feature)
                    mean, sd = self.maturity.expected(feature, age, sex)
                    row.reference_mean, row.reference_sd = mean, sd
                    row.z_score = self.maturity.z_score(feature, row.value, age, sex)
                    if (self.lengths_mm is not None and m.length_mm is not None
                            and self.lengths_mm.covers(f"{bone}.length_mm", sex)):
                        # Calibrated image: the clinically familiar comparison is the length in mm.
                        row.feature, row.value = f"{bone}.length_mm", m.length_mm
                        mean, sd = self.lengths_mm.expected(row.feature, age, sex)
                        row.reference_mean, row.reference_sd = mean, sd
                        row.z_score = self.lengths_mm.z_score(row.feature, m.length_mm, age, sex)
                own = {n: feats[n] for n in _bone_features(bone, names) if np.isfinite(feats.get(n, math.nan))}
                if own:
                    ll = sum(self.maturity.log_likelihood(n, v, sex) for n, v in own.items())
                    from boneage.growth import posterior_summary

                    row.implied_age_months, row.implied_lower_90, row.implied_upper_90 = posterior_summary(self.maturity.ages, ll)
            rows.append(row)
        return rows

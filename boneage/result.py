"""The result of one radiograph: the types every front end reads, and how two methods' ages compare.

:class:`BoneAgeResult` is made by :class:`boneage.estimate.BoneAgeEstimator` (which re-exports
these names) and read by the reports, the batch records, the DICOM exports and the app.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Two estimates "disagree" when their difference exceeds this multiple of their combined
#: interval half-widths (intervals are 90%: 1.645 SD each).
DISAGREEMENT_Z = 1.645
#: A 90% interval wider than this either side (months) is too uncertain to confirm another
#: estimate: the shipped models' typical half-widths are 21-29 months, and a CNN shown a film it
#: cannot read widens its interval to the whole age range, which must not pass for agreement.
MAX_CONFIRMING_HALF_WIDTH = 36.0
#: Differences larger than this are never called agreement, even when two wide intervals allow
#: them: a clinician reads "agree" as "about the same age".
LARGE_DIFFERENCE_MONTHS = 12.0
#: The independent methods, in the order they are compared and stacked (``boneage.combine.METHODS``).
COMPARED_METHODS: tuple[str, ...] = ("multistep", "perbone", "direct")
#: How each method is named to a reader (lower case; reports capitalise).
METHOD_NAMES: dict[str, str] = {
    "multistep": "multi-step", "perbone": "per-bone", "direct": "end-to-end", "combined": "combined",
    "perbone_rus": "per-bone RUS", "perbone_carpal": "per-bone carpal",
}


@dataclass
class MethodEstimate:
    """One method's answer.

    Attributes:
        method: ``"multistep"``, ``"perbone"``, ``"direct"``, ``"combined"``, or a part of the
            per-bone method (``"perbone_rus"``, ``"perbone_carpal"``).
        available: False when the method could not run (model missing, image rejected ...).
        age_months, lower_90, upper_90: estimate and 90% interval (``None`` when unavailable).
        sds: bone-age SDS against chronological age (Brush SD), when both are known.
        note: why it is unavailable, or a caveat (e.g. sex unknown).
        model_version: weights version.
    """

    method: str
    available: bool = False
    age_months: float | None = None
    lower_90: float | None = None
    upper_90: float | None = None
    sds: float | None = None
    note: str | None = None
    model_version: str | None = None


@dataclass
class MethodComparison:
    """Two methods' ages side by side (see :func:`compare_methods`).

    Attributes:
        first, second: method names, in :data:`COMPARED_METHODS` order.
        difference_months: ``second`` minus ``first``.
        verdict: ``"agree"``, ``"disagree"`` (further apart than their intervals allow) or
            ``"inconclusive"`` (allowed only by a wide interval, or more than
            ``LARGE_DIFFERENCE_MONTHS`` apart).
        why: for an inconclusive verdict, what made it so.
    """

    first: str
    second: str
    difference_months: float
    verdict: str
    why: str = ""


@dataclass
class BoneAgeResult:
    """Everything known about one radiograph after estimation.

    Attributes:
        path: the input exactly as given (the user's own key), or a name for uploads.
        status: ``"ok"``, ``"error"`` (unreadable) or ``"rejected"`` (QC refused it).
        reason: why it is error/rejected ("" when ok).
        sex, sex_source: ``"M"``/``"F"``/``None`` and where it came from (``header``,
            ``user``, ``manifest``, ``predicted`` (read from the film, :mod:`boneage.sex`), ``unknown``).
        sex_probability: when the sex was not given, how sure the film's reading of it is (0.5-1),
            whether or not it was sure enough to use; ``None`` otherwise.
        predicted_sex: that reading (``"M"``/``"F"``): the sex used when ``sex_source == "predicted"``;
            when it was too uncertain, its probability weighs the per-bone and end-to-end methods'
            readings as a boy and as a girl.
        chronological_age_months, chronological_age_source: likewise.
        multistep, perbone, direct: the three methods' :class:`MethodEstimate`.
        combined: the stacked estimate of the available methods (:mod:`boneage.combine`): the
            headline; its note lists the weights.
        combined_weights: method -> its weight in ``combined`` (empty when there is none).
        perbone_rus, perbone_carpal: the per-bone method's RUS-bones-only consensus and the
            carpal region's own age (a discordance between them is clinically interesting).
        difference_months: direct minus multi-step, when both are available (kept for
            compatibility; every pair is in ``comparisons``).
        comparisons: every pair of available methods (:class:`MethodComparison`).
        agreement: over every pair: ``"disagree"`` when any pair disagrees, else
            ``"inconclusive"`` when any pair is (allowed only by a wide interval, or a difference
            over ``LARGE_DIFFERENCE_MONTHS``), else ``"agree"``; ``"n/a"`` with fewer than two.
        sds_note: why no SDS is given (age or sex unknown, outside the Brush table).
        bones: the per-bone table (``boneage.multistep.BoneRow`` dicts, or ``{"bone", "present"}``
            alone without the multi-step method), each with the per-bone method's
            ``maturity_age_months``, ``maturity_lower_90``, ``maturity_upper_90`` and
            ``maturity_used`` (in its consensus) for a bone it aged, ``None`` otherwise.
        carpal_count: ossified carpals seen.
        qc: notes from quality control (mirrored image, hand check, ...).
        spacing_mm: pixel spacing used for mm lengths, or ``None``.
        image_shape: ``(rows, cols)`` of the input at full resolution.
        versions: model name -> version string.
        label_map: the segmentation at full resolution (not serialised; for overlays).
        identifiers: patient/study identifiers from the header; serialised only on request.
    """

    path: str | None
    status: str = "ok"
    reason: str = ""
    sex: str | None = None
    sex_source: str = "unknown"
    sex_probability: float | None = None
    predicted_sex: str | None = None
    chronological_age_months: float | None = None
    chronological_age_source: str = "unknown"
    multistep: MethodEstimate = field(default_factory=lambda: MethodEstimate("multistep"))
    direct: MethodEstimate = field(default_factory=lambda: MethodEstimate("direct"))
    perbone: MethodEstimate = field(default_factory=lambda: MethodEstimate("perbone"))
    combined: MethodEstimate = field(default_factory=lambda: MethodEstimate("combined"))
    combined_weights: dict[str, float] = field(default_factory=dict)
    perbone_rus: MethodEstimate = field(default_factory=lambda: MethodEstimate("perbone_rus"))
    perbone_carpal: MethodEstimate = field(default_factory=lambda: MethodEstimate("perbone_carpal"))
    difference_months: float | None = None
    comparisons: list[MethodComparison] = field(default_factory=list)
    agreement: str = "n/a"
    sds_note: str | None = None
    bones: list[dict] = field(default_factory=list)
    carpal_count: int | None = None
    qc: list[str] = field(default_factory=list)
    spacing_mm: tuple[float, float] | None = None
    image_shape: tuple[int, int] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    label_map: np.ndarray | None = field(default=None, repr=False)
    identifiers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self, include_bones: bool = True, keep_identifiers: bool = False) -> dict[str, Any]:
        """JSON-ready dict (NaN -> None); the label map is left out, and so are patient
        identifiers unless ``keep_identifiers``."""
        d = {k: v for k, v in asdict(self).items() if k not in ("label_map", "identifiers")}
        if keep_identifiers:
            d["identifiers"] = dict(self.identifiers)
        if not include_bones:
            d.pop("bones")
        return _json_ready(d)

    def to_row(self, keep_identifiers: bool = False) -> dict[str, Any]:
        """A flat record for CSV / JSON Lines (one per input); identifiers only on request."""
        row: dict[str, Any] = {
            "path": self.path,
            "status": self.status,
            "reason": self.reason,
            "sex": self.sex,
            "sex_source": self.sex_source,
            "predicted_sex": self.predicted_sex,
            "sex_probability": self.sex_probability,
            "chronological_age_months": self.chronological_age_months,
            "chronological_age_source": self.chronological_age_source,
        }
        for est in (self.multistep, self.direct, self.perbone, self.combined):
            row[f"{est.method}_age_months"] = est.age_months
            row[f"{est.method}_lower_90"] = est.lower_90
            row[f"{est.method}_upper_90"] = est.upper_90
            row[f"{est.method}_sds"] = est.sds
        row["perbone_rus_age_months"] = self.perbone_rus.age_months
        row["perbone_carpal_age_months"] = self.perbone_carpal.age_months
        row["difference_months"] = self.difference_months
        row["agreement"] = self.agreement
        row["carpal_count"] = self.carpal_count
        row["spacing_mm"] = self.spacing_mm[0] if self.spacing_mm else None
        row["qc"] = "; ".join(self.qc)
        row["versions"] = ";".join(f"{k}={v}" for k, v in sorted(self.versions.items()))
        if keep_identifiers:
            for key in ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID", "SOPInstanceUID"):
                row[key] = self.identifiers.get(key)
        return _json_ready(row)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def compare_methods(first: MethodEstimate, second: MethodEstimate) -> MethodComparison:
    """Whether two methods' ages confirm each other.

    Args:
        first, second: two available estimates.

    Returns:
        :class:`MethodComparison`: ``"disagree"`` when they are further apart than their 90%
        intervals allow (``DISAGREEMENT_Z`` combined SDs), ``"inconclusive"`` when the intervals
        allow it only because one is wider than ``MAX_CONFIRMING_HALF_WIDTH`` or they are more
        than ``LARGE_DIFFERENCE_MONTHS`` apart, else ``"agree"``.
    """
    difference = float(second.age_months - first.age_months)  # type: ignore[operator]
    half = [(e.upper_90 - e.lower_90) / 2 / 1.645 for e in (first, second)]  # type: ignore[operator]
    sd = math.sqrt(half[0] ** 2 + half[1] ** 2)
    widest = max(half) * 1.645
    if abs(difference) > DISAGREEMENT_Z * sd:
        return MethodComparison(first.method, second.method, difference, "disagree")
    if widest > MAX_CONFIRMING_HALF_WIDTH:
        # Allowed by the intervals, but only because one is wide: neither confirms the other.
        return MethodComparison(first.method, second.method, difference, "inconclusive",
                                f"an interval is +-{widest:.0f} months wide")
    if abs(difference) > LARGE_DIFFERENCE_MONTHS:
        return MethodComparison(first.method, second.method, difference, "inconclusive",
                                f"they differ by {abs(difference):.0f} months")
    return MethodComparison(first.method, second.method, difference, "agree")

"""Published growth and maturity reference tables shipped in ``data/references/``.

Each CSV keeps the ``#`` citation header it was copied with; :func:`citation` returns it. Nothing
here is estimated from images: these are the published facts the estimators lean on.

* Brush Foundation SD of skeletal age by chronological age and sex (Greulich & Pyle 1959):
  :func:`brush_sd`, :func:`bone_age_sds`.
* Greulich-Pyle atlas standard ages and the ossification/fusion events described at each
  standard: :func:`gp_standard_ages`, :func:`gp_events`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.paths import REFERENCES_DIR

BRUSH_SD_FILE = "gp_brush_skeletal_age_sd.csv"
GP_STANDARDS_FILE = "gp_atlas_standard_ages.csv"
GP_EVENTS_FILE = "gp_atlas_ossification_fusion_events.csv"
OSSIFICATION_SOURCES_FILE = "ossification_appearance_fusion_sources.csv"


class OutOfReferenceRange(ValueError):
    """The requested age or sex lies outside what a reference table covers."""


def table_path(name: str) -> Path:
    """Path of a shipped reference table by file name."""
    path = REFERENCES_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"reference table {path} is missing from this installation")
    return path


@lru_cache(maxsize=None)
def read_table(name: str) -> pd.DataFrame:
    """Read a shipped reference table (``#`` citation lines skipped)."""
    return pd.read_csv(table_path(name), comment="#")


@lru_cache(maxsize=None)
def citation(name: str) -> str:
    """The ``#`` header of a reference table: citation, where it was read, caveats."""
    lines = table_path(name).read_text(encoding="utf-8").splitlines()
    return "\n".join(line[1:].strip() for line in lines if line.startswith("#"))


def _sex(sex: str | None) -> str:
    s = str(sex).strip().upper() if sex is not None else ""
    if s not in ("M", "F"):
        raise OutOfReferenceRange(f"sex must be 'M' or 'F' for a sex-specific reference, got {sex!r}")
    return s


# --------------------------------------------------------------------------------------------
# Brush Foundation SD
# --------------------------------------------------------------------------------------------
def brush_sd_range(sex: str) -> tuple[float, float]:
    """Chronological ages (months) covered by the Brush SD table for one sex."""
    df = read_table(BRUSH_SD_FILE)
    ages = df.loc[df["sex"] == _sex(sex), "chronological_age_months"]
    return float(ages.min()), float(ages.max())


def brush_sd(chronological_age_months: float, sex: str) -> float:
    """SD of skeletal age (months) at a chronological age, Brush Foundation data.

    Linear interpolation between the table's rows. Policy outside the table (boys 3-204 months,
    girls 3-192 months): no extrapolation, :class:`OutOfReferenceRange` is raised, so a caller
    reports "SDS not available" instead of a number the table does not support.

    Args:
        chronological_age_months: age at the study in months.
        sex: ``"M"`` or ``"F"``.

    Returns:
        The SD in months.
    """
    s = _sex(sex)
    df = read_table(BRUSH_SD_FILE)
    rows = df[df["sex"] == s].sort_values("chronological_age_months")
    ages = rows["chronological_age_months"].to_numpy(dtype=float)
    sds = rows["sd_months"].to_numpy(dtype=float)
    ca = float(chronological_age_months)
    if not np.isfinite(ca) or ca < ages[0] or ca > ages[-1]:
        raise OutOfReferenceRange(
            f"chronological age {ca:g} months is outside the Brush SD table for sex {s} "
            f"({ages[0]:g}-{ages[-1]:g} months)"
        )
    return float(np.interp(ca, ages, sds))


def bone_age_sds(bone_age_months: float, chronological_age_months: float, sex: str) -> float:
    """Standard deviation score of bone age against chronological age.

    ``SDS = (bone age - chronological age) / SD(chronological age, sex)`` with the Brush
    Foundation SD (Greulich & Pyle 1959). Positive means advanced, negative delayed.

    Args:
        bone_age_months: estimated bone age (months).
        chronological_age_months: chronological age (months).
        sex: ``"M"`` or ``"F"``.

    Returns:
        The SDS.

    Raises:
        OutOfReferenceRange: sex unknown or age outside the table (see :func:`brush_sd`).
    """
    ba = float(bone_age_months)
    if not np.isfinite(ba) or ba < 0:
        raise OutOfReferenceRange(f"bone age must be a non-negative number of months, got {bone_age_months!r}")
    sd = brush_sd(chronological_age_months, sex)
    return (ba - float(chronological_age_months)) / sd


# --------------------------------------------------------------------------------------------
# Greulich-Pyle atlas
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPStandard:
    """One plate of the Greulich-Pyle atlas."""

    sex: str
    index: int
    skeletal_age_months: float
    label: str


@dataclass(frozen=True)
class MaturityEvent:
    """An ossification or fusion event first described at a Greulich-Pyle standard.

    ``centre`` is the atlas's wording (e.g. ``metacarpal_2_5``, ``distal_radius_epiphysis``);
    ``event`` is ``appears``, ``present_by``, ``fusion_begins``, ``fusion_advanced``,
    ``fusion_almost_complete`` or ``fusion_complete``. These are exemplar plates, not population
    spreads.
    """

    sex: str
    centre: str
    event: str
    skeletal_age_months: float
    quote: str


def gp_standard_ages(sex: str) -> list[GPStandard]:
    """The Greulich-Pyle standards (skeletal ages) for one sex, youngest first."""
    s = _sex(sex)
    df = read_table(GP_STANDARDS_FILE)
    df = df[df["sex"] == s].sort_values("standard_index")
    return [
        GPStandard(s, int(r.standard_index), float(r.skeletal_age_months), str(r.label))
        for r in df.itertuples(index=False)
    ]


def gp_events(sex: str | None = None) -> list[MaturityEvent]:
    """Greulich-Pyle ossification and fusion events, ordered by skeletal age.

    Args:
        sex: ``"M"``, ``"F"`` or ``None`` for both.
    """
    df = read_table(GP_EVENTS_FILE)
    if sex is not None:
        df = df[df["sex"] == _sex(sex)]
    df = df.sort_values(["sex", "gp_standard_skeletal_age_months"], kind="stable")
    return [
        MaturityEvent(str(r.sex), str(r.centre), str(r.event), float(r.gp_standard_skeletal_age_months), str(r.quote_from_source))
        for r in df.itertuples(index=False)
    ]


def ossification_sources() -> pd.DataFrame:
    """Ages of appearance and fusion of ossification centres, one row per source statement."""
    return read_table(OSSIFICATION_SOURCES_FILE).copy()

"""Labelled real radiographs from ``../shared`` and the project's one fixed validation split.

Every model choice (segmenter, regression, end-to-end CNN, comparison) is validated on the same
held-out part of ``rsna-dev``; no model ever trains on it. ``rsna-299`` is training data only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.paths import rsna_299_dir, rsna_dev_dir

#: Fraction of ``rsna-dev`` held out for validation, and the seed that draws it. Never change
#: these: shipped model cards quote metrics on exactly this split.
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 20261125


class DataUnavailableError(FileNotFoundError):
    """The shared research data is not present (e.g. on a user's machine)."""


@dataclass(frozen=True)
class LabelledImage:
    """One labelled real radiograph."""

    id: int
    path: Path
    bone_age_months: float
    sex: str  # "M" or "F"
    source: str  # "rsna-dev" or "rsna-299"


def _read_labels(folder: Path, source: str) -> pd.DataFrame:
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise DataUnavailableError(f"{labels} not found: the shared RSNA data is not available here")
    df = pd.read_csv(labels)
    df["path"] = [folder / "images" / f"{i}.jpg" for i in df["id"]]
    df["sex"] = np.where(df["male"] == 1, "M", "F")
    df["source"] = source
    df = df.rename(columns={"boneage_months": "bone_age_months"})
    return df[["id", "path", "bone_age_months", "sex", "source"]].reset_index(drop=True)


def rsna_dev(folder: Path | None = None) -> pd.DataFrame:
    """Labels of the development set with a ``split`` column (``train`` or ``val``).

    Args:
        folder: the ``rsna-dev`` folder; defaults to :func:`boneage.paths.rsna_dev_dir`.

    Returns:
        DataFrame with columns ``id, path, bone_age_months, sex, source, split``.

    Raises:
        DataUnavailableError: when the folder or its ``labels.csv`` is missing.
    """
    df = _read_labels(folder or rsna_dev_dir(), "rsna-dev")
    df["split"] = validation_mask(df["id"].to_numpy())
    df["split"] = np.where(df["split"], "val", "train")
    return df


def rsna_299(folder: Path | None = None) -> pd.DataFrame:
    """Labels of the 299 x 299 set (training only; it shares no id with ``rsna-dev``)."""
    df = _read_labels(folder or rsna_299_dir(), "rsna-299")
    df["split"] = "train"
    return df


def validation_mask(ids: np.ndarray) -> np.ndarray:
    """Whether each ``rsna-dev`` id belongs to the fixed validation split.

    The split depends only on the id (a seeded hash), so it is stable under re-ordering and
    subsetting of the label file.

    Args:
        ids: integer image ids.

    Returns:
        Boolean array, True for validation ids (about :data:`VALIDATION_FRACTION` of them).
    """
    ids = np.asarray(ids, dtype=np.uint64)
    # SplitMix64-style integer hash of (id, seed): deterministic across platforms and numpy versions.
    with np.errstate(over="ignore"):
        z = ids + np.uint64(SPLIT_SEED) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return u < VALIDATION_FRACTION


def all_training_images() -> pd.DataFrame:
    """Every real labelled image a model may train on: ``rsna-dev`` train split + ``rsna-299``."""
    dev = rsna_dev()
    return pd.concat([dev[dev["split"] == "train"], rsna_299()], ignore_index=True)

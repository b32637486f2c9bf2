"""Reading radiographs (DICOM, PNG, JPEG, TIFF) into one :class:`Radiograph` type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class ImageReadError(ValueError):
    """A file could not be read as a radiograph; the message names the file and the reason."""


@dataclass
class Radiograph:
    """A radiograph ready for analysis.

    Attributes:
        pixels: 2-D float32 array in [0, 1], bone bright, at the file's full resolution.
        spacing_mm: ``(row, col)`` pixel spacing in mm, or ``None`` when unknown or untrustworthy.
        sex: ``"M"``, ``"F"`` or ``None``.
        chronological_age_months: age at the study from the header, or ``None``.
        path: the file it came from (``None`` for arrays).
        source_format: ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"`` or ``"array"``.
        metadata: non-identifying header facts (modality, photometric interpretation, ...).
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    sex: str | None = None
    chronological_age_months: float | None = None
    path: Path | None = None
    source_format: str = "array"
    metadata: dict = field(default_factory=dict)


def load_radiograph(path: str | Path) -> Radiograph:
    """Read a DICOM, PNG, JPEG or TIFF file into a :class:`Radiograph`.

    Raises:
        ImageReadError: naming the file and the reason, for any unreadable input.
    """
    raise NotImplementedError  # filled in by the foundation work in progress

"""Built-in example cases (synthetic hands shipped in ``data/examples``) for the app and docs."""

from __future__ import annotations

import json
from pathlib import Path

from boneage.io import Radiograph, load_radiograph
from boneage.paths import EXAMPLES_DIR


def example_names() -> list[str]:
    """Names of the shipped example cases (e.g. ``synthetic_hand_12y``)."""
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.json") if (EXAMPLES_DIR / f"{p.stem}.png").is_file())


def load_example(name: str) -> Radiograph:
    """A shipped example as a :class:`Radiograph` with its known sex, age and pixel spacing.

    The PNG carries no header, so the facts a DICOM header would hold come from the case's JSON.
    """
    meta_path = EXAMPLES_DIR / f"{name}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no example case {name!r} in {EXAMPLES_DIR} (have: {', '.join(example_names())})")
    meta = json.loads(meta_path.read_text())
    rad = load_radiograph(EXAMPLES_DIR / f"{name}.png")
    spacing = meta.get("spacing_mm")
    rad.spacing_mm = (float(spacing), float(spacing)) if spacing else None
    rad.sex = meta.get("sex")
    rad.chronological_age_months = meta.get("chronological_age_months")
    rad.metadata["example_truth_bone_age_months"] = meta.get("bone_age_months")
    return rad


def example_path(name: str) -> Path:
    """The PNG file of an example case."""
    return EXAMPLES_DIR / f"{name}.png"

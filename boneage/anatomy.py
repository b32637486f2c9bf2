"""Hand and wrist anatomy: the one source of truth for bone names and segmentation label ids.

Every other module (synthesis, segmentation, measurement, reference tables, reports, the app)
takes bone names and label ids from here and never re-declares them.

Conventions:
    * A left hand, digit 1 = thumb, digit 5 = little finger.
    * The radius, ulna and the 19 tubular bones (metacarpals and phalanges) are split into a
      ``shaft`` (diaphysis + metaphysis) and an ``epiphysis`` label, so maturity (epiphysis
      appearance, capping, fusion) can be read straight from a label map.
    * The 8 carpals have one label each.
    * Label 0 is background. Ids are consecutive in :data:`BONES` order and never change
      meaning: shipped segmentation weights depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Part = Literal["shaft", "epiphysis", "whole"]
Kind = Literal["forearm", "carpal", "metacarpal", "proximal_phalanx", "middle_phalanx", "distal_phalanx"]

BACKGROUND = 0

CARPALS: tuple[str, ...] = (
    "scaphoid",
    "lunate",
    "triquetrum",
    "pisiform",
    "trapezium",
    "trapezoid",
    "capitate",
    "hamate",
)
METACARPALS: tuple[str, ...] = tuple(f"metacarpal_{d}" for d in range(1, 6))
PROXIMAL_PHALANGES: tuple[str, ...] = tuple(f"proximal_phalanx_{d}" for d in range(1, 6))
# The thumb has no middle phalanx.
MIDDLE_PHALANGES: tuple[str, ...] = tuple(f"middle_phalanx_{d}" for d in range(2, 6))
DISTAL_PHALANGES: tuple[str, ...] = tuple(f"distal_phalanx_{d}" for d in range(1, 6))
FOREARM: tuple[str, ...] = ("radius", "ulna")

#: The 19 tubular bones of the hand (metacarpals and phalanges).
TUBULAR_BONES: tuple[str, ...] = METACARPALS + PROXIMAL_PHALANGES + MIDDLE_PHALANGES + DISTAL_PHALANGES
#: Bones with a separately labelled epiphysis (radius, ulna and the tubular bones).
EPIPHYSEAL_BONES: tuple[str, ...] = FOREARM + TUBULAR_BONES
#: All 29 bones, in canonical order.
BONES: tuple[str, ...] = FOREARM + CARPALS + TUBULAR_BONES


@dataclass(frozen=True)
class Structure:
    """One segmentation label: a whole carpal, or the shaft or epiphysis of a long bone."""

    label: int
    bone: str
    part: Part

    @property
    def name(self) -> str:
        """Unique structure name, e.g. ``"radius_epiphysis"`` or ``"capitate"``."""
        return self.bone if self.part == "whole" else f"{self.bone}_{self.part}"


def _build_structures() -> tuple[Structure, ...]:
    structures: list[Structure] = []
    label = 1
    for bone in BONES:
        if bone in EPIPHYSEAL_BONES:
            structures.append(Structure(label, bone, "shaft"))
            structures.append(Structure(label + 1, bone, "epiphysis"))
            label += 2
        else:
            structures.append(Structure(label, bone, "whole"))
            label += 1
    return tuple(structures)


#: Every labelled structure, ordered by label id (1..N).
STRUCTURES: tuple[Structure, ...] = _build_structures()
#: Number of segmentation classes including background.
NUM_CLASSES: int = len(STRUCTURES) + 1

_BY_LABEL = {s.label: s for s in STRUCTURES}
_BY_NAME = {s.name: s for s in STRUCTURES}


def _check_bone(name: str) -> None:
    if name not in BONES:
        raise KeyError(f"unknown bone {name!r}; expected one of boneage.anatomy.BONES")


def bone_labels(name: str) -> list[int]:
    """All label ids that make up a bone.

    Args:
        name: a canonical bone name from :data:`BONES`.

    Returns:
        ``[shaft, epiphysis]`` for the radius, ulna and tubular bones; ``[label]`` for a carpal.
    """
    _check_bone(name)
    return [s.label for s in STRUCTURES if s.bone == name]


def shaft_label(name: str) -> int:
    """Label id of a long bone's shaft (or a carpal's single label)."""
    _check_bone(name)
    return next(s.label for s in STRUCTURES if s.bone == name and s.part in ("shaft", "whole"))


def epiphysis_label(name: str) -> int | None:
    """Label id of a bone's epiphysis, or ``None`` for carpals (they have none)."""
    _check_bone(name)
    return next((s.label for s in STRUCTURES if s.bone == name and s.part == "epiphysis"), None)


def structure(label_or_name: int | str) -> Structure:
    """Look up a structure by label id or structure name (``"metacarpal_3_epiphysis"``)."""
    table = _BY_LABEL if isinstance(label_or_name, int) else _BY_NAME
    try:
        return table[label_or_name]  # type: ignore[index]
    except KeyError:
        raise KeyError(f"unknown structure {label_or_name!r}") from None


def label_to_bone_lut() -> list[str | None]:
    """A list indexed by label id giving the bone name (``None`` for background)."""
    return [None] + [s.bone for s in STRUCTURES]


def bone_kind(name: str) -> Kind:
    """Which group a bone belongs to (forearm, carpal, metacarpal, or a phalanx row)."""
    _check_bone(name)
    if name in FOREARM:
        return "forearm"
    if name in CARPALS:
        return "carpal"
    return name.rsplit("_", 1)[0]  # type: ignore[return-value]


def digit(name: str) -> int | None:
    """Digit (ray) number 1 (thumb) .. 5 of a tubular bone, ``None`` otherwise."""
    _check_bone(name)
    if name in TUBULAR_BONES:
        return int(name.rsplit("_", 1)[1])
    return None


def epiphysis_end(name: str) -> Literal["proximal", "distal"] | None:
    """Which end of a long bone carries its (single, assessed) epiphysis.

    The distal radius and ulna and the heads of metacarpals 2-5 are distal; the first metacarpal
    and every phalanx ossify from an epiphysis at their base (proximal end). Carpals: ``None``.
    """
    _check_bone(name)
    if name in FOREARM or name in METACARPALS[1:]:
        return "distal"
    if name in TUBULAR_BONES:
        return "proximal"
    return None


def display_name(name: str) -> str:
    """Human-readable name for reports: ``"middle_phalanx_3"`` -> ``"Middle phalanx 3"``."""
    return name.replace("_", " ").capitalize()


def digit_bones(d: int) -> tuple[str, ...]:
    """The tubular bones of one digit from proximal to distal (metacarpal first)."""
    if d not in range(1, 6):
        raise ValueError(f"digit must be 1..5, got {d}")
    rows = (METACARPALS, PROXIMAL_PHALANGES, MIDDLE_PHALANGES, DISTAL_PHALANGES)
    return tuple(b for row in rows for b in row if b.endswith(f"_{d}"))


#: The bones whose appearance the per-bone maturity method reads (the RUS set of TW3 and
#: BoneXpert: radius, ulna and the tubular bones of rays 1, 3 and 5).
RUS_BONES: tuple[str, ...] = (
    "radius", "ulna",
    "metacarpal_1", "metacarpal_3", "metacarpal_5",
    "proximal_phalanx_1", "proximal_phalanx_3", "proximal_phalanx_5",
    "middle_phalanx_3", "middle_phalanx_5",
    "distal_phalanx_1", "distal_phalanx_3", "distal_phalanx_5",
)
#: Name of the one crop that covers the carpus (the carpals read together, as in TW3's carpal score).
CARPAL_REGION = "carpals"
#: Every per-bone maturity crop, in network order (the network's bone-identity input indexes this).
MATURITY_REGIONS: tuple[str, ...] = RUS_BONES + (CARPAL_REGION,)

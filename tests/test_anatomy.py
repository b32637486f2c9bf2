"""Anatomy is the single source of truth: names, label ids and their invariants."""

from __future__ import annotations

import pytest

from boneage import anatomy


def test_29_canonical_bones_in_order():
    assert len(anatomy.BONES) == 29
    assert anatomy.BONES[:10] == (
        "radius", "ulna", "scaphoid", "lunate", "triquetrum", "pisiform",
        "trapezium", "trapezoid", "capitate", "hamate",
    )
    assert "middle_phalanx_1" not in anatomy.BONES  # the thumb has no middle phalanx
    assert len(anatomy.TUBULAR_BONES) == 19


def test_labels_are_unique_consecutive_and_cover_every_bone():
    labels = [s.label for s in anatomy.STRUCTURES]
    assert labels == list(range(1, len(labels) + 1))
    assert anatomy.NUM_CLASSES == len(labels) + 1 == 2 * 21 + 8 + 1
    seen = sorted(label for bone in anatomy.BONES for label in anatomy.bone_labels(bone))
    assert seen == labels


@pytest.mark.parametrize("bone", anatomy.EPIPHYSEAL_BONES)
def test_long_bones_have_shaft_and_epiphysis(bone):
    shaft, epi = anatomy.bone_labels(bone)
    assert anatomy.shaft_label(bone) == shaft and anatomy.epiphysis_label(bone) == epi
    assert anatomy.structure(shaft).part == "shaft" and anatomy.structure(epi).part == "epiphysis"
    assert anatomy.structure(f"{bone}_epiphysis").label == epi


@pytest.mark.parametrize("bone", anatomy.CARPALS)
def test_carpals_are_single_labels(bone):
    assert len(anatomy.bone_labels(bone)) == 1 and anatomy.epiphysis_label(bone) is None


def test_epiphysis_ends_follow_anatomy():
    assert anatomy.epiphysis_end("radius") == "distal"
    assert anatomy.epiphysis_end("metacarpal_3") == "distal"
    assert anatomy.epiphysis_end("metacarpal_1") == "proximal"  # the thumb metacarpal ossifies at its base
    assert anatomy.epiphysis_end("distal_phalanx_5") == "proximal"
    assert anatomy.epiphysis_end("capitate") is None


def test_digits_and_lookup_table():
    assert anatomy.digit_bones(1) == ("metacarpal_1", "proximal_phalanx_1", "distal_phalanx_1")
    assert len(anatomy.digit_bones(3)) == 4
    lut = anatomy.label_to_bone_lut()
    assert lut[0] is None and lut[anatomy.shaft_label("ulna")] == "ulna"
    assert anatomy.bone_kind("middle_phalanx_4") == "middle_phalanx" and anatomy.digit("capitate") is None


def test_unknown_names_are_rejected():
    with pytest.raises(KeyError):
        anatomy.bone_labels("femur")
    with pytest.raises(KeyError):
        anatomy.structure(999)

"""Reference tables: citations kept, Brush SD interpolation and range policy, GP structures."""

from __future__ import annotations

import pytest

from boneage import references
from boneage.paths import REFERENCES_DIR


def test_every_shipped_table_keeps_its_citation_header():
    tables = sorted(REFERENCES_DIR.glob("*.csv"))
    assert len(tables) >= 4
    for path in tables:
        assert path.read_text(encoding="utf-8").startswith("#"), path


def test_brush_sd_hits_table_rows_and_interpolates_between():
    assert references.brush_sd(120, "M") == pytest.approx(9.79)
    assert references.brush_sd(132, "M") == pytest.approx(10.09)
    assert references.brush_sd(126, "M") == pytest.approx((9.79 + 10.09) / 2)
    assert references.brush_sd(60, "F") == pytest.approx(11.65)


def test_sds_sign_and_value():
    assert references.bone_age_sds(130, 120, "M") == pytest.approx(10 / 9.79)
    assert references.bone_age_sds(110, 120, "F") == pytest.approx(-10 / 11.73)


@pytest.mark.parametrize("age, sex", [(2, "M"), (205, "M"), (193, "F"), (float("nan"), "F")])
def test_no_extrapolation_outside_the_table(age, sex):
    with pytest.raises(references.OutOfReferenceRange, match="outside the Brush SD table"):
        references.brush_sd(age, sex)


def test_sds_needs_a_known_sex():
    with pytest.raises(references.OutOfReferenceRange, match="sex"):
        references.bone_age_sds(100, 100, None)
    assert references.brush_sd_range("F") == (3.0, 192.0)


def test_gp_standards_and_events():
    girls = references.gp_standard_ages("F")
    boys = references.gp_standard_ages("M")
    assert len(girls) == 27 and len(boys) == 31
    assert [g.skeletal_age_months for g in girls] == sorted(g.skeletal_age_months for g in girls)
    events = references.gp_events("M")
    assert all(e.sex == "M" for e in events)
    first = {(e.centre, e.event): e.skeletal_age_months for e in events}
    assert first[("capitate", "appears")] == 3
    assert first[("distal_radius", "fusion_complete")] == 228
    assert "Greulich" in references.citation(references.GP_EVENTS_FILE)
    assert len(references.ossification_sources()) > 50

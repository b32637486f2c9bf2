"""DICOM outputs of a result: the Comprehensive SR carries every method's estimate, the combined
one first; the Secondary Capture page shows them."""

from __future__ import annotations

import numpy as np
import pytest

from boneage.dicom_export import ExportError, result_page, structured_report
from boneage.estimate import BoneAgeResult, MethodEstimate


def _estimate(method: str, age: float, half: float = 12.0, sds: float | None = None) -> MethodEstimate:
    return MethodEstimate(method, True, age, age - half, age + half, sds=sds, model_version=f"{method}-test")


@pytest.fixture()
def result(dicom_factory) -> BoneAgeResult:
    path = dicom_factory(PatientSex="F", BodyPartExamined="HAND")
    r = BoneAgeResult(path=str(path), status="ok", sex="F", chronological_age_months=110.0)
    r.multistep = _estimate("multistep", 101.0, sds=-0.3)
    r.perbone = _estimate("perbone", 107.0, sds=0.1)
    r.direct = _estimate("direct", 113.0, sds=0.5)
    r.combined = _estimate("combined", 108.5, half=10.0, sds=0.2)
    r.combined_weights = {"multistep": 0.2, "perbone": 0.35, "direct": 0.45}
    r.perbone_rus = _estimate("perbone_rus", 109.0)
    r.perbone_carpal = _estimate("perbone_carpal", 95.0)
    return r


def _groups(sr) -> dict[str, dict]:
    """Measurement groups of an SR: tracking identifier -> {"num": {code: value}, "text": [...]}."""
    groups = {}

    def walk(items, group):
        for item in items:
            kind = item.ValueType
            if kind == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Group":
                found = {"num": {}, "text": []}
                walk(item.get("ContentSequence", []), found)
                name = next(t for t in found["text"] if t.startswith("bone age "))
                groups[name] = found
                continue
            if group is not None and kind == "NUM":
                code = item.ConceptNameCodeSequence[0].CodeValue
                group["num"][code] = float(item.MeasuredValueSequence[0].NumericValue)
            elif group is not None and kind == "TEXT":
                group["text"].append(str(item.TextValue))
            walk(item.get("ContentSequence", []), group)

    walk(sr.ContentSequence, None)
    return groups


def test_sr_carries_every_estimate_with_the_combined_one_first(result):
    sr = structured_report(result)
    groups = _groups(sr)
    assert list(groups) == ["bone age combined", "bone age multistep", "bone age perbone", "bone age direct"]
    for method, est in (("combined", result.combined), ("multistep", result.multistep),
                        ("perbone", result.perbone), ("direct", result.direct)):
        values = groups[f"bone age {method}"]["num"]
        assert values["37362-1"] == pytest.approx(est.age_months)  # LOINC bone age
        assert values["BA-L90"] == pytest.approx(est.lower_90) and values["BA-U90"] == pytest.approx(est.upper_90)
        assert values["BA-SDS"] == pytest.approx(est.sds)
    perbone = groups["bone age perbone"]["num"]
    assert perbone["BA-RUS"] == pytest.approx(109.0) and perbone["BA-CARPAL"] == pytest.approx(95.0)
    assert "BA-RUS" not in groups["bone age combined"]["num"]
    combined_text = " ".join(groups["bone age combined"]["text"])
    assert "boneage combined" in combined_text and "weight of perbone: 0.35" in combined_text


def test_sr_leaves_out_what_is_unavailable(result):
    result.perbone = MethodEstimate("perbone", note="per-bone method withheld")
    result.combined = MethodEstimate("combined", note="combined estimate unavailable (combined model missing)")
    groups = _groups(structured_report(result))
    assert list(groups) == ["bone age multistep", "bone age direct"]
    result.multistep = result.direct = MethodEstimate("direct")
    with pytest.raises(ExportError, match="no estimate"):
        structured_report(result)


def test_result_page_renders_every_estimate(result):
    page = result_page(result, np.full((64, 48), 0.5, np.float32))
    assert page.ndim == 3 and page.shape[2] == 3 and page.dtype == np.uint8

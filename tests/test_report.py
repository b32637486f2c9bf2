"""Reader-facing text of a result (report module)."""

from __future__ import annotations

import pytest

from boneage.estimate import BoneAgeResult
from boneage.report import agreement_text, html_report


@pytest.mark.parametrize(
    "agreement, difference, kind",
    [("agree", 5.0, "agree"), ("agree", -47.0, "wide"), ("disagree", 60.0, "disagree"), ("n/a", None, "n/a")],
)
def test_agreement_text_never_calls_a_large_difference_agreement(agreement, difference, kind):
    result = BoneAgeResult(path="x", agreement=agreement, difference_months=difference)
    got, sentence = agreement_text(result)
    assert got == kind
    if difference is not None:
        assert f"{abs(difference):.0f}" in sentence
    if kind == "wide":
        assert "agree" not in sentence.lower() and "review" in sentence.lower()


def test_html_report_uses_the_same_sentence():
    result = BoneAgeResult(path="x", status="ok", agreement="agree", difference_months=-47.0)
    assert "neither confirms the other" in html_report(result) and "Methods agree" not in html_report(result)

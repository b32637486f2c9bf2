"""Reader-facing text of a result (report module)."""

from __future__ import annotations

import pytest

from boneage.estimate import BoneAgeResult
from boneage.report import agreement_text, html_report


@pytest.mark.parametrize(
    "agreement, difference, kind",
    [("agree", 5.0, "agree"), ("inconclusive", -47.0, "wide"), ("disagree", 60.0, "disagree"), ("n/a", None, "n/a")],
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
    result = BoneAgeResult(path="x", status="ok", agreement="inconclusive", difference_months=-47.0)
    assert "neither confirms the other" in html_report(result) and "Methods agree" not in html_report(result)


def test_display_copy_is_small_aligned_and_independent_of_the_film():
    import numpy as np

    from boneage.report import display_copy

    film = np.random.default_rng(0).random((5001, 3999)).astype(np.float32)
    labels = (film * 40).astype(np.uint8)
    pixels, small_labels = display_copy(film, labels, long_side=1600)
    assert max(pixels.shape) <= 1600 and pixels.shape == small_labels.shape and pixels.dtype == np.float32
    assert pixels.base is None and small_labels.base is None  # copies: the full film can be freed
    assert set(np.unique(small_labels)) <= set(np.unique(labels))  # ids sampled, never averaged
    assert abs(float(pixels.mean()) - float(film.mean())) < 1e-3
    same, none = display_copy(film[:300, :200])
    assert same.shape == (300, 200) and none is None

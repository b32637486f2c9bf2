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


# ------------------------------------------------------------------------------------------------
# Three methods, the combined headline, each bone's own age
# ------------------------------------------------------------------------------------------------
def _est(method, age, half=10.0):
    from boneage.estimate import MethodEstimate

    return MethodEstimate(method, True, float(age), float(age - half), float(age + half))


def _three_method_result(agreement="agree"):
    from boneage.estimate import BoneAgeEstimator

    result = BoneAgeResult(path="x", status="ok", sex="F", chronological_age_months=110.0)
    result.multistep, result.perbone, result.direct = _est("multistep", 100), _est("perbone", 104), _est("direct", 102)
    if agreement == "disagree":
        result.perbone = _est("perbone", 150)
    result.combined = _est("combined", 102)
    result.combined.note = "stacked: multi-step 0.20, per-bone 0.35, end-to-end 0.45"
    result.perbone_rus, result.perbone_carpal = _est("perbone_rus", 105), _est("perbone_carpal", 90)
    result.bones = [
        {"bone": "metacarpal_3", "present": True, "maturity_age_months": 130.0, "maturity_lower_90": 118.0,
         "maturity_upper_90": 142.0, "maturity_used": True},
        {"bone": "radius", "present": True, "maturity_age_months": 80.0, "maturity_lower_90": 70.0,
         "maturity_upper_90": 90.0, "maturity_used": False},
        {"bone": "middle_phalanx_3", "present": True, "maturity_age_months": 102.0, "maturity_lower_90": 92.0,
         "maturity_upper_90": 112.0, "maturity_used": True},
    ]
    BoneAgeEstimator._compare_and_score(result)
    return result


def test_agreement_text_names_the_disagreeing_pair_of_three_methods():
    result = _three_method_result("disagree")
    kind, sentence = agreement_text(result)
    assert kind == "disagree" and "Multi-step and per-bone disagree by 50 months" in sentence
    assert "per-bone" in sentence.lower() and "combined estimate" in sentence
    kind, sentence = agreement_text(_three_method_result())
    assert kind == "agree" and sentence.startswith("All three methods agree")


def test_a_bone_older_than_the_combined_age_is_red_and_a_younger_one_blue():
    from boneage import anatomy
    from boneage.report import maturity_colour, maturity_colours

    colours = maturity_colours(_three_method_result())
    assert colours.shape == (anatomy.NUM_CLASSES, 4)
    older = colours[anatomy.shaft_label("metacarpal_3")]  # own age 130 against the combined 102: older
    younger = colours[anatomy.shaft_label("radius")]  # 80 against 102: younger
    same = colours[anatomy.shaft_label("middle_phalanx_3")]  # 102: the same
    assert older[0] > 200 and older[1] < 60 and older[2] < 60 and older[3] == 255  # red
    assert younger[2] > 200 and younger[0] < 100 and younger[3] == 255  # blue
    assert abs(int(same[0]) - int(same[2])) < 5  # neutral
    assert (colours[anatomy.epiphysis_label("metacarpal_3")] == older).all()  # the whole bone
    for carpal in anatomy.CARPALS:  # the carpal region's age (90) colours every carpal
        assert tuple(colours[anatomy.bone_labels(carpal)[0]][:3]) == maturity_colour(90 - 102)
    assert colours[anatomy.shaft_label("metacarpal_2"), 3] == 0  # not aged: left unpainted
    assert maturity_colour(-100) == maturity_colour(-24) and maturity_colour(0) == (235, 235, 235)
    assert maturity_colours(BoneAgeResult(path="x")) is None  # nothing aged, nothing to compare with


def test_maturity_overlay_paints_only_the_aged_bones():
    import numpy as np

    from boneage import anatomy
    from boneage.report import maturity_colours, maturity_legend_rows, overlay_rgb

    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = anatomy.shaft_label("metacarpal_3")
    labels[1, 1] = anatomy.shaft_label("metacarpal_2")
    pixels = np.full((4, 4), 0.5, np.float32)
    rgb = overlay_rgb(pixels, labels, 1.0, maturity_colours(_three_method_result()))
    assert tuple(rgb[0, 0]) != tuple(rgb[1, 1]) and rgb[0, 0, 0] > 200 and rgb[0, 0, 1] < 60
    assert tuple(rgb[1, 1]) == (127, 127, 127)  # an unaged bone keeps the film's grey
    rows = {r["bone"]: r for r in maturity_legend_rows(_three_method_result())}
    assert rows["Metacarpal 3"]["vs combined (months)"] == "+28" and rows["Radius"]["vs combined (months)"] == "-22"


def test_bone_table_shows_each_bones_own_age_and_the_html_report_the_combined_headline():
    from boneage.report import bone_table_rows

    result = _three_method_result()
    rows = bone_table_rows(result)
    assert list(rows[0]) == ["bone", "own age", "own age 90%", "in consensus"]  # no multi-step table here
    assert rows[0]["own age"] == "10 y 10 mo" and rows[1]["in consensus"].startswith("NO")
    page = html_report(result)
    assert "Combined estimate" in page and "8 y 6 mo" in page  # the combined 102 months
    assert "stacked: multi-step 0.20" in page and "Per-bone" in page and "carpal region: 7 y 6 mo" in page
    assert page.index("Combined estimate") < page.index("Multi-step")

"""The Streamlit app, driven by streamlit.testing.v1.AppTest (no browser).

Most tests inject an estimator built from test doubles (an oracle segmenter on synthetic hands
and a fixed-age CNN), so they check the app's behaviour, not the models; one test runs the real
shipped models.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boneage.estimate import BoneAgeEstimator
from boneage.io import load_radiograph
from boneage.synth import generate_hand
from conftest import write_dicom
from test_estimate import FakeDirect, Oracle

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def fake_app(monkeypatch, bundle):  # noqa: F811
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    oracle = Oracle()
    est = BoneAgeEstimator(oracle, bundle, FakeDirect(130.0), versions={"multistep": "t", "direct": "t"})
    monkeypatch.setattr(BoneAgeEstimator, "load", classmethod(lambda cls, device="cpu": est))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=120)
    at.oracle = oracle
    return at


def _teach(oracle: Oracle, data: bytes, hand) -> None:
    """Let the oracle recognise the image exactly as the app will decode it."""
    pixels = load_radiograph(data, name="x").pixels

    class Decoded:
        image = pixels
        label_map = hand.label_map

    oracle.add(Decoded)


def test_upload_alone_shows_every_estimate_and_the_table(fake_app):
    hand = generate_hand(31, 2, size=256, age_range=(100, 140))
    data = _png(hand.image)
    _teach(fake_app.oracle, data, hand)
    at = fake_app.run()
    at.sidebar.file_uploader[0].set_value(("hand.png", data, "image/png")).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Combined", "Multi-step", "Per-bone", "End-to-end"}
    assert metrics["End-to-end"] == "10 y 10 mo"  # the fake CNN's 130 months
    assert metrics["Multi-step"] not in ("", "—")
    assert metrics["Combined"] == metrics["Per-bone"] == "—"  # those models are not in this estimator
    table = at.dataframe[-1].value
    assert len(table) >= 15 and "z-score" in table.columns and "implied age" in table.columns


def test_example_case_opens_with_one_click(fake_app):
    from boneage.examples import example_names, load_example
    from boneage.paths import EXAMPLES_DIR

    name = example_names()[0]

    class Example:
        image = load_example(name).pixels
        label_map = np.asarray(Image.open(EXAMPLES_DIR / f"{name}_mask.png"))

    fake_app.oracle.add(Example)
    at = fake_app.run()
    assert not at.metric
    at.sidebar.button[0].click().run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert labels == ["Combined", "Multi-step", "Per-bone", "End-to-end"]
    assert at.selectbox[0].value in ("Female", "Male")  # the example's sex is filled in


def test_bad_upload_is_explained_not_crashed(fake_app):
    at = fake_app.run()
    at.sidebar.file_uploader[0].set_value(("notes.txt", b"this is not an image", "text/plain")).run()
    assert not at.exception
    assert any("not a recognised image" in e.value for e in at.error)


def test_dicom_header_fills_sex_and_age_and_they_are_editable(fake_app, tmp_path):
    hand = generate_hand(31, 4, size=256, age_range=(60, 90))
    path = write_dicom(tmp_path / "h.dcm", (hand.image * 4095).astype(int), PatientSex="F",
                       PatientBirthDate="20150101", StudyDate="20210701", BodyPartExamined="HAND")
    data = path.read_bytes()
    _teach(fake_app.oracle, data, hand)
    at = fake_app.run()
    at.sidebar.file_uploader[0].set_value(("h.dcm", data, "application/dicom")).run()
    assert not at.exception
    assert at.selectbox[0].value == "Female"
    assert at.number_input[0].value == pytest.approx(78, abs=1)
    assert any(b.label == "DICOM SR" for b in at.get("download_button"))
    at.selectbox[0].set_value("Unknown").run()
    assert not at.exception
    assert any("SDS needs the sex" in c.value for c in at.caption), [c.value for c in at.caption] + [w.value for w in at.warning]


def test_non_hand_upload_shows_the_rejection(fake_app):
    noise = np.random.default_rng(3).random((256, 256))
    at = fake_app.run()
    at.sidebar.file_uploader[0].set_value(("noise.png", _png(noise), "image/png")).run()
    assert not at.exception
    assert any("not recognised as a hand" in w.value for w in at.warning)


def test_real_shipped_models_on_the_example():
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from boneage import models

    if not models.get("direct").is_available():
        pytest.fail("the end-to-end weights must ship in data/models/direct")
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.sidebar.button[0].click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics.get("End-to-end") not in (None, "", "—")


def test_two_uploads_of_one_name_are_two_cases_with_their_own_downloads(fake_app, monkeypatch):
    import hashlib

    from streamlit.elements.widgets.button import ButtonMixin

    file_names: list[str] = []
    original = ButtonMixin.download_button

    def recording(self, label, data, file_name=None, *args, **kwargs):
        file_names.append(file_name)
        return original(self, label, data, file_name, *args, **kwargs)

    monkeypatch.setattr(ButtonMixin, "download_button", recording)
    hands = [generate_hand(31, i, size=256, age_range=(100, 140)) for i in (5, 6)]
    data = [_png(h.image) for h in hands]
    for d, h in zip(data, hands):
        _teach(fake_app.oracle, d, h)
    at = fake_app.run()
    at.sidebar.file_uploader[0].set_value([("hand.png", data[0], "image/png"), ("hand.png", data[1], "image/png")]).run()
    assert not at.exception
    assert at.radio[0].options == ["hand.png", "hand.png (2)"]
    first = list(file_names)
    file_names.clear()
    at.radio[0].set_value(f"1-{hashlib.sha1(data[1]).hexdigest()[:12]}").run()
    assert not at.exception
    assert at.header[0].value == "hand.png (2)" and len(at.metric) == 4
    second = list(file_names)
    assert len(first) == len(second) == 2 and not set(first) & set(second)  # no download overwrites another
    assert all(n.startswith("hand-") for n in first + second)


def test_repeated_large_uploads_keep_memory_bounded(fake_app):
    """Each upload used to stay in the app's caches at full size (up to 64 of them); a viewer must
    keep a bounded amount whatever the number of uploads."""
    import gc
    import tracemalloc

    side = 2000  # 4 Mpx: 16 MB as float32 (a 20-Mpx film is 80 MB)
    ramp = np.tile(np.linspace(0.1, 0.9, side, dtype=np.float32), (side, 1))
    at = fake_app.run()
    used = []
    tracemalloc.start()
    try:
        for i in range(8):
            film = ramp.copy()
            film[100 + 40 * i: 140 + 40 * i] = 0.95  # each upload a different film
            at.sidebar.file_uploader[0].set_value((f"film{i}.png", _png(film), "image/png")).run()
            assert not at.exception
            gc.collect()
            used.append(tracemalloc.get_traced_memory()[0] / 1e6)
    finally:
        tracemalloc.stop()
    # After the caches fill (films kept: 2, results kept: 4), more uploads add nothing lasting.
    assert used[-1] - used[4] < 12, [round(u) for u in used]


def test_combined_headline_per_bone_ages_and_the_age_overlay(monkeypatch, bundle):  # noqa: F811
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from boneage.combine import Combiner
    from boneage.report import years_months
    from test_combine import STACKING
    from test_estimate import ReadingOracle
    from test_perbone import fixed_perbone

    oracle = ReadingOracle()
    est = BoneAgeEstimator(oracle, bundle, FakeDirect(130.0), versions={"multistep": "t", "direct": "t"},
                           multistep_tilts=(), perbone=fixed_perbone({"metacarpal_3": 150.0}, scale_months=20.0),
                           combiner=Combiner(STACKING, "combined-test"))
    monkeypatch.setattr(BoneAgeEstimator, "load", classmethod(lambda cls, device="cpu": est))
    st.cache_resource.clear()
    st.cache_data.clear()
    hand = generate_hand(31, 2, size=256, age_range=(100, 140))
    data = _png(hand.image)
    _teach(oracle, data, hand)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.sidebar.file_uploader[0].set_value(("hand.png", data, "image/png")).run()
    at.selectbox[0].set_value("Female").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert list(metrics) == ["Combined", "Multi-step", "Per-bone", "End-to-end"]
    assert "—" not in metrics.values()
    expected = est.estimate(load_radiograph(data, name="hand.png"), sex="F").combined.age_months
    assert metrics["Combined"] == years_months(expected)
    assert any("stacked: multi-step 0.20, per-bone 0.35, end-to-end 0.45" in c.value for c in at.caption)
    table = at.dataframe[-1].value
    assert "own age" in table.columns and "implied age" in table.columns
    assert (table["own age"] == years_months(150.0)).sum() == 1
    toggle = next(t for t in at.sidebar.toggle if t.label.startswith("Colour by each bone's age"))
    toggle.set_value(True).run()
    assert not at.exception
    legend = next(d.value for d in at.dataframe if "vs combined (months)" in d.value.columns)
    assert "Metacarpal 3" in set(legend["bone"])

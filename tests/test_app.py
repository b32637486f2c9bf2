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
from test_estimate import FakeDirect, Oracle, bundle  # noqa: F401  (fixture)

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


def test_upload_alone_shows_both_estimates_and_the_table(fake_app):
    hand = generate_hand(31, 2, size=256, age_range=(100, 140))
    data = _png(hand.image)
    _teach(fake_app.oracle, data, hand)
    at = fake_app.run()
    at.sidebar.file_uploader[0].set_value(("hand.png", data, "image/png")).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Multi-step", "End-to-end"}
    assert metrics["End-to-end"] == "10 y 10 mo"  # the fake CNN's 130 months
    assert metrics["Multi-step"] not in ("", "—")
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
    assert labels == ["Multi-step", "End-to-end"]
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

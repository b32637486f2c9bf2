"""Fuzzing the reader and the batch path with malformed DICOM and image bytes (hypothesis).

Property: no input crashes the reader with anything but ImageReadError, and the batch writes
exactly one well-formed record per input whatever the bytes are.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boneage import ImageReadError, load_radiograph
from boneage.batch import InputItem, run_batch
from boneage.estimate import BoneAgeEstimator
from conftest import ramp, write_dicom
from test_estimate import FakeDirect

# BONEAGE_FUZZ_EXAMPLES=5000 for a long run; the default keeps the suite quick.
N = int(os.environ.get("BONEAGE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_dicom_bytes(tmp_path_factory=None) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = write_dicom(Path(d) / "x.dcm", ramp(96, 80), PatientSex="M", PixelSpacing=[0.1, 0.1],
                           PatientBirthDate="20150101", StudyDate="20240101", WindowCenter=2000, WindowWidth=4000)
        return path.read_bytes()


VALID = _valid_dicom_bytes()


def _check(data: bytes) -> None:
    try:
        rad = load_radiograph(data, name="fuzz.dcm")
    except ImageReadError as exc:
        assert str(exc).startswith("fuzz.dcm: ") and exc.reason
        return
    assert rad.pixels.ndim == 2 and rad.pixels.dtype == np.float32
    assert np.isfinite(rad.pixels).all() and rad.pixels.min() >= 0 and rad.pixels.max() <= 1


@FUZZ
@given(st.data())
def test_mutated_dicom_bytes_never_crash_the_reader(data):
    buf = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 12))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(132, len(buf)))
    _check(bytes(buf[:cut]))


@FUZZ
@given(
    rows=st.integers(-5, 70000), cols=st.integers(-5, 70000), bits=st.integers(0, 40),
    photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "XYZ", ""]),
    samples=st.integers(0, 5), frames=st.integers(-1, 3),
    spacing=st.one_of(st.none(), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3)),
    window=st.one_of(st.none(), st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True))),
    slope=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    ts=st.sampled_from(["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "9.9.9"]),
)
def test_inconsistent_headers_never_crash_the_reader(rows, cols, bits, photometric, samples, frames, spacing, window, slope, ts):
    ds = pydicom.dcmread(io.BytesIO(VALID))
    buf = io.BytesIO()
    try:  # building the malformed file may itself be refused by pydicom: nothing to read then
        ds.Rows, ds.Columns = max(rows, 0) % 65536, max(cols, 0) % 65536
        ds.BitsStored = bits % 65536
        ds.PhotometricInterpretation = photometric
        ds.SamplesPerPixel = samples
        if frames >= 0:
            ds.NumberOfFrames = frames
        if spacing is not None:
            ds.PixelSpacing = [str(v)[:16] for v in spacing]
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = (str(v)[:16] for v in window)
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = str(slope)[:16], "0"
        ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(buf, enforce_file_format=False)
    except Exception:
        return
    _check(buf.getvalue())


@settings(max_examples=max(N // 2, 60), deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes_never_crash_the_reader(blob):
    _check(blob)
    _check(b"\x00" * 128 + b"DICM" + blob)
    _check(b"\x89PNG\r\n\x1a\n" + blob)


@settings(max_examples=max(N // 6, 25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.binary(max_size=400), min_size=1, max_size=4), cut=st.integers(132, len(VALID)))
def test_batch_writes_one_valid_record_per_malformed_input(tmp_path, blobs, cut):
    folder = tmp_path / f"case{abs(hash((tuple(blobs), cut))) % 10**9}"
    folder.mkdir()
    items = []
    for i, blob in enumerate(blobs + [VALID[:cut]]):
        p = folder / f"f{i}.dcm"
        p.write_bytes(blob)
        items.append(InputItem(str(p)))
    out = folder / "out.jsonl"
    est = BoneAgeEstimator(None, None, FakeDirect(), versions={"direct": "fake"})
    counts = run_batch(items, out, estimator=est, progress=False)
    lines = out.read_text().splitlines()
    assert len(lines) == len(items) == sum(counts.values())
    for line, item in zip(lines, items):
        rec = json.loads(line)
        assert rec["path"] == item.path and rec["status"] in ("ok", "error", "rejected")
        assert rec["status"] == "ok" or rec["reason"]

"""Reader tests: real DICOM fixtures, decoders, written DICOMs, bitmaps and every bad input."""

from __future__ import annotations

import io
import importlib.util
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import boneage
from boneage import ImageReadError, Radiograph, load_radiograph
from conftest import TESTS_DATA, dates_for_age, ramp, write_dicom

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


# ---------------------------------------------------------------------------------------------
# Real CR fixtures (NEMA WG04, MIT)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "RG3_J2KR.dcm"])
def test_real_monochrome1_jpeg2000_is_inverted_to_bone_bright(name):
    path = TESTS_DATA / name
    rad = load_radiograph(path)
    raw = pydicom.dcmread(path).pixel_array.astype(float)
    assert rad.pixels.dtype == np.float32 and rad.pixels.shape == raw.shape
    assert 0.0 <= rad.pixels.min() and rad.pixels.max() <= 1.0
    # MONOCHROME1: high stored values are dark, so the output must anti-correlate with them.
    sub = (slice(None, None, 7), slice(None, None, 7))
    assert np.corrcoef(rad.pixels[sub].ravel(), raw[sub].ravel())[0, 1] < -0.9
    assert rad.metadata["photometric_interpretation"] == "MONOCHROME1"
    assert rad.source_format == "dicom"
    assert rad.sex == "F"


def test_real_zero_pixel_spacing_is_not_trusted():
    rad = load_radiograph(TESTS_DATA / "RG1_J2KI.dcm")
    assert rad.spacing_mm is None
    assert "ignored" in rad.metadata["spacing_source"]


def test_real_ages_over_25_years_are_dropped():
    # RG3: born 1979-04-08, studied 2004-08-26 -> 25.4 years: inconsistent for a pediatric tool.
    assert load_radiograph(TESTS_DATA / "RG3_J2KR.dcm").chronological_age_months is None
    assert load_radiograph(TESTS_DATA / "RG3_J2KR.dcm").spacing_mm is None


# ---------------------------------------------------------------------------------------------
# Transfer syntaxes (pydicom's own test files, shipped inside the pydicom wheel)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "compressed",
    ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"],
)
def test_lossless_syntaxes_decode_identically(compressed):
    reference = load_radiograph(PYDICOM_FILES / "MR_small.dcm").pixels
    np.testing.assert_allclose(load_radiograph(PYDICOM_FILES / compressed).pixels, reference, atol=1e-6)


def test_jpeg_lossless_process14_decodes_identically(tmp_path):
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(PYDICOM_FILES / "MR_small.dcm"))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    out = tmp_path / "jpeg_lossless.dcm"
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_allclose(load_radiograph(out).pixels, load_radiograph(PYDICOM_FILES / "MR_small.dcm").pixels, atol=1e-6)


@pytest.mark.parametrize(
    "name, syntax",
    [
        ("SC_rgb_jpeg.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG baseline, colour -> grayscale
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
        ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
        ("SC_rgb_rle.dcm", "1.2.840.10008.1.2.5"),
    ],
)
def test_compressed_syntaxes_decode(name, syntax):
    assert pydicom.dcmread(PYDICOM_FILES / name, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    rad = load_radiograph(PYDICOM_FILES / name)
    assert rad.pixels.ndim == 2 and rad.pixels.dtype == np.float32
    assert rad.pixels.max() > rad.pixels.min()


def test_jpeg_extended_12bit_decodes_with_the_optional_gpl_decoder():
    if importlib.util.find_spec("libjpeg") is None:
        pytest.skip("12-bit JPEG Extended needs the optional GPL extra: pip install -e '.[gpl]'")
    rad = load_radiograph(PYDICOM_FILES / "JPGExtended.dcm")
    ref = pydicom.dcmread(PYDICOM_FILES / "JPGExtended.dcm").pixel_array
    assert rad.pixels.shape == ref.shape and rad.pixels.max() == pytest.approx(1.0)


def test_undecodable_transfer_syntax_is_a_clear_error(tmp_path):
    path = write_dicom(tmp_path / "mpeg.dcm", ramp())
    ds = pydicom.dcmread(path)
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: never a radiograph
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="mpeg.dcm.*transfer syntax 1.2.840.10008.1.2.4.100"):
        load_radiograph(path)


# ---------------------------------------------------------------------------------------------
# Grayscale pipeline on written DICOMs
# ---------------------------------------------------------------------------------------------
def test_monochrome2_full_range_maps_to_unit_interval(dicom_factory):
    rad = load_radiograph(dicom_factory(ramp(bits=12), bits_stored=12))
    assert rad.pixels[:, 0].max() == 0.0 and rad.pixels[:, -1].min() == 1.0
    assert np.all(np.diff(rad.pixels[0]) >= 0)


def test_monochrome1_is_inverted(dicom_factory):
    m2 = load_radiograph(dicom_factory(ramp(), photometric="MONOCHROME2")).pixels
    m1 = load_radiograph(dicom_factory(ramp(), photometric="MONOCHROME1")).pixels
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 16])
def test_bit_depths_use_their_full_range(dicom_factory, bits):
    pixels = load_radiograph(dicom_factory(ramp(bits=bits), bits_stored=bits)).pixels
    assert pixels.min() == 0.0 and pixels.max() == 1.0


def test_bits_above_bits_stored_are_ignored(dicom_factory):
    clean = ramp(bits=12)
    dirty = clean | (0b1010 << 12)  # overlay/garbage in the 4 unused high bits
    a = load_radiograph(dicom_factory(clean, bits_stored=12)).pixels
    b = load_radiograph(dicom_factory(dirty, bits_stored=12)).pixels
    np.testing.assert_allclose(a, b)


def test_window_clips_and_maps_linearly(dicom_factory):
    pixels = np.tile(np.array([0, 999, 1500, 2000, 4095]), (4, 1))
    rad = load_radiograph(dicom_factory(pixels, WindowCenter=1500, WindowWidth=1001))
    row = rad.pixels[0]
    assert row[0] == 0.0 and row[1] == 0.0  # at/below the lower edge
    assert row[2] == pytest.approx(0.5, abs=1e-3)
    assert row[3] == 1.0 and row[4] == 1.0
    assert "window" in rad.metadata["grayscale_transform"]


def test_window_applies_after_rescale(dicom_factory):
    # Stored 0..4095 with slope 2, intercept -1000 -> -1000..7190; window in rescaled units.
    pixels = np.tile(np.array([0, 500, 1000, 4095]), (4, 1))
    rad = load_radiograph(
        dicom_factory(pixels, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=2001)
    )
    row = rad.pixels[0]  # rescaled: -1000, 0, 1000, 7190
    assert row[0] == pytest.approx(0.0, abs=1e-3) and row[1] == pytest.approx(0.5, abs=1e-3)
    assert row[2] == pytest.approx(1.0, abs=1e-3) and row[3] == 1.0


def test_voi_lut_sequence_takes_precedence_over_window(dicom_factory):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    lut = (65535 - np.arange(4096) * 16).astype(np.uint16)  # an inverting LUT
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    path = dicom_factory(ramp(bits=12), WindowCenter=100, WindowWidth=10)
    ds = pydicom.dcmread(path)
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    rad = load_radiograph(path)
    assert rad.metadata["grayscale_transform"] == "VOI LUT sequence"
    assert rad.pixels[0, 0] == pytest.approx(1.0) and rad.pixels[0, -1] == pytest.approx(0.0, abs=1e-3)


def test_signed_pixels(dicom_factory):
    pixels = np.tile(np.linspace(-2048, 2047, 32).round().astype(int), (4, 1))
    rad = load_radiograph(dicom_factory(pixels, bits_stored=12, signed=True))
    assert rad.pixels[0, 0] == 0.0 and rad.pixels[0, -1] == 1.0


def test_no_voi_stretches_the_data_range(dicom_factory):
    # 12-bit data that only uses 0..300 (like many exports) must not come out nearly black.
    pixels = np.tile(np.linspace(0, 300, 16).round().astype(int), (4, 1))
    rad = load_radiograph(dicom_factory(pixels, bits_stored=12))
    assert rad.pixels.max() == 1.0


def test_multiframe_is_refused(dicom_factory):
    path = dicom_factory(np.vstack([ramp(), ramp()]))
    ds = pydicom.dcmread(path)
    ds.Rows = 64
    ds.NumberOfFrames = 2
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="multi-frame"):
        load_radiograph(path)


def test_colour_dicom_is_converted_to_grayscale():
    rad = load_radiograph(PYDICOM_FILES / "SC_rgb_rle.dcm")
    assert rad.pixels.ndim == 2
    assert "grayscale" in rad.metadata["grayscale_transform"]


# ---------------------------------------------------------------------------------------------
# Spacing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "attrs, expected",
    [
        ({"PixelSpacing": [0.15, 0.16]}, (0.15, 0.16)),
        ({"ImagerPixelSpacing": [0.2, 0.2]}, (0.2, 0.2)),
        ({"ImagerPixelSpacing": [0.2, 0.2], "EstimatedRadiographicMagnificationFactor": 1.25}, (0.16, 0.16)),
        ({"PixelSpacing": [0.1, 0.1], "ImagerPixelSpacing": [0.2, 0.2]}, (0.1, 0.1)),
        ({"PixelSpacing": [0, 0]}, None),
        ({"PixelSpacing": [-0.1, 0.1]}, None),
        ({"PixelSpacing": [5.0, 5.0]}, None),
        ({"ImagerPixelSpacing": [0.001, 0.001]}, None),
        ({}, None),
    ],
)
def test_spacing(dicom_factory, attrs, expected):
    rad = load_radiograph(dicom_factory(**attrs))
    if expected is None:
        assert rad.spacing_mm is None
    else:
        assert rad.spacing_mm == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# Sex and age
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [("M", "M"), ("F", "F"), ("O", None), ("", None), (None, None)])
def test_sex(dicom_factory, value, expected):
    attrs = {} if value is None else {"PatientSex": value}
    assert load_radiograph(dicom_factory(**attrs)).sex == expected


def test_age_from_birth_and_study_dates(dicom_factory):
    birth, study = dates_for_age(100.0)
    rad = load_radiograph(dicom_factory(PatientBirthDate=birth, StudyDate=study))
    assert rad.chronological_age_months == pytest.approx(100.0, abs=0.05)


def test_age_falls_back_to_acquisition_date_then_patient_age(dicom_factory):
    birth, acq = dates_for_age(50.0)
    assert load_radiograph(dicom_factory(PatientBirthDate=birth, AcquisitionDate=acq)).chronological_age_months == pytest.approx(50.0, abs=0.05)
    assert load_radiograph(dicom_factory(PatientAge="010Y")).chronological_age_months == 120.0
    assert load_radiograph(dicom_factory(PatientAge="018M")).chronological_age_months == 18.0


@pytest.mark.parametrize(
    "attrs",
    [
        {},  # nothing
        {"PatientBirthDate": "20200101"},  # no study date
        {"PatientBirthDate": "20250101", "StudyDate": "20240101"},  # born after the study
        {"PatientBirthDate": "19900101", "StudyDate": "20240101"},  # 34 years: not pediatric
        {"PatientBirthDate": "2020-01-01", "StudyDate": "garbage"},
        {"PatientAge": "abc"},
    ],
)
def test_missing_or_inconsistent_age_is_none(dicom_factory, attrs):
    assert load_radiograph(dicom_factory(**attrs)).chronological_age_months is None


# ---------------------------------------------------------------------------------------------
# Bitmaps
# ---------------------------------------------------------------------------------------------
def test_png_8bit(tmp_path):
    arr = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    Image.fromarray(arr).save(tmp_path / "a.png")
    rad = load_radiograph(tmp_path / "a.png")
    assert rad.source_format == "png" and rad.pixels.max() == 1.0 and rad.pixels[0, 128] == pytest.approx(128 / 255)


def test_png_16bit_full_range(tmp_path):
    arr = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(arr).save(tmp_path / "a.png")
    pixels = load_radiograph(tmp_path / "a.png").pixels
    assert pixels.min() == 0.0 and pixels.max() == 1.0


def test_png_16bit_container_with_12bit_data_is_not_dark(tmp_path):
    arr = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (8, 1))
    Image.fromarray(arr).save(tmp_path / "a.png")
    rad = load_radiograph(tmp_path / "a.png")
    assert rad.pixels.max() == 1.0 and rad.metadata["grayscale_transform"] == "12-bit"


def test_rgb_png_becomes_grayscale(tmp_path):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[..., :] = 200
    Image.fromarray(arr).save(tmp_path / "rgb.png")
    rad = load_radiograph(tmp_path / "rgb.png")
    assert rad.pixels.shape == (8, 8) and rad.pixels.mean() == pytest.approx(200 / 255, abs=1e-3)


def test_jpeg_and_tiff(tmp_path):
    arr = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(arr.astype(np.uint16) * 16).save(tmp_path / "a.tif")
    jpg = load_radiograph(tmp_path / "a.jpg")
    tif = load_radiograph(tmp_path / "a.tif")
    assert jpg.source_format == "jpeg" and tif.source_format == "tiff"
    assert abs(jpg.pixels[0, -1] - 252 / 255) < 0.03
    assert tif.pixels.max() == pytest.approx(252 * 16 / 4095)  # 16-bit TIFF holding 12-bit data


def test_bytes_input_with_name():
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(buf, format="PNG")
    rad = load_radiograph(buf.getvalue(), name="upload.png")
    assert rad.path is None and rad.pixels[0, 0] == pytest.approx(77 / 255)


def test_dicom_without_extension_is_detected(tmp_path, dicom_factory):
    path = dicom_factory(PatientSex="M")
    bare = tmp_path / "IM000001"
    bare.write_bytes(path.read_bytes())
    assert load_radiograph(bare).sex == "M"


def test_from_array():
    rad = Radiograph.from_array(np.array([[0, 65535], [0, 0]], np.uint16), spacing_mm=0.2, sex="female")
    assert rad.pixels.max() == 1.0 and rad.spacing_mm == (0.2, 0.2) and rad.sex == "F"


# ---------------------------------------------------------------------------------------------
# Bad input: always ImageReadError (a ValueError) naming the file and the reason
# ---------------------------------------------------------------------------------------------
def _truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def _truncated_dicom(path: Path) -> Path:
    src = write_dicom(path, ramp(256, 256))
    data = src.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    return path


def _huge_png(path: Path) -> Path:
    Image.new("1", (9000, 9000)).save(path, format="PNG")  # 81 Mpx in a tiny compressed file
    return path


def _huge_dicom(path: Path) -> Path:
    src = write_dicom(path, ramp(8, 8))
    ds = pydicom.dcmread(src)
    ds.Rows, ds.Columns = 20000, 20000
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_text("patient list\nnot an image\n"), p)[1], "not a recognised image"),
        (_truncated_png, "truncated or corrupt"),
        (_truncated_dicom, "cannot be decoded"),
        (_huge_png, "pixels"),
        (_huge_dicom, "limit"),
        (lambda p: (p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff"), p)[1], "DICOM"),
    ],
    ids=["missing", "empty", "text", "truncated-png", "truncated-dicom", "bomb-png", "bomb-dicom", "garbage-dicom"],
)
def test_bad_inputs_raise_clear_errors(tmp_path, make, reason):
    path = make(tmp_path / "bad_input.dat")
    with pytest.raises(ImageReadError) as info:
        load_radiograph(path)
    assert str(path) in str(info.value)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


def test_folder_and_non_image_dicom(tmp_path):
    with pytest.raises(ImageReadError, match="folder"):
        load_radiograph(tmp_path)
    with pytest.raises(ImageReadError, match="no pixel data"):
        load_radiograph(PYDICOM_FILES / "rtplan.dcm")


def test_public_api_exports():
    assert boneage.load_radiograph is load_radiograph
    assert issubclass(boneage.ImageReadError, ValueError)


# ---------------------------------------------------------------------------------------------
# Arrays through the API: scaled by their real range, non-finite pixels, sex and age (issue #17)
# ---------------------------------------------------------------------------------------------
def _film_8bit(rows: int = 64, cols: int = 48) -> np.ndarray:
    """0-255 data: a dark film with a bright block (a stand-in for a hand)."""
    film = np.full((rows, cols), 20, np.int64)
    film[10:50, 10:40] = 230
    return film


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint32])
def test_from_array_wide_integer_dtypes_holding_8bit_data_keep_their_contrast(dtype):
    # Dividing by the dtype's maximum made these nearly black (then rejected as blank).
    expected = Radiograph.from_array(_film_8bit().astype(np.uint8)).pixels
    rad = Radiograph.from_array(_film_8bit().astype(dtype))
    np.testing.assert_allclose(rad.pixels, expected, atol=1e-6)
    assert rad.pixels.max() == pytest.approx(230 / 255) and rad.metadata["grayscale_transform"] == "8-bit"


def test_from_array_12bit_data_in_uint16_uses_the_12bit_range():
    film = (_film_8bit() * 16).astype(np.uint16)  # up to 3680 of 4095
    rad = Radiograph.from_array(film)
    assert rad.pixels.max() == pytest.approx(3680 / 4095, abs=1e-6) and rad.metadata["grayscale_transform"] == "12-bit"


def test_from_array_scales_like_a_16bit_png_holding_the_same_data(tmp_path):
    # One mechanism for arrays and files: the same 12-bit data give the same pixels.
    film = (_film_8bit() * 16).astype(np.uint16)
    Image.fromarray(film).save(tmp_path / "f.png")
    np.testing.assert_array_equal(load_radiograph(tmp_path / "f.png").pixels, Radiograph.from_array(film).pixels)


def test_from_array_signed_integers_are_shifted_to_start_at_zero():
    film = _film_8bit().astype(np.int16) - 100  # -80 .. 130
    rad = Radiograph.from_array(film)
    assert rad.pixels.min() == 0.0 and rad.pixels.max() == pytest.approx(210 / 255)


def test_from_array_a_few_nonfinite_pixels_are_filled_and_counted():
    film = _film_8bit().astype(np.float64)
    clean = Radiograph.from_array(film).pixels
    film_bad = film.copy()
    film_bad[0, 0], film_bad[1, 1], film_bad[2, 2] = np.inf, np.nan, -np.inf
    rad = Radiograph.from_array(film_bad)
    # One +inf used to stretch every other pixel to 0: a "blank" image.
    assert rad.pixels.std() > 0.1 and np.isfinite(rad.pixels).all()
    np.testing.assert_allclose(rad.pixels[3:], clean[3:], atol=1e-6)
    assert rad.pixels[0, 0] == rad.pixels[1, 1] == rad.pixels[2, 2] == rad.pixels.min()
    assert rad.metadata["nonfinite_pixels"] == 3 and "NaN/infinite" in rad.metadata["grayscale_transform"]


def test_from_array_refuses_images_with_no_or_too_many_finite_pixels():
    with pytest.raises(ImageReadError, match="no finite pixel"):
        Radiograph.from_array(np.full((16, 16), np.nan))
    film = np.random.default_rng(0).random((100, 100))
    film[:2, :] = np.nan  # 2 % of the image: corrupt data, not a dead pixel
    with pytest.raises(ImageReadError, match="NaN or infinite"):
        Radiograph.from_array(film)


def test_float_tiff_with_nan_pixels_is_read_like_an_array(tmp_path):
    film = _film_8bit().astype(np.float32)
    film[5, 5] = np.nan
    Image.fromarray(film, mode="F").save(tmp_path / "f.tif")
    rad = load_radiograph(tmp_path / "f.tif")
    np.testing.assert_array_equal(rad.pixels, Radiograph.from_array(film).pixels)
    assert rad.pixels[5, 5] == rad.pixels.min()


@pytest.mark.parametrize("sex", ["X", "boy?", 3])
def test_from_array_rejects_an_unrecognised_sex_by_name(sex):
    with pytest.raises(ValueError, match=re.escape(repr(str(sex)))):
        Radiograph.from_array(_film_8bit(), sex=sex)


@pytest.mark.parametrize("age", [-5, 400, float("inf"), "ten"])
def test_from_array_rejects_an_impossible_age_by_value(age):
    with pytest.raises(ValueError, match="chronological age"):
        Radiograph.from_array(_film_8bit(), chronological_age_months=age)


def test_from_array_blank_or_unknown_sex_and_age_mean_unknown():
    rad = Radiograph.from_array(_film_8bit(), sex="unknown", chronological_age_months=float("nan"))
    assert rad.sex is None and rad.chronological_age_months is None
    assert Radiograph.from_array(_film_8bit(), sex=" m ", chronological_age_months="120").chronological_age_months == 120.0

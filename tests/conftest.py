"""Shared fixtures: DICOM factories, tiny fake films and the optional shared research data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from boneage import segment
from boneage.paths import rsna_dev_dir

TESTS_DATA = Path(__file__).parent / "data"
#: The shipped segmenter's weights; tests that need them skip where they are absent.
SEGMENTER_WEIGHTS = segment.SEGMENTER_DIR / segment.WEIGHTS_FILE
needs_segmenter_weights = pytest.mark.skipif(not SEGMENTER_WEIGHTS.is_file(),
                                             reason="segmenter weights not trained/shipped yet")
#: Channel widths of a tiny end-to-end CNN (seconds to train on a CPU).
SMALL_DIRECT_WIDTHS = (8, 16, 16, 32)


def random_films(n: int, size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise films whose brightness shows their age, for tiny end-to-end CNN runs.

    Args:
        n: number of films.
        size: side in pixels.
        seed: random seed.

    Returns:
        ``(uint8 images (n, size, size), ages in months, sex codes +1/-1)``.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    ages = rng.uniform(12, 216, size=n)
    # Make the age visible: brighter films are older.
    images = np.clip(images // 2 + (ages[:, None, None] / 228 * 120).astype(np.uint8), 0, 255).astype(np.uint8)
    sexes = rng.choice([1.0, -1.0], size=n).astype(np.float32)
    return images, ages, sexes


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    transfer_syntax: str | None = None,
    **attributes,
) -> Path:
    """Write a minimal but valid single-frame DX DICOM file.

    Args:
        path: where to write.
        pixels: 2-D integer array of stored values.
        bits_stored: BitsStored (BitsAllocated is 8 or 16 to fit).
        photometric: MONOCHROME1 or MONOCHROME2.
        signed: PixelRepresentation 1.
        transfer_syntax: UID; default explicit VR little endian (uncompressed).
        **attributes: any further DICOM keywords (PixelSpacing=[..], PatientSex="F", ...).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "Test^Hand"
    ds.PatientID = "TEST123"
    arr = np.asarray(pixels)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (8, True): np.int8, (16, True): np.int16}[(ds.BitsAllocated, signed)]
    ds.PixelData = arr.astype(dtype).tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    if transfer_syntax and transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, arr.astype(dtype))
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(rows: int = 64, cols: int = 48, bits: int = 12) -> np.ndarray:
    """A horizontal ramp over the full stored range: bright on the right."""
    row = np.linspace(0, 2**bits - 1, cols).round().astype(np.int64)
    return np.tile(row, (rows, 1))


@pytest.fixture
def dicom_factory(tmp_path):
    counter = iter(range(10_000))

    def make(pixels=None, **kwargs) -> Path:
        return write_dicom(tmp_path / f"img{next(counter)}.dcm", ramp() if pixels is None else pixels, **kwargs)

    return make


@pytest.fixture(scope="module")
def shipped_segmenter() -> segment.Segmenter:
    """The shipped segmenter, loaded once per test module."""
    return segment.Segmenter.load()


@pytest.fixture(scope="session")
def bundle():
    """A multi-step bundle fitted on the true label maps of 160 synthetic hands (256 px), once per test run: the
    estimator, sex and app tests share it and none changes it."""
    from boneage.synth import generate_hand
    from boneage.training.multistep import LabelledMeasurements, fit_bundle, measure_label_maps

    hands = [generate_hand(11, i, size=256) for i in range(160)]
    feats, _ = measure_label_maps(((h.label_map, h.spacing_mm) for h in hands), progress=False)
    data = LabelledMeasurements(
        feats, np.array([h.bone_age_months for h in hands]), np.array([h.sex for h in hands]), [str(i) for i in range(160)]
    )
    return fit_bundle(data, description="test bundle from synthetic hands", regression=True, max_iter=80)


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory) -> Path:
    """A ``boneage synth`` folder of 60 small synthetic hands (images, masks, labels.csv)."""
    from boneage.synth import write_dataset

    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, n=60, seed=21, size=256, progress=False)
    return out


@pytest.fixture(scope="session")
def rsna_dev() -> Path:
    """The shared RSNA development folder, or a skip with the reason."""
    folder = rsna_dev_dir()
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"shared RSNA data not found at {folder} (research-only data, not shipped; CI has it)")
    return folder


def dates_for_age(months: float, study: dt.date = dt.date(2024, 6, 15)) -> tuple[str, str]:
    """PatientBirthDate and StudyDate strings for an age in months."""
    birth = study - dt.timedelta(days=round(months * 365.25 / 12))
    return birth.strftime("%Y%m%d"), study.strftime("%Y%m%d")

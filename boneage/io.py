"""Reading radiographs (DICOM, PNG, JPEG, TIFF) into one :class:`Radiograph` type.

Every reader returns pixels as a 2-D float32 array in [0, 1] with **bone bright**, at the file's
full resolution, plus the header facts the estimators need (pixel spacing, sex, age). Any input
that cannot be read raises :class:`ImageReadError` naming the file and the reason; no bare
library traceback reaches the user.
"""

from __future__ import annotations

import datetime as dt
import io as _io
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

#: Largest image accepted (pixels). A hand film at 0.1 mm over 43 x 43 cm is ~18.5 Mpx; anything
#: far beyond is a decompression bomb or not a radiograph.
MAX_PIXELS = 60_000_000
#: Plausible detector pixel spacing (mm); values outside are treated as unknown, never trusted.
SPACING_RANGE_MM = (0.02, 1.0)
#: Chronological ages outside [0, MAX_AGE_MONTHS] are inconsistent headers and dropped.
MAX_AGE_MONTHS = 25 * 12
#: Largest share of NaN/infinite pixels tolerated. A few are dead detector pixels or conversion
#: glitches: they are set to the image's finite minimum (background, never bone-bright, so no
#: anatomy is invented) and the result says so. More than this (0.1 %, ~130 x 130 px of an
#: 18 Mpx film: enough to hide a carpal) means the data are corrupt, and the image is refused.
MAX_NONFINITE_FRACTION = 0.001
_DAYS_PER_MONTH = 365.25 / 12


class ImageReadError(ValueError):
    """A file could not be read as a radiograph; the message names the file and the reason."""

    def __init__(self, source: str | Path, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{source}: {reason}")


@dataclass
class Radiograph:
    """A radiograph ready for analysis.

    Attributes:
        pixels: 2-D float32 array in [0, 1], bone bright, at the file's full resolution.
        spacing_mm: ``(row, col)`` pixel spacing in mm, or ``None`` when unknown or untrustworthy.
        sex: ``"M"``, ``"F"`` or ``None``.
        chronological_age_months: age at the study from the header, or ``None``.
        path: the file it came from (``None`` for arrays).
        source_format: ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"``, ``"bmp"`` or ``"array"``.
        metadata: non-identifying header facts (modality, photometric interpretation, UIDs needed
            to reference the source image, how spacing was derived, ...).
        identifiers: patient and study identifiers from the header (PatientID, PatientName,
            AccessionNumber, ...), kept apart so that no output copies them unless asked to.
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    sex: str | None = None
    chronological_age_months: float | None = None
    path: Path | None = None
    source_format: str = "array"
    metadata: dict[str, Any] = field(default_factory=dict)
    identifiers: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the full-resolution image."""
        return self.pixels.shape  # type: ignore[return-value]

    @classmethod
    def from_array(
        cls,
        pixels: np.ndarray,
        spacing_mm: tuple[float, float] | float | None = None,
        sex: str | None = None,
        chronological_age_months: float | None = None,
    ) -> Radiograph:
        """Wrap an in-memory array (bone bright) as a radiograph, scaling it to [0, 1].

        Args:
            pixels: 2-D array (or RGB/RGBA, converted to luminance), scaled by :func:`to_unit_range`:
                integer arrays by their real bit depth (0-255 data in a uint16/int64 array is
                8-bit, 12-bit data in uint16 is 12-bit), float arrays outside [0, 1] by their
                finite min and max; a few NaN/infinite pixels are filled and noted in
                ``metadata["nonfinite_pixels"]``.
            spacing_mm: pixel spacing, one number for square pixels or ``(row, col)``.
            sex: ``"M"``, ``"F"``, their spellings, or blank / ``None`` / ``"unknown"``.
            chronological_age_months: age at the study (0-25 years), or ``None``.

        Returns:
            The :class:`Radiograph`.

        Raises:
            ValueError: for a sex or age that is not valid (see :func:`parse_sex`,
                :func:`parse_age_months`), naming the value; never silently dropped.
            ImageReadError: for an array that is not an image or whose pixels cannot be used.
        """
        # A caller's bad sex or age is an error to report, not a value to drop quietly.
        sex = parse_sex(sex)
        age = parse_age_months(chronological_age_months)
        arr = np.asarray(pixels)
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))) or min(arr.shape[:2]) < 2:
            raise ImageReadError("<array>", f"expected a 2-D image, got shape {arr.shape}")
        scaled = to_unit_range(arr, "<array>")
        # The caller keeps its array: a radiograph never shares memory with it.
        film = scaled.pixels.copy() if np.shares_memory(scaled.pixels, arr) else scaled.pixels
        spacing = None
        if spacing_mm is not None:
            s = (float(spacing_mm), float(spacing_mm)) if np.isscalar(spacing_mm) else tuple(spacing_mm)  # type: ignore[arg-type]
            spacing = _valid_spacing([float(v) for v in s])
        metadata: dict[str, Any] = {"grayscale_transform": scaled.note}
        if scaled.nonfinite:
            metadata["nonfinite_pixels"] = scaled.nonfinite
        return cls(pixels=film, spacing_mm=spacing, sex=sex, chronological_age_months=age, metadata=metadata)


class ScaledPixels(NamedTuple):
    """Pixels scaled to [0, 1] by :func:`to_unit_range`.

    Attributes:
        pixels: 2-D float32 array in [0, 1].
        note: how they were scaled (e.g. ``"12-bit"``), including any filled pixels.
        nonfinite: how many NaN/infinite pixels were set to the finite minimum.
    """

    pixels: np.ndarray
    note: str
    nonfinite: int = 0


def to_unit_range(values: np.ndarray, label: str = "<array>", declared_bits: int | None = None) -> ScaledPixels:
    """Scale an image's values to float32 [0, 1] by their real range: the one implementation for
    arrays given through the API (:meth:`Radiograph.from_array`, :func:`boneage.preprocess.as_pixels`)
    and for 16-bit / 32-bit integer and floating-point bitmaps.

    Integer data are divided by ``2**bits - 1`` with ``bits`` from :func:`bit_depth` (negative
    data shifted to start at 0 first), so 0-255 data held in uint16/int32/int64 or 12-bit data in
    uint16 keep their contrast instead of being divided by the dtype's maximum. Float data already
    in [0, 1] are kept; others are scaled by their finite min and max. NaN/infinite pixels, up to
    :data:`MAX_NONFINITE_FRACTION` of the image, are set to the finite minimum (background) and
    counted; more, or none finite, refuse the image.

    Args:
        values: 2-D array, or ``(rows, cols, 3|4)`` colour (converted to luminance).
        label: how to name the input in errors.
        declared_bits: a bit depth the file declares (PNG sBIT), used when it holds the data.

    Returns:
        :class:`ScaledPixels`.

    Raises:
        ImageReadError: for a non-numeric dtype, no finite pixel, or too many non-finite ones.
    """
    arr = np.asarray(values)
    colour = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if arr.dtype == np.bool_:
        gray = _rgb_to_gray(arr) if colour else arr
        return ScaledPixels(np.asarray(gray, dtype=np.float32), "1-bit")
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        shift = min(lo, 0)
        bits = bit_depth(hi - shift, declared_bits)
        # float32 is exact for integers below 2**24 and halves the memory of a large film.
        work = arr.astype(np.float32 if hi - shift < 2**24 else np.float64)
        if shift:
            work -= shift
        if colour:
            work = _rgb_to_gray(work)
        note = f"{bits}-bit" + (", colour converted to grayscale (luminance)" if colour else "")
        # In place: one film-sized array rather than four (a 7,000 x 7,500 film is 210 MB in float32).
        work /= float(2**bits - 1)
        np.clip(work, 0.0, 1.0, out=work)
        return ScaledPixels(work.astype(np.float32, copy=False), note)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ImageReadError(label, f"unsupported pixel type {arr.dtype} (expected integers or real numbers)")
    work = arr.astype(np.promote_types(arr.dtype, np.float32), copy=False)
    if colour:
        work = _rgb_to_gray(work)
    work, nonfinite = fill_nonfinite(work, label)
    lo, hi = float(work.min()), float(work.max())
    if 0.0 <= lo and hi <= 1.0 and work.dtype == np.float32 and not nonfinite:
        # Already what is asked for: no film-sized copy (the model-input preparation calls this on
        # a radiograph's own pixels, twice per film).
        return ScaledPixels(work, "float in [0, 1]")
    if 0.0 <= lo and hi <= 1.0:
        note = "float in [0, 1]"
    else:
        work = (work - lo) / (hi - lo) if hi > lo else np.zeros_like(work)
        note = "float scaled by min/max"
    if nonfinite:
        note += f"; {nonfinite:,} NaN/infinite pixel(s) set to the image minimum"
    return ScaledPixels(np.clip(work, 0.0, 1.0).astype(np.float32), note, nonfinite)


def fill_nonfinite(values: np.ndarray, label: str = "<array>") -> tuple[np.ndarray, int]:
    """Set NaN/infinite pixels to the finite minimum, or refuse an image with too many.

    A single +inf would otherwise stretch every other pixel to 0 (a "blank" image) and a NaN
    would propagate; filling with the minimum (background) never adds bone-bright structure.

    Args:
        values: a float array.
        label: how to name the input in errors.

    Returns:
        ``(array, count)``: the input itself when every pixel is finite, else a filled copy.

    Raises:
        ImageReadError: when no pixel is finite, or more than :data:`MAX_NONFINITE_FRACTION` are not.
    """
    finite = np.isfinite(values)
    if finite.all():
        return values, 0
    count, total = int(values.size - np.count_nonzero(finite)), int(values.size)
    if count == total:
        raise ImageReadError(label, "image has no finite pixel values (all NaN or infinite)")
    if count > MAX_NONFINITE_FRACTION * total:
        raise ImageReadError(
            label,
            f"{count:,} of {total:,} pixels ({100 * count / total:.2g}%) are NaN or infinite, over the "
            f"{100 * MAX_NONFINITE_FRACTION:g}% tolerated: the image data are corrupt",
        )
    return np.where(finite, values, values[finite].min()), count


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def load_radiograph(source: str | Path | bytes | BinaryIO, name: str | None = None) -> Radiograph:
    """Read a DICOM, PNG, JPEG, TIFF or BMP radiograph.

    Args:
        source: a path, or the file's bytes / a binary file object (e.g. a web upload).
        name: how to name the input in error messages when ``source`` is not a path.

    Returns:
        The :class:`Radiograph` (pixels in [0, 1], bone bright, full resolution).

    Raises:
        ImageReadError: naming the file and the reason (missing, empty, truncated, not an image,
            undecodable transfer syntax, too many pixels, unsupported layout).
    """
    path: Path | None = None
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = str(source)
        if not path.exists():
            raise ImageReadError(label, "file not found")
        if path.is_dir():
            raise ImageReadError(label, "is a folder, not an image file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageReadError(label, f"cannot be read ({exc.strerror or exc})") from None
    else:
        label = name or getattr(source, "name", None) or "<upload>"
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else source.read()
    if len(data) == 0:
        raise ImageReadError(label, "file is empty (0 bytes)")

    try:
        if _looks_like_dicom(data):
            rad = _read_dicom(data, label)
        else:
            try:
                rad = _read_bitmap(data, label)
            except ImageReadError as exc:
                # Not a bitmap: it may still be a DICOM data set without the 128-byte preamble.
                if not exc.reason.startswith("not a recognised image") or not _parses_as_dicom_image(data):
                    raise
                rad = _read_dicom(data, label)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(label, "image too large to decode in memory") from None
    except Exception as exc:
        # pydicom parses elements lazily: a corrupt element can raise anything on first access.
        raise ImageReadError(label, f"file is corrupt or malformed ({type(exc).__name__}: {exc})") from None
    rad.path = path
    return rad


def _looks_like_dicom(data: bytes) -> bool:
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    # Preamble-less DICOM (raw data set): starts with a group 0002 or 0008 element tag.
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[2:4] != b"\x00\x00"


def _parses_as_dicom_image(data: bytes) -> bool:
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(_io.BytesIO(data), force=True, stop_before_pixels=True)
        return "Rows" in ds and "Columns" in ds
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
def _read_dicom(data: bytes, label: str) -> Radiograph:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(_io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError) as exc:
        raise ImageReadError(label, f"not a valid DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on malformed headers
        raise ImageReadError(label, f"DICOM header is malformed ({type(exc).__name__}: {exc})") from None

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(label, "DICOM file has no pixel data (not an image object)")

    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(label, f"DICOM image layout is missing or invalid ({exc})") from None
    if rows < 2 or cols < 2:
        raise ImageReadError(label, f"DICOM image is too small ({rows} x {cols})")
    if rows * cols * max(frames, 1) > MAX_PIXELS:
        raise ImageReadError(
            label, f"image has {rows * cols * frames:,} pixels, over the {MAX_PIXELS:,} limit (decompression bomb?)"
        )
    if frames > 1:
        raise ImageReadError(label, f"multi-frame DICOM ({frames} frames) is not supported; export a single frame")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples not in (1, 3):
        raise ImageReadError(label, f"unsupported SamplesPerPixel={samples}")

    tsuid = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    nonfinite = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except NotImplementedError as exc:
        raise ImageReadError(label, f"cannot decode transfer syntax {tsuid or '(unknown)'}: {exc}") from None
    except Exception as exc:  # truncated / corrupt pixel data surfaces as many exception types
        raise ImageReadError(label, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None

    if photometric == "PALETTE COLOR" and samples == 1:
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise ImageReadError(label, f"palette colour lookup table is invalid ({type(exc).__name__}: {exc})") from None
        samples, photometric = 3, "RGB"
    if samples == 3:
        if photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"):
            raise ImageReadError(label, f"unsupported colour photometric interpretation {photometric}")
        # pydicom converts YBR to RGB by default; a colour radiograph is a screenshot: use luminance.
        rgb = np.asarray(arr)
        gray = _rgb_to_gray(rgb.astype(np.float64))
        full_scale = 255.0 if rgb.dtype == np.uint8 else float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else 1.0
        pixels = gray / full_scale
        window_note = "colour image converted to grayscale"
    else:
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ImageReadError(label, f"unsupported photometric interpretation {photometric} for a grayscale image")
        if arr.ndim != 2:
            raise ImageReadError(label, f"unexpected pixel array shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.floating):
            # Float Pixel Data may hold NaN/inf: one would break the min/max scaling below.
            arr, nonfinite = fill_nonfinite(arr, label)
        try:
            pixels, window_note = _dicom_grayscale(arr, ds)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(label, f"invalid rescale / VOI LUT attributes ({type(exc).__name__}: {exc})") from None
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels

    if not np.all(np.isfinite(pixels)):
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)
    spacing, spacing_source = dicom_spacing(ds)
    sex = normalise_sex(ds.get("PatientSex"))
    age = dicom_age_months(ds)
    metadata = {
        "modality": str(ds.get("Modality", "") or ""),
        "photometric_interpretation": photometric,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "transfer_syntax_uid": tsuid,
        "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or ""),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "body_part_examined": str(ds.get("BodyPartExamined", "") or ""),
        "view_position": str(ds.get("ViewPosition", "") or ""),
        "laterality": str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or ""),
        "spacing_source": spacing_source,
        "grayscale_transform": window_note,
    }
    if nonfinite:
        metadata["nonfinite_pixels"] = nonfinite
    identifiers = {
        k: str(ds.get(k, "") or "")
        for k in ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID", "SOPInstanceUID")
    }
    return Radiograph(
        pixels=np.clip(pixels, 0.0, 1.0).astype(np.float32),
        spacing_mm=spacing,
        sex=sex,
        chronological_age_months=age,
        source_format="dicom",
        metadata=metadata,
        identifiers={k: v for k, v in identifiers.items() if v},
    )


def _dicom_grayscale(arr: np.ndarray, ds: Any) -> tuple[np.ndarray, str]:
    """Modality LUT, then VOI LUT or window, scaled to [0, 1] (before MONOCHROME1 inversion)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    bits_stored = int(ds.get("BitsStored", 0) or 0) or int(arr.dtype.itemsize * 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    raw = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        # Respect BitsStored: bits above it may carry overlays or garbage in old files.
        if signed:
            lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
        else:
            lo, hi = 0, 2**bits_stored - 1
            raw = (arr.astype(np.int64) & (2**bits_stored - 1)).astype(np.float64)
        raw = np.clip(raw, lo, hi)
    else:
        lo, hi = float(raw.min()), float(raw.max())

    # Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence).
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        if "ModalityLUTSequence" in ds:
            out_lo, out_hi = float(values.min()), float(values.max())
        else:
            a, b = lo * slope + intercept, hi * slope + intercept
            out_lo, out_hi = min(a, b), max(a, b)
    else:
        values, out_lo, out_hi = raw, float(lo), float(hi)

    # VOI: a VOI LUT Sequence takes precedence over a window (PS3.3 C.11.2).
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        lut_bits = int(item.LUTDescriptor[2])
        out = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
        return np.clip(out / float(2**lut_bits - 1), 0.0, 1.0), "VOI LUT sequence"
    center, width = _first_window(ds)
    if center is not None and width is not None and width > 0:
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return window(values, center, width, func), f"window {func} C={center:g} W={width:g}"
    # No VOI in the header: like a viewer, stretch the data's own range (the stored range is
    # often far wider than the data, which would give a near-black image).
    lo_v, hi_v = float(values.min()), float(values.max())
    if hi_v <= lo_v:
        return np.zeros_like(values), "constant image"
    return (values - lo_v) / (hi_v - lo_v), "data min-max (no VOI in header)"


def _first_window(ds: Any) -> tuple[float | None, float | None]:
    def first(value: Any) -> float | None:
        if value is None:
            return None
        try:
            v = value[0] if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, (str, bytes)) else value
            f = float(v)
        except (TypeError, ValueError, IndexError):
            return None
        return f if math.isfinite(f) else None

    return first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a DICOM VOI window (PS3.3 C.11.2.1.2), returning values in [0, 1].

    Args:
        values: output of the modality transform.
        center: Window Center.
        width: Window Width (> 0; >= 1 for LINEAR).
        function: ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns:
        float64 array in [0, 1].
    """
    v = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (v - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((v - (center - width / 2.0)) / width, 0.0, 1.0)
    w = max(width - 1.0, 1e-9)
    return np.clip((v - (center - 0.5)) / w + 0.5, 0.0, 1.0)


def dicom_spacing(ds: Any) -> tuple[tuple[float, float] | None, str]:
    """Pixel spacing (row, col) in mm from a DICOM header, and where it came from.

    PixelSpacing (calibrated at the patient) wins; else ImagerPixelSpacing divided by
    EstimatedRadiographicMagnificationFactor when present. Zero, negative, non-numeric or
    implausible values (outside :data:`SPACING_RANGE_MM`) give ``None``.

    Returns:
        ``(spacing or None, source description)``.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        raw = ds.get(keyword)
        if raw is None:
            continue
        try:
            values = [float(v) for v in raw] if not isinstance(raw, (str, bytes)) else [float(raw)]
        except (TypeError, ValueError):
            return None, f"{keyword} is not numeric: ignored"
        if len(values) == 1:
            values = values * 2
        if len(values) != 2:
            return None, f"{keyword} has {len(values)} values: ignored"
        source = keyword
        if keyword == "ImagerPixelSpacing":
            try:
                mag = float(ds.get("EstimatedRadiographicMagnificationFactor", 1.0) or 1.0)
            except (TypeError, ValueError):
                mag = 1.0
            if mag > 0 and math.isfinite(mag) and mag != 1.0:
                values = [v / mag for v in values]
                source = f"ImagerPixelSpacing / magnification {mag:g}"
        spacing = _valid_spacing(values)
        if spacing is None:
            return None, f"{keyword} {values} outside {SPACING_RANGE_MM} mm: ignored"
        return spacing, source
    return None, "no spacing in header"


def _valid_spacing(values: list[float]) -> tuple[float, float] | None:
    lo, hi = SPACING_RANGE_MM
    if len(values) != 2 or not all(math.isfinite(v) and lo <= v <= hi for v in values):
        return None
    return (float(values[0]), float(values[1]))


def normalise_sex(value: Any) -> str | None:
    """Map header or user sex values to ``"M"``, ``"F"`` or ``None`` (unknown, other, blank)."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if text in ("M", "MALE", "1", "BOY"):
        return "M"
    if text in ("F", "FEMALE", "0", "GIRL"):
        return "F"
    return None


def parse_sex(value: Any) -> str | None:
    """Validate a sex a user gave (argument, manifest cell, form field).

    Args:
        value: ``M``/``F`` and their spellings (see :func:`normalise_sex`); blank, ``None``, NaN,
            ``unknown`` or ``U`` mean unknown.

    Returns:
        ``"M"``, ``"F"`` or ``None`` (unknown).

    Raises:
        ValueError: for any other value (e.g. ``"X"``), naming it; never silently dropped.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text.upper() in ("", "U", "UNKNOWN", "NAN", "NONE", "O", "OTHER"):
        return None
    sex = normalise_sex(text)
    if sex is None:
        raise ValueError(f"sex {text!r} is not recognised (use M or F, or leave it blank)")
    return sex


def parse_age_months(value: Any) -> float | None:
    """Validate a chronological age in months a user gave (argument, manifest cell, form field).

    Args:
        value: a number of months (string or number); blank/``None``/NaN mean unknown.

    Returns:
        The age in months, or ``None`` (unknown).

    Raises:
        ValueError: for a value that is not a finite number, or outside 0-25 years, naming it.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text == "" or text.lower() in ("nan", "none"):
        return None
    try:
        months = float(text)
    except ValueError:
        raise ValueError(f"chronological age {text!r} is not a number of months") from None
    if not math.isfinite(months) or months < 0 or months > MAX_AGE_MONTHS:
        raise ValueError(f"chronological age {text} months is outside 0-{MAX_AGE_MONTHS // 12} years")
    return months


def _parse_da(value: Any) -> dt.date | None:
    text = str(value or "").strip().replace(".", "")  # old ACR-NEMA style YYYY.MM.DD
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def dicom_age_months(ds: Any) -> float | None:
    """Chronological age in months at the study, from the DICOM header.

    PatientBirthDate with StudyDate (else AcquisitionDate, else ContentDate); else PatientAge
    (``nnnD/W/M/Y``). Missing, negative or over-25-year results give ``None``.
    """
    birth = _parse_da(ds.get("PatientBirthDate"))
    if birth is not None:
        for keyword in ("StudyDate", "AcquisitionDate", "ContentDate"):
            when = _parse_da(ds.get(keyword))
            if when is not None:
                return _valid_age((when - birth).days / _DAYS_PER_MONTH)
    match = re.fullmatch(r"(\d{3})([DWMY])", str(ds.get("PatientAge", "") or "").strip().upper())
    if match:
        n, unit = int(match.group(1)), match.group(2)
        months = {"D": n / _DAYS_PER_MONTH, "W": n * 7 / _DAYS_PER_MONTH, "M": float(n), "Y": n * 12.0}[unit]
        return _valid_age(months)
    return None


def _valid_age(months: float | None) -> float | None:
    if months is None:
        return None
    try:
        m = float(months)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(m) or m < 0 or m > MAX_AGE_MONTHS:
        return None
    return m


# --------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF / BMP
# --------------------------------------------------------------------------------------------
def _read_bitmap(data: bytes, label: str) -> Radiograph:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(_io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageReadError(label, "not a recognised image (expected DICOM, PNG, JPEG, TIFF or BMP)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(label, f"image has too many pixels (over the {MAX_PIXELS:,} limit; decompression bomb?)") from None
    except Exception as exc:
        raise ImageReadError(label, f"cannot be opened as an image ({type(exc).__name__}: {exc})") from None

    fmt = (img.format or "").lower()
    fmt = {"jpeg": "jpeg", "mpo": "jpeg", "png": "png", "tiff": "tiff", "bmp": "bmp"}.get(fmt)
    if fmt is None:
        raise ImageReadError(label, f"unsupported image format {img.format!r} (expected DICOM, PNG, JPEG, TIFF or BMP)")
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageReadError(label, f"image has {w * h:,} pixels, over the {MAX_PIXELS:,} limit (decompression bomb?)")
    if w < 2 or h < 2:
        raise ImageReadError(label, f"image is too small ({w} x {h})")
    if getattr(img, "n_frames", 1) > 1:
        raise ImageReadError(label, f"multi-page/animated {fmt.upper()} ({img.n_frames} frames) is not supported")
    try:
        img.load()
    except Exception as exc:  # truncated streams raise OSError / SyntaxError / ValueError
        raise ImageReadError(label, f"image data is truncated or corrupt ({type(exc).__name__}: {exc})") from None

    pixels, note = _bitmap_to_unit(img, label)
    return Radiograph(
        pixels=pixels,
        source_format=fmt,
        metadata={"mode": img.mode, "grayscale_transform": note},
    )


#: float32(v / 255) for every 8-bit value v, computed in float64 as before.
_UINT8_TO_UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def _bitmap_to_unit(img: Any, label: str) -> tuple[np.ndarray, str]:
    """Scale a PIL image to float32 [0, 1] by its real bit depth."""
    mode = img.mode
    if mode in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode in ("P", "PA"):
            img = img.convert("RGBA")
            mode = "RGBA"
        if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
            mode = "RGB"
        arr = np.asarray(img)
        if mode == "1":
            return arr.astype(np.float32), "1-bit"
        if arr.ndim == 3:
            arr = _rgb_to_gray(arr[..., :3].astype(np.float64)) if arr.shape[-1] >= 3 else arr[..., 0]
            note = "colour converted to grayscale (luminance)"
        else:
            note = "8-bit"
        if arr.dtype == np.uint8:
            # A look-up table gives exactly float32(v / 255.0) with one film-sized array instead of
            # a float64 copy, its quotient and the float32 result (1 GB for a 7,000 x 7,500 film).
            return _UINT8_TO_UNIT[arr], note
        return (np.asarray(arr, dtype=np.float64) / 255.0).astype(np.float32), note
    if mode.startswith("I;16") or mode in ("I", "F"):
        # The same scaling as arrays given through the API (real bit depth; finite range).
        scaled = to_unit_range(np.asarray(img), label, declared_bits=_png_sbit(img))
        return scaled.pixels, scaled.note
    raise ImageReadError(label, f"unsupported pixel layout (PIL mode {mode})")


def declared_or_inferred_bits(img: Any, max_value: int) -> int:
    """Bit depth of a 16-bit bitmap: the PNG sBIT chunk when present, else :func:`bit_depth`."""
    return bit_depth(max_value, _png_sbit(img))


def _png_sbit(img: Any) -> int | None:
    sbit = img.info.get("sbit") if hasattr(img, "info") else None
    if isinstance(sbit, (tuple, list)) and sbit:
        sbit = sbit[0]
    return sbit if isinstance(sbit, int) else None


def bit_depth(max_value: int, declared: int | None = None) -> int:
    """Bit depth of integer pixel data (values from 0 to ``max_value``).

    Args:
        max_value: the largest value (after shifting the data to start at 0).
        declared: a depth the file declares (PNG sBIT); used when the data fit in it.

    Returns:
        ``declared`` when valid, else the smallest of 8/10/12/14/16 bits that holds
        ``max_value`` (so 12-bit data in a 16-bit container, or 0-255 data in an int64 array,
        are not dark), else as many bits as ``max_value`` needs.
    """
    if declared is not None and 1 <= declared <= 16 and max_value < 2**declared:
        return declared
    for bits in (8, 10, 12, 14, 16):
        if max_value < 2**bits:
            return bits
    return int(max_value).bit_length()


def _rgb_to_gray(arr: np.ndarray) -> np.ndarray:
    rgb = np.asarray(arr, dtype=np.float64)[..., :3]
    return rgb @ np.array([0.299, 0.587, 0.114])

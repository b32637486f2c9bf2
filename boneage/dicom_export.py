"""DICOM outputs for PACS: a Comprehensive SR measurement report (TID 1500) and a Secondary
Capture image of the annotated result page, both in the source image's study."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np

from boneage import __version__
from boneage.estimate import BoneAgeResult

#: LOINC code the issue and RSNA use for bone age.
BONE_AGE_LOINC = ("37362-1", "LN", "XR Bone age")
#: Private scheme for the interval limits (no standard code exists for them).
PRIVATE_SCHEME = "99BONEAGE"
#: Algorithm name of each method's measurement group, headline (combined) first.
ALGORITHM_NAMES = {
    "combined": "boneage combined (stacked multi-step, per-bone, end-to-end)",
    "multistep": "boneage multi-step",
    "perbone": "boneage per-bone maturity",
    "direct": "boneage end-to-end CNN",
}
#: Private codes of the per-bone method's partial ages (measurements in its group).
#: The per-bone method's parts, reported as read: unlike the method's film age they are not read
#: through its age-band bias map (boneage.agemap), so that RUS and carpal compare with each other.
PERBONE_PART_CODES = {
    "perbone_rus": ("BA-RUS", "Bone age, RUS bones, as read (no age-band map)"),
    "perbone_carpal": ("BA-CARPAL", "Bone age, carpal region, as read (no age-band map)"),
}


class ExportError(ValueError):
    """An SR or SC cannot be made for this input (not DICOM, not ok...)."""


def _source_dataset(result: BoneAgeResult, source: str | Path | bytes | None = None):
    import pydicom

    if not result.ok:
        raise ExportError(f"{result.path}: no DICOM export for a result with status {result.status}")
    src = source if source is not None else Path(str(result.path))
    try:
        ds = pydicom.dcmread(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src, stop_before_pixels=True)
    except Exception as exc:
        raise ExportError(f"{result.path}: not a readable DICOM source ({type(exc).__name__})") from None
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(ds.get(keyword, "") or ""):
            raise ExportError(f"{result.path}: source has no {keyword}; an SR could not reference it")
    # Type 2 patient/study attributes must exist (empty is allowed) in the derived objects.
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def structured_report(result: BoneAgeResult, source: str | Path | bytes | None = None):
    """A DICOM Comprehensive SR (TID 1500 Measurement Report) with every method's bone age.

    Each available estimate is one measurement group, the combined (headline) one first, then
    multi-step, per-bone and end-to-end: bone age (LOINC 37362-1, months) and its 90% limits, the
    SDS when known, the algorithm identification (name, version; the combined one's parameters
    are its stacking weights) and a reference to the source image. The per-bone group also
    carries the RUS-bones-only and carpal-region ages (private codes ``BA-RUS``, ``BA-CARPAL``).

    Args:
        result: an ``ok`` result of a DICOM input.
        source: the source DICOM (path or bytes); default ``result.path``.

    Returns:
        ``highdicom.sr.ComprehensiveSR`` (a pydicom Dataset; ``.save_as(path)``).

    Raises:
        ExportError: when the input is not an ok DICOM result.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    src = _source_dataset(result, source)
    bone_age = hd.sr.CodedConcept(*BONE_AGE_LOINC)
    months = hd.sr.CodedConcept("mo", "UCUM", "month")
    groups = []
    for est in (result.combined, result.multistep, result.perbone, result.direct):
        if not est.available:
            continue
        algorithm = hd.sr.AlgorithmIdentification(
            name=ALGORITHM_NAMES[est.method],
            version=est.model_version or __version__,
            parameters=([f"weight of {m}: {w:.2f}" for m, w in result.combined_weights.items()]
                        if est.method == "combined" and result.combined_weights else None),
        )
        measurements = [
            hd.sr.Measurement(name=bone_age, value=float(est.age_months), unit=months, algorithm_id=algorithm),
            hd.sr.Measurement(name=hd.sr.CodedConcept("BA-L90", PRIVATE_SCHEME, "Bone age, lower limit of 90% interval"),
                              value=float(est.lower_90), unit=months, algorithm_id=algorithm),
            hd.sr.Measurement(name=hd.sr.CodedConcept("BA-U90", PRIVATE_SCHEME, "Bone age, upper limit of 90% interval"),
                              value=float(est.upper_90), unit=months, algorithm_id=algorithm),
        ]
        if est.sds is not None:
            measurements.append(hd.sr.Measurement(
                name=hd.sr.CodedConcept("BA-SDS", PRIVATE_SCHEME, "Bone age SDS vs chronological age (Brush SD)"),
                value=float(est.sds), unit=hd.sr.CodedConcept("{SD}", "UCUM", "standard deviation"),
                algorithm_id=algorithm,
            ))
        if est.method == "perbone":
            for part in (result.perbone_rus, result.perbone_carpal):
                if part.available:
                    code, meaning = PERBONE_PART_CODES[part.method]
                    measurements.append(hd.sr.Measurement(name=hd.sr.CodedConcept(code, PRIVATE_SCHEME, meaning),
                                                          value=float(part.age_months), unit=months,
                                                          algorithm_id=algorithm))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"bone age {est.method}"),
            algorithm_id=algorithm,
            measurements=measurements,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src)],
        ))
    if not groups:
        raise ExportError(f"{result.path}: no estimate to report")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name="boneage", manufacturer_name="boneage project", model_name=__version__,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=bone_age,
        imaging_measurements=groups,
    )
    return hd.sr.ComprehensiveSR(
        evidence=[src], content=report[0], series_instance_uid=generate_uid(), series_number=9001,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="boneage project",
        is_complete=True, is_final=False, is_verified=False,
        series_description="Bone age (boneage, research use)",
    )


def result_page(result: BoneAgeResult, pixels: np.ndarray) -> np.ndarray:
    """The annotated result page as an RGB image (overlay, the combined estimate and each method's, SDS, disclaimer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from boneage.report import DISCLAIMER, estimate_text, method_label, overlay_rgb

    fig = plt.figure(figsize=(10, 7.5), dpi=100)
    ax = fig.add_axes([0.0, 0.0, 0.55, 1.0])
    ax.imshow(overlay_rgb(pixels, result.label_map, 0.4))
    ax.axis("off")
    lines = [
        "BONE AGE (research software)",
        "",
        f"Combined: {estimate_text(result.combined)}",
        f"Multi-step: {estimate_text(result.multistep)}",
        f"Per-bone: {estimate_text(result.perbone)}",
        f"End-to-end: {estimate_text(result.direct)}",
    ]
    for part, label in ((result.perbone_rus, "RUS bones"), (result.perbone_carpal, "carpal region")):
        if part.available:
            lines.append(f"  {label}: {estimate_text(part)}")
    lines += [
        f"Agreement: {result.agreement}",
        "",
        f"Sex: {result.sex or 'unknown'} ({result.sex_source})",
    ]
    for est in (result.combined, result.multistep, result.perbone, result.direct):
        if est.sds is not None:
            lines.append(f"SDS {method_label(est.method)}: {est.sds:+.2f} (Brush SD)")
    if result.sds_note:
        lines.append(result.sds_note)
    lines += [""] + [f"QC: {q}" for q in result.qc[:4]]
    fig.text(0.57, 0.95, "\n".join(lines), va="top", fontsize=11, family="monospace", wrap=True)
    fig.text(0.57, 0.04, DISCLAIMER, fontsize=8, wrap=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    plt.close(fig)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def secondary_capture(result: BoneAgeResult, pixels: np.ndarray, source: str | Path | bytes | None = None):
    """A Secondary Capture (RGB) of the result page, in the source image's study.

    Args:
        result: an ok DICOM result.
        pixels: the radiograph pixels (for the page's overlay).
        source: the source DICOM (path or bytes); default ``result.path``.

    Returns:
        ``highdicom.sc.SCImage``.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    src = _source_dataset(result, source)
    page = result_page(result, pixels)
    return hd.sc.SCImage(
        pixel_array=page, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=src.StudyInstanceUID, series_instance_uid=generate_uid(), series_number=9002,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="boneage project",
        patient_id=src.get("PatientID") or None, patient_name=src.get("PatientName") or None,
        patient_birth_date=src.get("PatientBirthDate") or None, patient_sex=src.get("PatientSex") or None,
        accession_number=src.get("AccessionNumber") or None, study_id=src.get("StudyID") or None,
        study_date=src.get("StudyDate") or None, study_time=src.get("StudyTime") or None,
        referring_physician_name=src.get("ReferringPhysicianName") or None,
        patient_orientation=("L", "F"), series_description="Bone age result page (boneage, research use)",
    )


def structured_report_bytes(result: BoneAgeResult, source: str | Path | bytes | None = None) -> bytes:
    """The SR as file bytes (for downloads)."""
    buf = io.BytesIO()
    structured_report(result, source).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def export_file_name(source: str | Path, sop_instance_uid: str, kind: str) -> str:
    """The file name of a DICOM output: ``<source SOPInstanceUID>-<hash>.<kind>.dcm``.

    The hash is of the source file's real path, so two files never share a name (not even copies
    of one image, which a manifest may give different ages), while a rerun of the same file gets
    the same name and replaces its own output.

    Args:
        source: the source DICOM file.
        sop_instance_uid: the source's SOPInstanceUID.
        kind: ``"sr"`` or ``"sc"``.

    Returns:
        A file name (no folder).
    """
    uid = re.sub(r"[^0-9A-Za-z.]", "_", str(sop_instance_uid))[:64] or "unknown"
    digest = hashlib.sha1(os.path.realpath(source).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{uid}-{digest}.{kind}.dcm"


def _check_replaceable(path: Path, src) -> None:
    """Refuse to replace an existing file of another patient or study (the name says the same
    source, but a file is never overwritten on a name's word alone)."""
    import pydicom

    if not path.exists():
        return
    try:
        old = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        raise ExportError(f"{path} exists and is not a DICOM file; not overwritten") from None
    # Identifiers are compared, never quoted: the message may reach a de-identified output.
    for keyword, what in (("PatientID", "patient"), ("PatientName", "patient"), ("StudyInstanceUID", "study")):
        if str(old.get(keyword, "") or "") != str(src.get(keyword, "") or ""):
            raise ExportError(f"{path} exists and belongs to another {what} ({keyword} differs); not overwritten")


def _save(dataset, path: Path) -> None:
    """Write a DICOM file atomically: a cut run leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            dataset.save_as(f, enforce_file_format=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_for(result: BoneAgeResult, sr_dir: str | Path | None, sc_dir: str | Path | None,
               source: str | Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """Write the SR and/or SC of one ok DICOM result, each under a name unique to its source.

    Names come from :func:`export_file_name`. An existing file of the same name is replaced
    only when it belongs to the same patient and study (a rerun of the same input); otherwise
    it is kept and the export fails.

    Args:
        result: the result.
        sr_dir: folder for the Comprehensive SR, or ``None``.
        sc_dir: folder for the Secondary Capture, or ``None``.
        source: the source file (default ``result.path``).

    Returns:
        ``({"sr": path, "sc": path}, errors)``: the files written, and why a requested one was
        not. Non-DICOM and not-ok results give neither.
    """
    from boneage.io import load_radiograph

    written: dict[str, Path] = {}
    errors: list[str] = []
    if not result.ok or (sr_dir is None and sc_dir is None):
        return written, errors
    source = Path(str(result.path)) if source is None else Path(source)
    try:
        src = _source_dataset(result, source)
    except ExportError:
        return written, errors  # not DICOM: nothing to export, nothing wrong
    for kind, folder in (("sr", sr_dir), ("sc", sc_dir)):
        if folder is None:
            continue
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            path = Path(folder) / export_file_name(source, src.SOPInstanceUID, kind)
            _check_replaceable(path, src)
            if kind == "sr":
                dataset = structured_report(result, source)
            else:
                dataset = secondary_capture(result, load_radiograph(source).pixels, source)
            _save(dataset, path)
        except ExportError as exc:
            errors.append(f"{kind.upper()}: {exc}")
            continue
        except Exception as exc:  # one output's failure must not lose the other, nor the estimate
            errors.append(f"{kind.upper()}: {type(exc).__name__}: {exc}")
            continue
        written[kind] = path
    return written, errors

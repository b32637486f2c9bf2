"""DICOMweb input: ``boneage predict --dicomweb URL --study UID`` against Orthanc's DICOMweb plugin."""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
import pytest

from boneage import cli, dicomweb
from boneage.batch import UsageError
from boneage.estimate import BoneAgeEstimator
from boneage.synth import generate_hand, write_dicom
from orthanc_helper import Orthanc
from test_estimate import FakeDirect

pytest.importorskip("dicomweb_client")
CHEST = Path(__file__).parent / "data" / "RG1_J2KI.dcm"


@pytest.fixture()
def direct_only(monkeypatch):
    est = BoneAgeEstimator(None, None, FakeDirect(100.0), versions={"direct": "fake"})
    monkeypatch.setattr(BoneAgeEstimator, "load", classmethod(lambda cls, device="cpu": est))
    return est


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with DICOMweb, holding a hand study (the hand and an SR of it) and a chest study."""
    from boneage.dicom_export import structured_report

    folder = tmp_path_factory.mktemp("orthanc")
    orthanc = Orthanc(folder, dicomweb=True).start()
    hand = folder / "hand.dcm"
    write_dicom(generate_hand(2103, 0, size=256), hand)
    fake = BoneAgeEstimator(None, None, FakeDirect(90.0), versions={"direct": "fake"})
    sr = folder / "sr.dcm"
    structured_report(fake.estimate(hand), hand).save_as(sr, enforce_file_format=True)
    for path in (hand, sr, CHEST):
        orthanc.upload(path)
    yield orthanc, hand
    orthanc.stop()


def _uid(path: Path, keyword: str = "StudyInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


def test_predict_reads_studies_from_dicomweb_one_record_per_image(tmp_path, pacs, direct_only, monkeypatch, capsys):
    orthanc, hand = pacs
    root = f"{orthanc.url}/dicom-web"
    out, sr_dir = tmp_path / "out.csv", tmp_path / "sr"
    studies = tmp_path / "studies.txt"
    studies.write_text(f"# studies to read\n{_uid(CHEST)}\n1.2.3.4.5.999\n")
    cache = tmp_path / "cache"
    code = cli.main(["predict", "--dicomweb", root, "--study", _uid(hand), "--study", "not-a-uid",
                     "--studies", str(studies), "--out", str(out), "--sr-dir", str(sr_dir), "--quiet",
                     "--dicomweb-cache", str(cache)])
    assert code == cli.EXIT_PARTIAL
    assert "non-image instance(s)" in capsys.readouterr().err  # the SR in the hand's study is no input
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    hand_url = dicomweb.instance_url(root, _uid(hand), _uid(hand, "SeriesInstanceUID"), _uid(hand, "SOPInstanceUID"))
    chest_url = dicomweb.instance_url(root, _uid(CHEST), _uid(CHEST, "SeriesInstanceUID"), _uid(CHEST, "SOPInstanceUID"))
    assert rows[hand_url]["status"] == "ok" and float(rows[hand_url]["direct_age_months"]) == 100.0
    assert rows[hand_url]["sex_source"] == "header" and rows[hand_url]["sr_path"]  # the header came along
    sr = pydicom.dcmread(rows[hand_url]["sr_path"])
    assert sr.StudyInstanceUID == _uid(hand)
    assert rows[chest_url]["status"] == "rejected" and "CHEST" in rows[chest_url]["reason"]
    unknown = rows[f"{root}/studies/1.2.3.4.5.999"]
    assert unknown["status"] == "error" and unknown["reason"].startswith("DICOMweb")
    assert any(r["status"] == "error" and "'not-a-uid' is not a DICOM UID" in r["reason"] for r in rows.values())
    assert len(rows) == 4
    kept = cache / _uid(hand) / _uid(hand, "SeriesInstanceUID") / f"{_uid(hand, 'SOPInstanceUID')}.dcm"
    assert pydicom.dcmread(kept).SOPInstanceUID == _uid(hand, "SOPInstanceUID")  # fetched as stored

    # --resume fetches nothing already recorded and writes no record twice.
    fetched = []
    real_fetch = dicomweb._fetch
    monkeypatch.setattr(dicomweb, "_fetch", lambda *a: fetched.append(a[3]) or real_fetch(*a))
    code = cli.main(["predict", "--dicomweb", root, "--study", _uid(hand), "--studies", str(studies),
                     "--out", str(out), "--resume", "--quiet"])
    assert fetched == [] and code == cli.EXIT_PARTIAL
    again = list(csv.DictReader(out.open()))
    assert len(again) == len({r["path"] for r in again}) == 4


def test_an_unreachable_server_is_a_record_that_resume_redoes(tmp_path, direct_only):
    from orthanc_helper import free_port

    out = tmp_path / "out.csv"
    root = f"http://127.0.0.1:{free_port()}/dicom-web"  # nobody listens there
    assert cli.main(["predict", "--dicomweb", root, "--study", "1.2.3", "--out", str(out), "--quiet"]) == cli.EXIT_PARTIAL
    [row] = list(csv.DictReader(out.open()))
    assert row["status"] == "error" and row["reason"].startswith("DICOMweb: cannot list")
    from boneage.batch import done_paths

    assert done_paths(out) == set()  # a server that did not answer is no verdict on the study


def test_study_lists_and_usage_errors(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("1.2.3\n\n# comment\n1.2.4  # trailing comment\nabc\n")
    assert dicomweb.read_study_list(plain) == [
        ("1.2.3", None), ("1.2.4", None), ("abc", f"study list {plain} line 5: 'abc' is not a DICOM UID")]
    table = tmp_path / "b.csv"
    table.write_text("patient,StudyInstanceUID\nx,1.2.5\ny,\n")
    assert dicomweb.read_study_list(table) == [("1.2.5", None)]
    table.write_text("patient,accession\nx,1\n")
    with pytest.raises(UsageError, match="no study column"):
        dicomweb.read_study_list(table)
    out = str(tmp_path / "o.csv")
    assert cli.main(["predict", "--study", "1.2.3", "--out", out]) == cli.EXIT_USAGE  # no --dicomweb
    assert cli.main(["predict", "--dicomweb", "pacs:8042", "--study", "1.2.3", "--out", out]) == cli.EXIT_USAGE
    assert cli.main(["predict", "--dicomweb", "http://127.0.0.1:1/dicom-web", "--out", out]) == cli.EXIT_USAGE

"""Batch prediction: discovery, manifest, one record per input, resume, exit codes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from boneage import batch, cli
from boneage.batch import InputItem, RecordWriter, discover_inputs, done_paths, run_batch
from boneage.estimate import BoneAgeEstimator
from test_estimate import FakeDirect


@pytest.fixture()
def folder(tmp_path, dicom_factory):
    root = tmp_path / "studies"
    (root / "a" / "b").mkdir(parents=True)
    hand = np.random.default_rng(0).integers(0, 255, (128, 96), dtype=np.uint8)
    Image.fromarray(hand).save(root / "a" / "hand.png")
    dcm = dicom_factory(np.random.default_rng(1).integers(0, 4095, (128, 96)), PatientSex="F")
    (root / "a" / "b" / "IM0001").write_bytes(dcm.read_bytes())  # no extension
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "empty.dcm").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"junk")
    return root


@pytest.fixture()
def direct_only(monkeypatch):
    est = BoneAgeEstimator(None, None, FakeDirect(100.0), versions={"direct": "fake"})
    monkeypatch.setattr(BoneAgeEstimator, "load", classmethod(lambda cls, device="cpu": est))
    return est


def test_discovery_is_recursive_sorted_and_skips_hidden(folder):
    items = discover_inputs([str(folder), "missing.png"])
    names = [i.path.split("/")[-1] for i in items]
    assert names == ["empty.dcm", "hand.png", "notes.txt", "IM0001", "missing.png"]


def test_manifest_overrides_and_usage_errors(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,sex,chronological_age_months\nx.png,F,100\ny.png,,\n")
    assert discover_inputs([], str(m)) == [InputItem("x.png", "F", 100.0), InputItem("y.png", None, None)]
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.png\n")
    with pytest.raises(batch.UsageError, match="no 'path' column"):
        discover_inputs([], str(bad))
    with pytest.raises(batch.UsageError, match="not found"):
        discover_inputs([], str(tmp_path / "nope.csv"))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_one_record_per_input_every_bad_one_explained(folder, direct_only, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    counts = run_batch(discover_inputs([str(folder), str(tmp_path / "missing.png")]), out, progress=False)
    if suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and counts["ok"] == 2 and counts["error"] == 3
    by_name = {r["path"].split("/")[-1]: r for r in rows}
    assert by_name["hand.png"]["status"] == "ok" and float(by_name["hand.png"]["direct_age_months"]) == 100.0
    assert by_name["IM0001"]["sex"] == "F" and by_name["IM0001"]["sex_source"] == "header"
    assert "empty" in by_name["empty.dcm"]["reason"]
    assert "not a recognised image" in by_name["notes.txt"]["reason"]
    assert by_name["missing.png"]["reason"] == "file not found"
    assert all(r["reason"] for r in rows if r["status"] != "ok")


def test_resume_skips_done_inputs_whatever_their_status(folder, direct_only, tmp_path):
    items = discover_inputs([str(folder)])
    out = tmp_path / "out.csv"
    run_batch(items[:2], out, progress=False)
    counts = run_batch(items, out, resume=True, progress=False)
    assert counts["skipped"] == 2 and sum(counts[k] for k in ("ok", "error", "rejected")) == 2
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [i.path for i in items]  # one header, no duplicates


def test_interrupted_jsonl_line_is_redone(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"path": "a.png", "status": "ok"}) + "\n" + '{"path": "b.png", "sta')
    assert done_paths(out) == {"a.png"}
    with RecordWriter(out, append=True) as w:
        w.write({"path": "b.png", "status": "ok"})
    assert [json.loads(x)["path"] for x in out.read_text().splitlines()] == ["a.png", "b.png"]


def test_cli_exit_codes(folder, direct_only, tmp_path, capsys):
    good = str(folder / "a" / "hand.png")
    assert cli.main(["predict", good, "--out", str(tmp_path / "o.csv"), "--quiet"]) == cli.EXIT_OK
    assert cli.main(["predict", str(folder), "--out", str(tmp_path / "o2.jsonl")]) == cli.EXIT_PARTIAL
    assert "2 ok, 2 error" in capsys.readouterr().err
    assert cli.main(["predict", good, "--out", str(tmp_path / "o.txt")]) == cli.EXIT_USAGE
    assert cli.main(["predict", "--out", str(tmp_path / "o.csv")]) == cli.EXIT_USAGE


def test_jsonl_has_a_bones_object(folder, direct_only, tmp_path):
    out = tmp_path / "o.jsonl"
    run_batch([InputItem(str(folder / "a" / "hand.png"))], out, progress=False)
    rec = json.loads(out.read_text())
    assert rec["bones"] == {} and isinstance(rec["qc"], list)  # direct-only: no per-bone table


def test_sr_and_sc_for_ok_dicom_inputs(tmp_path, direct_only, dicom_factory):
    import highdicom as hd
    import pydicom

    from boneage.synth import generate_hand

    hand = generate_hand(3, 3, size=256)
    dcm = dicom_factory((hand.image * 4095).astype(int), PatientSex="F", PatientBirthDate="20100101",
                        StudyDate="20200601", BodyPartExamined="HAND")
    png = tmp_path / "hand.png"
    Image.fromarray((hand.image * 255).astype(np.uint8)).save(png)
    out = tmp_path / "o.jsonl"
    counts = run_batch([InputItem(str(dcm)), InputItem(str(png))], out, progress=False,
                       sr_dir=tmp_path / "sr", sc_dir=tmp_path / "sc")
    assert counts["ok"] == 2
    srs = list((tmp_path / "sr").iterdir())
    scs = list((tmp_path / "sc").iterdir())
    assert len(srs) == 1 and len(scs) == 1  # only the DICOM input gets DICOM outputs
    sr = hd.sr.srread(srs[0])
    ds = pydicom.dcmread(srs[0])
    src = pydicom.dcmread(dcm)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and ds.StudyInstanceUID == src.StudyInstanceUID
    text = str(ds)
    assert "37362-1" in text and "100" in text  # LOINC bone age and the fake CNN's value
    assert src.SOPInstanceUID in text  # references the source image
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    sc = pydicom.dcmread(scs[0])
    assert sc.PhotometricInterpretation == "RGB" and sc.StudyInstanceUID == src.StudyInstanceUID
    rec = json.loads(out.read_text().splitlines()[0])
    assert any("sr.dcm" in q for q in rec["qc"])


def test_identifiers_only_with_keep_identifiers(tmp_path, direct_only, dicom_factory):
    dcm = dicom_factory(np.random.default_rng(2).integers(0, 4095, (128, 96)), PatientSex="M")
    plain, kept = tmp_path / "plain.jsonl", tmp_path / "kept.csv"
    run_batch([InputItem(str(dcm))], plain, progress=False)
    run_batch([InputItem(str(dcm))], kept, progress=False, keep_identifiers=True)
    assert "TEST123" not in plain.read_text() and "Test^Hand" not in plain.read_text()
    row = next(csv.DictReader(kept.open()))
    assert row["PatientID"] == "TEST123" and row["PatientName"] == "Test^Hand"


def test_mixed_archive_with_the_shipped_models(tmp_path, rsna_dev, dicom_factory):
    """The issue's bar, end to end with the real models: good studies (real hand films, one of them
    as a DICOM), non-hand radiographs (a chest and a tibia CR), truncated/empty/text files."""
    import shutil

    import highdicom as hd
    from conftest import TESTS_DATA

    from boneage.io import load_radiograph

    root = tmp_path / "archive"
    root.mkdir()
    shutil.copy(rsna_dev / "images" / "1491.jpg", root / "hand_a.jpg")  # temporary copy, never committed
    hand = load_radiograph(rsna_dev / "images" / "2003.jpg").pixels
    birth, study = "20100101", "20190101"
    dicom_factory((hand * 4095).astype(int), PatientSex="M", PatientBirthDate=birth, StudyDate=study,
                  BodyPartExamined="HAND").replace(root / "hand_b.dcm")
    shutil.copy(TESTS_DATA / "RG1_J2KI.dcm", root / "chest.dcm")
    shutil.copy(TESTS_DATA / "RG3_J2KR.dcm", root / "tibia.dcm")
    (root / "truncated.dcm").write_bytes((TESTS_DATA / "RG3_J2KR.dcm").read_bytes()[:5000])
    (root / "empty.dcm").write_bytes(b"")
    (root / "readme.txt").write_text("scanned on the old CR")
    out = tmp_path / "results.csv"
    counts = run_batch(discover_inputs([str(root)]), out, progress=False, sr_dir=tmp_path / "sr")
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(out.open())}
    assert len(rows) == 7 and (counts["ok"], counts["error"], counts["rejected"]) == (2, 3, 2)
    assert rows["hand_a.jpg"]["status"] == "ok" and rows["hand_b.dcm"]["status"] == "ok"
    assert float(rows["hand_b.dcm"]["chronological_age_months"]) == pytest.approx(108, abs=1)
    assert "CHEST" in rows["chest.dcm"]["reason"]
    assert "not recognised as a hand" in rows["tibia.dcm"]["reason"]
    assert all(rows[n]["status"] == "error" and rows[n]["reason"] for n in ("truncated.dcm", "empty.dcm", "readme.txt"))
    srs = list((tmp_path / "sr").iterdir())
    assert len(srs) == 1 and isinstance(hd.sr.srread(srs[0]), hd.sr.ComprehensiveSR)

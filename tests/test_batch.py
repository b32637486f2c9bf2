"""Batch prediction: discovery, manifest, one record per input, resume, exit codes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

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
    items = discover_inputs([], str(m))
    assert [(i.path, i.sex, i.chronological_age_months, i.notes) for i in items] == [
        ("x.png", "F", 100.0, ()), ("y.png", None, None, ())]
    assert [i.file for i in items] == [str(tmp_path / "x.png"), str(tmp_path / "y.png")]
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
    recs = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert recs[str(dcm)]["sr_path"] == str(srs[0]) and recs[str(dcm)]["sc_path"] == str(scs[0])
    assert recs[str(png)]["sr_path"] is None and recs[str(png)]["sc_path"] is None


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


# --- wrong-patient outputs ----------------------------------------------------------------------
@pytest.fixture()
def two_patients(tmp_path, direct_only):
    """Two DICOM trees whose films share a file name (p1/IM0001, p2/IM0001), two patients."""
    from boneage.synth import generate_hand
    from conftest import write_dicom

    root = tmp_path / "tree"
    paths = []
    for i, (pid, name) in enumerate((("PAT-A", "Alpha^Ann"), ("PAT-B", "Beta^Bob"))):
        (root / f"p{i + 1}").mkdir(parents=True)
        hand = generate_hand(5, i, size=192)
        paths.append(write_dicom(root / f"p{i + 1}" / "IM0001", (hand.image * 4095).astype(int), PatientID=pid,
                                 PatientName=name, PatientSex="F", BodyPartExamined="HAND"))
    return root, paths


def test_dicom_outputs_never_collide_and_each_row_names_its_own_file(tmp_path, two_patients):
    import pydicom

    root, sources = two_patients
    out, sr, sc = tmp_path / "o.csv", tmp_path / "sr", tmp_path / "sc"
    counts = run_batch(discover_inputs([str(root)]), out, progress=False, sr_dir=sr, sc_dir=sc)
    assert counts["ok"] == 2 and counts["export_failed"] == 0
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    assert len(list(sr.iterdir())) == 2 and len(list(sc.iterdir())) == 2
    for source in sources:
        row = rows[str(source)]
        want = pydicom.dcmread(source)
        for column in ("sr_path", "sc_path"):
            written = pydicom.dcmread(row[column])
            assert (written.PatientID, written.StudyInstanceUID) == (want.PatientID, want.StudyInstanceUID)
            assert want.SOPInstanceUID in row[column]  # named after the source image
    assert rows[str(sources[0])]["sr_path"] != rows[str(sources[1])]["sr_path"]
    # A rerun of the same inputs rewrites its own files (no new ones, no refusal).
    counts = run_batch(discover_inputs([str(root)]), out, progress=False, sr_dir=sr, sc_dir=sc)
    assert counts["export_failed"] == 0 and len(list(sr.iterdir())) == 2


def test_an_existing_file_of_another_patient_is_never_overwritten(tmp_path, two_patients, capsys):
    import pydicom

    root, sources = two_patients
    out, sr = tmp_path / "o.jsonl", tmp_path / "sr"
    run_batch(discover_inputs([str(root)]), out, progress=False, sr_dir=sr)
    recs = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    mine, theirs = recs[str(sources[0])]["sr_path"], recs[str(sources[1])]["sr_path"]
    Path(mine).write_bytes(Path(theirs).read_bytes())  # patient B's SR where A's would go
    assert cli.main(["predict", str(root), "--out", str(out), "--sr-dir", str(sr)]) == cli.EXIT_PARTIAL
    assert "1 DICOM export(s) failed" in capsys.readouterr().err
    recs = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert recs[str(sources[0])]["sr_path"] is None
    assert any("belongs to another patient" in q and "not overwritten" in q for q in recs[str(sources[0])]["qc"])
    assert "PAT-B" not in " ".join(recs[str(sources[0])]["qc"])  # identifiers are compared, not quoted
    assert pydicom.dcmread(mine).PatientID == "PAT-B"  # left as it was


# --- output integrity ---------------------------------------------------------------------------
def test_a_csv_row_cut_by_an_interruption_is_redone(folder, direct_only, tmp_path):
    items = discover_inputs([str(folder)])
    out = tmp_path / "out.csv"
    run_batch(items[:3], out, progress=False)
    data = out.read_bytes()
    out.write_bytes(data[:-25])  # the third row cut mid-way, as by a crash
    assert done_paths(out) == {items[0].path, items[1].path}
    counts = run_batch(items, out, resume=True, progress=False)
    assert counts["skipped"] == 2 and sum(counts[k] for k in ("ok", "error", "rejected")) == len(items) - 2
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [i.path for i in items]
    assert all(len(r) == len(batch.columns()) and None not in r.values() for r in rows)  # every row whole


def test_a_csv_row_cut_inside_a_quoted_newline_is_seen_as_cut(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text('path,status,reason\na.png,ok,""\nb.png,error,"first line\n')
    assert done_paths(out) == {"a.png"}
    with RecordWriter(out, append=True) as w:
        w.write({"path": "b.png", "status": "error", "reason": "two\nlines"})
    assert [r["path"] for r in csv.DictReader(out.open(newline=""))] == ["a.png", "b.png"]


def test_damage_before_the_last_record_is_refused_not_guessed_at(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("path,status,reason\na.png,ok,\nb.png,ok\nc.png,ok,\n")
    with pytest.raises(batch.UsageError, match="damaged at line 3"):
        RecordWriter(out, append=True)
    assert out.read_text().count("\n") == 4  # untouched


def test_a_write_failure_is_a_clear_error_and_the_rows_so_far_stay_whole(folder, direct_only, tmp_path,
                                                                         monkeypatch, capsys):
    import errno

    out = tmp_path / "out.csv"
    real_write, calls = os.write, []

    def disk_full(fd, data):  # the second record: half written, then no space
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(out):
            calls.append(fd)
            if len(calls) == 2:
                real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full)
    code = cli.main(["predict", str(folder), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_OUTPUT_FAILED and "No space left on device" in err and "--resume" in err
    assert "Traceback" not in err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and out.read_text().endswith("\n")
    monkeypatch.setattr(os, "write", real_write)
    assert cli.main(["predict", str(folder), "--out", str(out), "--quiet", "--resume"]) == cli.EXIT_PARTIAL
    assert len(list(csv.DictReader(out.open()))) == 4


def test_a_second_run_on_the_same_output_is_refused(folder, direct_only, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    with batch.OutputLock(out) as lock:
        assert cli.main(["predict", str(folder), "--out", str(out)]) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert str(lock.path) in err and f"pid {os.getpid()}" in err and "another run" in err
    assert not out.exists() and not lock.path.exists()  # nothing written; the lock file is gone after


def test_a_stale_lock_of_a_dead_run_is_taken_over(folder, direct_only, tmp_path, capsys):
    out = tmp_path / "out.csv"
    Path(f"{out}.lock").write_text(json.dumps({"pid": 2**22 + 17, "host": "old-host", "started": "2024-01-01"}))
    assert cli.main(["predict", str(folder), "--out", str(out)]) == cli.EXIT_PARTIAL
    err = capsys.readouterr().err
    assert "took over the lock" in err and "old-host" in err
    assert len(list(csv.DictReader(out.open()))) == 4 and not Path(f"{out}.lock").exists()


@pytest.mark.parametrize("where", ["missing/out.csv", "afile/out.csv", "afolder.csv"])
def test_an_output_that_cannot_be_written_is_a_usage_error(folder, direct_only, tmp_path, capsys, where):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder.csv").mkdir()
    assert cli.main(["predict", str(folder), "--out", str(tmp_path / where)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("boneage predict: output") and "Traceback" not in err


def test_ctrl_c_leaves_a_valid_resumable_output(folder, direct_only, tmp_path, capsys):
    calls = []
    predict = direct_only.direct.predict

    def interrupted(pixels, sex=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return predict(pixels, sex)

    direct_only.direct.predict = interrupted
    out = tmp_path / "out.csv"
    assert cli.main(["predict", str(folder), "--out", str(out), "--quiet"]) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert not Path(f"{out}.lock").exists()
    first = list(csv.DictReader(out.open()))
    assert 1 <= len(first) < 4
    direct_only.direct.predict = predict
    assert cli.main(["predict", str(folder), "--out", str(out), "--quiet", "--resume"]) == cli.EXIT_PARTIAL
    assert [r["path"] for r in csv.DictReader(out.open())] == [i.path for i in discover_inputs([str(folder)])]


def test_device_without_cuda_is_refused_before_any_work(folder, direct_only, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out.csv"
    assert cli.main(["predict", str(folder), "--out", str(out), "--device", "cuda"]) == cli.EXIT_USAGE
    assert "CUDA is not available" in capsys.readouterr().err and not out.exists()
    assert cli.main(["predict", str(folder), "--out", str(out), "--device", "banana"]) == cli.EXIT_USAGE
    assert "not a device" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_below_one_is_a_usage_error(folder, direct_only, tmp_path, capsys, workers):
    assert cli.main(["predict", str(folder), "--out", str(tmp_path / "o.csv"), "--workers", workers]) == cli.EXIT_USAGE
    assert "--workers must be at least 1" in capsys.readouterr().err
    with pytest.raises(batch.UsageError):
        run_batch([InputItem("x.png")], tmp_path / "o.csv", workers=int(workers), progress=False)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_redoes_failures_of_the_run_but_not_bad_files(folder, tmp_path, monkeypatch, suffix):
    class Broken(FakeDirect):
        def predict(self, pixels, sex=None):
            raise RuntimeError("CUDA error: device-side assert")

    items = discover_inputs([str(folder)])  # empty.dcm, hand.png, notes.txt, IM0001
    out = tmp_path / f"out{suffix}"
    broken = BoneAgeEstimator(None, None, Broken(), versions={"direct": "fake"})
    no_model = BoneAgeEstimator(None, None, None, load_errors={"direct": "RuntimeError: CUDA out of memory"})

    class Failing(BoneAgeEstimator):
        def estimate(self, source, **kwargs):
            return (no_model if str(source).endswith("IM0001") else broken).estimate(source, **kwargs)

    run_batch(items, out, estimator=Failing(), progress=False)
    before = {r["path"]: r for r in _rows(out)}
    assert before[items[1].path]["reason"].startswith("estimation failed")  # hand.png: the run's fault
    assert before[items[3].path]["reason"].startswith("no bone-age model is available")  # IM0001: likewise
    assert batch.is_run_failure(before[items[1].path]) and batch.is_run_failure(before[items[3].path])
    assert not batch.is_run_failure(before[items[0].path])  # empty.dcm: the file's fault
    good = BoneAgeEstimator(None, None, FakeDirect(100.0), versions={"direct": "fake"})
    counts = run_batch(items, out, estimator=good, progress=False, resume=True)
    assert counts["redone"] == 2 and counts["skipped"] == 2 and counts["ok"] == 2
    after = {r["path"]: r for r in _rows(out)}
    assert len(_rows(out)) == 4 and after[items[1].path]["status"] == after[items[3].path]["status"] == "ok"
    assert after[items[0].path] == before[items[0].path]


def test_resume_with_other_columns_is_refused(folder, direct_only, tmp_path):
    out = tmp_path / "out.csv"
    run_batch([InputItem(str(folder / "a" / "hand.png"))], out, progress=False)
    with pytest.raises(batch.UsageError, match="other columns"):
        run_batch([InputItem(str(folder / "a" / "hand.png"))], out, progress=False, resume=True, keep_identifiers=True)


def _rows(out) -> list[dict]:
    if str(out).endswith(".csv"):
        return list(csv.DictReader(open(out, newline="")))
    return [json.loads(line) for line in open(out)]


# --- inputs -------------------------------------------------------------------------------------
def test_the_same_file_twice_is_one_record_and_said(folder, direct_only, tmp_path, capsys):
    hand = str(folder / "a" / "hand.png")
    notes: list[str] = []
    items = discover_inputs([hand, str(folder), hand, str(folder / "a" / ".." / "a" / "hand.png")], notes=notes)
    assert [i.path for i in items].count(hand) == 1 and len(items) == 4
    assert len(notes) == 3 and any("given twice" in n for n in notes) and any("same file as" in n for n in notes)
    out = tmp_path / "o.csv"
    assert cli.main(["predict", hand, hand, "--out", str(out)]) == cli.EXIT_OK
    assert "given twice; one record" in capsys.readouterr().err
    assert len(list(csv.DictReader(out.open()))) == 1


def test_manifest_bad_values_are_reported_never_silently_used_or_dropped(folder, direct_only, tmp_path,
                                                                         monkeypatch):
    cases = tmp_path / "cases"
    (cases / "films").mkdir(parents=True)
    Image.open(folder / "a" / "hand.png").save(cases / "films" / "one.png")
    Image.open(folder / "a" / "hand.png").save(cases / "films" / "two.png")
    manifest = cases / "m.csv"
    manifest.write_text(
        "path,sex,chronological_age_months\n"
        "  films/one.png  ,F,-5\n"        # line 2: padded path, negative age
        "films/two.png,X,abc\n"           # line 3: unknown sex, age not a number
        ",F,100\n"                        # line 4: no path
        ",,\n"                            # line 5: an empty line of a spreadsheet: skipped
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths are the manifest's, not the working directory's
    out = tmp_path / "o.jsonl"
    run_batch(discover_inputs([], str(manifest)), out, progress=False)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in recs] == ["films/one.png", "films/two.png", ""]
    one, two, empty = recs
    assert one["status"] == "ok" and one["sex"] == "F" and one["chronological_age_months"] is None
    assert any("line 2" in q and "-5" in q and "not used" in q for q in one["qc"])
    assert two["status"] == "ok" and two["sex"] is None and two["sex_source"] == "unknown (manifest)"
    assert any("line 3" in q and "'X'" in q and "unknown sex" in q for q in two["qc"])
    assert any("line 3" in q and "'abc'" in q for q in two["qc"])
    assert empty["status"] == "error" and "line 4" in empty["reason"] and "empty path" in empty["reason"]
    assert "nan" not in out.read_text()
    counts = run_batch(discover_inputs([], str(manifest)), out, progress=False, resume=True)
    assert counts["skipped"] == 3 and len(out.read_text().splitlines()) == 3  # the no-path line is done too


#: Columns the per-bone method and the combined estimate added to the CSV.
NEW_COLUMNS = ["perbone_age_months", "perbone_lower_90", "perbone_upper_90", "perbone_sds", "combined_age_months",
               "combined_lower_90", "combined_upper_90", "combined_sds", "perbone_rus_age_months",
               "perbone_carpal_age_months"]


def test_csv_has_the_per_bone_and_combined_columns(folder, direct_only, tmp_path):
    from boneage.estimate import MethodEstimate

    out = tmp_path / "out.csv"
    run_batch([InputItem(str(folder / "a" / "hand.png"))], out, progress=False)
    header = next(csv.reader(out.open()))
    assert header == batch.columns() and set(NEW_COLUMNS) <= set(header)
    assert header.index("direct_sds") < header.index("perbone_age_months")  # the older columns keep their places
    result = direct_only.estimate(str(folder / "a" / "hand.png"))
    result.perbone = MethodEstimate("perbone", True, 110.0, 95.0, 125.0, sds=0.4)
    result.combined = MethodEstimate("combined", True, 104.0, 92.0, 116.0, sds=-0.1)
    result.perbone_rus = MethodEstimate("perbone_rus", True, 112.0, 96.0, 128.0)
    result.perbone_carpal = MethodEstimate("perbone_carpal", True, 90.0, 70.0, 110.0)
    row = batch.record(result, "csv")
    assert [row[c] for c in NEW_COLUMNS] == [110.0, 95.0, 125.0, 0.4, 104.0, 92.0, 116.0, -0.1, 112.0, 90.0]
    assert list(row) == batch.columns()


def test_resuming_a_csv_of_the_older_column_set_is_refused_clearly(folder, direct_only, tmp_path):
    out = tmp_path / "out.csv"
    run_batch([InputItem(str(folder / "a" / "hand.png"))], out, progress=False)
    rows = list(csv.DictReader(out.open()))
    older = [c for c in batch.columns() if c not in NEW_COLUMNS]
    with out.open("w", newline="") as f:  # the file an earlier version wrote
        writer = csv.DictWriter(f, older, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    before = out.read_bytes()
    with pytest.raises(batch.UsageError, match="earlier version of boneage.*perbone_age_months.*new output file"):
        run_batch(discover_inputs([str(folder)]), out, progress=False, resume=True)
    assert out.read_bytes() == before  # left as it was

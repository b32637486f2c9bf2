"""``boneage serve``: the DICOM node, against a pynetdicom stand-in PACS and a real Orthanc.

Everything listens and connects on 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

pynetdicom = pytest.importorskip("pynetdicom")
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    ComprehensiveSRStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    Verification,
)

from boneage import serve  # noqa: E402
from boneage.batch import UsageError  # noqa: E402
from boneage.estimate import BoneAgeEstimator  # noqa: E402
from boneage.synth import generate_hand, write_dicom  # noqa: E402
from orthanc_helper import HOST, Orthanc, free_port  # noqa: E402
from test_estimate import FakeDirect  # noqa: E402

CHEST = Path(__file__).parent / "data" / "RG1_J2KI.dcm"


class Pacs:
    """A stand-in PACS: a Storage SCP on loopback that keeps what it receives."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[pydicom.Dataset] = []
        self.server = None

    def start(self) -> Pacs:
        ae = AE(ae_title="PACS")
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)

        def on_store(event):
            self.received.append(event.dataset)
            return 0x0000

        self.server = ae.start_server((HOST, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def wait_for(self, n: int, timeout_s: float = 30.0) -> list[pydicom.Dataset]:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received


@pytest.fixture()
def pacs():
    p = Pacs().start()
    yield p
    p.stop()


def fake_estimator(age: float = 100.0) -> BoneAgeEstimator:
    return BoneAgeEstimator(None, None, FakeDirect(age), versions={"direct": "fake"})


def settings(tmp_path: Path, pacs_port: int, **kwargs) -> serve.ServeSettings:
    values = {"port": 0, "destination": f"PACS@{HOST}:{pacs_port}", "results": str(tmp_path / "results.csv"),
              "retry_initial_s": 0.2, "retry_max_s": 0.5, "network_timeout_s": 5.0} | kwargs
    return serve.load_settings(None, values)


@pytest.fixture(scope="module")
def hands(tmp_path_factory) -> list[Path]:
    """Two synthetic hand DICOMs (never real films) of two patients, in two studies. The second has
    the first's pixels, so a node with the shipped models reads it warm (same film size)."""
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("hands")
    first, second = folder / "hand0.dcm", folder / "hand1.dcm"
    write_dicom(generate_hand(2101, 0, size=256), first)
    ds = pydicom.dcmread(first)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = "SYNTH-OTHER-PATIENT", "SYNTHETIC^OTHER"
    ds.save_as(second, enforce_file_format=True)
    return [first, second]


def scu(port: int, *sop_classes: str | tuple[str, str]):
    """An association from a modality (AET MODALITY) to the node; a SOP class alone is proposed with
    Explicit VR Little Endian, a ``(SOP class, transfer syntax)`` pair with that syntax."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    for item in sop_classes:
        sop_class, syntax = item if isinstance(item, tuple) else (item, ExplicitVRLittleEndian)
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(HOST, port, ae_title="BONEAGE")
    assert assoc.is_established
    return assoc


def records(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


def wait_until(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _referenced_sops(sr: pydicom.Dataset) -> set[str]:
    return {ref.ReferencedSOPInstanceUID for ev in sr.CurrentRequestedProcedureEvidenceSequence
            for series in ev.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}


# ---------------------------------------------------------------------------------------------
def test_a_hand_gets_its_sr_a_chest_and_bad_input_get_records_and_the_node_keeps_serving(tmp_path, pacs, hands):
    s = settings(tmp_path, pacs.port, sc=True)
    node = serve.DicomNode(s, fake_estimator()).start()
    try:
        chest_syntax = pydicom.dcmread(CHEST, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assoc = scu(node.port, DigitalXRayImageStorageForPresentation, ("1.2.840.10008.5.1.4.1.1.1", chest_syntax))
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(pydicom.dcmread(hands[0])).Status == 0x0000
        # A chest CR (JPEG 2000, as stored) and a dataset whose pixel data is garbage.
        assert assoc.send_c_store(pydicom.dcmread(CHEST)).Status == 0x0000
        broken = pydicom.dcmread(hands[1])
        broken.PixelData = b"\x00\x01" * 7  # far too short for Rows x Columns
        assert assoc.send_c_store(broken).Status == 0x0000
        assoc.release()
        # A peer that speaks no DICOM at all: the association dies, the node does not.
        import socket

        with socket.create_connection((HOST, node.port), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
            raw.settimeout(5)
            try:
                raw.recv(100)
            except OSError:
                pass
        assert wait_until(lambda: len(records(Path(s.results))) == 3)
        received = pacs.wait_for(2)  # the hand's SR and SC
        again = scu(node.port)
        assert again.send_c_echo().Status == 0x0000  # still serving
        again.release()
    finally:
        node.stop()
    rows = records(Path(s.results))
    assert [r["status"] for r in rows] == ["ok", "rejected", "error"]
    assert all(r["path"].startswith("dicom://MODALITY/") for r in rows) and len({r["path"] for r in rows}) == 3
    assert "CHEST" in rows[1]["reason"] and rows[2]["reason"]
    assert rows[0]["sr_path"] and rows[0]["sc_path"] and not rows[1]["sr_path"] and not rows[2]["sr_path"]
    src = pydicom.dcmread(hands[0], stop_before_pixels=True)
    by_class = {ds.SOPClassUID: ds for ds in received}
    assert set(by_class) == {ComprehensiveSRStorage, SecondaryCaptureImageStorage}  # only for the hand
    sr = by_class[ComprehensiveSRStorage]
    assert (sr.StudyInstanceUID, sr.PatientID) == (src.StudyInstanceUID, src.PatientID)
    assert _referenced_sops(sr) == {src.SOPInstanceUID}
    assert "37362-1" in str(sr) and "100" in str(sr)
    assert "TEST" not in Path(s.results).read_text() and src.PatientID not in Path(s.results).read_text()
    assert list((s.spool_dir / "incoming").iterdir()) == [] and list((s.spool_dir / "outbox").iterdir()) == []


class Crash(BaseException):
    """Ends the worker thread mid-film, as a killed process would."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated crash
def test_results_wait_on_disk_until_delivered_and_survive_a_restart(tmp_path, hands):
    pacs = Pacs()  # not started: the destination is down
    s = settings(tmp_path, pacs.port)
    calls = []

    class CrashSecond(FakeDirect):
        def predict(self, pixels, sex=None):
            calls.append(1)
            if len(calls) == 2:
                raise Crash
            return super().predict(pixels, sex)

    node = serve.DicomNode(s, BoneAgeEstimator(None, None, CrashSecond(90.0), versions={"direct": "fake"})).start()
    try:
        assoc = scu(node.port, DigitalXRayImageStorageForPresentation)
        for hand in hands:
            assert assoc.send_c_store(pydicom.dcmread(hand)).Status == 0x0000
        assoc.release()
        outbox = s.spool_dir / "outbox"
        assert wait_until(lambda: len(records(Path(s.results))) == 1 and len(calls) == 2)
        time.sleep(0.6)  # a few failed sends
        assert len(list(outbox.glob("*.sr.dcm"))) == 1  # kept, not lost
    finally:
        node.stop(timeout_s=10)
    assert len(list((s.spool_dir / "incoming").glob("*.dcm"))) == 1  # the film the crash cut

    pacs.start()
    node = serve.DicomNode(s, fake_estimator(90.0)).start()
    try:
        received = pacs.wait_for(2)
        assert wait_until(lambda: len(records(Path(s.results))) == 2)
    finally:
        node.stop()
        pacs.stop()
    rows = records(Path(s.results))
    assert [r["status"] for r in rows] == ["ok", "ok"] and len({r["path"] for r in rows}) == 2
    sources = {pydicom.dcmread(h, stop_before_pixels=True).SOPInstanceUID for h in hands}
    assert set().union(*(_referenced_sops(ds) for ds in received)) == sources  # one SR per hand, none twice
    assert len(received) == 2 and list(outbox.iterdir()) == []


def test_the_queue_is_bounded_and_a_full_one_is_answered_out_of_resources(tmp_path, pacs, hands):
    release = threading.Event()

    class Slow(FakeDirect):
        def predict(self, pixels, sex=None):
            release.wait(20)
            return super().predict(pixels, sex)

    s = settings(tmp_path, pacs.port, max_queue=1)
    node = serve.DicomNode(s, BoneAgeEstimator(None, None, Slow(80.0), versions={"direct": "fake"})).start()
    try:
        assoc = scu(node.port, DigitalXRayImageStorageForPresentation)
        assert assoc.send_c_store(pydicom.dcmread(hands[0])).Status == 0x0000
        assert assoc.send_c_store(pydicom.dcmread(hands[1])).Status == serve.STATUS_OUT_OF_RESOURCES
        release.set()
        assert wait_until(lambda: len(records(Path(s.results))) == 1)
        assert assoc.send_c_store(pydicom.dcmread(hands[1])).Status == 0x0000  # room again
        assoc.release()
        assert wait_until(lambda: len(records(Path(s.results))) == 2)
    finally:
        release.set()
        node.stop()


def test_it_accepts_the_transfer_syntaxes_the_reader_decodes(tmp_path, pacs):
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, MPEG2MPML, RLELossless

    accepted = serve.readable_transfer_syntaxes()
    assert {JPEG2000Lossless, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian} <= set(accepted)
    assert MPEG2MPML not in accepted
    node = serve.DicomNode(settings(tmp_path, pacs.port), fake_estimator()).start()
    try:
        ae = AE(ae_title="MODALITY")
        for syntax in (JPEG2000Lossless, JPEGLSLossless, RLELossless, MPEG2MPML):
            ae.add_requested_context(DigitalXRayImageStorageForPresentation, syntax)
        assoc = ae.associate(HOST, node.port, ae_title="BONEAGE")
        agreed = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
        assoc.release()
    finally:
        node.stop()
    assert agreed == {JPEG2000Lossless, JPEGLSLossless, RLELossless}


def test_only_the_calling_aets_given_may_send_and_identifiers_only_on_request(tmp_path, pacs, hands):
    s = settings(tmp_path, pacs.port, calling_aets=["MODALITY"], keep_identifiers=True)
    node = serve.DicomNode(s, fake_estimator()).start()
    try:
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(Verification)
        refused = stranger.associate(HOST, node.port, ae_title="BONEAGE")
        assert not refused.is_established
        assoc = scu(node.port, DigitalXRayImageStorageForPresentation)
        assert assoc.send_c_store(pydicom.dcmread(hands[0])).Status == 0x0000
        assoc.release()
        assert wait_until(lambda: len(records(Path(s.results))) == 1)
    finally:
        node.stop()
    [row] = records(Path(s.results))
    src = pydicom.dcmread(hands[0], stop_before_pixels=True)
    assert (row["PatientID"], row["SOPInstanceUID"]) == (src.PatientID, src.SOPInstanceUID)


def test_settings_from_toml_then_flags_all_checked(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'[serve]\naet = "BA1"\nport = 11113\ndestination = "PACS@pacs.local:104"\n'
                      f'results = "{tmp_path / "r.jsonl"}"\nsc = true\ncalling_aets = ["CR1"]\nretry_max_s = 60\n')
    s = serve.load_settings(config, {"port": 4000, "aet": None})
    assert (s.aet, s.port, s.sc, s.calling_aets, s.retry_max_s) == ("BA1", 4000, True, ["CR1"], 60.0)
    assert s.destination_parts() == ("PACS", "pacs.local", 104)
    assert s.spool_dir == Path(f"{tmp_path / 'r.jsonl'}.spool")
    for text, message in ((f'{config.read_text()}colour = "red"\n', "unknown setting 'colour'"),
                          (config.read_text().replace("11113", '"x"'), "expected int"),
                          (config.read_text().replace("PACS@pacs.local:104", "pacs:104"), "AET@HOST:PORT"),
                          (config.read_text().replace('"BA1"', '"A_TITLE_FAR_TOO_LONG"'), "1-16")):
        config.write_text(text)
        with pytest.raises(UsageError, match=message):
            serve.load_settings(config)
    with pytest.raises(UsageError, match="not found"):
        serve.load_settings(tmp_path / "none.toml")


def test_sigterm_stops_the_node_gracefully(tmp_path, pacs):
    node = serve.DicomNode(settings(tmp_path, pacs.port), fake_estimator())
    ready = threading.Event()
    answers = []

    def echo_then_terminate() -> None:
        wait_until(lambda: node.port is not None, 20)
        assoc = scu(node.port)
        answers.append(assoc.send_c_echo().Status)
        assoc.release()
        os.kill(os.getpid(), signal.SIGTERM)
        ready.set()

    threading.Thread(target=echo_then_terminate, daemon=True).start()
    previous = signal.getsignal(signal.SIGTERM)
    node.run()  # returns once SIGTERM arrives
    assert ready.wait(5) and answers == [0x0000]
    assert signal.getsignal(signal.SIGTERM) == previous
    assert not Path(f"{tmp_path / 'results.csv'}.lock").exists()  # released: a restart may take it


# ---------------------------------------------------------------------------------------------
# A real PACS: Orthanc routes hands to `boneage serve` (the CLI, the shipped models) and gets SRs back.
# ---------------------------------------------------------------------------------------------
def _start_node(config: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "boneage.cli", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT)


def test_orthanc_routes_a_hand_to_the_node_and_its_sr_comes_back_into_the_study(tmp_path, hands):
    node_port = free_port()
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", {"boneage": ("BONEAGE", node_port)}).start()
    config = tmp_path / "node.toml"
    results = tmp_path / "results.csv"
    config.write_text(f'port = {node_port}\ndestination = "{orthanc.aet}@{HOST}:{orthanc.dicom_port}"\n'
                      f'results = "{results}"\nretry_initial_s = 0.5\nretry_max_s = 2.0\n')
    log = tmp_path / "node.log"
    node = _start_node(config, log)
    try:
        assert wait_until(lambda: orthanc.echo("boneage"), 60), log.read_text()
        ids = {path.name: orthanc.upload(path) for path in (hands[0], CHEST)}
        for name in ids:  # as a routing rule would: Orthanc C-STOREs each to the node
            orthanc.send_to("boneage", ids[name])
        node.kill()  # a crash right after the images were taken: they wait in the spool
        node.wait(10)
        restarted = time.monotonic()
        node = _start_node(config, log)

        def srs(path: Path) -> list[dict]:
            uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
            return [i for i in orthanc.study_instances(uid) if i["Modality"] == "SR"]

        assert wait_until(lambda: srs(hands[0]), 120), log.read_text()[-3000:]
        print(f"\nrestart -> first SR in Orthanc: {time.monotonic() - restarted:.1f} s (models loaded, cold)")
        # Warm: the time from a hand's C-STORE into Orthanc to its SR in Orthanc.
        start = time.monotonic()
        orthanc.send_to("boneage", orthanc.upload(hands[1]))
        assert wait_until(lambda: srs(hands[1]), 60), log.read_text()[-3000:]
        seconds = time.monotonic() - start
        print(f"C-STORE into Orthanc -> SR in Orthanc: {seconds:.1f} s (warm node, 256 px synthetic hand)")
        assert seconds < 60
        assert wait_until(lambda: len(records(results)) == 3, 30)
        for hand in hands:
            [found] = srs(hand)
            sr = pydicom.dcmread(io.BytesIO(orthanc.file(found["ID"])))
            src = pydicom.dcmread(hand, stop_before_pixels=True)
            assert (sr.StudyInstanceUID, sr.PatientID, str(sr.PatientName)) == (
                src.StudyInstanceUID, src.PatientID, str(src.PatientName))
            assert _referenced_sops(sr) == {src.SOPInstanceUID} and "37362-1" in str(sr)
        assert srs(CHEST) == []  # a chest film gets no SR
        node.send_signal(signal.SIGTERM)
        assert node.wait(60) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)
        orthanc.stop()
    rows = records(results)
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "rejected"]  # one record each, none twice
    assert "stopped" in log.read_text()

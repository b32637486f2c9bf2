"""A real PACS for the tests: Orthanc (Debian's ``orthanc`` package) on loopback, free ports, a
temporary configuration and storage; ``.ci/run`` installs it. Tests skip with the reason where it
is missing. Only 127.0.0.1 is ever contacted, and every wait is bounded in time."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

#: Where Debian's orthanc-dicomweb package puts the plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def orthanc_or_skip(dicomweb: bool = False) -> str:
    """The Orthanc binary, or a skip saying why it is not there."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if binary is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does it as root)")
    if dicomweb and not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; apt-get install orthanc-dicomweb)")
    return binary


class Orthanc:
    """One Orthanc server on loopback, for one test module.

    Args:
        folder: its storage, configuration and log.
        modalities: name -> ``(AET, port)`` of DICOM nodes on 127.0.0.1 it may send to and accept
            from (only those: ``DicomAlwaysAllowStore`` is off).
        dicomweb: load the DICOMweb plugin.
    """

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, int]] | None = None,
                 dicomweb: bool = False) -> None:
        self.binary = orthanc_or_skip(dicomweb)
        self.folder = folder
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = "ORTHANC"
        self.url = f"http://{HOST}:{self.http_port}"
        config: dict[str, Any] = {
            "Name": "boneage-test",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,  # HTTP from loopback only
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": False,  # DICOM only from the modalities below, checked by host too
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {
                name: {"AET": aet, "Host": HOST, "Port": port, "AllowEcho": True, "AllowStore": True}
                for name, (aet, port) in (modalities or {}).items()
            },
            "DicomScuTimeout": 10,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StorageCompression": False,
            "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/", "EnableWado": False},
        }
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))
        self.log = folder / "orthanc.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> Orthanc:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.folder)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Orthanc exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"Orthanc did not answer in {timeout_s} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def request(self, method: str, path: str, body: bytes | dict | list | None = None,
                content_type: str = "application/json", timeout_s: float = 60.0) -> Any:
        """One REST call; JSON answers are decoded."""
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type} if data is not None else {})
        with urllib.request.urlopen(req, timeout=timeout_s) as answer:
            raw = answer.read()
            if "json" in answer.headers.get("Content-Type", ""):
                return json.loads(raw)
            return raw

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, dicom: Path) -> str:
        """Store a DICOM file in Orthanc (as a modality would); returns its instance id."""
        return self.request("POST", "/instances", dicom.read_bytes(), "application/dicom")["ID"]

    def study_id(self, study_uid: str) -> str:
        found = self.request("POST", "/tools/lookup", study_uid.encode(), "text/plain")
        return next(f["ID"] for f in found if f["Type"] == "Study")

    def study_instances(self, study_uid: str) -> list[dict]:
        """Every instance of a study, each with its series' Modality added."""
        out = []
        for series in self.get(f"/studies/{self.study_id(study_uid)}/series"):
            for instance in self.get(f"/series/{series['ID']}/instances"):
                instance["Modality"] = series["MainDicomTags"].get("Modality")
                out.append(instance)
        return out

    def file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")

    def send_to(self, modality: str, instance_id: str) -> None:
        """Orthanc C-STOREs an instance to a modality (as a PACS routing rule would); waits for it."""
        self.request("POST", f"/modalities/{modality}/store", {"Resources": [instance_id], "Synchronous": True})

    def echo(self, modality: str) -> bool:
        try:
            self.request("POST", f"/modalities/{modality}/echo", {}, timeout_s=15)
            return True
        except (urllib.error.HTTPError, OSError):
            return False

"""Studies from a DICOMweb server (QIDO-RS to list, WADO-RS to fetch) as batch inputs.

``boneage predict --dicomweb URL --study UID`` lists each study's instances, fetches the images
into a local folder, and gives one :class:`~boneage.batch.InputItem` per instance, keyed by its
WADO-RS URL, so records, ``--resume`` and ``--sr-dir`` work exactly as for files. A study that
cannot be listed gets one ``error`` record naming it; non-image objects (structured reports,
presentation states, documents) are skipped and said.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from boneage.batch import InputItem, UsageError

#: Seconds to wait for a DICOMweb server's answer (connect, then each read).
TIMEOUT_S = (10.0, 120.0)
#: Tries of one request before its study or instance gets an error record.
RETRY_ATTEMPTS = 3
#: SOP class prefixes that are never radiographs: SR, presentation states, encapsulated documents,
#: key objects. Our own SR, sent back to the PACS by ``boneage serve``, is one of them.
NON_IMAGE_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",   # structured reports and key object selection
    "1.2.840.10008.5.1.4.1.1.11.",   # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA/...
    "1.2.840.10008.5.1.4.1.1.66",    # raw data, registration, segmentation spaces
)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

_STUDY_COLUMNS = ("study", "study_uid", "StudyInstanceUID")


def read_study_list(path: str | Path) -> list[tuple[str, str | None]]:
    """Study UIDs from a file: one per line (``#`` comments), or a CSV with a ``study`` column.

    Args:
        path: the file.

    Returns:
        ``(uid, problem)`` per line with a value; ``problem`` names the line when the value is
        not a UID (its record will say so), else ``None``.

    Raises:
        UsageError: the file is missing or unreadable, or a CSV header names no study column.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"study list {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"study list {path} cannot be read ({exc})") from None
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    values: list[tuple[int, str]]
    if "," in first or first in _STUDY_COLUMNS:
        header = [h.strip() for h in next(csv.reader([first]))]
        column = next((c for c in _STUDY_COLUMNS if c in header), None)
        if column is None:
            raise UsageError(f"study list {path} has no study column ({' or '.join(_STUDY_COLUMNS)})")
        index = header.index(column)
        values = [(n, row[index] if index < len(row) else "")
                  for n, row in enumerate(csv.reader(lines[1:]), start=2)]
    else:
        values = list(enumerate(lines, start=1))
    studies = []
    for number, value in values:
        uid = value.split("#", 1)[0].strip()
        if not uid:
            continue
        problem = None if _valid_uid(uid) else f"study list {path} line {number}: {uid!r} is not a DICOM UID"
        studies.append((uid, problem))
    return studies


def _valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and bool(_UID.match(uid))


def _client(url: str) -> Any:
    """A DICOMweb client with a timeout on every request and a short, bounded retry (3 tries,
    1 then 2 s apart) for a server that is down or busy."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url, timeout=TIMEOUT_S)
    client.set_http_retry_params(max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=500)
    return client


def _value(attrs: dict[str, Any], tag: str) -> str:
    values = (attrs.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def instance_url(url: str, study: str, series: str, sop: str) -> str:
    """The WADO-RS URL of an instance: its record's ``path``."""
    return f"{url.rstrip('/')}/studies/{study}/series/{series}/instances/{sop}"


def fetch_studies(url: str, studies: Iterable[tuple[str, str | None]], folder: str | Path,
                  skip: set[str] | frozenset[str] = frozenset(),
                  notes: list[str] | None = None) -> list[InputItem]:
    """List and fetch the images of DICOMweb studies into ``folder``.

    Args:
        url: the DICOMweb root (e.g. ``http://pacs:8042/dicom-web``).
        studies: ``(StudyInstanceUID, problem)`` pairs (see :func:`read_study_list`; ``problem``
            ``None`` for a good UID).
        folder: where the instances are written (``<study>/<series>/<sop>.dcm``): patient data.
        skip: record keys already done (``--resume``): those instances are listed but not fetched.
        notes: receives lines for the user (non-image instances skipped).

    Returns:
        One input per image instance, keyed by its WADO-RS URL; one ``error`` input per study that
        cannot be listed or has no image, and per bad UID.
    """
    items: list[InputItem] = []
    client = None
    for study, problem in studies:
        study_key = f"{url.rstrip('/')}/studies/{study}"
        if problem:
            items.append(InputItem("", error=problem))
            continue
        if client is None:
            client = _client(url)
        try:
            found = client.search_for_instances(study_instance_uid=study)
        except Exception as exc:  # HTTP errors, refused connections, bad answers: this study's record says
            items.append(InputItem(study_key, error=f"DICOMweb: cannot list the study ({_why(exc)})"))
            continue
        images, others = [], 0
        for attrs in found:
            series, sop = _value(attrs, "0020000E"), _value(attrs, "00080018")
            if not (_valid_uid(series) and _valid_uid(sop)):
                continue
            if _value(attrs, "00080016").startswith(NON_IMAGE_SOP_CLASS_PREFIXES):
                others += 1
                continue
            images.append((series, sop))
        if others and notes is not None:
            notes.append(f"{study_key}: {others} non-image instance(s) (reports, presentation states) skipped")
        if not images:
            items.append(InputItem(study_key, error="DICOMweb: the study has no image instance"))
            continue
        for series, sop in sorted(images):
            key = instance_url(url, study, series, sop)
            target = Path(folder) / study / series / f"{sop}.dcm"
            if key not in skip and not target.is_file():
                error = _fetch(client, study, series, sop, target)
                if error:
                    items.append(InputItem(key, error=error))
                    continue
            items.append(InputItem(key, source=str(target)))
    return items


def _fetch(client: Any, study: str, series: str, sop: str, target: Path) -> str | None:
    """Fetch one instance as stored (no transcoding asked) and write it atomically; the error, or None."""
    try:
        dataset = client.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
    except Exception as exc:
        return f"DICOMweb: cannot fetch the instance ({_why(exc)})"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        dataset.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, target)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        return f"DICOMweb: the instance cannot be stored locally ({_why(exc)})"
    return None


def _why(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}".rstrip(": ")


@contextmanager
def study_inputs(url: str, studies: Iterable[str] = (), study_list: str | Path | None = None,
                 cache: str | Path | None = None, skip: set[str] | frozenset[str] = frozenset(),
                 notes: list[str] | None = None) -> Iterator[list[InputItem]]:
    """The inputs of DICOMweb studies, fetched into ``cache`` or a temporary folder removed on exit.

    Args:
        url: the DICOMweb root.
        studies: StudyInstanceUIDs given on the command line.
        study_list: a file of study UIDs (:func:`read_study_list`).
        cache: keep the fetched files here (a rerun then fetches only what is missing).
        skip: record keys already done (not fetched again).
        notes: receives lines for the user.

    Yields:
        The inputs (see :func:`fetch_studies`).

    Raises:
        UsageError: no study given, a bad URL, or an unreadable study list.
    """
    if not re.match(r"^https?://", url):
        raise UsageError(f"--dicomweb {url}: give the server's http:// or https:// DICOMweb root")
    pairs = [(uid.strip(), None if _valid_uid(uid.strip()) else f"--study {uid!r} is not a DICOM UID")
             for uid in studies]
    if study_list:
        pairs += read_study_list(study_list)
    if not pairs:
        raise UsageError("--dicomweb needs --study UID or --studies FILE")
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        yield fetch_studies(url, pairs, cache, skip, notes)
        return
    with tempfile.TemporaryDirectory(prefix="boneage-dicomweb-") as tmp:
        yield fetch_studies(url, pairs, tmp, skip, notes)

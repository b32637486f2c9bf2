"""Batch estimation over files, folders and manifests, written record by record.

Used by ``boneage predict`` (and by nothing else with logic of its own): inputs are discovered,
each is estimated by an engine of :mod:`boneage.engines` (this process, a process pool or Ray
actors; models loaded once per worker), and every record is appended whole and flushed to the
output as soon as it completes, so an interrupted run loses nothing and ``resume`` can skip what
is done. The output is locked for the whole run (``<out>.lock``), so two runs never interleave in
it. ``boneage serve`` writes its records with the same :class:`RecordWriter` and :class:`OutputLock`.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import json
import os
import socket
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boneage import engines
from boneage.engines import EngineUnavailableError, Outcome  # noqa: F401  (part of this module's API)
from boneage.estimate import BoneAgeEstimator, BoneAgeResult
from boneage.io import parse_age_months, parse_sex


class UsageError(ValueError):
    """A problem with the command itself (bad manifest, unsupported output, device, ...)."""


class OutputLockedError(UsageError):
    """Another run is writing the same output file."""


class OutputWriteError(RuntimeError):
    """The output could not be written (disk full, I/O error); the records before it are intact."""


#: Reasons of ``error`` records that the run itself caused, not the input (set in
#: :meth:`boneage.estimate.BoneAgeEstimator.estimate`, and by :mod:`boneage.dicomweb` for a server
#: that did not answer): ``--resume`` redoes them. An unreadable file (an ``ImageReadError``'s
#: reason) is not among them: redoing it would give the same answer. "unexpected error reading"
#: is: it is a reader bug or a lack of memory, not a verdict on the file.
RUN_FAILURE_REASONS = (
    "estimation failed",
    "no bone-age model is available",
    "unexpected error reading the image",
    "DICOMweb: cannot",
)

#: Columns added to every record after the result's own: the DICOM files written for it.
EXPORT_COLUMNS = ("sr_path", "sc_path")


@dataclass(frozen=True)
class InputItem:
    """One input to estimate.

    Attributes:
        path: the path exactly as the user gave it (stripped, for a manifest), or as found under a
            folder they gave; the record's key.
        sex: ``"M"``/``"F"`` from the manifest, ``"unknown"`` to override the header (the
            manifest's value was invalid), or ``None`` (the header is used).
        chronological_age_months: from the manifest, or ``None`` (the header is used).
        source: the file to read when it differs from ``path`` (a manifest's relative path,
            resolved against the manifest's folder); ``None`` means ``path``.
        notes: problems with the manifest's values, copied into the record's ``qc``.
        error: set when the input cannot be estimated at all (an empty manifest path); the
            record is an ``error`` with this reason.
    """

    path: str
    sex: str | None = None
    chronological_age_months: float | None = None
    source: str | None = None
    notes: tuple[str, ...] = ()
    error: str | None = None

    @property
    def file(self) -> str:
        """The file to read."""
        return self.source if self.source is not None else self.path

    @property
    def key(self) -> str:
        """What identifies this input's record in the output (for ``--resume``): its path, or for
        a manifest line without one, the reason naming that line."""
        return self.path if self.path else (self.error or "")


def discover_inputs(inputs: Iterable[str], manifest: str | None = None,
                    notes: list[str] | None = None) -> list[InputItem]:
    """Expand files, folders (recursively, every non-hidden file) and a manifest into inputs.

    A path that does not exist is kept (its record will say "file not found"), so every input
    the user named gets exactly one output record. A file reached twice (named twice, or both
    directly and through its folder, or through a link) gets one record: the first.

    Args:
        inputs: files or folders as given on the command line.
        manifest: CSV with a ``path`` column and optional ``sex``, ``chronological_age_months``.
        notes: when given, receives one line per thing the user should know (duplicates, invalid
            manifest values).

    Returns:
        Inputs in a stable order (folders sorted), duplicates removed.

    Raises:
        UsageError: when the manifest is missing, unreadable or has no ``path`` column.
    """
    items: list[InputItem] = []
    for given in inputs:
        p = Path(given)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        items.append(InputItem(os.path.join(root, name)))
        else:
            items.append(InputItem(given))
    if manifest:
        items.extend(read_manifest(manifest))
    unique: list[InputItem] = []
    first: dict[str, InputItem] = {}
    for item in items:
        if notes is not None:
            notes.extend(item.notes)
        if item.error:  # nothing to compare: each bad manifest line keeps its own record
            unique.append(item)
            continue
        # The real path, so that a/../a/x, a link and the folder's own listing are one file.
        identity = os.path.realpath(item.file)
        if identity in first:
            if notes is not None:
                kept = first[identity]
                notes.append(f"{item.path}: given twice; one record" if item.path == kept.path
                             else f"{item.path}: the same file as {kept.path}; one record (as {kept.path})")
            continue
        first[identity] = item
        unique.append(item)
    return unique


@contextmanager
def predict_inputs(inputs: Iterable[str] = (), manifest: str | None = None, *, dicomweb: str | None = None,
                   studies: Iterable[str] = (), study_list: str | None = None, dicomweb_cache: str | None = None,
                   resume_from: str | Path | None = None, notes: list[str] | None = None) -> Iterator[list[InputItem]]:
    """Every input of a ``predict`` run: files, folders, a manifest and DICOMweb studies.

    Args:
        inputs, manifest, notes: as for :func:`discover_inputs`.
        dicomweb: a DICOMweb root URL; its ``studies`` and ``study_list`` are fetched (see
            :func:`boneage.dicomweb.study_inputs`) into ``dicomweb_cache`` or a temporary folder
            that is removed when the ``with`` block ends.
        resume_from: the output of a run being resumed: instances already recorded there are not
            fetched again.

    Yields:
        The inputs, files first.

    Raises:
        UsageError: a bad manifest, study list or DICOMweb setting.
    """
    items = discover_inputs(inputs, manifest, notes=notes)
    if dicomweb is None:
        if studies or study_list:
            raise UsageError("--study/--studies need --dicomweb URL")
        yield items
        return
    from boneage.dicomweb import study_inputs

    skip = done_paths(resume_from) if resume_from is not None else set()
    with study_inputs(dicomweb, studies, study_list, dicomweb_cache, skip=skip, notes=notes) as fetched:
        yield items + fetched


def read_manifest(path: str) -> list[InputItem]:
    """Read a manifest CSV (``path`` [, ``sex``, ``chronological_age_months``]).

    Relative paths are read from the manifest's folder, but each record's ``path`` stays as
    written (stripped). A bad value is never silently used or dropped: an invalid sex is
    estimated as unknown sex, an invalid age is not used, and the record's ``qc`` says which
    line held what. A line with values but no path becomes an ``error`` record naming the line;
    lines with every cell blank are skipped.

    Args:
        path: the manifest file.

    Returns:
        One :class:`InputItem` per manifest line with a value.

    Raises:
        UsageError: when the manifest is missing, unreadable or has no ``path`` column.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if "path" not in header:
                raise UsageError(f"manifest {path} has no 'path' column (columns: {', '.join(header)})")
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise UsageError(f"manifest {path} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"manifest {path} cannot be read as CSV ({exc})") from None
    base = os.path.dirname(path)
    items = []
    for line, row in rows:
        cells = {name: (row[i] if i < len(row) else "") for i, name in enumerate(header)}
        if not any(str(v).strip() for v in cells.values()):
            continue
        where = f"manifest {path} line {line}"
        written = cells["path"].strip()
        if not written:
            items.append(InputItem("", error=f"{where}: empty path"))
            continue
        notes: list[str] = []
        sex = None
        if "sex" in cells:
            try:
                sex = parse_sex(cells["sex"])
            except ValueError as exc:
                sex = "unknown"  # overrides the header too: the manifest meant to say something else
                notes.append(f"{where}: {exc}; estimated as unknown sex")
        age = None
        if "chronological_age_months" in cells:
            try:
                age = parse_age_months(cells["chronological_age_months"])
            except ValueError as exc:
                notes.append(f"{where}: {exc}; not used (the header's age, if any, is)")
        source = written if os.path.isabs(written) or not base else os.path.join(base, written)
        items.append(InputItem(written, sex, age, source if source != written else None, tuple(notes)))
    return items


# ---------------------------------------------------------------------------------------------
# Checks before any work
# ---------------------------------------------------------------------------------------------
def output_kind(path: str | Path) -> str:
    """``"csv"`` or ``"jsonl"`` from the output file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise UsageError(f"output {path} must end in .csv or .jsonl")


def check_output(path: str | Path) -> None:
    """Refuse an output that cannot be written, before any work.

    Raises:
        UsageError: wrong extension, a folder, a missing or unwritable folder.
    """
    output_kind(path)
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"output {p} is a folder; give a .csv or .jsonl file")
    folder = p.parent
    if not folder.is_dir():
        raise UsageError(f"output {p}: the folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"output {p}: no permission to write there")


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before any work (else every record would be
    an error).

    Raises:
        UsageError: not a device name, or CUDA/MPS not available.
    """
    if device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {device}: not a device ({exc}); use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "" if torch.version.cuda else ", built without CUDA"
            raise UsageError(f"--device {device}: CUDA is not available on this machine "
                             f"(torch {torch.__version__}{built}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise UsageError(f"--device {device}: only cpu, cuda and mps are supported")


def check_run(out: str | Path, *, workers: int = 1, device: str = "cpu", sr_dir: str | Path | None = None,
              sc_dir: str | Path | None = None, engine: str = "local") -> None:
    """Every check of a batch run's settings, so that a bad one fails before any work.

    Raises:
        UsageError: naming the bad setting.
        EngineUnavailableError: the engine's package is not installed.
    """
    try:
        engines.check_engine(engine)
    except ValueError as exc:  # a bad name; a missing package raises EngineUnavailableError (exit 3)
        raise UsageError(str(exc)) from None
    if workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    check_output(out)
    for name, folder in (("--sr-dir", sr_dir), ("--sc-dir", sc_dir)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise UsageError(f"{name} {folder} is a file, not a folder")
    check_device(device)


# ---------------------------------------------------------------------------------------------
# Lock
# ---------------------------------------------------------------------------------------------
class OutputLock:
    """An exclusive lock on an output file for one run, held on ``<out>.lock``.

    The lock is a ``flock`` on that file, which records who holds it (pid, host, start time,
    command). The kernel drops the lock when its process dies, so a lock file left by a crashed
    or killed run is simply taken over (and :attr:`took_over` says whose it was).

    Args:
        out: the output file.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = Path(f"{out}.lock")
        self.took_over: str | None = None
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock.

        Raises:
            OutputLockedError: another live run holds it (the message names the holder).
            UsageError: the lock file cannot be created.
        """
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UsageError(f"output {self.out}: cannot create the lock file {self.path} ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise OutputLockedError(
                    f"output {self.out} is being written by another run ({holder or 'holder unknown'}; "
                    f"lock file {self.path}); wait for it to finish or use another --out") from None
            except OSError as exc:
                os.close(fd)
                raise UsageError(f"output {self.out}: cannot lock {self.path} ({exc.strerror})") from None
            # The holder removes the file as it releases; if it did so between our open and flock,
            # we hold a lock on a deleted file: start again on the current one.
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            self.took_over = _lock_holder(fd) or None  # a live holder's flock would have refused us
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "command": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            self._fd = fd
            return self
        raise UsageError(f"output {self.out}: cannot lock {self.path} (it keeps being replaced)")

    def release(self) -> None:
        """Drop the lock and remove the lock file (removed while still held: see :meth:`acquire`)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """Who a lock file says holds it, in words ("" when it says nothing)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return ""


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def record(result: BoneAgeResult, kind: str, keep_identifiers: bool = False,
           exports: dict[str, str] | None = None) -> dict[str, Any]:
    """The output record of one result (JSON adds the per-bone object).

    Args:
        result: the result.
        kind: ``"csv"`` or ``"jsonl"``.
        keep_identifiers: include patient/study identifiers.
        exports: ``{"sr_path": ..., "sc_path": ...}``: the DICOM files written for this record.

    Returns:
        The record, with every column of :func:`columns` (JSON adds ``bones``).
    """
    row = result.to_row(keep_identifiers=keep_identifiers)
    for column in EXPORT_COLUMNS:
        row[column] = (exports or {}).get(column)
    if kind == "jsonl":
        row["bones"] = {b["bone"]: {k: v for k, v in b.items() if k != "bone"} for b in result.bones}
        row["qc"] = list(result.qc)
    return row


def columns(keep_identifiers: bool = False) -> list[str]:
    """The CSV columns of a run (the same for every record, whatever its status)."""
    return list(record(BoneAgeResult(path=""), "csv", keep_identifiers))


def is_run_failure(row: dict[str, Any]) -> bool:
    """Whether a written record is an error of the run itself (``--resume`` redoes it)."""
    return row.get("status") == "error" and str(row.get("reason") or "").startswith(RUN_FAILURE_REASONS)


def _record_key(row: dict[str, Any]) -> str:
    return str(row.get("path") or "") or str(row.get("reason") or "")


@dataclass
class _Contents:
    """The whole records of an output file, as :func:`_read_records` found them."""

    header: list[str] | None = None
    records: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)  # (record, its bytes)
    header_bytes: bytes = b""
    complete: int = 0  # bytes of whole records (and header) at the start of the file
    size: int = 0


def _read_records(path: Path, kind: str) -> _Contents:
    """Parse an output file into whole records; a record cut at the end is left out.

    A record is whole when it ends with its newline and parses (CSV: strictly, with the header's
    number of fields; JSON Lines: as an object). Only the last record can be cut by an
    interruption (each is written in one piece); a bad record anywhere else is damage this
    program did not make, and is refused rather than guessed at.

    Raises:
        UsageError: the file is damaged before its last record.
    """
    data = path.read_bytes()
    contents = _Contents(size=len(data))
    pos = 0

    def lines() -> Iterator[str]:
        nonlocal pos
        while pos < len(data):
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end + 1
            chunk, pos = data[pos:end], end
            yield chunk.decode("utf-8", errors="replace")

    def damaged(what: str) -> UsageError:
        line = data[:start].count(b"\n") + 1
        return UsageError(f"output {path} is damaged at line {line} ({what}); it cannot be resumed safely: "
                          "move it aside and start a new --out")

    start = 0
    if kind == "csv":
        reader = csv.reader(lines(), strict=True)
        while True:
            start = pos
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if pos >= len(data):
                    break  # cut inside the last record
                raise damaged(str(exc)) from None
            if row == []:
                contents.complete = pos  # a blank line: nothing lost
                continue
            whole = data[pos - 1:pos] == b"\n"
            if contents.header is None:
                if not whole:
                    break
                contents.header, contents.header_bytes, contents.complete = row, data[start:pos], pos
                continue
            if not whole or len(row) != len(contents.header):
                if pos >= len(data):
                    break
                raise damaged(f"{len(row)} fields, the header has {len(contents.header)}")
            contents.records.append((dict(zip(contents.header, row)), data[start:pos]))
            contents.complete = pos
    else:
        offset = 0
        while offset < len(data):
            end = data.find(b"\n", offset)
            end = len(data) if end < 0 else end + 1
            start, chunk, offset = offset, data[offset:end], end
            if not chunk.strip():
                if chunk.endswith(b"\n"):
                    contents.complete = end
                continue
            try:
                rec = json.loads(chunk) if chunk.endswith(b"\n") else None
            except ValueError:
                rec = None
            if not isinstance(rec, dict) or "path" not in rec:
                if end >= len(data):
                    break  # cut by an interruption
                raise damaged("not a record of this program")
            contents.records.append((rec, chunk))
            contents.complete = end
    return contents


def done_paths(path: str | Path) -> set[str]:
    """Inputs whose records are already in an output file, for ``--resume``: every whole record,
    whatever its status, except errors of the run itself (:data:`RUN_FAILURE_REASONS`)."""
    path = Path(path)
    if not path.is_file():
        return set()
    contents = _read_records(path, output_kind(path))
    return {_record_key(rec) for rec, _ in contents.records if not is_run_failure(rec)}


class RecordWriter:
    """Appends records to CSV or JSON Lines, each written whole and flushed to disk.

    Opening for append first makes the file whole again: a record cut at the end (an interrupted
    run) and records of the run's own failures (``redo``) are removed, so that they are redone
    and every input still has one record.

    Args:
        path: the output file (``.csv`` or ``.jsonl``).
        append: keep the file's records and append (``--resume``); else start it afresh.
        fields: CSV columns; default those of the first record. On append, the file's header
            must be the same.
        redo: records for which this returns True are removed on append (default
            :func:`is_run_failure`).

    Attributes:
        done: key -> status of the records kept on append.
        redone: how many records were removed to be redone.
        dropped_partial: whether a cut record was removed.
        written: records written by this writer.

    Raises:
        UsageError: the file is damaged, or its columns differ from ``fields``.
    """

    def __init__(self, path: str | Path, append: bool = False, fields: list[str] | None = None,
                 redo: Callable[[dict[str, Any]], bool] | None = is_run_failure) -> None:
        self.path = Path(path)
        self.kind = output_kind(self.path)
        self.done: dict[str, str] = {}
        self.redone = 0
        self.dropped_partial = False
        self.written = 0
        self._fields = list(fields) if fields is not None else None
        self._need_header = self.kind == "csv"
        if append and self.path.is_file():
            self._prepare_append(redo)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
        self._fd: int | None = os.open(self.path, flags, 0o644)

    def _prepare_append(self, redo: Callable[[dict[str, Any]], bool] | None) -> None:
        contents = _read_records(self.path, self.kind)
        keep = [(rec, raw) for rec, raw in contents.records if not (redo and redo(rec))]
        self.redone = len(contents.records) - len(keep)
        self.dropped_partial = contents.complete < contents.size
        self.done = {_record_key(rec): str(rec.get("status") or "") for rec, _ in keep}
        if self.kind == "csv" and contents.header is not None:
            if self._fields is not None and contents.header != self._fields:
                missing = [c for c in self._fields if c not in contents.header]
                extra = [c for c in contents.header if c not in self._fields]
                identifiers = set(columns(keep_identifiers=True)) - set(columns())
                if missing and not extra and not identifiers & set(missing):
                    # Columns this version added (e.g. the per-bone and combined estimates): no
                    # option of this run gives the old set, and one file must not mix the two.
                    raise UsageError(
                        f"output {self.path} was written by an earlier version of boneage, without the columns "
                        f"{', '.join(missing)}; this version cannot append to it: give a new output file")
                raise UsageError(
                    f"output {self.path} has other columns than this run writes (missing: {', '.join(missing) or '-'}; "
                    f"extra: {', '.join(extra) or '-'}); resume with the options of the first run, or use a new --out")
            self._fields = contents.header
            self._need_header = False
        if self.redone or self.dropped_partial:
            header = contents.header_bytes if self.kind == "csv" else b""
            _replace_file(self.path, header + b"".join(raw for _, raw in keep))

    def write(self, row: dict[str, Any]) -> None:
        """Append one record, whole, and flush it to disk.

        Raises:
            OutputWriteError: the write failed; the file is cut back to its last whole record.
        """
        data = self._encode(row)
        assert self._fd is not None, "writer is closed"
        start = os.lseek(self._fd, 0, os.SEEK_END)
        complete = False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            complete = True
            os.fsync(self._fd)
        except BaseException as exc:
            if not complete:  # never leave half a record behind
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    pass  # then the next --resume finds the cut record and redoes it
            if isinstance(exc, OSError):
                raise OutputWriteError(
                    f"cannot write to {self.path} ({exc.strerror or exc}); the {self.written} records this run "
                    "wrote before it are intact: fix the cause and rerun with --resume") from exc
            raise
        self._need_header = False
        self.written += 1

    def _encode(self, row: dict[str, Any]) -> bytes:
        if self.kind == "jsonl":
            return (json.dumps(row, default=str) + "\n").encode("utf-8")
        if self._fields is None:
            self._fields = list(row.keys())
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if self._need_header:  # written with the first record: one write, never a header alone
            writer.writerow(self._fields)
        writer.writerow(["" if row.get(k) is None else row.get(k) for k in self._fields])
        return buf.getvalue().encode("utf-8")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _replace_file(path: Path, data: bytes) -> None:
    """Replace a file's contents atomically (a crash leaves the old or the new file, whole)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputWriteError(f"cannot rewrite {path} to resume it ({exc.strerror or exc}); it is unchanged") from exc


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def run_batch(
    items: list[InputItem],
    out: str | Path,
    *,
    estimator: BoneAgeEstimator | None = None,
    workers: int = 1,
    resume: bool = False,
    progress: bool | None = None,
    device: str = "cpu",
    sr_dir: str | Path | None = None,
    sc_dir: str | Path | None = None,
    keep_identifiers: bool = False,
    on_result: Callable[[BoneAgeResult], None] | None = None,
    notes: list[str] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
) -> Counter:
    """Estimate every input and write one record per input as it completes.

    Every setting is checked before any work; the output is locked for the run. On an interrupt
    (Ctrl-C) or a write failure, the records written so far are whole and ``resume`` continues.

    Args:
        items: from :func:`discover_inputs`.
        out: ``.csv`` or ``.jsonl`` output file, in an existing folder.
        estimator: an estimator to use in-process (default: load the shipped models).
        workers: parallel worker processes, or Ray actors (each loads the models once); 1 = in-process.
        resume: skip inputs already recorded in ``out`` and append; records of the run's own
            failures (:data:`RUN_FAILURE_REASONS`) and a record cut by an interruption are redone.
        progress: show a progress bar (default: only when stderr is a terminal).
        device: ``cpu`` or ``cuda``.
        sr_dir: write a DICOM Comprehensive SR for every ok DICOM input here.
        sc_dir: write a Secondary Capture of the result page for every ok DICOM input here.
        keep_identifiers: copy patient/study identifiers from DICOM headers into the records.
        on_result: optional callback ``(BoneAgeResult) -> None``.
        notes: when given, receives lines for the user (a stale lock taken over, records redone).
        engine: ``local`` or ``ray`` (see :func:`boneage.engines.results`); records, resume and
            the one-record-per-input rule are the same for both.
        ray_address: the Ray cluster to use (default: the one joined, else a new local instance).

    Returns:
        Counter of statuses written in this run, plus ``"skipped"`` (resumed inputs),
        ``"skipped_not_ok"`` (of those, records not ok), ``"redone"`` (records of failed runs
        replaced) and ``"export_failed"``.

    Raises:
        UsageError: a bad setting, or the output is locked by another run or damaged.
        OutputWriteError: the output could not be written.
        EngineUnavailableError: the engine's package is not installed.
    """
    from tqdm import tqdm

    check_run(out, workers=workers, device=device, sr_dir=sr_dir, sc_dir=sc_dir, engine=engine)
    kind = output_kind(out)
    counts: Counter = Counter()
    with OutputLock(out) as lock:
        if lock.took_over and notes is not None:
            notes.append(f"took over the lock of a run that ended without releasing it ({lock.took_over})")
        with RecordWriter(out, append=resume, fields=columns(keep_identifiers) if kind == "csv" else None) as writer:
            todo = [i for i in items if i.key not in writer.done] if resume else list(items)
            counts["skipped"] = len(items) - len(todo)
            # A resumed run answers for all its inputs: earlier errors still make it partial.
            counts["skipped_not_ok"] = sum(1 for i in items if writer.done.get(i.key, "ok") != "ok") if resume else 0
            counts["redone"] = writer.redone
            if notes is not None and writer.dropped_partial:
                notes.append(f"{out}: the last record was cut by an interrupted run; it is redone")
            if notes is not None and writer.redone:
                notes.append(f"{out}: {writer.redone} record(s) of failed estimation are redone")
            show = sys.stderr.isatty() if progress is None else progress
            bar = tqdm(total=len(todo), disable=not show, unit="img", desc="boneage predict", file=sys.stderr)
            exports = (str(sr_dir) if sr_dir else None, str(sc_dir) if sc_dir else None)
            results = engines.results(todo, engine=engine, estimator=estimator, workers=workers, device=device,
                                      exports=exports, ray_address=ray_address)
            try:
                for outcome in results:
                    result = outcome.result
                    writer.write(record(result, kind, keep_identifiers, outcome.exports))
                    counts[result.status] += 1
                    counts["export_failed"] += bool(outcome.export_errors)
                    if on_result is not None:
                        on_result(result)
                    bar.update(1)
                    bar.set_postfix(ok=counts["ok"], error=counts["error"], rejected=counts["rejected"], refresh=False)
            finally:
                results.close()  # ends the worker pool now, also on Ctrl-C
                bar.close()
    return counts


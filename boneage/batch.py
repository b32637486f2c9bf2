"""Batch estimation over files, folders and manifests, written record by record.

Used by ``boneage predict`` (and by nothing else with logic of its own): inputs are discovered,
each is estimated by a :class:`~boneage.estimate.BoneAgeEstimator` (one per worker process,
models loaded once per worker), and every record is appended and flushed to the output as soon
as it completes, so an interrupted run loses nothing and ``resume`` can skip what is done.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from boneage.estimate import BoneAgeEstimator, BoneAgeResult
from boneage.io import normalise_sex


class UsageError(ValueError):
    """A problem with the command itself (bad manifest, unsupported output type)."""


@dataclass(frozen=True)
class InputItem:
    """One input to estimate.

    Attributes:
        path: the path exactly as the user gave it (or as found under a folder they gave).
        sex: from the manifest, or ``None`` (the header is used).
        chronological_age_months: from the manifest, or ``None``.
    """

    path: str
    sex: str | None = None
    chronological_age_months: float | None = None


def discover_inputs(inputs: Iterable[str], manifest: str | None = None) -> list[InputItem]:
    """Expand files, folders (recursively, every non-hidden file) and a manifest into inputs.

    A path that does not exist is kept (its record will say "file not found"), so every input
    the user named gets exactly one output record.

    Args:
        inputs: files or folders as given on the command line.
        manifest: CSV with a ``path`` column and optional ``sex``, ``chronological_age_months``.

    Returns:
        Inputs in a stable order (folders sorted), duplicates removed.

    Raises:
        UsageError: when the manifest is missing or has no ``path`` column.
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
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.path not in seen:
            seen.add(item.path)
            unique.append(item)
    return unique


def read_manifest(path: str) -> list[InputItem]:
    """Read a manifest CSV (``path`` [, ``sex``, ``chronological_age_months``])."""
    try:
        df = pd.read_csv(path, dtype={"path": str, "sex": str})
    except FileNotFoundError:
        raise UsageError(f"manifest {path} not found") from None
    except Exception as exc:
        raise UsageError(f"manifest {path} cannot be read as CSV ({exc})") from None
    if "path" not in df.columns:
        raise UsageError(f"manifest {path} has no 'path' column (columns: {', '.join(df.columns)})")
    items = []
    for row in df.itertuples(index=False):
        sex = normalise_sex(getattr(row, "sex", None)) if "sex" in df.columns else None
        age = getattr(row, "chronological_age_months", None) if "chronological_age_months" in df.columns else None
        try:
            age = float(age) if age is not None and str(age).strip() != "" else None
            if age is not None and age != age:  # NaN
                age = None
        except ValueError:
            age = None
        items.append(InputItem(str(row.path), sex, age))
    return items


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
def output_kind(path: str | Path) -> str:
    """``"csv"`` or ``"jsonl"`` from the output file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise UsageError(f"output {path} must end in .csv or .jsonl")


def record(result: BoneAgeResult, kind: str, keep_identifiers: bool = False) -> dict[str, Any]:
    """The output record of one result (JSON adds the per-bone object)."""
    row = result.to_row(keep_identifiers=keep_identifiers)
    if kind == "jsonl":
        row["bones"] = {b["bone"]: {k: v for k, v in b.items() if k != "bone"} for b in result.bones}
        row["qc"] = list(result.qc)
    return row


def done_paths(path: str | Path) -> set[str]:
    """Inputs already present in an output file (any status), for ``--resume``."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    if output_kind(path) == "csv":
        with path.open(newline="", encoding="utf-8") as f:
            return {row["path"] for row in csv.DictReader(f) if row.get("path")}
    done = set()
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by an interruption: that input is redone
    return done


class RecordWriter:
    """Appends records to CSV or JSON Lines and flushes each one to disk."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.kind = output_kind(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = append and self.path.is_file() and self.path.stat().st_size > 0
        if exists and self.kind == "jsonl":
            _drop_partial_last_line(self.path)
        self._file = self.path.open("a" if exists else "w", newline="", encoding="utf-8")
        self._csv: csv.DictWriter | None = None
        self._fields: list[str] | None = None
        if exists and self.kind == "csv":
            with self.path.open(newline="", encoding="utf-8") as f:
                self._fields = next(csv.reader(f), None)

    def write(self, row: dict[str, Any]) -> None:
        if self.kind == "jsonl":
            self._file.write(json.dumps(row, default=str) + "\n")
        else:
            if self._csv is None:
                header_needed = self._fields is None
                self._fields = self._fields or list(row.keys())
                self._csv = csv.DictWriter(self._file, fieldnames=self._fields, extrasaction="ignore")
                if header_needed:
                    self._csv.writeheader()
            self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_partial_last_line(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
_WORKER_ESTIMATOR: BoneAgeEstimator | None = None


_WORKER_EXPORTS: tuple[str | None, str | None] = (None, None)


def _worker_init(device: str, exports: tuple[str | None, str | None]) -> None:
    global _WORKER_ESTIMATOR, _WORKER_EXPORTS
    import torch

    torch.set_num_threads(1)  # one thread per worker: workers are the parallelism
    _WORKER_ESTIMATOR = BoneAgeEstimator.load(device=device)
    _WORKER_EXPORTS = exports


def _worker_run(item: InputItem) -> BoneAgeResult:
    assert _WORKER_ESTIMATOR is not None
    return _run_one(_WORKER_ESTIMATOR, item, _WORKER_EXPORTS)


def _run_one(estimator: BoneAgeEstimator, item: InputItem,
             exports: tuple[str | None, str | None] = (None, None)) -> BoneAgeResult:
    result = estimator.estimate(
        item.path, sex=item.sex, chronological_age_months=item.chronological_age_months,
        name=item.path, sex_source="manifest", age_source="manifest",
    )
    if result.ok and (exports[0] or exports[1]):
        from boneage.dicom_export import export_for

        try:
            for path in export_for(result, *exports):
                result.qc.append(f"wrote {path}")
        except Exception as exc:  # an export failure must not lose the estimate
            result.qc.append(f"DICOM export failed ({type(exc).__name__}: {exc})")
    result.label_map = None  # not needed in the output; keeps inter-process traffic small
    return result


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
    on_result=None,
) -> Counter:
    """Estimate every input and write one record per input as it completes.

    Args:
        items: from :func:`discover_inputs`.
        out: ``.csv`` or ``.jsonl`` output file.
        estimator: an estimator to use in-process (default: load the shipped models).
        workers: parallel worker processes (each loads the models once); 1 = in-process.
        resume: skip inputs already recorded in ``out`` (whatever their status) and append.
        progress: show a progress bar (default: only when stderr is a terminal).
        device: ``cpu`` or ``cuda``.
        sr_dir: write a DICOM Comprehensive SR for every ok DICOM input here.
        sc_dir: write a Secondary Capture of the result page for every ok DICOM input here.
        keep_identifiers: copy patient/study identifiers from DICOM headers into the records.
        on_result: optional callback ``(BoneAgeResult) -> None``.

    Returns:
        Counter of statuses written in this run (plus ``"skipped"`` for resumed inputs).
    """
    from tqdm import tqdm

    kind = output_kind(out)
    counts: Counter = Counter()
    if resume:
        done = done_paths(out)
        todo = [i for i in items if i.path not in done]
        counts["skipped"] = len(items) - len(todo)
    else:
        todo = list(items)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(todo), disable=not show, unit="img", desc="boneage predict", file=sys.stderr)
    with RecordWriter(out, append=resume) as writer:
        exports = (str(sr_dir) if sr_dir else None, str(sc_dir) if sc_dir else None)
        for result in _results(todo, estimator, workers, device, exports):
            writer.write(record(result, kind, keep_identifiers))
            counts[result.status] += 1
            if on_result is not None:
                on_result(result)
            bar.update(1)
            bar.set_postfix(ok=counts["ok"], error=counts["error"], rejected=counts["rejected"], refresh=False)
    bar.close()
    return counts


def _results(todo: list[InputItem], estimator: BoneAgeEstimator | None, workers: int, device: str,
             exports: tuple[str | None, str | None]) -> Iterator[BoneAgeResult]:
    if workers <= 1 or len(todo) <= 1:
        est = estimator or BoneAgeEstimator.load(device=device)
        for item in todo:
            yield _run_one(est, item, exports)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # torch and fork do not mix safely
    with ctx.Pool(workers, initializer=_worker_init, initargs=(device, exports)) as pool:
        yield from pool.imap_unordered(_worker_run, todo, chunksize=1)

"""Films per second of ``boneage predict`` on each engine: local (1 process, a process pool) and Ray actors.

Usage:
    .venv/bin/python benchmarks/bench_engines.py [--n 12] [--size 512] [--workers 1 2] [--ray-address ADDR]

Writes ``--n`` synthetic hand DICOMs (never real films) to a temporary folder, then runs the same
batch (the shipped models, a CSV output) with ``--engine local`` and ``--engine ray`` for each worker
count, and prints two rates per run: over the whole run (model loading and, for Ray, the cluster
and actor start included) and steady (from the first record written to the last). Every run must
give the same records (checked). Without ``--ray-address`` a local Ray instance with as many CPUs
as the largest worker count is started.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path


def _run(items: list, out: Path, engine: str, workers: int, address: str | None) -> tuple[float, float]:
    from boneage.batch import run_batch

    stamps: list[float] = []
    start = time.perf_counter()
    counts = run_batch(items, out, workers=workers, engine=engine, ray_address=address, progress=False,
                       on_result=lambda _result: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    assert counts["ok"] + counts["rejected"] + counts["error"] == len(items), counts
    whole = len(items) / total
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else float("nan")
    return whole, steady


def _answers(path: Path) -> dict[str, tuple]:
    def rounded(value: str) -> str:  # thread counts differ between engines: compare to 0.01 month
        return f"{float(value):.2f}" if value else ""

    return {r["path"]: (r["status"], rounded(r["multistep_age_months"]), rounded(r["direct_age_months"]))
            for r in csv.DictReader(path.open())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=12, help="films (default 12)")
    parser.add_argument("--size", type=int, default=512, help="long side of the synthetic films in px (default 512)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to try (default 1 2)")
    parser.add_argument("--ray-address", default=None, help="a running Ray cluster (default: a local instance)")
    parser.add_argument("--no-ray", action="store_true", help="local engine only")
    args = parser.parse_args()

    from boneage.batch import InputItem
    from boneage.synth import generate_hand, write_dicom

    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        folder = Path(tmp)
        items = []
        for i in range(args.n):
            path = folder / f"hand{i:03d}.dcm"
            write_dicom(generate_hand(777, i, size=args.size), path)
            items.append(InputItem(str(path)))
        print(f"{args.n} synthetic hands, {args.size} px; films/s over the whole run (startup included) / steady")
        engines = [("local", w) for w in args.workers] + ([] if args.no_ray else [("ray", w) for w in args.workers])
        reference = None
        if not args.no_ray and args.ray_address is None:
            import ray

            ray.init(num_cpus=max(args.workers), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        for engine, workers in engines:
            out = folder / f"{engine}-{workers}.csv"
            whole, steady = _run(items, out, engine, workers, args.ray_address)
            answers = _answers(out)
            reference = reference or answers
            same = "same records" if answers == reference else "RECORDS DIFFER from the first run"
            print(f"  {engine:5s} x{workers}: {whole:6.2f} films/s whole, {steady:6.2f} steady  ({same})", flush=True)


if __name__ == "__main__":
    main()

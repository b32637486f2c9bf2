"""Speed and memory of ``boneage predict``: start-up, per-stage times, films/s with 1 and 2 workers, peak memory.

Usage:
    .venv/bin/python benchmarks/bench_predict.py [--n 20] [--real] [--skip-memory] [--skip-batch]

Prints, each measured in fresh processes so that nothing is warm that a user's run would not have:

* start-up: ``import boneage.estimate`` + ``BoneAgeEstimator.load()`` (median of 3 processes);
* per-stage times of one film in one process with one thread per network, the stages of
  ``BoneAgeEstimator.estimate``: read, view (segmenter reading + hand check + upright re-read),
  the bone crops with the per-bone and sex networks, measure + multi-step estimate of the film as
  read, the test-time-augmentation views (tilted re-reads, measure, estimate), the end-to-end CNN,
  and the whole ``estimate`` call;
* ``boneage predict`` throughput (films/s) with ``--workers 1`` and ``--workers 2``, the whole
  command timed (start-up included), as a user runs it;
* peak resident memory of one process estimating one synthetic 2,000 px film and one
  7,000 x 7,500 film (a synthetic hand upscaled).

``--real`` uses validation films from ``../shared/data/rsna-dev`` (research data, read in place);
the default uses synthetic hands of 1,024 px. The machine's load average is printed at the start
and the end: on a shared 2-core machine, numbers taken under load are not comparable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STARTUP_CODE = """
import time
t = time.perf_counter()
from boneage.estimate import BoneAgeEstimator
est = BoneAgeEstimator.load()
print(time.perf_counter() - t)
"""

# VmHWM, not ru_maxrss: Linux carries the forking parent's peak into a child's ru_maxrss across exec.
MEMORY_CODE = """
import sys
def peak_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
from boneage.estimate import BoneAgeEstimator
est = BoneAgeEstimator.load()
loaded = peak_mb()
result = est.estimate(sys.argv[1])
print(result.status, loaded, peak_mb())
"""


def _load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _inputs(n: int, real: bool, folder: Path) -> list[Path]:
    if real:
        from boneage import datasets

        dev = datasets.rsna_dev()
        return [Path(p) for p in dev[dev.split == "val"]["path"].head(n)]
    from PIL import Image

    from boneage.synth import generate_hand

    paths = []
    for i in range(n):
        hand = generate_hand(555, i, size=1024)
        path = folder / f"synthetic_{i}.png"
        Image.fromarray((hand.image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _big_films(folder: Path) -> dict[str, Path]:
    """A synthetic hand upscaled to 2,000 px (long side) and to 7,000 x 7,500 px, 8-bit PNG."""
    from PIL import Image

    from boneage.synth import generate_hand

    hand = Image.fromarray((generate_hand(555, 0, size=1024).image * 255).astype(np.uint8))
    w, h = hand.size
    films = {"2,000 px": folder / "film_2000.png", "7,000 x 7,500 px": folder / "film_7000x7500.png"}
    hand.resize((round(2000 * w / h), 2000), Image.Resampling.BILINEAR).save(films["2,000 px"])
    hand.resize((7000, 7500), Image.Resampling.BILINEAR).save(films["7,000 x 7,500 px"])
    return films


def _stage_times(paths: list[Path]) -> dict[str, list[float]]:
    """Per-film seconds of each stage of ``BoneAgeEstimator.estimate``, one thread per network."""
    from boneage import runtime
    from boneage.estimate import BoneAgeEstimator, _upright_spacing
    from boneage.io import load_radiograph
    from boneage.measure import measure
    from boneage.perbone import crops_from_reading

    runtime.set_threads(1)  # as each worker of `boneage predict --workers 2` runs
    est = BoneAgeEstimator.load()
    est.estimate(paths[0])  # warm-up
    keys = ("read", "view", "crops+perbone+sex", "measure+multistep", "tta views", "direct", "whole estimate")
    stages: dict[str, list[float]] = {k: [] for k in keys}
    for p in paths:
        t0 = time.perf_counter()
        rad = load_radiograph(p)
        t1 = time.perf_counter()
        view = est.view(rad.pixels)
        t2 = time.perf_counter()
        crops = crops_from_reading(view.pixels, view.reading)
        est.perbone.predict_crops(crops, rad.sex)
        est.sex_model.predict(crops)
        t3 = time.perf_counter()
        spacing = _upright_spacing(rad.spacing_mm, view.transform)
        est.multistep.estimate(measure(view.label_map, spacing), rad.sex)
        t4 = time.perf_counter()
        for labels in est.segmenter.reread_tilted_many(view.reading, est.multistep_tilts):
            est.multistep.estimate(measure(labels, spacing), rad.sex, bones=False)
        t5 = time.perf_counter()
        est.direct.predict(view.pixels, rad.sex)
        t6 = time.perf_counter()
        est.estimate(p)  # everything together, as `boneage predict` runs it (result, QC, combined)
        t7 = time.perf_counter()
        for key, value in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            stages[key].append(value)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="films (default 20)")
    parser.add_argument("--real", action="store_true", help="use rsna-dev validation films")
    parser.add_argument("--skip-memory", action="store_true", help="skip the big-film memory runs")
    parser.add_argument("--skip-batch", action="store_true", help="skip the boneage predict runs")
    args = parser.parse_args()

    print(f"load average at start: {_load_average()} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = _inputs(args.n, args.real, folder)

        startups = [float(subprocess.run([sys.executable, "-c", STARTUP_CODE], capture_output=True, text=True,
                                         check=True).stdout.split()[-1]) for _ in range(3)]
        print(f"\nstart-up (import + model load, fresh process): median {statistics.median(startups):.2f} s "
              f"({', '.join(f'{s:.2f}' for s in startups)})")

        stages = _stage_times(paths)
        from boneage.io import load_radiograph

        shape = load_radiograph(paths[0]).pixels.shape
        print(f"\nper film, one process, 1 thread per network ({len(paths)} {'real' if args.real else 'synthetic'} films, "
              f"e.g. {shape[0]} x {shape[1]} px):")
        for key, values in stages.items():
            print(f"  {key:<18} mean {statistics.mean(values):.3f} s   median {statistics.median(values):.3f} s   "
                  f"max {max(values):.3f} s")

        if not args.skip_batch:
            for workers in (1, 2):
                out = folder / f"out_{workers}.csv"
                command = [sys.executable, "-m", "boneage.cli", "predict", *map(str, paths), "--out", str(out),
                           "--workers", str(workers), "--quiet"]
                t = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True)
                elapsed = time.perf_counter() - t
                rows = max(0, len(out.read_text().splitlines()) - 1) if out.exists() else 0
                print(f"\nboneage predict --workers {workers}: {len(paths) / elapsed:.2f} films/s "
                      f"({elapsed:.1f} s for {len(paths)} films, start-up included; {rows} rows, exit {done.returncode})")

        if not args.skip_memory:
            print("\npeak resident memory, one process estimating one film (start-up included):")
            for name, path in _big_films(folder).items():
                status, loaded, peak = subprocess.run([sys.executable, "-c", MEMORY_CODE, str(path)], capture_output=True,
                                                      text=True, check=True).stdout.split()[-3:]
                print(f"  {name:<17} {float(peak):.0f} MB (models loaded: {float(loaded):.0f} MB; status {status})")
    print(f"\nload average at end: {_load_average()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Speed and memory of the whole prediction path, and batch throughput with 1 and 2 workers.

Usage:
    .venv/bin/python benchmarks/bench_predict.py [--n 20] [--real]

Prints per-image latency of each stage (read, segment, measure + multi-step estimate, end-to-end
CNN) in one process with the shipped models, then `boneage predict` throughput (images/s) with
1 and 2 worker processes, and the peak resident memory. ``--real`` uses validation films from
``../shared/data/rsna-dev`` (research data, read in place); the default uses synthetic hands.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="images (default 20)")
    parser.add_argument("--real", action="store_true", help="use rsna-dev validation films")
    args = parser.parse_args()

    import torch

    from boneage.batch import InputItem, run_batch
    from boneage.estimate import BoneAgeEstimator
    from boneage.io import load_radiograph
    from boneage.measure import measure

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = _inputs(args.n, args.real, folder)
        t0 = time.perf_counter()
        est = BoneAgeEstimator.load()
        print(f"models loaded in {time.perf_counter() - t0:.2f} s: {est.versions}; missing: {list(est.load_errors)}")
        stages: dict[str, list[float]] = {"read": [], "segment": [], "measure+multistep": [], "direct": [], "total": []}
        for p in paths:
            t = time.perf_counter()
            rad = load_radiograph(p)
            t_read = time.perf_counter()
            label_map = est.segment(rad.pixels)[0] if est.segmenter is not None else None
            t_seg = time.perf_counter()
            if label_map is not None and est.multistep is not None:
                est.multistep.estimate(measure(label_map, rad.spacing_mm), "F")
            t_ms = time.perf_counter()
            if est.direct is not None:
                est.direct.predict(rad.pixels, "F")
            t_d = time.perf_counter()
            for key, value in zip(stages, (t_read - t, t_seg - t_read, t_ms - t_seg, t_d - t_ms, t_d - t)):
                stages[key].append(value)
        shape = load_radiograph(paths[0]).pixels.shape
        print(f"\nper image ({len(paths)} {'real' if args.real else 'synthetic'} images, e.g. {shape[0]}x{shape[1]} px, "
              f"torch threads {torch.get_num_threads()}):")
        for key, values in stages.items():
            print(f"  {key:<18} mean {statistics.mean(values):.3f} s   median {statistics.median(values):.3f} s   max {max(values):.3f} s")

        items = [InputItem(str(p)) for p in paths]
        for workers in (1, 2):
            out = folder / f"out_{workers}.csv"
            t = time.perf_counter()
            counts = run_batch(items, out, workers=workers, progress=False)
            elapsed = time.perf_counter() - t
            print(f"\nboneage predict, {workers} worker(s): {len(items) / elapsed:.2f} images/s "
                  f"({elapsed:.1f} s for {len(items)}, including model loading; statuses {dict(counts)})")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\npeak resident memory: {peak_mb:.0f} MB (this process), {peak_children:.0f} MB (largest worker)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

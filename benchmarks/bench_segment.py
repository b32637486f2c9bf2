"""Speed of the segmenter: seconds per image for read + segment + measure, on this machine.

Usage:
    .venv/bin/python benchmarks/bench_segment.py [--weights PATH] [--n 20] [--threads 2]

Times, per image: reading the file (:func:`boneage.io.load_radiograph`), segmentation (shared
preprocessing, network, clean-up, mapping back to the original grid) and
:func:`boneage.measure.measure` on the full-size label map. Uses rsna-dev films when the shared
data is present (JPEG, ~1024 px long side), else synthetic hands written as 1024 px PNGs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _inputs(n: int, folder: Path) -> list[Path]:
    from boneage.paths import rsna_dev_dir

    images = sorted((rsna_dev_dir() / "images").glob("*.jpg"))[:n]
    if images:
        return images
    from PIL import Image

    from boneage.synth import generate_hand

    paths = []
    for i in range(n):
        hand = generate_hand(7, i, size=1024)
        path = folder / f"synthetic_{i}.png"
        Image.fromarray((hand.image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="weights file (default: the shipped model)")
    parser.add_argument("--n", type=int, default=20, help="images to time (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="threads per network (default 2, the target machine)")
    args = parser.parse_args()

    from boneage.io import load_radiograph
    from boneage.measure import measure
    from boneage.segment import Segmenter

    from boneage import runtime

    runtime.set_threads(args.threads)  # the networks run on ONNX Runtime (torch too, if a copy is stale)
    segmenter = Segmenter.load(args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _inputs(args.n, Path(tmp))
        segmenter.segment(load_radiograph(paths[0]))  # warm-up (first call allocates)
        read_s, segment_s, measure_s = [], [], []
        for path in paths:
            t0 = time.perf_counter()
            radiograph = load_radiograph(path)
            t1 = time.perf_counter()
            label_map = segmenter.segment(radiograph)
            t2 = time.perf_counter()
            measure(label_map, radiograph.spacing_mm)
            t3 = time.perf_counter()
            read_s.append(t1 - t0)
            segment_s.append(t2 - t1)
            measure_s.append(t3 - t2)
    total = np.add(np.add(read_s, segment_s), measure_s)
    print(f"images: {len(total)} ({paths[0].suffix}), threads: {args.threads}")
    print(f"read    {np.median(read_s):.3f} s/image (median)")
    print(f"segment {np.median(segment_s):.3f} s/image (median)")
    print(f"measure {np.median(measure_s):.3f} s/image (median)")
    print(f"total   {np.median(total):.3f} s/image (median), {np.percentile(total, 95):.3f} s (p95)")


if __name__ == "__main__":
    main()

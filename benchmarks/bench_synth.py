"""Benchmark: synthetic hands per second at 512 px on one core.

Usage: ``python benchmarks/bench_synth.py [--n 100] [--size 512] [--lengths 150]``. Prints images/s for
rendering in memory (:func:`boneage.synth.generate_hand`) and for rendering + writing PNG image and mask,
then how well the masks' lengths (:func:`boneage.measure.measure`, the project's one ruler) match the
recorded lengths on ``--lengths`` hands of seed 101 (median and 95th percentile of the relative error;
issue #22's bars: 3% and 8%).
Threads are pinned to one before numpy is imported, so the number is per core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lengths", type=int, default=150, help="hands for the mask-length check (0: skip)")
    args = parser.parse_args()

    from boneage.synth import generate_hand, write_hand

    generate_hand(args.seed, 0, size=args.size)  # warm up: tables, texture bank, fonts
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(args.n):
        generate_hand(args.seed, i, size=args.size)
    render = args.n / (time.perf_counter() - t0)
    # CPU time of this process: the per-core rate even when other jobs share the machine.
    render_cpu = args.n / (time.process_time() - c0)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "images").mkdir()
        (out / "masks").mkdir()
        t0 = time.perf_counter()
        for i in range(args.n):
            write_hand(generate_hand(args.seed, i, size=args.size), out, f"b{i}")
        written = args.n / (time.perf_counter() - t0)
    print(f"synth {args.size}px, {args.n} images, 1 thread: render {render:.1f} images/s "
          f"(wall; {render_cpu:.1f} per CPU-second), render+write png {written:.1f} images/s (wall); "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.lengths:
        from boneage.measure import measure

        errors = []
        for i in range(args.lengths):
            hand = generate_hand(101, i, size=args.size)
            bones = measure(hand.label_map, hand.spacing_mm).bones
            errors += [abs(bones[b].length_mm - mm) / mm for b, mm in hand.lengths_mm.items()
                       if bones[b].length_mm is not None]
        print(f"mask length vs recorded length, {args.lengths} hands ({len(errors)} bones): median "
              f"{100 * np.median(errors):.2f}%, 95th percentile {100 * np.percentile(errors, 95):.2f}%")


if __name__ == "__main__":
    main()

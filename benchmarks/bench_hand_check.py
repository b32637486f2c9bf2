"""How well the "is this a hand?" quality check separates hands from other films.

Usage:
    .venv/bin/python benchmarks/bench_hand_check.py [--n 203] [--split val]

Runs the shipped segmenter and ``boneage.measure`` on real hand films of the rsna-dev split and on
the two non-hand CR films in ``../shared/data/dicom`` (a chest and a tibia), and prints, for each,
the number of finger bones found and of digits laid out as a finger (``finger_rays``), and how
many films the estimator's thresholds (``boneage.estimate.MIN_TUBULAR_BONES_PRESENT`` and
``MIN_FINGER_RAYS``) would reject. Hands rejected are false rejections; non-hands kept are misses.
Research data are read in place from ``../shared`` and never copied.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=203, help="real hand films to check (default: the val split)")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from boneage import anatomy, datasets, models
    from boneage.estimate import MIN_FINGER_RAYS, MIN_TUBULAR_BONES_PRESENT
    from boneage.io import load_radiograph
    from boneage.measure import measure
    from boneage.paths import shared_data_dir
    from boneage.segment import Segmenter

    segmenter = Segmenter.load()

    def check(path) -> tuple[int, int]:
        m = measure(segmenter.segment(load_radiograph(path)))
        return sum(m.bones[b].present for b in anatomy.TUBULAR_BONES), m.finger_rays

    def rejected(present: int, rays: int) -> bool:
        return present < MIN_TUBULAR_BONES_PRESENT or rays < MIN_FINGER_RAYS

    dev = datasets.rsna_dev()
    films = dev[dev.split == args.split].head(args.n)
    hands = [check(p) for p in tqdm(films["path"], desc="hand films", unit="film")]
    rays = np.array([r for _, r in hands])
    print(f"segmenter {models.get('segmenter').version}; thresholds: >= {MIN_TUBULAR_BONES_PRESENT} finger bones, "
          f">= {MIN_FINGER_RAYS} finger ray(s)")
    print(f"real hand films ({args.split} split, n={len(hands)}): finger rays 0-5 counts {np.bincount(rays, minlength=6).tolist()}; "
          f"falsely rejected {sum(rejected(*h) for h in hands)}")
    others = sorted((shared_data_dir() / "dicom").glob("*.dcm"))
    for path in others:
        present, r = check(path)
        print(f"non-hand {path.name}: {present} finger-bone-like structures, {r} finger rays -> "
              f"{'rejected' if rejected(present, r) else 'NOT rejected'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

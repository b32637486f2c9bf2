"""How well the "is this a hand?" quality check separates hands from other films.

Usage:
    .venv/bin/python benchmarks/bench_hand_check.py [--n 203] [--split val]

Runs the shipped segmenter and ``boneage.measure`` on real hand films of the rsna-dev split and on
the two non-hand CR films in ``../shared/data/dicom`` (a chest and a tibia), and prints, for each,
the number of finger bones found and how many films the estimator's segmentation QC
(``BoneAgeEstimator._qc_segmentation``, threshold ``MIN_TUBULAR_BONES_PRESENT``) rejects. Hands rejected are false rejections; non-hands kept are misses.
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
    from boneage.estimate import MIN_TUBULAR_BONES_PRESENT, BoneAgeEstimator
    from boneage.io import load_radiograph
    from boneage.measure import measure
    from boneage.paths import shared_data_dir
    from boneage.segment import Segmenter

    segmenter = Segmenter.load()

    def check(path) -> tuple[int, bool]:
        """(finger bones found, rejected by the estimator's own segmentation QC)."""
        m = measure(segmenter.segment(load_radiograph(path)))
        rejection, _ = BoneAgeEstimator._qc_segmentation(m)
        return sum(m.bones[b].present for b in anatomy.TUBULAR_BONES), bool(rejection)

    dev = datasets.rsna_dev()
    films = dev[dev.split == args.split].head(args.n)
    hands = [check(p) for p in tqdm(films["path"], desc="hand films", unit="film")]
    present = np.array([p for p, _ in hands])
    print(f"segmenter {models.get('segmenter').version}; threshold: >= {MIN_TUBULAR_BONES_PRESENT} finger bones found")
    print(f"real hand films ({args.split} split, n={len(hands)}): finger bones found min {present.min()}, "
          f"5th percentile {np.percentile(present, 5):.0f}, median {np.median(present):.0f}; "
          f"falsely rejected {sum(r for _, r in hands)}")
    for path in sorted((shared_data_dir() / "dicom").glob("*.dcm")):
        found, rejected = check(path)
        print(f"non-hand {path.name} (pixels only, header not used): {found} finger-bone-like structures -> "
              f"{'rejected' if rejected else 'NOT rejected'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

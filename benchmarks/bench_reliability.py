"""Reliability figures of the shipped estimator: non-hands, real hands, negatives, turned and tilted films.

Usage:
    .venv/bin/python benchmarks/bench_reliability.py [--n-val 203] [--n-turn 40] [--n-negative 240]

Prints:
- non-hand images (``boneage.training.negatives``, seed 7001: never used to fit the hand check
  nor by the tests) accepted as hands, by kind, and the two non-hand CR fixtures (pixels only);
- real validation hands (``rsna-dev`` validation split) rejected, and every method's MAE on them;
- the same films as negatives (grey scale inverted): how many are read back, and the change;
- the same films turned by 90/180/270 degrees and tilted by +-10/+-20 degrees: mean and largest
  change of each method against the film as given.
Research data are read in place from ``../shared`` and never copied.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

BENCH_SEED = 7001


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-val", type=int, default=203, help="validation films (default all 203)")
    parser.add_argument("--n-turn", type=int, default=40, help="validation films turned, tilted and inverted (default 40)")
    parser.add_argument("--n-negative", type=int, default=240, help="generated non-hand images (default 240)")
    parser.add_argument("--seed", type=int, default=BENCH_SEED, help=f"non-hand seed (default {BENCH_SEED})")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from boneage import datasets
    from boneage.estimate import BoneAgeEstimator
    from boneage.io import load_radiograph
    from boneage.paths import REPO_DIR
    from boneage.preprocess import rotate_film
    from boneage.training.negatives import non_hand_images

    est = BoneAgeEstimator.load()
    print("models:", ", ".join(f"{k}={v}" for k, v in sorted(est.versions.items())))
    if est.load_errors:
        print("not loaded:", est.load_errors)

    # Non-hands.
    accepted: dict[str, list[int]] = {}
    start = time.perf_counter()
    for pixels, kind in tqdm(non_hand_images(args.seed, args.n_negative), total=args.n_negative, desc="non-hands", unit="img"):
        result = est.estimate(pixels)
        accepted.setdefault(kind, []).append(int(result.status == "ok"))
    total = sum(sum(v) for v in accepted.values())
    n = sum(len(v) for v in accepted.values())
    if n:
        print(f"\nnon-hand images (seed {args.seed}) accepted as hands: {total} of {n} "
              f"({(time.perf_counter() - start) / max(n, 1):.2f} s each)")
    for kind, flags in accepted.items():
        print(f"  {kind:14s} {sum(flags)} of {len(flags)}")
    for path in sorted((REPO_DIR / "tests" / "data").glob("*.dcm")):
        result = est.estimate(load_radiograph(path).pixels)
        print(f"  fixture {path.name} (pixels only): {result.status} {result.reason[:90]}")

    # Real validation hands.
    dev = datasets.rsna_dev()
    val = dev[dev.split == "val"].head(max(args.n_val, args.n_turn))
    base: dict[int, tuple[float | None, float | None]] = {}
    methods = ("multistep", "direct", "perbone", "combined")
    rejected, errors = [], {m: [] for m in methods}
    for _, row in tqdm(list(val.iterrows()), desc="validation hands", unit="film"):
        result = est.estimate(str(row.path), sex=row.sex)
        base[row.id] = tuple(getattr(result, m).age_months for m in methods)
        if len(base) > args.n_val:
            continue  # only a base for the turned films
        if not result.ok:
            rejected.append(f"{row.id}: {result.reason}")
        for method in errors:
            age = getattr(result, method).age_months
            if age is not None:
                errors[method].append(abs(age - row.bone_age_months))
    print(f"\nreal validation hands rejected: {len(rejected)} of {min(len(val), args.n_val)}")
    for line in rejected:
        print("  ", line)
    for method, errs in errors.items():
        if errs:
            print(f"  {method:9s} MAE {np.mean(errs):.2f} months on {len(errs)} films (sex given)")

    # Negatives, turns and tilts of the first films.
    films = val.head(args.n_turn)
    if films.empty:
        return 0
    variants = {"negative": None, "turn 90": 90, "turn 180": 180, "turn 270": 270,
                "tilt +10": 10, "tilt -10": -10, "tilt +20": 20, "tilt -20": -20}
    print(f"\nchanges against the film as given ({len(films)} validation films), months: mean / max")
    for name, angle in variants.items():
        changes: dict[str, list[float]] = {m: [] for m in methods}
        not_ok: list[str] = []
        for _, row in tqdm(list(films.iterrows()), desc=name, unit="film", leave=False):
            pixels = load_radiograph(row.path).pixels
            pixels = 1.0 - pixels if angle is None else rotate_film(pixels, angle)[0]
            result = est.estimate(pixels, sex=row.sex)
            if not result.ok:
                not_ok.append(f"{row.id} ({result.reason[:70]})")
            for k, method in enumerate(changes):
                age = getattr(result, method).age_months
                if age is not None and base[row.id][k] is not None:
                    changes[method].append(abs(age - base[row.id][k]))
        text = "  ".join(f"{m} {np.mean(c):5.1f} / {np.max(c):5.1f}" if c else f"{m} n/a" for m, c in changes.items())
        print(f"  {name:9s} {text}   (not ok: {len(not_ok)}{': ' if not_ok else ''}{'; '.join(not_ok)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

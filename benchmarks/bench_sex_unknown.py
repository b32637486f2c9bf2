"""Films without their sex: how every method reads them with the sex read from the film.

Usage:
    .venv/bin/python benchmarks/bench_sex_unknown.py [--n 203]

Estimates validation films (``rsna-dev`` validation split) with the sex withheld, through the whole
pipeline (``BoneAgeEstimator.estimate``, as ``boneage predict`` does for a PNG without a manifest),
and prints: how often the sex was read confidently and used, how often that was right, and each
method's MAE and 90% coverage, overall and split by whether the predicted sex was used.
Research data are read in place from ``../shared`` and never copied.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=203, help="validation films (default all 203)")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from boneage import datasets
    from boneage.estimate import BoneAgeEstimator

    estimator = BoneAgeEstimator.load()
    val = datasets.rsna_dev()
    val = val[val["split"] == "val"].head(args.n)
    methods = ("combined", "perbone", "direct", "multistep")
    rows = []
    for _, film in tqdm(val.iterrows(), total=len(val), desc="films", unit="film", mininterval=10):
        result = estimator.estimate(str(film["path"]), sex="unknown")
        row = {"target": float(film["bone_age_months"]), "true_sex": film["sex"], "used": result.sex_source == "predicted",
               "predicted": result.predicted_sex, "probability": result.sex_probability}
        for m in methods:
            est = getattr(result, m)
            row[m] = (est.age_months, est.lower_90, est.upper_90) if est.available else None
        rows.append(row)

    used = np.array([r["used"] for r in rows])
    predicted = [r for r in rows if r["predicted"] is not None]
    right = np.array([r["predicted"] == r["true_sex"] for r in predicted])
    right_used = np.array([r["predicted"] == r["true_sex"] for r in rows if r["used"]])
    print(f"films: {len(rows)}; sex read from the film for {len(predicted)}: right {right.mean():.1%} of them")
    print(f"used (>= 80% sure): {used.mean():.1%} of films, right {right_used.mean() if len(right_used) else float('nan'):.1%} of those")
    for m in methods:
        for label, mask in (("all", np.ones(len(rows), bool)), ("sex used", used), ("sex not used", ~used)):
            sel = [r for r, k in zip(rows, mask) if k and r[m] is not None]
            if not sel:
                continue
            err = np.array([r[m][0] - r["target"] for r in sel])
            cover = np.mean([r[m][1] <= r["target"] <= r[m][2] for r in sel])
            print(f"{m:10s} {label:13s} n={len(sel):3d}  MAE {np.abs(err).mean():5.1f}  bias {err.mean():+5.1f}  90% coverage {cover:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

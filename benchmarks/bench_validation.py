"""Every method's accuracy on the validation split, through the whole pipeline, sex given.

Usage:
    .venv/bin/python benchmarks/bench_validation.py [--n 203]

Estimates ``rsna-dev`` validation films with their sex (``BoneAgeEstimator.estimate``, as ``boneage
predict`` does with a manifest) and prints each method's MAE, bias by bone-age band (< 6, 6-12,
> 12 y) and 90% interval coverage. It is the check that a change to the inference path (runtime,
resizing, reading) keeps the answers: the figures must stay those of the model cards and the
README. Research data are read in place from ``../shared`` and never copied; this split is for
reporting only, never for choosing.
"""

from __future__ import annotations

import argparse

import numpy as np

METHODS = ("combined", "perbone", "direct", "multistep")
#: Bone-age bands as the model cards have them: < 72 months, 72-144 inclusive, > 144.
BANDS = (("< 6 y", lambda y: y < 72), ("6-12 y", lambda y: (y >= 72) & (y <= 144)), ("> 12 y", lambda y: y > 144))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=203, help="validation films (default all 203)")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from boneage import datasets, runtime
    from boneage.estimate import BoneAgeEstimator

    runtime.set_threads(1)
    estimator = BoneAgeEstimator.load()
    val = datasets.rsna_dev()
    val = val[val["split"] == "val"].head(args.n)
    target = val["bone_age_months"].to_numpy(dtype=float)
    found = {m: np.full((len(val), 3), np.nan) for m in METHODS}
    for i, (_, film) in enumerate(tqdm(val.iterrows(), total=len(val), desc="films", unit="film", mininterval=10)):
        result = estimator.estimate(str(film["path"]), sex=film["sex"])
        for m in METHODS:
            est = getattr(result, m)
            if est.available:
                found[m][i] = (est.age_months, est.lower_90, est.upper_90)
    print(f"\n{len(val)} validation films, sex given (MAE and bias in months):")
    print(f"  {'method':<10} {'n':>4} {'MAE':>6}   bias " + " / ".join(b[0] for b in BANDS) + "   90% coverage")
    for m in METHODS:
        ok = np.isfinite(found[m][:, 0])
        err = found[m][ok, 0] - target[ok]
        bias = []
        for _, in_band in BANDS:
            band = in_band(target[ok])
            bias.append(f"{err[band].mean():+.1f}" if band.any() else "-")
        covered = (found[m][ok, 1] <= target[ok]) & (target[ok] <= found[m][ok, 2])
        print(f"  {m:<10} {ok.sum():>4} {np.abs(err).mean():>6.2f}   " + " / ".join(bias) + f"   {covered.mean():.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

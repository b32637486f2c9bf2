"""Speed and robustness of the per-bone maturity method on real validation films.

Usage:
    .venv/bin/python benchmarks/bench_perbone.py [--n 40] [--threads 2] [--model data/models/perbone]

Prints, per film (the segmenter's reading is made first and not counted: every method shares it):
- seconds to cut the 14 aligned crops and to run the per-bone network (the issue's bar: <= 0.15 s
  together on 2 cores);
- what squashing a film to 299 x 299 costs (the ``rsna-299`` training majority lost its aspect
  ratio): per-bone MAE on the films as they are, squashed and read as they come, and squashed then
  widened back to the median aspect as training does;
- the change of the per-bone age when the film is down-sampled to half its size.
Research data are read in place from ``../shared`` and never copied.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="validation films (default 40)")
    parser.add_argument("--threads", type=int, default=2, help="threads per network (default 2)")
    parser.add_argument("--model", default=None, help="per-bone model folder (default the shipped one)")
    args = parser.parse_args(argv)

    from PIL import Image

    from boneage import datasets
    from boneage.io import load_radiograph
    from boneage.perbone import RSNA_299_WIDTH_TO_HEIGHT, PerBoneEstimator, crops_from_reading
    from boneage.segment import Segmenter

    from boneage import runtime

    runtime.set_threads(args.threads)  # the networks run on ONNX Runtime (torch too, if a copy is stale)
    segmenter = Segmenter.load()
    estimator = PerBoneEstimator.load(args.model)
    val = datasets.rsna_dev()
    val = val[val["split"] == "val"].head(args.n)

    def resized(pixels: np.ndarray, rows: int, cols: int) -> np.ndarray:
        img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
        return np.asarray(img.resize((cols, rows), Image.BILINEAR), np.float32) / 255.0

    crop_s, net_s = [], []
    errors: dict[str, list[float]] = {"as given": [], "squashed 299": [], "squashed, widened back": []}
    half_change = []
    for _, film in val.iterrows():
        pixels = load_radiograph(str(film["path"])).pixels
        sex, target = film["sex"], float(film["bone_age_months"])
        reading = segmenter.read(pixels)
        t0 = time.perf_counter()
        crops = crops_from_reading(pixels, reading)
        t1 = time.perf_counter()
        est = estimator.predict_crops(crops, sex)
        t2 = time.perf_counter()
        crop_s.append(t1 - t0)
        net_s.append(t2 - t1)
        if est.age_months is None:
            continue
        errors["as given"].append(abs(est.age_months - target))
        squashed = resized(pixels, 299, 299)
        for name, variant in (("squashed 299", squashed),
                              ("squashed, widened back", resized(squashed, 299, round(299 * RSNA_299_WIDTH_TO_HEIGHT)))):
            e = estimator.predict(variant, segmenter.read(variant), sex)
            if e.age_months is not None:
                errors[name].append(abs(e.age_months - target))
        half = resized(pixels, pixels.shape[0] // 2, pixels.shape[1] // 2)
        e = estimator.predict(half, segmenter.read(half), sex)
        if e.age_months is not None:
            half_change.append(abs(e.age_months - est.age_months))

    print(f"films: {len(val)} validation films, threads {args.threads}")
    print(f"crops: {np.mean(crop_s):.3f} s/film (max {np.max(crop_s):.3f}); network: {np.mean(net_s):.3f} s/film "
          f"(max {np.max(net_s):.3f}); together {np.mean(crop_s) + np.mean(net_s):.3f} s/film (bar 0.15)")
    for name, errs in errors.items():
        print(f"per-bone MAE, {name}: {np.mean(errs):.1f} months (n={len(errs)})")
    print(f"half-size film: mean change {np.mean(half_change):.1f} months, largest {np.max(half_change):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

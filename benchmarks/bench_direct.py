"""Inference speed of the end-to-end CNN: seconds per image on this machine, preprocessing included.

Usage:
    .venv/bin/python benchmarks/bench_direct.py [--weights PATH] [--n 30] [--threads 2]

Times, per image: reading the JPEG (when real films are available), the shared preprocessing
(crop, squash, intensity window) and the network (with flip-TTA when the weights enable it).
Uses validation films of ``rsna-dev`` when the shared data is present, else synthetic arrays of a
typical film size (1024 x 800).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="weights file or folder (default: the shipped model)")
    parser.add_argument("--n", type=int, default=30, help="images to time (default 30)")
    parser.add_argument("--threads", type=int, default=2, help="threads per network (default 2, the target machine)")
    parser.add_argument("--record", action="store_true",
                        help="write the result into the model folder's metrics.json and regenerate its model card")
    args = parser.parse_args()
    from boneage import runtime

    runtime.set_threads(args.threads)  # the networks run on ONNX Runtime (torch too, if a copy is stale)

    from boneage.direct import DirectEstimator

    estimator = DirectEstimator.load(args.weights)
    loaders = []
    try:
        from PIL import Image

        from boneage.datasets import rsna_dev

        labels = rsna_dev()
        paths = list(labels[labels["split"] == "val"]["path"][: args.n])

        def read(path):
            with Image.open(path) as img:
                return np.asarray(img.convert("L"))

        loaders = [(lambda p=p: read(p)) for p in paths]
        source = f"{len(paths)} rsna-dev validation films (JPEG decode included)"
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        arrays = [rng.random((1024, 800), dtype=np.float32) for _ in range(args.n)]
        loaders = [(lambda a=a: a) for a in arrays]
        source = f"{args.n} synthetic 1024 x 800 arrays"

    estimator.predict(loaders[0](), "M")  # warm-up
    start = time.perf_counter()
    for i, load in enumerate(loaders):
        estimator.predict(load(), "M" if i % 2 else None)
    per_image = (time.perf_counter() - start) / len(loaders)
    tta = "with flip-TTA" if estimator.calibration.get("flip_tta") else "no TTA"
    print(f"direct CNN {estimator.version}: {per_image:.3f} s/image on {args.threads} threads, {source}, {tta}")
    if args.record:
        import json
        import os
        from pathlib import Path

        from boneage.direct import METRICS_FILE
        from boneage.paths import MODELS_DIR
        from boneage.training.direct import cpu_name, write_model_card

        folder = Path(args.weights) if args.weights else MODELS_DIR / "direct"
        folder = folder if folder.is_dir() else folder.parent
        metrics = json.loads((folder / METRICS_FILE).read_text())
        metrics["inference"] = {
            "seconds_per_image": round(per_image, 4),
            "hardware": f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} threads",
            "note": f"{source}, preprocessing included, {tta}; benchmarks/bench_direct.py",
        }
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_model_card(folder)


if __name__ == "__main__":
    main()

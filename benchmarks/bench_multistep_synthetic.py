"""Multi-step accuracy in the synthetic world, with the shipped segmenter (the issue's synthetic bar).

Usage:
    .venv/bin/python benchmarks/bench_multistep_synthetic.py [--train 400] [--test 150] [--size 512]

Synthetic hands are drawn from a training seed and from the evaluation seed the segmenter never
saw (``boneage.training.segmenter.EVAL_SEED``). A multi-step bundle (maturity reference +
regression) is fitted on the training hands' measurements and scored on the evaluation hands, twice: measuring the
**segmenter's** label maps (the real pipeline) and measuring the **true** label maps (perfect
segmentation, the method's upper bound). Prints the final (blended) MAE in months, each estimator's
alone, the blend weight, 90% coverage and the share of finger bones measured plausibly.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=400, help="training hands (seed 2024)")
    parser.add_argument("--test", type=int, default=150, help="evaluation hands (segmenter's EVAL_SEED)")
    parser.add_argument("--size", type=int, default=512, help="long side of the synthetic images")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from boneage import anatomy
    from boneage.segment import Segmenter
    from boneage.synth import generate_hand
    from boneage.training.multistep import LabelledMeasurements, evaluate, fit_bundle, measure_label_maps
    from boneage.training.segmenter import EVAL_SEED

    segmenter = Segmenter.load()
    cohorts = {}
    t0 = time.perf_counter()
    for name, seed, n in (("train", 2024, args.train), ("test", EVAL_SEED, args.test)):
        hands, predicted = [], []
        for i in tqdm(range(n), desc=f"{name} hands (generate + segment)", unit="hand"):
            hand = generate_hand(seed, i, size=args.size)
            hands.append((hand.label_map, hand.spacing_mm, hand.bone_age_months, hand.sex))
            predicted.append(segmenter.segment(hand.image))
        cohorts[name] = (hands, predicted)
    print(f"generated and segmented {args.train + args.test} hands in {time.perf_counter() - t0:.0f} s")

    for source in ("segmenter", "true masks"):
        data = {}
        plausible = 0.0
        for name, (hands, predicted) in cohorts.items():
            maps = predicted if source == "segmenter" else [h[0] for h in hands]
            feats, ms = measure_label_maps(((m, h[1]) for m, h in zip(maps, hands)), progress=False)
            ages = np.array([h[2] for h in hands])
            sexes = np.array([h[3] for h in hands])
            data[name] = LabelledMeasurements(feats, ages, sexes, [str(i) for i in range(len(hands))])
            if name == "test":
                plausible = float(np.mean([[m.bones[b].plausible for b in anatomy.TUBULAR_BONES] for m in ms]))
        bundle = fit_bundle(data["train"], description=f"synthetic benchmark ({source})", seed=0)
        metrics = evaluate(bundle, data["test"])
        final = metrics["final"]["all"]
        print(f"{source:>10}: multi-step MAE {final['mae_months']:.1f} months "
              f"(regression alone {metrics['regression_mae_months']:.1f}, lookup alone {metrics['lookup_mae_months']:.1f}, "
              f"regression weight {bundle.blend.regression_weight:.2f}), 90% coverage {final.get('coverage_90', float('nan')):.0%}, "
              f"finger bones measured {plausible:.0%}  [train {args.train}, test {args.test} hands of seed {EVAL_SEED}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

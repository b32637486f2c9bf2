"""Fit the hand check (``boneage train handcheck``): hands against images that are not hands.

Hands: real ``rsna-dev`` training-split films (never the validation split), some of them turned
by a quarter turn or tilted (the estimator reads those too), and synthetic hands. Not hands:
:mod:`boneage.training.negatives` images of the fit seed, and real training films turned negative
(read as given, a negative film is not a usable reading: the estimator reads it inverted back).
Each image is read exactly as the estimator reads it (:meth:`boneage.segment.Segmenter.read`,
orientation search included) and turned into :func:`boneage.handcheck.hand_features`.

A quarter of the images (drawn by seed) is held out; the threshold is set on that hold-out,
halfway (on the logit scale) between the highest non-hand and the lowest hand probability, or at
0.5 where they overlap. The validation split and the benchmark's seeds are never seen.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.handcheck import FEATURES, HANDCHECK_DIR, WEIGHTS_FILE, HandCheck, hand_features

#: Seed of the non-hand images the check is fitted on (tests and the benchmark use others).
FIT_SEED = 101
VERSION = "handcheck-1"


def reading_features(segmenter, pixels: np.ndarray) -> dict[str, float]:
    """Hand-check features of one image, read as the estimator reads it."""
    reading = segmenter.read(pixels)
    return hand_features(reading.grid.label_map, reading.grid.probabilities, reading.model_input, reading.spacing)


def _tilt(pixels: np.ndarray, angle: float) -> np.ndarray:
    from boneage.preprocess import rotate_film

    return rotate_film(pixels, angle)[0]


def collect(segmenter, n_real: int = 300, n_synthetic: int = 60, n_negative: int = 300, n_inverted: int = 80,
            seed: int = FIT_SEED, progress: bool = True) -> pd.DataFrame:
    """Features of every fitting image.

    Args:
        segmenter: the shipped :class:`boneage.segment.Segmenter`.
        n_real: real training-split hands (a third turned or tilted).
        n_synthetic: synthetic hands.
        n_negative: generated non-hand images.
        n_inverted: real training-split hands turned negative (not hands as given).
        seed: draws and the non-hand seed.
        progress: show a progress bar.

    Returns:
        One row per image: :data:`boneage.handcheck.FEATURES`, ``is_hand``, ``kind``.
    """
    from tqdm import tqdm

    from boneage import datasets
    from boneage.io import load_radiograph
    from boneage.synth import generate_hand
    from boneage.training.negatives import non_hand_image

    rng = np.random.default_rng(seed)
    dev = datasets.rsna_dev()
    train = dev[dev.split == "train"].sample(n=n_real + n_inverted, random_state=seed)
    jobs: list[tuple[str, int, object]] = []
    for k, path in enumerate(train["path"][:n_real]):
        jobs.append(("real" if k % 3 else "real_turned", 1, path))
    jobs += [("real_inverted", 0, p) for p in train["path"][n_real:]]
    jobs += [("synthetic", 1, i) for i in range(n_synthetic)]
    jobs += [("negative", 0, i) for i in range(n_negative)]
    rows = []
    for kind, is_hand, item in tqdm(jobs, desc="hand-check features", unit="img", disable=not progress):
        if kind.startswith("real"):
            pixels = load_radiograph(item).pixels
            if kind == "real_inverted":
                pixels = 1.0 - pixels
            elif kind == "real_turned":
                pixels = np.rot90(pixels, int(rng.integers(1, 4))) if rng.random() < 0.5 else _tilt(pixels, rng.uniform(-25, 25))
        elif kind == "synthetic":
            hand = generate_hand(seed, int(item), size=int(rng.choice([384, 512, 768])))
            pixels = hand.image.astype(np.float32)
            pixels = pixels / pixels.max() if pixels.max() > 1.5 else pixels
        else:
            pixels, sub = non_hand_image(seed, int(item), size=int(rng.choice([384, 512, 1024])))
            kind = f"negative:{sub}"
        feats = reading_features(segmenter, np.ascontiguousarray(pixels, dtype=np.float32))
        rows.append({**feats, "is_hand": is_hand, "kind": kind})
    return pd.DataFrame(rows)


def fit(frame: pd.DataFrame, seed: int = FIT_SEED) -> tuple[HandCheck, dict]:
    """Fit the logistic regression and set its threshold on a hold-out quarter.

    Args:
        frame: from :func:`collect`.
        seed: hold-out draw.

    Returns:
        ``(check, metrics)``; the check is refitted on every image with the hold-out's threshold.
    """
    from sklearn.linear_model import LogisticRegression

    x = frame[list(FEATURES)].to_numpy(float)
    y = frame["is_hand"].to_numpy(int)
    held = np.random.default_rng(seed).random(len(frame)) < 0.25

    def fitted(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, LogisticRegression]:
        mean, scale = x[rows].mean(0), x[rows].std(0) + 1e-6
        model = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit((x[rows] - mean) / scale, y[rows])
        return mean, scale, model

    mean, scale, model = fitted(~held)
    p_held = model.predict_proba((x[held] - mean) / scale)[:, 1]
    hands, others = p_held[y[held] == 1], p_held[y[held] == 0]
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    lo, hi = float(others.max()), float(hands.min())
    threshold = float(1 / (1 + np.exp(-(logit(np.clip(lo, 1e-6, 1 - 1e-6)) + logit(np.clip(hi, 1e-6, 1 - 1e-6))) / 2))) if hi > lo else 0.5
    mean, scale, model = fitted(np.ones(len(frame), bool))
    check = HandCheck(tuple(mean), tuple(scale), tuple(model.coef_[0]), float(model.intercept_[0]), threshold, VERSION)
    p_all = np.array([check.probability(dict(zip(FEATURES, row))) for row in x])
    metrics = {
        "threshold": threshold,
        "holdout": {"hands": int(len(hands)), "non_hands": int(len(others)),
                    "hands_rejected": int((hands < threshold).sum()), "non_hands_accepted": int((others >= threshold).sum()),
                    "lowest_hand_probability": hi, "highest_non_hand_probability": lo},
        "fit_images_by_kind": frame.groupby("kind").size().to_dict(),
        "rejected_by_kind_after_refit": {k: int((p_all[frame.kind == k] < threshold).sum())
                                         for k in sorted(frame.kind.unique())},
    }
    return check, metrics


def model_card(metrics: dict, command: str, seconds: float, reused: bool = False) -> str:
    """The hand check's model card."""
    h = metrics["holdout"]
    timing = ("features reused from the cache; reading the ~740 images takes about 15 min on 2 CPU cores"
              if reused else f"{seconds / 60:.1f} min on 2 CPU cores")
    kinds = "\n".join(f"| {k} | {n} | {metrics['rejected_by_kind_after_refit'][k]} |"
                      for k, n in metrics["fit_images_by_kind"].items())
    return f"""# Hand check ({VERSION})

Is a film a hand radiograph? A logistic regression over {len(FEATURES)} figures of the segmenter's
reading of the film (`boneage.handcheck.hand_features`: digits laid out as finger rays, thumb side,
bones in one piece, bones found, network confidence, bone area, carpals, radius/ulna, and how
much brighter labelled bone is than the rest of the image and its frame). A film below the
threshold gets no age from any method (`rejected`); a negative film is read inverted back first.

- **Training data**: real `rsna-dev` training-split films (RSNA Pediatric Bone Age Challenge 2017,
  research use only; a third of them turned or tilted), synthetic hands, generated non-hand
  images (`boneage.training.negatives`, seed {FIT_SEED}: crops of the chest and tibia CR
  fixtures, textures, text pages, phantoms, partial hands, empty plates) and training films turned
  negative (not a hand as given). Never the validation split.
- **Command**: `{command}` ({timing}). Seed {FIT_SEED}.
- **Threshold** {metrics['threshold']:.3f}, set on a held-out quarter ({h['hands']} hands,
  {h['non_hands']} non-hands): hands rejected {h['hands_rejected']}, non-hands accepted
  {h['non_hands_accepted']} (lowest hand probability {h['lowest_hand_probability']:.3f}, highest
  non-hand {h['highest_non_hand_probability']:.3f}).
- **Checked on unseen seeds and the validation split** by `benchmarks/bench_reliability.py`
  (figures in the README and the closing notes).

| fit images | n | below threshold (refit) |
|---|---|---|
{kinds}

Limits: the non-hands are generated or cut from two real films; other body parts (a foot, a
forearm without the hand) were not seen and may pass. Research use only (trained on RSNA films).
"""


def train_command(args: argparse.Namespace) -> int:
    """``boneage train handcheck``."""
    from boneage.segment import Segmenter

    from boneage import models
    from boneage.paths import cache_dir

    start = time.perf_counter()
    out = Path(args.out) if args.out else HANDCHECK_DIR
    out.mkdir(parents=True, exist_ok=True)
    # Reading ~700 images takes ~20 min on 2 cores: the features are cached (outside the repo,
    # keyed by segmenter version and counts) so that refitting is instant.
    key = f"{models.get('segmenter').version}-{args.n_real}-{args.n_synthetic}-{args.n_negative}-{args.n_inverted}-{args.seed}"
    cached = cache_dir() / "handcheck" / f"features-{key}.csv"
    reused = cached.is_file()
    if reused:
        frame = pd.read_csv(cached)
        print(f"reusing hand-check features from {cached}")
    else:
        frame = collect(Segmenter.load(), args.n_real, args.n_synthetic, args.n_negative, args.n_inverted, args.seed)
        cached.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(cached, index=False)
    check, metrics = fit(frame, args.seed)
    (out / WEIGHTS_FILE).write_text(json.dumps(check.to_json(), indent=1) + "\n")
    seconds = time.perf_counter() - start
    command = (f"boneage train handcheck --n-real {args.n_real} --n-synthetic {args.n_synthetic} "
               f"--n-negative {args.n_negative} --n-inverted {args.n_inverted} --seed {args.seed}")
    metrics.update(command=command, seconds=round(seconds, 1), version=VERSION)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(metrics, command, seconds, reused))
    print(json.dumps(metrics["holdout"]))
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``boneage train handcheck``."""
    parser.add_argument("--n-real", type=int, default=300, help="real training-split hands (default 300)")
    parser.add_argument("--n-synthetic", type=int, default=60, help="synthetic hands (default 60)")
    parser.add_argument("--n-negative", type=int, default=300, help="generated non-hand images (default 300)")
    parser.add_argument("--n-inverted", type=int, default=80, help="training films turned negative (default 80)")
    parser.add_argument("--seed", type=int, default=FIT_SEED, help=f"seed (default {FIT_SEED})")
    parser.add_argument("--out", default="", help="output folder (default data/models/handcheck)")

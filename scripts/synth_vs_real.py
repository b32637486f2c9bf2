"""Render synthetic hands beside real development films of similar bone age (for eyeballing realism).

Usage: ``python scripts/synth_vs_real.py [--out /tmp/synth_vs_real.png] [--seed 0] [--ages 1 3 5 ...]``

The real images are research-only RSNA films: the output must stay OUTSIDE the repository (the
script refuses a path inside it). The synthetic grid that is committed is ``docs/synthetic.png``,
made by ``scripts/synth_vs_real.py --docs`` without any real image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB image with a translucent colour per label."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colours = np.array([cmap(i % 20)[:3] for i in range(256)], np.float32)
    rgb = np.repeat(image[..., None], 3, axis=2)
    mask = labels > 0
    rgb[mask] = 0.45 * rgb[mask] + 0.55 * colours[labels[mask]]
    return rgb


def grid_hand(seed: int, k: int, age_years: float, size: int = 384):
    """The k-th hand of the grid: bone age ``age_years``, boys and girls alternating."""
    from boneage.synth import generate_hand

    return generate_hand(seed, k, size=size, bone_age_months=age_years * 12, sex="F" if k % 2 else "M")


def docs_grid(out: Path, seed: int = 0, size: int = 384) -> Path:
    """Synthetic hands at 1, 3, ..., 17 years with their masks (two rows per age group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from boneage.synth import generate_hand

    ages = list(range(1, 18, 2))
    fig, axes = plt.subplots(2, len(ages), figsize=(2.1 * len(ages), 5.8))
    for k, age in enumerate(ages):
        hand = grid_hand(seed, k, age, size)
        axes[0, k].imshow(hand.image, cmap="gray", vmin=0, vmax=1)
        axes[0, k].set_title(f"{age} y {hand.sex}\n{hand.spacing_mm:.2f} mm/px", fontsize=8)
        axes[1, k].imshow(_overlay(hand.image, hand.label_map))
        for ax in axes[:, k]:
            ax.set_axis_off()
    fig.suptitle("boneage synth: synthetic left hands (top) and their label maps (bottom)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def side_by_side(out: Path, seed: int, ages: list[float], size: int = 384) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from boneage.datasets import rsna_dev

    labels = rsna_dev()
    fig, axes = plt.subplots(3, len(ages), figsize=(2.2 * len(ages), 9))
    for k, age in enumerate(ages):
        # The same hand as in docs/synthetic.png, beside the dev film of the same sex and
        # nearest bone age.
        hand = grid_hand(seed, k, age, size)
        same_sex = labels[labels["sex"] == hand.sex]
        pool = same_sex if len(same_sex) else labels
        row = pool.iloc[int(np.argmin(np.abs(pool["bone_age_months"].to_numpy() - age * 12)))]
        real = Image.open(row["path"]).convert("L")
        real.thumbnail((size, size))
        axes[0, k].imshow(np.asarray(real), cmap="gray")
        axes[0, k].set_title(f"real {row['bone_age_months']:.0f} mo {row['sex']}", fontsize=8)
        axes[1, k].imshow(hand.image, cmap="gray", vmin=0, vmax=1)
        axes[1, k].set_title(f"synthetic {hand.bone_age_months:.0f} mo {hand.sex}", fontsize=8)
        axes[2, k].imshow(_overlay(hand.image, hand.label_map))
        for ax in axes[:, k]:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/synth_vs_real.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ages", type=float, nargs="+", default=[1, 3, 5, 7, 9, 11, 13, 15, 17])
    parser.add_argument("--docs", action="store_true", help="write the synthetic-only docs/synthetic.png")
    args = parser.parse_args()

    from boneage.paths import DOCS_DIR, REPO_DIR

    if args.docs:
        DOCS_DIR.mkdir(exist_ok=True)
        print(docs_grid(DOCS_DIR / "synthetic.png"))
        return
    out = Path(args.out).resolve()
    if out.is_relative_to(REPO_DIR.resolve()):
        raise SystemExit("synth_vs_real: real images must not be written inside the repository")
    print(side_by_side(out, args.seed, args.ages))


if __name__ == "__main__":
    main()

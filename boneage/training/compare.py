"""Which method wins, and when: learning curves of both methods on one fixed validation split.

Protocol (real films): training subsets of increasing size are drawn (seeded, nested within a
repeat) from the training pool (``rsna-dev`` training split + ``rsna-299``); at each size the
multi-step bundle (reference + regression on segmented, measured films) and the end-to-end CNN are
trained on the *same* films and evaluated on the project's fixed ``rsna-dev`` validation split,
which no model ever trains on. Small sizes are repeated with different draws. A combination (the
average of the two estimates) is scored too.

The same protocol runs on synthetic cohorts (``boneage.synth``), where the multi-step method
measures the true label maps (perfect segmentation: an upper bound for that method) and the CNN
learns from the rendered images.

``boneage compare`` writes ``docs/comparison.md`` with its PNG plots; ``--quick`` is a small
version for tests and smoke runs.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.paths import DOCS_DIR, REPO_DIR
from boneage.training.multistep import LabelledMeasurements, fit_bundle, summarise_errors

REAL_SIZES = (50, 100, 200, 400, 1000, 3000, 0)  # 0 = the whole pool
#: Methods in report order ("average": of multi-step and CNN; "average3": of all three, real world only).
METHOD_ORDER = ("multistep", "direct", "average", "perbone", "average3")
SYNTHETIC_SIZES = (50, 100, 200, 400, 1000, 3000, 10000)


@dataclass
class CompareConfig:
    """What ``boneage compare`` runs.

    Attributes:
        sizes: training-set sizes on real films (0 = all of the pool).
        synthetic_sizes: training-set sizes of the synthetic cohorts (empty = skip).
        repeats: draws per size for sizes <= ``repeat_below``; 1 above.
        repeat_below: sizes up to this get ``repeats`` draws.
        direct_sample_budget: CNN training samples seen per run (epochs = budget / size, clipped).
        direct_min_epochs, direct_max_epochs: bounds on the CNN epochs.
        direct_input_size: CNN input side for these runs (smaller than the shipped model's, for time).
        max_measured: cap on real films that are segmented and measured (segmentation is the slow
            part on a CPU); sizes above it use only the films measured... see ``notes``.
        seed: base seed.
        workers: processes segmenting and measuring the real films.
        device: ``cpu`` or ``cuda`` for the CNN runs.
        quick: a small smoke version.
        out_dir: where the report and plots go.
    """

    sizes: tuple[int, ...] = REAL_SIZES
    synthetic_sizes: tuple[int, ...] = SYNTHETIC_SIZES
    repeats: int = 3
    repeat_below: int = 400
    direct_sample_budget: int = 60_000
    direct_min_epochs: int = 3
    direct_max_epochs: int = 40
    direct_input_size: int = 128
    max_measured: int | None = None
    seed: int = 0
    workers: int = 1
    device: str = "cpu"
    quick: bool = False
    out_dir: str = str(DOCS_DIR)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick_config(cls, out_dir: str | Path) -> CompareConfig:
        return cls(sizes=(50, 100), synthetic_sizes=(50, 100), repeats=2, repeat_below=50,
                   direct_sample_budget=1500, direct_min_epochs=2, direct_max_epochs=6, direct_input_size=64,
                   max_measured=160, quick=True, out_dir=str(out_dir))

    def epochs_for(self, n: int) -> int:
        return int(np.clip(round(self.direct_sample_budget / max(n, 1)), self.direct_min_epochs, self.direct_max_epochs))


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def bootstrap_mae(y: np.ndarray, pred: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """MAE and its 95% bootstrap confidence interval (resampling validation cases)."""
    err = np.abs(np.asarray(pred, float) - np.asarray(y, float))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(err), size=(n_boot, len(err)))
    boots = err[idx].mean(axis=1)
    return float(err.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


@dataclass
class RunResult:
    """One method trained on one subset, scored on the validation split."""

    world: str  # "real" or "synthetic"
    size: int
    repeat: int
    method: str  # one of METHOD_ORDER
    mae: float
    ci_low: float
    ci_high: float
    groups: dict
    seconds: float
    predictions: list[float] = field(default_factory=list, repr=False)


# ---------------------------------------------------------------------------------------------
# Data for a world: features (multi-step) and images (CNN) for a pool and a validation set
# ---------------------------------------------------------------------------------------------
@dataclass
class World:
    """Training pool and validation set of one world, in both methods' input forms."""

    name: str
    pool_features: pd.DataFrame
    pool_images: np.ndarray | None  # uint8 (N, S, S); None when every CNN run is reused
    pool_ages: np.ndarray
    pool_sex: np.ndarray
    val_features: pd.DataFrame
    val_images: np.ndarray | None
    val_ages: np.ndarray
    val_sex: np.ndarray


def synthetic_world(pool_size: int, val_size: int, seed: int = 0, image_size: int = 128, progress: bool = True,
                    images: bool = True) -> World:
    """A synthetic world: hands from ``boneage.synth`` (pool and validation from different seeds).

    ``images=False`` skips the CNN inputs (every CNN run reused from an earlier run).
    """
    from tqdm import tqdm

    from boneage.measure import feature_names, measure
    from boneage.preprocess import prepare_model_input
    from boneage.synth import generate_hand

    def cohort(n: int, s: int, desc: str):
        feats, inputs, ages, sexes = [], [], [], []
        for i in tqdm(range(n), disable=not progress, desc=desc, unit="hand"):
            hand = generate_hand(s, i, size=256)
            feats.append(measure(hand.label_map, hand.spacing_mm).features())
            if images:
                model_input, _ = prepare_model_input(hand.image, image_size)
                inputs.append((model_input * 255).astype(np.uint8))
            ages.append(hand.bone_age_months)
            sexes.append(hand.sex)
        return (pd.DataFrame(feats, columns=feature_names()), np.stack(inputs) if images else None,
                np.array(ages), np.array(sexes, dtype=object))

    pf, pi, pa, ps = cohort(pool_size, 10_000 + seed, "synthetic pool")
    vf, vi, va, vs = cohort(val_size, 20_000 + seed, "synthetic validation")
    return World("synthetic", pf, pi, pa, ps, vf, vi, va, vs)


def real_world(config: CompareConfig, progress: bool = True, images: bool = True) -> World:
    """The real world: RSNA training pool and the fixed ``rsna-dev`` validation split.

    Multi-step features need every film segmented and measured (cached under the cache dir);
    only ``config.max_measured`` pool films are measured when set (a note says so).
    ``images=False`` skips decoding the CNN inputs (every CNN run reused from an earlier run).
    """
    from boneage import datasets
    from boneage.training.direct import cached_images
    from boneage.training.multistep import film_features

    dev = datasets.rsna_dev()
    # True-aspect development films first, then the 299 x 299 films (their lost aspect ratio
    # distorts shape measurements), each shuffled: a cap on measured films keeps the true-aspect ones.
    train_dev = dev[dev.split == "train"].sample(frac=1.0, random_state=config.seed)
    squashed = datasets.rsna_299().sample(frac=1.0, random_state=config.seed)
    pool = pd.concat([train_dev, squashed], ignore_index=True)
    val = dev[dev.split == "val"].reset_index(drop=True)
    if config.max_measured is not None and len(pool) > config.max_measured:
        config.notes.append(
            f"Only the first {config.max_measured} of {len(pool)} pool films (rsna-dev training films first) were "
            "segmented and measured (CPU time); real sizes above that were not run."
        )
        pool = pool.head(config.max_measured).reset_index(drop=True)
    from boneage import models

    version = models.get("segmenter").version

    def features(table: pd.DataFrame) -> pd.DataFrame:
        return film_features(table, version, progress=progress, workers=config.workers)

    pool_images = _resize_stack(cached_images(pool), config.direct_input_size) if images else None
    val_images = _resize_stack(cached_images(val), config.direct_input_size) if images else None
    return World(
        "real", features(pool), pool_images, pool["bone_age_months"].to_numpy(float),
        pool["sex"].to_numpy(object), features(val), val_images, val["bone_age_months"].to_numpy(float),
        val["sex"].to_numpy(object),
    )


def _resize_stack(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[-1] == size:
        return images
    import torch
    import torch.nn.functional as F

    out = []
    for start in range(0, len(images), 512):
        t = torch.from_numpy(images[start:start + 512]).float().unsqueeze(1)
        out.append(F.interpolate(t, size=(size, size), mode="area").squeeze(1).round().clamp(0, 255).byte().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Training and scoring at one size
# ---------------------------------------------------------------------------------------------
def _fit_multistep(world: World, idx: np.ndarray, seed: int) -> np.ndarray:
    data = LabelledMeasurements(world.pool_features.iloc[idx].reset_index(drop=True), world.pool_ages[idx],
                                world.pool_sex[idx], [str(i) for i in idx])
    model = fit_bundle(data, description="comparison run", seed=seed, regression=True,
                       max_iter=200 if len(idx) < 1000 else 400)
    # The reported multi-step age (the blend of regression and lookup), as users get it.
    return np.asarray(model.predict_table(world.val_features, world.val_sex)["age"], float)


def _fit_direct(world: World, idx: np.ndarray, config: CompareConfig, seed: int) -> np.ndarray:
    from boneage.direct import sex_to_code
    from boneage.networks import predict_arrays
    from boneage.training.direct import TrainConfig, train_on_arrays

    if world.pool_images is None or world.val_images is None:
        raise ValueError(f"{world.name} world was built without CNN inputs (all CNN runs were to be reused)")

    tc = TrainConfig(epochs=config.epochs_for(len(idx)), input_size=config.direct_input_size,
                     cache_size=config.direct_input_size, batch_size=min(32, max(4, len(idx) // 4)), seed=seed,
                     device=config.device, widths=(16, 32, 64, 128) if config.quick else (32, 64, 128, 256))
    codes = np.array([sex_to_code(s) for s in world.pool_sex[idx]], dtype=np.float32)
    result = train_on_arrays(world.pool_images[idx], world.pool_ages[idx], codes, tc, log=lambda *a, **k: None)
    val_codes = np.array([sex_to_code(s) for s in world.val_sex], dtype=np.float32)
    pred, _ = predict_arrays(result.model, world.val_images, val_codes, result.target_mean, result.target_sd,
                             input_size=config.direct_input_size, device=config.device)
    return np.asarray(pred, float)


def run_world(world: World, sizes: tuple[int, ...], config: CompareConfig, log: Callable[[str], None] = print,
              direct_runs: dict[tuple[int, int], tuple[np.ndarray, float]] | None = None) -> list[RunResult]:
    """Train both methods at every size (with repeats) and score them on the world's validation set.

    Args:
        direct_runs: CNN predictions (and seconds) per ``(size, repeat)`` from an earlier run with
            the same draws (:func:`reusable_direct_runs`); given, no CNN is trained here.

    Raises:
        ValueError: when ``direct_runs`` lacks a ``(size, repeat)`` this run needs.
    """
    results: list[RunResult] = []
    pool_n = len(world.pool_ages)
    for size in sizes:
        n = pool_n if size == 0 else size
        if n > pool_n:
            config.notes.append(f"{world.name}: size {n} skipped (pool has {pool_n})")
            continue
        repeats = config.repeats if n <= config.repeat_below else 1
        for r in range(repeats):
            rng = np.random.default_rng([config.seed, r])
            # Nested within a repeat: the first n of one permutation.
            idx = rng.permutation(pool_n)[:n]
            t0 = time.perf_counter()
            ms = _fit_multistep(world, idx, config.seed + r)
            t1 = time.perf_counter()
            if direct_runs is None:
                d = _fit_direct(world, idx, config, config.seed + r)
                d_secs = time.perf_counter() - t1
            elif (n, r) in direct_runs:
                d, d_secs = direct_runs[(n, r)]
            else:
                raise ValueError(f"{world.name} n={n} draw {r}: no end-to-end run to reuse; run without reusing them")
            t2 = t1 + d_secs
            for method, pred, secs in (("multistep", ms, t1 - t0), ("direct", d, d_secs), ("average", (ms + d) / 2, 0.0)):
                mae, lo, hi = bootstrap_mae(world.val_ages, pred, seed=r)
                groups = summarise_errors(world.val_ages, world.val_sex, pred)
                results.append(RunResult(world.name, n, r, method, mae, lo, hi, groups, secs, pred.tolist()))
            log(f"{world.name} n={n} repeat {r}: multi-step {results[-3].mae:.1f}, end-to-end {results[-2].mae:.1f}, "
                f"average {results[-1].mae:.1f} months (val n={len(world.val_ages)}; {t2 - t0:.0f} s)")
    return results


def reusable_direct_runs(path: str | Path, world: World, config: CompareConfig
                         ) -> dict[tuple[int, int], tuple[np.ndarray, float]]:
    """End-to-end CNN runs of an earlier comparison that this one would repeat exactly.

    The CNN sees neither the segmenter nor the measurements, so a run that changed only the
    multi-step side can reuse them; they are the same runs only with the same draws (seed, pool
    size, validation set) and the same CNN settings, which are checked.

    Args:
        path: ``comparison_results.json`` of the earlier run.
        world: this run's world (its pool size and validation set are compared).
        config: this run's settings.

    Returns:
        ``{(size, repeat): (predictions, seconds)}``.

    Raises:
        ValueError: naming the file and what differs.
    """
    blob = json.loads(Path(path).read_text())
    old = blob.get("worlds", {}).get(world.name)
    if old is None:
        raise ValueError(f"{path}: has no {world.name} world to reuse end-to-end runs from")
    cnn = old.get("cnn") or cnn_settings(blob["config"])
    checks = (
        ("seed", blob.get("config", {}).get("seed"), config.seed),
        ("pool size", int(old["pool_size"]), len(world.pool_ages)),
        ("CNN settings", cnn, cnn_settings(config)),
        ("validation ages", old["val_ages"], [float(a) for a in world.val_ages]),
    )
    for what, theirs, ours in checks:
        if theirs != ours:
            shown = "differ" if what == "validation ages" else f"{theirs!r} there, {ours!r} here"
            raise ValueError(f"{path}: {world.name} end-to-end runs cannot be reused: {what} {shown}")
    return {(r["size"], r["repeat"]): (np.asarray(r["predictions"], float), float(r["seconds"]))
            for r in blob["results"] if r["world"] == world.name and r["method"] == "direct"}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def summary_table(results: list[RunResult], world: str) -> pd.DataFrame:
    """One row per size: mean MAE over repeats and the CI of the first repeat, per method."""
    rows = []
    sub = [r for r in results if r.world == world]
    for size in sorted({r.size for r in sub}):
        row = {"n_train": size}
        for method in METHOD_ORDER:
            rs = [r for r in sub if r.size == size and r.method == method]
            if not rs:
                continue
            maes = [r.mae for r in rs]
            row[method] = f"{np.mean(maes):.1f} [{rs[0].ci_low:.1f}-{rs[0].ci_high:.1f}]" + (
                f" (sd {np.std(maes):.1f}, {len(rs)} draws)" if len(rs) > 1 else "")
            for g in ("female", "male", "under_6y", "6_to_12y", "over_12y"):
                vals = [r.groups.get(g, {}).get("mae_months") for r in rs]
                vals = [v for v in vals if v is not None]
                row[f"{method} {g}"] = f"{np.mean(vals):.1f}" if vals else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def _plot_learning_curves(results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({r.world for r in results})
    fig, axes = plt.subplots(1, len(worlds), figsize=(6 * len(worlds), 4.2), squeeze=False)
    for ax, world in zip(axes[0], worlds):
        for method, colour, label in (("multistep", "#d62728", "multi-step"), ("direct", "#2ca02c", "end-to-end CNN"),
                                      ("average", "#7f7f7f", "average of both"), ("perbone", "#1f77b4", "per-bone maturity"),
                                      ("average3", "#9467bd", "average of all three")):
            rs = [r for r in results if r.world == world and r.method == method]
            if not rs:
                continue
            sizes = sorted({r.size for r in rs})
            mean = [np.mean([r.mae for r in rs if r.size == s]) for s in sizes]
            lo = [min(r.ci_low for r in rs if r.size == s) for s in sizes]
            hi = [max(r.ci_high for r in rs if r.size == s) for s in sizes]
            ax.plot(sizes, mean, "o-", color=colour, label=label)
            ax.fill_between(sizes, lo, hi, color=colour, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("training films")
        ax.set_ylabel("validation MAE (months)")
        ax.set_title(f"{world} world")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bland_altman(y: np.ndarray, preds: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(preds), figsize=(5.5 * len(preds), 4.2), squeeze=False)
    for ax, (name, pred) in zip(axes[0], preds.items()):
        diff = pred - y
        mean = (pred + y) / 2
        bias, sd = diff.mean(), diff.std(ddof=1)
        ax.scatter(mean / 12, diff, s=8, alpha=0.5)
        for v, style in ((bias, "-"), (bias + 1.96 * sd, "--"), (bias - 1.96 * sd, "--")):
            ax.axhline(v, color="k", linestyle=style, linewidth=1)
        ax.set_xlabel("mean of method and reference (years)")
        ax.set_ylabel("method - reference (months)")
        ax.set_title(f"{name}: bias {bias:+.1f}, LoA +-{1.96 * sd:.1f} months")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def agreement(y: np.ndarray, ms: np.ndarray, d: np.ndarray, threshold: float = 24.0) -> dict:
    """Where the two methods disagree by more than ``threshold`` months, which one is closer?"""
    gap = np.abs(ms - d)
    dis = gap > threshold
    closer_ms = np.abs(ms - y) < np.abs(d - y)
    return {
        "threshold_months": threshold,
        "n": int(len(y)),
        "n_disagree": int(dis.sum()),
        "multistep_closer_when_disagree": float(closer_ms[dis].mean()) if dis.any() else None,
        "correlation": float(np.corrcoef(ms, d)[0, 1]) if len(y) > 2 else None,
        "mean_abs_difference": float(gap.mean()),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


@dataclass
class WorldSummary:
    """What the report needs of a world (also restored from a saved results file)."""

    name: str
    val_ages: np.ndarray
    val_sex: np.ndarray
    pool_size: int
    cnn: str = ""  #: how that world's CNN runs were trained (worlds merged from different runs differ)

    @classmethod
    def of(cls, world: World, config: CompareConfig) -> WorldSummary:
        return cls(world.name, world.val_ages, world.val_sex, len(world.pool_ages), cnn_settings(config))


def cnn_settings(config: CompareConfig | dict) -> str:
    """One line on how the comparison's CNN runs are trained (budget, input size, epoch bounds)."""
    c = config if isinstance(config, dict) else asdict(config)
    return (f"about {c['direct_sample_budget']} training samples per run at {c['direct_input_size']} px "
            f"({c['direct_min_epochs']}-{c['direct_max_epochs']} epochs)")


def note_world(note: str) -> str | None:
    """The world a report note speaks of, by its opening words ("synthetic world ...", "results for real n=...").

    Returns:
        ``"synthetic"``, ``"real"``, or ``None`` for a note on the whole comparison.
    """
    words = note.strip().lower()
    for world in ("synthetic", "real"):
        if words.startswith((f"{world} world", f"results for {world} ")):
            return world
    return None


def notes_to_carry(notes: list[str], taken_worlds: set[str]) -> list[str]:
    """The notes of a merged file that still hold in the merged report.

    Args:
        notes: the merged file's notes.
        taken_worlds: the worlds whose results this report takes from that file.

    Returns:
        Its notes on the whole comparison and on the worlds taken from it, in order. Notes on a world that
        another run supplies (e.g. an earlier synthetic world, replaced by a rerun) would describe results the
        report no longer shows, and "merged in" lines are rewritten by the merge itself.
    """
    return [n for n in notes if "merged in" not in n and note_world(n) in (None, *taken_worlds)]


def load_results(path: str | Path) -> tuple[list[RunResult], dict[str, WorldSummary], list[str], float, str]:
    """Results saved by :func:`write_report` (to merge a run of one world into a report of both).

    Returns:
        ``(results, worlds, notes, minutes, provenance)``; provenance is the command and commit that
        made the file ("" for files written before they were recorded).
    """
    blob = json.loads(Path(path).read_text())
    results = [RunResult(**r) for r in blob["results"]]
    # Files written before the CNN settings were kept per world: the file's own run settings.
    default_cnn = cnn_settings(blob["config"]) if "direct_sample_budget" in blob.get("config", {}) else ""
    worlds = {
        name: WorldSummary(name, np.array(w["val_ages"], float), np.array(w["val_sex"], object), int(w["pool_size"]),
                           w.get("cnn", default_cnn))
        for name, w in blob["worlds"].items()
    }
    provenance = f"`{blob['command']}` at commit `{blob.get('commit', '?')}`" if blob.get("command") else ""
    return results, worlds, list(blob.get("config", {}).get("notes", [])), float(blob.get("minutes", 0.0)), provenance


def write_report(results: list[RunResult], worlds: dict[str, WorldSummary], config: CompareConfig, command: str,
                 minutes: float) -> Path:
    """Write ``comparison.md`` and its plots into ``config.out_dir``."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot_learning_curves(results, out / "comparison_learning_curves.png")
    sections = []
    for name, world in worlds.items():
        rs = [r for r in results if r.world == name]
        if not rs:
            continue
        largest = max(r.size for r in rs)
        ms = np.array(next(r.predictions for r in rs if r.size == largest and r.method == "multistep"))
        d = np.array(next(r.predictions for r in rs if r.size == largest and r.method == "direct"))
        _plot_bland_altman(world.val_ages, {"multi-step": ms, "end-to-end": d}, out / f"comparison_bland_altman_{name}.png",
                           f"{name} world, trained on {largest} films")
        agree = agreement(world.val_ages, ms, d)
        table = summary_table(results, name)
        main_cols = ["n_train", *METHOD_ORDER]
        group_cols = [c for c in table.columns if c not in main_cols]
        winner = _winners(rs)
        closer = agree["multistep_closer_when_disagree"]
        sections.append(f"""## {name.capitalize()} world

Validation: {len(world.val_ages)} {'films of the fixed rsna-dev validation split' if name == 'real' else 'synthetic hands from a separate seed'};
training pool: {world.pool_size} {'films (rsna-dev training split first, then rsna-299)' if name == 'real' else 'synthetic hands'}.
{'Multi-step here measures the TRUE label maps (perfect segmentation): an upper bound for that method.' if name == 'synthetic' else 'Multi-step measures the shipped segmenter output.'}
End-to-end CNN: {world.cnn or cnn_settings(config)}.

MAE in months, mean over draws, with the 95% bootstrap CI (validation cases resampled) of the first draw:

{_markdown(table[[c for c in main_cols if c in table.columns]])}

By sex and age band (MAE, months):

{_markdown(table[["n_train"] + group_cols])}

Lower MAE per size: {winner}.

Agreement at n = {largest}: correlation {agree['correlation']:.2f}, mean |difference| {agree['mean_abs_difference']:.1f} months;
{agree['n_disagree']} of {agree['n']} cases differ by more than {agree['threshold_months']:.0f} months{'' if closer is None else f', and there the multi-step estimate is closer to the reference in {100 * closer:.0f}% of them'}.

![Bland-Altman]({f'comparison_bland_altman_{name}.png'})
""")
    notes = "\n".join(f"- {n}" for n in config.notes) or "- none"
    text = f"""# Multi-step, per-bone and end-to-end: learning curves

Generated by `{command}` at commit `{_git_commit()}` in {minutes:.0f} minutes on {_hardware(config.device)}.
{'**Quick mode**: tiny sizes and budgets, a smoke test of the machinery — not evidence either way.' if config.quick else ''}

Protocol: both methods are trained on the same draws of the training pool at each size and scored on one
fixed validation set that no model trains on; sizes up to {config.repeat_below} are drawn {config.repeats} time(s). The CNN here
is trained on a fixed sample budget at a smaller input than the shipped model (each world says how), so its
numbers are lower bounds of what the architecture can do; the multi-step runs refit the reference and the
regression on the subset's measurements. "average" is the mean of the multi-step and CNN estimates;
where per-bone runs were added (real world), "perbone" is the per-bone maturity network trained on the
same draws and "average3" the mean of all three.

![learning curves](comparison_learning_curves.png)

{''.join(sections)}
## Notes
{notes}
"""
    path = out / "comparison.md"
    path.write_text(text)
    (out / "comparison_results.json").write_text(json.dumps({
        "command": command,
        "commit": _git_commit(),
        "config": {k: v for k, v in asdict(config).items()},
        "minutes": minutes,
        "worlds": {n: {"val_ages": w.val_ages.tolist(), "val_sex": [str(x) for x in w.val_sex], "pool_size": w.pool_size,
                       "cnn": w.cnn} for n, w in worlds.items()},
        "results": [asdict(r) for r in results],
    }, default=str))
    return path


def _markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _winners(rs: list[RunResult]) -> str:
    parts = []
    for size in sorted({r.size for r in rs}):
        names = {"multistep": "multi-step", "direct": "end-to-end", "perbone": "per-bone"}
        m = {method: np.mean([r.mae for r in rs if r.size == size and r.method == method]) for method in names
             if any(r.size == size and r.method == method for r in rs)}
        best = min(m, key=m.get)
        parts.append(f"n={size}: {names[best]}")
    return "; ".join(parts)


def _hardware(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU ({torch.get_num_threads()} threads)"


def run_compare(config: CompareConfig, command: str = "boneage compare", real: bool = True,
                log: Callable[[str], None] = print, progress: bool = True,
                merge: str | Path | Iterable[str | Path] | None = None,
                reuse_direct: str | Path | None = None) -> Path:
    """Run the comparison and write the report; returns the report path.

    Args:
        config: sizes, budgets, output folder.
        command: the command line quoted in the report.
        real: run the real world (needs ``../shared`` and the shipped segmenter).
        log: progress lines.
        progress: progress bars.
        merge: ``comparison_results.json`` files of earlier runs (one or several); their results join
            this report and the (world, training-set size) pairs they have are not redone, so a run
            can add a world or larger sizes to earlier ones. A world is taken from the first file
            that has it.
        reuse_direct: ``comparison_results.json`` of an earlier run whose end-to-end CNN runs are
            reused (same draws and CNN settings, checked; see :func:`reusable_direct_runs`): only
            the multi-step side is refitted, e.g. after a new segmenter.
    """
    t0 = time.perf_counter()
    worlds: dict[str, WorldSummary] = {}
    results: list[RunResult] = []
    earlier_minutes = 0.0
    for path in [merge] if isinstance(merge, (str, Path)) else list(merge or []):
        old_results, old_worlds, old_notes, minutes, provenance = load_results(path)
        new_worlds = {name: w for name, w in old_worlds.items() if name not in worlds}
        if not new_worlds:
            continue
        results += [r for r in old_results if r.world in new_worlds]
        worlds.update(new_worlds)
        earlier_minutes += minutes
        config.notes += [n for n in notes_to_carry(old_notes, set(new_worlds)) if n not in config.notes]
        merged = ", ".join(f"{w} n={', '.join(str(n) for n in sorted({r.size for r in old_results if r.world == w}))}"
                           for w in new_worlds)
        made_by = f" ({provenance}, {minutes:.0f} min)" if provenance else f" ({minutes:.0f} min)"
        config.notes.append(f"results for {merged} come from an earlier run merged in{made_by}")
    done = {(r.world, r.size) for r in results}

    def todo(world: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
        """Sizes not merged in (size 0 = the whole pool, known once a merged run has the world)."""
        pool = worlds[world].pool_size if world in worlds else None
        return tuple(n for n in sizes if (world, pool if n == 0 and pool else n) not in done)

    # Only (world, size) pairs not merged in are run: a later run can extend an earlier one.
    synthetic_todo = todo("synthetic", config.synthetic_sizes)
    images = reuse_direct is None
    reuse_provenance = ""
    if reuse_direct is not None:
        # A bad file fails now, before any world is built.
        try:
            reuse_provenance = load_results(reuse_direct)[4] or str(reuse_direct)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{reuse_direct}: not a readable comparison_results.json ({type(exc).__name__}: {exc})") from None

    def reused(world: World) -> dict[tuple[int, int], tuple[np.ndarray, float]] | None:
        if reuse_direct is None:
            return None
        runs = reusable_direct_runs(reuse_direct, world, config)
        config.notes.append(f"{world.name} world: the end-to-end CNN runs (same draws and settings) are reused from "
                            f"{reuse_provenance}; only the multi-step side was refitted here")
        return runs

    if synthetic_todo:
        pool = max(config.synthetic_sizes)
        world = synthetic_world(pool, 120 if config.quick else 600, config.seed, config.direct_input_size, progress, images)
        results += run_world(world, synthetic_todo, config, log, reused(world))
        worlds["synthetic"] = WorldSummary.of(world, config)
    real_todo = todo("real", config.sizes)
    if real and real_todo:
        try:
            world = real_world(config, progress, images)
        except (FileNotFoundError, KeyError) as exc:
            config.notes.append(f"real world not run: {exc}")
        else:
            results += run_world(world, real_todo, config, log, reused(world))
            worlds["real"] = WorldSummary.of(world, config)
    return write_report(results, worlds, config, command, earlier_minutes + (time.perf_counter() - t0) / 60)


# ---------------------------------------------------------------------------------------------
# Per-bone maturity curves, added to an earlier comparison on the same draws
# ---------------------------------------------------------------------------------------------
def real_pool_tables(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The real world's training pool (in draw order) and validation table, as :func:`real_world` orders them."""
    from boneage import datasets

    dev = datasets.rsna_dev()
    train_dev = dev[dev.split == "train"].sample(frac=1.0, random_state=seed)
    squashed = datasets.rsna_299().sample(frac=1.0, random_state=seed)
    return pd.concat([train_dev, squashed], ignore_index=True), dev[dev.split == "val"].reset_index(drop=True)


def perbone_runs(results: list[RunResult], seed: int, crop_budget: int = 250_000, min_epochs: int = 2,
                 max_epochs: int = 20, max_repeats: int = 1, limit_pool: int | None = None,
                 widths: tuple[int, ...] = (16, 32, 64, 128), log: Callable[[str], None] = print) -> list[RunResult]:
    """Train the per-bone network on the same real-world draws as earlier runs and score it.

    For every real-world training size in ``results`` (and each of its first ``max_repeats``
    draws), the per-bone network is trained on exactly that draw's films (their cached crops) for
    ``crop_budget`` crops (epochs clipped to ``min_epochs``-``max_epochs``) and its consensus scored
    on the validation split; "average3" is the mean of multi-step, CNN and per-bone ages of the
    same draw (a stand-in for the stacked estimate, whose weights need a hold-out per size).

    Returns:
        The new :class:`RunResult` rows (methods ``perbone`` and ``average3``).
    """
    import tempfile

    from boneage.direct import sex_to_code
    from boneage.training.perbone import TrainConfig as PerBoneConfig
    from boneage.training.perbone import build_crop_cache, film_consensus, predict_crop_arrays, train_network

    pool, val = real_pool_tables(seed)
    if limit_pool:
        pool = pool.head(limit_pool).reset_index(drop=True)
    pool_crops, val_crops = build_crop_cache(pool, log=log), build_crop_cache(val, log=log)
    pool_ages = pool["bone_age_months"].to_numpy(float)
    pool_codes = np.array([sex_to_code(x) for x in pool["sex"]], np.float32)
    val_ages = val["bone_age_months"].to_numpy(float)
    val_sex = val["sex"].to_numpy(object)
    val_codes = np.array([sex_to_code(x) for x in val_sex], np.float32)
    real = [r for r in results if r.world == "real"]
    if real and len(real[0].predictions) != len(val_ages):
        raise ValueError("the earlier real-world results were scored on another validation set")
    out: list[RunResult] = []
    for size in sorted({r.size for r in real if r.method == "multistep"}):
        n = min(size, len(pool))
        draws = sorted({r.repeat for r in real if r.size == size and r.method == "multistep"})[:max_repeats]
        for rep in draws:
            idx = np.random.default_rng([seed, rep]).permutation(len(pool))[:n]
            crops = int(pool_crops["present"][idx].sum())
            epochs = int(np.clip(round(crop_budget / max(crops, 1)), min_epochs, max_epochs))
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                config = PerBoneConfig(epochs=epochs, batch=min(256, max(16, crops // 8)), widths=widths, seed=seed + rep,
                                       checkpoint_minutes=1e9, out=tmp)
                network = train_network(pool_crops["images"][idx], pool_crops["present"][idx], pool_ages[idx],
                                        pool_codes[idx], config, Path(tmp), log=lambda *_: None)
            ages, scales = predict_crop_arrays(network, val_crops["images"], val_crops["present"], val_codes)
            pred, _, _ = film_consensus(ages, scales)
            # A film without enough bones gets the draw's median age (scored, never dropped).
            pred = np.where(np.isfinite(pred), pred, float(np.median(pool_ages[idx])))
            secs = time.perf_counter() - t0
            mae, lo, hi = bootstrap_mae(val_ages, pred, seed=rep)
            out.append(RunResult("real", size, rep, "perbone", mae, lo, hi, summarise_errors(val_ages, val_sex, pred),
                                 secs, pred.tolist()))
            others = {r.method: np.asarray(r.predictions) for r in real if r.size == size and r.repeat == rep}
            if "multistep" in others and "direct" in others:
                avg = (others["multistep"] + others["direct"] + pred) / 3
                mae3, lo3, hi3 = bootstrap_mae(val_ages, avg, seed=rep)
                out.append(RunResult("real", size, rep, "average3", mae3, lo3, hi3,
                                     summarise_errors(val_ages, val_sex, avg), 0.0, avg.tolist()))
            log(f"real n={size} draw {rep}: per-bone {mae:.1f} months ({epochs} epochs, {secs:.0f} s)"
                + (f", average of three {out[-1].mae:.1f}" if out[-1].method == "average3" else ""))
    return out


def add_perbone_command(results_path: str | Path, out_dir: str | Path, crop_budget: int, max_repeats: int,
                        command: str, log: Callable[[str], None] = print) -> Path:
    """Add per-bone curves to a saved comparison and rewrite its report (see :func:`perbone_runs`)."""
    results, worlds, notes, minutes, provenance = load_results(results_path)
    blob = json.loads(Path(results_path).read_text())
    known = set(CompareConfig.__dataclass_fields__)
    config = CompareConfig(**{k: (tuple(v) if isinstance(v, list) and k != "notes" else v)
                              for k, v in blob.get("config", {}).items() if k in known})
    config.out_dir = str(out_dir)
    config.notes = [n for n in notes if "per-bone" not in n]
    t0 = time.perf_counter()
    results = [r for r in results if r.method not in ("perbone", "average3")]
    new = perbone_runs(results, config.seed, crop_budget=crop_budget, max_repeats=max_repeats, log=log)
    config.notes.append(
        f"Per-bone maturity curves (real world) added by `{command}`: the per-bone network trained on the same draws "
        f"(first {max_repeats} draw(s) per size) for about {crop_budget} crops each (2-20 epochs); 'average3' is the "
        "mean of the three methods' ages, a stand-in for the stacked estimate. The other methods' runs are those of "
        f"the earlier run{(' ' + provenance) if provenance else ''}.")
    return write_report(results + new, worlds, config, command, minutes + (time.perf_counter() - t0) / 60)

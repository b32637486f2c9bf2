"""Fitting the combined estimate (``boneage train combined``): out-of-fold stacking.

1. The multi-step bundle is refitted on the ``rsna-dev`` training split *without* the shared
   calibration hold-out (:func:`boneage.training.direct.calibration_holdout`), so that its ages
   on the hold-out are out-of-fold like those of the CNN and the per-bone network (both of which
   never trained on those films).
2. Every hold-out film is estimated by the full pipeline (:class:`boneage.estimate.BoneAgeEstimator`,
   the same code as ``boneage predict``), with the sex given and with it withheld.
3. :func:`boneage.combine.fit_stacking` fits weights and interval factors for every subset of
   methods and both sex modes; the fixed validation split is then estimated with the shipped
   models and the stacking, and only reported.

Writes ``data/models/combined/stacking.json`` and ``metrics.json`` (the per-film predictions go
to the cache dir: they are derived from research-only films).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.agemap import describe_choice
from boneage.combine import METHODS, MODEL_VERSION, STACKING_FILE, Combiner, fit_stacking


def holdout_multistep(seed: int = 0, workers: int = 1):
    """The multi-step bundle refitted without the calibration hold-out (its ages there are out-of-fold).

    The refit takes the shipped bundle's squashed ``rsna-299`` films (as many, with the same features, read at
    the same aspect; its ``metrics.json`` says which) as its regression did, so the hold-out ages are those of
    the same recipe.
    """
    import json

    from boneage import datasets, models
    from boneage.multistep import METRICS_FILE, MULTISTEP_DIR, MultiStepModel
    from boneage.training.direct import calibration_holdout
    from boneage.training.multistep import (
        LabelledMeasurements,
        film_features,
        fit_bundle,
        load_segmenter_fn,
        rsna_299_films,
        rsna_299_recipe,
        squashed_measurements,
    )

    dev = datasets.rsna_dev()
    dev_train = dev[dev["split"] == "train"].reset_index(drop=True)
    holdout, _ = calibration_holdout(dev_train, seed)
    seg_version = models.get("segmenter").version
    feats = film_features(dev_train, seg_version, None if workers > 1 else load_segmenter_fn("cpu"), workers=workers)
    data = LabelledMeasurements(feats, dev_train["bone_age_months"].to_numpy(float), dev_train["sex"].to_numpy(object),
                                [str(i) for i in dev_train["id"]])
    in_holdout = dev_train["id"].isin(holdout["id"]).to_numpy()
    shipped = MultiStepModel.load()
    n_299, seed_299, squash_safe_only, widened = rsna_299_recipe(
        json.loads((MULTISTEP_DIR / METRICS_FILE).read_text()))
    extra = None
    if n_299:
        squashed = rsna_299_films(n_299, seed_299, widened=widened)
        extra = squashed_measurements(
            squashed, film_features(squashed, seg_version, None if workers > 1 else load_segmenter_fn("cpu"),
                                    workers=workers),
            squash_safe_only=squash_safe_only)
    return fit_bundle(data.subset(~in_holdout), description="multi-step refitted without the calibration hold-out",
                      seed=seed, lengths_mm=shipped.lengths_mm, regression_extra=extra), holdout


def predict_films(estimator, table: pd.DataFrame, desc: str) -> pd.DataFrame:
    """Every method's age and interval for each film, sex given and withheld (one row per film and mode)."""
    from tqdm import tqdm

    rows = []
    for _, film in tqdm(table.iterrows(), total=len(table), desc=desc, unit="film", mininterval=10):
        for mode, sex in (("sex_known", film["sex"]), ("sex_unknown", "unknown")):
            result = estimator.estimate(str(film["path"]), sex=sex)
            row = {"id": int(film["id"]), "mode": mode, "sex": film["sex"], "target": float(film["bone_age_months"]),
                   "status": result.status}
            for m in METHODS + ("combined",):
                est = getattr(result, m)
                row[f"{m}_age"] = est.age_months if est.available else np.nan
                row[f"{m}_lower"] = est.lower_90 if est.available else np.nan
                row[f"{m}_upper"] = est.upper_90 if est.available else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _ages_and_half_widths(frame: pd.DataFrame) -> tuple[dict, dict]:
    ages = {m: frame[f"{m}_age"].to_numpy(float) for m in METHODS}
    half = {m: (frame[f"{m}_upper"] - frame[f"{m}_lower"]).to_numpy(float) / 2.0 for m in METHODS}
    return ages, half


def summarise(frame: pd.DataFrame, column: str) -> dict:
    """MAE, bias and 90% coverage of one method's ages by age band (films with an age)."""
    y = frame["target"].to_numpy(float)
    a = frame[f"{column}_age"].to_numpy(float)
    lo, hi = frame[f"{column}_lower"].to_numpy(float), frame[f"{column}_upper"].to_numpy(float)
    ok = np.isfinite(a)
    bands = {"all": ok, "female": ok & (frame["sex"] == "F").to_numpy(), "male": ok & (frame["sex"] == "M").to_numpy(),
             "< 6 y": ok & (y < 72), "6-12 y": ok & (y >= 72) & (y <= 144), "> 12 y": ok & (y > 144)}
    out = {}
    for name, m in bands.items():
        if m.sum():
            out[name] = {"n": int(m.sum()), "mae": round(float(np.abs(a[m] - y[m]).mean()), 2),
                         "bias": round(float((a[m] - y[m]).mean()), 2),
                         "coverage": round(float(((y[m] >= lo[m]) & (y[m] <= hi[m])).mean()), 3),
                         "width": round(float((hi[m] - lo[m]).mean()), 1)}
    out["available"] = round(float(ok.mean()), 3)
    return out


def train_combined(out: str | Path | None = None, seed: int = 0, workers: int = 1, limit: int = 0, log=print) -> dict:
    """Fit and write the stacking (see the module docstring).

    Args:
        out: output folder (default ``data/models/combined``).
        seed: the hold-out's seed (that of the CNN and per-bone training runs).
        workers: measuring processes for the multi-step refit.
        limit: only N hold-out and validation films (smoke test).

    Returns:
        The metrics (also ``OUT/metrics.json``).
    """
    from boneage import datasets
    from boneage.estimate import BoneAgeEstimator
    from boneage.paths import MODELS_DIR, cache_dir

    out = Path(out) if out else MODELS_DIR / "combined"
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    multistep_oof, holdout = holdout_multistep(seed, workers)
    dev = datasets.rsna_dev()
    val = dev[dev["split"] == "val"].reset_index(drop=True)
    if limit:
        holdout, val = holdout.head(limit), val.head(limit)
    estimator = BoneAgeEstimator.load()
    if estimator.combiner is not None:
        estimator.combiner = None  # the stacking being fitted must not feed itself
    shipped_multistep = estimator.multistep
    estimator.multistep = multistep_oof
    hold = predict_films(estimator, holdout, "hold-out")
    estimator.multistep = shipped_multistep
    valp = predict_films(estimator, val, "validation")
    hold.to_csv(cache_dir() / "combined_holdout_predictions.csv", index=False)
    valp.to_csv(cache_dir() / "combined_validation_predictions.csv", index=False)

    stacking: dict = {"model_version": MODEL_VERSION, "seed": seed}
    for mode in ("sex_known", "sex_unknown"):
        part = hold[hold["mode"] == mode]
        ages, half = _ages_and_half_widths(part)
        stacking[mode] = fit_stacking(ages, half, part["target"].to_numpy(float), seed=seed)
    (out / STACKING_FILE).write_text(json.dumps(stacking, indent=2) + "\n")

    combiner = Combiner(stacking)
    for frame in (hold, valp):
        for i, row in frame.iterrows():
            est = {m: (row[f"{m}_age"], row[f"{m}_lower"], row[f"{m}_upper"]) for m in METHODS if np.isfinite(row[f"{m}_age"])}
            c = combiner.combine(est, row["sex"] if row["mode"] == "sex_known" else None)
            frame.loc[i, ["combined_age", "combined_lower", "combined_upper"]] = (
                (c.age_months, c.lower_90, c.upper_90) if c is not None else (np.nan, np.nan, np.nan))
    metrics = {
        "model_version": MODEL_VERSION,
        "holdout_n": int(len(holdout)),
        "validation_n": int(len(val)),
        "validation": {mode: {m: summarise(valp[valp["mode"] == mode], m) for m in METHODS + ("combined",)}
                       for mode in ("sex_known", "sex_unknown")},
        "holdout_in_sample": {mode: {m: summarise(hold[hold["mode"] == mode], m) for m in METHODS + ("combined",)}
                              for mode in ("sex_known", "sex_unknown")},
        "minutes": round((time.time() - start) / 60, 1),
        "command": f"boneage train combined --seed {seed}" + (f" --limit {limit}" if limit else ""),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(out)
    v = metrics["validation"]["sex_known"]
    log("validation MAE (sex known): " + ", ".join(f"{m} {v[m]['all']['mae']}" for m in METHODS + ("combined",) if "all" in v[m]))
    return metrics


_NAMES = {"multistep": "multi-step", "perbone": "per-bone", "direct": "end-to-end CNN", "combined": "combined"}


def write_model_card(folder: str | Path | None = None) -> Path:
    """Write ``MODEL_CARD.md`` beside the stacking from its ``stacking.json`` and ``metrics.json``."""
    from boneage.paths import MODELS_DIR

    folder = Path(folder) if folder else MODELS_DIR / "combined"
    stacking = json.loads((folder / STACKING_FILE).read_text())
    m = json.loads((folder / "metrics.json").read_text())

    def weights_table(mode: str) -> str:
        rows = ["| methods available | weights | interval factor | age-band bias map | out-of-fold MAE (months) | out-of-fold 90% coverage |",
                "|---|---|---|---|---|---|"]
        for key, v in stacking[mode].items():
            w = ", ".join(f"{_NAMES[k]} {x:.2f}" for k, x in v["weights"].items())
            rows.append(f"| {' + '.join(_NAMES[k] for k in key.split('+'))} | {w} | {v['factor']:.2f} | {describe_choice(v.get('age_map_choice'))} | "
                        f"{v['oof_mae']:.1f} | {v['oof_coverage']:.1%} |")
        return "\n".join(rows)

    def validation_table(mode: str) -> str:
        rows = ["| method | MAE (months) | bias (months) | 90% coverage | mean interval width | < 6 y | 6-12 y | > 12 y |",
                "|---|---|---|---|---|---|---|---|"]
        for method, g in m["validation"][mode].items():
            if "all" not in g:
                continue
            band = lambda b: f"{g[b]['mae']:.1f} ({g[b]['bias']:+.1f})" if b in g else "-"  # noqa: E731
            a = g["all"]
            rows.append(f"| {_NAMES[method]} | {a['mae']:.1f} | {a['bias']:+.1f} | {a['coverage']:.1%} | {a['width']:.0f} | "
                        f"{band('< 6 y')} | {band('6-12 y')} | {band('> 12 y')} |")
        return "\n".join(rows)

    full = stacking["sex_known"].get("+".join(METHODS), {}).get("weights", {})
    top = max(full, key=full.get) if full else None
    degenerate = (f" With the sex given, the least-squares weights of all three put everything on the {_NAMES[top]} "
                  "method: on these films mixing in the others did not lower the error (their errors overlap and are "
                  f"larger). The combined estimate then equals the {_NAMES[top]} estimate; the others are still shown "
                  "beside it, and where it is withheld the weights of the remaining methods apply."
                  if top is not None and full[top] >= 0.99 else "")
    card = f"""# Model card: combined estimate (`{MODEL_VERSION}`)

**Research and education use only. Not a medical device; not for clinical decisions.** Fitted on RSNA
Pediatric Bone Age Challenge films (research and education use only; Halabi SS et al., *Radiology*
2019;290:498-503).

## What it is
The headline estimate of the app, the CLI and the SR: a weighted mean of the three methods' ages
(`boneage.combine.Combiner`), age +- factor x (weighted mean half-width of the methods' own 90%
intervals). One weight set per subset of available methods (a method can be withheld for a film) and
per sex mode. Weights: non-negative, summing to one, least squares; factor: split-conformal 90%.

## How it was fitted (`{m['command']}`, {m['minutes']:.0f} min on 2 CPU cores)
- Films: the {m['holdout_n']}-film calibration hold-out of the `rsna-dev` training split, shared by every
  learnt method: the end-to-end CNN and the per-bone network never trained on them, and the multi-step
  bundle was refitted without them for this purpose, so every method's age there is out-of-fold.
- Every film was estimated by the full pipeline (`BoneAgeEstimator.estimate`, as `boneage predict`
  does: upright reading, test-time tilts), once with the sex given and once with it withheld.
- The out-of-fold figures below come from 5-fold cross-validation of the weights on those films.
- Age-band bias: the weighted mean is drawn toward the crowded middle of the training ages (children
  under 12 y read too old, adolescents too young). Where it pays on those films, the mean and its
  interval are read back through a monotone map fitted on the out-of-fold means (`boneage/agemap.py`:
  scored on random halves as MAE + worst band bias; a map must win by more than 0.25 month).
- The fixed validation split was used for nothing but the validation table.

## Weights, sex given
{weights_table('sex_known')}

## Weights, sex unknown
{weights_table('sex_unknown')}

## Validation (fixed `rsna-dev` validation split, {m['validation_n']} films, full pipeline), sex given
MAE by age band in months (bias in brackets).

{validation_table('sex_known')}

### Sex withheld
{validation_table('sex_unknown')}

## Limitations
- {m['holdout_n']} films decide the weights.{degenerate}
- Scored on one population (RSNA); other hospitals' films may favour other weights.
"""
    path = folder / "MODEL_CARD.md"
    path.write_text(card)
    return path


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``boneage train combined``."""
    parser.add_argument("--seed", type=int, default=0, help="hold-out seed (that of the CNN and per-bone runs)")
    parser.add_argument("--workers", type=int, default=1, help="measuring processes for the multi-step refit")
    parser.add_argument("--limit", type=int, default=0, help="only N hold-out and validation films (smoke test)")
    parser.add_argument("--out", default="", help="output folder (default data/models/combined)")


def train_command(args: argparse.Namespace) -> int:
    """``boneage train combined``."""
    train_combined(args.out or None, args.seed, args.workers, args.limit)
    return 0

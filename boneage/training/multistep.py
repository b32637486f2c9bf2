"""Building the multi-step bundle (:mod:`boneage.multistep` is its inference half).

``boneage train multistep``, ``boneage reference build`` and
``python -m boneage.training.multistep sex-unknown``: films are segmented and measured (features
cached outside the repository), the maturity reference is built and its coverage calibrated, the
regression and the blend are fitted, the mm length model is built from synthetic hands, and the
bundle is evaluated on the fixed validation split and described in its model card.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from boneage import anatomy
from boneage.growth import (
    AgeRegression,
    LookupBlend,
    ReferenceTable,
    build_reference,
    calibrate_tau,
    lookup_out_of_fold,
)
from boneage.io import Radiograph
from boneage.measure import MEASURE_VERSION, Measurements, feature_names, measure
from boneage.multistep import (
    COMBINATION_FILE,
    COMBINATION_SEX_UNKNOWN_FILE,
    LENGTH_FILE,
    MATURITY_FILE,
    METRICS_FILE,
    MULTISTEP_DIR,
    REGRESSION_FILE,
    VERSION,
    MultiStepModel,
)


# ---------------------------------------------------------------------------------------------
# Building the bundle
# ---------------------------------------------------------------------------------------------
def measure_label_maps(
    label_maps: Iterable[tuple[np.ndarray, tuple[float, float] | float | None]],
    progress: bool = True,
    total: int | None = None,
) -> tuple[pd.DataFrame, list[Measurements]]:
    """Measure many label maps; returns the scale-free feature frame and the measurements."""
    from tqdm import tqdm

    rows, all_m = [], []
    for label_map, spacing in tqdm(label_maps, total=total, disable=not progress, desc="measure", unit="img"):
        m = measure(label_map, spacing)
        all_m.append(m)
        rows.append(m.features())
    return pd.DataFrame(rows, columns=feature_names()), all_m


def length_reference_from_synthetic(n: int = 2000, seed: int = 4242, progress: bool = True) -> ReferenceTable:
    """The calibrated length reference (mm): a MODEL built from the synthetic growth model.

    The synthetic generator's true bone lengths (``SyntheticHand.lengths_mm``) follow the
    documented growth model in ``data/synth_*.csv`` (radius/ulna data, proportions and priors);
    this table summarises them by age and sex. It is not a measured population norm.
    """
    from tqdm import tqdm

    from boneage.synth import generate_hand

    rows, ages, sexes = [], [], []
    for i in tqdm(range(n), disable=not progress, desc="synthetic lengths", unit="hand"):
        hand = generate_hand(seed, i, size=96)
        rows.append({f"{b}.length_mm": v for b, v in hand.lengths_mm.items() if b in anatomy.BONES})
        ages.append(hand.bone_age_months)
        sexes.append(hand.sex)
    frame = pd.DataFrame(rows)
    description = (
        "Calibrated bone-length reference (mm) by bone age and sex -- a MODEL, not measured norms.\n"
        f"Built from {n} synthetic hands (boneage.synth, seed {seed}) whose lengths follow the project's documented\n"
        "growth model (data/synth_growth_model.csv, data/synth_bone_model.csv: radius/ulna kidstats data,\n"
        "Pritchett 1988 growth rates, hand-bone proportions); no published per-bone hand norms were available.\n"
        "Whole-bone length along the long axis, epiphysis included once ossified. Gaussian smoothing 12 months."
    )
    table = build_reference(frame, np.array(ages), np.array(sexes), description=description)
    return table


@dataclass
class LabelledMeasurements:
    """Features of measured, age-labelled hands (training input of the multi-step bundle)."""

    features: pd.DataFrame
    bone_age_months: np.ndarray
    sex: np.ndarray
    ids: list[str]

    def subset(self, mask: np.ndarray) -> LabelledMeasurements:
        idx = np.flatnonzero(mask)
        return LabelledMeasurements(
            self.features.iloc[idx].reset_index(drop=True), self.bone_age_months[idx], self.sex[idx],
            [self.ids[i] for i in idx],
        )

    def save(self, path: str | Path) -> Path:
        df = self.features.copy()
        df.insert(0, "id", self.ids)
        df.insert(1, "bone_age_months", self.bone_age_months)
        df.insert(2, "sex", self.sex)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LabelledMeasurements:
        df = pd.read_csv(path)
        return cls(
            df[feature_names()].astype(float), df["bone_age_months"].to_numpy(float),
            df["sex"].to_numpy(object), [str(i) for i in df["id"]],
        )


def fit_bundle(
    train: LabelledMeasurements,
    *,
    description: str,
    calibration_fraction: float = 0.2,
    seed: int = 0,
    lengths_mm: ReferenceTable | None = None,
    regression: bool = True,
    max_iter: int = 400,
    regression_extra: LabelledMeasurements | None = None,
) -> MultiStepModel:
    """Build the maturity reference, calibrate its coverage, fit the regression and the blend.

    The reference is built on ``1 - calibration_fraction`` of the hands and its tempering
    calibrated on the rest (hands it was not built from); it is then rebuilt on all of them with
    that tempering. The regression's interval comes from its own cross-validation. The blend
    weight and its interval come from both estimators' out-of-fold ages on ``train``
    (:class:`boneage.growth.LookupBlend`). Hands in ``regression_extra`` (e.g. squashed films, not
    fit for a reference table) train the regression only.
    """
    rng = np.random.default_rng(seed)
    n = len(train.bone_age_months)
    calib = rng.random(n) < calibration_fraction
    part = train.subset(~calib)
    held = train.subset(calib)
    table = build_reference(part.features, part.bone_age_months, part.sex, description=description)
    tau = calibrate_tau(table, held.features, held.bone_age_months, held.sex)
    table = build_reference(train.features, train.bone_age_months, train.sex, description=description)
    table.tau = tau
    reg_data = train if regression_extra is None else LabelledMeasurements(
        pd.concat([train.features, regression_extra.features[train.features.columns]], ignore_index=True),
        np.concatenate([train.bone_age_months, regression_extra.bone_age_months]),
        np.concatenate([train.sex, regression_extra.sex]), list(train.ids) + list(regression_extra.ids))
    reg = AgeRegression.fit(reg_data.features, reg_data.bone_age_months, reg_data.sex, seed=seed,
                            max_iter=max_iter) if regression else None
    blend = blend_sex_unknown = None
    if reg is not None and reg.oof is not None:
        # Both estimators' out-of-fold ages on the same hands (the regression's first rows are
        # ``train``'s) choose how much of each the final age takes; with the sex withheld, its own
        # weight, age map and interval.
        look_oof = lookup_out_of_fold(train.features, train.bone_age_months, train.sex, tau, seed=seed)
        blend = LookupBlend.fit(reg.oof[:n], look_oof, train.bone_age_months)
        if reg.oof_sex_unknown is not None:
            look_oof = lookup_out_of_fold(train.features, train.bone_age_months, train.sex, tau, seed=seed,
                                          sex_withheld=True)
            blend_sex_unknown = LookupBlend.fit(reg.oof_sex_unknown[:n], look_oof, train.bone_age_months)
    return MultiStepModel(table, lengths_mm, reg, blend, blend_sex_unknown=blend_sex_unknown)


def evaluate(model: MultiStepModel, data: LabelledMeasurements) -> dict:
    """MAE (overall, by sex, by age band) and 90% coverage of the reported age; MAE of the lookup
    and of the regression alone."""
    table = model.predict_table(data.features, data.sex)
    y = data.bone_age_months
    return {
        "final": summarise_errors(y, data.sex, table["age"], table["lower_90"], table["upper_90"]),
        "lookup_mae_months": float(np.mean(np.abs(table["lookup"] - y))),
        "regression_mae_months": None if model.regression is None else float(np.mean(np.abs(table["regression"] - y))),
    }


def evaluate_sex_unknown(model: MultiStepModel, data: LabelledMeasurements) -> dict:
    """Errors of the reported age on the same hands with the sex withheld from the model.

    Every PNG/JPEG without a manifest reaches the model with an unknown sex (both sexes'
    references averaged, the regression's sex-agnostic model reads them); users need to know what that costs.

    Args:
        model: the bundle.
        data: labelled hands (their true sex is used only to group the errors).

    Returns:
        :func:`summarise_errors` of the sex-unknown predictions (groups by the true sex).
    """
    table = model.predict_table(data.features, [None] * len(data.bone_age_months))
    return summarise_errors(data.bone_age_months, data.sex, table["age"], table["lower_90"], table["upper_90"])


def record_sex_unknown_validation(folder: str | Path = MULTISTEP_DIR, device: str = "cpu") -> dict:
    """Measure a bundle's sex-unknown validation errors and add them to its ``metrics.json``.

    For a bundle trained before :func:`train_multistep` recorded them; segments only validation
    films not yet in the feature cache. Run as ``python -m boneage.training.multistep sex-unknown``.

    Args:
        folder: the bundle folder (its ``metrics.json`` is updated and its card rewritten).
        device: torch device for segmenting.

    Returns:
        ``{"sex_given": ..., "sex_unknown": ...}`` (the latter as written to ``metrics.json``).
    """
    from boneage import datasets, models

    folder = Path(folder)
    metrics = json.loads((folder / METRICS_FILE).read_text())
    seg_version = metrics.get("segmenter_version") or models.get("segmenter").version
    dev = datasets.rsna_dev()
    val_table = dev[dev["split"] == "val"].reset_index(drop=True)
    segment_fn = load_segmenter_fn(device) if films_not_cached(val_table, seg_version) else None
    feats = film_features(val_table, seg_version, segment_fn, progress=False)
    val = LabelledMeasurements(feats, val_table["bone_age_months"].to_numpy(float), val_table["sex"].to_numpy(object),
                               [str(i) for i in val_table["id"]])
    model = MultiStepModel.load(folder)
    given = evaluate(model, val)["final"]
    unknown = evaluate_sex_unknown(model, val)
    # The sex-given figures must reproduce the recorded ones, else these films or features differ.
    recorded = metrics["validation"]["final"]["all"]["mae_months"]
    if abs(given["all"]["mae_months"] - recorded) > 0.05:
        raise RuntimeError(f"sex-given validation MAE {given['all']['mae_months']:.2f} does not reproduce the "
                           f"recorded {recorded:.2f}: features differ, not recording sex-unknown figures")
    metrics["validation_sex_unknown"] = unknown
    metrics["validation_sex_unknown_command"] = "python -m boneage.training.multistep sex-unknown"
    write_metrics(folder, metrics)
    write_model_card(folder)
    return {"sex_given": given, "sex_unknown": unknown}


def summarise_errors(y: np.ndarray, sex: np.ndarray, pred: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> dict:
    """MAE with n overall, by sex and by age band (< 6 y, 6-12 y, > 12 y), and coverage."""
    groups = {
        "all": np.ones(len(y), bool),
        "female": sex == "F",
        "male": sex == "M",
        "under_6y": y < 72,
        "6_to_12y": (y >= 72) & (y <= 144),
        "over_12y": y > 144,
    }
    out = {}
    for name, mask in groups.items():
        if not mask.any():
            out[name] = {"n": 0}
            continue
        err = np.abs(pred[mask] - y[mask])
        g = {"n": int(mask.sum()), "mae_months": float(err.mean())}
        if lo is not None and hi is not None:
            g["coverage_90"] = float(np.mean((lo[mask] <= y[mask]) & (y[mask] <= hi[mask])))
        out[name] = g
    return out


def measure_images(
    paths: list[Path],
    segment_fn: Callable[[np.ndarray], np.ndarray] | None,
    progress: bool = True,
    workers: int = 1,
) -> pd.DataFrame:
    """Segment and measure image files (no spacing: RSNA films carry none).

    Args:
        paths: image files.
        segment_fn: ``pixels -> label map``; used when ``workers == 1``.
        progress: show a progress bar.
        workers: processes, each loading the shipped segmenter once with one torch thread
            (reading, cleaning and measuring are single-threaded, so processes use the cores better
            than torch threads alone).

    Returns:
        Scale-free features, one row per path in order.
    """
    with _Measurer(segment_fn, workers) as measurer:
        return measurer(paths, progress)


#: Cache source of ``rsna-299`` films measured after widening them back to the median true aspect of
#: the ``rsna-dev`` films (:data:`boneage.perbone.RSNA_299_WIDTH_TO_HEIGHT`), as the per-bone network's
#: crops are: their shapes and areas then read as a true-aspect film's do.
RSNA_299_WIDENED = "rsna-299-widened"


def read_film_for_measuring(path: str | Path, source: str = "") -> Radiograph:
    """A training film as the multi-step method measures it.

    Args:
        path: the image file.
        source: its source; :data:`RSNA_299_WIDENED` films (squashed to a square) are widened back to
            :data:`boneage.perbone.RSNA_299_WIDTH_TO_HEIGHT` wide to tall first, exactly as the per-bone
            network's training reads them (:func:`boneage.training.perbone.read_training_film`); others are
            read as given.

    Returns:
        The radiograph (:func:`boneage.io.load_radiograph`).
    """
    from boneage.io import load_radiograph

    rad = load_radiograph(path)
    if source != RSNA_299_WIDENED:
        return rad
    from boneage.training.perbone import read_training_film

    # The spacing across the film no longer holds once it is resized (squashed films carry none anyway).
    return replace(rad, pixels=read_training_film(str(path), "rsna-299"), spacing_mm=None)


class _Measurer:
    """Segments and measures image files, in this process or in a pool created once."""

    def __init__(self, segment_fn: Callable[[np.ndarray], np.ndarray] | None, workers: int) -> None:
        self.segment_fn, self.workers, self.pool = segment_fn, workers, None

    def __enter__(self) -> _Measurer:
        if self.workers > 1:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # torch and fork do not mix safely
            self.pool = ctx.Pool(self.workers, initializer=_feature_worker_init)
        elif self.segment_fn is None:
            self.segment_fn = load_segmenter_fn()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def __call__(self, paths: list[Path], progress: bool, sources: list[str] | None = None) -> pd.DataFrame:
        from tqdm import tqdm

        sources = list(sources) if sources is not None else [""] * len(paths)
        if self.pool is not None:
            jobs = [(str(p), s) for p, s in zip(paths, sources)]
            rows = list(tqdm(self.pool.imap(_feature_worker, jobs, chunksize=4), total=len(paths),
                             disable=not progress, desc="segment + measure", unit="img"))
            return pd.DataFrame(rows, columns=feature_names())

        def gen():
            for p, s in zip(paths, sources):
                rad = read_film_for_measuring(p, s)
                yield self.segment_fn(rad.pixels), rad.spacing_mm  # type: ignore[misc]

        frame, _ = measure_label_maps(gen(), progress=progress, total=len(paths))
        return frame


_WORKER_SEGMENT: Callable[[np.ndarray], np.ndarray] | None = None


def _feature_worker_init() -> None:
    import torch

    global _WORKER_SEGMENT
    torch.set_num_threads(1)  # one thread per worker: workers are the parallelism
    _WORKER_SEGMENT = load_segmenter_fn()


def _feature_worker(job: tuple[str, str]) -> dict[str, float]:
    rad = read_film_for_measuring(*job)
    return measure(_WORKER_SEGMENT(rad.pixels), rad.spacing_mm).features()  # type: ignore[misc]


#: Films measured between two saves of the feature cache.
FEATURE_CHUNK = 500


def _feature_cache_path(segmenter_version: str) -> Path:
    from boneage.paths import cache_dir

    # Features change with either the segmentation or the way bones are measured from it.
    return cache_dir() / f"film_features_{segmenter_version}_{MEASURE_VERSION}.csv"


def _in_cache(table: pd.DataFrame, cached: pd.DataFrame) -> np.ndarray:
    known = {f"{s}:{i}" for s, i in zip(cached["source"], cached["id"])}
    return np.array([f"{s}:{i}" in known for s, i in zip(table["source"], table["id"])], dtype=bool)


def films_not_cached(table: pd.DataFrame, segmenter_version: str) -> int:
    """How many of ``table``'s films :func:`film_features` would still have to segment.

    Args:
        table: rows with ``id`` and ``source``.
        segmenter_version: the cache key.

    Returns:
        The count (a run's measuring time covers only these).
    """
    path = _feature_cache_path(segmenter_version)
    if not path.is_file():
        return len(table)
    return int((~_in_cache(table, pd.read_csv(path, usecols=["source", "id"]))).sum())


def film_features(table: pd.DataFrame, segmenter_version: str, segment_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                  progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """Scale-free features of labelled films, segmented once per segmenter and measurement version.

    Features are cached per film (``source``, ``id``) in the cache dir (outside the repository:
    they derive from research-only images); only films not yet measured are segmented.

    Args:
        table: rows with ``id``, ``source`` and ``path``.
        segmenter_version: the segmenter's version string (the cache key, with
            :data:`boneage.measure.MEASURE_VERSION`).
        segment_fn: ``pixels -> label map``; loaded from the registry when needed and not given.
        progress: show a progress bar.
        workers: segmenting processes (the shipped segmenter; ``segment_fn`` is then unused).

    Returns:
        Features in ``table``'s row order.
    """
    path = _feature_cache_path(segmenter_version)
    cached = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["source", "id", *feature_names()])
    todo = table[~_in_cache(table, cached)]
    if len(todo):
        # Saved chunk by chunk: an interrupted run (thousands of films) keeps what it measured.
        with _Measurer(segment_fn, workers) as measurer:
            for start in range(0, len(todo), FEATURE_CHUNK):
                chunk = todo.iloc[start:start + FEATURE_CHUNK]
                if progress and len(todo) > FEATURE_CHUNK:
                    print(f"films {start + 1}-{start + len(chunk)} of {len(todo)} to measure")
                new = measurer([Path(p) for p in chunk["path"]], progress, list(chunk["source"]))
                ids = pd.DataFrame({"source": chunk["source"].to_numpy(), "id": chunk["id"].to_numpy()})
                cached = pd.concat([cached, pd.concat([ids, new], axis=1)], ignore_index=True)
                tmp = path.with_suffix(".tmp.csv")
                cached.to_csv(tmp, index=False)
                tmp.replace(path)
    key = lambda src, i: f"{src}:{i}"  # noqa: E731
    keys = pd.Index([key(s, i) for s, i in zip(cached["source"], cached["id"])])
    lookup = cached.set_axis(keys)[feature_names()]
    lookup = lookup[~lookup.index.duplicated(keep="last")]
    rows = [key(s, i) for s, i in zip(table["source"], table["id"])]
    return lookup.loc[rows, feature_names()].astype(float).reset_index(drop=True)


def write_metrics(folder: Path, metrics: dict) -> Path:
    path = folder / METRICS_FILE
    path.write_text(json.dumps(metrics, indent=2, default=float))
    return path


def now() -> float:
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------
# Commands: `boneage reference build` and `boneage train multistep`
# ---------------------------------------------------------------------------------------------
def load_segmenter_fn(device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """The shipped segmenter as a ``pixels -> label map`` callable."""
    from boneage import models

    return models.load("segmenter", device=device).segment


def labelled_folder(folder: str | Path, segment_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                    progress: bool = True) -> LabelledMeasurements:
    """Measure every hand listed in ``folder/labels.csv``.

    The CSV needs ``bone_age_months``, ``sex`` and an image column (``image`` or ``path``,
    relative to the folder); when a ``mask`` column names label maps (e.g. a ``boneage synth``
    folder) they are measured directly, else each image is segmented with ``segment_fn``.
    Spacing comes from the image header, or a ``spacing_mm`` column.
    """
    from PIL import Image

    from boneage.io import load_radiograph, normalise_sex

    folder = Path(folder)
    labels_path = folder / "labels.csv"
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path} not found: a reference needs labels.csv with bone_age_months and sex")
    df = pd.read_csv(labels_path)
    image_col = "image" if "image" in df.columns else "path" if "path" in df.columns else None
    missing = [c for c in ("bone_age_months", "sex") if c not in df.columns]
    if image_col is None or missing:
        raise ValueError(f"{labels_path} needs columns image (or path), bone_age_months, sex; missing {missing or ['image']}")
    use_masks = "mask" in df.columns
    if not use_masks and segment_fn is None:
        segment_fn = load_segmenter_fn()

    def gen():
        for row in df.itertuples(index=False):
            spacing = getattr(row, "spacing_mm", None)
            spacing = float(spacing) if spacing is not None and np.isfinite(spacing) else None
            if use_masks:
                yield np.asarray(Image.open(folder / row.mask)), spacing
            else:
                rad = load_radiograph(folder / getattr(row, image_col))
                yield segment_fn(rad.pixels), rad.spacing_mm or spacing

    feats, _ = measure_label_maps(gen(), progress=progress, total=len(df))
    sexes = np.array([normalise_sex(s) for s in df["sex"]], dtype=object)
    ids = [str(v) for v in (df["id"] if "id" in df.columns else df[image_col])]
    return LabelledMeasurements(feats, df["bone_age_months"].to_numpy(float), sexes, ids)


def build_reference_command(folder: str | Path, out: str | Path | None = None, description: str | None = None,
                            bandwidth_months: float = 12.0) -> Path:
    """``boneage reference build``: a local maturity reference from measured, labelled hands."""
    data = labelled_folder(folder)
    keep = np.isin(data.sex, ["M", "F"]) & np.isfinite(data.bone_age_months)
    data = data.subset(keep)
    text = description or (
        f"Local maturity reference built with `boneage reference build {folder}` from {len(data.ids)} measured hands\n"
        f"({int((data.sex == 'F').sum())} F, {int((data.sex == 'M').sum())} M; bone ages "
        f"{data.bone_age_months.min():.0f}-{data.bone_age_months.max():.0f} months). Gaussian smoothing {bandwidth_months:g} months."
    )
    table = build_reference(data.features, data.bone_age_months, data.sex, bandwidth_months=bandwidth_months, description=text)
    out = Path(out) if out else Path(folder) / "maturity_reference.csv"
    return table.save(out)


#: Features that do not survive a film squashed to another aspect ratio (rsna-299): shapes
#: (length / width) and areas change with it; relative lengths along the fingers, epiphysis
#: widths relative to their own metaphysis, fusion and presence do not (much).
SQUASH_UNSAFE_SUFFIXES = (".aspect", ".area_rel")


def squash_safe(features: pd.DataFrame) -> pd.DataFrame:
    """The same features with those that a lost aspect ratio distorts set to NaN (missing).

    Args:
        features: measurement features (:func:`boneage.measure.feature_names` columns).

    Returns:
        A copy; the regression treats NaN as "not measured".
    """
    out = features.copy()
    out.loc[:, [c for c in out.columns if c.endswith(SQUASH_UNSAFE_SUFFIXES)]] = np.nan
    return out


def rsna_299_films(n: int, seed: int = 0, widened: bool = False) -> pd.DataFrame:
    """The squashed ``rsna-299`` films that train the regression.

    Args:
        n: how many (-1: all of them).
        seed: the sample's random state when fewer than all.
        widened: measure them widened back to a true aspect (their ``source`` becomes
            :data:`RSNA_299_WIDENED`, which :func:`film_features` reads and caches apart).

    Returns:
        Their table (:func:`boneage.datasets.rsna_299` rows).
    """
    from boneage import datasets

    films = datasets.rsna_299()
    films = films if n < 0 or n >= len(films) else films.sample(n=n, random_state=seed)
    return films.assign(source=RSNA_299_WIDENED) if widened else films


def rsna_299_recipe(metrics: dict) -> tuple[int, int, bool, bool]:
    """How a trained bundle used the squashed films, from its ``metrics.json``.

    Args:
        metrics: the bundle's metrics (:func:`train_multistep`'s return value).

    Returns:
        ``(n, seed, squash_safe_only, widened)``: how many ``rsna-299`` films trained its regression (0: none),
        the seed of their sample, whether only their :func:`squash_safe` features were used (bundles trained
        before ``rsna_299_features`` was recorded used only those) and whether they were measured widened back
        to a true aspect (bundles from before ``rsna_299_aspect`` was recorded measured them squashed).
    """
    n = int(metrics.get("n_train_rsna_299") or 0)
    return (n, int(metrics.get("seed", 0)), metrics.get("rsna_299_features", "squash-safe") == "squash-safe",
            metrics.get("rsna_299_aspect", "squashed") == "widened")


def squashed_measurements(squashed: pd.DataFrame, features: pd.DataFrame, squash_safe_only: bool = False
                          ) -> LabelledMeasurements:
    """Labelled measurements of squashed films (``rsna-299``) for the regression.

    Args:
        squashed: the films' table (``id``, ``bone_age_months``, ``sex``).
        features: their measured features, in the table's row order.
        squash_safe_only: keep only the features a lost aspect ratio leaves alone (:func:`squash_safe`).

    Returns:
        Measurements whose ids say where they came from (``rsna-299:<id>``).
    """
    return LabelledMeasurements(
        (squash_safe(features) if squash_safe_only else features).reset_index(drop=True),
        squashed["bone_age_months"].to_numpy(float), squashed["sex"].to_numpy(object),
        [f"rsna-299:{i}" for i in squashed["id"]])


def train_multistep(out: str | Path = MULTISTEP_DIR, seed: int = 0, synthetic_lengths: int = 2000,
                    device: str = "cpu", progress: bool = True, limit: int | None = None, workers: int = 1,
                    rsna_299: int = 0, rsna_299_squash_safe: bool = False, rsna_299_aspect: str = "squashed") -> dict:
    """``boneage train multistep``: the shipped bundle from the RSNA development films.

    Segments and measures the ``rsna-dev`` training split with the shipped segmenter, builds the
    scale-free maturity reference (coverage calibrated on a part it was not built from) from it,
    fits the regression (CV interval) on it plus, optionally, ``rsna_299`` squashed films (with all
    their features, or with shape and area left out, :func:`squash_safe`), builds the mm length model from
    synthetic hands, and evaluates on the fixed validation split. Features are cached outside the
    repo (derived from research-only images).

    Args:
        out: output folder.
        seed: random seed (regression, the rsna-299 sample).
        synthetic_lengths: synthetic hands for the mm length model (0: none).
        device: torch device for segmenting.
        progress: progress bars.
        limit: only the first N training films (quick runs).
        workers: segmenting processes.
        rsna_299: squashed rsna-299 films added to the regression's training data (-1: all).
        rsna_299_squash_safe: give the regression only their :func:`squash_safe` features. Off by
            default: on a hold-out of the training split (three random fifths), all 11,232 films with
            every feature read the held-out true-aspect films 1.4-2.4 months closer than the
            development films alone, shape and area left out 0.6-1.2 closer.
        rsna_299_aspect: ``"squashed"`` (measure them as stored, 299 x 299) or ``"widened"`` (widened back to
            the median true aspect first, :func:`read_film_for_measuring`). Squashed by default: on the same
            hold-out (three random fifths, 3,000 of the films) widened ones read the held-out films no closer
            (12.64 months against 12.50 for the whole estimate, 11.25 against 11.33 for the regression alone).

    Returns:
        The metrics dict (also written to ``out/metrics.json``).
    """
    from boneage import datasets

    if rsna_299_aspect not in ("squashed", "widened"):
        raise ValueError(f"rsna_299_aspect must be 'squashed' or 'widened', not {rsna_299_aspect!r}")
    t0 = now()
    out = Path(out)
    dev = datasets.rsna_dev()
    if limit:
        dev = pd.concat([dev[dev.split == "train"].head(limit), dev[dev.split == "val"].head(max(limit // 4, 8))])
    from boneage import models

    seg_version = models.get("segmenter").version
    segment_fn = None if workers > 1 else load_segmenter_fn(device)
    squashed = rsna_299_films(rsna_299, seed, widened=rsna_299_aspect == "widened") if rsna_299 else None
    # The measuring time below covers only films not already in the feature cache.
    to_measure = films_not_cached(dev, seg_version) + (
        films_not_cached(squashed, seg_version) if squashed is not None else 0)
    feats = film_features(dev, seg_version, segment_fn, progress=progress, workers=workers)
    extra = None
    if squashed is not None:
        extra = squashed_measurements(
            squashed, film_features(squashed, seg_version, segment_fn, progress=progress, workers=workers),
            squash_safe_only=rsna_299_squash_safe)
    t_measure = now() - t0
    data = LabelledMeasurements(feats, dev["bone_age_months"].to_numpy(float), dev["sex"].to_numpy(object), [str(i) for i in dev["id"]])
    is_val = (dev["split"] == "val").to_numpy()
    train, val = data.subset(~is_val), data.subset(is_val)
    description = (
        f"Scale-free maturity reference built by `boneage train multistep` (seed {seed}) from {len(train.ids)} RSNA\n"
        "development films (training split; research-only data: Halabi et al., Radiology 2019;290:498-503),\n"
        f"segmented with {seg_version} and measured with boneage.measure. Gaussian smoothing 12 months."
    )
    lengths = length_reference_from_synthetic(synthetic_lengths, progress=progress) if synthetic_lengths else None
    model = fit_bundle(train, description=description, seed=seed, lengths_mm=lengths, regression_extra=extra)
    model.save(out)
    metrics = {
        "model_version": VERSION,
        "segmenter_version": seg_version,
        "measure_version": MEASURE_VERSION,
        "n_train": len(train.ids),
        "n_train_rsna_299": len(extra.ids) if extra is not None else 0,
        "rsna_299_features": ("squash-safe" if rsna_299_squash_safe else "all") if extra is not None else None,
        "rsna_299_aspect": rsna_299_aspect if extra is not None else None,
        "n_val": len(val.ids),
        "seed": seed,
        "tau": model.maturity.tau,
        "regression_cv_mae_months": model.regression.cv_mae if model.regression else None,
        "regression_half_width_90": model.regression.half_width_90 if model.regression else None,
        "blend": {k: v for k, v in asdict(model.blend).items() if k != "age_map"} if model.blend else None,
        "regression_sex_unknown_cv_mae_months": model.regression.cv_mae_sex_unknown if model.regression else None,
        "regression_sex_unknown_half_width_90": model.regression.half_width_90_sex_unknown if model.regression else None,
        "blend_sex_unknown": ({k: v for k, v in asdict(model.blend_sex_unknown).items() if k != "age_map"}
                              if model.blend_sex_unknown else None),
        "validation": evaluate(model, val),
        "validation_sex_unknown": evaluate_sex_unknown(model, val),
        "fraction_tubular_bones_plausible_val": float(np.mean([
            np.isfinite(val.features[f"{b}.epiphysis_present"]).mean() for b in anatomy.TUBULAR_BONES
        ])),
        "films_measured": to_measure,
        "minutes_measure": t_measure / 60,
        "minutes_total": (now() - t0) / 60,
        "command": f"boneage train multistep --seed {seed} --synthetic-lengths {synthetic_lengths}"
                   + (f" --limit {limit}" if limit else "") + (f" --workers {workers}" if workers > 1 else "")
                   + (f" --rsna-299 {rsna_299}" if rsna_299 else "")
                   + (" --rsna-299-squash-safe" if rsna_299 and rsna_299_squash_safe else "")
                   + (f" --rsna-299-aspect {rsna_299_aspect}" if rsna_299 and rsna_299_aspect != "squashed" else ""),
    }
    write_metrics(out, metrics)
    return metrics


_GROUPS = (("all", "all"), ("female", "female"), ("male", "male"), ("under_6y", "< 6 y"),
           ("6_to_12y", "6-12 y"), ("over_12y", "> 12 y"))


def _age_map_text(blend: dict) -> str:
    """Model-card text on the blend's age-band bias map (:mod:`boneage.agemap`)."""
    from boneage.agemap import describe_choice

    if not blend.get("age_map_choice"):
        return ""
    return ("\n  The blend is drawn toward the middle of the training ages (children read too old, adolescents too young);\n"
            "  where it pays on the out-of-fold ages it and its interval are read back through an age-band bias map\n"
            f"  fitted there (`boneage/agemap.py`): {describe_choice(blend['age_map_choice'])}; the interval's\n"
            "  half-width is fitted on the mapped scale.")


def _blend_text(b: dict) -> str:
    """Model-card text on a blend (:class:`boneage.growth.LookupBlend`'s fields from ``metrics.json``)."""
    return (f"{b['regression_weight']:.2f} x regression + {1 - b['regression_weight']:.2f} x lookup,\n"
            f"  the weight chosen on 5-fold out-of-fold predictions of the training films (out-of-fold MAE:\n"
            f"  blend {b['cv_mae']:.1f}, regression {b['regression_cv_mae']:.1f}, lookup {b['lookup_cv_mae']:.1f} months); 90% interval =\n"
            f"  +-{b['half_width_90']:.1f} months (split-conformal from the blend's out-of-fold residuals)." + _age_map_text(b))


def write_model_card(folder: str | Path = MULTISTEP_DIR) -> Path:
    """Write ``MODEL_CARD.md`` of the multi-step bundle from its ``metrics.json``."""
    folder = Path(folder)
    m = json.loads((folder / METRICS_FILE).read_text())
    v = m["validation"]["final"]
    rows = "\n".join(
        f"| {label} | {v[key]['n']} | {v[key].get('mae_months', float('nan')):.1f} | "
        f"{100 * v[key].get('coverage_90', float('nan')):.0f}% |"
        for key, label in _GROUPS if v.get(key, {}).get("n")
    )
    n_measured = m.get("films_measured")
    measured = ("" if n_measured is None else
                f"Segmenting + measuring {n_measured} films not yet in the local feature cache took "
                f"{m['minutes_measure']:.1f} min; " if n_measured else
                "Every film's features came from the local feature cache (its measuring time is not included); ")
    n_299 = m.get("n_train_rsna_299", 0)
    _, _, squash_safe_only, widened = rsna_299_recipe(m)
    extra = "" if not n_299 else (
        f", plus {n_299} squashed `rsna-299` films for the regression only (their shape and area features\n"
        "left out: a lost aspect ratio distorts them)" if squash_safe_only else
        f",\nplus {n_299} `rsna-299` films (squashed to 299 x 299 by a mirror) for the regression only, widened back to\n"
        "the median true aspect of the development films before they were measured, with all their features (on a\n"
        "hold-out of the training split the regression read true-aspect films closer with them than without)"
        if widened else
        f",\nplus {n_299} squashed `rsna-299` films for the regression only (with all their features: a lost aspect\n"
        "ratio distorts shapes and areas, yet on a hold-out of the training split the regression read true-aspect\n"
        "films closer with them than without)")
    b = m.get("blend")
    blend_text = "the reported age is the regression's alone." if not b else "the reported age is " + _blend_text(b)
    bu = m.get("blend_sex_unknown")
    sex_unknown_model_text = "" if not m.get("regression_sex_unknown_cv_mae_months") else (
        "\n- For a hand of unknown sex the regression's second model, fitted on the same films without the sex, reads it\n"
        f"  (CV MAE {m['regression_sex_unknown_cv_mae_months']:.1f} months, 90% interval +-"
        f"{m['regression_sex_unknown_half_width_90']:.1f}): the first never saw a missing sex and would read such a hand\n"
        "  as one sex. The lookup averages both sexes' references"
        + ("." if not bu else f", and `{COMBINATION_SEX_UNKNOWN_FILE}` joins them: " + _blend_text(bu)))
    reg_mae = m["validation"].get("regression_mae_months")
    u = m.get("validation_sex_unknown")
    sex_unknown_text = sex_unknown_limit = ""
    if u:
        # Every PNG/JPEG without a manifest is estimated with the sex unknown: say what it costs.
        u_rows = "\n".join(
            f"| {label} | {u[key]['n']} | {u[key].get('mae_months', float('nan')):.1f} | "
            f"{100 * u[key].get('coverage_90', float('nan')):.0f}% |"
            for key, label in _GROUPS if u.get(key, {}).get("n")
        )
        measured_by = (f"\nMeasured after training by `{m['validation_sex_unknown_command']}` (same bundle, same films).\n"
                       if m.get("validation_sex_unknown_command") else "")
        sex_unknown_text = f"""
### Sex unknown (same films, sex withheld from the model)
| group (true sex) | n | MAE (months) | 90% interval coverage |
|---|---|---|---|
{u_rows}
{measured_by}"""
        sex_unknown_limit = (
            f"\n- Without the sex the estimate is clearly worse (validation MAE {u['all']['mae_months']:.1f} vs "
            f"{v['all']['mae_months']:.1f} months with it,\n  90% interval coverage {100 * u['all']['coverage_90']:.0f}% "
            f"vs {100 * v['all']['coverage_90']:.0f}%): give the sex whenever it is known (PNG/JPEG files carry none).")
    text = f"""# Model card: multi-step bone-age estimator (`{m['model_version']}`)

**Research and education use only; not a medical device.** The maturity reference and the
regression were built from RSNA Pediatric Bone Age Challenge films (research and education use
only, no commercial use; Halabi SS et al., *Radiology* 2019;290:498-503).

## What it is
Segmentation (`{m['segmenter_version']}`, see `data/models/segmenter/MODEL_CARD.md`) -> per-bone
measurements (`boneage.measure`{", " + m['measure_version'] if m.get('measure_version') else ""}: epiphysis presence, epiphysis/metaphysis width ratio, fusion
contact, relative lengths and aspect, carpal areas; all scale-free, no pixel spacing needed) ->
- `{MATURITY_FILE}`: maturity reference (mean and SD by age and sex, Gaussian-smoothed over 12
  months), lookup = tempered likelihood over age (tau = {m['tau']:.1f}, calibrated for 90% coverage on
  training films the table was not built from);
- `{REGRESSION_FILE}`: gradient-boosting regression (scikit-learn `HistGradientBoostingRegressor`,
  squared loss) on the same features and sex; 90% interval = +-{m['regression_half_width_90'] or float('nan'):.1f} months
  (split-conformal from 5-fold CV residuals; CV MAE {m['regression_cv_mae_months'] or float('nan'):.1f} months);
- `{LENGTH_FILE}`: calibrated length reference in mm -- **a model**, built from the synthetic
  growth model (no published per-bone hand norms were available); used only for images with
  trustworthy pixel spacing.
- `{COMBINATION_FILE}`: {blend_text}{sex_unknown_model_text}
The lookup also gives the per-bone implied ages and z-scores.

## Data
{m['n_train']} films of the `rsna-dev` training split (maturity reference and regression){extra}; evaluated on
the project's fixed validation split ({m['n_val']} films), which played no part in any choice.

## Reproduce
```
{m['command']}
```
Seed {m['seed']}. {measured}the whole command took {m['minutes_total']:.1f} min on a 2-core CPU.

## Validation (fixed `rsna-dev` validation split)
| group | n | MAE (months) | 90% interval coverage |
|---|---|---|---|
{rows}

Reference lookup alone: MAE {m['validation']['lookup_mae_months']:.1f} months{'' if reg_mae is None else f'; regression alone: {reg_mae:.1f} months'}. Fraction of tubular-bone
measurements usable (plausible) on validation films: {100 * m['fraction_tubular_bones_plausible_val']:.0f}%.
{sex_unknown_text}
## Limits
- Depends entirely on the segmenter's quality on real films; implausible bones are left out, not
  guessed, so films with poor segmentation have wider errors.
- Validated on RSNA films only (one challenge's hospitals and readers), not an external test set.
- The mm length reference is a model built from synthetic hands, not population norms.{sex_unknown_limit}
"""
    path = folder / "MODEL_CARD.md"
    path.write_text(text)
    return path


if __name__ == "__main__":
    import sys

    # ``python -m boneage.training.multistep sex-unknown``: add the sex-unknown validation figures
    # to the shipped bundle's metrics.json (and its card) without retraining.
    if sys.argv[1:] != ["sex-unknown"]:
        raise SystemExit("usage: python -m boneage.training.multistep sex-unknown")
    print(json.dumps(record_sex_unknown_validation(), indent=2, default=float))

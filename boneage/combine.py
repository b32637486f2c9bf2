"""The combined estimate: out-of-fold stacking of the three methods' ages.

The multi-step measurements, the per-bone maturity network and the end-to-end CNN make different
errors; a weighted mean of their ages, with weights fitted on films none of them trained on (the
shared calibration hold-out of the training split, the multi-step regression refitted without
those films), is the headline estimate. Its 90% interval is ``age +- factor x mean half-width of
the methods' own intervals`` with the factor set by split-conformal calibration on the same
hold-out. A weight set is fitted for every subset of methods (a method can be withheld for one
film) and for sex known and unknown. The weighted mean and its interval are then read through an
age-band bias map (:mod:`boneage.agemap`) when one pays on the out-of-fold means.

Data flow: the three :class:`boneage.estimate.MethodEstimate` -> :meth:`Combiner.combine` ->
one more ``MethodEstimate`` (``method="combined"``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boneage.agemap import AgeMap, choose_age_map, expected_estimates, read_interval

#: The stacked methods, in the order of their weights.
METHODS: tuple[str, ...] = ("multistep", "perbone", "direct")
STACKING_FILE = "stacking.json"
MODEL_VERSION = "combined-10"
AGE_RANGE_MONTHS = (0.0, 240.0)


def subset_key(methods: list[str] | tuple[str, ...]) -> str:
    """Key of a weight set: the available methods in :data:`METHODS` order, joined by ``+``."""
    return "+".join(m for m in METHODS if m in methods)


def fit_weights(ages: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to one that minimise the squared error of the weighted mean.

    Args:
        ages: ``(N, M)`` the methods' ages on hold-out films.
        targets: ``(N,)`` their bone ages.

    Returns:
        ``(M,)`` weights.
    """
    from scipy.optimize import minimize

    m = ages.shape[1]
    if m == 1:
        return np.ones(1)
    result = minimize(lambda w: float(np.mean((ages @ w - targets) ** 2)), np.full(m, 1.0 / m),
                      bounds=[(0.0, 1.0)] * m, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                      method="SLSQP")
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


def conformal_factor(ratio: np.ndarray, level: float = 0.9) -> float:
    """Finite-sample split-conformal ``level`` quantile of ``|error| / half-width``."""
    r = np.sort(ratio[np.isfinite(ratio)])
    if len(r) == 0:
        return 1.0
    k = min(len(r) - 1, int(np.ceil((len(r) + 1) * level)) - 1)
    return float(r[k])


def fit_stacking(ages: dict[str, np.ndarray], half_widths: dict[str, np.ndarray], targets: np.ndarray,
                 folds: int = 5, seed: int = 0) -> dict:
    """Weights and interval factor for every subset of methods, with out-of-fold figures.

    Args:
        ages: method -> ``(N,)`` hold-out ages (NaN where the method gave none).
        half_widths: method -> ``(N,)`` half-widths of its 90% intervals.
        targets: ``(N,)`` bone ages.
        folds: cross-validation folds for the reported out-of-fold MAE and coverage.
        seed: fold assignment.

    Returns:
        ``{subset key: {"weights": {...}, "factor": f, "n": n, "oof_mae": ..., "oof_coverage": ...,
        "method_mae": {...}}}``.
    """
    out = {}
    names = [m for m in METHODS if m in ages]
    for r in range(1, len(names) + 1):
        for subset in itertools.combinations(names, r):
            a = np.stack([ages[m] for m in subset], axis=1)
            h = np.stack([half_widths[m] for m in subset], axis=1)
            ok = np.all(np.isfinite(a), axis=1) & np.all(np.isfinite(h), axis=1)
            a, h, y = a[ok], h[ok], targets[ok]
            if len(y) < 20:
                continue
            fold = np.random.default_rng(seed).permutation(len(y)) % folds
            pred = np.zeros(len(y))
            for k in range(folds):
                tr, te = fold != k, fold == k
                pred[te] = a[te] @ fit_weights(a[tr], y[tr])
            # The age-band bias map is judged on the out-of-fold weighted means (boneage.agemap).
            age_map, age_map_choice = choose_age_map(y, pred, seed=seed)
            covered = np.zeros(len(y), bool)
            for k in range(folds):
                tr, te = fold != k, fold == k
                w = fit_weights(a[tr], y[tr])
                factor = conformal_factor(_interval_ratio(a[tr] @ w, h[tr] @ w, y[tr], age_map))
                covered[te] = _interval_ratio(pred[te], h[te] @ w, y[te], age_map) <= factor
            w = fit_weights(a, y)
            out[subset_key(subset)] = {
                "weights": {m: round(float(x), 4) for m, x in zip(subset, w)},
                "factor": round(conformal_factor(_interval_ratio(a @ w, h @ w, y, age_map)), 4),
                "age_map": age_map.to_dict() if age_map is not None else None,
                "age_map_choice": age_map_choice,
                "n": int(len(y)),
                "oof_mae": round(float(np.abs(read_interval(age_map, pred, 0.0)[0] - y).mean()), 2),
                "oof_coverage": round(float(covered.mean()), 3),
                "method_mae": {m: round(float(np.abs(a[:, j] - y).mean()), 2) for j, m in enumerate(subset)},
            }
    return out


def _interval_ratio(ages: np.ndarray, half_widths: np.ndarray, targets: np.ndarray, age_map: AgeMap | None) -> np.ndarray:
    """The factor each film needs for ``[f^-1(age - k h), f^-1(age + k h)]`` to hold its target.

    Without a map that is ``|age - target| / h``; with one, ``|age - f(target)| / h``.
    """
    return np.abs(ages - expected_estimates(age_map, targets)) / half_widths


def _finite(estimate: tuple[float | None, float | None, float | None]) -> bool:
    """An ``(age, lower_90, upper_90)`` with three finite numbers."""
    try:
        return all(v is not None and np.isfinite(float(v)) for v in estimate)
    except (TypeError, ValueError):
        return False


@dataclass
class CombinedAge:
    """The combined estimate of one film."""

    age_months: float
    lower_90: float
    upper_90: float
    weights: dict[str, float]


class Combiner:
    """Stacking weights and interval factors (``data/models/combined/stacking.json``).

    Example:
        >>> Combiner.load().combine({"direct": (120, 100, 140), "perbone": (126, 110, 142)}, "F")  # doctest: +SKIP
    """

    def __init__(self, stacking: dict, model_version: str = MODEL_VERSION) -> None:
        self.stacking = stacking
        self.model_version = model_version

    @classmethod
    def load(cls, path: str | Path | None = None) -> Combiner:
        """Load the stacking weights.

        Raises:
            FileNotFoundError: when the file is missing.
        """
        from boneage.paths import MODELS_DIR

        folder = Path(path) if path is not None else MODELS_DIR / "combined"
        file = folder / STACKING_FILE if folder.is_dir() else folder
        if not file.is_file():
            raise FileNotFoundError(f"stacking weights not found: {file}")
        data = json.loads(file.read_text())
        return cls(data, data.get("model_version", MODEL_VERSION))

    def combine(self, estimates: dict[str, tuple[float, float, float]], sex: str | None) -> CombinedAge | None:
        """Weighted mean of the available methods' ages with its calibrated 90% interval.

        Args:
            estimates: method -> ``(age, lower_90, upper_90)`` for the methods that gave an age
                (an entry with a ``None`` or non-finite value counts as missing).
            sex: ``"M"``/``"F"`` (the sex-known weights) or ``None`` (sex-unknown weights).

        Returns:
            :class:`CombinedAge`, or ``None`` when no weight set covers the available methods.
        """
        mode = "sex_known" if sex in ("M", "F") else "sex_unknown"
        available = [m for m in METHODS if m in estimates and _finite(estimates[m])]
        entry = self.stacking.get(mode, {}).get(subset_key(available))
        if entry is None:
            return None
        weights = entry["weights"]
        age = sum(w * estimates[m][0] for m, w in weights.items())
        half = sum(w * (estimates[m][2] - estimates[m][1]) / 2.0 for m, w in weights.items())
        half *= entry["factor"]
        age, lower, upper = read_interval(AgeMap.from_dict(entry.get("age_map")), age, half, AGE_RANGE_MONTHS)
        return CombinedAge(float(age), float(lower), float(upper), dict(weights))

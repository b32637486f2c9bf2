"""Growth and maturity reference tables, age lookup, and the measurement regression.

A *reference table* holds, for each measurement (feature) and sex, its mean and SD on a grid of
ages, smoothed across age with a Gaussian kernel. It can be built from any set of measured,
age-labelled hands (a clinic can build a local standard from its own normal population).

Age from measurements, two ways:

* **Lookup** — each measurement implies an age: the likelihood of the measured value over the
  age grid (Gaussian for continuous features, Bernoulli for present/absent and fused/open). Their
  product, tempered for the correlation between bones (a power ``1/tau`` calibrated on training
  data so the 90% interval covers 90%), with a flat prior, is a posterior over age: its median is
  the estimate and its 5th-95th percentiles the interval.
* **Regression** — a scikit-learn gradient-boosting model on the same features and sex, with a
  conformal 90% interval from cross-validated residuals.

The two err differently (the lookup pools every bone's evidence under a simple model, the
regression learns interactions but needs data), so the final age is their weighted mean,
:class:`LookupBlend`, with the weight chosen on out-of-fold predictions of the training hands.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.agemap import AgeMap, choose_age_map, expected_estimates, read_interval

#: The age grid of every reference table (months).
AGE_GRID = np.arange(0.0, 240.0 + 1e-9, 2.0)
#: Ages the estimators report (RSNA and GP cover 0-19 years).
AGE_RANGE = (0.0, 228.0)
#: Smallest SD a continuous feature may have, as a fraction of its overall SD (avoids spikes).
SD_FLOOR_FRACTION = 0.08
#: Bernoulli probabilities are kept inside [EPS, 1 - EPS] so one feature cannot veto an age.
EPS = 0.03
SEXES = ("F", "M")


def is_binary(values: np.ndarray) -> bool:
    """Whether a feature only takes the values 0 and 1 (presence, fusion)."""
    v = values[np.isfinite(values)]
    return v.size > 0 and bool(np.all((v == 0) | (v == 1)))


@dataclass
class ReferenceTable:
    """Mean and SD of each feature by age and sex.

    Attributes:
        ages: the age grid (months).
        mean: ``{(sex, feature): array over ages}``.
        sd: ``{(sex, feature): array over ages}`` (for binary features, ``sqrt(p (1 - p))``).
        n_eff: ``{(sex, feature): kernel-weighted count of observations at each age}``.
        binary: names of the binary features.
        description: the table's header: what it was built from, and whether it is a model.
        tau: likelihood tempering (>= 1) calibrated for interval coverage.
    """

    ages: np.ndarray
    mean: dict[tuple[str, str], np.ndarray]
    sd: dict[tuple[str, str], np.ndarray]
    n_eff: dict[tuple[str, str], np.ndarray]
    binary: set[str] = field(default_factory=set)
    description: str = ""
    tau: float = 1.0

    @property
    def features(self) -> list[str]:
        """Feature names covered by the table."""
        return sorted({f for _, f in self.mean})

    # -- per-feature lookups --------------------------------------------------------------
    def covers(self, feature: str, sex: str | None) -> bool:
        """Whether :meth:`expected` has the feature for this sex (``None``: for either sex).

        A table built from few films can lack a feature for one sex only (too few of its films
        measured it), so a feature in :attr:`features` is not enough.
        """
        sexes = [sex] if sex in SEXES else list(SEXES)
        return any((s, feature) in self.mean for s in sexes)

    def expected(self, feature: str, age_months: float, sex: str | None) -> tuple[float, float]:
        """Reference mean and SD of a feature at an age (sex ``None``: average of both)."""
        sexes = [sex] if sex in SEXES else list(SEXES)
        means = [np.interp(age_months, self.ages, self.mean[(s, feature)]) for s in sexes if (s, feature) in self.mean]
        sds = [np.interp(age_months, self.ages, self.sd[(s, feature)]) for s in sexes if (s, feature) in self.sd]
        if not means:
            raise KeyError(f"feature {feature!r} is not in this reference table")
        return float(np.mean(means)), float(np.mean(sds))

    def z_score(self, feature: str, value: float, age_months: float, sex: str | None) -> float:
        """``(value - mean(age)) / sd(age)``; NaN for a missing value."""
        if value is None or not np.isfinite(value):
            return math.nan
        mean, sd = self.expected(feature, age_months, sex)
        return (float(value) - mean) / sd if sd > 0 else math.nan

    def log_likelihood(self, feature: str, value: float, sex: str | None) -> np.ndarray:
        """Log-likelihood of one measured value over the age grid (zeros where undefined)."""
        if value is None or not np.isfinite(value):
            return np.zeros_like(self.ages)
        sexes = [sex] if sex in SEXES else list(SEXES)
        curves = []
        for s in sexes:
            key = (s, feature)
            if key not in self.mean:
                continue
            mean, sd, n = self.mean[key], self.sd[key], self.n_eff[key]
            if feature in self.binary:
                p = np.clip(mean, EPS, 1 - EPS)
                ll = np.log(p) if value >= 0.5 else np.log(1 - p)
            else:
                ll = -0.5 * ((value - mean) / sd) ** 2 - np.log(sd)
            # Where the table has (almost) no data, the feature says nothing.
            ll = np.where(n >= 3, ll, np.nan)
            curves.append(ll)
        if not curves:
            return np.zeros_like(self.ages)
        ll = np.logaddexp.reduce(np.nan_to_num(np.stack(curves), nan=-np.inf), axis=0) - np.log(len(curves))
        defined = np.isfinite(ll)
        if not defined.any():
            return np.zeros_like(self.ages)
        fill = ll[defined].min()
        return np.where(defined, ll, fill) - ll[defined].max()

    def implied_age(self, feature: str, value: float, sex: str | None) -> tuple[float, float, float]:
        """The age a single measurement implies: posterior median and 90% interval.

        Returns:
            ``(age, lower, upper)`` in months; NaNs when the value is missing.
        """
        if value is None or not np.isfinite(value):
            return math.nan, math.nan, math.nan
        return posterior_summary(self.ages, self.log_likelihood(feature, value, sex))

    # -- combined lookup -------------------------------------------------------------------
    def total_log_likelihood(self, features: dict[str, float], sex: str | None) -> np.ndarray:
        """Sum of every feature's log-likelihood over the age grid (untempered)."""
        total = np.zeros(len(self.ages), dtype=float)
        for feature in self.features:
            total += self.log_likelihood(feature, features.get(feature, math.nan), sex)
        return total

    def posterior(self, features: dict[str, float], sex: str | None, tau: float | None = None) -> np.ndarray:
        """Normalised posterior over :attr:`ages` from all features (flat prior on AGE_RANGE)."""
        return _tempered_posterior(self.ages, self.total_log_likelihood(features, sex), tau or self.tau)

    def estimate(self, features: dict[str, float], sex: str | None) -> tuple[float, float, float]:
        """Bone age from all features: posterior median and 90% interval (months)."""
        return self.estimate_from_log_likelihood(self.total_log_likelihood(features, sex))

    def estimate_from_log_likelihood(self, total: np.ndarray) -> tuple[float, float, float]:
        """:meth:`estimate` from a :meth:`total_log_likelihood` already computed (the same numbers)."""
        return _quantiles(self.ages, _tempered_posterior(self.ages, total, self.tau))

    # -- persistence -----------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Tidy table: ``sex, feature, kind, age_months, mean, sd, n_eff``."""
        rows = []
        for (sex, feature), mean in sorted(self.mean.items()):
            kind = "binary" if feature in self.binary else "continuous"
            for a, m, s, n in zip(self.ages, mean, self.sd[(sex, feature)], self.n_eff[(sex, feature)]):
                rows.append((sex, feature, kind, float(a), float(m), float(s), float(n)))
        return pd.DataFrame(rows, columns=["sex", "feature", "kind", "age_months", "mean", "sd", "n_eff"])

    def save(self, path: str | Path) -> Path:
        """Write the table as CSV with a ``#`` header (description and calibration)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = [f"# {line}" for line in self.description.strip().splitlines()]
        header.append(f"# calibration: {json.dumps({'tau': self.tau})}")
        buf = io.StringIO()
        self.to_frame().to_csv(buf, index=False, float_format="%.6g")
        path.write_text("\n".join(header) + "\n" + buf.getvalue(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceTable:
        """Read a table written by :meth:`save`."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        header = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
        tau = 1.0
        description = []
        for line in header:
            if line.startswith("calibration:"):
                tau = float(json.loads(line.split(":", 1)[1])["tau"])
            else:
                description.append(line)
        df = pd.read_csv(path, comment="#")
        ages = np.sort(df["age_months"].unique()).astype(float)
        mean, sd, n_eff = {}, {}, {}
        for (sex, feature), g in df.groupby(["sex", "feature"], sort=False):
            g = g.sort_values("age_months")
            mean[(sex, feature)] = g["mean"].to_numpy()
            sd[(sex, feature)] = g["sd"].to_numpy()
            n_eff[(sex, feature)] = g["n_eff"].to_numpy()
        binary = set(df.loc[df["kind"] == "binary", "feature"])
        return cls(ages, mean, sd, n_eff, binary, "\n".join(description), tau)


def _tempered_posterior(ages: np.ndarray, total: np.ndarray, tau: float) -> np.ndarray:
    total = total / tau
    total = np.where((ages < AGE_RANGE[0]) | (ages > AGE_RANGE[1]), -np.inf, total)
    p = np.exp(total - total[np.isfinite(total)].max())
    return p / p.sum()


def posterior_summary(ages: np.ndarray, log_likelihood: np.ndarray) -> tuple[float, float, float]:
    """Median and 5th/95th percentiles of ``exp(log_likelihood)`` over a flat prior."""
    ll = np.where((ages >= AGE_RANGE[0]) & (ages <= AGE_RANGE[1]), log_likelihood, -np.inf)
    p = np.exp(ll - ll.max())
    return _quantiles(ages, p / p.sum())


def _quantiles(ages: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    cdf = np.cumsum(p)
    cdf = cdf / cdf[-1]
    q = np.interp([0.5, 0.05, 0.95], cdf, ages)
    return float(q[0]), float(q[1]), float(q[2])


def build_reference(
    features: pd.DataFrame,
    bone_age_months: np.ndarray,
    sex: np.ndarray,
    *,
    bandwidth_months: float = 12.0,
    description: str = "",
    min_count: int = 10,
) -> ReferenceTable:
    """Build a reference table from measured, age-labelled hands, smoothed across age.

    At each grid age, the mean and SD of every feature are kernel-weighted (Gaussian kernel of
    ``bandwidth_months`` over the labelled ages), per sex; SDs get a floor so no age is
    spuriously certain.

    Args:
        features: one row per hand, one column per feature (NaN = not measured).
        bone_age_months: the reference age of each hand.
        sex: ``"M"``/``"F"`` per hand.
        bandwidth_months: smoothing across age.
        description: header text (source population, whether it is a model).
        min_count: features with fewer finite values per sex are left out.

    Returns:
        The :class:`ReferenceTable` (``tau`` = 1; see :func:`calibrate_tau`).
    """
    ages = np.asarray(bone_age_months, dtype=float)
    sexes = np.asarray(sex)
    grid = AGE_GRID
    mean, sd, n_eff = {}, {}, {}
    binary = set()
    for feature in features.columns:
        values_all = features[feature].to_numpy(dtype=float)
        if is_binary(values_all):
            binary.add(feature)
        overall_sd = np.nanstd(values_all) if np.isfinite(values_all).sum() > 1 else 0.0
        for s in SEXES:
            sel = (sexes == s) & np.isfinite(values_all)
            if sel.sum() < min_count:
                continue
            x, a = values_all[sel], ages[sel]
            w = np.exp(-0.5 * ((grid[:, None] - a[None, :]) / bandwidth_months) ** 2)
            wsum = w.sum(axis=1)
            safe = np.maximum(wsum, 1e-12)
            m = (w @ x) / safe
            if feature in binary:
                # Shrink sparse estimates to 0.5 (a few hands should not certify "never fused").
                m = (w @ x + 0.5) / (safe + 1.0)
                v = m * (1 - m)
            else:
                v = (w @ (x**2)) / safe - m**2
                v = np.maximum(v, (SD_FLOOR_FRACTION * overall_sd) ** 2 + 1e-12)
            # Beyond the data, hold the nearest supported values (flat extrapolation).
            supported = wsum >= 1.0
            if supported.any():
                idx = np.where(supported)[0]
                m = np.interp(grid, grid[idx], m[idx])
                v = np.interp(grid, grid[idx], v[idx])
            mean[(s, feature)] = m
            sd[(s, feature)] = np.sqrt(v)
            n_eff[(s, feature)] = wsum
    return ReferenceTable(grid.copy(), mean, sd, n_eff, binary, description)


def calibrate_tau(
    table: ReferenceTable,
    features: pd.DataFrame,
    bone_age_months: np.ndarray,
    sex: np.ndarray,
    coverage: float = 0.90,
) -> float:
    """Tempering factor so that the lookup's 90% interval covers ``coverage`` of these hands.

    Measurements of different bones of one hand are strongly correlated; multiplying their
    likelihoods as if independent gives intervals that are far too narrow. Dividing the summed
    log-likelihood by ``tau`` widens them; ``tau`` is the smallest value on a grid that reaches
    the target coverage. Use hands the table was not built from.
    """
    ages = np.asarray(bone_age_months, dtype=float)
    rows = features.to_dict(orient="records")
    totals = [table.total_log_likelihood(row, s) for row, s in zip(rows, sex)]
    for tau in np.geomspace(1.0, 200.0, 40):
        hits = 0
        for total, a in zip(totals, ages):
            _, lo, hi = _quantiles(table.ages, _tempered_posterior(table.ages, total, tau))
            hits += lo <= a <= hi
        if hits / max(len(rows), 1) >= coverage:
            return float(tau)
    return 200.0


# ---------------------------------------------------------------------------------------------
# Regression
# ---------------------------------------------------------------------------------------------
def conformal_half_width(abs_residuals: np.ndarray, coverage: float = 0.90) -> float:
    """Split-conformal half-width: the ``ceil((n + 1) * coverage) / n`` quantile of held-out
    absolute residuals, so that ``prediction +- half_width`` covers ``coverage`` of new cases.
    """
    n = len(abs_residuals)
    q = min(1.0, math.ceil((n + 1) * coverage) / n)
    return float(np.quantile(abs_residuals, q))


def sex_unknown(sex: np.ndarray | list) -> np.ndarray:
    """Which hands have no usable sex (anything but ``"M"`` or ``"F"``, e.g. ``None``)."""
    return np.array([s not in ("M", "F") for s in sex], dtype=bool)


@dataclass
class AgeRegression:
    """Gradient-boosted regression of bone age on scale-free features and sex.

    A hand whose sex is unknown is read by a second model fitted on the same hands without the
    sex (``sex_agnostic_model``). The main model never saw a missing sex code in training, so
    scikit-learn would send such a hand down whichever branch of each sex split held more
    training hands: in effect read as one sex, not as either.

    Attributes:
        model: fitted ``HistGradientBoostingRegressor`` (handles missing features natively).
        feature_names: the input columns, in order (sex code appended last).
        half_width_90: conformal half-width of the 90% interval (months), from CV residuals.
        cv_mae: cross-validated MAE on the training hands (months).
        oof: the cross-validated predictions behind ``cv_mae``.
        sex_agnostic_model: the same regression fitted without the sex column (``None`` in a
            regression saved before it existed: unknown sexes then reach ``model``).
        half_width_90_sex_unknown, cv_mae_sex_unknown: its interval half-width and CV MAE.
        oof_sex_unknown: its cross-validated predictions.
    """

    model: object
    feature_names: list[str]
    half_width_90: float
    cv_mae: float
    #: Out-of-fold predictions for the training hands, in their order (for :class:`LookupBlend`).
    oof: np.ndarray | None = field(default=None, repr=False, compare=False)
    sex_agnostic_model: object | None = field(default=None, repr=False, compare=False)
    half_width_90_sex_unknown: float | None = None
    cv_mae_sex_unknown: float | None = None
    oof_sex_unknown: np.ndarray | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def _design(features: pd.DataFrame, sex: np.ndarray, names: list[str]) -> np.ndarray:
        x = features.reindex(columns=names).to_numpy(dtype=float)
        code = np.where(sex_unknown(sex), np.nan, np.array([s == "M" for s in sex], dtype=float))
        return np.column_stack([x, code])

    @classmethod
    def fit(
        cls,
        features: pd.DataFrame,
        bone_age_months: np.ndarray,
        sex: np.ndarray,
        *,
        seed: int = 0,
        folds: int = 5,
        max_iter: int = 400,
    ) -> AgeRegression:
        """Fit on measured hands, with and without the sex; each interval half-width comes from K-fold CV residuals."""
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.model_selection import KFold

        # A feature never measured in this training set carries no information (and breaks
        # scikit-learn's binning): leave it out; it is ignored at prediction time too.
        names = [c for c in features.columns if np.isfinite(features[c].to_numpy(dtype=float)).any()]
        x = cls._design(features, np.asarray(sex), names)
        y = np.asarray(bone_age_months, dtype=float)

        def make() -> HistGradientBoostingRegressor:
            # Squared loss (multistep-8): on 5-fold CV of the training films (four fold seeds) it read them 0.1-0.5
            # months closer than absolute loss, and less drawn toward the middle of the ages (band bias under 6 y
            # +9.6 against +13.9 months); measurements of hands unlike the training films (synthetic ones, issue
            # #22) were read 4 months closer.
            return HistGradientBoostingRegressor(
                loss="squared_error", max_iter=max_iter, learning_rate=0.05, max_leaf_nodes=15,
                min_samples_leaf=20, l2_regularization=1.0, random_state=seed,
            )

        def fit_rows(rows: np.ndarray, columns: slice = slice(None)):
            xt = x[rows][:, columns].copy()
            # A column never seen in these rows would break the binning; as a constant it is
            # simply never split on.
            xt[:, ~np.isfinite(xt).any(axis=0)] = 0.0
            return make().fit(xt, y[rows])

        without_sex = slice(0, -1)  # the sex code is the last column
        oof, oof_unknown = np.zeros_like(y), np.zeros_like(y)
        for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
            oof[test] = fit_rows(train).predict(x[test])
            oof_unknown[test] = fit_rows(train, without_sex).predict(x[test][:, without_sex])
        residual, residual_unknown = np.abs(oof - y), np.abs(oof_unknown - y)
        every = np.arange(len(y))
        return cls(fit_rows(every), names, conformal_half_width(residual), float(residual.mean()), np.clip(oof, *AGE_RANGE),
                   fit_rows(every, without_sex), conformal_half_width(residual_unknown), float(residual_unknown.mean()),
                   np.clip(oof_unknown, *AGE_RANGE))

    def _read_without_sex(self, sex: np.ndarray) -> np.ndarray:
        """Which hands the sex-agnostic model reads: those of unknown sex (none without the model)."""
        return sex_unknown(sex) & (self.sex_agnostic_model is not None)

    def predict(self, features: pd.DataFrame, sex: np.ndarray) -> np.ndarray:
        """Predicted bone age (months), clipped to :data:`AGE_RANGE`; an unknown sex (``None``) is read without it."""
        x = self._design(features, np.asarray(sex), self.feature_names)
        age = self.model.predict(x)  # type: ignore[attr-defined]
        unknown = self._read_without_sex(np.asarray(sex))
        if unknown.any():
            age[unknown] = self.sex_agnostic_model.predict(x[unknown, :-1])  # type: ignore[union-attr]
        return np.clip(age, *AGE_RANGE)

    def predict_interval(self, features: pd.DataFrame, sex: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(age, lower, upper)`` arrays with the conformal 90% interval (its own width for an unknown sex)."""
        age = self.predict(features, sex)
        half = np.where(self._read_without_sex(np.asarray(sex)), self.half_width_90_sex_unknown or self.half_width_90,
                        self.half_width_90)
        return age, np.clip(age - half, *AGE_RANGE), np.clip(age + half, *AGE_RANGE)

    def save(self, path: str | Path) -> Path:
        """Pickle with joblib (scikit-learn models have no portable format).

        The out-of-fold predictions are left out: they are for fitting, and they are per
        training film.
        """
        import dataclasses

        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(dataclasses.replace(self, oof=None, oof_sex_unknown=None), path, compress=3)
        return path

    @staticmethod
    def load(path: str | Path) -> AgeRegression:
        """Load a regression saved by :meth:`save` (a trusted, shipped file)."""
        import joblib

        return joblib.load(path)


# ---------------------------------------------------------------------------------------------
# Combining the lookup and the regression
# ---------------------------------------------------------------------------------------------
def lookup_out_of_fold(
    features: pd.DataFrame,
    bone_age_months: np.ndarray,
    sex: np.ndarray,
    tau: float,
    *,
    folds: int = 5,
    seed: int = 0,
    bandwidth_months: float = 12.0,
    sex_withheld: bool = False,
) -> np.ndarray:
    """Each hand's lookup age from a reference built without its fold (K-fold cross-fitting).

    Args:
        features, bone_age_months, sex: the training hands.
        tau: likelihood tempering of the lookup.
        folds, seed: the K-fold split.
        bandwidth_months: smoothing of the fold references (as for the shipped one).
        sex_withheld: read every hand as of unknown sex (the fold references are still built
            by sex).

    Returns:
        Posterior-median ages (months), one per hand, in input order.
    """
    from sklearn.model_selection import KFold

    ages = np.asarray(bone_age_months, dtype=float)
    sexes = np.asarray(sex)
    out = np.zeros(len(ages))
    rows = features.to_dict(orient="records")
    for fit_idx, held_idx in KFold(folds, shuffle=True, random_state=seed).split(out):
        table = build_reference(features.iloc[fit_idx], ages[fit_idx], sexes[fit_idx], bandwidth_months=bandwidth_months)
        table.tau = tau
        out[held_idx] = [table.estimate(rows[i], None if sex_withheld else sexes[i])[0] for i in held_idx]
    return out


@dataclass
class LookupBlend:
    """The final age as ``w * regression + (1 - w) * lookup``, with a conformal 90% interval.

    ``w`` is the grid value (steps of 0.05) with the lowest MAE over the training hands'
    out-of-fold predictions of both estimators. The blend is then read through an age-band bias
    map (:mod:`boneage.agemap`) when one pays on those out-of-fold ages: the blend is drawn
    toward the middle of the training ages. The interval is ``[f^-1(blend - h), f^-1(blend + h)]``
    with ``h`` the conformal quantile of the out-of-fold ``|blend - f(age)|`` (``f`` the identity
    without a map).

    Attributes:
        regression_weight: ``w`` (1 = regression only, 0 = lookup only).
        half_width_90: ``h`` (months).
        cv_mae: out-of-fold MAE of the blend (months), read through the map when there is one.
        regression_cv_mae, lookup_cv_mae: out-of-fold MAE of each estimator alone.
        age_map: the map (:meth:`boneage.agemap.AgeMap.to_dict`), or ``None``.
        age_map_choice: how it was chosen (:func:`boneage.agemap.choose_age_map`'s report).
    """

    regression_weight: float
    half_width_90: float
    cv_mae: float
    regression_cv_mae: float
    lookup_cv_mae: float
    age_map: dict | None = None
    age_map_choice: dict | None = None

    @classmethod
    def fit(cls, regression_oof: np.ndarray, lookup_oof: np.ndarray, bone_age_months: np.ndarray,
            step: float = 0.05) -> LookupBlend:
        """Choose the weight on out-of-fold predictions of the same hands.

        Args:
            regression_oof, lookup_oof: out-of-fold ages of each estimator.
            bone_age_months: the hands' true ages.
            step: weight grid spacing.
        """
        y = np.asarray(bone_age_months, dtype=float)
        reg, look = np.asarray(regression_oof, dtype=float), np.asarray(lookup_oof, dtype=float)
        weights = np.round(np.arange(0.0, 1.0 + 1e-9, step), 6)
        maes = [float(np.mean(np.abs(w * reg + (1 - w) * look - y))) for w in weights]
        best = int(np.argmin(maes))
        w = float(weights[best])
        blend = np.clip(w * reg + (1 - w) * look, *AGE_RANGE)
        age_map, choice = choose_age_map(y, blend)
        mapped = read_interval(age_map, blend, 0.0, AGE_RANGE)[0]
        return cls(w, conformal_half_width(np.abs(blend - expected_estimates(age_map, y))), float(np.mean(np.abs(mapped - y))),
                   float(np.mean(np.abs(reg - y))), float(np.mean(np.abs(look - y))),
                   age_map.to_dict() if age_map is not None else None, choice)

    def combine(self, regression_age: np.ndarray | float, lookup_age: np.ndarray | float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(age, lower, upper)`` from the two estimators' ages (months)."""
        age = np.clip(self.regression_weight * np.asarray(regression_age, dtype=float)
                      + (1 - self.regression_weight) * np.asarray(lookup_age, dtype=float), *AGE_RANGE)
        return read_interval(AgeMap.from_dict(self.age_map), age, self.half_width_90, AGE_RANGE)

    def save(self, path: str | Path) -> Path:
        """Write as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LookupBlend:
        """Read a blend written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))

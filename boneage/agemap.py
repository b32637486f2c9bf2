"""Age-band bias correction: a monotone map from a method's estimate back to the age it stands for.

Why: on films they never saw (the calibration hold-out of the training split), the networks read
children under 12 y too old (+3 to +5 months at 4-11 y) and adolescents too young (-2): an
estimator that is right on average is drawn toward the crowded 11-14 y middle of RSNA's labels
(regression to the mean). A reader comparing bone age with the calendar needs no such tilt.

The correction (as in brain-age work: de Lange & Cole, NeuroImage Clin 2020;26:102229) fits how
estimates depend on the true age on the hold-out, ``estimate = f(age)`` (a robust polynomial), and
reads an estimate back through the inverse, ``age = f^-1(estimate)``. It is kept only when
repeated cross-validation on that hold-out says it pays (:func:`choose_age_map`); the validation
split plays no part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Age bands (months) whose bias the choice looks at: under 6 y, 6-12 y (both ends included), over 12 y.
BANDS_MONTHS = ((0.0, 72.0), (72.0, 144.0), (144.0, 240.0))
#: A more complex candidate must lower the cross-validated score by more than this (months) to be chosen.
MIN_GAIN_MONTHS = 0.25
#: Fewest held-out films on which a map is judged (each half must reach every band).
MIN_FILMS = 40
#: Grid (months) on which a map is tabulated, and the plausible range of ages.
_GRID = np.arange(0.0, 240.0 + 1e-9, 1.0)
_RANGE = (0.0, 240.0)


@dataclass(frozen=True)
class AgeMap:
    """A monotone map between a method's estimates and ages, tabulated on a 1-month grid.

    Beyond the table both directions continue with slope 1 (an estimate past the ages the map was
    fitted on is shifted by the map's end offset, not stretched).

    Attributes:
        estimates: ``f(age)`` on the grid (strictly increasing).
        ages: the grid (months).
        degree: degree of the polynomial ``f`` it was fitted with.
    """

    estimates: tuple[float, ...]
    ages: tuple[float, ...]
    degree: int

    def apply(self, values):
        """Ages that ``values`` (estimates, any shape; unclipped) stand for: ``f^-1(values)``.

        Callers clip the result to their plausible range afterwards.
        """
        return _interp_slope_one(values, self.estimates, self.ages)

    def expected_estimate(self, ages):
        """The estimate ``f(age)`` the method gives on average at ``ages``."""
        return _interp_slope_one(ages, self.ages, self.estimates)

    def to_dict(self) -> dict:
        return {"degree": self.degree, "estimates": [round(v, 4) for v in self.estimates],
                "ages": [round(v, 4) for v in self.ages]}

    @classmethod
    def from_dict(cls, data: dict | None) -> AgeMap | None:
        """The map stored by :meth:`to_dict`, or ``None`` for none."""
        if not data:
            return None
        return cls(tuple(float(v) for v in data["estimates"]), tuple(float(v) for v in data["ages"]), int(data["degree"]))


def read_interval(age_map: AgeMap | None, centre, half, age_range: tuple[float, float] = _RANGE):
    """``(age, lower, upper)`` of ``centre +- half`` read through ``age_map`` (if any), then clipped.

    Mapping before clipping keeps an estimate past the range from saturating (the map's ends
    continue with slope 1). Every method reads its interval this way.
    """
    centre, half = np.asarray(centre, dtype=np.float64), np.asarray(half, dtype=np.float64)
    values = (centre, centre - half, centre + half)
    if age_map is not None:
        values = tuple(age_map.apply(v) for v in values)
    return tuple(np.clip(v, *age_range) for v in values)


def expected_estimates(age_map: AgeMap | None, ages):
    """What a method reads on average at ``ages``: ``f(ages)`` with a map, ``ages`` without.

    Conformal factors of a mapped interval are fitted on ``|estimate - f(age)| / scale``: the
    interval ``[f^-1(e - k s), f^-1(e + k s)]`` holds ``age`` exactly when that is at most ``k``.
    """
    return np.asarray(ages, dtype=np.float64) if age_map is None else age_map.expected_estimate(ages)


#: Plain names of :func:`choose_age_map`'s candidates, for reports and model cards.
CANDIDATE_NAMES = {"none": "no map", "degree_1": "a straight-line map", "degree_2": "a quadratic map"}


def describe_choice(report: dict | None) -> str:
    """One phrase on a :func:`choose_age_map` report for a model card: what was chosen and what it changed."""
    if not report:
        return "no age-band bias map (calibrated before it existed)"
    chosen, none = report["chosen"], report["none"]
    if chosen == "none":
        return f"no map (worst band bias on held-out halves {none['worst_band_bias_months']:.1f} months)"
    pick = report[chosen]
    return (f"{CANDIDATE_NAMES.get(chosen, chosen)} (on held-out halves: worst band bias {none['worst_band_bias_months']:.1f} -> "
            f"{pick['worst_band_bias_months']:.1f} months, MAE {none['mae_months']:.2f} -> {pick['mae_months']:.2f})")


def _interp_slope_one(values, xp, fp):
    """``np.interp`` inside the table, slope 1 from its end points outside it."""
    x = np.asarray(values, dtype=np.float64)
    out = np.interp(x, xp, fp)
    out = np.where(x < xp[0], fp[0] + (x - xp[0]), out)
    return np.where(x > xp[-1], fp[-1] + (x - xp[-1]), out)


#: Least slope ``df/dage`` a fitted map may have over the ages it was fitted on: a flatter map
#: would stretch a small change of estimate into a large change of age.
MIN_SLOPE = 0.3


def fit_age_map(ages: np.ndarray, estimates: np.ndarray, degree: int) -> AgeMap | None:
    """Fit ``estimate = f(age)`` (Huber-robust polynomial) and tabulate it for inversion.

    The polynomial holds over the range of ``ages``; beyond it ``f`` continues with slope 1 from
    its end points (no extrapolated curvature).

    Args:
        ages: true bone ages (months) of held-out films.
        estimates: a method's estimates of them.
        degree: polynomial degree (1 = straight line).

    Returns:
        :class:`AgeMap`, or ``None`` when the fit is not increasing with slope at least
        :data:`MIN_SLOPE` over the fitted ages (it could not be inverted sensibly).
    """
    from sklearn.linear_model import HuberRegressor

    ages = np.asarray(ages, dtype=np.float64)
    estimates = np.asarray(estimates, dtype=np.float64)
    powers = lambda a: np.stack([(a / 100.0) ** k for k in range(1, degree + 1)], axis=1)  # noqa: E731
    model = HuberRegressor(epsilon=1.35, alpha=0.0, max_iter=1000).fit(powers(ages), estimates)
    lo, hi = float(ages.min()), float(ages.max())
    inside = np.clip(_GRID, lo, hi)
    f = model.predict(powers(inside)) + (_GRID - inside)  # slope 1 outside [lo, hi]
    slopes = np.diff(f)[(_GRID[1:] > lo) & (_GRID[:-1] < hi)]
    if slopes.size and slopes.min() < MIN_SLOPE:
        return None
    return AgeMap(tuple(float(v) for v in f), tuple(float(v) for v in _GRID), degree)


def band_biases(ages: np.ndarray, estimates: np.ndarray) -> list[float]:
    """Mean ``estimate - age`` in each of :data:`BANDS_MONTHS` (``nan`` for an empty band)."""
    ages = np.asarray(ages, dtype=np.float64)
    errors = np.asarray(estimates, dtype=np.float64) - ages
    (_, young), (_, middle), _ = BANDS_MONTHS
    masks = (ages < young, (ages >= young) & (ages <= middle), ages > middle)
    return [float(errors[m].mean()) if m.any() else float("nan") for m in masks]


def _score(ages: np.ndarray, estimates: np.ndarray) -> tuple[float, float, float]:
    mae = float(np.mean(np.abs(estimates - ages)))
    worst = float(np.nanmax(np.abs(band_biases(ages, estimates))))
    return mae + worst, mae, worst


def choose_age_map(ages: np.ndarray, estimates: np.ndarray, degrees: tuple[int, ...] = (1, 2), repeats: int = 20,
                   seed: int = 0) -> tuple[AgeMap | None, dict]:
    """Decide, on held-out films, whether and how to correct a method's age-band bias.

    Each candidate (no map, or a map of each degree) is scored on random halves of these films, the
    map fitted on the other half: MAE plus worst band bias (|mean error| in the band that errs
    most), the error a reader meets on average plus the one they cannot average away; averaged over
    ``repeats`` splits, both halves each. Every candidate meets the same halves, so the noise in a
    band's mean weighs on all alike (scoring pooled k-fold predictions instead would flatter a map:
    each fold's correction carries the other folds' noise). Taken simplest first (no map, then
    rising degree), a candidate replaces the choice only when its score is lower by more than
    :data:`MIN_GAIN_MONTHS`.

    Args:
        ages: true bone ages of the held-out films.
        estimates: the method's estimates of them.
        degrees: polynomial degrees to try.
        repeats: random half-splits.
        seed: random seed of the splits.

    Returns:
        ``(map, report)``: the chosen map fitted on all the films (``None`` when no map wins), and a
        report of each candidate's mean score, MAE and worst band bias on the held-out halves.
    """
    ages = np.asarray(ages, dtype=np.float64)
    estimates = np.asarray(estimates, dtype=np.float64)
    n = len(ages)
    if n < MIN_FILMS:
        score, mae, worst = _score(ages, estimates)
        report = {"none": {"score": round(score, 3), "mae_months": round(mae, 3), "worst_band_bias_months": round(worst, 3)},
                  "chosen": "none", "why": f"too few films ({n}, need {MIN_FILMS}) to judge a map"}
        return None, report
    rng = np.random.default_rng(seed)
    names = ["none"] + [f"degree_{d}" for d in degrees]
    scores: dict[str, list] = {name: [] for name in names}
    for _ in range(repeats):
        order = rng.permutation(n)
        halves = (order[: n // 2], order[n // 2:])
        for fit_half, test in (halves, halves[::-1]):
            scores["none"].append(_score(ages[test], estimates[test]))
            for degree in degrees:
                age_map = fit_age_map(ages[fit_half], estimates[fit_half], degree)
                # A map that cannot be inverted on this half scores as no map would.
                scores[f"degree_{degree}"].append(_score(ages[test], read_interval(age_map, estimates[test], 0.0)[0]))
    report: dict = {}
    for name in names:
        score, mae, worst = np.mean(scores[name], axis=0)
        report[name] = {"score": round(float(score), 3), "mae_months": round(float(mae), 3),
                        "worst_band_bias_months": round(float(worst), 3)}
    # Simplest first: a candidate with more parameters must beat the current choice by a margin.
    chosen = "none"
    for degree in degrees:
        if report[f"degree_{degree}"]["score"] < report[chosen]["score"] - MIN_GAIN_MONTHS:
            chosen = f"degree_{degree}"
    age_map = fit_age_map(ages, estimates, int(chosen.split("_")[1])) if chosen != "none" else None
    if age_map is None and chosen != "none":
        report["why"] = f"the {chosen} fit on all films is not invertible (slope < {MIN_SLOPE})"
        chosen = "none"
    report["chosen"] = chosen
    return age_map, report

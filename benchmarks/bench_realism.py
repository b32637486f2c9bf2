"""How real do the synthetic hands look to the shipped models and to a classifier (issue #22)?

Usage:
    .venv/bin/python benchmarks/bench_realism.py [--seed 20261210] [--n 40] [--sizes 512 768] [--real-reference]
        [--n-classifier 300] [--skip-classifier] [--n-features 48] [--n-look 60] [--look-min-age 0] [--n-turn 40]
        [--n-embed 300] [--n-layout 42] [--n-occlude 16] [--occlude-ages 84 132] [--n-physis 40] [--n-transplant 16]
        [--transplant-region carpals] [--transplant-ages 108 204] [--n-joints 80] [--n-capitate 24] [--n-regions 48]
        [--n-operations 24] [--n-ossicles 48] [--n-attribution 0] [--attribution-sex F] [--attribution-ages 156 204]
        [--set NAME=VALUE ...]

Prints measures of the gap between synthetic and real films (another, side-by-side sheets of
synthetic hands and real films of the same sex and bone age, is ``scripts/synth_vs_real.py --out
/tmp/synth_vs_real.png``, kept outside the repository):

(a) **The shipped models on fresh synthetic hands**: ``--n`` hands of a seed no model or choice
    used (default 20261210), at each of ``--sizes`` px, estimated with their sex through the whole
    pipeline (``BoneAgeEstimator.estimate``); each method's MAE, overall and by bone-age band, and how
    often it gave an age. The hands' bone ages are uniform to each sex's maximum, where real films crowd
    at 8-15 y: a last column ("real mix") weights each hand so that sexes and 24-month bands count as
    among the real training-split films (:func:`real_mix_weights`). Also each built-in example case
    (``data/examples``): its truth, every method's reading and the spread between the methods. With
    ``--real-reference``, the same table on the real training-split films nearest each hand in bone age, of its sex
    (:func:`real_readings`): the readers' own error at those ages, a floor since they were trained on those films.
(b) **Real vs synthetic classifier**: ``--n-classifier`` real development films (``rsna-dev``
    *training* split only, never the validation split) and as many synthetic hands (512 px), each
    prepared as the CNN sees it (crop, squash, window, 256 px) and described by intensity and
    gradient histograms, a radial power spectrum, Laplacian energy at three scales and a 16 x 16
    thumbnail; a gradient-boosting classifier's ROC AUC on held-out images (5-fold
    cross-validation; 0.5 = indistinguishable, 1.0 = always told apart), on all the features and on each
    group alone (which kind of difference gives synthetic hands away).
(c) **Maturity measurements**: the shipped segmenter and :func:`boneage.measure.measure` on the real
    training-split films (the multi-step feature cache) and on ``--n-features`` synthetic hands of
    seed ``--seed + 1``: epiphysis / metaphysis width, epiphysis-metaphysis contact, carpal area
    share, by bone-age band. The synthesis's maturity shapes are calibrated on this table.
(d) **Film look**: on ``--n-look`` real training-split films and as many synthetic hands of the same
    bone ages (768 px, seed ``--seed + 2``), cross-shaft grey-level profiles of four shafts found by the shipped segmenter,
    after the percentile window: the soft tissue beside the shaft, the bone's cortex above it, the
    medulla's share of that (centre / cortex, both above soft tissue), the shaft's width / length and
    its cortex fraction (one minus the offset of the brightest point across it, in half-widths; shafts
    with no canal edge are left out of its means) and its fine texture (the grain inside its inner half at a fifth of
    its half-width, over its cortex's contrast: trabecular struts and film noise), by bone-age band (the radius leaves
    the film, so its width / length is not shown). The synthesis's
    attenuations, soft-tissue thicknesses, medullary densities, shaft slenderness and film processing
    were set with these measurements and the bone crops' grey levels, on hands of other seeds.
(e) **Turned films**: the shipped end-to-end CNN reads ``--n-turn`` real training-split films of 6-12 y
    and as many synthetic hands of the same bone ages and sexes (512 px, seed ``--seed + 3``) upright
    and turned by each of ``TURN_ANGLES_DEG`` (:func:`boneage.preprocess.rotate_film`), with the sex given.
    The network is rotation-robust on real films (it was trained with tilts); a reading that swings
    with the tilt of a synthetic hand says the hand lies off the films the network knows, even where
    its average looks right. Mean change against the upright reading, and the mean of each image's
    largest swing. Then the synthetic hands' reading at +15 minus at -15 degrees as drawn, with their
    bones blurred away, and with their soft tissue (:func:`soft_tissue_mask`) set to its median grey:
    where the swing lives.

(f) **The CNN's own feature space**: the shipped end-to-end CNN's pooled backbone features (the input of
    its age head; the untilted view of the film as given) of ``--n-embed`` real training-split films and as
    many synthetic hands (512 px, seed ``--seed + 4``). For each synthetic hand, the cosine similarity
    of its nearest real film against that between a real film and its nearest other real film, and the
    mean bone age of its ``NEIGHBOURS`` nearest real films against its own, by bone-age band. Hands
    that look real to the network sit as close to real films as real films sit to each other, among
    films of their own age; hands that do not are read by the age of the odd films they land beside.

(g) **Wrist layout**: the shipped segmenter's label maps of ``--n-layout`` real training-split films of 6-19 y
    and as many synthetic hands of the same bone ages and sexes (768 px, seed ``--seed + 5``), measured by
    :func:`carpal_layout` (carpal packing and size, lunate-radius and capitate-metacarpal gaps, all against the
    third metacarpal's shaft, and four carpals' length over width); medians by bone-age band.
(h) **What the CNN's reading rests on**: ``--n-occlude`` real training-split films of bone ages ``--occlude-ages``
    (default 84-132 months, 7-11 y) and as many synthetic hands of the same bone ages and sexes (768 px, seed
    ``--seed + 6``), read by the shipped end-to-end CNN with one region's bones (:data:`OCCLUSION_REGIONS`, the
    segmenter's masks) blurred away (:func:`occlusion_changes`); the mean change of its reading per region. A region
    whose removal moves synthetic readings much more than real ones is where synthetic hands tell the network
    something real films do not.
(i) **Epiphyses and physes**: the shipped segmenter's label maps of ``--n-physis`` real training-split films of
    2-17 y and as many synthetic hands of the same bone ages and sexes (768 px, seed ``--seed + 7``), measured by
    :func:`physis_geometry` for the metacarpals and phalanges of digits 2-4 and the radius: the epiphysis's width
    against its metaphysis and its height against its width, how much of it touches the shaft, the metaphysis's
    flare against the mid-shaft, and the shaft's slenderness; medians by bone-age band.
(j) **What the per-bone network reads in one region**: ``--n-transplant`` real training-split films of bone ages
    ``--transplant-ages`` (default 108-204 months) and as many synthetic hands of the same bone ages and sexes (768 px,
    seed ``--seed + 8``). Each pair's crops of ``--transplant-region`` (default the carpal region:
    :func:`boneage.perbone.bone_crops`, the metacarpal bases at the top, the carpus in the middle, the radius and ulna
    at the bottom; a tubular bone's crop has its epiphysis end at the top) are read by the shipped per-bone network as
    cut, and with one third of one crop put in the other (:func:`crop_transplants`); the mean bias of each. A third
    that moves a synthetic crop's reading towards the real one's is where the synthetic hand looks unlike a real film
    to that network.

(k) **Joint spaces**: the shipped segmenter's label maps of ``--n-joints`` real training-split films of 2-19 y and as
    many synthetic hands of the same bone ages and sexes (768 px, seed ``--seed + 9``), measured by :func:`joint_gaps`
    at the MCP, PIP and DIP joints of the third ray and the PIP and DIP joints of the fifth: the gap between the two
    bones' masks, against the third proximal phalanx's length; medians by bone-age band. To the networks a narrow
    joint reads as a mature one.

(l) **The capitate and the third metacarpal**: ``--n-capitate`` real training-split films of 7-19 y and as many
    synthetic hands of the same bone ages and sexes (768 px, seed ``--seed + 10``). The capitate's length against the
    third metacarpal's and its length over width (:func:`capitate_geometry`) on the shipped segmenter's label maps of
    the real films, and on the synthetic hands both as drawn (their own label maps) and as segmented; with the share of
    the drawn capitate the segmenter labels as the third metacarpal (:func:`label_share`) and the third metacarpal's
    segmented length against its drawn one; medians by bone-age band. The third metacarpal is the multi-step method's
    scale bone: where the segmenter runs it into the capitate, every relative length and carpal area shrinks with it.

(m) **The per-bone network region by region**: ``--n-regions`` real training-split films of 2-18 y and as many
    synthetic hands of the same bone ages and sexes (512 px, seed ``--seed + 11``), each region read on its own by the
    shipped per-bone network (:func:`perbone_regions`): the mean bias of every region on the synthetic hands against
    that on the real films, by bone-age band and sex, and the mean over regions of the distance between the two
    (:func:`region_gaps`). The network's consensus is a weighted median, so regions read too old and too young can
    cancel in it; region by region they cannot. Last, how far one film's regions disagree with one another
    (:func:`region_spread`), which needs no bone age: a real hand's bones tell one age.
(n) **Film operations**: ``--n-operations`` real training-split films of 4-17 y and as many synthetic hands of the
    same bone ages and sexes (512 px, seed ``--seed + 12``), each read by the shipped end-to-end CNN upright as the
    pipeline reads it, then again after each of :func:`film_operations` (grey-level curves, a blur, edge enhancement,
    a wider and a narrower frame): the mean size of each change, real / synthetic; then edge enhancement within one
    region's bones at a time (:func:`sharpening_changes`, the regions of (h)). The network hardly moves on real films;
    how much more it moves on synthetic hands measures how far they lie from real films without using their bone ages,
    and the regions say where.

(o) **Carpal ossicles**: ``--n-ossicles`` real training-split films of 3-18 y and as many synthetic hands of the same
    bone ages and sexes (768 px, seed ``--seed + 13``): the capitate's and the hamate's bright ossicle, found by a local
    threshold around the shipped segmenter's label (:func:`ossicle_area`), in area against the third metacarpal, with
    the label's own area beside it; medians by bone-age band. On young real films the segmenter's carpal labels run into
    the cartilage around the ossicle (and it labels carpals not yet ossified), so its areas overstate young real carpi.
(p) **What moves the multi-step reading**: ``--n-attribution`` synthetic hands of one sex and bone-age range
    (``--attribution-sex``, ``--attribution-ages``; 512 px, seed ``--seed + 14``), read by the shipped segmenter and
    multi-step model with their sex: the mean bias, then how much it changes when one bone's measurements (then one
    measurement) are replaced by the median of real training-split films of that sex within 12 months of each
    hand's bone age (:func:`feature_swaps`; the multi-step feature cache). The largest changes name the measurements
    in which the synthetic hands, as the segmenter reads them, lie furthest from real films for that method.

``--set NAME=VALUE`` (repeatable) changes one of the renderer's numeric constants in
:mod:`boneage.synth` for this run only (e.g. ``--set _CARPAL_SCALE=1.4``; one entry of a table of numbers as
``--set "_TRABECULAR_DENSITY[metacarpal]=0.45"``), so that probes of the rendering can be rerun from the repository;
use them with an exploratory ``--seed``, never the default one.

Research data are read in place from ``../shared``.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Callable, Iterator

import numpy as np
from bench_validation import BANDS, METHODS  # one definition of the methods and bands (this folder)


def synthetic_readings(estimator, seed: int, n: int, size: int) -> dict[str, np.ndarray]:
    """Every method's age for ``n`` fresh synthetic hands of ``size`` px (NaN where it gave none)."""
    from tqdm import tqdm

    from boneage.synth import generate_hand

    truth = np.empty(n)
    female = np.zeros(n, bool)
    ages = {m: np.full(n, np.nan) for m in METHODS}
    for i in tqdm(range(n), desc=f"synthetic {size} px", unit="hand", mininterval=10):
        hand = generate_hand(seed, i, size=size)
        truth[i] = hand.bone_age_months
        female[i] = hand.sex == "F"
        for m, age in method_ages(estimator.estimate(hand.image, sex=hand.sex)).items():
            ages[m][i] = age
    return {"truth": truth, "female": female, **ages}


def method_ages(result) -> dict[str, float]:
    """Each method's age in a :class:`boneage.result.BoneAgeResult` (NaN where it gave none)."""
    return {m: getattr(result, m).age_months if getattr(result, m).available else float("nan") for m in METHODS}


def age_matched_films(truth: np.ndarray, female: np.ndarray, real_ages: np.ndarray,
                      real_female: np.ndarray) -> np.ndarray:
    """For each synthetic hand, the real film of its sex nearest in bone age (films may repeat).

    Args:
        truth: the synthetic hands' bone ages (months).
        female: True for girls.
        real_ages: the real films' bone ages (months).
        real_female: True for the real girls.

    Returns:
        ``(len(truth),)`` indices into the real films (the first of equally near ones).

    Raises:
        ValueError: when a hand's sex has no real film.
    """
    real_ages, real_female = np.asarray(real_ages, np.float64), np.asarray(real_female, bool)
    out = np.empty(len(truth), dtype=np.int64)
    for i, (age, girl) in enumerate(zip(np.asarray(truth, np.float64), np.asarray(female, bool))):
        of_sex = np.flatnonzero(real_female == girl)
        if not len(of_sex):
            raise ValueError(f"no real film of the {'girls' if girl else 'boys'} to match a synthetic hand to")
        out[i] = of_sex[int(np.argmin(np.abs(real_ages[of_sex] - age)))]
    return out


def real_readings(estimator, truth: np.ndarray, female: np.ndarray) -> dict[str, np.ndarray]:
    """Every method's age for the real training-split films matched to synthetic hands (:func:`age_matched_films`),
    each read with its sex through the whole pipeline: :func:`synthetic_readings`'s table on real films of the same
    bone ages and sexes, whose truth is each film's own bone age. The shipped models were trained on these films, so
    the figures are a floor: what the readers do at these ages where the films are real.

    Args:
        estimator: :class:`boneage.estimate.BoneAgeEstimator`.
        truth: the synthetic hands' bone ages (months).
        female: True for girls.

    Returns:
        ``{"truth", "female", method: ages}`` for the matched films (NaN where a method gave no age).
    """
    from tqdm import tqdm

    from boneage import datasets

    dev = datasets.rsna_dev()
    train = dev[dev["split"] == "train"].reset_index(drop=True)  # never the validation split
    films = train.iloc[age_matched_films(truth, female, train["bone_age_months"].to_numpy(float),
                                         (train["sex"] == "F").to_numpy())]
    ages = {m: np.full(len(films), np.nan) for m in METHODS}
    for i, (path, sex) in enumerate(tqdm(list(zip(films["path"], films["sex"])), desc="real films, same ages",
                                         unit="film", mininterval=10)):
        for m, age in method_ages(estimator.estimate(path, sex=sex)).items():
            ages[m][i] = age
    return {"truth": films["bone_age_months"].to_numpy(float), "female": (films["sex"] == "F").to_numpy(), **ages}


def sex_band_bias(readings: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """Each method's mean error (months) by sex and bone-age band: where the synthetic hands' sexes differ.

    Args:
        readings: :func:`synthetic_readings`'s ``truth``, ``female`` and one age array per method (NaN: not read).

    Returns:
        ``{method: {"boys": [bias per band of BANDS], "girls": [...]}}`` (:func:`boneage.agemap.band_biases`, whose
        bands are BANDS); NaN where a band has no reading.
    """
    from boneage.agemap import band_biases

    truth, female = readings["truth"], readings["female"]
    out: dict[str, dict[str, list[float]]] = {}
    for m in METHODS:
        ok = np.isfinite(readings[m])
        out[m] = {sex: band_biases(truth[ok & of_sex], readings[m][ok & of_sex])
                  for sex, of_sex in (("boys", ~female), ("girls", female))}
    return out


#: Bone-age bands (months) in which :func:`real_mix_weights` matches the real films' mix: 24 leaves about 19 groups of
#: sex and band, so that part (a)'s 40 hands reach most of them (with 12, 37 groups held only 56% of the real films).
REAL_MIX_BIN_MONTHS = 24.0


def real_mix_weights(truth: np.ndarray, female: np.ndarray, real_ages: np.ndarray, real_female: np.ndarray,
                     bin_months: float = REAL_MIX_BIN_MONTHS) -> tuple[np.ndarray, float]:
    """Weights that give fresh synthetic hands the real films' mix of sexes and bone ages (post-stratification).

    Synthetic hands are drawn half boys, half girls, with bone ages uniform up to each sex's maximum
    (:data:`boneage.synth.MAX_BONE_AGE_MONTHS_BY_SEX`); real films crowd at 8-15 y. Hands and films are grouped by
    sex and ``bin_months`` band (a real film past its sex's maximum joins the last band); each group of hands then
    weighs as much as its share of the real films, split evenly among its hands. A weighted mean error is the one a
    reader would meet on real films of the groups the hands reach; the real films of groups no hand reached are left
    out, and the share they leave is returned with the weights.

    Args:
        truth: the synthetic hands' bone ages (months).
        female: True for girls.
        real_ages: the real films' bone ages (months).
        real_female: True for the real girls.
        bin_months: band width.

    Returns:
        ``(weights, covered)``: ``(len(truth),)`` weights with mean 1 (all 0 when no hand shares a group with a real
        film), and the share of the real films in groups that hold at least one hand.
    """
    from boneage.synth import MAX_BONE_AGE_MONTHS_BY_SEX

    def groups(ages: np.ndarray, girls: np.ndarray) -> np.ndarray:
        top = np.where(girls, MAX_BONE_AGE_MONTHS_BY_SEX["F"], MAX_BONE_AGE_MONTHS_BY_SEX["M"])
        band = np.floor(np.clip(ages, 0, top - 1e-9) / bin_months).astype(int)
        return band * 2 + girls.astype(int)

    hand_group = groups(np.asarray(truth, np.float64), np.asarray(female, bool))
    real_group = groups(np.asarray(real_ages, np.float64), np.asarray(real_female, bool))
    hands_in = {g: np.sum(hand_group == g) for g in np.unique(hand_group)}
    films_in = {g: np.sum(real_group == g) for g in np.unique(real_group)}
    weights = np.array([films_in.get(g, 0) / hands_in[g] for g in hand_group], dtype=np.float64)
    covered = sum(films_in.get(g, 0) for g in hands_in) / max(len(real_group), 1)
    return (weights / weights.mean() if weights.any() else weights), float(covered)


def real_mix_reference() -> tuple[np.ndarray, np.ndarray] | None:
    """The real training-split films' bone ages and girls (for :func:`real_mix_weights`), or ``None`` (said why)
    when the rsna-dev labels are not on this machine: part (a) then prints no "real mix" column."""
    from boneage import datasets

    try:
        dev = datasets.rsna_dev()
    except datasets.DataUnavailableError as exc:
        print(f"part (a) without its real-mix column: {exc}")
        return None
    train = dev[dev["split"] == "train"]  # training-split labels only
    return train["bone_age_months"].to_numpy(float), (train["sex"] == "F").to_numpy()


def print_readings(size: int, readings: dict[str, np.ndarray], real_mix: tuple[np.ndarray, float] | None = None,
                   title: str | None = None) -> None:
    """Part (a)'s table; with ``real_mix`` (:func:`real_mix_weights`) also each method's MAE at the real films' mix.
    ``title`` replaces the heading's "fresh synthetic hands at ``size`` px" (for :func:`real_readings`)."""
    weights, covered = real_mix if real_mix is not None else (None, 0.0)
    truth = readings["truth"]
    what = title or f"fresh synthetic hands at {size} px"
    print(f"\nshipped models on {len(truth)} {what} (MAE in months; bias in brackets):")
    print(f"  {'method':<10} {'read':>5} {'MAE':>6}   " + "   ".join(f"{name:>12}" for name, _ in BANDS)
          + (f"   {'real mix':>12}" if weights is not None else ""))
    for m in METHODS:
        ok = np.isfinite(readings[m])
        err = readings[m][ok] - truth[ok]
        cells = []
        for _, in_band in BANDS:
            band = in_band(truth[ok])
            cells.append(f"{np.abs(err[band]).mean():5.1f} ({err[band].mean():+5.1f})" if band.any() else f"{'-':>12}")
        mae = f"{np.abs(err).mean():6.1f}" if ok.any() else f"{'-':>6}"
        if weights is not None:
            w = weights[ok]
            cells.append(f"{np.sum(w * np.abs(err)) / w.sum():12.1f}" if w.sum() > 0 else f"{'-':>12}")
        print(f"  {m:<10} {ok.mean():>5.0%} {mae}   " + "   ".join(cells))
    if weights is not None:
        worth = np.sum(weights) ** 2 / np.sum(weights ** 2) if weights.any() else 0.0
        print(f"  (real mix: MAE with each hand weighted so that sexes and {REAL_MIX_BIN_MONTHS:.0f}-month bone-age bands "
              f"count as among the real training-split films; the hands' groups hold {covered:.0%} of those films; "
              f"{worth:.0f} hands' worth of evidence)")
    if "female" in readings:
        n_girls = int(readings["female"].sum())
        print(f"  bias by sex, boys / girls ({len(truth) - n_girls} / {n_girls} hands): "
              + ", ".join(name for name, _ in BANDS))
        cell = lambda v: f"{v:+6.1f}" if np.isfinite(v) else f"{'-':>6}"  # noqa: E731  (an empty band)
        for m, by_sex in sex_band_bias(readings).items():
            print(f"  {m:<10} " + "   ".join(f"{cell(b)} / {cell(g)}" for b, g in zip(by_sex["boys"], by_sex["girls"])))


def print_examples(estimator) -> None:
    from boneage.examples import example_names, load_example

    print("\nbuilt-in example cases (months):")
    for name in example_names():
        rad = load_example(name)
        truth = rad.metadata.get("example_truth_bone_age_months")
        result = estimator.estimate(rad)
        read = {m: getattr(result, m).age_months for m in METHODS if getattr(result, m).available}
        spread = max(read.values()) - min(read.values()) if read else float("nan")
        cells = ", ".join(f"{m} {a:.0f} ({a - truth:+.0f})" for m, a in read.items())
        print(f"  {name}: truth {truth:.0f}; {cells}; methods {spread:.0f} apart")


def image_feature_parts(prepared: np.ndarray) -> dict[str, np.ndarray]:
    """Appearance features of a prepared 256 x 256 input (floats in [0, 1]), by group: what a film looks like,
    not what it shows.

    Args:
        prepared: the input as the CNN sees it (:func:`boneage.preprocess.prepare_model_input`), 256 x 256.

    Returns:
        ``intensity`` (a 32-bin grey-level histogram), ``gradient`` (32-bin gradient-magnitude histogram),
        ``spectrum`` (log radial power spectrum in 24 log-spaced rings at most), ``sharpness`` (Laplacian-of-Gaussian
        energy at three scales) and ``thumbnail`` (16 x 16 block means), each a 1-D float array.
    """
    from scipy import ndimage

    x = prepared.astype(np.float64)
    hist = np.histogram(x, bins=32, range=(0, 1))[0] / x.size
    gy, gx = np.gradient(x)
    grad = np.histogram(np.hypot(gy, gx), bins=32, range=(0, 0.25))[0] / x.size
    power = np.abs(np.fft.fftshift(np.fft.fft2(x - x.mean()))) ** 2
    rows, cols = np.indices(power.shape)
    radius = np.hypot(rows - power.shape[0] / 2, cols - power.shape[1] / 2).astype(int)
    radial = np.bincount(radius.ravel(), power.ravel()) / np.maximum(np.bincount(radius.ravel()), 1)
    edges = np.unique(np.geomspace(1, len(radial) - 1, 25).astype(int))
    spectrum = np.log1p([radial[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    sharpness = [np.abs(ndimage.gaussian_laplace(x, s)).mean() for s in (0.7, 1.5, 3.0)]
    thumb = x.reshape(16, 16, 16, 16).mean(axis=(1, 3)).ravel()
    return {"intensity": hist, "gradient": grad, "spectrum": np.asarray(spectrum), "sharpness": np.asarray(sharpness),
            "thumbnail": thumb}


def image_features(prepared: np.ndarray) -> np.ndarray:
    """All of :func:`image_feature_parts` in one vector (the groups in their order; see :func:`feature_groups`)."""
    return np.concatenate(list(image_feature_parts(prepared).values()))


def feature_groups(prepared: np.ndarray) -> dict[str, slice]:
    """Where each group of :func:`image_feature_parts` lies in :func:`image_features`' vector of ``prepared``."""
    groups, start = {}, 0
    for name, values in image_feature_parts(prepared).items():
        groups[name] = slice(start, start + len(values))
        start += len(values)
    return groups


def group_aucs(features: np.ndarray, labels: np.ndarray, groups: dict[str, slice],
               seed: int) -> dict[str, tuple[float, float]]:
    """Cross-validated ROC AUC of telling the two classes apart, on all features and on each group alone.

    Args:
        features: ``(n, d)`` feature vectors.
        labels: ``(n,)`` 0/1 classes.
        groups: name -> columns of ``features`` (e.g. :func:`feature_groups`).
        seed: seeds the folds and the classifier.

    Returns:
        ``"all"`` and each group's name -> (mean, SD) of the AUC over 5 stratified folds.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    found = {}
    for name, columns in {"all": slice(None), **groups}.items():
        scores = cross_val_score(HistGradientBoostingClassifier(max_iter=200, random_state=seed),
                                 features[:, columns], labels, cv=folds, scoring="roc_auc")
        found[name] = (float(scores.mean()), float(scores.std()))
    return found


def classifier_auc(n: int, seed: int) -> dict[str, tuple[float, float]]:
    """ROC AUC (mean, SD over 5 folds) of telling real training-split films from synthetic hands: ``"all"`` the
    features together, then each group of :func:`image_feature_parts` alone (which kind of difference gives them
    away)."""
    from tqdm import tqdm

    from boneage import datasets
    from boneage.io import load_radiograph
    from boneage.preprocess import prepare_model_input
    from boneage.synth import generate_hand

    dev = datasets.rsna_dev()
    train = dev[dev["split"] == "train"].sample(n=min(n, int((dev["split"] == "train").sum())), random_state=seed)
    features, labels = [], []
    for path in tqdm(train["path"], desc="real films", unit="film", mininterval=10):
        prepared, _ = prepare_model_input(load_radiograph(path).pixels, 256)
        features.append(image_features(prepared))
        labels.append(1)
    for i in tqdm(range(len(train)), desc="synthetic hands", unit="hand", mininterval=10):
        prepared, _ = prepare_model_input(generate_hand(seed + 1, i, size=512).image, 256)
        features.append(image_features(prepared))
        labels.append(0)
    return group_aucs(np.array(features), np.array(labels), feature_groups(prepared), seed)


#: Maturity measurements compared in (c): what the synthesis was calibrated on (issue #22).
FEATURES = ("distal_phalanx_3.epiphysis_ratio", "middle_phalanx_3.epiphysis_ratio", "proximal_phalanx_3.epiphysis_ratio",
            "metacarpal_3.epiphysis_ratio", "radius.epiphysis_ratio", "middle_phalanx_3.fusion_contact",
            "radius.fusion_contact", "capitate.area_rel", "hamate.area_rel", "lunate.area_rel")
#: Bone-age bands of (c), months.
FEATURE_BANDS = ((0, 60), (60, 108), (108, 144), (144, 180), (180, 240))


def maturity_features(n: int, seed: int) -> None:
    """(c): the same segmenter and measurements on real training-split films and on ``n`` synthetic hands, by band."""
    import pandas as pd
    from tqdm import tqdm

    from boneage import datasets, models
    from boneage.measure import measure
    from boneage.synth import generate_hand
    from boneage.training.multistep import film_features, load_segmenter_fn

    dev = datasets.rsna_dev()
    train = dev[dev["split"] == "train"].reset_index(drop=True)
    real = film_features(train, models.get("segmenter").version, None, workers=2)
    real_ages = train["bone_age_months"].to_numpy(float)
    segment = load_segmenter_fn("cpu")
    rng = np.random.default_rng(seed)
    rows, ages = [], []
    for i in tqdm(range(n), desc="synthetic measured", unit="hand", mininterval=10):
        age = float(rng.uniform(24, 216))
        hand = generate_hand(seed, i, size=768, bone_age_months=age, sex="F" if i % 2 else "M")
        rows.append(measure(segment(hand.image), None).features())
        ages.append(age)
    synthetic, synthetic_ages = pd.DataFrame(rows), np.array(ages)
    print(f"\nmaturity measurements, real training-split films / {n} synthetic hands (768 px), mean by bone-age band:")
    print(f"  {'measurement':<36}" + "".join(f"{f'{lo}-{hi} mo':>16}" for lo, hi in FEATURE_BANDS))
    for name in FEATURES:
        cells = []
        for lo, hi in FEATURE_BANDS:
            r = real[name].to_numpy(float)[(real_ages >= lo) & (real_ages < hi)] if name in real else np.array([])
            s = synthetic[name].to_numpy(float)[(synthetic_ages >= lo) & (synthetic_ages < hi)] if name in synthetic else np.array([])
            cells.append(f"{np.nanmean(r) if r.size else np.nan:.2f} / {np.nanmean(s) if s.size else np.nan:.2f}")
        print(f"  {name:<36}" + "".join(f"{c:>16}" for c in cells))


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


#: Shafts profiled in (d) and the bone-age bands (months) of its table.
LOOK_BONES = ("proximal_phalanx_3", "metacarpal_2", "metacarpal_3", "radius")
LOOK_BANDS = ((0, 72), (72, 144), (144, 165), (165, 180), (180, 200), (200, 240))


def film_look(n: int, seed: int, min_age: float = 0.0) -> None:
    """(d): shaft grey-level profiles and slenderness on real training-split films and ``n`` synthetic hands, by band.

    Args:
        n: real films (as many synthetic hands of their bone ages).
        seed: the draw of the films and the synthetic seed.
        min_age: only real films of at least this bone age (months), e.g. 144 to compare adolescents.
    """
    from tqdm import tqdm

    from dataclasses import astuple

    from boneage import datasets, models
    from boneage.io import load_radiograph
    from boneage.measure import shaft_profile
    from boneage.preprocess import normalise_intensity
    from boneage.synth import generate_hand

    segmenter = models.load("segmenter")
    dev = datasets.rsna_dev()
    pool = dev[(dev["split"] == "train") & (dev["bone_age_months"] >= min_age)]
    train = pool.sample(n=min(n, len(pool)), random_state=seed)
    films = [("real", path, float(age), None) for path, age in zip(train["path"], train["bone_age_months"])]
    # Synthetic hands of the real films' bone ages, so that each band compares like with like.
    films += [("synthetic", None, float(np.clip(age, 12, 228)), i) for i, age in enumerate(train["bone_age_months"])]
    rows = []
    for kind, path, age, index in tqdm(films, desc="film look", unit="film", mininterval=10):
        pixels = (load_radiograph(path).pixels if kind == "real" else
                  generate_hand(seed, index, size=768, bone_age_months=age, sex="F" if index % 2 else "M").image)
        windowed = normalise_intensity(np.asarray(pixels, dtype=np.float32))
        labels = segmenter.segment(pixels)
        for bone in LOOK_BONES:
            profile = shaft_profile(windowed, labels, bone)
            if profile is not None:
                rows.append((kind, bone, age, astuple(profile)))
    # ShaftProfile's fields, in order.
    names = ("soft tissue", "cortex - soft", "medulla share", "width / length", "cortex fraction", "fine texture")
    print(f"\nfilm look, real training-split films / {len(train)} synthetic hands (768 px), mean by bone-age band "
          "(grey levels after the 0.5-99.5% window):")
    print(f"  {'shaft and measurement':<36}" + "".join(f"{f'{lo}-{hi} mo':>16}" for lo, hi in LOOK_BANDS))
    for bone in LOOK_BONES:
        for j, name in enumerate(names):
            if bone == "radius" and name == "width / length":
                continue  # the radius runs off the film: its visible length is the framing's
            cells = []
            for lo, hi in LOOK_BANDS:
                # The cortex fraction is NaN where a shaft shows no canal edge: left out, not averaged in.
                means = [_finite_mean([v[j] for k, b, a, v in rows if k == kind and b == bone and lo <= a < hi])
                         for kind in ("real", "synthetic")]
                cells.append(f"{means[0]:.2f} / {means[1]:.2f}")
            print(f"  {f'{bone} {name}':<36}" + "".join(f"{c:>16}" for c in cells))


#: Tilts (degrees, counter-clockwise) of (e).
TURN_ANGLES_DEG = (-15.0, -8.0, 8.0, 15.0)
#: Bone ages (months) of (e): the band where the end-to-end CNN misreads synthetic hands most.
TURN_AGES = (72.0, 144.0)


def operation_changes(read: Callable[[np.ndarray], float], pixels: np.ndarray,
                      operations: dict[str, Callable[[np.ndarray], np.ndarray]]) -> np.ndarray:
    """A reader's change (its reading of each operated film minus that of the film as given), in ``operations``'
    order."""
    base = read(pixels)
    return np.array([read(op(pixels)) - base for op in operations.values()])


def turn_changes(read: Callable[[np.ndarray], float], pixels: np.ndarray,
                 angles: tuple[float, ...] = TURN_ANGLES_DEG) -> np.ndarray:
    """How one film's reading moves when it is turned.

    Args:
        read: film pixels -> age in months.
        pixels: the upright film.
        angles: counter-clockwise tilts in degrees.

    Returns:
        ``(len(angles),)`` readings of the turned film minus the upright reading, months.
    """
    from boneage.preprocess import rotate_film

    return operation_changes(read, pixels, {a: (lambda x, a=a: rotate_film(x, a)[0]) for a in angles})


def turn_swing(read: Callable[[np.ndarray], float], pixels: np.ndarray, degrees: float = 15.0) -> float:
    """A film's reading turned ``degrees`` counter-clockwise minus its reading turned as far clockwise (months)."""
    from boneage.preprocess import rotate_film

    return read(rotate_film(pixels, degrees)[0]) - read(rotate_film(pixels, -degrees)[0])


def soft_tissue_mask(seed: int, index: int, size: int, bone_age_months: float, sex: str,
                     hand=None) -> np.ndarray:
    """Where a synthetic hand shows soft tissue alone: what changes when it is drawn again without soft tissue,
    less its bones (dilated 4 px) and with the holes between them filled.

    Args:
        seed, index, size, bone_age_months, sex: the hand, as :func:`boneage.synth.generate_hand` draws it.
        hand: the hand as drawn, when the caller has it already.

    Returns:
        ``(rows, cols)`` boolean mask.
    """
    from scipy import ndimage

    from boneage import synth

    hand = hand or synth.generate_hand(seed, index, size=size, bone_age_months=bone_age_months, sex=sex)
    kept = synth._SOFT_TISSUE_MU_SCALE
    synth._SOFT_TISSUE_MU_SCALE = 0.0
    try:
        bare = synth.generate_hand(seed, index, size=size, bone_age_months=bone_age_months, sex=sex)
    finally:
        synth._SOFT_TISSUE_MU_SCALE = kept
    bones = ndimage.binary_dilation(hand.label_map > 0, iterations=4)
    changed = np.abs(ndimage.gaussian_filter(hand.image - bare.image, 3)) > 0.02
    tissue = ndimage.binary_fill_holes(ndimage.binary_opening(changed, iterations=2) | bones)
    return tissue & ~bones


def flatten(pixels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The film with ``region`` set to its own median grey (float32; unchanged where ``region`` is empty)."""
    out = np.asarray(pixels, dtype=np.float32).copy()
    if region.any():
        out[region] = np.median(out[region])
    return out


#: Synthetic hands of (e) read again with part of them taken away: where the CNN's turn swing lives.
TURN_REMOVALS = ("as drawn", "bones blurred away", "soft tissue flattened")


def turned_films(n: int, seed: int) -> None:
    """(e): the end-to-end CNN's reading change with tilt, real 6-12 y films against synthetic hands."""
    from tqdm import tqdm

    from boneage import datasets
    from boneage.direct import DirectEstimator
    from boneage.io import load_radiograph
    from boneage.synth import generate_hand

    cnn = DirectEstimator.load()
    dev = datasets.rsna_dev()
    pool = dev[(dev["split"] == "train") & dev["bone_age_months"].between(*TURN_AGES)]
    train = pool.sample(n=min(n, len(pool)), random_state=seed)
    changes = {"real": [], "synthetic": []}
    swings = {name: [] for name in TURN_REMOVALS}  # reading at +15 degrees minus at -15, synthetic hands
    ends = [TURN_ANGLES_DEG.index(-15.0), TURN_ANGLES_DEG.index(15.0)]
    for i, (path, age, sex) in enumerate(tqdm(list(zip(train["path"], train["bone_age_months"], train["sex"])),
                                              desc="turned films", unit="film", mininterval=10)):
        def read(x: np.ndarray) -> float:
            return cnn.predict(x, sex).age_months

        changes["real"].append(turn_changes(read, load_radiograph(path).pixels))
        hand = generate_hand(seed, i, size=512, bone_age_months=float(age), sex=sex)
        changes["synthetic"].append(turn_changes(read, hand.image))
        drawn, bones_blurred, soft_flattened = TURN_REMOVALS
        swings[drawn].append(changes["synthetic"][-1][ends[1]] - changes["synthetic"][-1][ends[0]])
        swings[bones_blurred].append(turn_swing(read, blur_away(hand.image, hand.label_map > 0)))
        soft = soft_tissue_mask(seed, i, 512, float(age), sex, hand)
        swings[soft_flattened].append(turn_swing(read, flatten(hand.image, soft)))
    print(f"\nturned films: the end-to-end CNN's reading change (months) against upright, {len(train)} real "
          f"training-split films of {TURN_AGES[0]:.0f}-{TURN_AGES[1]:.0f} months / as many synthetic hands of "
          "the same bone ages and sexes (512 px):")
    print(f"  {'tilt (deg, counter-clockwise)':<32}" + "".join(f"{a:>+16.0f}" for a in TURN_ANGLES_DEG)
          + f"{'largest swing':>16}")
    real, synthetic = (np.array(changes[k]) for k in ("real", "synthetic"))
    cells = [f"{r:+.1f} / {s:+.1f}" for r, s in zip(real.mean(0), synthetic.mean(0))]
    swing = [np.mean(np.abs(c).max(axis=1)) for c in (real, synthetic)]
    print(f"  {'mean change, real / synthetic':<32}" + "".join(f"{c:>16}" for c in cells)
          + f"{f'{swing[0]:.1f} / {swing[1]:.1f}':>16}")
    real_swing = np.mean(real[:, ends[1]] - real[:, ends[0]])
    print(f"  synthetic hands' reading at +15 minus at -15 degrees (real films {real_swing:+.1f}): "
          + ", ".join(f"{name} {np.mean(v):+.1f}" for name, v in swings.items())
          + " (soft tissue: what changes when the hand is drawn without it, set to its median grey)")


#: Real films whose bone ages are averaged for each synthetic hand in (f).
NEIGHBOURS = 5


def nearest_real_films(real: np.ndarray, real_ages: np.ndarray, synthetic: np.ndarray,
                       k: int = NEIGHBOURS) -> dict[str, np.ndarray]:
    """Where synthetic hands land among real films in a feature space (cosine similarity).

    Args:
        real: ``(R, F)`` features of real films.
        real_ages: ``(R,)`` their bone ages, months.
        synthetic: ``(S, F)`` features of synthetic hands.
        k: real films averaged per synthetic hand.

    Returns:
        ``synthetic_similarity`` ``(S,)``: each hand's similarity to its nearest real film;
        ``real_similarity`` ``(R,)``: each real film's to its nearest *other* real film;
        ``neighbour_age`` ``(S,)``: the mean bone age of each hand's ``k`` nearest real films;
        ``real_neighbour_age`` ``(R,)``: the same for each real film among the others (the baseline:
        a neighbour average leans towards the middle ages even for real films).
    """
    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    r, s_ = unit(real), unit(synthetic)
    to_real = s_ @ r.T
    among_real = r @ r.T
    np.fill_diagonal(among_real, -np.inf)
    real_ages = np.asarray(real_ages, dtype=np.float64)
    nearest = np.argsort(-to_real, axis=1)[:, :k]
    nearest_other = np.argsort(-among_real, axis=1)[:, :k]
    return {"synthetic_similarity": to_real.max(axis=1), "real_similarity": among_real.max(axis=1),
            "neighbour_age": real_ages[nearest].mean(axis=1), "real_neighbour_age": real_ages[nearest_other].mean(axis=1)}


def cnn_features(cnn, pixels: np.ndarray) -> np.ndarray:
    """The end-to-end CNN's pooled backbone features of a film as given, untilted (ensemble members concatenated)."""
    import torch

    from boneage.direct import tilted_views
    from boneage.networks import images_to_tensor
    from boneage.preprocess import prepare_model_input

    prepared, _ = prepare_model_input(np.asarray(pixels), cnn.cache_size)
    x = images_to_tensor(tilted_views(prepared, (0.0,)), cnn.input_size)
    members = getattr(cnn.model, "members", [cnn.model])
    with torch.no_grad():
        return np.concatenate([m.backbone(x).float().numpy()[0] for m in members])


def cnn_feature_space(n: int, seed: int) -> None:
    """(f): synthetic hands among real films in the end-to-end CNN's own feature space."""
    from tqdm import tqdm

    from boneage import datasets
    from boneage.direct import DirectEstimator
    from boneage.io import load_radiograph
    from boneage.synth import generate_hand

    cnn = DirectEstimator.load(exported=False)  # the torch module: its backbone is reachable
    dev = datasets.rsna_dev()
    train = dev[dev["split"] == "train"].sample(n=min(n, int((dev["split"] == "train").sum())), random_state=seed)
    real = np.array([cnn_features(cnn, load_radiograph(p).pixels)
                     for p in tqdm(list(train["path"]), desc="CNN features, real", unit="film", mininterval=10)])
    synthetic, ages = [], []
    for i in tqdm(range(n), desc="CNN features, synthetic", unit="hand", mininterval=10):
        hand = generate_hand(seed, i, size=512)  # one at a time: only its features are kept
        synthetic.append(cnn_features(cnn, hand.image))
        ages.append(hand.bone_age_months)
    synthetic, ages = np.array(synthetic), np.array(ages)
    real_ages = train["bone_age_months"].to_numpy(float)
    found = nearest_real_films(real, real_ages, synthetic)
    print(f"\nthe end-to-end CNN's feature space: {len(train)} real training-split films, {n} synthetic hands (512 px); "
          f"nearest real film's cosine similarity, and the mean bone age of the {NEIGHBOURS} nearest (other) real films, "
          "real / synthetic:")
    print(f"  {'band':<8}{'n':>10}{'similarity':>16}{'bone age':>16}{'neighbours':>16}")
    for name, in_band in (*BANDS, ("all", lambda y: np.ones(len(y), bool))):
        r, s_ = in_band(real_ages), in_band(ages)
        if r.any() and s_.any():
            cells = [f"{int(r.sum())} / {int(s_.sum())}",
                     f"{np.mean(found['real_similarity'][r]):.3f} / {np.mean(found['synthetic_similarity'][s_]):.3f}",
                     f"{np.mean(real_ages[r]):.0f} / {np.mean(ages[s_]):.0f}",
                     f"{np.mean(found['real_neighbour_age'][r]):.0f} / {np.mean(found['neighbour_age'][s_]):.0f}"]
            print(f"  {name:<8}" + "".join(f"{c:>16}" if i else f"{c:>10}" for i, c in enumerate(cells)))


#: Carpals whose layout (g) measures (the pisiform, palmar and late, is left out).
LAYOUT_CARPALS = ("capitate", "hamate", "lunate", "triquetrum", "scaphoid", "trapezium", "trapezoid")
#: Bone-age bands (months) of (g); every carpal named above has appeared by 6 y.
LAYOUT_BANDS = ((72, 120), (120, 168), (168, 228))
#: Carpals whose elongation (g) measures: those whose shape differed most from real films' (tenth sitting).
ELONGATED_CARPALS = ("capitate", "hamate", "lunate", "trapezoid")
LAYOUT_NAMES = ("carpal fill", "carpal area / MC3 length^2", "carpal hull / MC3 length^2",
                "lunate-radius gap / MC3 width", "capitate-MC3 gap / MC3 width") + tuple(
    f"{bone} length / width" for bone in ELONGATED_CARPALS)


def largest_piece(mask: np.ndarray) -> np.ndarray:
    """The largest connected piece of a mask (the mask itself when it has one piece or none): a stray piece of a
    label elsewhere would stretch any extent measured on it."""
    from scipy import ndimage

    pieces, count = ndimage.label(mask)
    return pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1 if count > 1 else mask


def principal_coordinates(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A mask's pixel centres along its principal axis and across it (pixels, about its centroid).

    Args:
        mask: 2-D boolean mask with at least two pixels.

    Returns:
        ``(along, across)``: each pixel's coordinate on the mask's main axis and on the axis at right angles.
    """
    yx = np.argwhere(mask).astype(np.float64)
    yx -= yx.mean(axis=0)
    axis, across = np.linalg.svd(yx, full_matrices=False)[2]
    return yx @ axis, yx @ across


def mask_gaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each pixel of mask ``b``, the background pixels between it and mask ``a`` (its distance to ``a`` less one
    pixel, so 0 for a pixel beside ``a``, whatever the film's resolution). The masks must not overlap."""
    from scipy import ndimage

    return np.maximum(ndimage.distance_transform_edt(~a)[b] - 1.0, 0.0)


def elongation(mask: np.ndarray) -> float:
    """Length over width of a label's largest piece: its extent along its principal axis over its widest extent
    across it (in seven slices along the axis); ``nan`` under 30 pixels."""
    mask = largest_piece(mask)
    if mask.sum() < 30:
        return float("nan")
    t, u = principal_coordinates(mask)
    length = t.max() - t.min() + 1
    slices = np.clip(((t - t.min()) / length * 7).astype(int), 0, 6)
    width = max(u[slices == k].max() - u[slices == k].min() + 1 for k in range(7) if (slices == k).any())
    return float(length / width)


def carpal_layout(labels: np.ndarray) -> dict[str, float] | None:
    """How the carpus is packed on a label map, scale-free (against the third metacarpal's shaft).

    Args:
        labels: ``(rows, cols)`` :mod:`boneage.anatomy` label map (a segmenter's or a synthetic hand's).

    Returns:
        ``None`` when the third metacarpal's shaft or the carpals are missing; else, keyed by
        :data:`LAYOUT_NAMES`: the carpals' share of their convex hull, their area and their hull's area
        over the shaft's length squared, and the narrowest lunate-radius (epiphysis or shaft) and
        capitate-metacarpal gaps over the shaft's width (``nan`` where a bone is missing; 0 touching), and the
        :func:`elongation` of each of :data:`ELONGATED_CARPALS` (``nan`` where missing).
    """
    from skimage.morphology import convex_hull_image

    from boneage import anatomy

    shaft = labels == anatomy.shaft_label("metacarpal_3")
    carpals = np.isin(labels, [anatomy.shaft_label(b) for b in LAYOUT_CARPALS])
    if shaft.sum() < 20 or carpals.sum() < 20:
        return None
    shaft = largest_piece(shaft)
    t, u = principal_coordinates(shaft)
    length = float(t.max() - t.min() + 1)
    middle = np.abs(t) <= 0.15 * length
    width = float(u[middle].max() - u[middle].min() + 1)

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        if a.sum() == 0 or b.sum() == 0:
            return float("nan")
        return float(mask_gaps(a, b).min() / width)

    hull = convex_hull_image(carpals)
    radius = np.isin(labels, [anatomy.shaft_label("radius"), anatomy.epiphysis_label("radius")])
    values = (carpals.sum() / hull.sum(), carpals.sum() / length**2, hull.sum() / length**2,
              gap(labels == anatomy.shaft_label("lunate"), radius),
              gap(labels == anatomy.shaft_label("capitate"), shaft),
              *(elongation(labels == anatomy.shaft_label(bone)) for bone in ELONGATED_CARPALS))
    return dict(zip(LAYOUT_NAMES, (float(v) for v in values)))


def paired_films(n: int, seed: int, bands: tuple[tuple[int, int], ...],
                 desc: str, drawn: bool = False) -> Iterator[tuple[str, float, np.ndarray, np.ndarray]]:
    """Real films and synthetic hands like them, each with the shipped segmenter's label map.

    Args:
        n: real training-split films, drawn (with ``seed``) among those of bone age from the first band's
            start to the last band's end.
        seed: the draw's seed and the synthetic hands' seed.
        bands: bone-age bands (months), in order.
        desc: the progress bar's label.
        drawn: also yield each synthetic hand's own label map (the truth), after its segmented one.

    Yields:
        ``("real" or "synthetic", bone age in months, pixels, label map)``: each real film, then a synthetic hand of
        its bone age and sex (768 px); with ``drawn``, then ``("drawn", age, the hand's pixels, its label map)``.
    """
    from tqdm import tqdm

    from boneage import datasets, models
    from boneage.io import load_radiograph
    from boneage.synth import generate_hand

    segmenter = models.load("segmenter")
    dev = datasets.rsna_dev()
    ages = dev["bone_age_months"]
    pool = dev[(dev["split"] == "train") & ages.between(bands[0][0], bands[-1][1], inclusive="left")]
    train = pool.sample(n=min(n, len(pool)), random_state=seed)
    for i, (path, age, sex) in enumerate(tqdm(list(zip(train["path"], train["bone_age_months"], train["sex"])),
                                              desc=desc, unit="film", mininterval=10)):
        hand = generate_hand(seed, i, size=768, bone_age_months=float(age), sex=sex)
        for kind, pixels in (("real", load_radiograph(path).pixels), ("synthetic", hand.image)):
            yield kind, float(age), pixels, segmenter.segment(pixels)
        if drawn:
            yield "drawn", float(age), hand.image, hand.label_map


def paired_label_maps(n: int, seed: int, bands: tuple[tuple[int, int], ...],
                      desc: str, drawn: bool = False) -> Iterator[tuple[str, float, np.ndarray]]:
    """The shipped segmenter's label maps of real films and of synthetic hands like them: :func:`paired_films`
    (the same arguments) without the pixels.

    Yields:
        ``(kind, bone age in months, label map)``, ``kind`` being ``"real"``, ``"synthetic"`` or ``"drawn"``.
    """
    for kind, age, _, labels in paired_films(n, seed, bands, desc, drawn):
        yield kind, age, labels


def wrist_layout(n: int, seed: int) -> None:
    """(g): carpal packing on real training-split films of 6-19 y and synthetic hands of the same ages and sexes."""
    rows, films = [], 0
    for kind, age, labels in paired_label_maps(n, seed, LAYOUT_BANDS, "wrist layout"):
        films += kind == "real"
        found = carpal_layout(labels)
        if found is not None:
            rows.append((kind, age, found))
    print(f"\nwrist layout (shipped segmenter), {films} real training-split films / as many synthetic hands of the "
          "same bone ages and sexes (768 px), median by bone-age band:")
    print(f"  {'measurement':<36}" + "".join(f"{f'{lo}-{hi} mo':>16}" for lo, hi in LAYOUT_BANDS))
    for name in LAYOUT_NAMES:
        cells = []
        for lo, hi in LAYOUT_BANDS:
            medians = [np.nanmedian([v[name] for k, a, v in rows if k == kind and lo <= a < hi] or [np.nan])
                       for kind in ("real", "synthetic")]
            cells.append(f"{medians[0]:.2f} / {medians[1]:.2f}")
        print(f"  {name:<36}" + "".join(f"{c:>16}" for c in cells))


#: Bones of (i), grouped as its table's rows: digits 2-4 of each tubular kind, and the radius.
PHYSIS_GROUPS = {
    "metacarpal 2-4": ("metacarpal_2", "metacarpal_3", "metacarpal_4"),
    "proximal phalanx 2-4": ("proximal_phalanx_2", "proximal_phalanx_3", "proximal_phalanx_4"),
    "middle phalanx 2-4": ("middle_phalanx_2", "middle_phalanx_3", "middle_phalanx_4"),
    "distal phalanx 2-4": ("distal_phalanx_2", "distal_phalanx_3", "distal_phalanx_4"),
    "radius": ("radius",),
}
#: Measurements of (i), as :func:`physis_geometry` names them.
PHYSIS_NAMES = ("epiphysis / metaphysis width", "epiphysis height / width", "contact",
                "metaphysis / mid-shaft width", "mid-shaft width / length")
#: Bone-age bands (months) of (i).
PHYSIS_BANDS = ((24, 72), (72, 132), (132, 200))


def physis_geometry(labels: np.ndarray, bone: str, measured=None) -> dict[str, float] | None:
    """A tubular bone's epiphysis, physis and metaphysis on a label map, scale-free.

    The widths, the contact and the length are :func:`boneage.measure.measure`'s, as the multi-step method
    reads them; only the epiphysis's height is measured here.

    Args:
        labels: ``(rows, cols)`` :mod:`boneage.anatomy` label map (a segmenter's or a synthetic hand's).
        bone: a tubular bone or the radius (whose shaft leaves the film: its length is what the film shows).
        measured: ``measure(labels)`` when the caller has it already (it measures every bone at once).

    Returns:
        ``None`` when the shaft or the epiphysis is missing or too small to measure; else, keyed by
        :data:`PHYSIS_NAMES`: the epiphysis's width over the metaphysis's (``epiphysis_ratio``), its height
        along the bone's axis (its largest piece) over its width, ``fusion_contact`` (0 open, 1 fused or
        touching at both edges), the metaphysis's width over the mid-shaft width, and the mid-shaft width over
        the bone's length (shaft and epiphysis).
    """
    from boneage import anatomy
    from boneage.measure import measure

    m = (measured if measured is not None else measure(labels)).bones[bone]
    if not (m.present and m.epiphysis_present and m.metaphysis_width_px and m.width_px and m.length_px):
        return None
    if m.length_px < 10:  # too short a shaft to tell its middle from its end
        return None
    epiphysis = largest_piece(labels == anatomy.epiphysis_label(bone))
    angle = np.deg2rad(m.axis_angle_deg)
    along = np.argwhere(epiphysis) @ np.array([np.cos(angle), np.sin(angle)])
    height = float(np.percentile(along, 99) - np.percentile(along, 1) + 1)
    values = (m.epiphysis_ratio, height / m.epiphysis_width_px, m.fusion_contact,
              m.metaphysis_width_px / m.width_px, m.width_px / m.length_px)
    return dict(zip(PHYSIS_NAMES, (float(v) for v in values)))


def physes(n: int, seed: int) -> None:
    """(i): epiphyses, physes and metaphyses on real training-split films of 2-17 y and synthetic hands alike."""
    from boneage.measure import measure

    rows, films = [], 0
    for kind, age, labels in paired_label_maps(n, seed, PHYSIS_BANDS, "physes"):
        films += kind == "real"
        measured = measure(labels)
        for group, bones in PHYSIS_GROUPS.items():
            for bone in bones:
                found = physis_geometry(labels, bone, measured)
                if found is not None:
                    rows.append((kind, age, group, found))
    print(f"\nepiphyses and physes (shipped segmenter), {films} real training-split films / as many synthetic hands "
          "of the same bone ages and sexes (768 px), median by bone-age band (real / synthetic):")
    print(f"  {'bones: measurement':<52}" + "".join(f"{f'{lo}-{hi} mo':>16}" for lo, hi in PHYSIS_BANDS))
    for group in PHYSIS_GROUPS:
        for name in PHYSIS_NAMES:
            cells = []
            for lo, hi in PHYSIS_BANDS:
                medians = [np.nanmedian([v[name] for k, a, g, v in rows if k == kind and g == group and lo <= a < hi]
                                        or [np.nan]) for kind in ("real", "synthetic")]
                cells.append(f"{medians[0]:.2f} / {medians[1]:.2f}")
            print(f"  {f'{group}: {name}':<52}" + "".join(f"{c:>16}" for c in cells))


#: Joints of (k): name -> (proximal bone, distal bone), and the bone whose length the gaps are measured against.
JOINTS = {"MCP3": ("metacarpal_3", "proximal_phalanx_3"), "PIP3": ("proximal_phalanx_3", "middle_phalanx_3"),
          "DIP3": ("middle_phalanx_3", "distal_phalanx_3"), "PIP5": ("proximal_phalanx_5", "middle_phalanx_5"),
          "DIP5": ("middle_phalanx_5", "distal_phalanx_5")}
JOINT_REFERENCE = "proximal_phalanx_3"
#: Bone-age bands of (k), months.
JOINT_BANDS = ((24, 72), (72, 120), (120, 150), (150, 200), (200, 240))


def bone_mask(labels: np.ndarray, bone: str) -> np.ndarray:
    """A bone's shaft and epiphysis in a label map, its largest connected piece."""
    from boneage import anatomy

    ids = [anatomy.shaft_label(bone)]
    if anatomy.epiphysis_label(bone) is not None:
        ids.append(anatomy.epiphysis_label(bone))
    return largest_piece(np.isin(labels, ids))


def mask_length(mask: np.ndarray) -> float:
    """A mask's extent along its main axis, in pixels (pixel centres' spread + 1); NaN under 2 pixels."""
    if np.count_nonzero(mask) < 2:
        return float("nan")
    along = principal_coordinates(mask)[0]
    return float(along.max() - along.min() + 1)


def joint_gaps(labels: np.ndarray, closest: int = 15, min_pixels: int = 10) -> dict[str, float]:
    """The space between neighbouring bones at each of :data:`JOINTS`, as the label map shows it.

    Args:
        labels: a label map (:mod:`boneage.anatomy` ids).
        closest: how many of the distal bone's pixels nearest the proximal bone are averaged.
        min_pixels: bones with fewer pixels are taken as absent (at least 2).

    Returns:
        Joint name -> the mean width (pixels) of the background between the distal bone's ``closest`` pixels nearest
        to the proximal bone and that bone's mask (its distance less one pixel: 0 where the masks touch, whatever the
        film's resolution), in % of :data:`JOINT_REFERENCE`'s length (:func:`mask_length`); joints with either bone
        absent, and every joint when the reference bone is, are left out.
    """
    min_pixels = max(min_pixels, 2)
    reference = bone_mask(labels, JOINT_REFERENCE)
    if reference.sum() < 2 * min_pixels:
        return {}
    length = mask_length(reference)
    gaps = {}
    for name, (proximal, distal) in JOINTS.items():
        a, b = bone_mask(labels, proximal), bone_mask(labels, distal)
        if a.sum() < min_pixels or b.sum() < min_pixels:
            continue
        gaps[name] = float(np.sort(mask_gaps(a, b))[:closest].mean()) / length * 100
    return gaps


def joint_spaces(n: int, seed: int) -> None:
    """(k): the digits' joint spaces on real training-split films of 2-19 y and synthetic hands alike."""
    rows, films = [], 0
    for kind, age, labels in paired_label_maps(n, seed, JOINT_BANDS, "joints"):
        films += kind == "real"
        rows.extend((kind, age, joint, gap) for joint, gap in joint_gaps(labels).items())
    print(f"\njoint spaces (shipped segmenter: the background between neighbouring bones' masks in % of the third "
          f"proximal phalanx's length), {films} real training-split films / as many synthetic hands of the same bone "
          "ages and sexes (768 px), median by bone-age band (real / synthetic):")
    print(f"  {'joint':<8}" + "".join(f"{f'{lo}-{hi} mo':>16}" for lo, hi in JOINT_BANDS))
    for joint in JOINTS:
        cells = []
        for lo, hi in JOINT_BANDS:
            medians = [np.nanmedian([g for k, a, j, g in rows if k == kind and j == joint and lo <= a < hi] or [np.nan])
                       for kind in ("real", "synthetic")]
            cells.append(f"{medians[0]:.2f} / {medians[1]:.2f}")
        print(f"  {joint:<8}" + "".join(f"{c:>16}" for c in cells))


_PHALANGES = ("proximal_phalanx", "middle_phalanx", "distal_phalanx")
#: Regions of (h): which bones are blurred away, as (bone kinds, which parts).
OCCLUSION_REGIONS = {
    "carpals": (("carpal",), "shaft"),
    "phalangeal epiphyses": (_PHALANGES, "epiphysis"),
    "phalangeal shafts": (_PHALANGES, "shaft"),
    "metacarpal epiphyses": (("metacarpal",), "epiphysis"),
    "metacarpal shafts": (("metacarpal",), "shaft"),
    "radius and ulna": (("forearm",), "both"),
}
#: Bone ages (months) of (h).
OCCLUSION_AGES = (84.0, 132.0)


def region_labels(region: str) -> list[int]:
    """The :mod:`boneage.anatomy` label ids of an :data:`OCCLUSION_REGIONS` region."""
    from boneage import anatomy

    kinds, part = OCCLUSION_REGIONS[region]
    ids = []
    for bone in anatomy.BONES:
        if anatomy.bone_kind(bone) not in kinds:
            continue
        if part in ("shaft", "both"):
            ids.append(anatomy.shaft_label(bone))
        epiphysis = anatomy.epiphysis_label(bone)
        if part in ("epiphysis", "both") and epiphysis is not None:
            ids.append(epiphysis)
    return ids


def occlusion_changes(read: Callable[[np.ndarray], float], pixels: np.ndarray, labels: np.ndarray,
                      regions: dict[str, list[int]], base: float | None = None) -> dict[str, float]:
    """A reader's change when each region's bones are replaced by a heavy blur of the film there.

    Args:
        read: film -> reading (months).
        pixels: ``(rows, cols)`` film.
        labels: its label map, same shape.
        regions: region name -> label ids.
        base: the untouched film's reading, when the caller has it already.

    Returns:
        Region name -> reading change against the untouched film (0 where the region is absent).
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    blurred = heavy_blur(pixels)
    return region_changes(read, pixels, labels, regions, lambda region: blur_away(pixels, region, blurred), base)


def region_changes(read: Callable[[np.ndarray], float], pixels: np.ndarray, labels: np.ndarray,
                   regions: dict[str, list[int]], redraw: Callable[[np.ndarray], np.ndarray],
                   base: float | None = None) -> dict[str, float]:
    """A reader's change when each region (its labels' pixels) is redrawn by ``redraw(region mask) -> film``;
    0 where a region is absent. The other arguments are :func:`occlusion_changes`'."""
    base = read(pixels) if base is None else base
    changes = {}
    for name, ids in regions.items():
        region = np.isin(labels, ids)
        changes[name] = read(redraw(region)) - base if region.any() else 0.0
    return changes


def heavy_blur(pixels: np.ndarray) -> np.ndarray:
    """:func:`blur_away`'s blur of a whole film: sigma 6 px of the 256 px the CNN reads it at."""
    from scipy import ndimage

    return ndimage.gaussian_filter(np.asarray(pixels, dtype=np.float32), 6 * max(np.shape(pixels)) / 256)


def blur_away(pixels: np.ndarray, region: np.ndarray, blurred: np.ndarray | None = None) -> np.ndarray:
    """The film with ``region`` (dilated a little, soft-edged) replaced by a heavy blur of the film there.

    Sizes are about as the CNN sees the film (it crops to the hand first, so a little finer). A large, packed
    region such as the carpus leaves a bright smudge under this blur rather than vanishing: compare one region
    between real and synthetic films, not regions with each other.

    Args:
        pixels: ``(rows, cols)`` film.
        region: boolean mask, same shape.
        blurred: the film's heavy blur, when the caller has it already.

    Returns:
        float32 film.
    """
    from scipy import ndimage

    pixels = np.asarray(pixels, dtype=np.float32)
    scale = max(pixels.shape) / 256
    if blurred is None:
        blurred = heavy_blur(pixels)
    region = ndimage.binary_dilation(region, iterations=max(int(2 * scale), 1))
    weight = ndimage.gaussian_filter(region.astype(np.float32), scale)
    return pixels * (1 - weight) + blurred * weight


def cnn_occlusion(n: int, seed: int, ages: tuple[float, float] = OCCLUSION_AGES) -> None:
    """(h): what the end-to-end CNN's reading rests on, real films of bone ages ``ages`` (months) against synthetic
    hands of the same ages and sexes (girls past 216 months drawn at 216, their sex's last standard)."""
    from tqdm import tqdm

    from boneage import datasets, models
    from boneage.direct import DirectEstimator
    from boneage.io import load_radiograph
    from boneage.synth import MAX_BONE_AGE_MONTHS_BY_SEX, generate_hand

    cnn = DirectEstimator.load()
    segmenter = models.load("segmenter")
    regions = {name: region_labels(name) for name in OCCLUSION_REGIONS}
    dev = datasets.rsna_dev()
    pool = dev[(dev["split"] == "train") & dev["bone_age_months"].between(*ages)]
    train = pool.sample(n=min(n, len(pool)), random_state=seed)
    bias: dict[str, list[float]] = {"real": [], "synthetic": []}
    changes: dict[str, list[dict[str, float]]] = {"real": [], "synthetic": []}
    for i, (path, age, sex) in enumerate(tqdm(list(zip(train["path"], train["bone_age_months"], train["sex"])),
                                              desc="occlusion", unit="film", mininterval=10)):
        age = min(float(age), MAX_BONE_AGE_MONTHS_BY_SEX[sex])
        hand = generate_hand(seed, i, size=768, bone_age_months=age, sex=sex)
        for kind, pixels in (("real", load_radiograph(path).pixels), ("synthetic", hand.image)):
            read = lambda x: cnn.predict(x, sex).age_months  # noqa: E731
            base = read(np.asarray(pixels, dtype=np.float32))
            bias[kind].append(base - age)
            changes[kind].append(occlusion_changes(read, pixels, segmenter.segment(pixels), regions, base))
    print(f"\nthe end-to-end CNN with one region's bones blurred away (shipped segmenter's masks), {len(train)} real "
          f"training-split films of {ages[0]:.0f}-{ages[1]:.0f} months / as many synthetic hands "
          f"of the same bone ages and sexes (768 px); bias {np.mean(bias['real']):+.1f} / "
          f"{np.mean(bias['synthetic']):+.1f} months. Mean reading change (standard error), real / synthetic:")
    for name in OCCLUSION_REGIONS:
        cells = []
        for kind in ("real", "synthetic"):
            values = np.array([c[name] for c in changes[kind]])
            cells.append(f"{values.mean():+.1f} ({values.std(ddof=1) / np.sqrt(len(values)):.1f})")
        print(f"  {name:<36}{' / '.join(cells):>24}")


#: Names of a crop's thirds, top to bottom: the carpal region's, and a tubular bone's (its epiphysis end up).
CARPAL_THIRDS = ("metacarpal bases (top)", "carpus (middle)", "radius and ulna (bottom)")
BONE_THIRDS = ("epiphysis end (top)", "shaft (middle)", "other end (bottom)")


def crop_thirds(rows: int, region: str) -> dict[str, slice]:
    """Thirds of a per-bone crop of ``rows`` rows (:data:`boneage.perbone.CROP_SHAPE`), top to bottom, named as
    :data:`CARPAL_THIRDS` for the carpal region and :data:`BONE_THIRDS` for any other."""
    from boneage.anatomy import CARPAL_REGION

    cuts = [round(rows * k / 3) for k in range(4)]
    names = CARPAL_THIRDS if region == CARPAL_REGION else BONE_THIRDS
    return dict(zip(names, (slice(a, b) for a, b in zip(cuts, cuts[1:]))))


def crop_transplants(read: Callable[[np.ndarray], float], real: np.ndarray, synthetic: np.ndarray,
                     region: str) -> dict[str, float]:
    """Readings of a real and a synthetic crop, and of each with one third taken from the other.

    Args:
        read: the age (months) a reader gives a crop.
        real, synthetic: crops of the same shape (rows split by :func:`crop_thirds`).
        region: the crops' region (:data:`boneage.anatomy.MATURITY_REGIONS`), which names the thirds.

    Returns:
        ``"real"`` and ``"synthetic"`` (as cut), ``"synthetic, real <third>"`` for each third of the real crop put
        in the synthetic one, and ``"real, synthetic <third>"`` for the reverse.
    """
    found = {"real": read(real), "synthetic": read(synthetic)}
    for name, rows in crop_thirds(real.shape[0], region).items():
        for base, other, label in ((synthetic, real, "synthetic, real"), (real, synthetic, "real, synthetic")):
            mixed = base.copy()
            mixed[rows] = other[rows]
            found[f"{label} {name}"] = read(mixed)
    return found


def crop_transplant_part(n: int, seed: int, region: str,
                         ages: tuple[float, float] = (108.0, 204.0)) -> None:
    """(j): one per-bone region on real films of bone ages ``ages`` (months), synthetic hands and their crops mixed."""
    from boneage import anatomy, datasets, models
    from boneage.io import load_radiograph
    from boneage.perbone import BoneCrops, PerBoneEstimator, crops_from_reading
    from boneage.synth import MAX_BONE_AGE_MONTHS_BY_SEX, generate_hand

    segmenter = models.load("segmenter")
    perbone = PerBoneEstimator.load()
    index = anatomy.MATURITY_REGIONS.index(region)
    dev = datasets.rsna_dev()
    pool = dev[(dev["split"] == "train") & dev["bone_age_months"].between(*ages)]
    films = pool.sample(n=min(n, len(pool)), random_state=seed)
    biases: dict[str, list[float]] = {}
    for i, (path, age, sex) in enumerate(zip(films["path"], films["bone_age_months"], films["sex"])):
        # A synthetic hand cannot be drawn past its sex's last standard (girls: 216 months); both are read against
        # that age.
        age = min(float(age), MAX_BONE_AGE_MONTHS_BY_SEX[sex])
        pixels = load_radiograph(path).pixels
        hand = generate_hand(seed, i, size=768, bone_age_months=age, sex=sex)
        real = crops_from_reading(pixels, segmenter.read(pixels))
        synthetic = crops_from_reading(hand.image, segmenter.read(hand.image))
        if not (real.present[index] and synthetic.present[index]):
            continue

        def read(crop: np.ndarray, sex: str = sex) -> float:
            # The network reads each crop on its own (its region and the sex given): only this one is fed.
            images = np.zeros_like(synthetic.images)
            images[index] = crop
            present = np.zeros_like(synthetic.present)
            present[index] = True
            bone_ages, _ = perbone.bone_ages(BoneCrops(images, present, synthetic.film_pixels_per_crop_pixel), sex)
            return float(bone_ages[index])

        for name, value in crop_transplants(read, real.images[index], synthetic.images[index], region).items():
            biases.setdefault(name, []).append(value - age)
    print(f"\nthe per-bone network's {region} region, {len(biases.get('real', []))} real training-split films of "
          f"{ages[0]:g}-{ages[1]:g} months and synthetic hands of the same bone ages and sexes (768 px): mean bias "
          "(months) of the crop as cut and with one third from the other crop")
    for name, values in biases.items():
        print(f"  {name:<48}{np.mean(values):+8.1f}")


#: Bone-age bands (months) of (l).
CAPITATE_BANDS = ((84, 132), (132, 168), (168, 228))


def capitate_geometry(labels: np.ndarray) -> dict[str, float] | None:
    """The capitate's length against the third metacarpal's, and its length over width, from a label map.

    Args:
        labels: label map (:mod:`boneage.anatomy` ids).

    Returns:
        ``{"capitate / MC3": ..., "capitate length / width": ..., "MC3 length": ...}`` (pixels for the last; the axes of
        :func:`boneage.measure.measure`; the capitate's NaN where it is missing, as when the segmenter gives it all to
        the third metacarpal), or ``None`` when the third metacarpal is missing.
    """
    from boneage.measure import measure

    bones = measure(labels, None).bones
    capitate, mc3 = bones["capitate"], bones["metacarpal_3"]
    if not (mc3.present and mc3.length_px):
        return None
    found = capitate.present and capitate.length_px and capitate.width_px
    return {"capitate / MC3": capitate.length_px / mc3.length_px if found else float("nan"),
            "capitate length / width": capitate.length_px / capitate.width_px if found else float("nan"),
            "MC3 length": mc3.length_px}


def label_share(truth: np.ndarray, predicted: np.ndarray, bone: str, into: str) -> float:
    """Share of ``bone``'s pixels in ``truth`` that ``predicted`` labels as ``into`` (NaN where ``bone`` is absent).

    Args:
        truth, predicted: label maps of the same shape (:mod:`boneage.anatomy` ids).
        bone, into: canonical bone names (all of a bone's labels count: shaft and epiphysis).

    Returns:
        The share, in [0, 1].
    """
    from boneage import anatomy

    mask = np.isin(truth, anatomy.bone_labels(bone))
    if not mask.any():
        return float("nan")
    return float(np.isin(predicted[mask], anatomy.bone_labels(into)).mean())


def capitate_part(n: int, seed: int) -> None:
    """(l): the capitate against the third metacarpal, real training-split films of 7-19 y against synthetic hands of
    the same ages and sexes, drawn and segmented (:func:`paired_label_maps`).

    Args:
        n: real films, drawn (with ``seed``) among the training split's of :data:`CAPITATE_BANDS`' bone ages.
        seed: the draw's seed and the synthetic hands' seed.
    """
    rows, film = [], {}
    for kind, age, labels in paired_label_maps(n, seed, CAPITATE_BANDS, "capitate", drawn=True):
        film[kind] = labels
        if kind != "drawn":
            continue
        geometry = {k: capitate_geometry(film[k]) for k in ("real", "drawn", "synthetic")}
        drawn_map, segmented = geometry["drawn"], geometry["synthetic"]
        mc3_ratio = segmented["MC3 length"] / drawn_map["MC3 length"] if drawn_map and segmented else float("nan")
        rows.append((age, geometry, label_share(film["drawn"], film["synthetic"], "capitate", "metacarpal_3"),
                     mc3_ratio))
    print(f"\nthe capitate and the third metacarpal, {len(rows)} real training-split films (shipped segmenter) / as many "
          "synthetic hands of the same bone ages and sexes (768 px), drawn and segmented; medians by bone-age band:")
    print(f"  {'measurement':<48}" + "".join(f"{f'{lo}-{hi} mo':>14}" for lo, hi in CAPITATE_BANDS))

    def line(name: str, values: list[tuple[float, float]]) -> None:
        cells = []
        for lo, hi in CAPITATE_BANDS:
            band = [v for a, v in values if lo <= a < hi and np.isfinite(v)]
            cells.append(f"{np.median(band):.2f}" if band else "-")
        print(f"  {name:<48}" + "".join(f"{c:>14}" for c in cells))

    sources = {"real": "real films", "drawn": "synthetic, drawn", "synthetic": "synthetic, segmented"}
    for measure_name in ("capitate / MC3", "capitate length / width"):
        for kind, label in sources.items():
            line(f"{measure_name} ({label})",
                 [(a, g[kind][measure_name]) for a, g, _, _ in rows if g[kind] is not None])
    line("synthetic capitate labelled MC3 (share)", [(a, share) for a, _, share, _ in rows])
    line("synthetic MC3 length, segmented / drawn", [(a, ratio) for a, _, _, ratio in rows])


#: Bone-age bands (months) and carpals of (o).
OSSICLE_BANDS = ((36, 84), (84, 120), (120, 156), (156, 216))
OSSICLE_BONES = ("capitate", "hamate")


def ossicle_area(pixels: np.ndarray, labels: np.ndarray, bone: str) -> float:
    """A carpal's bright ossicle, found by a local threshold around its label, in area over the third metacarpal's
    length squared (x 100; the length along its main axis, :func:`mask_length`).

    The segmenter's labels of young real carpals run past the ossicle into the cartilage around it, where on synthetic
    hands they hug the drawn bone; so the label locates the bone and the film's own grey levels size it. Around the
    label (grown by half its equivalent radius) the pixels, lightly smoothed, are split by Otsu's threshold; the bright
    piece that overlaps the label most is the ossicle.

    Args:
        pixels: the film, ``labels``'s shape (bone bright).
        labels: label map (:mod:`boneage.anatomy` ids).
        bone: a carpal's canonical name.

    Returns:
        The area share (x 100), or NaN where the bone or the third metacarpal is missing (under 10 / 20 pixels).
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu

    from boneage import anatomy

    if pixels.shape != labels.shape:
        raise ValueError(f"pixels {pixels.shape} and labels {labels.shape} differ in shape")
    carpal = np.isin(labels, anatomy.bone_labels(bone))
    length = mask_length(bone_mask(labels, "metacarpal_3"))
    if carpal.sum() < 10 or not length >= 20:
        return float("nan")
    grow = max(2, int(0.5 * np.sqrt(carpal.sum() / np.pi)))
    around = ndi.binary_dilation(carpal, iterations=grow)
    smooth = gaussian(np.asarray(pixels, np.float64), 1.0)
    values = smooth[around]
    if np.ptp(values) <= 0:
        return float("nan")
    pieces, count = ndi.label(around & (smooth > threshold_otsu(values)))
    if count == 0:
        return float("nan")
    overlap = ndi.sum(carpal, pieces, range(1, count + 1))
    return 100.0 * float((pieces == int(np.argmax(overlap)) + 1).sum()) / length**2


def carpal_ossicles(n: int, seed: int) -> None:
    """(o): the capitate's and hamate's ossicles (:func:`ossicle_area`), real training-split films of 3-18 y against
    synthetic hands of the same ages and sexes (:func:`paired_films`); medians by bone-age band, with the segmenter's
    own label areas beside them.

    Args:
        n: real films, drawn (with ``seed``) among the training split's of :data:`OSSICLE_BANDS`' bone ages.
        seed: the draw's seed and the synthetic hands' seed.
    """
    from boneage import anatomy

    rows = []
    for kind, age, pixels, labels in paired_films(n, seed, OSSICLE_BANDS, "carpal ossicles"):
        length = mask_length(bone_mask(labels, "metacarpal_3"))
        for bone in OSSICLE_BONES:
            label_area = np.isin(labels, anatomy.bone_labels(bone)).sum()
            rows.append((kind, age, bone, ossicle_area(pixels, labels, bone),
                         100.0 * label_area / length**2 if length >= 20 and label_area else float("nan")))
    films = sum(1 for r in rows if r[0] == "real") // len(OSSICLE_BONES)
    print(f"\ncarpal ossicles, {films} real training-split films / as many synthetic hands of the same bone ages and "
          "sexes (768 px): area over the third metacarpal's length squared (x 100), the bright ossicle by a local "
          "threshold (the segmenter's label area in brackets); medians by bone-age band, real / synthetic")
    print(f"  {'bone':<12}" + "".join(f"{f'{lo}-{hi} mo':>26}" for lo, hi in OSSICLE_BANDS))
    for bone in OSSICLE_BONES:
        cells = []
        for lo, hi in OSSICLE_BANDS:
            cell = []
            for kind in ("real", "synthetic"):
                found = [(o, a) for k, age, b, o, a in rows if k == kind and b == bone and lo <= age < hi]
                ossicle = [o for o, _ in found if np.isfinite(o)]
                label = [a for _, a in found if np.isfinite(a)]
                cell.append(f"{np.median(ossicle):.1f} ({np.median(label):.1f})" if ossicle else "-")
            cells.append(" / ".join(cell))
        print(f"  {bone:<12}" + "".join(f"{c:>26}" for c in cells))


#: Bone-age bands (months) of (m).
REGION_BANDS = ((24, 84), (84, 144), (144, 216))


def region_gaps(real: np.ndarray, synthetic: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Each region's mean bias on real films and on synthetic hands, and how far apart they lie.

    Args:
        real: ``(films, regions)`` per-region reading minus bone age on real films (NaN where a region was not read).
        synthetic: the same on the synthetic hands paired with them.

    Returns:
        ``(real_mean, synthetic_mean, gap)``: the mean bias of each region (NaN where no film gave one) and the mean
        over regions read on both of ``|synthetic_mean - real_mean|`` (NaN where none was).
    """
    real, synthetic = np.atleast_2d(np.asarray(real, float)), np.atleast_2d(np.asarray(synthetic, float))

    def mean(values: np.ndarray) -> np.ndarray:
        counts = np.isfinite(values).sum(axis=0)
        return np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), np.nan)

    real_mean, synthetic_mean = mean(real), mean(synthetic)
    both = np.isfinite(real_mean) & np.isfinite(synthetic_mean)
    gap = float(np.mean(np.abs(synthetic_mean[both] - real_mean[both]))) if both.any() else float("nan")
    return real_mean, synthetic_mean, gap


def region_spread(readings: np.ndarray) -> float:
    """How far one film's regions disagree: the SD across regions of each film's readings, averaged over the films.

    Args:
        readings: ``(films, regions)`` per-region readings (or readings minus the film's bone age: the same spread);
            NaN where a region was not read. Films with fewer than two regions read are left out.

    Returns:
        The mean SD in months (NaN when no film has two regions read).
    """
    readings = np.atleast_2d(np.asarray(readings, float))
    read = np.isfinite(readings).sum(axis=1) >= 2
    if not read.any():
        return float("nan")
    return float(np.mean(np.nanstd(readings[read], axis=1)))


def perbone_regions(n: int, seed: int) -> None:
    """(m): each per-bone region's own reading, real training-split films against synthetic hands of the same bone
    ages and sexes (512 px, the sex given), by bone-age band and sex.

    The per-bone network reads real films' regions with small biases; a synthetic region read far from the real
    films' bias for its band and sex is one that does not look real to it, whatever the consensus does (it is a
    weighted median, so regions read too old and too young can cancel).

    Args:
        n: real films, drawn (with ``seed``) among the training split's of :data:`REGION_BANDS`' bone ages.
        seed: the draw's seed and the synthetic hands' seed.
    """
    from tqdm import tqdm

    from boneage import anatomy, datasets, models
    from boneage.io import load_radiograph
    from boneage.perbone import PerBoneEstimator, crops_from_reading
    from boneage.synth import generate_hand

    segmenter = models.load("segmenter")
    perbone = PerBoneEstimator.load()
    dev = datasets.rsna_dev()
    ages = dev["bone_age_months"]
    pool = dev[(dev["split"] == "train") & ages.between(REGION_BANDS[0][0], REGION_BANDS[-1][1], inclusive="left")]
    films = pool.sample(n=min(n, len(pool)), random_state=seed)
    biases: dict[tuple[int, str, str], list[np.ndarray]] = {}
    for i, (path, age, sex) in enumerate(tqdm(list(zip(films["path"], films["bone_age_months"], films["sex"])),
                                              desc="per-bone regions", unit="film", mininterval=10)):
        band = next(k for k, (lo, hi) in enumerate(REGION_BANDS) if lo <= age < hi)
        hand = generate_hand(seed, i, size=512, bone_age_months=float(age), sex=sex)
        for kind, pixels in (("real", load_radiograph(path).pixels), ("synthetic", hand.image)):
            bone_ages, _ = perbone.bone_ages(crops_from_reading(pixels, segmenter.read(pixels)), sex)
            biases.setdefault((band, sex, kind), []).append(bone_ages - float(age))
    print(f"\nthe per-bone network's regions one by one, {len(films)} real training-split films / as many synthetic "
          "hands of the same bone ages and sexes (512 px): mean bias in months, synthetic / real, by band and sex; "
          "last line: the mean over regions of |synthetic - real|")
    columns = [(band, sex) for band in range(len(REGION_BANDS)) for sex in "MF" if (band, sex, "real") in biases]
    gaps = {c: region_gaps(np.array(biases[(*c, "real")]), np.array(biases[(*c, "synthetic")])) for c in columns}
    header = [f"{REGION_BANDS[b][0]}-{REGION_BANDS[b][1]} mo {s} ({len(biases[b, s, 'real'])})" for b, s in columns]
    print(f"  {'region':<22}" + "".join(f"{h:>22}" for h in header))
    for r, region in enumerate(anatomy.MATURITY_REGIONS):
        cells = []
        for c in columns:
            real_mean, synthetic_mean, _ = gaps[c]
            cells.append("-" if not np.isfinite(real_mean[r] + synthetic_mean[r])
                         else f"{synthetic_mean[r]:+.0f} / {real_mean[r]:+.0f}")
        print(f"  {region:<22}" + "".join(f"{cell:>22}" for cell in cells))
    print(f"  {'mean |gap|':<22}" + "".join(f"{gaps[c][2]:>22.1f}" for c in columns))
    spreads = [region_spread(np.concatenate([np.array(biases[(*c, kind)]) for c in columns])) for kind in
               ("real", "synthetic")]
    print(f"  one film's regions disagree by (SD across its regions, mean over films): real {spreads[0]:.1f}, "
          f"synthetic {spreads[1]:.1f} months")


#: Bone ages (months) of (n)'s films: 4-17 y, where most real films are.
FILM_OPERATION_AGES = (48.0, 204.0)
#: The film size (pixels along its rows) at which (n)'s blur and edge kernels have the sizes named; they scale with it.
FILM_OPERATION_SCALE_PX = 512


def _pad_with_background(pixels: np.ndarray, top: int, side: int) -> np.ndarray:
    """The film on a larger canvas: ``top`` rows above, ``side`` columns either side, filled with its background grey
    and a grain as fine and strong as its frame's (a fixed draw, so that a reading of it can be repeated)."""
    from boneage.preprocess import film_background

    k = max(1, min(pixels.shape) // 50)
    frame = np.concatenate([pixels[:k].ravel(), pixels[:, :k].ravel(), pixels[:, -k:].ravel()])
    out = np.pad(pixels, ((top, 0), (side, side)), constant_values=film_background(pixels))
    added = np.ones(out.shape, bool)
    added[top:, side:side + pixels.shape[1]] = False
    grain = np.random.default_rng(0).normal(0.0, float(frame.std()), int(added.sum()))
    out[added] = np.clip(out[added] + grain, 0.0, 1.0)
    return out


def film_operations() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """(n)'s film operations: what another scanner's processing or another technologist's framing does to a film.

    Each takes a film windowed to [0, 1] (bone bright) and returns a float32 film in [0, 1]: two grey-level curves, a
    blur, an unsharp mask (the edge enhancement of computed radiography) and a frame widened (above and either side;
    not below, where the forearm leaves the film) or narrowed (either side). Kernel sizes
    are in pixels of a :data:`FILM_OPERATION_SCALE_PX` px film and scale with the film's rows, so that a 2,000 px real
    film and a 512 px synthetic hand get the same operation.
    """
    from scipy import ndimage

    def px(pixels: np.ndarray, size: float) -> float:
        return size * pixels.shape[0] / FILM_OPERATION_SCALE_PX

    def unit(x: np.ndarray) -> np.ndarray:
        return np.clip(x, 0.0, 1.0).astype(np.float32)

    return {
        "gamma 0.7 (brighter)": lambda x: unit(x ** 0.7),
        "gamma 1.4 (darker)": lambda x: unit(x ** 1.4),
        "blur (1 px)": lambda x: unit(ndimage.gaussian_filter(x, px(x, 1.0))),
        "edge enhancement (x1, 2 px)": lambda x: unit(x + (x - ndimage.gaussian_filter(x, px(x, 2.0)))),
        "wider frame (+1/8 a side)": lambda x: unit(_pad_with_background(x, x.shape[0] // 8, x.shape[1] // 8)),
        "narrower frame (-1/12 a side)": lambda x: unit(x[:, x.shape[1] // 12: x.shape[1] - x.shape[1] // 12]),
    }


#: (n)'s operation that is also applied region by region (each of :data:`OCCLUSION_REGIONS`).
REGIONAL_OPERATION = "edge enhancement (x1, 2 px)"


def sharpening_changes(read: Callable[[np.ndarray], float], pixels: np.ndarray, labels: np.ndarray,
                       regions: dict[str, list[int]], base: float | None = None) -> dict[str, float]:
    """A reader's change when :data:`REGIONAL_OPERATION` is applied within one region's bones only; arguments and
    result as :func:`occlusion_changes`'.

    Each region is its bones' labels grown edge-wise by 3 pixels of a :data:`FILM_OPERATION_SCALE_PX` px film (scaled
    with the film's rows, rounded up), so that the edges the operation sharpens are inside it.
    """
    from scipy import ndimage

    pixels = np.asarray(pixels, dtype=np.float32)
    operated = film_operations()[REGIONAL_OPERATION](pixels)
    grow = max(1, int(np.ceil(3 * pixels.shape[0] / FILM_OPERATION_SCALE_PX)))

    def sharpen_within(region: np.ndarray) -> np.ndarray:
        return np.where(ndimage.binary_dilation(region, iterations=grow), operated, pixels)

    return region_changes(read, pixels, labels, regions, sharpen_within, base)


def film_operations_part(n: int, seed: int) -> None:
    """(n): how far film operations move the end-to-end CNN's reading, real training-split films against synthetic
    hands of the same bone ages and sexes (512 px, the sex given).

    Each film is read as the pipeline reads it: turned upright (:meth:`boneage.estimate.BoneAgeEstimator.view`) and
    windowed; then once after each of :func:`film_operations`. The network was trained on real films with grey-level,
    zoom and resolution jitter, so their readings hardly move; a synthetic hand whose reading moves several times
    more lies off the films the network knows, wherever its average reading lands. Unlike part (a), this needs no
    bone age: a renderer change that brings it towards the real films' is a change towards real-looking films, not
    one fitted to the readers' errors.

    Args:
        n: real films, drawn (with ``seed``) among the training split's of :data:`FILM_OPERATION_AGES`.
        seed: the draw's seed and the synthetic hands' seed.
    """
    from tqdm import tqdm

    from boneage import datasets
    from boneage.estimate import BoneAgeEstimator
    from boneage.io import load_radiograph
    from boneage.preprocess import normalise_intensity
    from boneage.synth import generate_hand

    estimator = BoneAgeEstimator.load()
    dev = datasets.rsna_dev()
    pool = dev[(dev["split"] == "train") & dev["bone_age_months"].between(*FILM_OPERATION_AGES)]
    films = pool.sample(n=min(n, len(pool)), random_state=seed)
    operations = film_operations()
    regions = {name: region_labels(name) for name in OCCLUSION_REGIONS}
    changes: dict[str, list[np.ndarray]] = {"real": [], "synthetic": []}
    regional: dict[str, list[list[float]]] = {"real": [], "synthetic": []}
    for i, (path, age, sex) in enumerate(tqdm(list(zip(films["path"], films["bone_age_months"], films["sex"])),
                                              desc="film operations", unit="film", mininterval=10)):
        def read(x: np.ndarray) -> float:
            return estimator.direct.predict(x, sex).age_months

        hand = generate_hand(seed, i, size=512, bone_age_months=float(age), sex=sex)
        for kind, pixels in (("real", load_radiograph(path).pixels), ("synthetic", hand.image)):
            view = estimator.view(pixels)
            upright = normalise_intensity(np.asarray(view.pixels, dtype=np.float32))
            changes[kind].append(operation_changes(read, upright, operations))
            by_region = sharpening_changes(read, upright, np.asarray(view.label_map), regions)
            regional[kind].append([by_region[name] for name in regions])
    real, synthetic = (np.array(changes[k]) for k in ("real", "synthetic"))
    print(f"\nfilm operations: the end-to-end CNN's reading change (months; mean size, mean in brackets), {len(films)} "
          f"real training-split films of {FILM_OPERATION_AGES[0]:.0f}-{FILM_OPERATION_AGES[1]:.0f} months / as many "
          "synthetic hands of the same bone ages and sexes (512 px), each read upright as the pipeline reads it:")
    for j, name in enumerate(operations):
        cells = [f"{np.abs(c[:, j]).mean():.1f} ({c[:, j].mean():+.1f})" for c in (real, synthetic)]
        print(f"  {name:<32}{cells[0]:>16} / {cells[1]}")
    sizes = [float(np.abs(c).mean()) for c in (real, synthetic)]
    ratio = sizes[1] / max(sizes[0], 1e-9)
    print(f"  {'every operation':<32}{sizes[0]:>16.1f} / {sizes[1]:.1f} (synthetic {ratio:.1f} x real)")
    print(f"  {REGIONAL_OPERATION} within one region's bones only (as the shipped segmenter finds them):")
    real, synthetic = (np.array(regional[k]) for k in ("real", "synthetic"))
    for j, name in enumerate(regions):
        cells = [f"{np.abs(c[:, j]).mean():.1f} ({c[:, j].mean():+.1f})" for c in (real, synthetic)]
        print(f"    {name:<30}{cells[0]:>16} / {cells[1]}")


def set_renderer_constants(assignments: list[str]) -> dict[str, float]:
    """Apply ``NAME=VALUE`` or ``NAME[KEY]=VALUE`` assignments to numeric constants of :mod:`boneage.synth`.

    Args:
        assignments: strings such as ``"_CARPAL_SCALE=1.4"`` or, for an entry of a table of numbers,
            ``"_TRABECULAR_DENSITY[metacarpal]=0.45"``.

    Returns:
        The constants changed (a table's entry as ``NAME[KEY]``), with their new values.

    Raises:
        ValueError: an assignment is malformed, names no numeric constant (or no numeric entry of a table) of the
            renderer, or its value is not a number.
    """
    from boneage import synth

    parsed: list[tuple[str, str, str | None, float]] = []  # (as written, constant, table key or None, value)
    for item in assignments:
        target, sep, value = item.partition("=")
        target = target.strip()
        name, bracket, key = target.partition("[")
        key = key[:-1] if bracket and key.endswith("]") else None
        current = getattr(synth, name, None)
        if bracket and key is not None:
            current = current.get(key) if isinstance(current, dict) else None
        if (not sep or not name.isupper() or (bracket and not key) or isinstance(current, bool)
                or not isinstance(current, (int, float))):
            raise ValueError(f"--set {item!r}: expected NAME=VALUE with NAME a numeric constant of boneage.synth "
                             "(e.g. _CARPAL_SCALE=1.4), or NAME[KEY]=VALUE for a numeric entry of one of its tables "
                             "(e.g. _TRABECULAR_DENSITY[metacarpal]=0.45)")
        try:
            parsed.append((target, name, key, float(value)))
        except ValueError:
            raise ValueError(f"--set {item!r}: {value!r} is not a number") from None
    # Applied only once every assignment has parsed, so that a bad one leaves the renderer as it was.
    for _, name, key, value in parsed:
        if key is None:
            setattr(synth, name, value)
        else:
            getattr(synth, name)[key] = value
    return {target: value for target, _, _, value in parsed}


#: Real films within this many months of a synthetic hand's bone age give its swapped measurements in (p).
ATTRIBUTION_WINDOW = 12.0


def feature_swaps(predict: Callable[[pd.DataFrame], np.ndarray], synthetic: pd.DataFrame, ages: np.ndarray,
                  real: pd.DataFrame, real_ages: np.ndarray, window: float = ATTRIBUTION_WINDOW,
                  ) -> tuple[float, list[tuple[str, float]], list[tuple[str, float, float, float]]]:
    """How a reader's mean bias on synthetic hands changes when their measurements are swapped for real films'.

    Args:
        predict: measurements table -> ages (months), e.g. the multi-step model's ``predict_table(..)["age"]``.
        synthetic: the synthetic hands' measurements (one row per hand).
        ages: their bone ages (months).
        real: real films' measurements (of the same sex), with the same column names.
        real_ages: their bone ages (months).
        window: real films within this many months of a hand's bone age give its swapped value (their median;
            NaN where none has one).

    Returns:
        ``(bias, groups, features)``: the mean bias as measured; ``(bone, change)`` with all of a bone's
        measurements swapped (a bone is the part of a column name before its first dot), largest change first;
        ``(measurement, change, synthetic median, real median)`` for each measurement alone, largest first.
    """
    columns = [c for c in synthetic.columns if c in real.columns]
    matched = {}
    for column in columns:
        values = real[column].to_numpy(float)
        cells = []
        for age in ages:
            near = values[np.abs(real_ages - age) <= window]
            near = near[np.isfinite(near)]
            cells.append(float(np.median(near)) if near.size else np.nan)
        matched[column] = np.array(cells)
    bias = float(np.mean(predict(synthetic) - ages))

    def swapped_bias(names: list[str]) -> float:
        table = synthetic.copy()
        for name in names:
            table[name] = matched[name]
        return float(np.mean(predict(table) - ages)) - bias

    bones: dict[str, list[str]] = {}
    for column in columns:
        bones.setdefault(column.split(".")[0], []).append(column)
    groups = sorted(((bone, swapped_bias(names)) for bone, names in bones.items()), key=lambda g: -abs(g[1]))

    def median(values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        return float(np.median(finite)) if finite.size else float("nan")

    features = sorted(((c, swapped_bias([c]), median(synthetic[c].to_numpy(float)), median(matched[c]))
                       for c in columns), key=lambda f: -abs(f[1]))
    return bias, groups, features


def multistep_attribution(n: int, seed: int, sex: str = "F", ages: tuple[float, float] = (156.0, 204.0),
                          shown: int = 12) -> None:
    """(p): which measurements move the shipped multi-step method's reading of synthetic hands (:func:`feature_swaps`)."""
    import pandas as pd
    from tqdm import tqdm

    from boneage import datasets, models
    from boneage.measure import measure
    from boneage.multistep import MultiStepModel
    from boneage.synth import generate_hand
    from boneage.training.multistep import film_features, load_segmenter_fn

    dev = datasets.rsna_dev()
    train = dev[(dev["split"] == "train") & (dev["sex"] == sex)].reset_index(drop=True)
    real = film_features(train, models.get("segmenter").version, None, workers=2)
    segment, model = load_segmenter_fn("cpu"), MultiStepModel.load()
    rng = np.random.default_rng(seed)
    hand_ages = rng.uniform(ages[0], ages[1], n)
    rows = [measure(segment(generate_hand(seed, i, size=512, sex=sex, bone_age_months=float(age)).image), None)
            .features() for i, age in enumerate(tqdm(hand_ages, desc="synthetic measured", unit="hand", mininterval=10))]
    bias, groups, features = feature_swaps(lambda t: model.predict_table(t, [sex] * len(t))["age"], pd.DataFrame(rows),
                                           hand_ages, real, train["bone_age_months"].to_numpy(float))
    who = "girls" if sex == "F" else "boys"
    print(f"\nwhat moves the multi-step reading: {n} synthetic {who} of {ages[0]:g}-{ages[1]:g} months (512 px), bias "
          f"{bias:+.1f} months; change in it when measurements are swapped for the median of real training-split "
          f"{who} within {ATTRIBUTION_WINDOW:g} months of each hand's bone age")
    print("  one bone's measurements at a time: " + ", ".join(f"{b} {d:+.1f}" for b, d in groups[:shown]))
    print("  one measurement at a time (change; synthetic / real median):")
    for name, change, synthetic_median, real_median in features[:shown]:
        print(f"    {name:<36} {change:+6.1f}   {synthetic_median:.3f} / {real_median:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261210, help="synthetic seed no model or choice used")
    parser.add_argument("--n", type=int, default=40, help="synthetic hands per size for (a) (default 40; 0: skip)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 768], help="synthetic image sizes for (a)")
    parser.add_argument("--real-reference", action="store_true",
                        help="(a) also reads, for each synthetic hand of the first size, the training-split film "
                             "of its sex nearest in bone age: the same table on real films (a floor: the models "
                             "trained on them)")
    parser.add_argument("--n-classifier", type=int, default=300, help="real films (and as many synthetic hands) for (b)")
    parser.add_argument("--skip-classifier", action="store_true", help="skip (b)")
    parser.add_argument("--n-features", type=int, default=48, help="synthetic hands measured for (c) (0: skip)")
    parser.add_argument("--n-look", type=int, default=60, help="real films (and as many synthetic hands) for (d) (0: skip)")
    parser.add_argument("--look-min-age", type=float, default=0.0,
                        help="(d) draws its real films from those of at least this bone age (months; default 0)")
    parser.add_argument("--n-turn", type=int, default=40, help="real 6-12 y films (and as many synthetic hands) for (e) (0: skip)")
    parser.add_argument("--n-embed", type=int, default=300,
                        help="real training-split films (and as many synthetic hands) for (f) (0: skip)")
    parser.add_argument("--n-layout", type=int, default=42,
                        help="real 6-19 y training-split films (and as many synthetic hands) for (g) (0: skip)")
    parser.add_argument("--n-occlude", type=int, default=16,
                        help="real training-split films (and as many synthetic hands) for (h) (0: skip)")
    parser.add_argument("--occlude-ages", type=float, nargs=2, default=list(OCCLUSION_AGES), metavar=("LO", "HI"),
                        help="bone ages (months) of (h)'s real films (default 84 132)")
    parser.add_argument("--n-physis", type=int, default=40,
                        help="real 2-17 y training-split films (and as many synthetic hands) for (i) (0: skip)")
    parser.add_argument("--n-transplant", type=int, default=16,
                        help="real training-split films (and as many synthetic hands) for (j) (0: skip)")
    parser.add_argument("--transplant-region",
                        help="the per-bone region (j) reads (default the carpal region, boneage.anatomy.CARPAL_REGION; "
                             "any of boneage.anatomy.MATURITY_REGIONS)")
    parser.add_argument("--transplant-ages", type=float, nargs=2, default=[108.0, 204.0], metavar=("LO", "HI"),
                        help="bone ages (months) of (j)'s real films (default 108 204)")
    parser.add_argument("--n-joints", type=int, default=80,
                        help="real 2-19 y training-split films (and as many synthetic hands) for (k) (0: skip)")
    parser.add_argument("--n-capitate", type=int, default=24,
                        help="real 7-19 y training-split films (and as many synthetic hands) for (l) (0: skip)")
    parser.add_argument("--n-regions", type=int, default=48,
                        help="real 2-18 y training-split films (and as many synthetic hands) for (m) (0: skip)")
    parser.add_argument("--n-operations", type=int, default=24,
                        help="real 4-17 y training-split films (and as many synthetic hands) for (n) (0: skip)")
    parser.add_argument("--n-ossicles", type=int, default=48,
                        help="real 3-18 y training-split films (and as many synthetic hands) for (o) (0: skip)")
    parser.add_argument("--n-attribution", type=int, default=0,
                        help="synthetic hands for (p) (default 0: skipped; about 3 s a hand)")
    parser.add_argument("--attribution-sex", choices=("F", "M"), default="F", help="(p)'s hands' sex (default F)")
    parser.add_argument("--attribution-ages", type=float, nargs=2, default=[156.0, 204.0], metavar=("LO", "HI"),
                        help="bone ages (months) of (p)'s hands (default 156 204)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="change a numeric renderer constant of boneage.synth for this run (repeatable); "
                             "NAME[KEY]=VALUE changes one entry of a table, e.g. _TRABECULAR_DENSITY[metacarpal]=0.45")
    args = parser.parse_args(argv)
    from boneage.anatomy import CARPAL_REGION, MATURITY_REGIONS

    args.transplant_region = args.transplant_region or CARPAL_REGION
    if args.transplant_region not in MATURITY_REGIONS:
        parser.error(f"--transplant-region {args.transplant_region!r} is not one of {', '.join(MATURITY_REGIONS)}")
    for option in ("occlude_ages", "transplant_ages", "attribution_ages"):
        lo, hi = getattr(args, option)
        if not lo <= hi:
            parser.error(f"--{option.replace('_', '-')} {lo:g} {hi:g}: LO must not exceed HI")
    try:
        changed = set_renderer_constants(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    if changed:
        print("renderer constants changed for this run: " + ", ".join(f"{k}={v:g}" for k, v in changed.items()))
        if args.seed == parser.get_default("seed"):
            print("warning: this is the benchmark's own seed; probe the renderer on an exploratory --seed, "
                  "so that the benchmark keeps measuring hands no choice was made on")

    from boneage import runtime
    from boneage.estimate import BoneAgeEstimator

    runtime.set_threads(1)
    start = time.perf_counter()
    estimator = BoneAgeEstimator.load()
    reference = real_mix_reference() if args.n > 0 else None
    for size in args.sizes if args.n > 0 else []:
        readings = synthetic_readings(estimator, args.seed, args.n, size)
        real_mix = real_mix_weights(readings["truth"], readings["female"], *reference) if reference else None
        print_readings(size, readings, real_mix)
        if args.real_reference and size == args.sizes[0] and reference is None:
            print("part (a) without its real films of the same ages (--real-reference): no rsna-dev labels here")
        elif args.real_reference and size == args.sizes[0]:
            real = real_readings(estimator, readings["truth"], readings["female"])
            print_readings(size, real, title="real training-split films, each of a synthetic hand's sex and nearest "
                                             "its bone age (the models were trained on them: a floor)")
    print_examples(estimator)
    if not args.skip_classifier:
        aucs = classifier_auc(args.n_classifier, args.seed)
        auc, sd = aucs.pop("all")
        print(f"\nreal vs synthetic classifier: ROC AUC {auc:.3f} (SD {sd:.3f} over 5 folds; "
              f"{args.n_classifier} real training-split films, as many synthetic hands; 0.5 = indistinguishable)")
        print("  each feature group alone: " + ", ".join(f"{name} {value:.3f}" for name, (value, _) in aucs.items()))
    # Parts (c)-(p), each on its own seed (--seed + 1, + 2, ...) so that skipping one leaves the others' draws.
    parts = ((args.n_features, maturity_features), (args.n_look, partial(film_look, min_age=args.look_min_age)),
             (args.n_turn, turned_films),
             (args.n_embed, cnn_feature_space), (args.n_layout, wrist_layout),
             (args.n_occlude, partial(cnn_occlusion, ages=tuple(args.occlude_ages))),
             (args.n_physis, physes),
             (args.n_transplant, partial(crop_transplant_part, region=args.transplant_region,
                                         ages=tuple(args.transplant_ages))),
             (args.n_joints, joint_spaces), (args.n_capitate, capitate_part), (args.n_regions, perbone_regions),
             (args.n_operations, film_operations_part), (args.n_ossicles, carpal_ossicles),
             (args.n_attribution, partial(multistep_attribution, sex=args.attribution_sex,
                                          ages=tuple(args.attribution_ages))))
    for offset, (n, part) in enumerate(parts, start=1):
        if n:
            part(n, args.seed + offset)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

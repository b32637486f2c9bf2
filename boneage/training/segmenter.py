"""Training of the bone segmentation network (:mod:`boneage.segment` is its inference half).

``boneage train segmenter`` and ``python -m boneage.training.segmenter train|pseudo|eval``.

* **Training data** -- synthetic hands from :func:`boneage.synth.generate_hand`, drawn on the fly
  (an endless stream, seed :data:`TRAIN_SEED`; seed :data:`EVAL_SEED` is kept for evaluation), with
  strong augmentation (:func:`augment_hand`): extra rotation (small angles and, sometimes, quarter
  turns), horizontal mirroring, zoom out / in, gamma, contrast, blur, noise, and intensity
  *histogram matching to real films* (quantiles of rsna-dev **train-split** images, never ``val``)
  so the network sees real-film grey levels. Training runs on random crops of the model input
  (cheaper per step, same pixel scale as inference).
* **Self-training** -- :func:`make_pseudo_labels` segments real train-split films and keeps, bone by
  bone, the labels it can trust (:func:`pseudo_label_target`); the rest is :data:`IGNORE`.
* **Evaluation** -- :func:`evaluate_synthetic` (Dice and length error on a seed never trained on)
  and :func:`evaluate_keypoints` (phalanx lengths against the 41 keypoint-annotated real films);
  :func:`model_card` writes the card from their metrics.

Public API: :class:`TrainConfig`, :func:`train`, :func:`save_weights`, :func:`evaluate_synthetic`,
:func:`evaluate_keypoints`, :func:`model_card`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from boneage import anatomy
from boneage.models import cpu_has_fast_bf16
from boneage.paths import cache_dir
from boneage.postprocess import HEAD_MISSING_SHARE, HEAD_REACH, JOINT_SPACE, PHYSIS_PX
from boneage.preprocess import MARKER_ROBUST_WINDOW, CropTransform, prepare_model_input
from boneage.segment import (
    MIRROR_MARGIN,
    QUARTER_TURN_MARGIN,
    QUARTER_TURN_TRIGGER,
    SEGMENTER_DIR,
    VERSION,
    WEIGHTS_FILE,
    WEIGHTS_VERSION,
    NetworkConfig,
    Segmenter,
    build_network,
)

#: Synthetic seed the shipped weights were trained on; :data:`EVAL_SEED` is never trained on.
TRAIN_SEED = 1000
EVAL_SEED = 7
#: Label value of pixels that carry no training signal (unsure parts of pseudo-labelled real films).
IGNORE = 255

#: Real-image keypoint ids (rsna-dev ``hand_keypoints.csv``) of the MCP, PIP and DIP joints of
#: fingers 2-5: proximal phalanx ~ |MCP - PIP|, middle phalanx ~ |PIP - DIP|.
KEYPOINT_FINGERS = {2: "forefinger", 3: "middle_finger", 4: "ring_finger", 5: "pinky_finger"}
BLANK_KEYPOINT_IDS = (1707, 1879, 1880)


def label_map_to_model(label_map: np.ndarray, transform: CropTransform) -> np.ndarray:
    """Resample an original-grid label map into model-input geometry (nearest neighbour).

    The inverse of :meth:`CropTransform.mask_to_original`, used to give training targets exactly
    the geometry of :func:`prepare_model_input`.

    Args:
        label_map: integer label map on the original grid.
        transform: the crop transform returned with the model input.

    Returns:
        ``size x size`` label map (same dtype).
    """
    idx = np.arange(transform.size)
    rows, cols = transform.to_original(idx, idx)
    ri = np.clip(np.rint(rows).astype(int), 0, label_map.shape[0] - 1)
    ci = np.clip(np.rint(cols).astype(int), 0, label_map.shape[1] - 1)
    return label_map[np.ix_(ri, ci)]


# ------------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------------
REAL_QUANTILE_LEVELS = np.linspace(0.0, 1.0, 65)
#: Each rendered synthetic hand is augmented about this many times (from a pool of this many).
SYNTH_REUSE = 4
SYNTH_POOL = 32


def real_intensity_quantiles(n_images: int = 240, size: int = 384, seed: int = 0) -> np.ndarray:
    """Grey-level quantiles of prepared rsna-dev **train-split** films (cached).

    Used to histogram-match synthetic inputs to real ones during training (the only thing the
    network learns from real pixels in this way: 65 numbers per film).

    Args:
        n_images: how many train-split films to sample.
        size: model input size used for preparation.
        seed: which films are sampled.

    Returns:
        ``(n, 65)`` array of quantiles, or an empty ``(0, 65)`` array when rsna-dev is absent.
    """
    cache = cache_dir() / f"segment_real_quantiles_{n_images}_{size}_{seed}_w{MARKER_ROBUST_WINDOW[1]:g}.npy"
    if cache.is_file():
        return np.load(cache)
    try:
        from boneage.datasets import rsna_dev
        from boneage.io import load_radiograph

        table = rsna_dev()
    except Exception:  # noqa: BLE001 - shared data absent: train on synthetic intensities only
        return np.zeros((0, REAL_QUANTILE_LEVELS.size), np.float32)
    train_rows = table[table["split"] == "train"].sample(n=min(n_images, int((table["split"] == "train").sum())),
                                                         random_state=seed)
    quantiles = []
    for path in train_rows["path"]:
        x, _ = prepare_model_input(load_radiograph(path).pixels, size, window=MARKER_ROBUST_WINDOW)
        quantiles.append(np.quantile(x, REAL_QUANTILE_LEVELS))
    arr = np.asarray(quantiles, np.float32)
    np.save(cache, arr)
    return arr


def _rotate_pair(image: np.ndarray, labels: np.ndarray, angle: float, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate image (bilinear) and labels (nearest) about the centre, expanding the frame."""
    from scipy import ndimage  # imported here so parsing the CLI stays light

    img = ndimage.rotate(image, angle, reshape=True, order=1, mode="constant", cval=fill, prefilter=False)
    lab = ndimage.rotate(labels, angle, reshape=True, order=0, mode="constant", cval=0, prefilter=False)
    return img.astype(np.float32), lab


def _edge_enhance(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Unsharp masking as CR/DR consoles apply it: bright halos at bone edges, flattened soft tissue."""
    from scipy import ndimage

    sigma = float(rng.uniform(1.5, 10.0))
    amount = float(rng.uniform(0.3, 1.8))
    return x + amount * (x - ndimage.gaussian_filter(x, sigma))


def _bias_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A smooth multiplicative field (uneven exposure across the film), mean about 1."""
    from scipy import ndimage

    coarse = rng.normal(0, float(rng.uniform(0.05, 0.2)), (4, 4)).astype(np.float32)
    field = ndimage.zoom(coarse, (shape[0] / 4, shape[1] / 4), order=3)[: shape[0], : shape[1]]
    return np.exp(field).astype(np.float32)


def _real_bone_look(rng: np.random.Generator, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Dim the inside of every bone towards the soft tissue around it, keeping the bright cortex.

    Why: on real films the medulla of a phalanx or metacarpal is barely brighter than the soft
    tissue (only a thin cortical rim stands out), while synthetic bones are bright throughout; a
    network that learnt "bone = bright inside" paints real bones in patches.

    Args:
        rng: random generator.
        x: model input (float32).
        labels: its label map (bone = ids 1.., :data:`IGNORE` excluded).

    Returns:
        The modified input.
    """
    from scipy import ndimage

    bone = (labels > 0) & (labels != IGNORE)
    if not bone.any():
        return x
    interior = ndimage.binary_erosion(bone, iterations=int(rng.integers(1, 4)))
    if not interior.any():
        return x
    outside = (~bone).astype(np.float32)
    sigma = float(rng.uniform(3.0, 8.0))
    surround = ndimage.gaussian_filter(x * outside, sigma) / np.maximum(ndimage.gaussian_filter(outside, sigma), 1e-3)
    # A soft edge between rim and interior, as a tube's projection has.
    weight = ndimage.gaussian_filter(interior.astype(np.float32), 0.8) * bone
    amount = float(rng.uniform(0.3, 0.9))
    excess = np.clip(x - surround, 0, None)
    return x - amount * weight * excess


def augment_hand(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, size: int,
                 real_quantiles: np.ndarray | None = None, mirror_p: float = 0.0,
                 quarter_turn_p: float = 0.0, real_bone_look_p: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One augmented training pair in model-input geometry.

    Geometry (on the original grid, before :func:`prepare_model_input`): optional mirror and
    quarter turns (off by default: mirrored and turned films are handled at inference, see
    :meth:`Segmenter.segment_with_info`, so digit identity never depends on telling a left from a
    right hand), extra rotation (p 0.5, +-25 deg), unequal row/column scaling (p 0.5: films
    squashed to another aspect), zoom out by padding (p 0.45: a small hand in a large film or
    cassette frame), zoom in by cropping a border (p 0.2). Intensity (on the model input):
    histogram matching to a real film (p 0.5), edge enhancement as consoles apply it (p 0.5),
    smooth uneven exposure (p 0.3), resolution loss (p 0.2), gamma, contrast/offset, blur (p 0.3),
    noise (p 0.5).

    Args:
        rng: random generator.
        image: float32 image in [0, 1].
        labels: its label map (``IGNORE`` pixels allowed: they stay ``IGNORE``).
        size: model input size.
        real_quantiles: ``(n, k)`` quantiles of real films (see :func:`real_intensity_quantiles`).
        mirror_p: probability of a horizontal mirror.
        quarter_turn_p: probability of a quarter turn.
        real_bone_look_p: probability of dimming bone interiors to a real film's look
            (:func:`_real_bone_look`; for synthetic hands, whose bones are bright throughout).

    Returns:
        ``(model_input float32 size x size, labels uint8 size x size)``.
    """
    from scipy import ndimage  # imported here so parsing the CLI stays light

    img, lab = image, labels
    background = float(np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])))
    if rng.random() < mirror_p:
        img, lab = img[:, ::-1], lab[:, ::-1]
    if rng.random() < quarter_turn_p:
        k = int(rng.integers(1, 4))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = _rotate_pair(np.ascontiguousarray(img), np.ascontiguousarray(lab), float(rng.uniform(-25, 25)),
                                background)
    if rng.random() < 0.5:
        # Unequal scaling of rows and columns (nearest for labels keeps ids exact).
        fr, fc = float(np.exp(rng.normal(0, 0.12))), float(np.exp(rng.normal(0, 0.12)))
        img = ndimage.zoom(np.ascontiguousarray(img), (fr, fc), order=1, prefilter=False)
        lab = ndimage.zoom(np.ascontiguousarray(lab), (fr, fc), order=0, prefilter=False)
    if rng.random() < 0.45:
        pad_r = int(img.shape[0] * rng.uniform(0.05, 0.7))
        pad_c = int(img.shape[1] * rng.uniform(0.05, 0.7))
        top, left = int(rng.integers(0, pad_r + 1)), int(rng.integers(0, pad_c + 1))
        level = background if rng.random() < 0.7 else float(rng.uniform(0.0, 0.6))
        noise = rng.normal(level, 0.01, (img.shape[0] + pad_r, img.shape[1] + pad_c)).astype(np.float32)
        if rng.random() < 0.4:
            # An exposure gradient keeps the padding from being trimmed as an empty border.
            gy = np.linspace(-1, 1, noise.shape[0], dtype=np.float32)[:, None]
            gx = np.linspace(-1, 1, noise.shape[1], dtype=np.float32)[None, :]
            noise += float(rng.normal(0, 0.08)) * gy + float(rng.normal(0, 0.08)) * gx
        noise[top:top + img.shape[0], left:left + img.shape[1]] = img
        if rng.random() < 0.6:
            # A cassette or collimator edge around the original film.
            w = max(1, int(min(img.shape) * rng.uniform(0.003, 0.015)))
            r0, c0 = max(top - w, 0), max(left - w, 0)
            r1, c1 = top + img.shape[0] + w, left + img.shape[1] + w
            frame = np.zeros(noise.shape, bool)
            frame[r0:r1, c0:c1] = True
            frame[top:top + img.shape[0], left:left + img.shape[1]] = False
            noise[frame] = float(rng.uniform(0.2, 0.9))
        img = noise
        big = np.zeros(noise.shape, lab.dtype)
        big[top:top + lab.shape[0], left:left + lab.shape[1]] = lab
        lab = big
    elif rng.random() < 0.2 / 0.55:
        r, c = img.shape
        t, b = int(r * rng.uniform(0, 0.12)), int(r * rng.uniform(0, 0.12))
        lft, rgt = int(c * rng.uniform(0, 0.12)), int(c * rng.uniform(0, 0.12))
        img, lab = img[t:r - b, lft:c - rgt], lab[t:r - b, lft:c - rgt]
    img = np.ascontiguousarray(img, dtype=np.float32)
    lab = np.ascontiguousarray(lab)
    x, transform = prepare_model_input(img, size, window=MARKER_ROBUST_WINDOW)
    y = label_map_to_model(lab, transform).astype(np.uint8)

    if real_bone_look_p and rng.random() < real_bone_look_p:
        x = _real_bone_look(rng, x, y)
    if real_quantiles is not None and len(real_quantiles) and rng.random() < 0.5:
        target = real_quantiles[int(rng.integers(len(real_quantiles)))]
        source = np.quantile(x, REAL_QUANTILE_LEVELS)
        source = source + np.arange(source.size) * 1e-6  # strictly increasing for interp
        matched = np.interp(x, source, target).astype(np.float32)
        mix = float(rng.uniform(0.5, 1.0))
        x = mix * matched + (1 - mix) * x
    if rng.random() < 0.5:
        x = _edge_enhance(rng, x)
    if rng.random() < 0.3:
        x = x * _bias_field(rng, x.shape)
    if rng.random() < 0.2:
        f = float(rng.uniform(0.35, 0.8))
        small = ndimage.zoom(x, f, order=1, prefilter=False)
        x = ndimage.zoom(small, (size / small.shape[0], size / small.shape[1]), order=1, prefilter=False)[:size, :size]
    x = np.clip(x, 0, 1) ** float(np.exp(rng.normal(0, 0.3)))
    x = x * float(rng.uniform(0.7, 1.2)) + float(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.3:
        x = ndimage.gaussian_filter(x, float(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.5:
        x = x + rng.normal(0, rng.uniform(0.005, 0.05), x.shape).astype(np.float32)
    return np.clip(x, 0, 1).astype(np.float32), y


def _random_crop(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    if crop >= x.shape[0]:
        return x, y
    r = int(rng.integers(0, x.shape[0] - crop + 1))
    c = int(rng.integers(0, x.shape[1] - crop + 1))
    return x[r:r + crop, c:c + crop], y[r:r + crop, c:c + crop]


def _sample_stream(seed: int, size: int, crop: int, worker: int, synth_size: int,
                   real_quantiles: np.ndarray | None, pseudo_file: str | None = None,
                   pseudo_fraction: float = 0.0, mirror_p: float = 0.0,
                   quarter_turn_p: float = 0.0, real_bone_look_p: float = 0.0,
                   pseudo_age_balance: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless augmented samples: synthetic hands (indices disjoint between workers), mixed with
    pseudo-labelled real films (see :func:`make_pseudo_labels`) at ``pseudo_fraction``; with
    ``pseudo_age_balance`` the real films are drawn evenly over age (:func:`pseudo_draw_weights`)."""
    from boneage.synth import generate_hand

    rng = np.random.default_rng([seed, worker, 99])
    pseudo_x = pseudo_y = None
    pseudo_p: np.ndarray | None = None
    index = worker
    drawn = 0
    # Rendering a hand costs twice its augmentation, so each rendered hand is augmented about
    # ``SYNTH_REUSE`` times, drawn from a small pool so consecutive samples are different hands.
    pool: list[Any] = []
    while True:
        # The pseudo-label file may be written while training runs (self-training from a
        # checkpoint of this very run): look for it every 16 samples until it is there.
        if pseudo_x is None and pseudo_file and pseudo_fraction > 0 and drawn % 16 == 0 and Path(pseudo_file).is_file():
            try:
                with np.load(pseudo_file) as data:
                    pseudo_x, pseudo_y = data["images"], data["labels"]
                    ages = data["bone_ages"] if "bone_ages" in data.files else None
                print(f"\npseudo-labels loaded: {len(pseudo_x)} real films", file=sys.stderr)
            except (OSError, ValueError, KeyError):  # still being written
                pseudo_x = pseudo_y = None
            if pseudo_x is not None and pseudo_age_balance:
                if ages is None:
                    raise ValueError(f"{pseudo_file}: no bone_ages array (made before age balancing); "
                                     "rerun `python -m boneage.training.segmenter pseudo`")
                pseudo_p = pseudo_draw_weights(ages, min_band_films=PSEUDO_MIN_BAND_FILMS)
        drawn += 1
        if pseudo_x is not None and len(pseudo_x) and rng.random() < pseudo_fraction:
            if pseudo_p is not None:
                k = int(rng.choice(len(pseudo_x), p=pseudo_p))
            else:
                k = int(rng.integers(len(pseudo_x)))
            # Real films already carry real grey levels: no histogram matching for them.
            x, y = augment_hand(rng, pseudo_x[k].astype(np.float32) / 255.0, pseudo_y[k], size, None,
                                mirror_p, quarter_turn_p)
        else:
            if len(pool) < SYNTH_POOL or rng.random() < 1.0 / SYNTH_REUSE:
                hand = generate_hand(seed, index, size=synth_size)
                index += 64  # up to 64 workers get disjoint hands
                if len(pool) < SYNTH_POOL:
                    pool.append(hand)
                else:
                    pool[int(rng.integers(SYNTH_POOL))] = hand
            else:
                hand = pool[int(rng.integers(len(pool)))]
            x, y = augment_hand(rng, hand.image, hand.label_map, size, real_quantiles, mirror_p, quarter_turn_p,
                                real_bone_look_p)
        yield _random_crop(rng, x, y, crop)


#: Width of the age bands :func:`pseudo_draw_weights` evens out, months.
PSEUDO_AGE_BAND = 24.0
#: A band with fewer films is weighted as if it had this many (a handful of infants' films drawn a
#: tenth of the time each would be learnt by heart).
PSEUDO_MIN_BAND_FILMS = 30


def pseudo_draw_weights(bone_ages: np.ndarray, band_months: float = PSEUDO_AGE_BAND,
                        min_band_films: int = PSEUDO_MIN_BAND_FILMS) -> np.ndarray:
    """Draw probabilities that give every age band of pseudo-labelled films the same share.

    RSNA's films are mostly of 8-15 y children; a stage that draws them as they fall sees a
    child under 4 y in about one sample of twenty-five. Balanced, each ``band_months`` band with
    at least ``min_band_films`` films is drawn equally often (a smaller band in proportion to its
    films), films within a band uniformly.

    Args:
        bone_ages: bone age of each pseudo-labelled film, months.
        band_months: band width.
        min_band_films: bands with fewer films get ``count / min_band_films`` of a full share.

    Returns:
        Probabilities (one per film, summing to one).
    """
    ages = np.asarray(bone_ages, dtype=float)
    if ages.size == 0:
        raise ValueError("no pseudo-labelled films to weight")
    band = np.floor(ages / band_months).astype(int)
    _, inverse, counts = np.unique(band, return_inverse=True, return_counts=True)
    weights = 1.0 / np.maximum(counts, min_band_films)[inverse]
    return weights / weights.sum()


def _make_loader(config: TrainConfig, real_quantiles: np.ndarray | None) -> Iterator[tuple[Any, Any]]:
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class Stream(IterableDataset):
        def __iter__(self) -> Iterator[tuple[Any, Any]]:
            info = get_worker_info()
            worker = info.id if info else 0
            for x, y in _sample_stream(config.seed, config.size, config.crop, worker, config.synth_size,
                                       real_quantiles, config.pseudo_labels, config.pseudo_fraction,
                                       config.mirror_p, config.quarter_turn_p, config.real_bone_look_p,
                                       config.pseudo_age_balance):
                yield torch.from_numpy(x[None].copy()), torch.from_numpy(y[None].astype(np.int64))

    loader = DataLoader(Stream(), batch_size=config.batch_size, num_workers=config.workers,
                        persistent_workers=config.workers > 0)
    return iter(loader)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Training settings (defaults = the shipped weights).

    Attributes:
        out: output folder for weights and ``train_log.json``.
        steps: optimiser steps; the cosine learning-rate schedule runs over
            ``max(step / steps, elapsed / max_minutes)`` so a time limit still anneals fully.
        max_minutes: stop (and save) after this long; ``None`` = no limit.
        size: model input side.
        crop: side of the random training crop of the model input (default the whole input:
            digit identity needs the whole hand in view).
        batch_size: crops per step.
        lr: peak AdamW learning rate.
        seed: synthetic dataset seed (never :data:`EVAL_SEED`).
        synth_size: long side of the generated synthetic images.
        workers: data-generating processes.
        bf16: bf16 autocast for the forward pass where the CPU computes bf16 natively
            (:func:`boneage.models.cpu_has_fast_bf16`; elsewhere emulated bf16 is ~7x slower
            than fp32, so fp32 is used).
        threads: torch intra-op threads.
        real_intensity: histogram-match to real train-split films (when rsna-dev is present).
        init: optional weights file to start from (fine-tuning).
        pseudo_labels: optional ``.npz`` of pseudo-labelled real films (:func:`make_pseudo_labels`).
        pseudo_fraction: share of training samples drawn from ``pseudo_labels``.
        pseudo_age_balance: draw the pseudo-labelled films evenly over age bands
            (:func:`pseudo_draw_weights`) rather than as RSNA's ages fall (few young children).
        save_every_minutes: checkpoint interval.
        progress: tqdm progress bar.
        channels: UNet channels per level.
        num_res_units: residual units per UNet block.
        mirror_p: probability of mirroring a training sample (default 0: mirrored films are
            handled at inference by trying both orientations).
        quarter_turn_p: probability of a quarter turn (default 0, handled at inference too).
        real_bone_look_p: probability of giving a synthetic sample real bones' look
            (dim medulla, bright cortex; see :func:`augment_hand`).
        stop_at: stop (and save) after this many steps without finishing the schedule (a stage
            that is continued by the next one from its weights).
    """

    out: str = str(SEGMENTER_DIR)
    steps: int = 8000
    max_minutes: float | None = None
    size: int = 384
    crop: int = 384
    batch_size: int = 4
    lr: float = 2e-3
    seed: int = TRAIN_SEED
    synth_size: int = 512
    workers: int = 1
    bf16: bool = True
    threads: int = 2
    real_intensity: bool = True
    init: str | None = None
    pseudo_labels: str | None = None
    pseudo_fraction: float = 0.3
    pseudo_age_balance: bool = False
    save_every_minutes: float = 5.0
    progress: bool = True
    channels: tuple[int, ...] = field(default_factory=lambda: NetworkConfig().channels)
    num_res_units: int = NetworkConfig().num_res_units
    mirror_p: float = 0.0
    quarter_turn_p: float = 0.0
    real_bone_look_p: float = 0.0
    stop_at: int | None = None


def save_weights(network: Any, config: NetworkConfig, path: str | Path, meta: dict | None = None) -> Path:
    """Write an fp16 state dict plus the network config (what :meth:`Segmenter.load` reads).

    Args:
        network: the trained module.
        config: its :class:`NetworkConfig`.
        path: output file.
        meta: extra facts (training config, steps, wall time).

    Returns:
        The path.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in network.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save({"network": asdict(config), "state_dict": state, "meta": meta or {}, "version": WEIGHTS_VERSION}, tmp)
    tmp.replace(path)
    return path


def masked_dice_ce_loss(logits: Any, target: Any, ignore: int = IGNORE) -> Any:
    """Cross-entropy plus soft Dice (over the batch, every class, background included), skipping
    ``ignore`` pixels: the same loss as MONAI's ``DiceCELoss(batch=True)`` where nothing is ignored.

    Args:
        logits: ``(B, C, H, W)`` float tensor.
        target: ``(B, 1, H, W)`` integer tensor of label ids or ``ignore``.
        ignore: label value without a training signal.

    Returns:
        Scalar loss tensor.
    """
    import torch

    valid = target[:, 0] != ignore
    labels = torch.where(valid, target[:, 0], torch.zeros_like(target[:, 0]))
    weight = valid.to(logits.dtype)
    log_prob = torch.log_softmax(logits, 1)
    # Per-class sums by index (no one-hot tensor: 51 classes x a batch of 384^2 inputs is large).
    log_prob_true = log_prob.gather(1, labels[:, None])[:, 0]
    ce = -(log_prob_true * weight).sum() / weight.sum().clamp(min=1.0)
    classes = logits.shape[1]
    intersection = torch.zeros(classes, dtype=logits.dtype, device=logits.device).index_add_(
        0, labels.reshape(-1), (log_prob_true.exp() * weight).reshape(-1))
    counts = torch.bincount(labels[valid], minlength=classes).to(logits.dtype)
    prob_sums = (log_prob.exp() * weight[:, None]).sum((0, 2, 3))
    dice = 1.0 - (2.0 * intersection + 1e-5) / (prob_sums + counts + 1e-5)
    return ce + dice.mean()


def train(config: TrainConfig) -> Path:
    """Train the segmenter on augmented synthetic hands and write ``config.out/segmenter.pt``.

    Args:
        config: :class:`TrainConfig`.

    Returns:
        The weights path.
    """
    import torch
    from tqdm import tqdm

    if config.seed == EVAL_SEED:
        raise ValueError(f"seed {EVAL_SEED} is reserved for evaluation")
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    net_config = NetworkConfig(size=config.size, channels=tuple(config.channels), num_res_units=config.num_res_units)
    network = build_network(net_config)
    init_meta: dict = {}
    if config.init:
        start = Segmenter.load(config.init, exported=False)  # the torch network, not its ONNX copy
        network.load_state_dict(start.network.state_dict())
        init_meta = start.meta  # the card reports every stage
    network.train()
    real_q = real_intensity_quantiles(size=config.size) if config.real_intensity else None
    loader = _make_loader(config, real_q)
    loss_fn = masked_dice_ce_loss
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=1e-4)
    out_path = Path(config.out) / WEIGHTS_FILE
    log: list[dict[str, float]] = []
    started = last_save = time.monotonic()
    limit_s = config.max_minutes * 60 if config.max_minutes else math.inf
    warmup = max(1, min(50, config.steps // 20))
    use_bf16 = config.bf16 and cpu_has_fast_bf16()
    bar = tqdm(total=config.steps, disable=not config.progress, desc="train segmenter", file=sys.stderr)
    running = None
    step = 0
    for step in range(1, config.steps + 1):
        elapsed = time.monotonic() - started
        progress = max(step / config.steps, elapsed / limit_s)
        if (progress >= 1.0 and step > 1) or (config.stop_at and step > config.stop_at):
            step -= 1
            break
        lr = config.lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group in optimiser.param_groups:
            group["lr"] = max(lr, config.lr * 0.01)
        x, y = next(loader)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logits = network(x)
        loss = loss_fn(logits.float(), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        value = float(loss.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.2e}")
        if step % 10 == 0:
            log.append({"step": step, "loss": running, "lr": lr, "minutes": elapsed / 60})
        if time.monotonic() - last_save > config.save_every_minutes * 60:
            _save_training(network, net_config, out_path, config, step, started, log, init_meta, use_bf16)
            last_save = time.monotonic()
    bar.close()
    _save_training(network, net_config, out_path, config, step, started, log, init_meta, use_bf16)
    return out_path


def _save_training(network: Any, net_config: NetworkConfig, out_path: Path, config: TrainConfig, step: int,
                   started: float, log: list[dict[str, float]], init_meta: dict | None = None,
                   bf16_autocast: bool = False) -> None:
    network.eval()
    meta = {"train_config": asdict(config), "steps_done": step, "wall_minutes": (time.monotonic() - started) / 60,
            "final_loss": log[-1]["loss"] if log else None,
            "bf16_autocast": bf16_autocast}
    if init_meta:
        meta["init_meta"] = init_meta
    stats = Path(config.pseudo_labels).with_suffix(".json") if config.pseudo_labels else None
    if stats is not None and stats.is_file():
        # What the pseudo-label round that fed this stage kept (written by ``pseudo``), for the card.
        meta["pseudo_stats"] = json.loads(stats.read_text())
    save_weights(network, net_config, out_path, meta)
    (out_path.parent / "train_log.json").write_text(json.dumps({"meta": meta, "log": log}, indent=1))
    network.train()


# ------------------------------------------------------------------------------------------------
# Self-training on real films
# ------------------------------------------------------------------------------------------------
def ratio_references(bone: str) -> tuple[str, ...]:
    """Bones a tubular bone's length is checked against in :func:`pseudo_label_target`.

    The third metacarpal, the neighbour in the same row (towards the middle finger) and the
    neighbour in the same digit: a label that spilled across a joint into the next bone, or
    covers only half its bone, is out of proportion with at least two of them.

    Args:
        bone: a tubular bone.

    Returns:
        Reference bone names.
    """
    kind, d = anatomy.bone_kind(bone), anatomy.digit(bone)
    row = [b for b in anatomy.TUBULAR_BONES if anatomy.bone_kind(b) == kind]
    same_row = f"{kind}_{4 if d == 3 else (d + 1 if d < 3 else d - 1)}"
    if same_row not in row:  # the thumb has no middle phalanx; its neighbour row member is digit 2
        same_row = f"{kind}_2"
    digit = anatomy.digit_bones(d)
    i = digit.index(bone)
    same_digit = digit[i + 1] if i + 1 < len(digit) else digit[i - 1]
    refs = [r for r in dict.fromkeys(("metacarpal_3", same_row, same_digit)) if r != bone]
    if bone == "metacarpal_3":
        refs.append("metacarpal_2")
    return tuple(refs)


#: How :func:`pseudo_label_target` checks a bone's proportions: against its neighbours (tight
#: 1-99 % synthetic range +5 %), or -- the first self-training round (stage 3 of segmenter-3) -- against the
#: third metacarpal only (synthetic min-max range +-15 %; let labels spilling across a joint pass).
LENGTH_CHECKS = ("neighbours", "metacarpal3")


def length_ratio_bounds(n: int = 150, seed: int = TRAIN_SEED, slack: float = 0.05,
                        quantile: float = 0.01, check: str = "neighbours") -> dict[tuple[str, str], tuple[float, float]]:
    """Plausible range of each tubular bone's length relative to its :func:`ratio_references`.

    Taken from synthetic ground truth (training seed, ages 0-19 y): the ``quantile`` to
    ``1 - quantile`` range, widened by ``slack``.

    Args:
        n: synthetic hands sampled.
        seed: synthetic seed.
        slack: relative widening of the range.
        quantile: tail left out on each side.
        check: one of :data:`LENGTH_CHECKS`; ``"metacarpal3"`` gives the min-max range against
            the third metacarpal alone, widened by 15 % (``slack`` and ``quantile`` unused).

    Returns:
        ``{(bone, reference): (low, high)}``.
    """
    from boneage.synth import generate_hand

    if check not in LENGTH_CHECKS:
        raise ValueError(f"length check must be one of {LENGTH_CHECKS}, got {check!r}")
    if check == "metacarpal3":
        slack, quantile = 0.15, 0.0
    hands = [generate_hand(seed, 10_000_000 + i, size=128).lengths_mm for i in range(n)]
    bounds: dict[tuple[str, str], tuple[float, float]] = {}
    for bone in anatomy.TUBULAR_BONES:
        refs = ("metacarpal_3",) if check == "metacarpal3" else ratio_references(bone)
        for ref in (r for r in refs if r != bone):
            ratios = [h[bone] / h[ref] for h in hands if h.get(bone) and h.get(ref)]
            if len(ratios) >= 10:
                lo, hi = np.quantile(ratios, [quantile, 1 - quantile])
                bounds[(bone, ref)] = (float(lo) * (1 - slack), float(hi) * (1 + slack))
    return bounds


def carpal_gate(bone_age_months: float, sex: str, margin_months: float) -> tuple[list[str], list[str]]:
    """Which carpals a film's bone age says have not ossified, and which it leaves in doubt.

    Why: on young real films the network labels the whole cartilaginous carpus as eight bones around
    the two or three ossicles (docs/synthetic.md, "What moves the multi-step reading"), and a
    self-training round that trusts those labels teaches the mistake back. A carpal is taken as not
    yet ossified when the film's bone age is more than ``margin_months`` before its appearance age in
    the maturity model (:func:`boneage.synth.ossification_onset_months`), and as in doubt within
    ``margin_months`` of it.

    Args:
        bone_age_months: the film's labelled bone age.
        sex: ``"M"`` or ``"F"``.
        margin_months: half-width of the doubtful window around each appearance age.

    Returns:
        ``(unossified, doubtful)`` carpal names.
    """
    from boneage.synth import ossification_onset_months

    unossified, doubtful = [], []
    for bone in anatomy.CARPALS:
        onset = ossification_onset_months(sex, bone)
        if bone_age_months < onset - margin_months:
            unossified.append(bone)
        elif bone_age_months <= onset + margin_months:
            doubtful.append(bone)
    return unossified, doubtful


def pseudo_label_target(label_map: np.ndarray, probabilities: np.ndarray, spacing: tuple[float, float],
                        bounds: dict[str, tuple[float, float]], background_confidence: float = 0.9,
                        margin_px: int = 2, unossified: Iterable[str] = (),
                        doubtful: Iterable[str] = ()) -> tuple[np.ndarray, list[str]]:
    """Turn one predicted real film into a training target: trusted bones keep their labels, the
    rest is :data:`IGNORE` (the self-training filter, bone by bone).

    A tubular bone is trusted when :func:`boneage.measure.measure` finds it without flags, its
    digit is laid out as a finger (:func:`boneage.measure.finger_ray_digits`) and its length is in
    proportion (``bounds``) with its :func:`ratio_references` (at least two measured, at most one
    of three out of range); the radius and ulna when present
    without flags (running off the film is allowed); a carpal when it is measured without flags and
    at least three digits are trusted. Pixels of untrusted bones (and ``margin_px`` around them)
    and background pixels the network is unsure of become :data:`IGNORE`, so a mistake is not
    taught back to the network as background.

    Args:
        label_map: cleaned label map (model grid).
        probabilities: ``(NUM_CLASSES, H, W)`` softmax probabilities behind it.
        spacing: ``(row, col)`` original pixels per model pixel (true proportions on squashed grids).
        bounds: from :func:`length_ratio_bounds`.
        background_confidence: background probability needed to teach a pixel as background.
        margin_px: ignored band around untrusted bones.
        unossified: carpals not yet ossified at the film's bone age (:func:`carpal_gate`): whatever the network
            labelled as them is taught as background (cartilage), never trusted.
        doubtful: carpals that may or may not have ossified: their labels become :data:`IGNORE`.

    Returns:
        ``(target uint8, trusted bone names)``.
    """
    from scipy import ndimage

    from boneage.measure import finger_ray_digits, measure

    m = measure(label_map, spacing)
    digits = set(finger_ray_digits(label_map))
    length = {b: m.bones[b].length_mm for b in anatomy.TUBULAR_BONES
              if m.bones[b].plausible and m.bones[b].length_mm}
    trusted: list[str] = []
    for bone in anatomy.TUBULAR_BONES:
        if bone not in length or anatomy.digit(bone) not in digits:
            continue
        refs = [ref for (b, ref) in bounds if b == bone]
        checks = [bounds[(bone, ref)][0] <= length[bone] / length[ref] <= bounds[(bone, ref)][1]
                  for ref in refs if ref in length]
        if bone == "metacarpal_3" and len(refs) == 0:
            checks = [True, True]  # the single-reference check has nothing to hold the reference to
        # At least two references measured (or the one reference there is); with three, one may
        # itself be the wrong one.
        needed = min(2, len(refs)) or 2
        if len(checks) >= needed and sum(not c for c in checks) <= (1 if len(checks) >= 3 else 0):
            trusted.append(bone)
    for bone in anatomy.FOREARM:
        if m.bones[bone].plausible:
            trusted.append(bone)
    gated = set(unossified) | set(doubtful)
    if len({anatomy.digit(b) for b in trusted if b in anatomy.TUBULAR_BONES}) >= 3:
        trusted += [b for b in anatomy.CARPALS if m.bones[b].plausible and b not in gated]
    trusted_labels = [lab for b in trusted for lab in anatomy.bone_labels(b)]
    cartilage = np.isin(label_map, [lab for b in unossified for lab in anatomy.bone_labels(b)])
    target = label_map.astype(np.uint8).copy()
    untrusted = (label_map > 0) & ~np.isin(label_map, trusted_labels) & ~cartilage
    if margin_px > 0 and untrusted.any():
        untrusted = ndimage.binary_dilation(untrusted, iterations=margin_px) & ~np.isin(label_map, trusted_labels)
    target[untrusted] = IGNORE
    target[(label_map == 0) & (probabilities[0] < background_confidence)] = IGNORE
    # Not ossified at this bone age: what the network labelled there is cartilage, taught as background (a band
    # along an untrusted neighbour stays ignored).
    target[cartilage & ~untrusted] = anatomy.BACKGROUND
    return target, trusted


def make_pseudo_labels(segmenter: Segmenter, out_file: str | Path, limit: int | None = None,
                       min_trusted_tubular: int = 10, length_check: str = "neighbours",
                       progress: bool = True, carpal_gate_months: float | None = None) -> dict[str, Any]:
    """Pseudo-label rsna-dev **train-split** films, bone by bone (:func:`pseudo_label_target`).

    Films read as mirrored or turned are skipped (the network trains on upright left hands), as
    are films with fewer than ``min_trusted_tubular`` trusted tubular bones. The 41
    keypoint-annotated films are excluded, so the real-image check stays independent. The result
    (images and targets on the model grid, uint8) is research-only derived data: write it to the
    cache (:func:`boneage.paths.cache_dir`), never into the repository.

    Args:
        segmenter: the current model.
        out_file: ``.npz`` to write (``images``, ``labels``, ``ids``, ``bone_ages`` in months).
        limit: only the first N train-split films (quick checks).
        min_trusted_tubular: films with fewer trusted tubular bones are left out.
        length_check: one of :data:`LENGTH_CHECKS` (see :func:`length_ratio_bounds`).
        progress: tqdm bar.
        carpal_gate_months: when given, each film's carpals are gated by its bone age and sex
            (:func:`carpal_gate` with this margin): those not yet ossified are taught as background,
            those in doubt ignored. ``None`` (the shipped segmenter's rounds): carpals are trusted as
            the network labels them.

    Returns:
        ``{"candidates", "kept", "min_trusted_tubular", "trusted_tubular_per_film_median",
        "trusted_share_by_bone", "carpal_gate_months"}``.
    """
    from tqdm import tqdm

    from boneage.datasets import rsna_dev
    from boneage.io import load_radiograph
    from boneage.paths import rsna_dev_dir

    table = rsna_dev()
    keypoint_ids = set(keypoint_lengths(rsna_dev_dir() / "hand_keypoints.csv"))
    rows = table[(table["split"] == "train") & ~table["id"].isin(keypoint_ids | set(BLANK_KEYPOINT_IDS))]
    if limit:
        rows = rows.head(limit)
    bounds = length_ratio_bounds(check=length_check)
    images, labels, ids, ages = [], [], [], []
    trusted_count: dict[str, int] = {b: 0 for b in anatomy.BONES}
    per_film: list[int] = []
    films = list(zip(rows["id"], rows["path"], rows["bone_age_months"], rows["sex"]))
    for image_id, path, bone_age, sex in tqdm(films, disable=not progress, desc="pseudo-labels", file=sys.stderr):
        x, transform = prepare_model_input(load_radiograph(path).pixels, segmenter.config.size,
                                           window=segmenter.config.window)
        spacing = (transform.row_scale, transform.col_scale)
        reading = segmenter.read_model_grid(x, spacing)
        if reading.mirrored or reading.turns:
            continue
        unossified, doubtful = ([], []) if carpal_gate_months is None else carpal_gate(float(bone_age), sex,
                                                                                        carpal_gate_months)
        target, trusted = pseudo_label_target(reading.label_map, reading.probabilities, spacing, bounds,
                                              unossified=unossified, doubtful=doubtful)
        n_tubular = sum(b in anatomy.TUBULAR_BONES for b in trusted)
        if n_tubular < min_trusted_tubular:
            continue
        images.append(np.rint(x * 255).astype(np.uint8))
        labels.append(target)
        ids.append(int(image_id))
        ages.append(float(bone_age))
        per_film.append(n_tubular)
        for b in trusted:
            trusted_count[b] += 1
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.npz")
    size = segmenter.config.size
    np.savez_compressed(tmp, images=np.asarray(images, np.uint8).reshape(-1, size, size),
                        labels=np.asarray(labels, np.uint8).reshape(-1, size, size),
                        ids=np.asarray(ids, np.int64), bone_ages=np.asarray(ages, np.float32))
    tmp.replace(out)  # atomic: a running training picks the file up only when complete
    kept = len(ids)
    return {"candidates": int(len(rows)), "kept": kept, "min_trusted_tubular": min_trusted_tubular,
            "length_check": length_check, "carpal_gate_months": carpal_gate_months,
            "trusted_tubular_per_film_median": float(np.median(per_film)) if per_film else 0.0,
            "trusted_share_by_bone": {b: (c / kept if kept else 0.0) for b, c in trusted_count.items()}}


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def evaluate_synthetic(segmenter: Segmenter, n: int = 40, seed: int = EVAL_SEED, synth_size: int = 512,
                       progress: bool = False) -> dict[str, Any]:
    """Dice and length error on synthetic hands from a seed never trained on.

    Dice is per whole tubular bone (shaft + epiphysis labels) on the original grid; lengths come
    from :func:`boneage.measure.measure` on the predicted map against the generator's true
    ``lengths_mm`` (plausibly measured bones only; the share measured is reported).

    Args:
        segmenter: loaded model.
        n: number of hands.
        seed: synthetic seed (default :data:`EVAL_SEED`).
        synth_size: long side of the generated images.
        progress: tqdm bar.

    Returns:
        Metrics dict (mean Dice of tubular bones, per group, per bone; length error median/p95).
    """
    from tqdm import tqdm

    from boneage.measure import measure
    from boneage.synth import generate_hand

    per_bone: dict[str, list[float]] = {b: [] for b in anatomy.BONES}
    part_dice: dict[str, list[float]] = {"shaft": [], "epiphysis": []}
    length_err: list[float] = []
    length_rel: list[float] = []
    measured = expected = 0
    seconds = []
    for i in tqdm(range(n), disable=not progress, desc="synthetic eval", file=sys.stderr):
        hand = generate_hand(seed, i, size=synth_size)
        result = segmenter.segment_with_info(hand.image)
        seconds.append(result.seconds)
        pred, truth = result.label_map, hand.label_map
        for bone in anatomy.BONES:
            ids = anatomy.bone_labels(bone)
            t = np.isin(truth, ids)
            if not t.any():
                continue
            per_bone[bone].append(dice(np.isin(pred, ids), t))
        for bone in anatomy.TUBULAR_BONES:
            for part, label in (("shaft", anatomy.shaft_label(bone)), ("epiphysis", anatomy.epiphysis_label(bone))):
                if (truth == label).any():
                    part_dice[part].append(dice(pred == label, truth == label))
        m = measure(pred, hand.spacing_mm)
        for bone in anatomy.TUBULAR_BONES:
            true_len = hand.lengths_mm.get(bone)
            if true_len is None:
                continue
            expected += 1
            bm = m.bones[bone]
            if bm.plausible and bm.length_mm is not None:
                measured += 1
                length_err.append(abs(bm.length_mm - true_len))
                length_rel.append(abs(bm.length_mm - true_len) / true_len)
    groups = {
        "metacarpals": anatomy.METACARPALS, "proximal_phalanges": anatomy.PROXIMAL_PHALANGES,
        "middle_phalanges": anatomy.MIDDLE_PHALANGES, "distal_phalanges": anatomy.DISTAL_PHALANGES,
        "carpals": anatomy.CARPALS, "forearm": anatomy.FOREARM,
    }
    tubular = [v for b in anatomy.TUBULAR_BONES for v in per_bone[b]]
    err = np.asarray(length_err)
    return {
        "n_images": n, "seed": seed, "synth_size": synth_size,
        "tubular_dice_mean": float(np.mean(tubular)) if tubular else float("nan"),
        "dice_by_group": {g: float(np.mean([v for b in bones for v in per_bone[b]] or [np.nan]))
                          for g, bones in groups.items()},
        "tubular_dice_by_part": {p: float(np.mean(v)) if v else float("nan") for p, v in part_dice.items()},
        "dice_by_bone": {b: float(np.mean(v)) for b, v in per_bone.items() if v},
        "length_error_mm_median": float(np.median(err)) if err.size else float("nan"),
        "length_error_mm_p95": float(np.percentile(err, 95)) if err.size else float("nan"),
        "length_rel_error_median": float(np.median(length_rel)) if length_rel else float("nan"),
        "tubular_measured_fraction": measured / expected if expected else float("nan"),
        "seconds_per_image_segment": float(np.median(seconds)),
    }


def read_keypoints(keypoints_csv: str | Path) -> dict[int, dict[str, tuple[float, float]]]:
    """The visible hand keypoints of rsna-dev ``hand_keypoints.csv``, by image.

    Args:
        keypoints_csv: the file (``id, keypoint, x, y, visible``).

    Returns:
        ``{image id: {keypoint name: (x, y)}}`` in image pixels, skipping blank ids and points not visible.
    """
    import pandas as pd

    df = pd.read_csv(keypoints_csv)
    return {int(image_id): {r.keypoint: (float(r.x), float(r.y)) for r in rows.itertuples() if int(r.visible) > 0}
            for image_id, rows in df.groupby("id") if int(image_id) not in BLANK_KEYPOINT_IDS}


#: Where :func:`metacarpal_head_owners` probes a finger's metacarpal head: this share of the wrist to third
#: metacarpophalangeal joint distance proximal of the finger's joint keypoint (about 5 mm on a 12-year-old's
#: hand, inside the head from the epiphysis's appearance on).
METACARPAL_HEAD_PROBE = 0.06


def metacarpal_head_owners(label_map: np.ndarray, keypoints: dict[str, tuple[float, float]],
                           probe: float = METACARPAL_HEAD_PROBE) -> dict[int, str | None]:
    """Which bone a label map gives each finger's metacarpal head, located by the film's hand keypoints.

    The head lies just proximal of the metacarpophalangeal joint: the point ``probe`` x the wrist to third
    joint distance back from the finger's joint keypoint, along its proximal phalanx's line (joint to
    proximal interphalangeal keypoint) extended, should be labelled with the finger's metacarpal.

    Args:
        label_map: bone labels (``boneage.anatomy`` ids) on the film's pixel grid.
        keypoints: the film's keypoints (:func:`read_keypoints`).
        probe: how far back, as a share of the wrist to third joint distance.

    Returns:
        ``{digit: bone name at the probe (None: background or off the film)}`` for the fingers 2-5 whose
        joint keypoints are given (with the wrist's and the third finger's joint).
    """
    from boneage.anatomy import label_to_bone_lut

    lut = label_to_bone_lut()
    wrist, mcp3 = keypoints.get("wrist"), keypoints.get(f"{KEYPOINT_FINGERS[3]}1")
    if wrist is None or mcp3 is None:
        return {}
    reach = probe * float(np.hypot(mcp3[0] - wrist[0], mcp3[1] - wrist[1]))
    owners: dict[int, str | None] = {}
    for d, finger in KEYPOINT_FINGERS.items():
        mcp, pip = keypoints.get(f"{finger}1"), keypoints.get(f"{finger}2")
        if mcp is None or pip is None:
            continue
        along = np.subtract(pip, mcp)
        x, y = np.asarray(mcp) - along / max(float(np.hypot(*along)), 1e-6) * reach
        row, col = int(round(y)), int(round(x))
        inside = 0 <= row < label_map.shape[0] and 0 <= col < label_map.shape[1]
        owners[d] = lut[int(label_map[row, col])] if inside else None
    return owners


def keypoint_lengths(keypoints_csv: str | Path) -> dict[int, dict[str, float]]:
    """Joint-to-joint phalanx lengths (px) from rsna-dev ``hand_keypoints.csv``.

    Args:
        keypoints_csv: the file (``id, keypoint, x, y, visible``).

    Returns:
        ``{image id: {bone: length_px}}`` for proximal and middle phalanges of fingers 2-5,
        skipping blank ids and points not visible.
    """
    return phalanx_lengths(read_keypoints(keypoints_csv))


def phalanx_lengths(points: dict[int, dict[str, tuple[float, float]]]) -> dict[int, dict[str, float]]:
    """:func:`keypoint_lengths` of keypoints already read (:func:`read_keypoints`)."""
    out: dict[int, dict[str, float]] = {}
    for image_id, pts in points.items():
        lengths: dict[str, float] = {}
        for d, finger in KEYPOINT_FINGERS.items():
            mcp, pip, dip = (pts.get(f"{finger}{k}") for k in (1, 2, 3))
            if mcp and pip:
                lengths[f"proximal_phalanx_{d}"] = float(np.hypot(mcp[0] - pip[0], mcp[1] - pip[1]))
            if pip and dip:
                lengths[f"middle_phalanx_{d}"] = float(np.hypot(pip[0] - dip[0], pip[1] - dip[1]))
        if lengths:
            out[int(image_id)] = lengths
    return out


def evaluate_keypoints(segmenter: Segmenter, folder: str | Path | None = None) -> dict[str, Any]:
    """Real-film check: measured proximal/middle phalanx lengths of fingers 2-5 against the
    joint-to-joint distances of the 41 annotated rsna-dev films.

    Args:
        segmenter: loaded model.
        folder: rsna-dev folder (default :func:`boneage.paths.rsna_dev_dir`).

    Returns:
        Metrics dict (median / p90 relative error, share measured, per-bone medians, s/image for
        read + segment + measure) and, by finger, the share of films whose metacarpal head the
        segmenter gives to the proximal phalanx (``metacarpal_head_as_phalanx_by_finger``) and to the
        metacarpal (``metacarpal_head_as_metacarpal_by_finger``; :func:`metacarpal_head_owners`).

    Raises:
        FileNotFoundError: when the keypoint file is absent.
    """
    from boneage.io import load_radiograph
    from boneage.measure import measure
    from boneage.paths import rsna_dev_dir

    folder = Path(folder) if folder else rsna_dev_dir()
    points = read_keypoints(folder / "hand_keypoints.csv")
    truth = phalanx_lengths(points)
    head_owner: dict[int, list[str | None]] = {}
    rel: list[float] = []
    signed: list[float] = []
    by_bone: dict[str, list[float]] = {}
    measured = expected = 0
    seconds = []
    mirrored = 0
    try:
        from boneage.datasets import rsna_dev

        table = rsna_dev(folder)
        split_of = dict(zip(table["id"].astype(int), table["split"]))
    except Exception:  # noqa: BLE001 - labels.csv absent: no split breakdown
        split_of = {}
    rel_by_split: dict[str, list[float]] = {}
    for image_id, lengths in sorted(truth.items()):
        start = time.perf_counter()
        radiograph = load_radiograph(folder / "images" / f"{image_id}.jpg")
        result = segmenter.segment_with_info(radiograph)
        m = measure(result.label_map)
        seconds.append(time.perf_counter() - start)
        for d, owner in metacarpal_head_owners(result.label_map, points[image_id]).items():
            head_owner.setdefault(d, []).append(owner)
        mirrored += bool(result.mirrored)
        for bone, ref in lengths.items():
            expected += 1
            bm = m.bones[bone]
            if bm.plausible and bm.length_px:
                measured += 1
                rel.append(abs(bm.length_px - ref) / ref)
                signed.append((bm.length_px - ref) / ref)
                by_bone.setdefault(bone, []).append(abs(bm.length_px - ref) / ref)
                rel_by_split.setdefault(split_of.get(image_id, "unknown"), []).append(abs(bm.length_px - ref) / ref)
    return {
        "n_images": len(truth), "bones_expected": expected, "bones_measured": measured,
        "measured_fraction": measured / expected if expected else float("nan"),
        "rel_error_median": float(np.median(rel)) if rel else float("nan"),
        "rel_error_p90": float(np.percentile(rel, 90)) if rel else float("nan"),
        "signed_rel_error_median": float(np.median(signed)) if signed else float("nan"),
        "rel_error_median_by_bone": {b: float(np.median(v)) for b, v in sorted(by_bone.items())},
        "rel_error_median_by_split": {k: float(np.median(v)) for k, v in sorted(rel_by_split.items())},
        "images_reported_mirrored": mirrored,
        "metacarpal_head_as_phalanx_by_finger": {d: float(np.mean([o == f"proximal_phalanx_{d}" for o in v]))
                                                 for d, v in sorted(head_owner.items())},
        "metacarpal_head_as_metacarpal_by_finger": {d: float(np.mean([o == f"metacarpal_{d}" for o in v]))
                                                    for d, v in sorted(head_owner.items())},
        "seconds_per_image_read_segment_measure": float(np.median(seconds)) if seconds else float("nan"),
    }


#: Films per 2-year age band that :func:`evaluate_carpal_presence` reads.
CARPAL_CHECK_PER_BAND = 40


def carpal_presence_scores(records: list[tuple[float, str, set[str]]],
                           margin_months: float = 12.0) -> dict[str, Any]:
    """Score carpal labels against the films' bone ages (helper of :func:`evaluate_carpal_presence`).

    Args:
        records: ``(bone_age_months, sex, labelled carpal names)`` per film.
        margin_months: a carpal is expected absent when the film is more than this many months
            before its appearance age (:func:`boneage.synth.ossification_onset_months`), present when
            more than this many months after it; in between it is not scored.

    Returns:
        ``{"labelled_before_appearance", "labelled_after_appearance"}`` (shares of the scored film-carpal
        pairs; ``nan`` when none), the same per carpal (``..._by_carpal``), pair counts, and the median
        carpal count by 2-year band (``carpal_count_median_by_band``, keys like ``"2-4"``).
    """
    from boneage.synth import ossification_onset_months

    early: dict[str, list[bool]] = {b: [] for b in anatomy.CARPALS}
    late: dict[str, list[bool]] = {b: [] for b in anatomy.CARPALS}
    counts: dict[int, list[int]] = {}
    for age, sex, labelled in records:
        for bone in anatomy.CARPALS:
            onset = ossification_onset_months(sex, bone)
            if age < onset - margin_months:
                early[bone].append(bone in labelled)
            elif age > onset + margin_months:
                late[bone].append(bone in labelled)
        counts.setdefault(int(age // 24), []).append(len(labelled))

    def share(groups: dict[str, list[bool]]) -> float:
        flat = [v for vs in groups.values() for v in vs]
        return float(np.mean(flat)) if flat else float("nan")

    return {
        "margin_months": margin_months, "n_films": len(records),
        "labelled_before_appearance": share(early), "pairs_before_appearance": sum(map(len, early.values())),
        "labelled_after_appearance": share(late), "pairs_after_appearance": sum(map(len, late.values())),
        "labelled_before_appearance_by_carpal": {b: float(np.mean(v)) for b, v in early.items() if v},
        "labelled_after_appearance_by_carpal": {b: float(np.mean(v)) for b, v in late.items() if v},
        "carpal_count_median_by_band": {f"{2 * k}-{2 * k + 2}": float(np.median(v)) for k, v in sorted(counts.items())},
    }


def evaluate_carpal_presence(segmenter: Segmenter, per_band: int = CARPAL_CHECK_PER_BAND, seed: int = 0,
                             progress: bool = False) -> dict[str, Any]:
    """Real-film check of the carpal labels: are carpals labelled only once they have ossified?

    Why: on young real films a segmenter can divide the cartilaginous carpus into eight bones around
    the two or three ossicles, and the multi-step method then reads a carpal count that says nothing
    of maturity. The films are ``rsna-299`` films (never pseudo-labelled, so out of the self-training
    sample), up to ``per_band`` of each 2-year bone-age band; truth is each carpal's Greulich-Pyle
    appearance age (a population median, so even a perfect reader scores neither 0 nor 1).

    Args:
        segmenter: loaded model.
        per_band: films per 2-year band (fewer where the set has fewer).
        seed: which films are drawn.
        progress: tqdm bar.

    Returns:
        :func:`carpal_presence_scores` of the drawn films, plus ``seed``.

    Raises:
        boneage.datasets.DataUnavailableError: when ``rsna-299`` is absent.
    """
    import pandas as pd
    from tqdm import tqdm

    from boneage.datasets import rsna_299
    from boneage.io import load_radiograph
    from boneage.measure import MIN_PIXELS

    table = rsna_299()
    rng = np.random.default_rng(seed)
    band = (table["bone_age_months"] // 24).astype(int)
    rows = []
    for _, group in table.groupby(band):
        take = rng.permutation(len(group))[:per_band]
        rows.append(group.iloc[np.sort(take)])
    films = pd.concat(rows)
    carpal_ids = {bone: anatomy.bone_labels(bone)[0] for bone in anatomy.CARPALS}
    records = []
    for path, age, sex in tqdm(list(zip(films["path"], films["bone_age_months"], films["sex"])),
                               disable=not progress, desc="carpal check", file=sys.stderr):
        label_map = segmenter.segment_with_info(load_radiograph(path)).label_map
        pixels = np.bincount(label_map.ravel(), minlength=anatomy.NUM_CLASSES)
        # Present as the multi-step measurements count a carpal (``boneage.measure``).
        labelled = {bone for bone, i in carpal_ids.items() if pixels[i] >= MIN_PIXELS}
        records.append((float(age), str(sex), labelled))
    return {**carpal_presence_scores(records), "seed": seed}


# ------------------------------------------------------------------------------------------------
# Model card
# ------------------------------------------------------------------------------------------------
def _stages(meta: dict) -> list[dict]:
    """Training stages from the weights' metadata, first stage first."""
    stages = []
    while meta:
        stages.append(meta)
        meta = meta.get("init_meta") or {}
    return stages[::-1]


def _train_command_line(config: dict) -> str:
    defaults = asdict(TrainConfig())
    parts = ["boneage train segmenter"]
    for key in ("out", "steps", "max_minutes", "size", "crop", "batch_size", "lr", "seed", "workers", "init",
                "pseudo_labels", "pseudo_fraction", "pseudo_age_balance", "mirror_p", "real_bone_look_p", "stop_at"):
        value = config.get(key)
        if key in ("pseudo_fraction", "pseudo_age_balance") and not config.get("pseudo_labels"):
            continue
        if key == "pseudo_age_balance":
            if value:
                parts.append("--pseudo-age-balance")
            continue
        if value is not None and value != defaults.get(key):
            parts.append(f"--{key.replace('_', '-')} {value}")
    if not config.get("real_intensity", True):
        parts.append("--no-real-intensity")
    if not config.get("bf16", True):
        parts.append("--no-bf16")
    return " ".join(parts)


def _precision_text(stages: list[dict]) -> str:
    """How each stage computed: bf16 autocast where its CPU had native bf16, fp32 elsewhere."""
    bf16 = [bool(st.get("bf16_autocast", st.get("train_config", {}).get("bf16", False))) for st in stages]
    if all(bf16):
        return "bf16 autocast (AVX512-BF16)."
    if not any(bf16):
        return "fp32 (the CPU had no native bf16: AVX2 only)."
    numbers = lambda flag: ", ".join(str(i) for i, b in enumerate(bf16, 1) if b == flag)  # noqa: E731
    return (f"stage(s) {numbers(False)} in fp32 (that CPU had no native bf16: AVX2 only), "
            f"stage(s) {numbers(True)} with bf16 autocast (AVX512-BF16).")


def model_card(metrics: dict[str, Any]) -> str:
    """Markdown model card from an ``eval`` metrics dict (see :func:`main`).

    Args:
        metrics: ``{"synthetic": ..., "real_keypoints": ..., "weights_meta": ..., "pseudo": ...}``.

    Returns:
        The card text.
    """
    syn = metrics.get("synthetic", {})
    real = metrics.get("real_keypoints") or {}
    stages = _stages(metrics.get("weights_meta", {}))
    net = metrics.get("network", {})
    channels = tuple(net.get("channels", NetworkConfig().channels))
    uses_real = any(st.get("train_config", {}).get("pseudo_labels") or st.get("train_config", {}).get("real_intensity")
                    for st in stages)
    pseudo_stages = [(i, st) for i, st in enumerate(stages, 1) if st.get("train_config", {}).get("pseudo_labels")]
    bone_look_stages = [i for i, st in enumerate(stages, 1) if st.get("train_config", {}).get("real_bone_look_p")]
    lines = [
        "# Bone segmentation network (`segmenter`)",
        "",
        f"Version `{VERSION}`; weights `segmenter.pt` (`{WEIGHTS_VERSION}`, fp16 state dict + config); code `boneage/segment.py` (inference),"
        " `boneage/training/segmenter.py` (training).",
        "",
        "ONNX copy for inference: `segmenter.onnx` (the same fp16 weights, run by ONNX Runtime; records the SHA-256 of"
        " `segmenter.pt` and the rest of its contents, so inference imports neither torch nor MONAI). After new weights run"
        " `python -m boneage.training.export`; a stale copy is ignored (the network is then built from `segmenter.pt` and"
        " run in torch).",
        "",
        "## What it does",
        "",
        "Labels every structure of `boneage.anatomy` (51 classes incl. background: radius/ulna and the 19 tubular",
        "bones each split into shaft and epiphysis, 8 carpals) in a hand radiograph. `boneage segment INPUT... --out DIR`",
        "writes one label map per input (`DIR/<stem>.png`, same size as the input, pixel value = label id).",
        f"The image is cropped to the hand and squashed to a {net.get('size', 384)} x {net.get('size', 384)} input by "
        "`boneage.preprocess.prepare_model_input`;",
        "the prediction is closed per structure, cleaned (per bone, fragments < 25 % of its largest component are",
        "dropped) and mapped back to the input's own pixels.",
        "",
        f"**Metacarpal heads** (since `segmenter-4.1`; the weights are `{WEIGHTS_VERSION}`'s). On real films the network",
        "often carries the proximal phalanx's label of fingers 2, 4 and 5 over the joint and the metacarpal's head, down",
        "to the metacarpal's physis. `boneage.postprocess.reclaim_metacarpal_heads` gives such a head back: where the third",
        "metacarpal has its head, a finger's metacarpal lacks most of the head the third's predicts for it",
        f"(< {HEAD_MISSING_SHARE:.0%} of its area, scaled by the two shafts' lengths) and its phalanx reaches back to",
        f"the shaft, the phalanx's pixels up to {HEAD_REACH:g} x the predicted head length past the shaft's end become the",
        f"metacarpal's epiphysis and the next {JOINT_SPACE:g} x that length (the joint space) background. Where the third",
        f"metacarpal's physis is open, a band of {PHYSIS_PX:g} px past the shaft's end stays background, so the head does",
        "not read as fused. The rule changes the label map, not the probabilities; self-training pseudo-labels",
        "(`make_pseudo_labels`) are made from the mended maps.",
        "",
        "**Orientation.** The network is trained on upright-ish left hands only, so digit identity never hinges on",
        "telling a left hand from a right one. At inference `Segmenter.segment_with_info` reads the film as given and",
        "mirrored, keeps the reading that looks more like a left hand (`orientation_score`: digits laid out as fingers,",
        f"thumb diverging more than the little finger; the mirror must win by {MIRROR_MARGIN}), and turns films whose",
        "fingers point sideways or down by the nearest quarter turn; a film that does not look like a hand as given",
        f"(score < {QUARTER_TURN_TRIGGER}) is read at every quarter turn, a turned reading winning by {QUARTER_TURN_MARGIN}",
        f"and only if it scores {QUARTER_TURN_TRIGGER} itself (a film that is no hand in any orientation stays as given).",
        "Label ids stay anatomical (digit 1 = thumb);",
        "`mirrored=True` is reported for a right hand or a flipped film, and the finger angle for a rotated one.",
        "",
        "## Architecture",
        "",
        f"MONAI `UNet(spatial_dims=2, channels={channels}, strides={(2,) * (len(channels) - 1)}, "
        f"num_res_units={net.get('num_res_units', NetworkConfig().num_res_units)}, norm=batch)`,",
        f"1 input channel, 51 outputs, {metrics.get('parameters', 0) / 1e6:.2f} M parameters; fp16 storage, fp32 compute",
        "on CPU. Seven levels: the 6 x 6 bottom sees the whole hand, which telling the fingers apart needs.",
        "",
        "## Training data",
        "",
        "* Synthetic left hands from `boneage.synth.generate_hand` (seed 1000, drawn on the fly, each rendered hand",
        f"  augmented about {SYNTH_REUSE} times; seed 7 is never trained on and is used for evaluation). Augmentation:",
        "  rotation +-25 deg, unequal row/column scaling, zoom out into a padded film with a cassette edge or exposure",
        "  gradient, zoom in, edge enhancement (unsharp masking as CR consoles apply it), uneven exposure, resolution",
        "  loss, gamma, contrast, blur, noise" + (
            f"; in stage(s) {', '.join(str(i) for i in bone_look_stages)} also a real film's bone look (bone "
            "interiors dimmed towards the surrounding soft tissue, cortex kept bright)" if bone_look_stages else "")
        + ". Whole 384 x 384 inputs, no crops.",
    ]
    if uses_real:
        lines += [
            "* **Real films (research use only).** Grey-level histograms (65 quantiles per film) of 240 rsna-dev",
            "  **train-split** films are used to histogram-match synthetic inputs (p 0.5).",
        ]
    for i, st in pseudo_stages:
        ps = st.get("pseudo_stats") or {}
        fraction = st.get("train_config", {}).get("pseudo_fraction", 0)
        lines += [
            f"* Self-training, stage {i}: the stage-{i - 1} weights segmented {ps.get('candidates', '?')} rsna-dev "
            "train-split films (the 41 keypoint-annotated films excluded); bone by bone, a bone was trusted when",
            "  measured without flags, its digit laid out as a finger and its length in proportion ("
            + ("with metacarpal 3 alone, synthetic min-max range +-15 %"
               if ps.get("length_check") == "metacarpal3" else
               "with metacarpal 3 and its row and digit neighbours, synthetic 1-99 % range +5 %")
            + "; `pseudo_label_target`); untrusted bones and unsure background were left out",
            f"  of the loss (ignore label). {ps.get('kept', '?')} films with >= {ps.get('min_trusted_tubular', '?')} "
            f"trusted tubular bones (median {ps.get('trusted_tubular_per_film_median', float('nan')):.0f}) made",
            f"  {fraction:.0%} of the stage's samples. Pseudo-labels live only in the local cache, never in the repository.",
        ]
        gate = ps.get("carpal_gate_months")
        if gate is not None:
            lines.append(f"  Carpals gated by the film's bone age and sex: a carpal more than {gate:g} months short of its "
                         "Greulich-Pyle appearance age was taught as background, one within that margin ignored "
                         "(`carpal_gate`).")
        if st.get("train_config", {}).get("pseudo_age_balance"):
            lines.append(f"  The films were drawn evenly over {PSEUDO_AGE_BAND / 12:g}-year age bands (a band of fewer "
                         f"than {PSEUDO_MIN_BAND_FILMS} films in proportion; `pseudo_draw_weights`).")
    if uses_real:
        lines += [
            "",
            "RSNA Pediatric Bone Age Challenge data: Halabi SS, Prevedello LM, Kalpathy-Cramer J, et al. The RSNA",
            "Pediatric Bone Age Machine Learning Challenge. Radiology 2019;290:498-503. Research and education use only,",
            "no commercial use: these weights inherit that restriction.",
        ]
    lines += ["", "## Reproduce", "",
              "Hardware: 2-core CPU, no GPU; " + _precision_text(stages),
              "Each stage starts from the previous stage's `segmenter.pt` (`--init`); a pseudo-label round runs before",
              "each self-training stage. Stage folders may be any folder outside the repository.", "", "```"]
    for i, st in enumerate(stages, 1):
        cfg = dict(st.get("train_config", {}))
        ps = st.get("pseudo_stats") or {}
        if cfg.get("pseudo_labels"):
            weights = ps.get("weights") or f"STAGE{i - 1}/segmenter.pt"
            check = ps.get("length_check", "neighbours")
            lines.append(f"python -m boneage.training.segmenter pseudo --weights {weights} --out {cfg['pseudo_labels']} "
                         f"--min-trusted {ps.get('min_trusted_tubular', 10)}"
                         + (f" --length-check {check}" if check != "neighbours" else "")
                         + (f" --carpal-gate {ps['carpal_gate_months']:g}" if ps.get("carpal_gate_months") is not None
                            else ""))
        lines.append(_train_command_line(cfg) + f"   # stage {i}: {st.get('steps_done')} steps, "
                     f"{st.get('wall_minutes', 0):.0f} min")
    lines += [
        f"python -m boneage.training.segmenter eval --n {syn.get('n_images')} --card --limitations data/models/segmenter/LIMITATIONS.txt"
        "   # metrics.json + this card",
        "python benchmarks/bench_segment.py",
        "```",
        "",
        "The learning-rate schedule (cosine) runs over the larger of steps done / `--steps` and elapsed / `--max-minutes`;",
        "`--stop-at N` ends a stage early (its schedule unfinished) to be continued by the next stage.",
        "",
        f"## Metrics (synthetic: {syn.get('n_images')} hands of seed {syn.get('seed')}, never trained on)",
        "",
        "| metric | value | bar |",
        "|---|---|---|",
        f"| mean Dice, 19 tubular bones (whole bone) | {syn.get('tubular_dice_mean', float('nan')):.3f} | >= 0.90 |",
        f"| median bone-length error (tubular, mm) | {syn.get('length_error_mm_median', float('nan')):.2f} | <= 1.0 |",
        f"| p95 bone-length error (mm) | {syn.get('length_error_mm_p95', float('nan')):.2f} | |",
        f"| tubular bones measured (plausible) | {syn.get('tubular_measured_fraction', float('nan')):.1%} | |",
    ]
    if real:
        lines += [
            f"| real: median relative error, proximal+middle phalanges 2-5 vs keypoints ({real.get('n_images')} films) "
            f"| {real.get('rel_error_median', float('nan')):.1%} | <= 10 % |",
            f"| real: bones measured | {real.get('bones_measured')}/{real.get('bones_expected')} = "
            f"{real.get('measured_fraction', float('nan')):.1%} | >= 95 % |",
            f"| real: read + segment + measure, s/image (median, 2 threads) "
            f"| {real.get('seconds_per_image_read_segment_measure', float('nan')):.2f} | <= 1 s |",
        ]
    lines += ["", "Dice by bone group (whole bone):", ""]
    lines += [f"* {g}: {v:.3f}" for g, v in syn.get("dice_by_group", {}).items()]
    parts = syn.get("tubular_dice_by_part", {})
    if parts:
        lines += [f"* tubular shafts: {parts.get('shaft', float('nan')):.3f}, epiphyses: "
                  f"{parts.get('epiphysis', float('nan')):.3f} (label-level Dice)"]
    if real:
        lines += ["", "Real keypoint check, median relative error by bone: " + ", ".join(
            f"{b} {v:.1%}" for b, v in real.get("rel_error_median_by_bone", {}).items()),
            "", "By rsna-dev split (model choices used only the train split): " + ", ".join(
            f"{k} {v:.1%}" for k, v in real.get("rel_error_median_by_split", {}).items())
            + f"; signed median error {real.get('signed_rel_error_median', float('nan')):+.1%} (joint-to-joint "
            "distances include half of each joint space, so bone lengths are expected slightly shorter)."]
        heads = real.get("metacarpal_head_as_phalanx_by_finger")
        if heads:
            lines += ["", "Metacarpal heads given to the proximal phalanx (the label just proximal of each keypointed "
                      "metacarpophalangeal joint, `metacarpal_head_owners`, after `reclaim_metacarpal_heads`), share of "
                      "films by finger: "
                      + ", ".join(f"{d} {v:.0%}" for d, v in heads.items()) + "."]
    carpals = metrics.get("real_carpals") or {}
    if carpals:
        bands = carpals.get("carpal_count_median_by_band", {})
        lines += ["", f"Carpal labels on {carpals.get('n_films')} `rsna-299` films (never pseudo-labelled; up to "
                  f"{CARPAL_CHECK_PER_BAND} per 2-year bone-age band; `evaluate_carpal_presence`): a carpal was labelled "
                  f"on {carpals.get('labelled_before_appearance', float('nan')):.0%} of the films more than "
                  f"{carpals.get('margin_months', 12):g} months younger than its Greulich-Pyle appearance age, and on "
                  f"{carpals.get('labelled_after_appearance', float('nan')):.1%} of those more than that past it. "
                  "Median carpal count by band (years): " + ", ".join(f"{k} {v:g}" for k, v in bands.items()) + "."]
    lines += ["", "## Limitations", ""] + [f"* {x}" for x in metrics.get("limitations", [])]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Command line (``python -m boneage.training.segmenter``; ``boneage train segmenter``)
# ------------------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``boneage train segmenter`` (defaults = the shipped weights)."""
    d = TrainConfig()
    parser.add_argument("--out", default=d.out, help="output folder (default data/models/segmenter)")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    parser.add_argument("--max-minutes", type=float, default=d.max_minutes, help="stop after this long and save")
    parser.add_argument("--size", type=int, default=d.size, help=f"model input side (default {d.size})")
    parser.add_argument("--crop", type=int, default=d.crop, help=f"training crop side (default {d.crop})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed, help=f"synthetic seed (default {d.seed}; not {EVAL_SEED})")
    parser.add_argument("--workers", type=int, default=d.workers, help="data-generating processes")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    parser.add_argument("--no-bf16", action="store_true", help="train in fp32")
    parser.add_argument("--no-real-intensity", action="store_true",
                        help="do not histogram-match to real rsna-dev train-split films")
    parser.add_argument("--init", default=None, help="start from these weights (fine-tuning)")
    parser.add_argument("--pseudo-labels", default=None,
                        help="npz of pseudo-labelled real films (python -m boneage.training.segmenter pseudo)")
    parser.add_argument("--pseudo-fraction", type=float, default=d.pseudo_fraction,
                        help=f"share of samples from --pseudo-labels (default {d.pseudo_fraction})")
    parser.add_argument("--pseudo-age-balance", action="store_true",
                        help="draw the pseudo-labelled films evenly over 2-year age bands (young films more often)")
    parser.add_argument("--mirror-p", type=float, default=d.mirror_p,
                        help=f"probability of mirroring a training sample (default {d.mirror_p})")
    parser.add_argument("--real-bone-look-p", type=float, default=d.real_bone_look_p,
                        help="probability of dimming synthetic bone interiors to a real film's look")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="stop and save after this many steps (the schedule still runs over --steps)")
    parser.add_argument("--no-progress", action="store_true")


def train_command(args: argparse.Namespace) -> int:
    """Run :func:`train` from parsed ``boneage train segmenter`` arguments; print the weights path."""
    config = TrainConfig(out=args.out, steps=args.steps, max_minutes=args.max_minutes, size=args.size,
                         crop=args.crop, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         workers=args.workers, threads=args.threads, bf16=not args.no_bf16,
                         real_intensity=not args.no_real_intensity, init=args.init,
                         pseudo_labels=args.pseudo_labels, pseudo_fraction=args.pseudo_fraction,
                         pseudo_age_balance=args.pseudo_age_balance, mirror_p=args.mirror_p,
                         real_bone_look_p=args.real_bone_look_p, stop_at=args.stop_at,
                         progress=not args.no_progress)
    weights = train(config)
    print(weights)
    from boneage.training.export import export_after_training

    export_after_training("segmenter", weights)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m boneage.training.segmenter train|pseudo|eval ...``."""
    parser = argparse.ArgumentParser(prog="python -m boneage.training.segmenter")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(sub.add_parser("train", help="train the segmenter"))
    ev = sub.add_parser("eval", help="synthetic (seed 7) and real keypoint metrics -> metrics json")
    ev.add_argument("--weights", default=None)
    ev.add_argument("--n", type=int, default=40, help="synthetic hands")
    ev.add_argument("--out", default=None, help="write metrics json here")
    ev.add_argument("--skip-real", action="store_true")
    ev.add_argument("--card", action="store_true",
                    help="write metrics.json and MODEL_CARD.md beside the weights")
    ev.add_argument("--pseudo-stats", default=None, help="json from the pseudo step, for the card")
    ev.add_argument("--limitations", default=None, help="text file, one limitation per line, for the card")
    ps = sub.add_parser("pseudo", help="pseudo-label plausible rsna-dev train-split films (cache only)")
    ps.add_argument("--weights", default=None)
    ps.add_argument("--out", default=str(cache_dir() / "segment_pseudo_labels.npz"))
    ps.add_argument("--limit", type=int, default=None)
    ps.add_argument("--min-trusted", type=int, default=10,
                    help="films with fewer trusted tubular bones are left out (default 10)")
    ps.add_argument("--length-check", choices=LENGTH_CHECKS, default="neighbours",
                    help="how a bone's proportions are checked (default neighbours)")
    ps.add_argument("--carpal-gate", type=float, default=None, metavar="MONTHS",
                    help="gate carpals by the film's bone age: taught as background more than MONTHS before their "
                         "appearance age, ignored within MONTHS of it (default: off, as the shipped rounds)")
    args = parser.parse_args(argv)
    if args.command == "train":
        return train_command(args)
    if args.command == "pseudo":
        stats = make_pseudo_labels(Segmenter.load(args.weights), args.out, limit=args.limit,
                                   min_trusted_tubular=args.min_trusted, length_check=args.length_check,
                                   carpal_gate_months=args.carpal_gate)
        stats["weights"] = args.weights
        Path(args.out).with_suffix(".json").write_text(json.dumps(stats))
        print(stats)
        print(args.out)
        return 0
    segmenter = Segmenter.load(args.weights, exported=False)  # its parameters are counted below
    metrics: dict[str, Any] = {"version": VERSION, "weights_meta": segmenter.meta,
                               "network": asdict(segmenter.config),
                               "parameters": int(sum(p.numel() for p in segmenter.network.parameters())),
                               "synthetic": evaluate_synthetic(segmenter, n=args.n, progress=True)}
    print(json.dumps(metrics["synthetic"], indent=1))
    if not args.skip_real:
        try:
            metrics["real_keypoints"] = evaluate_keypoints(segmenter)
            print(json.dumps(metrics["real_keypoints"], indent=1))
        except FileNotFoundError as exc:
            print(f"real keypoint check skipped: {exc}", file=sys.stderr)
        try:
            metrics["real_carpals"] = evaluate_carpal_presence(segmenter, progress=True)
            print(json.dumps(metrics["real_carpals"], indent=1))
        except FileNotFoundError as exc:  # incl. DataUnavailableError: rsna-299 absent
            print(f"real carpal check skipped: {exc}", file=sys.stderr)
    if args.pseudo_stats:
        metrics["pseudo"] = json.loads(Path(args.pseudo_stats).read_text())
    if args.limitations:
        metrics["limitations"] = [ln.strip() for ln in Path(args.limitations).read_text().splitlines() if ln.strip()]
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=1, default=str))
    if args.card:
        folder = Path(args.weights).parent if args.weights else SEGMENTER_DIR
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
        (folder / "MODEL_CARD.md").write_text(model_card(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())

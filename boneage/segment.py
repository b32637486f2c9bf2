"""Bone segmentation network: every structure of :mod:`boneage.anatomy` in a hand radiograph.

Design (see ``data/models/segmenter/MODEL_CARD.md`` for the numbers):

* **Network** -- a MONAI 2-D residual ``UNet`` (5 levels, 16..256 channels, batch norm), one
  input channel, :data:`boneage.anatomy.NUM_CLASSES` outputs. Small enough for < 1 s per image on
  two CPU cores; weights are shipped in fp16 (about 1.8 MB).
* **Geometry** -- inputs go through :func:`boneage.preprocess.prepare_model_input` (crop to the
  hand, squash to ``size x size``, percentile window), the same for training and inference, and
  the predicted label map is sent back to the original grid with
  :meth:`boneage.preprocess.CropTransform.mask_to_original`.
* **Training data** -- synthetic hands from :func:`boneage.synth.generate_hand`, drawn on the fly
  (an endless stream, seed :data:`TRAIN_SEED`; seed 7 is kept for evaluation), with strong
  augmentation: extra rotation (small angles and, sometimes, quarter turns), horizontal mirroring
  (so right hands and mirrored films are segmented with the same digit labels), zoom out / in,
  gamma, contrast, blur, noise, and intensity *histogram matching to real films* (quantiles of
  rsna-dev **train-split** images, never ``val``) so the network sees real-film grey levels.
  Training runs on random crops of the model input (cheaper per step, same pixel scale as
  inference).
* **Mirroring** -- :meth:`Segmenter.segment_with_info` reports whether the hand is seen mirrored
  (thumb on the left when the fingers point up, i.e. a right hand or a flipped film). Label ids
  are anatomical either way (digit 1 is always the thumb).

Public API: :class:`Segmenter`, :func:`build_network`, :class:`TrainConfig`, :func:`train`,
:func:`evaluate_synthetic`, :func:`evaluate_keypoints`, :func:`segment_paths`.
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
from PIL import Image

from boneage import anatomy
from boneage.paths import MODELS_DIR, cache_dir
from boneage.preprocess import MARKER_ROBUST_WINDOW, CropTransform, prepare_model_input

#: Folder of the shipped segmenter (weights, model card, metrics).
SEGMENTER_DIR = MODELS_DIR / "segmenter"
WEIGHTS_FILE = "segmenter.pt"
VERSION = "segmenter-1.1"
#: Synthetic seed the shipped weights were trained on; :data:`EVAL_SEED` is never trained on.
TRAIN_SEED = 1000
EVAL_SEED = 7
#: Image file suffixes accepted when a folder is given to :func:`segment_paths`.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")

#: Real-image keypoint ids (rsna-dev ``hand_keypoints.csv``) of the MCP, PIP and DIP joints of
#: fingers 2-5: proximal phalanx ~ |MCP - PIP|, middle phalanx ~ |PIP - DIP|.
KEYPOINT_FINGERS = {2: "forefinger", 3: "middle_finger", 4: "ring_finger", 5: "pinky_finger"}
BLANK_KEYPOINT_IDS = (1707, 1879, 1880)


# ------------------------------------------------------------------------------------------------
# Network
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkConfig:
    """Architecture and input geometry (stored inside the weights file).

    Attributes:
        size: side of the square model input in px.
        channels: UNet channels per level.
        num_res_units: residual units per UNet block.
        norm: MONAI norm name.
        window: intensity-window percentiles of the model input (weights saved before this was
            stored get the marker-robust default; they were trained with (0.5, 99.5), see the card).
    """

    size: int = 384
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_res_units: int = 1
    norm: str = "batch"
    window: tuple[float, float] = MARKER_ROBUST_WINDOW


def build_network(config: NetworkConfig | None = None) -> Any:
    """A MONAI UNet with one input channel and ``anatomy.NUM_CLASSES`` output logits.

    Args:
        config: architecture (default :class:`NetworkConfig`).

    Returns:
        ``monai.networks.nets.UNet`` (a ``torch.nn.Module``).
    """
    from monai.networks.nets import UNet

    config = config or NetworkConfig()
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=anatomy.NUM_CLASSES,
        channels=tuple(config.channels),
        strides=(2,) * (len(config.channels) - 1),
        num_res_units=config.num_res_units,
        norm=config.norm,
    )


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
# Inference
# ------------------------------------------------------------------------------------------------
@dataclass
class SegmentationResult:
    """A label map and what was learnt about the hand while segmenting it.

    Attributes:
        label_map: uint8 label map, same shape as the input image.
        mirrored: True when the hand is seen mirrored (thumb on the left with the fingers up: a
            right hand, or a flipped left-hand film); ``None`` when it cannot be told.
        finger_angle_deg: direction the fingers point, degrees counter-clockwise from "up"
            (``None`` when unknown); large values mean a rotated film.
        seconds: wall time of the segmentation.
    """

    label_map: np.ndarray
    mirrored: bool | None
    finger_angle_deg: float | None
    seconds: float


class Segmenter:
    """The trained bone segmentation network (CPU inference).

    Example:
        >>> seg = Segmenter.load()                                   # doctest: +SKIP
        >>> label_map = seg.segment(load_radiograph("hand.png"))     # doctest: +SKIP
    """

    def __init__(self, network: Any, config: NetworkConfig, meta: dict | None = None, device: str = "cpu") -> None:
        import torch

        self.network = network.to(device).eval()
        self.config = config
        self.meta = meta or {}
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> Segmenter:
        """Load weights written by :func:`train` (fp16 state dict + config).

        Args:
            path: weights file (default the shipped ``data/models/segmenter/segmenter.pt``).
            device: torch device.

        Returns:
            A ready :class:`Segmenter` (fp32 on CPU).
        """
        import torch

        path = Path(path) if path else SEGMENTER_DIR / WEIGHTS_FILE
        if not path.is_file():
            from boneage.models import ModelNotAvailableError

            raise ModelNotAvailableError(f"segmenter weights not found at {path}")
        blob = torch.load(path, map_location="cpu", weights_only=False)
        cfg = blob["network"]
        config = NetworkConfig(size=int(cfg["size"]), channels=tuple(cfg["channels"]),
                               num_res_units=int(cfg["num_res_units"]), norm=str(cfg["norm"]),
                               window=tuple(cfg.get("window", MARKER_ROBUST_WINDOW)))
        network = build_network(config)
        network.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
        return cls(network, config, meta=blob.get("meta", {}), device=device)

    def predict_model_grid(self, model_input: np.ndarray) -> np.ndarray:
        """Label map in model-input geometry for a prepared ``size x size`` input.

        Args:
            model_input: float32 array from :func:`prepare_model_input`.

        Returns:
            uint8 ``size x size`` label map.
        """
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32))[None, None].to(self.device)
            logits = self.network(x)
            return logits.argmax(1)[0].to("cpu", torch.uint8).numpy()

    def segment_with_info(self, image: Any) -> SegmentationResult:
        """Segment one radiograph and report its orientation.

        Args:
            image: a :class:`boneage.io.Radiograph` or a 2-D array (bone bright).

        Returns:
            :class:`SegmentationResult` with the label map at the input's own size.
        """
        start = time.perf_counter()
        pixels = getattr(image, "pixels", image)
        model_input, transform = prepare_model_input(pixels, self.config.size, window=self.config.window)
        small = clean_label_map(close_label_map(self.predict_model_grid(model_input)))
        mirrored, angle = hand_orientation(small, (transform.row_scale, transform.col_scale))
        label_map = transform.mask_to_original(small)
        return SegmentationResult(label_map.astype(np.uint8), mirrored, angle, time.perf_counter() - start)

    def segment(self, image: Any) -> np.ndarray:
        """Label map (uint8, :mod:`boneage.anatomy` ids) of one radiograph at its own size.

        Args:
            image: a :class:`boneage.io.Radiograph` or a 2-D array (bone bright).

        Returns:
            uint8 label map of the input's shape.
        """
        return self.segment_with_info(image).label_map


def close_label_map(label_map: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Morphological closing of every structure separately, filling background pixels only.

    Why: on real films the network often leaves a bone's shaft in several pieces separated by a
    thin unlabelled seam (cortex bright, medulla darker); closing rejoins them. Each label is
    closed on its own and may only take background pixels, so the physis gap between an epiphysis
    and its shaft (a different label) is never bridged.

    Args:
        label_map: integer label map.
        iterations: closing radius in pixels (3 x 3 structuring element repeated).

    Returns:
        Closed copy.
    """
    from scipy import ndimage  # imported here so parsing the CLI stays light

    out = label_map.copy()
    pad = iterations + 1
    for label, box in enumerate(ndimage.find_objects(label_map, max_label=anatomy.NUM_CLASSES - 1), start=1):
        if box is None:
            continue
        box = tuple(slice(max(sl.start - pad, 0), sl.stop + pad) for sl in box)
        mask = label_map[box] == label
        closed = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=iterations))
        region = out[box]
        region[closed & (label_map[box] == 0) & (region == 0)] = label
    return out


def clean_label_map(label_map: np.ndarray, min_fraction: float = 0.25) -> np.ndarray:
    """Drop stray fragments: for each bone keep its largest connected component (shaft and
    epiphysis together) and components at least ``min_fraction`` of it, relabel the rest
    background.

    Why: a few isolated pixels of a bone's label elsewhere (markers, a neighbouring finger) would
    stretch its measured length; the bone itself is one blob (the epiphysis touches or nearly
    touches its shaft, so they are joined with a small dilation).

    Args:
        label_map: integer label map.
        min_fraction: components smaller than this fraction of the largest one are removed.

    Returns:
        Cleaned copy.
    """
    from scipy import ndimage  # imported here so parsing the CLI stays light

    out = label_map.copy()
    max_label = anatomy.NUM_CLASSES - 1
    bone_of_label = np.zeros(max_label + 1, dtype=np.int32)
    for i, bone in enumerate(anatomy.BONES, start=1):
        bone_of_label[anatomy.bone_labels(bone)] = i
    bone_map = bone_of_label[np.clip(label_map, 0, max_label)]
    boxes = ndimage.find_objects(bone_map)
    structure = np.ones((3, 3), bool)
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
        mask = bone_map[box] == i
        joined = ndimage.binary_dilation(mask, structure, iterations=1)
        comp, n = ndimage.label(joined)
        if n <= 1:
            continue
        sizes = ndimage.sum(mask, comp, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
        drop = mask & ~np.isin(comp, keep)
        out[box][drop] = 0
    return out


def hand_orientation(label_map: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[bool | None, float | None]:
    """Finger direction and handedness from a label map.

    The distal direction is the third metacarpal's centroid -> third proximal phalanx's centroid;
    the thumb side is the fifth -> first metacarpal. For a left hand in the usual PA view the thumb
    lies clockwise of "up" (on the image's right).

    Args:
        label_map: integer label map.
        spacing: ``(row, col)`` pixel size, so squashed model grids give true directions.

    Returns:
        ``(mirrored, finger_angle_deg)``; ``(None, None)`` when the bones needed are missing.
    """

    def centroid(bone: str) -> np.ndarray | None:
        rr, cc = np.nonzero(np.isin(label_map, anatomy.bone_labels(bone)))
        if rr.size < 4:
            return None
        return np.array([cc.mean() * spacing[1], -rr.mean() * spacing[0]])  # x right, y up

    mc3, pp3 = centroid("metacarpal_3"), centroid("proximal_phalanx_3")
    mc1, mc5 = centroid("metacarpal_1"), centroid("metacarpal_5")
    if mc3 is None or pp3 is None:
        return None, None
    distal = pp3 - mc3
    angle = float(np.degrees(np.arctan2(-distal[0], distal[1])))  # 0 = up, + = counter-clockwise
    if mc1 is None or mc5 is None:
        return None, angle
    thumbward = mc1 - mc5
    cross = distal[0] * thumbward[1] - distal[1] * thumbward[0]
    # Left hand, fingers up (distal = +y), thumb to the right (+x): cross = 0*0 - 1*(+x) < 0.
    return bool(cross > 0), angle


def _iter_inputs(inputs: Iterable[str | Path]) -> Iterator[Path]:
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def segment_paths(inputs: Iterable[str | Path], out_dir: str | Path, segmenter: Segmenter | None = None,
                  progress: bool = True) -> tuple[int, int]:
    """Segment files and folders; write ``out_dir/<stem>.png`` label maps (same size as input).

    Args:
        inputs: image files or folders (folders: their image files, not recursive).
        out_dir: output folder (created).
        segmenter: a loaded model (default the shipped weights).
        progress: print one line per image to stderr.

    Returns:
        ``(written, failed)`` counts.
    """
    from boneage.io import ImageReadError, load_radiograph

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = segmenter or Segmenter.load()
    written = failed = 0
    for path in _iter_inputs(inputs):
        try:
            radiograph = load_radiograph(path)
        except (ImageReadError, OSError) as exc:
            print(f"{path}: cannot read ({exc})", file=sys.stderr)
            failed += 1
            continue
        result = segmenter.segment_with_info(radiograph)
        Image.fromarray(result.label_map).save(out / f"{path.stem}.png")
        written += 1
        if progress:
            note = " (mirrored: right hand or flipped film)" if result.mirrored else ""
            print(f"{path} -> {out / (path.stem + '.png')} [{result.seconds:.2f} s]{note}", file=sys.stderr)
    return written, failed


# ------------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------------
REAL_QUANTILE_LEVELS = np.linspace(0.0, 1.0, 65)


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


def augment_hand(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, size: int,
                 real_quantiles: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One augmented training pair in model-input geometry.

    Geometry (on the original grid, before :func:`prepare_model_input`): mirror (p 0.3), quarter
    turns (p 0.1), extra rotation (p 0.5, +-25 deg), zoom out by padding (p 0.3: small hands in a
    large film), zoom in by cropping a border (p 0.2). Intensity (on the model input): histogram
    matching to a real film (p 0.5), gamma, contrast/offset, blur (p 0.3), noise (p 0.5).

    Args:
        rng: random generator.
        image: float32 synthetic image in [0, 1].
        labels: its label map.
        size: model input size.
        real_quantiles: ``(n, k)`` quantiles of real films (see :func:`real_intensity_quantiles`).

    Returns:
        ``(model_input float32 size x size, labels uint8 size x size)``.
    """
    from scipy import ndimage  # imported here so parsing the CLI stays light

    img, lab = image, labels
    background = float(np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])))
    if rng.random() < 0.3:
        img, lab = img[:, ::-1], lab[:, ::-1]
    if rng.random() < 0.1:
        k = int(rng.integers(1, 4))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = _rotate_pair(np.ascontiguousarray(img), np.ascontiguousarray(lab), float(rng.uniform(-25, 25)),
                                background)
    if rng.random() < 0.3:
        pad_r = int(img.shape[0] * rng.uniform(0.05, 0.4))
        pad_c = int(img.shape[1] * rng.uniform(0.05, 0.4))
        top, left = int(rng.integers(0, pad_r + 1)), int(rng.integers(0, pad_c + 1))
        noise = rng.normal(background, 0.01, (img.shape[0] + pad_r, img.shape[1] + pad_c)).astype(np.float32)
        noise[top:top + img.shape[0], left:left + img.shape[1]] = img
        img = noise
        big = np.zeros(noise.shape, lab.dtype)
        big[top:top + lab.shape[0], left:left + lab.shape[1]] = lab
        lab = big
    elif rng.random() < 0.2 / 0.7:
        r, c = img.shape
        t, b = int(r * rng.uniform(0, 0.12)), int(r * rng.uniform(0, 0.12))
        lft, rgt = int(c * rng.uniform(0, 0.12)), int(c * rng.uniform(0, 0.12))
        img, lab = img[t:r - b, lft:c - rgt], lab[t:r - b, lft:c - rgt]
    img = np.ascontiguousarray(img, dtype=np.float32)
    lab = np.ascontiguousarray(lab)
    x, transform = prepare_model_input(img, size, window=MARKER_ROBUST_WINDOW)
    y = label_map_to_model(lab, transform).astype(np.uint8)

    if real_quantiles is not None and len(real_quantiles) and rng.random() < 0.5:
        target = real_quantiles[int(rng.integers(len(real_quantiles)))]
        source = np.quantile(x, REAL_QUANTILE_LEVELS)
        source = source + np.arange(source.size) * 1e-6  # strictly increasing for interp
        matched = np.interp(x, source, target).astype(np.float32)
        mix = float(rng.uniform(0.5, 1.0))
        x = mix * matched + (1 - mix) * x
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
                   pseudo_fraction: float = 0.0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless augmented samples: synthetic hands (indices disjoint between workers), mixed with
    pseudo-labelled real films (see :func:`make_pseudo_labels`) at ``pseudo_fraction``."""
    from boneage.synth import generate_hand

    rng = np.random.default_rng([seed, worker, 99])
    pseudo_x = pseudo_y = None
    index = worker
    drawn = 0
    while True:
        # The pseudo-label file may be written while training runs (self-training from a
        # checkpoint of this very run): look for it every 16 samples until it is there.
        if pseudo_x is None and pseudo_file and pseudo_fraction > 0 and drawn % 16 == 0 and Path(pseudo_file).is_file():
            try:
                with np.load(pseudo_file) as data:
                    pseudo_x, pseudo_y = data["images"], data["labels"]
                print(f"\npseudo-labels loaded: {len(pseudo_x)} real films", file=sys.stderr)
            except (OSError, ValueError, KeyError):  # still being written
                pseudo_x = pseudo_y = None
        drawn += 1
        if pseudo_x is not None and len(pseudo_x) and rng.random() < pseudo_fraction:
            k = int(rng.integers(len(pseudo_x)))
            # Real films already carry real grey levels: no histogram matching for them.
            x, y = augment_hand(rng, pseudo_x[k].astype(np.float32) / 255.0, pseudo_y[k], size, None)
        else:
            hand = generate_hand(seed, index, size=synth_size)
            index += 64  # up to 64 workers get disjoint hands
            x, y = augment_hand(rng, hand.image, hand.label_map, size, real_quantiles)
        yield _random_crop(rng, x, y, crop)


def _make_loader(config: TrainConfig, real_quantiles: np.ndarray | None) -> Iterator[tuple[Any, Any]]:
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class Stream(IterableDataset):
        def __iter__(self) -> Iterator[tuple[Any, Any]]:
            info = get_worker_info()
            worker = info.id if info else 0
            for x, y in _sample_stream(config.seed, config.size, config.crop, worker, config.synth_size,
                                       real_quantiles, config.pseudo_labels, config.pseudo_fraction):
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
        crop: side of the random training crop of the model input.
        batch_size: crops per step.
        lr: peak AdamW learning rate.
        seed: synthetic dataset seed (never :data:`EVAL_SEED`).
        synth_size: long side of the generated synthetic images.
        workers: data-generating processes.
        bf16: bf16 autocast for the forward pass (faster on CPUs with AVX512-BF16).
        threads: torch intra-op threads.
        real_intensity: histogram-match to real train-split films (when rsna-dev is present).
        init: optional weights file to start from (fine-tuning).
        pseudo_labels: optional ``.npz`` of pseudo-labelled real films (:func:`make_pseudo_labels`).
        pseudo_fraction: share of training samples drawn from ``pseudo_labels``.
        save_every_minutes: checkpoint interval.
        progress: tqdm progress bar.
    """

    out: str = str(SEGMENTER_DIR)
    steps: int = 1500
    max_minutes: float | None = None
    size: int = 384
    crop: int = 256
    batch_size: int = 8
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
    save_every_minutes: float = 5.0
    progress: bool = True
    channels: tuple[int, ...] = field(default_factory=lambda: NetworkConfig().channels)


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
    torch.save({"network": asdict(config), "state_dict": state, "meta": meta or {}, "version": VERSION}, tmp)
    tmp.replace(path)
    return path


def train(config: TrainConfig) -> Path:
    """Train the segmenter on augmented synthetic hands and write ``config.out/segmenter.pt``.

    Args:
        config: :class:`TrainConfig`.

    Returns:
        The weights path.
    """
    import torch
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    if config.seed == EVAL_SEED:
        raise ValueError(f"seed {EVAL_SEED} is reserved for evaluation")
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    net_config = NetworkConfig(size=config.size, channels=tuple(config.channels))
    network = build_network(net_config)
    init_meta: dict = {}
    if config.init:
        start = Segmenter.load(config.init)
        network.load_state_dict(start.network.state_dict())
        init_meta = start.meta  # the card reports every stage
    network.train()
    real_q = real_intensity_quantiles(size=config.size) if config.real_intensity else None
    loader = _make_loader(config, real_q)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=1e-4)
    out_path = Path(config.out) / WEIGHTS_FILE
    log: list[dict[str, float]] = []
    started = last_save = time.monotonic()
    limit_s = config.max_minutes * 60 if config.max_minutes else math.inf
    warmup = max(1, min(50, config.steps // 20))
    bar = tqdm(total=config.steps, disable=not config.progress, desc="train segmenter", file=sys.stderr)
    running = None
    step = 0
    for step in range(1, config.steps + 1):
        elapsed = time.monotonic() - started
        progress = max(step / config.steps, elapsed / limit_s)
        if progress >= 1.0 and step > 1:
            break
        lr = config.lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group in optimiser.param_groups:
            group["lr"] = max(lr, config.lr * 0.01)
        x, y = next(loader)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
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
            _save_training(network, net_config, out_path, config, step, started, log, init_meta)
            last_save = time.monotonic()
    bar.close()
    _save_training(network, net_config, out_path, config, step, started, log, init_meta)
    return out_path


def _save_training(network: Any, net_config: NetworkConfig, out_path: Path, config: TrainConfig, step: int,
                   started: float, log: list[dict[str, float]], init_meta: dict | None = None) -> None:
    network.eval()
    meta = {"train_config": asdict(config), "steps_done": step, "wall_minutes": (time.monotonic() - started) / 60,
            "final_loss": log[-1]["loss"] if log else None}
    if init_meta:
        meta["init_meta"] = init_meta
    save_weights(network, net_config, out_path, meta)
    (out_path.parent / "train_log.json").write_text(json.dumps({"meta": meta, "log": log}, indent=1))
    network.train()


# ------------------------------------------------------------------------------------------------
# Self-training on real films
# ------------------------------------------------------------------------------------------------
def length_ratio_bounds(n: int = 150, seed: int = TRAIN_SEED, slack: float = 0.15) -> dict[str, tuple[float, float]]:
    """Plausible range of each tubular bone's length relative to the third metacarpal.

    Taken from synthetic ground truth (training seed, ages 0-19 y), widened by ``slack``.

    Args:
        n: synthetic hands sampled.
        seed: synthetic seed.
        slack: relative widening of the observed min-max range.

    Returns:
        ``{bone: (low, high)}`` for the tubular bones.
    """
    from boneage.synth import generate_hand

    ratios: dict[str, list[float]] = {b: [] for b in anatomy.TUBULAR_BONES}
    for i in range(n):
        lengths = generate_hand(seed, 10_000_000 + i, size=128).lengths_mm
        ref = lengths.get("metacarpal_3")
        if not ref:
            continue
        for bone in anatomy.TUBULAR_BONES:
            if lengths.get(bone):
                ratios[bone].append(lengths[bone] / ref)
    return {b: (min(v) * (1 - slack), max(v) * (1 + slack)) for b, v in ratios.items() if v}


def plausible_hand(label_map: np.ndarray, spacing: tuple[float, float],
                   bounds: dict[str, tuple[float, float]]) -> bool:
    """Anatomical plausibility of a predicted hand (the pseudo-label filter).

    All 19 tubular bones and the radius and ulna must be measured without flags by
    :func:`boneage.measure.measure`, every tubular bone's length relative to the third metacarpal
    must lie within ``bounds``, and the hand must not be reported as mirrored (real rsna-dev films
    are left hands; a mirrored result means confused digits).

    Args:
        label_map: predicted label map (model grid).
        spacing: ``(row, col)`` pixel size of that grid, so squashed grids give true proportions.
        bounds: from :func:`length_ratio_bounds`.

    Returns:
        Whether the hand passes.
    """
    from boneage.measure import measure

    m = measure(label_map, spacing)
    needed = anatomy.TUBULAR_BONES + anatomy.FOREARM
    if not all(m.bones[b].plausible for b in anatomy.TUBULAR_BONES):
        return False
    if not all(m.bones[b].present for b in needed):
        return False
    ref = m.bones["metacarpal_3"].length_mm
    for bone, (lo, hi) in bounds.items():
        ratio = m.bones[bone].length_mm / ref
        if not lo <= ratio <= hi:
            return False
    mirrored, _ = hand_orientation(label_map, spacing)
    return mirrored is False


def make_pseudo_labels(segmenter: Segmenter, out_file: str | Path, limit: int | None = None,
                       progress: bool = True) -> dict[str, int]:
    """Pseudo-label rsna-dev **train-split** films and keep the anatomically plausible ones.

    The 41 keypoint-annotated films are excluded, so the real-image check stays independent.
    The result (images and label maps on the model grid, uint8) is research-only derived data:
    write it to the cache (:func:`boneage.paths.cache_dir`), never into the repository.

    Args:
        segmenter: the current model.
        out_file: ``.npz`` to write (``images``, ``labels``, ``ids``).
        limit: only the first N train-split films (quick checks).
        progress: tqdm bar.

    Returns:
        ``{"candidates": n, "kept": k}``.
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
    bounds = length_ratio_bounds()
    images, labels, ids = [], [], []
    for image_id, path in tqdm(list(zip(rows["id"], rows["path"])), disable=not progress, desc="pseudo-labels",
                               file=sys.stderr):
        x, transform = prepare_model_input(load_radiograph(path).pixels, segmenter.config.size,
                                           window=segmenter.config.window)
        y = clean_label_map(close_label_map(segmenter.predict_model_grid(x)))
        if plausible_hand(y, (transform.row_scale, transform.col_scale), bounds):
            images.append(np.rint(x * 255).astype(np.uint8))
            labels.append(y)
            ids.append(int(image_id))
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.npz")
    np.savez_compressed(tmp, images=np.asarray(images, np.uint8).reshape(-1, segmenter.config.size, segmenter.config.size),
                        labels=np.asarray(labels, np.uint8).reshape(-1, segmenter.config.size, segmenter.config.size),
                        ids=np.asarray(ids, np.int64))
    tmp.replace(out)  # atomic: a running training picks the file up only when complete
    return {"candidates": int(len(rows)), "kept": len(ids)}


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


def keypoint_lengths(keypoints_csv: str | Path) -> dict[int, dict[str, float]]:
    """Joint-to-joint phalanx lengths (px) from rsna-dev ``hand_keypoints.csv``.

    Args:
        keypoints_csv: the file (``id, keypoint, x, y, visible``).

    Returns:
        ``{image id: {bone: length_px}}`` for proximal and middle phalanges of fingers 2-5,
        skipping blank ids and points not visible.
    """
    import pandas as pd

    df = pd.read_csv(keypoints_csv)
    out: dict[int, dict[str, float]] = {}
    for image_id, rows in df.groupby("id"):
        if int(image_id) in BLANK_KEYPOINT_IDS:
            continue
        pts = {r.keypoint: (float(r.x), float(r.y)) for r in rows.itertuples() if int(r.visible) > 0}
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
        read + segment + measure).

    Raises:
        FileNotFoundError: when the keypoint file is absent.
    """
    from boneage.io import load_radiograph
    from boneage.measure import measure
    from boneage.paths import rsna_dev_dir

    folder = Path(folder) if folder else rsna_dev_dir()
    truth = keypoint_lengths(folder / "hand_keypoints.csv")
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
        "seconds_per_image_read_segment_measure": float(np.median(seconds)) if seconds else float("nan"),
    }


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
                "pseudo_labels", "pseudo_fraction"):
        value = config.get(key)
        if key == "pseudo_fraction" and not config.get("pseudo_labels"):
            continue
        if value is not None and value != defaults.get(key):
            parts.append(f"--{key.replace('_', '-')} {value}")
    if not config.get("real_intensity", True):
        parts.append("--no-real-intensity")
    return " ".join(parts)


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
    pseudo = metrics.get("pseudo") or {}
    uses_real = any(st.get("train_config", {}).get("pseudo_labels") or st.get("train_config", {}).get("real_intensity")
                    for st in stages)
    lines = [
        "# Bone segmentation network (`segmenter`)",
        "",
        f"Version `{VERSION}`; weights `segmenter.pt` (fp16 state dict + config); code `boneage/segment.py`.",
        "",
        "## What it does",
        "",
        "Labels every structure of `boneage.anatomy` (51 classes incl. background: radius/ulna and the 19 tubular",
        "bones each split into shaft and epiphysis, 8 carpals) in a hand radiograph. `boneage segment INPUT... --out DIR`",
        "writes one label map per input (`DIR/<stem>.png`, same size as the input, pixel value = label id).",
        "The image is cropped to the hand and squashed to a 384 x 384 input by `boneage.preprocess.prepare_model_input`;",
        "the prediction is cleaned (per bone, fragments < 25 % of its largest component are dropped) and mapped back.",
        "Right hands / mirrored films: the network is trained with mirroring, so it labels them with the same anatomical",
        "ids (digit 1 = thumb); `Segmenter.segment_with_info` reports `mirrored=True` (the CLI prints it).",
        "",
        "## Architecture",
        "",
        "MONAI `UNet(spatial_dims=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=1, norm=batch)`,",
        "1 input channel, 51 outputs, ~0.88 M parameters, ~1.8 MB in fp16 (fp16 storage, fp32 compute on CPU).",
        "",
        "## Training data",
        "",
        "* Synthetic left hands from `boneage.synth.generate_hand` (seed 1000, drawn on the fly, every sample a new hand;",
        "  seed 7 is never trained on and is used for evaluation), with augmentation: mirroring (p 0.3), quarter turns",
        "  (p 0.1), rotation +-25 deg (p 0.5), zoom out by padding / zoom in by cropping, gamma, contrast, blur, noise,",
        "  random 256 x 256 crops of the 384 x 384 input.",
    ]
    if uses_real:
        lines += [
            "* **Real films (research use only).** Grey-level histograms (65 quantiles per film) of 240 rsna-dev",
            "  **train-split** films are used to histogram-match synthetic inputs (p 0.5).",
        ]
    if pseudo:
        lines += [
            f"* Self-training: the stage-1 model pseudo-labelled {pseudo.get('candidates')} rsna-dev train-split films",
            "  (the 41 keypoint-annotated films excluded); the "
            f"{pseudo.get('kept')} that passed the anatomical-plausibility filter (all 19 tubular bones measured",
            "  without flags by `boneage.measure`, radius and ulna present, every tubular bone's length relative to",
            "  metacarpal 3 inside the synthetic range +-15 %, not mirrored) were mixed into stage-2 training",
            f"  ({stages[-1].get('train_config', {}).get('pseudo_fraction', 0):.0%} of samples). Pseudo-labels live",
            "  only in the local cache, never in the repository.",
        ]
    if uses_real:
        lines += [
            "",
            "RSNA Pediatric Bone Age Challenge data: Halabi SS, Prevedello LM, Kalpathy-Cramer J, et al. The RSNA",
            "Pediatric Bone Age Machine Learning Challenge. Radiology 2019;290:498-503. Research and education use only,",
            "no commercial use: these weights inherit that restriction.",
        ]
    lines += ["", "## Reproduce", "", "Hardware: 2-core CPU (AMD EPYC, AVX512-BF16; bf16 autocast), no GPU. Each stage",
              "starts from the previous stage's `segmenter.pt` (`--init`).", "", "```"]
    for i, st in enumerate(stages, 1):
        if i == len(stages) and pseudo:
            previous = stages[i - 2].get("train_config", {}).get("out", "STAGE1") if i > 1 else "STAGE1"
            lines.append(f"python -m boneage.segment pseudo --weights {previous}/segmenter.pt "
                         f"--limit {pseudo.get('candidates')}")
        cfg = dict(st.get("train_config", {}))
        lines.append(_train_command_line(cfg) + f"   # stage {i}: {st.get('steps_done')} steps, "
                     f"{st.get('wall_minutes', 0):.0f} min")
    lines += [
        f"python -m boneage.segment eval --n {syn.get('n_images')} --card --limitations data/models/segmenter/LIMITATIONS.txt"
        "   # metrics.json + this card",
        "python benchmarks/bench_segment.py",
        "```",
        "",
        "The learning-rate schedule (cosine) runs over the larger of steps done / `--steps` and elapsed / `--max-minutes`,",
        "so a time-limited run still anneals; to reproduce on another machine pass `--steps <steps done>` without",
        "`--max-minutes`.",
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
    lines += ["", "## Limitations", ""] + [f"* {x}" for x in metrics.get("limitations", [])]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Command line (``python -m boneage.segment``; ``boneage train segmenter`` / ``boneage segment``)
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
                        help="npz of pseudo-labelled real films (python -m boneage.segment pseudo)")
    parser.add_argument("--pseudo-fraction", type=float, default=d.pseudo_fraction,
                        help=f"share of samples from --pseudo-labels (default {d.pseudo_fraction})")
    parser.add_argument("--no-progress", action="store_true")


def train_command(args: argparse.Namespace) -> int:
    """Run :func:`train` from parsed ``boneage train segmenter`` arguments; print the weights path."""
    config = TrainConfig(out=args.out, steps=args.steps, max_minutes=args.max_minutes, size=args.size,
                         crop=args.crop, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         workers=args.workers, threads=args.threads, bf16=not args.no_bf16,
                         real_intensity=not args.no_real_intensity, init=args.init,
                         pseudo_labels=args.pseudo_labels, pseudo_fraction=args.pseudo_fraction,
                         progress=not args.no_progress)
    print(train(config))
    return 0


def segment_command(args: argparse.Namespace) -> int:
    """Run :func:`segment_paths` from parsed ``boneage segment`` arguments.

    Returns:
        0 all written, 1 some inputs failed, 2 an input path does not exist, 3 no weights.
    """
    from boneage.models import ModelNotAvailableError

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        print(f"boneage segment: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        segmenter = Segmenter.load(getattr(args, "weights", None))
    except ModelNotAvailableError as exc:
        print(f"boneage segment: {exc}", file=sys.stderr)
        return 3
    written, failed = segment_paths(args.inputs, args.out, segmenter, progress=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m boneage.segment train|eval ...``."""
    parser = argparse.ArgumentParser(prog="python -m boneage.segment")
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
    args = parser.parse_args(argv)
    if args.command == "train":
        return train_command(args)
    if args.command == "pseudo":
        stats = make_pseudo_labels(Segmenter.load(args.weights), args.out, limit=args.limit)
        Path(args.out).with_suffix(".json").write_text(json.dumps(stats))
        print(stats)
        print(args.out)
        return 0
    segmenter = Segmenter.load(args.weights)
    metrics: dict[str, Any] = {"version": VERSION, "weights_meta": segmenter.meta,
                               "synthetic": evaluate_synthetic(segmenter, n=args.n, progress=True)}
    print(json.dumps(metrics["synthetic"], indent=1))
    if not args.skip_real:
        try:
            metrics["real_keypoints"] = evaluate_keypoints(segmenter)
            print(json.dumps(metrics["real_keypoints"], indent=1))
        except FileNotFoundError as exc:
            print(f"real keypoint check skipped: {exc}", file=sys.stderr)
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

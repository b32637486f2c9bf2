"""Bone segmentation network: every structure of :mod:`boneage.anatomy` in a hand radiograph.

This module is the inference half (network, loading, reading a film); training, augmentation,
self-training, evaluation and the model card are in :mod:`boneage.training.segmenter`.

Design (see ``data/models/segmenter/MODEL_CARD.md`` for the numbers):

* **Network** -- a MONAI 2-D ``UNet`` (seven levels, 16..256 channels, batch norm), one input
  channel, :data:`boneage.anatomy.NUM_CLASSES` outputs. Small enough for < 1 s per image on
  two CPU cores; weights are shipped in fp16.
* **Geometry** -- inputs go through :func:`boneage.preprocess.prepare_model_input` (crop to the
  hand, squash to ``size x size``, percentile window), the same for training and inference, and
  the predicted label map is sent back to the original grid with
  :meth:`boneage.preprocess.CropTransform.mask_to_original`.
* **Orientation** -- the network was trained on upright left hands only; :meth:`Segmenter.read`
  reads a film as given and mirrored (and, where the fingers do not point up, turned by quarter
  turns) and keeps the reading that looks most like a left hand. :meth:`Segmenter.segment_with_info`
  reports whether the hand is seen mirrored (a right hand or a flipped film). Label ids are
  anatomical either way (digit 1 is always the thumb).

Public API: :class:`Segmenter`, :func:`build_network`, :func:`segment_paths`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from boneage import anatomy
from boneage.paths import MODELS_DIR
from boneage.postprocess import long_axis_of, reclaim_metacarpal_heads
from boneage.preprocess import MARKER_ROBUST_WINDOW, CropTransform, prepare_model_input

#: Folder of the shipped segmenter (weights, model card, metrics).
SEGMENTER_DIR = MODELS_DIR / "segmenter"
WEIGHTS_FILE = "segmenter.pt"
#: ONNX copy beside the weights (``python -m boneage.training.export``): runs without torch.
ONNX_FILE = "segmenter.onnx"
#: Version of the network weights (written into the weights file by training).
WEIGHTS_VERSION = "segmenter-5"
#: Version of what a reading gives: the weights plus the post-processing after them (since 4.1:
#: :func:`boneage.postprocess.reclaim_metacarpal_heads`). Everything measured from a reading is cached under it.
VERSION = "segmenter-5"
#: Image file suffixes accepted when a folder is given to :func:`segment_paths`.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")


# ------------------------------------------------------------------------------------------------
# Network
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkConfig:
    """Architecture and input geometry (stored inside the weights file).

    Attributes:
        size: side of the square model input in px.
        channels: UNet channels per level (seven levels: the 6 x 6 bottom of a 384 input sees
            the whole hand, which telling the digits apart needs).
        num_res_units: residual units per UNet block (0: one convolution per level, three times
            faster to train on a CPU than 1).
        norm: MONAI norm name.
        window: intensity-window percentiles of the model input (weights saved before this was
            stored get the marker-robust default; they were trained with (0.5, 99.5), see the card).
    """

    size: int = 384
    channels: tuple[int, ...] = (16, 32, 64, 128, 256, 256, 256)
    num_res_units: int = 0
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


# ------------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------------
#: Model inputs per forward pass. One: on two CPU cores (channels-last) batching is no faster per
#: image, and each more image costs ~60 MB of logits and probabilities at the peak of a film.
FORWARD_BATCH = 1

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


@dataclass
class GridReading:
    """One segmentation of a model input, as chosen by the orientation search.

    Attributes:
        label_map: cleaned uint8 label map (model grid, the input's own orientation), mended by
            :mod:`boneage.postprocess` (so not always the arg-max of ``probabilities``).
        probabilities: ``(NUM_CLASSES, size, size)`` softmax probabilities behind it.
        mirrored: the mirrored image gave this reading.
        turns: quarter turns (``np.rot90``) applied before segmenting.
        score: :func:`orientation_score` of the reading.
        every_turn_read: the search read every quarter turn (so a second search can add nothing).
    """

    label_map: np.ndarray
    probabilities: np.ndarray
    mirrored: bool
    turns: int
    score: float
    every_turn_read: bool = False


@dataclass
class FilmReading:
    """A film read by the segmenter on its model grid (see :meth:`Segmenter.read`).

    Attributes:
        grid: the chosen :class:`GridReading` (label map and probabilities, model grid).
        model_input: the float32 ``size x size`` input it was read from.
        transform: model grid -> film coordinates.
        mirrored: the hand is seen mirrored (``None`` when it cannot be told).
        finger_angle_deg: direction the fingers point, degrees counter-clockwise from "up".
        seconds: wall time.
    """

    grid: GridReading
    model_input: np.ndarray
    transform: CropTransform
    mirrored: bool | None
    finger_angle_deg: float | None
    seconds: float

    @property
    def spacing(self) -> tuple[float, float]:
        """``(row, col)`` film pixels per model pixel (true directions on squashed grids)."""
        return (self.transform.row_scale, self.transform.col_scale)

    def label_map(self) -> np.ndarray:
        """The label map on the film's own pixel grid (uint8)."""
        return self.transform.mask_to_original(self.grid.label_map).astype(np.uint8)


class Segmenter:
    """The trained bone segmentation network (CPU inference).

    Example:
        >>> seg = Segmenter.load()                                   # doctest: +SKIP
        >>> label_map = seg.segment(load_radiograph("hand.png"))     # doctest: +SKIP
    """

    def __init__(self, network: Any, config: NetworkConfig, meta: dict | None = None, device: str = "cpu") -> None:
        from boneage.runtime import runnable

        self.network, self._forward = runnable(network, device)
        self.device = str(device)
        self.config = config
        self.meta = meta or {}

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", exported: bool = True) -> Segmenter:
        """Load weights written by :func:`boneage.training.segmenter.save_weights` (fp16 state dict + config).

        Args:
            path: weights file (default the shipped ``data/models/segmenter/segmenter.pt``).
            device: ``"cpu"``, or a torch device (then the network runs in torch).
            exported: on a CPU, run the ONNX copy beside the weights (:data:`ONNX_FILE`) when it
                was exported from them (same numbers; neither torch nor MONAI is imported).

        Returns:
            A ready :class:`Segmenter` (fp32).
        """
        path = Path(path) if path else SEGMENTER_DIR / WEIGHTS_FILE
        if not path.is_file():
            from boneage.models import ModelNotAvailableError

            raise ModelNotAvailableError(f"segmenter weights not found at {path}")
        from boneage.runtime import load_checkpoint

        blob, network = load_checkpoint(path, ONNX_FILE, exported, device)
        cfg = blob["network"]
        config = NetworkConfig(size=int(cfg["size"]), channels=tuple(cfg["channels"]),
                               num_res_units=int(cfg["num_res_units"]), norm=str(cfg["norm"]),
                               window=tuple(cfg.get("window", MARKER_ROBUST_WINDOW)))
        if network is None:
            network = build_network(config)
            network.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
        return cls(network, config, meta=blob.get("meta", {}), device=device)

    def logits(self, model_inputs: np.ndarray) -> np.ndarray:
        """Network logits of a batch of prepared inputs.

        Args:
            model_inputs: float32 ``(B, size, size)`` arrays from :func:`prepare_model_input`.

        Returns:
            float32 ``(B, NUM_CLASSES, size, size)``.
        """
        x = np.ascontiguousarray(model_inputs, dtype=np.float32)[:, None]
        return self._forward(x)[0]

    def predict_batch(self, model_inputs: np.ndarray, probabilities: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Label maps (and softmax probabilities) of several prepared inputs in one forward pass.

        Args:
            model_inputs: float32 ``(B, size, size)`` arrays from :func:`prepare_model_input`.
            probabilities: also return the probabilities (the tilted re-reads need labels only).

        Returns:
            ``(labels, probs)``: uint8 ``(B, size, size)`` arg-max labels and float32
            ``(B, NUM_CLASSES, size, size)`` probabilities (``None`` when not asked for).
        """
        logits = self.logits(model_inputs)
        peak = logits.max(axis=1)
        # Softmax is monotonic: the arg-max of the logits is the label. Comparing each class map
        # with the per-pixel maximum, last class first, leaves the first maximal class (as argmax
        # does) and is about 3 times faster than numpy's arg-max over the class axis.
        labels = np.zeros(peak.shape, dtype=np.uint8)
        for c in range(logits.shape[1] - 1, -1, -1):
            labels[logits[:, c] == peak] = c
        if not probabilities:
            return labels, None
        # Softmax in place (one logits-sized array, not three).
        logits -= peak[:, None]
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return labels, logits

    def predict_probabilities(self, model_input: np.ndarray) -> np.ndarray:
        """Class probabilities in model-input geometry for a prepared ``size x size`` input.

        Args:
            model_input: float32 array from :func:`prepare_model_input`.

        Returns:
            float32 ``(NUM_CLASSES, size, size)`` softmax probabilities.
        """
        return self.predict_batch(np.asarray(model_input)[None])[1][0]

    def predict_model_grid(self, model_input: np.ndarray) -> np.ndarray:
        """Label map in model-input geometry for a prepared ``size x size`` input (no orientation search).

        Args:
            model_input: float32 array from :func:`prepare_model_input`.

        Returns:
            uint8 ``size x size`` label map.
        """
        return self.predict_probabilities(model_input).argmax(0).astype(np.uint8)

    def read_model_grid(self, model_input: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0),
                        orientations: bool = True, every_turn: bool = False,
                        mirrored: bool | None = None) -> GridReading:
        """Cleaned label map of a prepared input, with the orientation search.

        The network was trained on left hands only (digit identity must never hinge on telling a
        left hand from a right one), so a mirrored film -- a right hand, or a flipped left hand --
        is segmented both as it is and mirrored, and the reading that looks more like a left hand
        is kept (:func:`orientation_score`); a film whose fingers point sideways or down is turned
        by the nearest quarter turn and segmented again, and one that does not look like a hand at
        all as given (score below ``QUARTER_TURN_TRIGGER``) is read at every quarter turn. A turned
        reading replaces the film as given only when it scores ``QUARTER_TURN_MARGIN`` more, and, from
        that every-turn search, only when it looks like a hand itself (``QUARTER_TURN_TRIGGER``): a film
        that is no hand in any orientation is kept as given.

        Args:
            model_input: float32 array from :func:`prepare_model_input`.
            spacing: ``(row, col)`` original pixels per model pixel (true directions on squashed grids).
            orientations: try the mirrored image and quarter turns (otherwise segment as given).
            every_turn: read every quarter turn whatever the first reading looks like (used when
                the hand check doubts the first reading: an upside-down hand can read as a poor
                upright one).
            mirrored: the mirror an earlier reading of the same hand chose (``None``: search it).
                Given, only that mirror is read: half the forward passes (turning a film upright
                does not change which hand it shows).

        Returns:
            :class:`GridReading`: label map and probabilities in the input's own orientation.
        """
        mirrors = (False, True) if mirrored is None else (bool(mirrored),)
        candidates = [(m, 0) for m in mirrors] if orientations else [(False, 0)]
        best = upright = None
        every_turn_read = False
        for round_ in range(2):
            inputs = [np.rot90(model_input[:, ::-1] if mirror else model_input, turns) for mirror, turns in candidates]
            outputs: list[tuple[np.ndarray, np.ndarray]] = []
            for start in range(0, len(inputs), FORWARD_BATCH):
                batch_labels, batch_probs = self.predict_batch(np.stack(inputs[start:start + FORWARD_BATCH]))
                outputs += list(zip(batch_labels, batch_probs))
            for (mirror, turns), (raw_labels, probs) in zip(candidates, outputs):
                labels = clean_label_map(close_label_map(raw_labels))
                turned = spacing[::-1] if turns % 2 else spacing
                score = orientation_score(labels, probs, turned) - (MIRROR_MARGIN if mirror else 0.0)
                # Back to the input's own orientation (label ids stay anatomical).
                labels = np.rot90(labels, -turns)
                probs = np.rot90(probs, -turns, axes=(1, 2))
                if mirror:
                    labels, probs = labels[:, ::-1], probs[:, :, ::-1]
                if best is None or score > best.score:
                    best = GridReading(np.ascontiguousarray(labels), probs, mirror, turns, score)
            if not orientations or round_ == 1:
                break
            upright = best
            _, angle = hand_orientation(best.label_map, spacing)
            every_turn_read = every_turn or (angle is None or abs(angle) <= 60) and best.score < QUARTER_TURN_TRIGGER
            if every_turn:
                candidates = [(mirror, turns) for turns in (1, 2, 3) for mirror in mirrors]
            elif angle is not None and abs(angle) > 60:
                # Fingers pointing sideways or down: try the quarter turn that puts them up. They
                # point ``angle`` degrees counter-clockwise of up; np.rot90 turns counter-clockwise,
                # so turning back by the nearest quarter is -round(angle / 90).
                turns = int(-np.round(angle / 90.0)) % 4
                candidates = [(mirror, turns) for mirror in mirrors]
            elif best.score < QUARTER_TURN_TRIGGER:
                # Read as given, the film does not look like a hand at all: a network that only saw
                # upright hands reads a sideways one as scattered bone. Try every quarter turn.
                candidates = [(mirror, turns) for turns in (1, 2, 3) for mirror in mirrors]
            else:
                break
        if upright is not None and best.turns and (best.score < upright.score + QUARTER_TURN_MARGIN
                                                   or (every_turn_read and best.score < QUARTER_TURN_TRIGGER)):
            # A turned reading must be clearly better than the film as given and, found by trying every
            # turn of a film that is no hand as given, look like a hand itself (noise is not turned).
            best = upright
        best.every_turn_read = every_turn_read
        best.label_map = reclaim_metacarpal_heads(best.label_map, spacing)
        return best

    def read(self, image: Any, orientations: bool = True, every_turn: bool = False,
             mirrored: bool | None = None) -> FilmReading:
        """Segment one radiograph on the model grid, with everything later stages decide from.

        Args:
            image: a :class:`boneage.io.Radiograph` or a 2-D array (bone bright).
            orientations: search mirrored and quarter-turned readings (see :meth:`read_model_grid`).
            every_turn: read every quarter turn (see :meth:`read_model_grid`).
            mirrored: the mirror an earlier reading of the same hand chose (see :meth:`read_model_grid`).

        Returns:
            :class:`FilmReading`.
        """
        start = time.perf_counter()
        pixels = getattr(image, "pixels", image)
        model_input, transform = prepare_model_input(pixels, self.config.size, window=self.config.window)
        spacing = (transform.row_scale, transform.col_scale)
        reading = self.read_model_grid(model_input, spacing, orientations, every_turn, mirrored)
        mirrored, angle = hand_orientation(reading.label_map, spacing)
        if mirrored is None and orientations:
            mirrored = reading.mirrored
        return FilmReading(reading, model_input, transform, mirrored, angle, time.perf_counter() - start)

    def reread_tilted(self, reading: FilmReading, angle_deg: float) -> np.ndarray:
        """Segment a film's model input again, tilted by ``angle_deg``, in the orientation its
        reading chose: one view of test-time augmentation. A chain of discrete decisions
        (an epiphysis found or not, fused or not) can flip with a few degrees of tilt; averaging
        the ages of a few tilted views steadies the multi-step estimate.

        Args:
            reading: the film's :class:`FilmReading`.
            angle_deg: counter-clockwise tilt of the model input, degrees.

        Returns:
            uint8 label map on the film's own pixel grid (tilted back).
        """
        return next(self.reread_tilted_many(reading, (angle_deg,)))

    def reread_tilted_many(self, reading: FilmReading, angles_deg: Iterable[float]) -> Iterator[np.ndarray]:
        """:meth:`reread_tilted` for several tilts, segmented :data:`FORWARD_BATCH` per forward pass.

        Args:
            reading: the film's :class:`FilmReading`.
            angles_deg: counter-clockwise tilts of the model input, degrees.

        Returns:
            One uint8 label map per tilt, on the film's own pixel grid (tilted back), made as the
            iterator is advanced: one film-sized map alive at a time (50 MB on a 7,000 x 7,500 film).
        """
        from scipy import ndimage

        angles = [float(a) for a in angles_deg]
        if not angles:
            return iter(())
        grid = reading.grid
        x = reading.model_input[:, ::-1] if grid.mirrored else reading.model_input
        x = np.rot90(x, grid.turns)
        fill = float(np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])))
        tilted = np.stack([ndimage.rotate(x, a, reshape=False, order=1, mode="constant", cval=fill) for a in angles])
        raw = np.concatenate([self.predict_batch(tilted[i:i + FORWARD_BATCH].astype(np.float32, copy=False),
                                                 probabilities=False)[0] for i in range(0, len(angles), FORWARD_BATCH)])
        return self._tilted_back(reading, angles, raw)

    @staticmethod
    def _tilted_back(reading: FilmReading, angles: list[float], raw: np.ndarray) -> Iterator[np.ndarray]:
        """Tilted-view labels on the model grid -> cleaned, mended label maps on the film grid, one at a time."""
        from scipy import ndimage

        grid = reading.grid
        for angle, labels in zip(angles, raw):
            labels = ndimage.rotate(labels, -angle, reshape=False, order=0)
            labels = clean_label_map(close_label_map(labels))
            labels = np.rot90(labels, -grid.turns)
            if grid.mirrored:
                labels = labels[:, ::-1]
            labels = reclaim_metacarpal_heads(np.ascontiguousarray(labels), reading.spacing)
            yield reading.transform.mask_to_original(np.ascontiguousarray(labels)).astype(np.uint8)

    def segment_with_info(self, image: Any, orientations: bool = True) -> SegmentationResult:
        """Segment one radiograph and report its orientation.

        Args:
            image: a :class:`boneage.io.Radiograph` or a 2-D array (bone bright).
            orientations: search mirrored and quarter-turned readings (see :meth:`read_model_grid`).

        Returns:
            :class:`SegmentationResult` with the label map at the input's own size.
        """
        start = time.perf_counter()
        reading = self.read(image, orientations)
        return SegmentationResult(reading.label_map(), reading.mirrored, reading.finger_angle_deg,
                                  time.perf_counter() - start)

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


#: Below this :func:`orientation_score` (about four digits laid out as fingers) a reading does not
#: look like an upright hand and every quarter turn is tried. Upright real films score about 7
#: (lowest seen 4.3), quarter-turned ones at most 3.9 as given.
QUARTER_TURN_TRIGGER = 4.0
#: ... and a turned reading is kept only when it scores this much more than the film as given
#: (one more digit laid out as a finger).
QUARTER_TURN_MARGIN = 1.0
#: A mirrored reading must beat the film as given by this much of :func:`orientation_score`:
#: bone age is read on left hands, so a film is taken as given unless the mirror is clearly better.
MIRROR_MARGIN = 0.5


def _long_axis(label_map: np.ndarray, bone: str, spacing: tuple[float, float]) -> np.ndarray | None:
    rr, cc = np.nonzero(np.isin(label_map, anatomy.bone_labels(bone)))
    if rr.size < 10:
        return None
    return long_axis_of(np.stack([rr * spacing[0], cc * spacing[1]], 1))


def thumb_divergence_deg(label_map: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float | None:
    """How much more the first metacarpal diverges from the third than the fifth does (degrees).

    The thumb's ray stands off the hand by some 30-50 degrees, the little finger's by 10-20: a
    reading that put the thumb's labels on the little finger (a mirrored hand read as a left one)
    gives a negative value.

    Args:
        label_map: label map.
        spacing: ``(row, col)`` pixel size (true angles on squashed grids).

    Returns:
        Degrees, or ``None`` when a metacarpal is missing.
    """
    axes = [_long_axis(label_map, f"metacarpal_{d}", spacing) for d in (1, 3, 5)]
    if any(a is None for a in axes):
        return None
    a1, a3, a5 = axes
    angle = lambda u, v: float(np.degrees(np.arccos(min(1.0, abs(float(u @ v))))))  # noqa: E731
    return angle(a1, a3) - angle(a5, a3)


def orientation_score(label_map: np.ndarray, probabilities: np.ndarray,
                      spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """How much a reading looks like a correctly oriented left hand (higher is better).

    The network only ever saw left hands; shown a mirrored one, it still finds bone but confuses
    which digit and row it is: its bones come out fragmented and out of a finger's order, and the
    thumb's labels land on the little finger. The score counts digits laid out as a finger
    (:func:`boneage.measure.finger_rays`), adds one when the thumb diverges from the hand more than
    the little finger does (:func:`thumb_divergence_deg`; minus one when less), the share of
    tubular bones found in one piece, and half the mean confidence on bone pixels.

    Args:
        label_map: cleaned label map (model grid).
        probabilities: ``(NUM_CLASSES, H, W)`` softmax probabilities it came from.
        spacing: ``(row, col)`` pixel size of the grid.

    Returns:
        The score.
    """
    f = reading_figures(label_map, probabilities, spacing)
    return f["finger_rays"] + f["thumb_side"] + f["whole_share"] + 0.5 * f["confidence"]


def reading_figures(label_map: np.ndarray, probabilities: np.ndarray,
                    spacing: tuple[float, float] = (1.0, 1.0)) -> dict[str, float]:
    """How hand-like a reading is: the figures :func:`orientation_score` adds up and the hand check
    (:func:`boneage.handcheck.hand_features`) starts from.

    Args:
        label_map: cleaned label map (model grid).
        probabilities: ``(NUM_CLASSES, H, W)`` softmax probabilities it came from.
        spacing: ``(row, col)`` pixel size of the grid.

    Returns:
        ``finger_rays`` (digits laid out as a finger, 0-5), ``thumb_side`` (+1 the thumb diverges
        more than the little finger, -1 less, 0 unknown), ``whole_share`` / ``present_share``
        (tubular bones in one piece / found, of 19) and ``confidence`` (mean top probability on
        bone pixels); all 0 for a reading with no bone.
    """
    from scipy import ndimage

    from boneage.measure import finger_rays

    figures = dict.fromkeys(("finger_rays", "thumb_side", "whole_share", "present_share", "confidence"), 0.0)
    bone = label_map > 0
    if not bone.any():
        return figures
    boxes = ndimage.find_objects(label_map.astype(np.int32), max_label=anatomy.NUM_CLASSES - 1)
    whole = present = 0
    for bone_name in anatomy.TUBULAR_BONES:
        label = anatomy.shaft_label(bone_name)
        box = boxes[label - 1]
        if box is None:
            continue
        present += 1
        whole += ndimage.label(label_map[box] == label)[1] == 1
    divergence = thumb_divergence_deg(label_map, spacing)
    figures.update(
        finger_rays=float(finger_rays(label_map)),
        thumb_side=0.0 if divergence is None else float(np.sign(divergence)),
        whole_share=whole / len(anatomy.TUBULAR_BONES),
        present_share=present / len(anatomy.TUBULAR_BONES),
        confidence=float(probabilities.max(0)[bone].mean()),
    )
    return figures


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


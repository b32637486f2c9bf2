"""Tests of the bone segmentation network at inference (boneage.segment) and the `boneage segment` verb.

Training, self-training and evaluation are tested in test_training_segmenter.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from boneage import anatomy, segment
from boneage.cli import main as cli_main
from boneage.synth import generate_hand
from boneage.training.segmenter import EVAL_SEED, dice
from conftest import SEGMENTER_WEIGHTS, needs_segmenter_weights
from test_postprocess import swallow_head

torch = pytest.importorskip("torch")

def test_network_outputs_every_class() -> None:
    net = segment.build_network(segment.NetworkConfig(size=64, channels=(4, 8, 16, 32, 64)))
    out = net(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, anatomy.NUM_CLASSES, 64, 64)


def test_hand_orientation_detects_mirroring() -> None:
    labels = generate_hand(7, 3, size=256).label_map
    mirrored, angle = segment.hand_orientation(labels)
    assert mirrored is False and abs(angle) < 45
    assert segment.hand_orientation(labels[:, ::-1].copy())[0] is True
    assert segment.hand_orientation(np.zeros((32, 32), np.uint8)) == (None, None)


def test_clean_label_map_removes_stray_fragments() -> None:
    labels = generate_hand(7, 4, size=256).label_map.copy()
    label = anatomy.shaft_label("metacarpal_3")
    labels[2:4, 2:4] = label  # a stray 4-pixel fragment far from the bone
    cleaned = segment.clean_label_map(labels)
    assert (cleaned[2:4, 2:4] == 0).all()
    assert (cleaned == label).sum() == (labels == label).sum() - 4


@needs_segmenter_weights
def test_orientation_search_reads_mirrored_films(shipped_segmenter: segment.Segmenter) -> None:
    hand = generate_hand(EVAL_SEED, 3, size=384)
    whole = lambda labels, bone: np.isin(labels, anatomy.bone_labels(bone))  # noqa: E731
    plain = shipped_segmenter.segment_with_info(hand.image)
    assert plain.mirrored is False and abs(plain.finger_angle_deg) < 45
    # A right hand (the mirrored film): labelled as the same anatomical bones, and said.
    mirrored = shipped_segmenter.segment_with_info(np.ascontiguousarray(hand.image[:, ::-1]))
    assert mirrored.mirrored is True
    truth = hand.label_map[:, ::-1]
    assert dice(whole(mirrored.label_map, "metacarpal_1"), whole(truth, "metacarpal_1")) > 0.7
    assert dice(whole(mirrored.label_map, "metacarpal_5"), whole(truth, "metacarpal_5")) > 0.7
    # Without the search the network reads the film as given (left hand, upright).
    assert shipped_segmenter.segment_with_info(hand.image, orientations=False).mirrored is False


@needs_segmenter_weights
def test_a_known_mirror_is_read_alone_with_the_same_answer(shipped_segmenter: segment.Segmenter,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The upright re-read of a turned film passes the mirror its first reading chose: one forward
    # pass instead of two, and the reading the full search would have kept.
    right_hand = np.ascontiguousarray(generate_hand(EVAL_SEED, 3, size=384).image[:, ::-1])
    full = shipped_segmenter.read(right_hand)
    assert full.grid.mirrored is True
    passes = []
    forward = shipped_segmenter._forward
    monkeypatch.setattr(shipped_segmenter, "_forward", lambda *a: passes.append(len(a[0])) or forward(*a))
    known = shipped_segmenter.read(right_hand, mirrored=True)
    assert passes == [1] and known.grid.mirrored is True
    assert np.array_equal(known.grid.label_map, full.grid.label_map)


@needs_segmenter_weights
@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_orientation_search_turns_a_sideways_film_back(shipped_segmenter: segment.Segmenter,
                                                        quarter_turns: int) -> None:
    # The search is not perfect: over 30 hands of this seed x 3 turns it reads 2-3 of 90 films wrong
    # (mirrored, fingers 40-50 degrees off), before and after the hand layout of issue #22 changed
    # which ones; hand 3 became one of them, so the test uses hand 5.
    hand = generate_hand(EVAL_SEED, 5, size=384)
    whole = lambda labels, bone: np.isin(labels, anatomy.bone_labels(bone))  # noqa: E731
    # A film turned by quarters (1: fingers pointing left, 2: down): turned back, segmented, said.
    turned = shipped_segmenter.segment_with_info(np.ascontiguousarray(np.rot90(hand.image, quarter_turns)))
    expected_angle = 90.0 * quarter_turns if quarter_turns < 3 else -90.0
    assert turned.finger_angle_deg is not None
    assert abs((turned.finger_angle_deg - expected_angle + 180) % 360 - 180) < 30
    truth = np.rot90(hand.label_map, quarter_turns)
    assert dice(whole(turned.label_map, "proximal_phalanx_3"), whole(truth, "proximal_phalanx_3")) > 0.7


@needs_segmenter_weights
def test_a_film_that_is_no_hand_in_any_orientation_is_not_turned(shipped_segmenter: segment.Segmenter) -> None:
    # Smooth noise reads as no hand at any quarter turn: the search runs (score below the trigger).
    # For this seed `segmenter-5` scores a turned reading 2.7 against 1.6 as given: better by the margin,
    # but no hand either, so the film is kept as given.
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.random((384, 384)), 8).astype(np.float32)
    config = shipped_segmenter.config
    model_input, _ = segment.prepare_model_input(noise, config.size, window=config.window)
    as_given = shipped_segmenter.read_model_grid(model_input, orientations=False)
    assert as_given.score < segment.QUARTER_TURN_TRIGGER
    assert shipped_segmenter.read_model_grid(model_input).turns == 0


def test_thumb_divergence_tells_thumb_from_little_finger() -> None:
    labels = generate_hand(EVAL_SEED, 5, size=256).label_map
    assert segment.thumb_divergence_deg(labels) > 10
    swapped = labels.copy()
    for a, b in zip(anatomy.bone_labels("metacarpal_1"), anatomy.bone_labels("metacarpal_5")):
        swapped[labels == a], swapped[labels == b] = b, a
    assert segment.thumb_divergence_deg(swapped) < -10
    assert segment.thumb_divergence_deg(np.zeros((16, 16), np.uint8)) is None


@needs_segmenter_weights
def test_shipped_weights_are_registered_and_small() -> None:
    from boneage import models

    entry = models.get("segmenter")
    assert entry.weights_path == SEGMENTER_WEIGHTS
    assert entry.version == segment.VERSION
    # The shipped file must be the weights of this code's version, not an older file left behind.
    assert torch.load(SEGMENTER_WEIGHTS, map_location="cpu", weights_only=False)["version"] == segment.WEIGHTS_VERSION
    assert segment.VERSION.startswith(segment.WEIGHTS_VERSION)
    assert SEGMENTER_WEIGHTS.stat().st_size < 15e6
    assert (segment.SEGMENTER_DIR / "MODEL_CARD.md").is_file()


@needs_segmenter_weights
def test_segment_cli_writes_one_label_map_per_input(tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    shapes = {}
    for i, size in enumerate((300, 420)):
        hand = generate_hand(EVAL_SEED, 10 + i, size=size)
        Image.fromarray((hand.image * 255).astype(np.uint8)).save(images / f"hand{i}.png")
        shapes[f"hand{i}"] = hand.image.shape
    out = tmp_path / "out"
    assert cli_main(["segment", str(images), "--out", str(out)]) == 0
    for stem, shape in shapes.items():
        written = np.asarray(Image.open(out / f"{stem}.png"))
        assert written.shape == shape
        assert written.max() < anatomy.NUM_CLASSES and written.max() > 0


def test_segment_cli_missing_input_is_usage_error(tmp_path: Path) -> None:
    assert cli_main(["segment", str(tmp_path / "nope.png"), "--out", str(tmp_path)]) == 2


class _FixedSegmenter(segment.Segmenter):
    """A segmenter whose network always answers with one label map (for the reading's plumbing)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def predict_batch(self, model_inputs: np.ndarray, probabilities: bool = True):
        n = len(model_inputs)
        probs = np.eye(anatomy.NUM_CLASSES, dtype=np.float32)[self.labels].transpose(2, 0, 1)
        return np.repeat(self.labels[None], n, 0), (np.repeat(probs[None], n, 0) if probabilities else None)


def test_a_reading_gives_swallowed_heads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from boneage.preprocess import CropTransform

    truth = generate_hand(11, 5, size=128, bone_age_months=150, sex="F").label_map
    truth = np.asarray(Image.fromarray(truth).resize((128, 128), Image.NEAREST))
    swallowed = swallow_head(truth, 5)
    head = anatomy.epiphysis_label("metacarpal_5")
    fixed = _FixedSegmenter(swallowed)
    grid = fixed.read_model_grid(np.zeros((128, 128), np.float32), orientations=False)
    assert (grid.label_map == head).sum() > 0.6 * (truth == head).sum()
    # the tilted rereads of test-time augmentation mend the same way
    reading = segment.FilmReading(grid, np.zeros((128, 128), np.float32), CropTransform(0, 0, 128, 128, 128, (128, 128)),
                                  False, 0.0, 0.0)
    tilted = next(segment.Segmenter._tilted_back(reading, [0.0], swallowed[None]))
    assert (tilted == head).sum() > 0.6 * (truth == head).sum()
    # both read lengths with the grid's own spacing (a film twice as tall as wide: rows 2 px, columns 1 px)
    spacings: list[tuple[float, float]] = []
    real_rule = segment.reclaim_metacarpal_heads
    monkeypatch.setattr(segment, "reclaim_metacarpal_heads", lambda m, sp: spacings.append(tuple(sp)) or real_rule(m, sp))
    grid = fixed.read_model_grid(np.zeros((128, 128), np.float32), spacing=(2.0, 1.0), orientations=False)
    tall = segment.FilmReading(grid, np.zeros((128, 128), np.float32), CropTransform(0, 0, 256, 128, 128, (256, 128)),
                               False, 0.0, 0.0)
    next(segment.Segmenter._tilted_back(tall, [0.0], swallowed[None]))
    assert spacings == [(2.0, 1.0), (2.0, 1.0)]

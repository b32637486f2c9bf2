"""Tests of the bone segmentation network (boneage.segment) and its CLI verbs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from boneage import anatomy, segment
from boneage.cli import main as cli_main
from boneage.paths import rsna_dev_dir
from boneage.preprocess import prepare_model_input
from boneage.synth import generate_hand

torch = pytest.importorskip("torch")

SHIPPED = segment.SEGMENTER_DIR / segment.WEIGHTS_FILE
needs_weights = pytest.mark.skipif(not SHIPPED.is_file(), reason="segmenter weights not trained/shipped yet")


@pytest.fixture(scope="module")
def shipped() -> segment.Segmenter:
    return segment.Segmenter.load()


def test_network_outputs_every_class() -> None:
    net = segment.build_network(segment.NetworkConfig(size=64, channels=(4, 8, 16, 32, 64)))
    out = net(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, anatomy.NUM_CLASSES, 64, 64)


def test_label_map_to_model_inverts_mask_to_original() -> None:
    hand = generate_hand(1000, 0, size=256)
    _, transform = prepare_model_input(hand.image, 128)
    small = segment.label_map_to_model(hand.label_map, transform)
    assert small.shape == (128, 128)
    back = transform.mask_to_original(small)
    assert back.shape == hand.label_map.shape
    # Round trip through a coarser grid keeps most bone pixels.
    bone = hand.label_map > 0
    assert segment.dice(back > 0, bone) > 0.8


def test_augmentation_keeps_image_and_labels_aligned() -> None:
    rng = np.random.default_rng(0)
    hand = generate_hand(1000, 1, size=256)
    for _ in range(4):
        x, y = segment.augment_hand(rng, hand.image, hand.label_map, 96)
        assert x.shape == y.shape == (96, 96)
        assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
        assert set(np.unique(y)) <= set(range(anatomy.NUM_CLASSES))
        if (y > 0).any() and (y == 0).any():
            # Labelled bone is bright (alignment sanity check; film frames can be brighter still).
            assert x[y > 0].mean() > np.percentile(x, 25)


def test_tiny_training_decreases_loss() -> None:
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pairs = [segment.augment_hand(rng, generate_hand(1000, i, size=192).image,
                                  generate_hand(1000, i, size=192).label_map, 64) for i in range(2)]
    x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
    y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.int64))
    net = segment.build_network(segment.NetworkConfig(size=64, channels=(8, 16, 32, 64, 128)))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_train_writes_loadable_fp16_weights(tmp_path: Path) -> None:
    config = segment.TrainConfig(out=str(tmp_path), steps=2, size=64, crop=64, batch_size=2, workers=0,
                                 channels=(4, 8, 16, 32, 64), real_intensity=False, progress=False)
    path = segment.train(config)
    blob = torch.load(path, map_location="cpu", weights_only=False)
    assert all(v.dtype == torch.float16 for v in blob["state_dict"].values() if v.is_floating_point())
    model = segment.Segmenter.load(path)
    image = generate_hand(7, 0, size=160).image
    assert model.segment(image).shape == image.shape
    assert json.loads((tmp_path / "train_log.json").read_text())["meta"]["steps_done"] >= 1


def test_reproduce_command_repeats_non_default_settings() -> None:
    config = asdict(segment.TrainConfig(out="/runs/s2", init="/runs/s1/segmenter.pt", bf16=False,
                                        pseudo_labels="/runs/p.npz", pseudo_fraction=0.5))
    line = segment._train_command_line(config)
    assert line.startswith("boneage train segmenter --out /runs/s2")
    assert "--init /runs/s1/segmenter.pt" in line and "--pseudo-fraction 0.5" in line
    assert line.endswith("--no-bf16")
    assert "--no-bf16" not in segment._train_command_line(asdict(segment.TrainConfig()))


def test_model_card_describes_each_stage_as_trained() -> None:
    def stage(**cfg) -> dict:
        return {"train_config": asdict(segment.TrainConfig(**cfg)), "steps_done": 10, "wall_minutes": 1.0,
                "bf16_autocast": False}

    second = stage(out="/runs/s2", init="/runs/s1/segmenter.pt", bf16=False, real_bone_look_p=0.5)
    second["init_meta"] = stage(out="/runs/s1", bf16=False)
    card = segment.model_card({"weights_meta": second, "synthetic": {"n_images": 2, "seed": segment.EVAL_SEED}})
    assert "in stage(s) 2 also a real film's bone look" in card
    assert "fp32 (the CPU had no native bf16" in card
    assert "boneage train segmenter --out /runs/s1 --no-bf16   # stage 1" in card
    plain = segment.model_card({"weights_meta": stage(), "synthetic": {"n_images": 2, "seed": segment.EVAL_SEED}})
    assert "bone look" not in plain
    # Stages trained on different CPUs: each stage's precision is said, not the first one's for all.
    third = stage(out="/runs/s3", init="/runs/s2/segmenter.pt")
    third["bf16_autocast"] = True
    third["init_meta"] = second
    mixed = segment.model_card({"weights_meta": third, "synthetic": {"n_images": 2, "seed": segment.EVAL_SEED}})
    assert "stage(s) 1, 2 in fp32" in mixed and "stage(s) 3 with bf16 autocast" in mixed


def test_masked_loss_matches_monai_and_skips_ignored_pixels() -> None:
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    logits = torch.randn(2, anatomy.NUM_CLASSES, 24, 24)
    target = torch.randint(0, anatomy.NUM_CLASSES, (2, 1, 24, 24))
    expected = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, target)
    assert torch.allclose(segment.masked_dice_ce_loss(logits, target), expected, atol=1e-5)
    # Ignored pixels carry no signal: changing the logits there changes neither loss nor gradient.
    ignored = target.clone()
    ignored[:, :, :12] = segment.IGNORE
    other = logits.clone()
    other[:, :, :12] = torch.randn_like(other[:, :, :12]) * 5
    a, b = logits.clone().requires_grad_(), other.clone().requires_grad_()
    loss_a, loss_b = segment.masked_dice_ce_loss(a, ignored), segment.masked_dice_ce_loss(b, ignored)
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    loss_a.backward()
    assert float(a.grad[:, :, :12].abs().max()) == 0.0


def test_augmentation_keeps_ignore_labels() -> None:
    rng = np.random.default_rng(3)
    hand = generate_hand(1000, 2, size=256)
    labels = hand.label_map.copy()
    labels[np.isin(labels, anatomy.bone_labels("metacarpal_3"))] = segment.IGNORE
    for _ in range(4):
        _, y = segment.augment_hand(rng, hand.image, labels, 96)
        assert set(np.unique(y)) <= set(range(anatomy.NUM_CLASSES)) | {segment.IGNORE}
        assert not np.isin(y, anatomy.bone_labels("metacarpal_3")).any()


def test_pseudo_label_target_trusts_good_bones_and_ignores_the_rest() -> None:
    hand = generate_hand(1000, 5, size=384, bone_age_months=150)
    labels = hand.label_map
    probs = np.zeros((anatomy.NUM_CLASSES, *labels.shape), np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), 1.0, axis=0)
    bounds = segment.length_ratio_bounds(n=40)
    target, trusted = segment.pseudo_label_target(labels, probs, (1.0, 1.0), bounds)
    assert len([b for b in trusted if b in anatomy.TUBULAR_BONES]) >= 17
    assert (target[labels == 0] == 0).all()  # confident background stays background
    # Relabel the fourth proximal phalanx as the third: both become untrusted and ignored.
    broken = labels.copy()
    for a, b in zip(anatomy.bone_labels("proximal_phalanx_4"), anatomy.bone_labels("proximal_phalanx_3")):
        broken[labels == a] = b
    target, trusted = segment.pseudo_label_target(broken, probs, (1.0, 1.0), bounds)
    assert "proximal_phalanx_3" not in trusted
    assert (target[np.isin(broken, anatomy.bone_labels("proximal_phalanx_3"))] == segment.IGNORE).all()
    assert "metacarpal_2" in trusted
    # A label that spilled across a joint (the second metacarpal's head taken as part of the
    # proximal phalanx) makes both out of proportion with their neighbours: neither is trusted.
    from skimage.morphology import convex_hull_image

    spilled = labels.copy()
    mc2 = np.isin(labels, anatomy.bone_labels("metacarpal_2"))
    rows = np.nonzero(mc2)[0]
    head = mc2 & (np.arange(labels.shape[0])[:, None] < np.percentile(rows, 12))  # fingers point up
    pp2 = np.isin(labels, anatomy.bone_labels("proximal_phalanx_2"))
    joined = convex_hull_image(pp2 | head) & ((labels == 0) | pp2 | head)
    spilled[joined] = anatomy.shaft_label("proximal_phalanx_2")  # one piece across the joint
    _, trusted = segment.pseudo_label_target(spilled, probs, (1.0, 1.0), bounds)
    assert "proximal_phalanx_2" not in trusted and "metacarpal_3" in trusted
    # The first round's check (third metacarpal alone, wide range) lets that spill pass.
    loose = segment.length_ratio_bounds(n=40, check="metacarpal3")
    _, trusted = segment.pseudo_label_target(spilled, probs, (1.0, 1.0), loose)
    assert "proximal_phalanx_2" in trusted
    # Unsure background is ignored, not taught as background.
    unsure = probs.copy()
    unsure[0, :10, :10] = 0.5
    target, _ = segment.pseudo_label_target(labels, unsure, (1.0, 1.0), bounds)
    assert (target[:10, :10][labels[:10, :10] == 0] == segment.IGNORE).all()


def test_train_refuses_the_evaluation_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        segment.train(segment.TrainConfig(out=str(tmp_path), seed=segment.EVAL_SEED, steps=1))


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


def test_keypoint_lengths_parse(tmp_path: Path) -> None:
    csv = tmp_path / "kp.csv"
    csv.write_text("id,keypoint,x,y,visible\n1,forefinger1,0,0,2\n1,forefinger2,0,30,2\n1,forefinger3,0,50,2\n"
                   "1707,forefinger1,0,0,0\n")
    lengths = segment.keypoint_lengths(csv)
    assert lengths == {1: {"proximal_phalanx_2": 30.0, "middle_phalanx_2": 20.0}}


@needs_weights
def test_shipped_weights_segment_an_unseen_synthetic_hand(shipped: segment.Segmenter) -> None:
    metrics = segment.evaluate_synthetic(shipped, n=2, seed=segment.EVAL_SEED)
    # The real number (40 hands) is in the model card; this is a modest floor.
    assert metrics["tubular_dice_mean"] > 0.7
    hand = generate_hand(segment.EVAL_SEED, 0)
    assert shipped.segment(hand.image).shape == hand.image.shape


@needs_weights
def test_orientation_search_reads_mirrored_films(shipped: segment.Segmenter) -> None:
    hand = generate_hand(segment.EVAL_SEED, 3, size=384)
    whole = lambda labels, bone: np.isin(labels, anatomy.bone_labels(bone))  # noqa: E731
    plain = shipped.segment_with_info(hand.image)
    assert plain.mirrored is False and abs(plain.finger_angle_deg) < 45
    # A right hand (the mirrored film): labelled as the same anatomical bones, and said.
    mirrored = shipped.segment_with_info(np.ascontiguousarray(hand.image[:, ::-1]))
    assert mirrored.mirrored is True
    truth = hand.label_map[:, ::-1]
    assert segment.dice(whole(mirrored.label_map, "metacarpal_1"), whole(truth, "metacarpal_1")) > 0.7
    assert segment.dice(whole(mirrored.label_map, "metacarpal_5"), whole(truth, "metacarpal_5")) > 0.7
    # Without the search the network reads the film as given (left hand, upright).
    assert shipped.segment_with_info(hand.image, orientations=False).mirrored is False


@needs_weights
@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_orientation_search_turns_a_sideways_film_back(shipped: segment.Segmenter, quarter_turns: int) -> None:
    hand = generate_hand(segment.EVAL_SEED, 3, size=384)
    whole = lambda labels, bone: np.isin(labels, anatomy.bone_labels(bone))  # noqa: E731
    # A film turned by quarters (1: fingers pointing left, 2: down): turned back, segmented, said.
    turned = shipped.segment_with_info(np.ascontiguousarray(np.rot90(hand.image, quarter_turns)))
    expected_angle = 90.0 * quarter_turns if quarter_turns < 3 else -90.0
    assert turned.finger_angle_deg is not None
    assert abs((turned.finger_angle_deg - expected_angle + 180) % 360 - 180) < 30
    truth = np.rot90(hand.label_map, quarter_turns)
    assert segment.dice(whole(turned.label_map, "proximal_phalanx_3"), whole(truth, "proximal_phalanx_3")) > 0.7


@needs_weights
def test_a_film_that_is_no_hand_in_any_orientation_is_not_turned(shipped: segment.Segmenter) -> None:
    # Smooth noise reads as no hand at any quarter turn: the search runs (score below the trigger).
    # For this seed a turned reading scores a little higher (1.7 against 1.5) but not by the margin,
    # so the film is kept as given.
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.random((384, 384)), 8).astype(np.float32)
    model_input, _ = segment.prepare_model_input(noise, shipped.config.size, window=shipped.config.window)
    as_given = shipped.read_model_grid(model_input, orientations=False)
    assert as_given.score < segment.QUARTER_TURN_TRIGGER
    assert shipped.read_model_grid(model_input).turns == 0


def test_thumb_divergence_tells_thumb_from_little_finger() -> None:
    labels = generate_hand(segment.EVAL_SEED, 5, size=256).label_map
    assert segment.thumb_divergence_deg(labels) > 10
    swapped = labels.copy()
    for a, b in zip(anatomy.bone_labels("metacarpal_1"), anatomy.bone_labels("metacarpal_5")):
        swapped[labels == a], swapped[labels == b] = b, a
    assert segment.thumb_divergence_deg(swapped) < -10
    assert segment.thumb_divergence_deg(np.zeros((16, 16), np.uint8)) is None


@needs_weights
def test_shipped_weights_are_registered_and_small() -> None:
    from boneage import models

    entry = models.get("segmenter")
    assert entry.weights_path == SHIPPED
    assert entry.version == segment.VERSION
    # The shipped file must be the weights of this code's version, not an older file left behind.
    assert torch.load(SHIPPED, map_location="cpu", weights_only=False)["version"] == segment.VERSION
    assert SHIPPED.stat().st_size < 15e6
    assert (segment.SEGMENTER_DIR / "MODEL_CARD.md").is_file()


@needs_weights
def test_segment_cli_writes_one_label_map_per_input(tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    shapes = {}
    for i, size in enumerate((300, 420)):
        hand = generate_hand(segment.EVAL_SEED, 10 + i, size=size)
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


@needs_weights
@pytest.mark.skipif(not (rsna_dev_dir() / "hand_keypoints.csv").is_file(),
                    reason="real rsna-dev keypoints not available (../shared/data/rsna-dev absent)")
def test_real_keypoint_phalanx_lengths(shipped: segment.Segmenter) -> None:
    # All 41 annotated films (~15 s): the shipped weights and measuring rules must keep the issue's
    # bars (segmenter-4 with measure-3: 96.6 % of bones measured, median error 5.8 %); segmenter-3
    # with measure-1 (73 %, 7.8 %) fails this.
    metrics = segment.evaluate_keypoints(shipped)
    assert metrics["n_images"] == 41 and metrics["bones_expected"] == 328
    assert metrics["measured_fraction"] >= 0.95
    assert metrics["rel_error_median"] <= 0.08

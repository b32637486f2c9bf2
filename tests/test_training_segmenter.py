"""Tests of the segmenter's training (boneage.training.segmenter): augmentation, loss, training runs,
self-training targets, evaluation and the model card."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from boneage import anatomy, runtime, segment
from boneage.paths import rsna_dev_dir
from boneage.preprocess import prepare_model_input
from boneage.synth import generate_hand
from boneage.training import segmenter
from conftest import needs_segmenter_weights

torch = pytest.importorskip("torch")

def test_label_map_to_model_inverts_mask_to_original() -> None:
    hand = generate_hand(1000, 0, size=256)
    _, transform = prepare_model_input(hand.image, 128)
    small = segmenter.label_map_to_model(hand.label_map, transform)
    assert small.shape == (128, 128)
    back = transform.mask_to_original(small)
    assert back.shape == hand.label_map.shape
    # Round trip through a coarser grid keeps most bone pixels.
    bone = hand.label_map > 0
    assert segmenter.dice(back > 0, bone) > 0.8


def test_augmentation_keeps_image_and_labels_aligned() -> None:
    rng = np.random.default_rng(0)
    hand = generate_hand(1000, 1, size=256)
    for _ in range(4):
        x, y = segmenter.augment_hand(rng, hand.image, hand.label_map, 96)
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
    pairs = [segmenter.augment_hand(rng, generate_hand(1000, i, size=192).image,
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
    config = segmenter.TrainConfig(out=str(tmp_path), steps=2, size=64, crop=64, batch_size=2, workers=0,
                                 channels=(4, 8, 16, 32, 64), real_intensity=False, progress=False)
    path = segmenter.train(config)
    blob = torch.load(path, map_location="cpu", weights_only=False)
    assert all(v.dtype == torch.float16 for v in blob["state_dict"].values() if v.is_floating_point())
    model = segment.Segmenter.load(path)
    image = generate_hand(7, 0, size=160).image
    assert model.segment(image).shape == image.shape
    assert json.loads((tmp_path / "train_log.json").read_text())["meta"]["steps_done"] >= 1


def test_reproduce_command_repeats_non_default_settings() -> None:
    config = asdict(segmenter.TrainConfig(out="/runs/s2", init="/runs/s1/segmenter.pt", bf16=False,
                                        pseudo_labels="/runs/p.npz", pseudo_fraction=0.5))
    line = segmenter._train_command_line(config)
    assert line.startswith("boneage train segmenter --out /runs/s2")
    assert "--init /runs/s1/segmenter.pt" in line and "--pseudo-fraction 0.5" in line
    assert line.endswith("--no-bf16")
    assert "--no-bf16" not in segmenter._train_command_line(asdict(segmenter.TrainConfig()))


def test_pseudo_draw_weights_give_every_age_band_the_same_share() -> None:
    ages = np.array([30.0] * 2 + [130.0] * 18 + [150.0] * 30)  # 2 y-bands: 1, 5, 6
    p = segmenter.pseudo_draw_weights(ages, min_band_films=1)
    assert p.sum() == pytest.approx(1.0)
    assert p[:2].sum() == pytest.approx(1 / 3)
    assert p[2:20].sum() == pytest.approx(1 / 3) and p[20:].sum() == pytest.approx(1 / 3)
    assert np.allclose(p[20:], p[20])  # uniform within a band
    # A band of two films counts as one of 10: a fifth of a full band's share, not a full share.
    small = segmenter.pseudo_draw_weights(ages, min_band_films=10)
    assert small[:2].sum() / small[2:20].sum() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no pseudo-labelled films"):
        segmenter.pseudo_draw_weights(np.array([]))


def _pseudo_file(path: Path, ages: list[float] | None) -> str:
    n = 4 if ages is None else len(ages)
    # Each film is told by its label: the first film's pixels are 1, the others' 2.
    labels = np.stack([np.full((32, 32), 1 if k == 0 else 2, np.uint8) for k in range(n)])
    arrays = {"images": np.full((n, 32, 32), 128, np.uint8), "labels": labels, "ids": np.arange(n)}
    if ages is not None:
        arrays["bone_ages"] = np.asarray(ages, np.float32)
    np.savez(path, **arrays)
    return str(path)


def test_age_balanced_stream_draws_young_films_as_often_as_the_rest(tmp_path: Path, monkeypatch) -> None:
    # One film of 2 y among nine of 12 y: balanced, the young film is about half of the real draws.
    ages = [24.0] + [144.0] * 9
    pseudo = _pseudo_file(tmp_path / "p.npz", ages)
    monkeypatch.setattr(segmenter, "PSEUDO_MIN_BAND_FILMS", 1)
    stream = segmenter._sample_stream(3, 32, 32, 0, 128, None, pseudo, pseudo_fraction=1.0,
                                      pseudo_age_balance=True)
    draws = [next(stream) for _ in range(200)][16:]  # the file is looked for every 16 samples
    young = sum(bool((y == 1).any()) for _, y in draws)
    assert 0.35 < young / len(draws) < 0.65
    plain = segmenter._sample_stream(3, 32, 32, 0, 128, None, pseudo, pseudo_fraction=1.0)
    plain_draws = [next(plain) for _ in range(200)][16:]
    assert sum(bool((y == 1).any()) for _, y in plain_draws) / len(plain_draws) < 0.25
    old = _pseudo_file(tmp_path / "old.npz", None)
    with pytest.raises(ValueError, match="old.npz: no bone_ages"):
        next(segmenter._sample_stream(3, 32, 32, 0, 128, None, old, pseudo_fraction=1.0, pseudo_age_balance=True))
    config = asdict(segmenter.TrainConfig(out="/runs/s2", pseudo_labels="/runs/p.npz", pseudo_age_balance=True))
    assert "--pseudo-labels /runs/p.npz --pseudo-age-balance" in segmenter._train_command_line(config)
    assert "--pseudo-age-balance" not in segmenter._train_command_line(
        asdict(segmenter.TrainConfig(pseudo_age_balance=True)))


def test_train_command_passes_the_age_balance_on(monkeypatch) -> None:
    import argparse

    import boneage.training.export as export

    seen: list = []
    monkeypatch.setattr(segmenter, "train", lambda config: seen.append(config) or "w.pt")
    monkeypatch.setattr(export, "export_after_training", lambda name, weights: None)
    parser = argparse.ArgumentParser()
    segmenter.add_train_arguments(parser)
    for extra, balanced in (([], False), (["--pseudo-age-balance"], True)):
        args = parser.parse_args(["--out", "/runs/s6", "--pseudo-labels", "/runs/p.npz", *extra])
        assert segmenter.train_command(args) == 0
        assert seen[-1].pseudo_age_balance is balanced and seen[-1].pseudo_labels == "/runs/p.npz"


def test_model_card_describes_each_stage_as_trained() -> None:
    def stage(**cfg) -> dict:
        return {"train_config": asdict(segmenter.TrainConfig(**cfg)), "steps_done": 10, "wall_minutes": 1.0,
                "bf16_autocast": False}

    second = stage(out="/runs/s2", init="/runs/s1/segmenter.pt", bf16=False, real_bone_look_p=0.5)
    second["init_meta"] = stage(out="/runs/s1", bf16=False)
    card = segmenter.model_card({"weights_meta": second, "synthetic": {"n_images": 2, "seed": segmenter.EVAL_SEED}})
    assert "in stage(s) 2 also a real film's bone look" in card
    assert "fp32 (the CPU had no native bf16" in card
    assert "boneage train segmenter --out /runs/s1 --no-bf16   # stage 1" in card
    plain = segmenter.model_card({"weights_meta": stage(), "synthetic": {"n_images": 2, "seed": segmenter.EVAL_SEED}})
    assert "bone look" not in plain
    # Stages trained on different CPUs: each stage's precision is said, not the first one's for all.
    third = stage(out="/runs/s3", init="/runs/s2/segmenter.pt")
    third["bf16_autocast"] = True
    third["init_meta"] = second
    mixed = segmenter.model_card({"weights_meta": third, "synthetic": {"n_images": 2, "seed": segmenter.EVAL_SEED}})
    assert "stage(s) 1, 2 in fp32" in mixed and "stage(s) 3 with bf16 autocast" in mixed


def test_model_card_and_pseudo_command_carry_the_carpal_gate(tmp_path: Path, monkeypatch) -> None:
    def card(gate: float | None) -> str:
        stats = {"weights": "/runs/s1/segmenter.pt", "min_trusted_tubular": 6, "carpal_gate_months": gate}
        config = segmenter.TrainConfig(out="/runs/s2", pseudo_labels="/runs/p.npz", pseudo_age_balance=gate is not None)
        meta = {"train_config": asdict(config),
                "steps_done": 10, "wall_minutes": 1.0, "bf16_autocast": False, "pseudo_stats": stats}
        return segmenter.model_card({"weights_meta": meta, "synthetic": {"n_images": 2, "seed": segmenter.EVAL_SEED}})

    assert "--out /runs/p.npz --min-trusted 6 --carpal-gate 12\n" in card(12.0)
    assert "more than 12 months short of its Greulich-Pyle appearance age" in card(12.0)
    assert "drawn evenly over 2-year age bands" in card(12.0) and "--pseudo-age-balance" in card(12.0)
    assert "--carpal-gate" not in card(None) and "--out /runs/p.npz --min-trusted 6\n" in card(None)
    assert "appearance age" not in card(None) and "age bands" not in card(None)
    # The command line reaches make_pseudo_labels with the gate (and without it, off).
    calls: list[dict] = []
    monkeypatch.setattr(segmenter.Segmenter, "load", classmethod(lambda cls, weights=None, **kw: "model"))
    monkeypatch.setattr(segmenter, "make_pseudo_labels", lambda model, out, **kw: calls.append(kw) or {})
    out = str(tmp_path / "p.npz")
    assert segmenter.main(["pseudo", "--out", out, "--carpal-gate", "12"]) == 0
    assert segmenter.main(["pseudo", "--out", out]) == 0
    assert [c["carpal_gate_months"] for c in calls] == [12.0, None]
    assert json.loads((tmp_path / "p.json").read_text())["weights"] is None


def test_masked_loss_matches_monai_and_skips_ignored_pixels() -> None:
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    logits = torch.randn(2, anatomy.NUM_CLASSES, 24, 24)
    target = torch.randint(0, anatomy.NUM_CLASSES, (2, 1, 24, 24))
    expected = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, target)
    assert torch.allclose(segmenter.masked_dice_ce_loss(logits, target), expected, atol=1e-5)
    # Ignored pixels carry no signal: changing the logits there changes neither loss nor gradient.
    ignored = target.clone()
    ignored[:, :, :12] = segmenter.IGNORE
    other = logits.clone()
    other[:, :, :12] = torch.randn_like(other[:, :, :12]) * 5
    a, b = logits.clone().requires_grad_(), other.clone().requires_grad_()
    loss_a, loss_b = segmenter.masked_dice_ce_loss(a, ignored), segmenter.masked_dice_ce_loss(b, ignored)
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    loss_a.backward()
    assert float(a.grad[:, :, :12].abs().max()) == 0.0


def test_augmentation_keeps_ignore_labels() -> None:
    rng = np.random.default_rng(3)
    hand = generate_hand(1000, 2, size=256)
    labels = hand.label_map.copy()
    labels[np.isin(labels, anatomy.bone_labels("metacarpal_3"))] = segmenter.IGNORE
    for _ in range(4):
        _, y = segmenter.augment_hand(rng, hand.image, labels, 96)
        assert set(np.unique(y)) <= set(range(anatomy.NUM_CLASSES)) | {segmenter.IGNORE}
        assert not np.isin(y, anatomy.bone_labels("metacarpal_3")).any()


def _a_certain_reading() -> tuple[np.ndarray, np.ndarray, dict]:
    """A 12 y synthetic hand's true label map read with full confidence, and the length bounds."""
    labels = generate_hand(1000, 5, size=384, bone_age_months=150).label_map
    probs = np.zeros((anatomy.NUM_CLASSES, *labels.shape), np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), 1.0, axis=0)
    return labels, probs, segmenter.length_ratio_bounds(n=40)


def test_pseudo_label_target_trusts_good_bones_and_ignores_the_rest() -> None:
    labels, probs, bounds = _a_certain_reading()
    target, trusted = segmenter.pseudo_label_target(labels, probs, (1.0, 1.0), bounds)
    assert len([b for b in trusted if b in anatomy.TUBULAR_BONES]) >= 17
    assert (target[labels == 0] == 0).all()  # confident background stays background
    # Relabel the fourth proximal phalanx as the third: both become untrusted and ignored.
    broken = labels.copy()
    for a, b in zip(anatomy.bone_labels("proximal_phalanx_4"), anatomy.bone_labels("proximal_phalanx_3")):
        broken[labels == a] = b
    target, trusted = segmenter.pseudo_label_target(broken, probs, (1.0, 1.0), bounds)
    assert "proximal_phalanx_3" not in trusted
    assert (target[np.isin(broken, anatomy.bone_labels("proximal_phalanx_3"))] == segmenter.IGNORE).all()
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
    _, trusted = segmenter.pseudo_label_target(spilled, probs, (1.0, 1.0), bounds)
    assert "proximal_phalanx_2" not in trusted and "metacarpal_3" in trusted
    # The first round's check (third metacarpal alone, wide range) lets that spill pass.
    loose = segmenter.length_ratio_bounds(n=40, check="metacarpal3")
    _, trusted = segmenter.pseudo_label_target(spilled, probs, (1.0, 1.0), loose)
    assert "proximal_phalanx_2" in trusted
    # Unsure background is ignored, not taught as background.
    unsure = probs.copy()
    unsure[0, :10, :10] = 0.5
    target, _ = segmenter.pseudo_label_target(labels, unsure, (1.0, 1.0), bounds)
    assert (target[:10, :10][labels[:10, :10] == 0] == segmenter.IGNORE).all()


def test_carpal_gate_follows_the_appearance_ages() -> None:
    from boneage.synth import ossification_onset_months

    pisiform = ossification_onset_months("M", "pisiform")
    unossified, doubtful = segmenter.carpal_gate(pisiform - 13, "M", 12)
    assert "pisiform" in unossified and "capitate" not in unossified + doubtful
    unossified, doubtful = segmenter.carpal_gate(pisiform + 6, "M", 12)
    assert "pisiform" in doubtful and "pisiform" not in unossified
    assert segmenter.carpal_gate(240, "F", 12) == ([], [])  # every carpal long ossified
    assert set(segmenter.carpal_gate(0, "F", 0)[0]) == set(anatomy.CARPALS)


def test_carpal_presence_scores_count_labels_before_and_after_appearance() -> None:
    from boneage.synth import ossification_onset_months

    pisiform = ossification_onset_months("F", "pisiform")
    capitate = ossification_onset_months("F", "capitate")
    everything = set(anatomy.CARPALS)
    records = [(capitate + 13, "F", everything),  # every carpal labelled on a young film: the tiling
               (pisiform + 30, "F", everything), (pisiform + 30, "F", everything - {"pisiform"})]
    scores = segmenter.carpal_presence_scores(records, margin_months=12)
    assert scores["labelled_before_appearance"] == 1.0  # the young film's not-yet carpals were all labelled
    assert scores["labelled_before_appearance_by_carpal"]["pisiform"] == 1.0
    assert scores["labelled_after_appearance_by_carpal"]["pisiform"] == pytest.approx(0.5)
    assert scores["labelled_after_appearance_by_carpal"]["capitate"] == 1.0
    assert scores["pairs_before_appearance"] >= 1 and scores["n_films"] == 3
    assert np.isnan(segmenter.carpal_presence_scores([(pisiform + 30, "F", set())])["labelled_before_appearance"])
    card = segmenter.model_card({"synthetic": {}, "real_carpals": scores})
    assert "a carpal was labelled on 100% of the films more than 12 months younger" in card


@needs_segmenter_weights
def test_carpal_presence_check_reads_real_films_of_every_band(shipped_segmenter: segment.Segmenter) -> None:
    from boneage.paths import rsna_299_dir

    if not (rsna_299_dir() / "labels.csv").is_file():
        pytest.skip("rsna-299 not available (../shared/data/rsna-299 absent)")
    scores = segmenter.evaluate_carpal_presence(shipped_segmenter, per_band=1)  # one film a band: ~10 films
    assert scores["n_films"] == len(scores["carpal_count_median_by_band"]) >= 8
    assert scores["pairs_after_appearance"] > 0 and scores["labelled_after_appearance"] >= 0.8
    assert all(0 <= n <= 8 for n in scores["carpal_count_median_by_band"].values())


def test_pseudo_label_target_teaches_unossified_carpals_as_background() -> None:
    # A 12 y hand's label map read as a young film's: its pisiform and scaphoid are taken as cartilage the network
    # labelled, the trapezium as in doubt.
    labels, probs, bounds = _a_certain_reading()
    _, trusted = segmenter.pseudo_label_target(labels, probs, (1.0, 1.0), bounds)
    assert {"pisiform", "scaphoid", "trapezium"} <= set(trusted)
    target, trusted = segmenter.pseudo_label_target(labels, probs, (1.0, 1.0), bounds,
                                                    unossified=["pisiform", "scaphoid"], doubtful=["trapezium"])
    assert not {"pisiform", "scaphoid", "trapezium"} & set(trusted) and "capitate" in trusted
    for bone in ("pisiform", "scaphoid"):
        inner = np.isin(labels, anatomy.bone_labels(bone))
        taught = target[inner]
        assert (taught == anatomy.BACKGROUND).mean() > 0.5 and not np.isin(taught, anatomy.bone_labels(bone)).any()
    assert (target[np.isin(labels, anatomy.bone_labels("trapezium"))] == segmenter.IGNORE).all()
    capitate = np.isin(labels, anatomy.bone_labels("capitate"))
    assert np.isin(target[capitate], anatomy.bone_labels("capitate")).all()


def test_a_stage_starts_from_weights_that_have_an_onnx_copy(tmp_path: Path) -> None:
    # Shipped weights sit beside their ONNX copy; a stage started from them needs the torch network.
    from boneage.training.export import export_segmenter

    tiny = dict(steps=1, size=64, crop=64, batch_size=2, workers=0, channels=(4, 8, 16, 32, 64),
                real_intensity=False, progress=False)
    first = segmenter.train(segmenter.TrainConfig(out=str(tmp_path / "s1"), **tiny))
    export_segmenter(first)
    assert isinstance(segment.Segmenter.load(first).network, runtime.OnnxNetwork)
    second = segmenter.train(segmenter.TrainConfig(out=str(tmp_path / "s2"), init=str(first), **tiny))
    assert torch.load(second, map_location="cpu", weights_only=False)["meta"]["init_meta"]["steps_done"] >= 1


def test_train_refuses_the_evaluation_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        segmenter.train(segmenter.TrainConfig(out=str(tmp_path), seed=segmenter.EVAL_SEED, steps=1))


def test_keypoint_lengths_parse(tmp_path: Path) -> None:
    csv = tmp_path / "kp.csv"
    csv.write_text("id,keypoint,x,y,visible\n1,forefinger1,0,0,2\n1,forefinger2,0,30,2\n1,forefinger3,0,50,2\n"
                   "1707,forefinger1,0,0,0\n")
    lengths = segmenter.keypoint_lengths(csv)
    assert lengths == {1: {"proximal_phalanx_2": 30.0, "middle_phalanx_2": 20.0}}


def test_model_card_reports_whom_the_metacarpal_heads_went_to() -> None:
    real = {"rel_error_median_by_bone": {}, "metacarpal_head_as_phalanx_by_finger": {2: 0.34, 3: 0.0, 4: 0.49}}
    card = segmenter.model_card({"synthetic": {}, "real_keypoints": real})
    assert "share of films by finger: 2 34%, 3 0%, 4 49%." in card
    assert "Metacarpal heads given" not in segmenter.model_card({"synthetic": {}, "real_keypoints": {"n_images": 1}})


def test_read_keypoints_keeps_visible_points_of_annotated_films(tmp_path: Path) -> None:
    csv = tmp_path / "kp.csv"
    csv.write_text("id,keypoint,x,y,visible\n1,wrist,5,90,2\n1,thumb1,7,8,0\n1707,wrist,0,0,0\n")
    assert segmenter.read_keypoints(csv) == {1: {"wrist": (5.0, 90.0)}}


def test_metacarpal_head_owners_read_the_bone_just_proximal_of_each_joint() -> None:
    # Two upright fingers: the third's metacarpal (rows 60-109) owns its head; the fourth's head (rows 60-70)
    # is labelled as its proximal phalanx, as the shipped segmenter does on many real films.
    labels = np.zeros((160, 100), np.uint8)
    labels[60:110, 30:36] = anatomy.shaft_label("metacarpal_3")
    labels[20:59, 30:36] = anatomy.shaft_label("proximal_phalanx_3")
    labels[71:110, 60:66] = anatomy.shaft_label("metacarpal_4")
    labels[20:71, 60:66] = anatomy.shaft_label("proximal_phalanx_4")
    points = {"wrist": (33.0, 141.0), "middle_finger1": (33.0, 59.0), "middle_finger2": (33.0, 20.0),
              "ring_finger1": (63.0, 59.0), "ring_finger2": (63.0, 20.0),  # 0.06 x 82 px: probed at row 64
              "pinky_finger1": (95.0, 158.0), "pinky_finger2": (95.0, 120.0)}  # probed at row 163: off the film
    owners = segmenter.metacarpal_head_owners(labels, points)
    assert owners == {3: "metacarpal_3", 4: "proximal_phalanx_4", 5: None}
    # A finger turned sideways is probed along its own line: the joint at column 40, the phalanx pointing right.
    turned = np.zeros((160, 100), np.uint8)
    turned[57:62, 30:39] = anatomy.shaft_label("metacarpal_2")
    turned[57:62, 41:80] = anatomy.shaft_label("proximal_phalanx_2")
    owners = segmenter.metacarpal_head_owners(turned, {**points, "forefinger1": (40.0, 59.0), "forefinger2": (79.0, 59.0)})
    assert owners[2] == "metacarpal_2"
    assert segmenter.metacarpal_head_owners(labels, {"middle_finger1": (33.0, 59.0)}) == {}  # no wrist: no scale


@needs_segmenter_weights
def test_shipped_weights_segment_an_unseen_synthetic_hand(shipped_segmenter: segment.Segmenter) -> None:
    metrics = segmenter.evaluate_synthetic(shipped_segmenter, n=2, seed=segmenter.EVAL_SEED)
    # The real number (40 hands) is in the model card; this is a modest floor.
    assert metrics["tubular_dice_mean"] > 0.7
    hand = generate_hand(segmenter.EVAL_SEED, 0)
    assert shipped_segmenter.segment(hand.image).shape == hand.image.shape


@needs_segmenter_weights
@pytest.mark.skipif(not (rsna_dev_dir() / "hand_keypoints.csv").is_file(),
                    reason="real rsna-dev keypoints not available (../shared/data/rsna-dev absent)")
def test_real_keypoint_phalanx_lengths(shipped_segmenter: segment.Segmenter) -> None:
    # All 41 annotated films (~15 s): the shipped weights and measuring rules must keep the issue's
    # bars (segmenter-5 with measure-3: 99.4 % of bones measured, median error 4.1 %; segmenter-4: 96.6 %,
    # 5.8 %); segmenter-3 with measure-1 (73 %, 7.8 %) fails this.
    metrics = segmenter.evaluate_keypoints(shipped_segmenter)
    assert metrics["n_images"] == 41 and metrics["bones_expected"] == 328
    assert metrics["measured_fraction"] >= 0.95
    assert metrics["rel_error_median"] <= 0.08
    # The third finger's metacarpal head is its metacarpal's on nearly every film; the others' often are not
    # (docs/synthetic.md, sixteenth sitting): reported by finger, for every finger with keypoints.
    heads = metrics["metacarpal_head_as_metacarpal_by_finger"]
    assert sorted(heads) == sorted(metrics["metacarpal_head_as_phalanx_by_finger"]) == [2, 3, 4, 5]
    assert heads[3] >= 0.9 and metrics["metacarpal_head_as_phalanx_by_finger"][3] <= 0.05

"""The GPU route of the end-to-end CNN's training: pack, train a member, finish here (on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from boneage.training.direct import TrainConfig, member_checkpoint, train_on_arrays
from boneage.training.direct_gpu import decode_webp, encode_webp, read_pack, slim_checkpoint, write_pack

REPO = Path(__file__).resolve().parents[1]


def _films(n: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.stack([np.clip(80 + 60 * np.sin(xx / (7 + i)) + 40 * (yy > size // 2) + rng.normal(0, 2, (size, size)), 0, 255)
                       for i in range(n)]).astype(np.uint8)
    return images, rng.uniform(20, 200, n), rng.choice([-1.0, 1.0], n).astype(np.float32)


def _tiny(**kw) -> TrainConfig:
    base = dict(epochs=1, input_size=32, batch_size=8, device="cpu", threads=1, ema=0.9, checkpoint_minutes=100.0, widths=(8, 8, 16, 16))
    base.update(kw)
    return TrainConfig(**base)


def test_encode_decode_round_trip_is_close():
    images, _, _ = _films(5)
    data, offsets = encode_webp(images)
    back = decode_webp(data, offsets)
    assert back.shape == images.shape and back.dtype == np.uint8
    assert np.abs(back.astype(float) - images).mean() < 3.0  # lossy, but about a grey level or two
    assert len(data) < images.nbytes / 5


def test_pack_round_trip_keeps_labels_and_order(tmp_path):
    images, ages, codes = _films(6)
    path = write_pack(tmp_path / "p.npz", images[:4], ages[:4], codes[:4], images[4:], ages[4:], codes[4:], {"cache_size": 256, "seed": 3})
    pack = read_pack(path, workers=2)
    np.testing.assert_array_equal(pack["fit_ages"], ages[:4])
    np.testing.assert_array_equal(pack["monitor_codes"], codes[4:])
    assert pack["meta"]["seed"] == 3 and pack["meta"]["quality"] > 0
    # Order kept: each decoded film is nearest its own original.
    dist = np.abs(pack["fit_images"][:, None].astype(float) - images[None, :4]).mean(axis=(2, 3))
    assert list(dist.argmin(axis=1)) == [0, 1, 2, 3]


def test_bad_packs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        read_pack(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a training pack"):
        read_pack(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="differ in length"):
        images, ages, codes = _films(3)
        write_pack(tmp_path / "p.npz", images, ages[:2], codes, images, ages, codes, {})


def test_slim_checkpoint_resumes_as_the_finished_run_with_fp16_weights(tmp_path):
    images, ages, codes = _films(16, size=32)
    full = tmp_path / "full.pt"
    trained = train_on_arrays(images, ages, codes, _tiny(), log=lambda *_: None, checkpoint=full)
    slim = slim_checkpoint(full, tmp_path / "slim" / "checkpoint.pt")
    assert slim.stat().st_size < full.stat().st_size / 2
    messages: list[str] = []
    resumed = train_on_arrays(images, ages, codes, _tiny(), log=messages.append, checkpoint=slim)
    assert any("resuming" in m for m in messages)
    assert len(resumed.history) == len(trained.history) == 1
    expected = {k: v.half().float() for k, v in trained.model.state_dict().items() if v.is_floating_point()}
    for key, value in resumed.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value.float(), expected[key], rtol=0, atol=0)


def test_unfinished_checkpoint_is_not_slimmed(tmp_path):
    images, ages, codes = _films(16, size=32)
    cut = tmp_path / "cut.pt"
    result = train_on_arrays(images, ages, codes, _tiny(max_minutes=0.0), log=lambda *_: None, checkpoint=cut)
    assert result.stopped_early
    with pytest.raises(ValueError, match="not finished"):
        slim_checkpoint(cut, tmp_path / "slim.pt")


def test_gpu_script_trains_members_from_a_pack_on_the_cpu(tmp_path):
    """The prepared device script, run here on a tiny pack: two narrow members and one wide one come back."""
    images, ages, codes = _films(12)
    pack = write_pack(tmp_path / "pack.npz", images[:8], ages[:8], codes[:8], images[8:], ages[8:], codes[8:], {"cache_size": 256})
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PACK=str(pack), EPOCHS="1", BATCH="4", MEMBERS="2", WIDE_MEMBERS="1",
               WIDE_WIDTHS="8 8 16 16", PYTHON=sys.executable, DEVICE="cpu", WORK=str(tmp_path / "work"), EXTRA_ARGS="--size 32")
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_train_direct.sh")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for folder, member in (("narrow", 0), ("narrow", 1), ("wide", 0)):
        state = torch.load(member_checkpoint(out / folder, member), map_location="cpu", weights_only=False)
        assert state["slim"] and state["epoch"] == 1 and state["settings"]["seed"] == 1000 * member
    wide = torch.load(member_checkpoint(out / "wide", 0), map_location="cpu", weights_only=False)
    assert wide["settings"]["widths"] == [8, 8, 16, 16]
    assert "epoch" in (out / "train.log").read_text()


def test_a_pack_trains_only_the_run_it_was_packed_for(tmp_path):
    from boneage.training.direct_gpu import train_member

    images, ages, codes = _films(10)
    pack = write_pack(tmp_path / "p.npz", images[:8], ages[:8], codes[:8], images[8:], ages[8:], codes[8:],
                      {"cache_size": 256, "seed": 0, "limit": None})
    with pytest.raises(ValueError, match="seed 0, the run asks for 5"):
        train_member(pack, 0, _tiny(seed=5, input_size=32), tmp_path / "out", tmp_path / "work")
    with pytest.raises(ValueError, match="limit None, the run asks for 100"):
        train_member(pack, 0, _tiny(limit=100, input_size=32), tmp_path / "out", tmp_path / "work")


def test_decoding_threads_give_what_one_thread_gives():
    images, _, _ = _films(6)
    data, offsets = encode_webp(images)
    np.testing.assert_array_equal(decode_webp(data, offsets, workers=1), decode_webp(data, offsets, workers=3))

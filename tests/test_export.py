"""The ONNX copies shipped beside the weights (boneage.training.export, boneage.runtime).

The ONNX files let a film be estimated without importing torch or MONAI; they must give what the
networks built from the weights give, and must never be used once the weights change without a
new export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from boneage import direct, models, perbone, runtime, segment, sex
from boneage.direct import DirectEstimator
from boneage.networks import BoneAgeEnsemble, BoneAgeNet, PerBoneNet
from boneage.segment import Segmenter
from conftest import needs_segmenter_weights

SEGMENTER_DIR = segment.SEGMENTER_DIR
DIRECT_DIR = models.get("direct").folder


def _onnx_is_current(folder: Path, weights: str, onnx_file: str) -> bool:
    return runtime.load_onnx(folder / onnx_file, folder / weights) is not None


@needs_segmenter_weights
def test_shipped_segmenter_onnx_is_current_and_matches_the_network():
    # Fails after retraining until `python -m boneage.training.export` is run again.
    assert _onnx_is_current(SEGMENTER_DIR, segment.WEIGHTS_FILE, segment.ONNX_FILE)
    built, exported = Segmenter.load(exported=False), Segmenter.load()
    assert isinstance(exported.network, runtime.OnnxNetwork)
    assert isinstance(built.network, torch.nn.Module)
    assert exported.config == built.config  # read from the ONNX metadata
    assert exported.meta == json.loads(json.dumps(built.meta))
    rng = np.random.default_rng(0)
    size = built.config.size
    inputs = rng.random((2, size, size), dtype=np.float32)
    labels_a, probs_a = built.predict_batch(inputs)
    labels_b, probs_b = exported.predict_batch(inputs)
    assert np.abs(probs_a - probs_b).max() < 1e-4
    assert (labels_a != labels_b).mean() < 1e-4
    labels_only, none = exported.predict_batch(inputs, probabilities=False)
    assert none is None and np.array_equal(labels_only, labels_b)
    assert np.array_equal(labels_b, probs_b.argmax(1))  # the first maximal class, as an arg-max gives


def test_shipped_direct_cnn_onnx_is_current_and_matches_the_network():
    if not (DIRECT_DIR / direct.WEIGHTS_FILE).is_file():
        pytest.skip("direct CNN weights not shipped here")
    assert _onnx_is_current(DIRECT_DIR, direct.WEIGHTS_FILE, direct.ONNX_FILE)
    built, exported = DirectEstimator.load(exported=False), DirectEstimator.load()
    assert isinstance(exported.model, runtime.OnnxNetwork)
    assert (exported.target_mean, exported.target_sd, exported.calibration, exported.version) == \
        (built.target_mean, built.target_sd, built.calibration, built.version)
    rng = np.random.default_rng(1)
    film = rng.random((300, 240), dtype=np.float32)
    for sex_given in ("M", "F", None):
        a, b = built.predict(film, sex_given), exported.predict(film, sex_given)
        assert abs(a.age_months - b.age_months) < 0.01 and abs(a.upper_90 - b.upper_90) < 0.01


@pytest.mark.parametrize("module", [perbone, sex], ids=["perbone", "sex"])
def test_shipped_crop_network_onnx_is_current(module):
    folder = models.get(module.__name__.rsplit(".", 1)[-1]).folder
    if not (folder / module.WEIGHTS_FILE).is_file():
        pytest.skip("weights not shipped here")
    # Fails after retraining until `python -m boneage.training.export` is run again.
    assert _onnx_is_current(folder, module.WEIGHTS_FILE, module.ONNX_FILE)


def test_stale_or_broken_onnx_file_is_not_used(tmp_path):
    if not (DIRECT_DIR / direct.WEIGHTS_FILE).is_file():
        pytest.skip("direct CNN weights not shipped here")
    weights = tmp_path / direct.WEIGHTS_FILE
    shutil.copy(DIRECT_DIR / direct.WEIGHTS_FILE, weights)
    shutil.copy(DIRECT_DIR / direct.ONNX_FILE, tmp_path / direct.ONNX_FILE)
    assert runtime.load_onnx(tmp_path / direct.ONNX_FILE, weights) is not None
    # Other weights (a retrained model without a new export): the ONNX file is ignored.
    blob = torch.load(weights, map_location="cpu", weights_only=True)
    blob["target_mean"] = float(blob["target_mean"]) + 1.0
    torch.save(blob, weights)
    assert runtime.load_onnx(tmp_path / direct.ONNX_FILE, weights) is None
    loaded = DirectEstimator.load(weights)
    assert isinstance(loaded.model, (BoneAgeNet, BoneAgeEnsemble))  # built from the weights
    assert loaded.target_mean == blob["target_mean"]  # and their numbers, not the stale file's
    (tmp_path / direct.ONNX_FILE).write_bytes(b"not an ONNX model")
    with pytest.warns(RuntimeWarning, match="not a usable ONNX file"):
        assert runtime.load_onnx(tmp_path / direct.ONNX_FILE, weights) is None
    assert runtime.load_onnx(tmp_path / "absent.onnx", weights) is None


def test_export_writes_an_onnx_file_that_loads_with_fp16_weights(tmp_path):
    import onnx

    from boneage.training.export import export_perbone

    torch.manual_seed(0)
    network = PerBoneNet((4, 8, 8, 8))
    weights = tmp_path / perbone.WEIGHTS_FILE
    state = {k: v.half() if v.is_floating_point() else v for k, v in network.state_dict().items()}
    torch.save({"state_dict": state, "widths": [4, 8, 8, 8], "model_version": "test"}, weights)
    assert export_perbone(weights) == tmp_path / perbone.ONNX_FILE
    stored = onnx.load(str(tmp_path / perbone.ONNX_FILE))
    big = [i for i in stored.graph.initializer if np.prod(i.dims) >= 16]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)  # fp16 on disk, as the weights
    built = perbone.PerBoneEstimator.load(weights, exported=False)
    exported = perbone.PerBoneEstimator.load(weights)
    assert isinstance(exported.network, runtime.OnnxNetwork)
    assert exported.network.checkpoint == {"widths": [4, 8, 8, 8], "model_version": "test"}
    crops = perbone.BoneCrops(np.random.default_rng(2).integers(0, 255, (14, *perbone.CROP_SHAPE), dtype=np.uint8),
                              np.ones(14, bool), np.ones(14, np.float32))
    for sex_given in ("M", None):
        a, b = built.bone_ages(crops, sex_given), exported.bone_ages(crops, sex_given)
        assert np.allclose(a[0], b[0], atol=0.01) and np.allclose(a[1], b[1], rtol=1e-4)


def test_on_a_gpu_device_the_torch_network_is_loaded(tmp_path, monkeypatch):
    # ONNX Runtime here is the CPU build: any other device runs the network in torch.
    if not (DIRECT_DIR / direct.WEIGHTS_FILE).is_file():
        pytest.skip("direct CNN weights not shipped here")
    seen = []
    monkeypatch.setattr(runtime, "load_onnx", lambda *a: seen.append(a))
    monkeypatch.setattr(runtime, "prepare_torch_module", lambda module, device: module)
    DirectEstimator.load(device="cuda")
    assert seen == []


@needs_segmenter_weights
def test_estimating_a_film_imports_neither_torch_nor_monai():
    # torch's import alone is 0.8 s and ~170 MB of a process; MONAI's longer still. Every model
    # whose weights are shipped must load (one not trained yet is only reported).
    code = ("import sys, numpy as np; from boneage import models; from boneage.estimate import BoneAgeEstimator; "
            "e = BoneAgeEstimator.load(); "
            "broken = {k: v for k, v in e.load_errors.items() if models.get(k).is_available()}; "
            "assert not broken, broken; "
            "from boneage.synth import generate_hand; r = e.estimate(generate_hand(3, 0, size=512).image, sex='F'); "
            "print(r.status, 'torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"], out.stdout


def test_thread_setting_is_restored_and_reaches_torch_and_the_other_pools(monkeypatch):
    from threadpoolctl import threadpool_info

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = runtime.get_threads()
    torch_before = torch.get_num_threads()
    pools_before = [p["num_threads"] for p in threadpool_info()]
    with runtime.threads(1):
        assert runtime.get_threads() == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"  # for libraries loaded from now on
        assert all(p["num_threads"] == 1 for p in threadpool_info())  # and those loaded already
        forward = runtime.as_forward(torch.nn.Linear(3, 2))
        (out,) = forward(np.ones((4, 3), np.float32))
        assert out.shape == (4, 2) and out.dtype == np.float32
    assert runtime.get_threads() == before and torch.get_num_threads() == torch_before
    assert "OMP_NUM_THREADS" not in os.environ
    assert [p["num_threads"] for p in threadpool_info()] == pools_before
    with pytest.raises(TypeError, match="not a network"):
        runtime.as_forward(42)


def test_an_onnx_file_without_the_recorded_checkpoint_is_not_used(tmp_path):
    # Hash right but not written by our export (no checkpoint contents): the weights are read instead.
    import onnx

    folder = models.get("sex").folder
    if not (folder / sex.WEIGHTS_FILE).is_file():
        pytest.skip("sex weights not shipped here")
    weights = tmp_path / sex.WEIGHTS_FILE
    shutil.copy(folder / sex.WEIGHTS_FILE, weights)
    model = onnx.load(str(folder / sex.ONNX_FILE))
    kept = [p for p in model.metadata_props if p.key != runtime.CHECKPOINT_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / sex.ONNX_FILE))
    assert runtime.load_onnx(tmp_path / sex.ONNX_FILE, weights) is None
    assert isinstance(sex.SexEstimator.load(tmp_path).network, torch.nn.Module)


def test_a_training_command_ends_by_exporting_and_never_loses_the_weights(tmp_path, capsys):
    from boneage.training.export import export_after_training

    assert export_after_training("perbone", tmp_path / "absent.pt") is None  # a run cut short: nothing to copy
    torch.manual_seed(0)
    network = PerBoneNet((4, 8, 8, 8))
    weights = tmp_path / perbone.WEIGHTS_FILE
    torch.save({"state_dict": {k: v.half() for k, v in network.state_dict().items()}, "widths": [4, 8, 8, 8]}, weights)
    assert export_after_training("perbone", tmp_path) == tmp_path / perbone.ONNX_FILE  # a command's --out folder
    assert isinstance(perbone.PerBoneEstimator.load(tmp_path).network, runtime.OnnxNetwork)
    broken = tmp_path / "broken" / perbone.WEIGHTS_FILE
    broken.parent.mkdir()
    broken.write_bytes(b"not weights")
    assert export_after_training("perbone", broken) is None
    assert "ONNX copy" in capsys.readouterr().err and broken.read_bytes() == b"not weights"

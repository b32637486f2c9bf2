"""The traced networks shipped beside the weights (boneage.training.export, boneage.models.load_traced).

The traced files let inference start without importing MONAI; they must give what the networks
built from the weights give, and must never be used once the weights change without a new export.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from boneage import direct, models, segment
from boneage.direct import DirectEstimator
from boneage.segment import Segmenter
from conftest import needs_segmenter_weights

SEGMENTER_DIR = segment.SEGMENTER_DIR
DIRECT_DIR = models.get("direct").folder


def _traced_is_current(folder: Path, weights: str, traced: str) -> bool:
    return models.load_traced(folder / traced, folder / weights) is not None


@needs_segmenter_weights
def test_shipped_traced_segmenter_is_current_and_matches_the_network():
    # Fails after retraining until `python -m boneage.training.export` is run again.
    assert _traced_is_current(SEGMENTER_DIR, segment.WEIGHTS_FILE, segment.TRACED_FILE)
    built, traced = Segmenter.load(traced=False), Segmenter.load()
    assert isinstance(traced.network, torch.jit.ScriptModule)
    rng = np.random.default_rng(0)
    size = built.config.size
    inputs = rng.random((2, size, size), dtype=np.float32)
    labels_a, probs_a = built.predict_batch(inputs)
    labels_b, probs_b = traced.predict_batch(inputs)
    assert np.abs(probs_a - probs_b).max() < 1e-4
    assert (labels_a != labels_b).mean() < 1e-4


def test_shipped_traced_direct_cnn_is_current_and_matches_the_network():
    if not (DIRECT_DIR / direct.WEIGHTS_FILE).is_file():
        pytest.skip("direct CNN weights not shipped here")
    assert _traced_is_current(DIRECT_DIR, direct.WEIGHTS_FILE, direct.TRACED_FILE)
    built, traced = DirectEstimator.load(traced=False), DirectEstimator.load()
    assert isinstance(traced.model, torch.jit.ScriptModule)
    rng = np.random.default_rng(1)
    film = rng.random((300, 240), dtype=np.float32)
    for sex in ("M", "F", None):
        a, b = built.predict(film, sex), traced.predict(film, sex)
        assert abs(a.age_months - b.age_months) < 0.01 and abs(a.upper_90 - b.upper_90) < 0.01


def test_stale_or_broken_traced_file_is_not_used(tmp_path):
    if not (DIRECT_DIR / direct.WEIGHTS_FILE).is_file():
        pytest.skip("direct CNN weights not shipped here")
    weights = tmp_path / direct.WEIGHTS_FILE
    shutil.copy(DIRECT_DIR / direct.WEIGHTS_FILE, weights)
    shutil.copy(DIRECT_DIR / direct.TRACED_FILE, tmp_path / direct.TRACED_FILE)
    assert models.load_traced(tmp_path / direct.TRACED_FILE, weights) is not None
    # Other weights (a retrained model without a new export): the traced file is ignored.
    blob = torch.load(weights, map_location="cpu", weights_only=True)
    blob["target_mean"] = float(blob["target_mean"]) + 1.0
    torch.save(blob, weights)
    assert models.load_traced(tmp_path / direct.TRACED_FILE, weights) is None
    assert isinstance(DirectEstimator.load(weights).model, (direct.BoneAgeNet, direct.BoneAgeEnsemble))  # built, not traced
    (tmp_path / direct.TRACED_FILE).write_bytes(b"not a TorchScript archive")
    assert models.load_traced(tmp_path / direct.TRACED_FILE, weights) is None
    assert models.load_traced(tmp_path / "absent.ts.pt", weights) is None


def test_export_writes_a_traced_file_that_loads(tmp_path):
    from boneage.training.export import export_direct

    if not (DIRECT_DIR / direct.WEIGHTS_FILE).is_file():
        pytest.skip("direct CNN weights not shipped here")
    weights = tmp_path / direct.WEIGHTS_FILE
    shutil.copy(DIRECT_DIR / direct.WEIGHTS_FILE, weights)
    out = export_direct(weights)
    assert out == tmp_path / direct.TRACED_FILE
    assert isinstance(DirectEstimator.load(weights).model, torch.jit.ScriptModule)


@needs_segmenter_weights
def test_loading_the_estimator_does_not_import_monai():
    # MONAI's import alone takes longer than the rest of start-up: the traced files avoid it.
    # Every model whose weights are shipped must load (one not trained yet is only reported).
    code = ("import sys; from boneage import models; from boneage.estimate import BoneAgeEstimator; "
            "e = BoneAgeEstimator.load(); "
            "broken = {k: v for k, v in e.load_errors.items() if models.get(k).is_available()}; "
            "assert not broken, broken; print('monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_perbone_export_matches_the_network_and_is_used(tmp_path):
    from boneage import perbone
    from boneage.training.export import export_perbone

    torch.manual_seed(0)
    network = perbone.PerBoneNet((4, 8, 8, 8))
    weights = tmp_path / perbone.WEIGHTS_FILE
    state = {k: v.half() if v.is_floating_point() else v for k, v in network.state_dict().items()}
    torch.save({"state_dict": state, "widths": [4, 8, 8, 8]}, weights)
    assert export_perbone(weights) == tmp_path / perbone.TRACED_FILE
    built = perbone.PerBoneEstimator.load(weights, traced=False)
    traced = perbone.PerBoneEstimator.load(weights)
    assert isinstance(traced.network, torch.jit.ScriptModule)
    crops = perbone.BoneCrops(np.random.default_rng(2).integers(0, 255, (14, *perbone.CROP_SHAPE), dtype=np.uint8),
                              np.ones(14, bool), np.ones(14, np.float32))
    for sex in ("M", None):
        a, b = built.bone_ages(crops, sex), traced.bone_ages(crops, sex)
        assert np.allclose(a[0], b[0], atol=0.05) and np.allclose(a[1], b[1], rtol=1e-3)


def test_shipped_traced_perbone_is_current():
    from boneage import perbone

    folder = models.get("perbone").folder
    if not (folder / perbone.WEIGHTS_FILE).is_file():
        pytest.skip("per-bone weights not shipped here")
    # Fails after retraining until `python -m boneage.training.export` is run again.
    assert _traced_is_current(folder, perbone.WEIGHTS_FILE, perbone.TRACED_FILE)

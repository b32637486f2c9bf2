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
    assert isinstance(DirectEstimator.load(weights).model, direct.BoneAgeNet)
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

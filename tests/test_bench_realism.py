"""The realism benchmark's helpers (issue #22): renderer probes from the command line, turned films."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_realism  # noqa: E402  (a script folder, not a package)

from boneage import synth  # noqa: E402


def test_set_renderer_constants_changes_only_numeric_constants(monkeypatch):
    monkeypatch.setattr(synth, "_CARPAL_SCALE", synth._CARPAL_SCALE)  # restored after the test
    monkeypatch.setattr(synth, "_DRC_AMOUNT", synth._DRC_AMOUNT)
    changed = bench_realism.set_renderer_constants(["_CARPAL_SCALE=1.4", "_DRC_AMOUNT=0.2"])
    assert changed == {"_CARPAL_SCALE": 1.4, "_DRC_AMOUNT": 0.2}
    assert synth._CARPAL_SCALE == 1.4 and synth._DRC_AMOUNT == 0.2


@pytest.mark.parametrize("bad, reason", [
    ("_NO_SUCH_CONSTANT=1", "numeric constant"),
    ("_CARPAL_SCALE", "NAME=VALUE"),
    ("_CARPAL_SCALE=wide", "not a number"),
    ("_EPIPHYSIS_WIDTH=1", "numeric constant"),  # a table, not a number
    ("generate_hand=1", "numeric constant"),
])
def test_set_renderer_constants_rejects_what_it_cannot_set(bad, reason, monkeypatch):
    monkeypatch.setattr(synth, "_CARPAL_SCALE", synth._CARPAL_SCALE)
    before = synth._CARPAL_SCALE
    with pytest.raises(ValueError, match=reason):
        bench_realism.set_renderer_constants(["_CARPAL_SCALE=2.0", bad])
    assert synth._CARPAL_SCALE == before  # nothing is half-applied


def test_turn_changes_is_zero_for_a_turn_blind_reader_and_follows_a_turn_aware_one():
    film = np.zeros((120, 90), np.float32)
    film[20:100, 40:50] = 1.0  # an upright bar on a dark background
    blind = bench_realism.turn_changes(lambda x: 100.0, film)
    assert np.allclose(blind, 0.0)

    def lean(x):  # a reader that reports how far the bright mass leans to the right at the top
        rows, cols = np.nonzero(x > 0.5)
        return float(np.polyfit(rows, cols, 1)[0] * -100)

    changes = bench_realism.turn_changes(lean, film, angles=(-15.0, 15.0))
    assert changes.shape == (2,)
    # counter-clockwise turns lean the bar's top to the left, clockwise to the right
    assert changes[0] > 10 and changes[1] < -10


def test_nearest_real_films_finds_copies_and_their_ages():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(6, 4))
    ages = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    # A copy of real film 2 (scaled: cosine ignores length) and a hand between films 4 and 5.
    synthetic = np.stack([3 * real[2], real[4] + real[5]])
    found = bench_realism.nearest_real_films(real, ages, synthetic, k=1)
    assert found["synthetic_similarity"][0] == pytest.approx(1.0)
    assert found["neighbour_age"][0] == 30.0
    assert found["neighbour_age"][1] in (50.0, 60.0)
    # A real film's nearest neighbour is another film, never itself.
    assert np.all(found["real_similarity"] < 1.0 - 1e-9)
    two = bench_realism.nearest_real_films(real, ages, synthetic, k=2)
    assert two["neighbour_age"][1] == pytest.approx(55.0)
    # The real films' own baseline: each among the others.
    assert found["real_neighbour_age"].shape == (6,)
    assert not np.any(found["real_neighbour_age"] == ages)  # never its own age: itself is left out

"""The comparison machinery on a tiny synthetic world (the real runs are a command, not a test)."""

from __future__ import annotations

import numpy as np
import pytest

from boneage.compare import CompareConfig, agreement, bootstrap_mae, run_compare


def test_bootstrap_ci_contains_the_mae():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 200, 300)
    pred = y + rng.normal(0, 10, 300)
    mae, lo, hi = bootstrap_mae(y, pred)
    assert lo < mae < hi and hi - lo < 3


def test_agreement_says_which_method_is_closer():
    y = np.array([100.0, 100, 100, 100])
    ms = np.array([101.0, 99, 150, 60])
    d = np.array([100.0, 100, 100, 100])
    a = agreement(y, ms, d, threshold=24)
    assert a["n_disagree"] == 2 and a["multistep_closer_when_disagree"] == 0.0


@pytest.mark.slow
def test_quick_synthetic_comparison_writes_the_report(tmp_path):
    config = CompareConfig.quick_config(tmp_path)
    config.synthetic_sizes = (40, 80)
    config.repeats = 1
    config.direct_sample_budget, config.direct_min_epochs, config.direct_max_epochs = 160, 1, 2
    path = run_compare(config, command="boneage compare --quick --no-real", real=False, log=lambda m: None, progress=False)
    text = path.read_text()
    assert "Quick mode" in text and "| n_train |" in text and "Synthetic world" in text
    assert (tmp_path / "comparison_learning_curves.png").stat().st_size > 10_000
    assert (tmp_path / "comparison_bland_altman_synthetic.png").is_file()
    assert "commit `" in text
    # A later run can merge these results instead of redoing the world.
    again = run_compare(CompareConfig.quick_config(tmp_path / "merged"), real=False, log=lambda m: None,
                        progress=False, merge=tmp_path / "comparison_results.json")
    assert "Synthetic world" in again.read_text() and "merged in" in again.read_text()

"""The comparison machinery (boneage.training.compare) on a tiny synthetic world (the real runs are a
command, not a test)."""

from __future__ import annotations

import numpy as np
import pytest

from boneage.training.compare import (CompareConfig, agreement, bootstrap_mae, note_world, notes_to_carry,
                                      run_compare)


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


def test_a_merged_file_carries_only_the_notes_on_what_the_report_takes_from_it():
    notes = [
        "Synthetic world rerun with the renderer of commit abc (an older synthetic world)",
        "real world: the end-to-end CNN runs are reused from an earlier run",
        "results for real n=50, 100 were made by an earlier run",
        "results for synthetic n=50 come from an earlier run merged in (`boneage compare`)",
        "Multi-step side: segmenter-4 features",
    ]
    assert [note_world(n) for n in notes] == ["synthetic", "real", "real", "synthetic", None]
    assert note_world("The real-world curve is flat") is None  # only a note's opening words name its world
    # The real world taken from the file, the synthetic one from a rerun: the old synthetic notes go.
    assert notes_to_carry(notes, {"real"}) == notes[1:3] + notes[4:]
    assert notes_to_carry(notes, {"real", "synthetic"}) == [notes[0], *notes[1:3], notes[4]]
    assert notes_to_carry(notes, set()) == [notes[4]]


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
    # A later run merges these results and runs only the sizes they lack.
    later = CompareConfig.quick_config(tmp_path / "merged")
    later.synthetic_sizes, later.repeats = (40, 80, 120), 1
    later.direct_sample_budget, later.direct_min_epochs, later.direct_max_epochs = 160, 1, 2
    lines: list[str] = []
    again = run_compare(later, real=False, log=lines.append, progress=False, merge=tmp_path / "comparison_results.json")
    assert "Synthetic world" in again.read_text() and "merged in" in again.read_text()
    assert len(lines) == 1 and "n=120" in lines[0]  # 40 and 80 came from the first run
    assert "| 120 |" in again.read_text() and "| 40 |" in again.read_text()
    assert "End-to-end CNN: about 160 training samples per run at 64 px (1-2 epochs)" in again.read_text()
    # Several files: a world comes from the first file that has it, and nothing is rerun.
    third = CompareConfig.quick_config(tmp_path / "third")
    third.synthetic_sizes, third.repeats = (40, 0), 1  # 0 = the whole pool (80), already run
    lines.clear()
    text = run_compare(third, real=False, log=lines.append, progress=False,
                       merge=[tmp_path / "comparison_results.json", tmp_path / "merged" / "comparison_results.json"]).read_text()
    assert not lines and "| 40 |" in text and "| 120 |" not in text
    assert "merged in (`boneage compare --quick --no-real` at commit `" in text  # provenance of merged results


@pytest.mark.slow
def test_end_to_end_runs_are_reused_only_when_they_are_the_same_runs(tmp_path, monkeypatch):
    import json

    from boneage.training import compare

    first = CompareConfig.quick_config(tmp_path / "first")
    first.synthetic_sizes, first.repeats = (40,), 1
    first.direct_sample_budget, first.direct_min_epochs, first.direct_max_epochs = 80, 1, 1
    run_compare(first, real=False, log=lambda m: None, progress=False)
    earlier = tmp_path / "first" / "comparison_results.json"

    def no_training(*args, **kwargs):
        raise AssertionError("a CNN was trained although its run was to be reused")

    monkeypatch.setattr(compare, "_fit_direct", no_training)
    again = CompareConfig.quick_config(tmp_path / "again")
    again.synthetic_sizes, again.repeats = (40,), 1
    again.direct_sample_budget, again.direct_min_epochs, again.direct_max_epochs = 80, 1, 1
    text = run_compare(again, real=False, log=lambda m: None, progress=False, reuse_direct=earlier).read_text()
    assert "end-to-end CNN runs (same draws and settings) are reused from" in text
    old, new = (json.loads(p.read_text())["results"] for p in (earlier, tmp_path / "again" / "comparison_results.json"))
    pick = lambda rs, m: next(r["predictions"] for r in rs if r["method"] == m)  # noqa: E731
    assert pick(new, "direct") == pick(old, "direct")
    assert pick(new, "multistep") == pytest.approx(pick(old, "multistep"))  # same code, same draw

    # Different CNN settings, or a size the earlier run lacks, are refused with the file named.
    other = CompareConfig.quick_config(tmp_path / "other")
    other.synthetic_sizes, other.repeats = (40,), 1
    with pytest.raises(ValueError, match=r"first/comparison_results.json: synthetic end-to-end runs cannot be reused: CNN settings"):
        run_compare(other, real=False, log=lambda m: None, progress=False, reuse_direct=earlier)
    again.synthetic_sizes = (20, 40)  # same pool (40 hands), but no earlier run at 20
    again.out_dir = str(tmp_path / "bigger")
    with pytest.raises(ValueError, match="no end-to-end run to reuse"):
        run_compare(again, real=False, log=lambda m: None, progress=False, reuse_direct=earlier)


@pytest.mark.slow
def test_perbone_curves_join_an_earlier_comparison(tmp_path, monkeypatch, rsna_dev):
    """Per-bone runs use the same draws as the earlier runs and land in the report's tables."""
    monkeypatch.setenv("BONEAGE_CACHE", str(tmp_path / "cache"))
    from boneage import datasets
    from boneage.training import compare

    dev = datasets.rsna_dev()
    pool = dev[dev.split == "train"].head(24).reset_index(drop=True)
    val = dev[dev.split == "val"].head(6).reset_index(drop=True)
    monkeypatch.setattr(compare, "real_pool_tables", lambda seed: (pool, val))
    y = val["bone_age_months"].to_numpy(float)
    earlier = [compare.RunResult("real", 20, 0, m, 10.0, 8.0, 12.0, {}, 1.0, (y + off).tolist())
               for m, off in (("multistep", 10.0), ("direct", -10.0), ("average", 0.0))]
    new = compare.perbone_runs(earlier, seed=0, crop_budget=400, min_epochs=1, max_epochs=1, widths=(8, 8, 8, 8),
                               log=lambda *_: None)
    assert [r.method for r in new] == ["perbone", "average3"]
    pb = np.asarray(new[0].predictions)
    assert len(pb) == len(y) and np.all(np.isfinite(pb))
    # "average3" is the mean of the three methods' ages of the same draw.
    assert np.allclose(new[1].predictions, (y + 10 + y - 10 + pb) / 3)
    table = compare.summary_table(earlier + new, "real")
    assert {"perbone", "average3"} <= set(table.columns)

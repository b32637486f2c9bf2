"""Building the multi-step bundle (boneage.training.multistep): `boneage reference build`, the mm length
model, the film-feature cache, the regression's extra films and the model card."""

from __future__ import annotations

import numpy as np
import pytest

from boneage import cli
from boneage.growth import ReferenceTable
from boneage.training.multistep import length_reference_from_synthetic


def test_reference_build_from_a_labelled_folder(synth_folder, capsys):
    out = synth_folder / "ref.csv"
    assert cli.main(["reference", "build", str(synth_folder), "--out", str(out)]) == cli.EXIT_OK
    table = ReferenceTable.load(out)
    assert "60 measured hands" in table.description
    assert "metacarpal_3.epiphysis_present" in table.binary
    # Maturity rises with age: the radius epiphysis is absent in infancy, present later.
    assert table.expected("radius.epiphysis_present", 6, "F")[0] < table.expected("radius.epiphysis_present", 150, "F")[0]


def test_reference_build_usage_errors(tmp_path, capsys):
    assert cli.main(["reference", "build", str(tmp_path)]) == cli.EXIT_USAGE
    assert "labels.csv not found" in capsys.readouterr().err
    (tmp_path / "labels.csv").write_text("image,age\na.png,3\n")
    assert cli.main(["reference", "build", str(tmp_path)]) == cli.EXIT_USAGE
    assert "needs columns" in capsys.readouterr().err


def test_length_model_grows_with_age():
    table = length_reference_from_synthetic(n=150, progress=False)
    assert "MODEL" in table.description
    young = table.expected("metacarpal_3.length_mm", 24, "M")[0]
    old = table.expected("metacarpal_3.length_mm", 200, "M")[0]
    assert 20 < young < old < 90


def test_film_features_segment_each_film_once(rsna_dev, tmp_path, monkeypatch):
    from boneage import datasets
    from boneage.measure import feature_names
    from boneage.synth import generate_hand
    from boneage.training.multistep import film_features

    monkeypatch.setenv("BONEAGE_CACHE", str(tmp_path))
    hand = generate_hand(5, 5, size=256)
    calls = []

    def fake_segment(pixels):
        calls.append(pixels.shape)
        out = np.zeros(pixels.shape, np.uint8)
        h, w = min(pixels.shape[0], hand.label_map.shape[0]), min(pixels.shape[1], hand.label_map.shape[1])
        out[:h, :w] = hand.label_map[:h, :w]
        return out

    table = datasets.rsna_dev(rsna_dev).head(4)
    first = film_features(table.iloc[:3], "test-seg", fake_segment, progress=False)
    both = film_features(table, "test-seg", fake_segment, progress=False)
    assert len(calls) == 4  # three, then only the new one
    assert list(both.columns) == feature_names() and len(both) == 4
    np.testing.assert_allclose(both.iloc[:3].to_numpy(), first.to_numpy(), equal_nan=True)
    again = film_features(table.iloc[::-1], "test-seg", fake_segment, progress=False)  # order follows the table
    np.testing.assert_allclose(again.iloc[::-1].to_numpy(), both.to_numpy(), equal_nan=True)
    assert len(calls) == 4


def test_film_features_keep_finished_chunks_when_interrupted(rsna_dev, tmp_path, monkeypatch):
    from boneage import datasets
    from boneage.training import multistep

    monkeypatch.setenv("BONEAGE_CACHE", str(tmp_path))
    monkeypatch.setattr(multistep, "FEATURE_CHUNK", 2)
    calls = []

    def failing_on_the_third(pixels):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops a long run
        return np.zeros(pixels.shape, np.uint8)

    table = datasets.rsna_dev(rsna_dev).head(4)
    with pytest.raises(KeyboardInterrupt):
        multistep.film_features(table, "test-seg", failing_on_the_third, progress=False)
    calls.clear()
    multistep.film_features(table, "test-seg", lambda p: (calls.append(1), np.zeros(p.shape, np.uint8))[1], progress=False)
    assert len(calls) == 2  # the first chunk of two films was kept


def test_widened_films_are_read_at_a_true_aspect_and_cached_apart(rsna_dev, tmp_path, monkeypatch):
    from boneage import datasets
    from boneage.io import load_radiograph
    from boneage.perbone import RSNA_299_WIDTH_TO_HEIGHT
    from boneage.training.multistep import RSNA_299_WIDENED, film_features, read_film_for_measuring
    from boneage.training.perbone import read_training_film

    monkeypatch.setenv("BONEAGE_CACHE", str(tmp_path))
    table = datasets.rsna_dev(rsna_dev).head(2)
    path = table["path"].iloc[0]
    as_given, widened = read_film_for_measuring(path, "rsna-dev"), read_film_for_measuring(path, RSNA_299_WIDENED)
    np.testing.assert_array_equal(as_given.pixels, load_radiograph(path).pixels)
    h = as_given.pixels.shape[0]
    assert widened.pixels.shape == (h, round(h * RSNA_299_WIDTH_TO_HEIGHT)) and widened.spacing_mm is None
    assert 0.0 <= widened.pixels.min() and widened.pixels.max() <= 1.0
    # Widened exactly as the per-bone network's training reads a squashed film.
    np.testing.assert_array_equal(widened.pixels, read_training_film(path, "rsna-299"))
    shapes = []

    def fake_segment(pixels):
        shapes.append(pixels.shape)
        return np.zeros(pixels.shape, np.uint8)

    film_features(table, "test-seg", fake_segment, progress=False)
    film_features(table.assign(source=RSNA_299_WIDENED), "test-seg", fake_segment, progress=False)
    film_features(table.assign(source=RSNA_299_WIDENED), "test-seg", fake_segment, progress=False)  # cached
    assert len(shapes) == 4  # each film once as given, once widened (a cache entry of its own)
    assert shapes[2] == widened.pixels.shape and shapes[0] == as_given.pixels.shape


def test_film_features_with_worker_processes(rsna_dev, tmp_path, monkeypatch):
    """Two spawned workers (shipped segmenter, one thread each) measure like one process does."""
    from boneage import datasets
    from boneage.measure import feature_names
    from boneage.training.multistep import film_features, load_segmenter_fn

    monkeypatch.setenv("BONEAGE_CACHE", str(tmp_path))
    table = datasets.rsna_dev(rsna_dev).head(3)
    pooled = film_features(table, "pooled", progress=False, workers=2)
    single = film_features(table, "single", load_segmenter_fn(), progress=False)
    assert list(pooled.columns) == feature_names() and len(pooled) == 3
    a, b = pooled.to_numpy(float), single.to_numpy(float)
    both = np.isfinite(a) & np.isfinite(b)
    # Thread count may flip a few boundary pixels; the features must still agree almost everywhere.
    assert np.mean(np.isfinite(a) == np.isfinite(b)) > 0.95
    assert np.mean(np.isclose(a[both], b[both], rtol=0.02, atol=1e-6)) > 0.95


def test_squash_safe_drops_shape_and_area_features_only():
    import pandas as pd

    from boneage.measure import feature_names
    from boneage.training.multistep import squash_safe

    names = feature_names()
    frame = pd.DataFrame([np.arange(len(names), dtype=float)], columns=names)
    safe = squash_safe(frame)
    assert np.isnan(safe["metacarpal_3.aspect"]).all() and np.isnan(safe["capitate.area_rel"]).all()
    assert safe["radius.epiphysis_ratio"].iloc[0] == frame["radius.epiphysis_ratio"].iloc[0]
    assert safe["proximal_phalanx_3.length_rel"].iloc[0] == frame["proximal_phalanx_3.length_rel"].iloc[0]
    assert not np.isnan(frame.to_numpy()).any()  # the input is left alone


def test_squashed_films_keep_every_feature_unless_asked():
    import pandas as pd

    from boneage.measure import feature_names
    from boneage.training.multistep import squashed_measurements

    names = feature_names()
    table = pd.DataFrame({"id": [7, 9], "bone_age_months": [30.0, 150.0], "sex": ["F", "M"]}, index=[4, 5])
    features = pd.DataFrame(np.arange(2 * len(names), dtype=float).reshape(2, -1), columns=names, index=[4, 5])
    every = squashed_measurements(table, features)
    assert every.ids == ["rsna-299:7", "rsna-299:9"]
    assert list(every.bone_age_months) == [30.0, 150.0] and list(every.sex) == ["F", "M"]
    assert np.isfinite(every.features.to_numpy()).all() and list(every.features.index) == [0, 1]
    safe = squashed_measurements(table, features, squash_safe_only=True)
    assert np.isnan(safe.features["metacarpal_3.aspect"]).all() and list(safe.features.index) == [0, 1]
    assert (safe.features["radius.epiphysis_ratio"].to_numpy() == features["radius.epiphysis_ratio"].to_numpy()).all()


def test_regression_extra_trains_the_regression_not_the_reference(synth_folder):
    from boneage.training.multistep import LabelledMeasurements, fit_bundle, labelled_folder

    data = labelled_folder(synth_folder, progress=False)
    half = np.arange(len(data.ids)) < 30
    base = fit_bundle(data.subset(half), description="base", seed=0, max_iter=50)
    more = fit_bundle(data.subset(half), description="more", seed=0, max_iter=50,
                      regression_extra=data.subset(~half))
    # Same reference table (built from the first half only) ...
    pd_base, pd_more = base.maturity.to_frame(), more.maturity.to_frame()
    assert pd_base.equals(pd_more)
    # ... but a different regression: it saw all 60 hands.
    held = data.subset(~half)
    assert not np.allclose(base.regression.predict(held.features, held.sex),
                           more.regression.predict(held.features, held.sex))
    assert isinstance(data, LabelledMeasurements)


def test_films_not_cached_counts_only_new_films(rsna_dev, tmp_path, monkeypatch):
    from boneage import datasets
    from boneage.synth import generate_hand
    from boneage.training import multistep
    from boneage.training.multistep import film_features, films_not_cached

    monkeypatch.setenv("BONEAGE_CACHE", str(tmp_path))
    hand = generate_hand(5, 5, size=256)

    def fake_segment(pixels):
        out = np.zeros(pixels.shape, np.uint8)
        h, w = min(pixels.shape[0], hand.label_map.shape[0]), min(pixels.shape[1], hand.label_map.shape[1])
        out[:h, :w] = hand.label_map[:h, :w]
        return out

    table = datasets.rsna_dev(rsna_dev).head(5)
    assert films_not_cached(table, "test-seg") == 5
    film_features(table.iloc[:2], "test-seg", fake_segment, progress=False)
    assert films_not_cached(table, "test-seg") == 3
    assert films_not_cached(table, "other-seg") == 5  # the cache is per segmenter version ...
    monkeypatch.setattr(multistep, "MEASURE_VERSION", "measure-test")
    assert films_not_cached(table, "test-seg") == 5  # ... and per way of measuring


@pytest.mark.parametrize("films_measured, expected", [
    (0, "Every film's features came from the local feature cache"),
    (812, "Segmenting + measuring 812 films not yet in the local feature cache took 7.5 min"),
])
def test_model_card_states_how_many_films_were_measured(tmp_path, films_measured, expected):
    import json
    import shutil

    from boneage.multistep import MULTISTEP_DIR
    from boneage.training.multistep import write_model_card

    shutil.copy(MULTISTEP_DIR / "metrics.json", tmp_path / "metrics.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    metrics.update(films_measured=films_measured, minutes_measure=7.5, minutes_total=9.25)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    text = write_model_card(tmp_path).read_text()
    assert expected in text
    assert "the whole command took 9.2 min" in text
    assert f"`{metrics['model_version']}`" in text and f"{metrics['n_val']} films" in text


def test_rsna_299_films_all_or_a_seeded_sample(monkeypatch):
    import pandas as pd

    from boneage import datasets
    from boneage.training.multistep import rsna_299_films

    table = pd.DataFrame({"id": range(10), "bone_age_months": np.linspace(10, 200, 10), "sex": ["F", "M"] * 5,
                          "source": "rsna-299"})
    monkeypatch.setattr(datasets, "rsna_299", lambda: table)
    assert len(rsna_299_films(-1)) == 10 and len(rsna_299_films(10)) == 10 and len(rsna_299_films(25)) == 10
    sample = rsna_299_films(4, seed=3)
    assert len(sample) == 4 and list(sample["id"]) == list(rsna_299_films(4, seed=3)["id"])
    # Widened, the same films under the source their widened features are cached by.
    wide = rsna_299_films(4, seed=3, widened=True)
    assert list(wide["id"]) == list(sample["id"]) and set(wide["source"]) == {"rsna-299-widened"}


def test_train_multistep_refuses_an_unknown_aspect_before_any_work(tmp_path):
    from boneage.training.multistep import train_multistep

    with pytest.raises(ValueError, match="rsna_299_aspect must be 'squashed' or 'widened', not 'tall'"):
        train_multistep(tmp_path / "out", rsna_299=10, rsna_299_aspect="tall", progress=False)
    assert not (tmp_path / "out").exists()


def test_train_multistep_command_passes_the_aspect(tmp_path, monkeypatch):
    from boneage.training import multistep

    seen = {}

    def fake_train(out, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")  # the arguments are what this test reads

    monkeypatch.setattr(multistep, "train_multistep", fake_train)
    with pytest.raises(RuntimeError, match="stop here"):
        cli.main(["train", "multistep", "--out", str(tmp_path), "--rsna-299", "-1", "--rsna-299-aspect", "widened"])
    assert seen["rsna_299"] == -1 and seen["rsna_299_aspect"] == "widened"
    with pytest.raises(RuntimeError):
        cli.main(["train", "multistep", "--out", str(tmp_path), "--rsna-299", "-1"])
    assert seen["rsna_299_aspect"] == "squashed"  # the default


def test_rsna_299_recipe_read_from_a_bundles_metrics():
    import json

    from boneage.multistep import METRICS_FILE, MULTISTEP_DIR
    from boneage.training.multistep import rsna_299_recipe

    assert rsna_299_recipe({"seed": 0}) == (0, 0, True, False)
    # Bundles from before the feature choice was recorded gave the squashed films shape-free features only,
    # and those from before the aspect was recorded measured them squashed.
    assert rsna_299_recipe({"n_train_rsna_299": 500, "seed": 3}) == (500, 3, True, False)
    assert rsna_299_recipe({"n_train_rsna_299": 11232, "seed": 0, "rsna_299_features": "all"}) == (11232, 0, False, False)
    assert rsna_299_recipe({"n_train_rsna_299": 11232, "seed": 0, "rsna_299_features": "all",
                            "rsna_299_aspect": "widened"}) == (11232, 0, False, True)
    # The shipped bundle (which the combined stacking's hold-out refit copies) says what it was trained on.
    shipped = json.loads((MULTISTEP_DIR / METRICS_FILE).read_text())
    n, _, squash_safe_only, widened = rsna_299_recipe(shipped)
    assert n == shipped["n_train_rsna_299"] and squash_safe_only == (shipped["rsna_299_features"] == "squash-safe")
    assert widened == (shipped.get("rsna_299_aspect") == "widened")

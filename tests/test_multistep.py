"""The multi-step bundle at inference (boneage.multistep): the per-bone table and the reported blend.

Building the bundle (``boneage train multistep``, ``boneage reference build``) is tested in
test_training_multistep.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from boneage.multistep import main_feature


def test_main_feature_follows_maturity():
    from boneage.measure import BoneMeasurement

    assert main_feature(BoneMeasurement("capitate")) == "capitate.area_rel"
    open_physis = BoneMeasurement("radius", epiphysis_present=True, epiphysis_ratio=0.8, fusion_contact=0.0)
    fusing = BoneMeasurement("radius", epiphysis_present=True, epiphysis_ratio=1.0, fusion_contact=0.7)
    assert main_feature(open_physis) == "radius.epiphysis_ratio"
    assert main_feature(fusing) == "radius.fusion_contact"
    assert main_feature(BoneMeasurement("radius", epiphysis_present=False)) == "radius.epiphysis_present"


def test_bundle_reports_the_blend_of_regression_and_lookup(synth_folder, tmp_path):
    import shutil

    from boneage.growth import lookup_out_of_fold
    from boneage.measure import measure
    from boneage.multistep import COMBINATION_FILE, COMBINATION_SEX_UNKNOWN_FILE, MultiStepModel
    from boneage.synth import generate_hand
    from boneage.training.multistep import evaluate, fit_bundle, labelled_folder

    data = labelled_folder(synth_folder, progress=False)
    model = fit_bundle(data, description="blend", seed=0, max_iter=50)
    # On these few hands neither estimator alone is best: the check below tests a real mix.
    assert model.blend is not None and 0.0 < model.blend.regression_weight < 1.0
    loaded = MultiStepModel.load(model.save(tmp_path / "bundle"))
    assert loaded.blend == model.blend

    hand = generate_hand(31, 0, size=256)
    m = measure(hand.label_map)  # no spacing: the lookup is the maturity reference alone
    est = loaded.estimate(m, hand.sex)
    expected = loaded.blend.combine(est.regression_age_months, est.lookup_age_months)
    assert (est.age_months, est.lower_90, est.upper_90) == pytest.approx(tuple(float(a) for a in expected))
    metrics = evaluate(loaded, data)
    assert metrics["regression_mae_months"] is not None and metrics["final"]["all"]["n"] == 60

    # A hand of unknown sex: the regression's sex-agnostic model, joined to the lookup by the
    # sex-unknown blend (fitted on the same films' out-of-fold ages with the sex withheld).
    assert loaded.blend_sex_unknown == model.blend_sex_unknown is not None
    withheld = lookup_out_of_fold(data.features, data.bone_age_months, data.sex, model.maturity.tau, seed=0,
                                  sex_withheld=True)
    assert model.blend_sex_unknown.lookup_cv_mae == pytest.approx(np.mean(np.abs(withheld - data.bone_age_months)))
    assert model.blend_sex_unknown.regression_cv_mae == pytest.approx(model.regression.cv_mae_sex_unknown)
    unknown = loaded.estimate(m, None)
    assert unknown.regression_age_months == pytest.approx(float(loaded.regression.predict(
        pd.DataFrame([m.features()]), [None])[0]))
    expected = loaded.blend_sex_unknown.combine(unknown.regression_age_months, unknown.lookup_age_months)
    assert (unknown.age_months, unknown.lower_90, unknown.upper_90) == pytest.approx(tuple(float(a) for a in expected))
    table = loaded.predict_table(pd.DataFrame([m.features()] * 2), [hand.sex, None])  # one call, both kinds
    assert table["age"] == pytest.approx([est.age_months, unknown.age_months])
    assert table["lower_90"] == pytest.approx([est.lower_90, unknown.lower_90])

    # A bundle written before the sex-unknown blend existed uses its one blend for every hand.
    older = tmp_path / "older"
    shutil.copytree(tmp_path / "bundle", older)
    (older / COMBINATION_SEX_UNKNOWN_FILE).unlink()
    one_blend = MultiStepModel.load(older)
    assert one_blend.blend_sex_unknown is None
    unknown_then = one_blend.estimate(m, None)
    assert (unknown_then.age_months, unknown_then.lower_90) == pytest.approx(tuple(float(a) for a in loaded.blend.combine(
        unknown.regression_age_months, unknown.lookup_age_months)[:2]))

    # A bundle written before the blend existed reports the regression's age, as it did then.
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "bundle", old)
    (old / COMBINATION_FILE).unlink()
    (old / COMBINATION_SEX_UNKNOWN_FILE).unlink()
    legacy = MultiStepModel.load(old)
    assert legacy.blend is None
    assert legacy.estimate(m, hand.sex).age_months == pytest.approx(est.regression_age_months)

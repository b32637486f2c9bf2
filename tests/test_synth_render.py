"""Rasterising synthetic bone parts (boneage.synth_render)."""

from __future__ import annotations

import numpy as np

from boneage.synth_render import Canvas, ShapePx, paint_shape


def _shaft(trabecular_density: float) -> ShapePx:
    return ShapePx(label=7, start=np.array([10.0, 30.0]), direction=np.array([1.0, 0.0]), length=40.0,
                   t_knots=np.array([0.0, 1.0]), halfwidth_knots=np.array([8.0, 8.0]),
                   cortex_knots=np.array([0.3, 0.3]), cap_start=0.0, cap_end=0.0,
                   trabecular_density=trabecular_density)


def test_trabecular_density_scales_the_medulla_only() -> None:
    full, hollow = Canvas.empty(60, 60), Canvas.empty(60, 60)
    paint_shape(full, _shaft(1.0))
    paint_shape(hollow, _shaft(0.5))
    assert np.allclose(hollow.cortical, full.cortical)
    assert np.allclose(hollow.trabecular, 0.5 * full.trabecular) and full.trabecular.max() > 0
    assert np.array_equal(hollow.labels, full.labels)
    # Across the shaft, the cortex's path peaks near the inner radius and the medulla's at the centre.
    column = full.cortical[:, 30]
    assert column[30] < column[30 - 6]

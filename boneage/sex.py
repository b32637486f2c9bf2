"""Sex read from the film, for when it is not given (a PNG/JPEG without a manifest, a header without it).

Every method reads a film better with the sex given (girls mature earlier: the same film means an
older boy). When the sex is unknown, a small network reads it from the same aligned bone crops the
per-bone method uses (:mod:`boneage.perbone`; one MONAI ResNet shared by the 14 regions, no sex
input, one logit per crop); the film's probability is the mean logit over its crops, shifted and
temperature-scaled (Platt scaling) on the calibration hold-out of the training split. A prediction at least
:data:`CONFIDENT_PROBABILITY` sure is used by every method and said (``sex_source = "predicted"``
with its probability); a less certain one is reported, and the per-bone and end-to-end methods read
the film as a boy and as a girl and weigh the two by the male probability
(:func:`boneage.direct.mix_by_sex`). Sex is hard to read before puberty; the model card gives the
accuracy by age band.

Data flow: :class:`boneage.perbone.BoneCrops` -> :meth:`SexEstimator.predict` -> :class:`SexPrediction`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boneage.perbone import BoneCrops, crop_network_inputs, load_crop_network

WEIGHTS_FILE = "sex.pt"
#: ONNX copy beside the weights (``python -m boneage.training.export``): runs without torch.
ONNX_FILE = "sex.onnx"
CALIBRATION_FILE = "calibration.json"
METRICS_FILE = "metrics.json"
MODEL_VERSION = "sex-4"
#: A predicted sex is used only when the network is at least this sure of it.
CONFIDENT_PROBABILITY = 0.8
#: Fewest cropped regions for a prediction.
MIN_REGIONS = 7


def calibrated_male_probability(logits: np.ndarray | float, temperature: float, offset: float) -> np.ndarray:
    """A film's mean crop logit as a probability: ``sigmoid((logit - offset) / temperature)``.

    Args:
        logits: mean crop logits, one per film (or one number).
        temperature, offset: the Platt calibration (``calibration.json``).

    Returns:
        The male probabilities, of the logits' shape.
    """
    return 1.0 / (1.0 + np.exp(-(np.asarray(logits, dtype=np.float64) - offset) / temperature))


@dataclass
class SexPrediction:
    """The sex read from a film.

    Attributes:
        sex: ``"M"`` or ``"F"``, the likelier one.
        probability: how sure (0.5-1) of ``sex``.
        confident: ``probability >= CONFIDENT_PROBABILITY``: the methods use it.
        model_version: weights version.
    """

    sex: str
    probability: float
    confident: bool
    model_version: str = MODEL_VERSION


class SexEstimator:
    """The trained sex-from-film network and its calibration.

    Example:
        >>> SexEstimator.load().predict(crops)                  # doctest: +SKIP
        SexPrediction(sex='F', probability=0.93, confident=True, ...)
    """

    def __init__(self, network: Any, calibration: dict, device: str = "cpu") -> None:
        from boneage.runtime import runnable

        self.network, self._forward = runnable(network, device)
        self.calibration = calibration
        self.device = str(device)
        self.model_version = calibration.get("model_version", MODEL_VERSION)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", exported: bool = True) -> SexEstimator:
        """Load weights (fp16 on disk) and the calibration (temperature, logit offset) from a model folder.

        Args:
            path: a weights file or a folder holding :data:`WEIGHTS_FILE`; default the shipped one.
            device: ``"cpu"`` (default), or a torch device (then the network runs in torch).
            exported: on a CPU, run the ONNX copy beside the weights (:data:`ONNX_FILE`) when it
                was exported from them (same numbers; neither torch nor MONAI is imported).

        Raises:
            FileNotFoundError: when the weights are missing.
        """
        weights, _, network = load_crop_network(path, "sex", WEIGHTS_FILE, ONNX_FILE, exported,
                                                "sex-from-film weights", "boneage train sex", device)
        calibration = {}
        cal_file = weights.parent / CALIBRATION_FILE
        if cal_file.is_file():
            calibration = json.loads(cal_file.read_text())
        return cls(network, calibration, device)

    def male_probability(self, crops: BoneCrops) -> float | None:
        """Probability that the film is a boy's (``None`` with fewer than :data:`MIN_REGIONS` crops)."""
        idx = np.flatnonzero(crops.present)
        if len(idx) < MIN_REGIONS:
            return None
        inputs = crop_network_inputs(crops, idx, self.calibration.get("crop_intensity", "window"))
        logits, _ = self._forward(inputs, idx.astype(np.int64), np.zeros(len(idx), np.float32))
        mean = float(logits.astype(np.float64).mean())
        return float(calibrated_male_probability(mean, float(self.calibration.get("temperature", 1.0)),
                                                 float(self.calibration.get("logit_offset", 0.0))))

    def predict(self, crops: BoneCrops) -> SexPrediction | None:
        """The likelier sex and how sure the network is (``None`` without enough crops)."""
        p_male = self.male_probability(crops)
        if p_male is None:
            return None
        sex, probability = ("M", p_male) if p_male >= 0.5 else ("F", 1.0 - p_male)
        return SexPrediction(sex, probability, probability >= CONFIDENT_PROBABILITY, self.model_version)

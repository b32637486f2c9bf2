"""End-to-end estimator: radiograph (+ sex, when known) -> bone age in months with a 90% interval.

This module is the inference half (network, loading, prediction); training, augmentation,
calibration, evaluation and the model card are in :mod:`boneage.training.direct`.

Design (see ``data/models/direct/MODEL_CARD.md`` for the shipped numbers):

* Input: :func:`boneage.preprocess.prepare_model_input` -- content crop, squash to a square
  (aspect ignored, identically for every source), percentile intensity window -- at
  :data:`CACHE_SIZE` px, stored as uint8; the network sees :data:`INPUT_SIZE` px.
* Network: a narrow MONAI 2-D ResNet-18 (widths 32-64-128-256, ``conv1_t_stride=2``) whose pooled
  features are joined with a sex code (+1 male, -1 female, 0 unknown) and an MLP head that
  returns a location and a Laplace scale for the standardised bone age.
* Sex: the network was trained with the sex code hidden for part of the samples, so it has an
  honest sex-agnostic mode; an unknown sex is reported, never assumed.
* Uncertainty: ``location +- factor * scale``, the conformal factors (sex known / unknown) stored
  with the weights.
* Age-band bias: estimate and interval are read through a monotone map fitted on the calibration
  hold-out when it pays there (:mod:`boneage.agemap`; :func:`calibrated_interval`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boneage.preprocess import prepare_model_input

#: Side of the preprocessed uint8 image (as cached for training) that is resized to the network input.
CACHE_SIZE = 256
#: Side of the network input.
INPUT_SIZE = 256
#: Plausible output range (months); predictions and intervals are clipped to it.
AGE_RANGE_MONTHS = (0.0, 240.0)
#: Name of the weights file inside a model folder.
WEIGHTS_FILE = "direct_cnn.pt"
#: ONNX copy beside the weights (``python -m boneage.training.export``): runs without torch.
ONNX_FILE = "direct_cnn.onnx"
METRICS_FILE = "metrics.json"
MODEL_VERSION = "direct-cnn-4"
#: Intensity normalisation of the network input: ``(x - centre) / scale`` for x in [0, 1].
INTENSITY_CENTRE, INTENSITY_SCALE = 0.4, 0.25


def sex_to_code(sex: str | None) -> float:
    """+1 for ``"M"``, -1 for ``"F"``, 0 for ``None`` (unknown).

    Raises:
        ValueError: for any other value.
    """
    if sex is None:
        return 0.0
    s = str(sex).strip().upper()
    if s in ("M", "MALE"):
        return 1.0
    if s in ("F", "FEMALE"):
        return -1.0
    if s in ("", "U", "UNKNOWN", "O", "NONE", "NAN"):
        return 0.0
    raise ValueError(f"sex must be 'M', 'F' or None, got {sex!r}")


#: Test-time augmentation: the prepared input is also read tilted by these angles (degrees) and
#: the locations and scales averaged. Chosen on the calibration hold-out of the training split
#: (MAE 10.66 -> 10.55 months); it also halves the spread a few degrees of film tilt causes.
TTA_TILTS_DEG = (-6.0, 0.0, 6.0)


def tilted_views(prepared: np.ndarray, tilts: tuple[float, ...] = TTA_TILTS_DEG) -> np.ndarray:
    """The prepared ``S x S`` input (floats in [0, 1]) at each tilt, as uint8 ``(len(tilts), S, S)``.

    Corners that a tilt uncovers are filled with the input's border median (film background).
    """
    from scipy import ndimage

    fill = float(np.median(np.concatenate([prepared[0], prepared[-1], prepared[:, 0], prepared[:, -1]])))
    views = [prepared if t == 0 else ndimage.rotate(prepared, t, reshape=False, order=1, mode="constant", cval=fill)
             for t in tilts]
    return np.stack([np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8) for v in views])


def clipped_interval(locations: np.ndarray, scales: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate and interval ``location +- factor * scale``, each clipped to :data:`AGE_RANGE_MONTHS`."""
    lo, hi = AGE_RANGE_MONTHS
    return (
        np.clip(locations, lo, hi),
        np.clip(locations - factor * scales, lo, hi),
        np.clip(locations + factor * scales, lo, hi),
    )


def calibrated_interval(locations: np.ndarray, scales: np.ndarray, calibration: dict,
                        sex_known: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate and 90% interval from the network's locations and scales, as shipped.

    ``location +- factor * scale`` with the conformal factor of the sex mode, read through the
    mode's age-band bias map (:mod:`boneage.agemap`) when the calibration holds one, clipped to
    :data:`AGE_RANGE_MONTHS`.

    Args:
        locations, scales: network outputs in months.
        calibration: the weights' calibration (conformal factors, optional ``age_map``).
        sex_known: whether the sex code was given (else the sex-agnostic mode ran).
    """
    from boneage.agemap import AgeMap, read_interval

    mode = "sex_known" if sex_known else "sex_unknown"
    age_map = AgeMap.from_dict((calibration.get("age_map") or {}).get(mode))
    return read_interval(age_map, locations, calibration[f"factor_{mode}"] * np.asarray(scales), AGE_RANGE_MONTHS)


def mix_by_sex(male: tuple[float, float, float], female: tuple[float, float, float],
               male_probability: float) -> tuple[float, float, float]:
    """One reading of a film whose sex is uncertain, from its readings as a boy and as a girl.

    Why: on the calibration hold-out of the training split, weighting the two readings by the
    film's male probability (:mod:`boneage.sex`) erred less than the networks' sex-agnostic modes
    (per-bone 11.5 vs 12.2 months, CNN 11.7 vs 12.2, with the confident films read as their
    predicted sex either way).

    Args:
        male, female: ``(age, lower_90, upper_90)`` read as a boy and as a girl.
        male_probability: probability that the film is a boy's.

    Returns:
        ``(age, lower_90, upper_90)``: the probability-weighted age, and an interval spanning both
        readings' intervals (each sex keeps at least a 1 in 5 chance when this is used).
    """
    p = float(np.clip(male_probability, 0.0, 1.0))
    return (p * male[0] + (1.0 - p) * female[0], min(male[1], female[1]), max(male[2], female[2]))


#: The note of an estimate read as both sexes (``{p}``: the male probability).
SEX_MIXED_NOTE = ("sex unknown: the readings as a boy and as a girl, weighted by the film's male probability "
                  "({p:.0%}); the interval spans both")


# ----------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DirectPrediction:
    """One end-to-end estimate.

    Attributes:
        age_months: bone age estimate.
        lower_90, upper_90: the calibrated 90% interval.
        sex_used: the sex given to the network (``"M"``, ``"F"``), or ``None`` when it was unknown.
        sex_note: a sentence for the report when the sex was unknown, else ``None``.
        model_version: the weights' version string.
    """

    age_months: float
    lower_90: float
    upper_90: float
    sex_used: str | None
    sex_note: str | None
    model_version: str


class DirectEstimator:
    """Loaded end-to-end CNN.

    Args:
        model: the network: an :class:`boneage.runtime.OnnxNetwork` or a torch module
            (:class:`boneage.networks.BoneAgeNet` or an ensemble of them).
        target_mean, target_sd: target standardisation.
        calibration: conformal factors and the TTA choice.
        input_size: network input side; ``cache_size`` is the preprocessing side.
        version: model version string.
        tilts: test-time tilts in degrees (see :data:`TTA_TILTS_DEG`; ``(0.0,)`` for one view).
        device: where a torch module runs.
    """

    def __init__(self, model: Any, target_mean: float, target_sd: float, calibration: dict,
                 input_size: int = INPUT_SIZE, cache_size: int = CACHE_SIZE, version: str = MODEL_VERSION,
                 tilts: tuple[float, ...] = TTA_TILTS_DEG, device: str = "cpu") -> None:
        from boneage.runtime import runnable

        self.tilts = tuple(tilts)
        self.model, self._forward = runnable(model, device)
        self.target_mean = target_mean
        self.target_sd = target_sd
        self.calibration = calibration
        self.input_size = input_size
        self.cache_size = cache_size
        self.version = version

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", exported: bool = True) -> DirectEstimator:
        """Load weights (fp16 on disk) into a float32 model.

        Args:
            path: a weights file or a folder holding :data:`WEIGHTS_FILE`; default the shipped one.
            device: ``"cpu"`` (default), or a torch device (then the network runs in torch).
            exported: on a CPU, run the ONNX copy beside the weights (:data:`ONNX_FILE`) when it
                was exported from them (same numbers; neither torch nor MONAI is imported).

        Raises:
            FileNotFoundError: when the weights are missing.
        """
        from boneage.paths import MODELS_DIR

        path = Path(path) if path else MODELS_DIR / "direct"
        if path.is_dir():
            path = path / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"direct CNN weights not found at {path}; run `boneage train direct`")
        from boneage.runtime import load_checkpoint

        checkpoint, model = load_checkpoint(path, ONNX_FILE, exported, device, weights_only=True)
        config = checkpoint["config"]
        if model is None:
            from boneage.networks import build_direct_network

            model = build_direct_network(tuple(config.get("widths", (32, 64, 128, 256))), int(config.get("members", 1)))
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()})
        return cls(model, checkpoint["target_mean"], checkpoint["target_sd"], checkpoint["calibration"],
                   config.get("input_size", INPUT_SIZE), config.get("cache_size", CACHE_SIZE),
                   checkpoint.get("version", MODEL_VERSION), device=device)

    def predict_uint8(self, images: np.ndarray, sex_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Location and Laplace scale (months) of preprocessed uint8 ``(N, S, S)`` images (sex codes ``(N,)``)."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            from boneage.networks import images_to_tensor  # a resize on the way in: torch's antialiased bilinear

            x = images_to_tensor(images, self.input_size).numpy()
        else:
            x = (images[:, None].astype(np.float32) / np.float32(255.0) - np.float32(INTENSITY_CENTRE)) / np.float32(INTENSITY_SCALE)
        codes = np.asarray(sex_codes, dtype=np.float32)
        loc, log_scale = self._forward(x, codes)
        if self.calibration.get("flip_tta", False):
            loc2, log_scale2 = self._forward(np.ascontiguousarray(x[..., ::-1]), codes)
            loc, log_scale = (loc + loc2) / 2, (log_scale + log_scale2) / 2
        return loc * self.target_sd + self.target_mean, np.exp(log_scale) * self.target_sd

    def predict(self, image, sex: str | None = None, male_probability: float | None = None) -> DirectPrediction:
        """Estimate bone age for one radiograph.

        Args:
            image: a :class:`boneage.io.Radiograph` or a 2-D array (bone bright).
            sex: ``"M"``, ``"F"`` or ``None``; when ``None`` and ``image`` is a Radiograph its
                ``sex`` is used. An unknown sex is never assumed: the sex-agnostic mode runs and
                the result says so.
            male_probability: for an unknown sex, the film's probability of being a boy's (read
                from the film): the network then reads it as both sexes and weighs the two
                (:func:`mix_by_sex`) instead of its sex-agnostic mode.

        Returns:
            :class:`DirectPrediction`.
        """
        pixels = getattr(image, "pixels", image)
        if sex is None:
            sex = getattr(image, "sex", None)
        code = sex_to_code(sex)
        prepared, _ = prepare_model_input(np.asarray(pixels), self.cache_size)
        uint8 = tilted_views(prepared, self.tilts)
        if code == 0 and male_probability is not None:
            # Every view read as a boy and as a girl in one pass; each sex's views averaged.
            loc, scale = self.predict_uint8(np.concatenate([uint8, uint8]), np.repeat([1.0, -1.0], len(uint8)))
            age, lower, upper = calibrated_interval(loc.reshape(2, -1).mean(axis=1), scale.reshape(2, -1).mean(axis=1),
                                                    self.calibration, sex_known=True)
            mixed = mix_by_sex((age[0], lower[0], upper[0]), (age[1], lower[1], upper[1]), male_probability)
            return DirectPrediction(*(float(v) for v in mixed), None, SEX_MIXED_NOTE.format(p=male_probability),
                                    self.version)
        loc, scale = self.predict_uint8(uint8, np.full(len(uint8), code))
        loc, scale = loc.mean(keepdims=True), scale.mean(keepdims=True)
        age, lower, upper = calibrated_interval(loc, scale, self.calibration, sex_known=code != 0)
        sex_used = None if code == 0 else ("M" if code > 0 else "F")
        note = None if sex_used else "sex unknown: estimated by the sex-agnostic mode of the network (wider interval); no sex was assumed"
        return DirectPrediction(float(age[0]), float(lower[0]), float(upper[0]), sex_used, note, self.version)

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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boneage.preprocess import prepare_model_input

#: Side of the preprocessed uint8 image (as cached for training) that is resized to the network input.
CACHE_SIZE = 256
#: Side of the network input.
INPUT_SIZE = 256
#: Plausible output range (months); predictions and intervals are clipped to it.
AGE_RANGE_MONTHS = (0.0, 240.0)
#: Name of the weights file inside a model folder.
WEIGHTS_FILE = "direct_cnn.pt"
#: Traced network beside the weights (``python -m boneage.training.export``): starts without MONAI.
TRACED_FILE = "direct_cnn.ts.pt"
METRICS_FILE = "metrics.json"
MODEL_VERSION = "direct-cnn-3"
#: Intensity normalisation of the network input: ``(x - centre) / scale`` for x in [0, 1].
INTENSITY_CENTRE, INTENSITY_SCALE = 0.4, 0.25


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------
class BoneAgeNet(nn.Module):
    """Narrow 2-D ResNet-18 + sex-aware head -> (location, log-scale) of the standardised age.

    Args:
        widths: channel widths of the four ResNet stages.
        layers: residual blocks per stage.
        head_width: hidden width of the head.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        layers: tuple[int, ...] = (2, 2, 2, 2),
        head_width: int = 128,
    ) -> None:
        super().__init__()
        from monai.networks.nets import ResNet

        self.backbone = ResNet(
            block="basic",
            layers=list(layers),
            block_inplanes=list(widths),
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_stride=2,
            feed_forward=False,
        )
        features = widths[-1]
        self.head = nn.Sequential(
            nn.Linear(features + 2, head_width),
            nn.ReLU(inplace=True),
            nn.Linear(head_width, head_width),
            nn.ReLU(inplace=True),
            nn.Linear(head_width, 2),
        )

    def forward(self, images: torch.Tensor, sex_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            images: ``(B, 1, H, W)`` normalised images.
            sex_code: ``(B,)`` +1 male, -1 female, 0 unknown.

        Returns:
            ``(location, log_scale)``, each ``(B,)``, in standardised-age units.
        """
        features = self.backbone(images).float()
        sex_code = sex_code.float().view(-1, 1)
        out = self.head(torch.cat([features, sex_code, sex_code.abs()], dim=1))
        return out[:, 0], out[:, 1].clamp(-6.0, 3.0)


class BoneAgeEnsemble(nn.Module):
    """Several :class:`BoneAgeNet` members trained alike from different seeds; outputs averaged.

    The location is the members' mean and the log-scale their mean (a geometric mean of the
    scales); the members share the target standardisation, so their outputs are comparable.

    Args:
        members: the trained networks.
    """

    def __init__(self, members: list[BoneAgeNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor, sex_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same inputs and outputs as :meth:`BoneAgeNet.forward`, averaged over the members."""
        outputs = [member(images, sex_code) for member in self.members]
        location = torch.stack([o[0] for o in outputs]).mean(dim=0)
        log_scale = torch.stack([o[1] for o in outputs]).mean(dim=0)
        return location, log_scale


def build_network(widths: tuple[int, ...] = (32, 64, 128, 256), members: int = 1) -> nn.Module:
    """A :class:`BoneAgeNet`, or a :class:`BoneAgeEnsemble` of ``members`` of them when ``members > 1``."""
    if members > 1:
        return BoneAgeEnsemble([BoneAgeNet(widths=tuple(widths)) for _ in range(members)])
    return BoneAgeNet(widths=tuple(widths))


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


# ----------------------------------------------------------------------------------------------
# Tensors in and out
# ----------------------------------------------------------------------------------------------
def images_to_tensor(images_uint8: np.ndarray | torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Cached uint8 ``(B, S, S)`` images -> normalised float ``(B, 1, size, size)`` (no augmentation).

    This is the evaluation path of training and the inference path: the same function.
    """
    x = torch.as_tensor(images_uint8).float().div_(255.0).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - INTENSITY_CENTRE) / INTENSITY_SCALE


@torch.no_grad()
def predict_arrays(
    model: nn.Module,
    images: np.ndarray,
    sex_codes: np.ndarray,
    target_mean: float,
    target_sd: float,
    input_size: int = INPUT_SIZE,
    device: torch.device | str = "cpu",
    flip_tta: bool = False,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Location and Laplace scale (months) for preprocessed uint8 images.

    Args:
        model: the network (eval mode is set here).
        images: uint8 ``(N, S, S)``.
        sex_codes: ``(N,)`` +1/-1/0.
        target_mean, target_sd: the standardisation of the training targets.
        input_size: network input side.
        device: where to run.
        flip_tta: also run the horizontally flipped image and average.
        batch_size: images per forward pass.

    Returns:
        ``(age_months, scale_months)`` arrays.
    """
    model.eval()
    device = torch.device(device)
    locations, scales = [], []
    for start in range(0, len(images), batch_size):
        x = images_to_tensor(images[start:start + batch_size], input_size).to(device)
        code = torch.as_tensor(np.asarray(sex_codes[start:start + batch_size]), dtype=torch.float32, device=device)
        loc, log_scale = model(x, code)
        if flip_tta:
            loc2, log_scale2 = model(torch.flip(x, dims=[-1]), code)
            loc, log_scale = (loc + loc2) / 2, (log_scale + log_scale2) / 2
        locations.append(loc.float().cpu().numpy())
        scales.append(log_scale.float().exp().cpu().numpy())
    return np.concatenate(locations) * target_sd + target_mean, np.concatenate(scales) * target_sd


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
        model: the network.
        target_mean, target_sd: target standardisation.
        calibration: conformal factors and the TTA choice.
        input_size: network input side; ``cache_size`` is the preprocessing side.
        version: model version string.
        tilts: test-time tilts in degrees (see :data:`TTA_TILTS_DEG`; ``(0.0,)`` for one view).
    """

    def __init__(self, model: nn.Module, target_mean: float, target_sd: float, calibration: dict,
                 input_size: int = INPUT_SIZE, cache_size: int = CACHE_SIZE, version: str = MODEL_VERSION,
                 tilts: tuple[float, ...] = TTA_TILTS_DEG) -> None:
        self.tilts = tuple(tilts)
        self.model = model.eval()
        self.target_mean = target_mean
        self.target_sd = target_sd
        self.calibration = calibration
        self.input_size = input_size
        self.cache_size = cache_size
        self.version = version

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", traced: bool = True) -> DirectEstimator:
        """Load weights (fp16 on disk) into a float32 model.

        Args:
            path: a weights file or a folder holding :data:`WEIGHTS_FILE`; default the shipped one.
            device: ``"cpu"`` (default) or ``"cuda"``.
            traced: use the traced network beside the weights (:data:`TRACED_FILE`) when it was
                traced from them (same numbers, starts without importing MONAI).

        Raises:
            FileNotFoundError: when the weights are missing.
        """
        from boneage.paths import MODELS_DIR

        path = Path(path) if path else MODELS_DIR / "direct"
        if path.is_dir():
            path = path / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"direct CNN weights not found at {path}; run `boneage train direct`")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        config = checkpoint["config"]
        model = None
        if traced:
            from boneage.models import load_traced

            model = load_traced(path.with_name(TRACED_FILE), path)
        if model is None:
            model = build_network(tuple(config.get("widths", (32, 64, 128, 256))), int(config.get("members", 1)))
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()})
        model.to(device)
        if torch.device(device).type == "cpu":
            model = model.to(memory_format=torch.channels_last)  # oneDNN's faster convolution path on CPU
        return cls(model, checkpoint["target_mean"], checkpoint["target_sd"], checkpoint["calibration"],
                   config.get("input_size", INPUT_SIZE), config.get("cache_size", CACHE_SIZE), checkpoint.get("version", MODEL_VERSION))

    def predict(self, image, sex: str | None = None) -> DirectPrediction:
        """Estimate bone age for one radiograph.

        Args:
            image: a :class:`boneage.io.Radiograph` or a 2-D array (bone bright).
            sex: ``"M"``, ``"F"`` or ``None``; when ``None`` and ``image`` is a Radiograph its
                ``sex`` is used. An unknown sex is never assumed: the sex-agnostic mode runs and
                the result says so.

        Returns:
            :class:`DirectPrediction`.
        """
        pixels = getattr(image, "pixels", image)
        if sex is None:
            sex = getattr(image, "sex", None)
        code = sex_to_code(sex)
        prepared, _ = prepare_model_input(np.asarray(pixels), self.cache_size)
        uint8 = tilted_views(prepared, self.tilts)
        device = next(self.model.parameters()).device
        loc, scale = predict_arrays(self.model, uint8, np.full(len(uint8), code), self.target_mean, self.target_sd,
                                    self.input_size, device, flip_tta=bool(self.calibration.get("flip_tta", False)))
        loc, scale = loc.mean(keepdims=True), scale.mean(keepdims=True)
        factor = self.calibration["factor_sex_known" if code != 0 else "factor_sex_unknown"]
        age, lower, upper = clipped_interval(loc, scale, factor)
        sex_used = None if code == 0 else ("M" if code > 0 else "F")
        note = None if sex_used else "sex unknown: estimated by the sex-agnostic mode of the network (wider interval); no sex was assumed"
        return DirectPrediction(float(age[0]), float(lower[0]), float(upper[0]), sex_used, note, self.version)

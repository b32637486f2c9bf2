"""The torch networks: the end-to-end CNN and the crop network of the per-bone and sex methods.

The inference modules (:mod:`boneage.direct`, :mod:`boneage.perbone`, :mod:`boneage.sex`) run
the ONNX copies of these networks (:mod:`boneage.runtime`) and import this module only to build a
network from its weights: when no current ONNX copy is beside them, on a GPU, or to export one.
Training builds and trains them from here (:mod:`boneage.training`). The segmentation UNet is
MONAI's, built by :func:`boneage.segment.build_network`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from boneage import anatomy
from boneage.direct import INPUT_SIZE, INTENSITY_CENTRE, INTENSITY_SCALE


# ----------------------------------------------------------------------------------------------
# The end-to-end CNN
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


def build_direct_network(widths: tuple[int, ...] = (32, 64, 128, 256), members: int = 1) -> nn.Module:
    """A :class:`BoneAgeNet`, or a :class:`BoneAgeEnsemble` of ``members`` of them when ``members > 1``."""
    if members > 1:
        return BoneAgeEnsemble([BoneAgeNet(widths=tuple(widths)) for _ in range(members)])
    return BoneAgeNet(widths=tuple(widths))


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




# ----------------------------------------------------------------------------------------------
# The crop network (per-bone maturity and sex)
# ----------------------------------------------------------------------------------------------
class PerBoneNet(nn.Module):
    """One small MONAI ResNet shared by every bone; bone identity and sex join at the head.

    Input: a batch of aligned crops ``(B, 1, *CROP_SHAPE)`` in [0, 1], the region index of each
    (into :data:`anatomy.MATURITY_REGIONS`) and a sex code (+1 male, -1 female, 0 unknown).
    Output: location and log Laplace scale of the standardised age, per crop.

    Args:
        widths: channel widths of the four ResNet stages.
        head_width: hidden width of the head.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), head_width: int = 128) -> None:
        super().__init__()
        from monai.networks.nets import ResNet

        self.widths = tuple(widths)
        self.backbone = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=list(widths), spatial_dims=2,
                               n_input_channels=1, conv1_t_size=5, conv1_t_stride=1, feed_forward=False)
        regions = len(anatomy.MATURITY_REGIONS)
        self.region_embedding = nn.Embedding(regions, 16)
        self.head = nn.Sequential(
            nn.Linear(widths[-1] + 16 + 2, head_width), nn.ReLU(inplace=True),
            nn.Linear(head_width, head_width), nn.ReLU(inplace=True),
            nn.Linear(head_width, 2),
        )

    def forward(self, crops: torch.Tensor, regions: torch.Tensor, sex_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone((crops - 0.5) / 0.25)
        sex = sex_code.view(-1, 1).to(features.dtype)
        out = self.head(torch.cat([features, self.region_embedding(regions).to(features.dtype), sex, sex.abs()], dim=1))
        return out[:, 0], out[:, 1].clamp(-6.0, 3.0)



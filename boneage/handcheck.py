"""Is this film a hand radiograph? A check on the segmenter's reading, not on one threshold.

The segmentation network labels bone-like structures in any image it is shown; a chest, a tibia
or a noise texture gives a few "finger bones" too. What a hand has and they lack is *anatomy in
order*: digits laid out as rays, bones in one piece, a thumb that stands off the hand, carpals
between the forearm and the metacarpals, a confident network and bone brighter than soft tissue.
:func:`hand_features` turns one reading into such figures and :class:`HandCheck` (a logistic
regression over them, fitted by ``boneage train handcheck`` on real training-split hands and
synthetic hands against generated non-hand images, see ``boneage.training.handcheck``) gives the
probability that the film is a hand. A film under the threshold is rejected, with no age.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from boneage import anatomy
from boneage.paths import MODELS_DIR

HANDCHECK_DIR = MODELS_DIR / "handcheck"
WEIGHTS_FILE = "handcheck.json"

#: The figures the check reads, in a fixed order (see :func:`hand_features`).
FEATURES = (
    "finger_rays", "thumb_side", "whole_share", "present_share", "confidence", "bone_fraction",
    "carpal_count", "forearm_count", "bone_contrast", "bone_contrast_border",
)


def hand_features(label_map: np.ndarray, probabilities: np.ndarray, model_input: np.ndarray,
                  spacing: tuple[float, float] = (1.0, 1.0)) -> dict[str, float]:
    """Figures that tell a hand's reading from a non-hand's.

    Args:
        label_map: cleaned label map on the model grid (``boneage.anatomy`` ids).
        probabilities: ``(NUM_CLASSES, H, W)`` softmax probabilities behind it.
        model_input: the ``H x W`` input it was read from (float, bone bright).
        spacing: ``(row, col)`` film pixels per grid pixel.

    Returns:
        ``{name: value}`` for every name in :data:`FEATURES`:
        ``finger_rays`` digits laid out as a finger (0-5); ``thumb_side`` +1 when the thumb
        diverges from the hand more than the little finger (-1 less, 0 unknown); ``whole_share``
        and ``present_share`` the share of the 19 tubular bones found in one piece / at all;
        ``confidence`` the mean top probability on bone pixels; ``bone_fraction`` the share of the
        grid labelled bone; ``carpal_count`` (0-8); ``forearm_count`` radius and ulna found (0-2);
        ``bone_contrast`` how much brighter labelled bone is than the rest of the image (a
        negative film reads dark bone); ``bone_contrast_border`` the same against the image's
        outer frame (film background).
    """
    from boneage.segment import reading_figures

    labels = np.asarray(label_map)
    bone = labels > 0
    feats = dict.fromkeys(FEATURES, 0.0)
    if not bone.any():
        return feats
    feats.update(reading_figures(labels, probabilities, spacing))
    boxes = ndimage.find_objects(labels.astype(np.int32), max_label=anatomy.NUM_CLASSES - 1)

    def found(name: str) -> bool:
        return any(boxes[i - 1] is not None for i in anatomy.bone_labels(name))

    x = np.asarray(model_input, dtype=np.float32)
    frame = np.concatenate([x[:4].ravel(), x[-4:].ravel(), x[:, :4].ravel(), x[:, -4:].ravel()])
    bone_mean = float(x[bone].mean())
    feats.update(
        bone_fraction=float(bone.mean()),
        carpal_count=float(sum(found(b) for b in anatomy.CARPALS)),
        forearm_count=float(sum(found(b) for b in anatomy.FOREARM)),
        bone_contrast=bone_mean - float(np.median(x[~bone])) if (~bone).any() else 0.0,
        bone_contrast_border=bone_mean - float(np.median(frame)),
    )
    return feats


@dataclass(frozen=True)
class HandCheck:
    """Logistic regression over :func:`hand_features` (standardised), with its threshold.

    Attributes:
        mean, scale: per-feature standardisation, in :data:`FEATURES` order.
        coef, intercept: the regression.
        threshold: a film whose hand probability is below this is not a hand.
        version: written into results.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float
    version: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> HandCheck:
        """Read a fitted check (default the shipped ``data/models/handcheck/handcheck.json``).

        Raises:
            boneage.models.ModelNotAvailableError: when the file is missing.
        """
        path = Path(path) if path else HANDCHECK_DIR / WEIGHTS_FILE
        if not path.is_file():
            from boneage.models import ModelNotAvailableError

            raise ModelNotAvailableError(f"hand check not found at {path}")
        blob = json.loads(path.read_text())
        if tuple(blob["features"]) != FEATURES:
            raise ValueError(f"{path}: fitted on features {blob['features']}, this version reads {list(FEATURES)}")
        return cls(tuple(blob["mean"]), tuple(blob["scale"]), tuple(blob["coef"]), float(blob["intercept"]),
                   float(blob["threshold"]), str(blob["version"]))

    def to_json(self) -> dict:
        """The fitted check as written to disk."""
        return {"features": list(FEATURES), "mean": list(self.mean), "scale": list(self.scale),
                "coef": list(self.coef), "intercept": self.intercept, "threshold": self.threshold,
                "version": self.version}

    def probability(self, features: dict[str, float]) -> float:
        """Probability that the reading is of a hand radiograph.

        Args:
            features: from :func:`hand_features`.

        Returns:
            A probability in (0, 1).
        """
        x = (np.array([features[n] for n in FEATURES]) - np.array(self.mean)) / np.array(self.scale)
        z = float(x @ np.array(self.coef) + self.intercept)
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))))

    def is_hand(self, features: dict[str, float]) -> bool:
        """Whether the probability reaches the threshold."""
        return self.probability(features) >= self.threshold

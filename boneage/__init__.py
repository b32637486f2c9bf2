"""boneage: pediatric bone-age estimation from hand radiographs, two ways, compared.

Public API (everything else is internal and may change):

    estimate, BoneAgeEstimator, BoneAgeResult     -- both methods on one radiograph, one result type
    load_radiograph, Radiograph, ImageReadError   -- reading DICOM / PNG / JPEG / TIFF
    anatomy                                       -- bone names and segmentation label ids
    references                                    -- published growth / maturity tables
"""

from __future__ import annotations

__version__ = "0.1.0"

from boneage import anatomy, references
from boneage.io import ImageReadError, Radiograph, load_radiograph
from boneage.estimate import BoneAgeEstimator, BoneAgeResult, estimate

__all__ = [
    "__version__",
    "anatomy",
    "references",
    "BoneAgeEstimator",
    "BoneAgeResult",
    "estimate",
    "ImageReadError",
    "Radiograph",
    "load_radiograph",
]

"""Registry of the project's shipped model weights.

Each entry names a weights file under :data:`boneage.paths.MODELS_DIR`, its model card, its
metrics file, a version string and a loader (``"module:callable"``, imported lazily so that
listing models never imports torch). Every shipped model is registered at the end of this module:
the segmenter, the hand check, the multi-step bundle, the end-to-end CNN, the per-bone maturity
network and the stacking of the three methods (``combined``).

Example:
    >>> from boneage import models
    >>> estimator = models.load("direct")          # doctest: +SKIP
    >>> models.get("direct").card_path.name
    'MODEL_CARD.md'
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boneage.paths import MODELS_DIR


class ModelNotAvailableError(FileNotFoundError):
    """A registered model's weights are not present (not trained or not shipped)."""


@dataclass(frozen=True)
class RegisteredModel:
    """One shipped model.

    Attributes:
        name: registry key (e.g. ``"direct"``, ``"segmenter"``).
        kind: what it does (``"regressor"``, ``"segmenter"``, ``"reference-regression"``).
        folder: its folder under :data:`boneage.paths.MODELS_DIR`.
        weights_file: weights file name inside ``folder``.
        version: version string written into every result it produces.
        loader: ``"module:callable"``; the callable takes the weights path and returns the model.
        card_file: model card file name inside ``folder``.
        metrics_file: metrics file name inside ``folder`` (may be absent).
        description: one line for listings.
    """

    name: str
    kind: str
    folder: Path
    weights_file: str
    version: str
    loader: str
    card_file: str = "MODEL_CARD.md"
    metrics_file: str = "metrics.json"
    description: str = ""

    @property
    def weights_path(self) -> Path:
        """Full path of the weights file."""
        return self.folder / self.weights_file

    @property
    def card_path(self) -> Path:
        """Full path of the model card."""
        return self.folder / self.card_file

    @property
    def metrics_path(self) -> Path:
        """Full path of the metrics file."""
        return self.folder / self.metrics_file

    def is_available(self) -> bool:
        """Whether the weights file exists."""
        return self.weights_path.is_file()

    def metrics(self) -> dict:
        """The metrics json, or an empty dict when there is none."""
        return json.loads(self.metrics_path.read_text()) if self.metrics_path.is_file() else {}

    def resolve_loader(self) -> Callable[[Path], Any]:
        """Import and return the loader callable (``"pkg.module:Class.method"`` is supported)."""
        module_name, _, attribute_path = self.loader.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in attribute_path.split("."):
            target = getattr(target, part)
        return target


_REGISTRY: dict[str, RegisteredModel] = {}


def register(model: RegisteredModel, replace: bool = False) -> RegisteredModel:
    """Add a model to the registry.

    Args:
        model: the entry.
        replace: allow overwriting an existing name.

    Returns:
        The entry.

    Raises:
        ValueError: when the name is taken and ``replace`` is False.
    """
    if model.name in _REGISTRY and not replace:
        raise ValueError(f"a model named {model.name!r} is already registered")
    _REGISTRY[model.name] = model
    return model


def get(name: str) -> RegisteredModel:
    """The registry entry called ``name``.

    Raises:
        KeyError: naming the registered models, when there is no such entry.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no model named {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    """Names of all registered models."""
    return sorted(_REGISTRY)


def load(name: str, **kwargs: Any) -> Any:
    """Load a registered model with its loader.

    Args:
        name: registry key.
        **kwargs: passed to the loader (e.g. ``device="cuda"``).

    Raises:
        ModelNotAvailableError: when the weights file is missing.
    """
    entry = get(name)
    if not entry.is_available():
        raise ModelNotAvailableError(f"weights of model {name!r} not found at {entry.weights_path}")
    return entry.resolve_loader()(entry.weights_path, **kwargs)


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively.

    Elsewhere (e.g. AVX2 only) bf16 autocast is emulated and several times slower than fp32, so
    training uses fp32 there.

    Args:
        cpuinfo: the kernel's CPU description (Linux); unreadable = no native bf16.

    Returns:
        True when the flags list AVX512-BF16 or AMX-BF16.
    """
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


register(
    RegisteredModel(
        name="direct",
        kind="regressor",
        folder=MODELS_DIR / "direct",
        weights_file="direct_cnn.pt",
        version="direct-cnn-4",
        loader="boneage.direct:DirectEstimator.load",
        description="end-to-end CNN: radiograph (+ sex) -> bone age in months with a calibrated 90% interval",
    )
)

register(
    RegisteredModel(
        name="multistep",
        kind="reference-regression",
        folder=MODELS_DIR / "multistep",
        weights_file="maturity_reference.csv",
        version="multistep-10",
        loader="boneage.multistep:MultiStepModel.load",
        description="maturity reference tables + regression on per-bone measurements, blended -> bone age with a 90% interval",
    )
)

register(
    RegisteredModel(
        name="segmenter",
        kind="segmenter",
        folder=MODELS_DIR / "segmenter",
        weights_file="segmenter.pt",
        version="segmenter-5",
        loader="boneage.segment:Segmenter.load",
        description="MONAI UNet: radiograph -> label map of every bone (shafts, epiphyses, carpals)",
    )
)

register(
    RegisteredModel(
        name="handcheck",
        kind="classifier",
        folder=MODELS_DIR / "handcheck",
        weights_file="handcheck.json",
        version="handcheck-1",
        loader="boneage.handcheck:HandCheck.load",
        description="logistic regression on the segmenter's reading: is the film a hand radiograph?",
    )
)


register(
    RegisteredModel(
        name="perbone",
        kind="regressor",
        folder=MODELS_DIR / "perbone",
        weights_file="perbone.pt",
        version="perbone-4",
        loader="boneage.perbone:PerBoneEstimator.load",
        description="per-bone maturity: aligned crops of the RUS bones and the carpus -> each bone's age -> "
                    "robust consensus with a calibrated 90% interval",
    )
)

register(
    RegisteredModel(
        name="sex",
        kind="classifier",
        folder=MODELS_DIR / "sex",
        weights_file="sex.pt",
        version="sex-4",
        loader="boneage.sex:SexEstimator.load",
        description="sex read from the per-bone crops when a film comes without it (used only when >= 80% sure)",
    )
)

register(
    RegisteredModel(
        name="combined",
        kind="stacking",
        folder=MODELS_DIR / "combined",
        weights_file="stacking.json",
        version="combined-10",
        loader="boneage.combine:Combiner.load",
        description="stacking of the multi-step, per-bone and end-to-end ages (weights per available subset) "
                    "-> the combined estimate with a calibrated 90% interval",
    )
)


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file.

    Args:
        path: the file.

    Returns:
        64 hex characters.
    """
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Export the shipped networks as traced TorchScript files, for a fast start-up.

Loading a network from its weights means building it with MONAI, and importing MONAI takes
longer (about 1.5 s on two cores) than importing torch, loading both models and reading a film
together. A traced network needs torch only, so ``boneage predict``, the app and the API start in
about a second. Each traced file sits beside the weights it was traced from
(``data/models/segmenter/segmenter.ts.pt``, ``data/models/direct/direct_cnn.ts.pt``) and records
the SHA-256 of those weights: a loader uses it only while it matches, and otherwise builds the
network from the weights as before (slower start, same answers).

The weights are stored in fp16 in the traced files too: the ``.pt`` weights are fp16 already, so
nothing is lost, and the two files add about 13 MB to the models folder.

Usage (after training or changing either network's weights)::

    python -m boneage.training.export            # all; or --only segmenter|direct|perbone|sex
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from boneage.models import TRACED_SOURCE_KEY, file_sha256

def _save_traced(network: torch.nn.Module, example: tuple[torch.Tensor, ...], weights: Path, out: Path) -> Path:
    network = network.float().eval().to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        # torch.jit is in maintenance mode, not removed; torch.export's files load ~1 s slower,
        # which is what this export is meant to save.
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            traced = torch.jit.trace(network, example, check_trace=True)
        traced = traced.half()  # the source weights are fp16: storing them so loses nothing
        torch.jit.save(traced, str(out), _extra_files={TRACED_SOURCE_KEY: file_sha256(weights)})
    return out


def export_segmenter(weights: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Trace the segmenter UNet and write it beside its weights.

    Args:
        weights: segmenter weights (default the shipped ``segmenter.pt``).
        out: traced file (default ``segmenter.ts.pt`` beside ``weights``).

    Returns:
        The written path.
    """
    from boneage.segment import SEGMENTER_DIR, TRACED_FILE, WEIGHTS_FILE, Segmenter

    weights = Path(weights) if weights else SEGMENTER_DIR / WEIGHTS_FILE
    segmenter = Segmenter.load(weights, traced=False)
    size = segmenter.config.size
    out = Path(out) if out else weights.with_name(TRACED_FILE)
    return _save_traced(segmenter.network, (torch.rand(2, 1, size, size),), weights, out)


def export_direct(weights: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Trace the end-to-end CNN and write it beside its weights.

    Args:
        weights: CNN weights file or folder (default the shipped ``direct_cnn.pt``).
        out: traced file (default ``direct_cnn.ts.pt`` beside the weights file).

    Returns:
        The written path.
    """
    from boneage.direct import TRACED_FILE, WEIGHTS_FILE, DirectEstimator
    from boneage.paths import MODELS_DIR

    weights = Path(weights) if weights else MODELS_DIR / "direct"
    if weights.is_dir():
        weights = weights / WEIGHTS_FILE
    estimator = DirectEstimator.load(weights, traced=False)
    size = estimator.input_size
    out = Path(out) if out else weights.with_name(TRACED_FILE)
    example = (torch.rand(2, 1, size, size), torch.tensor([1.0, 0.0]))
    return _save_traced(estimator.model, example, weights, out)


def _export_crop_network(load, weights_file: str, traced_file: str, folder_name: str,
                         weights: str | Path | None, out: str | Path | None, sex_input: bool) -> Path:
    """Trace a network of the per-bone architecture (crops, region ids, sex code) beside its weights."""
    from boneage.paths import MODELS_DIR
    from boneage.perbone import CROP_SHAPE

    weights = Path(weights) if weights else MODELS_DIR / folder_name
    if weights.is_dir():
        weights = weights / weights_file
    network = load(weights, traced=False).network
    out = Path(out) if out else weights.with_name(traced_file)
    sex = torch.tensor([1.0, 0.0, -1.0]) if sex_input else torch.zeros(3)
    return _save_traced(network, (torch.rand(3, 1, *CROP_SHAPE), torch.tensor([0, 5, 13]), sex), weights, out)


def export_perbone(weights: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Trace the per-bone maturity network and write it beside its weights (default the shipped ``perbone.pt``)."""
    from boneage import perbone

    return _export_crop_network(perbone.PerBoneEstimator.load, perbone.WEIGHTS_FILE, perbone.TRACED_FILE, "perbone",
                                weights, out, sex_input=True)


def export_sex(weights: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Trace the sex-from-film network and write it beside its weights (default the shipped ``sex.pt``)."""
    from boneage import sex

    return _export_crop_network(sex.SexEstimator.load, sex.WEIGHTS_FILE, sex.TRACED_FILE, "sex", weights, out,
                                sex_input=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m boneage.training.export``: write the traced files of the shipped networks.

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("segmenter", "direct", "perbone", "sex"), help="export one network only")
    args = parser.parse_args(argv)
    if args.only in (None, "segmenter"):
        print(f"wrote {export_segmenter()}")
    if args.only in (None, "direct"):
        print(f"wrote {export_direct()}")
    if args.only in (None, "perbone"):
        print(f"wrote {export_perbone()}")
    if args.only in (None, "sex"):
        print(f"wrote {export_sex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export the shipped networks as ONNX files, run by ONNX Runtime at inference.

With an ONNX copy beside each weights file, estimating a film imports neither torch nor MONAI:
start-up is shorter, a process holds about 170 MB less, and ONNX Runtime's CPU kernels are faster
than torch's for these networks (:mod:`boneage.runtime`). Each file records the SHA-256 of the
weights it was exported from and the weights file's other contents (architecture, target
standardisation, calibration) as JSON metadata: a loader uses it only while the hash matches, and
otherwise builds the network from the weights with torch as before (slower start, same answers).

The weights are stored in fp16 inside the ONNX files too, each followed by a cast to fp32 that
ONNX Runtime folds away when it loads the file: the ``.pt`` weights are fp16 already, so nothing is
lost (the export checks that every stored tensor round-trips exactly; one that would not -- none
today -- stays fp32).

The training commands (``boneage train segmenter|direct|perbone|sex``) end by writing the copy beside
the weights they saved (:func:`export_after_training`). Usage, after changing any network's weights
otherwise::

    python -m boneage.training.export            # all; or --only segmenter|direct|perbone|sex
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boneage.models import file_sha256
from boneage.runtime import CHECKPOINT_KEY, SOURCE_KEY

#: ONNX operator set of the exported files (ONNX Runtime 1.16 and later run it).
OPSET = 17


def _weights_as_fp16(model: Any) -> int:
    """Store every fp32 initializer that fp16 holds exactly as fp16, cast back to fp32 in the graph.

    Returns:
        How many initializers stayed fp32 (not exactly representable in fp16).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    kept, casts, fp16 = [], [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if init.data_type != TensorProto.FLOAT or array.size < 16:
            kept.append(init)
            continue
        half = array.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), array):
            kept.append(init)
            continue
        stored = f"{init.name}__fp16"
        fp16.append(numpy_helper.from_array(half, stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], to=TensorProto.FLOAT, name=f"{init.name}__cast"))
    not_exact = sum(1 for i in kept if i.data_type == TensorProto.FLOAT and numpy_helper.to_array(i).size >= 16)
    del graph.initializer[:]
    graph.initializer.extend(kept + fp16)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return not_exact


def save_onnx(network: torch.nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str],
              output_names: list[str], weights: Path, checkpoint: dict, out: Path) -> Path:
    """Export ``network`` to ``out`` with the weights' hash and checkpoint contents as metadata.

    Args:
        network: the fp32 torch network.
        example: example inputs (their first axis is exported as a dynamic batch axis).
        input_names, output_names: graph input and output names.
        weights: the weights file it was built from.
        checkpoint: the weights file's contents other than the weights (JSON-serialisable).
        out: the ``.onnx`` file to write.

    Returns:
        ``out``.
    """
    import onnx

    network = network.float().eval().to(memory_format=torch.contiguous_format)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, not removed
        torch.onnx.export(network, example, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes={name: {0: "batch"} for name in input_names + output_names},
                          opset_version=OPSET, dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE)
    model = onnx.load_from_string(buffer.getvalue())
    kept_fp32 = _weights_as_fp16(model)
    if kept_fp32:
        print(f"note: {kept_fp32} weight tensor(s) of {out.name} are not exact in fp16 and stay fp32", file=sys.stderr)
    for key, value in ((SOURCE_KEY, file_sha256(weights)), (CHECKPOINT_KEY, json.dumps(checkpoint))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())
    return out


def _checkpoint_without_weights(weights: Path) -> dict:
    blob = torch.load(weights, map_location="cpu", weights_only=False)
    return {k: v for k, v in blob.items() if k != "state_dict"}


def export_segmenter(weights: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Export the segmenter UNet beside its weights.

    Args:
        weights: segmenter weights (default the shipped ``segmenter.pt``).
        out: ONNX file (default ``segmenter.onnx`` beside ``weights``).

    Returns:
        The written path.
    """
    from boneage.segment import ONNX_FILE, SEGMENTER_DIR, WEIGHTS_FILE, Segmenter

    weights = Path(weights) if weights else SEGMENTER_DIR / WEIGHTS_FILE
    segmenter = Segmenter.load(weights, exported=False)
    size = segmenter.config.size
    out = Path(out) if out else weights.with_name(ONNX_FILE)
    return save_onnx(segmenter.network, (torch.rand(2, 1, size, size),), ["image"], ["logits"], weights,
                     _checkpoint_without_weights(weights), out)


def export_direct(weights: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Export the end-to-end CNN beside its weights.

    Args:
        weights: CNN weights file or folder (default the shipped ``direct_cnn.pt``).
        out: ONNX file (default ``direct_cnn.onnx`` beside the weights file).

    Returns:
        The written path.
    """
    from boneage.direct import ONNX_FILE, WEIGHTS_FILE, DirectEstimator
    from boneage.paths import MODELS_DIR

    weights = Path(weights) if weights else MODELS_DIR / "direct"
    if weights.is_dir():
        weights = weights / WEIGHTS_FILE
    estimator = DirectEstimator.load(weights, exported=False)
    size = estimator.input_size
    out = Path(out) if out else weights.with_name(ONNX_FILE)
    example = (torch.rand(2, 1, size, size), torch.tensor([1.0, 0.0]))
    return save_onnx(estimator.model, example, ["image", "sex_code"], ["location", "log_scale"], weights,
                     _checkpoint_without_weights(weights), out)


def _export_crop_network(load, weights_file: str, onnx_file: str, folder_name: str,
                         weights: str | Path | None, out: str | Path | None) -> Path:
    """Export a network of the per-bone architecture (crops, region ids, sex code) beside its weights."""
    from boneage.paths import MODELS_DIR
    from boneage.perbone import CROP_SHAPE

    weights = Path(weights) if weights else MODELS_DIR / folder_name
    if weights.is_dir():
        weights = weights / weights_file
    network = load(weights, exported=False).network
    out = Path(out) if out else weights.with_name(onnx_file)
    example = (torch.rand(3, 1, *CROP_SHAPE), torch.tensor([0, 5, 13]), torch.tensor([1.0, 0.0, -1.0]))
    return save_onnx(network, example, ["crops", "regions", "sex_code"], ["location", "log_scale"], weights,
                     _checkpoint_without_weights(weights), out)


def export_perbone(weights: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Export the per-bone maturity network beside its weights (default the shipped ``perbone.pt``)."""
    from boneage import perbone

    return _export_crop_network(perbone.PerBoneEstimator.load, perbone.WEIGHTS_FILE, perbone.ONNX_FILE, "perbone",
                                weights, out)


def export_sex(weights: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Export the sex-from-film network beside its weights (default the shipped ``sex.pt``)."""
    from boneage import sex

    return _export_crop_network(sex.SexEstimator.load, sex.WEIGHTS_FILE, sex.ONNX_FILE, "sex", weights, out)


#: The exported networks by registry name (:mod:`boneage.models`).
EXPORTERS = {"segmenter": export_segmenter, "direct": export_direct, "perbone": export_perbone, "sex": export_sex}


def export_after_training(kind: str, weights: str | Path | None = None) -> Path | None:
    """The end of a training command: write the ONNX copy beside the new weights.

    A failure is said on stderr and the weights stay (inference then runs them in torch until
    ``python -m boneage.training.export`` is run); weights not written (a run cut short) are skipped.

    Args:
        kind: a registry name of :data:`EXPORTERS`.
        weights: the weights file just written, or the folder it was written to (the command's
            ``--out``); empty or ``None``: the model's shipped folder.

    Returns:
        The ONNX file, or ``None`` when none was written.
    """
    from boneage import models

    entry = models.get(kind)
    weights = Path(weights) if weights else entry.folder
    if weights.is_dir():
        weights = weights / entry.weights_file
    if not weights.is_file():
        return None
    try:
        out = EXPORTERS[kind](weights)
    except Exception as exc:  # the weights are what matters; the copy can be written later
        print(f"warning: the ONNX copy of {weights} was not written ({type(exc).__name__}: {exc}); "
              "run `python -m boneage.training.export`", file=sys.stderr)
        return None
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m boneage.training.export``: write the ONNX files of the shipped networks.

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=tuple(EXPORTERS), help="export one network only")
    args = parser.parse_args(argv)
    for kind, export in EXPORTERS.items():
        if args.only in (None, kind):
            print(f"wrote {export()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the networks run at inference: ONNX Runtime on the CPU, torch otherwise.

Why ONNX Runtime: estimating a film then never imports torch (0.8 s and about 170 MB of a
process on two cores) or MONAI, and its CPU kernels run the segmentation UNet about 10% faster
than torch's channels-last path (0.033 against 0.037 s a forward pass on one thread). Each shipped network has an ``.onnx`` copy beside its weights
(written by ``python -m boneage.training.export``) that records the SHA-256 of the weights it was
exported from and everything the loader reads from them (target standardisation, calibration,
architecture); it is used only while that hash matches, so retrained weights without a new export
still load -- from the weights, with torch -- and never run with a stale copy. On a GPU the torch
network runs (ONNX Runtime here is the CPU build).

Both kinds are called alike: :func:`as_forward` turns either into a function of numpy arrays that
returns a tuple of float32 numpy arrays, so the estimators hold no torch code of their own.

Example:
    >>> net = load_onnx("data/models/direct/direct_cnn.onnx", "data/models/direct/direct_cnn.pt")  # doctest: +SKIP
    >>> location, log_scale = net(images, sex_codes)                                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Metadata keys of an exported ``.onnx`` file.
SOURCE_KEY = "source_sha256"
CHECKPOINT_KEY = "checkpoint_json"

#: Threads each network may use (``None``: the runtime's default, every physical core).
_threads: int | None = None

Forward = Callable[..., tuple[np.ndarray, ...]]


#: Environment variables that fix the thread pools of libraries loaded later (OpenMP: scikit-learn's
#: gradient boosting; OpenBLAS / MKL: numpy and scipy).
_THREAD_ENVIRONMENT = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(threads: int | None) -> None:
    """Threads for every network from now on, and for the other thread pools of the process.

    Why all of them: two workers on two cores each running a two-thread OpenMP or BLAS pool
    (scikit-learn's regression, numpy) spin-wait on each other; ``boneage predict --workers 2``
    over 20 films took 8.6-13.7 s that way and 7.8 s with one thread each.

    Args:
        threads: intra-op threads of ONNX Runtime sessions (and torch, when loaded), OpenMP and
            BLAS; ``None`` for the runtimes' defaults (the other pools are left as they are).
    """
    global _threads
    _threads = None if threads is None else max(1, int(threads))
    if _threads is None:
        return
    for name in _THREAD_ENVIRONMENT:  # libraries loaded from now on
        os.environ[name] = str(_threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(_threads)  # libraries loaded already
    torch = sys.modules.get("torch")  # never import torch just to set its threads
    if torch is not None:
        torch.set_num_threads(_threads)


def get_threads() -> int | None:
    """The thread setting of :func:`set_threads` (``None``: the runtime's default)."""
    return _threads


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` threads (see :func:`set_threads`; ``None``: unchanged), restoring the settings after.

    Why one on a CPU with several workers: a film's forward passes are small, and two threads on a
    2-core machine that anything else is using wait on each other at every layer.
    """
    global _threads
    if count is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before, before_torch = _threads, (torch.get_num_threads() if torch is not None else None)
    environment = {name: os.environ.get(name) for name in _THREAD_ENVIRONMENT}
    with threadpool_limits(count):  # restores the loaded libraries' pools on leaving
        set_threads(count)
        try:
            yield
        finally:
            _threads = before
            for name, value in environment.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            if before_torch is not None:
                torch.set_num_threads(before_torch)


class OnnxNetwork:
    """An exported network run by ONNX Runtime on the CPU.

    Args:
        path: the ``.onnx`` file.

    Attributes:
        path: the file.
        metadata: its metadata (``source_sha256``, ``checkpoint_json``).
        checkpoint: the weights file's contents other than the weights (from ``checkpoint_json``).
        input_names: the graph's inputs, in call order.
    """

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self._ort = ort
        self._session_threads: int | None = -1
        self._session: Any = None
        self._make_session()
        meta = self._session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)
        self.checkpoint = json.loads(meta.get(CHECKPOINT_KEY, "{}"))
        self.input_names = [i.name for i in self._session.get_inputs()]
        self._input_types = {i.name: i.type for i in self._session.get_inputs()}

    def _make_session(self) -> None:
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if _threads is not None:
            options.intra_op_num_threads = _threads
            options.inter_op_num_threads = 1
        # From the file each time (a new thread setting remakes the session): no copy of the model held.
        self._session = self._ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._session_threads = _threads

    def __call__(self, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run the network.

        Args:
            arrays: one array per graph input, in :attr:`input_names` order (cast to the
                input's type: float32 images and codes, int64 region ids).

        Returns:
            The graph's outputs, float32 numpy arrays.
        """
        if self._session_threads != _threads:  # the thread setting changed since: a new session
            self._make_session()
        feeds = {}
        for name, array in zip(self.input_names, arrays):
            dtype = np.int64 if "int64" in self._input_types[name] else np.float32
            feeds[name] = np.ascontiguousarray(array, dtype=dtype)
        return tuple(np.asarray(out, dtype=np.float32) for out in self._session.run(None, feeds))


def load_onnx(onnx_path: str | Path, weights_path: str | Path) -> OnnxNetwork | None:
    """An exported network, when it was exported from exactly these weights.

    Args:
        onnx_path: the ``.onnx`` file.
        weights_path: the weights it must have been exported from.

    Returns:
        The :class:`OnnxNetwork`, or ``None`` when the file is missing, unreadable or stale, or
        ONNX Runtime is not installed (the caller then builds the network from the weights).
    """
    from boneage.models import file_sha256

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        return None
    try:
        network = OnnxNetwork(onnx_path)
    except ImportError:
        return None
    except Exception as exc:  # ONNX Runtime's own error types (a corrupt or truncated file): build instead
        warnings.warn(f"{onnx_path}: not a usable ONNX file ({type(exc).__name__}); building the network "
                      "from its weights instead", RuntimeWarning, stacklevel=2)
        return None
    if network.metadata.get(SOURCE_KEY) != file_sha256(weights_path) or CHECKPOINT_KEY not in network.metadata:
        return None  # stale, or not written by our export: the weights themselves are read
    return network


def load_checkpoint(weights: str | Path, onnx_file: str, exported: bool, device: str,
                    weights_only: bool = False) -> tuple[dict, OnnxNetwork | None]:
    """A weights file's contents, from its current ONNX copy when one is to be run.

    Args:
        weights: the ``.pt`` weights file.
        onnx_file: the ONNX copy's file name beside it.
        exported: run the ONNX copy when it is current (on a CPU only).
        device: ``"cpu"`` or a torch device.
        weights_only: passed to ``torch.load`` when the weights file is read.

    Returns:
        ``(checkpoint, network)``: the :class:`OnnxNetwork` with the contents its metadata records
        (torch is not imported), or ``None`` with the weights file read by torch (``state_dict``
        included: the caller builds the network).
    """
    weights = Path(weights)
    if exported and device == "cpu":
        network = load_onnx(weights.with_name(onnx_file), weights)
        if network is not None:
            return network.checkpoint, network
    import torch

    return torch.load(weights, map_location="cpu", weights_only=weights_only), None


def torch_forward(module: Any) -> Forward:
    """A torch module as a function of numpy arrays (float images channels-last, ints as int64).

    Args:
        module: a ``torch.nn.Module`` (or traced module); its device is its first parameter's.

    Returns:
        A function returning the module's outputs as float32 numpy arrays (a tuple, always).
    """
    import torch

    try:
        device = next(module.parameters()).device
    except (StopIteration, AttributeError, RuntimeError):
        device = torch.device("cpu")

    def tensor(array: np.ndarray) -> Any:
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.integer):
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(device)
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
        if x.ndim == 4 and device.type == "cpu":
            # oneDNN's fast convolution path on CPU (about 4 times faster for transposed convolutions).
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        if _threads is not None and torch.get_num_threads() != _threads:
            torch.set_num_threads(_threads)  # torch was imported after the setting was made
        with torch.inference_mode():
            out = module(*(tensor(a) for a in arrays))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.detach().to("cpu", torch.float32).contiguous().numpy() for o in outs)

    return forward


def as_forward(network: Any) -> Forward:
    """The numpy-in, numpy-out call of an :class:`OnnxNetwork` (itself) or a torch module.

    Args:
        network: an :class:`OnnxNetwork`, a torch module, or already such a function.

    Returns:
        A function of numpy arrays returning a tuple of float32 numpy arrays.
    """
    if isinstance(network, OnnxNetwork):
        return network
    if _is_torch_module(network):
        return torch_forward(network)
    if callable(network):
        return network
    raise TypeError(f"not a network: {type(network).__name__}")


def runnable(network: Any, device: str = "cpu") -> tuple[Any, Forward]:
    """A loaded network ready to run, and its numpy call (what every estimator holds).

    Args:
        network: an :class:`OnnxNetwork`, or a torch module (put in eval mode on ``device``,
            channels-last on a CPU), or a plain function of numpy arrays (test doubles).
        device: where a torch module runs.

    Returns:
        ``(network, forward)``.
    """
    if _is_torch_module(network):
        network = prepare_torch_module(network, device)
    return network, as_forward(network)


def _is_torch_module(network: Any) -> bool:
    """Whether ``network`` is a torch module (without importing torch: none exists before it is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(network, torch.nn.Module)


def prepare_torch_module(module: Any, device: str) -> Any:
    """A torch network in eval mode on ``device`` (channels-last on a CPU, oneDNN's fast path)."""
    import torch

    module = module.to(device).eval()
    if torch.device(device).type == "cpu":
        module = module.to(memory_format=torch.channels_last)
    return module

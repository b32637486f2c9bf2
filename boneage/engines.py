"""Where the per-film work of a batch runs: in this process, a local process pool, or Ray actors.

Every engine runs the same :func:`run_one` on each input and yields one :class:`Outcome` per
input as it completes; the caller (:func:`boneage.batch.run_batch`) writes the records, so the
output, ``--resume`` and the one-record-per-input rule are the same whatever the engine.
Models are loaded once per worker process or actor, never per film.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from boneage.estimate import BoneAgeEstimator, BoneAgeResult

if TYPE_CHECKING:  # batch imports this module; the item type is only needed for hints
    from boneage.batch import InputItem

#: The engines ``boneage predict --engine`` accepts.
ENGINES = ("local", "ray")

#: Most times one Ray actor is restarted after it died (out of memory, a lost node).
RAY_ACTOR_RESTARTS = 2


class EngineUnavailableError(RuntimeError):
    """The engine asked for is not installed here (exit code 3, feature not available)."""


@dataclass
class Outcome:
    """One input's result and what was written for it besides its record.

    Attributes:
        result: the estimate.
        exports: ``{"sr_path": ..., "sc_path": ...}`` of the DICOM files written.
        export_errors: why a requested DICOM export was not written.
    """

    result: BoneAgeResult
    exports: dict[str, str] = field(default_factory=dict)
    export_errors: list[str] = field(default_factory=list)


Exports = tuple[str | None, str | None]


def check_engine(engine: str) -> None:
    """Refuse an unknown engine or one whose package is missing, before any work.

    Raises:
        ValueError: not an engine name.
        EngineUnavailableError: ``ray`` without the ``cluster`` extra installed.
    """
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine}: use one of {', '.join(ENGINES)}")
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise EngineUnavailableError(
                "--engine ray needs Ray: pip install -e '.[cluster]' (on every node of the cluster)") from None


def run_one(estimator: BoneAgeEstimator, item: InputItem, exports: Exports = (None, None)) -> Outcome:
    """Estimate one input and write its DICOM outputs (the work every engine does per film).

    Args:
        estimator: loaded models.
        item: the input (an ``InputItem``).
        exports: ``(sr_dir, sc_dir)``; ``None`` for an output not wanted.

    Returns:
        The outcome; an export failure is noted in the result's QC, never raised.
    """
    if item.error:
        result = BoneAgeResult(path=item.path, status="error", reason=item.error, versions=dict(estimator.versions))
        return Outcome(result)
    result = estimator.estimate(
        item.file, sex=item.sex, chronological_age_months=item.chronological_age_months,
        name=item.path, sex_source="manifest", age_source="manifest",
    )
    result.qc.extend(item.notes)
    outcome = Outcome(result)
    if result.ok and (exports[0] or exports[1]):
        from boneage.dicom_export import export_for

        try:
            written, errors = export_for(result, *exports, source=item.file)
        except Exception as exc:  # an export failure must not lose the estimate
            written, errors = {}, [f"{type(exc).__name__}: {exc}"]
        outcome.exports = {f"{kind}_path": str(path) for kind, path in written.items()}
        outcome.export_errors = errors
        result.qc.extend(f"DICOM export failed ({e})" for e in errors)
    result.label_map = None  # not needed in the output; keeps inter-process traffic small
    return outcome


def results(todo: list[InputItem], *, engine: str = "local", estimator: BoneAgeEstimator | None = None,
            workers: int = 1, device: str = "cpu", exports: Exports = (None, None),
            ray_address: str | None = None) -> Iterator[Outcome]:
    """One outcome per input, in the order they complete.

    Args:
        todo: the inputs.
        engine: ``local`` (this process, or a process pool when ``workers`` > 1) or ``ray``.
        estimator: for ``local`` with one worker, an estimator to use (default: load the shipped models).
        workers: processes (local) or actors (Ray).
        device: ``cpu`` or ``cuda`` (Ray: each actor then asks for one GPU).
        exports: ``(sr_dir, sc_dir)``.
        ray_address: a running Ray cluster (``auto``, ``HOST:6379`` or ``ray://HOST:10001``); default:
            the Ray instance this process already joined, else a new local one.

    Returns:
        A generator; closing it (also on Ctrl-C) ends the workers.
    """
    if engine == "ray":
        return ray_results(todo, workers=workers, device=device, exports=exports, address=ray_address)
    return local_results(todo, estimator=estimator, workers=workers, device=device, exports=exports)


# ---------------------------------------------------------------------------------------------
# Local: this process or a spawn pool
# ---------------------------------------------------------------------------------------------
_WORKER_ESTIMATOR: BoneAgeEstimator | None = None
_WORKER_EXPORTS: Exports = (None, None)
#: Why this worker could not start (``None`` when it did).
_WORKER_START_ERROR: str | None = None


def _worker_init(device: str, exports: Exports) -> None:
    global _WORKER_ESTIMATOR, _WORKER_EXPORTS, _WORKER_START_ERROR
    # Ctrl-C is the main process's to handle (it ends the workers): no traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_EXPORTS = exports
    try:
        from boneage import runtime

        runtime.set_threads(1)  # one thread per worker: workers are the parallelism
        _WORKER_ESTIMATOR = BoneAgeEstimator.load(device=device)
    except Exception as exc:
        # A pool replaces a worker whose initialiser raised, forever: start, and answer every
        # film with the reason instead.
        _WORKER_START_ERROR = f"{type(exc).__name__}: {exc}"


def _worker_run(item: InputItem) -> Outcome:
    if _WORKER_ESTIMATOR is None:  # an input's own error says more than the worker's
        reason = item.error or f"the worker process could not load the models ({_WORKER_START_ERROR})"
        return Outcome(BoneAgeResult(path=item.path, status="error", reason=reason))
    return run_one(_WORKER_ESTIMATOR, item, _WORKER_EXPORTS)


def local_results(todo: list[InputItem], *, estimator: BoneAgeEstimator | None = None, workers: int = 1,
                  device: str = "cpu", exports: Exports = (None, None)) -> Iterator[Outcome]:
    """Outcomes computed in this process (one worker) or a spawn pool of ``workers`` processes."""
    if workers <= 1 or len(todo) <= 1:
        from boneage import runtime

        # Loaded before the one-thread block, so that every pool it loads is restored after it (its
        # ONNX Runtime sessions are remade with one thread at the first film).
        est = estimator or BoneAgeEstimator.load(device=device)
        with runtime.threads(1 if device == "cpu" else None):
            for item in todo:
                yield run_one(est, item, exports)
        return
    with start_pool(workers, _worker_init, (device, exports)) as pool:
        yield from pool.imap_unordered(_worker_run, todo, chunksize=1)


def start_pool(workers: int, initializer: Callable[..., None], initargs: tuple) -> Any:
    """A spawn pool of workers that ignore Ctrl-C.

    The ignored SIGINT is inherited through the workers' exec, so even a worker still starting
    up prints no traceback; the main process handles the interrupt and terminates the pool.

    Args:
        workers: processes.
        initializer, initargs: run once in each worker (:func:`_worker_init` loads the models).

    Returns:
        A ``multiprocessing.pool.Pool`` (terminated when its ``with`` block ends).
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # thread pools (ONNX Runtime, torch) and fork do not mix safely
    main = threading.current_thread() is threading.main_thread()  # signals are the main thread's
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        return ctx.Pool(workers, initializer=initializer, initargs=initargs)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------------------------
# Ray: an actor pool, models loaded once per actor
# ---------------------------------------------------------------------------------------------
class FilmActor:
    """The per-film worker on Ray: loads the models once, then estimates the films it is given.

    Args:
        device: ``cpu`` or ``cuda``.
        exports: ``(sr_dir, sc_dir)``, folders every node sees (shared storage).
        threads: threads per network (its CPU share: actors are the parallelism).
    """

    def __init__(self, device: str, exports: Exports, threads: int = 1) -> None:
        import os

        from boneage import runtime

        runtime.set_threads(max(1, threads))
        self.estimator = BoneAgeEstimator.load(device=device)
        self.exports = exports
        self.pid = os.getpid()
        self.films = 0

    def run(self, item: InputItem) -> Outcome:
        self.films += 1
        return run_one(self.estimator, item, self.exports)

    def info(self) -> dict[str, Any]:
        """Which process this actor is and how many films it did (for tests and benchmarks)."""
        return {"pid": self.pid, "films": self.films, "versions": dict(self.estimator.versions)}


def ray_connect(address: str | None = None) -> bool:
    """Join a Ray cluster, or start a local instance when there is none.

    Args:
        address: ``auto``, ``HOST:6379`` or ``ray://HOST:10001``; default: keep the instance this
            process already joined, else start a local one (all this machine's CPUs).

    Returns:
        Whether this call joined or started it (then :func:`ray_results` disconnects at the end).
    """
    import ray

    if ray.is_initialized():
        return False
    # No dashboard: a batch needs none, and it is one more server on the machine.
    kwargs: dict[str, Any] = {"include_dashboard": False} if not address else {}
    ray.init(address=address or None, logging_level="WARNING", log_to_driver=False, **kwargs)
    return True


def ray_results(todo: list[InputItem], *, workers: int = 1, device: str = "cpu", exports: Exports = (None, None),
                address: str | None = None) -> Iterator[Outcome]:
    """Outcomes from ``workers`` Ray actors, streamed as they complete.

    At most one film is in flight per actor, so the driver holds only the outcomes not yet
    written. A film whose actor died is an ``error`` record of the run itself ("estimation
    failed (...)"), which ``--resume`` redoes; the actor is restarted (at most
    :data:`RAY_ACTOR_RESTARTS` times).

    Args:
        todo: the inputs; their files (and the export folders) must be readable by every node.
        workers: actors (each takes one CPU, or one GPU with ``device="cuda"``).
        device: ``cpu`` or ``cuda``.
        exports: ``(sr_dir, sc_dir)``.
        address: see :func:`ray_connect`.

    Returns:
        A generator; closing it ends the actors (and the local Ray instance it started).
    """
    import ray

    if not todo:
        return
    started = ray_connect(address)
    gpu = device.startswith("cuda")
    remote = ray.remote(FilmActor).options(num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=RAY_ACTOR_RESTARTS)
    actors = [remote.remote(device, exports, 1) for _ in range(max(1, min(workers, len(todo))))]
    pending = list(reversed(todo))  # popped from the end: input order
    running: dict[Any, tuple[Any, InputItem]] = {}
    idle = list(actors)
    try:
        while pending or running:
            while idle and pending:
                actor, item = idle.pop(), pending.pop()
                running[actor.run.remote(item)] = (actor, item)
            done, _ = ray.wait(list(running), num_returns=1)
            actor, item = running.pop(done[0])
            idle.append(actor)
            try:
                yield ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError,
                    ray.exceptions.ObjectLostError) as exc:
                reason = f"estimation failed (Ray worker: {type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                yield Outcome(BoneAgeResult(path=item.key, status="error", reason=reason))
    finally:
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:
                pass  # already gone
        if started:
            ray.shutdown()

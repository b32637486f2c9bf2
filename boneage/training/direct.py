"""Training of the end-to-end CNN (:mod:`boneage.direct` is its inference half).

``boneage train direct`` and ``python -m boneage.training.direct``.

* Data: ``rsna-299`` + the ``rsna-dev`` training split, decoded once through
  :func:`boneage.preprocess.prepare_model_input` into a uint8 cache under
  :func:`boneage.paths.cache_dir` at :data:`boneage.direct.CACHE_SIZE` px.
* Sex: the code is set to 0 for :data:`SEX_DROPOUT` of the samples, so the same network has an
  honest sex-agnostic mode.
* Loss: L1 on the location + Laplace negative log-likelihood on the scale (location detached).
* Uncertainty: the Laplace scale, conformally calibrated on a calibration hold-out of the
  *training* split of ``rsna-dev`` (never trained on, never the validation split) so that
  ``location +- factor * scale`` covers 90% there; coverage is then reported on the validation split.
* Augmentation (on the fly, batch-wise in torch): rotation, zoom, aspect jitter, translation,
  horizontal flip (the RSNA films are left hands; a flip makes a plausible right hand), gamma,
  contrast, brightness, Gaussian noise and random down-up resampling (resolution jitter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boneage.agemap import CANDIDATE_NAMES, AgeMap, choose_age_map, expected_estimates
from boneage.direct import (
    AGE_RANGE_MONTHS,
    CACHE_SIZE,
    INPUT_SIZE,
    INTENSITY_CENTRE,
    INTENSITY_SCALE,
    METRICS_FILE,
    MODEL_VERSION,
    TTA_TILTS_DEG,
    WEIGHTS_FILE,
    calibrated_interval,
    clipped_interval,
    sex_to_code,
    tilted_views,
)
from boneage.models import cpu_has_fast_bf16
from boneage.networks import BoneAgeEnsemble, BoneAgeNet, images_to_tensor, predict_arrays
from boneage.networks import build_direct_network as build_network
from boneage.preprocess import prepare_model_input

#: Fraction of training samples whose sex code is hidden (set to 0 = unknown).
SEX_DROPOUT = 0.2
#: Nominal coverage of the reported interval.
INTERVAL_LEVEL = 0.9
#: Number of ``rsna-dev`` *training-split* images held out for calibration and TTA choice.
CALIBRATION_HOLDOUT = 200
_CACHE_VERSION = "v1"
#: Resumable training state beside the weights (not shipped; ignored by git).
CHECKPOINT_FILE = "checkpoint.pt"
#: Training-seed offset between ensemble members (the calibration hold-out follows ``seed`` only).
MEMBER_SEED_STEP = 1000


def member_checkpoint(out: Path, member: int) -> Path:
    """Checkpoint of ensemble member ``member`` (member 0 keeps :data:`CHECKPOINT_FILE`)."""
    return out / (CHECKPOINT_FILE if member == 0 else f"checkpoint_member{member}.pt")


def calibration_holdout(dev_train, seed: int = 0):
    """Split the ``rsna-dev`` training split into the calibration hold-out and the films to fit.

    The hold-out (:data:`CALIBRATION_HOLDOUT` films, drawn with ``seed + 1``) is shared by every
    learnt method, so the combined estimate can be stacked on films no method trained on.

    Args:
        dev_train: the training split's label table (as :func:`boneage.datasets.rsna_dev` orders it).
        seed: the training seed.

    Returns:
        ``(holdout, fit)`` label tables.
    """
    rng = np.random.default_rng(seed + 1)
    idx = np.sort(rng.choice(len(dev_train), size=min(CALIBRATION_HOLDOUT, len(dev_train) // 4), replace=False))
    return dev_train.iloc[idx].reset_index(drop=True), dev_train.drop(index=idx).reset_index(drop=True)


def training_tables(seed: int = 0, limit: int | None = None):
    """The label tables of ``boneage train direct --seed SEED [--limit N]``.

    Args:
        seed: the training seed (it fixes the calibration hold-out and the ``limit`` sample).
        limit: train on a random N films (and at most N, at least 8, hold-out and validation films).

    Returns:
        ``(fit, calibration hold-out, validation)`` label tables: ``rsna-299`` + the ``rsna-dev``
        training split minus the hold-out; the hold-out; the fixed validation split.
    """
    import pandas as pd

    from boneage.datasets import rsna_299, rsna_dev

    dev = rsna_dev()
    val = dev[dev["split"] == "val"].reset_index(drop=True)
    calib, fit_dev = calibration_holdout(dev[dev["split"] == "train"].reset_index(drop=True), seed)
    fit = pd.concat([fit_dev, rsna_299()], ignore_index=True)
    if limit:
        fit = fit.sample(n=min(limit, len(fit)), random_state=seed).reset_index(drop=True)
        calib = calib.iloc[: max(8, min(len(calib), limit))].reset_index(drop=True)
        val = val.iloc[: max(8, min(len(val), limit))].reset_index(drop=True)
    return fit, calib, val


def table_sex_codes(table) -> np.ndarray:
    """The network's sex codes (+1 M, -1 F, 0 unknown) of a label table's ``sex`` column."""
    return np.array([sex_to_code(s) for s in table["sex"]], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------
def augment_batch(images_uint8: torch.Tensor, size: int, generator: torch.Generator,
                  noise_generator: torch.Generator | None = None) -> torch.Tensor:
    """Random radiograph-plausible augmentation of a uint8 ``(B, S, S)`` batch.

    Geometry: rotation +-20 deg, zoom 0.8-1.2, aspect jitter 0.75-1.33, translation +-8%,
    horizontal flip p=0.5. Intensity: gamma 0.67-1.5, contrast 0.8-1.2, brightness +-0.08, noise
    sigma 0-0.03, down-up resampling (p=0.3) to 50-90% resolution.

    Args:
        images_uint8: uint8 tensor ``(B, S, S)``.
        size: output side.
        generator: torch CPU RNG for the per-image parameters (seeded by the caller, for reproducibility).
        noise_generator: RNG on the images' device for the pixel noise (default ``generator``); with
            images on a GPU the work stays there and only the per-image parameters come from the CPU.

    Returns:
        float tensor ``(B, 1, size, size)`` on the images' device, normalised like
        :func:`boneage.networks.images_to_tensor`.
    """
    b = images_uint8.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=generator)

    x = images_uint8.float().div_(255.0).unsqueeze(1)
    angle = uniform(-20.0, 20.0) * math.pi / 180.0
    zoom = torch.exp(uniform(math.log(0.8), math.log(1.2)))
    aspect = torch.exp(uniform(math.log(0.75), math.log(1.333)))
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    sx = flip * torch.sqrt(aspect) / zoom  # sampling-grid scales (output -> input coordinates)
    sy = 1.0 / (torch.sqrt(aspect) * zoom)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = -sin * sy
    theta[:, 1, 0] = sin * sx
    theta[:, 1, 1] = cos * sy
    theta[:, 0, 2] = uniform(-0.16, 0.16)
    theta[:, 1, 2] = uniform(-0.16, 0.16)
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, [b, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    down = torch.rand(b, generator=generator) < 0.3
    if bool(down.any()):
        factor = float(uniform(0.5, 0.9)[0])
        small = max(16, int(size * factor))
        idx = torch.nonzero(down).flatten().to(x.device)
        low = F.interpolate(x[idx], size=(small, small), mode="bilinear", align_corners=False, antialias=True)
        x[idx] = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)

    gamma = torch.exp(uniform(math.log(0.67), math.log(1.5))).view(b, 1, 1, 1).to(x.device)
    x = x.clamp_(0.0, 1.0).pow_(gamma)
    contrast = uniform(0.8, 1.2).view(b, 1, 1, 1).to(x.device)
    brightness = uniform(-0.08, 0.08).view(b, 1, 1, 1).to(x.device)
    x = (x - 0.5) * contrast + 0.5 + brightness
    noise_sigma = uniform(0.0, 0.03).view(b, 1, 1, 1).to(x.device)
    noise_rng = noise_generator if noise_generator is not None else generator
    x = x + noise_sigma * torch.randn(x.shape, generator=noise_rng, device=noise_rng.device)
    return (x.clamp_(0.0, 1.0) - INTENSITY_CENTRE) / INTENSITY_SCALE


# ----------------------------------------------------------------------------------------------
# Cache of decoded, preprocessed training images
# ----------------------------------------------------------------------------------------------
def _decode_one(path_and_size: tuple[str, int]) -> np.ndarray:
    from PIL import Image

    path, size = path_and_size
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"))
    model_input, _ = prepare_model_input(pixels, size)
    return np.round(model_input * 255.0).astype(np.uint8)


def decode_images(paths: list[str], size: int = CACHE_SIZE, workers: int = 2, desc: str = "decode") -> np.ndarray:
    """Decode and preprocess image files into a uint8 ``(N, size, size)`` array (parallel).

    Args:
        paths: image files.
        size: output side.
        workers: processes; 1 decodes in this process.
        desc: progress-bar label.

    Returns:
        uint8 array, one preprocessed image per path, in order.
    """
    from tqdm import tqdm

    out = np.empty((len(paths), size, size), dtype=np.uint8)
    jobs = [(str(p), size) for p in paths]
    if workers <= 1:
        for i, job in enumerate(tqdm(jobs, desc=desc, mininterval=5)):
            out[i] = _decode_one(job)
        return out
    import multiprocessing as mp

    # spawn: forking a process that runs torch or tqdm threads can deadlock a child (seen in CI)
    with mp.get_context("spawn").Pool(workers) as pool:
        for i, arr in enumerate(tqdm(pool.imap(_decode_one, jobs, chunksize=32), total=len(jobs), desc=desc, mininterval=5)):
            out[i] = arr
    return out


def cached_images(labels, size: int = CACHE_SIZE, workers: int = 2) -> np.ndarray:
    """The preprocessed uint8 images for a label table, decoded once and kept under the cache dir.

    The cache file is keyed by the sources, the ids and the size; it is derived from
    research-only images and lives outside the repository.

    Args:
        labels: DataFrame with ``id``, ``path`` and ``source`` columns.
        size: image side.
        workers: decoding processes.

    Returns:
        uint8 ``(N, size, size)`` in the table's row order.
    """
    import hashlib

    from boneage.paths import cache_dir

    key = hashlib.sha1(
        ("|".join(f"{s}:{i}" for s, i in zip(labels["source"], labels["id"])) + f"|{size}|{_CACHE_VERSION}").encode()
    ).hexdigest()[:16]
    file = cache_dir() / f"direct_images_{size}_{key}.npy"
    if file.is_file():
        return np.load(file)
    images = decode_images([str(p) for p in labels["path"]], size=size, workers=workers)
    tmp = file.with_suffix(".tmp.npy")
    np.save(tmp, images)
    os.replace(tmp, file)
    return images


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that determines a training run (written into the weights and metrics)."""

    epochs: int = 40
    input_size: int = INPUT_SIZE
    cache_size: int = CACHE_SIZE
    batch_size: int = 64
    learning_rate: float = 4e-3
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    out: str = ""
    max_minutes: float | None = None
    limit: int | None = None
    workers: int = 2
    bf16: bool = True
    threads: int | None = None
    init: str | None = None
    widths: tuple[int, ...] = (32, 64, 128, 256)
    #: Decay of the exponential moving average of the weights (the EMA copy is what ships); 0 = off.
    ema: float = 0.999
    #: Minutes between checkpoints (``OUT/checkpoint.pt``; a run started again continues from it).
    checkpoint_minutes: float = 3.0
    #: Clean (unaugmented) training images used to re-estimate the BatchNorm statistics after
    #: training; kept only if it lowers the calibration hold-out MAE. 0 = off.
    bn_recalibration_images: int = 2048
    #: Networks trained alike from seeds ``seed``, ``seed + MEMBER_SEED_STEP``, ... (same data and
    #: calibration hold-out) whose outputs are averaged; each keeps its own checkpoint.
    members: int = 1


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``/``"cuda"`` as given.

    Raises:
        ValueError: when CUDA is asked for and not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class TrainResult:
    """A trained network and the facts of its training."""

    model: BoneAgeNet
    target_mean: float
    target_sd: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    #: Seconds spent in this call (a resumed run counts only its own part).
    seconds_this_run: float = 0.0
    #: Per-member facts when ``model`` is an ensemble (seed, epochs, minutes, last hold-out MAE).
    members: list[dict] = field(default_factory=list)


def _assemble(results: list[TrainResult]) -> TrainResult:
    """One result from the ensemble members' results (a single member is returned as it is)."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    if any(abs(r.target_mean - first.target_mean) > 1e-9 or abs(r.target_sd - first.target_sd) > 1e-9 for r in results):
        raise ValueError("ensemble members were trained with different target standardisations")
    members = [{"member": i + 1, "epochs_completed": len(r.history), "training_minutes": round(r.seconds / 60, 1),
                "holdout_mae_months_last_epoch": r.history[-1].get("monitor_mae_months") if r.history else None}
               for i, r in enumerate(results)]
    return TrainResult(
        BoneAgeEnsemble([r.model.float().cpu() for r in results]), first.target_mean, first.target_sd,
        history=[dict(h, member=i + 1) for i, r in enumerate(results) for h in r.history],
        seconds=sum(r.seconds for r in results), members=members,
    )


def _checkpoint_settings(config: TrainConfig) -> dict:
    """The settings a checkpoint must share with a run to be resumed by it."""
    skip = ("max_minutes", "checkpoint_minutes", "out", "threads", "workers", "device", "bn_recalibration_images", "members")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items() if k not in skip}


def train_on_arrays(
    images: np.ndarray,
    ages_months: np.ndarray,
    sex_codes: np.ndarray,
    config: TrainConfig,
    monitor: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    log=print,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Train a :class:`BoneAgeNet` on uint8 image arrays; resumable.

    With ``checkpoint`` set, the network, its EMA copy, the optimiser, the schedule and the random
    state are saved there every ``config.checkpoint_minutes`` and at each epoch's end; a run
    started again with the same settings and data continues from it (and ends with the same
    weights as an uninterrupted run). When ``config.max_minutes`` runs out, the checkpoint is
    saved and the result says ``stopped_early``.

    Args:
        images: uint8 ``(N, S, S)`` preprocessed images.
        ages_months: ``(N,)`` bone ages.
        sex_codes: ``(N,)`` +1/-1 (0 allowed).
        config: the run's settings (epochs, sizes, seed, device, time limit, EMA decay).
        monitor: optional ``(images, ages, sex_codes)`` evaluated with the EMA weights after each
            epoch (MAE logged only; never used to choose anything automatically).
        log: printing function.
        checkpoint: where to keep the resumable state (None: no checkpoints).

    Returns:
        :class:`TrainResult` whose model is the EMA copy (or the network itself when ``config.ema`` is 0).
    """
    import copy

    from tqdm import tqdm

    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    use_bf16 = config.bf16 and (device.type == "cuda" or cpu_has_fast_bf16())

    target_mean = float(np.mean(ages_months))
    target_sd = float(np.std(ages_months)) or 1.0
    init_state = None
    if config.init:
        # Continue from earlier weights (a second, shorter schedule): keep their standardisation.
        init_checkpoint = torch.load(config.init, map_location="cpu", weights_only=True)
        init_state = {k: v.float() if v.is_floating_point() else v for k, v in init_checkpoint["state_dict"].items()}
        target_mean, target_sd = float(init_checkpoint["target_mean"]), float(init_checkpoint["target_sd"])
        log(f"initialised from {config.init}")
    targets = torch.as_tensor((ages_months - target_mean) / target_sd, dtype=torch.float32)
    codes = torch.as_tensor(sex_codes, dtype=torch.float32)
    image_tensor = torch.from_numpy(np.ascontiguousarray(images))
    noise_generator = None
    if device.type == "cuda":
        # On a GPU the whole uint8 set lives there and is augmented there: the CPU only draws the
        # per-image parameters, so a small network is not starved by CPU-side augmentation.
        image_tensor = image_tensor.to(device)
        noise_generator = torch.Generator(device=device).manual_seed(config.seed)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels

    model = BoneAgeNet(widths=tuple(config.widths))
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval() if config.ema > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    n = len(images)
    steps_per_epoch = max(1, n // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    history: list[dict] = []
    start_epoch, start_step = 0, 0
    settings = _checkpoint_settings(config)
    if checkpoint is not None and Path(checkpoint).is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("settings") == settings and state.get("n_images") == n:
            model.load_state_dict(state["network"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["schedule"])
            generator.set_state(state["generator"])
            if noise_generator is not None and state.get("noise_generator") is not None:
                noise_generator.set_state(state["noise_generator"])
            start_epoch, start_step, history = state["epoch"], state["step"], state["history"]
            log(f"resuming from {checkpoint}: epoch {start_epoch + 1}, step {start_step}")
        else:
            log(f"{checkpoint} is from other settings or data; starting afresh")

    def save(epoch: int, step: int) -> None:
        if checkpoint is None:
            return
        Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(checkpoint).with_suffix(".tmp")
        torch.save({"settings": settings, "n_images": n, "network": model.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None, "optimiser": optimizer.state_dict(),
                    "schedule": scheduler.state_dict(), "generator": generator.get_state(),
                    "noise_generator": noise_generator.get_state() if noise_generator is not None else None, "epoch": epoch,
                    "step": step, "history": history}, tmp)
        os.replace(tmp, checkpoint)

    start = began = time.time()
    last_save = start
    stopped_early = False
    hardware = _hardware(device)
    ema_params = list(ema.parameters()) if ema is not None else []
    model_params = list(model.parameters())
    for epoch in range(start_epoch, config.epochs):
        model.train()
        # The epoch's order depends on (seed, epoch) only, so a resumed epoch replays it.
        order = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(n))
        running, seen = torch.zeros((), device=device), 0
        bar = tqdm(range(start_step, steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", mininterval=10,
                   unit="step", initial=start_step, total=steps_per_epoch)
        for step in bar:
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = augment_batch(image_tensor[idx.to(image_tensor.device)], config.input_size, generator, noise_generator)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = targets[idx].to(device)
            code = codes[idx].clone()
            code[torch.rand(len(idx), generator=generator) < SEX_DROPOUT] = 0.0
            with _autocast(device, use_bf16):
                location, log_scale = model(x, code.to(device))
            location, log_scale = location.float(), log_scale.float()
            error = (y - location).abs()
            loss = error.mean() + (log_scale + error.detach() / log_scale.exp()).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                done = epoch * steps_per_epoch + step
                decay = min(config.ema, (1 + done) / (10 + done))
                with torch.no_grad():
                    torch._foreach_mul_(ema_params, decay)
                    torch._foreach_add_(ema_params, model_params, alpha=1 - decay)
                    for be, bn in zip(ema.buffers(), model.buffers()):
                        be.copy_(bn)
            running += error.detach().sum()
            seen += len(idx)
            if step % 20 == 0:  # reading the running error waits for the device: only now and then
                bar.set_postfix(mae_months=f"{float(running) * target_sd / max(seen, 1):.1f}", lr=f"{scheduler.get_last_lr()[0]:.1e}")
            if time.time() - last_save > 60.0 * config.checkpoint_minutes:
                save(epoch, step + 1)
                last_save = time.time()
            if config.max_minutes is not None and time.time() - began > 60.0 * config.max_minutes:
                stopped_early = True
                save(epoch, step + 1)
                break
        bar.close()
        if stopped_early:
            log(f"stopped after {config.max_minutes} minutes (--max-minutes) at epoch {epoch + 1}")
            break
        start_step = 0
        record = {"epoch": epoch + 1, "train_mae_months": float(running) * target_sd / max(seen, 1),
                  "minutes": (history[-1]["minutes"] if history else 0.0) + (time.time() - start) / 60, "device": device.type, "hardware": hardware}
        start = time.time()
        if monitor is not None:
            loc, _ = predict_arrays(ema if ema is not None else model, monitor[0], monitor[2], target_mean, target_sd,
                                    config.input_size, device)
            record["monitor_mae_months"] = float(np.mean(np.abs(loc - monitor[1])))
        history.append(record)
        save(epoch + 1, 0)
        last_save = time.time()
        log(json.dumps(record))
    trained = ema if ema is not None else model
    seconds = 60.0 * (history[-1]["minutes"] if history else 0.0) + (time.time() - start if stopped_early else 0.0)
    return TrainResult(trained.eval(), target_mean, target_sd, history, seconds, stopped_early,
                       seconds_this_run=time.time() - began)


@torch.no_grad()
def reestimate_batchnorm(network: torch.nn.Module, batches, device: torch.device | str | None = None) -> torch.nn.Module:
    """A copy of ``network`` whose BatchNorm running statistics are re-estimated on ``batches``.

    Training normalises with statistics of *augmented* batches; a film at inference is clean.
    Running clean training inputs through the copy in training mode (cumulative averages, no
    gradient) replaces those statistics; the weights are untouched. Shared by the CNN and the
    crop networks (:func:`boneage.training.perbone.recalibrate_crop_batchnorm`).

    Args:
        network: the trained network (not changed).
        batches: an iterable of argument tuples, each one forward call's inputs (on ``device``).
        device: where the copy runs (default: where ``network`` is).

    Returns:
        The re-estimated copy, in eval mode.
    """
    import copy

    copied = copy.deepcopy(network)
    if device is not None:
        copied = copied.to(device)
    norms = [m for m in copied.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over every batch below
    copied.train()
    with torch.no_grad():
        for inputs in batches:
            copied(*inputs)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return copied.eval()


def recalibrate_batchnorm(model: torch.nn.Module, images: np.ndarray, sex_codes: np.ndarray, input_size: int,
                          batch_size: int = 64, device: torch.device | str = "cpu") -> torch.nn.Module:
    """:func:`reestimate_batchnorm` of the CNN (or an ensemble of them) on clean preprocessed images.

    The 192 px CNN's augmented-batch statistics had shifted its ages by about +4 months on the
    calibration hold-out.

    Args:
        model: the trained network (a copy is changed, not the network itself).
        images: uint8 ``(N, S, S)`` clean training images.
        sex_codes: ``(N,)`` their sex codes.
        input_size: network input side.
        batch_size: images per forward pass.
        device: where to run.

    Returns:
        The recalibrated copy, in eval mode.
    """
    batches = (
        (images_to_tensor(images[start:start + batch_size], input_size).to(device).contiguous(memory_format=torch.channels_last),
         torch.as_tensor(np.asarray(sex_codes[start:start + batch_size]), dtype=torch.float32, device=device))
        for start in range(0, len(images), batch_size)
    )
    return reestimate_batchnorm(model, batches, device)


def conformal_factor(ages: np.ndarray, locations: np.ndarray, scales: np.ndarray, level: float = INTERVAL_LEVEL) -> float:
    """Split-conformal factor k so that ``|age - location| <= k * scale`` holds with ``level`` coverage.

    Uses the finite-sample quantile ``ceil((n + 1) * level) / n`` of the normalised residuals.
    """
    scores = np.sort(np.abs(ages - locations) / scales)
    n = len(scores)
    rank = min(n - 1, int(math.ceil((n + 1) * level)) - 1)
    return float(scores[rank])


def evaluate_predictions(ages: np.ndarray, sexes: np.ndarray, predictions: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> dict:
    """MAE overall, by sex and by age band, and interval coverage.

    Args:
        ages: true bone ages (months).
        sexes: ``"M"``/``"F"`` per case.
        predictions, lower, upper: estimates and interval bounds (months).

    Returns:
        Nested dict of ``{"n": ..., "mae_months": ..., "coverage_90": ...}`` per group.
    """

    def group(mask: np.ndarray) -> dict:
        if not mask.any():
            return {"n": 0}
        err = np.abs(predictions[mask] - ages[mask])
        return {
            "n": int(mask.sum()),
            "mae_months": round(float(err.mean()), 2),
            "bias_months": round(float((predictions[mask] - ages[mask]).mean()), 2),
            "rmse_months": round(float(np.sqrt((err**2).mean())), 2),
            "coverage_90": round(float(((ages[mask] >= lower[mask]) & (ages[mask] <= upper[mask])).mean()), 3),
            "mean_interval_width_months": round(float((upper[mask] - lower[mask]).mean()), 1),
        }

    sexes = np.asarray(sexes)
    return {
        "overall": group(np.ones(len(ages), dtype=bool)),
        "male": group(sexes == "M"),
        "female": group(sexes == "F"),
        "age_under_6y": group(ages < 72),
        "age_6_to_12y": group((ages >= 72) & (ages <= 144)),
        "age_over_12y": group(ages > 144),
    }


def save_weights(path: Path, result: TrainResult, config: TrainConfig, calibration: dict) -> None:
    """Write the fp16 state dict, the standardisation, the calibration and the config."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in result.model.state_dict().items()}
    torch.save(
        {
            "version": MODEL_VERSION,
            "state_dict": state,
            "target_mean": result.target_mean,
            "target_sd": result.target_sd,
            "calibration": calibration,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        },
        path,
    )


def _robustness_variants(pixels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Shifted copies of a uint8 film: borders, a marker, lower resolution, lost aspect ratio,
    lossy re-encoding, another intensity window."""
    import io

    from PIL import Image

    rows, cols = pixels.shape
    pad_r, pad_c = rows // 6, cols // 6
    black = np.pad(pixels, ((pad_r, pad_r), (pad_c, pad_c)), constant_values=0)
    grey = np.pad(pixels, ((pad_r, pad_r), (pad_c, pad_c)), constant_values=128)
    marked = pixels.copy()
    h, w = rows // 8, cols // 10
    r0, c0 = int(rng.integers(0, rows - h)), int(rng.integers(0, cols // 4))
    marked[r0:r0 + h, c0:c0 + w] = 255
    small = np.asarray(Image.fromarray(pixels).resize((max(8, cols * 2 // 5), max(8, rows * 2 // 5)), Image.Resampling.BILINEAR))
    squashed = np.asarray(Image.fromarray(pixels).resize((299, 299), Image.Resampling.BILINEAR))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=30)
    with Image.open(buffer) as reopened:
        jpeg = np.asarray(reopened.convert("L"))
    # Another site's window: gamma 1.5 on a window clipping the darkest and brightest 2%.
    lo, hi = np.percentile(pixels, (2, 98))
    rewindowed = np.round(255.0 * np.clip((pixels.astype(np.float32) - lo) / max(float(hi - lo), 1.0), 0, 1) ** 1.5).astype(np.uint8)
    return {"black_border": black, "grey_border": grey, "bright_marker": marked, "downscaled_40pct": small, "squashed_299": squashed,
            "jpeg_quality_30": jpeg, "rewindowed_gamma_1.5": rewindowed}


def train(config: TrainConfig, log=print) -> dict:
    """The ``boneage train direct`` run: data, training, calibration, validation, weights.

    Trains on ``rsna-299`` + the ``rsna-dev`` training split minus :data:`CALIBRATION_HOLDOUT`
    films; calibrates the interval and decides flip-TTA on that hold-out; reports metrics on the
    fixed validation split (never used for any choice).

    Args:
        config: run settings; ``config.out`` is the output folder.

    Returns:
        The metrics dict (also written to ``OUT/metrics.json``).
    """
    from boneage.paths import MODELS_DIR

    if config.members < 1:
        raise ValueError(f"--members must be at least 1 (got {config.members})")
    out = Path(config.out) if config.out else MODELS_DIR / "direct"
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
    wall_start = time.time()

    fit, calib, val = training_tables(config.seed, config.limit)
    log(f"training on {len(fit)} films ({(fit['source'] == 'rsna-dev').sum()} rsna-dev, {(fit['source'] == 'rsna-299').sum()} rsna-299); "
        f"calibration hold-out {len(calib)}; validation {len(val)}; device {device}")

    fit_images = cached_images(fit, config.cache_size, config.workers)
    calib_images = cached_images(calib, config.cache_size, config.workers)
    val_images = cached_images(val, config.cache_size, config.workers)
    codes = table_sex_codes
    calib_ages = calib["bone_age_months"].to_numpy(dtype=np.float64)
    val_ages = val["bone_age_months"].to_numpy(dtype=np.float64)

    member_results: list[TrainResult] = []
    budget = config.max_minutes
    for member in range(config.members):
        # Members differ only in their training seed (initialisation, order, augmentation).
        member_config = replace(config, seed=config.seed + MEMBER_SEED_STEP * member, max_minutes=budget)
        checkpoint = member_checkpoint(out, member)
        if config.members > 1:
            log(f"ensemble member {member + 1}/{config.members} (training seed {member_config.seed}, checkpoint {checkpoint.name})")
        result = train_on_arrays(
            fit_images, fit["bone_age_months"].to_numpy(dtype=np.float64), codes(fit), member_config,
            monitor=(calib_images, calib_ages, codes(calib)), log=log, checkpoint=checkpoint,
        )
        if result.stopped_early:
            log(f"training stopped by --max-minutes; its state is in {checkpoint}: run the same command again to continue "
                "(nothing else was written)")
            return {"stopped_early": True, "checkpoint": str(checkpoint)}
        member_results.append(result)
        if budget is not None:
            budget = max(budget - result.seconds_this_run / 60.0, 0.01)
    result = _assemble(member_results)
    for i, facts in enumerate(result.members):
        facts["training_seed"] = config.seed + MEMBER_SEED_STEP * i
    result.model = result.model.float().cpu()
    bn_choice = {"bn_recalibration_images": 0}
    if config.bn_recalibration_images:
        # Chosen on the calibration hold-out, like flip-TTA: keep only if it lowers the MAE there.
        pick = np.sort(np.random.default_rng(config.seed).choice(len(fit), size=min(config.bn_recalibration_images, len(fit)),
                                                                 replace=False))
        recalibrated = recalibrate_batchnorm(result.model, fit_images[pick], codes(fit)[pick], config.input_size)
        before, _ = predict_arrays(result.model, calib_images, codes(calib), result.target_mean, result.target_sd, config.input_size)
        after, _ = predict_arrays(recalibrated, calib_images, codes(calib), result.target_mean, result.target_sd, config.input_size)
        bn_choice = {
            "bn_recalibration_images": len(pick),
            "holdout_mae_months_before_bn_recalibration": round(float(np.mean(np.abs(before - calib_ages))), 2),
            "holdout_bias_months_before_bn_recalibration": round(float(np.mean(before - calib_ages)), 2),
            "holdout_mae_months_after_bn_recalibration": round(float(np.mean(np.abs(after - calib_ages))), 2),
            "holdout_bias_months_after_bn_recalibration": round(float(np.mean(after - calib_ages)), 2),
        }
        bn_choice["bn_recalibrated"] = (bn_choice["holdout_mae_months_after_bn_recalibration"]
                                        < bn_choice["holdout_mae_months_before_bn_recalibration"])
        if bn_choice["bn_recalibrated"]:
            result.model = recalibrated
        log(f"BatchNorm recalibration: {json.dumps(bn_choice)}")
    # Evaluate exactly what is shipped: the fp16 weights loaded back into float32.
    model = build_network(tuple(config.widths), config.members)
    model.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in result.model.state_dict().items()})
    model.eval()
    # fp16 storage check: both weights read plainly (one view, no TTA, no map).
    fp32_loc, _ = predict_arrays(result.model.float().cpu(), val_images, codes(val), result.target_mean, result.target_sd, config.input_size)
    fp16_loc, _ = predict_arrays(model, val_images, codes(val), result.target_mean, result.target_sd, config.input_size)

    def run(images, sex_codes, tta):
        # Read as DirectEstimator reads a film: each test-time tilt, locations and scales averaged.
        tilts = len(TTA_TILTS_DEG)
        views = np.concatenate([tilted_views(im.astype(np.float32) / 255.0) for im in images])
        loc, scale = predict_arrays(model, views, np.repeat(sex_codes, tilts), result.target_mean, result.target_sd,
                                    config.input_size, flip_tta=tta)
        return loc.reshape(-1, tilts).mean(axis=1), scale.reshape(-1, tilts).mean(axis=1)

    # Calibration hold-out: choose TTA, fit the conformal factors (sex known / unknown).
    calib_plain, calib_plain_scale = run(calib_images, codes(calib), False)
    calib_tta, calib_tta_scale = run(calib_images, codes(calib), True)
    mae_plain = float(np.mean(np.abs(calib_plain - calib_ages)))
    mae_tta = float(np.mean(np.abs(calib_tta - calib_ages)))
    use_tta = mae_tta < mae_plain - 0.1
    unknown = np.zeros(len(calib))
    calib_loc, calib_scale = (calib_tta, calib_tta_scale) if use_tta else (calib_plain, calib_plain_scale)
    calib_loc_u, calib_scale_u = run(calib_images, unknown, use_tta)
    # Age-band bias maps (kept when they pay on the hold-out), then the conformal factors of the
    # mapped intervals: [f^-1(loc - k s), f^-1(loc + k s)] holds the age iff |f(age) - loc| <= k s.
    age_maps, age_map_choice = {}, {}
    for mode, loc_mode in (("sex_known", calib_loc), ("sex_unknown", calib_loc_u)):
        age_map, age_map_choice[mode] = choose_age_map(calib_ages, np.clip(loc_mode, *AGE_RANGE_MONTHS), seed=config.seed)
        age_maps[mode] = age_map.to_dict() if age_map is not None else None
    log(f"age-band bias map: {json.dumps(age_map_choice)}")

    def expected(mode):
        return expected_estimates(AgeMap.from_dict(age_maps[mode]), calib_ages)

    calibration = {
        "level": INTERVAL_LEVEL,
        "factor_sex_known": conformal_factor(expected("sex_known"), calib_loc, calib_scale),
        "factor_sex_unknown": conformal_factor(expected("sex_unknown"), calib_loc_u, calib_scale_u),
        "age_map": age_maps,
        "age_map_choice": age_map_choice,
        "flip_tta": bool(use_tta),
        "holdout_n": len(calib),
        "holdout_mae_months_plain": round(mae_plain, 2),
        "holdout_mae_months_flip_tta": round(mae_tta, 2),
        "holdout_ids": [int(i) for i in calib["id"]],
        **bn_choice,
    }
    log(f"calibration: {json.dumps({k: v for k, v in calibration.items() if k != 'holdout_ids'})}")
    weights_path = out / WEIGHTS_FILE
    save_weights(weights_path, result, config, calibration)

    # Validation split: report only.
    val_sexes = val["sex"].to_numpy()
    loc, scale = run(val_images, codes(val), use_tta)
    pred, lower, upper = calibrated_interval(loc, scale, calibration, sex_known=True)
    loc_u, scale_u = run(val_images, np.zeros(len(val)), use_tta)
    pred_u, lower_u, upper_u = calibrated_interval(loc_u, scale_u, calibration, sex_known=False)
    unmapped = clipped_interval(loc, scale, calibration["factor_sex_known"])[0]
    other_tta_loc, _ = run(val_images, codes(val), not use_tta)
    metrics: dict = {
        "model_version": MODEL_VERSION,
        "validation_split": "rsna-dev split == 'val' (boneage.datasets, SPLIT_SEED 20261125)",
        "validation": evaluate_predictions(val_ages, val_sexes, pred, lower, upper),
        "validation_sex_unknown": evaluate_predictions(val_ages, val_sexes, pred_u, lower_u, upper_u),
        # The same estimates before the age-band bias map (sex given): what the map trades.
        "validation_without_age_map": {
            group: {k: v for k, v in stats.items() if k in ("n", "mae_months", "bias_months")}
            for group, stats in evaluate_predictions(val_ages, val_sexes, unmapped, unmapped, unmapped).items()},
        "validation_mae_fp32_weights": round(float(np.mean(np.abs(np.clip(fp32_loc, *AGE_RANGE_MONTHS) - val_ages))), 3),
        "validation_mae_fp16_weights": round(float(np.mean(np.abs(np.clip(fp16_loc, *AGE_RANGE_MONTHS) - val_ages))), 3),
        "validation_mae_other_tta_setting": round(float(np.mean(np.abs(np.clip(other_tta_loc, *AGE_RANGE_MONTHS) - val_ages))), 2),
        "predict_mean_baseline_mae_months": round(float(np.mean(np.abs(val_ages - result.target_mean))), 2),
        "calibration": {k: v for k, v in calibration.items() if k != "holdout_ids"},
    }

    # Robustness: the same validation films with borders, a marker, lower resolution, lost aspect.
    from PIL import Image

    rng = np.random.default_rng(config.seed)
    variant_images: dict[str, list[np.ndarray]] = {}
    for path in val["path"]:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L"))
        for name, shifted in _robustness_variants(pixels, rng).items():
            prepared, _ = prepare_model_input(shifted, config.cache_size)
            variant_images.setdefault(name, []).append(np.round(prepared * 255).astype(np.uint8))
    metrics["robustness_validation_mae_months"] = {"original": metrics["validation"]["overall"]["mae_months"]}

    def band_bias(estimates: np.ndarray) -> dict:
        groups = evaluate_predictions(val_ages, val_sexes, estimates, estimates, estimates)
        return {band: groups[band]["bias_months"] for band in ("age_under_6y", "age_6_to_12y", "age_over_12y")
                if groups[band]["n"]}

    metrics["robustness_validation_bias_by_band_months"] = {"original": band_bias(pred)}
    for name, imgs in variant_images.items():
        v_loc, v_scale = run(np.stack(imgs), codes(val), use_tta)
        v_loc = calibrated_interval(v_loc, v_scale, calibration, sex_known=True)[0]
        metrics["robustness_validation_mae_months"][name] = round(float(np.mean(np.abs(v_loc - val_ages))), 2)
        metrics["robustness_validation_bias_by_band_months"][name] = band_bias(v_loc)

    metrics["training"] = {
        "command": "boneage train direct " + " ".join(_config_to_argv(config)),
        "n_training_films": len(fit),
        "n_rsna_dev_training_films": int((fit["source"] == "rsna-dev").sum()),
        "n_rsna_299_training_films": int((fit["source"] == "rsna-299").sum()),
        "epochs_completed": len(result.history) // config.members,
        "members": result.members,
        "stopped_early_by_max_minutes": result.stopped_early,
        "training_minutes": round(result.seconds / 60, 1),
        "total_wall_minutes": round((time.time() - wall_start) / 60, 1),
        # Where the epochs ran (a run trained on a lent GPU and finished here says both).
        "device": ", ".join(dict.fromkeys(h["device"] for h in result.history if h.get("device"))) or str(device),
        "hardware": "; ".join(dict.fromkeys(h["hardware"] for h in result.history if h.get("hardware"))) or _hardware(device),
        "evaluated_on": _hardware(device),
        "bf16_autocast": bool(config.bf16 and ("cuda" in {h.get("device") for h in result.history} or device.type == "cuda"
                                                 or cpu_has_fast_bf16())),
        "torch": torch.__version__,
        "history": result.history,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
    }
    if config.init:
        previous_metrics = Path(config.init).parent / METRICS_FILE
        if previous_metrics.is_file():
            previous = json.loads(previous_metrics.read_text())
            metrics["training"]["previous_stage"] = {
                key: previous["training"].get(key)
                for key in ("command", "epochs_completed", "training_minutes", "total_wall_minutes", "hardware", "history",
                            "stopped_early_by_max_minutes", "note")
            }
            metrics["training"]["previous_stage"]["validation_mae_months"] = previous["validation"]["overall"]["mae_months"]
            metrics["training"]["previous_stage"]["holdout_mae_months"] = previous["calibration"]["holdout_mae_months_plain"]
    metrics["weights_file"] = WEIGHTS_FILE
    metrics["weights_bytes"] = weights_path.stat().st_size
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(out)
    log(json.dumps({k: metrics[k] for k in ("validation", "validation_sex_unknown", "robustness_validation_mae_months")}, indent=2))
    return metrics


_GROUP_LABELS = (
    ("overall", "all"),
    ("male", "male"),
    ("female", "female"),
    ("age_under_6y", "bone age < 6 y"),
    ("age_6_to_12y", "6-12 y"),
    ("age_over_12y", "> 12 y"),
)


def _metrics_table(groups: dict) -> str:
    lines = ["| group | n | MAE (months) | bias (months) | RMSE (months) | 90% interval coverage | mean interval width (months) |",
             "|---|---|---|---|---|---|---|"]
    for key, label in _GROUP_LABELS:
        g = groups.get(key, {"n": 0})
        if not g.get("n"):
            lines.append(f"| {label} | 0 | - | - | - | - | - |")
            continue
        bias = f"{g['bias_months']:+.1f}" if "bias_months" in g else "-"
        lines.append(f"| {label} | {g['n']} | {g['mae_months']:.1f} | {bias} | {g['rmse_months']:.1f} | "
                     f"{100 * g['coverage_90']:.1f}% | {g['mean_interval_width_months']:.0f} |")
    return "\n".join(lines)


def _members_line(training: dict) -> str:
    """Model-card line on the ensemble (empty for a single network)."""
    members = training.get("members") or []
    if not members:
        return ""
    each = "; ".join(f"member {m['member']}: training seed {m.get('training_seed', '?')}, {m['training_minutes']:.0f} min, "
                     f"last-epoch hold-out MAE {m['holdout_mae_months_last_epoch']:.2f}" for m in members)
    return (f"- **Ensemble of {len(members)} networks** trained alike (same data, same calibration hold-out) from "
            f"different seeds; their locations and log-scales are averaged ({each}).\n")


def _ema_and_batchnorm_lines(config: dict, cal: dict) -> str:
    """Model-card lines on the EMA weights and the BatchNorm re-estimation decision."""
    lines = []
    if config.get("ema"):
        lines.append(f"- Shipped weights are an exponential moving average (decay {config['ema']}) of the training "
                     "weights, the BatchNorm running statistics are the training network's own.")
    if cal.get("bn_recalibration_images"):
        kept = cal["bn_recalibrated"]
        lines.append(
            f"- BatchNorm statistics re-estimated on {cal['bn_recalibration_images']} clean (unaugmented) training films "
            f"and kept only if the calibration hold-out MAE drops: {cal['holdout_mae_months_before_bn_recalibration']:.2f} "
            f"(bias {cal['holdout_bias_months_before_bn_recalibration']:+.2f}) before vs "
            f"{cal['holdout_mae_months_after_bn_recalibration']:.2f} (bias {cal['holdout_bias_months_after_bn_recalibration']:+.2f}) "
            f"after -> **{'kept' if kept else 'not kept'}**. (Statistics gathered on augmented batches had shifted the "
            "earlier 192 px model's ages by +4 months on the hold-out.)")
    return "\n".join(lines) if lines else "- Plain end-of-training weights."


def _age_map_lines(m: dict) -> str:
    """Model-card lines on the age-band bias map (:mod:`boneage.agemap`): the choice and what it trades."""
    choice = m["calibration"].get("age_map_choice")
    if not choice:
        return "No age-band bias map (weights calibrated before it existed)."

    def row(mode: str) -> str:
        c = choice[mode]
        cells = " | ".join(f"{c[k]['mae_months']:.2f} / {c[k]['worst_band_bias_months']:.2f}" if k in c else "-"
                           for k in ("none", "degree_1", "degree_2"))
        return f"| {mode.replace('_', ' ')} | {cells} | {CANDIDATE_NAMES.get(c['chosen'], c['chosen'])} |"

    before, after = m.get("validation_without_age_map", {}), m["validation"]
    bands = ("overall", "age_under_6y", "age_6_to_12y", "age_over_12y")

    def cells(groups: dict) -> str:
        return " | ".join(f"{groups[b]['mae_months']:.1f} / {groups[b]['bias_months']:+.1f}" if groups.get(b, {}).get("n") else "-"
                          for b in bands)

    return f"""Unseen films are drawn toward the crowded middle of the training ages (regression to the mean):
read plainly, the calibration hold-out's children under 12 y come out months too old and its
adolescents too young. The estimate and its interval are therefore read back through a monotone map
`age = f^-1(estimate)`, where `estimate = f(age)` is a robust polynomial fitted on that hold-out
(`boneage/agemap.py`), when it pays there: each candidate is scored on random halves of the hold-out
(fitted on the other half; 20 splits) as MAE + worst band bias (|mean error| in the worst of < 6 y,
6-12 y, > 12 y), and a map must beat no map (a quadratic, the straight line) by more than 0.25 month.

| mode | none: MAE / worst band bias | straight line | quadratic | chosen |
|---|---|---|---|---|
{row('sex_known')}
{row('sex_unknown')}

Validation (sex given), MAE / bias in months: all, < 6 y, 6-12 y, > 12 y
| | all | < 6 y | 6-12 y | > 12 y |
|---|---|---|---|---|
| without the map | {cells(before)} |
| shipped | {cells(after)} |"""


def _retrain_device_line(training: dict) -> str:
    """What retraining on the other kind of device gives."""
    if "cuda" in training.get("device", ""):
        return ("Trained on the CPU instead, the same command gives the same schedule but not bit-identical weights "
                "(other kernels, other random streams for the pixel noise); expect numbers within noise of these.")
    return "On a GPU use `--device cuda` (the numbers will differ slightly from these CPU-trained weights)."


def _gpu_route_line(training: dict) -> str:
    """How a run whose epochs ran on a lent GPU was finished (empty for a run trained here)."""
    if "cuda" not in training.get("device", ""):
        return ""
    return (f" The epochs ran on the GPU through `scripts/gpu_train_direct.sh` (the same training loop, fed from a packed"
            f" copy of the training cache written by `python -m boneage.training.direct_gpu pack`; members side by side, so"
            f" the wall time is about one member's); their checkpoints were copied into this folder and the command above, run afterwards on"
            f" {training.get('evaluated_on', 'the CPU')}, found the finished checkpoints and did the BatchNorm choice,"
            f" calibration, evaluation and export there. Re-running it without the GPU trains the same schedule on the CPU.")


def write_model_card(folder: str | Path | None = None) -> Path:
    """Write ``MODEL_CARD.md`` beside the weights from their ``metrics.json``.

    Args:
        folder: the model folder (default ``data/models/direct``).

    Returns:
        The card's path.
    """
    from boneage.paths import MODELS_DIR

    folder = Path(folder) if folder else MODELS_DIR / "direct"
    m = json.loads((folder / METRICS_FILE).read_text())
    t = m["training"]
    cal = m["calibration"]
    rob = m["robustness_validation_mae_months"]
    speed = m.get("inference", {})
    params = sum(p.numel() for p in BoneAgeNet(widths=tuple(t["config"]["widths"])).parameters())
    worst_shift = max(((k, v) for k, v in rob.items() if k != "original"), key=lambda kv: kv[1])
    rob_bias = m.get("robustness_validation_bias_by_band_months", {})

    def bias_cells(name: str) -> str:
        b = rob_bias.get(name)
        return " | ".join(f"{b[k]:+.1f}" if b and k in b else "-" for k in ("age_under_6y", "age_6_to_12y", "age_over_12y"))

    robustness_rows = "\n".join(f"| {k.replace('_', ' ')} | {v:.1f} | {bias_cells(k)} |" for k, v in rob.items())
    previous = t.get("previous_stage")
    history = [dict(h, stage=1) for h in previous["history"]] + [dict(h, stage=2) for h in t["history"]] if previous else t["history"]
    commands = (previous["command"] + "\n" if previous else "") + t["command"]
    stage_note = (
        f"Two stages: the first command trains from scratch ({previous['epochs_completed']} epochs, "
        f"{previous['training_minutes']:.0f} min; its own validation MAE {previous['validation_mae_months']:.1f}, hold-out MAE "
        f"{previous['holdout_mae_months']:.1f}), the second continues from its weights with a new, shorter one-cycle schedule. "
        if previous else ""
    )
    speed_line = (f"{speed['seconds_per_image']:.3f} s per image on {speed['hardware']} ({speed['note']})"
                  if speed else "see `benchmarks/bench_direct.py`")
    text = f"""# Model card: end-to-end bone-age CNN (`{m['model_version']}`)

**Research and education use only. Not a medical device; not for clinical decisions.** The
weights were trained on RSNA Pediatric Bone Age Challenge images, whose terms allow research and
education use only, no commercial use (cite Halabi SS, Prevedello LM, Kalpathy-Cramer J, et al.
The RSNA Pediatric Bone Age Machine Learning Challenge. *Radiology* 2019;290:498-503).

## What it does
Left-hand PA radiograph (+ sex when known) -> bone age in months with a 90% interval.
`boneage.direct.DirectEstimator.load().predict(radiograph_or_array, sex)`; registered as
`boneage.models.get("direct")`. When the sex is unknown the same network runs with its sex input
set to "unknown" (it was trained with the sex hidden for {int(100 * SEX_DROPOUT)}% of samples), the
result says so (`sex_used=None`, `sex_note`) and its interval is calibrated separately; a sex is
never assumed.
In the whole pipeline (`boneage predict`, `BoneAgeEstimator`) a film without its sex first has the sex
read from its bone crops (`data/models/sex/`): used when at least 80% sure, otherwise this network's
readings as a boy and as a girl are weighed by the probability; the unknown-sex mode below is the
fallback when the sex cannot be read at all. That path's validation figure is in the README
(`benchmarks/bench_sex_unknown.py`).

## Model
{_members_line(t)}- Narrow MONAI 2-D ResNet-18 (`monai.networks.nets.ResNet`, basic blocks 2-2-2-2, widths
  {'-'.join(str(w) for w in t['config']['widths'])}, `conv1_t_stride=2`), {params / 1e6:.2f} M parameters{' per member' if t.get('members') else ''}, from scratch
  (no pretrained weights, no synthetic pretraining), + an MLP head on [pooled features, sex code
  (+1 M / -1 F / 0 unknown), |sex code|] giving a location and a Laplace scale.
- Loss: L1 on the location + Laplace negative log-likelihood for the scale (location detached).
{_ema_and_batchnorm_lines(t['config'], cal)}
- Weights: `{m['weights_file']}`, fp16 ({m['weights_bytes'] / 1e6:.1f} MB), loaded back into float32.
  Validation MAE without TTA: fp32 weights {m['validation_mae_fp32_weights']:.2f} vs the shipped fp16 weights
  {m['validation_mae_fp16_weights']:.2f} months (one view, no map: fp16 storage loses nothing).

## Input and preprocessing (`boneage/preprocess.py`, shared with the multi-step method)
Uniform borders trimmed (content bounding box + 3% margin), crop squashed to a
{t['config']['cache_size']} x {t['config']['cache_size']} square **ignoring the aspect ratio** (the same for every film, so a film that
lost its aspect ratio looks like any other), percentile window (0.5-99.5%) to [0, 1], resized to
{t['config']['input_size']} x {t['config']['input_size']} for the network. Orientation is not corrected (fingers up expected; trained with +-20 deg).

## Training data
- `rsna-299`: {t['n_rsna_299_training_films']} films (squashed to 299 x 299 by a public mirror).
- `rsna-dev` training split: {t['n_rsna_dev_training_films']} films; a further {cal['holdout_n']} films of the
  training split were held out (never trained on) to calibrate the interval and to decide test-time
  augmentation.
- The project's fixed validation split (`rsna-dev`, `split == "val"`) was used for nothing but the
  numbers below.
- Augmentation: rotation +-20 deg, zoom 0.8-1.2, aspect jitter 0.75-1.33, translation +-8%,
  horizontal flip (p = 0.5; left hands become plausible right hands), gamma 0.67-1.5, contrast
  0.8-1.2, brightness +-0.08, Gaussian noise, random down-up resampling (resolution jitter).

## Reproduce
```
{commands}
```
{stage_note}Seed {t['config']['seed']}; {'last stage ' if previous else ''}{t['epochs_completed']} epochs (batch {t['config']['batch_size']}, AdamW lr {t['config']['learning_rate']}, weight decay
{t['config']['weight_decay']}, one-cycle schedule){', stopped by --max-minutes' if t['stopped_early_by_max_minutes'] else ''}; bf16 autocast: {t['bf16_autocast']}.
Hardware: {t['hardware']} (device `{t['device']}`), torch {t['torch']} (the run that wrote the weights).{_gpu_route_line(t)} Training time
{t['training_minutes'] + (previous['training_minutes'] if previous else 0):.0f} min in all (resumed runs included); the last run of the command{'s' if previous else ''} took {t['total_wall_minutes'] + (previous['total_wall_minutes'] if previous else 0):.0f} min end to end (the first run also decodes the images
into a uint8 cache under `~/.cache/boneage`, outside the repository). {_retrain_device_line(t)} The command saves
`{CHECKPOINT_FILE}` in the model folder every {t['config'].get('checkpoint_minutes', 3):g} minutes (not committed); re-running the
same command after an interruption resumes from it and gives the same weights.{(chr(10) + t['note']) if t.get('note') else ''}

## Validation metrics (fixed `rsna-dev` validation split, sex given)
Each film read as `DirectEstimator` reads it: at the test-time tilts ({', '.join(f'{t:+g}' for t in TTA_TILTS_DEG)} deg, averaged)
and through the age-band bias map below; the calibration hold-out was read the same way.

{_metrics_table(m['validation'])}

Predicting the training mean for everyone gives MAE {m['predict_mean_baseline_mae_months']:.1f} months on this split.

### Sex unknown (same films, sex input set to unknown)
{_metrics_table(m['validation_sex_unknown'])}

### Uncertainty
The network's Laplace scale is multiplied by a split-conformal factor fitted on the
{cal['holdout_n']}-film calibration hold-out of the training split: {cal['factor_sex_known']:.2f} (sex known),
{cal['factor_sex_unknown']:.2f} (sex unknown); the interval is location +- factor x scale (clipped to 0-240
months). Coverage above is measured on the validation split, which played no part in the fit.

### Age-band bias
{_age_map_lines(m)}

### Test-time augmentation
Flip-TTA on the calibration hold-out: MAE {cal['holdout_mae_months_plain']:.2f} plain vs {cal['holdout_mae_months_flip_tta']:.2f} with flip;
rule "keep if it gains > 0.1 month" -> flip-TTA **{'on' if cal['flip_tta'] else 'off'}**. (Validation MAE with the other
setting: {m['validation_mae_other_tta_setting']:.2f}.)

### Robustness (validation films, modified before preprocessing; months)
| validation films | MAE | bias < 6 y | bias 6-12 y | bias > 12 y |
|---|---|---|---|---|
{robustness_rows}

Borders are 1/6 of each side on every edge (black = 0, grey = 128); the marker is a white
rectangle (1/8 x 1/10 of the film) near the left edge; "downscaled" is 40% of the original
resolution; "squashed 299" resizes the film to 299 x 299 like the `rsna-299` set; "jpeg quality 30"
re-encodes it; "rewindowed gamma 1.5" clips its darkest and brightest 2% and applies gamma 1.5 (another
site's display window). The bias is estimate minus truth: a positive bias reads a band too old.

### Learning curve (training MAE under augmentation; MAE on the calibration hold-out of the training split)
| {'member.epoch' if t.get('members') else ('stage.epoch' if previous else 'epoch')} | train MAE | hold-out MAE | minutes |
|---|---|---|---|
""" + "\n".join(f"| {str(h.get('stage', h.get('member'))) + '.' if ('stage' in h or 'member' in h) else ''}{h['epoch']} | {h['train_mae_months']:.1f} | {h.get('monitor_mae_months', float('nan')):.1f} | {h['minutes']:.0f} |" for h in history) + f"""

## Speed
{speed_line}.

## Limits
- Validated only on RSNA films of the same challenge (same hospitals, scanners and radiologist
  labels) -- a held-out split, not an external test set. Expect larger errors on other scanners
  and populations, and on young children (few in the data: see n for < 6 y).
- The labels are single radiologist readings (Greulich-Pyle style); the model inherits their bias
  and noise (inter-reader differences are several months).
- Input must be a left-hand PA film with fingers roughly up; no hand detection or rejection of
  non-hand images happens here.
- The interval is calibrated on {cal['holdout_n']} films: its coverage in small subgroups (e.g. < 6 y) can
  differ from 90%.
- Trained at {t['config']['input_size']} px: fine physeal detail visible at full resolution is not available to it.
- Without the sex the estimate is clearly worse (validation MAE {m['validation_sex_unknown']['overall']['mae_months']:.1f} vs
  {m['validation']['overall']['mae_months']:.1f} months with it, 90% interval coverage {100 * m['validation_sex_unknown']['overall']['coverage_90']:.0f}% vs {100 * m['validation']['overall']['coverage_90']:.0f}%): give the sex
  whenever it is known (PNG/JPEG files carry none; a result says when the sex was unknown).
- One conformal factor serves both sexes: validation coverage is {100 * m['validation']['male']['coverage_90']:.0f}% for boys and
  {100 * m['validation']['female']['coverage_90']:.0f}% for girls (nominal 90%).
- Largest robustness loss: {worst_shift[0].replace('_', ' ')} ({worst_shift[1]:.1f} vs {rob['original']:.1f} months).
- Ages < 6 y are only {m['validation']['age_under_6y']['n']} validation films: their MAE is imprecise.
"""
    path = folder / "MODEL_CARD.md"
    path.write_text(text)
    return path


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def cpu_name() -> str:
    """The CPU model name (from ``/proc/cpuinfo`` where available)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _config_to_argv(config: TrainConfig) -> list[str]:
    argv = ["--epochs", str(config.epochs), "--size", str(config.input_size), "--seed", str(config.seed), "--device", config.device]
    if config.out:
        argv += ["--out", config.out]
    if config.max_minutes is not None:
        argv += ["--max-minutes", str(config.max_minutes)]
    if config.threads:
        argv += ["--threads", str(config.threads)]
    if config.learning_rate != TrainConfig.learning_rate:
        argv += ["--lr", str(config.learning_rate)]
    if config.init:
        argv += ["--init", config.init]
    if config.batch_size != TrainConfig.batch_size:
        argv += ["--batch-size", str(config.batch_size)]
    if tuple(config.widths) != TrainConfig.widths:
        argv += ["--widths", *(str(w) for w in config.widths)]
    if config.members > 1:
        argv += ["--members", str(config.members)]
    if config.limit:
        argv += ["--limit", str(config.limit)]
    return argv


# ----------------------------------------------------------------------------------------------
# Command line (used by ``boneage train direct`` and ``python -m boneage.training.direct``)
# ----------------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train direct`` options to a parser."""
    defaults = TrainConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"epochs (default {defaults.epochs})")
    parser.add_argument("--size", type=int, default=defaults.input_size, help=f"network input side in px (default {defaults.input_size})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto: cuda when available)")
    parser.add_argument("--out", default="", help="output folder (default data/models/direct)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after this long and save")
    parser.add_argument("--limit", type=int, default=None, help="train on only N films (quick checks)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="decoding processes")
    parser.add_argument("--no-bf16", action="store_true", help="disable bf16 autocast")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="peak learning rate")
    parser.add_argument("--init", default=None, help="start from these weights (a second training stage)")
    parser.add_argument("--widths", type=int, nargs=4, default=list(defaults.widths), metavar="W",
                        help=f"channel widths of the four ResNet stages (default {' '.join(str(w) for w in defaults.widths)})")
    parser.add_argument("--members", type=int, default=defaults.members,
                        help="networks trained from different seeds and averaged (default 1; the shipped model uses 2)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build a :class:`TrainConfig` from parsed ``train direct`` arguments."""
    return TrainConfig(epochs=args.epochs, input_size=args.size, seed=args.seed, device=args.device, out=args.out,
                       max_minutes=args.max_minutes, limit=args.limit, batch_size=args.batch_size,
                       workers=args.workers, bf16=not args.no_bf16, threads=args.threads,
                       learning_rate=args.lr, init=args.init, members=args.members,
                       widths=tuple(getattr(args, "widths", None) or TrainConfig.widths))


def train_command(args: argparse.Namespace) -> int:
    """Handler of ``boneage train direct``; returns the exit code."""
    from boneage.datasets import DataUnavailableError

    from boneage.training.export import export_after_training

    config = config_from_args(args)
    try:
        train(config)
    except DataUnavailableError as exc:
        print(f"boneage train direct: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"boneage train direct: {exc}", file=sys.stderr)
        return 2
    export_after_training("direct", config.out)
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m boneage.training.direct", description="Train the end-to-end CNN.")
    add_train_arguments(_parser)
    sys.exit(train_command(_parser.parse_args()))

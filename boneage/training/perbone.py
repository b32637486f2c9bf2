"""Training of the per-bone maturity network (``boneage train perbone``).

Stages, each resumable:
1. **Crops**: every labelled film (``rsna-dev`` and ``rsna-299``) is read by the shipped
   segmenter and its aligned bone crops cut (:func:`boneage.perbone.crops_from_reading`); the
   crops are cached per film in shards of :data:`SHARD_FILMS` under the cache dir, keyed by the
   segmenter and crop versions (uint8, outside the repository: they are research-only images).
   ``rsna-299`` films are first widened back to the median true aspect
   (:data:`boneage.perbone.RSNA_299_WIDTH_TO_HEIGHT`).
2. **Network**: :class:`boneage.perbone.PerBoneNet` trained on the ``rsna-dev`` training split
   minus the calibration hold-out (the same 200 films the CNN holds out, so that the combined
   estimate can be stacked on films no method trained on) plus ``rsna-299``; checkpointed every
   few minutes, so an interrupted run continues where it stopped.
3. **Calibration**: the per-bone consensus's interval and the combined estimate's stacking
   weights are fitted on that hold-out; the fixed validation split is only reported.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from boneage import anatomy
from boneage.perbone import AGE_RANGE_MONTHS

#: Films per cache shard (one shard is the unit of resumption of the crop stage).
SHARD_FILMS = 256

_SEGMENTER = None


def crop_cache_dir() -> Path:
    """Where the crops of this segmenter and crop geometry are cached."""
    from boneage.paths import cache_dir
    from boneage.perbone import CROP_VERSION
    from boneage.segment import VERSION

    path = cache_dir() / "perbone" / f"{VERSION}_{CROP_VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_training_film(path: str, source: str) -> np.ndarray:
    """A training film as the crop stage reads it (``rsna-299`` widened back to a true aspect)."""
    from PIL import Image

    from boneage.perbone import RSNA_299_WIDTH_TO_HEIGHT

    with Image.open(path) as img:
        img = img.convert("L")
        if source == "rsna-299":
            img = img.resize((round(img.height * RSNA_299_WIDTH_TO_HEIGHT), img.height), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32) / 255.0


def _crop_one(job: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops of one film by this process's segmenter (loaded once per process)."""
    global _SEGMENTER
    from boneage.perbone import CROP_SHAPE, crops_from_reading
    from boneage.segment import Segmenter

    if _SEGMENTER is None:
        _SEGMENTER = Segmenter.load()
    path, source = job
    n = len(anatomy.MATURITY_REGIONS)
    try:
        film = read_training_film(path, source)
        crops = crops_from_reading(film, _SEGMENTER.read(film))
        return crops.images, crops.present, crops.film_pixels_per_crop_pixel
    except Exception:  # noqa: BLE001 - an unreadable training film is skipped (present all False)
        return np.zeros((n, *CROP_SHAPE), np.uint8), np.zeros(n, bool), np.zeros(n, np.float32)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _shard_index(folder: Path) -> dict[str, tuple[Path, int]]:
    """Film key -> (shard file, row) over every shard in the cache (each shard lists its films)."""
    index: dict[str, tuple[Path, int]] = {}
    for file in sorted(folder.glob("shard_*.npz")):
        try:
            with np.load(file) as z:
                keys = [str(k) for k in z["keys"]] if "keys" in z.files else []
        except (OSError, ValueError):  # a damaged shard is cut again
            continue
        for row, key in enumerate(keys):
            index[key] = (file, row)
    return index


def build_crop_cache(labels, workers: int = 2, log=print) -> dict[str, np.ndarray]:
    """Cut (or load) the crops of every film of a label table.

    Each film is cut once: shards of :data:`SHARD_FILMS` films list their films, and any table
    (all films, the fit part, the hold-out, a learning-curve draw) takes what it needs from them.
    An interrupted run keeps every finished shard.

    Args:
        labels: DataFrame with ``id``, ``path`` and ``source``.
        workers: processes (each loads the segmenter once, one torch thread each).
        log: progress messages.

    Returns:
        dict with ``images`` uint8 ``(N, R, H, W)``, ``present`` bool ``(N, R)`` and ``scale``
        float32 ``(N, R)``, in the table's row order.
    """
    import hashlib

    from tqdm import tqdm

    from boneage.perbone import CROP_SHAPE

    folder = crop_cache_dir()
    keys = [f"{s}:{i}" for s, i in zip(labels["source"], labels["id"])]
    paths = [str(p) for p in labels["path"]]
    sources = list(labels["source"])
    n = len(anatomy.MATURITY_REGIONS)
    images = np.zeros((len(keys), n, *CROP_SHAPE), np.uint8)
    present = np.zeros((len(keys), n), bool)
    scale = np.zeros((len(keys), n), np.float32)
    index = _shard_index(folder)
    by_file: dict[Path, list[tuple[int, int]]] = {}
    missing = []
    for i, key in enumerate(keys):
        if key in index:
            file, row = index[key]
            by_file.setdefault(file, []).append((i, row))
        else:
            missing.append(i)
    for file, pairs in by_file.items():
        mine, rows = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        with np.load(file) as z:
            images[mine], present[mine], scale[mine] = z["images"][rows], z["present"][rows], z["scale"][rows]
    if not missing:
        return {"images": images, "present": present, "scale": scale}
    missing = sorted(set(missing), key=lambda i: keys[i])
    shards = [missing[i:i + SHARD_FILMS] for i in range(0, len(missing), SHARD_FILMS)]
    log(f"cutting bone crops of {len(missing)} films ({len(shards)} shards) with {workers} workers into {folder}")
    import multiprocessing as mp
    from contextlib import nullcontext

    bar = tqdm(total=len(missing), desc="crops", unit="film", mininterval=10)
    # Workers are spawned, not forked: a fork of a process whose torch thread pool is running can
    # deadlock in the child. One worker cuts in this process.
    with (mp.get_context("spawn").Pool(workers, initializer=_one_thread) if workers > 1 else nullcontext()) as pool:
        for shard in shards:
            jobs = [(paths[i], sources[i]) for i in shard]
            results = pool.imap(_crop_one, jobs, chunksize=8) if pool is not None else map(_crop_one, jobs)
            for j, (im, pr, sc) in enumerate(results):
                images[shard[j]], present[shard[j]], scale[shard[j]] = im, pr, sc
                bar.update(1)
            shard_keys = [keys[i] for i in shard]
            file = folder / f"shard_{hashlib.sha1('|'.join(shard_keys).encode()).hexdigest()[:16]}.npz"
            tmp = file.with_suffix(".tmp.npz")
            np.savez(tmp, images=images[shard], present=present[shard], scale=scale[shard], keys=np.array(shard_keys))
            os.replace(tmp, file)
    bar.close()
    return {"images": images, "present": present, "scale": scale}


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------
def augment_crops(crops: "torch.Tensor", generator: "torch.Generator") -> "torch.Tensor":
    """Random pose, aspect, flip, resolution and exposure of a batch of crops.

    The aspect jitter (0.85-1.18 across the bone) covers what the median-aspect correction of the
    squashed ``rsna-299`` films leaves; down-up resampling teaches that a film's resolution is
    not its maturity.

    Args:
        crops: float ``(B, 1, H, W)`` in [0, 1].
        generator: torch random generator.

    Returns:
        Augmented float ``(B, 1, H, W)`` in [0, 1].
    """
    import math

    import torch
    import torch.nn.functional as F

    b = crops.shape[0]
    u = lambda lo, hi: torch.rand(b, generator=generator) * (hi - lo) + lo  # noqa: E731
    angle = u(-10, 10) * math.pi / 180
    zoom = u(0.9, 1.12)
    aspect = torch.exp(u(math.log(0.85), math.log(1.18)))
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos / zoom * aspect * flip
    theta[:, 0, 1] = -sin / zoom
    theta[:, 1, 0] = sin / zoom * aspect * flip
    theta[:, 1, 1] = cos / zoom
    theta[:, 0, 2] = u(-0.06, 0.06)
    theta[:, 1, 2] = u(-0.06, 0.06)
    grid = F.affine_grid(theta, list(crops.shape), align_corners=False)
    out = F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Resolution: a third of the crops are down-sampled 1.5-3x and back.
    low = torch.rand(b, generator=generator) < 0.33
    if low.any():
        h, w = out.shape[-2:]
        factor = float(u(1.5, 3.0)[0])
        small = F.interpolate(out[low], size=(max(8, int(h / factor)), max(6, int(w / factor))), mode="area")
        out[low] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    gamma = torch.exp(u(math.log(0.7), math.log(1.4))).view(b, 1, 1, 1)
    contrast = u(0.8, 1.2).view(b, 1, 1, 1)
    bright = u(-0.06, 0.06).view(b, 1, 1, 1)
    out = out.clamp(0, 1) ** gamma
    out = (out - 0.5) * contrast + 0.5 + bright
    out = out + torch.randn(out.shape, generator=generator) * u(0.0, 0.03).view(b, 1, 1, 1)
    return out.clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Settings of ``boneage train perbone`` (all recorded in the model card)."""

    epochs: int = 16
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    ema: float = 0.999
    widths: tuple[int, ...] = (16, 32, 64, 128)
    seed: int = 0
    threads: int = 2
    workers: int = 2
    sex_dropout: float = 0.2
    crop_fraction: float = 1.0
    checkpoint_minutes: float = 3.0
    max_minutes: float = 0.0
    limit: int = 0
    out: str = ""
    #: "age" (the per-bone maturity network) or "sex" (the sex-from-film network: no sex input,
    #: one logit per crop).
    task: str = "age"
    #: Films (drawn from the fit set) whose clean crops re-estimate the BatchNorm statistics after
    #: training; kept only if the hold-out consensus MAE drops (age task only). 0 = off.
    bn_recalibration_films: int = 3000
    #: How the crops' grey levels reach the network (:data:`boneage.perbone.CROP_INTENSITIES`);
    #: recorded in the model's calibration so that inference does the same.
    crop_intensity: str = "window"


def _laplace_loss(loc, log_scale, target):
    import torch

    l1 = (loc - target).abs()
    nll = log_scale + (loc.detach() - target).abs() * torch.exp(-log_scale)
    return l1.mean() + nll.mean()


def predict_crop_arrays(network, images: np.ndarray, present: np.ndarray, sex_codes: np.ndarray,
                        batch: int = 1024, views: Sequence[tuple[float, bool]] = ((0.0, False),)
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-region ages and scales (months) of many films' crops (NaN where no crop).

    Args:
        network: :class:`boneage.perbone.PerBoneNet` (eval mode).
        images: uint8 ``(N, R, H, W)``.
        present: bool ``(N, R)``.
        sex_codes: ``(N,)`` sex codes (+1/-1/0).
        batch: crops a forward pass (each read in every view).
        views: test-time views averaged (:func:`boneage.perbone.crop_views`); the default is
            the crop as cut.

    Returns:
        ``(ages, scales)``, each ``(N, R)``.
    """
    import torch

    from boneage.perbone import AGE_CENTRE, AGE_SCALE, crop_views

    films, regions = np.nonzero(present)
    ages = np.full(present.shape, np.nan)
    scales = np.full(present.shape, np.nan)
    network.eval()
    n_views = len(views)
    batch = max(1, batch // n_views)
    with torch.inference_mode():
        for start in range(0, len(films), batch):
            f, r = films[start:start + batch], regions[start:start + batch]
            x = crop_views(images[f, r][:, None].astype(np.float32) / 255.0, views)
            x = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            loc, log_scale = network(x, torch.from_numpy(np.tile(r, n_views)).long(),
                                     torch.from_numpy(np.tile(sex_codes[f], n_views)).float())
            ages[f, r] = (loc.float().numpy() * AGE_SCALE + AGE_CENTRE).reshape(n_views, -1).mean(axis=0)
            scales[f, r] = (np.exp(log_scale.float().numpy()) * AGE_SCALE).reshape(n_views, -1).mean(axis=0)
    return ages, scales


def recalibrate_crop_batchnorm(network, images: np.ndarray, present: np.ndarray, sex_codes: np.ndarray,
                               batch: int = 256, seed: int = 0):
    """:func:`boneage.training.direct.reestimate_batchnorm` of a crop network on clean crops.

    The augmented-crop statistics had moved the per-bone consensus by about +2.5 months on the
    calibration hold-out.

    Args:
        network: the trained :class:`boneage.perbone.PerBoneNet` (a copy is changed).
        images, present: uint8 ``(N, R, H, W)`` crops and their ``(N, R)`` presence.
        sex_codes: ``(N,)`` sex codes (+1/-1/0).
        batch: crops per forward pass.
        seed: order of the crops (the cumulative average barely depends on it).

    Returns:
        The recalibrated copy, in eval mode.
    """
    import torch

    from boneage.training.direct import reestimate_batchnorm

    films, regions = np.nonzero(present)
    order = np.random.default_rng(seed).permutation(len(films))
    codes = np.asarray(sex_codes)

    def batches():
        for start in range(0, len(order), batch):
            f, r = films[order[start:start + batch]], regions[order[start:start + batch]]
            crops = torch.from_numpy(images[f, r]).float().div_(255.0).unsqueeze(1).contiguous(memory_format=torch.channels_last)
            yield crops, torch.from_numpy(r).long(), torch.from_numpy(codes[f]).float()

    return reestimate_batchnorm(network, batches())


def film_consensus(ages: np.ndarray, scales: np.ndarray, rus_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`boneage.perbone.consensus` of every film: ``(age, scale, kept)`` arrays."""
    from boneage.perbone import MIN_RUS_BONES, consensus

    n_rus = len(anatomy.RUS_BONES)
    out_age = np.full(len(ages), np.nan)
    out_scale = np.full(len(ages), np.nan)
    kept = np.zeros(ages.shape, bool)
    for i in range(len(ages)):
        usable = np.isfinite(ages[i])
        if usable[:n_rus].sum() < MIN_RUS_BONES:
            continue
        if rus_only:
            usable[n_rus:] = False
        out_age[i], out_scale[i], kept[i] = consensus(ages[i], scales[i], usable)
    return out_age, out_scale, kept


def _checkpoint_path(out: Path) -> Path:
    return out / "checkpoint.pt"


def train_network(images: np.ndarray, present: np.ndarray, targets: np.ndarray, sex_codes: np.ndarray,
                  config: TrainConfig, out: Path, monitor=None, log=print):
    """Train :class:`boneage.perbone.PerBoneNet` on every present crop; resumable.

    Every ``config.checkpoint_minutes`` (and at each epoch's end) the network, its EMA copy, the
    optimiser, the schedule and the random state are saved to ``OUT/checkpoint.pt``; a run started
    again with the same settings continues from there.

    Args:
        images, present: the films' crops (:func:`build_crop_cache`).
        targets: bone age (months) per film.
        sex_codes: +1/-1 per film (hidden at random during training).
        config: settings.
        out: output folder (checkpoint).
        monitor: optional callable(ema_network) -> str, logged after each epoch.
        log: progress messages.

    Returns:
        The EMA network (eval mode).
    """
    import copy

    import torch
    from tqdm import tqdm

    from boneage.models import cpu_has_fast_bf16
    from boneage.networks import PerBoneNet
    from boneage.perbone import AGE_CENTRE, AGE_SCALE, crop_intensity_inputs

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    films, regions = np.nonzero(present)
    per_epoch = int(len(films) * config.crop_fraction)
    steps_per_epoch = max(1, per_epoch // config.batch)
    total_steps = steps_per_epoch * config.epochs
    network = PerBoneNet(config.widths).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(network).eval()
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=total_steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(config.seed)
    start_epoch, start_step = 0, 0
    previous_seconds = 0.0  # training time of the runs this one continues
    out.mkdir(parents=True, exist_ok=True)
    ckpt = _checkpoint_path(out)
    settings = {k: v for k, v in asdict(config).items()
                if k not in ("max_minutes", "checkpoint_minutes", "out", "threads", "workers", "bn_recalibration_films")}
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        # Checkpoints written before the sex task existed are per-bone age runs.
        state["settings"].setdefault("task", "age")
        state["settings"].setdefault("crop_intensity", "window")  # written before the option existed
        if state["settings"] == settings and state["n_crops"] == len(films):
            network.load_state_dict(state["network"])
            ema.load_state_dict(state["ema"])
            optimiser.load_state_dict(state["optimiser"])
            schedule.load_state_dict(state["schedule"])
            generator.set_state(state["generator"])
            start_epoch, start_step = state["epoch"], state["step"]
            previous_seconds = float(state.get("train_seconds", 0.0))
            log(f"resuming from {ckpt}: epoch {start_epoch + 1}, step {start_step}")
        else:
            log(f"{ckpt} is from other settings; starting afresh")

    def save(epoch: int, step: int) -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"settings": settings, "n_crops": len(films), "network": network.state_dict(), "ema": ema.state_dict(),
                    "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                    "generator": generator.get_state(), "epoch": epoch, "step": step,
                    "train_seconds": previous_seconds + time.time() - began}, tmp)
        os.replace(tmp, ckpt)

    bf16 = cpu_has_fast_bf16()
    sex_task = config.task == "sex"
    y_all = torch.from_numpy(((targets - AGE_CENTRE) / AGE_SCALE).astype(np.float32))
    male_all = torch.from_numpy((sex_codes > 0).astype(np.float32))
    codes_all = torch.from_numpy(sex_codes.astype(np.float32))
    began = time.time()
    last_save = time.time()
    for epoch in range(start_epoch, config.epochs):
        # The epoch's order is drawn from a generator seeded by (seed, epoch): a resumed epoch
        # replays the same order and skips the steps already done.
        order = np.random.default_rng([config.seed, epoch]).permutation(len(films))[: steps_per_epoch * config.batch]
        network.train()
        bar = tqdm(range(start_step, steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", mininterval=10,
                   initial=start_step, total=steps_per_epoch)
        running = []
        for step in bar:
            sel = order[step * config.batch:(step + 1) * config.batch]
            f, r = films[sel], regions[sel]
            x = torch.from_numpy(images[f, r]).float().div_(255.0).unsqueeze(1)
            x = augment_crops(x, generator)
            if config.crop_intensity != "window":
                # The exposure augmentation unflattens equalised crops: bring the batch back to
                # the grey levels inference feeds (crops cut, then equalised).
                x = torch.from_numpy(crop_intensity_inputs(x.mul(255.0).round_().to(torch.uint8).numpy(), config.crop_intensity))
            x = x.contiguous(memory_format=torch.channels_last)
            code = codes_all[f] * (torch.rand(len(f), generator=generator) >= config.sex_dropout).float()
            if sex_task:
                code = torch.zeros_like(code)  # the sex is what this network must tell
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loc, log_scale = network(x, torch.from_numpy(r).long(), code)
            if sex_task:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(loc.float(), male_all[f])
            else:
                loss = _laplace_loss(loc.float(), log_scale.float(), y_all[f])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            decay = min(config.ema, (1 + step + epoch * steps_per_epoch) / (10 + step + epoch * steps_per_epoch))
            with torch.no_grad():
                for pe, pn in zip(ema.parameters(), network.parameters()):
                    pe.mul_(decay).add_(pn.detach(), alpha=1 - decay)
                for be, bn in zip(ema.buffers(), network.buffers()):
                    be.copy_(bn)
            if sex_task:  # share of crops whose sex is told wrongly
                running.append(float(((loc.detach().float() > 0).float() != male_all[f]).float().mean()))
            else:
                running.append(float((loc.detach().float() - y_all[f]).abs().mean()) * AGE_SCALE)
            if len(running) % 50 == 0:
                bar.set_postfix({"crop_error" if sex_task else "mae_months": f"{np.mean(running[-50:]):.2f}"})
            if time.time() - last_save > config.checkpoint_minutes * 60:
                save(epoch, step + 1)
                last_save = time.time()
            if config.max_minutes and time.time() - began > config.max_minutes * 60:
                save(epoch, step + 1)
                log(f"stopped after {config.max_minutes} minutes at epoch {epoch + 1} step {step + 1}; run again to continue")
                return None
        bar.close()
        start_step = 0
        save(epoch + 1, 0)
        last_save = time.time()
        message = monitor(ema) if monitor is not None else ""
        what = f"training crop error rate {np.mean(running):.3f}" if sex_task else f"training crop MAE {np.mean(running):.1f} months"
        log(f"epoch {epoch + 1}/{config.epochs}: {what} {message} "
            f"({(time.time() - began) / 60:.1f} min)")
    return ema.eval()


def calibrate(ages: np.ndarray, scales: np.ndarray, targets: np.ndarray) -> dict:
    """Interval factors (film, RUS, single bone) from hold-out films (one sex mode).

    Args:
        ages, scales: per-region network outputs ``(N, R)`` on the hold-out.
        targets: their bone ages.

    Returns:
        dict with ``film_factor``, ``rus_factor``, ``bone_factor``, the film age's age-band bias
        map ``age_map`` (``None`` when none pays, :func:`boneage.agemap.choose_age_map`) and
        ``age_map_choice``. With a map the film factor is that of the mapped interval.
    """
    from boneage.agemap import choose_age_map, expected_estimates
    from boneage.combine import conformal_factor as conformal

    film_age, film_scale, _ = film_consensus(ages, scales)
    rus_age, rus_scale, _ = film_consensus(ages, scales, rus_only=True)
    bone = np.abs(ages - targets[:, None]) / scales
    ok = np.isfinite(film_age)
    age_map, choice = choose_age_map(targets[ok], np.clip(film_age[ok], *AGE_RANGE_MONTHS))
    return {
        "film_factor": conformal(np.abs(film_age - expected_estimates(age_map, targets)) / film_scale),
        "rus_factor": conformal(np.abs(rus_age - targets) / rus_scale),
        "bone_factor": conformal(bone.ravel()),
        "age_map": age_map.to_dict() if age_map is not None else None,
        "age_map_choice": choice,
    }


def evaluate(ages: np.ndarray, scales: np.ndarray, targets: np.ndarray, sexes: np.ndarray, cal: dict) -> dict:
    """MAE, bias and 90% coverage of the consensus (and RUS, carpal, per region) on some films."""
    from boneage.agemap import AgeMap, read_interval

    film_age, film_scale, kept = film_consensus(ages, scales)
    rus_age, rus_scale, _ = film_consensus(ages, scales, rus_only=True)
    ok = np.isfinite(film_age)
    # As PerBoneEstimator reports it: read through the age-band bias map, then clipped.
    film_age, lower, upper = read_interval(AgeMap.from_dict(cal.get("age_map")), film_age,
                                           cal["film_factor"] * film_scale, AGE_RANGE_MONTHS)
    err = film_age - targets
    groups = {"all": ok, "female": ok & (sexes == "F"), "male": ok & (sexes == "M"),
              "bone age < 6 y": ok & (targets < 72), "6-12 y": ok & (targets >= 72) & (targets <= 144),
              "> 12 y": ok & (targets > 144)}
    table = {}
    for name, m in groups.items():
        if m.sum() == 0:
            continue
        table[name] = {"n": int(m.sum()), "mae": round(float(np.abs(err[m]).mean()), 2),
                       "bias": round(float(err[m].mean()), 2),
                       "coverage": round(float(((lower[m] <= targets[m]) & (targets[m] <= upper[m])).mean()), 3),
                       "width": round(float((upper[m] - lower[m]).mean()), 1)}
    regions = {}
    for j, region in enumerate(anatomy.MATURITY_REGIONS):
        m = np.isfinite(ages[:, j])
        if m.sum():
            regions[region] = {"n": int(m.sum()), "mae": round(float(np.abs(ages[m, j] - targets[m]).mean()), 2),
                               "kept": round(float(kept[m, j].mean()), 3)}
    carpal = np.isfinite(ages[:, -1])
    rus_ok = np.isfinite(rus_age)
    n_rus = len(anatomy.RUS_BONES)
    return {
        "groups": table,
        "rus_mae": round(float(np.abs(rus_age[rus_ok] - targets[rus_ok]).mean()), 2),
        "rus_coverage": round(float((np.abs(rus_age[rus_ok] - targets[rus_ok]) <= cal["rus_factor"] * rus_scale[rus_ok]).mean()), 3),
        "carpal_mae": round(float(np.abs(ages[carpal, -1] - targets[carpal]).mean()), 2) if carpal.any() else None,
        "regions": regions,
        "films_with_estimate": round(float(ok.mean()), 3),
        "rus_bones_with_age": round(float(np.isfinite(ages[:, :n_rus]).mean()), 3),
        "mean_dropped_per_film": round(float((np.isfinite(ages) & ~kept)[ok].sum(1).mean()), 2),
    }


def sex_codes(sexes) -> np.ndarray:
    """The networks' sex input for a column of ``"M"``/``"F"``: +1 / -1 (float32)."""
    from boneage.direct import sex_to_code

    return np.array([sex_to_code(x) for x in sexes], np.float32)


def apply_crop_intensity(data: dict, intensity: str, chunk: int = 512) -> None:
    """Bring every split's cached uint8 crops to the network's grey levels, in place.

    Args:
        data: split name -> :func:`build_crop_cache` arrays (``images`` is changed).
        intensity: one of :data:`boneage.perbone.CROP_INTENSITIES` (``"window"``: left as cut).
        chunk: films equalised at a time (bounds the temporary memory).
    """
    from boneage.perbone import CROP_INTENSITIES, equalise_crops

    if intensity not in CROP_INTENSITIES:
        raise ValueError(f"unknown crop intensity {intensity!r}; expected one of {CROP_INTENSITIES}")
    if intensity == "window":
        return
    for split in data.values():
        images = split["images"]
        for start in range(0, len(images), chunk):
            images[start:start + chunk] = equalise_crops(images[start:start + chunk])


def crop_tables(config: TrainConfig, log=print) -> tuple[dict, dict]:
    """The films a crop network is fitted, calibrated and validated on, and their crops.

    ``fit``: the ``rsna-dev`` training split minus the shared calibration hold-out
    (:func:`boneage.training.direct.calibration_holdout`), plus ``rsna-299``; ``holdout``: that
    hold-out; ``val``: the fixed validation split. ``config.limit`` takes a small sample of each.

    Returns:
        ``(tables, crops)``: split name -> label table, and split name -> :func:`build_crop_cache` arrays.
    """
    import pandas as pd

    from boneage.datasets import rsna_299, rsna_dev
    from boneage.training.direct import calibration_holdout

    dev = rsna_dev()
    dev_train = dev[dev["split"] == "train"].reset_index(drop=True)
    val = dev[dev["split"] == "val"].reset_index(drop=True)
    holdout, fit_dev = calibration_holdout(dev_train, config.seed)
    fit = pd.concat([fit_dev, rsna_299()], ignore_index=True)
    if config.limit:
        fit = fit.sample(n=min(config.limit, len(fit)), random_state=config.seed).reset_index(drop=True)
        holdout = holdout.iloc[: max(8, min(len(holdout), config.limit // 4))].reset_index(drop=True)
        val = val.iloc[: max(8, min(len(val), config.limit // 4))].reset_index(drop=True)
    tables = {"fit": fit, "holdout": holdout, "val": val}
    return tables, {k: build_crop_cache(v, workers=config.workers, log=log) for k, v in tables.items()}


def train(config: TrainConfig, log=print) -> dict | None:
    """The ``boneage train perbone`` run: crops, network, calibration, validation, weights.

    Args:
        config: settings; ``config.out`` is the output folder (default the shipped model folder).

    Returns:
        The metrics (also ``OUT/metrics.json``), or ``None`` when ``max_minutes`` cut the run
        (run the same command again to continue).
    """
    import json

    import torch

    from boneage.paths import MODELS_DIR
    from boneage.perbone import CALIBRATION_FILE, MODEL_VERSION, TEST_TIME_VIEWS, WEIGHTS_FILE
    from boneage.segment import VERSION as segmenter_version

    out = Path(config.out) if config.out else MODELS_DIR / "perbone"
    out.mkdir(parents=True, exist_ok=True)
    wall = time.time()
    tables, data = crop_tables(config, log)
    apply_crop_intensity(data, config.crop_intensity)
    fit, holdout, val = tables["fit"], tables["holdout"], tables["val"]
    log(f"per-bone network: {len(fit)} films to fit ({(fit['source'] == 'rsna-dev').sum()} rsna-dev, "
        f"{(fit['source'] == 'rsna-299').sum()} rsna-299), hold-out {len(holdout)}, validation {len(val)}")
    codes = {k: sex_codes(v["sex"]) for k, v in tables.items()}
    targets = {k: v["bone_age_months"].to_numpy(np.float64) for k, v in tables.items()}

    def holdout_error(network) -> tuple[float, float]:
        a, s = predict_crop_arrays(network, data["holdout"]["images"], data["holdout"]["present"], codes["holdout"],
                                   views=TEST_TIME_VIEWS)
        age, _, _ = film_consensus(a, s)
        ok = np.isfinite(age)
        error = age[ok] - targets["holdout"][ok]
        return float(np.abs(error).mean()), float(error.mean())

    def monitor(network) -> str:
        return f"hold-out consensus MAE {holdout_error(network)[0]:.2f}"

    train_start = time.time()
    network = train_network(data["fit"]["images"], data["fit"]["present"], targets["fit"], codes["fit"], config, out, monitor, log)
    if network is None:
        return None
    train_minutes = (time.time() - train_start) / 60
    checkpoint = torch.load(_checkpoint_path(out), map_location="cpu", weights_only=False)
    if "train_seconds" in checkpoint:  # every run of this training, resumed ones included
        train_minutes = checkpoint["train_seconds"] / 60
    bn_choice: dict = {"films": 0}
    if config.bn_recalibration_films:
        # Chosen on the calibration hold-out: kept only if the consensus MAE there drops.
        rng = np.random.default_rng(config.seed)
        pick = np.sort(rng.choice(len(fit), size=min(config.bn_recalibration_films, len(fit)), replace=False))
        recalibrated = recalibrate_crop_batchnorm(network, data["fit"]["images"][pick], data["fit"]["present"][pick],
                                                  codes["fit"][pick], seed=config.seed)
        (mae_before, bias_before), (mae_after, bias_after) = holdout_error(network), holdout_error(recalibrated)
        bn_choice = {"films": len(pick), "holdout_mae_before": round(mae_before, 2), "holdout_bias_before": round(bias_before, 2),
                     "holdout_mae_after": round(mae_after, 2), "holdout_bias_after": round(bias_after, 2),
                     "kept": bool(mae_after < mae_before)}
        if bn_choice["kept"]:
            network = recalibrated
        log(f"BatchNorm re-estimation on clean crops: {bn_choice}")
    # fp16 storage; everything below is computed with the weights as shipped.
    state = {k: v.half() if v.is_floating_point() else v for k, v in network.state_dict().items()}
    network.load_state_dict({k: v.float() for k, v in state.items()})
    calibration: dict = {"model_version": MODEL_VERSION, "holdout_n": len(holdout), "crop_intensity": config.crop_intensity,
                         "test_time_views": [list(v) for v in TEST_TIME_VIEWS]}
    outputs = {}
    for mode in ("sex_known", "sex_unknown"):
        for split in ("holdout", "val"):
            c = codes[split] if mode == "sex_known" else np.zeros_like(codes[split])
            outputs[mode, split] = predict_crop_arrays(network, data[split]["images"], data[split]["present"], c,
                                                       views=TEST_TIME_VIEWS)
        calibration[mode] = calibrate(*outputs[mode, "holdout"], targets["holdout"])
    sexes = {k: v["sex"].to_numpy() for k, v in tables.items()}
    metrics = {
        "model_version": MODEL_VERSION,
        "validation": {mode: evaluate(*outputs[mode, "val"], targets["val"], sexes["val"], calibration[mode])
                       for mode in ("sex_known", "sex_unknown")},
        "holdout": {mode: evaluate(*outputs[mode, "holdout"], targets["holdout"], sexes["holdout"], calibration[mode])
                    for mode in ("sex_known", "sex_unknown")},
        "calibration": calibration,
        "training": {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
                     "n_fit_films": len(fit), "n_fit_rsna_dev": int((fit["source"] == "rsna-dev").sum()),
                     "n_fit_rsna_299": int((fit["source"] == "rsna-299").sum()),
                     "n_fit_crops": int(data["fit"]["present"].sum()), "segmenter_version": segmenter_version,
                     "fit_crop_share": round(float(data["fit"]["present"].mean()), 3),
                     "bn_recalibration": bn_choice,
                     "train_minutes": round(train_minutes, 1), "wall_minutes": round((time.time() - wall) / 60, 1),
                     "torch": torch.__version__},
    }
    torch.save({"state_dict": state, "widths": list(config.widths), "model_version": MODEL_VERSION}, out / WEIGHTS_FILE)
    (out / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(out)
    v = metrics["validation"]["sex_known"]["groups"]["all"]
    log(f"validation (sex known): MAE {v['mae']} months, coverage {v['coverage']:.1%}, bias {v['bias']}")
    return metrics


def _age_map_sentence(calibration: dict) -> str:
    """Model-card sentence on the film age's age-band bias map (:mod:`boneage.agemap`) per sex mode."""
    from boneage.agemap import describe_choice

    parts = [f"{mode.replace('_', ' ')}: {describe_choice(calibration[mode].get('age_map_choice'))}"
             for mode in ("sex_known", "sex_unknown")]
    return ("the consensus is drawn toward the crowded middle of the training ages; where it pays on the hold-out "
            "(`boneage/agemap.py`: MAE + worst band bias on random halves, a map must win by 0.25 month) the film age "
            "and its interval are read back through a monotone map fitted there (RUS, carpal and single-bone ages stay "
            "as read) -- " + "; ".join(parts) + ".")


def _bn_recalibration_sentence(choice: dict | None) -> str:
    """Model-card sentence on the BatchNorm re-estimation decision."""
    if not choice or not choice.get("films"):
        return "BatchNorm statistics: those of training (no re-estimation)."
    return (f"BatchNorm statistics re-estimated after training on the clean crops of {choice['films']} fit films "
            f"(training had gathered them on augmented crops), kept only if the hold-out consensus MAE drops: "
            f"{choice['holdout_mae_before']:.2f} (bias {choice['holdout_bias_before']:+.2f}) before vs "
            f"{choice['holdout_mae_after']:.2f} (bias {choice['holdout_bias_after']:+.2f}) after -> "
            f"**{'kept' if choice['kept'] else 'not kept'}**.")


def _group_table(groups: dict) -> str:
    lines = ["| group | n | MAE (months) | bias (months) | 90% interval coverage | mean interval width (months) |",
             "|---|---|---|---|---|---|"]
    for name, g in groups.items():
        lines.append(f"| {name} | {g['n']} | {g['mae']:.1f} | {g['bias']:+.1f} | {g['coverage']:.1%} | {g['width']:.0f} |")
    return "\n".join(lines)


def write_model_card(folder: str | Path | None = None) -> Path:
    """Write ``MODEL_CARD.md`` beside the per-bone weights from their ``metrics.json``."""
    import json

    from boneage.paths import MODELS_DIR
    from boneage.perbone import CROP_SHAPE, CROP_VERSION, MODEL_VERSION, RSNA_299_WIDTH_TO_HEIGHT
    from boneage.training.direct import CALIBRATION_HOLDOUT, cpu_name

    folder = Path(folder) if folder else MODELS_DIR / "perbone"
    m = json.loads((folder / "metrics.json").read_text())
    t, cfg = m["training"], m["training"]["config"]
    vk, vu = m["validation"]["sex_known"], m["validation"]["sex_unknown"]
    regions = "\n".join(f"| {anatomy.display_name(r)} | {v['n']} | {v['mae']:.1f} | {v['kept']:.0%} |"
                        for r, v in vk["regions"].items())
    command = (f"boneage train perbone --epochs {cfg['epochs']} --batch {cfg['batch']} --lr {cfg['lr']} "
               f"--seed {cfg['seed']} --threads {cfg['threads']}"
               + (f" --crop-intensity {cfg['crop_intensity']}" if cfg.get("crop_intensity", "window") != "window" else ""))
    weights = folder / "perbone.pt"
    size_mb = weights.stat().st_size / 1e6 if weights.is_file() else float("nan")
    segmenter = f" (`{t['segmenter_version']}`)" if t.get("segmenter_version") else ""
    test_views = m["calibration"].get("test_time_views") or []
    views = "" if len(test_views) < 2 else (
        f"   **Test-time views**: each crop is read {len(test_views)} times, as cut and turned "
        f"{' / '.join(f'{t:+g}' for t in sorted({t for t, _ in test_views if t}))} degrees, each also mirrored (as training drew them);\n"
        "   the ages and scales are averaged. Calibration and validation below read them so.\n")
    card = f"""# Model card: per-bone maturity network (`{MODEL_VERSION}`)

**Research and education use only. Not a medical device; not for clinical decisions.** Trained on
RSNA Pediatric Bone Age Challenge films (research and education use only, no commercial use; Halabi
SS et al., *Radiology* 2019;290:498-503).

## What it does
The project's third method (the BoneXpert idea: read each bone's appearance, give each bone its own
age, combine robustly). `boneage.perbone.PerBoneEstimator.load().predict(film, reading, sex)`;
registered as `boneage.models.get("perbone")`.
1. **Crops** (`boneage.perbone.bone_crops`, `{CROP_VERSION}`): from the segmenter's label map{segmenter}, the 13
   RUS bones (radius, ulna, metacarpals 1/3/5, proximal phalanges 1/3/5, middle phalanges 3/5,
   distal phalanges 1/3/5) and the carpal region are cut from the film at its native resolution,
   {CROP_SHAPE[0]} x {CROP_SHAPE[1]} px, aligned to the bone: long axis vertical, epiphysis end up,
   tubular bones scaled to 1.25 x their length, radius/ulna (distal end) and carpus scaled to the third
   metacarpal; mirrored hands flipped back to a left hand; each crop windowed on its own 1-99th
   percentiles (film exposure and corner markers do not reach the network).
2. **Network** (`PerBoneNet`): one MONAI 2-D ResNet (basic blocks 1-1-1-1, widths
   {'-'.join(str(w) for w in cfg['widths'])}) shared by every region, its pooled features joined with a
   learnt region embedding and the sex code (+1 M / -1 F / 0 unknown) in an MLP head giving each crop an
   age and a Laplace scale. fp16 weights, {size_mb:.1f} MB.
{views}3. **Consensus** (`boneage.perbone.consensus`): weighted median, bones more than 3 of their own scales
   from it dropped (and said), the rest averaged with weights 1/scale^2. Fewer than 7 RUS bones: the
   method is withheld. The RUS bones alone and the carpal region alone are reported too.
4. **Interval**: split-conformal factors on the {m['calibration']['holdout_n']}-film calibration hold-out of the
   training split (the same films the CNN holds out): film {m['calibration']['sex_known']['film_factor']:.2f},
   RUS {m['calibration']['sex_known']['rus_factor']:.2f}, single bone {m['calibration']['sex_known']['bone_factor']:.2f}
   x the scale (sex known); {m['calibration']['sex_unknown']['film_factor']:.2f} / {m['calibration']['sex_unknown']['rus_factor']:.2f} /
   {m['calibration']['sex_unknown']['bone_factor']:.2f} (sex unknown).
5. **Age-band bias**: {_age_map_sentence(m['calibration'])}

## Training data
- `rsna-dev` training split minus the {CALIBRATION_HOLDOUT}-film calibration hold-out: {t['n_fit_rsna_dev']} films;
- `rsna-299`: {t['n_fit_rsna_299']} films, squashed to 299 x 299 by a public mirror. Before cropping they are
  widened back to the median true aspect of the `rsna-dev` films ({RSNA_299_WIDTH_TO_HEIGHT} wide-to-tall;
  the originals were 0.64-0.98), and training jitters every crop's aspect by 0.85-1.18 so the
  leftover error is within what the network learns to ignore.
- {t['n_fit_crops']} crops ({t['fit_crop_share']:.0%} of the {len(anatomy.MATURITY_REGIONS)} regions of every film were found).
- Augmentation: rotation +-10 deg, zoom 0.9-1.12, aspect 0.85-1.18, shift +-6%, horizontal flip,
  down-up resampling 1.5-3x (a third of the crops), gamma 0.7-1.4, contrast, brightness, noise; the
  sex hidden for {cfg['sex_dropout']:.0%} of the crops (the sex-agnostic mode).
- The fixed validation split (`rsna-dev`, `split == "val"`) was used for nothing but the numbers below.

## Reproduce
```
{command}
```
Seed {cfg['seed']}; {cfg['epochs']} epochs, {cfg['batch']} crops per step, AdamW (lr {cfg['lr']}, weight decay
{cfg['weight_decay']}), one-cycle schedule, bf16 autocast where the CPU has it natively, EMA weights
(decay {cfg['ema']}) shipped. Training {t['train_minutes']:.0f} min in all; the command's last run took {t['wall_minutes']:.0f} min on
{cpu_name()} ({cfg['threads']} torch threads, torch {t['torch']}). The first run also cuts the crops of
every film with the shipped segmenter into a cache outside the repository (about 20 min on 2 cores).
The run checkpoints every {cfg['checkpoint_minutes']:.0f} minutes (`checkpoint.pt` beside the weights, not shipped);
the same command started again continues an interrupted run.
{_bn_recalibration_sentence(t.get('bn_recalibration'))}

## Validation (fixed `rsna-dev` validation split, sex given)
{_group_table(vk['groups'])}

RUS bones alone: MAE {vk['rus_mae']:.1f} months (90% coverage {vk['rus_coverage']:.1%}); carpal region alone:
MAE {vk['carpal_mae']:.1f}. RUS bones with an age: {vk['rus_bones_with_age']:.1%}; films with an estimate:
{vk['films_with_estimate']:.1%}; bones dropped from the consensus per film: {vk['mean_dropped_per_film']:.2f}.

### Each region's own age (validation, sex given)
| region | n | MAE (months) | kept in the consensus |
|---|---|---|---|
{regions}

### Sex unknown (same films, sex input set to unknown)
{_group_table(vu['groups'])}

## Limitations
- Crops follow the segmenter: a bone it mislabels is cropped wrongly (the consensus usually drops it).
- The hold-out that calibrates the interval has {m['calibration']['holdout_n']} films; coverage in small subgroups
  (e.g. under 6 y) is less certain.
- Trained on RSNA films (one North American population, two hospitals); other populations and film
  processing are untested.
"""
    path = folder / "MODEL_CARD.md"
    path.write_text(card)
    return path


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``boneage train perbone``."""
    d = TrainConfig()
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch", type=int, default=d.batch, help="crops per step")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    parser.add_argument("--workers", type=int, default=d.workers, help="processes that cut crops")
    parser.add_argument("--crop-fraction", type=float, default=d.crop_fraction, help="share of the crops seen per epoch")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop (resumably) after this long")
    parser.add_argument("--limit", type=int, default=0, help="only N films (smoke test)")
    parser.add_argument("--out", default="", help="output folder (default data/models/perbone)")
    add_crop_intensity_argument(parser)


def add_crop_intensity_argument(parser: argparse.ArgumentParser) -> None:
    """``--crop-intensity``, shared by the crop networks' commands (per-bone, sex)."""
    from boneage.perbone import CROP_INTENSITIES

    parser.add_argument("--crop-intensity", choices=CROP_INTENSITIES, default=TrainConfig().crop_intensity,
                        help="the crops' grey levels as cut (window, default) or each histogram-equalised")


def train_command(args: argparse.Namespace) -> int:
    """``boneage train perbone``."""
    config = TrainConfig(epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                         workers=args.workers, crop_fraction=args.crop_fraction, max_minutes=args.max_minutes,
                         limit=args.limit, out=args.out, crop_intensity=args.crop_intensity)
    metrics = train(config)
    if metrics is None:
        return 3
    from boneage.training.export import export_after_training

    export_after_training("perbone", config.out)
    return 0


def crops_command(args: argparse.Namespace) -> int:
    """``python -m boneage.training.perbone crops``: fill the crop cache for every labelled film."""
    from boneage.datasets import rsna_299, rsna_dev
    import pandas as pd

    labels = pd.concat([rsna_dev(), rsna_299()], ignore_index=True)
    if args.limit:
        labels = labels.iloc[: args.limit]
    start = time.time()
    data = build_crop_cache(labels, workers=args.workers)
    share = data["present"][:, : len(anatomy.RUS_BONES)].mean()
    print(f"{len(labels)} films, RUS bones cropped {share:.1%}, {time.time() - start:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boneage.training.perbone")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("crops", help="cut and cache the bone crops of every labelled film")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="only the first N films (smoke test)")
    p.set_defaults(func=crops_command)
    t = sub.add_parser("train", help="train the per-bone network (same as `boneage train perbone`)")
    add_train_arguments(t)
    t.set_defaults(func=train_command)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

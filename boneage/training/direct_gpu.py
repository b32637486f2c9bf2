"""The end-to-end CNN's training on a lent GPU: pack the training cache here, train there, finish here.

A lent GPU machine (``scripts/gpu_train_direct.sh``) sees only a copy of the repository, not the
RSNA images beside it, and what travels is capped (64 MiB), as is what comes back (16 MiB a file).
So the route is:

1. ``python -m boneage.training.direct_gpu pack`` (here) writes the training films and the
   calibration hold-out of ``boneage train direct`` -- exactly its cache, in its order -- as lossy
   WebP (about 3 KB a film, mean error about 1 grey level in 255) with their ages and sex codes, into
   ``.pack/`` (ignored by git: derived from research-only images, never committed).
2. ``python -m boneage.training.direct_gpu train --member M ...`` (there) trains ensemble member
   ``M`` with :func:`boneage.training.direct.train_on_arrays` -- the same loop, settings and seeds
   as ``boneage train direct`` -- and writes a *slim* finished checkpoint (the EMA weights in fp16,
   no optimiser moments) named as that command names its checkpoints.
3. The slim checkpoints are copied into the model folder and ``boneage train direct`` with the same
   settings is run here: it finds every member finished, and does the BatchNorm choice, the
   calibration, the validation and robustness tables, the weights and the model card on the CPU.

Nothing here is on the inference path.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

#: Where ``pack`` writes by default (``.pack/`` is ignored by git).
DEFAULT_PACK = Path(".pack") / "direct_train_256.npz"
#: WebP quality of the packed films (measured: ~3 KB and ~1 grey level mean error at 256 px).
PACK_QUALITY = 80


def encode_webp(images: np.ndarray, quality: int = PACK_QUALITY) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(N, S, S)`` images -> (concatenated WebP bytes, ``N + 1`` offsets)."""
    from PIL import Image

    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, "WEBP", quality=quality)
        blobs.append(buffer.getvalue())
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def _decode_blob(blob: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        return np.asarray(img.convert("L"))


def decode_webp(data: np.ndarray, offsets: np.ndarray, workers: int = 1) -> np.ndarray:
    """Inverse of :func:`encode_webp`: uint8 ``(N, S, S)``.

    Raises:
        ValueError: when the blobs do not decode to images of one square size.
    """
    blobs = [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
    if workers > 1:
        # Threads, not a fork pool: Pillow's WebP decoder releases the GIL, and forking a process
        # that runs torch or tqdm threads can leave a child holding a lock forever (a CI hang).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            images = list(pool.map(_decode_blob, blobs))
    else:
        images = [_decode_blob(b) for b in blobs]
    shapes = {im.shape for im in images}
    if len(shapes) != 1 or len({*next(iter(shapes))}) != 1:
        raise ValueError(f"packed images are not all one square size: {sorted(shapes)[:3]}")
    return np.stack(images)


def write_pack(path: str | Path, fit_images: np.ndarray, fit_ages: np.ndarray, fit_codes: np.ndarray,
               monitor_images: np.ndarray, monitor_ages: np.ndarray, monitor_codes: np.ndarray,
               meta: dict, quality: int = PACK_QUALITY) -> Path:
    """Write a training pack (see the module docstring).

    Args:
        path: the ``.npz`` to write.
        fit_images, fit_ages, fit_codes: the training films (uint8), bone ages (months), sex codes.
        monitor_images, monitor_ages, monitor_codes: the calibration hold-out, watched each epoch.
        meta: facts recorded in the pack (seed, cache size, sources).
        quality: WebP quality.

    Returns:
        The written path.
    """
    if not (len(fit_images) == len(fit_ages) == len(fit_codes)) or not (len(monitor_images) == len(monitor_ages) == len(monitor_codes)):
        raise ValueError("images, ages and sex codes differ in length")
    fit_data, fit_offsets = encode_webp(fit_images, quality)
    mon_data, mon_offsets = encode_webp(monitor_images, quality)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, fit_data=fit_data, fit_offsets=fit_offsets, fit_ages=np.asarray(fit_ages, np.float64),
                 fit_codes=np.asarray(fit_codes, np.float32), monitor_data=mon_data, monitor_offsets=mon_offsets,
                 monitor_ages=np.asarray(monitor_ages, np.float64), monitor_codes=np.asarray(monitor_codes, np.float32),
                 meta=np.frombuffer(json.dumps(dict(meta, quality=quality)).encode(), dtype=np.uint8))
    tmp.replace(path)
    return path


def read_pack(path: str | Path, workers: int = 1) -> dict:
    """Read a pack written by :func:`write_pack`.

    Returns:
        ``fit_images``, ``fit_ages``, ``fit_codes``, ``monitor_images``, ``monitor_ages``,
        ``monitor_codes`` and ``meta``.

    Raises:
        FileNotFoundError: when the pack is missing.
        ValueError: when it is not a training pack.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training pack not found: {path} (write it with `python -m boneage.training.direct_gpu pack`)")
    with np.load(path) as z:
        missing = {"fit_data", "fit_offsets", "fit_ages", "fit_codes", "monitor_data", "meta"} - set(z.files)
        if missing:
            raise ValueError(f"{path} is not a training pack (missing {sorted(missing)})")
        out = {
            "fit_images": decode_webp(z["fit_data"], z["fit_offsets"], workers),
            "fit_ages": z["fit_ages"], "fit_codes": z["fit_codes"],
            "monitor_images": decode_webp(z["monitor_data"], z["monitor_offsets"], workers),
            "monitor_ages": z["monitor_ages"], "monitor_codes": z["monitor_codes"],
            "meta": json.loads(z["meta"].tobytes().decode()),
        }
    if len(out["fit_images"]) != len(out["fit_ages"]):
        raise ValueError(f"{path}: {len(out['fit_images'])} images but {len(out['fit_ages'])} ages")
    return out


def pack_training_cache(path: str | Path = DEFAULT_PACK, seed: int = 0, quality: int = PACK_QUALITY,
                        limit: int | None = None, workers: int = 2) -> Path:
    """Pack exactly what ``boneage train direct --seed SEED [--limit N]`` trains on and watches.

    Args:
        path: the pack to write.
        seed: the training seed (it fixes the calibration hold-out).
        quality: WebP quality.
        limit: the films of ``--limit N`` (a quick check of the route; its checkpoints resume only
            the command with the same ``--limit``).
        workers: decoding processes when the cache must be built first.
    """
    from boneage.direct import CACHE_SIZE
    from boneage.training.direct import cached_images, table_sex_codes, training_tables

    fit, calib, _ = training_tables(seed, limit)
    fit_images = cached_images(fit, CACHE_SIZE, workers)
    calib_images = cached_images(calib, CACHE_SIZE, workers)
    codes = table_sex_codes
    meta = {"seed": seed, "cache_size": CACHE_SIZE, "n_fit": len(fit), "n_monitor": len(calib), "limit": limit,
            "n_rsna_dev": int((fit["source"] == "rsna-dev").sum()), "n_rsna_299": int((fit["source"] == "rsna-299").sum())}
    return write_pack(path, fit_images, fit["bone_age_months"].to_numpy(np.float64), codes(fit), calib_images,
                      calib["bone_age_months"].to_numpy(np.float64), codes(calib), meta, quality)


def slim_checkpoint(source: str | Path, target: str | Path) -> Path:
    """A finished checkpoint reduced to what resuming a finished run reads: EMA weights in fp16.

    The network and the EMA entries both hold the (fp16) EMA weights, stored once; the optimiser
    keeps its parameter groups but no moments. ``boneage train direct`` with the same settings then
    finds the run finished and uses these weights (fp16, as they ship).

    Raises:
        ValueError: when the checkpoint is not of a finished run (a slim one could not continue it).
    """
    import torch

    state = torch.load(source, map_location="cpu", weights_only=False)
    if state["epoch"] < state["settings"]["epochs"] or state["step"] != 0:
        raise ValueError(f"{source} is not finished (epoch {state['epoch']} of {state['settings']['epochs']}, step {state['step']})")
    weights = state["ema"] if state.get("ema") is not None else state["network"]
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    state.update(network=half, ema=half if state.get("ema") is not None else None, slim=True,
                 optimiser={"state": {}, "param_groups": state["optimiser"]["param_groups"]})
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return target


def train_member(pack: str | Path, member: int, config, out: str | Path, work: str | Path, log=print) -> Path:
    """Train ensemble member ``member`` from a pack and write its slim checkpoint into ``out``.

    Args:
        pack: the training pack.
        member: 0-based member index (training seed ``config.seed + MEMBER_SEED_STEP * member``).
        config: the :class:`boneage.training.direct.TrainConfig` of the ``boneage train direct``
            command that will finish the run (its ``seed`` is the base seed).
        out: folder for the slim checkpoint (named like that command's checkpoints).
        work: folder for the full, resumable checkpoint while training.

    Returns:
        The slim checkpoint's path.
    """
    from boneage.training.direct import MEMBER_SEED_STEP, member_checkpoint, train_on_arrays

    data = read_pack(pack, workers=config.workers)
    meta = data["meta"]
    # A pack is one command's films: its checkpoints only resume a run of the same seed, limit and size.
    for key, wanted in (("cache_size", config.cache_size), ("seed", config.seed), ("limit", config.limit)):
        if key in meta and meta[key] != wanted:
            raise ValueError(f"{pack} was packed with {key} {meta[key]}, the run asks for {wanted}")
    member_config = replace(config, seed=config.seed + MEMBER_SEED_STEP * member)
    log(f"member {member}: {len(data['fit_images'])} films, training seed {member_config.seed}, "
        f"widths {list(config.widths)}, {config.epochs} epochs, batch {config.batch_size}, lr {config.learning_rate}")
    full = member_checkpoint(Path(work), member)
    result = train_on_arrays(data["fit_images"], data["fit_ages"], data["fit_codes"], member_config,
                             monitor=(data["monitor_images"], data["monitor_ages"], data["monitor_codes"]),
                             log=log, checkpoint=full)
    if result.stopped_early:
        raise RuntimeError(f"member {member} stopped by --max-minutes before its last epoch; its full checkpoint is {full}")
    return slim_checkpoint(full, member_checkpoint(Path(out), member))


def main(argv: list[str] | None = None) -> int:
    """``python -m boneage.training.direct_gpu pack|train``."""
    from boneage.training.direct import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser(prog="python -m boneage.training.direct_gpu", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    pack = verbs.add_parser("pack", help="write the training pack (here, where the RSNA images are)")
    pack.add_argument("--out", default=str(DEFAULT_PACK))
    pack.add_argument("--seed", type=int, default=0)
    pack.add_argument("--quality", type=int, default=PACK_QUALITY)
    pack.add_argument("--limit", type=int, default=None, help="pack only N training films (a check of the route)")
    train = verbs.add_parser("train", help="train one member from a pack (on the GPU machine)")
    add_train_arguments(train)
    train.add_argument("--pack", default=str(DEFAULT_PACK))
    train.add_argument("--member", type=int, default=0)
    train.add_argument("--work", default="/tmp/boneage_direct_gpu", help="folder for the full checkpoints")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        if args.verb == "pack":
            path = pack_training_cache(args.out, args.seed, args.quality, args.limit)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.time() - started:.0f} s")
            return 0
        config = config_from_args(args)
        if not config.out:
            parser.error("train needs --out (the folder the slim checkpoint is written to)")
        path = train_member(args.pack, args.member, config, config.out, Path(args.work) / f"{Path(config.out).name}")
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {(time.time() - started) / 60:.1f} min")
        return 0
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"boneage.training.direct_gpu: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

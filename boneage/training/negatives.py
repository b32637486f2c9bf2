"""Images that are not hand radiographs, for training and checking the hand check.

Every image depends only on ``(seed, index)``: the hand check is fitted on one set of seeds and
checked (tests, ``benchmarks/bench_reliability.py``) on others it never saw. Kinds:

- ``fixture_crop``: crops of the two real non-hand CR films shipped in ``tests/data`` (a chest and a
  distal tibia), at random position, size, quarter turn, tilt and mirror, sometimes inverted;
- ``texture``: smoothed noise at one or two scales, with a random contrast curve;
- ``text``: a page of text (report, label), dark on light or light on dark;
- ``phantom``: ellipses, rods and rectangles (rods side by side are a hard case: they look like
  tubular bones);
- ``partial_hand``: a synthetic hand cropped to a small part of it (a fingertip row, the wrist)
  where too little of the hand is seen to read a bone age;
- ``gradient``: smooth ramps and vignettes with noise (an empty, unevenly exposed plate).

A real hand film turned negative is *not* among them: it is a hand, read inverted back.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from boneage.paths import REPO_DIR

#: The kinds of non-hand image, in a fixed order (``index % len(KINDS)`` picks one).
KINDS = ("fixture_crop", "texture", "text", "phantom", "partial_hand", "gradient")
#: Real non-hand CR films (MIT-licensed NEMA samples) that the fixture crops are cut from.
FIXTURE_FILES = (REPO_DIR / "tests" / "data" / "RG1_J2KI.dcm", REPO_DIR / "tests" / "data" / "RG3_J2KR.dcm")


@lru_cache(maxsize=None)
def _fixture(path: Path) -> np.ndarray:
    from boneage.io import load_radiograph

    pixels = load_radiograph(path).pixels
    step = max(1, max(pixels.shape) // 1024)  # a 1k copy is detail enough for crops
    return np.ascontiguousarray(pixels[::step, ::step])


def _fixture_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    available = [p for p in FIXTURE_FILES if p.is_file()]
    if not available:
        return _texture(rng, size)
    img = _fixture(available[int(rng.integers(len(available)))])
    rows, cols = img.shape
    frac = rng.uniform(0.3, 1.0)
    h, w = int(rows * frac), int(cols * frac * rng.uniform(0.7, 1.3))
    w = min(w, cols)
    r0, c0 = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
    crop = img[r0:r0 + h, c0:c0 + w]
    crop = np.rot90(crop, int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = ndimage.rotate(crop, rng.uniform(-30, 30), reshape=False, order=1, mode="nearest")
    if rng.random() < 0.25:
        crop = 1.0 - crop
    return _resize(crop, size, rng)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    shape = (size, int(size * rng.uniform(0.7, 1.0)))
    img = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(1.5, 25))
    if rng.random() < 0.6:
        img = img + rng.uniform(0.3, 1.5) * _norm(ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(0.5, 4)))
    img = _norm(img)
    return np.clip(img ** rng.uniform(0.5, 2.5), 0, 1)


def _text(rng: np.random.Generator, size: int) -> np.ndarray:
    width = int(size * rng.uniform(0.7, 1.0))
    bg, fg = (235, 20) if rng.random() < 0.6 else (20, 235)
    page = Image.new("L", (width, size), bg)
    draw = ImageDraw.Draw(page)
    font_size = int(rng.integers(10, 40))
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", font_size)
    except OSError:
        font = ImageFont.load_default()
    words = ["PATIENT", "HAND", "LEFT", "BONE", "AGE", "RADIOLOGY", "REPORT", "Study", "date", "mm", "L", "R",
             "impression", "normal", "the", "of", "and", "12", "2024", "exam", "wrist", "CR", "DX"]
    y = int(rng.integers(2, 20))
    while y < size - font_size:
        line = " ".join(words[int(i)] for i in rng.integers(0, len(words), int(rng.integers(2, 12))))
        draw.text((int(rng.integers(2, 30)), y), line, fill=fg, font=font)
        y += int(font_size * rng.uniform(1.2, 2.5))
    img = np.asarray(page, dtype=np.float32) / 255.0
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


def _phantom(rng: np.random.Generator, size: int) -> np.ndarray:
    shape = (size, int(size * rng.uniform(0.7, 1.0)))
    img = np.full(shape, rng.uniform(0.0, 0.2))
    rr, cc = np.indices(shape)
    for _ in range(int(rng.integers(2, 12))):
        kind = rng.choice(["ellipse", "rod", "rect"])
        r0, c0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        value = rng.uniform(0.2, 1.0)
        if kind == "ellipse":
            a, b = rng.uniform(5, size / 3, 2)
            inside = ((rr - r0) / a) ** 2 + ((cc - c0) / b) ** 2 <= 1
        else:
            length = rng.uniform(size / 10, size / 2)
            width = rng.uniform(3, size / 25) if kind == "rod" else rng.uniform(size / 20, size / 4)
            angle = np.deg2rad(rng.uniform(-40, 40) + (0 if rng.random() < 0.7 else 90))
            u = (rr - r0) * np.cos(angle) + (cc - c0) * np.sin(angle)
            v = -(rr - r0) * np.sin(angle) + (cc - c0) * np.cos(angle)
            inside = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
        img[inside] = value
    if rng.random() < 0.5:  # rods side by side, like fingers: the hardest of the phantoms
        n = int(rng.integers(3, 6))
        base = rng.uniform(0.3, 0.7) * shape[0]
        for k in range(n):
            c = shape[1] * (0.2 + 0.6 * k / max(1, n - 1))
            for seg in range(3):
                top, bottom = base - (seg + 1) * size / 8, base - seg * size / 8 - 4
                img[(rr >= top) & (rr <= bottom) & (np.abs(cc - c) <= size / 60)] = rng.uniform(0.6, 1.0)
    img = ndimage.gaussian_filter(img, rng.uniform(0.5, 3))
    return np.clip(img + rng.normal(0, rng.uniform(0.005, 0.05), shape), 0, 1)


def _partial_hand(rng: np.random.Generator, size: int) -> np.ndarray:
    from boneage.synth import generate_hand

    hand = generate_hand(int(rng.integers(1 << 30)), 0, size=max(256, size))
    img = hand.image.astype(np.float32)
    img = img / 255.0 if img.max() > 1.5 else img
    rows, cols = img.shape
    part = rng.choice(["tips", "wrist", "side"])
    if part == "tips":
        crop = img[: int(rows * rng.uniform(0.12, 0.25))]
    elif part == "wrist":
        crop = img[int(rows * rng.uniform(0.78, 0.88)):]
    else:
        w = int(cols * rng.uniform(0.12, 0.22))
        c0 = int(rng.integers(0, cols - w))
        crop = img[int(rows * 0.5):, c0:c0 + w]
    return _resize(crop, size, rng)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    shape = (size, int(size * rng.uniform(0.7, 1.0)))
    rr, cc = np.indices(shape) / size
    angle = rng.uniform(0, 2 * np.pi)
    img = np.cos(angle) * rr + np.sin(angle) * cc
    if rng.random() < 0.5:
        img = img + rng.uniform(0.5, 2) * ((rr - rng.uniform(0, 1)) ** 2 + (cc - rng.uniform(0, 1)) ** 2)
    img = _norm(img) * rng.uniform(0.2, 1.0)
    return np.clip(img + rng.normal(0, rng.uniform(0.01, 0.08), shape), 0, 1)


def _norm(img: np.ndarray) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _resize(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = img.shape
    scale = size / max(rows, cols) * rng.uniform(0.8, 1.0)
    shape = (max(16, int(round(cols * scale))), max(16, int(round(rows * scale))))
    out = Image.fromarray(np.asarray(img, dtype=np.float32), mode="F").resize(shape, Image.BILINEAR)
    return np.clip(np.asarray(out), 0, 1)


_MAKERS = {"fixture_crop": _fixture_crop, "texture": _texture, "text": _text, "phantom": _phantom,
           "partial_hand": _partial_hand, "gradient": _gradient}


def non_hand_image(seed: int, index: int, size: int = 512, kind: str | None = None) -> tuple[np.ndarray, str]:
    """One non-hand image.

    Args:
        seed: set seed (keep the hand check's training seeds apart from the ones it is checked on).
        index: image index; the kind cycles through :data:`KINDS` unless ``kind`` is given.
        size: long side in pixels.
        kind: one of :data:`KINDS`, or ``None``.

    Returns:
        ``(pixels, kind)``: float32 2-D array in [0, 1] and its kind.
    """
    kind = kind or KINDS[index % len(KINDS)]
    rng = np.random.default_rng([int(seed), int(index), KINDS.index(kind)])
    return _MAKERS[kind](rng, size).astype(np.float32), kind


def non_hand_images(seed: int, n: int, size: int = 512) -> Iterator[tuple[np.ndarray, str]]:
    """``n`` non-hand images of every kind in turn (see :func:`non_hand_image`)."""
    for index in range(n):
        yield non_hand_image(seed, index, size)

"""Rasterising synthetic hands: bone shapes, soft tissue, film appearance (internal to :mod:`boneage.synth`).

Everything works directly at the target resolution on small bounding boxes with vectorised numpy, so
one 512-px hand renders in a few tens of milliseconds on one core. Geometry arrives in pixels; the
physical model (path lengths through cortex, trabecular bone and soft tissue, in mm) is turned into
a film-like image by :func:`boneage.synth.generate_hand`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage


@dataclass
class ShapePx:
    """One bone part in pixel coordinates (x = column, y = row).

    The part occupies ``0 <= u <= length`` along ``direction`` from ``start`` and
    ``|v| < halfwidth(u / length) * cap(u)`` across it, where the caps round the two ends with
    radii ``cap_start`` and ``cap_end`` (a cap radius of ``length / 2`` at both ends and a flat
    width profile make an ellipse).
    """

    label: int
    start: np.ndarray  # (2,) x, y
    direction: np.ndarray  # (2,) unit vector
    length: float
    t_knots: np.ndarray
    halfwidth_knots: np.ndarray
    cortex_knots: np.ndarray  # inner radius = halfwidth * (1 - cortex)
    cap_start: float
    cap_end: float
    density: float = 1.0
    texture_amp: float = 0.0  # trabecular texture, oriented along the bone axis
    texture_offset: tuple[int, int] = (0, 0)
    texture_px: float = 1.0  # image pixels per texture pixel (keeps the texture's size in mm)
    trabecular_density: float = 1.0  # the medulla's density relative to ``density``


@dataclass
class Canvas:
    """Accumulators of one image: path lengths (pixels) through cortex and trabecular bone, labels."""

    cortical: np.ndarray
    trabecular: np.ndarray
    labels: np.ndarray

    @classmethod
    def empty(cls, rows: int, cols: int) -> Canvas:
        return cls(
            np.zeros((rows, cols), np.float32),
            np.zeros((rows, cols), np.float32),
            np.zeros((rows, cols), np.uint8),
        )


def paint_shape(canvas: Canvas, shape: ShapePx, paint_label: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """Add one bone part to the canvas: X-ray path lengths and (by occlusion order) its label.

    The part is modelled as a tube (a solid of revolution about its axis), so the path length of a
    ray at lateral offset ``v`` is the chord ``2 sqrt(R^2 - v^2)``; the medullary cavity of radius
    ``R (1 - cortex)`` is subtracted from the cortical path and counted as trabecular bone, weighted by
    ``shape.trabecular_density`` (an emptier medulla below 1). That is what makes the cortex bright at
    the edges of a shaft, as on real films.

    Args:
        canvas: accumulators, modified in place.
        shape: the part in pixel coordinates.
        paint_label: write ``shape.label`` over the pixels inside the part (later parts occlude).

    Returns:
        ``(rows, cols)`` of the pixels inside the part (clipped to the image), or ``None`` when the
        part lies outside the image.
    """
    rows, cols = canvas.labels.shape
    d = shape.direction
    n = np.array([-d[1], d[0]])
    hw_max = float(shape.halfwidth_knots.max())
    end = shape.start + d * shape.length
    corners = np.stack([shape.start + n * hw_max, shape.start - n * hw_max, end + n * hw_max, end - n * hw_max])
    c0 = max(int(np.floor(corners[:, 0].min())), 0)
    c1 = min(int(np.ceil(corners[:, 0].max())) + 1, cols)
    r0 = max(int(np.floor(corners[:, 1].min())), 0)
    r1 = min(int(np.ceil(corners[:, 1].max())) + 1, rows)
    if c0 >= c1 or r0 >= r1 or shape.length <= 0:
        return None
    dx = (np.arange(c0, c1, dtype=np.float32) - np.float32(shape.start[0]))[None, :]
    dy = (np.arange(r0, r1, dtype=np.float32) - np.float32(shape.start[1]))[:, None]
    u = dx * np.float32(d[0]) + dy * np.float32(d[1])
    v = dx * np.float32(n[0]) + dy * np.float32(n[1])
    t = u / np.float32(shape.length)
    hw = np.interp(t, shape.t_knots, shape.halfwidth_knots).astype(np.float32)
    # Rounded ends: the half-width shrinks like a circle (ellipse) of radius cap within cap of each end.
    if shape.cap_start > 0:
        s = np.clip((np.float32(shape.cap_start) - u) / np.float32(shape.cap_start), 0, 1)
        hw *= np.sqrt(np.clip(1 - s * s, 0, 1))
    if shape.cap_end > 0:
        s = np.clip((u - np.float32(shape.length - shape.cap_end)) / np.float32(shape.cap_end), 0, 1)
        hw *= np.sqrt(np.clip(1 - s * s, 0, 1))
    inside_axis = (u >= 0) & (u <= shape.length)
    hw = np.where(inside_axis, hw, 0)
    v2 = v * v
    outer = 2 * np.sqrt(np.clip(hw * hw - v2, 0, None))
    inner_r = hw * (1 - np.interp(t, shape.t_knots, shape.cortex_knots).astype(np.float32))
    inner = 2 * np.sqrt(np.clip(inner_r * inner_r - v2, 0, None))
    canvas.cortical[r0:r1, c0:c1] += (outer - inner) * np.float32(shape.density)
    if shape.texture_amp > 0:
        # Sample the oriented texture in the bone's own (u, v) frame: struts run along the axis.
        bank = _oriented_texture()
        tile = bank.shape[0]
        ti = (u / np.float32(shape.texture_px)).astype(np.int32) + shape.texture_offset[0]
        tj = (v / np.float32(shape.texture_px)).astype(np.int32) + shape.texture_offset[1]
        inner = inner * (1 + np.float32(shape.texture_amp) * bank[ti % tile, tj % tile])
    canvas.trabecular[r0:r1, c0:c1] += inner * np.float32(shape.density * shape.trabecular_density)
    inside = v2 < hw * hw
    rr, cc = np.nonzero(inside)
    if rr.size == 0:
        # A part thinner than a pixel still exists: label the pixel nearest its centre, so that
        # "ossified" and "has a label" always agree.
        centre = shape.start + d * shape.length / 2
        r, c = int(round(centre[1])), int(round(centre[0]))
        if not (0 <= r < rows and 0 <= c < cols):
            return None
        rr, cc = np.array([r - r0]), np.array([c - c0])
    rr += r0
    cc += c0
    if paint_label:
        canvas.labels[rr, cc] = shape.label
    return rr, cc


def fill_polygon(mask: np.ndarray, points_xy: np.ndarray, value: float) -> None:
    """Set ``mask`` to ``max(mask, value)`` inside a polygon given as (x, y) pixel points.

    PIL's scan-line fill is used (much faster than a point-in-polygon test on large polygons).
    """
    rows, cols = mask.shape
    canvas = Image.new("L", (cols, rows), 0)
    # Keep coordinates in a sane range: a polygon reaching far off the film is clipped by PIL anyway.
    pts = np.clip(points_xy, -4 * max(rows, cols), 5 * max(rows, cols))
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in pts], fill=1)
    inside = np.asarray(canvas, dtype=bool)
    np.maximum(mask, np.float32(value) * inside, out=mask)


def soft_capsule(tissue: np.ndarray, p0: np.ndarray, p1: np.ndarray, radius_px: float, spacing_mm: float) -> None:
    """Max-combine the X-ray path (mm) through a cylinder of soft tissue from p0 to p1 (pixels)."""
    rows, cols = tissue.shape
    r0 = max(int(np.floor(min(p0[1], p1[1]) - radius_px)), 0)
    r1 = min(int(np.ceil(max(p0[1], p1[1]) + radius_px)) + 1, rows)
    c0 = max(int(np.floor(min(p0[0], p1[0]) - radius_px)), 0)
    c1 = min(int(np.ceil(max(p0[0], p1[0]) + radius_px)) + 1, cols)
    if r0 >= r1 or c0 >= c1:
        return
    d = p1 - p0
    length2 = float(d @ d) or 1e-9
    y = np.arange(r0, r1, dtype=np.float32)[:, None] - np.float32(p0[1])
    x = np.arange(c0, c1, dtype=np.float32)[None, :] - np.float32(p0[0])
    t = np.clip((x * np.float32(d[0]) + y * np.float32(d[1])) / np.float32(length2), 0, 1)
    dx = x - t * np.float32(d[0])
    dy = y - t * np.float32(d[1])
    chord = 2 * np.sqrt(np.clip(np.float32(radius_px) ** 2 - dx * dx - dy * dy, 0, None)) * np.float32(spacing_mm)
    np.maximum(tissue[r0:r1, c0:c1], chord, out=tissue[r0:r1, c0:c1])


def rounded_slab(thickness: np.ndarray, rounding_px: float) -> np.ndarray:
    """Round off a flat slab's thickness near its outline (a quarter-ellipse over ~``rounding_px``).

    The depth below the outline is approximated by a blurred copy of the slab's mask (cheaper than a
    distance transform, and as smooth): coverage 0.5 on the outline, 1 deep inside.
    """
    inside = (thickness > 0).astype(np.float32)
    if not inside.any():
        return thickness
    coverage = smooth(inside, rounding_px / 2)
    depth = np.clip(2 * coverage - 1, 0, 1)
    level = smooth(thickness, rounding_px / 2) / np.maximum(coverage, 1e-3)
    return (level * np.sqrt(1 - (1 - depth) ** 2)).astype(np.float32)


@lru_cache(maxsize=1)
def _oriented_texture(tile: int = 256) -> np.ndarray:
    """Periodic noise elongated along axis 0 (a bone's long axis): trabecular struts (constant)."""
    rng = np.random.default_rng(20240612)
    fu = np.fft.fftfreq(tile)[:, None]
    fv = np.fft.rfftfreq(tile)[None, :]
    # Band-pass, anisotropic: long correlation along the bone, short across it.
    broad = np.exp(-0.5 * ((fu / 0.06) ** 2 + (fv / 0.22) ** 2))
    narrow = np.exp(-0.5 * ((fu / 0.02) ** 2 + (fv / 0.07) ** 2))
    noise = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((tile, tile))) * (broad - narrow), s=(tile, tile))
    noise = np.tanh(1.5 * noise / noise.std())
    return ((noise - noise.mean()) / noise.std()).astype(np.float32)


@lru_cache(maxsize=4)
def _texture_bank(tile: int = 512) -> np.ndarray:
    """Periodic band-pass noise tiles standing in for trabecular texture (fixed seed: a constant)."""
    rng = np.random.default_rng(20240611)
    out = []
    fy = np.fft.fftfreq(tile)[:, None]
    fx = np.fft.rfftfreq(tile)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    for centre, width in ((0.3, 0.12), (0.2, 0.08)):
        band = np.exp(-0.5 * ((f - centre) / width) ** 2)
        noise = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((tile, tile))) * band, s=(tile, tile))
        # Thresholding band-pass noise gives the strut-and-hole look of trabecular bone.
        noise = np.tanh(2.0 * noise / noise.std())
        out.append((noise / noise.std()).astype(np.float32))
    return np.stack(out)


def texture(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A ``rows x cols`` crop (wrapping) of the texture bank at a random offset, zero mean, unit SD."""
    bank = _texture_bank()
    k = int(rng.integers(len(bank)))
    tile = bank.shape[1]
    oy, ox = rng.integers(tile, size=2)
    ri = (np.arange(rows) + oy) % tile
    ci = (np.arange(cols) + ox) % tile
    return bank[k][np.ix_(ri, ci)]


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(size, 6))


def marker_patch(text_main: str, text_sub: str, height_px: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A lead marker on its plastic holder, as on the RSNA films: a bright "L" with initials below.

    Returns:
        ``(value, alpha)``: brightness of the patch in [0, 1] and how much it replaces the image.
    """
    h = max(int(height_px), 16)
    w = max(int(h * rng.uniform(0.45, 0.7)), 10)
    plate = Image.new("L", (w, h), 0)
    alpha = Image.new("L", (w, h), 0)
    dp, da = ImageDraw.Draw(plate), ImageDraw.Draw(alpha)
    plate_value = int(rng.uniform(40, 140))
    plate_alpha = int(rng.uniform(0, 200)) if rng.random() < 0.8 else 0
    radius = max(2, w // 6)
    dp.rounded_rectangle([0, 0, w - 1, h - 1], radius=radius, fill=plate_value)
    da.rounded_rectangle([0, 0, w - 1, h - 1], radius=radius, fill=plate_alpha)
    big = _font(int(h * 0.42))
    small = _font(int(h * 0.2))
    y = int(h * 0.12)
    for draw, fill in ((dp, 250), (da, 255)):
        # Lead letters are heavy: a stroke thickens the default font.
        draw.text((w // 2, y), text_main, font=big, fill=fill, anchor="mt", stroke_width=max(1, h // 28),
                  stroke_fill=fill)
        draw.text((w // 2, int(h * 0.58)), text_sub, font=small, fill=fill, anchor="mt",
                  stroke_width=max(1, h // 60), stroke_fill=fill)
    if rng.random() < 0.4:  # the round "orientation" symbol some holders carry
        cy, r = int(h * 0.84), max(2, int(h * 0.07))
        for draw, fill in ((dp, 250), (da, 255)):
            draw.ellipse([w // 2 - r, cy - r, w // 2 + r, cy + r], outline=fill, width=max(1, r // 3))
            draw.ellipse([w // 2 - r // 3, cy - r // 3, w // 2 + r // 3, cy + r // 3], fill=fill)
    return np.asarray(plate, np.float32) / 255.0, np.asarray(alpha, np.float32) / 255.0


def text_patch(text: str, height_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Burnt-in annotation text (bright on transparent)."""
    font = _font(int(height_px))
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(img).text((1 - left, 1 - top), text, font=font, fill=255)
    a = np.asarray(img, np.float32) / 255.0
    return a, a


def paste(image: np.ndarray, value: np.ndarray, alpha: np.ndarray, row: int, col: int) -> None:
    """Alpha-blend a patch into the image at (row, col), clipped to the image."""
    h, w = value.shape
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h, image.shape[0]), min(col + w, image.shape[1])
    if r0 >= r1 or c0 >= c1:
        return
    pv = value[r0 - row : r1 - row, c0 - col : c1 - col]
    pa = alpha[r0 - row : r1 - row, c0 - col : c1 - col]
    image[r0:r1, c0:c1] = image[r0:r1, c0:c1] * (1 - pa) + pv * pa


def smooth(field: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur, done at half resolution for wide kernels (speed; soft tissue is smooth anyway).

    The image's edge repeats outwards ("nearest"): the film's border cuts the anatomy, it is not its
    outline. (Zero padding rounded the forearm off into a stump wherever it left the film, and edge
    enhancement drew a bright rim there; issue #22.)
    """
    if sigma_px < 3:
        return ndimage.gaussian_filter(field, sigma_px, mode="nearest")
    small = field[::2, ::2]
    blurred = ndimage.gaussian_filter(small, sigma_px / 2, mode="nearest")
    up = np.repeat(np.repeat(blurred, 2, axis=0), 2, axis=1)[: field.shape[0], : field.shape[1]]
    return up

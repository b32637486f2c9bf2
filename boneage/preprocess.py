"""The one shared place for turning a radiograph into a model input, and back.

Both methods (the multi-step pipeline and the end-to-end CNN) use these steps:

1. :func:`hand_bounding_box` -- locate the hand as the bounding box of the image *content*: outer
   rows and columns that are (nearly) uniform -- black or grey film background, white scanner
   frames, padding -- are trimmed, then a margin is added back. This is deliberately simple and
   conservative (it never cuts into the hand: a row or column crossing a finger, a marker or the
   forearm is kept), so it also removes borders that a scanner or a user added.
2. :func:`normalise_intensity` -- per-image percentile window to [0, 1] (bone bright).
3. :func:`prepare_model_input` -- crop to the box and resample to a square ``size x size`` array,
   **ignoring the aspect ratio** (every image is squashed the same way, so a film that lost its
   aspect ratio -- like the 299 x 299 RSNA mirror -- looks like any other). It returns a
   :class:`CropTransform` that maps model-input coordinates back to original pixels.

Orientation: images are expected as the usual PA view with the fingers pointing up (the RSNA
convention). No rotation is undone here; the CNN is trained with +-20 degree rotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Percentiles of the intensity window used by :func:`normalise_intensity`.
WINDOW_PERCENTILES = (0.5, 99.5)
#: A window whose top ignores the brightest 2 % of the crop: a lead marker or burnt-in label can
#: fill more than 0.5 % of it, and a 99.5 % top then leaves the bones dim (used by the segmenter).
MARKER_ROBUST_WINDOW = (0.5, 98.0)


@dataclass(frozen=True)
class CropTransform:
    """Where a square model input came from in the original image.

    The model input pixel ``(r, c)`` (centre convention) covers original pixel
    ``(row0 + (r + 0.5) * (row1 - row0) / size - 0.5, col0 + (c + 0.5) * (col1 - col0) / size - 0.5)``.

    Attributes:
        row0, col0: top-left corner of the crop in original pixels (inclusive).
        row1, col1: bottom-right corner of the crop in original pixels (exclusive).
        size: side of the square model input.
        original_shape: ``(rows, cols)`` of the original image.
    """

    row0: int
    col0: int
    row1: int
    col1: int
    size: int
    original_shape: tuple[int, int]

    @property
    def row_scale(self) -> float:
        """Original pixels per model-input pixel along rows."""
        return (self.row1 - self.row0) / self.size

    @property
    def col_scale(self) -> float:
        """Original pixels per model-input pixel along columns."""
        return (self.col1 - self.col0) / self.size

    def to_original(self, rows: np.ndarray | float, cols: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Map model-input coordinates to original-image coordinates.

        Args:
            rows: row coordinates in the model input (pixel centres at integers).
            cols: column coordinates in the model input.

        Returns:
            ``(rows, cols)`` in original-image pixels.
        """
        rows = np.asarray(rows, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.float64)
        return (self.row0 + (rows + 0.5) * self.row_scale - 0.5, self.col0 + (cols + 0.5) * self.col_scale - 0.5)

    def to_model(self, rows: np.ndarray | float, cols: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Map original-image coordinates to model-input coordinates (inverse of :meth:`to_original`)."""
        rows = np.asarray(rows, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.float64)
        return ((rows - self.row0 + 0.5) / self.row_scale - 0.5, (cols - self.col0 + 0.5) / self.col_scale - 0.5)

    def mask_to_original(self, mask: np.ndarray) -> np.ndarray:
        """Resample a ``size x size`` label map (nearest neighbour) onto the original image grid.

        Args:
            mask: integer label map in model-input coordinates.

        Returns:
            Label map of ``original_shape``; 0 outside the crop.
        """
        out = np.zeros(self.original_shape, dtype=mask.dtype)
        rows = np.arange(self.row0, self.row1)
        cols = np.arange(self.col0, self.col1)
        r, c = self.to_model(rows, cols)
        ri = np.clip(np.rint(r).astype(int), 0, self.size - 1)
        ci = np.clip(np.rint(c).astype(int), 0, self.size - 1)
        out[self.row0:self.row1, self.col0:self.col1] = mask[np.ix_(ri, ci)]
        return out


def as_pixels(image: np.ndarray) -> np.ndarray:
    """Validate and convert a 2-D image to float32 in [0, 1].

    Args:
        image: 2-D array (or RGB/RGBA, converted to luminance), scaled exactly as
            :meth:`boneage.io.Radiograph.from_array` scales it (:func:`boneage.io.to_unit_range`):
            integers by their real bit depth (0-255 data in uint16/int64 is 8-bit, 12-bit data in
            uint16 is 12-bit), floats by their finite min and max only when they leave [0, 1];
            a few NaN/infinite pixels are set to the finite minimum.

    Returns:
        float32 array in [0, 1].

    Raises:
        ValueError: for a non-2-D or too small input, a non-numeric dtype, no finite pixel, or
            more NaN/infinite pixels than :data:`boneage.io.MAX_NONFINITE_FRACTION`.
    """
    from boneage.io import to_unit_range  # one scaling for API arrays, files and model inputs

    arr = np.asarray(image)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))) or min(arr.shape[:2]) < 8:
        raise ValueError(f"expected a 2-D image of at least 8 x 8 pixels, got shape {arr.shape}")
    return to_unit_range(arr, "image").pixels


#: Rows resized at a time, on films of more than :data:`_STRIP_MIN_PIXELS` (see :func:`_pil_resize`).
_STRIP_ROWS = 512
_STRIP_MIN_PIXELS = 3000 * 3000


def _pil_resize(pixels: np.ndarray, rows: int, cols: int, resample: Image.Resampling) -> np.ndarray:
    """PIL's resize of a 2-D float array, done in strips on a tall image.

    Why: PIL copies a float array into its own memory (after a contiguous copy of a crop), so a
    7,000 x 7,500 film held up to three film-sized copies for a moment. PIL resamples width, then
    height; on a film of more than :data:`_STRIP_MIN_PIXELS`, the width is resized strip by strip
    and then the height of the narrow result: the same computation up to float rounding (within
    1e-6, checked in the tests) with one strip in memory at a time. Smaller films, every usual hand
    film among them, are resized at once as before (bit for bit).

    Args:
        pixels: 2-D array.
        rows, cols: output shape.
        resample: PIL filter (bilinear or box here).

    Returns:
        float32 ``rows x cols``.
    """
    if pixels.size <= _STRIP_MIN_PIXELS or pixels.shape[0] <= _STRIP_ROWS:
        img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
        return np.asarray(img.resize((cols, rows), resample, reducing_gap=None), dtype=np.float32)
    narrow = np.empty((pixels.shape[0], cols), dtype=np.float32)
    for top in range(0, pixels.shape[0], _STRIP_ROWS):
        strip = Image.fromarray(np.ascontiguousarray(pixels[top:top + _STRIP_ROWS], dtype=np.float32), mode="F")
        narrow[top:top + _STRIP_ROWS] = np.asarray(strip.resize((cols, strip.height), resample, reducing_gap=None))
    img = Image.fromarray(narrow, mode="F")
    return np.asarray(img.resize((cols, rows), resample, reducing_gap=None), dtype=np.float32)


def _resize(pixels: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Antialiased bilinear resize of a float32 image (PIL, fast on CPU)."""
    return _pil_resize(pixels, rows, cols, Image.Resampling.BILINEAR)


def _downsample_for_analysis(pixels: np.ndarray, long_side: int = 192) -> tuple[np.ndarray, float, float]:
    rows, cols = pixels.shape
    scale = long_side / max(rows, cols)
    if scale >= 1.0:
        return pixels, 1.0, 1.0
    small_rows, small_cols = max(8, round(rows * scale)), max(8, round(cols * scale))
    small = _pil_resize(pixels, small_rows, small_cols, Image.Resampling.BOX)
    return small, rows / small_rows, cols / small_cols


def hand_bounding_box(
    pixels: np.ndarray,
    uniform_tolerance: float = 0.025,
    margin_fraction: float = 0.03,
) -> tuple[int, int, int, int]:
    """Bounding box of the image content (the hand), trimming uniform borders.

    An outer row (column) is trimmed while the standard deviation of its intensities, on a
    smoothed copy of at most 192 px, is below ``uniform_tolerance`` times the image's
    1st-99th percentile range. Rows crossing any structure are kept, so the box never cuts the hand.
    A margin of ``margin_fraction`` of each side is added back. When almost nothing would remain
    (a blank or nearly uniform image), the full frame is returned.

    Args:
        pixels: 2-D float image in [0, 1].
        uniform_tolerance: relative standard deviation below which a row/column counts as empty.
        margin_fraction: margin added on each side, as a fraction of the box side.

    Returns:
        ``(row0, col0, row1, col1)`` in original pixels, ``row1``/``col1`` exclusive.
    """
    rows, cols = pixels.shape
    small, row_factor, col_factor = _downsample_for_analysis(pixels)
    lo, hi = np.percentile(small, (1.0, 99.0))
    span = float(hi - lo)
    if span < 1e-6:
        return 0, 0, rows, cols
    threshold = uniform_tolerance * span
    row_std = small.std(axis=1)
    col_std = small.std(axis=0)
    busy_rows = np.flatnonzero(row_std > threshold)
    busy_cols = np.flatnonzero(col_std > threshold)
    if busy_rows.size < 0.2 * small.shape[0] or busy_cols.size < 0.2 * small.shape[1]:
        return 0, 0, rows, cols
    r0, r1 = busy_rows[0], busy_rows[-1] + 1
    c0, c1 = busy_cols[0], busy_cols[-1] + 1
    r0, r1 = r0 * row_factor, r1 * row_factor
    c0, c1 = c0 * col_factor, c1 * col_factor
    margin_r = margin_fraction * (r1 - r0)
    margin_c = margin_fraction * (c1 - c0)
    row0 = int(max(0, np.floor(r0 - margin_r)))
    row1 = int(min(rows, np.ceil(r1 + margin_r)))
    col0 = int(max(0, np.floor(c0 - margin_c)))
    col1 = int(min(cols, np.ceil(c1 + margin_c)))
    if row1 - row0 < 8 or col1 - col0 < 8:
        return 0, 0, rows, cols
    return row0, col0, row1, col1


def normalise_intensity(pixels: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> np.ndarray:
    """Per-image percentile window to [0, 1].

    Args:
        pixels: float image.
        percentiles: lower and upper percentile mapped to 0 and 1.

    Returns:
        float32 image clipped to [0, 1].
    """
    lo, hi = np.percentile(pixels, percentiles)
    if hi - lo < 1e-6:
        return np.zeros_like(pixels, dtype=np.float32)
    return np.clip((pixels - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def prepare_model_input(
    image: np.ndarray,
    size: int,
    crop_to_hand: bool = True,
    window: tuple[float, float] = WINDOW_PERCENTILES,
) -> tuple[np.ndarray, CropTransform]:
    """Crop to the hand, squash to ``size x size`` (aspect ignored) and normalise intensity.

    Args:
        image: 2-D radiograph (bone bright), any numeric dtype; see :func:`as_pixels`.
        size: side of the square output.
        crop_to_hand: when False, the full frame is used.
        window: lower and upper percentiles of the intensity window (see :func:`normalise_intensity`).

    Returns:
        ``(model_input, transform)``: float32 ``size x size`` array in [0, 1], and the
        :class:`CropTransform` back to the original pixels.
    """
    pixels = as_pixels(image)
    if crop_to_hand:
        row0, col0, row1, col1 = hand_bounding_box(pixels)
    else:
        row0, col0, row1, col1 = 0, 0, *pixels.shape
    crop = pixels[row0:row1, col0:col1]
    resized = _resize(crop, size, size)
    model_input = normalise_intensity(resized, window)
    return model_input, CropTransform(row0, col0, row1, col1, size, (pixels.shape[0], pixels.shape[1]))


# ------------------------------------------------------------------------------------------------
# Upright: one orientation decision, used by every method
# ------------------------------------------------------------------------------------------------
#: A hand whose fingers lean less than this (degrees) is read as given. Every other hand is turned
#: to the same canonical pose, so a film and the same film tilted read alike: with 8 degrees, a film
#: leaning -5 and its +10 tilt (+5) were read 10 degrees apart, and the multi-step age moved 4-5
#: months on average; with 2 (above the ~0.5 degree noise of the finger direction) 3.3-3.4.
TILT_TOLERANCE_DEG = 2.0


@dataclass(frozen=True)
class UprightTransform:
    """How a film was turned upright, and how to map results back onto it.

    The upright film is ``np.rot90(film, quarter_turns)`` rotated further counter-clockwise by
    ``angle_deg`` about its centre, on a canvas of the quarter-turned film's own size: the hand
    sits in the middle of a film, what leaves the canvas is the film's corners, and the models
    then see the hand framed as on the films they were trained on.

    Attributes:
        quarter_turns: counter-clockwise quarter turns (``np.rot90``), 0-3.
        angle_deg: remaining counter-clockwise rotation in degrees (0 when none).
        original_shape: ``(rows, cols)`` of the film as given.
        upright_shape: ``(rows, cols)`` of the upright film.
    """

    quarter_turns: int
    angle_deg: float
    original_shape: tuple[int, int]
    upright_shape: tuple[int, int]

    @property
    def identity(self) -> bool:
        """True when the film was read as given."""
        return self.quarter_turns == 0 and self.angle_deg == 0.0

    @property
    def total_deg(self) -> float:
        """The whole counter-clockwise rotation applied, in degrees."""
        return 90.0 * self.quarter_turns + self.angle_deg

    def _matrix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        theta = np.deg2rad(self.angle_deg)
        # (row, col) with rows pointing down: a counter-clockwise turn on screen.
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        turned = self.original_shape if self.quarter_turns % 2 == 0 else self.original_shape[::-1]
        centre_in = (np.array(turned, float) - 1) / 2
        centre_out = (np.array(self.upright_shape, float) - 1) / 2
        return rot, centre_in, centre_out

    def apply(self, image: np.ndarray, order: int = 1, fill: float = 0.0) -> np.ndarray:
        """Turn an image of the film's shape upright.

        Args:
            image: 2-D array of ``original_shape``.
            order: spline order (1 for pixels, 0 for label maps).
            fill: value outside the film.

        Returns:
            Array of ``upright_shape``.
        """
        from scipy import ndimage

        out = np.rot90(image, self.quarter_turns)
        if self.angle_deg == 0.0:
            return np.ascontiguousarray(out)
        rot, centre_in, centre_out = self._matrix()
        # affine_transform maps output coordinates to input ones: the inverse rotation.
        inverse = rot.T
        return ndimage.affine_transform(out, inverse, offset=centre_in - inverse @ centre_out,
                                        output_shape=self.upright_shape, order=order, mode="constant", cval=fill)

    def to_original(self, image: np.ndarray) -> np.ndarray:
        """Map an upright image (e.g. a label map) back onto the film as given (nearest neighbour).

        Args:
            image: 2-D array of ``upright_shape``.

        Returns:
            Array of ``original_shape`` (0 where the upright image has no pixel).
        """
        from scipy import ndimage

        out = image
        if self.angle_deg != 0.0:
            rot, centre_in, centre_out = self._matrix()
            turned = self.original_shape if self.quarter_turns % 2 == 0 else self.original_shape[::-1]
            out = ndimage.affine_transform(image, rot, offset=centre_out - rot @ centre_in,
                                           output_shape=turned, order=0, mode="constant", cval=0)
        return np.ascontiguousarray(np.rot90(out, -self.quarter_turns))


def upright_transform(shape: tuple[int, int], finger_angle_deg: float | None,
                      tolerance_deg: float = TILT_TOLERANCE_DEG) -> UprightTransform:
    """The turn that puts a hand's fingers up.

    Args:
        shape: ``(rows, cols)`` of the film.
        finger_angle_deg: direction the fingers point, degrees counter-clockwise from up
            (:attr:`boneage.segment.FilmReading.finger_angle_deg`); ``None``: read as given.
        tolerance_deg: a lean up to this is left as it is.

    Returns:
        :class:`UprightTransform` (the identity when nothing needs turning).
    """
    rows, cols = int(shape[0]), int(shape[1])
    if finger_angle_deg is None or not np.isfinite(finger_angle_deg):
        return UprightTransform(0, 0.0, (rows, cols), (rows, cols))
    turn = -float(finger_angle_deg)  # counter-clockwise turn that brings the fingers up
    quarters = int(np.round(turn / 90.0))
    rest = turn - 90.0 * quarters
    if abs(rest) <= tolerance_deg:
        rest = 0.0
    quarters %= 4
    turned = (rows, cols) if quarters % 2 == 0 else (cols, rows)
    return UprightTransform(quarters, rest, (rows, cols), turned)


def film_background(pixels: np.ndarray) -> float:
    """Grey value of the film's background (median of its outer frame), used to fill turned corners."""
    x = np.asarray(pixels)
    k = max(1, min(x.shape) // 50)
    frame = np.concatenate([x[:k].ravel(), x[-k:].ravel(), x[:, :k].ravel(), x[:, -k:].ravel()])
    return float(np.median(frame))


def rotate_film(pixels: np.ndarray, angle_deg: float) -> tuple[np.ndarray, UprightTransform]:
    """Rotate a film counter-clockwise by ``angle_deg`` (same canvas as :class:`UprightTransform`,
    corners filled with its background): used to make turned and tilted films.

    Args:
        pixels: 2-D film.
        angle_deg: counter-clockwise rotation in degrees.

    Returns:
        ``(rotated, transform)``.
    """
    transform = upright_transform(pixels.shape, -angle_deg, tolerance_deg=0.0)
    return transform.apply(pixels, order=1, fill=film_background(pixels)).astype(np.float32), transform

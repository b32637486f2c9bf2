"""Shared preprocessing: crop box, intensity window, squash to a model input and the way back."""

from __future__ import annotations

import numpy as np
import pytest

from boneage.preprocess import CropTransform, as_pixels, hand_bounding_box, normalise_intensity, prepare_model_input
from boneage.preprocess import TILT_TOLERANCE_DEG, film_background, rotate_film, upright_transform


def _synthetic_hand(rows: int = 300, cols: int = 220, seed: int = 0) -> np.ndarray:
    """A dark film with a bright textured 'hand' block and a forearm reaching the bottom edge."""
    rng = np.random.default_rng(seed)
    img = np.full((rows, cols), 0.08, dtype=np.float32)
    img[60:rows, 70:150] = 0.6 + 0.2 * rng.random((rows - 60, 80))
    img[30:120, 40:180] = 0.5 + 0.3 * rng.random((90, 140))
    return img


def test_output_shape_range_and_dtype():
    model_input, transform = prepare_model_input(_synthetic_hand(), 96)
    assert model_input.shape == (96, 96)
    assert model_input.dtype == np.float32
    assert 0.0 <= model_input.min() and model_input.max() <= 1.0
    assert model_input.max() - model_input.min() > 0.5
    assert transform.size == 96 and transform.original_shape == (300, 220)


def test_box_trims_uniform_padding_and_keeps_the_hand():
    hand = _synthetic_hand()
    padded = np.pad(hand, ((80, 80), (100, 100)), constant_values=0.0)
    row0, col0, row1, col1 = hand_bounding_box(padded)
    # The content of the padded image (hand block rows 30.., cols 40..180, shifted) is inside the box.
    assert row0 <= 80 + 30 and col0 <= 100 + 40 and row1 >= 80 + 300 - 2 and col1 >= 100 + 180
    # Most of the padding is gone.
    assert row0 > 60 and col0 > 80 and col1 < 100 + 220 + 20


def test_uniform_image_falls_back_to_full_frame():
    assert hand_bounding_box(np.full((50, 40), 0.3, dtype=np.float32)) == (0, 0, 50, 40)


def test_crop_independent_of_added_border_of_background_value():
    hand = _synthetic_hand()
    background = float(hand[0, 0])
    plain, _ = prepare_model_input(hand, 64)
    bordered, _ = prepare_model_input(np.pad(hand, 40, constant_values=background), 64)
    assert np.abs(plain - bordered).mean() < 0.05


def test_transform_round_trip_and_back_to_original_pixels():
    hand = np.pad(_synthetic_hand(), ((50, 10), (30, 70)), constant_values=0.0)
    model_input, transform = prepare_model_input(hand, 128)
    rows, cols = np.array([0.0, 10.5, 127.0]), np.array([3.0, 64.0, 127.0])
    back_rows, back_cols = transform.to_model(*transform.to_original(rows, cols))
    np.testing.assert_allclose(back_rows, rows, atol=1e-9)
    np.testing.assert_allclose(back_cols, cols, atol=1e-9)
    # A bright point in the model input maps to a bright pixel of the original.
    r, c = np.unravel_index(np.argmax(model_input), model_input.shape)
    orow, ocol = transform.to_original(r, c)
    assert hand[int(round(float(orow))), int(round(float(ocol)))] > 0.4


def test_mask_to_original_places_labels_inside_the_crop():
    transform = CropTransform(row0=10, col0=20, row1=110, col1=70, size=50, original_shape=(120, 90))
    mask = np.zeros((50, 50), dtype=np.uint8)
    mask[25:, :] = 3
    full = transform.mask_to_original(mask)
    assert full.shape == (120, 90)
    assert full[:10].max() == 0 and full[:, :20].max() == 0 and full[110:].max() == 0
    assert full[60:110, 20:70].min() == 3 and full[10:59, 20:70].max() == 0


def test_as_pixels_dtypes_and_errors():
    assert as_pixels(np.full((10, 10), 255, np.uint8)).max() == pytest.approx(1.0)
    assert as_pixels(np.full((10, 10), 65535, np.uint16)).max() == pytest.approx(1.0)
    scaled = as_pixels(np.linspace(-5, 5, 100).reshape(10, 10))
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    with pytest.raises(ValueError):
        as_pixels(np.zeros(10))
    with pytest.raises(ValueError):
        as_pixels(np.full((10, 10), np.nan))


def test_normalise_intensity_window():
    img = np.linspace(0.2, 0.6, 10_000, dtype=np.float32).reshape(100, 100)
    out = normalise_intensity(img)
    assert out.min() == 0.0 and out.max() == 1.0
    assert normalise_intensity(np.full((5, 5), 0.4)).max() == 0.0


def test_real_films_crop_keeps_most_of_the_frame(rsna_dev):
    from PIL import Image

    files = sorted((rsna_dev / "images").glob("*.jpg"))[:10]
    for file in files:
        pixels = np.asarray(Image.open(file).convert("L"))
        row0, col0, row1, col1 = hand_bounding_box(as_pixels(pixels))
        # The hand fills most of an RSNA film: the content box never shrinks below half a side.
        assert (row1 - row0) > 0.5 * pixels.shape[0] and (col1 - col0) > 0.5 * pixels.shape[1], file.name


def test_marker_robust_window_keeps_bones_bright_next_to_a_large_marker():
    from boneage.preprocess import MARKER_ROBUST_WINDOW

    image = np.full((200, 200), 0.1, np.float32)
    image[40:160, 60:140] = 0.3  # soft tissue
    image[50:150, 90:110] = 0.5  # a bone
    image[10:30, 10:30] = 1.0  # lead marker: 1 % of the frame, above the 99.5th percentile's reach
    default, _ = prepare_model_input(image, 100, crop_to_hand=False)
    robust, _ = prepare_model_input(image, 100, crop_to_hand=False, window=MARKER_ROBUST_WINDOW)
    bone = (slice(30, 70), slice(47, 53))
    assert default[bone].mean() < 0.5  # the marker sets the top of the window: the bone is dim
    assert robust[bone].mean() > 0.95  # the bone reaches the top of the window


# as_pixels scales exactly like Radiograph.from_array (one implementation, issue #17).
def _film(dtype=np.int64) -> np.ndarray:
    film = np.full((40, 30), 20, np.int64)
    film[8:32, 6:24] = 230
    return film.astype(dtype)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _film(np.uint16),  # 8-bit data in a 16-bit array
        lambda: _film(np.int64),
        lambda: (_film() * 16).astype(np.uint16),  # 12-bit data
        lambda: _film(np.float64) * 3.0,
        lambda: np.repeat(_film(np.uint16)[..., None], 3, axis=-1),  # RGB
    ],
)
def test_as_pixels_scales_like_from_array(make):
    from boneage.io import Radiograph

    arr = make()
    np.testing.assert_array_equal(as_pixels(arr), Radiograph.from_array(arr).pixels)


def test_as_pixels_integer_data_use_their_real_bit_depth():
    assert as_pixels(_film(np.uint16)).max() == pytest.approx(230 / 255)
    assert as_pixels((_film() * 16).astype(np.uint16)).max() == pytest.approx(3680 / 4095, abs=1e-6)


def test_as_pixels_one_infinite_pixel_does_not_blank_the_image():
    film = _film(np.float64)
    film[0, 0] = np.inf
    out = as_pixels(film)
    assert np.isfinite(out).all() and out.max() == 1.0 and out.std() > 0.1 and out[0, 0] == 0.0


# --- upright: one orientation decision -------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 90.0, -90.0, 180.0, 15.0, -20.0, 110.0])
def test_upright_transform_round_trips_a_label_map(angle):
    labels = np.zeros((90, 60), np.uint8)
    labels[30:60, 25:35] = 3
    t = upright_transform(labels.shape, angle, tolerance_deg=0.0)
    up = t.apply(labels, order=0)
    assert up.shape == t.upright_shape
    back = t.to_original(up)
    assert back.shape == labels.shape
    assert (back == labels).mean() > 0.99


def test_upright_transform_turns_the_fingers_up():
    # A bar pointing right (fingers at -90 degrees: clockwise of up) becomes a bar pointing up.
    img = np.zeros((80, 80), np.float32)
    img[38:42, 40:75] = 1.0
    img[35:45, 70:75] = 1.0  # the "tip" end
    t = upright_transform(img.shape, -90.0)
    assert t.quarter_turns == 1 and t.angle_deg == 0.0
    up = t.apply(img)
    rows = np.nonzero(up > 0.5)[0]
    tip_rows = np.nonzero(up[:, 35:45].sum(1) > 5)[0]
    assert rows.max() - rows.min() > 30 and tip_rows.mean() < 40  # vertical, tip at the top


def test_a_small_lean_is_left_alone_and_a_tilt_is_undone():
    assert upright_transform((50, 40), TILT_TOLERANCE_DEG - 1).identity
    assert upright_transform((50, 40), None).identity
    t = upright_transform((50, 40), 20.0)
    assert t.quarter_turns == 0 and t.angle_deg == pytest.approx(-20.0)


def test_rotate_film_fills_corners_with_the_background():
    img = np.full((60, 40), 0.1, np.float32)
    img[20:40, 15:25] = 0.9
    turned, _ = rotate_film(img, 30.0)
    assert turned.shape == img.shape and film_background(img) == pytest.approx(0.1)
    assert turned[0, 0] == pytest.approx(0.1, abs=1e-3)
    # Rotating back restores the centre.
    back, _ = rotate_film(turned, -30.0)
    assert np.abs(back[25:35, 17:23] - 0.9).max() < 0.05


@pytest.mark.parametrize("shape,out", [((1500, 1100), (256, 256)), ((2100, 900), (192, 120)), ((700, 520), (384, 384))])
def test_strip_wise_resize_of_a_big_film_matches_one_pil_resize(shape, out, monkeypatch):
    # Big films are resized in strips (one film-sized copy fewer at the peak): the same pixels up to
    # float rounding; films under the size where that starts are resized at once, bit for bit.
    from PIL import Image

    from boneage import preprocess

    crop = np.random.default_rng(5).random(shape, dtype=np.float32)[3:-2, 4:-1]  # a non-contiguous crop
    for resample in (Image.Resampling.BILINEAR, Image.Resampling.BOX):
        whole = np.asarray(Image.fromarray(np.ascontiguousarray(crop), mode="F").resize(out[::-1], resample,
                                                                                           reducing_gap=None))
        assert np.array_equal(preprocess._pil_resize(crop, *out, resample), whole)  # under the size: at once
        monkeypatch.setattr(preprocess, "_STRIP_MIN_PIXELS", 0)
        assert np.abs(preprocess._pil_resize(crop, *out, resample) - whole).max() <= 1e-6
        monkeypatch.undo()

"""Tests of the ADM centre crop and of the image pre- and post-processing."""

import numpy as np
import pytest
import torch
from PIL import Image

from tokenset_diffusers.image_processing import center_crop_arr, postprocess_images, preprocess_images


def striped_image(width: int, height: int, vertical: bool = True) -> Image.Image:
    """Three bands (red, green, blue) across the long axis: a centre crop of a 3:1 image is the green band."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    length = width if vertical else height
    for band in range(3):
        index = slice(band * length // 3, (band + 1) * length // 3)
        if vertical:
            array[:, index, band] = 255
        else:
            array[index, :, band] = 255
    return Image.fromarray(array)


def random_array(height: int, width: int, seed: int = 0, channels: int | None = 3) -> np.ndarray:
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# centre crop
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vertical", [True, False])
def test_center_crop_keeps_the_centre_of_non_square_images(vertical):
    width, height = (600, 200) if vertical else (200, 600)
    cropped = np.asarray(center_crop_arr(striped_image(width, height, vertical), 32)).astype(int)
    assert cropped.shape == (32, 32, 3)
    # the middle band is green; resampling may only blur the outermost column/row
    inner = cropped[:, 1:-1] if vertical else cropped[1:-1, :]
    assert (inner[..., 1] >= 250).all() and (inner[..., 0] <= 5).all() and (inner[..., 2] <= 5).all()


def test_center_crop_without_resizing_is_a_plain_crop():
    """Short side already equal to the target: no halving, bicubic resize to the same size, centred cut with the
    offset rounded down."""
    array = random_array(101, 64)  # height 101, width 64
    cropped = np.asarray(center_crop_arr(Image.fromarray(array), 64))
    np.testing.assert_array_equal(cropped, array[18:82])  # (101 - 64) // 2 = 18


def test_center_crop_halves_with_box_filter():
    """64x64 -> 16: two BOX halvings give the 4x4 block means (rounded to uint8 twice, so within 2), and the final
    bicubic resize to the same size changes nothing. A direct bicubic downscale differs by far more on random data."""
    array = random_array(64, 64)
    cropped = np.asarray(center_crop_arr(Image.fromarray(array), 16)).astype(float)
    block_means = array.astype(float).reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    assert np.abs(cropped - block_means).max() <= 2.0
    direct = np.asarray(Image.fromarray(array).resize((16, 16), resample=Image.BICUBIC)).astype(float)
    assert np.abs(direct - block_means).mean() > 3


def test_center_crop_output_size_for_odd_shapes():
    for size in [(1000, 333), (333, 1000), (17, 5), (5, 17), (300, 300)]:
        assert center_crop_arr(Image.new("RGB", size, (10, 20, 30)), 24).size == (24, 24)
        assert np.all(np.asarray(center_crop_arr(Image.new("RGB", size, (10, 20, 30)), 24)) == (10, 20, 30))


def test_center_crop_errors():
    with pytest.raises(ValueError, match="PIL.Image"):
        center_crop_arr(np.zeros((4, 4, 3), dtype=np.uint8), 4)
    with pytest.raises(ValueError, match="image_size"):
        center_crop_arr(Image.new("RGB", (8, 8)), 0)


# ----------------------------------------------------------------------------------------------------------------------
# preprocess
# ----------------------------------------------------------------------------------------------------------------------


def test_preprocess_shape_dtype_and_range():
    images = [Image.fromarray(random_array(40, 50, seed=i)) for i in range(3)]
    pixel_values = preprocess_images(images, 32)
    assert pixel_values.shape == (3, 3, 32, 32)
    assert pixel_values.dtype == torch.float32
    assert pixel_values.min() >= -1 and pixel_values.max() <= 1
    # exact endpoints: 0 -> -1, 255 -> 1
    black_white = preprocess_images([np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)], 8)
    assert (black_white[0] == -1).all() and (black_white[1] == 1).all()


def test_preprocess_matches_center_crop():
    image = Image.fromarray(random_array(70, 90))
    expected = np.asarray(center_crop_arr(image, 32)).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(preprocess_images(image, 32)[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_preprocess_accepts_arrays_pil_and_mixed_lists():
    array = random_array(32, 32)
    from_array = preprocess_images(array, 32)
    from_pil = preprocess_images(Image.fromarray(array), 32)
    assert from_array.shape == (1, 3, 32, 32)
    torch.testing.assert_close(from_array, from_pil, rtol=0, atol=0)
    mixed = preprocess_images([array, Image.fromarray(array)], 32)
    torch.testing.assert_close(mixed, from_array.repeat(2, 1, 1, 1), rtol=0, atol=0)
    # RGBA: alpha is dropped
    rgba = np.concatenate([array, np.zeros((32, 32, 1), np.uint8)], axis=-1)
    torch.testing.assert_close(preprocess_images(rgba, 32), from_array, rtol=0, atol=0)


@pytest.mark.parametrize(
    "gray",
    [
        random_array(16, 16, channels=None),
        random_array(16, 16, channels=1),
        Image.fromarray(random_array(16, 16, channels=None)),  # mode "L"
    ],
    ids=["array-2d", "array-1-channel", "pil-L"],
)
def test_preprocess_grayscale_becomes_rgb(gray):
    pixel_values = preprocess_images(gray, 16)
    assert pixel_values.shape == (1, 3, 16, 16)
    torch.testing.assert_close(pixel_values[:, 0], pixel_values[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(pixel_values[:, 0], pixel_values[:, 2], rtol=0, atol=0)
    expected = torch.from_numpy(random_array(16, 16, channels=None)).float() / 127.5 - 1
    torch.testing.assert_close(pixel_values[0, 0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "images, image_size, message",
    [
        (np.zeros((8, 8, 3), dtype=np.float32), 8, "uint8"),
        (np.zeros((8, 8, 2), dtype=np.uint8), 8, "shape"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), 8, "shape"),
        ("image.png", 8, "PIL image"),
        ([], 8, "at least one"),
        ([Image.new("RGB", (8, 8)), torch.zeros(3, 8, 8)], 8, r"images\[1\]"),
        (Image.new("RGB", (8, 8)), 0, "image_size"),
        (Image.new("RGB", (8, 8)), 8.0, "image_size"),
    ],
)
def test_preprocess_errors(images, image_size, message):
    with pytest.raises(ValueError, match=message):
        preprocess_images(images, image_size)


# ----------------------------------------------------------------------------------------------------------------------
# postprocess
# ----------------------------------------------------------------------------------------------------------------------


def test_postprocess_output_types():
    images = torch.linspace(-1.5, 1.5, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    as_pt = postprocess_images(images, "pt")
    as_np = postprocess_images(images, "np")
    as_pil = postprocess_images(images, "pil")
    assert as_pt.shape == (2, 3, 4, 5) and as_pt.min() == 0 and as_pt.max() == 1
    assert as_np.shape == (2, 4, 5, 3) and as_np.dtype == np.float32
    np.testing.assert_allclose(as_np, as_pt.permute(0, 2, 3, 1).numpy())
    torch.testing.assert_close(as_pt, ((images + 1) / 2).clamp(0, 1))
    assert len(as_pil) == 2 and all(image.size == (5, 4) and image.mode == "RGB" for image in as_pil)
    np.testing.assert_array_equal(np.asarray(as_pil[1]), (as_np[1] * 255).round().astype(np.uint8))


def test_pre_and_postprocess_round_trip():
    image = Image.fromarray(random_array(48, 60))
    restored = postprocess_images(preprocess_images(image, 32), "pil")[0]
    np.testing.assert_array_equal(np.asarray(restored), np.asarray(center_crop_arr(image, 32)))


@pytest.mark.parametrize(
    "images, output_type, message",
    [
        (torch.zeros(1, 3, 4, 4), "latent", "output_type"),
        (torch.zeros(3, 4, 4), "pil", "shape"),
        (torch.zeros(1, 1, 4, 4), "np", "shape"),
        (np.zeros((1, 3, 4, 4)), "pt", "torch.Tensor"),
    ],
)
def test_postprocess_errors(images, output_type, message):
    with pytest.raises(ValueError, match=message):
        postprocess_images(images, output_type)

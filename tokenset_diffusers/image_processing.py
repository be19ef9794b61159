"""Image pre- and post-processing for the set tokenizer: ADM centre crop to [-1, 1] tensors, and back."""

from typing import Literal

import numpy as np
import torch
from PIL import Image


ImageInput = Image.Image | np.ndarray


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """
    ADM centre crop (the TokenSet / DiT / ADM ImageNet pre-processing).

    1. While the short side is at least `2 * image_size`, halve both sides (integer division) with a BOX filter.
    2. Resize with BICUBIC so that the short side is `image_size` (the long side is scaled by the same factor and
       rounded).
    3. Cut the centred `image_size x image_size` square (offsets rounded down).

    Args:
        pil_image (`PIL.Image.Image`): the image, any size and mode.
        image_size (`int`): side of the square result, in pixels.

    Returns:
        `PIL.Image.Image` of size `(image_size, image_size)`, in the mode of the input.
    """
    if not isinstance(pil_image, Image.Image):
        raise ValueError(f"`pil_image` must be a PIL.Image.Image, got {type(pil_image).__name__}.")
    _check_image_size(image_size)
    if min(pil_image.size) < 1:
        raise ValueError(f"`pil_image` must not be empty, got size {pil_image.size}.")
    # 1. cheap anti-aliased halving while far above the target
    while min(pil_image.size) >= 2 * image_size:
        half_size = (pil_image.size[0] // 2, pil_image.size[1] // 2)
        pil_image = pil_image.resize(half_size, resample=Image.BOX)
    # 2. short side to image_size
    scale = image_size / min(pil_image.size)
    scaled_size = (round(pil_image.size[0] * scale), round(pil_image.size[1] * scale))
    pil_image = pil_image.resize(scaled_size, resample=Image.BICUBIC)
    # 3. centre square
    left = (pil_image.size[0] - image_size) // 2
    top = (pil_image.size[1] - image_size) // 2
    return pil_image.crop((left, top, left + image_size, top + image_size))


def _check_image_size(image_size: int):
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive integer, got {image_size!r}.")


def _to_rgb_pil(image: ImageInput, index: int) -> Image.Image:
    """A PIL image or an `(H, W)`, `(H, W, 1)`, `(H, W, 3)` or `(H, W, 4)` uint8 array -> an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"`images[{index}]` must be a uint8 array with values in [0, 255], got dtype {image.dtype}. "
                "Convert float images with `(x * 255).round().astype(np.uint8)`."
            )
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            return Image.fromarray(image).convert("RGB")
        if image.ndim == 3 and image.shape[-1] in (3, 4):
            return Image.fromarray(image).convert("RGB")
        raise ValueError(
            f"`images[{index}]` must be an array of shape (height, width), (height, width, 1), (height, width, 3) "
            f"or (height, width, 4), got {image.shape}."
        )
    raise ValueError(
        f"`images[{index}]` must be a PIL.Image.Image or a numpy uint8 array, got {type(image).__name__}."
    )


def preprocess_images(images: ImageInput | list[ImageInput], image_size: int) -> torch.FloatTensor:
    """
    Images -> the set tokenizer's input: ADM centre crop ([`center_crop_arr`]) and scaling to [-1, 1].

    Args:
        images (`PIL.Image.Image`, `np.ndarray` or a list of them):
            One image or a list of images. Arrays are `uint8` of shape `(height, width, 3)` (RGB), `(height, width, 4)`
            (RGBA, alpha dropped) or `(height, width)` / `(height, width, 1)` (grayscale); PIL images may have any
            mode. Grayscale becomes RGB by repeating the channel.
        image_size (`int`):
            Side of the square output, e.g. `image_tokenizer.config.image_size`.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, 3, image_size, image_size)`, float32 in [-1, 1].
    """
    _check_image_size(image_size)
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    if not isinstance(images, (list, tuple)):
        raise ValueError(
            f"`images` must be a PIL image, a numpy uint8 array or a list of them, got {type(images).__name__}."
        )
    if len(images) == 0:
        raise ValueError("`images` must contain at least one image, got an empty list.")
    arrays = [np.asarray(center_crop_arr(_to_rgb_pil(image, i), image_size)) for i, image in enumerate(images)]
    batch = torch.from_numpy(np.stack(arrays))  # (B, S, S, 3) uint8
    batch = batch.permute(0, 3, 1, 2).float()  # (B, 3, S, S) in [0, 255]
    return batch / 127.5 - 1.0  # (B, 3, S, S) in [-1, 1]


def postprocess_images(
    images: torch.Tensor, output_type: Literal["pil", "np", "pt"] = "pil"
) -> list[Image.Image] | np.ndarray | torch.Tensor:
    """
    The set tokenizer's output -> displayable images, as diffusers' image processors return them.

    Args:
        images (`torch.Tensor` of shape `(batch_size, 3, height, width)`):
            Images in [-1, 1] (values outside are clipped).
        output_type (`str`, *optional*, defaults to `"pil"`):
            `"pil"`: a list of RGB `PIL.Image.Image`; `"np"`: a float32 array `(batch_size, height, width, 3)` in
            [0, 1]; `"pt"`: a float32 tensor `(batch_size, 3, height, width)` in [0, 1].

    Returns:
        `list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`, see `output_type`.
    """
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', got {output_type!r}.")
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"`images` must be a torch.Tensor, got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`images` must have shape (batch_size, 3, height, width), got {tuple(images.shape)}.")
    images = (images.detach().float() / 2 + 0.5).clamp(0, 1)  # (B, 3, H, W) in [0, 1]
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    if output_type == "np":
        return array
    return [Image.fromarray(image) for image in (array * 255).round().astype(np.uint8)]


__all__ = ["center_crop_arr", "postprocess_images", "preprocess_images"]

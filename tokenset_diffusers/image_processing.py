"""Image pre- and post-processing for the set tokenizer: ADM centre crop to [-1, 1] tensors, and back."""

from typing import Literal

import numpy as np
import torch
from PIL import Image

from .utils.validation import check_limit


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

    Raises:
        `ValueError` when the image, or the image step 2 scales it to, has more than `LIMITS["image_pixels"]` pixels
        (8192 x 8192 by default, see `tokenset_diffusers/utils/validation.py`): a thin image (1 x 1,000,000 px, a 2 KB
        PNG) would be scaled to gigabytes.
    """
    if not isinstance(pil_image, Image.Image):
        raise ValueError(f"`pil_image` must be a PIL.Image.Image, got {type(pil_image).__name__}.")
    _check_image_size(image_size)
    if min(pil_image.size) < 1:
        raise ValueError(f"`pil_image` must not be empty, got size {pil_image.size}.")
    check_limit("pil_image", pil_image.size[0] * pil_image.size[1], "image_pixels", f"pixels, size {pil_image.size}")
    # 1. cheap anti-aliased halving while far above the target
    while min(pil_image.size) >= 2 * image_size:
        half_size = (pil_image.size[0] // 2, pil_image.size[1] // 2)
        pil_image = pil_image.resize(half_size, resample=Image.BOX)
    # 2. short side to image_size
    scale = image_size / min(pil_image.size)
    scaled_size = (round(pil_image.size[0] * scale), round(pil_image.size[1] * scale))
    scaled_pixels = scaled_size[0] * scaled_size[1]
    check_limit("pil_image", scaled_pixels, "image_pixels", f"pixels once scaled to {scaled_size} for the centre crop")
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


MaskInput = Image.Image | np.ndarray | torch.Tensor


def image_input_size(image: ImageInput | torch.Tensor) -> tuple[int, int]:
    """`(height, width)` in pixels of a PIL image, an `(H, W, ...)` array, or a `(..., H, W)` tensor (image tensors
    are channels-first, `(3, H, W)` or `(B, 3, H, W)`; mask tensors `(H, W)`, `(1, H, W)` or `(B, 1, H, W)`)."""
    if isinstance(image, Image.Image):
        return image.size[1], image.size[0]
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return int(image.shape[0]), int(image.shape[1])
    if isinstance(image, torch.Tensor) and image.ndim >= 2:
        return int(image.shape[-2]), int(image.shape[-1])
    raise ValueError(
        f"Expected a PIL image, an array or a tensor of at least 2 dimensions, got {type(image).__name__}."
    )


def _mask_to_float_array(mask: MaskInput, index: int) -> np.ndarray:
    """One mask -> an `(H, W)` float32 array in [0, 1] (uint8 / PIL masks are divided by 255)."""
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().float().numpy()
    if not isinstance(mask, np.ndarray):
        raise ValueError(
            f"`mask_image[{index}]` must be a PIL image, a numpy array or a torch tensor, got {type(mask).__name__}."
        )
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    elif mask.ndim == 3 and mask.shape[-1] in (1, 3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(
            f"`mask_image[{index}]` must have shape (height, width), (1, height, width) or (height, width, 1), got "
            f"{mask.shape}."
        )
    if mask.dtype == np.uint8:
        return mask.astype(np.float32) / 255.0
    mask = mask.astype(np.float32)
    if mask.size and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(
            f"`mask_image[{index}]` must hold values in [0, 1] (or be uint8 in [0, 255]), got values in "
            f"[{mask.min()}, {mask.max()}]."
        )
    return mask


def preprocess_masks(mask_image: MaskInput | list[MaskInput], image_size: int) -> torch.BoolTensor:
    """
    Inpainting masks -> `(batch_size, image_size, image_size)` booleans, with diffusers' convention: white (1, 255)
    = regenerate, black (0) = keep.

    A mask of another size gets the same ADM centre crop as its image ([`center_crop_arr`], on float values), then
    every pixel is binarised at 0.5, as diffusers' mask processor does.

    Args:
        mask_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list of them): PIL masks of any mode (read
            as grayscale), arrays `(H, W)`, `(H, W, 1)` or `(H, W, 3/4)` (first channel) in [0, 1] or uint8 in [0,
            255], tensors `(H, W)`, `(1, H, W)` or `(B, 1, H, W)` in [0, 1].
        image_size (`int`): side of the square output.

    Returns:
        `torch.BoolTensor` of shape `(batch_size, image_size, image_size)`, True = regenerate.
    """
    _check_image_size(image_size)
    if isinstance(mask_image, torch.Tensor) and mask_image.ndim == 4:
        if mask_image.shape[1] != 1:
            raise ValueError(f"A 4-d `mask_image` must have shape (B, 1, H, W), got {tuple(mask_image.shape)}.")
        mask_image = list(mask_image)
    if not isinstance(mask_image, (list, tuple)):
        mask_image = [mask_image]
    if len(mask_image) == 0:
        raise ValueError("`mask_image` must contain at least one mask, got an empty list.")
    masks = []
    for index, mask in enumerate(mask_image):
        array = _mask_to_float_array(mask, index)  # (H, W) in [0, 1]
        if array.shape != (image_size, image_size):
            array = np.asarray(center_crop_arr(Image.fromarray(array, mode="F"), image_size))
        masks.append(torch.from_numpy(array >= 0.5))
    return torch.stack(masks)  # (B, S, S)


def mask_to_latent_grid(masks: torch.Tensor, grid_size: int) -> torch.BoolTensor:
    """
    Pixel masks -> latent-grid masks: a position is regenerated when any of its pixels is.

    Args:
        masks (`torch.Tensor` of shape `(batch_size, H, W)`): True / nonzero = regenerate; `H` and `W` multiples of
            `grid_size`.
        grid_size (`int`): the side of the latent grid (e.g. the transformer's `sample_size`).

    Returns:
        `torch.BoolTensor` of shape `(batch_size, grid_size * grid_size)`, positions row-major (the tokens' order).
    """
    _check_image_size(grid_size)
    if masks.ndim != 3 or masks.shape[1] % grid_size or masks.shape[2] % grid_size:
        raise ValueError(
            f"`masks` must have shape (batch_size, H, W) with H and W multiples of grid_size={grid_size}, got "
            f"{tuple(masks.shape)}."
        )
    batch_size, height, width = masks.shape
    cells = masks.bool().reshape(batch_size, grid_size, height // grid_size, grid_size, width // grid_size)
    return cells.any(dim=4).any(dim=2).reshape(batch_size, grid_size * grid_size)


def outpaint_canvas(
    image: ImageInput,
    canvas_size: int | tuple[int, int],
    offset: tuple[int, int] = (0, 0),
    fill: int | tuple[int, int, int] = 0,
) -> tuple[Image.Image, Image.Image]:
    """
    Outpainting as inpainting: `image` placed on a canvas, and the mask that regenerates everything else.

    The canvas may be larger than the image (extend it), the same size with an offset (shift it: what leaves the
    canvas is cut, what it uncovers is generated), or both. Pass the two results to [`TokenBridgeInpaintPipeline`] as
    `image` and `mask_image`.

    ```py
    >>> import torch
    >>> from tokenset_diffusers import TokenBridgeInpaintPipeline, TokenBridgePipeline, bundled_pipeline_path
    >>> from tokenset_diffusers import outpaint_canvas

    >>> pipeline = TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))
    >>> image = pipeline(3, generator=torch.Generator().manual_seed(0)).images[0]  # 8 x 8 pixels
    >>> canvas, mask = outpaint_canvas(image, canvas_size=8, offset=(4, 0))  # shifted right: the left half is new
    >>> inpaint = TokenBridgeInpaintPipeline.from_pipe(pipeline)
    >>> inpaint(image=canvas, mask_image=mask, class_labels=3).images[0]
    ```

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): the image (uint8 arrays as [`preprocess_images`] accepts them).
        canvas_size (`int` or `(width, height)`): the canvas size in pixels.
        offset (`(x, y)`, defaults to `(0, 0)`): where the image's top-left corner goes on the canvas; may be
            negative.
        fill (`int` or an RGB tuple, defaults to 0): the colour of the uncovered canvas (it is regenerated anyway;
            the VAE sees it only where a latent position is kept partially).

    Returns:
        `(canvas, mask)`: an RGB `PIL.Image.Image` of `canvas_size`, and an `"L"` mask of the same size, white (255)
        where the canvas holds no pixel of the image, black where it does.
    """
    image = _to_rgb_pil(image, 0)
    if isinstance(canvas_size, int) and not isinstance(canvas_size, bool):
        canvas_size = (canvas_size, canvas_size)
    if (
        not isinstance(canvas_size, (tuple, list))
        or len(canvas_size) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in canvas_size)
    ):
        raise ValueError(
            f"`canvas_size` must be a positive int or a (width, height) pair of them, got {canvas_size!r}."
        )
    if not isinstance(offset, (tuple, list)) or len(offset) != 2 or not all(isinstance(v, int) for v in offset):
        raise ValueError(f"`offset` must be an (x, y) pair of ints, got {offset!r}.")
    canvas_size, offset = tuple(canvas_size), tuple(offset)
    canvas = Image.new("RGB", canvas_size, fill if isinstance(fill, int) else tuple(fill))
    canvas.paste(image, offset)
    mask = Image.new("L", canvas_size, 255)
    mask.paste(Image.new("L", image.size, 0), offset)
    return canvas, mask


__all__ = [
    "center_crop_arr",
    "image_input_size",
    "mask_to_latent_grid",
    "outpaint_canvas",
    "postprocess_images",
    "preprocess_images",
    "preprocess_masks",
]

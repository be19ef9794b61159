"""Set interpolation: paths of fixed-sum count vectors between two token sets, decoded to strips of images."""

from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image
import torch
from diffusers.utils import BaseOutput

from ..image_processing import ImageInput
from ..pipeline_utils import IMAGE_OUTPUT_TYPES
from ..utils.sampling import GeneratorType
from ..utils.validation import check_choice, check_integer, check_limit, check_number
from .set_ops import quantize_to_sum


@dataclass
class SetInterpolationOutput(BaseOutput):
    """Output of [`interpolate_images`].

    Args:
        images (`list[PIL.Image.Image]`, or an array / tensor for `output_type` `"np"` / `"pt"`): the decoded path,
            from image A to image B.
        counts (`torch.LongTensor` of shape `(num_points, codebook_size)`): the count vectors decoded.
        path_counts (`torch.LongTensor` of shape `(num_points, codebook_size)`): the rounded weighted means, before
            any re-denoising.
        weights (`torch.FloatTensor` of shape `(num_points,)`): the weight of image B at every point.
    """

    images: list[PIL.Image.Image] | torch.Tensor
    counts: torch.LongTensor
    path_counts: torch.LongTensor
    weights: torch.FloatTensor


def interpolation_weights(num_points: int) -> torch.FloatTensor:
    """`num_points` evenly spaced weights from 0 (the first end) to 1 (the second end), float64. `num_points` is at
    most `LIMITS["interpolation_points"]` (10,000 by default, see `tokenset_diffusers/utils/validation.py`)."""
    num_points = check_integer("num_points", num_points, low=2)  # the two ends at least
    check_limit("num_points", num_points, "interpolation_points")
    return torch.linspace(0, 1, num_points, dtype=torch.float64)


def interpolate_counts(
    counts_a: torch.LongTensor, counts_b: torch.LongTensor, weights: torch.Tensor | Sequence[float]
) -> torch.LongTensor:
    """The path between two token sets: the fixed-sum rounding ([`quantize_to_sum`]) of `(1 - w) a + w b`.

    Each point is the nearest count vector to the weighted mean that still sums to M (every entry within 1 of the
    mean); `w = 0` gives `counts_a` and `w = 1` gives `counts_b` exactly.

    Args:
        counts_a, counts_b (`torch.LongTensor` of shape `(codebook_size,)` or `(batch_size, codebook_size)`): count
            vectors with equal sums M.
        weights (`torch.Tensor` or sequence of floats of shape `(num_points,)`): weights of `counts_b`, in [0, 1].

    Returns:
        `torch.LongTensor` of shape `(num_points, codebook_size)`, or `(batch_size, num_points, codebook_size)` for
        batched ends; every row sums to M.
    """
    for name, value in (("counts_a", counts_a), ("counts_b", counts_b)):
        if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or value.is_floating_point():
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"`{name}` must be an integer tensor (codebook_size,) or (batch_size, codebook_size), got {got}."
            )
        if (value < 0).any():
            raise ValueError(f"`{name}` must be non-negative counts.")
    if counts_a.shape != counts_b.shape:
        raise ValueError(
            f"`counts_a` and `counts_b` must have the same shape, got {tuple(counts_a.shape)} and "
            f"{tuple(counts_b.shape)}."
        )
    totals = torch.cat([counts_a.reshape(-1, counts_a.shape[-1]), counts_b.reshape(-1, counts_b.shape[-1])]).sum(-1)
    if (totals != totals[0]).any():
        raise ValueError(f"`counts_a` and `counts_b` must sum to the same M in every row, got sums {totals.tolist()}.")
    if hasattr(weights, "__len__"):  # before any copy: a path is (batch_size, num_points, codebook_size) float64
        check_limit("weights", len(weights), "interpolation_points", "points")
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or (weights > 1).any() or weights.isnan().any():
        raise ValueError(f"`weights` must be a non-empty 1-D sequence of numbers in [0, 1], got {weights.tolist()}.")
    batched = counts_a.ndim == 2
    ends_a = counts_a.reshape(-1, 1, counts_a.shape[-1]).double()  # (B, 1, C)
    ends_b = counts_b.reshape(-1, 1, counts_b.shape[-1]).double()  # (B, 1, C)
    weights = weights.to(counts_a.device)[None, :, None]  # (1, P, 1)
    means = torch.lerp(ends_a, ends_b, weights)  # (B, P, C), each row sums to M up to rounding
    batch_size, num_points, codebook_size = means.shape
    path = quantize_to_sum(means.reshape(-1, codebook_size), int(totals[0]))  # (B * P, C)
    path = path.view(batch_size, num_points, codebook_size)
    return path if batched else path[0]


def interpolate_images(
    pipeline: "TokenSetImg2ImgPipeline",  # noqa: F821
    image_a: ImageInput | torch.Tensor | None = None,
    image_b: ImageInput | torch.Tensor | None = None,
    num_points: int = 8,
    redenoise_strength: float = 0.0,
    class_labels: int | str | Sequence[int | str] | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float | Sequence[float] | None = None,
    generator: GeneratorType = None,
    output_type: str = "pil",
    counts_a: torch.LongTensor | None = None,
    counts_b: torch.LongTensor | None = None,
) -> SetInterpolationOutput:
    """A strip of images between two images (or two count vectors), through their token sets.

    The two ends are encoded to count vectors; the path is [`interpolate_counts`] at `num_points` even weights. With
    `redenoise_strength > 0` every inner point is briefly re-denoised with [`TokenSetImg2ImgPipeline`] (noised to
    `t = 1 - redenoise_strength` and denoised over the last steps of `num_inference_steps`), which pulls points that
    mix two sets back towards images the generator knows; the ends stay the two reconstructions.

    Args:
        pipeline ([`TokenSetImg2ImgPipeline`] or [`TokenSetPipeline`]): a plain pipeline is wrapped with `from_pipe`.
        image_a, image_b: the two ends, as [`TokenSetImg2ImgPipeline.prepare_counts`] accepts one image; or
        counts_a, counts_b (`torch.LongTensor` of shape `(codebook_size,)` or `(1, codebook_size)`): the ends as
            count vectors.
        num_points (`int`, defaults to 8): points on the path, both ends included.
        redenoise_strength (`float` in [0, 1], defaults to 0.0): 0 decodes the rounded means as they are.
        class_labels (*optional*): for re-denoising: one label for every inner point, one per inner point
            (`num_points - 2`), or `None` (unconditional).
        num_inference_steps, guidance_scale, generator: for re-denoising, as in [`TokenSetImg2ImgPipeline.__call__`].
        output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.

    Returns:
        [`SetInterpolationOutput`].
    """
    from .pipeline_tokenset_img2img import TokenSetImg2ImgPipeline

    check_choice("output_type", output_type, IMAGE_OUTPUT_TYPES)
    redenoise_strength = check_number("redenoise_strength", redenoise_strength, low=0.0, high=1.0)
    if not isinstance(pipeline, TokenSetImg2ImgPipeline):
        pipeline = TokenSetImg2ImgPipeline.from_pipe(pipeline)
    weights = interpolation_weights(num_points)
    ends = []
    for name, image, counts in (("a", image_a, counts_a), ("b", image_b, counts_b)):
        if counts is not None and counts.ndim == 1:
            counts = counts[None]
        if image is not None and isinstance(image, list):
            raise ValueError(f"`image_{name}` must be one image, got a list of {len(image)}.")
        prepared = pipeline.prepare_counts(image, counts)  # (1, C)
        if len(prepared) != 1:
            raise ValueError(f"End {name} must be one image or one count vector, got {len(prepared)}.")
        ends.append(prepared[0].cpu())
    path = interpolate_counts(ends[0], ends[1], weights)  # (P, C)
    counts = path.clone()
    if redenoise_strength > 0 and num_points > 2:
        labels = class_labels
        if isinstance(class_labels, (list, tuple)) and len(class_labels) not in (1, num_points - 2):
            raise ValueError(
                f"`class_labels` must be one label or one per inner point ({num_points - 2}), got {len(class_labels)}."
            )
        if class_labels is not None and not isinstance(class_labels, (list, tuple)):
            labels = [class_labels] * (num_points - 2)
        inner = pipeline(
            counts=path[1:-1].to(pipeline._execution_device),
            class_labels=labels,
            strength=redenoise_strength,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="counts",
        ).counts
        counts[1:-1] = inner.cpu()
    images = pipeline._decode(counts.to(pipeline._execution_device), output_type)
    return SetInterpolationOutput(images=images, counts=counts, path_counts=path, weights=weights.float())

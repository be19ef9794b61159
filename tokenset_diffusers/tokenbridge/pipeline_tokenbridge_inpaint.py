"""TokenBridgeInpaintPipeline: inpainting and outpainting with TokenBridge: the kept positions are known from the start
of the masked autoregressive schedule, the model generates the others."""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from ..image_processing import ImageInput, MaskInput, image_input_size, mask_to_latent_grid, preprocess_masks
from ..pipeline_utils import broadcast_batch
from ..utils.sampling import GeneratorType
from .pipeline_tokenbridge import TokenBridgePipeline, TokenBridgePipelineOutput


class TokenBridgeInpaintPipeline(TokenBridgePipeline):
    """Inpainting with TokenBridge (the diffusers inpaint habit, on masked-AR tokens; argument names and mask handling
    as diffusers' aMUSEd inpaint pipeline).

    The image is encoded with the VAE (posterior mean) and quantized to its tokens. The mask, white = regenerate and
    black = keep, is reduced to the latent grid (a position is regenerated when any of its pixels is white). The kept
    positions start the masked-AR schedule as already known; the sampler fills only the regenerated ones, with a
    schedule that counts only those, conditioned on the kept tokens, the class and guidance as in a plain call. An
    all-black mask returns the image's own tokens; an all-white mask is plain generation, draw for draw.

    Outpainting is inpainting on a larger or shifted canvas: see [`outpaint_canvas`].

    Shares its components, loading and helpers with [`TokenBridgePipeline`]; build one from a loaded pipeline with
    `TokenBridgeInpaintPipeline.from_pipe(pipeline)` or load a TokenBridge pipeline folder with `from_pretrained`.
    """

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | list[ImageInput] | torch.Tensor,
        mask_image: MaskInput | list[MaskInput],
        class_labels: int | str | Sequence[int | str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: Literal["linear", "constant"] = "linear",
        temperature: float | None = None,
        generator: GeneratorType = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["TokenBridgePipeline", int, int, dict[str, Any]], dict[str, Any]]
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents", "indices"),
        num_images_per_class: int = 1,
        batch_size: int | None = None,
    ) -> TokenBridgePipelineOutput | tuple:
        """Regenerates the white part of `mask_image` in `image`, on [`TokenBridgePipeline`]'s own sampling loop.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, a list of them, or `torch.Tensor`): the image(s) to edit, as
                [`TokenBridgePipeline.encode_images`] takes them (PIL images and uint8 arrays are centre-cropped to
                `image_size`; tensors `(B, 3, image_size, image_size)` in [-1, 1]).
            mask_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list of them): white (1 or 255) =
                regenerate, black (0) = keep, binarised at 0.5 ([`preprocess_masks`]); each mask must have the size of
                its image (`ValueError` otherwise). One mask for all images, or one per image; every image must
                regenerate the same number of latent positions (they are sampled as one batch).
            class_labels (`int`, `str`, a list of them, or `None`): the class(es) to generate with; `None` uses the
                unconditional embedding (guidance then changes nothing). One label for all images, one image for all
                labels, or as many of each.
            num_inference_steps (`int`, *optional*): masked-AR steps over the regenerated positions (at most their
                number: fewer positions than steps run one step per position); `None` uses
                `default_num_inference_steps`. An all-black mask runs no step.
            guidance_scale, guidance_schedule, temperature, generator, output_type, return_dict, callback_on_step_end,
            callback_on_step_end_tensor_inputs, num_images_per_class, batch_size: as in [`TokenBridgePipeline.__call__`].
                The linear guidance weight grows with the known share of the whole grid, kept positions included.
                In the step callback, `"mask"` is True at the positions still unknown (never a kept one).

        Returns:
            [`TokenBridgePipelineOutput`] or `(images, indices)`.
        """
        num_inference_steps, guidance_scale, temperature = self.check_sampling_arguments(
            num_inference_steps,
            guidance_scale,
            guidance_schedule,
            temperature,
            output_type,
            num_images_per_class,
            batch_size,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        start_indices, regenerate = self.prepare_inpainting(image, mask_image)  # (N_img, L, C), (N_mask, L)
        labels = self._labels_or_unconditional(class_labels, None)  # (N_labels,)
        start_indices, regenerate, labels = broadcast_batch(
            {"images": start_indices, "masks": regenerate, "class labels": labels}
        )
        num_generated = int(regenerate[0].sum())
        if not bool((regenerate.sum(dim=1) == num_generated).all()):
            raise ValueError(
                "Every mask must regenerate the same number of latent positions (the images are sampled as one "
                f"batch), got {regenerate.sum(dim=1).tolist()}; edit images with different masks in separate calls."
            )
        return self._sample(
            labels,
            num_images_per_class,
            min(num_inference_steps, num_generated),
            guidance_scale,
            guidance_schedule,
            temperature,
            generator,
            output_type,
            return_dict,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            batch_size,
            start_indices=start_indices,
            known=~regenerate,
            num_generated=num_generated,
        )

    @torch.no_grad()
    def prepare_inpainting(
        self, image: ImageInput | list[ImageInput] | torch.Tensor, mask_image: MaskInput | list[MaskInput]
    ) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """
        The image's tokens and the latent-grid mask.

        Returns:
            `(indices, regenerate)`: `torch.LongTensor` `(num_images, num_tokens, latent_channels)` and
            `torch.BoolTensor` `(num_masks, num_tokens)`, True = regenerate, positions row-major.
        """
        images = _as_list(image)
        masks = _as_list(mask_image)
        if len(images) != len(masks) and 1 not in (len(images), len(masks)):
            raise ValueError(
                f"Got {len(images)} images and {len(masks)} masks; pass one mask for all images, or one per image."
            )
        for index in range(max(len(images), len(masks))):
            image_size = image_input_size(images[min(index, len(images) - 1)])
            mask_size = image_input_size(masks[min(index, len(masks) - 1)])
            if image_size != mask_size:
                raise ValueError(
                    f"`mask_image` must have the size of its image: got a mask of {mask_size[1]}x{mask_size[0]} "
                    f"(width x height) for an image of {image_size[1]}x{image_size[0]}."
                )
        indices = self.encode_images(image)  # (N_img, L, C)
        pixel_masks = preprocess_masks(mask_image, self.image_size)  # (N_mask, S, S)
        regenerate = mask_to_latent_grid(pixel_masks, self.transformer.config.sample_size)  # (N_mask, L)
        return indices, regenerate.to(indices.device)


def _as_list(images: Any) -> list:
    """One image or mask, a list of them, or a batched tensor -> a list with one entry per image."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    return [images]


__all__ = ["TokenBridgeInpaintPipeline"]

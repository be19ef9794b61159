"""TokenSetImg2ImgPipeline: image variations with FSDD started from a noised copy of an image's count vector."""

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..image_processing import ImageInput, preprocess_images
from ..pipeline_utils import broadcast_batch
from ..utils.sampling import GeneratorType
from ..utils.validation import check_number
from .pipeline_tokenset import TokenSetPipeline, TokenSetPipelineOutput


class TokenSetImg2ImgPipeline(TokenSetPipeline):
    """Image variations with TokenSet (the diffusers img2img habit, on count vectors).

    The image is encoded to its count vector x0, noised to the time `t = 1 - strength` with the scheduler's own
    `add_noise` and a draw from the noise prior (time 0 is noise, 1 is data), and denoised from there with class
    guidance: the image's class or another one ("turn this 3 into an 8"), or none (`class_labels=None`).
    `strength=0` returns the image's own reconstruction; `strength=1` is plain generation.

    Shares its components, loading and helpers with [`TokenSetPipeline`]; build one from a loaded pipeline with
    `TokenSetImg2ImgPipeline.from_pipe(pipeline)` or load a pipeline folder with `from_pretrained`.
    """

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | list[ImageInput] | torch.Tensor | None = None,
        class_labels: int | str | Sequence[int | str] | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 25,
        guidance_scale: float | Sequence[float] | None = None,
        generator: GeneratorType = None,
        output_type: str = "pil",
        return_dict: bool = True,
        counts: torch.LongTensor | None = None,
        callback_on_step_end: Callable[["TokenSetPipeline", int, float, dict[str, Any]], dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents", "sample"),
        num_images_per_class: int = 1,
        batch_size: int | None = None,
    ) -> TokenSetPipelineOutput | tuple:
        """Denoises noised copies of the images' token sets, on [`TokenSetPipeline`]'s own denoising loop.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, a list of them, or `torch.FloatTensor` of shape
                `(batch_size, 3, image_size, image_size)` in [-1, 1], *optional*): the images to vary (PIL images and
                uint8 arrays are centre-cropped as [`preprocess_images`] does). Give `image` or `counts`.
            class_labels (`int`, `str`, a list of them, or `None`): the class(es) to denoise towards; `None` denoises
                without a class (the null class, no guidance). One label for all images, or one per image; one image
                with several labels gives one variation per label.
            strength (`float` in [0, 1], defaults to 0.8): how far towards noise the start is: the denoising runs the
                last `floor(strength * num_inference_steps)` of the `num_inference_steps` steps, from
                `t = 1 - that / num_inference_steps`. 0 returns the encoded count vectors; 1 starts from pure noise.
            num_inference_steps (`int`, defaults to 25): steps of the full schedule (as in diffusers' img2img).
            guidance_scale (`float` or list of floats, *optional*): as in [`TokenSetPipeline.__call__`]; `None` uses
                the pipeline's default. Ignored (no guidance) when `class_labels` is `None`.
            generator (`torch.Generator` or a list of them, one per image, *optional*): the noise prior is drawn
                first, as in [`TokenSetPipeline`], so `strength=1` gives the same images as plain generation with the
                same generator.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"`, or `"counts"` / `"latent"` (the count
                vectors, not decoded).
            return_dict (`bool`, defaults to `True`): return a [`TokenSetPipelineOutput`] rather than a tuple.
            counts (`torch.LongTensor` of shape `(batch_size, codebook_size)`, *optional*): start from these count
                vectors (each summing to `num_tokens`) instead of encoding `image`.
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in [`TokenSetPipeline.__call__`] (the step
                index counts the steps run, from 0).
            num_images_per_class (`int`, defaults to 1): variations per (image, label) pair, in the order
                `[a, a, b, b]`.
            batch_size (`int`, *optional*): as in [`TokenSetPipeline.__call__`].

        Returns:
            [`TokenSetPipelineOutput`] or `(images, counts)`.
        """
        self.check_call_arguments(
            output_type,
            num_inference_steps,
            num_images_per_class,
            batch_size,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        strength = check_number("strength", strength, low=0.0, high=1.0)
        original_counts = self.prepare_counts(image, counts)  # (B_img, C)
        labels = self.prepare_labels(class_labels)  # (B_labels,)
        original_counts, labels = broadcast_batch(
            {"images": original_counts, "class labels": labels.to(original_counts.device)}
        )  # (N, C), (N,)
        return self._sample(
            labels,
            original_counts,
            num_images_per_class,
            strength,
            class_labels is None,
            int(num_inference_steps),
            guidance_scale,
            generator,
            output_type,
            return_dict,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            batch_size,
        )

    @torch.no_grad()
    def prepare_counts(
        self,
        image: ImageInput | list[ImageInput] | torch.Tensor | None = None,
        counts: torch.LongTensor | None = None,
    ) -> torch.LongTensor:
        """The count vectors `(batch_size, codebook_size)` to start from: `counts` checked, or `image` encoded."""
        codebook_size, num_tokens = self.scheduler.config.codebook_size, self.scheduler.config.num_tokens
        if (image is None) == (counts is None):
            raise ValueError("Pass exactly one of `image` and `counts`.")
        if counts is not None:
            if not isinstance(counts, torch.Tensor) or counts.ndim != 2 or counts.shape[1] != codebook_size:
                shape = tuple(counts.shape) if isinstance(counts, torch.Tensor) else type(counts).__name__
                raise ValueError(f"`counts` must have shape (batch_size, codebook_size={codebook_size}), got {shape}.")
            if counts.is_floating_point() or (counts < 0).any() or (counts.sum(-1) != num_tokens).any():
                raise ValueError(
                    f"`counts` must be non-negative integer count vectors summing to num_tokens={num_tokens}, got "
                    f"dtype {counts.dtype} and row sums {counts.sum(-1).tolist()}."
                )
            return counts.long()
        image_size = self.image_tokenizer.config.image_size
        if isinstance(image, torch.Tensor):
            pixel_values = image  # checked by the tokenizer: (B, 3, S, S) in [-1, 1]
        else:
            pixel_values = preprocess_images(image, image_size)  # (B, 3, S, S)
        tokenizer = self.image_tokenizer
        return tokenizer.encode_to_counts(pixel_values.to(tokenizer.device, tokenizer.dtype))  # (B, C)

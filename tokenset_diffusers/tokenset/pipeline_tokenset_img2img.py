"""TokenSetImg2ImgPipeline: image variations with FSDD started from a noised copy of an image's count vector."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch

from ..image_processing import ImageInput, postprocess_images, preprocess_images
from ..utils.sampling import GeneratorType
from .pipeline_tokenset import OUTPUT_TYPES, TokenSetPipeline, TokenSetPipelineOutput, _guidance_schedule
from .set_ops import counts_to_tokens, sample_fixed_sum_noise


_SHARED = ("image_tokenizer", "transformer", "scheduler", "id2label", "default_guidance_scale")


class TokenSetImg2ImgPipeline(TokenSetPipeline):
    """Image variations with TokenSet (the diffusers img2img habit, on count vectors).

    The image is encoded to its count vector x0, noised to the time `t = 1 - strength` with the scheduler's own
    `add_noise` and a draw from the noise prior (time 0 is noise, 1 is data), and denoised from there with class
    guidance: the image's class or another one ("turn this 3 into an 8"), or none (`class_labels=None`).
    `strength=0` returns the image's own reconstruction; `strength=1` is plain generation.

    Shares its components, loading and helpers with [`TokenSetPipeline`]; build one from a loaded pipeline with
    `TokenSetImg2ImgPipeline.from_pipe(pipeline)` or load a pipeline folder with `from_pretrained`.
    """

    @classmethod
    def from_pipe(cls, pipeline: TokenSetPipeline, **components) -> "TokenSetImg2ImgPipeline":
        """An image-variations pipeline on the same components as `pipeline` (no copy, no cast).

        Unlike `DiffusionPipeline.from_pipe`, which moves the shared modules to one dtype (float32 by default) and so
        would also change `pipeline` and undo a bf16 transformer's float32 conditioning layers, this only shares.

        Args:
            pipeline ([`TokenSetPipeline`]): the pipeline to share `image_tokenizer`, `transformer`, `scheduler`,
                `id2label` and `default_guidance_scale` with.
            components: any of those to replace.
        """
        if not isinstance(pipeline, TokenSetPipeline):
            raise ValueError(f"`pipeline` must be a TokenSetPipeline, got {type(pipeline).__name__}.")
        unknown = set(components) - set(_SHARED)
        if unknown:
            raise ValueError(f"`from_pipe` can replace only {_SHARED}, got {sorted(unknown)}.")
        shared = {name: getattr(pipeline, name) for name in _SHARED[:3]}
        shared |= {name: pipeline.config.get(name) for name in _SHARED[3:]}
        new = cls(**(shared | components))
        new.register_to_config(_name_or_path=pipeline.config.get("_name_or_path"))
        return new

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
        callback_on_step_end_tensor_inputs: Sequence[str] = ("sample",),
    ) -> TokenSetPipelineOutput | tuple:
        """Denoises noised copies of the images' token sets.

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
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"counts"`.
            return_dict (`bool`, defaults to `True`): return a [`TokenSetPipelineOutput`] rather than a tuple.
            counts (`torch.LongTensor` of shape `(batch_size, codebook_size)`, *optional*): start from these count
                vectors (each summing to `num_tokens`) instead of encoding `image`.
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in [`TokenSetPipeline.__call__`].

        Returns:
            [`TokenSetPipelineOutput`] or `(images, counts)`.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"`strength` must be a number in [0, 1], got {strength!r}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {unknown}."
            )
        device = self._execution_device
        original_counts = self.prepare_counts(image, counts).to(device)  # (B_img, C)
        if class_labels is None:
            # The null class alone: unconditional denoising, for which guidance means nothing.
            labels = torch.full((len(original_counts),), self.transformer.config.num_classes, dtype=torch.long)
            schedule = (1.0,)
        else:
            labels = self.prepare_class_labels(class_labels)
            if guidance_scale is None:
                guidance_scale = self.config.default_guidance_scale or 1.0
            schedule = _guidance_schedule(guidance_scale, "guidance_scale")
        original_counts, labels = _broadcast_batch(original_counts, labels.to(device))  # (B, C), (B,)
        batch_size = labels.shape[0]
        if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for {batch_size} images; pass one per image.")
        codebook_size, num_tokens = self.scheduler.config.codebook_size, self.scheduler.config.num_tokens

        # 1. The times: the last `num_steps` of the full schedule (the scheduler's times stay on the CPU).
        self.scheduler.set_timesteps(num_inference_steps)
        num_steps = min(math.floor(num_inference_steps * strength + 1e-9), num_inference_steps)
        start_index = num_inference_steps - num_steps
        timesteps = self.scheduler.timesteps[start_index:]

        # 2. The start: the noise prior (drawn first, as plain generation draws it), mixed with the image's counts at
        # the start time by the scheduler's training noiser; time 0 is the noise itself, time 1 the image.
        noise = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator, device=device)
        sample = self.start_sample(original_counts, noise, start_index, generator=generator)  # (B, C)

        # 3. Denoise from there.
        for i, t in enumerate(self.progress_bar(timesteps)):
            probs = self.guided_probabilities(sample, t, labels, schedule)  # (B, C, M+1)
            sample, original = self.scheduler.step(probs, t, sample, generator=generator, return_dict=False)
            if callback_on_step_end is not None:
                tensors = {"sample": sample, "pred_original_sample": original}
                outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                sample = (outputs or {}).get("sample", sample)

        # 4. Count vectors -> token sets -> images.
        images = sample if output_type == "counts" else self._decode(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, sample
        return TokenSetPipelineOutput(images=images, counts=sample)

    def start_sample(
        self,
        original_counts: torch.LongTensor,
        noise: torch.LongTensor,
        start_index: int,
        generator: GeneratorType = None,
    ) -> torch.LongTensor:
        """The sample at `scheduler.timesteps[start_index]` (after `set_timesteps`): the noise itself at time 0, the
        image's counts after the last step (nothing to denoise), else the scheduler's `add_noise` between them.

        Args:
            original_counts, noise (`torch.LongTensor` of shape `(batch_size, codebook_size)`): the image's count
                vectors and a draw from the noise prior ([`sample_fixed_sum_noise`]).
            start_index (`int`): in `[0, num_inference_steps]`.
        """
        num_inference_steps = self.scheduler.num_inference_steps
        if not 0 <= start_index <= num_inference_steps:
            raise ValueError(f"`start_index` must be in [0, {num_inference_steps}], got {start_index}.")
        if start_index == num_inference_steps:
            return original_counts
        if start_index == 0:
            return noise
        start_time = self.scheduler.timesteps[start_index].item()  # on the CPU: no device synchronisation
        start_times = torch.full((len(noise),), start_time, device=noise.device)  # (B,)
        return self.scheduler.add_noise(original_counts, noise, start_times, generator=generator)  # (B, C)

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

    def _decode(self, counts: torch.LongTensor, output_type: str) -> list[PIL.Image.Image] | torch.Tensor:
        token_ids = counts_to_tokens(counts, self.scheduler.config.num_tokens)  # (B, M)
        decoded = self.image_tokenizer.decode(token_ids.to(self.image_tokenizer.device))  # (B, 3, H, W) in [-1, 1]
        return postprocess_images(decoded.float(), output_type=output_type)


def _broadcast_batch(counts: torch.LongTensor, labels: torch.LongTensor) -> tuple[torch.LongTensor, torch.LongTensor]:
    """One image with several labels, several images with one label, or as many of each."""
    if len(counts) == len(labels):
        return counts, labels
    if len(counts) == 1:
        return counts.expand(len(labels), -1).contiguous(), labels
    if len(labels) == 1:
        return counts, labels.expand(len(counts)).contiguous()
    raise ValueError(
        f"Got {len(counts)} images and {len(labels)} class labels; pass one label, one image, or as many of each."
    )

"""TokenSetPipeline: class-conditional image generation with Fixed-Sum Discrete Diffusion and the set tokenizer."""

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..class_labels import ClassLabelsMixin, label_to_id, normalise_id2label
from ..image_processing import postprocess_images
from ..pipeline_utils import ClassConditionalPipelineMixin, image_output_bytes
from ..utils.loading import PipelineLoadingMixin
from ..utils.remote_code import write_remote_code_files  # noqa: F401 (documented here by release 0.1's README)
from ..utils.sampling import GeneratorType
from ..utils.validation import check_integer, checks_values, described
from .modeling_tokenset_vqvae import TokenSetVQVAE
from .scheduling_fsdd import FSDDScheduler
from .set_ops import counts_to_tokens, sample_fixed_sum_noise
from .transformer_tokenset import TokenSetTransformer1DModel


# Larger guidance scales overflow float32 in `uncond + s * (cond - uncond)` (or are numerically meaningless).
MAX_GUIDANCE_SCALE = 1e4
# The components a pipeline folder must name, by `model_index.json` key.
COMPONENT_CLASSES = {
    "image_tokenizer": TokenSetVQVAE,
    "transformer": TokenSetTransformer1DModel,
    "scheduler": FSDDScheduler,
}


@dataclass
class TokenSetPipelineOutput(BaseOutput):
    """Output of [`TokenSetPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` of shape `(batch_size, height, width, 3)` in [0, 1],
            `torch.Tensor` of shape `(batch_size, 3, height, width)` in [0, 1], or, for `output_type="counts"` or
            `"latent"`, the count vectors).
        counts (`torch.LongTensor` of shape `(batch_size, codebook_size)`): the generated count vectors: the last
            sample of the sampler, as it is. With the original's one-shot adjustment (`exact_sum=False`) a row may
            miss the sum M; in the README's top-k setting (no adjustment) most rows do. Decoding applies the
            original's fill rule ([`counts_to_tokens`]); `exact_sum=True` gives rows that all sum to M.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    counts: torch.LongTensor


class TokenSetPipeline(PipelineLoadingMixin, ClassLabelsMixin, ClassConditionalPipelineMixin, DiffusionPipeline):
    """Class-conditional generation with TokenSet: FSDD over count vectors, then the set tokenizer's decoder.

    Args:
        image_tokenizer ([`TokenSetVQVAE`]): the set tokenizer; decodes token sets to images.
        transformer ([`TokenSetTransformer1DModel`]): predicts, at every codebook position, a distribution over the
            counts 0..M.
        scheduler ([`FSDDScheduler`]): the sampler.
        id2label (`dict[int, str]`, *optional*): class names; a name may list synonyms separated by commas, each of
            which [`get_label_ids`] accepts. Saved in `model_index.json`.
        default_guidance_scale (`float` or `list[float]`, *optional*): the guidance used when a call passes
            `guidance_scale=None`; `None` means no guidance (1.0). Converted ImageNet pipelines store the released
            interval schedule `[4.0, 50.0, 55.0]`.
    """

    model_cpu_offload_seq = "transformer->image_tokenizer"
    # Loading, saving, Hub upload and the minimal model card: `PipelineLoadingMixin` (utils/loading.py).
    _component_classes = COMPONENT_CLASSES
    # "latents" is diffusers' name for the count vectors being denoised; "sample" is the same tensor.
    _callback_tensor_inputs = ["latents", "sample", "pred_original_sample"]
    _callback_latents_aliases = ("sample",)
    latent_output_types = ("counts", "latent")
    # What `from_pipe` shares with the image-variation pipeline.
    _from_pipe_modules = ("image_tokenizer", "transformer", "scheduler")
    _from_pipe_config = ("id2label", "default_guidance_scale")

    def __init__(
        self,
        image_tokenizer: TokenSetVQVAE,
        transformer: TokenSetTransformer1DModel,
        scheduler: FSDDScheduler,
        id2label: dict | None = None,
        default_guidance_scale: float | list | None = None,
    ):
        super().__init__()
        _check_components(image_tokenizer, transformer, scheduler)
        id2label = normalise_id2label(id2label, transformer.config.num_classes)
        if default_guidance_scale is not None:
            default_guidance_scale = list(_guidance_schedule(default_guidance_scale, "default_guidance_scale"))
        self.register_modules(image_tokenizer=image_tokenizer, transformer=transformer, scheduler=scheduler)
        # Registered so that save_pretrained writes them into model_index.json (diffusers' DiT pipeline loses them).
        self.register_to_config(id2label=id2label, default_guidance_scale=default_guidance_scale)
        self.labels = label_to_id(id2label)
        self._guidance_scale = None  # set by every call, read at every step
        self._num_timesteps = None

    @property
    def id2label(self) -> dict[int, str] | None:
        """The class names by id (`None` when the pipeline has none); the same as `pipeline.config.id2label`."""
        return self.config.id2label

    # ------------------------------------------------------------------ guidance

    @torch.no_grad()
    def guided_probabilities(
        self,
        sample: torch.LongTensor,
        timestep: float | torch.Tensor,
        class_labels: torch.LongTensor,
        guidance_scale: float | Sequence[float] = 1.0,
    ) -> torch.FloatTensor:
        """The model's per-position distribution over counts, with classifier-free guidance.

        As the original: the batch [sample, sample] with labels [class_labels, null class], a float32 softmax of both
        halves, `p = p_uncond + s * (p_cond - p_uncond)`, clamped at 0 and renormalised. For an interval schedule
        `(s_0, ..., s_{n-1})`, s is `s_i` for the largest i with `t >= i / n`. A scale of 1 runs the conditional
        half only.

        Args:
            sample (`torch.LongTensor` of shape `(batch_size, codebook_size)`): count vectors.
            timestep (`float` or 0-d `torch.Tensor`): t in [0, 1], 0 = noise.
            class_labels (`torch.LongTensor` of shape `(batch_size,)`).
            guidance_scale (`float` or sequence of floats).

        Returns:
            `torch.FloatTensor` of shape `(batch_size, codebook_size, num_tokens + 1)`.
        """
        schedule = _guidance_schedule(guidance_scale, "guidance_scale")
        t = float(timestep)
        scale = schedule[max(i for i in range(len(schedule)) if t >= i / len(schedule))] if t >= 0 else schedule[0]
        batch_size = sample.shape[0]
        device = sample.device
        if scale == 1.0:
            timesteps = torch.full((batch_size,), t, device=device)
            logits = self.transformer(sample, timesteps, class_labels.to(device)).logits
            return logits.float().softmax(-1)
        null_labels = torch.full_like(class_labels, self.transformer.config.num_classes)
        model_input = torch.cat([sample, sample])  # (2B, C)
        labels = torch.cat([class_labels, null_labels]).to(device)  # (2B,)
        timesteps = torch.full((2 * batch_size,), t, device=device)  # (2B,)
        logits = self.transformer(model_input, timesteps, labels).logits  # (2B, C, M+1)
        return combine_guidance(logits, scale)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | None,
        num_inference_steps: int = 25,
        guidance_scale: float | Sequence[float] | None = None,
        generator: GeneratorType = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["TokenSetPipeline", int, float, dict[str, Any]], dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents", "sample"),
        num_images_per_class: int = 1,
        batch_size: int | None = None,
    ) -> TokenSetPipelineOutput | tuple:
        """Generates `num_images_per_class` images per class label.

        Args:
            class_labels (`int`, `str`, a list of them, or `None`): class ids or names ([`get_label_ids`]); `None`
                generates `num_images_per_class` unconditional images (the null class, without guidance).
            num_inference_steps (`int`, defaults to 25): FSDD steps.
            guidance_scale (`float` or list of floats, *optional*): a constant classifier-free guidance scale or an
                interval schedule over equal parts of t (the released `[4.0, 50.0, 55.0]`); 1.0 is no guidance;
                `None` uses the pipeline's `default_guidance_scale`. Read at every step from
                `pipeline._guidance_scale`, which a callback may change.
            generator (`torch.Generator` or a list of them, one per image, *optional*): for reproducible samples.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (`(batch_size, H, W, 3)` in [0, 1]), `"pt"`
                (`(batch_size, 3, H, W)` in [0, 1]), or `"counts"` / `"latent"` (the same: the raw last samples
                `(batch_size, codebook_size)`, not decoded; `"latent"` is diffusers' name for "before decoding"). With
                `exact_sum=False` their rows need not sum to M; decoding fills or truncates them to M tokens with the
                original's rule, and warns once when a row is more than M / 4 off.
            return_dict (`bool`, defaults to `True`): return a [`TokenSetPipelineOutput`] rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipeline, step_index, timestep,
                tensors)` after every step, with `tensors` holding `callback_on_step_end_tensor_inputs`; may return a
                dict whose `"latents"` (or its alias `"sample"`) replaces the sample, and may set
                `pipeline._guidance_scale` or `pipeline._interrupt = True` (skips the remaining steps). A returned
                sample must be count vectors of the same shape, integer dtype, counts in [0, num_tokens], and the same
                row sums as the sample the callback got (on the CPU its values are checked). With `batch_size`, the
                callback runs for every chunk, with that chunk's tensors.
            callback_on_step_end_tensor_inputs (sequence of `str`, defaults to `("latents", "sample")`): among
                `"latents"` (diffusers' name: the count vectors being denoised, `(batch_size, codebook_size)`),
                `"sample"` (the same tensor) and `"pred_original_sample"`.
            num_images_per_class (`int`, defaults to 1): images per entry of `class_labels`, in the order
                `[a, a, b, b]` for labels `[a, b]` and 2 images per class.
            batch_size (`int`, *optional*): denoise and decode at most this many images at once, chunk after chunk
                (default: all at once). With one generator per image the images are the same as in one batch; one
                shared generator is drawn from chunk after chunk, so those images differ from an unchunked call.
                A request whose outputs, or one chunk's working memory, cannot fit in the memory available raises
                `ValueError` before anything is allocated.

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
        labels = self.prepare_labels(class_labels)  # (number of labels,)
        return self._sample(
            labels,
            None,
            num_images_per_class,
            1.0,
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

    def _sample(
        self,
        labels: torch.LongTensor,
        original_counts: torch.LongTensor | None,
        num_images_per_class: int,
        strength: float,
        unconditional: bool,
        num_inference_steps: int,
        guidance_scale: float | Sequence[float] | None,
        generator: GeneratorType,
        output_type: str,
        return_dict: bool,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
        batch_size: int | None,
    ) -> TokenSetPipelineOutput | tuple:
        """Generation and image variations, after their own argument handling: denoises `num_images_per_class`
        images per entry of `labels` (`(N,)`) from the noise prior (`original_counts=None`) or from `original_counts`
        (`(N, C)`) noised to `t = 1 - strength`, over the last `floor(strength * num_inference_steps)` steps of the
        schedule, chunk by chunk; `unconditional` runs without guidance."""
        if unconditional:
            guidance_scale = 1.0  # the null class alone: guidance means nothing
        elif guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale or 1.0
        guided = any(scale != 1.0 for scale in _guidance_schedule(guidance_scale, "guidance_scale"))  # validates
        num_images = len(labels) * int(num_images_per_class)
        chunk_size = self.plan_chunks(num_images, batch_size, generator, output_type, guided)
        if original_counts is None:
            (labels,) = self.repeat_per_class(num_images_per_class, labels)  # (B,)
        else:
            original_counts, labels = self.repeat_per_class(num_images_per_class, original_counts, labels)
        self._guidance_scale = guidance_scale
        self._interrupt = False
        # The times stay on the CPU: reading them (for the guidance interval and the scheduler's step index) then
        # never waits for the device.
        self.scheduler.set_timesteps(num_inference_steps)
        num_steps = min(math.floor(num_inference_steps * strength + 1e-9), num_inference_steps)
        start_index = num_inference_steps - num_steps
        self._num_timesteps = num_steps

        def generate_chunk(rows: slice, chunk_generator: GeneratorType, progress_bar) -> tuple:
            start = None if original_counts is None else original_counts[rows]
            return self._generate(
                labels[rows],
                chunk_generator,
                output_type,
                callback_on_step_end,
                callback_on_step_end_tensor_inputs,
                start_counts=start,
                start_index=start_index,
                progress_bar=progress_bar,
            )

        images, counts = self.generate_in_chunks(num_images, chunk_size, generator, num_steps, generate_chunk)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, counts
        return TokenSetPipelineOutput(images=images, counts=counts)

    def _generate(
        self,
        labels: torch.LongTensor,
        generator: GeneratorType,
        output_type: str,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
        start_counts: torch.LongTensor | None = None,
        start_index: int = 0,
        progress_bar=None,
    ) -> tuple[list[PIL.Image.Image] | np.ndarray | torch.Tensor, torch.LongTensor]:
        """Denoises and decodes one batch of `labels` (`(batch_size,)`); returns `(images, counts)`.

        The one denoising loop of both TokenSet pipelines: from the noise prior (`start_counts=None`), or from
        `start_counts` (`(batch_size, codebook_size)`) noised to `scheduler.timesteps[start_index]` with
        [`start_sample`], over `scheduler.timesteps[start_index:]` (after `set_timesteps`). The noise prior is drawn
        first either way, so that an image-variations call that starts at step 0 is plain generation.
        """
        device = self._execution_device
        labels = labels.to(device)
        codebook_size, num_tokens = self.scheduler.config.codebook_size, self.scheduler.config.num_tokens

        # 1. The start: the noise prior (a random set of M distinct codebook entries), mixed with `start_counts` at
        # the start time by the scheduler's training noiser for image variations.
        sample = sample_fixed_sum_noise(len(labels), codebook_size, num_tokens, generator=generator, device=device)
        if start_counts is not None:
            sample = self.start_sample(start_counts.to(device), sample, start_index, generator=generator)  # (B, C)

        # 2. Denoise.
        for i, t in enumerate(self.scheduler.timesteps[start_index:]):
            if self.interrupt:  # set by a step callback: skip the remaining steps
                continue
            # Read at every step: a callback may have changed it.
            probs = self.guided_probabilities(sample, t, labels, self._guidance_scale)  # (B, C, M+1)
            sample, original = self.scheduler.step(probs, t, sample, generator=generator, return_dict=False)
            tensors = self.step_callback_tensors(sample, pred_original_sample=original)
            sample = self.run_step_callback(callback_on_step_end, i, t, tensors, callback_on_step_end_tensor_inputs)
            if progress_bar is not None:
                progress_bar.update()

        # 3. Count vectors -> token sets -> images.
        counts = sample
        if output_type in self.latent_output_types:
            return counts, counts
        return self._decode(counts, output_type), counts

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
        check_integer("start_index", start_index, low=0, high=num_inference_steps, high_name="num_inference_steps")
        if start_index == num_inference_steps:
            return original_counts
        if start_index == 0:
            return noise
        start_time = self.scheduler.timesteps[start_index].item()  # on the CPU: no device synchronisation
        start_times = torch.full((len(noise),), start_time, device=noise.device)  # (B,)
        return self.scheduler.add_noise(original_counts, noise, start_times, generator=generator)  # (B, C)

    def _decode(self, counts: torch.LongTensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
        """Count vectors `(batch_size, codebook_size)` -> token sets (the original's fill rule, warning when a row is
        far from M) -> images as `output_type`."""
        num_tokens = self.scheduler.config.num_tokens
        _warn_if_far_from_sum(counts, num_tokens)
        token_ids = counts_to_tokens(counts, num_tokens)  # (B, M)
        decoded = self.image_tokenizer.decode(token_ids.to(self._execution_device))  # (B, 3, H, W) in [-1, 1]
        return postprocess_images(decoded.float(), output_type=output_type)

    def _check_callback_latents(self, replaced: Any, sample: torch.LongTensor, name: str) -> None:
        """A sample returned by the step callback must be count vectors like `sample`: same shape, integer counts in
        [0, num_tokens] and the same row sums (values are read on the CPU only, see `checks_values`)."""
        self._check_same_shape(name, replaced, sample)
        self.scheduler._check_sample(name, replaced)
        if checks_values(replaced) and (replaced.sum(-1) != sample.sum(-1).to(replaced.device)).any():
            raise ValueError(
                f"The `{name}` must keep every row's total of {self.scheduler.config.num_tokens} tokens (the row sums "
                f"it got: {sample.sum(-1).tolist()[:8]}), got row sums {replaced.sum(-1).tolist()[:8]}."
            )

    def _request_memory(
        self, num_images: int, chunk_size: int, output_type: str, guided: bool
    ) -> tuple[int, int, str]:
        """Lower bounds: the count vectors and images of all `num_images`; the logits and softmax of the doubled
        batch and the guided probabilities (float32) of one chunk."""
        config = self.scheduler.config
        image_size = self.image_tokenizer.config.image_size
        outputs = num_images * (8 * config.codebook_size + image_output_bytes(output_type, image_size))
        working = chunk_size * config.codebook_size * (config.num_tokens + 1) * 4 * (5 if guided else 2)
        return outputs, working, "the guided probabilities"


# ---------------------------------------------------------------------- helpers


def _warn_if_far_from_sum(counts: torch.LongTensor, num_tokens: int) -> None:
    """Warns (once per call site, Python's default) when decoding will fill or truncate a row by more than M / 4
    tokens. Reads the sums on the host: once per call, after sampling."""
    off = (counts.sum(-1) - num_tokens).abs().max()
    if int(off) > num_tokens / 4:
        warnings.warn(
            f"Decoding count vectors whose sums are up to {int(off)} tokens away from num_tokens={num_tokens}: the "
            "original's fill rule adds or drops that many tokens. This is expected without an adjustment (the top-k "
            "setting with adjust_start=1.0); `exact_sum=True` gives count vectors that sum to num_tokens.",
            UserWarning,
            stacklevel=3,
        )


def _check_components(image_tokenizer, transformer, scheduler) -> None:
    for name, component in (
        ("image_tokenizer", image_tokenizer),
        ("transformer", transformer),
        ("scheduler", scheduler),
    ):
        expected = COMPONENT_CLASSES[name]
        if not isinstance(component, expected):
            raise ValueError(f"`{name}` must be a {expected.__name__}, got {type(component).__name__}.")
    sizes = {
        "image_tokenizer": (image_tokenizer.config.codebook_size, image_tokenizer.config.num_tokens),
        "transformer": (transformer.config.codebook_size, transformer.config.num_tokens),
        "scheduler": (scheduler.config.codebook_size, scheduler.config.num_tokens),
    }
    if len(set(sizes.values())) != 1:
        described = ", ".join(f"{name}: C={c}, M={m}" for name, (c, m) in sizes.items())
        raise ValueError(f"The components disagree on codebook_size (C) and num_tokens (M): {described}.")


# Kept importable under their former names.
_normalise_id2label = normalise_id2label
_label_to_id = label_to_id


def combine_guidance(logits: torch.Tensor, scale: float) -> torch.FloatTensor:
    """Classifier-free guidance on the logits `(2B, C, M+1)` of the doubled batch [conditional, unconditional]: the
    float32 softmax of both halves, `p = p_uncond + scale * (p_cond - p_uncond)`, clamped at 0 and renormalised (the
    original's rule). The two softmaxes are the only new `(B, C, M+1)` tensors: the unconditional one becomes the
    result, in place."""
    cond_logits, uncond_logits = logits.chunk(2)  # (B, C, M+1) each, views
    cond = cond_logits.float().softmax(-1)
    probs = uncond_logits.float().softmax(-1).lerp_(cond, scale).clamp_(min=0)  # uncond + s (cond - uncond)
    return probs.div_(probs.sum(-1, keepdim=True))


def _guidance_schedule(guidance_scale: float | Sequence[float], name: str) -> tuple[float, ...]:
    """`guidance_scale` as a tuple of floats: a number (numpy scalars included) or a non-empty list, tuple, array or
    tensor of numbers, each finite in [0, MAX_GUIDANCE_SCALE]."""
    if isinstance(guidance_scale, numbers.Real) and not isinstance(guidance_scale, bool):
        values = (guidance_scale,)
    elif isinstance(guidance_scale, (list, tuple)):
        values = tuple(guidance_scale)
    elif isinstance(guidance_scale, (np.ndarray, torch.Tensor)) and guidance_scale.ndim <= 1:
        values = tuple(guidance_scale.reshape(-1).tolist())
    else:
        values = ()
    if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise ValueError(f"`{name}` must be a number or a non-empty list of numbers, got {described(guidance_scale)}.")
    if not all(math.isfinite(v) and 0 <= v <= MAX_GUIDANCE_SCALE for v in values):
        raise ValueError(
            f"`{name}` values must be finite numbers in [0, {MAX_GUIDANCE_SCALE:g}] (1 = no guidance), got "
            f"{described(guidance_scale)}."
        )
    return tuple(float(v) for v in values)

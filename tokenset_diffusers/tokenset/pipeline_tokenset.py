"""TokenSetPipeline: class-conditional image generation with Fixed-Sum Discrete Diffusion and the set tokenizer."""

import math
import numbers
import os
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
from ..class_labels import short_repr as _short_repr
from ..image_processing import postprocess_images
from ..utils.loading import PipelineLoadingMixin
from ..utils.remote_code import write_remote_code_files  # noqa: F401 (documented here by release 0.1's README)
from ..utils.sampling import GeneratorType
from ..utils.validation import checks_values
from .modeling_tokenset_vqvae import TokenSetVQVAE
from .scheduling_fsdd import FSDDScheduler
from .set_ops import counts_to_tokens, sample_fixed_sum_noise
from .transformer_tokenset import TokenSetTransformer1DModel


OUTPUT_TYPES = ("pil", "np", "pt", "counts", "latent")
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


class TokenSetPipeline(PipelineLoadingMixin, ClassLabelsMixin, DiffusionPipeline):
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
    # "latents" is diffusers' name for the sample being denoised: an alias of "sample".
    _callback_tensor_inputs = ["sample", "latents", "pred_original_sample"]

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

    @property
    def guidance_scale(self) -> float | list[float]:
        """The guidance of the running (or last) call, `None` before the first; a callback may change
        `pipeline._guidance_scale` between steps, e.g. to 1.0 (no guidance) for the last steps."""
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        """The number of denoising steps of the running (or last) call, `None` before the first."""
        return self._num_timesteps

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
        class_labels: int | str | Sequence[int | str],
        num_inference_steps: int = 25,
        guidance_scale: float | Sequence[float] | None = None,
        generator: GeneratorType = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["TokenSetPipeline", int, float, dict[str, Any]], dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("sample",),
        num_images_per_class: int = 1,
        batch_size: int | None = None,
    ) -> TokenSetPipelineOutput | tuple:
        """Generates `num_images_per_class` images per class label.

        Args:
            class_labels (`int`, `str`, or a list of them): class ids or names ([`get_label_ids`]).
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
                dict whose `"sample"` (or `"latents"`) replaces the sample, and may set `pipeline._guidance_scale`.
                A returned sample must be count vectors of the same shape, integer dtype, counts in [0, num_tokens],
                and the same row sums as the sample the callback got (on the CPU its values are checked). With
                `batch_size`, the callback runs for every chunk, with that chunk's tensors.
            callback_on_step_end_tensor_inputs (sequence of `str`, defaults to `("sample",)`): among `"sample"`,
                `"latents"` (diffusers' name; the same tensor as `"sample"`) and `"pred_original_sample"`.
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
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {unknown}."
            )
        _check_positive_integer("num_images_per_class", num_images_per_class)
        _check_positive_integer("num_inference_steps", num_inference_steps)
        if batch_size is not None:
            _check_positive_integer("batch_size", batch_size)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"`callback_on_step_end` must be callable, got {_short_repr(callback_on_step_end)}.")
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale or 1.0
        _guidance_schedule(guidance_scale, "guidance_scale")  # validates
        labels = self.prepare_class_labels(class_labels)  # (number of labels,)
        num_images = labels.shape[0] * int(num_images_per_class)
        _check_generator(generator, num_images)
        chunk_size = min(int(batch_size or num_images), num_images)
        self._check_request_fits(num_images, chunk_size, output_type, guidance_scale)
        labels = labels.repeat_interleave(int(num_images_per_class))  # (B,)
        self._guidance_scale = guidance_scale
        # The times stay on the CPU: reading them (for the guidance interval and the scheduler's step index) then
        # never waits for the device.
        self.scheduler.set_timesteps(int(num_inference_steps))
        self._num_timesteps = len(self.scheduler.timesteps)

        chunks = []
        for start in range(0, num_images, chunk_size):
            chunk_generator = (
                generator[start : start + chunk_size] if isinstance(generator, (list, tuple)) else generator
            )
            chunks.append(
                self._generate(
                    labels[start : start + chunk_size],
                    chunk_generator,
                    output_type,
                    callback_on_step_end,
                    callback_on_step_end_tensor_inputs,
                )
            )
        images, counts = _join_chunks(chunks, output_type)
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
    ) -> tuple[list[PIL.Image.Image] | np.ndarray | torch.Tensor, torch.LongTensor]:
        """Denoises and decodes one batch of `labels` (`(batch_size,)`); returns `(images, counts)`."""
        device = self._execution_device
        labels = labels.to(device)
        codebook_size, num_tokens = self.scheduler.config.codebook_size, self.scheduler.config.num_tokens

        # 1. Start from the noise prior: a random set of M distinct codebook entries.
        sample = sample_fixed_sum_noise(len(labels), codebook_size, num_tokens, generator=generator, device=device)

        # 2. Denoise.
        original = sample
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            # Read at every step: a callback may have changed it.
            probs = self.guided_probabilities(sample, t, labels, self._guidance_scale)  # (B, C, M+1)
            sample, original = self.scheduler.step(probs, t, sample, generator=generator, return_dict=False)
            if callback_on_step_end is not None:
                tensors = {"sample": sample, "latents": sample, "pred_original_sample": original}
                outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                replaced = _replaced_sample(outputs or {}, sample)
                if replaced is not sample:
                    self._check_callback_sample(replaced, sample)
                sample = replaced

        # 3. Count vectors -> token sets -> images.
        counts = sample
        if output_type in ("counts", "latent"):
            return counts, counts
        _warn_if_far_from_sum(counts, num_tokens)
        token_ids = counts_to_tokens(counts, num_tokens)  # (B, M)
        decoded = self.image_tokenizer.decode(token_ids.to(device))  # (B, 3, H, W) in [-1, 1]
        return postprocess_images(decoded.float(), output_type=output_type), counts

    def _check_callback_sample(self, replaced: torch.Tensor, sample: torch.LongTensor) -> None:
        """A sample returned by the step callback must be count vectors like `sample`: same shape, integer counts in
        [0, num_tokens] and the same row sums (values are read on the CPU only, see `checks_values`)."""
        name = "sample returned by callback_on_step_end"
        if not isinstance(replaced, torch.Tensor) or replaced.shape != sample.shape:
            shape = tuple(replaced.shape) if isinstance(replaced, torch.Tensor) else type(replaced).__name__
            raise ValueError(
                f"The `{name}` must have the shape of the sample it got, {tuple(sample.shape)}, got {shape}."
            )
        self.scheduler._check_sample(name, replaced)
        if checks_values(replaced) and (replaced.sum(-1) != sample.sum(-1).to(replaced.device)).any():
            raise ValueError(
                f"The `{name}` must keep every row's total of {self.scheduler.config.num_tokens} tokens (the row sums "
                f"it got: {sample.sum(-1).tolist()[:8]}), got row sums {replaced.sum(-1).tolist()[:8]}."
            )

    def _check_request_fits(
        self, num_images: int, chunk_size: int, output_type: str, guidance_scale: float | Sequence[float]
    ) -> None:
        """Raises `ValueError` before anything is allocated when the outputs of `num_images` images, or the guided
        probabilities of one chunk of `chunk_size`, need more memory than is available (host memory for the
        outputs; the execution device's free memory for the chunk). A lower bound: the models' activations come on
        top."""
        config = self.scheduler.config
        size = self.image_tokenizer.config.image_size
        bytes_per_image = {"pil": 3 * size * size, "np": 12 * size * size, "pt": 12 * size * size}
        outputs = num_images * (8 * config.codebook_size + bytes_per_image.get(output_type, 0))
        guided = any(scale != 1.0 for scale in _guidance_schedule(guidance_scale, "guidance_scale"))
        # logits and softmax of the doubled batch, and the guided probabilities (float32)
        working = chunk_size * config.codebook_size * (config.num_tokens + 1) * 4 * (5 if guided else 2)
        device = torch.device(self._execution_device)
        host = _available_host_memory()
        device_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        needs_host = outputs + (working if device.type == "cpu" else 0)
        for needed, available, where in ((needs_host, host, "host memory"), (working, device_free, str(device))):
            if available is not None and needed > available:
                raise ValueError(
                    f"This request cannot fit: {num_images} images need at least {needed / 2**30:.2f} GiB of "
                    f"{where} (outputs {outputs / 2**30:.2f} GiB for output_type={output_type!r}; the guided "
                    f"probabilities of a batch of {chunk_size} {working / 2**30:.2f} GiB), and {available / 2**30:.2f} "
                    "GiB are available. Pass a smaller `batch_size` (images denoised at once) or fewer `class_labels`."
                )


# ---------------------------------------------------------------------- helpers


def _replaced_sample(outputs: dict, sample: torch.LongTensor) -> torch.LongTensor:
    """The sample a step callback returned under `"sample"` or its alias `"latents"` (the one it changed), else
    `sample`."""
    replaced = [outputs[key] for key in ("sample", "latents") if key in outputs and outputs[key] is not sample]
    if len(replaced) == 2 and replaced[0] is not replaced[1]:
        raise ValueError("The step callback returned different tensors as `sample` and `latents`; return one of them.")
    return replaced[0] if replaced else sample


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
        raise ValueError(
            f"`{name}` must be a number or a non-empty list of numbers, got {type(guidance_scale).__name__} "
            f"{_short_repr(guidance_scale)}."
        )
    if not all(math.isfinite(v) and 0 <= v <= MAX_GUIDANCE_SCALE for v in values):
        raise ValueError(
            f"`{name}` values must be finite numbers in [0, {MAX_GUIDANCE_SCALE:g}] (1 = no guidance), got "
            f"{_short_repr(guidance_scale)}."
        )
    return tuple(float(v) for v in values)


def _check_positive_integer(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {type(value).__name__} {_short_repr(value)}.")


def _check_generator(generator: Any, num_images: int) -> None:
    """`generator` must be None, a `torch.Generator`, or a list or tuple of `num_images` of them."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != num_images:
            raise ValueError(f"Got {len(generator)} generators for {num_images} images; pass one per image.")
        return
    raise ValueError(
        "`generator` must be a torch.Generator or a list of them (one per image), e.g. "
        f"`torch.Generator().manual_seed(0)`, got {type(generator).__name__} {_short_repr(generator)}."
    )


def _join_chunks(
    chunks: list[tuple], output_type: str
) -> tuple[list[PIL.Image.Image] | np.ndarray | torch.Tensor, torch.LongTensor]:
    """The `(images, counts)` of the chunks of [`TokenSetPipeline.__call__`], joined in order."""
    if len(chunks) == 1:
        return chunks[0]
    counts = torch.cat([chunk_counts for _, chunk_counts in chunks])
    if output_type in ("counts", "latent"):
        return counts, counts
    if output_type == "pil":
        return [image for chunk_images, _ in chunks for image in chunk_images], counts
    if output_type == "np":
        return np.concatenate([chunk_images for chunk_images, _ in chunks]), counts
    return torch.cat([chunk_images for chunk_images, _ in chunks]), counts


def _available_host_memory() -> int | None:
    """Bytes of host memory available now (Linux `MemAvailable`), else None."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None

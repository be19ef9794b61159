"""TokenBridgePipeline: class-conditional generation with TokenBridge's masked autoregressive transformer and a VAE."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.utils import BaseOutput

from ..class_labels import ClassLabelsMixin, label_to_id, normalise_id2label
from ..image_processing import ImageInput, postprocess_images, preprocess_images
from ..pipeline_utils import ClassConditionalPipelineMixin, image_output_bytes
from ..utils.loading import PipelineLoadingMixin, check_loaded_component
from ..utils.sampling import GeneratorType
from ..utils.validation import check_choice, check_integer, check_limit, check_number, checks_values
from .scheduling_masked_ar import GUIDANCE_SCHEDULES, MaskedARScheduler
from .transformer_tokenbridge import TokenBridgeTransformer2DModel


# The components a pipeline folder must name, by `model_index.json` key.
COMPONENT_CLASSES = {
    "transformer": TokenBridgeTransformer2DModel,
    "vae": AutoencoderKL,
    "scheduler": MaskedARScheduler,
}

# The released evaluation settings (num_iter 256, linear guidance); the README's faster setting uses 64 steps.
RELEASED_SAMPLING_DEFAULTS = {
    "L": {"num_inference_steps": 256, "guidance_scale": 3.1, "temperature": 0.96},
    "H": {"num_inference_steps": 256, "guidance_scale": 3.45, "temperature": 0.91},
}


@dataclass
class TokenBridgePipelineOutput(BaseOutput):
    """Output of [`TokenBridgePipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` `(batch_size, H, W, 3)` in [0, 1], `torch.Tensor`
            `(batch_size, 3, H, W)` in [0, 1]; for `output_type="latent"` the dequantized scaled latents
            `(batch_size, latent_channels, h, w)`, for `"indices"` the indices).
        indices (`torch.LongTensor` of shape `(batch_size, num_tokens, latent_channels)`): the generated level
            indices, positions row-major, VAE channel order.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    indices: torch.LongTensor


class TokenBridgePipeline(PipelineLoadingMixin, ClassLabelsMixin, ClassConditionalPipelineMixin, DiffusionPipeline):
    """Class-conditional generation with TokenBridge: masked autoregressive sampling of quantized VAE latents.

    Args:
        transformer ([`TokenBridgeTransformer2DModel`]): the generator (quantizer, MAE encoder/decoder, channel head).
        vae ([`diffusers.AutoencoderKL`]): decodes `latents / vae.config.scaling_factor` to images (the released
            KL-16 has `scaling_factor` 0.2325).
        scheduler ([`MaskedARScheduler`]): the cosine masked-AR schedule.
        id2label (`dict[int, str]`, *optional*): class names (comma-separated synonyms allowed), saved in
            `model_index.json`.
        default_num_inference_steps (`int`, defaults to 64): used when a call passes `num_inference_steps=None`.
            Converted releases store 256 (the evaluated setting; 64 is the original README's faster one).
        default_guidance_scale (`float`, defaults to 1.0): used for `guidance_scale=None` (L: 3.1, H: 3.45).
        default_temperature (`float`, defaults to 1.0): used for `temperature=None` (L: 0.96, H: 0.91).
    """

    model_cpu_offload_seq = "transformer->vae"
    # Loading, saving, Hub upload and the minimal model card: `PipelineLoadingMixin` (utils/loading.py).
    _component_classes = COMPONENT_CLASSES
    # "latents" is diffusers' name for what is being denoised: here the level indices, also named "indices".
    _callback_tensor_inputs = ["latents", "indices", "mask"]
    _callback_latents_aliases = ("indices",)
    latent_output_types = ("latent", "indices")
    # What `from_pipe` shares with the inpainting and variation pipelines.
    _from_pipe_modules = ("transformer", "vae", "scheduler")
    _from_pipe_config = ("id2label", "default_num_inference_steps", "default_guidance_scale", "default_temperature")

    def __init__(
        self,
        transformer: TokenBridgeTransformer2DModel,
        vae: AutoencoderKL,
        scheduler: MaskedARScheduler,
        id2label: dict | None = None,
        default_num_inference_steps: int = 64,
        default_guidance_scale: float = 1.0,
        default_temperature: float = 1.0,
    ):
        super().__init__()
        # diffusers loads the VAE itself (also under a bare `DiffusionPipeline.from_pretrained`): refuse a folder
        # whose weights did not fit its config rather than run with the randomly initialised rest.
        check_loaded_component(vae)
        if vae.config.latent_channels != transformer.config.latent_channels:
            raise ValueError(
                f"The VAE has {vae.config.latent_channels} latent channels, the transformer "
                f"{transformer.config.latent_channels}."
            )
        if scheduler.config.num_tokens != transformer.num_tokens:
            raise ValueError(
                f"The scheduler has num_tokens={scheduler.config.num_tokens}, the transformer "
                f"{transformer.num_tokens} (sample_size**2)."
            )
        id2label = normalise_id2label(id2label, transformer.config.num_classes)
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler)
        self.register_to_config(
            id2label=id2label,
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            default_temperature=default_temperature,
        )
        self.labels = label_to_id(id2label)

    @property
    def image_size(self) -> int:
        """The side in pixels of the images this pipeline generates (the latent grid times the VAE's scale)."""
        return self.transformer.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_images(self, image: ImageInput | list[ImageInput] | torch.Tensor) -> torch.LongTensor:
        """
        Images -> their level indices: the VAE's posterior mean (no sampling: the tokens do not depend on any
        generator), scaled by `scaling_factor`, quantized.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, a list of them, or `torch.Tensor`): PIL images and uint8 arrays
                get [`preprocess_images`]' centre crop to [`image_size`]; a tensor `(batch_size, 3, image_size,
                image_size)` (or one image `(3, image_size, image_size)`) holds values in [-1, 1].

        Returns:
            `torch.LongTensor` of shape `(batch_size, num_tokens, latent_channels)`, positions row-major, VAE channel
            order (the layout of [`TokenBridgePipelineOutput.indices`]).
        """
        size = self.image_size
        if isinstance(image, torch.Tensor):
            pixel_values = image[None] if image.ndim == 3 else image
            if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
                raise ValueError(
                    f"An `image` tensor must have shape (batch_size, 3, {size}, {size}) or (3, {size}, {size}), got "
                    f"{tuple(image.shape)}."
                )
            if not pixel_values.is_floating_point():
                raise ValueError(f"An `image` tensor must hold floats in [-1, 1], got dtype {pixel_values.dtype}.")
        else:
            pixel_values = preprocess_images(image, size)  # (B, 3, S, S) in [-1, 1]
        vae = self.vae
        posterior = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist
        latents = posterior.mean.float() * vae.config.scaling_factor  # (B, C, h, w), scaled units
        transformer = self.transformer
        return transformer.quantizer.quantize(transformer.patchify(latents.to(transformer.device)))  # (B, L, C)

    # ------------------------------------------------------------------ guidance

    @torch.no_grad()
    def guided_features(
        self,
        values: torch.Tensor,
        step_index: int,
        orders: torch.LongTensor,
        class_labels: torch.LongTensor,
        guidance_scale: float = 1.0,
        guidance_schedule: Literal["linear", "constant"] = "linear",
    ) -> torch.Tensor:
        """
        The head's input features at the positions step `step_index` predicts, guided.

        With `guidance_scale != 1`, one batched pass of the conditional and unconditional rows, then
        `z_u + w (z_c - z_u)` with w from [`MaskedARScheduler.guidance_weight`] (the original runs two passes; the
        result is the same).

        Args:
            values (`torch.Tensor` of shape `(B, L, latent_channels)`): dequantized current tokens (latent units).
            step_index (`int`): the step.
            orders (`torch.LongTensor` of shape `(B, L)`): the generation orders.
            class_labels (`torch.LongTensor` of shape `(B,)`): ids in `[0, num_classes]` (`num_classes` =
                unconditional).
            guidance_scale (`float`), guidance_schedule (`str`): see [`__call__`].

        Returns:
            `torch.FloatTensor` of shape `(B * num_predicted, D_dec)`, rows row-major over (image, position).
        """
        scheduler = self.scheduler
        num_masked = scheduler.num_unknown[step_index]
        mask = scheduler.mask(orders, step_index)  # (B, L)
        positions = scheduler.positions_to_predict(orders, step_index)  # (B, n)
        batch_size = values.shape[0]
        if guidance_scale == 1.0:
            features = self.transformer.conditions(values, mask, class_labels, num_masked).float()  # (B, L, D)
        else:
            unconditional = torch.full_like(class_labels, self.transformer.config.num_classes)
            both = self.transformer.conditions(
                torch.cat([values, values]),
                torch.cat([mask, mask]),
                torch.cat([class_labels, unconditional]),
                num_masked,
            ).float()  # (2B, L, D)
            conditional, unconditional = both.chunk(2)  # (B, L, D) each
            weight = scheduler.guidance_weight(step_index, guidance_scale, guidance_schedule)
            features = unconditional + weight * (conditional - unconditional)  # (B, L, D)
        index = positions[:, :, None].expand(-1, -1, features.shape[-1])
        return features.gather(1, index).reshape(batch_size * positions.shape[1], -1)  # (B * n, D)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: Literal["linear", "constant"] = "linear",
        temperature: float | None = None,
        generator: GeneratorType = None,
        output_type: str = "pil",
        return_dict: bool = True,
        orders: torch.LongTensor | None = None,
        num_images: int | None = None,
        callback_on_step_end: Callable[["TokenBridgePipeline", int, int, dict[str, Any]], dict[str, Any]]
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents", "indices"),
        num_images_per_class: int = 1,
        batch_size: int | None = None,
    ) -> TokenBridgePipelineOutput | tuple:
        """Generates `num_images_per_class` images per class label.

        Args:
            class_labels (`int`, `str`, a list of them, or `None`): class ids or names ([`get_label_ids`]); `None`
                generates unconditional images (the learned unconditional embedding as condition; guidance then
                changes nothing): `num_images` of them (default 1), each `num_images_per_class` times.
            num_inference_steps (`int`, *optional*): masked-AR steps, 1..L; `None` uses `default_num_inference_steps`.
            guidance_scale (`float`, *optional*): classifier-free guidance scale on the decoder features; 1 is none;
                `None` uses `default_guidance_scale`. Read at every step from `pipeline._guidance_scale`, which a
                callback may change.
            guidance_schedule (`str`, defaults to `"linear"`): `"linear"` (the weight grows with the fraction of
                known tokens, never quite reaching `guidance_scale`) or `"constant"`.
            temperature (`float`, *optional*): divides every channel's logits; 0 is greedy; `None` uses
                `default_temperature`.
            generator (`torch.Generator` or a list of them, one per image, *optional*): orders and token draws.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (`(B, H, W, 3)` in [0, 1]), `"pt"` (`(B, 3, H,
                W)` in [0, 1]), `"latent"` (dequantized scaled latents `(B, latent_channels, h, w)`) or `"indices"`
                (`(B, L, latent_channels)` int64).
            return_dict (`bool`, defaults to `True`): return a [`TokenBridgePipelineOutput`] rather than a tuple.
            orders (`torch.LongTensor` of shape `(B, L)`, *optional*): explicit generation orders (one permutation
                of the positions per image), e.g. to reproduce a recorded run; drawn from `generator` when omitted.
            num_images (`int`, *optional*): with `class_labels=None`, the number of unconditional images.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipeline, step_index, timestep,
                tensors)` after every step with `tensors` holding `callback_on_step_end_tensor_inputs`; may return a
                dict whose `"latents"` (or its alias `"indices"`) replaces the level indices, and may set
                `pipeline._guidance_scale` (read back as `guidance_scale` / `do_classifier_free_guidance`) or set
                `pipeline._interrupt = True` to skip the remaining steps. A returned tensor must have the shape of the
                one it got, an integer dtype and (checked on the CPU) level indices in [0, 2**quantizer_bits). With
                `batch_size`, the callback runs for every chunk, with that chunk's tensors.
            callback_on_step_end_tensor_inputs (sequence of `str`, defaults to `("latents", "indices")`): among
                `"latents"` (diffusers' name for what is being denoised; for TokenBridge the current level indices
                `(B, L, latent_channels)`, positions row-major, VAE channel order, 0 at positions still unknown),
                `"indices"` (the same tensor) and `"mask"` (`(B, L)`, True = still unknown after the step).
            num_images_per_class (`int`, defaults to 1): images per entry of `class_labels`, in the order
                `[a, a, b, b]` for labels `[a, b]` and 2 images per class.
            batch_size (`int`, *optional*): sample and decode at most this many images at once, chunk after chunk
                (default: all at once). With one generator per image the images are the same as in one batch.
                A request whose outputs, or one chunk's working memory, cannot fit in the memory available raises
                `ValueError` before anything is allocated.

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
        labels = self._labels_or_unconditional(class_labels, num_images)  # (number of labels,)
        if orders is not None:
            num_images = len(labels) * int(num_images_per_class)
            orders = self._check_orders(orders, num_images, self.transformer.num_tokens)
        return self._sample(
            labels,
            num_images_per_class,
            int(num_inference_steps),
            guidance_scale,
            guidance_schedule,
            temperature,
            generator,
            output_type,
            return_dict,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            batch_size,
            orders=orders,
        )

    def check_sampling_arguments(
        self,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        guidance_schedule: str,
        temperature: float | None,
        output_type: str,
        num_images_per_class: int,
        batch_size: int | None,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> tuple[int, float, float]:
        """The sampling arguments every TokenBridge call shares, checked (`ValueError` naming the argument), with the
        pipeline's defaults for `None`: returns `(num_inference_steps, guidance_scale, temperature)`."""
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        self.check_call_arguments(
            output_type,
            num_inference_steps,
            num_images_per_class,
            batch_size,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        check_choice("guidance_schedule", guidance_schedule, GUIDANCE_SCHEDULES)
        guidance_scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        temperature = self.config.default_temperature if temperature is None else temperature
        guidance_scale = check_number("guidance_scale", guidance_scale, low=0)
        temperature = check_number("temperature", temperature, low=0)
        return int(num_inference_steps), guidance_scale, temperature

    def _sample(
        self,
        labels: torch.LongTensor,
        num_images_per_class: int,
        num_inference_steps: int,
        guidance_scale: float,
        guidance_schedule: str,
        temperature: float,
        generator: GeneratorType,
        output_type: str,
        return_dict: bool,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
        batch_size: int | None,
        orders: torch.LongTensor | None = None,
        start_indices: torch.LongTensor | None = None,
        known: torch.BoolTensor | None = None,
        num_generated: int | None = None,
    ) -> TokenBridgePipelineOutput | tuple:
        """Generation and editing, after their own argument handling: samples `num_images_per_class` images per entry
        of `labels` (`(N,)`), chunk by chunk, on the one masked-AR loop ([`_generate`]).

        Editing ([`TokenBridgeInpaintPipeline`], [`TokenBridgeImg2ImgPipeline`]) passes `start_indices` (`(N, L, C)`,
        the image's tokens) and `num_generated`, the number of positions each image generates (the schedule counts
        only those); the kept positions are `known` (`(N, L)`, True = kept) or, with `known=None`, those after the
        first `num_generated` of each drawn order. Plain generation passes none of them: every position is generated.
        """
        num_images = len(labels) * int(num_images_per_class)
        chunk_size = self.plan_chunks(num_images, batch_size, generator, output_type, guidance_scale != 1.0)
        (labels,) = self.repeat_per_class(num_images_per_class, labels)  # (B,)
        if start_indices is not None:
            (start_indices,) = self.repeat_per_class(num_images_per_class, start_indices)  # (B, L, C)
        if known is not None:
            (known,) = self.repeat_per_class(num_images_per_class, known)  # (B, L)
        self._guidance_scale = guidance_scale
        self._num_timesteps = int(num_inference_steps)
        self._interrupt = False
        if num_generated is None:
            self.scheduler.set_timesteps(int(num_inference_steps))
        else:
            self.scheduler.set_timesteps(int(num_inference_steps), num_generated=num_generated)

        def generate_chunk(rows: slice, chunk_generator: GeneratorType, progress_bar) -> tuple:
            return self._generate(
                labels[rows],
                None if orders is None else orders[rows],
                chunk_generator,
                guidance_schedule,
                temperature,
                output_type,
                callback_on_step_end,
                callback_on_step_end_tensor_inputs,
                progress_bar,
                start_indices=None if start_indices is None else start_indices[rows],
                known=None if known is None else known[rows],
            )

        images, indices = self.generate_in_chunks(
            num_images, chunk_size, generator, self.scheduler.num_inference_steps, generate_chunk
        )
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, indices
        return TokenBridgePipelineOutput(images=images, indices=indices)

    def _generate(
        self,
        labels: torch.LongTensor,
        orders: torch.LongTensor | None,
        generator: GeneratorType,
        guidance_schedule: str,
        temperature: float,
        output_type: str,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
        progress_bar=None,
        start_indices: torch.LongTensor | None = None,
        known: torch.BoolTensor | None = None,
    ) -> tuple[list[PIL.Image.Image] | np.ndarray | torch.Tensor, torch.LongTensor]:
        """Samples and decodes one batch of `labels` (`(B,)`); returns `(images, indices)`. The one masked-AR loop of
        generation and editing: with `start_indices` (`(B, L, C)`), the positions after the first
        `scheduler.num_generated` of each order keep those tokens from the start (`known` (`(B, L)`), when given, are
        put last in the drawn orders)."""
        device = self._execution_device
        transformer = self.transformer
        labels = labels.to(device)
        batch_size = labels.shape[0]
        num_tokens, channels = transformer.num_tokens, transformer.config.latent_channels

        # 1. Orders; every position to generate starts unknown (index 0 as a placeholder, never read).
        if orders is None:
            orders = self.scheduler.sample_orders(batch_size, generator, device=device, known=known)  # (B, L)
        else:
            orders = orders.to(device)
        indices = torch.zeros(batch_size, num_tokens, channels, dtype=torch.long, device=device)  # (B, L, C)
        if start_indices is not None:
            # Editing: the kept positions, the last ones of every order, start known with the image's tokens.
            kept = torch.argsort(orders, dim=1) >= self.scheduler.num_generated  # (B, L)
            indices = torch.where(kept[:, :, None], start_indices.to(device), indices)  # (B, L, C)

        # 2. One masked-AR step per timestep: features of the positions to predict, channel head, write back.
        for step_index in range(self.scheduler.num_inference_steps):
            if self.interrupt:  # set by a step callback: skip the remaining steps
                continue
            values = transformer.quantizer.dequantize(indices)  # (B, L, C)
            # The guidance is read at every step: a callback may have changed it.
            features = self.guided_features(
                values, step_index, orders, labels, self._guidance_scale, guidance_schedule
            )  # (B * n, D)
            tokens = transformer.sample_channels(features, temperature=temperature, generator=generator)  # (B * n, C)
            tokens = tokens.reshape(batch_size, -1, channels)  # (B, n, C)
            indices, mask = self.scheduler.step(tokens, step_index, indices, orders, return_dict=False)
            tensors = self.step_callback_tensors(indices, mask=mask)
            indices = self.run_step_callback(
                callback_on_step_end, step_index, step_index, tensors, callback_on_step_end_tensor_inputs
            )
            if progress_bar is not None:
                progress_bar.update()

        # 3. Indices -> dequantized latents -> images.
        if output_type == "indices":
            return indices, indices
        latents = transformer.unpatchify(transformer.quantizer.dequantize(indices))  # (B, C, h, w), scaled units
        if output_type == "latent":
            return latents, indices
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        decoded = self.vae.decode(latents).sample  # (B, 3, H, W) in [-1, 1]
        return postprocess_images(decoded.float(), output_type=output_type), indices

    def _labels_or_unconditional(self, class_labels, num_images: int | None) -> torch.LongTensor:
        """The class ids, or for `class_labels=None`, `num_images` (default 1) times the unconditional id."""
        if class_labels is not None:
            if num_images is not None:
                raise ValueError(
                    f"Pass `num_images` only with `class_labels=None` (use `num_images_per_class` with class labels), "
                    f"got num_images={num_images!r}."
                )
            return self.prepare_labels(class_labels)
        num_images = 1 if num_images is None else check_integer("num_images", num_images, low=1)
        check_limit("num_images", num_images, "num_images")  # before the labels are repeated
        return self.prepare_labels(None).repeat(num_images)

    def _check_callback_latents(self, replaced: Any, indices: torch.LongTensor, name: str) -> None:
        """Level indices returned by the step callback must be like `indices`: same shape, integer dtype, and (read
        on the CPU only, see `checks_values`) levels in [0, num_levels)."""
        self._check_same_shape(name, replaced, indices)
        if replaced.is_floating_point() or replaced.is_complex() or replaced.dtype == torch.bool:
            raise ValueError(f"The `{name}` must be integer level indices, got dtype {replaced.dtype}.")
        num_levels = self.transformer.quantizer.num_levels
        if checks_values(replaced) and replaced.numel() and (replaced.min() < 0 or replaced.max() >= num_levels):
            raise ValueError(
                f"The `{name}` must hold level indices in [0, {num_levels}), got values in "
                f"[{replaced.min().item()}, {replaced.max().item()}]."
            )

    def _request_memory(
        self, num_images: int, chunk_size: int, output_type: str, guided: bool
    ) -> tuple[int, int, str]:
        """Lower bounds: the indices and images (or latents) of all `num_images`; the decoder features of one chunk
        (float32, both halves and the guided result with guidance)."""
        config = self.transformer.config
        num_tokens = self.transformer.num_tokens
        image_size = config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        per_image = 8 * num_tokens * config.latent_channels
        if output_type == "latent":
            per_image += 4 * num_tokens * config.latent_channels
        outputs = num_images * (per_image + image_output_bytes(output_type, image_size))
        working = chunk_size * num_tokens * config.decoder_hidden_size * 4 * (4 if guided else 1)
        return outputs, working, "the guided decoder features"

    @staticmethod
    def _check_orders(orders: torch.Tensor, batch_size: int, num_tokens: int) -> torch.LongTensor:
        if not torch.is_tensor(orders) or tuple(orders.shape) != (batch_size, num_tokens):
            shape = tuple(orders.shape) if torch.is_tensor(orders) else type(orders).__name__
            raise ValueError(f"`orders` must be a tensor of shape ({batch_size}, {num_tokens}), got {shape}.")
        orders = orders.long()
        if checks_values(orders):
            expected = torch.arange(num_tokens).expand(batch_size, -1)
            if not torch.equal(orders.sort(dim=1).values, expected):
                raise ValueError("Every row of `orders` must be a permutation of the positions 0..L-1.")
        return orders


__all__ = ["RELEASED_SAMPLING_DEFAULTS", "TokenBridgePipeline", "TokenBridgePipelineOutput"]

"""The call surface shared by the class-conditional pipelines of both systems ([`TokenSetPipeline`],
[`TokenSetImg2ImgPipeline`], [`TokenBridgePipeline`]).

[`ClassConditionalPipelineMixin`] holds, once, what their `__call__` have in common: class labels (ids, names, or
`None` for the null class), `num_images_per_class`, `batch_size` with the request-size check made before anything is
allocated, one generator or one per image (split per chunk), output types, joining the chunks' outputs, step callbacks
with diffusers' name `"latents"` (each system's own name kept as an alias; a replacement is validated), one progress
bar over all chunks, and diffusers' `guidance_scale` / `do_classifier_free_guidance` / `num_timesteps` / `interrupt`
properties, which a step callback reads and changes (`pipeline._guidance_scale`, `pipeline._interrupt`). Each pipeline
keeps only its model calls: how one chunk is sampled and decoded.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from .utils.sampling import GeneratorType
from .utils.validation import check_generator, check_integer, check_limit, described


IMAGE_OUTPUT_TYPES = ("pil", "np", "pt")


class ClassConditionalPipelineMixin:
    """The shared call surface of a class-conditional `DiffusionPipeline` with a `transformer` whose config has
    `num_classes` (the null class, for unconditional sampling, is id `num_classes`) and [`ClassLabelsMixin`]'s
    `prepare_class_labels`.

    A pipeline sets:

    - `latent_output_types` (`tuple[str, ...]`): the output types returned before decoding, `"latent"` and the
      system's own name (TokenSet `"counts"`, TokenBridge `"indices"`); the others are `"pil"`, `"np"` and `"pt"`.
    - `_callback_tensor_inputs` (`list[str]`): what a step callback may ask for, `"latents"` among them, and
      `_callback_latents_aliases` (`tuple[str, ...]`): the other names of the same tensor (e.g. `("sample",)`).

    - `_from_pipe_modules` / `_from_pipe_config` (`tuple[str, ...]`), on the system's generation pipeline: the
      components and config values that [`from_pipe`] shares with the system's other pipelines.

    and defines `_check_callback_latents(replaced, latents, name)` (a tensor a callback returned must be valid
    latents) and `_request_memory(num_images, chunk_size, output_type, guided)` (the lower bounds of the bytes needed,
    see [`check_request_fits`]).
    """

    latent_output_types: tuple[str, ...] = ("latent",)
    _callback_tensor_inputs: list[str] = ["latents"]
    _callback_latents_aliases: tuple[str, ...] = ()
    _guidance_scale = None  # set by every call, read at every step
    _num_timesteps = None
    _interrupt = False  # reset by every call, read at every step
    _from_pipe_modules: tuple[str, ...] = ()
    _from_pipe_config: tuple[str, ...] = ()

    @classmethod
    def from_pipe(cls, pipeline: "ClassConditionalPipelineMixin", **components):
        """A pipeline of this class (e.g. image variations or inpainting) on the same components as `pipeline`, a
        pipeline of the same system: no copy, no cast, the same modules.

        Unlike `DiffusionPipeline.from_pipe`, which moves the shared modules to one dtype (float32 by default) and so
        would also change `pipeline` (and undo a bf16 transformer's float32 conditioning layers), this only shares.

        Args:
            pipeline: a pipeline of this system (its generation pipeline or one of its subclasses).
            components: any of the shared components or config values to replace (`_from_pipe_modules`,
                `_from_pipe_config`).
        """
        system = next(klass for klass in cls.__mro__ if "_from_pipe_modules" in vars(klass))
        if not isinstance(pipeline, system):
            raise ValueError(f"`pipeline` must be a {system.__name__}, got {type(pipeline).__name__}.")
        names = cls._from_pipe_modules + cls._from_pipe_config
        unknown = set(components) - set(names)
        if unknown:
            raise ValueError(f"`from_pipe` can replace only {names}, got {sorted(unknown)}.")
        shared = {name: getattr(pipeline, name) for name in cls._from_pipe_modules}
        shared |= {name: pipeline.config.get(name) for name in cls._from_pipe_config}
        new = cls(**(shared | components))
        new.register_to_config(_name_or_path=pipeline.config.get("_name_or_path"))
        return new

    @property
    def guidance_scale(self) -> float | list[float] | None:
        """The guidance of the running (or last) call, `None` before the first; a callback may change
        `pipeline._guidance_scale` between steps, e.g. to 1.0 (no guidance) for the last steps."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the running (or last) call guides its next step: a `guidance_scale` other than 1.0 (for a
        per-step list, any entry other than 1.0); `False` before the first call."""
        scale = self._guidance_scale
        if scale is None:
            return False
        if isinstance(scale, (list, tuple)):
            return any(float(value) != 1.0 for value in scale)
        return float(scale) != 1.0

    @property
    def interrupt(self) -> bool:
        """Whether the running call stops denoising: a step callback sets `pipeline._interrupt = True` and every step
        after it (of every remaining chunk) is skipped, as in diffusers; the latents reached so far are decoded and
        returned. Every call starts with `False`."""
        return self._interrupt

    @property
    def num_timesteps(self) -> int | None:
        """The number of denoising steps of the running (or last) call, `None` before the first."""
        return self._num_timesteps

    @property
    def output_types(self) -> tuple[str, ...]:
        """The accepted `output_type` values: `"pil"`, `"np"`, `"pt"` and [`latent_output_types`]."""
        return IMAGE_OUTPUT_TYPES + tuple(self.latent_output_types)

    # ------------------------------------------------------------------ arguments

    def check_call_arguments(
        self,
        output_type: str,
        num_inference_steps: int,
        num_images_per_class: int,
        batch_size: int | None,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> None:
        """Raises `ValueError`, naming the argument, for a bad value of any of the shared call arguments."""
        if not isinstance(output_type, str) or output_type not in self.output_types:
            raise ValueError(f"`output_type` must be one of {self.output_types}, got {described(output_type)}.")
        check_integer("num_inference_steps", num_inference_steps, low=1)
        check_integer("num_images_per_class", num_images_per_class, low=1)
        if batch_size is not None:
            check_integer("batch_size", batch_size, low=1)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"`callback_on_step_end` must be callable, got {described(callback_on_step_end)}.")
        if isinstance(callback_on_step_end_tensor_inputs, str) or not isinstance(
            callback_on_step_end_tensor_inputs, (list, tuple)
        ):
            raise ValueError(
                "`callback_on_step_end_tensor_inputs` must be a list of names among "
                f"{self._callback_tensor_inputs}, got {described(callback_on_step_end_tensor_inputs)}."
            )
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {unknown}."
            )

    def prepare_labels(self, class_labels: int | str | Sequence[int | str] | None) -> torch.LongTensor:
        """Class ids `(number of labels,)` on the CPU: [`prepare_class_labels`] of ids and names, or, for `None`, the
        null class `num_classes` once (unconditional sampling)."""
        if class_labels is None:
            return torch.full((1,), self.transformer.config.num_classes, dtype=torch.long)
        return self.prepare_class_labels(class_labels)

    @staticmethod
    def repeat_per_class(num_images_per_class: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor with every row repeated `num_images_per_class` times, in the order `[a, a, b, b]`."""
        return tuple(tensor.repeat_interleave(int(num_images_per_class), dim=0) for tensor in tensors)

    # ------------------------------------------------------------------ chunks

    def plan_chunks(
        self,
        num_images: int,
        batch_size: int | None,
        generator: GeneratorType,
        output_type: str,
        guided: bool = True,
    ) -> int:
        """The chunk size for `num_images` images in chunks of at most `batch_size` (default: one chunk), after
        checking `generator` (`None`, one, or one per image) and, before anything of the request is allocated, that
        it fits in memory ([`check_request_fits`]) and holds at most `LIMITS["num_images"]` images (100,000 by
        default, see `tokenset_diffusers/utils/validation.py`)."""
        check_generator(generator, num_images)
        chunk_size = min(int(batch_size or num_images), num_images)
        self.check_request_fits(num_images, chunk_size, output_type, guided)
        check_limit(
            "num_images_per_class", num_images, "num_images", "images: labels or images x num_images_per_class"
        )
        return chunk_size

    def generate_in_chunks(
        self,
        num_images: int,
        chunk_size: int,
        generator: GeneratorType,
        steps_per_chunk: int,
        generate_chunk: Callable[[slice, GeneratorType, Any], tuple],
    ) -> tuple[list[PIL.Image.Image] | np.ndarray | torch.Tensor, torch.Tensor]:
        """Runs `generate_chunk(rows, generator, progress_bar)` on consecutive chunks of `chunk_size` (from
        [`plan_chunks`]) of the `num_images` images and joins their `(images, latents)` in order.

        With one generator per image each chunk gets its images' generators, so the images are those of one batch;
        one shared generator is drawn from chunk after chunk. One progress bar counts the `steps_per_chunk` steps of
        every chunk.
        """
        starts = range(0, num_images, chunk_size)
        chunks = []
        with self.progress_bar(total=len(starts) * steps_per_chunk) as progress_bar:
            for start in starts:
                rows = slice(start, min(start + chunk_size, num_images))
                chunk_generator = generator[rows] if isinstance(generator, (list, tuple)) else generator
                chunks.append(generate_chunk(rows, chunk_generator, progress_bar))
        return join_chunks(chunks)

    def check_request_fits(self, num_images: int, chunk_size: int, output_type: str, guided: bool = True) -> None:
        """Raises `ValueError` before anything is allocated when the outputs of `num_images` images, or the working
        memory of one chunk of `chunk_size`, need more memory than is available (host memory for the outputs; the
        execution device's free memory for the chunk). The sizes are the pipeline's `_request_memory` lower bounds:
        the models' activations come on top."""
        outputs, working, working_name = self._request_memory(num_images, chunk_size, output_type, guided)
        device = torch.device(self._execution_device)
        host = available_host_memory()
        device_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        needs_host = outputs + (working if device.type == "cpu" else 0)
        for needed, available, where in ((needs_host, host, "host memory"), (working, device_free, str(device))):
            if available is not None and needed > available:
                raise ValueError(
                    f"This request cannot fit: {num_images} images need at least {needed / 2**30:.2f} GiB of "
                    f"{where} (outputs {outputs / 2**30:.2f} GiB for output_type={output_type!r}; {working_name} of a "
                    f"batch of {chunk_size} {working / 2**30:.2f} GiB), and {available / 2**30:.2f} GiB are "
                    "available. Pass a smaller `batch_size` (images denoised at once) or fewer `class_labels`."
                )

    def _request_memory(
        self, num_images: int, chunk_size: int, output_type: str, guided: bool
    ) -> tuple[int, int, str]:
        """`(output bytes of num_images images, working bytes of one chunk, what the working memory is)`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ callbacks

    def step_callback_tensors(self, latents: torch.Tensor, **others: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors a step callback may ask for: `latents` under `"latents"` and each alias, and `others`."""
        return {"latents": latents, **dict.fromkeys(self._callback_latents_aliases, latents), **others}

    def run_step_callback(
        self,
        callback_on_step_end: Callable | None,
        step_index: int,
        timestep: Any,
        tensors: dict[str, torch.Tensor],
        tensor_inputs: Sequence[str],
    ) -> torch.Tensor:
        """Calls `callback_on_step_end(self, step_index, timestep, {name: tensors[name] for name in tensor_inputs})`
        and returns the latents to go on with: `tensors["latents"]`, or the tensor the callback returned under
        `"latents"` or an alias, checked by the pipeline's `_check_callback_latents`."""
        latents = tensors["latents"]
        if callback_on_step_end is None:
            return latents
        outputs = callback_on_step_end(self, step_index, timestep, {name: tensors[name] for name in tensor_inputs})
        outputs = outputs or {}
        if not isinstance(outputs, dict):
            raise ValueError(f"`callback_on_step_end` must return a dict or None, got {described(outputs)}.")
        names = ("latents", *self._callback_latents_aliases)
        replaced = {name: outputs[name] for name in names if name in outputs and outputs[name] is not latents}
        if not replaced:
            return latents
        if len({id(tensor) for tensor in replaced.values()}) > 1:
            raise ValueError(
                f"The step callback returned different tensors as {sorted(replaced)}; they name the same latents, "
                "return one of them."
            )
        name, tensor = next(iter(replaced.items()))
        self._check_callback_latents(tensor, latents, f"{name} returned by callback_on_step_end")
        return tensor

    def _check_callback_latents(self, replaced: Any, latents: torch.Tensor, name: str) -> None:
        """Raises `ValueError` (naming `name`) unless `replaced` may replace `latents`."""
        raise NotImplementedError

    @staticmethod
    def _check_same_shape(name: str, replaced: Any, latents: torch.Tensor) -> None:
        if not isinstance(replaced, torch.Tensor) or replaced.shape != latents.shape:
            shape = tuple(replaced.shape) if isinstance(replaced, torch.Tensor) else type(replaced).__name__
            raise ValueError(
                f"The `{name}` must have the shape of the latents it got, {tuple(latents.shape)}, got {shape}."
            )


def join_chunks(
    chunks: list[tuple[Any, torch.Tensor]],
) -> tuple[list[PIL.Image.Image] | np.ndarray | torch.Tensor, torch.Tensor]:
    """The `(images, latents)` of chunks joined in order: lists concatenated, arrays and tensors along dim 0."""
    if len(chunks) == 1:
        return chunks[0]
    images = [chunk_images for chunk_images, _ in chunks]
    latents = torch.cat([chunk_latents for _, chunk_latents in chunks])
    if isinstance(images[0], list):
        return [image for chunk_images in images for image in chunk_images], latents
    if isinstance(images[0], np.ndarray):
        return np.concatenate(images), latents
    return torch.cat(images), latents


def available_host_memory() -> int | None:
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


def image_output_bytes(output_type: str, image_size: int) -> int:
    """Bytes of one `image_size`-pixel square RGB image as `output_type` returns it (0 for latent types)."""
    return {"pil": 3, "np": 12, "pt": 12}.get(output_type, 0) * image_size * image_size


def broadcast_batch(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """
    Tensors of batch sizes 1 or N -> all of batch size N (rows repeated), in the order given: one image with several
    labels, several images with one label, or as many of each (the edit and variation pipelines of both systems).

    Args:
        tensors (`dict[str, torch.Tensor]`): by what they hold in the plural (`"images"`, `"class labels"`), for the
            error message.

    Raises:
        `ValueError` when two of them have different batch sizes, neither of them 1.
    """
    sizes = {name: len(tensor) for name, tensor in tensors.items()}
    size = max(sizes.values())
    if any(value not in (1, size) for value in sizes.values()):
        described = " and ".join(f"{value} {name}" for name, value in sizes.items())
        raise ValueError(f"Got {described}; pass one of each, or as many of each.")
    return tuple(tensor.expand(size, *tensor.shape[1:]).contiguous() for tensor in tensors.values())


__all__ = [
    "IMAGE_OUTPUT_TYPES",
    "ClassConditionalPipelineMixin",
    "broadcast_batch",
    "available_host_memory",
    "join_chunks",
]

"""TokenSetPipeline: class-conditional image generation with Fixed-Sum Discrete Diffusion and the set tokenizer."""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from .class_labels import ClassLabelsMixin, LocalFolderLoadingMixin, label_to_id, normalise_id2label
from .image_processing import postprocess_images
from .modeling_tokenset_vqvae import TokenSetVQVAE
from .scheduling_fsdd import FSDDScheduler
from .set_ops import GeneratorType, counts_to_tokens, sample_fixed_sum_noise
from .transformer_tokenset import TokenSetTransformer1DModel


OUTPUT_TYPES = ("pil", "np", "pt", "counts")


@dataclass
class TokenSetPipelineOutput(BaseOutput):
    """Output of [`TokenSetPipeline`].

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` of shape `(batch_size, height, width, 3)` in [0, 1],
            `torch.Tensor` of shape `(batch_size, 3, height, width)` in [0, 1], or, for `output_type="counts"`, the
            count vectors).
        counts (`torch.LongTensor` of shape `(batch_size, codebook_size)`): the generated count vectors.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    counts: torch.LongTensor


class TokenSetPipeline(LocalFolderLoadingMixin, ClassLabelsMixin, DiffusionPipeline):
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
    _callback_tensor_inputs = ["sample", "pred_original_sample"]

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

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        model_card: "huggingface_hub.ModelCard | None" = None,  # noqa: F821
    ):
        """Saves the pipeline with a model card (README.md) to a temporary folder and uploads it to `repo_id`.

        `model_card` defaults to the README.md of the folder the pipeline was loaded from (conversion and training
        write one), else a minimal card describing this pipeline (classes, C, M, sampling defaults).
        """
        import tempfile

        from huggingface_hub import HfApi, ModelCard

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            if model_card is None:
                loaded_from = self.config.get("_name_or_path") or ""
                source = os.path.join(loaded_from, "README.md")
                use_source = bool(loaded_from) and os.path.isdir(loaded_from) and os.path.isfile(source)
                model_card = ModelCard.load(source) if use_source else self.model_card(repo_id)
            model_card.save(os.path.join(folder, "README.md"))
            api = HfApi(token=token)
            api.create_repo(repo_id, private=private, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or "Upload TokenSetPipeline",
                create_pr=create_pr,
            )

    def model_card(self, repo_id: str = "<repo_id>") -> "huggingface_hub.ModelCard":  # noqa: F821
        """A minimal model card for this pipeline: metadata, sizes, sampling defaults and a usage snippet."""
        from huggingface_hub import ModelCard, ModelCardData

        data = ModelCardData(
            library_name="diffusers",
            license="mit",
            pipeline_tag="unconditional-image-generation",
            tags=["tokenset", "class-conditional", "image-generation"],
        )
        config = self.transformer.config
        text = (
            f"---\n{data.to_yaml()}\n---\n\n# TokenSet pipeline\n\n"
            "Class-conditional image generation with TokenSet ([Tokenize Image as a Set](https://arxiv.org/abs/2503.16425)): "
            "Fixed-Sum Discrete Diffusion over count vectors, decoded by the set tokenizer.\n\n"
            f"- classes: {config.num_classes}; codebook size C = {config.codebook_size}; tokens per image "
            f"M = {config.num_tokens}\n"
            f"- default guidance: {self.config.default_guidance_scale or 1.0}\n\n"
            "```python\nfrom tokenset_diffusers import TokenSetPipeline\n\n"
            f'pipeline = TokenSetPipeline.from_pretrained("{repo_id}")\n'
            "images = pipeline([0, 1, 2]).images\n```\n"
        )
        return ModelCard(text)

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
        cond, uncond = logits.float().softmax(-1).chunk(2)  # (B, C, M+1) each, views
        probs = torch.lerp(uncond, cond, scale).clamp_(min=0)  # uncond + s (cond - uncond), one new tensor
        return probs.div_(probs.sum(-1, keepdim=True))

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
    ) -> TokenSetPipelineOutput | tuple:
        """Generates one image per class label.

        Args:
            class_labels (`int`, `str`, or a list of them): class ids or names ([`get_label_ids`]).
            num_inference_steps (`int`, defaults to 25): FSDD steps.
            guidance_scale (`float` or list of floats, *optional*): a constant classifier-free guidance scale or an
                interval schedule over equal parts of t (the released `[4.0, 50.0, 55.0]`); 1.0 is no guidance;
                `None` uses the pipeline's `default_guidance_scale`.
            generator (`torch.Generator` or a list of them, one per image, *optional*): for reproducible samples.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (`(batch_size, H, W, 3)` in [0, 1]), `"pt"`
                (`(batch_size, 3, H, W)` in [0, 1]) or `"counts"` (the count vectors, not decoded).
            return_dict (`bool`, defaults to `True`): return a [`TokenSetPipelineOutput`] rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipeline, step_index, timestep,
                tensors)` after every step, with `tensors` holding `callback_on_step_end_tensor_inputs`; may return a
                dict that replaces `sample`.
            callback_on_step_end_tensor_inputs (sequence of `str`, defaults to `("sample",)`): among `"sample"` and
                `"pred_original_sample"`.

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
        if guidance_scale is None:
            guidance_scale = self.config.default_guidance_scale or 1.0
        schedule = _guidance_schedule(guidance_scale, "guidance_scale")
        device = self._execution_device
        labels = self.prepare_class_labels(class_labels).to(device)  # (B,)
        batch_size = labels.shape[0]
        if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for {batch_size} images; pass one per image.")
        codebook_size, num_tokens = self.scheduler.config.codebook_size, self.scheduler.config.num_tokens

        # 1. Start from the noise prior: a random set of M distinct codebook entries.
        sample = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator, device=device)
        # The times stay on the CPU: reading them (for the guidance interval and the scheduler's step index) then
        # never waits for the device.
        self.scheduler.set_timesteps(num_inference_steps)

        # 2. Denoise.
        original = sample
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            probs = self.guided_probabilities(sample, t, labels, schedule)  # (B, C, M+1)
            sample, original = self.scheduler.step(probs, t, sample, generator=generator, return_dict=False)
            if callback_on_step_end is not None:
                tensors = {"sample": sample, "pred_original_sample": original}
                outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                sample = (outputs or {}).get("sample", sample)

        # 3. Count vectors -> token sets -> images.
        counts = sample
        if output_type == "counts":
            images = counts
        else:
            token_ids = counts_to_tokens(counts, num_tokens)  # (B, M)
            decoded = self.image_tokenizer.decode(token_ids.to(device))  # (B, 3, H, W) in [-1, 1]
            images = postprocess_images(decoded.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, counts
        return TokenSetPipelineOutput(images=images, counts=counts)


# ---------------------------------------------------------------------- helpers


def _check_components(image_tokenizer, transformer, scheduler) -> None:
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


def _guidance_schedule(guidance_scale: float | Sequence[float], name: str) -> tuple[float, ...]:
    values = (guidance_scale,) if isinstance(guidance_scale, (int, float)) else tuple(guidance_scale)
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"`{name}` must be a number or a non-empty sequence of numbers, got {guidance_scale!r}.")
    if any(v < 0 or v != v for v in values):
        raise ValueError(f"`{name}` values must be non-negative numbers, got {guidance_scale!r}.")
    return tuple(float(v) for v in values)

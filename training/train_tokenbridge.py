"""Train TokenBridge's generator (`TokenBridgeTransformer2DModel`) on a frozen continuous VAE.

    accelerate launch training/train_tokenbridge.py --config training/configs/digits_tokenbridge.yaml [--flag value ...]

The recipe of the original (docs/tokenbridge.md#training-recipe): every step takes VAE posterior samples (`mean + std *
noise` of the image or of its mirror image, from the latent cache of `training/encode_latents.py`, or from the VAE on
the fly), scales them by the VAE's `scaling_factor`, drops labels to the unconditional id with probability
`label_dropout_prob`, masks a truncated-normal share of the positions (one ratio per batch, from
[`MaskedARScheduler.sample_training_mask`]) and minimises the model's cross-entropy at the masked positions. AdamW
with betas (0.9, 0.95), weight decay on tensors of >= 2 dimensions only, `lr = base_learning_rate x global batch /
256`, linear warm-up then cosine to 0, gradient clipping at 3.0, EMA 0.9999. Every draw comes from generators seeded
by (seed, process, step) (dropout: torch's global RNG, seeded the same way at the start of each step), so a resumed run
repeats an uninterrupted one step for step.

Output: `output_dir/transformer` (EMA weights) and `output_dir` as a complete `TokenBridgePipeline` folder (the VAE,
the EMA transformer, a `MaskedARScheduler`, the class names, the sampling defaults) with a model card.

The loop (resume, logging, checkpoints, unreadable images counted against `--max_bad_samples`, the final save, card
and Hub upload) is `training.training_utils.run_training`'s; this file holds TokenBridge's part
([`TokenBridgeTraining`]).
"""

# ruff: noqa: E402 (`--help` answers before the heavy imports below: `answer_help`)

from training.arguments import TokenBridgeModelArguments, TokenBridgeTrainingArguments
from training.config import DataArguments, answer_help


if __name__ == "__main__":
    answer_help((DataArguments, TokenBridgeModelArguments, TokenBridgeTrainingArguments))

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL

from tokenset_diffusers.tokenbridge.pipeline_tokenbridge import TokenBridgePipeline
from tokenset_diffusers.tokenbridge.scheduling_masked_ar import MaskedARScheduler
from tokenset_diffusers.tokenbridge.transformer_tokenbridge import (
    masked_token_loss,
)
from training.config import parse_config
from training.data import (
    build_train_examples,
    class_names,
    num_classes_of,
    random_horizontal_flip,
)
from training.latents import LatentExamples, sample_latents
from training.training_utils import (
    ExponentialMovingAverage,
    FinalOutput,
    TrainingHooks,
    TrainingProgress,
    TrainingState,
    build_lr_scheduler,
    build_optimizer,
    derived_seed,
    reduce_metrics,
    run_training,
    step_generator,
)


@dataclass
class TokenBridgeData:
    """What the data determine: the examples, the latent grid, the classes, and the VAE."""

    examples: torch.utils.data.Dataset
    vae: AutoencoderKL
    sample_size: int
    num_classes: int
    id2label: Optional[dict[int, str]]
    cached: bool


@dataclass
class TokenBridgeTrainingState(TrainingState):
    """TokenBridge's [`TrainingState`] and the masked-AR scheduler that draws its training masks."""

    scheduler: MaskedARScheduler


# ---------------------------------------------------------------------------------------------------------- building


def build_data(
    accelerator: Accelerator, data_args: DataArguments, model_args: TokenBridgeModelArguments, seed: int
) -> TokenBridgeData:
    """The latent cache (or the images to encode on the fly) and the frozen VAE."""
    vae_path, vae_subfolder = model_args.vae_name_or_path, model_args.vae_subfolder
    if model_args.latents_dir is not None:
        examples = LatentExamples(model_args.latents_dir, data_args.train_split)
        info = examples.info
        if data_args.max_train_samples is not None:
            examples = torch.utils.data.Subset(examples, range(min(data_args.max_train_samples, len(examples))))
        if vae_path is None:
            vae_path, vae_subfolder = info["vae_name_or_path"], info.get("vae_subfolder")
        names, num_classes = info.get("class_names"), info.get("num_classes")
    else:
        examples, dataset = None, None
    vae = AutoencoderKL.from_pretrained(vae_path, subfolder=vae_subfolder)
    vae = vae.to(accelerator.device).eval().requires_grad_(False)
    stride = 2 ** (len(vae.config.block_out_channels) - 1)
    if model_args.latents_dir is not None:
        if (
            info["scaling_factor"] != vae.config.scaling_factor
            or info["latent_channels"] != vae.config.latent_channels
        ):
            raise ValueError(
                f"The VAE {vae_path} (scaling_factor {vae.config.scaling_factor}, {vae.config.latent_channels} "
                f"channels) is not the one of the latent cache {model_args.latents_dir} ({info['scaling_factor']}, "
                f"{info['latent_channels']})."
            )
        sample_size = info["latent_shape"][-1]
    else:
        examples, dataset = build_train_examples(data_args, vae.config.sample_size, accelerator, seed)
        names = class_names(dataset, data_args.label_column)
        num_classes = num_classes_of(dataset, data_args.label_column)
        sample_size = vae.config.sample_size // stride
    if model_args.num_classes is not None:
        if num_classes is not None and num_classes != model_args.num_classes:
            raise ValueError(f"`num_classes`={model_args.num_classes} disagrees with the data's {num_classes}.")
        num_classes = model_args.num_classes
    if num_classes is None:
        raise ValueError("The number of classes is unknown for this (streamed) dataset; set `num_classes`.")
    return TokenBridgeData(
        examples=examples,
        vae=vae,
        sample_size=sample_size,
        num_classes=num_classes,
        id2label=dict(enumerate(names)) if names is not None else None,
        cached=model_args.latents_dir is not None,
    )


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The original's weight decay: on every tensor of >= 2 dimensions that is not a bias (embeddings, positions,
    `unconditional_embedding` and `mask_token` included); none on 1-D tensors (norms, biases)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 and not name.endswith(".bias") else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def effective_learning_rate(args: TokenBridgeTrainingArguments, num_processes: int) -> float:
    """`base_learning_rate x global batch / 256` when `base_learning_rate` is set, else `learning_rate`."""
    if args.base_learning_rate is None:
        return args.learning_rate
    global_batch = args.train_batch_size * num_processes * args.gradient_accumulation_steps
    return args.base_learning_rate * global_batch / 256


def build_training_state(
    accelerator: Accelerator,
    model_args: TokenBridgeModelArguments,
    args: TokenBridgeTrainingArguments,
    data: TokenBridgeData,
) -> TokenBridgeTrainingState:
    """Transformer, optimiser, schedule, EMA and scheduler, prepared and registered for checkpointing."""
    model = model_args.build_transformer(data.sample_size, data.vae.config.latent_channels, data.num_classes)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = ExponentialMovingAverage(model, args.ema_decay)
    ema.shadow.to(accelerator.device)
    learning_rate = effective_learning_rate(args, accelerator.num_processes)
    optimizer = build_optimizer(parameter_groups(model, args.weight_decay), args, learning_rate=learning_rate)
    lr_scheduler = build_lr_scheduler(optimizer, args)
    progress = TrainingProgress()
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler, ema, progress)
    scheduler = MaskedARScheduler(
        num_tokens=data.sample_size**2,
        mask_ratio_min=model_args.mask_ratio_min,
        mask_ratio_std=model_args.mask_ratio_std,
    )
    return TokenBridgeTrainingState(model, optimizer, lr_scheduler, ema, progress, scheduler)


# ---------------------------------------------------------------------------------------------------------- training


def batch_latents(
    batch: dict, data: TokenBridgeData, generator: torch.Generator, accelerator: Accelerator, random_flip: bool
) -> torch.Tensor:
    """Scaled posterior samples `(batch_size, C, h, w)`: from the cached moments (image or mirror at random), or from
    the VAE's posterior of the (randomly flipped) images."""
    if data.cached:
        moments = batch["moments"].to(accelerator.device)  # (B, 2, 2C, h, w)
        latents = sample_latents(moments, generator, random_flip)  # (B, C, h, w)
    else:
        pixel_values = batch["pixel_values"].to(accelerator.device)  # (B, 3, H, W)
        flipped = random_horizontal_flip(pixel_values, generator)  # drawn even when unused: the same random stream
        pixel_values = flipped if random_flip else pixel_values
        with torch.no_grad(), accelerator.autocast():
            latents = data.vae.encode(pixel_values).latent_dist.sample(generator=generator).float()  # (B, C, h, w)
    return latents * data.vae.config.scaling_factor


def training_mask(scheduler: MaskedARScheduler, batch_size: int, generator: torch.Generator) -> torch.BoolTensor:
    """The training mask of one micro-batch ([`MaskedARScheduler.sample_training_mask`], drawn on the host from the
    CPU `generator`), checked there to mask the same number of positions in every row.

    The transformer keeps the first `L - n` positions of each row's sort as its visible inputs, `n` read from the first
    row; a row masking fewer positions would feed some of its targets to the encoder as inputs. The model checks the
    counts on the CPU only (reading them on an accelerator would wait for it), so they are checked here, before the
    mask moves to the device.

    Returns:
        `torch.BoolTensor` of shape `(batch_size, num_tokens)` on the CPU, True = masked.
    """
    mask = scheduler.sample_training_mask(batch_size, generator)
    counts = mask.sum(dim=1)
    if mask.shape != (batch_size, scheduler.config.num_tokens) or not bool((counts == counts[0]).all()):
        raise ValueError(
            f"The training mask must mask the same number of positions in each of the {batch_size} rows, got "
            f"{counts.tolist()} masked of {mask.shape[-1]}."
        )
    if not 0 < int(counts[0]) <= mask.shape[-1]:
        raise ValueError(f"The training mask must mask at least one position per row, got {int(counts[0])}.")
    return mask


def drop_labels(
    class_labels: torch.LongTensor, probability: float, num_classes: int, generator: torch.Generator
) -> torch.LongTensor:
    """Replaces each label by the unconditional id `num_classes` with `probability` (for classifier-free guidance)."""
    drop = torch.rand(class_labels.shape, generator=generator, device=generator.device) < probability  # (B,)
    return torch.where(drop.to(class_labels.device), torch.full_like(class_labels, num_classes), class_labels)


def train_step(
    accelerator: Accelerator,
    state: TokenBridgeTrainingState,
    data: TokenBridgeData,
    micro_batches: list[dict],
    model_args: TokenBridgeModelArguments,
    args: TokenBridgeTrainingArguments,
) -> dict[str, torch.Tensor | float]:
    """One optimiser step; returns the metrics averaged over micro-batches and processes."""
    step = state.progress.step
    state.model.train()
    # Dropout draws from torch's global RNG: seeded by (seed, process, step), like every other draw of the step.
    torch.manual_seed(derived_seed(args.seed, "dropout", accelerator.process_index, step))
    sums = {}
    for index, batch in enumerate(micro_batches):
        generator = step_generator(args.seed, accelerator.process_index, step, index, accelerator.device)
        latents = batch_latents(batch, data, generator, accelerator, args.random_flip)  # (B, C, h, w)
        class_labels = batch["label"].to(accelerator.device)  # (B,)
        class_labels = drop_labels(class_labels, model_args.label_dropout_prob, data.num_classes, generator)
        # The mask from a CPU generator of its own (the scheduler draws its ratio on the host), then to the device.
        mask_generator = torch.Generator().manual_seed(
            derived_seed(args.seed, "mask", accelerator.process_index, step, index)
        )
        mask = training_mask(state.scheduler, latents.shape[0], mask_generator).to(accelerator.device)  # (B, L)
        sync = index == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(state.model):
            with accelerator.autocast():
                output = state.model(latents, class_labels, mask)
                loss = masked_token_loss(output.logits, output.targets)
            accelerator.backward(loss / len(micro_batches))
        sums["loss"] = sums.get("loss", 0.0) + loss.detach().float() / len(micro_batches)
        sums["mask_ratio"] = sums.get("mask_ratio", 0.0) + mask.float().mean() / len(micro_batches)
    if args.max_grad_norm is not None:
        sums["grad_norm"] = accelerator.clip_grad_norm_(state.model.parameters(), args.max_grad_norm)
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.ema.update(accelerator.unwrap_model(state.model))
    metrics = reduce_metrics(accelerator, sums)
    metrics["lr"] = state.lr_scheduler.get_last_lr()[0]
    return metrics


class TokenBridgeTraining(TrainingHooks):
    """What [`run_training`] needs from this script: the transformer and its masked loss, the latents (cached or
    encoded on the fly) and `output_dir` as a `TokenBridgePipeline` folder."""

    script = "training/train_tokenbridge.py"
    argument_types = (DataArguments, TokenBridgeModelArguments, TokenBridgeTrainingArguments)
    hub_commit_message = "TokenBridge pipeline"

    def __init__(
        self, data_args: DataArguments, model_args: TokenBridgeModelArguments, args: TokenBridgeTrainingArguments
    ):
        super().__init__(data_args, model_args, args)
        self.data = None

    def build(self, accelerator: Accelerator) -> TokenBridgeTrainingState:
        self.data = build_data(accelerator, self.data_args, self.model_args, self.args.seed)
        self.state = build_training_state(accelerator, self.model_args, self.args, self.data)
        return self.state

    def train_examples(self, accelerator: Accelerator):
        return self.data.examples

    def train_step(self, accelerator: Accelerator, micro_batches: list[dict]) -> dict:
        return train_step(accelerator, self.state, self.data, micro_batches, self.model_args, self.args)

    def save_final(self, accelerator: Accelerator, folder: Path, history: list[dict]) -> FinalOutput:
        """`folder` as a `TokenBridgePipeline` folder: the VAE, the EMA transformer, the scheduler, the class names
        and the sampling defaults."""
        data, model_args = self.data, self.model_args
        pipeline = TokenBridgePipeline(
            transformer=self.state.ema.shadow,
            vae=data.vae,
            scheduler=self.state.scheduler,
            id2label=data.id2label,
            default_num_inference_steps=model_args.default_num_inference_steps,
            default_guidance_scale=model_args.default_guidance_scale,
            default_temperature=model_args.default_temperature,
        )
        pipeline.save_pretrained(folder)
        names = [data.id2label[i] for i in sorted(data.id2label)] if data.id2label else None
        dataset = self.data_args.dataset_name or model_args.latents_dir
        card_fields = {
            "dataset": dataset,
            "training_steps": self.state.progress.step,
            "metrics": {"loss": history[-1]["loss"]} if history else {},
            "image_size": data.vae.config.sample_size,
            "sample_size": data.sample_size,
            "latent_channels": data.vae.config.latent_channels,
            "num_classes": data.num_classes,
            "class_names": names,
            "example_class_label": names[0] if names else 0,
            "num_inference_steps": model_args.default_num_inference_steps,
            "guidance_scale": model_args.default_guidance_scale,
            "temperature": model_args.default_temperature,
        }
        return FinalOutput("", "tokenbridge_trained_pipeline", card_fields, dataset=dataset)

    def summary(self, accelerator: Accelerator, history: list[dict]) -> dict:
        return {
            "learning_rate": effective_learning_rate(self.args, accelerator.num_processes),
            "sample_size": self.data.sample_size,
            "num_classes": self.data.num_classes,
        }


def parse_args(argv: Optional[list[str]] = None):
    return parse_config(TokenBridgeTraining.argument_types, argv)


def main(argv: Optional[list[str]] = None) -> TokenBridgeTraining:
    return run_training(TokenBridgeTraining, argv)


if __name__ == "__main__":
    main()

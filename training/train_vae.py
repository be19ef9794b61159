"""Train a continuous VAE (diffusers `AutoencoderKL`) from scratch, as TokenBridge's quantizer needs one.

    accelerate launch training/train_vae.py --config training/configs/digits_vae.yaml [--flag value ...]

The released TokenBridge uses MAR's KL-16 (`AutoencoderKL` with 5 levels [128, 128, 256, 256, 512], stride 16,
16 latent channels), which only fits 256 px ImageNet; this script trains the same architecture family on any image
dataset (`training/configs/imagenet256_vae_kl16.yaml` is KL-16's shape and LDM's recipe, `digits_vae.yaml` a small
model trained here on CPU in minutes).

Loss per micro-batch: `reconstruction_weight * L1/L2(decode(z), image)` with `z` drawn from the posterior
(`mean + std * noise`, the noise from the step's generator) + `kl_weight * KL(posterior || N(0, I))` (mean over latent
elements) (+ `perceptual_weight * LPIPS` when the `lpips` package is installed) + from `discriminator_start_step` on,
`adaptive_weight * discriminator_weight * hinge GAN loss` of a PatchGAN discriminator trained alongside. AdamW,
warm-up + cosine (or constant) LR, gradient clipping, EMA of the weights; the EMA model is evaluated (PSNR / L1 of
`decode(mean)` on `eval_split`) and saved to `output_dir/vae` (`AutoencoderKL.from_pretrained`) with its
`scaling_factor` set to 1 / std of posterior samples of the training images (LDM's convention) unless the config
fixes it.

The loop (resume, logging, evaluation every `eval_steps`, checkpoints, unreadable images counted against
`--max_bad_samples`, the final save, card and Hub upload) is `training.training_utils.run_training`'s; this file holds
the VAE's part ([`VAETraining`]).
"""

# ruff: noqa: E402 (`--help` answers before the heavy imports below: `answer_help`)

from training.arguments import VAEModelArguments, VAETrainingArguments
from training.config import DataArguments, answer_help


if __name__ == "__main__":
    answer_help((DataArguments, VAEModelArguments, VAETrainingArguments))

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL

from training.checkpointing import parameters_checksum
from training.config import parse_config
from training.data import (
    build_eval_dataloader,
    build_train_examples,
    random_horizontal_flip,
)
from training.discriminator import (
    AutoencoderTrainingState,
    adversarial_loss,
    autoencoder_train_step,
    prepare_discriminator,
)
from training.image_losses import (
    build_perceptual_loss,
    describe_reconstruction_metrics,
    evaluate_reconstruction,
    reconstruction_nll,
)
from training.training_utils import (
    ExponentialMovingAverage,
    FinalOutput,
    TrainingHooks,
    TrainingProgress,
    build_lr_scheduler,
    build_optimizer,
    derived_seed,
    run_training,
)


class VAEWithPosterior(torch.nn.Module):
    """The VAE's training forward as one module call (so DDP synchronises its gradients): image ->
    (reconstruction of a posterior sample, posterior mean, posterior log-variance)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(
        self, pixel_values: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixel_values).latent_dist  # moments (B, 2 * C_lat, h, w)
        latents = posterior.sample(generator=generator)  # (B, C_lat, h, w): mean + std * noise
        reconstruction = self.vae.decode(latents).sample  # (B, C, H, W)
        return reconstruction, posterior.mean, posterior.logvar


@dataclass
class VAETrainingState(AutoencoderTrainingState):
    """The autoencoder's state; `model` is the prepared [`VAEWithPosterior`], `ema` follows its `AutoencoderKL`."""


# ---------------------------------------------------------------------------------------------------------- building


def build_training_state(
    accelerator: Accelerator, model_args: VAEModelArguments, args: VAETrainingArguments
) -> VAETrainingState:
    """Model, discriminator, optimisers, schedules and EMA, prepared and registered for checkpointing."""
    vae = model_args.build_model()
    if args.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    ema = ExponentialMovingAverage(vae, args.ema_decay)
    ema.shadow.to(accelerator.device)
    optimizer = build_optimizer(vae.parameters(), args)
    lr_scheduler = build_lr_scheduler(optimizer, args)
    progress = TrainingProgress()
    model, optimizer = accelerator.prepare(VAEWithPosterior(vae), optimizer)
    state = VAETrainingState(model, optimizer, lr_scheduler, ema, progress)
    accelerator.register_for_checkpointing(lr_scheduler, ema, progress)
    if args.discriminator_start_step is not None:
        state.discriminator, state.discriminator_optimizer, state.discriminator_lr_scheduler = prepare_discriminator(
            accelerator, args, model_args.in_channels, model_args.image_size
        )
    state.perceptual = build_perceptual_loss(args)
    if state.perceptual is not None:
        state.perceptual.to(accelerator.device)
    return state


# ---------------------------------------------------------------------------------------------------------- training


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over batch and latent elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def vae_losses(
    state: VAETrainingState,
    accelerator: Accelerator,
    pixel_values: torch.Tensor,
    generator: torch.Generator,
    use_gan: bool,
    args: VAETrainingArguments,
) -> dict[str, torch.Tensor]:
    """The VAE's loss on one micro-batch and its parts (all scalars), plus the `reconstruction` itself."""
    reconstruction, mean, logvar = state.model(pixel_values, generator)
    reconstruction = reconstruction.float()  # (B, C, H, W)
    reconstruction_loss, nll_loss = reconstruction_nll(reconstruction, pixel_values, state.perceptual, args)
    kl_loss = kl_divergence(mean, logvar)
    loss = nll_loss + args.kl_weight * kl_loss
    losses = {
        "reconstruction_loss": reconstruction_loss.detach(),
        "kl_loss": kl_loss.detach(),
        "posterior_std": (0.5 * logvar.detach().float()).exp().mean(),
    }
    if use_gan:
        last_layer = accelerator.unwrap_model(state.model).vae.decoder.conv_out.weight
        term, generator_loss, adaptive_weight = adversarial_loss(
            accelerator, state.discriminator, reconstruction, nll_loss, last_layer, args.discriminator_weight
        )
        loss = loss + term
        losses.update(generator_loss=generator_loss.detach(), adaptive_weight=adaptive_weight)
    losses.update(loss=loss, reconstruction=reconstruction)
    return losses


def train_step(
    accelerator: Accelerator, state: VAETrainingState, micro_batches: list[dict], args: VAETrainingArguments
) -> dict[str, torch.Tensor | float]:
    """One optimiser step of the VAE (and of the discriminator once the GAN is on,
    [`training.discriminator.autoencoder_train_step`]); returns the metrics averaged over micro-batches and processes
    (0-d device tensors, and the learning rate)."""

    def images(batch: dict, generator: torch.Generator) -> torch.Tensor:
        pixel_values = batch["pixel_values"].to(accelerator.device)  # (B, C, H, W)
        return random_horizontal_flip(pixel_values, generator) if args.random_flip else pixel_values

    def losses(pixel_values: torch.Tensor, generator: torch.Generator, use_gan: bool) -> dict[str, torch.Tensor]:
        return vae_losses(state, accelerator, pixel_values, generator, use_gan, args)

    vae = accelerator.unwrap_model(state.model).vae
    return autoencoder_train_step(accelerator, state, micro_batches, args, vae, images, losses)


# ------------------------------------------------------------------------------------------------------------ saving


@torch.no_grad()
def estimate_scaling_factor(
    accelerator: Accelerator, vae: AutoencoderKL, examples, num_samples: int, batch_size: int, seed: int
) -> float:
    """1 / std of posterior samples (`mean + std * noise`) of the first `num_samples` training images: the factor
    that gives the generator latents of unit variance (LDM's convention; MAR's 0.2325 for KL-16 is such a value)."""
    generator = torch.Generator(device=accelerator.device).manual_seed(derived_seed(seed, "scaling_factor"))
    count = min(num_samples, len(examples))
    total, total_squares, num_values = 0.0, 0.0, 0
    for start in range(0, count, batch_size):
        batch = [examples[index] for index in range(start, min(start + batch_size, count))]
        batch = [example["pixel_values"] for example in batch if "pixel_values" in example]  # readable ones only
        if not batch:
            continue
        pixel_values = torch.stack(batch).to(accelerator.device)  # (B, C, H, W)
        latents = vae.encode(pixel_values).latent_dist.sample(generator=generator).double()  # (B, C_lat, h, w)
        total += latents.sum().item()
        total_squares += latents.pow(2).sum().item()
        num_values += latents.numel()
    variance = total_squares / num_values - (total / num_values) ** 2
    return 1.0 / math.sqrt(max(variance, 1e-12))


class VAETraining(TrainingHooks):
    """What [`run_training`] needs from this script: the VAE, its loss, the images and the evaluation of the EMA
    model, and `output_dir/vae` with its scaling factor."""

    script = "training/train_vae.py"
    argument_types = (DataArguments, VAEModelArguments, VAETrainingArguments)
    hub_commit_message = "VAE (AutoencoderKL)"

    def __init__(self, data_args: DataArguments, model_args: VAEModelArguments, args: VAETrainingArguments):
        super().__init__(data_args, model_args, args)
        self.examples = None
        self.scaling_factor = None  # set on the main process by `save_final`

    def build(self, accelerator: Accelerator) -> VAETrainingState:
        self.state = build_training_state(accelerator, self.model_args, self.args)
        return self.state

    def train_examples(self, accelerator: Accelerator):
        image_size = self.model_args.image_size
        self.examples, _ = build_train_examples(self.data_args, image_size, accelerator, self.args.seed)
        return self.examples

    def eval_dataloader(self, accelerator: Accelerator):
        image_size, batch_size = self.model_args.image_size, self.args.eval_batch_size
        return build_eval_dataloader(self.data_args, image_size, batch_size, accelerator)

    def train_step(self, accelerator: Accelerator, micro_batches: list[dict]) -> dict:
        return train_step(accelerator, self.state, micro_batches, self.args)

    def evaluate(self, accelerator: Accelerator, eval_dataloader) -> dict[str, float]:
        """PSNR and L1 of `decode(posterior mean)` of the EMA model."""
        vae = self.state.ema.shadow
        return evaluate_reconstruction(
            accelerator, lambda images: vae.decode(vae.encode(images).latent_dist.mode()).sample, eval_dataloader
        )

    def evaluation_message(self, metrics: dict[str, float]) -> str:
        return describe_reconstruction_metrics(metrics)

    def save_final(self, accelerator: Accelerator, folder: Path, history: list[dict]) -> FinalOutput:
        """The EMA VAE with its scaling factor (measured unless the config fixes it) in `folder/vae`."""
        model_args, args = self.model_args, self.args
        vae = self.state.ema.shadow
        scaling_factor = model_args.scaling_factor
        if scaling_factor is None:
            scaling_factor = estimate_scaling_factor(
                accelerator, vae, self.examples, args.scaling_factor_samples, args.eval_batch_size, args.seed
            )
        vae.register_to_config(scaling_factor=scaling_factor)
        vae.save_pretrained(folder / "vae")
        self.scaling_factor = scaling_factor
        final = history[-1] if history else {}
        card_fields = {
            "image_size": model_args.image_size,
            "latent_channels": model_args.latent_channels,
            "downsampling_factor": 2 ** (len(model_args.block_out_channels) - 1),
            "scaling_factor": scaling_factor,
            "dataset": self.data_args.dataset_name,
            "training_steps": self.state.progress.step,
            "metrics": {name: value for name, value in final.items() if name != "step"} or None,
        }
        return FinalOutput("vae", "vae", card_fields, dataset=self.data_args.dataset_name)

    def trained_model(self, accelerator: Accelerator) -> AutoencoderKL:
        return accelerator.unwrap_model(self.state.model).vae

    def summary(self, accelerator: Accelerator, history: list[dict]) -> dict:
        discriminator = self.state.discriminator
        return {
            "scaling_factor": self.scaling_factor,
            "discriminator_checksum": (
                parameters_checksum(accelerator.unwrap_model(discriminator)) if discriminator is not None else None
            ),
        }


def main(argv: Optional[list[str]] = None) -> VAETraining:
    return run_training(VAETraining, argv)


def parse_args(argv: Optional[list[str]] = None):
    return parse_config(VAETraining.argument_types, argv)


if __name__ == "__main__":
    main()

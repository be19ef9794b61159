"""The adversarial training of the two image autoencoders (`train_tokenizer.py`, `train_vae.py`): a PatchGAN
discriminator, hinge losses, the VQGAN adaptive weight, and the optimiser step that updates the autoencoder and then the
discriminator ([`autoencoder_train_step`]).

The discriminator is the pix2pix/VQGAN PatchGAN (4x4 convolutions, stride 2 then 1, LeakyReLU 0.2), with GroupNorm
instead of BatchNorm: its output does not depend on the other images of the batch or on the number of processes, and
it has no running statistics to keep in sync across processes.
"""

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from training.training_utils import (
    TrainingState,
    build_lr_scheduler,
    build_optimizer,
    reduce_metrics,
    step_generator,
)


class PatchGANDiscriminator(nn.Module):
    """Scores overlapping patches of an image as real (> 0) or generated (< 0).

    Args:
        in_channels (`int`, defaults to 3): image channels.
        base_channels (`int`, defaults to 64): channels of the first layer; doubled per layer up to 8x.
        num_layers (`int`, defaults to 3): stride-2 layers after the first (the receptive field grows with them).
        norm_num_groups (`int`, defaults to 32): GroupNorm groups; must divide every layer's channels.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, norm_num_groups: int = 32):
        super().__init__()
        if num_layers < 1 or base_channels < 1:
            raise ValueError(f"`num_layers` and `base_channels` must be positive, got {num_layers}, {base_channels}.")
        widths = [base_channels * min(2**layer, 8) for layer in range(num_layers + 1)]
        if any(width % norm_num_groups for width in widths[1:]):
            raise ValueError(f"`norm_num_groups`={norm_num_groups} must divide every layer width {widths[1:]}.")
        self.num_layers = num_layers
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=4, stride=2, padding=1)
        # Stride 2 for layers 1..num_layers-1, stride 1 for the last, as in pix2pix.
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(widths[i], widths[i + 1], kernel_size=4, stride=2 if i + 1 < num_layers else 1, padding=1)
                for i in range(num_layers)
            ]
        )
        self.norms = nn.ModuleList([nn.GroupNorm(norm_num_groups, width) for width in widths[1:]])
        self.activation = nn.LeakyReLU(0.2)
        self.conv_out = nn.Conv2d(widths[-1], 1, kernel_size=4, stride=1, padding=1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # N(0, 0.02) convolutions and N(1, 0.02) norm scales: the pix2pix initialisation.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def output_size(self, image_size: int) -> int:
        """Side of the patch-score map for `image_size` x `image_size` inputs."""
        size = (image_size + 2 - 4) // 2 + 1
        for layer in range(self.num_layers):
            stride = 2 if layer + 1 < self.num_layers else 1
            size = (size + 2 - 4) // stride + 1
        return size - 1

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values` `(batch_size, in_channels, H, W)` in [-1, 1] -> patch logits `(batch_size, 1, h, w)`."""
        hidden_states = self.activation(self.conv_in(pixel_values))  # (B, C0, H/2, W/2)
        for conv, norm in zip(self.convs, self.norms):
            hidden_states = self.activation(norm(conv(hidden_states)))  # (B, Ci, h, w)
        return self.conv_out(hidden_states)  # (B, 1, h', w')


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """`(mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))) / 2`."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """`-mean(D(fake))`: the generator's side of the hinge GAN."""
    return -logits_fake.float().mean()


def adaptive_generator_weight(
    reconstruction_loss: torch.Tensor,
    generator_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """The VQGAN adaptive weight of the GAN loss: `|grad rec| / (|grad gan| + 1e-4)`, both gradients taken w.r.t. the
    decoder's last layer, clamped to [0, `max_weight`] and detached. It scales the GAN loss so that its gradient at
    the output layer is as large as the reconstruction loss's.

    Both losses must still hold their graphs (it calls `torch.autograd.grad(..., retain_graph=True)`).
    """
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer_weight, retain_graph=True)[0]
    generator_grad = torch.autograd.grad(generator_loss, last_layer_weight, retain_graph=True)[0]
    weight = reconstruction_grad.norm() / (generator_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def prepare_discriminator(accelerator, args, num_channels: int, image_size: int):
    """The PatchGAN of `args` (`discriminator_base_channels`, `_num_layers`, `_norm_num_groups`) for images of
    `num_channels` x `image_size` px, its optimiser (at `discriminator_learning_rate`) and LR schedule, prepared by
    `accelerator` and registered for checkpointing. Returns `(discriminator, optimizer, lr_scheduler)`."""
    discriminator = PatchGANDiscriminator(
        num_channels,
        args.discriminator_base_channels,
        args.discriminator_num_layers,
        args.discriminator_norm_num_groups,
    )
    if discriminator.output_size(image_size) < 1:
        raise ValueError(
            f"`discriminator_num_layers`={args.discriminator_num_layers} is too deep for {image_size} px images; use "
            "fewer layers."
        )
    optimizer = build_optimizer(discriminator.parameters(), args, learning_rate=args.discriminator_learning_rate)
    lr_scheduler = build_lr_scheduler(optimizer, args)
    discriminator, optimizer = accelerator.prepare(discriminator, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    return discriminator, optimizer, lr_scheduler


def adversarial_loss(
    accelerator, discriminator: nn.Module, reconstruction: torch.Tensor, nll_loss: torch.Tensor, last_layer, weight
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The generator's GAN term of an autoencoder loss: the hinge generator loss of the unwrapped (frozen)
    `discriminator` on `reconstruction` (so gradients reach the autoencoder only, and DDP sees no forward), scaled by
    the adaptive weight against `nll_loss` at the decoder's `last_layer` weight and by `weight`. Returns
    `(term, generator_loss, adaptive_weight)`."""
    logits_fake = accelerator.unwrap_model(discriminator)(reconstruction)  # (B, 1, h, w)
    generator_loss = hinge_generator_loss(logits_fake)
    adaptive_weight = adaptive_generator_weight(nll_loss, generator_loss, last_layer) * weight
    return adaptive_weight * generator_loss, generator_loss, adaptive_weight


def discriminator_update(
    accelerator,
    discriminator: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    max_grad_norm: Optional[float],
) -> torch.Tensor:
    """One optimiser step of the (prepared) `discriminator` on `(real, reconstructed)` micro-batches: one forward of
    both halves per micro-batch (so DDP sees one forward), gradients synchronised on the last, hinge loss, optional
    clipping. Returns the mean hinge loss (a 0-d tensor on the device)."""
    total = torch.zeros((), device=accelerator.device)
    for index, (real, fake) in enumerate(pairs):
        sync = index == len(pairs) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(discriminator):
            with accelerator.autocast():
                logits = discriminator(torch.cat([real, fake]))  # (2B, 1, h, w)
                logits_real, logits_fake = logits.chunk(2)
                loss = hinge_discriminator_loss(logits_real, logits_fake)
            accelerator.backward(loss / len(pairs))
        total += loss.detach() / len(pairs)
    if max_grad_norm is not None:
        accelerator.clip_grad_norm_(discriminator.parameters(), max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@dataclass
class AutoencoderTrainingState(TrainingState):
    """The [`TrainingState`] of an image autoencoder and its GAN's and LPIPS' parts (prepared by accelerate where it
    applies; None when off)."""

    discriminator: Optional[nn.Module] = None
    discriminator_optimizer: Optional[torch.optim.Optimizer] = None
    discriminator_lr_scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    perceptual: Optional[nn.Module] = None


def autoencoder_train_step(
    accelerator,
    state: AutoencoderTrainingState,
    micro_batches: list[dict],
    args,
    autoencoder: nn.Module,
    images: Callable[[dict, torch.Generator], torch.Tensor],
    losses: Callable[[torch.Tensor, torch.Generator, bool], dict[str, torch.Tensor]],
    frozen_parameters: Iterable[nn.Parameter] = (),
) -> dict[str, torch.Tensor | float]:
    """One optimiser step of an image autoencoder, then (once the GAN is on) of the discriminator on the same images.

    1. For every micro-batch: the step's generator ([`training.training_utils.step_generator`]), `images(batch,
       generator)` (`(B, C, H, W)` on the device), `losses(images, generator, use_gan)` under autocast (a dict with
       the scalar `loss` that is back-propagated, the `reconstruction` and other scalars to log); gradients are
       synchronised on the last micro-batch.
    2. The update: `frozen_parameters` lose their gradients, clipping at `args.max_grad_norm`, the optimiser and LR
       schedule step, the EMA follows `autoencoder` (the unwrapped model).
    3. From step `args.discriminator_start_step` on: the discriminator's update on (image, reconstruction) pairs.

    Returns the metrics averaged over micro-batches and processes (0-d device tensors) and the learning rate `lr`.
    """
    step = state.progress.step
    use_gan = state.discriminator is not None and step >= args.discriminator_start_step
    if use_gan:
        accelerator.unwrap_model(state.discriminator).requires_grad_(False)
    state.model.train()

    # 1. autoencoder: forward and backward on every micro-batch, gradients synchronised on the last
    sums, pairs = {}, []
    for index, batch in enumerate(micro_batches):
        generator = step_generator(args.seed, accelerator.process_index, step, index, accelerator.device)
        pixel_values = images(batch, generator)  # (B, C, H, W)
        sync = index == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(state.model):
            with accelerator.autocast():
                values = losses(pixel_values, generator, use_gan)
            accelerator.backward(values["loss"] / len(micro_batches))
        reconstruction = values.pop("reconstruction")
        if use_gan:
            pairs.append((pixel_values, reconstruction.detach()))
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value.detach() / len(micro_batches)

    # 2. autoencoder update (frozen parts keep no gradient, whatever DDP filled in), then the EMA
    for parameter in frozen_parameters:
        parameter.grad = None
    if args.max_grad_norm is not None:
        sums["grad_norm"] = accelerator.clip_grad_norm_(state.model.parameters(), args.max_grad_norm)
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.ema.update(autoencoder)

    # 3. discriminator update on the same images
    if use_gan:
        accelerator.unwrap_model(state.discriminator).requires_grad_(True)
        sums["discriminator_loss"] = discriminator_update(
            accelerator,
            state.discriminator,
            state.discriminator_optimizer,
            state.discriminator_lr_scheduler,
            pairs,
            args.max_grad_norm,
        )
    metrics = reduce_metrics(accelerator, sums)
    metrics["lr"] = state.lr_scheduler.get_last_lr()[0]
    return metrics

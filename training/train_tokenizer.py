"""Stage 1: train the TokenSet set tokenizer (`TokenSetVQVAE`) from scratch.

    accelerate launch training/train_tokenizer.py --config training/configs/digits_tokenizer.yaml [--flag value ...]

Loss per micro-batch: `reconstruction_weight * L1/L2(reconstruction, image)` (+ `perceptual_weight * LPIPS`, when
the `lpips` package is installed) + `codebook_weight * codebook_loss` + `commitment_weight * commitment_loss` (from the
model's forward) + from `discriminator_start_step` on, `adaptive_weight * discriminator_weight * hinge GAN loss` of a
PatchGAN discriminator, which is trained alongside with the hinge loss. From `decoder_only_start_step` on, the encoder,
the codebook and the latent tokens are frozen and only the decoder trains (the paper's final phase). AdamW with
warm-up + cosine decay, gradient clipping, and an EMA of the weights, which is what gets evaluated (PSNR / L1 on
`eval_split`) and saved: `output_dir/image_tokenizer` (`TokenSetVQVAE.from_pretrained`).

The loop (resume, logging, evaluation every `eval_steps`, checkpoints, unreadable images counted against
`--max_bad_samples`, the final save, card and Hub upload) is `training.training_utils.run_training`'s; this file holds
the tokenizer's part ([`TokenizerTraining`]).
"""

# ruff: noqa: E402 (`--help` answers before the heavy imports below: `answer_help`)

from training.arguments import TokenizerModelArguments, TokenizerTrainingArguments
from training.config import DataArguments, answer_help


if __name__ == "__main__":
    answer_help((DataArguments, TokenizerModelArguments, TokenizerTrainingArguments))

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from training.checkpointing import parameters_checksum
from training.config import parse_config
from training.data import build_eval_dataloader, build_train_examples, random_horizontal_flip
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
    run_training,
)


logger = logging.getLogger(__name__)


@dataclass
class TokenizerTrainingState(AutoencoderTrainingState):
    """The autoencoder's state and the bootstrap readout (prepared; None when off)."""

    readout: Optional[torch.nn.Module] = None


# ---------------------------------------------------------------------------------------------------------- building


def build_training_state(
    accelerator: Accelerator, model_args: TokenizerModelArguments, args: TokenizerTrainingArguments
) -> TokenizerTrainingState:
    """Model, discriminator, optimisers, schedules and EMA, prepared and registered for checkpointing."""
    model = TokenSetVQVAE(model_args.to_config())
    if args.gradient_checkpointing:  # transformers >= 5.x renamed it; either recomputes the ViT blocks in backward
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    ema = ExponentialMovingAverage(model, args.ema_decay)
    ema.shadow.to(accelerator.device)
    config = model.config
    readout = None
    if args.bootstrap_steps > 0:  # codes (B, M * code_dim) -> pixels (B, 3 * H * W)
        readout = torch.nn.Linear(config.num_tokens * config.code_dim, config.num_channels * config.image_size**2)
    parameters = [*model.parameters(), *(readout.parameters() if readout is not None else [])]
    optimizer = build_optimizer(parameters, args)
    lr_scheduler = build_lr_scheduler(optimizer, args)
    progress = TrainingProgress()
    state = TokenizerTrainingState(model, optimizer, lr_scheduler, ema, progress)
    if readout is None:
        state.model, state.optimizer = accelerator.prepare(model, optimizer)
    else:
        state.model, state.readout, state.optimizer = accelerator.prepare(model, readout, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler, ema, progress)
    if args.discriminator_start_step is not None:
        state.discriminator, state.discriminator_optimizer, state.discriminator_lr_scheduler = prepare_discriminator(
            accelerator, args, model_args.to_config().num_channels, model_args.image_size
        )
    state.perceptual = build_perceptual_loss(args)
    if state.perceptual is not None:
        state.perceptual.to(accelerator.device)
    return state


def set_decoder_only(model: TokenSetVQVAE, decoder_only: bool) -> None:
    """Freezes (or unfreezes) the encoder, its latent tokens and the codebook."""
    model.encoder.requires_grad_(not decoder_only)
    model.quantizer.requires_grad_(not decoder_only)


# ---------------------------------------------------------------------------------------------------------- training


def tokenizer_losses(
    state: TokenizerTrainingState,
    accelerator: Accelerator,
    pixel_values: torch.Tensor,
    generator: torch.Generator,
    use_gan: bool,
    args: TokenizerTrainingArguments,
    use_bootstrap: bool = False,
) -> dict[str, torch.Tensor]:
    """The model's loss on one micro-batch and its parts (all scalars), plus the `reconstruction` itself."""
    outputs = state.model(pixel_values, shuffle_tokens=args.shuffle_tokens, generator=generator)
    reconstruction = outputs.reconstruction.float()  # (B, 3, H, W)
    reconstruction_loss, nll_loss = reconstruction_nll(reconstruction, pixel_values, state.perceptual, args)
    loss = nll_loss + args.codebook_weight * outputs.codebook_loss + args.commitment_weight * outputs.commitment_loss
    unique_tokens = torch.zeros(accelerator.unwrap_model(state.model).config.codebook_size, device=pixel_values.device)
    losses = {
        "reconstruction_loss": reconstruction_loss.detach(),
        "codebook_loss": outputs.codebook_loss.detach(),
        "commitment_loss": outputs.commitment_loss.detach(),
        "codebook_usage": unique_tokens.index_fill_(0, outputs.token_ids.flatten(), 1.0).mean(),
    }
    if use_bootstrap:
        readout = state.readout(outputs.encoder_codes.flatten(1).float()).view_as(pixel_values)  # (B, 3, H, W)
        bootstrap_loss = F.mse_loss(readout, pixel_values)
        loss = loss + args.bootstrap_weight * bootstrap_loss
        losses["bootstrap_loss"] = bootstrap_loss.detach()
    if use_gan:
        last_layer = accelerator.unwrap_model(state.model).pixel_decoder.conv_out.weight
        term, generator_loss, adaptive_weight = adversarial_loss(
            accelerator, state.discriminator, reconstruction, nll_loss, last_layer, args.discriminator_weight
        )
        loss = loss + term
        losses.update(generator_loss=generator_loss.detach(), adaptive_weight=adaptive_weight)
    losses.update(loss=loss, reconstruction=reconstruction)
    return losses


def codebook_collapse_message(codebook_usage: float, codebook_size: int) -> Optional[str]:
    """A warning when the codebook has collapsed, else None.

    Args:
        codebook_usage (`float`): the fraction of the `codebook_size` entries that one micro-batch's token sets use,
            averaged over a logging window (the `codebook_usage` metric of [`tokenizer_losses`]).
        codebook_size (`int`): C.

    Collapsed means that the micro-batches use one code on average (fewer than 1.5): every image becomes the same
    token set, so the reconstruction cannot depend on the image however low the codebook loss goes.
    """
    codes_used = codebook_usage * codebook_size
    if codes_used >= 1.5:
        return None
    return (
        f"the codebook has collapsed: the token sets of a batch use {codes_used:.2f} of {codebook_size} codes on "
        "average, so every image gets the same tokens; lower --learning_rate, raise --commitment_weight or "
        "restart from an earlier checkpoint"
    )


def train_step(
    accelerator: Accelerator,
    state: TokenizerTrainingState,
    micro_batches: list[dict],
    args: TokenizerTrainingArguments,
) -> dict[str, float]:
    """One optimiser step of the tokenizer (and of the discriminator once the GAN is on,
    [`training.discriminator.autoencoder_train_step`]); from `decoder_only_start_step` on, the encoder and the
    codebook stay frozen. Returns the metrics averaged over micro-batches and processes."""
    step = state.progress.step
    model = accelerator.unwrap_model(state.model)
    decoder_only = args.decoder_only_start_step is not None and step >= args.decoder_only_start_step
    use_bootstrap = state.readout is not None and step < args.bootstrap_steps
    set_decoder_only(model, decoder_only)

    def images(batch: dict, generator: torch.Generator) -> torch.Tensor:
        pixel_values = batch["pixel_values"].to(accelerator.device)  # (B, 3, H, W)
        flipped = random_horizontal_flip(pixel_values, generator)  # drawn even when unused: the same random stream
        return flipped if args.random_flip else pixel_values

    def losses(pixel_values: torch.Tensor, generator: torch.Generator, use_gan: bool) -> dict[str, torch.Tensor]:
        return tokenizer_losses(state, accelerator, pixel_values, generator, use_gan, args, use_bootstrap)

    frozen = [*model.encoder.parameters(), *model.quantizer.parameters()] if decoder_only else []
    return autoencoder_train_step(accelerator, state, micro_batches, args, model, images, losses, frozen)


class TokenizerTraining(TrainingHooks):
    """What [`run_training`] needs from this script: the tokenizer, its loss (and the GAN's), the images and the
    evaluation of the EMA model, and `output_dir/image_tokenizer`."""

    script = "training/train_tokenizer.py"
    argument_types = (DataArguments, TokenizerModelArguments, TokenizerTrainingArguments)
    hub_commit_message = "TokenSet set tokenizer"

    def find_unused_parameters(self) -> bool:
        return self.args.decoder_only_start_step is not None  # the frozen encoder gets no gradient then

    def build(self, accelerator: Accelerator) -> TokenizerTrainingState:
        self.state = build_training_state(accelerator, self.model_args, self.args)
        return self.state

    def train_examples(self, accelerator: Accelerator):
        image_size = self.model_args.image_size
        return build_train_examples(self.data_args, image_size, accelerator, self.args.seed)[0]

    def eval_dataloader(self, accelerator: Accelerator):
        image_size, batch_size = self.model_args.image_size, self.args.eval_batch_size
        return build_eval_dataloader(self.data_args, image_size, batch_size, accelerator)

    def train_step(self, accelerator: Accelerator, micro_batches: list[dict]) -> dict:
        return train_step(accelerator, self.state, micro_batches, self.args)

    def evaluate(self, accelerator: Accelerator, eval_dataloader) -> dict[str, float]:
        """PSNR and L1 of `decode(encode(image))` of the EMA model."""
        model = self.state.ema.shadow
        return evaluate_reconstruction(
            accelerator, lambda images: model.decode(model.encode(images).token_ids), eval_dataloader
        )

    def evaluation_message(self, metrics: dict[str, float]) -> str:
        return describe_reconstruction_metrics(metrics)

    def check_metrics(self, step: int, means: dict[str, float]) -> None:
        """Warns (once per run) when the codebook collapses ([`codebook_collapse_message`])."""
        if getattr(self, "_warned_collapse", False) or "train/codebook_usage" not in means:
            return
        message = codebook_collapse_message(means["train/codebook_usage"], self.model_args.codebook_size)
        if message is not None:
            logger.warning("step %d: %s", step, message)
            self._warned_collapse = True

    def save_final(self, accelerator: Accelerator, folder: Path, history: list[dict]) -> FinalOutput:
        """The EMA tokenizer in `folder/image_tokenizer`."""
        tokenizer = self.state.ema.shadow
        tokenizer.save_pretrained(folder / "image_tokenizer")
        config = tokenizer.config
        final = history[-1] if history else {}
        card_fields = {
            "source": "trained",
            "image_size": config.image_size,
            "codebook_size": config.codebook_size,
            "num_tokens": config.num_tokens,
            "dataset": self.data_args.dataset_name,
            "training_steps": self.state.progress.step,
            "metrics": {name: value for name, value in final.items() if name != "step"} or None,
        }
        return FinalOutput("image_tokenizer", "tokenizer", card_fields, dataset=self.data_args.dataset_name)

    def summary(self, accelerator: Accelerator, history: list[dict]) -> dict:
        discriminator = self.state.discriminator
        return {
            "discriminator_checksum": (
                parameters_checksum(accelerator.unwrap_model(discriminator)) if discriminator is not None else None
            ),
        }


def main(argv: Optional[list[str]] = None) -> TokenizerTraining:
    return run_training(TokenizerTraining, argv)


def parse_args(argv: Optional[list[str]] = None):
    return parse_config(TokenizerTraining.argument_types, argv)


if __name__ == "__main__":
    main()

"""The argument groups of the training scripts (dataclasses parsed by [`training.config.parse_config`]), kept apart
from the scripts so that a script's `--help` ([`training.config.answer_help`]) answers before it imports torch,
accelerate or diffusers: the model classes they build are imported where they are built."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from training.config import AutoencoderTrainingArguments, arg, check_positive


if TYPE_CHECKING:
    from diffusers import AutoencoderKL


@dataclass
class VAEModelArguments:
    """Architecture of the `AutoencoderKL`; the defaults are MAR's KL-16 (TokenBridge's VAE,
    docs/tokenbridge.md#vae)."""

    image_size: int = arg(256, "Image side in pixels.")
    in_channels: int = arg(3, "Image channels.")
    latent_channels: int = arg(16, "Latent channels (TokenBridge quantizes each one).")
    block_out_channels: list[int] = arg(
        [128, 128, 256, 256, 512], "Width of each resolution level; the stride is 2 ** (levels - 1)."
    )
    layers_per_block: int = arg(2, "ResNet blocks per encoder level (the decoder has one more).")
    encoder_attention_in_last_level: bool = arg(True, "Self-attention after each ResNet block of the lowest level.")
    mid_block_add_attention: bool = arg(True, "Self-attention in the encoder's and decoder's mid blocks.")
    norm_num_groups: int = arg(32, "GroupNorm groups; must divide every width.")
    scaling_factor: Optional[float] = arg(
        None, "Latent scaling factor saved in the config; None: 1 / std of posterior samples of training images."
    )

    def __post_init__(self):
        check_positive(self, "image_size", "in_channels", "latent_channels", "layers_per_block", "scaling_factor")
        stride = 2 ** (len(self.block_out_channels) - 1)
        if not self.block_out_channels or self.image_size % stride:
            raise ValueError(
                f"`image_size` {self.image_size} must be divisible by the stride {stride} of "
                f"`block_out_channels` {self.block_out_channels}."
            )
        if any(width % self.norm_num_groups for width in self.block_out_channels):
            raise ValueError(
                f"`norm_num_groups` {self.norm_num_groups} must divide every width of {self.block_out_channels}."
            )

    def build_model(self) -> "AutoencoderKL":
        from diffusers import AutoencoderKL

        num_levels = len(self.block_out_channels)
        down_block_types = ["DownEncoderBlock2D"] * num_levels
        if self.encoder_attention_in_last_level:
            down_block_types[-1] = "AttnDownEncoderBlock2D"
        return AutoencoderKL(
            in_channels=self.in_channels,
            out_channels=self.in_channels,
            down_block_types=down_block_types,
            up_block_types=["UpDecoderBlock2D"] * num_levels,
            block_out_channels=list(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            act_fn="silu",
            latent_channels=self.latent_channels,
            norm_num_groups=self.norm_num_groups,
            sample_size=self.image_size,
            scaling_factor=1.0 if self.scaling_factor is None else self.scaling_factor,
            mid_block_add_attention=self.mid_block_add_attention,
        )


@dataclass
class VAETrainingArguments(AutoencoderTrainingArguments):
    """Run and loss settings; the defaults follow LDM's KL autoencoder recipe (which MAR's KL-16 came from)."""

    output_dir: str = arg("outputs/vae", "Folder for checkpoints, logs and `vae/`.")
    train_batch_size: int = arg(12, "Images per process per micro-batch.")
    max_train_steps: int = arg(500_000, "Optimiser steps.")
    learning_rate: float = arg(4.5e-6 * 12 * 8, "Peak AdamW learning rate.")
    adam_beta1: float = arg(0.5, "AdamW beta1 (LDM: 0.5).")
    adam_beta2: float = arg(0.9, "AdamW beta2 (LDM: 0.9).")
    ema_decay: float = arg(0.999, "EMA decay of the saved weights.")
    checkpointing_steps: int = arg(10_000, "Save a resumable checkpoint every this many steps.")
    reconstruction_loss: Literal["l1", "l2"] = arg("l1", "Pixel reconstruction loss (mean over pixels).")
    kl_weight: float = arg(
        1e-6, "Weight of KL(posterior || N(0, I)), averaged over latent elements (see training/README.md for LDM's)."
    )
    discriminator_start_step: Optional[int] = arg(50_001, "Step at which the GAN loss starts; None: no GAN.")
    discriminator_weight: float = arg(0.5, "Weight of the adaptively scaled GAN loss.")
    scaling_factor_samples: int = arg(1024, "Training images whose posterior samples set `scaling_factor`.")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "scaling_factor_samples")
        check_positive(self, "kl_weight", allow_zero=True)

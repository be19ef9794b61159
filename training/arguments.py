"""The argument groups of the training scripts (dataclasses parsed by [`training.config.parse_config`]), kept apart
from the scripts so that a script's `--help` ([`training.config.answer_help`]) answers before it imports torch,
accelerate or diffusers: the model classes they build are imported where they are built."""

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, Optional

from training.config import AutoencoderTrainingArguments, RunArguments, arg, check_choices, check_positive


if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
    from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler


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


@dataclass
class TokenizerModelArguments:
    """Architecture of the tokenizer; the names and defaults are `TokenSetVQVAEConfig`'s (the released model)."""

    image_size: int = arg(256, "Image side in pixels.")
    patch_size: int = arg(16, "Patch side of the encoder's patch embedding.")
    encoder_hidden_size: int = arg(768, "Encoder ViT width.")
    encoder_num_hidden_layers: int = arg(12, "Encoder ViT blocks.")
    encoder_num_attention_heads: int = arg(12, "Encoder attention heads.")
    decoder_hidden_size: int = arg(768, "Decoder ViT width.")
    decoder_num_hidden_layers: int = arg(12, "Decoder ViT blocks.")
    decoder_num_attention_heads: int = arg(12, "Decoder attention heads.")
    mlp_ratio: float = arg(4.0, "ViT MLP width as a multiple of the block width.")
    decoder_ffn_hidden_size: int = arg(1536, "Hidden channels of the decoder's output projection.")
    codebook_size: int = arg(4096, "Codebook entries C.")
    num_tokens: int = arg(128, "Tokens per image M.")
    code_dim: int = arg(12, "Dimension of a codebook vector.")
    z_channels: int = arg(256, "Channels of the decoder ViT's feature map (the pixel decoder's input).")
    pixel_decoder_hidden_channels: int = arg(128, "Base channels of the pixel decoder.")
    pixel_decoder_channel_mult: list[int] = arg([1, 1, 2, 2, 4], "Pixel decoder channel multiplier per level.")
    num_res_blocks: int = arg(2, "Residual blocks per pixel decoder level.")
    norm_num_groups: int = arg(32, "GroupNorm groups of the pixel decoder.")

    def to_config(self) -> "TokenSetVQVAEConfig":
        from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig

        return TokenSetVQVAEConfig(**asdict(self))


@dataclass
class TokenizerTrainingArguments(AutoencoderTrainingArguments):
    """Run and loss settings; the defaults are the paper's ImageNet recipe (TiTok's)."""

    output_dir: str = arg("outputs/tokenizer", "Folder for checkpoints, logs and `image_tokenizer/`.")
    max_train_steps: int = arg(1_000_000, "Optimiser steps.")
    train_batch_size: int = arg(32, "Images per process per micro-batch.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine"] = arg("cosine", "Learning-rate schedule.")
    lr_warmup_steps: int = arg(10_000, "Linear warm-up steps.")
    weight_decay: float = arg(1e-4, "AdamW weight decay.")
    max_grad_norm: Optional[float] = arg(1.0, "Gradient clipping norm; None disables clipping.")
    ema_decay: float = arg(0.999, "EMA decay of the saved weights.")
    checkpointing_steps: int = arg(10_000, "Save a resumable checkpoint every this many steps.")
    reconstruction_loss: Literal["l1", "l2"] = arg("l2", "Pixel reconstruction loss (mean over pixels).")
    codebook_weight: float = arg(1.0, "Weight of the codebook loss.")
    commitment_weight: float = arg(0.25, "Weight of the commitment loss.")
    shuffle_tokens: bool = arg(True, "Permute the latent tokens before the decoder, as in the paper's training.")
    discriminator_start_step: Optional[int] = arg(20_000, "Step at which the GAN loss starts; None: no GAN.")
    discriminator_weight: float = arg(0.1, "Weight of the adaptively scaled GAN loss.")
    decoder_only_start_step: Optional[int] = arg(500_000, "Step from which only the decoder trains; None: never.")
    bootstrap_steps: int = arg(
        0,
        "For this many first steps, a linear readout of the encoder's codes (before quantisation) must also "
        "reconstruct the image. From random weights the ViT decoder starts at the mean image and passes the encoder "
        "almost no image-specific gradient, so small models can stall there; the readout gives the encoder a direct "
        "signal (the role TiTok's proxy codes play). 0: off.",
    )
    bootstrap_weight: float = arg(1.0, "Weight of the bootstrap readout loss.")

    def __post_init__(self):
        super().__post_init__()
        check_positive(
            self,
            "codebook_weight",
            "commitment_weight",
            "decoder_only_start_step",
            "bootstrap_steps",
            "bootstrap_weight",
            allow_zero=True,
        )


@dataclass
class GeneratorModelArguments:
    """The transformer's architecture, the data it models and the scheduler saved with it. The size defaults are the
    paper's S model (`TRANSFORMER_PRESETS["S"]`); C, M and the number of classes come from the data when left unset."""

    num_layers: int = arg(12, "Transformer blocks.")
    num_attention_heads: int = arg(6, "Attention heads.")
    attention_head_dim: int = arg(64, "Channels per head (width = heads x head_dim).")
    mlp_ratio: float = arg(4.0, "MLP width as a multiple of the width.")
    class_dropout_prob: float = arg(0.1, "Probability of replacing a label by the null class (for guidance).")
    codebook_size: Optional[int] = arg(None, "C; default: the tokenizer's / the pre-tokenized data's.")
    num_tokens: Optional[int] = arg(None, "M; default: the tokenizer's / the pre-tokenized data's.")
    num_classes: Optional[int] = arg(None, "Number of classes; default: from the dataset's labels.")
    tokenizer_name_or_path: Optional[str] = arg(
        None, "Trained set tokenizer folder: tokenizes images on the fly, and makes the output a full pipeline."
    )
    pretokenized_dataset: Optional[str] = arg(None, "Output folder of `training/pretokenize.py` to train on.")
    scheduler_exact_sum: bool = arg(False, "FSDDScheduler `exact_sum`: also used by `add_noise` during training.")
    scheduler_sigma_schedule: Literal["sigmoid", "constant"] = arg("sigmoid", "FSDDScheduler `sigma_schedule`.")
    scheduler_sigmoid_slope: float = arg(100.0, "FSDDScheduler `sigmoid_slope`.")
    scheduler_sigmoid_midpoint: float = arg(0.8, "FSDDScheduler `sigmoid_midpoint`.")
    scheduler_adjust_start: float = arg(0.65, "FSDDScheduler `adjust_start`.")
    scheduler_x0_sampling: Literal["top_p", "top_k", "multinomial"] = arg("top_p", "FSDDScheduler `x0_sampling`.")
    scheduler_top_p: float = arg(0.8, "FSDDScheduler `top_p`.")
    scheduler_top_k: int = arg(2, "FSDDScheduler `top_k`.")
    scheduler_xt_sampling: Literal["multinomial", "top_p", "top_k"] = arg(
        "multinomial", "FSDDScheduler `xt_sampling`."
    )
    default_guidance_scale: Optional[list[float]] = arg(
        None, "Guidance stored in the saved pipeline: one scale, or an interval schedule such as 4 50 55 (None: 1)."
    )

    def __post_init__(self):
        check_choices(self)
        if self.pretokenized_dataset is None and self.tokenizer_name_or_path is None:
            raise ValueError(
                "Set `pretokenized_dataset` (token sets from training/pretokenize.py) or `tokenizer_name_or_path` "
                "(to tokenize `dataset_name`'s images on the fly); both are None."
            )

    def build_scheduler(self, codebook_size: int, num_tokens: int) -> "FSDDScheduler":
        from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler

        return FSDDScheduler(
            codebook_size=codebook_size,
            num_tokens=num_tokens,
            sigma_schedule=self.scheduler_sigma_schedule,
            sigmoid_slope=self.scheduler_sigmoid_slope,
            sigmoid_midpoint=self.scheduler_sigmoid_midpoint,
            adjust_start=self.scheduler_adjust_start,
            x0_sampling=self.scheduler_x0_sampling,
            top_p=self.scheduler_top_p,
            top_k=self.scheduler_top_k,
            xt_sampling=self.scheduler_xt_sampling,
            exact_sum=self.scheduler_exact_sum,
        )


@dataclass
class GeneratorTrainingArguments(RunArguments):
    """Run settings; the defaults are the paper's ImageNet recipe (the original `train.py`)."""

    output_dir: str = arg("outputs/generator", "Folder for checkpoints, logs, `transformer/` and the pipeline.")
    max_train_steps: int = arg(400_000, "Optimiser steps.")
    train_batch_size: int = arg(32, "Token sets per process per micro-batch (the paper: 256 in total).")
    weight_decay: float = arg(0.01, "AdamW weight decay (the original leaves torch's default, 0.01).")
    ema_decay: float = arg(0.9999, "EMA decay of the saved weights.")
    class_embedding_init_std: Optional[float] = arg(
        None,
        "Initialise the class embedding table from N(0, std^2) instead of DiT's N(0, 0.02^2). adaLN-Zero starts "
        "every modulation at zero, so the class reaches the model only through its (tiny) share of the "
        "conditioning; a table on the scale of the timestep embedding lets short runs use the class from the start.",
    )
    checkpointing_steps: int = arg(10_000, "Save a resumable checkpoint every this many steps.")
    num_time_buckets: int = arg(4, "Log the loss separately for this many equal intervals of t.")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "num_time_buckets", "class_embedding_init_std")


@dataclass
class TokenBridgeModelArguments:
    """The generator's architecture (defaults: TokenBridge-L, `TOKENBRIDGE_PRESETS["L"]`), where its data come from,
    and the sampling defaults stored in the saved pipeline. The grid size, channels and classes come from the data."""

    buffer_size: int = arg(64, "Buffer rows of the MAE encoder and decoder.")
    encoder_hidden_size: int = arg(1024, "MAE encoder width.")
    encoder_num_layers: int = arg(16, "MAE encoder blocks.")
    decoder_hidden_size: int = arg(1024, "MAE decoder width.")
    decoder_num_layers: int = arg(16, "MAE decoder blocks.")
    num_attention_heads: int = arg(16, "Attention heads of the encoder and decoder.")
    head_hidden_size: int = arg(1024, "Channel head width.")
    head_num_layers: int = arg(4, "Channel head blocks.")
    head_num_attention_heads: int = arg(8, "Channel head attention heads.")
    mlp_ratio: float = arg(4.0, "MLP width as a multiple of the block width.")
    quantizer_bits: int = arg(6, "Quantizer levels per channel = 2 ** bits.")
    quant_min: float = arg(-5.0, "Quantizer range, lower end (scaled latent units).")
    quant_max: float = arg(5.0, "Quantizer range, upper end.")
    std_range: float = arg(3.0, "Quantizer table clamp, in standard deviations.")
    channel_order: Optional[list[int]] = arg(
        None, "Head order of the VAE channels; None: the released order for 16 channels, else 0..C-1."
    )
    attention_dropout: float = arg(0.1, "Dropout on attention weights (training).")
    dropout: float = arg(0.1, "Dropout after projections and in MLPs (training).")
    label_dropout_prob: float = arg(0.1, "Probability of training a row as unconditional (for guidance).")
    mask_ratio_min: float = arg(0.7, "Lower end of the truncated-normal mask ratio.")
    mask_ratio_std: float = arg(0.25, "Standard deviation of the truncated-normal mask ratio (mean 1).")
    latents_dir: Optional[str] = arg(None, "Latent cache of `training/encode_latents.py` to train on.")
    vae_name_or_path: Optional[str] = arg(
        None, "`AutoencoderKL` folder or Hub id; default: the latent cache's. Encodes images on the fly without one."
    )
    vae_subfolder: Optional[str] = arg(None, "Subfolder of `vae_name_or_path` holding the VAE.")
    num_classes: Optional[int] = arg(None, "Number of classes; default: from the data.")
    default_num_inference_steps: int = arg(64, "Sampling iterations stored in the pipeline (released: 256 / 64).")
    default_guidance_scale: float = arg(1.0, "Guidance scale stored in the pipeline (released L: 3.1, H: 3.45).")
    default_temperature: float = arg(1.0, "Temperature stored in the pipeline (released L: 0.96, H: 0.91).")

    def __post_init__(self):
        check_choices(self)
        if self.latents_dir is None and self.vae_name_or_path is None:
            raise ValueError(
                "Set `latents_dir` (a cache from training/encode_latents.py) or `vae_name_or_path` (to encode "
                "`dataset_name`'s images on the fly); both are None."
            )
        check_positive(self, "mask_ratio_std", "default_num_inference_steps", "default_guidance_scale")

    def build_transformer(self, sample_size: int, latent_channels: int, num_classes: int):
        from tokenset_diffusers.tokenbridge.transformer_tokenbridge import (
            RELEASED_CHANNEL_ORDER,
            TokenBridgeTransformer2DModel,
        )

        config = {name: getattr(self, name) for name in TRANSFORMER_FIELDS}
        channel_order = self.channel_order
        if channel_order is None:
            channel_order = RELEASED_CHANNEL_ORDER if latent_channels == 16 else list(range(latent_channels))
        return TokenBridgeTransformer2DModel(
            sample_size=sample_size,
            latent_channels=latent_channels,
            num_classes=num_classes,
            channel_order=list(channel_order),
            **config,
        )


TRANSFORMER_FIELDS = (
    "buffer_size",
    "encoder_hidden_size",
    "encoder_num_layers",
    "decoder_hidden_size",
    "decoder_num_layers",
    "num_attention_heads",
    "head_hidden_size",
    "head_num_layers",
    "head_num_attention_heads",
    "mlp_ratio",
    "quantizer_bits",
    "quant_min",
    "quant_max",
    "std_range",
    "attention_dropout",
    "dropout",
    "label_dropout_prob",
    "mask_ratio_min",
)


@dataclass
class TokenBridgeTrainingArguments(RunArguments):
    """Run settings; the defaults are the original's ImageNet recipe for TokenBridge-L
    (docs/tokenbridge.md#training-recipe)."""

    output_dir: str = arg("outputs/tokenbridge", "Folder for checkpoints, logs, `transformer/` and the pipeline.")
    max_train_steps: int = arg(250_228, "Optimiser steps (400 epochs of ImageNet at global batch 2048).")
    train_batch_size: int = arg(64, "Latents per process per micro-batch (the original: 64 x 32 GPUs).")
    base_learning_rate: Optional[float] = arg(
        5e-5, "If set, learning_rate = base_learning_rate x global batch / 256 (the original's rule)."
    )
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine"] = arg(
        "cosine", "Linear warm-up, then this schedule (cosine: half a cosine down to 0)."
    )
    lr_warmup_steps: int = arg(62_557, "Linear warm-up steps (the original: 100 epochs).")
    weight_decay: float = arg(0.02, "AdamW weight decay of tensors with >= 2 dimensions (others: none).")
    adam_beta2: float = arg(0.95, "AdamW beta2.")
    max_grad_norm: Optional[float] = arg(3.0, "Gradient clipping norm.")
    ema_decay: float = arg(0.9999, "EMA decay of the saved weights.")
    checkpointing_steps: int = arg(5_000, "Save a resumable checkpoint every this many steps.")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "base_learning_rate")


@dataclass
class PretokenizeArguments:
    tokenizer_name_or_path: Optional[str] = arg(None, "Trained tokenizer folder (`output_dir/image_tokenizer`).")
    output_dir: Optional[str] = arg(None, "Folder to write the token-set `DatasetDict` to.")
    overwrite_output_dir: bool = arg(False, "Replace `output_dir` if it exists.")
    batch_size: int = arg(64, "Images per process per forward pass (each is encoded with its mirror image).")
    mixed_precision: Literal["no", "fp16", "bf16"] = arg("no", "Autocast precision of the tokenizer.")
    use_cpu: bool = arg(False, "Run on CPU even if an accelerator is available.")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "batch_size")
        if self.tokenizer_name_or_path is None or self.output_dir is None:
            raise ValueError(
                "`tokenizer_name_or_path` and `output_dir` are required, got "
                f"{self.tokenizer_name_or_path!r} and {self.output_dir!r}."
            )


@dataclass
class EncodeLatentsArguments:
    vae_name_or_path: Optional[str] = arg(
        None, "`AutoencoderKL` folder or Hub id (`train_vae.py`'s `output_dir/vae`)."
    )
    vae_subfolder: Optional[str] = arg(None, "Subfolder of `vae_name_or_path` holding the VAE (`vae` in a pipeline).")
    output_dir: Optional[str] = arg(None, "Folder of the cache (created; an interrupted one is completed).")
    image_size: Optional[int] = arg(None, "Image side fed to the VAE; None: the VAE's `sample_size`.")
    shard_size: int = arg(1024, "Rows per shard (the unit of work and of resumption).")
    batch_size: int = arg(64, "Images per process per forward pass (each is encoded with its mirror image).")
    storage_dtype: Literal["float32", "float16", "bfloat16"] = arg("float32", "dtype of the stored moments.")
    mixed_precision: Literal["no", "fp16", "bf16"] = arg("no", "Autocast precision of the VAE encoder.")
    use_cpu: bool = arg(False, "Run on CPU even if an accelerator is available.")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "shard_size", "batch_size", "image_size")
        if self.vae_name_or_path is None or self.output_dir is None:
            raise ValueError(
                "`vae_name_or_path` and `output_dir` are required, got "
                f"{self.vae_name_or_path!r} and {self.output_dir!r}."
            )

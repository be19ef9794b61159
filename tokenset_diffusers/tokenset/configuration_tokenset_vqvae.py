"""Configuration of the TokenSet set tokenizer (a TiTok-style VQ autoencoder with an unordered token set)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class TokenSetVQVAEConfig(PreTrainedConfig):
    r"""
    Configuration of [`TokenSetVQVAE`], the set tokenizer of TokenSet ("Tokenize Image as a Set", arXiv 2503.16425).
    The defaults build the released model (`set_tokenizer_128_4096.pth`: 256 px, ViT-B/16 encoder and decoder,
    `codebook_size=4096`, `num_tokens=128`, code dimension 12, MaskGIT pixel decoder `[1, 1, 2, 2, 4] x 128`).

    An image of `image_size x image_size` pixels is cut into `(image_size // patch_size) ** 2` patches; the encoder ViT
    reads them together with `num_tokens` learned latent tokens and quantises the latent tokens against a codebook of
    `codebook_size` unit vectors of size `code_dim`. The decoder ViT reads the codes with one mask token per patch and
    turns the mask tokens into a `(z_channels, grid, grid)` feature map, which the pixel decoder upsamples by
    `2 ** (len(pixel_decoder_channel_mult) - 1)` to the image size.

    Args:
        image_size (`int`, *optional*, defaults to 256):
            Height and width of the (square) input and output images, in pixels.
        patch_size (`int`, *optional*, defaults to 16):
            Height and width of one patch of the encoder's patch embedding, in pixels.
        num_channels (`int`, *optional*, defaults to 3):
            Number of image channels (RGB).
        encoder_hidden_size (`int`, *optional*, defaults to 768):
            Width of the encoder ViT.
        encoder_num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of encoder ViT blocks.
        encoder_num_attention_heads (`int`, *optional*, defaults to 12):
            Number of attention heads in each encoder block.
        decoder_hidden_size (`int`, *optional*, defaults to 768):
            Width of the decoder ViT.
        decoder_num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of decoder ViT blocks.
        decoder_num_attention_heads (`int`, *optional*, defaults to 12):
            Number of attention heads in each decoder block.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Hidden size of the ViT MLPs, as a multiple of the block width (encoder and decoder).
        decoder_ffn_hidden_size (`int`, *optional*, defaults to 1536):
            Hidden channels of the decoder's output projection (1x1 conv -> tanh -> 1x1 conv).
        codebook_size (`int`, *optional*, defaults to 4096):
            Number of codebook entries C; token ids lie in `[0, codebook_size)`.
        num_tokens (`int`, *optional*, defaults to 128):
            Number of tokens M per image.
        code_dim (`int`, *optional*, defaults to 12):
            Dimension of a codebook vector.
        z_channels (`int`, *optional*, defaults to 256):
            Channels of the decoder ViT's output feature map, the pixel decoder's input.
        pixel_decoder_hidden_channels (`int`, *optional*, defaults to 128):
            Base channel count of the pixel decoder; level `i` has `hidden_channels * channel_mult[i]` channels.
        pixel_decoder_channel_mult (`list[int]`, *optional*, defaults to `[1, 1, 2, 2, 4]`):
            Channel multiplier per resolution level of the pixel decoder, level 0 being the output resolution.
        num_res_blocks (`int`, *optional*, defaults to 2):
            Residual blocks in the pixel decoder's middle and in each of its levels.
        norm_num_groups (`int`, *optional*, defaults to 32):
            Groups of the pixel decoder's GroupNorms.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the ViT LayerNorms.
        group_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the pixel decoder's GroupNorms.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities (training only).
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout inside the pixel decoder's residual blocks (training only).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation of linear and convolution weights.

    Example:

    ```python
    >>> from tokenset_diffusers import TokenSetVQVAE, TokenSetVQVAEConfig

    >>> config = TokenSetVQVAEConfig()  # the released 256 px, 128-token, 4096-code tokenizer
    >>> model = TokenSetVQVAE(config)
    ```
    """

    model_type = "tokenset_vqvae"

    image_size: int = 256
    patch_size: int = 16
    num_channels: int = 3
    encoder_hidden_size: int = 768
    encoder_num_hidden_layers: int = 12
    encoder_num_attention_heads: int = 12
    decoder_hidden_size: int = 768
    decoder_num_hidden_layers: int = 12
    decoder_num_attention_heads: int = 12
    mlp_ratio: float | int = 4.0
    decoder_ffn_hidden_size: int = 1536
    codebook_size: int = 4096
    num_tokens: int = 128
    code_dim: int = 12
    z_channels: int = 256
    pixel_decoder_hidden_channels: int = 128
    pixel_decoder_channel_mult: list[int] | tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    norm_num_groups: int = 32
    layer_norm_eps: float = 1e-5
    group_norm_eps: float = 1e-6
    attention_dropout: float | int = 0.0
    dropout: float | int = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.pixel_decoder_channel_mult = list(self.pixel_decoder_channel_mult)
        self._check_sizes()
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Number of patches along each side of the image (`image_size // patch_size`)."""
        return self.image_size // self.patch_size

    def _check_sizes(self):
        positive = {
            name: getattr(self, name)
            for name in (
                "image_size",
                "patch_size",
                "num_channels",
                "encoder_hidden_size",
                "encoder_num_hidden_layers",
                "encoder_num_attention_heads",
                "decoder_hidden_size",
                "decoder_num_hidden_layers",
                "decoder_num_attention_heads",
                "decoder_ffn_hidden_size",
                "codebook_size",
                "num_tokens",
                "code_dim",
                "z_channels",
                "pixel_decoder_hidden_channels",
                "num_res_blocks",
                "norm_num_groups",
            )
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        if self.mlp_ratio <= 0:
            raise ValueError(f"`mlp_ratio` must be positive, got {self.mlp_ratio}.")
        if len(self.pixel_decoder_channel_mult) == 0 or min(self.pixel_decoder_channel_mult) < 1:
            raise ValueError(
                "`pixel_decoder_channel_mult` must be a non-empty list of positive integers, "
                f"got {self.pixel_decoder_channel_mult}."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        for side in ("encoder", "decoder"):
            width = getattr(self, f"{side}_hidden_size")
            heads = getattr(self, f"{side}_num_attention_heads")
            if width % heads != 0:
                raise ValueError(
                    f"`{side}_hidden_size` ({width}) must be divisible by `{side}_num_attention_heads` ({heads})."
                )
        upsampling = 2 ** (len(self.pixel_decoder_channel_mult) - 1)
        if self.grid_size * upsampling != self.image_size:
            raise ValueError(
                f"The pixel decoder upsamples the {self.grid_size}x{self.grid_size} patch grid by {upsampling} "
                f"(`pixel_decoder_channel_mult` has {len(self.pixel_decoder_channel_mult)} levels), which gives "
                f"{self.grid_size * upsampling} px, not `image_size`={self.image_size}. Use "
                f"`patch_size` = {upsampling} for this `pixel_decoder_channel_mult`, or change the number of levels."
            )
        channels = [self.pixel_decoder_hidden_channels * mult for mult in self.pixel_decoder_channel_mult]
        if any(c % self.norm_num_groups != 0 for c in channels):
            raise ValueError(
                f"Every pixel decoder width {channels} must be divisible by `norm_num_groups` ({self.norm_num_groups})."
            )


__all__ = ["TokenSetVQVAEConfig"]

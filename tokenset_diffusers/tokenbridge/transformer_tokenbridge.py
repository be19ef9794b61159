"""The TokenBridge generator: a MAR-style masked autoregressive transformer with a causal channel head.

A latent grid `(batch_size, latent_channels, height, width)` (scaled latent units) becomes `L = height * width` tokens
of `latent_channels` (16) values, each quantized per channel to one of `2**quantizer_bits` levels
([`TokenBridgeQuantizer`]). A ViT encoder reads the class condition (written into `buffer_size` buffer rows) and the
visible tokens' dequantized values; a ViT decoder fills the masked positions with a mask token and gives every
position a condition vector; the **channel head**, a small causal transformer with adaLN conditioning, predicts a
masked token's 16 level indices one channel after the other, in `channel_order` (head position `i` predicts VAE
channel `channel_order[i]`).

`forward` is the teacher-forced prediction at given masked positions (scored by [`masked_token_loss`] in training);
[`TokenBridgeTransformer2DModel.sample_channels`] draws tokens from the head. Class id `num_classes` is the
unconditional (classifier-free guidance) condition: the learned `unconditional_embedding`, not a class row.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from ..utils.loading import StrictLoadingMixin
from ..utils.sampling import GeneratorType, inverse_cdf, uniform_tensor
from ..utils.validation import check_integer, check_number, check_positive_integers, checks_values
from .quantization_tokenbridge import TokenBridgeQuantizer


LAYER_NORM_EPS = 1e-6
# The original's channel order (hard-coded there for 16 channels): head position i predicts VAE channel order[i].
RELEASED_CHANNEL_ORDER = [8, 1, 10, 9, 6, 12, 4, 0, 3, 11, 7, 14, 2, 15, 13, 5]

TOKENBRIDGE_PRESETS: dict[str, dict[str, int]] = {
    "L": {
        "encoder_hidden_size": 1024,
        "encoder_num_layers": 16,
        "decoder_hidden_size": 1024,
        "decoder_num_layers": 16,
        "num_attention_heads": 16,
        "head_hidden_size": 1024,
        "head_num_layers": 4,
        "head_num_attention_heads": 8,
    },
    "H": {
        "encoder_hidden_size": 1280,
        "encoder_num_layers": 20,
        "decoder_hidden_size": 1280,
        "decoder_num_layers": 20,
        "num_attention_heads": 16,
        "head_hidden_size": 1024,
        "head_num_layers": 6,
        "head_num_attention_heads": 8,
    },
}


@dataclass
class TokenBridgeTransformer2DModelOutput(BaseOutput):
    """
    Output of [`TokenBridgeTransformer2DModel.forward`]: the prediction first, batch dimension first.

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_masked, latent_channels, num_levels)`):
            Teacher-forced head logits at each image's masked positions (ascending), columns in head order (column
            `i` = VAE channel `channel_order[i]`).
        targets (`torch.LongTensor` of shape `(batch_size, num_masked, latent_channels)`):
            The level indices of the given latents at those positions, in head order (what the logits are scored
            against by [`masked_token_loss`]).
        positions (`torch.LongTensor` of shape `(batch_size, num_masked)`): the masked positions, ascending.
    """

    logits: torch.FloatTensor
    targets: torch.LongTensor
    positions: torch.LongTensor


def masked_token_loss(logits: torch.Tensor, targets: torch.LongTensor) -> torch.Tensor:
    """
    The training loss of TokenBridge: the mean cross-entropy over all masked positions and all channels (visible
    tokens get no loss), as the original computes it.

    Args:
        logits (`torch.FloatTensor` of shape `(..., latent_channels, num_levels)`): e.g. the `logits` of a
            [`TokenBridgeTransformer2DModelOutput`].
        targets (`torch.LongTensor` of shape `(..., latent_channels)`): the matching level indices (its `targets`).

    Returns:
        `torch.FloatTensor` of shape `()`.
    """
    if tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(
            f"`targets` must have the shape of `logits` without its last dimension {tuple(logits.shape[:-1])}, got "
            f"{tuple(targets.shape)}."
        )
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class TokenBridgeAttention(nn.Module):
    """Multi-head self-attention (fused qkv, optional LayerNorm on q and k per head), by `scaled_dot_product_attention`."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        attention_dropout: float = 0.0,
        projection_dropout: float = 0.0,
        qk_norm: bool = False,
    ):
        super().__init__()
        if hidden_size % num_attention_heads != 0:
            raise ValueError(f"`num_attention_heads`={num_attention_heads} must divide the hidden size {hidden_size}.")
        self.num_attention_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.attention_dropout = attention_dropout
        # Rows of `to_qkv` are [q (all heads), k (all heads), v (all heads)].
        self.to_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.norm_q = nn.LayerNorm(self.head_dim, eps=LAYER_NORM_EPS) if qk_norm else nn.Identity()
        self.norm_k = nn.LayerNorm(self.head_dim, eps=LAYER_NORM_EPS) if qk_norm else nn.Identity()
        self.to_out = nn.Linear(hidden_size, hidden_size, bias=True)
        self.out_dropout = nn.Dropout(projection_dropout)

    def forward(self, hidden_states: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
        batch_size, seq_len, hidden_size = hidden_states.shape
        heads, head_dim = self.num_attention_heads, self.head_dim
        # 1. fused projection, split into heads, q/k norms
        qkv = self.to_qkv(hidden_states)  # (B, N, 3D)
        qkv = qkv.view(batch_size, seq_len, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        query, key, value = qkv.unbind(0)  # 3 x (B, H, N, d)
        query, key = self.norm_q(query), self.norm_k(key)  # (B, H, N, d)
        # 2. attention (dropout on the attention weights in training only)
        dropout_p = self.attention_dropout if self.training else 0.0
        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, is_causal=is_causal)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, seq_len, hidden_size)  # (B, N, D)
        # 3. output projection
        hidden_states = self.out_dropout(self.to_out(hidden_states))  # (B, N, D)
        return hidden_states

    def forward_cached(
        self, hidden_states: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, position: int
    ) -> torch.Tensor:
        """
        Causal attention of one new row (sequence position `position`) over itself and the rows before it, whose keys
        and values are cached: the same result as row `position` of `forward(..., is_causal=True)` on the whole
        prefix. Writes the new row's key and value into the caches.

        Args:
            hidden_states (`torch.Tensor` of shape `(N, 1, D)`): the new row.
            key_cache, value_cache (`torch.Tensor` of shape `(N, heads, max_rows, head_dim)`): rows `< position` hold
                the earlier rows' (normalised) keys and values.
            position (`int`): the new row's index.
        """
        batch_size, _, hidden_size = hidden_states.shape
        heads, head_dim = self.num_attention_heads, self.head_dim
        # 1. fused projection of the new row, q/k norms, into the caches
        qkv = self.to_qkv(hidden_states).view(batch_size, 1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # 3 x (N, H, 1, d)
        query, key = self.norm_q(query), self.norm_k(key)  # (N, H, 1, d)
        key_cache[:, :, position : position + 1] = key
        value_cache[:, :, position : position + 1] = value
        # 2. the new row attends to rows 0..position (all earlier: no mask needed)
        dropout_p = self.attention_dropout if self.training else 0.0
        hidden_states = F.scaled_dot_product_attention(
            query, key_cache[:, :, : position + 1], value_cache[:, :, : position + 1], dropout_p=dropout_p
        )  # (N, H, 1, d)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, 1, hidden_size)  # (N, 1, D)
        # 3. output projection
        return self.out_dropout(self.to_out(hidden_states))  # (N, 1, D)


class TokenBridgeFeedForward(nn.Module):
    """Linear -> GELU (exact) -> dropout -> Linear -> dropout."""

    def __init__(self, hidden_size: int, mlp_hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden_size)
        self.act = nn.GELU()
        self.dropout1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(mlp_hidden_size, hidden_size)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout1(self.act(self.fc1(hidden_states)))  # (B, N, D_mlp)
        hidden_states = self.dropout2(self.fc2(hidden_states))  # (B, N, D)
        return hidden_states


class TokenBridgeTransformerBlock(nn.Module):
    """Pre-norm ViT block of the MAE encoder and decoder: `x += attn(norm1(x)); x += ff(norm2(x))`."""

    def __init__(
        self, hidden_size: int, num_attention_heads: int, mlp_ratio: float, attention_dropout: float, dropout: float
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.attn = TokenBridgeAttention(hidden_size, num_attention_heads, attention_dropout, dropout)
        self.norm2 = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.ff = TokenBridgeFeedForward(hidden_size, int(hidden_size * mlp_ratio), dropout=dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states))  # (B, N, D)
        hidden_states = hidden_states + self.ff(self.norm2(hidden_states))  # (B, N, D)
        return hidden_states


class TokenBridgeChannelBlock(nn.Module):
    """
    Causal block of the channel head, conditioned per row by adaLN (shift, scale, gate for attention and MLP) on
    affine LayerNorms; attention normalises q and k per head.
    """

    def __init__(
        self, hidden_size: int, num_attention_heads: int, mlp_ratio: float, attention_dropout: float, dropout: float
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.attn = TokenBridgeAttention(hidden_size, num_attention_heads, attention_dropout, dropout, qk_norm=True)
        self.norm2 = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.ff = TokenBridgeFeedForward(hidden_size, int(hidden_size * mlp_ratio), dropout=dropout)
        # Applied to SiLU(conditioning).
        self.adaLN_modulation = nn.Linear(hidden_size, 6 * hidden_size)

    def forward(self, hidden_states: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        # 1. modulation parameters, per row, in the original's chunk order
        modulation = self.adaLN_modulation(F.silu(conditioning))  # (N, n, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)  # 6 x (N, n, D)
        # 2. causal attention
        norm_hidden_states = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa  # (N, n, D)
        hidden_states = hidden_states + gate_msa * self.attn(norm_hidden_states, is_causal=True)  # (N, n, D)
        # 3. MLP
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp  # (N, n, D)
        hidden_states = hidden_states + gate_mlp * self.ff(norm_hidden_states)  # (N, n, D)
        return hidden_states

    def forward_cached(
        self,
        hidden_states: torch.Tensor,
        conditioning: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        position: int,
    ) -> torch.Tensor:
        """[`forward`] for one new row `(N, 1, D)` with its condition `(N, 1, D)`, the earlier rows' keys and values
        read from (and this row's written to) the caches (see [`TokenBridgeAttention.forward_cached`])."""
        modulation = self.adaLN_modulation(F.silu(conditioning))  # (N, 1, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)  # 6 x (N, 1, D)
        norm_hidden_states = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa  # (N, 1, D)
        attention = self.attn.forward_cached(norm_hidden_states, key_cache, value_cache, position)  # (N, 1, D)
        hidden_states = hidden_states + gate_msa * attention  # (N, 1, D)
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp  # (N, 1, D)
        hidden_states = hidden_states + gate_mlp * self.ff(norm_hidden_states)  # (N, 1, D)
        return hidden_states


class TokenBridgeChannelHead(nn.Module):
    """
    The causal "channel" transformer: from a position's condition vector and the level indices of the channels
    before, logits for the next channel. Inputs and outputs are in head order (see `channel_order`).
    """

    def __init__(
        self,
        condition_size: int,
        hidden_size: int,
        num_layers: int,
        num_attention_heads: int,
        num_channels: int,
        num_levels: int,
        mlp_ratio: float,
        attention_dropout: float,
        dropout: float,
    ):
        super().__init__()
        self.num_channels = num_channels
        self.condition_proj = nn.Linear(condition_size, hidden_size)
        # The last channel is never an input.
        self.token_embeddings = nn.ModuleList([nn.Embedding(num_levels, hidden_size) for _ in range(num_channels - 1)])
        self.channel_embed = nn.Parameter(torch.zeros(1, num_channels, hidden_size))
        self.timestep_embed = nn.Parameter(torch.zeros(1, num_channels, hidden_size))
        self.blocks = nn.ModuleList(
            [
                TokenBridgeChannelBlock(hidden_size, num_attention_heads, mlp_ratio, attention_dropout, dropout)
                for _ in range(num_layers)
            ]
        )
        self.norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        # Final layer: `norm_out(x) * (1 + scale) + shift`, with (scale, shift) in this order.
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.adaLN_modulation_out = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj_out = nn.ModuleList([nn.Linear(hidden_size, num_levels) for _ in range(num_channels)])

    def embed_tokens(self, tokens: torch.LongTensor) -> torch.Tensor:
        """`(N, n)` level indices of head positions `0..n-1` (n < num_channels) -> `(N, n, D)` input rows `1..n`."""
        return torch.stack([self.token_embeddings[i](tokens[:, i]) for i in range(tokens.shape[1])], dim=1)

    def forward(self, inputs: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """
        Args:
            inputs (`torch.Tensor` of shape `(N, n, D)`): the input rows (condition row, then token embeddings),
                without `channel_embed`.
            conditioning (`torch.Tensor` of shape `(N, n, D)`): the adaLN condition of every row.

        Returns:
            `torch.Tensor` of shape `(N, n, D)`: the final hidden states; `proj_out[i]` of row `i` gives the logits of
            head position `i`.
        """
        num_rows = inputs.shape[1]
        hidden_states = inputs + self.channel_embed[:, :num_rows]  # (N, n, D)
        for block in self.blocks:
            hidden_states = block(hidden_states, conditioning)  # (N, n, D)
        hidden_states = self.norm(hidden_states)  # (N, n, D)
        scale, shift = self.adaLN_modulation_out(F.silu(conditioning)).chunk(2, dim=-1)  # 2 x (N, n, D)
        return self.norm_out(hidden_states) * (1 + scale) + shift  # (N, n, D)

    def allocate_cache(self, num_rows: int, reference: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Empty key/value caches for [`forward_cached`]: per block, two `(num_rows, heads, num_channels, head_dim)`
        tensors of `reference`'s dtype and device."""
        caches = []
        for block in self.blocks:
            attention = block.attn
            shape = (num_rows, attention.num_attention_heads, self.num_channels, attention.head_dim)
            caches.append(
                (reference.new_empty(shape), reference.new_empty(shape))  # keys, values
            )
        return caches

    def forward_cached(
        self,
        inputs: torch.Tensor,
        conditioning: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
        position: int,
    ) -> torch.Tensor:
        """
        Row `position` of [`forward`] given the rows before it through `caches` (a KV cache from
        [`allocate_cache`], filled by the calls for positions `0..position-1`).

        Args:
            inputs (`torch.Tensor` of shape `(N, 1, D)`): input row `position` (without `channel_embed`).
            conditioning (`torch.Tensor` of shape `(N, 1, D)`): its adaLN condition.
            caches: per block, the (keys, values) caches; this row's are written into them.
            position (`int`): the row's index, `0..num_channels-1`.

        Returns:
            `torch.Tensor` of shape `(N, 1, D)`: the final hidden state of row `position`.
        """
        hidden_states = inputs + self.channel_embed[:, position : position + 1]  # (N, 1, D)
        for block, (key_cache, value_cache) in zip(self.blocks, caches):
            hidden_states = block.forward_cached(hidden_states, conditioning, key_cache, value_cache, position)
        hidden_states = self.norm(hidden_states)  # (N, 1, D)
        scale, shift = self.adaLN_modulation_out(F.silu(conditioning)).chunk(2, dim=-1)  # 2 x (N, 1, D)
        return self.norm_out(hidden_states) * (1 + scale) + shift  # (N, 1, D)


class TokenBridgeTransformer2DModel(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """
    TokenBridge's masked autoregressive generator (MAE encoder/decoder with buffer tokens + causal channel head).

    Parameters:
        sample_size (`int`, defaults to 16): side of the latent grid; `L = sample_size**2` tokens.
        latent_channels (`int`, defaults to 16): channels per token (the VAE's latent channels).
        num_classes (`int`, defaults to 1000): class labels `0..num_classes-1`; label `num_classes` selects the learned
            unconditional embedding.
        buffer_size (`int`, defaults to 64): buffer rows prepended to the encoder and decoder sequences; each holds
            the condition vector at the encoder's input.
        encoder_hidden_size (`int`, defaults to 1024), encoder_num_layers (`int`, defaults to 16),
        decoder_hidden_size (`int`, defaults to 1024), decoder_num_layers (`int`, defaults to 16):
            widths and depths of the MAE encoder and decoder.
        num_attention_heads (`int`, defaults to 16): heads of the encoder and decoder blocks.
        head_hidden_size (`int`, defaults to 1024), head_num_layers (`int`, defaults to 4),
        head_num_attention_heads (`int`, defaults to 8): the channel head.
        mlp_ratio (`float`, defaults to 4.0): MLP width as a multiple of the block width, everywhere.
        quantizer_bits (`int`, defaults to 6), quant_min (`float`, defaults to -5.0), quant_max (`float`, defaults to
            5.0), std_range (`float`, defaults to 3.0): the [`TokenBridgeQuantizer`]; `num_levels = 2**quantizer_bits`.
        channel_order (`list[int]`, defaults to the released order): head position `i` predicts VAE channel
            `channel_order[i]`; a permutation of `0..latent_channels-1`.
        attention_dropout (`float`, defaults to 0.1): dropout on attention weights (training only).
        dropout (`float`, defaults to 0.1): dropout after attention projections and in MLPs (training only).
        label_dropout_prob (`float`, defaults to 0.1): stored for training (which replaces labels by `num_classes`
            with this probability); the model itself never drops labels.
        mask_ratio_min (`float`, defaults to 0.7): stored for training: the lower end of the truncated-normal masking
            ratio (see [`MaskedARScheduler.sample_training_mask`]).

    The defaults are TokenBridge-L; `from_preset("H")` builds the H size.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["TokenBridgeTransformerBlock", "TokenBridgeChannelHead"]
    _keep_in_fp32_modules = ["quantizer"]
    _skip_layerwise_casting_patterns = ["norm", "quantizer"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        latent_channels: int = 16,
        num_classes: int = 1000,
        buffer_size: int = 64,
        encoder_hidden_size: int = 1024,
        encoder_num_layers: int = 16,
        decoder_hidden_size: int = 1024,
        decoder_num_layers: int = 16,
        num_attention_heads: int = 16,
        head_hidden_size: int = 1024,
        head_num_layers: int = 4,
        head_num_attention_heads: int = 8,
        mlp_ratio: float = 4.0,
        quantizer_bits: int = 6,
        quant_min: float = -5.0,
        quant_max: float = 5.0,
        std_range: float = 3.0,
        channel_order: list[int] | tuple[int, ...] = tuple(RELEASED_CHANNEL_ORDER),
        attention_dropout: float = 0.1,
        dropout: float = 0.1,
        label_dropout_prob: float = 0.1,
        mask_ratio_min: float = 0.7,
    ):
        super().__init__()
        check_positive_integers(
            sample_size=sample_size,
            latent_channels=latent_channels,
            num_classes=num_classes,
            encoder_hidden_size=encoder_hidden_size,
            encoder_num_layers=encoder_num_layers,
            decoder_hidden_size=decoder_hidden_size,
            decoder_num_layers=decoder_num_layers,
            num_attention_heads=num_attention_heads,
            head_hidden_size=head_hidden_size,
            head_num_layers=head_num_layers,
            head_num_attention_heads=head_num_attention_heads,
        )
        check_integer("buffer_size", buffer_size, low=0)
        if sorted(channel_order) != list(range(latent_channels)):
            raise ValueError(
                f"`channel_order` must be a permutation of 0..{latent_channels - 1} (latent_channels), got "
                f"{list(channel_order)!r}."
            )
        for name, value in [
            ("attention_dropout", attention_dropout),
            ("dropout", dropout),
            ("label_dropout_prob", label_dropout_prob),
        ]:
            check_number(name, value, low=0, high=1, high_open=True)
        check_number("mask_ratio_min", mask_ratio_min, low=0, high=1, low_open=True)

        num_tokens = sample_size * sample_size
        self.gradient_checkpointing = False
        self.quantizer = TokenBridgeQuantizer(quantizer_bits, quant_min, quant_max, std_range)
        num_levels = self.quantizer.num_levels

        # 1. MAE encoder: token projection, condition, positions
        self.z_proj = nn.Linear(latent_channels, encoder_hidden_size)
        self.class_embedding = nn.Embedding(num_classes, encoder_hidden_size)
        self.unconditional_embedding = nn.Parameter(torch.zeros(1, encoder_hidden_size))
        self.encoder_pos_embed = nn.Parameter(torch.zeros(1, buffer_size + num_tokens, encoder_hidden_size))
        self.z_proj_ln = nn.LayerNorm(encoder_hidden_size, eps=LAYER_NORM_EPS)
        self.encoder_blocks = nn.ModuleList(
            [
                TokenBridgeTransformerBlock(
                    encoder_hidden_size, num_attention_heads, mlp_ratio, attention_dropout, dropout
                )
                for _ in range(encoder_num_layers)
            ]
        )
        self.encoder_norm = nn.LayerNorm(encoder_hidden_size, eps=LAYER_NORM_EPS)

        # 2. MAE decoder
        self.decoder_embed = nn.Linear(encoder_hidden_size, decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden_size))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, buffer_size + num_tokens, decoder_hidden_size))
        self.decoder_blocks = nn.ModuleList(
            [
                TokenBridgeTransformerBlock(
                    decoder_hidden_size, num_attention_heads, mlp_ratio, attention_dropout, dropout
                )
                for _ in range(decoder_num_layers)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_hidden_size, eps=LAYER_NORM_EPS)
        self.output_pos_embed = nn.Parameter(torch.zeros(1, num_tokens, decoder_hidden_size))

        # 3. channel head
        self.channel_head = TokenBridgeChannelHead(
            decoder_hidden_size,
            head_hidden_size,
            head_num_layers,
            head_num_attention_heads,
            latent_channels,
            num_levels,
            mlp_ratio,
            attention_dropout,
            dropout,
        )
        self.initialize_weights()

    @property
    def num_tokens(self) -> int:
        """`L`, the number of token positions (`sample_size**2`)."""
        return self.config.sample_size**2

    @property
    def num_levels(self) -> int:
        """`K`, the quantizer's number of levels."""
        return self.quantizer.num_levels

    def channel_order_tensor(self, device: torch.device | str | None = None) -> torch.LongTensor:
        """`channel_order` as a tensor: head position `i` holds VAE channel `channel_order[i]` (made once per device,
        so that sampling steps copy nothing from the host)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        cache = self.__dict__.setdefault("_channel_order_by_device", {})
        if device not in cache:
            cache[device] = torch.tensor(list(self.config.channel_order), device=device)
        return cache[device]

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The original's initialisation; a converted or trained checkpoint overwrites all of it."""
        # Xavier linear weights, zero biases (LayerNorms keep 1 / 0).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Small normal embeddings, as the original; its token embeddings keep PyTorch's N(0, 1) default.
        for parameter in (
            self.class_embedding.weight,
            self.unconditional_embedding,
            self.mask_token,
            self.encoder_pos_embed,
            self.decoder_pos_embed,
            self.output_pos_embed,
            self.channel_head.channel_embed,
            self.channel_head.timestep_embed,
        ):
            nn.init.normal_(parameter, std=0.02)
        # adaLN layers of the head start at zero: every gate closed, each block the identity at first.
        for block in self.channel_head.blocks:
            nn.init.zeros_(block.adaLN_modulation.weight)
            nn.init.zeros_(block.adaLN_modulation.bias)
        nn.init.zeros_(self.channel_head.adaLN_modulation_out.weight)
        nn.init.zeros_(self.channel_head.adaLN_modulation_out.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TokenBridgeTransformer2DModel":
        """
        Build a randomly initialised model of a released size.

        Args:
            name (`str`): `"L"` (486,889,472 parameters) or `"H"` (910,040,576), see `TOKENBRIDGE_PRESETS`.
            **overrides: any other config field, or a preset field to change.
        """
        if name not in TOKENBRIDGE_PRESETS:
            raise ValueError(f"Unknown preset `name`={name!r}; available presets: {sorted(TOKENBRIDGE_PRESETS)}.")
        return cls(**{**TOKENBRIDGE_PRESETS[name], **overrides})

    # ------------------------------------------------------------------ tokens

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """`(B, C, h, w)` latents -> `(B, h * w, C)` tokens, position `p = row * w + col`."""
        batch_size, channels, height, width = latents.shape
        return latents.reshape(batch_size, channels, height * width).transpose(1, 2)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(B, L, C)` tokens -> `(B, C, s, s)` latents (`s = sample_size`)."""
        batch_size, _, channels = tokens.shape
        size = self.config.sample_size
        return tokens.transpose(1, 2).reshape(batch_size, channels, size, size)

    def condition_embedding(self, class_labels: torch.LongTensor) -> torch.Tensor:
        """Class ids in `[0, num_classes]` -> `(B, D_enc)`; id `num_classes` gives the unconditional embedding."""
        num_classes = self.config.num_classes
        unconditional = class_labels == num_classes  # (B,)
        embedding = self.class_embedding(class_labels.clamp(max=num_classes - 1))  # (B, D)
        return torch.where(unconditional[:, None], self.unconditional_embedding.to(embedding.dtype), embedding)

    # ------------------------------------------------------------------ MAE encoder / decoder

    def encode(
        self, values: torch.Tensor, mask: torch.Tensor, class_labels: torch.LongTensor, num_masked: int | None = None
    ) -> torch.Tensor:
        """
        The MAE encoder over the buffer rows and the visible tokens.

        Args:
            values (`torch.Tensor` of shape `(B, L, latent_channels)`): dequantized token values (latent units);
                those at masked positions are not read.
            mask (`torch.Tensor` of shape `(B, L)`): 1 / True = masked; every row must mask the same number of tokens.
            class_labels (`torch.LongTensor` of shape `(B,)`): ids in `[0, num_classes]` (`num_classes` =
                unconditional).
            num_masked (`int`, *optional*): the number of masked tokens per row, if known (saves reading the mask).

        Returns:
            `torch.Tensor` of shape `(B, buffer_size + L - num_masked, D_enc)`: buffer rows then the visible tokens in
            position order.
        """
        buffer_size = self.config.buffer_size
        keep = self._kept_rows(mask, num_masked)  # (B, BUF + L - n)
        # 1. token projection, buffer rows holding the condition
        hidden_states = self.z_proj(values.to(self.dtype))  # (B, L, D)
        condition = self.condition_embedding(class_labels)  # (B, D)
        buffer = condition[:, None, :].expand(-1, buffer_size, -1).to(hidden_states.dtype)  # (B, BUF, D)
        hidden_states = torch.cat([buffer, hidden_states], dim=1)  # (B, BUF + L, D)
        # 2. positions, LayerNorm (buffer rows too)
        hidden_states = self.z_proj_ln(hidden_states + self.encoder_pos_embed)  # (B, BUF + L, D)
        # 3. keep buffer rows and visible tokens
        index = keep[:, :, None].expand(-1, -1, hidden_states.shape[-1])
        hidden_states = hidden_states.gather(1, index)  # (B, BUF + L - n, D)
        # 4. blocks, norm
        for block in self.encoder_blocks:
            hidden_states = self._run_block(block, hidden_states)  # (B, BUF + L - n, D)
        return self.encoder_norm(hidden_states)  # (B, BUF + L - n, D)

    def decode(
        self, encoder_hidden_states: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None
    ) -> torch.Tensor:
        """
        The MAE decoder: mask tokens at masked positions, then one condition vector per position.

        Args:
            encoder_hidden_states (`torch.Tensor` of shape `(B, buffer_size + L - num_masked, D_enc)`): from [`encode`].
            mask (`torch.Tensor` of shape `(B, L)`): the mask given to [`encode`].
            num_masked (`int`, *optional*): as for [`encode`].

        Returns:
            `torch.Tensor` of shape `(B, L, D_dec)`: the per-position conditions of the channel head.
        """
        buffer_size = self.config.buffer_size
        keep = self._kept_rows(mask, num_masked)  # (B, BUF + L - n)
        # 1. embed, scatter into a sequence of mask tokens
        hidden_states = self.decoder_embed(encoder_hidden_states)  # (B, BUF + L - n, D)
        batch_size, _, hidden_size = hidden_states.shape
        full = self.mask_token.to(hidden_states.dtype).expand(batch_size, buffer_size + self.num_tokens, hidden_size)
        index = keep[:, :, None].expand(-1, -1, hidden_size)
        hidden_states = full.scatter(1, index, hidden_states)  # (B, BUF + L, D)
        # 2. positions, blocks, norm
        hidden_states = hidden_states + self.decoder_pos_embed  # (B, BUF + L, D)
        for block in self.decoder_blocks:
            hidden_states = self._run_block(block, hidden_states)  # (B, BUF + L, D)
        hidden_states = self.decoder_norm(hidden_states)  # (B, BUF + L, D)
        # 3. drop the buffer, add the output positions (after the norm)
        return hidden_states[:, buffer_size:] + self.output_pos_embed  # (B, L, D)

    def conditions(
        self, values: torch.Tensor, mask: torch.Tensor, class_labels: torch.LongTensor, num_masked: int | None = None
    ) -> torch.Tensor:
        """`decode(encode(values, mask, class_labels), mask)`: `(B, L, D_dec)` per-position head conditions."""
        return self.decode(self.encode(values, mask, class_labels, num_masked), mask, num_masked)

    def _run_block(self, block: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, hidden_states)
        return block(hidden_states)

    def _kept_rows(self, mask: torch.Tensor, num_masked: int | None) -> torch.LongTensor:
        """Indices into the `(BUF + L)` sequence of the buffer rows and the visible tokens, in order."""
        if mask.ndim != 2 or mask.shape[1] != self.num_tokens:
            raise ValueError(f"`mask` must have shape (batch_size, {self.num_tokens}), got {tuple(mask.shape)}.")
        mask = mask.bool()
        if num_masked is None:
            counts = mask.sum(-1)
            num_masked = int(counts[0]) if counts.numel() else 0
            if checks_values(mask) and not bool((counts == num_masked).all()):
                raise ValueError(f"Every row of `mask` must mask the same number of tokens, got {counts.tolist()}.")
        visible = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)[
            :, : self.num_tokens - num_masked
        ]  # (B, L - n)
        buffer = torch.arange(self.config.buffer_size, device=mask.device).expand(mask.shape[0], -1)  # (B, BUF)
        return torch.cat([buffer, visible + self.config.buffer_size], dim=1)  # (B, BUF + L - n)

    # ------------------------------------------------------------------ channel head

    def channel_logits(self, features: torch.Tensor, targets: torch.LongTensor) -> torch.Tensor:
        """
        The teacher-forced (training-form) channel head.

        Args:
            features (`torch.Tensor` of shape `(N, D_dec)`): decoder outputs at the positions to predict.
            targets (`torch.LongTensor` of shape `(N, latent_channels)`): level indices **in head order**.

        Returns:
            `torch.FloatTensor` of shape `(N, latent_channels, num_levels)`: logits of head position `i` from the
            condition and the targets of positions `< i`.
        """
        head = self.channel_head
        condition = head.condition_proj(features.to(self.dtype))  # (N, Dh)
        # 1. inputs: the condition, then the embeddings of the first C - 1 targets
        inputs = torch.cat([condition[:, None], head.embed_tokens(targets[:, :-1])], dim=1)  # (N, C, Dh)
        # 2. per-row adaLN conditions
        conditioning = condition[:, None] + head.timestep_embed  # (N, C, Dh)
        hidden_states = head(inputs, conditioning)  # (N, C, Dh)
        # 3. one projection per head position
        logits = torch.stack([proj(hidden_states[:, i]) for i, proj in enumerate(head.proj_out)], dim=1)
        return logits.float()  # (N, C, K)

    @torch.no_grad()
    def sample_channels(
        self,
        features: torch.Tensor,
        temperature: float = 1.0,
        generator: GeneratorType = None,
        return_logits: bool = False,
        use_cache: bool = True,
    ) -> torch.LongTensor | tuple[torch.LongTensor, torch.FloatTensor]:
        """
        Draws a token (all `latent_channels` level indices) per row of `features`, channel after channel in head
        order, as the original's sampling: the first input row is `condition + timestep_embed[0]` (in training it is
        `condition` alone). With `use_cache` (the default) each channel runs the head on its new row only, reading
        the earlier rows' keys and values from a KV cache; without it, the whole prefix is recomputed for each channel
        as the original does. Both compute the same logits (up to float rounding) and, from the same generator, the
        same tokens.

        Args:
            features (`torch.Tensor` of shape `(N, D_dec)`): decoder outputs (guided, if guidance is used).
            temperature (`float`, defaults to 1.0): divides the logits; 0 takes the argmax.
            generator (`torch.Generator` or a list of them, *optional*): with a list of G generators, the rows form G
                equal consecutive groups and group g draws from `generator[g]` (one group per image).
            return_logits (`bool`, defaults to `False`): also return the logits of every step.
            use_cache (`bool`, defaults to `True`): run the head incrementally with a KV cache (`False`: the
                original's prefix recomputation, kept as the reference and for benchmarks).

        Returns:
            `torch.LongTensor` of shape `(N, latent_channels)`: level indices in **VAE channel order**; with
            `return_logits`, also `(N, latent_channels, num_levels)` float32 logits (column `i` = head position `i`).
        """
        check_number("temperature", temperature, low=0)
        head = self.channel_head
        num_rows, num_channels = features.shape[0], self.config.latent_channels
        # One uniform per row and channel, drawn up front (inverse-CDF sampling), per group of rows.
        uniforms = None
        if temperature > 0:
            uniforms = _grouped_uniforms((num_rows, num_channels), generator, features.device)  # (N, C)
        conditioning = head.condition_proj(features.to(self.dtype))[:, None] + head.timestep_embed  # (N, C, Dh)
        inputs = conditioning[:, :1]  # (N, 1, Dh): the quirk, row 0 carries timestep_embed[0]
        caches = head.allocate_cache(num_rows, conditioning) if use_cache else None
        tokens, all_logits = [], []
        for i in range(num_channels):
            if use_cache:  # the new row only; rows < i come from the cache
                last = head.forward_cached(inputs, conditioning[:, i : i + 1], caches, i)[:, 0]  # (N, Dh)
            else:  # the whole prefix again
                last = head(inputs, conditioning[:, : i + 1])[:, -1]  # (N, Dh)
            logits = head.proj_out[i](last).float()  # (N, K)
            if temperature == 0:
                token = logits.argmax(-1)  # (N,)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)  # (N, K)
                token = inverse_cdf(probs, uniforms[:, i], right=True)  # (N,)
            tokens.append(token)
            all_logits.append(logits)
            if i < num_channels - 1:
                embedded = head.token_embeddings[i](token)[:, None]  # (N, 1, Dh)
                inputs = embedded if use_cache else torch.cat([inputs, embedded], dim=1)  # (N, 1 or i + 2, Dh)
        head_order_tokens = torch.stack(tokens, dim=1)  # (N, C), head order
        inverse_order = torch.argsort(self.channel_order_tensor(features.device))  # (C,)
        vae_order_tokens = head_order_tokens[:, inverse_order]  # (N, C), VAE channel order
        if return_logits:
            return vae_order_tokens, torch.stack(all_logits, dim=1)
        return vae_order_tokens

    # ------------------------------------------------------------------ teacher-forced prediction

    def forward(
        self,
        latents: torch.Tensor,
        class_labels: torch.LongTensor,
        mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> TokenBridgeTransformer2DModelOutput | tuple:
        """
        The teacher-forced prediction at the masked positions: quantize, encode the visible tokens, decode, run the
        channel head on the masked positions with the latents' own tokens as its inputs. Training scores it with
        [`masked_token_loss`]`(output.logits, output.targets)`.

        Args:
            latents (`torch.FloatTensor` of shape `(batch_size, latent_channels, sample_size, sample_size)`): VAE
                latents in scaled units (`latent * scaling_factor`).
            class_labels (`torch.LongTensor` of shape `(batch_size,)`): ids in `[0, num_classes]`; `num_classes`
                means unconditional (training drops labels by setting them to `num_classes`).
            mask (`torch.Tensor` of shape `(batch_size, L)`, *optional*): 1 / True = masked (predicted); the same
                number in every row ([`MaskedARScheduler.sample_training_mask`] draws them as the original does).
                Defaults to every position masked (the first sampling step: the class alone as condition).
            return_dict (`bool`, defaults to `True`): return a [`TokenBridgeTransformer2DModelOutput`], else a tuple
                `(logits, targets, positions)`.

        Returns:
            [`TokenBridgeTransformer2DModelOutput`] or `tuple`, batch dimension first.
        """
        size, channels = self.config.sample_size, self.config.latent_channels
        if latents.ndim != 4 or tuple(latents.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"`latents` must have shape (batch_size, {channels}, {size}, {size}), got {tuple(latents.shape)}."
            )
        batch_size = latents.shape[0]
        if tuple(class_labels.shape) != (batch_size,) or class_labels.dtype.is_floating_point:
            raise ValueError(f"`class_labels` must be integer ids of shape ({batch_size},), got {class_labels!r}.")
        if checks_values(class_labels) and bool(((class_labels < 0) | (class_labels > self.config.num_classes)).any()):
            raise ValueError(
                f"`class_labels` must lie in [0, {self.config.num_classes}], got {class_labels.tolist()}."
            )
        if mask is None:
            mask = torch.ones(batch_size, self.num_tokens, dtype=torch.bool, device=latents.device)
        if tuple(mask.shape) != (batch_size, self.num_tokens):
            raise ValueError(f"`mask` must have shape ({batch_size}, {self.num_tokens}), got {tuple(mask.shape)}.")
        mask = mask.bool()
        num_masked = int(mask[0].sum())  # one read per training step

        # 1. tokens, quantized
        tokens = self.patchify(latents.float())  # (B, L, C)
        indices, values = self.quantizer(tokens)  # (B, L, C) each
        # 2. MAE encoder and decoder
        features = self.conditions(values, mask, class_labels, num_masked)  # (B, L, D)
        # 3. the masked positions, row-major over (batch, position)
        positions = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :num_masked]  # (B, n)
        features = features.gather(1, positions[:, :, None].expand(-1, -1, features.shape[-1]))  # (B, n, D)
        targets = indices.gather(1, positions[:, :, None].expand(-1, -1, channels))  # (B, n, C)
        features = features.reshape(batch_size * num_masked, -1)  # (N, D)
        targets = targets.reshape(batch_size * num_masked, channels)[
            :, self.channel_order_tensor(latents.device)
        ]  # (N, C)
        # 4. teacher-forced head at all masked positions
        logits = self.channel_logits(features, targets)  # (N, C, K)
        logits = logits.reshape(batch_size, num_masked, channels, self.num_levels)  # (B, n, C, K)
        targets = targets.reshape(batch_size, num_masked, channels)  # (B, n, C)
        if not return_dict:
            return logits, targets, positions
        return TokenBridgeTransformer2DModelOutput(logits=logits, targets=targets, positions=positions)


def _grouped_uniforms(shape: tuple[int, int], generator: GeneratorType, device: torch.device) -> torch.Tensor:
    """`U[0, 1)` of `shape`; with a list of G generators, G equal consecutive groups of rows, one per generator."""
    if not isinstance(generator, (list, tuple)):
        return uniform_tensor(shape, generator, device=device)
    num_rows, width = shape
    if num_rows % len(generator) != 0:
        raise ValueError(
            f"`generator` is a list of {len(generator)} generators, which does not divide the {num_rows} rows."
        )
    per_group = num_rows // len(generator)
    grouped = uniform_tensor((len(generator), per_group * width), generator, device=device)  # (G, n * C)
    return grouped.reshape(num_rows, width)


__all__ = [
    "RELEASED_CHANNEL_ORDER",
    "TOKENBRIDGE_PRESETS",
    "TokenBridgeTransformer2DModel",
    "TokenBridgeTransformer2DModelOutput",
    "masked_token_loss",
]

"""The TokenSet set tokenizer: a ViT VQ autoencoder whose latent tokens form an unordered set.

Architecture (arXiv 2503.16425, built on TiTok; the released `set_tokenizer_128_4096.pth`):

- encoder ViT: patch embedding + class token + positional embedding, then `num_tokens` learned latent tokens
  appended *without* positional embedding; the latent tokens' outputs are projected to `code_dim`;
- cosine vector quantiser: codes and codebook rows are l2-normalised, nearest row wins;
- decoder ViT: one mask token per patch (+ class token, positional embedding) reads the projected codes, which again
  carry no positional embedding, so decoding is invariant to the order of the tokens; 1x1 conv -> tanh -> 1x1 conv;
- MaskGIT-VQGAN pixel decoder upsampling the patch grid to pixels.

Images are `(batch_size, 3, image_size, image_size)` tensors in [-1, 1]; token ids are `(batch_size, num_tokens)`
integers in `[0, codebook_size)`; count vectors are `(batch_size, codebook_size)` integers summing to `num_tokens`.
"""

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ..utils.loading import StrictLoadingMixin
from ..utils.remote_code import write_import_file
from .configuration_tokenset_vqvae import TokenSetVQVAEConfig
from .set_ops import counts_to_tokens, tokens_to_counts


# Inputs are images in [-1, 1]; anything beyond this magnitude is taken for a wrongly scaled image (e.g. [0, 255]).
_PIXEL_VALUE_LIMIT = 1.5
# The attention implementations the ViT layers run (`config._attn_implementation`, set by
# `from_pretrained(..., attn_implementation=...)`).
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass
class TokenSetVQVAEEncoderOutput(ModelOutput):
    r"""
    Output of [`TokenSetVQVAE.encode`].

    Args:
        token_ids (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
            Codebook index of each latent token. The order carries no meaning: the decoder treats them as a set.
        z_quantized (`torch.FloatTensor` of shape `(batch_size, code_dim, 1, num_tokens)`):
            The l2-normalised codebook vectors of `token_ids` (the layout of the original implementation).
    """

    token_ids: torch.LongTensor | None = None
    z_quantized: torch.FloatTensor | None = None


@dataclass
class TokenSetVQVAEOutput(ModelOutput):
    r"""
    Output of [`TokenSetVQVAE.forward`] (the autoencoding pass used in training).

    Args:
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
            Decoded images in roughly [-1, 1]; gradients reach the encoder through the straight-through estimator.
        token_ids (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
            Codebook index of each latent token.
        codebook_loss (`torch.FloatTensor` of shape `()`):
            `mean((sg(z_e) - z_q) ** 2)` over the l2-normalised vectors; trains the codebook.
        commitment_loss (`torch.FloatTensor` of shape `()`):
            `mean((z_e - sg(z_q)) ** 2)` over the l2-normalised vectors; trains the encoder. Weight it in the trainer.
        encoder_codes (`torch.FloatTensor` of shape `(batch_size, num_tokens, code_dim)`):
            The encoder's l2-normalised codes z_e before quantisation, in encoder order (for auxiliary losses).
        encoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
            The encoder ViT's hidden states `(batch_size, num_patches + 1 + num_tokens, encoder_hidden_size)`: after
            the embedding, then after each layer (`encoder_num_hidden_layers + 1` tensors).
        encoder_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            Each encoder layer's attention probabilities `(batch_size, num_heads, sequence_length, sequence_length)`.
        decoder_hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
            The decoder ViT's hidden states `(batch_size, 1 + num_patches + num_tokens, decoder_hidden_size)`, as for
            the encoder (`decoder_num_hidden_layers + 1` tensors).
        decoder_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            Each decoder layer's attention probabilities.

    Properties `hidden_states` and `attentions` (transformers' names for a model that is not an encoder-decoder)
    give the two ViTs as one stack: the encoder's then the decoder's.
    """

    reconstruction: torch.FloatTensor | None = None
    token_ids: torch.LongTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    encoder_codes: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None

    @property
    def hidden_states(self) -> tuple[torch.FloatTensor, ...] | None:
        """`encoder_hidden_states + decoder_hidden_states` (`encoder_num_hidden_layers + decoder_num_hidden_layers +
        2` tensors, each `(batch_size, sequence_length, hidden_size)` of its ViT), `None` unless asked for."""
        return _joined(self.encoder_hidden_states, self.decoder_hidden_states)

    @property
    def attentions(self) -> tuple[torch.FloatTensor, ...] | None:
        """`encoder_attentions + decoder_attentions` (one `(batch_size, num_heads, sequence_length, sequence_length)`
        tensor per layer, encoder layers first), `None` unless asked for."""
        return _joined(self.encoder_attentions, self.decoder_attentions)


def _joined(first: tuple | None, second: tuple | None) -> tuple | None:
    if first is None and second is None:
        return None
    return tuple(first or ()) + tuple(second or ())


# ----------------------------------------------------------------------------------------------------------------------
# ViT parts, shared by encoder and decoder
# ----------------------------------------------------------------------------------------------------------------------


class TokenSetVQVAEAttention(nn.Module):
    """Multi-head self-attention with a fused input projection, as `torch.nn.MultiheadAttention` stores it.

    `in_proj` holds the query, key and value projections stacked along the output dimension (`[q; k; v]`), so the
    original `in_proj_weight` / `in_proj_bias` load unchanged; attention runs through `F.scaled_dot_product_attention`.
    """

    def __init__(self, hidden_size: int, num_attention_heads: int, attention_dropout: float = 0.0):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.attention_dropout = attention_dropout
        self.in_proj = nn.Linear(hidden_size, 3 * hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, attn_implementation: str = "sdpa", output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the output `(B, L, D)` and, with `output_attentions`, the attention probabilities `(B, H, L, L)`.

        `attn_implementation` is the model config's: `"sdpa"` (`F.scaled_dot_product_attention`) or `"eager"` (the
        softmax written out, in float32). Attention probabilities come from the eager computation, also under SDPA.
        """
        if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"`attn_implementation` must be one of {ATTENTION_IMPLEMENTATIONS}, got {attn_implementation!r}."
            )
        batch_size, seq_len, hidden_size = hidden_states.shape
        # 1. fused projection, split into heads
        qkv = self.in_proj(hidden_states)  # (B, L, 3 * D)
        qkv = qkv.view(batch_size, seq_len, 3, self.num_attention_heads, self.head_dim)  # (B, L, 3, H, Dh)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, Dh)
        # 2. attention
        dropout_p = self.attention_dropout if self.training else 0.0
        attn_weights = None
        if attn_implementation == "eager" or output_attentions:
            scores = torch.matmul(query, key.transpose(-1, -2)) * self.head_dim**-0.5  # (B, H, L, L)
            attn_weights = scores.float().softmax(-1).to(query.dtype)  # (B, H, L, L)
            attn_output = torch.matmul(F.dropout(attn_weights, p=dropout_p, training=self.training), value)
        else:
            attn_output = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)  # (B, H, L, Dh)
        # 3. merge heads and project out
        attn_output = attn_output.transpose(1, 2).reshape(batch_size, seq_len, hidden_size)  # (B, L, D)
        return self.out_proj(attn_output), attn_weights if output_attentions else None  # (B, L, D)


class TokenSetVQVAEMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation = nn.GELU()  # exact (erf) GELU, as torch's default in the original
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.fc1(hidden_states)  # (B, L, 4D)
        hidden_states = self.activation(hidden_states)  # (B, L, 4D)
        return self.fc2(hidden_states)  # (B, L, D)


class TokenSetVQVAELayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: `x = x + attn(ln1(x)); x = x + mlp(ln2(x))`."""

    def __init__(
        self,
        hidden_size: int,
        num_attention_heads: int,
        mlp_ratio: float,
        layer_norm_eps: float,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.self_attn = TokenSetVQVAEAttention(hidden_size, num_attention_heads, attention_dropout)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = TokenSetVQVAEMLP(hidden_size, int(hidden_size * mlp_ratio))

    def forward(
        self, hidden_states: torch.Tensor, attn_implementation: str = "sdpa", output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the block's output `(B, L, D)` and, with `output_attentions`, its attention `(B, H, L, L)`."""
        attn_output, attn_weights = self.self_attn(
            self.layer_norm1(hidden_states), attn_implementation, output_attentions
        )  # (B, L, D)
        hidden_states = hidden_states + attn_output  # (B, L, D)
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))  # (B, L, D)
        return hidden_states, attn_weights


# ----------------------------------------------------------------------------------------------------------------------
# Encoder ViT
# ----------------------------------------------------------------------------------------------------------------------


class TokenSetVQVAEEncoderEmbeddings(nn.Module):
    """Patch embedding, class token and positional embedding, followed by the latent tokens (no positional
    embedding: the latent tokens are interchangeable, which is what makes the tokenization a set)."""

    def __init__(self, config: TokenSetVQVAEConfig):
        super().__init__()
        width = config.encoder_hidden_size
        num_patches = config.grid_size**2
        self.patch_embedding = nn.Conv2d(
            config.num_channels, width, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.class_embedding = nn.Parameter(torch.empty(1, width))
        self.position_embedding = nn.Parameter(torch.empty(num_patches + 1, width))
        self.latent_tokens = nn.Parameter(torch.empty(config.num_tokens, width))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch_size = pixel_values.shape[0]
        # 1. patches
        patches = self.patch_embedding(pixel_values)  # (B, D, g, g)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, D), N = g * g
        # 2. class token + positional embedding
        class_token = self.class_embedding.expand(batch_size, 1, -1)  # (B, 1, D)
        image_tokens = torch.cat([class_token, patches], dim=1) + self.position_embedding  # (B, N + 1, D)
        # 3. latent tokens, deliberately without positional embedding
        latent_tokens = self.latent_tokens.expand(batch_size, -1, -1)  # (B, M, D)
        return torch.cat([image_tokens, latent_tokens], dim=1)  # (B, N + 1 + M, D)


class TokenSetVQVAEEncoder(nn.Module):
    """ViT over `[class, patches, latent tokens]`; returns the latent tokens projected to `code_dim` (not normalised).

    Layout quirk of the released model (kept, or its weights do not reproduce it): the original reshapes the
    `(B, M, D)` latent tokens to `(B, D, M, 1)` *without* transposing before its 1x1 `conv_out`, i.e. it reads the
    same memory with the axes swapped. Code `m` therefore takes its input "channel" `c` from the flat position
    `c * M + m` of the `(M, D)` latent block (token `(c * M + m) // D`, feature `(c * M + m) % D`), so every code mixes
    features of several latent tokens. The decoder is unaffected: it treats the `M` codes as a set either way.
    """

    def __init__(self, config: TokenSetVQVAEConfig):
        super().__init__()
        width = config.encoder_hidden_size
        self.num_tokens = config.num_tokens
        self.embeddings = TokenSetVQVAEEncoderEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            [
                TokenSetVQVAELayer(
                    width,
                    config.encoder_num_attention_heads,
                    config.mlp_ratio,
                    config.layer_norm_eps,
                    config.attention_dropout,
                )
                for _ in range(config.encoder_num_hidden_layers)
            ]
        )
        self.post_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.code_projection = nn.Linear(width, config.code_dim)

    def forward(
        self,
        pixel_values: torch.Tensor,
        attn_implementation: str = "sdpa",
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """Returns the codes `(B, M, code_dim)`, and (when asked, else `None`) the hidden states `(B, N + 1 + M, D)`
        after the embedding and after each layer, and each layer's attention `(B, H, N + 1 + M, N + 1 + M)`."""
        # 1. embed; pixel_values are in [0, 1] here
        hidden_states = self.embeddings(pixel_values)  # (B, N + 1 + M, D)
        hidden_states = self.pre_layernorm(hidden_states)  # (B, N + 1 + M, D)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        # 2. transformer
        for layer in self.layers:
            hidden_states, attn_weights = layer(hidden_states, attn_implementation, output_attentions)  # (B, L, D)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        # 3. keep the latent tokens
        latent_states = hidden_states[:, -self.num_tokens :]  # (B, M, D)
        latent_states = self.post_layernorm(latent_states)  # (B, M, D)
        # 4. the original's layout quirk: (B, M, D) memory read as (B, D, M) (see class docstring), then project
        batch_size, num_tokens, width = latent_states.shape
        latent_states = latent_states.reshape(batch_size, width, num_tokens).transpose(1, 2)  # (B, M, D), mixed
        return self.code_projection(latent_states), all_hidden_states, all_attentions  # (B, M, code_dim)


# ----------------------------------------------------------------------------------------------------------------------
# Quantiser
# ----------------------------------------------------------------------------------------------------------------------


class TokenSetVQVAEQuantizer(nn.Module):
    """Cosine vector quantiser: codes and codebook rows are l2-normalised and each code takes the nearest row.

    Distances are computed in float32 whatever the model dtype, so that bf16 weights pick the same rows as far as the
    rounded codes allow.
    """

    def __init__(self, config: TokenSetVQVAEConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.codebook_size, config.code_dim)

    def embed(self, token_ids: torch.LongTensor) -> torch.Tensor:
        """`(batch_size, num_tokens)` ids -> `(batch_size, num_tokens, code_dim)` normalised codebook rows."""
        return F.normalize(self.embedding(token_ids), dim=-1)

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor]:
        """Returns `(z_e, z_q, token_ids)`: normalised codes `(B, M, code_dim)`, their normalised nearest codebook
        rows `(B, M, code_dim)` and the row indices `(B, M)`."""
        # 1. normalise codes and codebook (float32 for the search)
        z_e = F.normalize(codes, dim=-1)  # (B, M, d)
        codebook = F.normalize(self.embedding.weight.float(), dim=-1)  # (C, d)
        z_e_float = z_e.float()  # (B, M, d)
        # 2. squared distances |z|^2 + |e|^2 - 2 z.e and the nearest row
        distances = (
            z_e_float.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(-1) - 2 * z_e_float @ codebook.T
        )  # (B, M, C)
        token_ids = distances.argmin(dim=-1)  # (B, M)
        # 3. the quantised vectors are the normalised codebook rows
        z_q = self.embed(token_ids)  # (B, M, d)
        return z_e, z_q, token_ids


# ----------------------------------------------------------------------------------------------------------------------
# Decoder ViT
# ----------------------------------------------------------------------------------------------------------------------


class TokenSetVQVAEDecoderEmbeddings(nn.Module):
    """Mask tokens (one per patch) with class token and positional embedding, followed by the embedded codes
    (no positional embedding, so the decoder sees the tokens as a set)."""

    def __init__(self, config: TokenSetVQVAEConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.num_patches = config.grid_size**2
        self.code_embedding = nn.Linear(config.code_dim, width)
        self.class_embedding = nn.Parameter(torch.empty(1, width))
        self.position_embedding = nn.Parameter(torch.empty(self.num_patches + 1, width))
        self.mask_token = nn.Parameter(torch.empty(1, 1, width))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        batch_size = codes.shape[0]
        # 1. the codes, without positional embedding
        latent_tokens = self.code_embedding(codes)  # (B, M, D)
        # 2. image queries: class token + one mask token per patch, with positional embedding
        class_token = self.class_embedding.expand(batch_size, 1, -1)  # (B, 1, D)
        mask_tokens = self.mask_token.expand(batch_size, self.num_patches, -1)  # (B, N, D)
        image_tokens = torch.cat([class_token, mask_tokens], dim=1) + self.position_embedding  # (B, N + 1, D)
        return torch.cat([image_tokens, latent_tokens.to(image_tokens.dtype)], dim=1)  # (B, N + 1 + M, D)


class TokenSetVQVAEFeatureProjection(nn.Module):
    """The decoder ViT's output head: 1x1 conv -> tanh -> 1x1 conv on the patch grid (the original's `ffn`)."""

    def __init__(self, config: TokenSetVQVAEConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(config.decoder_hidden_size, config.decoder_ffn_hidden_size, kernel_size=1)
        self.activation = nn.Tanh()
        self.conv2 = nn.Conv2d(config.decoder_ffn_hidden_size, config.z_channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv1(hidden_states)  # (B, ffn, g, g)
        hidden_states = self.activation(hidden_states)  # (B, ffn, g, g)
        return self.conv2(hidden_states)  # (B, z_channels, g, g)


class TokenSetVQVAEDecoder(nn.Module):
    """ViT over `[class, mask tokens, codes]`; returns the mask tokens as a `(z_channels, grid, grid)` feature map."""

    def __init__(self, config: TokenSetVQVAEConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.grid_size = config.grid_size
        self.embeddings = TokenSetVQVAEDecoderEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            [
                TokenSetVQVAELayer(
                    width,
                    config.decoder_num_attention_heads,
                    config.mlp_ratio,
                    config.layer_norm_eps,
                    config.attention_dropout,
                )
                for _ in range(config.decoder_num_hidden_layers)
            ]
        )
        self.post_layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.feature_projection = TokenSetVQVAEFeatureProjection(config)

    def forward(
        self,
        codes: torch.Tensor,
        attn_implementation: str = "sdpa",
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """`codes` `(batch_size, num_tokens, code_dim)` -> features `(batch_size, z_channels, grid, grid)`, and (when
        asked, else `None`) the hidden states after the embedding and each layer, and each layer's attention."""
        batch_size = codes.shape[0]
        num_patches = self.grid_size**2
        # 1. embed
        hidden_states = self.embeddings(codes)  # (B, N + 1 + M, D)
        hidden_states = self.pre_layernorm(hidden_states)  # (B, N + 1 + M, D)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        # 2. transformer
        for layer in self.layers:
            hidden_states, attn_weights = layer(hidden_states, attn_implementation, output_attentions)  # (B, L, D)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        # 3. keep the mask tokens, back to the patch grid
        image_states = hidden_states[:, 1 : 1 + num_patches]  # (B, N, D)
        image_states = self.post_layernorm(image_states)  # (B, N, D)
        image_states = image_states.transpose(1, 2).reshape(batch_size, -1, self.grid_size, self.grid_size)
        # (B, D, g, g)
        return self.feature_projection(image_states), all_hidden_states, all_attentions  # (B, z_channels, g, g)


# ----------------------------------------------------------------------------------------------------------------------
# Pixel decoder (MaskGIT-VQGAN decoder)
# ----------------------------------------------------------------------------------------------------------------------
# All convolutions have stride 1 and odd kernels, for which TensorFlow's "same" padding is symmetric: padding k // 2.


class TokenSetVQVAEResnetBlock(GradientCheckpointingLayer):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> dropout -> conv3x3, plus a residual.

    When the channel count changes, the residual is `conv_shortcut` (1x1) applied to the block's *output*, not to its
    input: `out = h + conv_shortcut(h)`. The input is then not carried over at all. This quirk comes from the MaskGIT
    port the released checkpoint was trained with, and the converted weights only reproduce it with this form.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_num_groups: int,
        group_norm_eps: float,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=group_norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=group_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.activation = nn.SiLU()
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False)
        else:
            self.conv_shortcut = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states  # (B, C_in, h, w)
        hidden_states = self.conv1(self.activation(self.norm1(hidden_states)))  # (B, C_out, h, w)
        hidden_states = self.activation(self.norm2(hidden_states))  # (B, C_out, h, w)
        hidden_states = self.conv2(self.dropout(hidden_states))  # (B, C_out, h, w)
        if self.conv_shortcut is not None:
            residual = self.conv_shortcut(hidden_states)  # (B, C_out, h, w), from the output (see class docstring)
        return hidden_states + residual  # (B, C_out, h, w)


class TokenSetVQVAEUpBlock(nn.Module):
    """One resolution level: `num_res_blocks` residual blocks, then (except at level 0) nearest 2x + conv3x3."""

    def __init__(self, config: TokenSetVQVAEConfig, in_channels: int, out_channels: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                TokenSetVQVAEResnetBlock(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    config.norm_num_groups,
                    config.group_norm_eps,
                    config.dropout,
                )
                for i in range(config.num_res_blocks)
            ]
        )
        if add_upsample:
            self.upsample_conv = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        else:
            self.upsample_conv = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)  # (B, C_out, h, w)
        if self.upsample_conv is not None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")  # (B, C_out, 2h, 2w)
            hidden_states = self.upsample_conv(hidden_states)  # (B, C_out, 2h, 2w)
        return hidden_states


class TokenSetVQVAEPixelDecoder(nn.Module):
    """Feature map `(B, z_channels, g, g)` -> image `(B, num_channels, g * 2 ** (L - 1), ...)` in roughly [0, 1].

    `up_blocks[level]` works at resolution level `level` (0 = output resolution) and they run from the coarsest level
    `L - 1` down to 0, as in the original (whose parameters are stored as `up.{level}`).
    """

    def __init__(self, config: TokenSetVQVAEConfig):
        super().__init__()
        channel_mult = config.pixel_decoder_channel_mult
        widths = [config.pixel_decoder_hidden_channels * mult for mult in channel_mult]
        num_levels = len(widths)
        self.conv_in = nn.Conv2d(config.z_channels, widths[-1], kernel_size=3, padding=1)
        self.mid_blocks = nn.ModuleList(
            [
                TokenSetVQVAEResnetBlock(
                    widths[-1], widths[-1], config.norm_num_groups, config.group_norm_eps, config.dropout
                )
                for _ in range(config.num_res_blocks)
            ]
        )
        self.up_blocks = nn.ModuleList(
            [
                TokenSetVQVAEUpBlock(
                    config,
                    in_channels=widths[min(level + 1, num_levels - 1)],
                    out_channels=widths[level],
                    add_upsample=level > 0,
                )
                for level in range(num_levels)
            ]
        )
        self.norm_out = nn.GroupNorm(config.norm_num_groups, widths[0], eps=config.group_norm_eps)
        self.activation = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[0], config.num_channels, kernel_size=3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # 1. in
        hidden_states = self.conv_in(features)  # (B, C_top, g, g)
        for block in self.mid_blocks:
            hidden_states = block(hidden_states)  # (B, C_top, g, g)
        # 2. coarse -> fine
        for up_block in reversed(self.up_blocks):
            hidden_states = up_block(hidden_states)  # (B, C_level, h, w), doubling h, w except at level 0
        # 3. out
        hidden_states = self.activation(self.norm_out(hidden_states))  # (B, C_0, H, W)
        return self.conv_out(hidden_states)  # (B, num_channels, H, W)


# ----------------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------------


class TokenSetVQVAEPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    """`from_pretrained` checks a local folder first ([`~utils.loading.StrictLoadingMixin`]): a mistyped path, a missing
    `config.json`, a missing or unreadable weights file, or weights that do not fit the config fail with a message
    naming the file."""

    config: TokenSetVQVAEConfig
    config_class = TokenSetVQVAEConfig
    base_model_prefix = "tokenset_vqvae"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["TokenSetVQVAELayer", "TokenSetVQVAEResnetBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Initialisation for training from scratch.

        Linear and conv weights: truncated normal (`initializer_range`), zero bias; norms: ones / zeros. The learned
        tokens and embeddings get `width ** -0.5`-scaled normal values (as in CLIP-style ViTs), so they enter the
        first LayerNorm at the same scale as the patch embeddings. The codebook is standard normal: only its
        direction matters to the cosine quantiser, and a normal sample spreads the directions uniformly. The model has
        no non-persistent buffers, so nothing else needs (re)initialising after `from_pretrained`.
        """
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, TokenSetVQVAEEncoderEmbeddings):
            scale = module.class_embedding.shape[-1] ** -0.5
            init.normal_(module.class_embedding, std=scale)
            init.normal_(module.position_embedding, std=scale)
            init.normal_(module.latent_tokens, std=scale)
        elif isinstance(module, TokenSetVQVAEDecoderEmbeddings):
            scale = module.class_embedding.shape[-1] ** -0.5
            init.normal_(module.class_embedding, std=scale)
            init.normal_(module.position_embedding, std=scale)
            init.normal_(module.mask_token, std=scale)


class TokenSetVQVAE(TokenSetVQVAEPreTrainedModel):
    r"""
    The TokenSet set tokenizer: image `(batch_size, 3, image_size, image_size)` in [-1, 1] <-> an unordered set of
    `num_tokens` token ids in `[0, codebook_size)`.

    - [`encode`]: images -> token ids (+ quantised codes);
    - [`decode`]: token ids (any order) -> images in roughly [-1, 1];
    - [`encode_to_counts`] / [`decode_counts`]: the same through count vectors `(batch_size, codebook_size)`;
    - [`forward`]: the training pass, returning the reconstruction and the VQ losses.
    """

    def __init__(self, config: TokenSetVQVAEConfig):
        super().__init__(config)
        self.encoder = TokenSetVQVAEEncoder(config)
        self.quantizer = TokenSetVQVAEQuantizer(config)
        self.decoder = TokenSetVQVAEDecoder(config)
        self.pixel_decoder = TokenSetVQVAEPixelDecoder(config)
        self.post_init()

    def save_pretrained(self, save_directory: str | os.PathLike, *args, variant: str | None = None, **kwargs):
        """transformers' `save_pretrained`, plus what `AutoModel.from_pretrained(save_directory,
        trust_remote_code=True)` needs without importing this package first: `auto_map` in config.json and the two
        files it names (`configuration_tokenset_vqvae.py`, `modeling_tokenset_vqvae.py`), which import the classes
        from the installed package. After `import tokenset_diffusers`, `AutoModel` finds them without
        `trust_remote_code`.

        `variant` (e.g. `"fp16"`) names the weights file `model.<variant>.safetensors`; it is a named parameter so
        that a pipeline's `save_pretrained(variant=...)` passes it on (diffusers passes it only to a `save_pretrained`
        that declares it), and `from_pretrained(..., variant=...)` loads it."""
        if variant is not None:
            kwargs["variant"] = variant
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_auto_class_files(save_directory)

    # -- input checks ---------------------------------------------------------------------------------------------------

    def _check_pixel_values(self, pixel_values: torch.Tensor):
        size, channels = self.config.image_size, self.config.num_channels
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if pixel_values.ndim != 4:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, {channels}, {size}, {size}), got {tuple(pixel_values.shape)}."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"`pixel_values` must be a floating point tensor in [-1, 1], got dtype {pixel_values.dtype}."
            )
        if pixel_values.shape[1] != channels:
            raise ValueError(
                f"`pixel_values` must have {channels} channels (shape (batch_size, {channels}, {size}, {size})), "
                f"got shape {tuple(pixel_values.shape)}."
            )
        if tuple(pixel_values.shape[2:]) != (size, size):
            raise ValueError(
                f"`pixel_values` must be {size}x{size} images (`config.image_size`), got {tuple(pixel_values.shape[2:])}. "
                "Resize and centre-crop them first, e.g. with `tokenset_diffusers.preprocess_images`."
            )
        if pixel_values.numel() > 0:
            largest = pixel_values.detach().abs().max().item()
            if not largest <= _PIXEL_VALUE_LIMIT:  # also catches NaN
                raise ValueError(
                    f"`pixel_values` must be images scaled to [-1, 1], got values up to {largest:g} in magnitude. "
                    "Scale [0, 255] images with `x / 127.5 - 1` (or use `tokenset_diffusers.preprocess_images`)."
                )

    def _check_token_ids(self, token_ids: torch.Tensor):
        num_tokens, codebook_size = self.config.num_tokens, self.config.codebook_size
        if not isinstance(token_ids, torch.Tensor):
            raise ValueError(f"`token_ids` must be a torch.Tensor, got {type(token_ids).__name__}.")
        if token_ids.ndim != 2 or token_ids.shape[1] != num_tokens:
            raise ValueError(
                f"`token_ids` must have shape (batch_size, {num_tokens}) (`config.num_tokens`), "
                f"got {tuple(token_ids.shape)}."
            )
        if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
            raise ValueError(f"`token_ids` must be an integer tensor, got dtype {token_ids.dtype}.")
        if token_ids.numel() > 0:
            low, high = token_ids.min().item(), token_ids.max().item()
            if low < 0 or high >= codebook_size:
                raise ValueError(
                    f"`token_ids` must lie in [0, {codebook_size}) (`config.codebook_size`), got values in [{low}, {high}]."
                )

    def _check_counts(self, counts: torch.Tensor):
        codebook_size = self.config.codebook_size
        if not isinstance(counts, torch.Tensor):
            raise ValueError(f"`counts` must be a torch.Tensor, got {type(counts).__name__}.")
        if counts.ndim != 2 or counts.shape[1] != codebook_size:
            raise ValueError(
                f"`counts` must have shape (batch_size, {codebook_size}) (`config.codebook_size`), "
                f"got {tuple(counts.shape)}."
            )
        if counts.numel() > 0 and counts.min().item() < 0:
            raise ValueError(f"`counts` must be non-negative, got a minimum of {counts.min().item()}.")

    # -- public API -----------------------------------------------------------------------------------------------------

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> TokenSetVQVAEEncoderOutput | tuple:
        r"""
        Tokenize images.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
                Images in [-1, 1].
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`TokenSetVQVAEEncoderOutput`] instead of a `(token_ids, z_quantized)` tuple.

        Returns:
            [`TokenSetVQVAEEncoderOutput`] with `token_ids` `(batch_size, num_tokens)` int64 and `z_quantized`
            `(batch_size, code_dim, 1, num_tokens)`.
        """
        self._check_pixel_values(pixel_values)
        # 1. the ViT sees [0, 1]
        pixel_values = pixel_values.to(self.dtype) * 0.5 + 0.5  # (B, 3, H, W)
        # 2. encode and quantise
        codes, _, _ = self.encoder(pixel_values, self.config._attn_implementation)  # (B, M, d)
        _, z_quantized, token_ids = self.quantizer(codes)  # (B, M, d), (B, M)
        z_quantized = z_quantized.transpose(1, 2).unsqueeze(2)  # (B, d, 1, M)
        if not return_dict:
            return token_ids, z_quantized
        return TokenSetVQVAEEncoderOutput(token_ids=token_ids, z_quantized=z_quantized)

    def decode(self, token_ids: torch.LongTensor) -> torch.FloatTensor:
        r"""
        Decode token sets to images.

        Args:
            token_ids (`torch.LongTensor` of shape `(batch_size, num_tokens)`):
                Token ids in `[0, codebook_size)`, in any order (the result does not depend on it).

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`, roughly in [-1, 1].
        """
        self._check_token_ids(token_ids)
        codes = self.quantizer.embed(token_ids.long())  # (B, M, d)
        features, _, _ = self.decoder(codes, self.config._attn_implementation)  # (B, z_channels, g, g)
        images = self.pixel_decoder(features)  # (B, 3, H, W) in ~[0, 1]
        return images * 2.0 - 1.0  # (B, 3, H, W) in ~[-1, 1]

    def encode_to_counts(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        r"""
        Tokenize images into count vectors.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
                Images in [-1, 1].

        Returns:
            `torch.LongTensor` of shape `(batch_size, codebook_size)`: how often each codebook entry occurs in the
            image's token set; every row sums to `num_tokens`.
        """
        token_ids = self.encode(pixel_values).token_ids  # (B, M)
        return tokens_to_counts(token_ids, self.config.codebook_size)  # (B, C)

    def decode_counts(self, counts: torch.Tensor) -> torch.FloatTensor:
        r"""
        Decode count vectors to images.

        Args:
            counts (`torch.Tensor` of shape `(batch_size, codebook_size)`):
                Non-negative counts (integer, or float as produced by a sampler). Rows that do not sum to
                `num_tokens` are brought to `num_tokens` tokens by the original's rounding and fill rule
                ([`tokenset_diffusers.counts_to_tokens`]).

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`, roughly in [-1, 1].
        """
        self._check_counts(counts)
        token_ids = counts_to_tokens(counts, self.config.num_tokens)  # (B, M)
        return self.decode(token_ids)

    def forward(
        self,
        pixel_values: torch.Tensor,
        shuffle_tokens: bool = False,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> TokenSetVQVAEOutput | tuple:
        r"""
        Autoencode images (the training pass).

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
                Images in [-1, 1].
            shuffle_tokens (`bool`, *optional*, defaults to `False`):
                Randomly permute the latent tokens of each image before the decoder, as in the paper's training. The
                decoder is order-invariant, so this only changes float rounding; it is there to keep it that way.
            generator (`torch.Generator`, *optional*):
                Random generator for `shuffle_tokens`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`TokenSetVQVAEOutput`] instead of a tuple.
            output_hidden_states (`bool`, *optional*, defaults to `config.output_hidden_states`):
                Also return the hidden states of the encoder and decoder ViTs.
            output_attentions (`bool`, *optional*, defaults to `config.output_attentions`):
                Also return every ViT layer's attention probabilities (computed the eager way, also under SDPA).

        Returns:
            [`TokenSetVQVAEOutput`]: `reconstruction` `(batch_size, num_channels, image_size, image_size)`,
            `token_ids` `(batch_size, num_tokens)`, `codebook_loss` and `commitment_loss` (scalars), and the hidden
            states / attentions asked for. As a tuple: those five, then the ones asked for, in the output's order.
        """
        self._check_pixel_values(pixel_values)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        attn_implementation = self.config._attn_implementation
        # 1. encode and quantise
        pixel_values = pixel_values.to(self.dtype) * 0.5 + 0.5  # (B, 3, H, W) in [0, 1]
        codes, encoder_hidden_states, encoder_attentions = self.encoder(
            pixel_values, attn_implementation, output_hidden_states, output_attentions
        )  # (B, M, d)
        z_e, z_q, token_ids = self.quantizer(codes)  # (B, M, d), (B, M, d), (B, M)
        # 2. VQ losses on the normalised vectors, and the straight-through estimator
        codebook_loss = F.mse_loss(z_q.float(), z_e.detach().float())
        commitment_loss = F.mse_loss(z_e.float(), z_q.detach().float())
        z_straight_through = z_e + (z_q.to(z_e.dtype) - z_e).detach()  # (B, M, d), value z_q, gradient to z_e
        # 3. optionally shuffle the set, then decode
        if shuffle_tokens:
            batch_size, num_tokens, code_dim = z_straight_through.shape
            noise_device = generator.device if generator is not None else z_straight_through.device
            permutation = torch.rand(batch_size, num_tokens, generator=generator, device=noise_device)  # (B, M)
            permutation = permutation.argsort(dim=-1).to(z_straight_through.device)  # (B, M)
            z_straight_through = z_straight_through.gather(
                1, permutation.unsqueeze(-1).expand(-1, -1, code_dim)
            )  # (B, M, d)
        features, decoder_hidden_states, decoder_attentions = self.decoder(
            z_straight_through, attn_implementation, output_hidden_states, output_attentions
        )  # (B, z_channels, g, g)
        reconstruction = self.pixel_decoder(features) * 2.0 - 1.0  # (B, 3, H, W)
        output = TokenSetVQVAEOutput(
            reconstruction=reconstruction,
            token_ids=token_ids,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            encoder_codes=z_e,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attentions=encoder_attentions,
            decoder_hidden_states=decoder_hidden_states,
            decoder_attentions=decoder_attentions,
        )
        return output if return_dict else output.to_tuple()


# What `auto_map` in a saved config.json points transformers' Auto classes at (files written next to the weights).
AUTO_MAP = {
    "AutoConfig": "configuration_tokenset_vqvae.TokenSetVQVAEConfig",
    "AutoModel": "modeling_tokenset_vqvae.TokenSetVQVAE",
}


def write_auto_class_files(folder: str | os.PathLike) -> None:
    """Adds `auto_map` to `folder/config.json` and writes the import-only files it names."""
    for reference in AUTO_MAP.values():
        file_module, class_name = reference.split(".")
        write_import_file(os.path.join(folder, f"{file_module}.py"), f"{__package__}.{file_module}", class_name)
    config_path = os.path.join(folder, "config.json")
    with open(config_path, encoding="utf-8") as file:
        config = json.load(file)
    config["auto_map"] = dict(AUTO_MAP)
    with open(config_path, "w", encoding="utf-8") as file:
        file.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = [
    "TokenSetVQVAE",
    "TokenSetVQVAEEncoderOutput",
    "TokenSetVQVAEOutput",
    "TokenSetVQVAEPreTrainedModel",
]

"""Convert the original TokenSet set tokenizer weights to `TokenSetVQVAE`.

The released `set_tokenizer_128_4096.pth` is a plain state dict (read it with `torch.load(..., weights_only=True)`).
Conversion is one explicit rename table (`RENAME_TABLE`) plus one reshape:

- the fused attention input projection (`attn.in_proj_weight` / `attn.in_proj_bias`, `[q; k; v]` stacked along the
  output dimension as `torch.nn.MultiheadAttention` stores it) stays fused as `self_attn.in_proj`, a single
  `nn.Linear(width, 3 * width)`; the model splits it into heads itself, so no weight is split or reordered;
- the encoder's `conv_out`, a 1x1 convolution over a `(B, width, M, 1)` view, becomes the linear layer
  `encoder.code_projection`: its `(code_dim, width, 1, 1)` kernel is reshaped to `(code_dim, width)`.

Everything else keeps its values and shape. The pixel decoder's levels keep the original numbering
(`up.{level}` -> `up_blocks.{level}`, level 0 = output resolution; they run from the last to the first).

Import this module as `conversion.tokenizer_conversion`; `convert_tokenset_to_diffusers.py` builds the command line on
top of it.
"""

import re

import torch

from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE


_BLOCK = r"^(encoder|decoder)\.transformer\.(\d+)\."
_RESNET = r"^pixel_decoder\.up\.(\d+)\.block\.(\d+)\."

# (original key regex, new key template), tried in order; every original key must match exactly one.
RENAME_TABLE: list[tuple[str, str]] = [
    # encoder embeddings
    (r"^latent_tokens$", "encoder.embeddings.latent_tokens"),
    (r"^encoder\.class_embedding$", "encoder.embeddings.class_embedding"),
    (r"^encoder\.positional_embedding$", "encoder.embeddings.position_embedding"),
    (r"^encoder\.patch_embed\.(weight|bias)$", r"encoder.embeddings.patch_embedding.\1"),
    # ViT blocks and norms (encoder and decoder)
    (r"^(encoder|decoder)\.ln_pre\.(weight|bias)$", r"\1.pre_layernorm.\2"),
    (r"^(encoder|decoder)\.ln_post\.(weight|bias)$", r"\1.post_layernorm.\2"),
    (_BLOCK + r"ln_1\.(weight|bias)$", r"\1.layers.\2.layer_norm1.\3"),
    (_BLOCK + r"ln_2\.(weight|bias)$", r"\1.layers.\2.layer_norm2.\3"),
    (_BLOCK + r"attn\.in_proj_(weight|bias)$", r"\1.layers.\2.self_attn.in_proj.\3"),
    (_BLOCK + r"attn\.out_proj\.(weight|bias)$", r"\1.layers.\2.self_attn.out_proj.\3"),
    (_BLOCK + r"mlp\.c_fc\.(weight|bias)$", r"\1.layers.\2.mlp.fc1.\3"),
    (_BLOCK + r"mlp\.c_proj\.(weight|bias)$", r"\1.layers.\2.mlp.fc2.\3"),
    # encoder output and quantiser
    (r"^encoder\.conv_out\.(weight|bias)$", r"encoder.code_projection.\1"),
    (r"^quantize\.embedding\.weight$", "quantizer.embedding.weight"),
    # decoder embeddings and output head
    (r"^decoder\.class_embedding$", "decoder.embeddings.class_embedding"),
    (r"^decoder\.positional_embedding$", "decoder.embeddings.position_embedding"),
    (r"^decoder\.mask_token$", "decoder.embeddings.mask_token"),
    (r"^decoder\.decoder_embed\.(weight|bias)$", r"decoder.embeddings.code_embedding.\1"),
    (r"^decoder\.ffn\.0\.(weight|bias)$", r"decoder.feature_projection.conv1.\1"),
    (r"^decoder\.ffn\.2\.(weight|bias)$", r"decoder.feature_projection.conv2.\1"),
    # pixel decoder
    (r"^pixel_decoder\.(conv_in|norm_out|conv_out)\.(weight|bias)$", r"pixel_decoder.\1.\2"),
    (r"^pixel_decoder\.mid\.(\d+)\.(norm1|conv1|norm2|conv2)\.(weight|bias)$", r"pixel_decoder.mid_blocks.\1.\2.\3"),
    (r"^pixel_decoder\.mid\.(\d+)\.nin_shortcut\.weight$", r"pixel_decoder.mid_blocks.\1.conv_shortcut.weight"),
    (_RESNET + r"(norm1|conv1|norm2|conv2)\.(weight|bias)$", r"pixel_decoder.up_blocks.\1.resnets.\2.\3.\4"),
    (_RESNET + r"nin_shortcut\.weight$", r"pixel_decoder.up_blocks.\1.resnets.\2.conv_shortcut.weight"),
    (r"^pixel_decoder\.up\.(\d+)\.upsample_conv\.(weight|bias)$", r"pixel_decoder.up_blocks.\1.upsample_conv.\2"),
]

# New keys whose original tensor is a 1x1 convolution kernel and becomes a linear weight.
CONV1X1_TO_LINEAR = {"encoder.code_projection.weight"}

_REQUIRED_KEYS = [
    "latent_tokens",
    "encoder.patch_embed.weight",
    "encoder.positional_embedding",
    "encoder.conv_out.weight",
    "encoder.transformer.0.mlp.c_fc.weight",
    "quantize.embedding.weight",
    "decoder.decoder_embed.weight",
    "decoder.positional_embedding",
    "decoder.ffn.0.weight",
    "decoder.ffn.2.weight",
    "decoder.transformer.0.mlp.c_fc.weight",
    "pixel_decoder.conv_in.weight",
    "pixel_decoder.norm_out.weight",
]


def rename_tokenizer_key(key: str) -> str:
    """The `TokenSetVQVAE` parameter name of an original key; `ValueError` if no rule of `RENAME_TABLE` matches."""
    for pattern, template in RENAME_TABLE:
        if re.match(pattern, key):
            return re.sub(pattern, template, key)
    raise ValueError(f"No rename rule for original tokenizer key {key!r}.")


def _indices(state_dict: dict[str, torch.Tensor], pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (one group) over the keys, checked to be 0..n-1."""
    found = sorted({int(match.group(1)) for key in state_dict if (match := re.match(pattern, key))})
    if found != list(range(len(found))):
        raise ValueError(f"Indices matched by {pattern!r} must be 0..{len(found) - 1}, got {found}.")
    return found


def infer_tokenizer_config(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int = 12, **overrides
) -> TokenSetVQVAEConfig:
    """
    Read the `TokenSetVQVAEConfig` from the shapes of an original set tokenizer state dict.

    Inferred: image size (positional embedding length and patch size), patch size, channels, encoder and decoder
    widths and depths, MLP ratio, decoder output-head width, `codebook_size`, `num_tokens`, `code_dim`, `z_channels`,
    and the pixel decoder's hidden channels, channel multipliers (from `up.*` widths) and residual blocks per level.
    Not stored in the weights, hence taken from the arguments: the head count (the same for encoder and decoder; the
    released model has 12) and, through `overrides`, any other config field (e.g. norm epsilons).

    Args:
        state_dict (`dict[str, torch.Tensor]`): original keys; meta tensors are fine (only shapes are read).
        num_attention_heads (`int`, *optional*, defaults to 12): attention heads of both ViTs.
        overrides: further `TokenSetVQVAEConfig` fields, applied last.

    Returns:
        [`TokenSetVQVAEConfig`]
    """
    missing = [key for key in _REQUIRED_KEYS if key not in state_dict]
    if missing:
        raise ValueError(f"Not an original set tokenizer state dict: missing keys {missing}.")

    encoder_width, num_channels, patch_size, _ = state_dict["encoder.patch_embed.weight"].shape
    num_positions = state_dict["encoder.positional_embedding"].shape[0] - 1
    grid_size = round(num_positions**0.5)
    if grid_size**2 != num_positions:
        raise ValueError(f"The encoder positional embedding has {num_positions} patch positions, not a square.")
    decoder_width = state_dict["decoder.decoder_embed.weight"].shape[0]
    if state_dict["decoder.positional_embedding"].shape[0] - 1 != num_positions:
        raise ValueError("The encoder and decoder positional embeddings have different lengths.")

    encoder_mlp_ratio = state_dict["encoder.transformer.0.mlp.c_fc.weight"].shape[0] / encoder_width
    decoder_mlp_ratio = state_dict["decoder.transformer.0.mlp.c_fc.weight"].shape[0] / decoder_width
    if encoder_mlp_ratio != decoder_mlp_ratio:
        raise ValueError(
            f"Encoder and decoder MLP ratios differ ({encoder_mlp_ratio} vs {decoder_mlp_ratio}); "
            "`TokenSetVQVAEConfig` has one `mlp_ratio`."
        )

    hidden_channels = state_dict["pixel_decoder.norm_out.weight"].shape[0]
    levels = _indices(state_dict, r"^pixel_decoder\.up\.(\d+)\.")
    channel_mult = []
    for level in levels:
        width = state_dict[f"pixel_decoder.up.{level}.block.0.conv2.weight"].shape[0]
        if width % hidden_channels != 0:
            raise ValueError(f"Pixel decoder level {level} has {width} channels, not a multiple of {hidden_channels}.")
        channel_mult.append(width // hidden_channels)
    num_res_blocks = len(_indices(state_dict, r"^pixel_decoder\.up\.0\.block\.(\d+)\."))

    config_kwargs = {
        "image_size": grid_size * patch_size,
        "patch_size": patch_size,
        "num_channels": num_channels,
        "encoder_hidden_size": encoder_width,
        "encoder_num_hidden_layers": len(_indices(state_dict, r"^encoder\.transformer\.(\d+)\.")),
        "encoder_num_attention_heads": num_attention_heads,
        "decoder_hidden_size": decoder_width,
        "decoder_num_hidden_layers": len(_indices(state_dict, r"^decoder\.transformer\.(\d+)\.")),
        "decoder_num_attention_heads": num_attention_heads,
        "mlp_ratio": encoder_mlp_ratio,
        "decoder_ffn_hidden_size": state_dict["decoder.ffn.0.weight"].shape[0],
        "codebook_size": state_dict["quantize.embedding.weight"].shape[0],
        "num_tokens": state_dict["latent_tokens"].shape[0],
        "code_dim": state_dict["encoder.conv_out.weight"].shape[0],
        "z_channels": state_dict["decoder.ffn.2.weight"].shape[0],
        "pixel_decoder_hidden_channels": hidden_channels,
        "pixel_decoder_channel_mult": channel_mult,
        "num_res_blocks": num_res_blocks,
    }
    config_kwargs.update(overrides)
    return TokenSetVQVAEConfig(**config_kwargs)


def convert_tokenizer_state_dict(original_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    Rename (and, for the encoder's 1x1 `conv_out`, reshape) an original set tokenizer state dict.

    Args:
        original_state_dict (`dict[str, torch.Tensor]`): the original keys.

    Returns:
        `dict[str, torch.Tensor]`: `TokenSetVQVAE` keys; the tensors are the same objects (or views of them).

    Raises:
        `ValueError`: listing every original key no rule of `RENAME_TABLE` matches.
    """
    unmatched = [key for key in original_state_dict if not any(re.match(p, key) for p, _ in RENAME_TABLE)]
    if unmatched:
        raise ValueError(f"No rename rule for {len(unmatched)} original tokenizer key(s): {unmatched}.")
    converted = {}
    for key, tensor in original_state_dict.items():
        new_key = rename_tokenizer_key(key)
        if new_key in CONV1X1_TO_LINEAR and tensor.ndim == 4:
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        converted[new_key] = tensor
    return converted


def load_converted_state_dict(model: TokenSetVQVAE, state_dict: dict[str, torch.Tensor], assign: bool = False):
    """`model.load_state_dict(state_dict, strict=True)`, first raising a `ValueError` that lists every missing and
    unexpected key and every shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            "The converted tokenizer state dict does not fit `TokenSetVQVAE`:\n"
            f"  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            f"  shape mismatches ({len(mismatched)}): {mismatched}"
        )
    model.load_state_dict(state_dict, strict=True, assign=assign)


def convert_tokenizer(original_state_dict: dict[str, torch.Tensor], num_attention_heads: int = 12) -> TokenSetVQVAE:
    """
    Build a `TokenSetVQVAE` from an original set tokenizer state dict.

    The model is created on the meta device (no random initialisation of the weights) and the converted tensors are
    assigned to it, strictly: it ends up on the device and in the dtype of `original_state_dict`, in eval mode.

    Args:
        original_state_dict (`dict[str, torch.Tensor]`): the released `set_tokenizer_128_4096.pth` state dict or any
            original tokenizer state dict.
        num_attention_heads (`int`, *optional*, defaults to 12): attention heads of both ViTs (not in the weights).

    Returns:
        [`TokenSetVQVAE`]

    Raises:
        `ValueError`: unknown original keys, or missing / unexpected keys / shape mismatches after renaming.
    """
    config = infer_tokenizer_config(original_state_dict, num_attention_heads=num_attention_heads)
    converted = convert_tokenizer_state_dict(original_state_dict)
    with torch.device("meta"):
        model = TokenSetVQVAE(config)
    load_converted_state_dict(model, converted, assign=True)
    return model.eval()


__all__ = [
    "CONV1X1_TO_LINEAR",
    "RENAME_TABLE",
    "convert_tokenizer",
    "convert_tokenizer_state_dict",
    "infer_tokenizer_config",
    "load_converted_state_dict",
    "rename_tokenizer_key",
]

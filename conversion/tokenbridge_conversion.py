"""Convert the original TokenBridge generator (`models/tokenbridge.py`) to `TokenBridgeTransformer2DModel`.

`checkpoint-last.pth` holds `"model"` (parameters and the buffers `channel_mask`, `reconstruction_values`,
`boundaries`) and `"model_ema"` (the EMA of the parameters only, no buffers); the original's evaluation loads
`"model"`, then copies `"model_ema"` into the parameters. [`select_weights`] does the same (or keeps `"model"`).

Renames are one explicit table (`RENAME_TABLE`). The quantizer tables are copied, not recomputed (the original computes
them in float32, see docs/tokenbridge.md#quantizer). The head's causal mask `channel_mask` is not stored by the model
(the attention is causal by construction); the converter checks that it is the causal mask and drops it.

Import this module as `conversion.tokenbridge_conversion`; `convert_tokenbridge_to_diffusers.py` builds the command line on
top of it.
"""

import re

import torch

from conversion.checkpoint_loading import load_checkpoint, load_state_dict_strictly
from tokenset_diffusers.tokenbridge.transformer_tokenbridge import TOKENBRIDGE_PRESETS, TokenBridgeTransformer2DModel


_VIT = r"^(encoder|decoder)_blocks\.(\d+)\."
_HEAD = r"^channel_blocks\.(\d+)\."

# (original key regex, new key template), tried in order; every original key must match one.
RENAME_TABLE: list[tuple[str, str]] = [
    # MAE encoder
    (r"^z_proj\.(weight|bias)$", r"z_proj.\1"),
    (r"^z_proj_ln\.(weight|bias)$", r"z_proj_ln.\1"),
    (r"^class_emb\.weight$", "class_embedding.weight"),
    (r"^fake_latent$", "unconditional_embedding"),
    (r"^encoder_pos_embed_learned$", "encoder_pos_embed"),
    (r"^(encoder|decoder)_norm\.(weight|bias)$", r"\1_norm.\2"),
    # MAE decoder
    (r"^decoder_embed\.(weight|bias)$", r"decoder_embed.\1"),
    (r"^mask_token$", "mask_token"),
    (r"^decoder_pos_embed_learned$", "decoder_pos_embed"),
    (r"^output_pos_embed$", "output_pos_embed"),
    # ViT blocks of both
    (_VIT + r"(norm1|norm2)\.(weight|bias)$", r"\1_blocks.\2.\3.\4"),
    (_VIT + r"attn\.qkv\.(weight|bias)$", r"\1_blocks.\2.attn.to_qkv.\3"),
    (_VIT + r"attn\.proj\.(weight|bias)$", r"\1_blocks.\2.attn.to_out.\3"),
    (_VIT + r"mlp\.(fc1|fc2)\.(weight|bias)$", r"\1_blocks.\2.ff.\3.\4"),
    # channel head
    (r"^condition_proj\.(weight|bias)$", r"channel_head.condition_proj.\1"),
    (r"^token_embeddings\.(\d+)\.weight$", r"channel_head.token_embeddings.\1.weight"),
    (r"^channel_embed$", "channel_head.channel_embed"),
    (r"^timesteps_embeddings$", "channel_head.timestep_embed"),
    (_HEAD + r"(norm1|norm2)\.(weight|bias)$", r"channel_head.blocks.\1.\2.\3"),
    (_HEAD + r"attn\.qkv\.(weight|bias)$", r"channel_head.blocks.\1.attn.to_qkv.\2"),
    (_HEAD + r"attn\.q_norm\.(weight|bias)$", r"channel_head.blocks.\1.attn.norm_q.\2"),
    (_HEAD + r"attn\.k_norm\.(weight|bias)$", r"channel_head.blocks.\1.attn.norm_k.\2"),
    (_HEAD + r"attn\.proj\.(weight|bias)$", r"channel_head.blocks.\1.attn.to_out.\2"),
    (_HEAD + r"mlp\.(fc1|fc2)\.(weight|bias)$", r"channel_head.blocks.\1.ff.\2.\3"),
    (_HEAD + r"adaLN_modulation\.1\.(weight|bias)$", r"channel_head.blocks.\1.adaLN_modulation.\2"),
    (r"^channel_norm\.(weight|bias)$", r"channel_head.norm.\1"),
    (r"^channel_final\.adaLN_modulation\.1\.(weight|bias)$", r"channel_head.adaLN_modulation_out.\1"),
    (r"^channel_heads\.(\d+)\.(weight|bias)$", r"channel_head.proj_out.\1.\2"),
    # quantizer tables
    (r"^(reconstruction_values|boundaries)$", r"quantizer.\1"),
]

# Original buffers the model does not store (checked, then dropped).
DROPPED_KEYS = {"channel_mask"}

# The channel head normalises q and k per head: its head count is width / the norm's size. The encoder and decoder
# store nothing per head: their count is known only for the released sizes (`TOKENBRIDGE_PRESETS`, recognised by all
# widths and depths); any other checkpoint needs `--num_attention_heads`.
_HEAD_QK_NORM = "channel_blocks.0.attn.q_norm.weight"

_REQUIRED_KEYS = [
    "z_proj.weight",
    "class_emb.weight",
    "encoder_pos_embed_learned",
    "decoder_embed.weight",
    "output_pos_embed",
    "condition_proj.weight",
    "channel_embed",
    "channel_blocks.0.mlp.fc1.weight",
    "encoder_blocks.0.mlp.fc1.weight",
    "reconstruction_values",
]


def _require_keys(state_dict: dict[str, torch.Tensor]) -> None:
    missing = [key for key in _REQUIRED_KEYS if key not in state_dict]
    if missing:
        raise ValueError(f"Not an original TokenBridge state dict: missing keys {missing}.")


def _num_blocks(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(match.group(1)) for key in state_dict if (match := re.match(rf"^{prefix}\.(\d+)\.", key))}
    if ids != set(range(len(ids))):
        raise ValueError(f"`{prefix}` indices must be 0..{len(ids) - 1}, got {sorted(ids)}.")
    return len(ids)


def infer_tokenbridge_config(
    state_dict: dict[str, torch.Tensor],
    num_attention_heads: int | None = None,
    head_num_attention_heads: int | None = None,
    quant_min: float = -5.0,
    quant_max: float = 5.0,
    std_range: float = 3.0,
    channel_order: list[int] | None = None,
) -> dict:
    """
    Read the `TokenBridgeTransformer2DModel` config from the shapes of an original state dict (meta tensors are fine).

    The channel head's attention head count is read from its per-head q/k norm (`head_num_attention_heads`, if
    given, must agree); the encoder's and decoder's (`num_attention_heads`) from the released size the widths and
    depths are (L, H), else it must be given. The quantizer's range (not stored: only its tables are) and the channel
    order (hard-coded in the original) are arguments, defaulting to the released values.

    Returns:
        `dict`: keyword arguments for `TokenBridgeTransformer2DModel`.

    Raises:
        `ValueError` naming the flag to set (`--num_attention_heads`, `--head_num_attention_heads`) when a head count
        cannot be read from the checkpoint or disagrees with it.
    """
    _require_keys(state_dict)
    encoder_width = state_dict["z_proj.weight"].shape[0]
    latent_channels = state_dict["z_proj.weight"].shape[1]
    decoder_width = state_dict["decoder_embed.weight"].shape[0]
    head_width = state_dict["condition_proj.weight"].shape[0]
    num_tokens = state_dict["output_pos_embed"].shape[1]
    buffer_size = state_dict["encoder_pos_embed_learned"].shape[1] - num_tokens
    sample_size = round(num_tokens**0.5)
    if sample_size * sample_size != num_tokens:
        raise ValueError(f"The token count {num_tokens} is not a square grid.")
    num_levels = state_dict["reconstruction_values"].shape[0]
    bits = num_levels.bit_length() - 1
    if 2**bits != num_levels:
        raise ValueError(f"The quantizer has {num_levels} levels, not a power of two.")
    mlp_ratio = state_dict["encoder_blocks.0.mlp.fc1.weight"].shape[0] / encoder_width
    depths = {
        "encoder_num_layers": _num_blocks(state_dict, "encoder_blocks"),
        "decoder_num_layers": _num_blocks(state_dict, "decoder_blocks"),
        "head_num_layers": _num_blocks(state_dict, "channel_blocks"),
    }
    head_num_attention_heads = _channel_head_heads(state_dict, head_width, head_num_attention_heads)
    if num_attention_heads is None:
        num_attention_heads = _released_heads(
            {
                "encoder_hidden_size": encoder_width,
                "decoder_hidden_size": decoder_width,
                "head_hidden_size": head_width,
                **depths,
            }
        )
    config = {
        "sample_size": sample_size,
        "latent_channels": int(latent_channels),
        "num_classes": int(state_dict["class_emb.weight"].shape[0]),
        "buffer_size": int(buffer_size),
        "encoder_hidden_size": int(encoder_width),
        "encoder_num_layers": depths["encoder_num_layers"],
        "decoder_hidden_size": int(decoder_width),
        "decoder_num_layers": depths["decoder_num_layers"],
        "num_attention_heads": int(num_attention_heads),
        "head_hidden_size": int(head_width),
        "head_num_layers": depths["head_num_layers"],
        "head_num_attention_heads": int(head_num_attention_heads),
        "mlp_ratio": float(mlp_ratio),
        "quantizer_bits": bits,
        "quant_min": float(quant_min),
        "quant_max": float(quant_max),
        "std_range": float(std_range),
    }
    if channel_order is not None:
        config["channel_order"] = list(channel_order)
    for name, width, heads in [
        ("num_attention_heads", encoder_width, num_attention_heads),
        ("num_attention_heads", decoder_width, num_attention_heads),
        ("head_num_attention_heads", head_width, head_num_attention_heads),
    ]:
        if heads < 1 or width % heads != 0:
            raise ValueError(f"`{name}`={heads} must divide the width {width}.")
    return config


def _channel_head_heads(state_dict: dict[str, torch.Tensor], width: int, given: int | None) -> int:
    """The channel head's attention heads: `width / head_dim`, the head_dim read from the per-head q norm."""
    if _HEAD_QK_NORM not in state_dict:
        if given is None:
            raise ValueError(
                f"The checkpoint has no `{_HEAD_QK_NORM}` to read the channel head's attention head count from; pass "
                "it with `--head_num_attention_heads` (`head_num_attention_heads=`)."
            )
        return given
    head_dim = int(state_dict[_HEAD_QK_NORM].shape[0])
    if head_dim < 1 or width % head_dim != 0:
        raise ValueError(
            f"`{_HEAD_QK_NORM}` has size {head_dim}, which does not divide the channel head width {width}."
        )
    inferred = width // head_dim
    if given is not None and given != inferred:
        raise ValueError(
            f"`--head_num_attention_heads` (`head_num_attention_heads`) is {given}, but the checkpoint's per-head q/k "
            f"norms ({_HEAD_QK_NORM}, size {head_dim}) give {width} / {head_dim} = {inferred} heads; drop the flag to "
            "use the checkpoint's."
        )
    return inferred


def _released_heads(sizes: dict[str, int]) -> int:
    """The encoder/decoder attention heads of the released size whose widths and depths are `sizes`."""
    for preset in TOKENBRIDGE_PRESETS.values():
        if all(preset[key] == value for key, value in sizes.items()):
            return preset["num_attention_heads"]
    described = ", ".join(f"{key}={value}" for key, value in sizes.items())
    raise ValueError(
        f"The encoder and decoder attention head count is not stored in the checkpoint (no per-head tensors), and its "
        f"sizes ({described}) are not a released size ({', '.join(sorted(TOKENBRIDGE_PRESETS))}); pass it with "
        "`--num_attention_heads` (`num_attention_heads=`), as the model was trained."
    )


def load_tokenbridge_checkpoint(path: str) -> dict:
    """Read `checkpoint-last.pth` safely (`weights_only=True`, see `checkpoint_loading.load_checkpoint`)."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("model"), dict):
        raise ValueError(
            f"{path} has no state dict under 'model' (the original training script writes 'model' and 'model_ema'); "
            f"its top-level keys are {sorted(checkpoint)}."
        )
    return checkpoint


def select_weights(checkpoint: dict, weights: str = "ema") -> dict[str, torch.Tensor]:
    """
    The state dict to convert: `"model"` (parameters and buffers), with, for `weights="ema"`, every parameter
    replaced by its `"model_ema"` entry (as the original's evaluation does; buffers come from `"model"`).

    Raises:
        `ValueError` for an unknown `weights`, a checkpoint without `"model_ema"`, or an EMA that does not hold
        exactly the model's parameters.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"`weights` must be 'ema' or 'model', got {weights!r}.")
    state_dict = dict(checkpoint["model"])
    if weights == "model":
        return state_dict
    ema = checkpoint.get("model_ema")
    if not isinstance(ema, dict):
        raise ValueError(
            f"The checkpoint holds no 'model_ema' (top-level keys {sorted(checkpoint)}); pass `weights='model'` to "
            "convert the raw weights."
        )
    buffers = {"channel_mask", "reconstruction_values", "boundaries"}
    parameters = set(state_dict) - buffers
    missing, unexpected = sorted(parameters - set(ema)), sorted(set(ema) - parameters)
    if missing or unexpected:
        raise ValueError(f"'model_ema' does not match the parameters: missing {missing}, unexpected {unexpected}.")
    state_dict.update(ema)
    return state_dict


def convert_tokenbridge_state_dict(original_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    Rename an original state dict (see `RENAME_TABLE`), dropping `channel_mask` after checking that it is the causal
    mask. Keys no rule matches pass through unchanged, so that the strict load reports them as unexpected.
    """
    _require_keys(original_state_dict)
    converted = {}
    for original_key, tensor in original_state_dict.items():
        if original_key in DROPPED_KEYS:
            _check_causal_mask(tensor)
            continue
        new_key = original_key
        for pattern, template in RENAME_TABLE:
            if re.match(pattern, original_key):
                new_key = re.sub(pattern, template, original_key)
                break
        converted[new_key] = tensor
    return converted


def _check_causal_mask(channel_mask: torch.Tensor) -> None:
    if channel_mask.is_meta:
        return
    size = channel_mask.shape[-1]
    expected = torch.full((size, size), float("-inf")).triu(1)
    if channel_mask.shape != expected.shape or not torch.equal(channel_mask.float(), expected):
        raise ValueError("`channel_mask` is not the causal mask (0 on and below the diagonal, -inf above).")


def convert_tokenbridge(
    original_state_dict: dict[str, torch.Tensor], **config_overrides
) -> TokenBridgeTransformer2DModel:
    """
    Build a `TokenBridgeTransformer2DModel` from an original state dict, loaded strictly (`ValueError` naming missing
    and unexpected keys or mismatched shapes). `config_overrides` go to [`infer_tokenbridge_config`].
    """
    config = infer_tokenbridge_config(original_state_dict, **config_overrides)
    state_dict = convert_tokenbridge_state_dict(original_state_dict)
    with torch.device("meta"):
        model = TokenBridgeTransformer2DModel(**config)
    return load_state_dict_strictly(model, state_dict).eval()

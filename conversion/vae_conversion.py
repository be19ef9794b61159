"""Convert MAR's KL-16 VAE (`kl16.ckpt`, the LDM `AutoencoderKL` layout) to a diffusers `AutoencoderKL`.

The checkpoint holds the state dict under `"model"`; the original loads it with `strict=False` (a file with other
names would leave the VAE random). Here every key must map (`RENAME_TABLE`, docs/tokenbridge.md#vae-key-mapping) and
the load is strict. Attention q/k/v/proj_out weights are 1x1 convolutions `(c, c, 1, 1)` and become linear `(c, c)`.
The sizes are read from the shapes; `scaling_factor` (0.2325, written out in the original's code and stored nowhere)
goes into the config.

Import this module as `conversion.vae_conversion`.
"""

import re

import torch
from diffusers import AutoencoderKL

from conversion.checkpoint_loading import load_checkpoint, load_state_dict_strictly


KL16_SCALING_FACTOR = 0.2325

# Sub-module renames that hold everywhere (applied after the block-level rules).
_LEAF_RENAMES = [
    (r"\.nin_shortcut\.", ".conv_shortcut."),
    (r"\.norm_out\.", ".conv_norm_out."),
]
# Inside attention blocks.
_ATTENTION_RENAMES = [
    (r"\.norm\.(weight|bias)$", r".group_norm.\1"),
    (r"\.q\.(weight|bias)$", r".to_q.\1"),
    (r"\.k\.(weight|bias)$", r".to_k.\1"),
    (r"\.v\.(weight|bias)$", r".to_v.\1"),
    (r"\.proj_out\.(weight|bias)$", r".to_out.0.\1"),
]


def _rename_key(key: str, num_levels: int) -> str:
    """One original key -> its diffusers name (the table of docs/tokenbridge.md#vae-key-mapping)."""
    rules = [
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", lambda m: f"encoder.down_blocks.{m[1]}.resnets.{m[2]}."),
        (r"^encoder\.down\.(\d+)\.attn\.(\d+)\.", lambda m: f"encoder.down_blocks.{m[1]}.attentions.{m[2]}."),
        (r"^encoder\.down\.(\d+)\.downsample\.conv\.", lambda m: f"encoder.down_blocks.{m[1]}.downsamplers.0.conv."),
        (
            r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
            lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}.",
        ),
        (
            r"^decoder\.up\.(\d+)\.upsample\.conv\.",
            lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv.",
        ),
        (r"^(encoder|decoder)\.mid\.block_1\.", lambda m: f"{m[1]}.mid_block.resnets.0."),
        (r"^(encoder|decoder)\.mid\.block_2\.", lambda m: f"{m[1]}.mid_block.resnets.1."),
        (r"^(encoder|decoder)\.mid\.attn_1\.", lambda m: f"{m[1]}.mid_block.attentions.0."),
    ]
    new_key = key
    for pattern, replacement in rules:
        if re.match(pattern, key):
            new_key = re.sub(pattern, replacement, key)
            break
    for pattern, replacement in _LEAF_RENAMES:
        new_key = re.sub(pattern, replacement, new_key)
    if ".attentions." in new_key:
        for pattern, replacement in _ATTENTION_RENAMES:
            new_key = re.sub(pattern, replacement, new_key)
    return new_key


def infer_vae_config(state_dict: dict[str, torch.Tensor], sample_size: int = 256) -> dict:
    """The diffusers `AutoencoderKL` config of an original LDM/MAR KL state dict, from its shapes."""
    for key in ("encoder.conv_in.weight", "decoder.conv_out.weight", "post_quant_conv.weight"):
        if key not in state_dict:
            raise ValueError(f"Not an original KL VAE state dict: missing {key!r}.")
    levels = sorted({int(m[1]) for key in state_dict if (m := re.match(r"^encoder\.down\.(\d+)\.", key))})
    if levels != list(range(len(levels))) or not levels:
        raise ValueError(f"Encoder levels must be 0..n-1, got {levels}.")
    block_out_channels = [int(state_dict[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    layers_per_block = len(
        {int(m[1]) for key in state_dict if (m := re.match(r"^encoder\.down\.0\.block\.(\d+)\.", key))}
    )
    if any(re.match(r"^decoder\.up\.\d+\.attn\.", key) for key in state_dict):
        raise ValueError("Attention in the decoder's up levels has no diffusers `UpDecoderBlock2D` equivalent.")
    down_block_types = [
        "AttnDownEncoderBlock2D" if f"encoder.down.{i}.attn.0.q.weight" in state_dict else "DownEncoderBlock2D"
        for i in levels
    ]
    return {
        "in_channels": int(state_dict["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state_dict["decoder.conv_out.weight"].shape[0]),
        "latent_channels": int(state_dict["post_quant_conv.weight"].shape[0]),
        "sample_size": int(sample_size),
        "down_block_types": down_block_types,
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": block_out_channels,
        "layers_per_block": layers_per_block,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in state_dict,
        "use_quant_conv": "quant_conv.weight" in state_dict,
        "use_post_quant_conv": True,
        "scaling_factor": KL16_SCALING_FACTOR,
    }


def convert_vae_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename to diffusers keys and squeeze the attention 1x1-conv weights to linear ones."""
    num_levels = len({int(m[1]) for key in state_dict if (m := re.match(r"^encoder\.down\.(\d+)\.", key))})
    converted = {}
    for key, tensor in state_dict.items():
        new_key = _rename_key(key, num_levels)
        if ".attentions." in new_key and new_key.endswith(".weight") and tensor.ndim == 4:
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])  # (c, c, 1, 1) -> (c, c)
        converted[new_key] = tensor
    return converted


def convert_vae(state_dict: dict[str, torch.Tensor], sample_size: int = 256) -> AutoencoderKL:
    """A diffusers `AutoencoderKL` from an original KL state dict, loaded strictly (no silent random weights)."""
    config = infer_vae_config(state_dict, sample_size=sample_size)
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    return load_state_dict_strictly(vae, convert_vae_state_dict(state_dict)).eval()


def load_vae_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The state dict of `kl16.ckpt` (under `"model"`, or a plain state dict), read with `weights_only=True`."""
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    if checkpoint and all(torch.is_tensor(value) for value in checkpoint.values()):
        return checkpoint
    raise ValueError(f"{path} holds no VAE state dict under 'model'; its top-level keys are {sorted(checkpoint)}.")

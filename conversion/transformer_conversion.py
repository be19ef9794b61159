"""Convert the original TokenSet FSDD generator (DiT-1D) weights to `TokenSetTransformer1DModel`.

The released `fsdd_{small,base}_128_4096.pth` are dicts with the EMA weights under `"ema"` (training checkpoints
also hold `"model"`, `"opt"` and `"args"`, an `argparse.Namespace`). They are read with `weights_only=True`; the only
class allowed to be unpickled is `argparse.Namespace`.

Renames are one explicit table (`RENAME_TABLE`); the fused attention `qkv` projection stays fused (`attn.to_qkv`).
One change beyond renaming: the original count embedding `x_embedder.embedding_table` has `codebook_size + 1` rows
although counts only take the values `0..num_tokens`; rows above `num_tokens` are never read, so the converter
keeps the first `num_tokens + 1` rows (`count_embedder.weight`).
"""

import re

import torch

from conversion.checkpoint_loading import load_checkpoint, load_state_dict_strictly
from tokenset_diffusers.tokenset.transformer_tokenset import TokenSetTransformer1DModel


# (original key regex, new key template). Block indices are carried over by `\1`.
RENAME_TABLE: list[tuple[str, str]] = [
    (r"^pos_embed$", "pos_embed"),
    (r"^x_embedder\.embedding_table\.weight$", "count_embedder.weight"),
    (r"^t_embedder\.mlp\.0\.(weight|bias)$", r"time_embedder.linear_1.\1"),
    (r"^t_embedder\.mlp\.2\.(weight|bias)$", r"time_embedder.linear_2.\1"),
    (r"^y_embedder\.embedding_table\.weight$", "class_embedder.weight"),
    (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"transformer_blocks.\1.attn.to_qkv.\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$", r"transformer_blocks.\1.attn.to_out.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$", r"transformer_blocks.\1.ff.fc1.\2"),
    (r"^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$", r"transformer_blocks.\1.ff.fc2.\2"),
    (r"^blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)$", r"transformer_blocks.\1.adaLN_modulation.\2"),
    (r"^final_layer\.adaLN_modulation\.1\.(weight|bias)$", r"adaLN_modulation_out.\1"),
    (r"^final_layer\.linear\.(weight|bias)$", r"proj_out.\1"),
]

# Released widths -> head counts (S: 384 / 6 heads, B: 768 / 12 heads); other widths default to 64-wide heads.
DEFAULT_HEADS_BY_WIDTH = {384: 6, 768: 12}

_REQUIRED_KEYS = [
    "pos_embed",
    "x_embedder.embedding_table.weight",
    "y_embedder.embedding_table.weight",
    "final_layer.linear.weight",
    "blocks.0.mlp.fc1.weight",
]


def _require_keys(state_dict: dict[str, torch.Tensor]) -> None:
    missing = [key for key in _REQUIRED_KEYS if key not in state_dict]
    if missing:
        raise ValueError(f"Not an original DiT-1D state dict: missing keys {missing}.")


def infer_transformer_config(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None, num_classes: int | None = None
) -> dict:
    """
    Read the `TokenSetTransformer1DModel` config from the shapes of an original DiT-1D state dict.

    Args:
        state_dict (`dict[str, torch.Tensor]`): original keys (meta tensors are fine).
        num_attention_heads (`int`, *optional*): head count; not stored in the weights. Defaults to 6 for width 384,
            12 for width 768, `width // 64` otherwise.
        num_classes (`int`, *optional*): number of classes without the null class, checked against the label table
            (which must hold `num_classes + 1` rows, the last for the null class). Inferred when omitted.

    Returns:
        `dict`: keyword arguments for `TokenSetTransformer1DModel`.
    """
    _require_keys(state_dict)
    _, codebook_size, width = state_dict["pos_embed"].shape
    num_tokens = state_dict["final_layer.linear.weight"].shape[0] - 1
    label_rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
    block_ids = {int(match.group(1)) for key in state_dict if (match := re.match(r"^blocks\.(\d+)\.", key))}
    num_layers = len(block_ids)
    if block_ids != set(range(num_layers)):
        raise ValueError(f"Block indices must be 0..{num_layers - 1}, got {sorted(block_ids)}.")
    mlp_ratio = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width

    if num_classes is None:
        num_classes = label_rows - 1
    elif label_rows != num_classes + 1:
        raise ValueError(
            f"`num_classes`={num_classes} needs a label table of {num_classes + 1} rows (the last is the null class), "
            f"the checkpoint has {label_rows}; a table without a null row comes from training without label dropout "
            "and cannot do classifier-free guidance."
        )
    if num_attention_heads is None:
        num_attention_heads = DEFAULT_HEADS_BY_WIDTH.get(width, width // 64)
    if num_attention_heads < 1 or width % num_attention_heads != 0:
        raise ValueError(f"`num_attention_heads`={num_attention_heads} must divide the width {width}.")
    count_rows = state_dict["x_embedder.embedding_table.weight"].shape[0]
    if count_rows < num_tokens + 1:
        raise ValueError(f"The count embedding has {count_rows} rows, fewer than num_tokens + 1 = {num_tokens + 1}.")

    return {
        "codebook_size": int(codebook_size),
        "num_tokens": int(num_tokens),
        "num_classes": int(num_classes),
        "num_layers": num_layers,
        "num_attention_heads": int(num_attention_heads),
        "attention_head_dim": int(width) // int(num_attention_heads),
        "mlp_ratio": float(mlp_ratio),
    }


def load_original_generator_checkpoint(path: str, key: str = "ema") -> dict[str, torch.Tensor]:
    """
    Load an original generator checkpoint safely (`weights_only=True`, only `argparse.Namespace` allow-listed).

    Args:
        path (`str`): a `.pth` file holding a plain state dict or a dict with `"ema"` / `"model"` state dicts.
        key (`str`, defaults to `"ema"`): which state dict to take from a full checkpoint.

    Returns:
        `dict[str, torch.Tensor]`: the original state dict.
    """
    checkpoint = load_checkpoint(path)
    if checkpoint and all(torch.is_tensor(value) for value in checkpoint.values()):
        return checkpoint
    if key in checkpoint and isinstance(checkpoint[key], dict):
        return checkpoint[key]
    state_dict_keys = [name for name in ("ema", "model") if isinstance(checkpoint.get(name), dict)]
    raise ValueError(
        f"{path} is neither a plain state dict nor holds `key`={key!r}; its top-level keys are {sorted(checkpoint)}"
        + (f" (state dicts under {state_dict_keys})." if state_dict_keys else ".")
    )


def convert_transformer_state_dict(original_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    Rename an original DiT-1D state dict to `TokenSetTransformer1DModel` names (see `RENAME_TABLE`), keeping the first
    `num_tokens + 1` rows of the count embedding. Keys that no rule matches are passed through unchanged, so that
    `convert_transformer` reports them as unexpected.
    """
    _require_keys(original_state_dict)
    num_tokens = original_state_dict["final_layer.linear.weight"].shape[0] - 1
    converted = {}
    for original_key, tensor in original_state_dict.items():
        new_key = original_key
        for pattern, template in RENAME_TABLE:
            if re.match(pattern, original_key):
                new_key = re.sub(pattern, template, original_key)
                break
        if new_key == "count_embedder.weight":
            tensor = tensor[: num_tokens + 1].clone()  # rows > num_tokens are never read
        converted[new_key] = tensor
    return converted


def convert_transformer(
    original_state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None
) -> TokenSetTransformer1DModel:
    """
    Build a `TokenSetTransformer1DModel` from an original DiT-1D state dict, loaded with `strict=True`.

    Args:
        original_state_dict (`dict[str, torch.Tensor]`): e.g. from `load_original_generator_checkpoint`.
        num_attention_heads (`int`, *optional*): see `infer_transformer_config`.

    Raises:
        `ValueError`: listing missing and unexpected keys (or mismatched shapes) when the converted state dict does
        not match the model.
    """
    config = infer_transformer_config(original_state_dict, num_attention_heads=num_attention_heads)
    state_dict = convert_transformer_state_dict(original_state_dict)
    with torch.device("meta"):
        model = TokenSetTransformer1DModel(**config)
    return load_state_dict_strictly(model, state_dict).eval()

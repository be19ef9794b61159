"""Safe checkpoint reading and strict state-dict loading, shared by the TokenSet and TokenBridge converters.

Checkpoints are pickles; `torch.load(..., weights_only=True)` refuses every class that is not allow-listed, so a file
can carry tensors, containers and numbers, plus the few classes named here, and nothing that runs code on load.
"""

import argparse

import torch
from torch import nn


# Classes the released checkpoints hold besides tensors and plain containers: the training arguments.
ALLOWED_CHECKPOINT_GLOBALS = [argparse.Namespace]


def load_checkpoint(path: str, allowed_globals: list | None = None) -> dict:
    """
    Read a checkpoint with `torch.load(weights_only=True)` onto the CPU, allowing only `allowed_globals`
    (default `ALLOWED_CHECKPOINT_GLOBALS`) to be unpickled.

    Raises:
        `ValueError` if the file does not hold a dict.
    """
    allowed = ALLOWED_CHECKPOINT_GLOBALS if allowed_globals is None else allowed_globals
    with torch.serialization.safe_globals(list(allowed)):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, expected a dict.")
    return checkpoint


def load_state_dict_strictly(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """
    Load `state_dict` into `model` (which may live on the meta device) with `strict=True, assign=True`, after
    checking keys and shapes so that a mismatch names every missing key, unexpected key and differing shape.

    Raises:
        `ValueError` listing missing and unexpected keys, or mismatched shapes (checkpoint vs model).
    """
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"Converted state dict does not match the model: missing {missing}, unexpected {unexpected}.")
    mismatched = [
        f"{key}: {tuple(state_dict[key].shape)} vs {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if state_dict[key].shape != tensor.shape
    ]
    if mismatched:
        raise ValueError(f"Converted tensors do not match the model's shapes (checkpoint vs model): {mismatched}.")
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model

"""Argument and value checks shared by both systems."""

import numbers

import torch


def checks_values(tensor: torch.Tensor) -> bool:
    """Whether to validate the values of `tensor`: on the CPU only, where reading them costs no host-device
    synchronisation, so nothing in sampling or training waits for an accelerator. Shapes and dtypes are checked
    everywhere."""
    return tensor.device.type == "cpu"


def _check_integer_argument(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")


def _check_value_range(name: str, tensor: torch.Tensor, low: float, high: float, allowed: str) -> None:
    """On the CPU ([`checks_values`]): every value of `tensor` must be finite and in [low, high] (`allowed` says so
    in words)."""
    if not checks_values(tensor) or tensor.numel() == 0:
        return
    values = tensor.float() if tensor.is_floating_point() else tensor.double()
    if not (torch.isfinite(values).all() and values.min() >= low and values.max() <= high):
        finite = values[torch.isfinite(values)]
        found = f"[{finite.min().item()}, {finite.max().item()}]" if finite.numel() else "no finite values"
        non_finite = int((~torch.isfinite(values)).sum())
        raise ValueError(
            f"`{name}` must hold {allowed}, got values in {found}"
            + (f" and {non_finite} NaN/inf." if non_finite else ".")
        )

"""Argument and value checks shared by both systems.

The public helpers check one argument each and raise `ValueError` with a message that names the argument, shows the
value it got (type and repr) and says what is allowed: [`check_integer`], [`check_number`], [`check_choice`],
[`check_generator`]. Numpy integers and floats count as numbers; `bool` never does.
"""

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch


def short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def described(value: Any) -> str:
    """`"<type> <repr>"` of `value` (e.g. `"float 2.0"`, `"str '2'"`), for the "got ..." part of a message."""
    return f"{type(value).__name__} {short_repr(value)}"


def _allowed_range(low, high, low_open: bool = False, high_open: bool = False, high_name: str = "") -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    high_text = f"{high_name}={high}" if high_name else f"{high}"
    if low is None:
        return f" {'<' if high_open else '<='} {high_text}"
    return f" in {'(' if low_open else '['}{low}, {high_text}{')' if high_open else ']'}"


def check_integer(name: str, value: Any, low: int | None = None, high: int | None = None, high_name: str = "") -> int:
    """`value` as an `int`; raises `ValueError` unless it is an integer (Python or numpy, not `bool`) in
    `[low, high]` (either bound may be `None`).

    Args:
        name (`str`): the argument's name, shown in the message.
        value: the value to check.
        low, high (`int`, *optional*): inclusive bounds.
        high_name (`str`, *optional*): what `high` is, shown as `[low, high_name=high]` (e.g. `"num_tokens"`).
    """
    is_integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_integer or (low is not None and value < low) or (high is not None and value > high):
        allowed = _allowed_range(low, high, high_name=high_name)
        raise ValueError(f"`{name}` must be an integer{allowed}, got {described(value)}.")
    return int(value)


def check_positive_integers(**values: Any) -> None:
    """[`check_integer`] with `low=1` on each keyword argument (the argument's name is the keyword), e.g. the sizes of
    a model config."""
    for name, value in values.items():
        check_integer(name, value, low=1)


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a `float`; raises `ValueError` unless it is a finite real number (Python or numpy, not `bool`) in
    `[low, high]` (`low_open` / `high_open` exclude the bound; either bound may be `None`)."""
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if (
        not is_real
        or not math.isfinite(value)
        or (low is not None and (value < low or (low_open and value == low)))
        or (high is not None and (value > high or (high_open and value == high)))
    ):
        allowed = _allowed_range(low, high, low_open, high_open)
        raise ValueError(f"`{name}` must be a finite number{allowed}, got {described(value)}.")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence) -> Any:
    """`value`, if it is one of `choices`; else `ValueError` listing them."""
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {described(value)}.")
    return value


def check_generator(generator: Any, num_images: int | None = None) -> None:
    """`generator` must be `None`, a `torch.Generator`, or a list or tuple of them, one per image (`num_images` of
    them, when given)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):
        if num_images is not None and len(generator) != num_images:
            raise ValueError(f"Got {len(generator)} generators for {num_images} images; pass one per image.")
        return
    raise ValueError(
        "`generator` must be a torch.Generator or a list of them (one per image), e.g. "
        f"`torch.Generator().manual_seed(0)`, got {described(generator)}."
    )


def checks_values(tensor: torch.Tensor) -> bool:
    """Whether to validate the values of `tensor`: on the CPU only, where reading them costs no host-device
    synchronisation, so nothing in sampling or training waits for an accelerator. Shapes and dtypes are checked
    everywhere."""
    return tensor.device.type == "cpu"


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


__all__ = ["check_choice", "check_generator", "check_integer", "check_number", "checks_values", "short_repr"]

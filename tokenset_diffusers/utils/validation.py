"""Argument and value checks shared by both systems.

The public helpers check one argument each and raise `ValueError` with a message that names the argument, shows the
value it got (type and repr) and says what is allowed: [`check_integer`], [`check_number`], [`check_choice`],
[`check_generator`]. Numpy integers and floats count as numbers; `bool` never does.

Size limits live here too, in one place: [`LIMITS`] holds the largest request or file size each system accepts, and
[`check_limit`] checks an argument against one of them before anything is allocated, so that a small request (a
million images, a 2 KB PNG of 1 x 1,000,000 px) fails with a `ValueError` naming the argument and the limit instead of
exhausting memory or hanging. The limits are generous for real use; raise one with the environment variable
`TOKENSET_DIFFUSERS_MAX_<NAME>` (read at import, e.g. `TOKENSET_DIFFUSERS_MAX_NUM_IMAGES=1000000`) or by setting
`LIMITS["<name>"]` at run time.
"""

import math
import numbers
import os
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


LIMIT_DEFAULTS = {
    # Sampling steps of a scheduler (`num_inference_steps`); the released models use 25 (TokenSet) and 64 (TokenBridge).
    "inference_steps": 10_000,
    # Images of one pipeline call (`num_images`, `len(class_labels) * num_images_per_class`).
    "num_images": 100_000,
    # Points of a set interpolation path (`num_points`, `len(weights)`).
    "interpolation_points": 10_000,
    # `bits` of the TokenBridge quantizer: `2**bits` levels per channel, each a logit of every masked position (the
    # released model uses 6; 12 gives 4096 levels).
    "quantizer_bits": 12,
    # Pixels of an input image, and of the image the centre crop scales it to (8192 x 8192).
    "image_pixels": 8192 * 8192,
    # Parameters of a model built from a config (before its weights are loaded): 10 billion (40 GB in float32).
    "model_parameters": 10**10,
}


def _limits_from_environment() -> dict[str, int]:
    limits = dict(LIMIT_DEFAULTS)
    for key in limits:
        variable = f"TOKENSET_DIFFUSERS_MAX_{key.upper()}"
        text = os.environ.get(variable)
        if text is not None:
            try:
                limits[key] = int(text)
            except ValueError:
                raise ValueError(f"`{variable}` must be an integer, got {text!r}.") from None
            if limits[key] < 1:
                raise ValueError(f"`{variable}` must be a positive integer, got {text!r}.")
    return limits


LIMITS: dict[str, int] = _limits_from_environment()
"""The size limits in force: [`LIMIT_DEFAULTS`], overridden by `TOKENSET_DIFFUSERS_MAX_<NAME>` environment variables
(read at import). Set an entry to change a limit at run time."""


def check_limit(name: str, value: int, limit: str, what: str = "") -> int:
    """Raises `ValueError` when `value` (an `int` already checked) exceeds `LIMITS[limit]`, naming the argument, the
    limit and how to raise it; returns `value`.

    Args:
        name (`str`): the argument, shown in the message (e.g. `"num_images"`).
        value (`int`): the size asked for.
        limit (`str`): a key of [`LIMITS`] (e.g. `"num_images"`).
        what (`str`, *optional*): what `value` counts, when it is not the argument itself (e.g. `"pixels"`).
    """
    maximum = LIMITS[limit]
    if value > maximum:
        counted = f" ({value} {what})" if what else f"={value}"
        raise ValueError(
            f"`{name}`{counted} exceeds the limit {limit}={maximum} (a guard against exhausting memory or hanging); "
            f"raise it with the environment variable TOKENSET_DIFFUSERS_MAX_{limit.upper()} or "
            f'`tokenset_diffusers.utils.validation.LIMITS["{limit}"]` if you need more.'
        )
    return value


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


__all__ = [
    "LIMITS",
    "LIMIT_DEFAULTS",
    "check_choice",
    "check_generator",
    "check_integer",
    "check_limit",
    "check_number",
    "checks_values",
    "short_repr",
]

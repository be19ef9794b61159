"""Random draws shared by both systems' samplers: uniform numbers from one generator or one per row, top-p / top-k
filtering and categorical draws by inverse CDF."""

from typing import List, Optional, Union

import torch

from .validation import check_integer, check_number


GeneratorType = Optional[Union[torch.Generator, List[torch.Generator]]]


def uniform_tensor(
    shape: tuple,
    generator: GeneratorType = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draws ``U[0, 1)`` numbers of ``shape`` with one generator or a list of generators (one per row of dim 0).

    With a list, row ``b`` is drawn from ``generator[b]``, so a batch of two equals two batches of one that each get
    their own generator. Numbers are drawn on the generator's device and moved to ``device``.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(
                f"`generator` is a list of length {len(generator)}, but the batch size is {shape[0]}; pass one "
                "generator per batch row or a single generator."
            )
        rows = [torch.rand((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(rows).to(device)
    generator_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=generator_device, dtype=dtype).to(device)


def filter_probs(probs: torch.Tensor, top_p: Optional[float] = None, top_k: Optional[int] = None) -> torch.Tensor:
    """Top-p / top-k filtering of categorical distributions over the last dimension, renormalised.

    Top-p keeps the sorted probabilities while the cumulative sum *before* them is at most `top_p`, so the most
    likely value is always kept and so is the first one that crosses `top_p` (the original's rule). Top-k keeps the
    `top_k` largest. With both, top-k is applied first.

    Args:
        probs (`torch.Tensor` of shape `(..., num_values)`): probabilities.
        top_p (`float`, *optional*): in (0, 1].
        top_k (`int`, *optional*): in [1, num_values].

    Returns:
        `torch.Tensor` of the same shape, zero outside the kept set, rows summing to 1.
    """
    _check_filter(top_p, top_k, probs.shape[-1])
    keep = torch.ones_like(probs, dtype=torch.bool)
    if top_k is not None:
        kept_indices = probs.topk(top_k, dim=-1).indices  # (..., k)
        keep = torch.zeros_like(keep).scatter_(-1, kept_indices, True)
    if top_p is not None:
        keep = keep & _top_p_mask(torch.where(keep, probs, torch.zeros_like(probs)), top_p)
    filtered = probs.masked_fill(~keep, 0.0)
    return filtered.div_(filtered.sum(-1, keepdim=True))


def _check_filter(top_p: Optional[float], top_k: Optional[int], num_values: int) -> None:
    if top_p is not None:
        check_number("top_p", top_p, low=0.0, high=1.0, low_open=True)
    if top_k is not None:
        check_integer("top_k", top_k, low=1, high=num_values, high_name="num_values")


def _top_p_mask(probs: torch.Tensor, top_p: float, window: int = 16) -> torch.BoolTensor:
    """Which values top-p keeps. On CPU, looks at the `window` largest values first (a full sort is slow there) and
    sorts the whole distribution only for the rows that keep their entire window; on an accelerator, sorts every row
    (fast there, and no host synchronisation)."""
    num_values = probs.shape[-1]
    if probs.device.type != "cpu":
        values, indices = probs.sort(dim=-1, descending=True)  # (..., V)
        keep_sorted = values.cumsum(-1) - values <= top_p
        return torch.zeros_like(keep_sorted).scatter_(-1, indices, keep_sorted)
    values, indices = probs.topk(min(window, num_values), dim=-1)  # (..., W), descending
    keep_sorted = values.cumsum(-1) - values <= top_p  # mass before each value
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, indices, keep_sorted)  # (..., V)
    if values.shape[-1] < num_values:
        wide = keep_sorted[..., -1]  # (...,): rows that may keep more than the window
        if wide.any():
            values, indices = probs[wide].sort(dim=-1, descending=True)  # (N, V)
            keep_sorted = values.cumsum(-1) - values <= top_p
            keep[wide] = torch.zeros_like(keep_sorted).scatter_(-1, indices, keep_sorted)
    return keep


def sample_categorical(probs: torch.Tensor, generator: GeneratorType = None) -> torch.LongTensor:
    """Draws one value per row of `probs` (shape `(batch_size, ..., num_values)`) by inverse CDF.

    One uniform number per row, so a list of generators gives each batch row its own stream. Values of
    probability zero are never drawn. Returns a `torch.LongTensor` of shape `(batch_size, ...)`.
    """
    uniform = 1.0 - uniform_tensor(probs.shape[:-1], generator=generator, device=probs.device)  # (B, ...) in (0, 1]
    return inverse_cdf(probs, uniform)


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor, right: bool = False) -> torch.LongTensor:
    """The categorical draw of `probs` (shape `(..., V)`, unnormalised) for the uniform numbers `uniform` (shape
    `(...)`): the first value at which the cumulative sum reaches `uniform` times the total (scaling by the total
    means float rounding of the cumulative sum never leaves the threshold above it).

    The two systems' samplers draw their numbers differently, and each tie rule is the one its draws were made with:

    - `right=False` (TokenSet's samplers, `uniform` in (0, 1]): the first value with `cdf >= threshold`.
    - `right=True` (TokenBridge's channel head, `uniform` in [0, 1)): the first value with `cdf > threshold`.

    Either way a value of probability zero is never drawn. Returns a `torch.LongTensor` of shape `(...)`, clamped to
    `V - 1`.
    """
    cdf = probs.float().cumsum(-1)  # (..., V)
    threshold = uniform[..., None] * cdf[..., -1:]  # (..., 1)
    if right:
        index = torch.searchsorted(cdf, threshold, right=True)[..., 0]  # (...)
    else:
        index = (cdf < threshold).sum(-1)  # (...)
    return index.clamp(max=probs.shape[-1] - 1)


def sample_filtered(
    probs: torch.Tensor,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    generator: GeneratorType = None,
    window: int = 16,
) -> torch.LongTensor:
    """`sample_categorical(filter_probs(probs, top_p, top_k), generator)` in one pass over `probs`: the same uniform
    numbers, the same filtered distribution and, up to float32 rounding of the normaliser at a boundary, the same
    draws (the kept values are visited in the order of their indices, as the full inverse CDF visits them).

    Only the largest values are read: the `top_k` largest; for top-p alone, the largest value (where it holds more
    than `top_p`, as at most positions of a trained model, it is the draw), then the `window` largest, which hold
    the top-p mass at nearly every other position; positions that keep their whole window are filtered and drawn in
    full (on an accelerator, where finding those positions would synchronise, every position is, by sorting: fast
    there).

    Args:
        probs (`torch.Tensor` of shape `(batch_size, ..., num_values)`): probabilities.
        top_p (`float`, *optional*), top_k (`int`, *optional*): as in [`filter_probs`]; at least one of them.
        generator (`torch.Generator` or a list of them, one per batch row, *optional*).
        window (`int`, defaults to 16): how many of the largest values top-p alone looks at first.

    Returns:
        `torch.LongTensor` of shape `(batch_size, ...)`.
    """
    if top_p is None and top_k is None:
        raise ValueError("`sample_filtered` needs `top_p` or `top_k`, got neither; use `sample_categorical`.")
    _check_filter(top_p, top_k, probs.shape[-1])
    if _filters_in_full(probs, top_p, top_k):  # the uniform numbers after the filtered tensor: a lower peak
        return sample_categorical(filter_probs(probs, top_p=top_p), generator=generator)
    uniform = 1.0 - uniform_tensor(probs.shape[:-1], generator=generator, device=probs.device)  # (B, ...) in (0, 1]
    return _draw_filtered(probs, uniform, top_p, top_k, window)


def _filters_in_full(probs: torch.Tensor, top_p: Optional[float], top_k: Optional[int]) -> bool:
    """Whether [`sample_filtered`] filters the whole of `probs` first: top-p alone, on an accelerator (where finding
    the positions that need more than the largest values would synchronise) or with nothing to filter (top_p 1)."""
    return top_k is None and (top_p == 1.0 or probs.device.type != "cpu")


def _draw_filtered(
    probs: torch.Tensor, uniform: torch.Tensor, top_p: Optional[float], top_k: Optional[int], window: int = 16
) -> torch.LongTensor:
    """[`sample_filtered`]'s draw with its uniform numbers `uniform` (shape `probs.shape[:-1]`, in (0, 1])."""
    num_values = probs.shape[-1]
    if _filters_in_full(probs, top_p, top_k):
        return inverse_cdf(filter_probs(probs, top_p=top_p), uniform)
    if top_k is not None:
        return _draw_from_largest(probs, uniform, top_p, top_k, mark_wide=False)
    # Where the largest value alone holds more than top_p, top-p keeps only it: the draw is that value.
    largest, draws = probs.max(dim=-1)  # (B, ...)
    several = largest <= top_p  # (B, ...): positions that keep more than one value
    if several.any():  # CPU only: no synchronisation
        draws[several] = _draw_from_largest(probs[several], uniform[several], top_p, min(window, num_values))
        wide = several.clone()
        wide[several] = draws[several] < 0  # positions whose top-p set may reach beyond the window
        if window < num_values and wide.any():
            draws[wide] = inverse_cdf(filter_probs(probs[wide], top_p=top_p), uniform[wide])
    return draws


def _draw_from_largest(
    probs: torch.Tensor, uniform: torch.Tensor, top_p: Optional[float], width: int, mark_wide: bool = True
) -> torch.LongTensor:
    """The inverse-CDF draw among the `width` largest values of `probs` (shape `(..., V)`), top-p filtered; with
    `mark_wide`, -1 where top-p keeps all of them (its set may reach beyond them) unless `width` is V."""
    values, indices = probs.float().topk(width, dim=-1)  # (..., W), descending
    keep = torch.ones_like(values, dtype=torch.bool)
    if top_p is not None:
        keep = values.cumsum(-1) - values <= top_p  # the mass before each value
    # The kept values in the order of their indices (the dropped ones last, with weight 0).
    order = torch.where(keep, indices, probs.shape[-1]).argsort(dim=-1)  # (..., W)
    kept = values.masked_fill(~keep, 0.0).gather(-1, order)  # (..., W)
    draws = indices.gather(-1, order).gather(-1, inverse_cdf(kept, uniform)[..., None])[..., 0]  # (...)
    if mark_wide and width < probs.shape[-1]:
        draws = draws.masked_fill(keep[..., -1], -1)
    return draws

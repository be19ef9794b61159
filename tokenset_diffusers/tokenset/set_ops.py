"""Operations on token sets and count vectors.

Glossary used throughout the package:

- *token set*: the multiset of ``num_tokens`` (M) token ids that the set tokenizer gives an image; its order carries
  no information.
- *count vector*: ``counts`` of shape ``(batch_size, codebook_size)``, ``counts[b, j]`` = how many of row ``b``'s
  tokens equal ``j``; every count vector sums to M.
- ``codebook_size`` (C): the number of codebook entries, i.e. the length of a count vector.

All functions are pure, vectorised over the batch and positions, and take a ``generator`` wherever they draw random
numbers (a ``torch.Generator`` or a list of them, one per batch row, as in diffusers).
"""

from typing import Literal, Optional, Union

import torch

from ..utils.sampling import GeneratorType, _draw_filtered, uniform_tensor
from ..utils.validation import _check_value_range, check_choice, check_integer, checks_values


def _check_counts_2d(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"`{name}` must be a tensor of shape (batch_size, codebook_size), got {shape}.")


def tokens_to_counts(token_ids: torch.LongTensor, codebook_size: int) -> torch.LongTensor:
    """The dual transformation: token sets to count vectors.

    Args:
        token_ids (`torch.LongTensor` of shape `(batch_size, num_tokens)`): token ids in `[0, codebook_size)`.
        codebook_size (`int`): C, the length of the count vectors.

    Returns:
        `torch.LongTensor` of shape `(batch_size, codebook_size)`: how often each id occurs in each row; every row
        sums to `num_tokens`.
    """
    if not isinstance(token_ids, torch.Tensor) or token_ids.ndim != 2:
        shape = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
        raise ValueError(f"`token_ids` must be a tensor of shape (batch_size, num_tokens), got {shape}.")
    if token_ids.is_floating_point() or token_ids.is_complex():
        raise ValueError(f"`token_ids` must be an integer tensor, got dtype {token_ids.dtype}.")
    # On an accelerator (see `checks_values`) an out-of-range id fails in `scatter_add_` instead.
    if (
        checks_values(token_ids)
        and token_ids.numel() > 0
        and (token_ids.min() < 0 or token_ids.max() >= codebook_size)
    ):
        raise ValueError(
            f"`token_ids` must lie in [0, {codebook_size}), got values in "
            f"[{int(token_ids.min())}, {int(token_ids.max())}]."
        )
    token_ids = token_ids.long()
    counts = torch.zeros(token_ids.shape[0], codebook_size, dtype=torch.long, device=token_ids.device)
    return counts.scatter_add_(1, token_ids, torch.ones_like(token_ids))  # (B, C)


def counts_to_tokens(counts: torch.Tensor, num_tokens: int) -> torch.LongTensor:
    """The inverse dual transformation, with the original's rounding, fill and truncation rule.

    Float counts are zeroed below 1 and rounded (half to even); if the result sums to less than `num_tokens`, the
    missing tokens go, one each, to the positions with the largest sub-1 leftovers (ties broken by the order of
    `torch.argsort(descending=True)`, as in the original); the sorted token list is then cut to `num_tokens` entries,
    so a row that sums to more than M loses its largest token ids.

    Args:
        counts (`torch.Tensor` of shape `(batch_size, codebook_size)` or `(batch_size, codebook_size, 1)`):
            integer or float counts.
        num_tokens (`int`): M, the number of tokens per set.

    Returns:
        `torch.LongTensor` of shape `(batch_size, num_tokens)`: sorted token ids.
    """
    if isinstance(counts, torch.Tensor) and counts.ndim == 3 and counts.shape[-1] == 1:
        counts = counts[..., 0]
    _check_counts_2d("counts", counts)
    check_integer("num_tokens", num_tokens, low=1)
    if counts.is_complex():
        raise ValueError(f"`counts` must be a real tensor, got dtype {counts.dtype}.")
    if counts.is_floating_point() and torch.isnan(counts).any():
        raise ValueError("`counts` contains NaN.")
    _check_value_range("counts", counts, -float("inf"), num_tokens, f"finite counts at most num_tokens={num_tokens}")
    remains = counts.clone().float()  # (B, C)
    rounded = torch.where(counts < 1, torch.zeros_like(counts), counts)
    rounded = rounded.round().long() if rounded.is_floating_point() else rounded.long()  # (B, C)
    missing = (num_tokens - rounded.sum(-1)).clamp(min=0)  # (B,)
    remains[remains >= 1] = 0
    ranks = _ranks_from_order(torch.argsort(remains, dim=-1, descending=True))  # (B, C)
    rounded = rounded + (ranks < missing[:, None]).long()  # (B, C)
    cumulative = rounded.cumsum(-1)  # (B, C)
    if checks_values(counts) and (cumulative[:, -1] < num_tokens).any():  # only when codebook_size < num_tokens
        raise ValueError(
            f"`counts` rows must make num_tokens={num_tokens} tokens after rounding and the fill, got row totals "
            f"{cumulative[:, -1].tolist()} from a codebook of {counts.shape[1]} entries."
        )
    positions = torch.arange(num_tokens, device=counts.device).expand(counts.shape[0], -1).contiguous()  # (B, M)
    return torch.searchsorted(cumulative, positions, right=True)  # (B, M)


def quantize_to_sum(
    values: torch.Tensor,
    total: int,
    tie_break: Literal["index", "random"] = "index",
    generator: GeneratorType = None,
) -> torch.LongTensor:
    """Nearest fixed-sum rounding: floor, then +1 at the `total - sum(floor)` positions with the largest fractional
    parts (the original's `quantize_tensor`). If the floors already exceed `total`, -1 goes to the positions with the
    smallest fractional parts among those above zero, so the rows always sum to `total` when that is reachable.

    Args:
        values (`torch.Tensor` of shape `(batch_size, length)`): non-negative real values.
        total (`int`): the sum every output row must have.
        tie_break (`str`, defaults to `"index"`): how equal fractional parts are ordered: `"index"` by torch's sort
            order (the original's rule, which favours some positions), `"random"` uniformly at random with
            `generator`, so that no position is favoured.
        generator (`torch.Generator` or a list of them, *optional*): for `tie_break="random"`.

    Returns:
        `torch.LongTensor` of shape `(batch_size, length)`.
    """
    _check_counts_2d("values", values)
    check_integer("total", total, low=0)
    if values.is_complex():
        raise ValueError(f"`values` must be a real tensor, got dtype {values.dtype}.")
    _check_value_range("values", values, 0, 2**31, "finite non-negative values (at most 2**31)")
    tie_keys = _tie_keys(values, tie_break, generator)
    values = values.float()
    floors = values.floor()  # (B, L)
    fractions = values - floors  # (B, L)
    floors = floors.long()
    deficit = total - floors.sum(-1)  # (B,)
    # Ranks of the fractional parts, largest first.
    add = _descending_ranks(fractions, tie_keys) < deficit[:, None]
    # Excess: remove from the smallest fractional parts first, skipping zero counts.
    removable = torch.where(floors > 0, -fractions, torch.full_like(fractions, float("-inf")))
    remove = (_descending_ranks(removable, tie_keys) < (-deficit)[:, None]) & (floors > 0)
    return floors + add.long() - remove.long()


def _tie_keys(values: torch.Tensor, tie_break: str, generator: GeneratorType) -> Optional[torch.Tensor]:
    """Random sort keys `(batch_size, length)` for `tie_break="random"`, None for `"index"`."""
    check_choice("tie_break", tie_break, ("index", "random"))
    if tie_break == "index":
        return None
    return uniform_tensor(tuple(values.shape[:2]), generator=generator, device=values.device)


def _descending_ranks(scores: torch.Tensor, tie_keys: Optional[torch.Tensor] = None) -> torch.LongTensor:
    """`ranks[b, j]`: the place of `scores[b, j]` in descending order. Equal scores are ordered by torch's sort
    (`tie_keys=None`, the original's rule) or by ascending `tie_keys` (random keys: no position is favoured)."""
    if tie_keys is None:
        return _ranks_from_order(torch.argsort(scores, dim=-1, descending=True))
    shuffle = torch.argsort(tie_keys, dim=-1)  # (B, L): a random permutation of the positions
    shuffled_order = torch.sort(scores.gather(-1, shuffle), dim=-1, descending=True, stable=True).indices
    return _ranks_from_order(shuffle.gather(-1, shuffled_order))


def _ranks_from_order(order: torch.LongTensor) -> torch.LongTensor:
    """`ranks[b, order[b, r]] = r`: the position of every element in a sorted order."""
    arange = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, arange)


def sample_fixed_sum_noise(
    batch_size: int,
    codebook_size: int,
    num_tokens: int,
    generator: GeneratorType = None,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.LongTensor:
    """The FSDD noise prior of the released models: a uniformly random set of `num_tokens` distinct positions,
    count 1 each (what the original's `quantize_tensor(U[0,1)^C, M)` amounts to).

    Returns:
        `torch.LongTensor` of shape `(batch_size, codebook_size)` summing to `num_tokens` in every row.
    """
    check_integer("num_tokens", num_tokens, low=1, high=codebook_size, high_name="codebook_size")
    check_integer("batch_size", batch_size, low=1)
    scores = uniform_tensor((batch_size, codebook_size), generator=generator, device=device)  # (B, C)
    chosen = scores.topk(num_tokens, dim=-1).indices  # (B, M)
    noise = torch.zeros(batch_size, codebook_size, dtype=torch.long, device=scores.device)
    return noise.scatter_(1, chosen, 1)  # (B, C)


def discretized_gaussian(mean: torch.Tensor, std: torch.Tensor, num_values: int) -> torch.Tensor:
    """The discretised Gaussian over k = 0..num_values-1: `pdf_k ∝ exp(-(k - mean)^2 / (2 std^2))`, normalised.

    Computed as a softmax over k, so it stays defined when `std` is tiny compared with the distance of `mean` from
    every integer (its limit there is a point mass on the nearest k). The original divides 0 by 0 in that case and
    draws nothing: its sampler rounds the mean to the fixed sum instead (see [`original_pdf_collapses`]), and so does
    [`FSDDScheduler.step`]; this function alone does not.

    Args:
        mean (`torch.Tensor` of shape `(batch_size, length)`), std (same shape, positive).
        num_values (`int`): the number of values k.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, length, num_values)`; each `[b, j]` row sums to 1.
    """
    _check_value_range("std", std, float(torch.finfo(torch.float32).tiny), float("inf"), "finite positive stds")
    values = torch.arange(num_values, device=mean.device, dtype=torch.float32)  # (V,)
    mean = mean.float()[..., None]  # (B, L, 1)
    std = std.float()[..., None]  # (B, L, 1)
    log_density = -((values - mean) ** 2) / (2 * std**2)  # (B, L, V)
    return torch.softmax(log_density, dim=-1)


def original_pdf_collapses(mean: torch.Tensor, std: torch.Tensor, num_values: int) -> torch.BoolTensor:
    """The rows whose discretised Gaussian the original cannot draw from: at some position every
    `exp(-(k - mean)^2 / (2 std^2))`, k = 0..num_values-1, is exactly 0 in float32 (the mean lies more than about 14
    std from every k), so the original's normalised pdf is 0/0 = NaN there, `torch.multinomial` raises, and the
    original's sampler replaces the draw by `quantize_to_sum(mean)` (docs/tokenset.md#late-step-fallback).

    Decided from the largest term alone, the one at the nearest k: O(batch_size x length), no host synchronisation.

    Args:
        mean (`torch.Tensor` of shape `(batch_size, length)`), std (same shape, positive).
        num_values (`int`): the number of values k.

    Returns:
        `torch.BoolTensor` of shape `(batch_size,)`.
    """
    mean, std = mean.float(), std.float()
    nearest = mean.round().clamp(0, num_values - 1)  # (B, L): where the exponent is largest
    largest_exponent = -((nearest - mean) ** 2) / (2 * std**2)  # (B, L), the original's float32 arithmetic
    return (torch.exp(largest_exponent) == 0).any(-1)


def active_positions(active: torch.BoolTensor, bound: Optional[int] = None) -> Optional[torch.LongTensor]:
    """The positions of `active` (shape `(batch_size, length)`), padded with inactive ones to a common width, as
    `(batch_size, width)` indices: on the CPU the batch's largest count; on an accelerator, where reading that count
    would cost a host-device synchronisation (see [`checks_values`]), the caller's `bound` on it (e.g. two count
    vectors that each sum to M have at most 2M non-zeros together), and None without one. None too where the width
    is at least half the length (gathering would cost more than it saves), so that callers then work on every
    position. Their order carries no meaning."""
    if checks_values(active):
        width = int(active.sum(-1).max()) if active.numel() else 0
    elif bound is not None:
        width = bound  # the caller's guarantee, known without reading the device
    else:
        return None
    if width >= active.shape[-1] // 2:
        return None
    return active.to(torch.uint8).topk(max(width, 1), dim=-1).indices  # (B, K): the active positions first


class DiscretizedGaussian:
    """The distribution of [`discretized_gaussian`], without its `(batch_size, length, num_values)` tensor.

    Every quantity is taken relative to the most likely value `mode = clamp(round(mean), 0, V - 1)`, whose log-weight
    is the maximum, so `weight_k = exp(-((k - mean)^2 - (mode - mean)^2) / (2 std^2))` lies in (0, 1] and the
    normaliser `Z = sum_k weight_k` in [1, V]. `Z` and the inverse-CDF draw run over the V values in chunks of
    `chunk_size`: memory is O(batch_size x length x chunk_size), the values are those of the full computation up to
    float32 rounding, and nothing waits for the device.

    With `active`, the exponentials are computed at those positions only: everywhere else the caller guarantees a
    point mass on `mode` (an integer mean with a std of 1e-6, as at every position of an FSDD transition where both
    ends are 0), which is what the full computation gives there too, so every probability and every draw is the
    full computation's, at a cost of O(batch_size x width x V) instead of O(batch_size x length x V).

    With `pairs`, every position's `(mean, std)` is one of a table's (as in an FSDD transition, which depends only on
    the pair (z, x0) of counts: (M + 1)^2 pairs, whatever the batch and codebook sizes), and the normaliser and the
    inverse-CDF draw are computed once per table entry: O(P x V) exponentials plus a binary search per position,
    with fixed shapes (no host synchronisation, unlike `active`), and the same probabilities and draws.

    Args:
        mean (`torch.Tensor` of shape `(batch_size, length)`), std (same shape, positive).
        num_values (`int`): the number of values k = 0..num_values-1.
        chunk_size (`int`, *optional*): values per chunk; by default 32 on the CPU (where per-operation overhead
            dominates) and 8 on accelerators (where memory does).
        active (`torch.LongTensor` of shape `(batch_size, width)`, *optional*): the positions (see
            [`active_positions`]) outside which the distribution is a point mass on `mode`; by default all.
        pairs (`tuple`, *optional*): `(index, table_mean, table_std)`, `index` a `torch.LongTensor` of shape
            `(batch_size, length)` into the 1-D tensors `table_mean` and `table_std` (length P), such that `mean` and
            `std` equal `table_mean[index]` and `table_std[index]`. Not with `active`.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        num_values: int,
        chunk_size: Optional[int] = None,
        active: Optional[torch.LongTensor] = None,
        pairs: Optional[tuple[torch.LongTensor, torch.Tensor, torch.Tensor]] = None,
    ):
        if mean.shape != std.shape or mean.ndim != 2:
            raise ValueError(
                f"`mean` and `std` must have the same shape (batch_size, length), got {tuple(mean.shape)} and "
                f"{tuple(std.shape)}."
            )
        check_integer("num_values", num_values, low=1)
        _check_value_range("mean", mean, -float("inf"), float("inf"), "finite means")
        _check_value_range("std", std, float(torch.finfo(torch.float32).tiny), float("inf"), "finite positive stds")
        if active is not None and (active.ndim != 2 or active.shape[0] != mean.shape[0]):
            raise ValueError(
                f"`active` must have shape (batch_size={mean.shape[0]}, width), got {tuple(active.shape)}."
            )
        if pairs is not None and (active is not None or pairs[0].shape != mean.shape or pairs[1].ndim != 1):
            raise ValueError(
                "`pairs` must be (index of shape (batch_size, length), table_mean, table_std), each table 1-D, "
                "and not given with `active`."
            )
        self.num_values = num_values
        self.chunk_size = chunk_size or (32 if mean.device.type == "cpu" else 8)
        self.active = active
        self.pair_index, self.table = None, None
        if pairs is not None:  # the same distribution per table entry: computed once per entry
            self.pair_index = pairs[0]
            self.table = DiscretizedGaussian(pairs[1][None], pairs[2][None], num_values, chunk_size=self.chunk_size)
        self.full_mode = mean.float().round().clamp(0, num_values - 1)  # (B, L), float
        self.full_shape = mean.shape
        # What the exponentials are computed for: the active positions (B, K), or all of them.
        self.mean = self._gather(mean.float())  # (B, K)
        self.std = self._gather(std.float())  # (B, K)
        self.mode = self._gather(self.full_mode)  # (B, K)
        self._normalizer = None  # computed when first needed (a filtered draw without adjustment never needs it)

    @property
    def normalizer(self) -> torch.Tensor:
        """`Z = sum_k weight_k`, `(batch_size, width)`."""
        if self._normalizer is None and self.table is not None:
            self._normalizer = self.table.normalizer[0][self.pair_index]
        if self._normalizer is None:
            self._normalizer = sum(weights.sum(-1) for _, weights in self._chunks())
        return self._normalizer

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (B, L, ...) at the active positions (B, K, ...)."""
        if self.active is None:
            return tensor
        index = self.active.reshape(*self.active.shape, *([1] * (tensor.ndim - 2))).expand(
            *self.active.shape, *tensor.shape[2:]
        )
        return tensor.gather(1, index)

    def _scatter(self, full: torch.Tensor, active_values: torch.Tensor) -> torch.Tensor:
        """`full` (B, L, ...) with its active positions replaced by `active_values` (B, K, ...)."""
        if self.active is None:
            return active_values
        index = self.active.reshape(*self.active.shape, *([1] * (full.ndim - 2))).expand_as(active_values)
        return full.scatter(1, index, active_values)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.full_shape, self.num_values))

    @property
    def ndim(self) -> int:
        return 3

    def __getitem__(self, rows) -> "DiscretizedGaussian":
        """The distributions of the batch rows `rows` (any index of dim 0)."""
        subset = DiscretizedGaussian.__new__(DiscretizedGaussian)
        subset.num_values, subset.chunk_size = self.num_values, self.chunk_size
        subset.active = None if self.active is None else self.active[rows]
        subset.table = self.table
        subset.pair_index = None if self.pair_index is None else self.pair_index[rows]
        subset.full_mode, subset.mean, subset.std = self.full_mode[rows], self.mean[rows], self.std[rows]
        subset.mode, subset._normalizer = self.mode[rows], self.normalizer[rows]
        subset.full_shape = subset.full_mode.shape
        return subset

    def _weights(self, values: torch.Tensor) -> torch.Tensor:
        """`weight_k` for values of shape `(B, K, J)`; (k - m)^2 - (mode - m)^2 is factored for accuracy."""
        mean, mode, std = self.mean[..., None], self.mode[..., None], self.std[..., None]  # (B, K, 1)
        exponent = -(values - mode) * (values + mode - 2 * mean) / (2 * std**2)  # <= 0
        # Below -87 the weight is under float32's smallest normal number: 0 next to the mode's 1, and an exp there
        # takes a slow path on common CPUs (over 20x slower), so it is skipped.
        negligible = exponent < -87.0
        return torch.exp(exponent.clamp_(min=-87.0)).masked_fill_(negligible, 0.0)

    def _chunks(self):
        for start in range(0, self.num_values, self.chunk_size):
            stop = min(start + self.chunk_size, self.num_values)
            values = torch.arange(start, stop, device=self.mean.device, dtype=torch.float32)  # (J,)
            yield start, self._weights(values)  # (B, K, J)

    def prob(self, values: torch.Tensor) -> torch.Tensor:
        """`pdf[..., values]` for integer `values` of shape `(batch_size, length)` or `(batch_size, length, J)`;
        0 outside [0, V - 1]."""
        squeeze = values.ndim == 2
        values = values[..., None] if squeeze else values
        point_mass = (values == self.full_mode[..., None].long()).float() if self.active is not None else None
        active_values = self._gather(values)
        inside = (active_values >= 0) & (active_values <= self.num_values - 1)
        probs = self._weights(active_values.float()) / self.normalizer[..., None]
        probs = torch.where(inside, probs, torch.zeros_like(probs))
        probs = self._scatter(point_mass, probs)
        return probs[..., 0] if squeeze else probs

    def probs(self) -> torch.Tensor:
        """The full `(batch_size, length, num_values)` tensor (what [`discretized_gaussian`] returns)."""
        values = torch.arange(self.num_values, device=self.mean.device)
        return self.prob(values.expand(*self.full_shape, -1))

    def sample(self, generator: GeneratorType = None) -> torch.LongTensor:
        """One draw per position by inverse CDF, with the uniform numbers [`sample_categorical`] would use (one per
        position, active or not, so the generator advances as for the full computation).

        Returns:
            `torch.LongTensor` of shape `(batch_size, length)`.
        """
        uniform = 1.0 - uniform_tensor(self.full_shape, generator=generator, device=self.mean.device)  # (0, 1]
        threshold = self._gather(uniform) * self.normalizer  # (B, K)
        if self.table is not None:
            return self._sample_from_table(threshold)
        below = torch.zeros_like(self.mean, dtype=torch.long)  # (B, K): values whose CDF is under the threshold
        running = torch.zeros_like(self.mean)  # (B, K): the CDF before the chunk (unnormalised)
        for _, weights in self._chunks():
            cdf = running[..., None] + weights.cumsum(-1)  # (B, K, J)
            below += (cdf < threshold[..., None]).sum(-1)
            running = cdf[..., -1]
        draws = below.clamp(max=self.num_values - 1)
        return self._scatter(self.full_mode.long(), draws)

    def _cdf(self) -> torch.Tensor:
        """The unnormalised CDF `(batch_size, width, num_values)`, with [`sample`]'s arithmetic (for a table)."""
        running, cdfs = torch.zeros_like(self.mean), []  # (B, K)
        for _, weights in self._chunks():
            cdfs.append(running[..., None] + weights.cumsum(-1))  # (B, K, J)
            running = cdfs[-1][..., -1]
        return torch.cat(cdfs, dim=-1)

    def _sample_from_table(self, threshold: torch.Tensor) -> torch.LongTensor:
        """[`sample`]'s draw, `#{k : cdf[k] < threshold}`, read from the table's CDF by one binary search per
        position: the CDF of entry p, as non-negative float32 bit patterns (ordered as the values), offset by
        p * 2^31, is one sorted int64 sequence over all entries."""
        table_cdf = self.table._cdf()[0]  # (P, V), non-decreasing along V
        keys = table_cdf.view(torch.int32).long()  # (P, V)
        del table_cdf
        keys += torch.arange(keys.shape[0], device=keys.device)[:, None] << 31  # in place: one (P, V) int64 tensor
        keys = keys.flatten()  # (P * V,), sorted
        queries = threshold.view(torch.int32).long() + (self.pair_index << 31)  # (B, L)
        below = torch.searchsorted(keys, queries) - self.pair_index * self.num_values  # (B, L)
        return below.clamp(max=self.num_values - 1)

    def sample_filtered(
        self, top_p: Optional[float] = None, top_k: Optional[int] = None, generator: GeneratorType = None
    ) -> torch.LongTensor:
        """`sample_filtered(discretized_gaussian(mean, std, num_values), top_p, top_k, generator)`: the same uniform
        numbers (one per position), the same probabilities and the same draws, with the `(batch_size, width,
        num_values)` probabilities of the active positions only (filtering needs all the values of a position; the
        inactive positions are point masses, which every filter keeps).

        Returns:
            `torch.LongTensor` of shape `(batch_size, length)`.
        """
        uniform = 1.0 - uniform_tensor(self.full_shape, generator=generator, device=self.mean.device)  # (0, 1]
        probs = discretized_gaussian(self.mean, self.std, self.num_values)  # (B, K, V)
        draws = _draw_filtered(probs, self._gather(uniform), top_p, top_k)  # (B, K)
        return self._scatter(self.full_mode.long(), draws)


def greedy_adjust(
    sample: torch.LongTensor,
    probs: torch.Tensor,
    total: int,
    exact: bool = False,
    tie_break: Literal["index", "random"] = "index",
    generator: GeneratorType = None,
) -> torch.LongTensor:
    """Moves counts up or down, where they cost the least probability, until the rows sum to `total`.

    `exact=False` is the original one-shot rule (Algorithm 1 of the paper), bit for bit: with
    `delta = total - sample.sum(-1)`, each of the first `min(|delta|, length)` positions, in descending order of
    `probs[z ± 1] - probs[z]` (-inf where the move leaves [0, V-1]), moves by one, then the result is clamped to
    [0, V-1]. Each position moves at most once, so the sum is not always restored.

    `exact=True` always restores the sum when `0 <= total <= length * (V - 1)`: it applies the one-shot rule, and
    again (re-ranked by the current probability differences) to the rows that still miss the sum; rows that miss it
    after that get all their remaining moves at once, the ones of largest marginal gain
    `probs[z ± s] - probs[z ± (s - 1)]` (several per position where that costs least). Where one-shot suffices,
    as it usually does, the result equals the one-shot rule's.

    Args:
        sample (`torch.LongTensor` of shape `(batch_size, length)`): values in [0, V-1].
        probs (`torch.Tensor` of shape `(batch_size, length, V)` or a [`DiscretizedGaussian`]): the distribution
            each value was drawn from. The one-shot rule reads it only at `sample` and `sample ± 1`.
        total (`int`): the target row sum.
        exact (`bool`): see above.
        tie_break (`str`, defaults to `"index"`): how moves of equal gain are ordered: `"index"` by torch's sort
            order (the original's rule, which favours some positions when many gains are equal, as they are for
            positions holding the same count under the same distribution), `"random"` uniformly at random with
            `generator`, so that no position is favoured.
        generator (`torch.Generator` or a list of them, *optional*): for `tie_break="random"`.

    Returns:
        `torch.LongTensor` of shape `(batch_size, length)`.
    """
    _check_counts_2d("sample", sample)
    if probs.ndim != 3 or probs.shape[:2] != sample.shape:
        raise ValueError(
            f"`probs` must have shape (batch_size, length, num_values) = {tuple(sample.shape)} + (V,), "
            f"got {tuple(probs.shape)}."
        )
    num_values = probs.shape[-1]
    sample = sample.long()
    tie_keys = _tie_keys(sample, tie_break, generator)
    if not exact:
        return _one_shot_adjust(sample, probs, total, tie_keys)
    if not 0 <= total <= sample.shape[1] * (num_values - 1):
        raise ValueError(
            f"`total` must be in [0, length * (V - 1)] = [0, {sample.shape[1] * (num_values - 1)}] for an exact "
            f"adjustment, got {total}."
        )
    sample = sample.clamp(0, num_values - 1)
    for _ in range(2):  # the one-shot rule, and once more for what it left (a no-op on rows at the sum)
        sample = _one_shot_adjust(sample, probs, total, tie_keys)
    missing = sample.sum(-1) != total  # (B,)
    if missing.any():  # rare; the only host synchronisation here
        rows = missing.nonzero()[:, 0]
        full = probs[rows].probs() if isinstance(probs, DiscretizedGaussian) else probs[rows]
        sample[rows] = _joint_adjust(sample[rows], full, total, None if tie_keys is None else tie_keys[rows])
    return sample


def _joint_adjust(
    sample: torch.LongTensor, probs: torch.Tensor, total: int, tie_keys: Optional[torch.Tensor] = None
) -> torch.LongTensor:
    """Chooses all `|delta|` remaining moves at once: the moves with the largest marginal gain
    `probs[z ± s] - probs[z ± (s - 1)]`, made non-increasing in `s` so that a position's moves come in order.
    Equal gains of different positions are ordered by position, or by ascending `tie_keys` when given."""
    batch_size, length, num_values = probs.shape
    delta = total - sample.sum(-1)  # (B,)
    direction = torch.where(delta < 0, -1, 1)  # (B,)
    steps = torch.arange(num_values, device=sample.device)  # (V,): s = 0..V-1 moves
    targets = sample[..., None] + direction[:, None, None] * steps  # (B, L, V)
    in_range = (targets >= 0) & (targets <= num_values - 1)
    target_probs = probs.float().gather(-1, targets.clamp(0, num_values - 1))  # (B, L, V)
    gains = target_probs[..., 1:] - target_probs[..., :-1]  # (B, L, V-1): gain of the s-th move
    gains = torch.where(in_range[..., 1:], gains, torch.full_like(gains, float("-inf")))
    gains = gains.cummin(dim=-1).values
    shuffle = None
    if tie_keys is not None:  # visit the positions in a random order
        shuffle = torch.argsort(tie_keys, dim=-1)  # (B, L)
        gains = gains.gather(1, shuffle[..., None].expand_as(gains))
    # A stable sort keeps equal gains of one position in order of s.
    order = torch.sort(gains.reshape(batch_size, -1), dim=-1, descending=True, stable=True).indices
    chosen = _ranks_from_order(order) < delta.abs()[:, None]  # (B, L * (V-1))
    moves = chosen.reshape(batch_size, length, num_values - 1).sum(-1)  # (B, L)
    if shuffle is not None:
        moves = torch.empty_like(moves).scatter_(1, shuffle, moves)
    return sample + direction[:, None] * moves


def _prob_at(probs: Union[torch.Tensor, DiscretizedGaussian], values: torch.LongTensor) -> torch.Tensor:
    """`probs[b, j, values[b, j]]` for a probability tensor or a [`DiscretizedGaussian`]; `values` in range."""
    if isinstance(probs, DiscretizedGaussian):
        return probs.prob(values)
    return probs.gather(-1, values[..., None])[..., 0]


def _one_shot_adjust(
    sample: torch.LongTensor, probs: torch.Tensor, total: int, tie_keys: Optional[torch.Tensor] = None
) -> torch.LongTensor:
    num_values = probs.shape[-1]
    delta = total - sample.sum(-1)  # (B,)
    current = _prob_at(probs, sample.clamp(0, num_values - 1))  # (B, L)
    lower = _prob_at(probs, (sample - 1).clamp(0, num_values - 1))  # (B, L)
    upper = _prob_at(probs, (sample + 1).clamp(0, num_values - 1))  # (B, L)
    minus_inf = torch.full_like(current, float("-inf"))
    gain_decrease = torch.where(sample > 0, lower - current, minus_inf)  # (B, L)
    gain_increase = torch.where(sample < num_values - 1, upper - current, minus_inf)  # (B, L)
    gain = torch.where((delta < 0)[:, None], gain_decrease, gain_increase)  # (B, L)
    moved = _descending_ranks(gain, tie_keys) < delta.abs()[:, None]  # (B, L)
    adjusted = sample + torch.sign(delta)[:, None] * moved.long()
    return adjusted.clamp(0, num_values - 1)

"""`utils.sampling.inverse_cdf`, the one inverse-CDF draw of both systems: each tie rule against a direct scan of the
cumulative sums, exact ties included, and values of probability zero never drawn."""

import pytest
import torch

from tokenset_diffusers.utils.sampling import inverse_cdf


def scan(probs: list[float], u: float, right: bool) -> int:
    """The first index whose cumulative sum reaches (`right=False`) or passes (`right=True`) u times the total."""
    threshold = u * sum(probs)
    running = 0.0
    for index, p in enumerate(probs):
        running += p
        if (running > threshold) if right else (running >= threshold):
            return index
    return len(probs) - 1


# Dyadic probabilities: the float32 cumulative sums are exact, so the thresholds below hit them exactly. Each rule is
# used with its own uniform numbers: TokenSet's `right=False` with u in (0, 1], TokenBridge's `right=True` with u in
# [0, 1).
CASES = [
    ([0.25, 0.0, 0.25, 0.5], 0.25, (False, True)),  # a tie at the end of value 0, followed by a zero
    ([0.25, 0.0, 0.25, 0.5], 0.5, (False, True)),
    ([0.125, 0.375, 0.0, 0.5], 0.125, (False, True)),
    ([1.0, 0.0, 0.0], 0.75, (False, True)),
    ([0.0, 0.5, 0.5], 0.0, (True,)),  # u = 0: never the leading zero
    ([0.5, 0.5, 0.0], 1.0, (False,)),  # u = 1: never the trailing zero
]


@pytest.mark.parametrize("probs, u, right", [(probs, u, right) for probs, u, rules in CASES for right in rules])
def test_each_tie_rule_is_the_first_value_whose_cdf_reaches_the_threshold(probs, u, right):
    got = inverse_cdf(torch.tensor([probs]), torch.tensor([u]), right=right)
    assert got.tolist() == [scan(probs, u, right)]
    assert probs[got.item()] > 0  # a value of probability zero is never drawn


@pytest.mark.parametrize("right", [False, True])
def test_random_rows_agree_with_the_scan_and_keep_their_shape(right):
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 3, 9, generator=generator)
    probs[probs < 0.3] = 0  # zeros between the values
    uniform = torch.rand(4, 3, generator=generator)
    got = inverse_cdf(probs, uniform, right=right)
    assert got.shape == (4, 3) and got.dtype == torch.long
    cdf = probs.float().cumsum(-1)
    for (i, j), index in zip(torch.cartesian_prod(torch.arange(4), torch.arange(3)).tolist(), got.flatten().tolist()):
        threshold = uniform[i, j] * cdf[i, j, -1]
        passed = (cdf[i, j] > threshold) if right else (cdf[i, j] >= threshold)
        assert index == int(passed.nonzero()[0])  # the first index past the threshold, from the same float32 cdf
        assert probs[i, j, index] > 0

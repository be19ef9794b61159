"""Set operations against the original implementation's fixtures, invariants and second computations."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenset_diffusers.tokenset.set_ops import (
    counts_to_tokens,
    discretized_gaussian,
    greedy_adjust,
    quantize_to_sum,
    sample_fixed_sum_noise,
    tokens_to_counts,
)
from tokenset_diffusers.utils.sampling import filter_probs, sample_categorical


M = 16  # num_tokens of the fixtures
C = 64  # codebook_size of the fixtures


def test_tokens_to_counts_counts_every_token(fsdd_fixture):
    tokens = fsdd_fixture["fill.tokens"]
    counts = tokens_to_counts(tokens, C)
    assert counts.dtype == torch.long and counts.shape == (4, C)
    assert (counts.sum(-1) == M).all()
    # A second computation: bincount per row.
    expected = torch.stack([torch.bincount(row, minlength=C) for row in tokens])
    assert torch.equal(counts, expected)


def test_round_trip_tokens_counts_tokens_is_sorting():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (5, 12), generator=generator)
    counts = tokens_to_counts(tokens, 32)
    assert torch.equal(counts_to_tokens(counts, 12), tokens.sort(-1).values)


def test_counts_to_tokens_matches_original_fill_rule(fsdd_fixture):
    tokens = counts_to_tokens(fsdd_fixture["fill.counts"], M)
    assert torch.equal(tokens, fsdd_fixture["fill.tokens"])
    # The same on the (B, C) layout.
    assert torch.equal(counts_to_tokens(fsdd_fixture["fill.counts"][..., 0], M), fsdd_fixture["fill.tokens"])


def test_counts_to_tokens_truncates_largest_ids_when_sum_exceeds():
    counts = torch.zeros(1, 8, dtype=torch.long)
    counts[0, 1], counts[0, 5] = 3, 3
    assert counts_to_tokens(counts, 4).tolist() == [[1, 1, 1, 5]]


@pytest.mark.parametrize(
    "bad_ids", [torch.tensor([[0, 64]]), torch.tensor([[-1, 2]]), torch.tensor([0, 1]), torch.tensor([[0.0, 1.0]])]
)
def test_tokens_to_counts_rejects_bad_ids(bad_ids):
    with pytest.raises(ValueError, match="token_ids"):
        tokens_to_counts(bad_ids, C)


def test_counts_to_tokens_rejects_nan_and_bad_shape():
    with pytest.raises(ValueError, match="NaN"):
        counts_to_tokens(torch.full((1, 4), float("nan")), 2)
    with pytest.raises(ValueError, match="counts"):
        counts_to_tokens(torch.ones(4), 2)


def test_quantize_to_sum_matches_original(fsdd_fixture):
    output = quantize_to_sum(fsdd_fixture["quantize.input"], M)
    assert torch.equal(output, fsdd_fixture["quantize.output"])


def test_quantize_to_sum_handles_excess():
    values = torch.tensor([[3.2, 2.9, 0.5, 4.0]])  # floors sum to 9
    output = quantize_to_sum(values, 7)
    assert output.sum().item() == 7 and (output >= 0).all()


def test_sample_fixed_sum_noise_is_a_random_set():
    noise = sample_fixed_sum_noise(64, C, M, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (64, C) and noise.dtype == torch.long
    assert (noise.sum(-1) == M).all() and set(noise.unique().tolist()) == {0, 1}
    # Uniform over positions: every position is chosen with probability M / C.
    frequency = sample_fixed_sum_noise(4000, C, M, generator=torch.Generator().manual_seed(1)).float().mean(0)
    assert (frequency - M / C).abs().max() < 5 * (M / C * (1 - M / C) / 4000) ** 0.5


def test_sample_fixed_sum_noise_generator_list_matches_single_rows():
    batch = sample_fixed_sum_noise(2, C, M, generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    rows = [sample_fixed_sum_noise(1, C, M, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    assert torch.equal(batch, torch.cat(rows))
    with pytest.raises(ValueError, match="generator"):
        sample_fixed_sum_noise(3, C, M, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="num_tokens"):
        sample_fixed_sum_noise(1, 4, 5)


def test_discretized_gaussian_matches_original(fsdd_fixture):
    t = fsdd_fixture["train.t"][:, None]
    data, noise = fsdd_fixture["train.data"].float(), fsdd_fixture["train.noise"].float()
    pdf = discretized_gaussian(t * data + (1 - t) * noise, (noise - data).abs() / 4 + 1e-6, M)
    torch.testing.assert_close(pdf, fsdd_fixture["train.pdf"], atol=1e-6, rtol=0)


def test_discretized_gaussian_second_computation_and_tiny_std():
    mean, std = torch.tensor([[2.3, 0.0]]), torch.tensor([[0.7, 1e-6]])
    k = torch.arange(6.0)
    direct = torch.exp(-((k - 2.3) ** 2) / (2 * 0.7**2))
    torch.testing.assert_close(discretized_gaussian(mean, std, 6)[0, 0], direct / direct.sum())
    # A tiny std far from every integer: the limit, a point mass on the nearest value, not NaN.
    pdf = discretized_gaussian(torch.tensor([[2.3]]), torch.tensor([[1e-7]]), 6)
    assert torch.equal(pdf[0, 0], torch.eye(6)[2])


def test_filter_probs_matches_original(fsdd_fixture):
    probs = fsdd_fixture["greedy.probs"]
    torch.testing.assert_close(filter_probs(probs, top_p=0.8), fsdd_fixture["filter.top_p0.8"], atol=1e-6, rtol=0)
    torch.testing.assert_close(filter_probs(probs, top_k=2), fsdd_fixture["filter.top_k2"], atol=1e-6, rtol=0)


def test_filter_probs_keeps_top_one_and_crossing_value():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert filter_probs(probs, top_p=0.6)[0].nonzero().flatten().tolist() == [0, 1]
    assert filter_probs(probs, top_p=0.1)[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="top_p"):
        filter_probs(probs, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        filter_probs(probs, top_k=5)


def test_greedy_adjust_matches_original_including_failures(fsdd_fixture):
    output = greedy_adjust(fsdd_fixture["greedy.z0"], fsdd_fixture["greedy.probs"], M)
    assert torch.equal(output, fsdd_fixture["greedy.output"])
    # The fixture rows other than 2 show the original's one-shot rule failing to restore the sum.
    assert (output.sum(-1) != M).sum() >= 1


def test_greedy_adjust_exact_restores_fixture_rows(fsdd_fixture):
    output = greedy_adjust(fsdd_fixture["greedy.z0"], fsdd_fixture["greedy.probs"], M, exact=True)
    assert (output.sum(-1) == M).all() and (output >= 0).all() and (output <= M).all()
    # Row 2 already sums to M and must not move.
    assert torch.equal(output[2], fsdd_fixture["greedy.z0"][2])


@pytest.mark.parametrize("offset", [-1, 1])
def test_greedy_adjust_exact_equals_one_shot_for_a_single_move(offset):
    # With one move to make, both rules take the position whose first move costs the least.
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        probs = torch.rand(1, 32, 9, generator=generator).softmax(-1)
        sample = sample_categorical(probs, generator=generator)
        total = int(sample.sum()) + offset
        exact = greedy_adjust(sample, probs, total, exact=True)
        assert exact.sum().item() == total
        assert torch.equal(exact, greedy_adjust(sample, probs, total))


def test_greedy_adjust_exact_moves_again_where_it_costs_least():
    probs = torch.tensor([[[0.1, 0.1, 0.8], [0.9, 0.05, 0.05]]])
    # Round 1 moves both positions up (the one-shot rule); round 2 picks the cheaper second move.
    assert greedy_adjust(torch.tensor([[0, 0]]), probs, 3, exact=True).tolist() == [[2, 1]]
    # Several moves at one position; every position saturates.
    assert greedy_adjust(torch.tensor([[0, 0]]), torch.full((1, 2, 3), 1 / 3), 4, exact=True).tolist() == [[2, 2]]
    assert greedy_adjust(torch.tensor([[2, 2, 2]]), torch.full((1, 3, 3), 1 / 3), 0, exact=True).tolist() == [
        [0, 0, 0]
    ]
    # Far from the sum (two rounds are not enough), the remaining moves all go where they cost least.
    rising = torch.softmax(torch.arange(8.0), -1)
    probs = torch.stack([rising, rising.flip(-1)])[None]  # position 0 likes large values, position 1 small ones
    assert greedy_adjust(torch.tensor([[0, 0]]), probs, 9, exact=True).tolist() == [[7, 2]]


def test_greedy_adjust_exact_rejects_unreachable_total():
    with pytest.raises(ValueError, match="total"):
        greedy_adjust(torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3, 4), 0.25), 10, exact=True)
    with pytest.raises(ValueError, match="probs"):
        greedy_adjust(torch.zeros(1, 3, dtype=torch.long), torch.full((1, 4, 4), 0.25), 2)


@st.composite
def adjustment_cases(draw):
    batch_size = draw(st.integers(1, 4))
    length = draw(st.integers(1, 12))
    num_values = draw(st.integers(2, 9))
    total = draw(st.integers(0, length * (num_values - 1)))
    kind = draw(st.sampled_from(["random", "one_hot", "flat", "peaked_top", "peaked_zero"]))
    seed = draw(st.integers(0, 2**16))
    start = draw(st.sampled_from(["random", "zeros", "max"]))
    return batch_size, length, num_values, total, kind, seed, start


def _probs_of_kind(kind, shape, generator):
    batch_size, length, num_values = shape
    if kind == "random":
        return torch.rand(shape, generator=generator).softmax(-1)
    if kind == "flat":
        return torch.full(shape, 1.0 / num_values)
    index = {
        "one_hot": torch.randint(0, num_values, (batch_size, length), generator=generator),
        "peaked_top": torch.full((batch_size, length), num_values - 1),
        "peaked_zero": torch.zeros(batch_size, length, dtype=torch.long),
    }[kind]
    return torch.nn.functional.one_hot(index, num_values).float()


@settings(max_examples=300, deadline=None)
@given(adjustment_cases())
def test_greedy_adjust_exact_always_reaches_the_sum(case):
    batch_size, length, num_values, total, kind, seed, start = case
    generator = torch.Generator().manual_seed(seed)
    probs = _probs_of_kind(kind, (batch_size, length, num_values), generator)
    sample = {
        "random": torch.randint(0, num_values, (batch_size, length), generator=generator),
        "zeros": torch.zeros(batch_size, length, dtype=torch.long),
        "max": torch.full((batch_size, length), num_values - 1),
    }[start]
    output = greedy_adjust(sample, probs, total, exact=True)
    assert (output.sum(-1) == total).all()
    assert (output >= 0).all() and (output <= num_values - 1).all()
    # Moves go one way only: towards the target.
    direction = torch.sign(torch.tensor(total) - sample.sum(-1))[:, None]
    assert ((output - sample) * direction >= 0).all()


def test_sample_categorical_frequencies_match_probabilities():
    probs = torch.tensor([[[0.5, 0.0, 0.2, 0.3], [0.0, 0.0, 1.0, 0.0]]])
    n = 20000
    draws = sample_categorical(probs.expand(n, -1, -1), generator=torch.Generator().manual_seed(0))
    frequency = torch.nn.functional.one_hot(draws, 4).float().mean(0)
    bound = 5 * (probs * (1 - probs) / n).sqrt() + 1e-9
    assert ((frequency - probs[0]).abs() <= bound).all()


# ---------------------------------------------------------------- DiscretizedGaussian (no (B, L, V) tensor)


@pytest.mark.parametrize("chunk_size", [1, 7, 32, 200])
def test_discretized_gaussian_object_equals_the_full_tensor(chunk_size):
    """Probabilities, normaliser and draws of the chunked form == the materialised softmax form, from point masses
    (std 1e-6, mean between integers) to widths beyond the range, and means outside [0, V - 1]."""
    from tokenset_diffusers.tokenset.set_ops import DiscretizedGaussian, discretized_gaussian
    from tokenset_diffusers.utils.sampling import sample_categorical

    generator = torch.Generator().manual_seed(0)
    num_values = 41
    mean = torch.rand(8, 300, generator=generator) * 60 - 10  # (B, L), some outside [0, V-1]
    std = torch.exp(torch.rand(8, 300, generator=generator) * 20 - 14)  # 8e-7 .. 400
    std[0] = 1e-6
    full = discretized_gaussian(mean, std, num_values)  # (B, L, V)
    lazy = DiscretizedGaussian(mean, std, num_values, chunk_size=chunk_size)
    assert lazy.shape == full.shape
    torch.testing.assert_close(lazy.probs(), full, atol=1e-6, rtol=1e-5)
    values = torch.randint(-2, num_values + 2, (8, 300), generator=generator)
    expected = full.gather(-1, values.clamp(0, num_values - 1)[..., None])[..., 0]
    expected = torch.where((values >= 0) & (values < num_values), expected, torch.zeros_like(expected))
    torch.testing.assert_close(lazy.prob(values), expected, atol=1e-6, rtol=1e-5)
    draws = lazy.sample(torch.Generator().manual_seed(5))
    reference = sample_categorical(full, torch.Generator().manual_seed(5))
    assert (draws != reference).sum() <= 2  # the same uniform numbers; rounding may move a boundary draw
    assert draws.min() >= 0 and draws.max() < num_values


def test_discretized_gaussian_object_draws_follow_the_distribution():
    """Frequencies of 200k draws at one (mean, std) against the exact probabilities."""
    from tokenset_diffusers.tokenset.set_ops import DiscretizedGaussian, discretized_gaussian

    mean, std = torch.full((1, 200_000), 3.3), torch.full((1, 200_000), 1.7)
    draws = DiscretizedGaussian(mean, std, 12, chunk_size=5).sample(torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws[0], minlength=12).float() / draws.numel()
    exact = discretized_gaussian(mean[:, :1], std[:, :1], 12)[0, 0]
    assert (frequencies - exact).abs().max() < 4e-3


def test_greedy_adjust_with_the_distribution_object_equals_the_tensor():
    """The adjustment reads the object (3 values per position, the joint fallback materialised row by row) exactly
    as it reads the tensor of the same probabilities. (Against the softmax tensor the two can order moves of zero
    probability differently: the object writes weights below float32's normal range as 0, the softmax as denormals.)"""
    from tokenset_diffusers.tokenset.set_ops import DiscretizedGaussian

    generator = torch.Generator().manual_seed(2)
    mean = torch.rand(16, 50, generator=generator) * 3
    std = torch.rand(16, 50, generator=generator) + 0.05
    sample = torch.randint(0, 6, (16, 50), generator=generator)
    distribution = DiscretizedGaussian(mean, std, 8)
    for exact, total in ((False, 60), (True, 60), (True, 0), (True, 200)):
        lazy = greedy_adjust(sample, distribution, total, exact=exact)
        full = greedy_adjust(sample, distribution.probs(), total, exact=exact)
        assert torch.equal(lazy, full)
        if exact:
            assert (lazy.sum(-1) == total).all()


# ---------------------------------------------------------------- the active-position form and the one-pass x0 draw


def _sparse_transition(batch_size, codebook_size, num_tokens, generator):
    """`(mean, std, sample, original)` of an FSDD transition between two sparse count vectors, as in a step."""
    sample = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator)
    original = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens // 2, generator=generator) * 2
    original[0, :5] += 3  # rows with different numbers of active positions
    noise_estimate = (sample - 0.4 * original) / 0.6
    mean = 0.5 * original + 0.5 * noise_estimate
    std = (noise_estimate - original).abs() / 4 * 0.9 + 1e-6
    return mean, std, sample, original


def test_discretized_gaussian_on_active_positions_equals_the_full_computation():
    """Computing the exponentials only where z or x0 is non-zero changes no probability, no draw, no adjustment
    (one-shot, exact, the joint fallback of a row subset), and advances the generator alike."""
    from tokenset_diffusers.tokenset.set_ops import DiscretizedGaussian, active_positions

    generator = torch.Generator().manual_seed(0)
    num_tokens = 12
    mean, std, sample, original = _sparse_transition(4, 200, num_tokens, generator)
    active = active_positions((sample != 0) | (original != 0))
    assert active.shape[1] < 200 // 2
    full = DiscretizedGaussian(mean, std, num_tokens, chunk_size=5)
    sparse = DiscretizedGaussian(mean, std, num_tokens, chunk_size=5, active=active)
    assert sparse.shape == full.shape
    assert torch.equal(sparse.probs(), full.probs())
    rows = torch.tensor([3, 0])
    assert torch.equal(sparse[rows].probs(), full[rows].probs())
    values = torch.randint(-1, num_tokens + 1, (4, 200, 3), generator=generator)
    assert torch.equal(sparse.prob(values), full.prob(values))
    streams = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)]
    draws = [distribution.sample(stream) for distribution, stream in zip((full, sparse), streams)]
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(streams[0].get_state(), streams[1].get_state())
    for exact, total in ((False, num_tokens), (True, num_tokens), (True, 3 * num_tokens)):
        tie_break = "random" if exact else "index"
        adjusted = [
            greedy_adjust(draws[0], distribution, total, exact, tie_break, torch.Generator().manual_seed(1))
            for distribution in (full, sparse)
        ]
        assert torch.equal(adjusted[0], adjusted[1])


def test_active_positions_pads_to_the_largest_count_and_stays_off_accelerators():
    from tokenset_diffusers.tokenset.set_ops import active_positions

    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[0, [3, 17, 39]] = True
    mask[2, 5] = True
    positions = active_positions(mask)
    assert positions.shape == (3, 3)
    assert set(positions[0].tolist()) == {3, 17, 39} and 5 in positions[2].tolist()
    assert active_positions(torch.ones(2, 40, dtype=torch.bool)) is None  # nothing to save
    assert active_positions(mask.to("meta")) is None  # the width would be read from the device
    assert active_positions(mask.to("meta"), bound=5).shape == (3, 5)  # unless the caller bounds it
    assert active_positions(mask, bound=5).shape == (3, 3)  # on the CPU the count itself is read


def _mixed_probs(generator, shape=(6, 300, 20)):
    """Per-position distributions from peaked (one value holds > 0.8) to flat (top-p needs most of the values)."""
    sharpness = torch.rand(*shape[:2], 1, generator=generator) * 12
    return (torch.randn(shape, generator=generator) * sharpness).softmax(-1)


@pytest.mark.parametrize(
    "top_p, top_k, window",
    [(0.8, None, 16), (0.8, None, 2), (0.5, None, 3), (1.0, None, 16), (None, 2, 16), (0.8, 3, 16)],
)
def test_sample_filtered_equals_filtering_then_drawing(top_p, top_k, window):
    """The one-pass draw == `sample_categorical(filter_probs(...))` with the same generator, at positions where the
    largest value alone passes top-p, where the window holds the top-p set and where it does not."""
    from tokenset_diffusers.utils.sampling import sample_filtered

    probs = _mixed_probs(torch.Generator().manual_seed(0))
    fast = sample_filtered(probs, top_p, top_k, torch.Generator().manual_seed(3), window=window)
    reference = sample_categorical(filter_probs(probs, top_p=top_p, top_k=top_k), torch.Generator().manual_seed(3))
    assert (fast != reference).sum() <= 2  # the normaliser's float32 rounding may move a boundary draw


@pytest.mark.parametrize("top_p, top_k, window", [(0.65, None, 2), (None, 2, 16)])
def test_sample_filtered_frequencies_match_the_filtered_probabilities(top_p, top_k, window):
    from tokenset_diffusers.utils.sampling import sample_filtered

    probs = torch.tensor([[[0.3, 0.05, 0.25, 0.1, 0.3], [0.9, 0.05, 0.05, 0.0, 0.0]]])
    n = 20000
    draws = sample_filtered(probs.expand(n, -1, -1), top_p, top_k, torch.Generator().manual_seed(0), window=window)
    frequency = torch.nn.functional.one_hot(draws, 5).float().mean(0)
    expected = filter_probs(probs, top_p=top_p, top_k=top_k)[0]
    if top_p is not None:  # the window of 2 does not hold row 0's top-p set; row 1's largest value passes alone
        assert (expected[0] > 0).sum() == 3 and (expected[1] > 0).sum() == 1
    bound = 5 * (expected * (1 - expected) / n).sqrt() + 1e-9
    assert ((frequency - expected).abs() <= bound).all()
    with pytest.raises(ValueError, match="top_p"):
        sample_filtered(probs)


@pytest.mark.parametrize("top_p, top_k", [(0.8, None), (0.3, None), (1.0, None), (None, 2), (0.9, 3)])
def test_filtered_draw_on_active_positions_equals_the_full_tensor(top_p, top_k):
    """A filtered x_t draw computes probabilities at the active positions only: the same draws as filtering and
    drawing the full (B, C, M) tensor with the same generator, which it advances alike."""
    from tokenset_diffusers.tokenset.set_ops import DiscretizedGaussian, active_positions, discretized_gaussian
    from tokenset_diffusers.utils.sampling import sample_filtered

    generator = torch.Generator().manual_seed(5)
    num_tokens = 12
    mean, std, sample, original = _sparse_transition(4, 200, num_tokens, generator)
    active = active_positions((sample != 0) | (original != 0))
    assert active is not None and active.shape[1] < 200 // 2
    streams = [torch.Generator().manual_seed(9) for _ in range(3)]
    full = sample_filtered(discretized_gaussian(mean, std, num_tokens), top_p, top_k, streams[0])
    sparse = DiscretizedGaussian(mean, std, num_tokens, active=active).sample_filtered(top_p, top_k, streams[1])
    dense = DiscretizedGaussian(mean, std, num_tokens).sample_filtered(top_p, top_k, streams[2])
    assert torch.equal(sparse, full) and torch.equal(dense, full)
    assert all(torch.equal(streams[0].get_state(), stream.get_state()) for stream in streams[1:])
    assert (full != mean.round()).any()  # the draws are not all modes: the test can tell draws apart


@pytest.mark.parametrize("chunk_size", [5, 32])
def test_discretized_gaussian_from_a_pair_table_equals_the_full_computation(chunk_size):
    """An FSDD transition depends only on the pair (z, x0): computing the normaliser and the inverse-CDF draw once
    per pair (binary search in the table's CDF) changes no probability, no draw, no adjustment, and advances the
    generator alike."""
    from tokenset_diffusers import FSDDScheduler
    from tokenset_diffusers.tokenset.set_ops import DiscretizedGaussian

    generator = torch.Generator().manual_seed(0)
    num_tokens = 12
    scheduler = FSDDScheduler(codebook_size=200, num_tokens=num_tokens)
    scheduler.set_timesteps(10)
    for index in (1, 6, 9):
        sample = sample_fixed_sum_noise(4, 200, num_tokens, generator=generator)
        original = torch.randint(0, 4, (4, 200), generator=generator) * (torch.rand(4, 200, generator=generator) < 0.5)
        mean, std = scheduler._transition_mean_std(sample, original, index)
        pairs = scheduler._transition_pairs(sample, original, index)
        assert pairs[1].shape == ((num_tokens + 1) ** 2,)
        full = DiscretizedGaussian(mean, std, num_tokens, chunk_size=chunk_size)
        table = DiscretizedGaussian(mean, std, num_tokens, chunk_size=chunk_size, pairs=pairs)
        assert torch.equal(table.normalizer, full.normalizer)
        assert torch.equal(table.probs(), full.probs())
        rows = torch.tensor([3, 0])
        assert torch.equal(table[rows].probs(), full[rows].probs())
        streams = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)]
        draws = [distribution.sample(stream) for distribution, stream in zip((full, table), streams)]
        assert torch.equal(draws[0], draws[1])
        assert torch.equal(streams[0].get_state(), streams[1].get_state())
        assert len(set(draws[0].flatten().tolist())) > 3  # the draws vary: the test can tell them apart
        for exact, total in ((False, num_tokens), (True, num_tokens), (True, 3 * num_tokens)):
            adjusted = [greedy_adjust(draws[0], distribution, total, exact) for distribution in (full, table)]
            assert torch.equal(adjusted[0], adjusted[1])
    assert scheduler._transition_pairs(sample[:1, :100], original[:1, :100], 1) is None  # fewer positions than pairs


def test_add_noise_with_the_accelerators_fixed_width_equals_the_full_computation(monkeypatch):
    """On accelerators `add_noise` gathers a fixed 2M positions (data and noise each sum to M, so no more are
    active) instead of reading the count back: the same draws as the CPU's width and as every position."""
    import tokenset_diffusers.tokenset.scheduling_fsdd as scheduling_fsdd
    import tokenset_diffusers.tokenset.set_ops as set_ops
    from tokenset_diffusers import FSDDScheduler

    num_tokens, codebook_size = 12, 200
    scheduler = FSDDScheduler(codebook_size=codebook_size, num_tokens=num_tokens)
    init = torch.Generator().manual_seed(0)
    data = sample_fixed_sum_noise(4, codebook_size, num_tokens // 3, generator=init) * 3
    noise = sample_fixed_sum_noise(4, codebook_size, num_tokens, generator=init)
    times = torch.rand(4, generator=init)
    widths, outputs = [], []
    find_active = set_ops.active_positions

    def spy(mask, bound=None):
        widths.append(None if (positions := find_active(mask, bound)) is None else positions.shape[1])
        return positions

    for way in ("cpu width", "fixed width", "every position"):
        monkeypatch.setattr(
            scheduling_fsdd, "active_positions", spy if way != "every position" else lambda *_, **__: None
        )
        if way == "fixed width":  # as on an accelerator: the count is not read
            monkeypatch.setattr(set_ops, "checks_values", lambda tensor: False)
        outputs.append(scheduler.add_noise(data, noise, times, generator=torch.Generator().manual_seed(1)))
        monkeypatch.undo()
    assert widths[0] < 2 * num_tokens and widths[1] == 2 * num_tokens
    assert torch.equal(outputs[0], outputs[2]) and torch.equal(outputs[1], outputs[2])
    assert (outputs[2] != data).any() and (outputs[2] != noise).any()

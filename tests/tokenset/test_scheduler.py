"""FSDDScheduler against the original's fixtures, exact enumerated distributions and the fixed-sum invariant."""

import ast
import inspect
import itertools
import re
from collections import Counter

import pytest
import torch
from helpers.scripts import load_script
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenset_diffusers import FSDDScheduler, FSDDSchedulerOutput
from tokenset_diffusers.tokenset.set_ops import (
    greedy_adjust,
    original_pdf_collapses,
    quantize_to_sum,
    sample_fixed_sum_noise,
)
from tokenset_diffusers.utils.sampling import filter_probs


M, C = 16, 64  # the fixtures' num_tokens and codebook_size


# ---------------------------------------------------------------- fixtures of the original


def test_sampling_loop_matches_original_step_by_step(fsdd_fixture):
    """Replays the fixture's 8-step run (every draw replaced by the mode) through the scheduler's pieces."""
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)  # defaults = the fixture's settings
    scheduler.set_timesteps(8)
    sample = fsdd_fixture["loop.z1"]
    for i, t in enumerate(scheduler.timesteps):
        probs = fsdd_fixture[f"loop.step{i}.x0_probs"]
        filtered = filter_probs(probs, top_p=scheduler.config.top_p)
        torch.testing.assert_close(filtered, fsdd_fixture[f"loop.step{i}.x0_filtered"], atol=1e-6, rtol=0)
        adjusted = bool(t >= scheduler.config.adjust_start)
        assert adjusted == bool(fsdd_fixture[f"loop.step{i}.x0_adjusted"])
        original = filtered.argmax(-1)
        if adjusted:
            original = greedy_adjust(original, probs, M)
        assert torch.equal(original, fsdd_fixture[f"loop.step{i}.x0"])

        transition = scheduler.transition_probs(sample, original, t)
        expected = fsdd_fixture[f"loop.step{i}.xt_pdf"]
        finite = ~expected.isnan()
        torch.testing.assert_close(transition[finite], expected[finite], atol=1e-6, rtol=0)
        # Where the original's float32 pdf is 0/0 (std ~ 1e-6 x a tiny sigma factor, mean off the integers), its
        # draw raises and it rounds the mean to the fixed sum: the rows are decided from the largest exponent alone.
        mean, std = scheduler._transition_mean_std(sample, original, i)
        collapsed = original_pdf_collapses(mean, std, M)
        assert torch.equal(collapsed, expected.isnan().flatten(1).any(-1)), f"step {i}"
        drawn = greedy_adjust(transition.argmax(-1), transition, M)
        sample = torch.where(collapsed[:, None], quantize_to_sum(mean, M), drawn)
        assert torch.equal(sample, fsdd_fixture[f"loop.step{i}.xt"]), f"step {i}"
    assert torch.equal(sample, fsdd_fixture["loop.final"])
    # The run exercised the original's 0/0 fallback at least once.
    assert any(fsdd_fixture[f"loop.step{i}.xt_pdf"].isnan().any() for i in range(8))


def test_training_noise_distribution_matches_original(fsdd_fixture):
    """add_noise draws from exactly the fixture's `train.pdf` (checked through the all-equal-std limit)."""
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)
    data, noise, t = fsdd_fixture["train.data"], fsdd_fixture["train.noise"], fsdd_fixture["train.t"]
    pdf = fsdd_fixture["train.pdf"]
    # Positions whose pdf is a point mass must get exactly that value before adjustment; draw many times and check
    # that the un-adjusted positions' frequencies match the pdf.
    n = 400
    draws = scheduler.add_noise(
        data.repeat(n, 1), noise.repeat(n, 1), t.repeat(n), generator=torch.Generator().manual_seed(0)
    ).view(n, 4, C)
    certain = pdf.max(-1).values > 0.999999
    assert (draws[:, certain] == pdf.argmax(-1)[certain]).float().mean() > 0.99
    assert (draws.sum(-1) == M).float().mean() > 0.9


def test_training_loss_formulation_matches_original(fsdd_fixture):
    logits, data = fsdd_fixture["train.logits"], fsdd_fixture["train.data"]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), data)
    torch.testing.assert_close(loss, fsdd_fixture["train.loss"], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- exact distributions by enumeration


def _enumerate_add_noise(scheduler, data, noise, t):
    """The exact output distribution of add_noise for one row, by enumerating every draw."""
    num_values = scheduler.config.num_tokens
    length = data.shape[1]
    time = torch.tensor([[t]])
    mean = time * data.float() + (1 - time) * noise.float()
    std = (noise - data).abs().float() / 4 + 1e-6
    from tokenset_diffusers.tokenset.set_ops import discretized_gaussian

    pdf = discretized_gaussian(mean, std, num_values)[0]  # (L, V)
    draws = torch.tensor(list(itertools.product(range(num_values), repeat=length)))  # (K, L)
    probability = pdf.gather(1, draws.T).T.prod(-1)  # (K,)
    adjusted = greedy_adjust(draws, pdf.expand(len(draws), -1, -1), num_values, exact=scheduler.config.exact_sum)
    exact = Counter()
    for row, p in zip(adjusted.tolist(), probability.tolist()):
        exact[tuple(row)] += p
    return exact


def _enumerate_step(scheduler, probs, sample, t):
    """The exact distribution of `step`'s prev_sample for one row, by enumerating x0 and x_t draws."""
    config = scheduler.config
    length, num_values = probs.shape[1], probs.shape[2]
    filtered = scheduler._filter(probs, config.x0_sampling)[0]  # (L, V)
    originals = torch.tensor(list(itertools.product(range(num_values), repeat=length)))  # (K, L)
    p_original = filtered.gather(1, originals.T).T.prod(-1)  # (K,)
    keep = p_original > 0
    originals, p_original = originals[keep], p_original[keep]
    if t >= config.adjust_start:
        originals = greedy_adjust(originals, probs.expand(len(originals), -1, -1), config.num_tokens, config.exact_sum)
    transition = scheduler.transition_probs(sample.expand(len(originals), -1), originals, t)  # (K, L, M)
    draw_filtered = scheduler._filter(transition, config.xt_sampling)
    draws = torch.tensor(list(itertools.product(range(config.num_tokens), repeat=length)))  # (D, L)
    p_draw = draw_filtered.gather(2, draws.T.expand(len(originals), -1, -1)).prod(1)  # (K, D)
    pairs_transition = transition.repeat_interleave(len(draws), 0)  # (K*D, L, M)
    pairs_draws = draws.repeat(len(originals), 1)  # (K*D, L)
    adjust_xt = config.xt_sampling == "multinomial" or t >= config.adjust_start or config.exact_sum
    if adjust_xt:
        pairs_draws = greedy_adjust(pairs_draws, pairs_transition, config.num_tokens, exact=config.exact_sum)
    probability = (p_original[:, None] * p_draw).flatten()
    exact = Counter()
    for row, p in zip(pairs_draws.tolist(), probability.tolist()):
        if p > 0:
            exact[tuple(row)] += p
    return exact


def _assert_frequencies_match(draws, exact, n):
    empirical = Counter(tuple(row) for row in draws.tolist())
    assert abs(sum(exact.values()) - 1) < 1e-5
    for outcome in set(empirical) | set(exact):
        p = exact.get(outcome, 0.0)
        frequency = empirical.get(outcome, 0) / n
        bound = 5 * (max(p * (1 - p), 1e-12) / n) ** 0.5 + 2e-3
        assert abs(frequency - p) <= bound, (outcome, frequency, p)


@pytest.mark.parametrize("exact_sum", [False, True])
def test_add_noise_draws_follow_their_distribution(exact_sum):
    scheduler = FSDDScheduler(codebook_size=3, num_tokens=4, top_k=2, exact_sum=exact_sum)
    data, noise = torch.tensor([[3, 1, 0]]), torch.tensor([[1, 1, 2]])
    n = 4000
    draws = scheduler.add_noise(
        data.expand(n, -1), noise.expand(n, -1), torch.full((n,), 0.4), generator=torch.Generator().manual_seed(1)
    )
    _assert_frequencies_match(draws, _enumerate_add_noise(scheduler, data, noise, 0.4), n)


@pytest.mark.parametrize(
    "x0_sampling, xt_sampling, exact_sum, step_index",
    [
        ("top_p", "multinomial", False, 1),  # released settings, before adjust_start
        ("top_p", "multinomial", False, 3),  # released settings, after adjust_start
        ("multinomial", "multinomial", True, 3),
        ("top_k", "top_k", False, 1),  # the "high quality" setting: x_t not adjusted early
        ("top_k", "top_p", True, 1),
    ],
)
def test_step_draws_follow_their_distribution(x0_sampling, xt_sampling, exact_sum, step_index):
    scheduler = FSDDScheduler(
        codebook_size=3,
        num_tokens=3,
        sigma_schedule="constant",
        x0_sampling=x0_sampling,
        xt_sampling=xt_sampling,
        top_k=2,
        top_p=0.7,
        exact_sum=exact_sum,
    )
    scheduler.set_timesteps(4)
    t = float(scheduler.timesteps[step_index])
    probs = torch.tensor([[[0.1, 0.5, 0.3, 0.1], [0.6, 0.3, 0.05, 0.05], [0.25, 0.25, 0.25, 0.25]]])
    sample = torch.tensor([[1, 1, 1]])
    n = 4000
    output = scheduler.step(
        probs.expand(n, -1, -1), t, sample.expand(n, -1), generator=torch.Generator().manual_seed(2)
    )
    _assert_frequencies_match(output.prev_sample, _enumerate_step(scheduler, probs, sample, t), n)


# ---------------------------------------------------------------- the exact fixed-sum mode


@st.composite
def step_cases(draw):
    codebook_size = draw(st.integers(2, 24))
    num_tokens = draw(st.integers(2, 10))
    batch_size = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["random", "flat", "all_max", "all_zero", "one_hot"]))
    steps = draw(st.integers(1, 6))
    step_index = draw(st.integers(0, steps - 1))
    start = draw(st.sampled_from(["noise", "concentrated"]))
    seed = draw(st.integers(0, 2**16))
    modes = (
        draw(st.sampled_from(["top_p", "top_k", "multinomial"])),
        draw(st.sampled_from(["top_p", "top_k", "multinomial"])),
    )
    return codebook_size, num_tokens, batch_size, kind, steps, step_index, start, seed, modes


def _adversarial_probs(kind, shape, generator):
    batch_size, length, num_values = shape
    if kind == "random":
        return torch.rand(shape, generator=generator).pow(4).softmax(-1)
    if kind == "flat":
        return torch.full(shape, 1.0 / num_values)
    index = {
        "all_max": torch.full((batch_size, length), num_values - 1),
        "all_zero": torch.zeros(batch_size, length, dtype=torch.long),
        "one_hot": torch.randint(0, num_values, (batch_size, length), generator=generator),
    }[kind]
    return torch.nn.functional.one_hot(index, num_values).float()


@settings(max_examples=150, deadline=None)
@given(step_cases())
def test_exact_sum_step_always_sums_to_num_tokens(case):
    codebook_size, num_tokens, batch_size, kind, steps, step_index, start, seed, (x0_mode, xt_mode) = case
    generator = torch.Generator().manual_seed(seed)
    scheduler = FSDDScheduler(
        codebook_size=codebook_size,
        num_tokens=num_tokens,
        exact_sum=True,
        x0_sampling=x0_mode,
        xt_sampling=xt_mode,
        top_k=min(2, num_tokens),
    )
    scheduler.set_timesteps(steps)
    if start == "noise" and num_tokens <= codebook_size:
        sample = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator)
    else:
        sample = torch.zeros(batch_size, codebook_size, dtype=torch.long)
        sample[:, 0] = num_tokens  # a count vector on one position, the far end of the range
    probs = _adversarial_probs(kind, (batch_size, codebook_size, num_tokens + 1), generator)
    output = scheduler.step(probs, scheduler.timesteps[step_index], sample, generator=generator)
    assert (output.prev_sample.sum(-1) == num_tokens).all()
    assert (output.prev_sample >= 0).all() and (output.prev_sample <= num_tokens).all()


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 24),
    st.integers(2, 10),
    st.integers(1, 3),
    st.floats(1e-5, 1.0),
    st.integers(0, 2**16),
    st.booleans(),
)
def test_exact_sum_add_noise_always_sums_to_num_tokens(codebook_size, num_tokens, batch_size, t, seed, concentrated):
    generator = torch.Generator().manual_seed(seed)
    scheduler = FSDDScheduler(codebook_size=codebook_size, num_tokens=num_tokens, exact_sum=True, top_k=2)
    data = torch.zeros(batch_size, codebook_size, dtype=torch.long)
    if concentrated:  # one position holds every token: the original overshoots here
        data[:, -1] = num_tokens
    else:
        data = data.scatter_add(
            1,
            torch.randint(0, codebook_size, (batch_size, num_tokens), generator=generator),
            torch.ones(batch_size, num_tokens, dtype=torch.long),
        )
    if num_tokens <= codebook_size:
        noise = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator)
    else:
        noise = data.flip(-1)
    noisy = scheduler.add_noise(data, noise, torch.full((batch_size,), t), generator=generator)
    assert (noisy.sum(-1) == num_tokens).all()


def test_original_mode_can_miss_the_sum_where_exact_does_not():
    # Two positions with wide transitions: a draw can miss the sum by more than the two single moves can undo.
    data = torch.tensor([[11, 1]]).repeat(64, 1)
    noise = data.flip(-1)
    t = torch.full((64,), 0.5)
    original = FSDDScheduler(codebook_size=2, num_tokens=12).add_noise(
        data, noise, t, torch.Generator().manual_seed(0)
    )
    exact = FSDDScheduler(codebook_size=2, num_tokens=12, exact_sum=True).add_noise(
        data, noise, t, torch.Generator().manual_seed(0)
    )
    assert (exact.sum(-1) == 12).all()
    assert (original.sum(-1) != 12).any()


# ---------------------------------------------------------------- reproducibility, API and errors


def test_same_seed_same_outputs_and_generator_lists():
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)
    scheduler.set_timesteps(5)
    probs = torch.rand(2, C, M + 1, generator=torch.Generator().manual_seed(0)).softmax(-1)
    sample = sample_fixed_sum_noise(2, C, M, generator=torch.Generator().manual_seed(1))
    for t in scheduler.timesteps:
        a = scheduler.step(probs, t, sample, generator=torch.Generator().manual_seed(7))
        b = scheduler.step(probs, t, sample, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(
            a.pred_original_sample, b.pred_original_sample
        )
        batch = scheduler.step(probs, t, sample, generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
        rows = [
            scheduler.step(probs[i : i + 1], t, sample[i : i + 1], generator=torch.Generator().manual_seed(s))
            for i, s in enumerate((3, 4))
        ]
        assert torch.equal(batch.prev_sample, torch.cat([r.prev_sample for r in rows]))
        sample = a.prev_sample
    data = sample_fixed_sum_noise(2, C, M, generator=torch.Generator().manual_seed(5))
    noise = sample_fixed_sum_noise(2, C, M, generator=torch.Generator().manual_seed(6))
    noisy = [
        scheduler.add_noise(data, noise, torch.tensor([0.3, 0.8]), generator=torch.Generator().manual_seed(9))
        for _ in range(2)
    ]
    assert torch.equal(*noisy)


def test_step_batch_size_one_and_tuple_output():
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)
    scheduler.set_timesteps(25)
    probs = torch.rand(1, C, M + 1).softmax(-1)
    sample = sample_fixed_sum_noise(1, C, M)
    output = scheduler.step(probs, scheduler.timesteps[20], sample)
    assert isinstance(output, FSDDSchedulerOutput) and output.prev_sample.shape == (1, C)
    prev_sample, original = scheduler.step(probs, scheduler.timesteps[20], sample, return_dict=False)
    assert prev_sample.dtype == torch.long and original.shape == (1, C)


def test_set_timesteps_grid():
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [0.0, 0.25, 0.5, 0.75]
    assert len(scheduler) == 4
    assert scheduler.sigma_scale(3) == pytest.approx(1 / (1 + torch.e**20))


def test_save_and_load_round_trip(tmp_path):
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M, x0_sampling="top_k", exact_sum=True, sigmoid_slope=50.0)
    scheduler.save_pretrained(tmp_path)
    loaded = FSDDScheduler.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    for s in (scheduler, loaded):
        s.set_timesteps(3)
    probs = torch.rand(2, C, M + 1, generator=torch.Generator().manual_seed(0)).softmax(-1)
    sample = sample_fixed_sum_noise(2, C, M, generator=torch.Generator().manual_seed(1))
    a = scheduler.step(probs, 0.0, sample, generator=torch.Generator().manual_seed(2)).prev_sample
    b = loaded.step(probs, 0.0, sample, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma_schedule": "sigmoid100_0.8"}, "sigma_schedule"),
        ({"x0_sampling": "topp"}, "x0_sampling"),
        ({"xt_sampling": "multimonial"}, "xt_sampling"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_invalid_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FSDDScheduler(codebook_size=C, num_tokens=M, **kwargs)


def test_invalid_step_arguments_raise():
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)
    probs = torch.rand(2, C, M + 1).softmax(-1)
    sample = sample_fixed_sum_noise(2, C, M)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(probs, 0.0, sample)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="model_output"):
        scheduler.step(probs[:, :, :M], 0.0, sample)
    with pytest.raises(ValueError, match="NaN"):
        scheduler.step(torch.full_like(probs, float("nan")), 0.0, sample)
    with pytest.raises(ValueError, match="logits"):
        scheduler.step(probs - 1, 0.0, sample)
    with pytest.raises(ValueError, match="timestep"):
        scheduler.step(probs, 0.3, sample)
    with pytest.raises(ValueError, match="sample"):
        scheduler.step(probs, 0.0, sample.float())
    with pytest.raises(ValueError, match="sample"):
        scheduler.step(probs, 0.0, sample[:, :10])


def test_exact_mode_requires_fixed_sum_input_and_add_noise_checks():
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M, exact_sum=True)
    scheduler.set_timesteps(4)
    probs = torch.rand(1, C, M + 1).softmax(-1)
    with pytest.raises(ValueError, match="sum"):
        scheduler.step(probs, 0.0, torch.zeros(1, C, dtype=torch.long))
    data = sample_fixed_sum_noise(2, C, M)
    with pytest.raises(ValueError, match="sum"):
        scheduler.add_noise(data * 0, data, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="timesteps"):
        scheduler.add_noise(data, data, torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="timesteps"):
        scheduler.add_noise(data, data, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="noise"):
        scheduler.add_noise(data, data[:1], torch.tensor([0.5, 0.5]))


def test_documented_defaults_equal_real_defaults():
    documented = dict(re.findall(r"^\s+(\w+) \(`[^`]*`, defaults to (.+?)\):", FSDDScheduler.__doc__, re.M))
    signature = inspect.signature(FSDDScheduler.__init__).parameters
    assert set(documented) == set(signature) - {"self"}
    for name, text in documented.items():
        assert ast.literal_eval(text.strip("`")) == signature[name].default, name


# ---------------------------------------------------------------- the fast path against the baseline path


def _model_like_probs(batch_size, codebook_size, num_tokens, generator):
    """Probabilities shaped like a trained model's: confident about a token set, with some spread."""
    target = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator)
    logits = torch.randn(batch_size, codebook_size, num_tokens + 1, generator=generator) * 2
    logits.scatter_add_(-1, target[..., None], torch.full_like(logits[..., :1], 4.0))
    logits[..., 0] += 3.0
    return logits.softmax(-1)


@pytest.mark.parametrize(
    "exact_sum, x0_sampling, xt_sampling",
    [
        (False, "top_p", "multinomial"),
        (True, "top_p", "multinomial"),
        (False, "multinomial", "multinomial"),
        (True, "multinomial", "multinomial"),
        (False, "top_k", "top_p"),
        (True, "top_p", "top_p"),
    ],
)
def test_step_equals_the_baseline_full_tensor_path(exact_sum, x0_sampling, xt_sampling):
    """`step` never builds the (B, C, M) transition tensor (a filtered x_t draw builds it at the active positions
    only); with the same generator it draws what the baseline path (full tensor, as the original) draws, at every
    step of a sampling run. (Top-k x_t draws are not compared: where the second and third most likely values are
    within float32 rounding of each other, the original's pdf and the softmax can order them differently.)"""
    baseline = load_script("benchmarks/baseline.py")
    codebook_size, num_tokens, batch_size = 96, 24, 6
    scheduler = FSDDScheduler(
        codebook_size=codebook_size,
        num_tokens=num_tokens,
        exact_sum=exact_sum,
        x0_sampling=x0_sampling,
        xt_sampling=xt_sampling,
        top_k=2,
    )
    scheduler.set_timesteps(12)
    init = torch.Generator().manual_seed(0)
    sample = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=init)
    differing = 0
    for t in scheduler.timesteps:
        probs = _model_like_probs(batch_size, codebook_size, num_tokens, init)
        fast = scheduler.step(probs, t, sample, generator=torch.Generator().manual_seed(1), return_dict=False)
        reference = baseline.baseline_step(scheduler, probs, t, sample, generator=torch.Generator().manual_seed(1))
        assert torch.equal(fast[1], reference[1])  # x0: same draw
        differing += int((fast[0] != reference[0]).sum())  # float32 rounding may flip a boundary draw, rarely
        sample = reference[0]
        if exact_sum:
            assert (fast[0].sum(-1) == num_tokens).all()
    assert differing <= 2, f"{differing} of {12 * batch_size * codebook_size} draws differ"


def test_add_noise_equals_the_full_tensor_draw():
    """`add_noise` through `DiscretizedGaussian` == the full (B, C, M) tensor's inverse-CDF draw and adjustment."""
    from tokenset_diffusers.tokenset.set_ops import discretized_gaussian
    from tokenset_diffusers.utils.sampling import sample_categorical

    codebook_size, num_tokens, batch_size = 128, 32, 16
    scheduler = FSDDScheduler(codebook_size=codebook_size, num_tokens=num_tokens)
    init = torch.Generator().manual_seed(3)
    data = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens // 4, generator=init) * 4
    noise = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=init)
    t = torch.rand(batch_size, generator=init).clamp(min=1e-5)
    fast = scheduler.add_noise(data, noise, t, generator=torch.Generator().manual_seed(4))
    time = t[:, None]
    pdf = discretized_gaussian(time * data + (1 - time) * noise, (noise - data).abs() / 4 + 1e-6, num_tokens)
    reference = greedy_adjust(sample_categorical(pdf, torch.Generator().manual_seed(4)), pdf, num_tokens)
    assert (fast != reference).sum() <= 1


@pytest.mark.parametrize("xt_sampling", ["multinomial", "top_p"])
def test_step_and_add_noise_never_read_device_values(xt_sampling):
    """No host-device synchronisation: on the meta device every data-dependent read (`.item()`, `bool(tensor)`,
    `.tolist()`) raises, so a step that completes there never waits for an accelerator."""
    scheduler = FSDDScheduler(codebook_size=64, num_tokens=8, xt_sampling=xt_sampling)
    scheduler.set_timesteps(5)
    probs = torch.rand(3, 64, 9, device="meta")
    sample = torch.zeros(3, 64, dtype=torch.long, device="meta")
    for t in scheduler.timesteps:
        sample = scheduler.step(probs, t, sample).prev_sample
    assert sample.shape == (3, 64) and sample.device.type == "meta"
    noisy = scheduler.add_noise(sample, sample, torch.rand(3, device="meta"))
    assert noisy.shape == (3, 64)
    with pytest.raises(RuntimeError, match="meta"):  # the detector works: a value read fails on meta
        bool((sample > 0).any())


def test_step_memory_is_linear_in_batch_times_codebook():
    """The x_t draw and adjustment of a step hold O(B x C) memory (the baseline path: several (B, C, M) tensors),
    measured by the benchmark's live-tensor tracker on the meta device at the released size."""
    bench = load_script("benchmarks/bench_sampling.py")
    scheduler = FSDDScheduler()  # C = 4096, M = 128
    scheduler.set_timesteps(25)
    batch_size, codebook_size, num_tokens = 4, 4096, 128
    probs = torch.rand(batch_size, codebook_size, num_tokens + 1, device="meta")
    sample = torch.zeros(batch_size, codebook_size, dtype=torch.long, device="meta")
    peaks = bench.step_peaks(scheduler, probs, sample, scheduler.timesteps[20], 20)
    full_transition = batch_size * codebook_size * num_tokens * 4  # bytes of one float32 (B, C, M) tensor
    assert peaks["xt_baseline"] >= 2 * full_transition
    assert peaks["xt_fast"] <= batch_size * codebook_size * 64 * 4  # a few dozen floats per position
    assert peaks["step_fast"] <= peaks["step_baseline"]


@pytest.mark.parametrize("exact_sum", [False, True])
@pytest.mark.parametrize("xt_sampling", ["multinomial", "top_p", "top_k"])
def test_step_on_active_positions_or_pairs_equals_every_position(monkeypatch, exact_sum, xt_sampling):
    """Working on the active positions only (where z or x0 is non-zero; the CPU's way), or once per pair (z, x0) of
    counts (the accelerators' way), changes no draw of a sampling run, in any x_t mode: the same samples as computing
    every position, with the same generator."""
    import tokenset_diffusers.tokenset.scheduling_fsdd as scheduling_fsdd

    codebook_size, num_tokens, batch_size = 160, 16, 5
    scheduler = FSDDScheduler(
        codebook_size=codebook_size, num_tokens=num_tokens, exact_sum=exact_sum, xt_sampling=xt_sampling, top_k=2
    )
    scheduler.set_timesteps(10)
    find_active, find_pairs = scheduling_fsdd.active_positions, FSDDScheduler._transition_pairs
    used = {"active": 0, "pairs": 0}

    def counting(name, function):
        def wrapper(*args):
            result = function(*args)
            used[name] += result is not None
            return result

        return wrapper

    runs = []
    for way in ("active", "pairs", "every position"):
        monkeypatch.setattr(
            scheduling_fsdd, "active_positions", counting("active", find_active) if way == "active" else lambda _: None
        )
        monkeypatch.setattr(
            FSDDScheduler, "_transition_pairs", counting("pairs", find_pairs) if way == "pairs" else lambda *_: None
        )
        init, generator = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        sample = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=init)
        samples = []
        for t in scheduler.timesteps:
            probs = _model_like_probs(batch_size, codebook_size, num_tokens, init)
            sample = scheduler.step(probs, t, sample, generator=generator).prev_sample
            samples.append(sample)
        runs.append(torch.stack(samples))
        monkeypatch.undo()
    assert used["active"] >= 5 and used["pairs"] == 10  # each way was taken
    assert torch.equal(runs[0], runs[2]) and torch.equal(runs[1], runs[2])

"""Bad inputs to the scheduler and the set operations fail at once with a message naming the argument, the value and
what is allowed, instead of a silently wrong result or a traceback from deep inside."""

import math
import re

import numpy as np
import pytest
import torch

from tokenset_diffusers.metrics import FeatureStatistics, frechet_distance, inception_score, precision_recall
from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler
from tokenset_diffusers.tokenset.set_ops import (
    DiscretizedGaussian,
    counts_to_tokens,
    discretized_gaussian,
    quantize_to_sum,
)


C, M = 6, 4


def scheduler_and_inputs(**config):
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M, **config)
    scheduler.set_timesteps(4)
    sample = torch.tensor([[1, 1, 1, 1, 0, 0], [4, 0, 0, 0, 0, 0]])
    probs = torch.rand(2, C, M + 1, generator=torch.Generator().manual_seed(0)).softmax(-1)
    return scheduler, sample, probs


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("sigmoid_slope", float("nan"), r"a finite number > 0.0"),
        ("sigmoid_slope", 0.0, r"a finite number > 0.0"),
        ("sigmoid_midpoint", float("inf"), "a finite number"),
        ("adjust_start", float("nan"), r"a finite number in \[0.0, 1.0\]"),
        ("adjust_start", 1.5, r"a finite number in \[0.0, 1.0\]"),
        ("adjust_start", "0.5", r"a finite number in \[0.0, 1.0\]"),
        ("exact_sum", "yes", "True or False"),
        ("exact_sum", 1, "True or False"),
        ("top_p", float("nan"), r"a finite number in \(0.0, 1.0\]"),
        ("top_p", True, r"a finite number in \(0.0, 1.0\]"),
        ("top_k", 2.0, r"an integer in \[1, num_tokens=4\]"),
        ("top_k", 5, r"an integer in \[1, num_tokens=4\]"),
        ("codebook_size", True, "an integer >= 1"),
        ("codebook_size", 6.0, "an integer >= 1"),
        ("num_tokens", 0, "an integer >= 1"),
        ("sigma_schedule", "cosine", r"one of \('sigmoid', 'constant'\)"),
        ("x0_sampling", None, r"one of \('top_p', 'top_k', 'multinomial'\)"),
    ],
)
def test_scheduler_config_fields_are_checked(name, value, allowed):
    config = {"codebook_size": C, "num_tokens": M, name: value}
    described = f"{type(value).__name__} {value!r}"  # the message shows the type and the value
    with pytest.raises(ValueError, match=rf"`{name}` must be {allowed}, got {re.escape(described)}\."):
        FSDDScheduler(**config)


def test_valid_configs_still_build():
    FSDDScheduler(codebook_size=C, num_tokens=M, sigmoid_slope=100, adjust_start=1, top_p=1, top_k=M, exact_sum=True)


@pytest.mark.parametrize(
    "make_probs, message",
    [
        (lambda p: torch.randn_like(p).abs() * 3, "sum to 1 within 0.01, got row sums from"),  # all-positive scores
        (lambda p: p.index_fill(-1, torch.tensor([0]), float("inf")), "sum to 1 within 0.01"),
        (lambda p: torch.zeros_like(p), r"sum to 1 within 0.01, got row sums from 0.0 to 0.0"),
        (lambda p: p * 0.5, "sum to 1 within 0.01"),
        (lambda p: p - 0.5, "did you pass logits"),
        (lambda p: p.index_fill(-1, torch.tensor([1]), float("nan")), "contains NaN"),
        (lambda p: p.to(torch.complex64), "real floating-point tensor"),
        (lambda p: (p * 100).long(), "real floating-point tensor"),
    ],
)
def test_step_rejects_what_is_not_probabilities(make_probs, message):
    scheduler, sample, probs = scheduler_and_inputs()
    with pytest.raises(ValueError, match=rf"`model_output` .*{message}"):
        scheduler.step(make_probs(probs), scheduler.timesteps[1], sample)


def test_step_accepts_softmax_rounding():
    scheduler, sample, probs = scheduler_and_inputs()
    rounded = probs.bfloat16()  # rows sum to 1 only up to bf16 rounding
    scheduler.step(rounded, scheduler.timesteps[1], sample, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "timestep, shown",
    [
        (torch.tensor([0.25, 0.5]), r"a tensor of shape \(2,\)"),
        (torch.tensor(float("nan")), "got nan"),
        (float("nan"), "got nan"),
        (float("inf"), "got inf"),
        (True, "got True"),
        ("0.25", "got '0.25'"),
        (0.3, r"=0.3 is not one of the 4 sampling times"),
    ],
)
def test_step_rejects_bad_timesteps(timestep, shown):
    scheduler, sample, probs = scheduler_and_inputs()
    with pytest.raises(ValueError, match=rf"`timestep`.*{shown}"):
        scheduler.step(probs, timestep, sample)


def test_one_element_timestep_tensors_still_work():
    scheduler, sample, probs = scheduler_and_inputs()
    for timestep in (torch.tensor(0.25), torch.tensor([0.25]), 0.25):
        output = scheduler.step(probs, timestep, sample, generator=torch.Generator().manual_seed(0))
        assert output.prev_sample.shape == sample.shape


@pytest.mark.parametrize(
    "counts, message",
    [
        (
            torch.tensor([[float("inf"), 0.0, 0.0, 4.0]]),
            r"finite counts at most num_tokens=4, got values in \[0.0, 4.0\] and 1 NaN/inf",
        ),
        (
            torch.tensor([[1e30, 0.0, 0.0, 0.0]]),
            r"finite counts at most num_tokens=4, got values in \[0.0, 1.0\d*e\+30\]",
        ),
        (torch.tensor([[2**62, 0, 0, 0]]), "finite counts at most num_tokens=4"),
        (torch.tensor([[-float("inf"), 4.0, 0.0, 0.0]]), "1 NaN/inf"),
        (torch.zeros(1, 2), r"rows must make num_tokens=4 tokens .* got row totals \[2\] from a codebook of 2"),
    ],
)
def test_counts_to_tokens_never_returns_ids_outside_the_codebook(counts, message):
    with pytest.raises(ValueError, match=rf"`counts` {'must hold ' if 'finite' in message else ''}.*{message}"):
        counts_to_tokens(counts, M)


def test_counts_to_tokens_arguments():
    with pytest.raises(ValueError, match=r"`num_tokens` must be an integer >= 1, got float 4.0"):
        counts_to_tokens(torch.tensor([[4, 0]]), 4.0)
    with pytest.raises(ValueError, match="`counts` must be a real tensor, got dtype torch.complex64"):
        counts_to_tokens(torch.zeros(1, 4, dtype=torch.complex64), M)
    tokens = counts_to_tokens(torch.tensor([[-1.0, 2.6, 1.2, 0.3]]), M)  # documented rounding still works
    assert tokens.tolist() == [[1, 1, 1, 2]]


@pytest.mark.parametrize(
    "values, message",
    [
        (torch.tensor([[float("nan"), 1.0]]), r"got values in \[1.0, 1.0\] and 1 NaN/inf"),
        (torch.tensor([[float("inf"), 1.0]]), "NaN/inf"),
        (torch.tensor([[-0.5, 3.0]]), r"got values in \[-0.5, 3.0\]"),
        (torch.tensor([[1e20, 3.0]]), r"at most 2\*\*31"),
    ],
)
def test_quantize_to_sum_rejects_values_it_cannot_round(values, message):
    with pytest.raises(ValueError, match=rf"`values` must hold finite non-negative values .*{message}"):
        quantize_to_sum(values, 3)


def test_quantize_to_sum_arguments():
    with pytest.raises(ValueError, match=r"`total` must be an integer >= 0, got int -1"):
        quantize_to_sum(torch.ones(1, 3), -1)
    with pytest.raises(ValueError, match=r"`total` must be an integer >= 0, got float 2.5"):
        quantize_to_sum(torch.ones(1, 3), 2.5)
    assert quantize_to_sum(torch.tensor([[0.4, 1.6, 1.0]]), 3).sum().item() == 3


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan"), float("inf")])
def test_discretized_gaussian_needs_a_positive_std(std):
    mean, stds = torch.full((1, 3), 1.5), torch.tensor([[1.0, std, 1.0]])
    with pytest.raises(ValueError, match=r"`std` must hold finite positive stds, got values in"):
        DiscretizedGaussian(mean, stds, 4)
    with pytest.raises(ValueError, match=r"`std` must hold finite positive stds"):
        discretized_gaussian(mean, stds, 4)


def test_discretized_gaussian_arguments():
    ones = torch.ones(1, 3)
    with pytest.raises(ValueError, match=r"`mean` must hold finite means, got values in \[1.0, 1.0\] and 1 NaN/inf"):
        DiscretizedGaussian(torch.tensor([[1.0, float("nan"), 1.0]]), ones, 4)
    with pytest.raises(ValueError, match=r"`num_values` must be an integer >= 1, got int 0"):
        DiscretizedGaussian(ones, ones, 0)
    draw = DiscretizedGaussian(ones, torch.full((1, 3), 1e-6), 4).sample(generator=torch.Generator().manual_seed(0))
    assert draw.tolist() == [[1, 1, 1]] and not math.isnan(float(draw.sum()))


# ------------------------------------------------------------------------------------------------------- metrics


def test_precision_recall_rejects_non_finite_features():
    real, fake = torch.randn(8, 3), torch.randn(8, 3)
    fake[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"`fake_features` must be finite, got 1 NaN or infinite entries"):
        precision_recall(real, fake)
    real[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"`real_features` must be finite, got 1 NaN"):
        precision_recall(real.numpy(), fake.nan_to_num().numpy())
    with pytest.raises(ValueError, match=r"`real_features` must hold real numbers, got dtype torch.complex64"):
        precision_recall(torch.randn(8, 3, dtype=torch.complex64), fake)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_inception_score_rejects_non_finite_logits(bad):
    logits = torch.randn(10, 4)
    logits[3, 2] = bad
    with pytest.raises(ValueError, match=r"`logits` must be finite, got 1 NaN or infinite entries"):
        inception_score(logits, splits=2)


def test_frechet_distance_rejects_non_covariances_and_complex_input():
    mu, sigma = np.zeros(3), np.eye(3)
    not_psd = np.diag([1.0, -0.5, 1.0])
    with pytest.raises(
        ValueError, match=r"`sigma2` must be a positive semi-definite covariance matrix, got an eigenvalue of -0.5"
    ):
        frechet_distance(mu, sigma, mu, not_psd)
    with pytest.raises(ValueError, match=r"`mu1` must hold real numbers, got dtype complex128"):
        frechet_distance(mu.astype(complex), sigma, mu, sigma)
    with pytest.raises(ValueError, match=r"`sigma1` must hold real numbers, got dtype torch.complex128"):
        frechet_distance(mu, torch.eye(3, dtype=torch.complex128), mu, sigma)
    with pytest.raises(ValueError, match=r"`mu2` must hold real numbers, got dtype <U1"):
        frechet_distance(mu, sigma, np.array(["a", "b", "c"]), sigma)
    features = np.random.default_rng(0).normal(size=(2, 3))  # rank-deficient covariance: still accepted
    assert frechet_distance(mu, np.cov(features.T), mu, sigma) >= 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mean": np.array([0.0, np.nan])}, r"`state\['mean'\]` must be finite, got 1 NaN"),
        ({"scatter": np.full((2, 2), np.inf)}, r"`state\['scatter'\]` must be finite, got 4 NaN"),
        ({"num_samples": -3}, r"`state\['num_samples'\]` must be an integer >= 0, got -3"),
        ({"num_samples": 2.5}, r"`state\['num_samples'\]` must be an integer >= 0, got 2.5"),
        ({"scatter": np.eye(3)}, r"must have shapes \(D,\) and \(D, D\), got \(2,\) and \(3, 3\)"),
    ],
)
def test_feature_statistics_state_is_checked(change, message):
    state = FeatureStatistics(2).update(np.random.default_rng(0).normal(size=(5, 2))).state_dict()
    FeatureStatistics.from_state_dict(state)
    with pytest.raises(ValueError, match=message):
        FeatureStatistics.from_state_dict({**state, **change})
    with pytest.raises(ValueError, match=r"`state` must be a dict with 'num_samples', 'mean' and 'scatter'"):
        FeatureStatistics.from_state_dict({"mean": state["mean"]})

"""The released sampler reproduced in distribution: 2,000 count vectors of class 7 from the pipeline built on the
converted tiny DiT against 2,000 from the original sampler on the same weights
(`fixtures/fsdd_tiny.sampler_distributions.safetensors`), per codebook position, on the row sums and on the number of
non-zero positions, with chi-square contingency tests; and the exact mode's position symmetry."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from scipy.stats import chi2_contingency

from tokenset_diffusers import FSDDScheduler, TokenSetPipeline
from tokenset_diffusers.tokenset.set_ops import sample_fixed_sum_noise


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conversion"))
from tokenizer_conversion import convert_tokenizer  # noqa: E402
from transformer_conversion import convert_transformer  # noqa: E402


C, M = 64, 16
NUM_SAMPLES = 2000
P_MIN = 1e-6
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fsdd_tiny.sampler_distributions.safetensors"
# The original's settings, as the fixture's metadata names them, in the scheduler's terms.
SETTINGS = {
    "default_n25": dict(steps=25, x0_sampling="top_p", xt_sampling="multinomial", adjust_start=0.65),
    "default_n10": dict(steps=10, x0_sampling="top_p", xt_sampling="multinomial", adjust_start=0.65),
    "topk2_n25": dict(steps=25, x0_sampling="top_k", xt_sampling="top_k", adjust_start=1.0, top_k=2),
}


def contingency_p_values(first: torch.Tensor, second: torch.Tensor) -> dict[str, float]:
    """Chi-square contingency p-values of two samples of count vectors `(N, C)`: one per codebook position (the
    distribution of its count), one for the row sums and one for the number of non-zero positions per row."""

    def p_value(a: torch.Tensor, b: torch.Tensor) -> float:
        values = torch.cat([a, b]).unique()
        if len(values) < 2:
            return 1.0  # one value in both samples: nothing to tell apart
        table = np.stack([(a[:, None] == values).sum(0).numpy(), (b[:, None] == values).sum(0).numpy()])
        return float(chi2_contingency(table)[1])

    p_values = {f"position {j}": p_value(first[:, j], second[:, j]) for j in range(first.shape[1])}
    p_values["row sums"] = p_value(first.sum(-1), second.sum(-1))
    p_values["non-zero positions"] = p_value((first > 0).sum(-1), (second > 0).sum(-1))
    return p_values


@pytest.fixture(scope="module")
def tiny_pipeline(tokenizer_original_state_dict, dit_original_state_dict):
    image_tokenizer = convert_tokenizer(tokenizer_original_state_dict, num_attention_heads=4).eval()
    transformer = convert_transformer(dit_original_state_dict, num_attention_heads=4).eval()
    pipe = TokenSetPipeline(image_tokenizer, transformer, FSDDScheduler(codebook_size=C, num_tokens=M))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_setting(pipe: TokenSetPipeline, setting: str, seed: int, **overrides) -> torch.LongTensor:
    options = {**SETTINGS[setting], **overrides}
    steps = options.pop("steps")
    pipe.scheduler = FSDDScheduler(codebook_size=C, num_tokens=M, **options)
    output = pipe(
        [7] * NUM_SAMPLES,
        num_inference_steps=steps,
        guidance_scale=(4.0, 50.0, 55.0),
        generator=torch.Generator().manual_seed(seed),
        output_type="counts",
    )
    return output.counts


def test_fixture_settings_are_the_ones_tested():
    with safe_open(FIXTURE, "pt") as handle:
        metadata = handle.metadata()
    settings = json.loads(metadata["settings"])
    assert (int(metadata["codebook_size"]), int(metadata["num_tokens"]), metadata["class_label"]) == (C, M, "7")
    assert metadata["sigma_schedule"] == "sigmoid100_0.8" and metadata["guidance"].startswith("interval 4_50_55")
    names = {"topp": "top_p", "topk": "top_k", "multimonial": "multinomial"}
    for name, setting in settings.items():
        ours = SETTINGS[name]
        assert ours["steps"] == setting["num_steps"] and ours["adjust_start"] == setting["adjust_step"]
        assert (ours["x0_sampling"], ours["xt_sampling"]) == (names[setting["sample_x0"]], names[setting["sample_xt"]])
        assert ours.get("top_k", 2) == (setting["top_k"] or 2)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_pipeline_samples_the_original_distribution(tiny_pipeline, setting):
    reference = load_file(FIXTURE)[f"{setting}.final"].long()
    assert reference.shape == (NUM_SAMPLES, C)
    ours = sample_setting(tiny_pipeline, setting, seed=2024)
    if setting != "topk2_n25":  # the top-k setting never adjusts, and its last draw (x_t = x0) misses the sum
        assert (ours.sum(-1) == M).float().mean() > 0.9
    p_values = contingency_p_values(ours, reference)
    worst = min(p_values, key=p_values.get)
    assert p_values[worst] > P_MIN, (
        f"{setting}: {worst} differs from the original's samples (p = {p_values[worst]:.3g})"
    )


def test_the_distribution_test_detects_the_point_mass_variant(tiny_pipeline, monkeypatch):
    """The test above can fail: the earlier sampler (a point mass on the nearest value where the Gaussian has
    collapsed, then the one-shot adjustment) is told apart from the original at once."""
    from tokenset_diffusers import scheduling_fsdd

    no_collapse = lambda mean, std, num_values: torch.zeros(mean.shape[0], dtype=torch.bool)  # noqa: E731
    monkeypatch.setattr(scheduling_fsdd, "original_pdf_collapses", no_collapse)
    reference = load_file(FIXTURE)["default_n10.final"].long()
    p_values = contingency_p_values(sample_setting(tiny_pipeline, "default_n10", seed=2024), reference)
    assert min(p_values.values()) < 1e-12


# ---------------------------------------------------------------- the exact mode favours no position


def _run_fixed_output(scheduler: FSDDScheduler, probs: torch.Tensor, batch_size: int, seed: int) -> torch.LongTensor:
    """A whole sampling run whose "model" returns the same `probs` `(C, M+1)` at every step."""
    config = scheduler.config
    generator = torch.Generator().manual_seed(seed)
    sample = sample_fixed_sum_noise(batch_size, config.codebook_size, config.num_tokens, generator=generator)
    for t in scheduler.timesteps:
        sample = scheduler.step(probs.expand(batch_size, -1, -1), t, sample, generator=generator).prev_sample
    return sample


def _symmetric_probs(codebook_size: int, num_tokens: int) -> torch.Tensor:
    """The same distribution at every position, with mean count num_tokens / codebook_size (so that sums must be
    adjusted, and equal gains are everywhere)."""
    probs = torch.zeros(num_tokens + 1)
    probs[:3] = torch.tensor([0.78, 0.17, 0.05])
    return probs.expand(codebook_size, -1)


def _position_uniformity_p_value(samples: torch.LongTensor) -> float:
    """Chi-square contingency of the count distribution across positions (rows: positions, columns: counts)."""
    values = samples.unique()
    table = np.stack([(samples[:, j, None] == values).sum(0).numpy() for j in range(samples.shape[1])])
    table = table[:, table.sum(0) > 0]
    return float(chi2_contingency(table)[1])


def test_exact_mode_favours_no_codebook_position():
    codebook_size, num_tokens = 16, 4
    scheduler = FSDDScheduler(codebook_size=codebook_size, num_tokens=num_tokens, exact_sum=True)
    scheduler.set_timesteps(25)
    samples = _run_fixed_output(scheduler, _symmetric_probs(codebook_size, num_tokens), 4000, seed=0)
    assert (samples.sum(-1) == num_tokens).all()
    assert _position_uniformity_p_value(samples) > P_MIN
    # ... where the original's rule, ties broken by position, does favour some (the check can fail).
    original = FSDDScheduler(codebook_size=codebook_size, num_tokens=num_tokens)
    original.set_timesteps(25)
    biased = _run_fixed_output(original, _symmetric_probs(codebook_size, num_tokens), 4000, seed=0)
    assert _position_uniformity_p_value(biased) < 1e-12


def test_exact_mode_permuting_the_codebook_permutes_the_samples():
    codebook_size, num_tokens = 12, 6
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(codebook_size, num_tokens + 1, generator=generator) * 1.5
    logits[:, 0] += 2.5
    probs = logits.softmax(-1)
    permutation = torch.randperm(codebook_size, generator=generator)
    scheduler = FSDDScheduler(codebook_size=codebook_size, num_tokens=num_tokens, exact_sum=True)
    scheduler.set_timesteps(25)
    plain = _run_fixed_output(scheduler, probs, 3000, seed=1)
    permuted = _run_fixed_output(scheduler, probs[permutation], 3000, seed=2)
    # Position j of the permuted run is position permutation[j] of the plain run.
    p_values = contingency_p_values(permuted, plain[:, permutation])
    assert min(p_values.values()) > P_MIN, min(p_values.items(), key=lambda item: item[1])


def test_the_original_falls_back_at_the_measured_steps():
    """docs/tokenset.md#late-step-fallback: with the released schedule the original's batch falls back at steps 21, 22
    and 23 of 25, at no other step; the scheduler's schedule-only rule says the same."""
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)
    scheduler.set_timesteps(25)
    assert [i for i in range(25) if scheduler.collapses_at(i)] == [21, 22, 23]
    constant = FSDDScheduler(codebook_size=C, num_tokens=M, sigma_schedule="constant")
    constant.set_timesteps(25)
    assert not any(constant.collapses_at(i) for i in range(25))

"""The fast sampling path against the original's way (the benchmarks' baseline): the channel head's KV cache and the
batched guidance pass change nothing but the speed.

- the head with and without its KV cache: the same logits (float rounding) and, from the same generator, the same
  tokens, greedy and at temperature 1, on the fixture model and on a deeper random head;
- the pipeline against `benchmarks/baseline_tokenbridge.py` (two guidance passes, no cache): the same indices for the
  same generators, and the same images.
"""

import sys
from pathlib import Path

import pytest
import torch
from helpers.tokenbridge import load_fixture, single_thread, tiny_transformer, tiny_vae  # noqa: F401

from tokenset_diffusers import MaskedARScheduler, TokenBridgePipeline, TokenBridgeTransformer2DModel


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from baseline_tokenbridge import baseline_images, baseline_sample_indices  # noqa: E402


def deep_head_model() -> TokenBridgeTransformer2DModel:
    """Random weights, a 3-block head with 4 heads, moved off the zero-initialised adaLN layers."""
    torch.manual_seed(0)
    model = TokenBridgeTransformer2DModel(
        sample_size=2, latent_channels=6, num_classes=3, buffer_size=2, encoder_hidden_size=16, encoder_num_layers=1,
        decoder_hidden_size=16, decoder_num_layers=1, num_attention_heads=2, head_hidden_size=32, head_num_layers=3,
        head_num_attention_heads=4, quantizer_bits=3, channel_order=[3, 0, 5, 1, 4, 2],
    )  # fmt: skip
    with torch.no_grad():
        for parameter in model.channel_head.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


@pytest.fixture(scope="module", params=["fixture", "deep_head"])
def model_and_features(request):
    if request.param == "fixture":
        model = tiny_transformer().eval()
        features = load_fixture("tokenbridge_tiny.io.safetensors")["head.condition"]
    else:
        model = deep_head_model()
        features = torch.randn(8, model.config.decoder_hidden_size)
    return model, features


@torch.no_grad()
def test_cache_gives_the_same_greedy_tokens_and_logits(model_and_features):
    model, features = model_and_features
    cached, cached_logits = model.sample_channels(features, temperature=0.0, return_logits=True)
    full, full_logits = model.sample_channels(features, temperature=0.0, return_logits=True, use_cache=False)
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_cache_gives_the_same_draws_at_temperature_one(model_and_features):
    model, features = model_and_features
    features = features.repeat(250, 1)  # (250 x rows, D)
    cached = model.sample_channels(features, temperature=1.0, generator=torch.Generator().manual_seed(5))
    full = model.sample_channels(
        features, temperature=1.0, generator=torch.Generator().manual_seed(5), use_cache=False
    )
    assert torch.equal(cached, full)
    assert len(torch.unique(cached, dim=0)) > 1  # the draws do vary: the test compares random tokens


@pytest.fixture(scope="module")
def pipeline():
    pipe = TokenBridgePipeline(tiny_transformer(), tiny_vae(), MaskedARScheduler(num_tokens=16))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("guidance_scale, temperature, steps", [(3.0, 1.0, 4), (1.0, 0.7, 16), (2.0, 0.0, 3)])
def test_pipeline_equals_the_original_way(pipeline, guidance_scale, temperature, steps):
    labels = torch.tensor([1, 4, 7])

    def generators():
        return [torch.Generator().manual_seed(seed) for seed in (11, 12, 13)]

    fast = pipeline(labels, steps, guidance_scale, temperature=temperature, generator=generators(), output_type="pt")
    baseline = baseline_sample_indices(pipeline, labels, steps, guidance_scale, temperature, generators())
    assert torch.equal(fast.indices, baseline)
    images = (baseline_images(pipeline, baseline).float().clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(fast.images, images, atol=1e-5, rtol=0)


def test_baseline_detects_a_different_path(pipeline):
    """The comparison can fail: another guidance scale gives other indices."""
    labels = torch.tensor([1, 4, 7])
    generator = [torch.Generator().manual_seed(seed) for seed in (11, 12, 13)]
    fast = pipeline(labels, 4, 3.0, temperature=1.0, generator=generator, output_type="indices").indices
    other = baseline_sample_indices(
        pipeline, labels, 4, 1.5, 1.0, [torch.Generator().manual_seed(seed) for seed in (11, 12, 13)]
    )
    assert not torch.equal(fast, other)

"""The TokenBridge pipeline that ships inside the package: it loads offline by name, the TokenSet model stays the
default, and the independent judge of `pipelines/digits_quality.py` recognises its digits."""

from pathlib import Path

import pytest
import torch
from helpers.scripts import load_script

from tokenset_diffusers import TokenBridgePipeline, bundled_pipeline_path, preprocess_images


quality = load_script("pipelines/digits_quality.py")


@pytest.fixture(scope="module")
def pipeline():
    pipe = TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_bundled_by_name_small_and_package_data():
    path = bundled_pipeline_path("tokenbridge-digits")
    assert path.is_relative_to(Path(__import__("tokenset_diffusers").__file__).parent)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size < 10 * 2**20, f"the bundled pipeline is {size / 2**20:.1f} MB"
    assert (path / "README.md").is_file()
    assert bundled_pipeline_path() == bundled_pipeline_path("digits") != path  # the default is still TokenSet
    assert quality.is_tokenbridge(path) and not quality.is_tokenbridge(bundled_pipeline_path())
    with pytest.raises(ValueError, match="tokenbridge-digits"):
        bundled_pipeline_path("tokenbridge")


def test_describes_the_digits(pipeline):
    config = pipeline.transformer.config
    assert (config.num_classes, config.sample_size, config.latent_channels) == (10, 4, 16)
    assert pipeline.vae.config.sample_size == 8 and pipeline.scheduler.config.num_tokens == 16
    assert pipeline.get_label_ids(["0", "7"]) == [0, 7]
    assert pipeline.config.default_num_inference_steps == 16 and pipeline.config.default_guidance_scale == 3.0


def test_reconstructions_through_the_quantizer_are_recognised(pipeline):
    """(a) on the whole held-out split (deterministic: the README's 97.0% exactly)."""
    images, labels = quality.held_out_digits(8)
    results = quality.tokenbridge_reconstruction_accuracy(pipeline, preprocess_images(images, 8), labels)
    assert results["judge_accuracy_on_real"] > 0.9
    assert results["reconstruction_accuracy"] >= 0.95


def test_generated_digits_meet_the_quality_target(pipeline):
    """(b): the target is 90% on 500 samples (the README's figure); here 100 samples of another seed, with a margin."""
    images, labels = quality.held_out_digits(8)
    judge = quality.make_judge().fit(quality.to_judge_features(preprocess_images(images, 8)), labels)
    generated, asked = quality.generate_tokenbridge_digits(pipeline, per_class=10, seed=123)
    assert generated.shape == (100, 3, 8, 8)
    accuracy = (judge.predict(quality.to_judge_features(generated)) == asked).mean()
    assert accuracy >= 0.85, accuracy  # chance is 0.1


def test_same_seed_same_digits(pipeline):
    first = pipeline(["3", "5"], generator=[torch.Generator().manual_seed(s) for s in (1, 2)], output_type="pt")
    again = pipeline(["5"], generator=torch.Generator().manual_seed(2), output_type="pt")
    assert torch.equal(first.indices[1:], again.indices)  # the same tokens, whatever the batch
    torch.testing.assert_close(first.images[1:], again.images, atol=1e-5, rtol=0)  # decoding: float rounding only

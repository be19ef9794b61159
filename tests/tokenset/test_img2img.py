"""TokenSetImg2ImgPipeline: both ends of `strength` (the image's own counts; plain generation, by seed and by a
chi-square test that fails for a wrong variant), the schedule slice it runs, and class-guided variations of digits."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.scripts import load_script
from scipy.stats import chi2_contingency

from tokenset_diffusers import (
    FSDDScheduler,
    TokenSetImg2ImgPipeline,
    TokenSetPipeline,
    bundled_pipeline_path,
    preprocess_images,
)


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conversion"))
from tokenizer_conversion import convert_tokenizer  # noqa: E402
from transformer_conversion import convert_transformer  # noqa: E402


C, M = 64, 16
NUM_SAMPLES = 2000  # per arm of the chi-square tests
STEPS = 2


@pytest.fixture(scope="module")
def tiny(tokenizer_original_state_dict, dit_original_state_dict):
    image_tokenizer = convert_tokenizer(tokenizer_original_state_dict, num_attention_heads=4).eval()
    transformer = convert_transformer(dit_original_state_dict, num_attention_heads=4).eval()
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)
    plain = TokenSetPipeline(image_tokenizer, transformer, scheduler)
    plain.set_progress_bar_config(disable=True)
    variations = TokenSetImg2ImgPipeline.from_pipe(plain)
    variations.set_progress_bar_config(disable=True)
    return plain, variations


@pytest.fixture(scope="module")
def tiny_image(tiny):
    """A 32 px image with structure (a diagonal gradient and a bright square), as pixel values in [-1, 1]."""
    ramp = torch.linspace(-1, 1, 32)
    image = (ramp[:, None] + ramp[None, :]).clamp(-1, 1) / 2
    image[8:20, 10:22] = 0.9
    return torch.stack([image, image.flip(0), image.flip(1)])[None]  # (1, 3, 32, 32)


def test_strength_zero_returns_the_encoded_counts(tiny, tiny_image):
    _, variations = tiny
    encoded = variations.image_tokenizer.encode_to_counts(tiny_image)
    steps = []
    output = variations(
        tiny_image,
        class_labels=[1, 2],
        strength=0.0,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        callback_on_step_end=lambda pipe, i, t, tensors: steps.append(t),
    )
    assert steps == []
    torch.testing.assert_close(output.counts, encoded.expand(2, -1), rtol=0, atol=0)
    reconstruction = variations.image_tokenizer.decode_counts(encoded) / 2 + 0.5
    torch.testing.assert_close(output.images, reconstruction.clamp(0, 1).expand(2, -1, -1, -1))


def test_strength_one_is_plain_generation_seed_for_seed(tiny, tiny_image):
    plain, variations = tiny
    for guidance in (1.0, [4.0, 50.0, 55.0]):
        expected = plain(
            [3, 5],
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(7),
            output_type="counts",
        ).counts
        got = variations(
            tiny_image,
            [3, 5],
            strength=1.0,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(7),
            output_type="counts",
        ).counts
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _overlap_with(counts: torch.LongTensor, reference: torch.LongTensor) -> np.ndarray:
    """How many of each sample's M tokens the reference set also holds (multiset overlap), per sample."""
    return torch.minimum(counts, reference).sum(-1).numpy()


def _two_sample_chi_square(first: np.ndarray, second: np.ndarray, min_expected: float = 5.0) -> float:
    """p-value of the chi-square homogeneity test of two samples of small integers; sparse values are pooled into
    their neighbours until every cell expects at least `min_expected`."""
    values = np.arange(min(first.min(), second.min()), max(first.max(), second.max()) + 1)
    table = np.stack([(first[:, None] == values).sum(0), (second[:, None] == values).sum(0)])  # (2, V)
    cells, current = [], np.zeros(2)
    for column in table.T:
        current = current + column
        if current.sum() * min(len(first), len(second)) / (len(first) + len(second)) >= min_expected:
            cells.append(current)
            current = np.zeros(2)
    if current.sum() > 0:
        cells[-1] = cells[-1] + current
    return chi2_contingency(np.stack(cells, axis=1))[1]


def _chain(pipeline, seed: int, image=None, **kwargs) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`NUM_SAMPLES` chains of class 4: the sample after the first step and the final counts."""
    first_steps = []

    def keep_first(pipe, index, timestep, tensors):
        if index == 0:
            first_steps.append(tensors["sample"].clone())

    call_kwargs = (
        dict(image=image, class_labels=[4] * NUM_SAMPLES)
        if image is not None
        else dict(class_labels=[4] * NUM_SAMPLES)
    )
    final = pipeline(
        **call_kwargs,
        num_inference_steps=STEPS,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="counts",
        callback_on_step_end=keep_first,
        **kwargs,
    ).counts
    return first_steps[0], final


def test_strength_one_has_the_distribution_of_plain_sampling(tiny, tiny_image):
    """Independent seeds. The statistic is each chain's overlap with the image's own token set (what an image would
    leak), after the first step and at the end. The wrong variant, an off-by-one start (one step after pure noise,
    as an off-by-one slice of the schedule would do), fails the same test."""
    plain, variations = tiny
    encoded = variations.image_tokenizer.encode_to_counts(tiny_image)
    reference = [_overlap_with(counts, encoded) for counts in _chain(plain, seed=1)]
    chains = _chain(variations, seed=2, image=tiny_image, strength=1.0)
    for counts, expected in zip(chains, reference):
        p_value = _two_sample_chi_square(_overlap_with(counts, encoded), expected)
        assert p_value > 1e-3, p_value
    _, wrong = _chain(variations, seed=2, image=tiny_image, strength=1.0 - 1.0 / STEPS)
    wrong_p_value = _two_sample_chi_square(_overlap_with(wrong, encoded), reference[1])
    assert wrong_p_value < 1e-6, wrong_p_value


@pytest.mark.parametrize(
    ("strength", "steps", "expected"),
    [(0.5, 4, [0.5, 0.75]), (0.3, 10, [0.7, 0.8, 0.9]), (0.29, 10, [0.8, 0.9]), (0.05, 10, [])],
)
def test_runs_the_last_steps_of_the_schedule(tiny, tiny_image, strength, steps, expected):
    _, variations = tiny
    seen = []
    variations(
        tiny_image,
        1,
        strength=strength,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="counts",
        callback_on_step_end=lambda pipe, i, t, tensors: seen.append(float(t)),
    )
    assert seen == pytest.approx(expected)


def test_start_sample_is_the_schedulers_noiser_at_the_start_time(tiny, tiny_image):
    _, variations = tiny
    encoded = variations.image_tokenizer.encode_to_counts(tiny_image).expand(3, -1).contiguous()
    variations.scheduler.set_timesteps(4)
    noise = variations.scheduler.add_noise  # the second computation: the noiser called directly
    from tokenset_diffusers import sample_fixed_sum_noise

    prior = sample_fixed_sum_noise(3, C, M, generator=torch.Generator().manual_seed(0))
    got = variations.start_sample(encoded, prior, 1, generator=torch.Generator().manual_seed(5))
    expected = noise(encoded, prior, torch.full((3,), 0.25), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert variations.start_sample(encoded, prior, 0) is prior
    assert variations.start_sample(encoded, prior, 4) is encoded
    with pytest.raises(ValueError, match="start_index"):
        variations.start_sample(encoded, prior, 5)


def test_counts_input_and_image_input_agree_and_batches_broadcast(tiny, tiny_image):
    _, variations = tiny
    encoded = variations.image_tokenizer.encode_to_counts(tiny_image)
    kwargs = dict(strength=0.5, num_inference_steps=4, output_type="counts")
    from_image = variations(tiny_image, [1, 2, 3], generator=torch.Generator().manual_seed(0), **kwargs).counts
    from_counts = variations(
        counts=encoded, class_labels=[1, 2, 3], generator=torch.Generator().manual_seed(0), **kwargs
    ).counts
    torch.testing.assert_close(from_image, from_counts, rtol=0, atol=0)
    assert from_image.shape == (3, C)
    three_images = variations(counts=encoded.expand(3, -1), class_labels=5, **kwargs).counts
    assert three_images.shape == (3, C)


def test_no_class_is_the_null_class_without_guidance(tiny, tiny_image):
    """A second computation: the scheduler run by hand on the transformer's null-class softmax."""
    _, variations = tiny
    encoded = variations.image_tokenizer.encode_to_counts(tiny_image).expand(2, -1).contiguous()
    got = variations(
        counts=encoded,
        class_labels=None,
        strength=0.5,
        num_inference_steps=4,
        guidance_scale=9.0,
        generator=torch.Generator().manual_seed(3),
        output_type="counts",
    ).counts
    generator = torch.Generator().manual_seed(3)
    scheduler = FSDDScheduler.from_config(variations.scheduler.config)
    scheduler.set_timesteps(4)
    from tokenset_diffusers import sample_fixed_sum_noise

    prior = sample_fixed_sum_noise(2, C, M, generator=generator)
    sample = scheduler.add_noise(encoded, prior, torch.full((2,), 0.5), generator=generator)
    null = torch.full((2,), variations.transformer.config.num_classes)
    for t in scheduler.timesteps[2:]:
        probs = variations.transformer(sample, torch.full((2,), float(t)), null).logits.softmax(-1)
        sample = scheduler.step(probs, t, sample, generator=generator).prev_sample
    torch.testing.assert_close(got, sample, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(strength=1.5), "strength"),
        (dict(strength=-0.1), "strength"),
        (dict(strength=True), "strength"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(output_type="png"), "output_type"),
        (dict(counts=torch.zeros(1, C, dtype=torch.long)), "exactly one"),
        (dict(image=None, counts=torch.zeros(1, C, dtype=torch.long)), "summing to num_tokens"),
        (dict(image=None, counts=torch.zeros(1, C + 1, dtype=torch.long)), "codebook_size"),
        (dict(image=None), "exactly one"),
        (dict(class_labels=[1, 2], generator=[torch.Generator()] * 3), "generators"),
    ],
)
def test_bad_calls_raise(tiny, tiny_image, kwargs, match):
    _, variations = tiny
    call = dict(image=tiny_image, class_labels=[1, 2], num_inference_steps=2) | kwargs
    with pytest.raises(ValueError, match=match):
        variations(**call)


def test_image_and_label_counts_must_broadcast(tiny, tiny_image):
    _, variations = tiny
    with pytest.raises(ValueError, match="2 images and 3 class labels"):
        variations(tiny_image.expand(2, -1, -1, -1), [1, 2, 3], num_inference_steps=2)


def test_from_pipe_shares_without_casting():
    """diffusers' own `from_pipe` casts the shared modules to float32, changing the source pipeline as well."""
    plain = TokenSetPipeline.from_pretrained(bundled_pipeline_path(), dtype=torch.bfloat16)

    def dtypes(module):
        return {name: parameter.dtype for name, parameter in module.named_parameters()}

    before = (dtypes(plain.transformer), dtypes(plain.image_tokenizer))
    assert {torch.bfloat16, torch.float32} <= set(before[0].values())  # bf16 blocks, float32 conditioning
    variations = TokenSetImg2ImgPipeline.from_pipe(plain)
    assert (dtypes(plain.transformer), dtypes(plain.image_tokenizer)) == before
    assert variations.transformer is plain.transformer and variations.image_tokenizer is plain.image_tokenizer
    assert variations.config.id2label == plain.config.id2label
    assert variations.config.default_guidance_scale == plain.config.default_guidance_scale
    exact = FSDDScheduler.from_config(plain.scheduler.config, exact_sum=True)
    assert TokenSetImg2ImgPipeline.from_pipe(plain, scheduler=exact).scheduler is exact
    with pytest.raises(ValueError, match="can replace only"):
        TokenSetImg2ImgPipeline.from_pipe(plain, vae=None)


# ---------------------------------------------------------------- the bundled digits model


@pytest.fixture(scope="module")
def digits():
    pipeline = TokenSetImg2ImgPipeline.from_pretrained(bundled_pipeline_path())
    pipeline.set_progress_bar_config(disable=True)
    quality = load_script("pipelines/digits_quality.py")
    image_size = pipeline.image_tokenizer.config.image_size
    images, labels = quality.held_out_digits(image_size)
    real = preprocess_images(images, image_size)
    judge = quality.make_judge().fit(quality.to_judge_features(real), labels)
    return pipeline, quality, judge, real, labels


def test_bundled_pipeline_loads_as_img2img_and_turns_threes_into_eights(digits):
    """Strength 0.9 towards class 8 makes eights of threes; strength 0.2 keeps them threes (an independent judge)."""
    pipeline, quality, judge, real, labels = digits
    threes = real[labels == 3][:12]
    predictions = {}
    for strength in (0.2, 0.9):
        images = pipeline(
            threes,
            8,
            strength=strength,
            num_inference_steps=10,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images
        predictions[strength] = judge.predict(quality.to_judge_features(images * 2 - 1))
    assert (predictions[0.9] == 8).mean() >= 0.7, predictions
    assert (predictions[0.2] == 3).mean() >= 0.7, predictions

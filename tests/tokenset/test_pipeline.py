"""TokenSetPipeline with tiny real components: the original's guidance fixtures, outputs, determinism, round trips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tokenset_diffusers import (
    FSDDScheduler,
    TokenSetPipeline,
    TokenSetPipelineOutput,
    TokenSetTransformer1DModel,
    TokenSetVQVAE,
)


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conversion"))
from tokenizer_conversion import convert_tokenizer  # noqa: E402
from transformer_conversion import convert_transformer  # noqa: E402


C, M, K = 64, 16, 10
DIGIT_NAMES = {
    i: name
    for i, name in enumerate(["zero, nought", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
}


@pytest.fixture(scope="module")
def pipeline(tokenizer_original_state_dict, dit_original_state_dict):
    image_tokenizer = convert_tokenizer(tokenizer_original_state_dict, num_attention_heads=4).eval()
    transformer = convert_transformer(dit_original_state_dict, num_attention_heads=4).eval()
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)
    pipe = TokenSetPipeline(image_tokenizer, transformer, scheduler, id2label=DIGIT_NAMES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _with_scheduler(pipe, **config):
    scheduler = FSDDScheduler.from_config(pipe.scheduler.config, **config)
    new = TokenSetPipeline(pipe.image_tokenizer, pipe.transformer, scheduler, id2label=pipe.config.id2label)
    new.set_progress_bar_config(disable=True)
    return new


# ---------------------------------------------------------------- the original's guidance


@pytest.mark.parametrize("which", ["t_low", "t_mid", "t_high"])
def test_guided_probabilities_match_original(pipeline, dit_fixture, which):
    t = dit_fixture[f"t_{which}"]
    counts, labels = dit_fixture["counts"], dit_fixture["y"]
    interval = pipeline.guided_probabilities(counts, t, labels, (4.0, 50.0, 55.0))
    torch.testing.assert_close(interval, dit_fixture[f"cfg_interval_{which}"], atol=1e-5, rtol=0)
    constant = pipeline.guided_probabilities(counts, t, labels, 1.5)
    torch.testing.assert_close(constant, dit_fixture[f"cfg_scale1.5_{which}"], atol=1e-5, rtol=0)


def test_guidance_scale_one_is_the_plain_softmax(pipeline, dit_fixture):
    counts, labels = dit_fixture["counts"], dit_fixture["y"]
    for t in (0.0, 0.5):
        logits = pipeline.transformer(counts, torch.full((4,), t), labels).logits
        probs = pipeline.guided_probabilities(counts, t, labels, 1.0)
        torch.testing.assert_close(probs, logits.softmax(-1))


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "counts"])
def test_output_types(pipeline, output_type):
    output = pipeline(
        [1, "two"], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type=output_type
    )
    assert isinstance(output, TokenSetPipelineOutput)
    assert output.counts.shape == (2, C) and output.counts.dtype == torch.long
    images = output.images
    if output_type == "pil":
        assert len(images) == 2 and all(isinstance(im, PIL.Image.Image) and im.size == (32, 32) for im in images)
    elif output_type == "np":
        assert images.shape == (2, 32, 32, 3) and images.min() >= 0 and images.max() <= 1
    elif output_type == "pt":
        assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    else:
        assert torch.equal(images, output.counts)


def test_images_are_the_decoded_counts(pipeline):
    output = pipeline([3], num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="pt")
    decoded = pipeline.image_tokenizer.decode_counts(output.counts)
    torch.testing.assert_close(output.images, (decoded / 2 + 0.5).clamp(0, 1))


def test_same_seed_same_images_and_batch_consistency(pipeline):
    kwargs = dict(num_inference_steps=4, guidance_scale=(4.0, 50.0, 55.0), output_type="np")
    a = pipeline([5, 7], generator=torch.Generator().manual_seed(3), **kwargs).images
    b = pipeline([5, 7], generator=torch.Generator().manual_seed(3), **kwargs).images
    np.testing.assert_array_equal(a, b)
    batch = pipeline([5, 7], generator=[torch.Generator().manual_seed(s) for s in (11, 12)], **kwargs)
    singles = [
        pipeline([label], generator=torch.Generator().manual_seed(s), **kwargs) for label, s in ((5, 11), (7, 12))
    ]
    assert torch.equal(batch.counts, torch.cat([s.counts for s in singles]))
    np.testing.assert_allclose(batch.images, np.concatenate([s.images for s in singles]), atol=1e-5)


def test_batch_size_one_and_tuple_output(pipeline):
    images, counts = pipeline(4, num_inference_steps=2, return_dict=False)
    assert len(images) == 1 and counts.shape == (1, C)


def test_exact_sum_pipeline_returns_fixed_sum_counts(pipeline):
    exact = _with_scheduler(pipeline, exact_sum=True)
    counts = exact(
        list(range(K)), num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="counts"
    ).counts
    assert (counts.sum(-1) == M).all()


def test_default_guidance_is_stored_and_used(pipeline):
    stored = TokenSetPipeline(
        pipeline.image_tokenizer, pipeline.transformer, pipeline.scheduler, default_guidance_scale=[4.0, 50.0, 55.0]
    )
    stored.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=3, output_type="counts")
    a = stored([2], generator=torch.Generator().manual_seed(0), **kwargs).counts
    b = stored([2], guidance_scale=(4.0, 50.0, 55.0), generator=torch.Generator().manual_seed(0), **kwargs).counts
    c = stored([2], guidance_scale=1.0, generator=torch.Generator().manual_seed(0), **kwargs).counts
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_callback_sees_every_step(pipeline):
    seen = []

    def callback(pipe, index, timestep, tensors):
        seen.append((index, float(timestep), int(tensors["sample"].sum())))
        return {}

    pipeline([1], num_inference_steps=4, callback_on_step_end=callback, output_type="counts")
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert [s[1] for s in seen] == [0.0, 0.25, 0.5, 0.75]


# ---------------------------------------------------------------- labels and errors


def test_label_names_and_synonyms(pipeline):
    assert pipeline.get_label_ids("two") == [2]
    assert pipeline.get_label_ids(["nought", "zero, nought", "nine"]) == [0, 0, 9]
    with pytest.raises(ValueError, match="Close matches: \\['three'\\]"):
        pipeline.get_label_ids("thre")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(class_labels=[K]), "out of range"),
        (dict(class_labels=[-1]), "out of range"),
        (dict(class_labels=["eleven"]), "Unknown class name"),
        (dict(class_labels=[]), "empty"),
        (dict(class_labels=[1.5]), "class ids"),
        (dict(class_labels=[1], output_type="latents"), "output_type"),
        (dict(class_labels=[1], num_images_per_class=0), "num_images_per_class"),
        (dict(class_labels=[1], num_images_per_class=1.5), "num_images_per_class"),
        (dict(class_labels=[1, 2], num_images_per_class=2, generator=[torch.Generator()] * 2), "generators"),
        (dict(class_labels=[1], callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
        (dict(class_labels=[1, 2], generator=[torch.Generator()]), "generators"),
        (dict(class_labels=[1], guidance_scale="4_50_55"), "guidance_scale"),
        (dict(class_labels=[1], guidance_scale=-1.0), "guidance_scale"),
        (dict(class_labels=[1], num_inference_steps=0), "num_inference_steps"),
    ],
)
def test_bad_calls_raise(pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipeline(**kwargs)


def test_mismatched_components_raise(pipeline):
    with pytest.raises(ValueError, match="disagree"):
        TokenSetPipeline(
            pipeline.image_tokenizer, pipeline.transformer, FSDDScheduler(codebook_size=128, num_tokens=M)
        )
    with pytest.raises(ValueError, match="id2label"):
        TokenSetPipeline(pipeline.image_tokenizer, pipeline.transformer, pipeline.scheduler, id2label={K: "extra"})


def test_pipeline_without_names_asks_for_ids(pipeline):
    anonymous = TokenSetPipeline(pipeline.image_tokenizer, pipeline.transformer, pipeline.scheduler)
    with pytest.raises(ValueError, match="no `id2label`"):
        anonymous.get_label_ids("two")


# ---------------------------------------------------------------- saving and loading


def test_save_load_round_trip(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    # diffusers' custom-code entries, each backed by a file that imports the class from the package.
    assert index["_class_name"] == ["pipeline_tokenset", "TokenSetPipeline"]
    assert index["image_tokenizer"] == ["modeling_tokenset_vqvae", "TokenSetVQVAE"]
    assert index["transformer"] == ["transformer_tokenset", "TokenSetTransformer1DModel"]
    assert index["scheduler"] == ["scheduling_fsdd", "FSDDScheduler"]
    assert (
        "from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler"
        in (tmp_path / "scheduler" / "scheduling_fsdd.py").read_text()
    )
    assert index["id2label"]["2"] == "two"
    loaded = TokenSetPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.id2label == DIGIT_NAMES and loaded.labels == pipeline.labels
    assert isinstance(loaded.image_tokenizer, TokenSetVQVAE)
    assert isinstance(loaded.transformer, TokenSetTransformer1DModel)
    kwargs = dict(num_inference_steps=3, output_type="np")
    a = pipeline([1, "eight"], generator=torch.Generator().manual_seed(0), **kwargs).images
    b = loaded([1, "eight"], generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(a, b)


def _fake_hub_cache(pipeline, cache_dir: Path, repo_id: str) -> Path:
    """Lays out `cache_dir` as huggingface_hub's cache holding one snapshot of `repo_id`."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    pipeline.save_pretrained(snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def test_hub_repo_id_loads_from_cache_offline(pipeline, tmp_path):
    _fake_hub_cache(pipeline, tmp_path / "cache", "tokenset/tiny-test")
    loaded = TokenSetPipeline.from_pretrained(
        "tokenset/tiny-test", cache_dir=tmp_path / "cache", local_files_only=True
    )
    assert loaded.config.id2label == DIGIT_NAMES
    # And with HF_HUB_OFFLINE in a fresh process, the way a user without network runs it.
    script = (
        "import torch; from tokenset_diffusers import TokenSetPipeline;"
        "p = TokenSetPipeline.from_pretrained('tokenset/tiny-test', dtype=torch.bfloat16);"
        "p.set_progress_bar_config(disable=True);"
        "print(p.transformer.dtype, p(['two'], num_inference_steps=2, output_type='counts').counts.sum().item())"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.bfloat16" in result.stdout


def test_missing_repo_offline_raises(tmp_path):
    with pytest.raises(Exception, match="(?i)offline|local|cache|not found|connection"):
        TokenSetPipeline.from_pretrained("tokenset/does-not-exist", cache_dir=tmp_path, local_files_only=True)


def test_bfloat16_pipeline_runs(pipeline):
    bf16 = TokenSetPipeline(
        TokenSetVQVAE(pipeline.image_tokenizer.config).to(torch.bfloat16),
        pipeline.transformer.to(torch.bfloat16),
        pipeline.scheduler,
    )
    bf16.image_tokenizer.load_state_dict(pipeline.image_tokenizer.state_dict())
    bf16.set_progress_bar_config(disable=True)
    try:
        output = bf16([1, 2], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    finally:
        pipeline.transformer.to(torch.float32)
    assert output.images.shape == (2, 32, 32, 3) and np.isfinite(output.images).all()


def test_sampling_step_never_reads_device_values(pipeline):
    """A whole denoising step (guided forward + scheduler step) on the meta device, where every data-dependent read
    raises: the sampling loop never waits for an accelerator (the transformer's value checks run on the CPU only)."""
    import copy

    transformer = copy.deepcopy(pipeline.transformer).to("meta")
    meta = TokenSetPipeline(pipeline.image_tokenizer, transformer, _with_scheduler(pipeline).scheduler)
    meta.scheduler.set_timesteps(4)
    sample = torch.zeros(2, C, dtype=torch.long, device="meta")
    labels = torch.zeros(2, dtype=torch.long, device="meta")
    for t in meta.scheduler.timesteps:
        probs = meta.guided_probabilities(sample, t, labels, (4.0, 1.0))
        sample = meta.scheduler.step(probs, t, sample).prev_sample
    assert sample.shape == (2, C) and sample.device.type == "meta"


def test_decoding_warns_when_count_vectors_are_far_from_the_sum(pipeline):
    """The README's top-k setting never adjusts: its raw samples (output_type="counts") miss M by far, and decoding
    them fills the missing tokens, with a warning; the released default stays at M and decodes silently."""
    topk = _with_scheduler(pipeline, x0_sampling="top_k", xt_sampling="top_k", top_k=2, adjust_start=1.0)
    counts = topk([7] * 8, generator=torch.Generator().manual_seed(0), output_type="counts").counts
    assert ((counts.sum(-1) - M).abs() > M / 4).any()  # the raw last sample, as the original returns it
    with pytest.warns(UserWarning, match="fill rule"):
        topk([7] * 8, generator=torch.Generator().manual_seed(0), output_type="np")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline([7] * 4, generator=torch.Generator().manual_seed(0), output_type="np")

"""TokenBridgePipeline with the tiny converted models: the original's greedy runs token for token, guided features,
outputs, determinism, per-image generators, callbacks, defaults and a save -> load round trip."""

import numpy as np
import PIL.Image
import pytest
import torch
from helpers.tokenbridge import (
    load_fixture,
    load_json,
    single_thread,  # noqa: F401 (autouse)
    tiny_transformer,
    tiny_vae,
)

from tokenset_diffusers import MaskedARScheduler, TokenBridgePipeline, TokenBridgePipelineOutput


RUNS = load_json("tokenbridge_tiny.runs.json")
NAMES = {
    i: name
    for i, name in enumerate(["zero, nought", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
}


@pytest.fixture(scope="module")
def io():
    return load_fixture("tokenbridge_tiny.io.safetensors")


@pytest.fixture(scope="module")
def pipeline():
    pipe = TokenBridgePipeline(tiny_transformer(), tiny_vae(), MaskedARScheduler(num_tokens=16), id2label=NAMES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", sorted(RUNS))
def test_greedy_runs_reproduced_token_for_token(pipeline, io, name, monkeypatch):
    run = RUNS[name]
    features = []
    sample_channels = pipeline.transformer.sample_channels

    def recording(inputs, **kwargs):
        features.append(inputs)
        return sample_channels(inputs, **kwargs)

    monkeypatch.setattr(pipeline.transformer, "sample_channels", recording)
    output = pipeline(
        run["labels"],
        num_images=None if run["labels"] else run["bsz"],
        num_inference_steps=run["num_iter"],
        guidance_scale=run["cfg"],
        guidance_schedule=run["cfg_schedule"],
        temperature=0.0,
        orders=io[f"{name}.orders"],
        output_type="indices",
    )
    assert torch.equal(output.indices, io[f"{name}.indices"])
    assert torch.equal(output.images, output.indices)
    assert len(features) == run["num_iter"]
    for step, step_features in enumerate(features):
        torch.testing.assert_close(step_features, io[f"{name}.step{step}.head_input"], atol=1e-5, rtol=0)


def test_latent_output_is_the_originals_tokens(pipeline, io):
    latents = pipeline(
        [1, 3, 5, 7], num_inference_steps=4, guidance_scale=1.0, temperature=0.0,
        orders=io["greedy_cfg1_iter4.orders"], output_type="latent",
    ).images  # fmt: skip
    assert torch.equal(latents, io["greedy_cfg1_iter4.tokens"])


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent", "indices"])
def test_output_types(pipeline, output_type):
    output = pipeline(
        [1, "two"], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type=output_type
    )
    assert isinstance(output, TokenBridgePipelineOutput)
    assert output.indices.shape == (2, 16, 16) and output.indices.dtype == torch.int64
    assert 0 <= output.indices.min() and output.indices.max() < 16
    images = output.images
    if output_type == "pil":
        assert len(images) == 2 and isinstance(images[0], PIL.Image.Image) and images[0].size == (8, 8)
    elif output_type == "np":
        assert (
            isinstance(images, np.ndarray) and images.shape == (2, 8, 8, 3) and 0 <= images.min() <= images.max() <= 1
        )
    elif output_type == "pt":
        assert images.shape == (2, 3, 8, 8) and 0 <= images.min() <= images.max() <= 1
    elif output_type == "latent":
        levels = pipeline.transformer.quantizer.levels()
        assert torch.equal(images, pipeline.transformer.unpatchify(levels[output.indices]))
    else:
        assert torch.equal(images, output.indices)


def test_images_decode_the_latents(pipeline):
    generator = torch.Generator().manual_seed(5)
    output = pipeline([4], num_inference_steps=2, generator=generator, output_type="pt")
    latents = pipeline.transformer.unpatchify(pipeline.transformer.quantizer.dequantize(output.indices))
    with torch.no_grad():
        decoded = pipeline.vae.decode(latents / 0.2325).sample
    torch.testing.assert_close(output.images, (decoded / 2 + 0.5).clamp(0, 1))


def test_same_seed_same_images(pipeline):
    def run(seed):
        return pipeline(
            [1, 2],
            num_inference_steps=4,
            guidance_scale=2.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images

    assert np.array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


def test_batch_of_two_equals_two_batches_of_one(pipeline):
    def generators(*seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    kwargs = {"num_inference_steps": 4, "guidance_scale": 3.0, "temperature": 1.0, "output_type": "indices"}
    both = pipeline([1, 6], generator=generators(10, 11), **kwargs).indices
    first = pipeline([1], generator=generators(10), **kwargs).indices
    second = pipeline([6], generator=generators(11), **kwargs).indices
    assert torch.equal(both, torch.cat([first, second]))


def test_orders_come_from_the_schedulers_sampler(pipeline):
    """Without explicit orders, the pipeline draws them with `MaskedARScheduler.sample_orders` (tested uniform)."""
    seeded = pipeline(
        [2, 3],
        num_inference_steps=4,
        temperature=0.0,
        generator=torch.Generator().manual_seed(7),
        output_type="indices",
    )
    orders = MaskedARScheduler(num_tokens=16).sample_orders(2, torch.Generator().manual_seed(7))
    explicit = pipeline([2, 3], num_inference_steps=4, temperature=0.0, orders=orders, output_type="indices")
    assert torch.equal(seeded.indices, explicit.indices)


def test_stored_defaults_are_used(pipeline):
    pipe = TokenBridgePipeline(
        pipeline.transformer, pipeline.vae, pipeline.scheduler,
        default_num_inference_steps=4, default_guidance_scale=2.5, default_temperature=0.5,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    steps = []
    defaults = pipe([1], generator=torch.Generator().manual_seed(3), output_type="indices",
                    callback_on_step_end=lambda p, i, t, tensors: steps.append(i)).indices  # fmt: skip
    explicit = pipe(
        [1],
        num_inference_steps=4,
        guidance_scale=2.5,
        temperature=0.5,
        generator=torch.Generator().manual_seed(3),
        output_type="indices",
    ).indices
    assert torch.equal(defaults, explicit) and steps == [0, 1, 2, 3]


def test_callback_sees_masks_and_can_replace_indices(pipeline):
    unknown = []

    def callback(pipe, step_index, timestep, tensors):
        unknown.append(int(tensors["mask"].sum(1)[0]))
        return {"indices": torch.where(tensors["mask"][:, :, None], tensors["indices"], 3)}

    output = pipeline([1, 2], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="indices",
                      callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["indices", "mask"])  # fmt: skip
    assert unknown == [14, 11, 6, 0]  # 16 - (2, 3, 5, 6) cumulatively
    assert (output.indices == 3).all()


def test_labels_by_name_and_unconditional(pipeline):
    kwargs = {"num_inference_steps": 2, "temperature": 0.0, "output_type": "indices"}
    orders = MaskedARScheduler(num_tokens=16).sample_orders(2, torch.Generator().manual_seed(0))
    by_name = pipeline(["nought", "nine"], orders=orders, **kwargs).indices
    by_id = pipeline([0, 9], orders=orders, **kwargs).indices
    assert torch.equal(by_name, by_id)
    unconditional = pipeline(None, num_images=2, orders=orders, **kwargs).indices
    assert unconditional.shape == (2, 16, 16)


def test_batch_size_one_and_bfloat16(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path)
    pipe = TokenBridgePipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.quantizer.reconstruction_values.dtype == torch.float32
    images = pipe(
        7, num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 8, 8, 3) and np.isfinite(images).all()


def test_save_and_load_round_trip(pipeline, tmp_path):
    pipe = TokenBridgePipeline(pipeline.transformer, pipeline.vae, pipeline.scheduler, id2label=NAMES,
                               default_num_inference_steps=3, default_guidance_scale=1.5, default_temperature=0.9)  # fmt: skip
    pipe.save_pretrained(tmp_path)
    loaded = TokenBridgePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    pipe.set_progress_bar_config(disable=True)
    assert loaded.config.id2label == NAMES
    assert (loaded.config.default_num_inference_steps, loaded.config.default_guidance_scale) == (3, 1.5)
    assert loaded.vae.config.scaling_factor == 0.2325
    a = pipe(["two", 5], generator=torch.Generator().manual_seed(4), output_type="np").images
    b = loaded(["two", 5], generator=torch.Generator().manual_seed(4), output_type="np").images
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_labels": [1], "output_type": "counts"}, "output_type"),
        ({"class_labels": [1], "guidance_schedule": "cosine"}, "guidance_schedule"),
        ({"class_labels": [10]}, "out of range"),
        ({"class_labels": ["ten"]}, "Unknown class name"),
        ({"class_labels": None, "num_images": 0}, r"`num_images` must be an integer >= 1, got int 0"),
        ({"class_labels": [1], "num_images": 2}, "num_images"),
        ({"class_labels": [1], "temperature": -1.0}, "temperature"),
        ({"class_labels": [1], "num_inference_steps": 17}, "num_inference_steps"),
        ({"class_labels": [1], "orders": torch.zeros(1, 16, dtype=torch.long)}, "permutation"),
        ({"class_labels": [1, 2], "generator": [torch.Generator()]}, "one per image"),
        ({"class_labels": [1], "callback_on_step_end_tensor_inputs": ["noise"]}, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_invalid_calls(pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipeline(**{"num_inference_steps": 2, **kwargs})


def test_components_must_agree(pipeline):
    with pytest.raises(ValueError, match="num_tokens"):
        TokenBridgePipeline(pipeline.transformer, pipeline.vae, MaskedARScheduler(num_tokens=64))


def test_documented_defaults_are_the_real_ones():
    import inspect

    parameters = inspect.signature(TokenBridgePipeline.__init__).parameters
    doc = TokenBridgePipeline.__doc__
    for name in ("default_num_inference_steps", "default_guidance_scale", "default_temperature"):
        assert f"{name} (`{type(parameters[name].default).__name__}`, defaults to {parameters[name].default})" in doc
    call = inspect.signature(TokenBridgePipeline.__call__).parameters
    assert call["guidance_schedule"].default == "linear" and call["output_type"].default == "pil"

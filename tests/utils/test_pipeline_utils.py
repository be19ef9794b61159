"""The call surface of `pipeline_utils.ClassConditionalPipelineMixin`, the same for the three class-conditional
pipelines (TokenSet generation, TokenSet image variations, TokenBridge), each built from tiny real components of
random weights: `num_images_per_class`, `batch_size` chunks equal one batch, the request-size refusal, `None` labels,
names, output types, `"latents"` callbacks that read and replace, and image variations at strength 1 being plain
generation."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL

from tokenset_diffusers import (
    FSDDScheduler,
    MaskedARScheduler,
    TokenBridgePipeline,
    TokenBridgeTransformer2DModel,
    TokenSetImg2ImgPipeline,
    TokenSetPipeline,
    TokenSetTransformer1DModel,
    TokenSetVQVAE,
)
from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.utils.testing_utils import TINY_GENERATOR, TINY_TOKENBRIDGE, TINY_TOKENIZER, TINY_VAE


NAMES = {0: "red", 1: "green", 2: "blue"}
NUM_CLASSES = len(NAMES)
SYSTEMS = ["tokenset", "img2img", "tokenbridge"]
# Each system's own name of the latents: the output type, the output field, and the callback alias.
OWN_NAME = {"tokenset": "counts", "img2img": "counts", "tokenbridge": "indices"}
# Random tiny generators give count vectors far from M; decoding says so.
pytestmark = pytest.mark.filterwarnings("ignore:Decoding count vectors")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only wait for each other
    yield
    torch.set_num_threads(threads)


def build_tokenset() -> TokenSetPipeline:
    torch.manual_seed(0)
    codebook_size, num_tokens = TINY_TOKENIZER["codebook_size"], TINY_TOKENIZER["num_tokens"]
    pipe = TokenSetPipeline(
        TokenSetVQVAE(TokenSetVQVAEConfig(**TINY_TOKENIZER)).eval(),
        TokenSetTransformer1DModel(
            codebook_size=codebook_size, num_tokens=num_tokens, num_classes=NUM_CLASSES, **TINY_GENERATOR
        ).eval(),
        FSDDScheduler(codebook_size=codebook_size, num_tokens=num_tokens),
        id2label=NAMES,
        default_guidance_scale=2.0,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tokenbridge() -> TokenBridgePipeline:
    torch.manual_seed(0)
    levels = len(TINY_VAE["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(TINY_VAE["block_out_channels"]),
        layers_per_block=TINY_VAE["layers_per_block"],
        latent_channels=TINY_VAE["latent_channels"],
        norm_num_groups=TINY_VAE["norm_num_groups"],
        sample_size=TINY_VAE["image_size"],
    ).eval()
    sample_size = TINY_VAE["image_size"] // 2 ** (levels - 1)
    transformer = TokenBridgeTransformer2DModel(
        sample_size=sample_size,
        latent_channels=TINY_VAE["latent_channels"],
        num_classes=NUM_CLASSES,
        channel_order=list(range(TINY_VAE["latent_channels"])),
        **TINY_TOKENBRIDGE,
    ).eval()
    pipe = TokenBridgePipeline(
        transformer,
        vae,
        MaskedARScheduler(num_tokens=sample_size**2),
        id2label=NAMES,
        default_num_inference_steps=3,
        default_guidance_scale=2.0,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipelines():
    tokenset = build_tokenset()
    return {
        "tokenset": tokenset,
        "img2img": TokenSetImg2ImgPipeline.from_pipe(tokenset),
        "tokenbridge": build_tokenbridge(),
    }


@pytest.fixture(scope="module")
def start_counts(pipelines):
    """One count vector to vary: a token set of the tiny tokenizer (summing to M)."""
    codebook_size, num_tokens = TINY_TOKENIZER["codebook_size"], TINY_TOKENIZER["num_tokens"]
    counts = torch.zeros(1, codebook_size, dtype=torch.long)
    counts[0, :num_tokens] = 1
    return counts


@pytest.fixture(params=SYSTEMS)
def system(request, pipelines, start_counts):
    """`(name, pipeline, call)`: `call(class_labels, **kwargs)` runs the pipeline with few steps."""
    name = request.param
    pipe = pipelines[name]

    def call(class_labels, **kwargs):
        kwargs.setdefault("num_inference_steps", 3)
        if name == "img2img":
            kwargs.setdefault("strength", 0.7)
            return pipe(counts=start_counts, class_labels=class_labels, **kwargs)
        return pipe(class_labels, **kwargs)

    return name, pipe, call


def generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def latents_of(name: str, output) -> torch.Tensor:
    return output.indices if name == "tokenbridge" else output.counts


# ---------------------------------------------------------------- images per class, chunks, request size


def test_num_images_per_class_repeats_each_label_in_order(system):
    name, _, call = system
    repeated = call([0, "blue"], num_images_per_class=2, generator=generators(4), output_type="latent")
    listed = call([0, 0, 2, 2], generator=generators(4), output_type="latent")
    assert latents_of(name, repeated).shape[0] == 4
    assert torch.equal(latents_of(name, repeated), latents_of(name, listed))
    assert torch.equal(repeated.images, listed.images)


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_batch_size_chunks_give_the_images_of_one_batch(system, output_type):
    name, _, call = system
    whole = call([0, 1, 2], num_images_per_class=2, generator=generators(6), output_type=output_type)
    for batch_size in (4, 1):
        chunked = call(
            [0, 1, 2], num_images_per_class=2, generator=generators(6), output_type=output_type, batch_size=batch_size
        )
        assert torch.equal(latents_of(name, chunked), latents_of(name, whole))  # the same draws, chunk by chunk
        assert type(chunked.images) is type(whole.images) and len(chunked.images) == 6
        if output_type == "latent":
            assert torch.equal(chunked.images, whole.images)
        else:  # decoding in other batch sizes may round float32 differently
            np.testing.assert_allclose(chunked.images, whole.images, atol=1e-5)


def test_one_shared_generator_is_reproducible_in_chunks(system):
    name, _, call = system
    first = call([0, 1, 2], generator=torch.Generator().manual_seed(3), batch_size=2, output_type="latent")
    second = call([0, 1, 2], generator=torch.Generator().manual_seed(3), batch_size=2, output_type="latent")
    assert torch.equal(latents_of(name, first), latents_of(name, second))


def test_a_request_that_cannot_fit_is_refused_before_allocating(system):
    _, _, call = system
    # 10**12 images would need terabytes for their outputs alone; the refusal comes before any of it is allocated.
    with pytest.raises(
        ValueError, match=r"This request cannot fit: 1000000000000 images need at least .* GiB of host"
    ):
        call([0], num_images_per_class=10**12, output_type="np")
    with pytest.raises(ValueError, match=r"of a batch of 1000000000000 .*smaller `batch_size`"):
        call([0], num_images_per_class=10**12, output_type="latent", batch_size=10**12)


def test_generators_must_be_one_per_image(system):
    _, _, call = system
    with pytest.raises(ValueError, match="Got 3 generators for 4 images; pass one per image"):
        call([0, 1], num_images_per_class=2, generator=generators(3))
    with pytest.raises(ValueError, match=r"`generator` must be a torch.Generator .*got int 0"):
        call([0], generator=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_images_per_class": 0}, r"`num_images_per_class` must be an integer >= 1, got int 0"),
        ({"batch_size": 2.0}, r"`batch_size` must be an integer >= 1, got float 2.0"),
        ({"output_type": "png"}, r"`output_type` must be one of .*got str 'png'"),
        ({"callback_on_step_end": "print"}, r"`callback_on_step_end` must be callable, got str 'print'"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, r"may only name \['latents', "),
    ],
)
def test_shared_arguments_are_checked_alike(system, kwargs, message):
    _, _, call = system
    with pytest.raises(ValueError, match=message):
        call([0], **kwargs)


# ---------------------------------------------------------------- labels


def test_class_names_are_their_ids(system):
    name, _, call = system
    by_name = call(["red", "blue"], generator=generators(2), output_type="latent")
    by_id = call([0, 2], generator=generators(2), output_type="latent")
    assert torch.equal(latents_of(name, by_name), latents_of(name, by_id))


def test_none_labels_condition_on_the_null_class(system, monkeypatch):
    """`None` gives `num_images_per_class` images, and the transformer sees the null class id for every one."""
    name, pipe, call = system
    seen = []
    if name == "tokenbridge":
        conditions = pipe.transformer.conditions

        def spy(values, mask, class_labels, *args, **kwargs):
            seen.append(class_labels.clone())
            return conditions(values, mask, class_labels, *args, **kwargs)

        monkeypatch.setattr(pipe.transformer, "conditions", spy)
    else:
        handle = pipe.transformer.register_forward_pre_hook(lambda module, args: seen.append(args[2].clone()))
    try:
        output = call(None, num_images_per_class=2, generator=generators(2), output_type="latent")
    finally:
        if name != "tokenbridge":
            handle.remove()
    assert latents_of(name, output).shape[0] == 2
    labels = torch.cat(seen)
    # TokenSet drops guidance for the null class (only the conditional half runs); TokenBridge's guided pass pairs
    # it with the unconditional rows, the same id.
    assert seen and (labels == NUM_CLASSES).all()


def test_none_labels_ignore_guidance_in_tokenset(pipelines):
    pipe = pipelines["tokenset"]
    kwargs = {"num_inference_steps": 3, "num_images_per_class": 2, "output_type": "counts"}
    plain = pipe(None, guidance_scale=1.0, generator=generators(2), **kwargs)
    guided = pipe(None, guidance_scale=4.0, generator=generators(2), **kwargs)
    assert torch.equal(plain.counts, guided.counts) and pipe.guidance_scale == 1.0


# ---------------------------------------------------------------- outputs


def test_output_types(system):
    name, pipe, call = system
    own = OWN_NAME[name]
    assert set(pipe.output_types) == {"pil", "np", "pt", "latent", own}
    outputs = {kind: call([1, 2], generator=generators(2), output_type=kind) for kind in pipe.output_types}
    latents = latents_of(name, outputs["latent"])
    for output in outputs.values():  # the same draws whatever is returned
        assert torch.equal(latents_of(name, output), latents)
    assert torch.equal(outputs[own].images, latents)
    if name == "tokenbridge":  # "latent": the dequantized latents of the indices
        transformer = pipe.transformer
        expected = transformer.unpatchify(transformer.quantizer.dequantize(latents))
        assert torch.equal(outputs["latent"].images, expected)
    else:  # "latent" and "counts" are the same count vectors
        assert torch.equal(outputs["latent"].images, latents)
    pil, array, tensor = outputs["pil"].images, outputs["np"].images, outputs["pt"].images
    assert isinstance(pil, list) and len(pil) == 2 and all(isinstance(image, PIL.Image.Image) for image in pil)
    size = pil[0].size[0]
    assert array.shape == (2, size, size, 3) and 0 <= array.min() and array.max() <= 1
    assert tensor.shape == (2, 3, size, size)
    np.testing.assert_allclose(tensor.permute(0, 2, 3, 1).numpy(), array, atol=1e-6)
    images, returned = call([1, 2], generator=generators(2), output_type="latent", return_dict=False)
    assert torch.equal(returned, latents) and torch.equal(images, outputs["latent"].images)


# ---------------------------------------------------------------- callbacks


def test_latents_callback_reads_the_same_tensor_as_the_alias(system):
    name, pipe, call = system
    alias = pipe._callback_latents_aliases[0]
    assert alias == ("sample" if name != "tokenbridge" else "indices")
    steps = []

    def callback(pipeline, step_index, timestep, tensors):
        assert tensors["latents"] is tensors[alias]
        steps.append((step_index, tensors["latents"].clone()))
        return {}

    output = call([0, 1], generator=generators(2), output_type="latent", callback_on_step_end=callback)
    assert [step for step, _ in steps] == list(range(pipe.num_timesteps))
    assert torch.equal(steps[-1][1], latents_of(name, output))  # the last step's latents are the output


def test_latents_callback_may_replace_the_latents(system):
    """A valid replacement at the last step is what the call returns."""
    name, pipe, call = system
    replaced = []

    def callback(pipeline, step_index, timestep, tensors):
        if step_index < pipeline.num_timesteps - 1:
            return {}
        latents = tensors["latents"]
        if name == "tokenbridge":  # other level indices
            new = (latents + 1) % pipeline.transformer.quantizer.num_levels
        else:  # the counts moved within each row: the same totals
            new = latents.roll(1, dims=-1)
        replaced.append(new)
        return {"latents": new}

    output = call([0, 1], generator=generators(2), output_type="latent", callback_on_step_end=callback)
    assert len(replaced) == 1 and torch.equal(latents_of(name, output), replaced[0])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda latents: latents[:1], r"must have the shape of the latents it got"),
        (lambda latents: latents.float(), r"integer"),
        (lambda latents: latents * 0 - 1, r"\[0, "),
    ],
)
def test_latents_callback_replacements_are_checked(system, make, message):
    _, _, call = system

    def callback(pipeline, step_index, timestep, tensors):
        return {"latents": make(tensors["latents"])}

    with pytest.raises(ValueError, match=rf"`latents returned by callback_on_step_end`.*{message}"):
        call([0, 1], output_type="latent", callback_on_step_end=callback)


def test_latents_and_alias_must_not_disagree(system):
    _, pipe, call = system
    alias = pipe._callback_latents_aliases[0]

    def callback(pipeline, step_index, timestep, tensors):
        return {"latents": tensors["latents"].clone(), alias: tensors["latents"].clone()}

    with pytest.raises(ValueError, match="different tensors"):
        call([0], output_type="latent", callback_on_step_end=callback)


def test_guidance_and_steps_properties(system):
    name, pipe, call = system
    call([0], guidance_scale=1.5, num_inference_steps=4, output_type="latent")
    assert pipe.guidance_scale == 1.5
    assert pipe.num_timesteps == (2 if name == "img2img" else 4)  # img2img: floor(0.7 * 4) steps of 4


def test_classifier_free_guidance_and_interrupt_properties(system):
    name, pipe, call = system
    call([0], guidance_scale=1.5, output_type="latent")
    assert pipe.do_classifier_free_guidance is True and pipe.interrupt is False
    call([0], guidance_scale=1.0, output_type="latent")
    assert pipe.do_classifier_free_guidance is False
    if name != "tokenbridge":  # a per-step guidance list guides if any step does
        call([0], guidance_scale=[1.0, 2.0], output_type="latent")
        assert pipe.do_classifier_free_guidance is True


def _spy_guidance(pipe, monkeypatch) -> list[float]:
    """The guidance scale each model call of `pipe` gets, in order."""
    used = []
    if isinstance(pipe, TokenBridgePipeline):
        guided = pipe.guided_features

        def spy(values, step_index, orders, class_labels, guidance_scale=1.0, *args, **kwargs):
            used.append(guidance_scale)
            return guided(values, step_index, orders, class_labels, guidance_scale, *args, **kwargs)

        monkeypatch.setattr(pipe, "guided_features", spy)
    else:
        guided = pipe.guided_probabilities

        def spy(sample, t, labels, guidance_scale=1.0):
            used.append(guidance_scale)
            return guided(sample, t, labels, guidance_scale)

        monkeypatch.setattr(pipe, "guided_probabilities", spy)
    return used


def test_guidance_cutoff_callback(system, monkeypatch):
    """diffusers' guidance cut-off: a step-end callback reads `num_timesteps` and `do_classifier_free_guidance` and
    sets `_guidance_scale` to 1.0 (no guidance) from a fraction of the steps on; the later steps run unguided."""
    name, pipe, call = system
    seen = []

    def cutoff(pipeline, step_index, timestep, tensors):
        seen.append(pipeline.do_classifier_free_guidance)
        if step_index + 1 == int(0.5 * pipeline.num_timesteps):
            pipeline._guidance_scale = 1.0
        return tensors

    used = _spy_guidance(pipe, monkeypatch)
    kwargs = {"num_inference_steps": 4, "output_type": "latent", "generator": generators(1)}
    if name == "img2img":
        kwargs["strength"] = 1.0
    cut = latents_of(name, call([1], guidance_scale=3.0, callback_on_step_end=cutoff, **kwargs))
    assert pipe.num_timesteps == 4
    assert used == [3.0, 3.0, 1.0, 1.0]
    assert seen == [True, True, False, False]
    del used[:]
    constant = latents_of(name, call([1], guidance_scale=3.0, **kwargs))
    assert used == [3.0] * 4
    assert not torch.equal(cut, constant)


def test_callback_increases_guidance_as_diffusers_tests_it(system):
    """diffusers' `test_callback_cfg`: a callback adding 1 to `_guidance_scale` at every step ends at the given scale
    plus `num_timesteps`; and its `test_callback_inputs`: the call takes `callback_on_step_end_tensor_inputs` whose
    names are all in `_callback_tensor_inputs`, and the callback gets exactly the tensors asked for."""
    import inspect

    name, pipe, call = system
    parameters = inspect.signature(pipe.__call__).parameters
    assert "callback_on_step_end" in parameters and "callback_on_step_end_tensor_inputs" in parameters
    defaults = parameters["callback_on_step_end_tensor_inputs"].default
    assert set(defaults) <= set(pipe._callback_tensor_inputs)

    def increase(pipeline, step_index, timestep, tensors):
        assert set(tensors) == set(pipeline._callback_tensor_inputs)
        pipeline._guidance_scale += 1.0
        return tensors

    call(
        [0],
        guidance_scale=2.0,
        output_type="latent",
        callback_on_step_end=increase,
        callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs,
    )
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps


def test_interrupt_skips_the_remaining_steps(system):
    """A callback that sets `_interrupt` at step 1: no later step runs (nor its callback), the latents of step 1 are
    returned, and the next call runs every step again."""
    name, pipe, call = system
    seen = {}

    def stop(pipeline, step_index, timestep, tensors):
        seen[step_index] = tensors["latents"].clone()
        if step_index == 1:
            pipeline._interrupt = True
        return tensors

    kwargs = {"num_inference_steps": 4, "output_type": "latent", "generator": generators(1)}
    if name == "img2img":
        kwargs["strength"] = 1.0
    interrupted = call([2], callback_on_step_end=stop, **kwargs)
    assert sorted(seen) == [0, 1] and pipe.interrupt is True
    assert torch.equal(latents_of(name, interrupted), seen[1])
    seen.clear()
    kwargs["generator"] = generators(1)
    call([2], callback_on_step_end=lambda pipeline, i, t, tensors: seen.setdefault(i, tensors) and tensors, **kwargs)
    assert sorted(seen) == [0, 1, 2, 3] and pipe.interrupt is False


# ---------------------------------------------------------------- image variations on the generation loop


def test_img2img_strength_one_is_generation_also_in_chunks(pipelines, start_counts):
    generate, vary = pipelines["tokenset"], pipelines["img2img"]
    kwargs = {"num_inference_steps": 3, "output_type": "latent", "num_images_per_class": 2}
    plain = generate([0, 2], generator=generators(4), **kwargs)
    varied = vary(counts=start_counts, class_labels=[0, 2], strength=1.0, generator=generators(4), **kwargs)
    chunked = vary(
        counts=start_counts, class_labels=[0, 2], strength=1.0, generator=generators(4), batch_size=3, **kwargs
    )
    assert torch.equal(varied.counts, plain.counts) and torch.equal(chunked.counts, plain.counts)


def test_img2img_strength_zero_returns_the_start_for_every_copy(pipelines, start_counts):
    vary = pipelines["img2img"]
    output = vary(counts=start_counts, class_labels=[0, 1], strength=0.0, num_images_per_class=2, output_type="latent")
    assert torch.equal(output.counts, start_counts.expand(4, -1))

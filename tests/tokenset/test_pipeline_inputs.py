"""TokenSetPipeline's inputs: every bad argument fails at once with a message naming it, its value and what is
allowed; numpy numbers count as numbers; `batch_size` chunks give the images of one batch; a request that cannot fit
fails before anything is allocated; wrong component classes are refused at construction and at load."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from tokenset_diffusers import FSDDScheduler, TokenSetPipeline, TokenSetTransformer1DModel, TokenSetVQVAE
from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.utils.testing_utils import TINY_GENERATOR, TINY_TOKENIZER


C, M, K = TINY_TOKENIZER["codebook_size"], TINY_TOKENIZER["num_tokens"], 3


@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    image_tokenizer = TokenSetVQVAE(TokenSetVQVAEConfig(**TINY_TOKENIZER)).eval()
    transformer = TokenSetTransformer1DModel(codebook_size=C, num_tokens=M, num_classes=K, **TINY_GENERATOR).eval()
    pipe = TokenSetPipeline(
        image_tokenizer,
        transformer,
        FSDDScheduler(codebook_size=C, num_tokens=M),
        id2label={0: "red", 1: "green", 2: "blue"},
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


@pytest.mark.parametrize(
    "class_labels, message",
    [
        (3.5, r"`class_labels` must be a class id \(int\), a class name \(str\), or a list, .*got float 3.5"),
        ({0: "a", 1: "b"}, r"`class_labels` must be a class id .*got dict \{0: 'a', 1: 'b'\}"),
        (b"1", r"`class_labels` must be a class id .*got bytes b'1'"),
        (True, r"`class_labels` must be a class id .*got bool True"),
        ({1, 2}, r"got set \{1, 2\}"),
        ([0, 1.5], r"`class_labels` must hold class ids \(int\) or names \(str\), got float 1.5"),
        ([0, None], r"must hold class ids \(int\) or names \(str\), got NoneType None"),
        (torch.tensor([0.0, 1.0]), r"must hold integer class ids, got a Tensor of dtype torch.float32"),
        (np.array([True]), r"must hold integer class ids, got a ndarray of dtype bool"),
        ([], "`class_labels` is empty"),
        ([3], r"Class id 3 is out of range: this model has 3 classes"),
    ],
)
def test_bad_class_labels(pipeline, class_labels, message):
    with pytest.raises(ValueError, match=message):
        pipeline(class_labels, num_inference_steps=1, output_type="counts")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": True}, r"`num_inference_steps` must be an integer >= 1, got bool True"),
        ({"num_inference_steps": 2.0}, r"`num_inference_steps` must be an integer >= 1, got float 2.0"),
        ({"num_inference_steps": 0}, r"`num_inference_steps` must be an integer >= 1, got int 0"),
        ({"num_images_per_class": False}, r"`num_images_per_class` must be an integer >= 1, got bool False"),
        ({"batch_size": 0}, r"`batch_size` must be an integer >= 1, got int 0"),
        ({"batch_size": "2"}, r"`batch_size` must be an integer >= 1, got str '2'"),
        ({"generator": 0}, r"`generator` must be a torch.Generator or a list of them .*got int 0"),
        ({"generator": b"1"}, r"`generator` must be a torch.Generator .*got bytes b'1'"),
        ({"generator": [0, 1]}, r"`generator` must be a torch.Generator .*got list \[0, 1\]"),
        ({"generator": generators(3)}, r"Got 3 generators for 2 images; pass one per image"),
        (
            {"guidance_scale": 1e39},
            r"`guidance_scale` values must be finite numbers in \[0, 10000\] .*got float 1e\+39",
        ),
        ({"guidance_scale": float("inf")}, r"`guidance_scale` values must be finite numbers .*got float inf"),
        ({"guidance_scale": float("nan")}, r"`guidance_scale` values must be finite numbers .*got float nan"),
        ({"guidance_scale": -1}, r"`guidance_scale` values must be finite numbers in \[0, 10000\].*got int -1"),
        ({"guidance_scale": [4.0, 1e39]}, r"`guidance_scale` values must be finite .*got list \[4.0, 1e\+39\]"),
        ({"guidance_scale": "4"}, r"`guidance_scale` must be a number or a non-empty list of numbers, got str '4'"),
        ({"guidance_scale": b"1"}, r"`guidance_scale` must be a number .*got bytes b'1'"),
        ({"guidance_scale": True}, r"`guidance_scale` must be a number .*got bool True"),
        ({"guidance_scale": {4.0: 1}}, r"`guidance_scale` must be a number .*got dict"),
        ({"guidance_scale": []}, r"`guidance_scale` must be a number or a non-empty list"),
        ({"output_type": "png"}, r"`output_type` must be one of .*got str 'png'"),
        ({"callback_on_step_end": "print"}, r"`callback_on_step_end` must be callable, got str 'print'"),
    ],
)
def test_bad_arguments(pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipeline([0, 1], **{"num_inference_steps": 1, "output_type": "counts", **kwargs})


def test_numpy_numbers_are_numbers(pipeline):
    reference = pipeline(
        [1, 2], num_inference_steps=2, guidance_scale=4.0, generator=generators(2), output_type="counts"
    )
    for labels, steps, scale in [
        (np.array([1, 2]), np.int64(2), np.float32(4)),
        (torch.tensor([1, 2]), 2, np.array([4.0])),
        ([np.int32(1), "blue"], np.int16(2), torch.tensor(4.0)),
    ]:
        output = pipeline(
            labels, num_inference_steps=steps, guidance_scale=scale, generator=generators(2), output_type="counts"
        )
        assert torch.equal(output.counts, reference.counts)


@pytest.mark.parametrize(
    "replace, message",
    [
        (torch.zeros_like, r"must keep every row's total of 8 tokens .*got row sums \[0, 0, 0\]"),
        (lambda s: s[:1], r"must have the shape of the latents it got, \(3, 32\), got \(1, 32\)"),
        (lambda s: s.float(), r"must be an integer count tensor, got dtype torch.float32"),
        (lambda s: s * 0 - 1, r"must hold counts in \[0, num_tokens=8\]"),
    ],
)
def test_callback_samples_off_the_constraint_are_refused(pipeline, replace, message):
    def callback(pipe, step, timestep, tensors):
        return {"sample": replace(tensors["sample"])}

    with pytest.raises(ValueError, match=rf"`sample returned by callback_on_step_end`.*{message}"):
        pipeline([0, 1, 2], num_inference_steps=2, callback_on_step_end=callback, output_type="counts")


def test_callback_may_move_counts_within_a_row(pipeline):
    def callback(pipe, step, timestep, tensors):
        return {"sample": tensors["sample"].flip(-1)}  # a permutation of the counts: the same total

    output = pipeline([0, 1], num_inference_steps=2, callback_on_step_end=callback, output_type="counts")
    assert output.counts.shape == (2, C)


@pytest.mark.parametrize("output_type", ["pil", "np", "counts"])
def test_chunks_give_the_images_of_one_batch(pipeline, output_type):
    labels = [0, 1, 2, 0, 1]
    whole = pipeline(labels, num_inference_steps=2, generator=generators(5), output_type=output_type)
    for batch_size in (2, 1) if output_type == "counts" else (2,):
        chunked = pipeline(
            labels, num_inference_steps=2, generator=generators(5), output_type=output_type, batch_size=batch_size
        )
        assert torch.equal(chunked.counts, whole.counts)  # the same draws, chunk by chunk
        assert type(chunked.images) is type(whole.images) and len(chunked.images) == len(whole.images)
        if output_type == "pil":
            difference = max(
                np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max()
                for a, b in zip(chunked.images, whole.images)
            )
            assert difference <= 1  # decoding in other batch sizes rounds float32 differently, at most 1 level
        elif output_type == "np":
            np.testing.assert_allclose(chunked.images, whole.images, atol=1e-5)


def test_one_generator_is_drawn_from_chunk_after_chunk(pipeline):
    first = pipeline(
        [0, 1, 2],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(3),
        batch_size=2,
        output_type="counts",
    )
    second = pipeline(
        [0, 1, 2],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(3),
        batch_size=2,
        output_type="counts",
    )
    assert torch.equal(first.counts, second.counts)  # reproducible


def test_a_request_that_cannot_fit_fails_before_allocating(pipeline):
    with pytest.raises(
        ValueError,
        match=r"This request cannot fit: 1000000000000 images need at least .* GiB of host memory .*smaller `batch_size`",
    ):
        pipeline([0], num_images_per_class=10**12, num_inference_steps=1, output_type="np")
    with pytest.raises(ValueError, match=r"the guided probabilities of a batch of 1000000000000"):
        pipeline([0], num_images_per_class=10**12, num_inference_steps=1, output_type="counts", guidance_scale=4.0)


def test_wrong_component_classes_are_refused(pipeline, tmp_path):
    with pytest.raises(ValueError, match=r"`scheduler` must be a FSDDScheduler, got DDPMScheduler"):
        TokenSetPipeline(pipeline.image_tokenizer, pipeline.transformer, DDPMScheduler())
    with pytest.raises(ValueError, match=r"`transformer` must be a TokenSetTransformer1DModel, got TokenSetVQVAE"):
        TokenSetPipeline(pipeline.image_tokenizer, pipeline.image_tokenizer, pipeline.scheduler)
    folder = tmp_path / "pipe"
    pipeline.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    for name, entry in (("scheduler", ["diffusers", "DDPMScheduler"]), ("transformer", ["transformers", "GPT2Model"])):
        broken = tmp_path / f"broken_{name}"
        shutil.copytree(folder, broken)
        (broken / "model_index.json").write_text(json.dumps({**index, name: entry}))
        with pytest.raises(
            ValueError,
            match=rf"model_index.json: `{name}` is \['{entry[0]}', '{entry[1]}'\]; a TokenSetPipeline needs a",
        ):
            TokenSetPipeline.from_pretrained(broken)


def test_mistyped_local_path_is_reported_as_a_folder(pipeline, tmp_path):
    folder = tmp_path / "my_pipeline"
    pipeline.save_pretrained(folder)
    typo = str(tmp_path / "my_pipelne")
    with pytest.raises(
        OSError, match=rf"TokenSetPipeline: there is no folder '{typo}' .*Did you mean '.*my_pipeline'"
    ):
        TokenSetPipeline.from_pretrained(typo)
    with pytest.raises(OSError, match=r"there is no folder './no/such/pipeline'"):
        TokenSetPipeline.from_pretrained("./no/such/pipeline")

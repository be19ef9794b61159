"""`save_pretrained(variant=...)` / `from_pretrained(variant=...)` for both systems' pipelines: every model component
writes its variant weights file (the set tokenizer, a transformers model, included) and the pipeline loads them
back, weights equal, also from a folder that holds the variant files alone."""

import os

import pytest
import torch
from diffusers import DiffusionPipeline

from tokenset_diffusers import TokenBridgePipeline, TokenSetPipeline, TokenSetVQVAE
from tokenset_diffusers.bundled import bundled_pipeline_path


SYSTEMS = {
    "tokenset": (TokenSetPipeline, "digits", {"image_tokenizer": "model", "transformer": "diffusion_pytorch_model"}),
    "tokenbridge": (
        TokenBridgePipeline,
        "tokenbridge-digits",
        {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"},
    ),
}


def _weights(folder) -> set[str]:
    return {
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
        if name.endswith((".safetensors", ".bin"))
    }


def _assert_same_weights(loaded, original, names):
    for name in names:
        expected = getattr(original, name).state_dict()
        actual = getattr(loaded, name).state_dict()
        assert expected.keys() == actual.keys()
        for key, tensor in expected.items():
            assert torch.equal(actual[key].to(tensor.dtype), tensor), f"{name}.{key}"


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_variant_round_trip(system, tmp_path):
    pipeline_class, bundled, stems = SYSTEMS[system]
    pipeline = pipeline_class.from_pretrained(bundled_pipeline_path(bundled))
    pipeline.save_pretrained(tmp_path, variant="fp16")
    # every model component, and only the variant files
    assert _weights(tmp_path) == {f"{name}/{stem}.fp16.safetensors" for name, stem in stems.items()}
    loaded = pipeline_class.from_pretrained(tmp_path, variant="fp16")
    _assert_same_weights(loaded, pipeline, stems)
    # diffusers' own loader takes the variant too
    generic = DiffusionPipeline.from_pretrained(tmp_path, variant="fp16", trust_remote_code=True)
    assert type(generic) is pipeline_class
    _assert_same_weights(generic, pipeline, stems)


def test_variant_beside_the_plain_weights_is_the_one_loaded(tmp_path):
    """A folder with plain and fp16 weights: `variant="fp16"` loads the fp16 file, not the plain one."""
    pipeline = TokenSetPipeline.from_pretrained(bundled_pipeline_path("digits"))
    pipeline.save_pretrained(tmp_path)
    changed = TokenSetPipeline.from_pretrained(bundled_pipeline_path("digits"))
    with torch.no_grad():
        for parameter in changed.image_tokenizer.parameters():
            parameter.add_(1.0)
    changed.image_tokenizer.save_pretrained(tmp_path / "image_tokenizer", variant="fp16")
    assert (tmp_path / "image_tokenizer" / "model.fp16.safetensors").is_file()
    assert (tmp_path / "image_tokenizer" / "model.safetensors").is_file()
    _assert_same_weights(TokenSetPipeline.from_pretrained(tmp_path, variant="fp16"), changed, ["image_tokenizer"])
    _assert_same_weights(TokenSetPipeline.from_pretrained(tmp_path), pipeline, ["image_tokenizer"])
    direct = TokenSetVQVAE.from_pretrained(tmp_path / "image_tokenizer", variant="fp16")
    _assert_same_weights(type("P", (), {"image_tokenizer": direct}), changed, ["image_tokenizer"])

"""Broken saved folders fail at load with a message naming the file and the component: truncated, empty or garbage
weights, a missing `config.json`, a config whose layer count disagrees with the weights, and a mistyped local path."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from tokenset_diffusers.tokenset.transformer_tokenset import TokenSetTransformer1DModel
from tokenset_diffusers.utils.testing_utils import TINY_GENERATOR, TINY_TOKENIZER


TRANSFORMER_WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    tokenizer_config = TokenSetVQVAEConfig(**{**TINY_TOKENIZER, "encoder_num_hidden_layers": 2})
    TokenSetVQVAE(tokenizer_config).save_pretrained(root / "image_tokenizer")
    config = {"codebook_size": 32, "num_tokens": 8, "num_classes": 3, **TINY_GENERATOR, "num_layers": 2}
    TokenSetTransformer1DModel(**config).save_pretrained(root / "transformer")
    return root


@pytest.fixture
def copy(saved, tmp_path):
    def make(component: str) -> Path:
        return Path(shutil.copytree(saved / component, tmp_path / component))

    return make


MODELS = {
    "image_tokenizer": (TokenSetVQVAE, "model.safetensors", "encoder_num_hidden_layers"),
    "transformer": (TokenSetTransformer1DModel, TRANSFORMER_WEIGHTS, "num_layers"),
}


@pytest.mark.parametrize("component", list(MODELS))
def test_intact_folders_load(saved, component):
    model_class, _, _ = MODELS[component]
    assert isinstance(model_class.from_pretrained(saved / component), model_class)


@pytest.mark.parametrize("component", list(MODELS))
@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda data: data[: len(data) // 2], "incomplete metadata"),
        (lambda data: b"", "header too small"),
        (lambda data: b"not a safetensors file at all" * 30, "header too large|invalid"),
    ],
    ids=["truncated", "empty", "garbage"],
)
def test_unreadable_weights_are_named(copy, component, damage, why):
    model_class, weights, _ = MODELS[component]
    folder = copy(component)
    path = folder / weights
    path.write_bytes(damage(path.read_bytes()))
    size = path.stat().st_size
    message = (
        rf"{model_class.__name__}: cannot read the weights file {path} \({size} bytes\): .*({why}).*truncated, empty"
    )
    with pytest.raises(OSError, match=message):
        model_class.from_pretrained(folder)


@pytest.mark.parametrize("component", list(MODELS))
def test_missing_config_is_reported_missing(copy, component):
    model_class, weights, _ = MODELS[component]
    folder = copy(component)
    (folder / "config.json").unlink()
    # The folder's listing is named (a saved tokenizer also holds its import-only remote-code files).
    with pytest.raises(OSError, match=rf"{model_class.__name__}: {folder} has no config.json.*holds \[.*'{weights}'"):
        model_class.from_pretrained(folder)


@pytest.mark.parametrize("component", list(MODELS))
@pytest.mark.parametrize("change, problem", [(1, "the config needs are not in the file"), (-1, "have no place")])
def test_layer_count_that_disagrees_with_the_weights(copy, component, change, problem):
    model_class, weights, field = MODELS[component]
    folder = copy(component)
    config = json.loads((folder / "config.json").read_text())
    config[field] += change
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=rf"{model_class.__name__}: the weights in {folder / weights} do not fit .*{problem}"
    ):
        model_class.from_pretrained(folder)


def test_another_width_is_reported_by_shape(copy):
    folder = copy("transformer")
    config = json.loads((folder / "config.json").read_text())
    config["attention_head_dim"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tensors have another shape \(.*: file \(\d+, \d+\) vs config \(\d+, \d+\)"):
        TokenSetTransformer1DModel.from_pretrained(folder)


@pytest.mark.parametrize("component", list(MODELS))
def test_mistyped_local_path_is_not_called_a_repo_id(saved, component):
    model_class, _, _ = MODELS[component]
    typo = str(saved / component)[:-1] + "x"
    with pytest.raises(OSError, match=rf"there is no folder '{typo}' .*Did you mean '.*{component}'\?"):
        model_class.from_pretrained(typo)
    with pytest.raises(OSError, match="is a file; pass the folder"):
        model_class.from_pretrained(saved / component / "config.json")

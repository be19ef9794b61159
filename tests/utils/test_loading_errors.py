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


# ---------------------------------------------------------------- every class of both systems, one strict loader

RELEASE_0_1 = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1"


def _pipeline_classes():
    from tokenset_diffusers import TokenBridgePipeline, TokenSetPipeline

    return {"tokenset_tiny": TokenSetPipeline, "tokenbridge_tiny": TokenBridgePipeline}


def _model_class(name):
    from diffusers import AutoencoderKL

    from tokenset_diffusers import TokenBridgeTransformer2DModel

    return {
        "TokenSetVQVAE": TokenSetVQVAE,
        "TokenSetTransformer1DModel": TokenSetTransformer1DModel,
        "TokenBridgeTransformer2DModel": TokenBridgeTransformer2DModel,
        "AutoencoderKL": AutoencoderKL,
    }[name]


# (pipeline folder saved by release 0.1, component, class, a layer count of its config, loaded by)
COMPONENTS = [
    ("tokenset_tiny", "image_tokenizer", "TokenSetVQVAE", "encoder_num_hidden_layers", "model"),
    ("tokenset_tiny", "image_tokenizer", "TokenSetVQVAE", "encoder_num_hidden_layers", "pipeline"),
    ("tokenset_tiny", "transformer", "TokenSetTransformer1DModel", "num_layers", "model"),
    ("tokenset_tiny", "transformer", "TokenSetTransformer1DModel", "num_layers", "pipeline"),
    ("tokenbridge_tiny", "transformer", "TokenBridgeTransformer2DModel", "decoder_num_layers", "model"),
    ("tokenbridge_tiny", "transformer", "TokenBridgeTransformer2DModel", "decoder_num_layers", "pipeline"),
    # diffusers' own class, as a TokenBridge pipeline's `vae`: the pipeline checks its folder before diffusers loads it
    ("tokenbridge_tiny", "vae", "AutoencoderKL", "layers_per_block", "pipeline"),
]


def _rewrite_weights(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _more_layers(folder, weights, field):
    """The issue's case: a config with two more layers than the weights; returns the keys the weights lack."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config[field] += 2
    config_path.write_text(json.dumps(config))
    return None  # computed by the test from the model the new config builds


def _unexpected_key(folder, weights, field):
    _rewrite_weights(folder / weights, lambda tensors: tensors.__setitem__("extra_block.weight", torch.zeros(3)))
    return {"extra_block.weight"}


def _reshaped(folder, weights, field):
    from safetensors import safe_open

    with safe_open(folder / weights, framework="pt") as handle:
        name = next(key for key in sorted(handle.keys()) if handle.get_slice(key).get_shape())
    _rewrite_weights(
        folder / weights, lambda tensors: tensors.__setitem__(name, torch.zeros(tensors[name].numel() + 1))
    )
    return {name}


def _missing_file(folder, weights, field):
    (folder / weights).unlink()
    return "any"


def _truncated(folder, weights, field):
    data = (folder / weights).read_bytes()
    (folder / weights).write_bytes(data[: len(data) // 2])
    return "any"


DAMAGES = {
    "more_layers": (_more_layers, ValueError),
    "unexpected_key": (_unexpected_key, ValueError),
    "shape_mismatch": (_reshaped, ValueError),
    "missing_weights_file": (_missing_file, OSError),
    "truncated_file": (_truncated, OSError),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize(
    "system, component, class_name, field, loaded_by",
    COMPONENTS,
    ids=[f"{class_name}-by-{loaded_by}" for _, _, class_name, _, loaded_by in COMPONENTS],
)
def test_every_class_refuses_weights_that_do_not_fit(
    tmp_path, system, component, class_name, field, loaded_by, damage
):
    """Missing, unexpected or reshaped weights, a config with more layers than the weights, and a missing or truncated
    weights file fail before anything is loaded, whether the model class or its pipeline loads the folder: an error
    naming the folder, the weights file and a key, never random weights or only a warning."""
    from safetensors import safe_open

    pipeline_folder = Path(shutil.copytree(RELEASE_0_1 / system, tmp_path / system))
    folder = pipeline_folder / component
    (weights,) = [path.name for path in folder.glob("*.safetensors")]
    with safe_open(folder / weights, framework="pt") as handle:
        saved_keys = set(handle.keys())
    damage_folder, error = DAMAGES[damage]
    keys = damage_folder(folder, weights, field)
    model_class = _model_class(class_name)
    if keys is None:  # a second computation: the tensors the new config's model has and the file lacks
        config = model_class.config_class.from_pretrained(folder) if class_name == "TokenSetVQVAE" else None
        model = model_class(config) if config is not None else model_class.from_config(model_class.load_config(folder))
        keys = set(model.state_dict()) - saved_keys
        assert keys
    elif keys == "any":
        keys = saved_keys
    loader = model_class if loaded_by == "model" else _pipeline_classes()[system]
    with pytest.raises(error) as raised:
        loader.from_pretrained(folder if loaded_by == "model" else pipeline_folder)
    message = str(raised.value)
    assert str(folder) in message and weights in message and class_name in message
    assert any(key in message for key in keys), message


def test_intact_release_folders_load_with_both_loaders():
    for system, pipeline_class in _pipeline_classes().items():
        pipeline = pipeline_class.from_pretrained(RELEASE_0_1 / system)
        for component, class_name in (
            ("image_tokenizer", "TokenSetVQVAE"),
            ("transformer", "TokenSetTransformer1DModel"),
            ("transformer", "TokenBridgeTransformer2DModel"),
        ):
            if getattr(pipeline, component, None).__class__.__name__ == class_name:
                loaded = _model_class(class_name).from_pretrained(RELEASE_0_1 / system / component)
                for name, tensor in getattr(pipeline, component).state_dict().items():
                    assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    "folder_of, loader",
    [
        ("tokenbridge_tiny", "TokenSetPipeline"),
        ("tokenbridge_tiny", "TokenSetImg2ImgPipeline"),
        ("tokenset_tiny", "TokenBridgePipeline"),
    ],
)
def test_the_other_systems_folder_is_named_with_its_loader(folder_of, loader):
    import tokenset_diffusers

    other = {"tokenbridge_tiny": "TokenBridgePipeline", "tokenset_tiny": "TokenSetPipeline"}[folder_of]
    with pytest.raises(
        ValueError, match=rf"holds a saved {other} .* not a {loader}.*Load it with `{other}.from_pretrained"
    ):
        getattr(tokenset_diffusers, loader).from_pretrained(RELEASE_0_1 / folder_of)


@pytest.mark.parametrize("damage", ["more_layers", "unexpected_key"])
def test_bare_diffusion_pipeline_refuses_a_vae_that_does_not_fit(tmp_path, damage):
    """diffusers loads TokenBridge's `AutoencoderKL` itself, with random weights and a warning where they do not fit;
    the pipeline refuses such a VAE also when diffusers alone loads the folder."""
    from diffusers import DiffusionPipeline

    from tokenset_diffusers.utils.remote_code import write_remote_code_files

    folder = Path(shutil.copytree(RELEASE_0_1 / "tokenbridge_tiny", tmp_path / "tokenbridge"))
    write_remote_code_files(folder)
    DAMAGES[damage][0](folder / "vae", "diffusion_pytorch_model.safetensors", "layers_per_block")
    with pytest.raises(ValueError, match=rf"AutoencoderKL: the weights in {folder / 'vae'}/diffusion_pytorch_model"):
        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)


# ---------------------------------------------------------------------- errors that point the way


@pytest.mark.parametrize(
    "bundled, loader, other",
    [
        ("tokenbridge-digits", "TokenSetPipeline", "TokenBridgePipeline"),
        ("digits", "TokenBridgePipeline", "TokenSetPipeline"),
    ],
)
def test_the_other_systems_bundled_folder_names_both_loaders_in_one_line(bundled, loader, other):
    import tokenset_diffusers
    from tokenset_diffusers.bundled import bundled_pipeline_path

    with pytest.raises(ValueError) as error:
        getattr(tokenset_diffusers, loader).from_pretrained(bundled_pipeline_path(bundled))
    message = str(error.value)
    assert f"holds a saved {other}" in message and f"not a {loader}" in message
    assert f"`{other}.from_pretrained(...)`" in message
    assert "`diffusers.DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`" in message
    assert "\n" not in message


@pytest.mark.parametrize("loader", ["TokenSetPipeline", "TokenBridgePipeline"])
@pytest.mark.parametrize("name", ["someone/no-such-model", "not a repo id"])
def test_an_unreachable_model_name_is_one_line(loader, name, tmp_path, monkeypatch):
    """Offline and not cached (or not a repo id at all): one line saying what the name is not, naming the bundled
    pipelines, without the Hub's traceback."""
    import tokenset_diffusers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(OSError) as error:
        getattr(tokenset_diffusers, loader).from_pretrained(name, cache_dir=str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"{loader}: {name!r} is not a folder, and not a Hub repository that could be downloaded")
    assert "digits, tokenset-digits, tokenbridge-digits" in message and "bundled_pipeline_path(name)" in message
    assert "\n" not in message
    assert error.value.__suppress_context__  # the Hub's own traceback is not chained on


def test_an_unknown_class_name_lists_the_names_or_how_to_list_them():
    from tokenset_diffusers.class_labels import ClassLabelsMixin, label_to_id

    class Labelled(ClassLabelsMixin):
        def __init__(self, id2label):
            self.labels = label_to_id(id2label)

    few = Labelled({0: "zero", 1: "one", 2: "two, deux"})
    with pytest.raises(ValueError) as error:
        few.get_label_ids("tow")
    assert str(error.value) == (
        "Unknown class name 'tow'. Close matches: ['two']. The class names are ['zero', 'one', 'two, deux', 'two', "
        "'deux']."
    )
    many = Labelled({i: f"class {i}" for i in range(1000)} | {7: "golden retriever"})
    with pytest.raises(ValueError) as error:
        many.get_label_ids("golden retreiver")
    message = str(error.value)
    assert "Close matches: ['golden retriever'" in message
    assert "`sorted(pipeline.labels)` lists all 1000 names" in message and "class 999" not in message
    with pytest.raises(ValueError, match=r"^Unknown class name 'zzzz'\. `sorted\(pipeline\.labels\)`"):
        many.get_label_ids("zzzz")

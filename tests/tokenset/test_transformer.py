"""Tests of `TokenSetTransformer1DModel` and the conversion of the original DiT-1D weights.

Ground truth: `fixtures/dit1d_tiny.*` (outputs of the original code, C = 64, M = 16, K = 10, width 64, depth 2,
4 heads) and `fixtures/original_checkpoint_manifest.json` (keys and shapes of the released checkpoints).
"""

import argparse
import inspect
import json
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenset_diffusers.tokenset.transformer_tokenset import (
    TRANSFORMER_PRESETS,
    TokenSetTransformer1DModel,
    TokenSetTransformer1DModelOutput,
)


ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "conversion"))

from transformer_conversion import (  # noqa: E402
    convert_transformer,
    convert_transformer_state_dict,
    infer_transformer_config,
    load_original_generator_checkpoint,
)


FIXTURE_HEADS = 4
# Parameter counts of the released originals (docs/tokenset.md#transformer); they include the unused count-embedding
# rows.
RELEASED_PARAMS = {"fsdd_small_128_4096.pth": 36_041_985, "fsdd_base_128_4096.pth": 136_669_569}
PRESET_OF_CHECKPOINT = {"fsdd_small_128_4096.pth": "S", "fsdd_base_128_4096.pth": "B"}
FP32_MODULES = TokenSetTransformer1DModel._keep_in_fp32_modules
TINY_CONFIG = {
    "codebook_size": 32,
    "num_tokens": 8,
    "num_classes": 5,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
}


class NotAllowed:
    """Stands for an arbitrary class that a malicious checkpoint could ask to unpickle."""

    def __init__(self):
        self.payload = "anything"


@pytest.fixture(scope="module")
def original_state_dict():
    return load_file(FIXTURES / "dit1d_tiny.original.safetensors")


@pytest.fixture(scope="module")
def fixture_io():
    return load_file(FIXTURES / "dit1d_tiny.io.safetensors")


@pytest.fixture(scope="module")
def manifest():
    return json.loads((FIXTURES / "original_checkpoint_manifest.json").read_text())


@pytest.fixture
def converted(original_state_dict):
    return convert_transformer(original_state_dict, num_attention_heads=FIXTURE_HEADS)


def fixture_logits(model, fixture_io, class_labels=None):
    class_labels = fixture_io["y"] if class_labels is None else class_labels
    with torch.no_grad():
        return model(fixture_io["counts"], fixture_io["t"], class_labels).logits


def random_tiny_model(seed=0, **overrides):
    """A tiny model with every parameter random (the DiT init zeroes the gates and the output layer)."""
    generator = torch.Generator().manual_seed(seed)
    model = TokenSetTransformer1DModel(**{**TINY_CONFIG, **overrides})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def random_inputs(config, batch_size=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randint(0, config["num_tokens"] + 1, (batch_size, config["codebook_size"]), generator=generator)
    timestep = torch.rand(batch_size, generator=generator)
    class_labels = torch.randint(0, config["num_classes"] + 1, (batch_size,), generator=generator)
    return sample, timestep, class_labels


def meta_state_dict(shapes):
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def record_output_dtypes(model, names):
    """Forward hooks recording the output dtype of every module whose name ends with one of `names`."""
    dtypes, handles = {}, []
    for name, module in model.named_modules():
        if name.split(".")[-1] in names:
            handles.append(
                module.register_forward_hook(lambda mod, args, out, name=name: dtypes.__setitem__(name, out.dtype))
            )
    return dtypes, handles


# ----------------------------------------------------------------------------------------------- fixture conformance


def test_converted_tiny_model_matches_original_logits(converted, fixture_io):
    logits = fixture_logits(converted, fixture_io)
    assert logits.shape == (4, 64, 17)
    torch.testing.assert_close(logits, fixture_io["logits"], atol=1e-5, rtol=0)


def test_converted_tiny_model_matches_original_null_class_logits(converted, fixture_io):
    null_labels = torch.full_like(fixture_io["y"], converted.config.num_classes)
    logits = fixture_logits(converted, fixture_io, null_labels)
    torch.testing.assert_close(logits, fixture_io["logits_null_class"], atol=1e-5, rtol=0)


def test_infer_config_of_tiny_fixture(original_state_dict):
    config = infer_transformer_config(original_state_dict, num_attention_heads=FIXTURE_HEADS)
    assert config == {
        "codebook_size": 64,
        "num_tokens": 16,
        "num_classes": 10,
        "num_layers": 2,
        "num_attention_heads": 4,
        "attention_head_dim": 16,
        "mlp_ratio": 4.0,
    }
    # width 64 is not a released width: heads default to width // 64
    assert infer_transformer_config(original_state_dict)["num_attention_heads"] == 1


def test_count_embedding_rows_above_num_tokens_are_dropped(original_state_dict):
    original_table = original_state_dict["x_embedder.embedding_table.weight"]
    assert original_table.shape[0] == 65  # codebook_size + 1 rows in the original
    converted = convert_transformer_state_dict(original_state_dict)
    assert converted["count_embedder.weight"].shape == (17, 64)
    torch.testing.assert_close(converted["count_embedder.weight"], original_table[:17], atol=0, rtol=0)


# ---------------------------------------------------------------------------------- released checkpoints (manifest)


@pytest.mark.parametrize("checkpoint", ["fsdd_small_128_4096.pth", "fsdd_base_128_4096.pth"])
def test_released_checkpoint_converts_and_loads_strictly_into_preset(manifest, checkpoint):
    shapes = manifest[checkpoint]["ema"]
    assert sum(torch.Size(shape).numel() for shape in shapes.values()) == RELEASED_PARAMS[checkpoint]
    original = meta_state_dict(shapes)

    config = infer_transformer_config(original)
    preset = PRESET_OF_CHECKPOINT[checkpoint]
    expected = {"codebook_size": 4096, "num_tokens": 128, "num_classes": 1000, "mlp_ratio": 4.0}
    assert config == {**expected, **TRANSFORMER_PRESETS[preset]}

    converted = convert_transformer_state_dict(original)
    with torch.device("meta"):
        model = TokenSetTransformer1DModel.from_preset(preset)
    model.load_state_dict(converted, strict=True, assign=True)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    unused_rows = 4096 - 128  # count-embedding rows the converter drops
    assert sum(p.numel() for p in model.parameters()) == RELEASED_PARAMS[checkpoint] - unused_rows * width

    model = convert_transformer(original)
    assert model.config.num_attention_heads == TRANSFORMER_PRESETS[preset]["num_attention_heads"]


# --------------------------------------------------------------------------------------------- loading and saving


def test_save_pretrained_round_trip(converted, fixture_io, tmp_path):
    converted.save_pretrained(tmp_path)
    reloaded = TokenSetTransformer1DModel.from_pretrained(tmp_path)
    public_config = {key: value for key, value in converted.config.items() if not key.startswith("_")}
    assert {key: reloaded.config[key] for key in public_config} == public_config
    assert torch.equal(fixture_logits(reloaded, fixture_io), fixture_logits(converted, fixture_io))


def test_from_pretrained_bfloat16_keeps_fp32_modules(converted, fixture_io, tmp_path):
    converted.save_pretrained(tmp_path)
    model = TokenSetTransformer1DModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    for name, parameter in model.named_parameters():
        keep_fp32 = any(part in FP32_MODULES for part in name.split("."))
        assert parameter.dtype == (torch.float32 if keep_fp32 else torch.bfloat16), name
    assert model.dtype == torch.bfloat16
    logits = fixture_logits(model, fixture_io)
    assert logits.dtype == torch.float32
    # Same arithmetic as the original's bf16 autocast: only attention/MLP matmuls in bf16 (measured ~6e-4).
    torch.testing.assert_close(logits, fixture_io["logits"], atol=5e-3, rtol=0)


def test_keep_in_fp32_names_exist():
    model = TokenSetTransformer1DModel(**TINY_CONFIG)
    components = {part for name, _ in model.named_parameters() for part in name.split(".")}
    assert set(FP32_MODULES) <= components


# ------------------------------------------------------------------------------------------------------- precision


def test_bfloat16_forward_agrees_with_float32(converted, fixture_io):
    model = converted.to(torch.bfloat16)
    assert all(parameter.dtype == torch.bfloat16 for parameter in model.parameters())
    dtypes, handles = record_output_dtypes(model, set(FP32_MODULES) | {"attn", "ff"})
    logits = fixture_logits(model, fixture_io)
    for handle in handles:
        handle.remove()

    # The fp32 modules compute in float32 even with bf16 weights; attention and MLP run in bf16.
    for name, dtype in dtypes.items():
        expected = torch.bfloat16 if name.split(".")[-1] in ("attn", "ff") else torch.float32
        assert dtype == expected, name
    assert logits.dtype == torch.float32
    # Tolerance: bf16 weights everywhere (the fp32 modules' weights rounded too) -> max logit error measured
    # ~0.08 for logits up to ~36 in magnitude; probabilities within 1e-2.
    torch.testing.assert_close(logits, fixture_io["logits"], atol=0.25, rtol=0)
    torch.testing.assert_close(logits.softmax(-1), fixture_io["probs"], atol=1e-2, rtol=0)


def test_autocast_bfloat16_keeps_fp32_modules_in_float32(converted, fixture_io):
    dtypes, handles = record_output_dtypes(converted, set(FP32_MODULES))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = fixture_logits(converted, fixture_io)
    for handle in handles:
        handle.remove()
    assert dtypes and all(dtype == torch.float32 for dtype in dtypes.values()), dtypes
    torch.testing.assert_close(logits, fixture_io["logits"], atol=5e-3, rtol=0)


def test_layerwise_casting_skips_fp32_modules(converted, fixture_io):
    converted.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert converted.transformer_blocks[0].ff.fc1.weight.dtype == torch.float8_e4m3fn
    assert converted.proj_out.weight.dtype == torch.float32
    logits = fixture_logits(converted, fixture_io)
    torch.testing.assert_close(logits.softmax(-1), fixture_io["probs"], atol=2e-2, rtol=0)


# ----------------------------------------------------------------------------------------------- forward behaviour


def test_gradient_checkpointing_gives_same_gradients():
    model = random_tiny_model()
    sample, timestep, class_labels = random_inputs(TINY_CONFIG)

    def gradients():
        model.zero_grad()
        model(sample, timestep, class_labels).logits.logsumexp(-1).mean().backward()
        return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}

    reference = gradients()
    block_calls = []
    model.transformer_blocks[0].register_forward_pre_hook(lambda *args: block_calls.append(1))
    model.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert len(block_calls) == 2  # recomputed in backward: checkpointing is really active
    assert all(grad.abs().sum() > 0 for grad in reference.values())
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-6, rtol=1e-5, msg=name)


def test_batch_size_one_matches_batched(converted, fixture_io):
    batched = fixture_logits(converted, fixture_io)
    for index in range(2):
        with torch.no_grad():
            single = converted(
                fixture_io["counts"][index : index + 1],
                fixture_io["t"][index : index + 1],
                fixture_io["y"][index : index + 1],
            ).logits
        assert single.shape == (1, 64, 17)
        torch.testing.assert_close(single[0], batched[index], atol=1e-5, rtol=0)


@pytest.mark.parametrize("timestep", [0.7, torch.tensor(0.7)], ids=["float", "0d_tensor"])
def test_scalar_timestep_broadcasts(converted, fixture_io, timestep):
    with torch.no_grad():
        scalar = converted(fixture_io["counts"], timestep, fixture_io["y"]).logits
        full = converted(fixture_io["counts"], torch.full((4,), 0.7), fixture_io["y"]).logits
    assert torch.equal(scalar, full)


def test_return_dict_false_and_output_type(converted, fixture_io):
    with torch.no_grad():
        output = converted(fixture_io["counts"], fixture_io["t"], fixture_io["y"])
        as_tuple = converted(fixture_io["counts"], fixture_io["t"], fixture_io["y"], return_dict=False)
    assert isinstance(output, TokenSetTransformer1DModelOutput)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(as_tuple[0], output.logits)


def test_model_never_drops_labels(converted, fixture_io):
    converted.train()
    first, second = fixture_logits(converted, fixture_io), fixture_logits(converted, fixture_io)
    converted.eval()
    assert torch.equal(first, second)
    assert torch.equal(first, fixture_logits(converted, fixture_io))


def test_fresh_model_predicts_uniform_counts():
    # adaLN-Zero and the zero output projection: a fresh model outputs all-zero logits, whatever the input.
    model = TokenSetTransformer1DModel(**TINY_CONFIG)
    logits = model(*random_inputs(TINY_CONFIG)).logits
    assert logits.shape == (3, 32, 9)
    assert torch.equal(logits, torch.zeros_like(logits))


# ------------------------------------------------------------------------------------------------ config / presets


@pytest.mark.parametrize("name", sorted(TRANSFORMER_PRESETS))
def test_from_preset(name):
    with torch.device("meta"):
        model = TokenSetTransformer1DModel.from_preset(name, num_classes=7, num_layers=2)
    assert model.config.num_classes == 7 and model.config.num_layers == 2
    preset = TRANSFORMER_PRESETS[name]
    assert model.config.num_attention_heads == preset["num_attention_heads"]
    assert model.config.attention_head_dim == preset["attention_head_dim"]


def test_from_preset_unknown_name():
    with pytest.raises(ValueError, match="Unknown preset.*'XL'.*\\['B', 'S'\\]"):
        TokenSetTransformer1DModel.from_preset("XL")


def test_documented_defaults_match_signature():
    signature = inspect.signature(TokenSetTransformer1DModel.__init__)
    documented = dict(re.findall(r"(\w+) \(`\w+`, defaults to ([^)]+)\)", TokenSetTransformer1DModel.__doc__))
    parameters = {name: p.default for name, p in signature.parameters.items() if name != "self"}
    assert set(documented) == set(parameters)
    for name, default in parameters.items():
        assert float(documented[name]) == default, name


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"codebook_size": 0}, "codebook_size"),
        ({"num_tokens": -1}, "num_tokens"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_layers": 0}, "num_layers"),
        ({"num_attention_heads": 2.0}, "num_attention_heads"),
        ({"attention_head_dim": 0}, "attention_head_dim"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"class_dropout_prob": 1.0}, "class_dropout_prob"),
        ({"class_dropout_prob": -0.1}, "class_dropout_prob"),
    ],
)
def test_invalid_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        TokenSetTransformer1DModel(**{**TINY_CONFIG, **overrides})


def _bad_inputs():
    sample, timestep, class_labels = random_inputs(TINY_CONFIG, batch_size=2)
    too_many = sample.clone()
    too_many[0, 0] = TINY_CONFIG["num_tokens"] + 1
    negative = sample.clone()
    negative[1, 3] = -1
    return [
        ("sample_1d", (sample[0], timestep, class_labels), "`sample` must be a tensor of shape"),
        ("sample_wrong_length", (sample[:, :-1], timestep, class_labels), "`sample` must be a tensor of shape"),
        ("sample_not_tensor", (sample.tolist(), timestep, class_labels), "`sample` must be a tensor of shape"),
        ("sample_float", (sample.float(), timestep, class_labels), "integer counts"),
        ("count_above_num_tokens", (too_many, timestep, class_labels), r"counts must lie in \[0, 8\]"),
        ("negative_count", (negative, timestep, class_labels), r"counts must lie in \[0, 8\]"),
        ("timestep_wrong_shape", (sample, timestep[:1], class_labels), "`timestep` must be"),
        ("timestep_2d", (sample, timestep[:, None], class_labels), "`timestep` must be"),
        ("timestep_string", (sample, "0.5", class_labels), "`timestep` must be"),
        ("timestep_above_one", (sample, timestep + 1.5, class_labels), r"`timestep` must lie in \[0, 1\]"),
        ("timestep_negative", (sample, -0.1, class_labels), r"`timestep` must lie in \[0, 1\]"),
        ("labels_wrong_shape", (sample, timestep, class_labels[:1]), "`class_labels` must be a tensor of shape"),
        ("labels_int", (sample, timestep, 3), "`class_labels` must be a tensor of shape"),
        ("labels_float", (sample, timestep, class_labels.float()), "integer class ids"),
        ("label_above_null", (sample, timestep, torch.tensor([0, 6])), r"class_labels` must lie in \[0, 5\]"),
        ("negative_label", (sample, timestep, torch.tensor([-1, 0])), r"class_labels` must lie in \[0, 5\]"),
    ]


@pytest.mark.parametrize(
    "inputs, match", [case[1:] for case in _bad_inputs()], ids=[case[0] for case in _bad_inputs()]
)
def test_invalid_inputs_raise(inputs, match):
    model = TokenSetTransformer1DModel(**TINY_CONFIG)
    with pytest.raises(ValueError, match=match):
        model(*inputs)


# ----------------------------------------------------------------------------------------------- checkpoint loader


def test_loader_reads_training_checkpoint_with_args(original_state_dict, tmp_path):
    path = tmp_path / "fsdd.pth"
    model_state = {key: value + 1 for key, value in original_state_dict.items()}
    args = argparse.Namespace(model="DiT-S", token_len=64, num_classes=10)
    torch.save({"model": model_state, "ema": original_state_dict, "opt": {}, "args": args}, path)

    ema = load_original_generator_checkpoint(str(path))
    assert ema.keys() == original_state_dict.keys()
    assert all(torch.equal(ema[key], original_state_dict[key]) for key in ema)
    model = load_original_generator_checkpoint(str(path), key="model")
    assert all(torch.equal(model[key], model_state[key]) for key in model)


def test_loader_reads_plain_state_dict(original_state_dict, tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(original_state_dict, path)
    loaded = load_original_generator_checkpoint(str(path))
    assert all(torch.equal(loaded[key], original_state_dict[key]) for key in original_state_dict)


def test_loader_refuses_arbitrary_classes(original_state_dict, tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"ema": original_state_dict, "extra": NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError, match="NotAllowed"):
        load_original_generator_checkpoint(str(path))


@pytest.mark.parametrize(
    "content, key, match",
    [
        ({"opt": {}, "args": argparse.Namespace(lr=1e-4)}, "ema", r"top-level keys are \['args', 'opt'\]"),
        ({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace()}, "ema", r"state dicts under \['model'\]"),
        ([torch.zeros(2)], "ema", "expected a dict"),
    ],
    ids=["no_state_dict", "wrong_key", "not_a_dict"],
)
def test_loader_rejects_unexpected_structure(tmp_path, content, key, match):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(ValueError, match=match):
        load_original_generator_checkpoint(str(path), key=key)


# ------------------------------------------------------------------------------------------------ conversion errors


def test_convert_lists_missing_and_unexpected_keys(original_state_dict):
    broken = dict(original_state_dict)
    del broken["blocks.1.attn.proj.bias"]
    broken["blocks.1.attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['transformer_blocks.1.attn.to_out.bias'\].*unexpected "):
        convert_transformer(broken, num_attention_heads=FIXTURE_HEADS)


def test_convert_reports_mismatched_shapes(original_state_dict):
    broken = dict(original_state_dict)
    broken["blocks.0.attn.proj.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"transformer_blocks.0.attn.to_out.bias: \(3,\) vs \(64,\)"):
        convert_transformer(broken, num_attention_heads=FIXTURE_HEADS)


def test_convert_rejects_non_dit_state_dict():
    with pytest.raises(ValueError, match="Not an original DiT-1D state dict"):
        convert_transformer({"weight": torch.zeros(2)})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_attention_heads": 3}, "must divide the width 64"),
        ({"num_classes": 11}, "label table of 12 rows"),
    ],
)
def test_infer_config_rejects_inconsistent_options(original_state_dict, kwargs, match):
    with pytest.raises(ValueError, match=match):
        infer_transformer_config(original_state_dict, **kwargs)


def test_compiled_repeated_blocks_match_eager(converted, fixture_io):
    """`compile_repeated_blocks` (diffusers' regional torch.compile of the transformer blocks, `fullgraph=True`: no
    graph breaks) gives the eager logits, and the original's."""
    eager = fixture_logits(converted, fixture_io)
    converted.compile_repeated_blocks(fullgraph=True)
    compiled = fixture_logits(converted, fixture_io)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled, fixture_io["logits"], atol=1e-4, rtol=1e-4)

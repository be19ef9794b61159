"""Tests of the set tokenizer (`TokenSetVQVAE`) and of the conversion of the original weights.

Ground truth: `fixtures/tokenizer_tiny.*` (outputs of the original code on a tiny random model) and
`fixtures/original_checkpoint_manifest.json` (keys and shapes of the released checkpoint).
"""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import (
    TokenSetVQVAE,
    TokenSetVQVAEEncoderOutput,
    TokenSetVQVAEOutput,
)
from tokenset_diffusers.tokenset.set_ops import tokens_to_counts


ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(ROOT / "conversion"))

from tokenizer_conversion import (  # noqa: E402
    RENAME_TABLE,
    convert_tokenizer,
    convert_tokenizer_state_dict,
    infer_tokenizer_config,
    load_converted_state_dict,
)


# The original decodes with a random shuffle of the tokens, and its pixel decoder amplifies float32 rounding of its
# input about 30-fold: the fixture's own `reconstruction` and `reconstruction_permuted` (same tokens, two orders)
# differ by 2e-5, and both differ from a float64 evaluation by 1.5e-5 to 1.8e-5 (values reach 4.7). An absolute
# 1e-5 bound is below that noise floor, so reconstructions are compared within 5e-5; `z_quantized` and
# `decoder_features` (before the amplification) within 1e-5.
RECONSTRUCTION_ATOL = 5e-5


# ----------------------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original_state_dict():
    return load_file(FIXTURES / "tokenizer_tiny.original.safetensors")


@pytest.fixture(scope="module")
def tiny_io():
    return load_file(FIXTURES / "tokenizer_tiny.io.safetensors")


@pytest.fixture(scope="module")
def converted(original_state_dict):
    return convert_tokenizer(original_state_dict, num_attention_heads=4)


@pytest.fixture(scope="module")
def manifest_state_dict():
    manifest = json.loads((FIXTURES / "original_checkpoint_manifest.json").read_text())
    return {key: torch.empty(shape, device="meta") for key, shape in manifest["set_tokenizer_128_4096.pth"].items()}


def tiny_config(**overrides) -> TokenSetVQVAEConfig:
    kwargs = {
        "image_size": 16,
        "patch_size": 4,
        "encoder_hidden_size": 32,
        "encoder_num_hidden_layers": 2,
        "encoder_num_attention_heads": 2,
        "decoder_hidden_size": 32,
        "decoder_num_hidden_layers": 2,
        "decoder_num_attention_heads": 2,
        "decoder_ffn_hidden_size": 64,
        "codebook_size": 32,
        "num_tokens": 8,
        "code_dim": 8,
        "z_channels": 16,
        "pixel_decoder_hidden_channels": 8,
        "pixel_decoder_channel_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "norm_num_groups": 4,
    }
    kwargs.update(overrides)
    return TokenSetVQVAEConfig(**kwargs)


def random_images(batch_size: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1


def codes_from_z_quantized(z_quantized: torch.Tensor) -> torch.Tensor:
    return z_quantized.squeeze(2).transpose(1, 2)  # (B, d, 1, M) -> (B, M, d)


# ----------------------------------------------------------------------------------------------------------------------
# conformance with the original
# ----------------------------------------------------------------------------------------------------------------------


def test_fixture_encode(converted, tiny_io):
    with torch.no_grad():
        output = converted.encode(tiny_io["pixel_values"])
    assert isinstance(output, TokenSetVQVAEEncoderOutput)
    assert output.token_ids.dtype == torch.int64
    torch.testing.assert_close(output.token_ids, tiny_io["token_ids"], rtol=0, atol=0)
    torch.testing.assert_close(output.z_quantized, tiny_io["z_quantized"], rtol=0, atol=1e-5)


def test_fixture_decoder_features(converted, tiny_io):
    with torch.no_grad():
        features = converted.decoder(codes_from_z_quantized(tiny_io["z_quantized"]))[0]
    torch.testing.assert_close(features, tiny_io["decoder_features"], rtol=0, atol=1e-5)


def test_fixture_reconstruction(converted, tiny_io):
    with torch.no_grad():
        reconstruction = converted.decode(tiny_io["token_ids"])
        from_features = converted.pixel_decoder(tiny_io["decoder_features"]) * 2 - 1
    torch.testing.assert_close(reconstruction, tiny_io["reconstruction"], rtol=0, atol=RECONSTRUCTION_ATOL)
    torch.testing.assert_close(from_features, tiny_io["reconstruction"], rtol=0, atol=RECONSTRUCTION_ATOL)


def test_decode_is_invariant_to_token_order(converted, tiny_io):
    token_ids = tiny_io["token_ids"]
    with torch.no_grad():
        reference = converted.decode(token_ids)
        permuted = converted.decode(token_ids[:, tiny_io["permutation"]])
        # a different random order per row as well
        generator = torch.Generator().manual_seed(0)
        row_orders = torch.rand(token_ids.shape, generator=generator).argsort(-1)
        shuffled = converted.decode(token_ids.gather(1, row_orders))
    torch.testing.assert_close(permuted, tiny_io["reconstruction_permuted"], rtol=0, atol=RECONSTRUCTION_ATOL)
    torch.testing.assert_close(permuted, tiny_io["reconstruction"], rtol=0, atol=1e-4)
    torch.testing.assert_close(permuted, reference, rtol=0, atol=1e-4)
    torch.testing.assert_close(shuffled, reference, rtol=0, atol=1e-4)


def test_encode_depends_on_image(converted, tiny_io):
    """The order of the latent tokens is fixed by the encoder; swapping images swaps token rows."""
    pixel_values = tiny_io["pixel_values"]
    with torch.no_grad():
        flipped = converted.encode(pixel_values.flip(0)).token_ids
    torch.testing.assert_close(flipped, tiny_io["token_ids"].flip(0), rtol=0, atol=0)


def test_counts_round_trip(converted, tiny_io):
    with torch.no_grad():
        counts = converted.encode_to_counts(tiny_io["pixel_values"])
        from_counts = converted.decode_counts(counts)
        from_float_counts = converted.decode_counts(counts.float())
        reference = converted.decode(tiny_io["token_ids"])
    assert counts.shape == (4, converted.config.codebook_size)
    assert counts.dtype == torch.int64
    torch.testing.assert_close(counts.sum(-1), torch.full((4,), converted.config.num_tokens))
    torch.testing.assert_close(counts, tokens_to_counts(tiny_io["token_ids"], converted.config.codebook_size))
    torch.testing.assert_close(from_counts, reference, rtol=0, atol=1e-4)
    torch.testing.assert_close(from_float_counts, reference, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------------------------------------------------


def test_infer_config_from_tiny_checkpoint(original_state_dict):
    args = json.loads((FIXTURES / "tokenizer_tiny.original_args.json").read_text())
    config = infer_tokenizer_config(original_state_dict, num_attention_heads=4)
    assert config.image_size == args["crop_size"]
    assert config.patch_size == args["vit_enc_patch_size"]
    assert config.codebook_size == args["codebook_size"]
    assert config.num_tokens == args["num_latent_tokens"]
    assert config.code_dim == args["token_size"]
    assert config.z_channels == args["pixel_z_channels"]
    assert config.pixel_decoder_channel_mult == args["pixel_decoder"]["channel_mult"]
    assert config.pixel_decoder_hidden_channels == args["pixel_decoder"]["hidden_channels"]
    assert config.num_res_blocks == args["pixel_decoder"]["num_res_blocks"]
    # the "tiny" ViT of the fixture README: width 64, 2 layers, 4 heads
    assert (config.encoder_hidden_size, config.encoder_num_hidden_layers) == (64, 2)
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers) == (64, 2)
    assert config.encoder_num_attention_heads == config.decoder_num_attention_heads == 4


def test_manifest_converts_to_released_config(manifest_state_dict):
    config = infer_tokenizer_config(manifest_state_dict)
    assert config.to_dict() == TokenSetVQVAEConfig().to_dict()  # the defaults are the released model
    with torch.device("meta"):
        model = TokenSetVQVAE(config)
    converted_state_dict = convert_tokenizer_state_dict(manifest_state_dict)
    load_converted_state_dict(model, converted_state_dict, assign=True)  # strict=True inside
    model.load_state_dict(converted_state_dict, strict=True, assign=True)
    assert sum(p.numel() for p in model.parameters()) == 203_322_383  # docs/tokenset.md#set-tokenizer
    assert sum(t.numel() for t in manifest_state_dict.values()) == 203_322_383


def test_convert_tokenizer_on_meta(manifest_state_dict):
    model = convert_tokenizer(manifest_state_dict)
    assert not model.training
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.encoder.code_projection.weight.shape == (12, 768)


def test_every_original_key_matches_exactly_one_rule(manifest_state_dict, original_state_dict):
    for key in list(manifest_state_dict) + list(original_state_dict):
        matches = [pattern for pattern, _ in RENAME_TABLE if re.match(pattern, key)]
        assert len(matches) == 1, (key, matches)


def test_conversion_errors(original_state_dict):
    with pytest.raises(ValueError, match="encoder.unknown_weight"):
        convert_tokenizer_state_dict({**original_state_dict, "encoder.unknown_weight": torch.zeros(1)})

    incomplete = dict(original_state_dict)
    del incomplete["pixel_decoder.up.1.block.0.nin_shortcut.weight"]
    with pytest.raises(ValueError, match=r"(?s)missing keys \(1\).*up_blocks\.1\.resnets\.0\.conv_shortcut\.weight"):
        convert_tokenizer(incomplete, num_attention_heads=4)

    config = infer_tokenizer_config(original_state_dict, num_attention_heads=4)
    converted_state_dict = convert_tokenizer_state_dict(original_state_dict)
    converted_state_dict["decoder.post_layernorm.bias"] = torch.zeros(3)
    converted_state_dict["extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"(?s)unexpected keys \(1\).*extra\.weight.*decoder\.post_layernorm\.bias"):
        load_converted_state_dict(TokenSetVQVAE(config), converted_state_dict)

    no_codebook = {k: v for k, v in original_state_dict.items() if k != "quantize.embedding.weight"}
    with pytest.raises(ValueError, match="quantize.embedding.weight"):
        infer_tokenizer_config(no_codebook)
    with pytest.raises(ValueError, match="divisible"):
        infer_tokenizer_config(original_state_dict, num_attention_heads=3)


# ----------------------------------------------------------------------------------------------------------------------
# transformers integration
# ----------------------------------------------------------------------------------------------------------------------


def test_save_pretrained_round_trip(converted, tiny_io, tmp_path):
    converted.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = TokenSetVQVAE.from_pretrained(tmp_path)
    for name in TokenSetVQVAEConfig.__annotations__:
        assert getattr(loaded.config, name) == getattr(converted.config, name), name
    with torch.no_grad():
        expected = converted.encode(tiny_io["pixel_values"])
        actual = loaded.encode(tiny_io["pixel_values"])
        torch.testing.assert_close(actual.token_ids, expected.token_ids, rtol=0, atol=0)
        torch.testing.assert_close(actual.z_quantized, expected.z_quantized, rtol=0, atol=0)
        torch.testing.assert_close(
            loaded.decode(tiny_io["token_ids"]), converted.decode(tiny_io["token_ids"]), rtol=0, atol=0
        )


def test_bf16_matches_fp32(original_state_dict, tiny_io):
    """bf16 (weights and activations) against the float32 fixture: decoded images within 5% relative RMS error,
    decoder features within 2%, at least 90% of the token ids equal (near-ties may flip)."""
    model = convert_tokenizer({k: v.bfloat16() for k, v in original_state_dict.items()}, num_attention_heads=4)
    with torch.no_grad():
        token_ids = model.encode(tiny_io["pixel_values"]).token_ids
        features = model.decoder(model.quantizer.embed(tiny_io["token_ids"]))[0]
        reconstruction = model.decode(tiny_io["token_ids"])
    assert features.dtype == reconstruction.dtype == torch.bfloat16

    def relative_rms(actual, expected):
        return ((actual.float() - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()).item()

    assert (token_ids == tiny_io["token_ids"]).float().mean() >= 0.9
    assert relative_rms(features, tiny_io["decoder_features"]) < 0.02
    assert relative_rms(reconstruction, tiny_io["reconstruction"]) < 0.05


def _loss_and_gradients(model: TokenSetVQVAE, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    output = model(pixel_values)
    loss = output.reconstruction.square().mean() + output.codebook_loss + 0.25 * output.commitment_loss
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = TokenSetVQVAE(tiny_config()).train()
    pixel_values = random_images(2, 16)
    reference = _loss_and_gradients(model, pixel_values)

    calls = []
    model.encoder.layers[0].self_attn.register_forward_hook(lambda *args: calls.append(1))
    model.pixel_decoder.mid_blocks[0].conv1.register_forward_hook(lambda *args: calls.append(2))
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    checkpointed = _loss_and_gradients(model, pixel_values)
    assert calls.count(1) == 2 and calls.count(2) == 2  # recomputed in the backward pass

    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-6, atol=1e-7, msg=name)


def test_forward_losses_and_straight_through_gradients():
    torch.manual_seed(0)
    config = tiny_config()
    model = TokenSetVQVAE(config).train()
    pixel_values = random_images(3, 16)
    output = model(pixel_values)
    assert isinstance(output, TokenSetVQVAEOutput)
    assert output.reconstruction.shape == pixel_values.shape
    assert output.token_ids.shape == (3, config.num_tokens) and output.token_ids.dtype == torch.int64
    for loss in (output.codebook_loss, output.commitment_loss):
        assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    # the forward value is the decode of the token ids
    with torch.no_grad():
        torch.testing.assert_close(output.reconstruction, model.decode(output.token_ids), rtol=0, atol=1e-5)
    codebook = model.quantizer.embedding.weight
    encoder_weight = model.encoder.embeddings.patch_embedding.weight
    decoder_weight = model.decoder.embeddings.code_embedding.weight

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        return [
            None if p.grad is None else p.grad.abs().sum().item() for p in (codebook, encoder_weight, decoder_weight)
        ]

    # reconstruction: straight-through to the encoder, nothing to the codebook
    cb, enc, dec = grads(output.reconstruction.square().mean())
    assert cb in (None, 0.0) and enc > 0 and dec > 0
    # codebook loss trains the codebook only, commitment loss the encoder only
    cb, enc, dec = grads(output.codebook_loss)
    assert cb > 0 and enc is None and dec is None
    cb, enc, dec = grads(output.commitment_loss)
    assert cb is None and enc > 0 and dec is None


def test_shuffle_tokens_only_changes_rounding():
    torch.manual_seed(0)
    model = TokenSetVQVAE(tiny_config()).eval()
    pixel_values = random_images(2, 16)
    with torch.no_grad():
        plain = model(pixel_values).reconstruction
        shuffled = model(pixel_values, shuffle_tokens=True, generator=torch.Generator().manual_seed(1))
        again = model(pixel_values, shuffle_tokens=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(shuffled.reconstruction, plain, rtol=0, atol=1e-4)
    torch.testing.assert_close(shuffled.reconstruction, again.reconstruction, rtol=0, atol=0)
    tuple_output = model(pixel_values, return_dict=False)
    assert len(tuple_output) == 5  # reconstruction, token_ids, codebook_loss, commitment_loss, encoder_codes


def test_random_init_is_sane():
    torch.manual_seed(0)
    model = TokenSetVQVAE(tiny_config())
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter).all(), name
        assert parameter.std() > 0 or "bias" in name or "norm" in name, name
    torch.testing.assert_close(model.encoder.pre_layernorm.weight, torch.ones(32))
    assert model.encoder.layers[0].mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_sdpa_attention_matches_multihead_attention():
    """The fused-projection attention computes what `torch.nn.MultiheadAttention` computes with the same weights."""
    torch.manual_seed(0)
    model = TokenSetVQVAE(tiny_config()).eval()
    attention = model.encoder.layers[0].self_attn
    reference = torch.nn.MultiheadAttention(32, 2, batch_first=True)
    reference.in_proj_weight.data.copy_(attention.in_proj.weight)
    reference.in_proj_bias.data.copy_(attention.in_proj.bias)
    reference.out_proj.load_state_dict(attention.out_proj.state_dict())
    hidden_states = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = reference(hidden_states, hidden_states, hidden_states, need_weights=False)[0]
        torch.testing.assert_close(attention(hidden_states)[0], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------------


def test_documented_defaults_match_config():
    documented = dict(
        re.findall(r"(\w+) \(`[^`]+`, \*optional\*, defaults to `?([^`)]+)`?\)", TokenSetVQVAEConfig.__doc__)
    )
    assert set(documented) == set(TokenSetVQVAEConfig.__annotations__)
    config = TokenSetVQVAEConfig()
    for name, text in documented.items():
        assert getattr(config, name) == json.loads(text), (name, text)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 30}, "multiple of `patch_size`"),
        ({"encoder_num_attention_heads": 3}, "encoder_hidden_size"),
        ({"decoder_num_attention_heads": 5}, "decoder_hidden_size"),
        ({"pixel_decoder_channel_mult": [1, 2]}, "upsamples"),
        ({"pixel_decoder_channel_mult": []}, "non-empty"),
        ({"norm_num_groups": 3}, "norm_num_groups"),
        ({"num_tokens": 0}, "num_tokens"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


# ----------------------------------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return TokenSetVQVAE(tiny_config()).eval()


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.zeros(1, 1, 16, 16), "3 channels"),
        (torch.zeros(1, 3, 32, 32), "16x16"),
        (torch.zeros(1, 3, 16, 8), "16x16"),
        (torch.full((1, 3, 16, 16), 255.0), "scaled to"),
        (torch.full((1, 3, 16, 16), -2.0), "scaled to"),
        (torch.full((1, 3, 16, 16), float("nan")), "scaled to"),
        (torch.zeros(3, 16, 16), "shape"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "floating point"),
        ([[0.0]], "torch.Tensor"),
    ],
)
@pytest.mark.parametrize("method", ["encode", "encode_to_counts", "forward"])
def test_pixel_value_errors(tiny_model, method, pixel_values, message):
    with pytest.raises(ValueError, match=message):
        getattr(tiny_model, method)(pixel_values)


@pytest.mark.parametrize(
    "token_ids, message",
    [
        (torch.full((1, 8), 32), r"\[0, 32\)"),
        (torch.full((1, 8), -1), r"\[0, 32\)"),
        (torch.zeros(1, 7, dtype=torch.long), r"\(batch_size, 8\)"),
        (torch.zeros(8, dtype=torch.long), r"\(batch_size, 8\)"),
        (torch.zeros(1, 8), "integer"),
        ([0] * 8, "torch.Tensor"),
    ],
)
def test_token_id_errors(tiny_model, token_ids, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.decode(token_ids)


@pytest.mark.parametrize(
    "counts, message",
    [
        (torch.zeros(1, 31, dtype=torch.long), r"\(batch_size, 32\)"),
        (torch.zeros(32, dtype=torch.long), r"\(batch_size, 32\)"),
        (torch.full((1, 32), -1), "non-negative"),
    ],
)
def test_count_errors(tiny_model, counts, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.decode_counts(counts)


def test_valid_inputs_at_the_boundary(tiny_model):
    """Values slightly beyond [-1, 1] (e.g. after resampling) and any integer dtype of ids are accepted."""
    with torch.no_grad():
        token_ids = tiny_model.encode(torch.full((2, 3, 16, 16), 1.2)).token_ids
        images = tiny_model.decode(token_ids.int())
    assert images.shape == (2, 3, 16, 16)
    torch.testing.assert_close(images, tiny_model.decode(token_ids), rtol=0, atol=0)

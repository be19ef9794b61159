"""TokenBridgeTransformer2DModel against the original's outputs (tests/fixtures/tokenbridge/tokenbridge_tiny.*),
the channel head's sampling distribution, presets, conversion of the released shapes and round trips."""

import sys
from pathlib import Path

import pytest
import torch
from helpers.tokenbridge import (
    load_fixture,
    load_json,
    single_thread,  # noqa: F401 (autouse)
    tiny_transformer,
)
from scipy.stats import chi2

from tokenset_diffusers import TOKENBRIDGE_PRESETS, TokenBridgeTransformer2DModel
from tokenset_diffusers.tokenbridge.transformer_tokenbridge import masked_token_loss


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conversion"))
from tokenbridge_conversion import convert_tokenbridge, select_weights  # noqa: E402


ATOL = 1e-5


@pytest.fixture(scope="module")
def io():
    return load_fixture("tokenbridge_tiny.io.safetensors")


@pytest.fixture(scope="module")
def model():
    return tiny_transformer()


def test_config_read_from_shapes(model):
    args = load_json("tokenbridge_tiny.original_args.json")
    config = model.config
    assert config.sample_size == args["img_size"] // args["vae_stride"]
    assert (config.encoder_hidden_size, config.encoder_num_layers) == (64, 2)
    assert (config.head_hidden_size, config.head_num_layers) == (32, 2)
    assert config.buffer_size == args["buffer_size"] and config.num_classes == args["class_num"]
    assert model.num_levels == args["quant_levels"]
    assert sum(p.numel() for p in model.parameters()) == 269_472


def test_quantized_tokens(model, io):
    tokens = model.patchify(io["latents"])
    assert torch.equal(tokens, io["latent_tokens"])
    indices, values = model.quantizer(tokens)
    assert torch.equal(indices, io["quant_indices"]) and torch.equal(values, io["quant_values"])
    assert torch.equal(model.unpatchify(tokens), io["latents"])


@torch.no_grad()
def test_encoder_and_decoder(model, io):
    mask = io["mask"]
    torch.testing.assert_close(model.condition_embedding(io["labels"]), io["class_embedding"], atol=0, rtol=0)
    encoded = model.encode(io["quant_values"], mask, io["labels"])
    torch.testing.assert_close(encoded, io["encoder_out"], atol=ATOL, rtol=0)
    unconditional = torch.full_like(io["labels"], model.config.num_classes)
    torch.testing.assert_close(
        model.encode(io["quant_values"], mask, unconditional), io["encoder_out_fake_latent"], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(model.decode(encoded, mask), io["decoder_out"], atol=ATOL, rtol=0)
    # num_masked given (as the pipeline does) or read from the mask: the same
    torch.testing.assert_close(
        model.conditions(io["quant_values"], mask, io["labels"], 14), io["decoder_out"], atol=ATOL, rtol=0
    )


@torch.no_grad()
def test_forward_logits_and_loss(model, io):
    output = model(io["latents"], io["labels"], io["mask"])
    batch_size, channels = io["latents"].shape[:2]
    num_masked = int(io["mask"][0].sum())
    # The prediction comes first, batch dimension first: (B, n, C, K), the recorded rows row-major over (B, n).
    assert output.logits.shape == (batch_size, num_masked, channels, model.num_levels)
    assert output[0] is output.logits
    torch.testing.assert_close(output.logits.flatten(0, 1), io["teacher_forced_logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(masked_token_loss(output.logits, output.targets), io["loss"], atol=ATOL, rtol=0)
    assert torch.equal(output.targets.flatten(0, 1), io["head_targets"][io["mask"].bool()])
    # the positions are each image's masked ones, ascending
    expected_positions = torch.stack([row.nonzero()[:, 0] for row in io["mask"].bool()])
    assert torch.equal(output.positions, expected_positions)
    logits, targets, positions = model(io["latents"], io["labels"], io["mask"].bool(), return_dict=False)
    assert torch.equal(logits, output.logits) and torch.equal(targets, output.targets)
    assert torch.equal(positions, output.positions)


@torch.no_grad()
def test_forward_without_a_mask_predicts_every_position_from_the_class(model, io):
    """No mask: every position is masked, as at the first sampling step; the same as an explicit all-True mask."""
    batch_size = io["latents"].shape[0]
    output = model(io["latents"], io["labels"])
    assert output.logits.shape[:2] == (batch_size, model.num_tokens)
    full = torch.ones(batch_size, model.num_tokens, dtype=torch.bool)
    assert torch.equal(output.logits, model(io["latents"], io["labels"], full).logits)
    # every position masked: the decoder sees the class alone, so the first head position's logits (conditioned on
    # nothing else) do not depend on the latents; the later ones are teacher-forced by the latents' own tokens
    other = model(torch.randn_like(io["latents"]), io["labels"])
    torch.testing.assert_close(other.logits[:, :, 0], output.logits[:, :, 0])
    assert not torch.allclose(other.logits[:, :, 1:], output.logits[:, :, 1:])


def test_masked_token_loss_checks_shapes():
    with pytest.raises(ValueError, match="`targets` must have the shape"):
        masked_token_loss(torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 5, dtype=torch.long))


def test_training_loss_with_label_dropout(io):
    """Train mode, dropout 0, labels dropped where the recorded draw is below 0.1 (label id num_classes)."""
    model = tiny_transformer()
    model.register_to_config(attention_dropout=0.0, dropout=0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for block in [*model.encoder_blocks, *model.decoder_blocks, *model.channel_head.blocks]:
        block.attn.attention_dropout = 0.0
    model.train()
    labels = torch.where(io["label_drop_u"] < 0.1, model.config.num_classes, io["labels"])
    output = model(io["latents"], labels, io["mask"])
    loss = masked_token_loss(output.logits, output.targets)
    torch.testing.assert_close(loss, io["loss_train_label_drop"], atol=ATOL, rtol=0)
    loss.backward()  # training calls the same forward
    assert model.unconditional_embedding.grad.abs().sum() > 0


@torch.no_grad()
def test_head_greedy_tokens_and_logits(model, io):
    tokens, logits = model.sample_channels(io["head.condition"], temperature=0.0, return_logits=True)
    order = model.channel_order_tensor()
    assert torch.equal(tokens[:, order], io["head.greedy_tokens"])  # returned in VAE channel order
    assert torch.equal(tokens, io["head.greedy_tokens"][:, torch.argsort(order)])
    torch.testing.assert_close(logits, io["head.greedy_logits"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_teacher_forcing_differs_from_sampling_as_in_the_original(model, io):
    """The sampling-time quirk: row 0 carries timestep_embed[0] only when sampling
    (docs/tokenbridge.md#channel-head)."""
    logits = model.channel_logits(io["head.condition"], io["head.greedy_tokens"])
    torch.testing.assert_close(logits, io["head.teacher_forced_logits_on_greedy_tokens"], atol=ATOL, rtol=0)
    assert (logits - io["head.greedy_logits"]).abs().max() > 0.5


def _chi_square_p_value(draws: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson test of draws (N,) against the per-draw probabilities (N, K): expected count of k = sum of p(k)."""
    observed = torch.bincount(draws, minlength=probs.shape[1]).double()
    expected = probs.double().sum(0)
    keep = expected > 5
    statistic = (((observed - expected) ** 2)[keep] / expected[keep]).sum().item()
    return float(chi2.sf(statistic, int(keep.sum()) - 1))


@torch.no_grad()
def test_head_draws_follow_its_probabilities(model, io):
    """Temperature 1: for every head position, the draws against the probabilities the head computed for them."""
    features = io["head.condition"][:2].repeat_interleave(1000, dim=0)  # (2000, D): two conditions
    tokens, logits = model.sample_channels(
        features, temperature=1.0, generator=torch.Generator().manual_seed(0), return_logits=True
    )
    head_order_tokens = tokens[:, model.channel_order_tensor()]
    p_values = [_chi_square_p_value(head_order_tokens[:, i], logits[:, i].softmax(-1)) for i in range(16)]
    assert min(p_values) > 1e-4, p_values
    # The same test rejects a deliberately wrong variant (the probabilities at another temperature).
    wrong = [_chi_square_p_value(head_order_tokens[:, i], (logits[:, i] / 1.5).softmax(-1)) for i in range(16)]
    assert min(wrong) < 1e-6


@torch.no_grad()
def test_temperature_sharpens(model, io):
    features = io["head.condition"][:1].repeat(500, 1)
    order = model.channel_order_tensor()
    greedy = model.sample_channels(features[:1], temperature=0.0)[:, order][0, 0]
    cold = model.sample_channels(features, temperature=0.3, generator=torch.Generator().manual_seed(1))[:, order]
    hot = model.sample_channels(features, temperature=1.0, generator=torch.Generator().manual_seed(1))[:, order]
    assert (cold[:, 0] == greedy).float().mean() > (hot[:, 0] == greedy).float().mean()


@torch.no_grad()
def test_generator_list_draws_per_group(model, io):
    """With a list of generators, each group of rows draws from its own generator alone."""
    features = io["head.condition"][:4]  # two groups of 2 rows
    both = model.sample_channels(features, generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    first = model.sample_channels(features[:2], generator=[torch.Generator().manual_seed(3)])
    second = model.sample_channels(features[2:], generator=[torch.Generator().manual_seed(4)])
    assert torch.equal(both, torch.cat([first, second]))
    with pytest.raises(ValueError, match="does not divide"):
        model.sample_channels(features[:3], generator=[torch.Generator(), torch.Generator()])


def test_invalid_inputs(model, io):
    with pytest.raises(ValueError, match="latents"):
        model(io["latents"][:, :8], io["labels"], io["mask"])
    with pytest.raises(ValueError, match="class_labels"):
        model(io["latents"], io["labels"] + 100, io["mask"])
    with pytest.raises(ValueError, match="mask"):
        model(io["latents"], io["labels"], io["mask"][:, :3])
    ragged = io["mask"].clone()
    ragged[0, ragged[0].argmin()] = 1
    with pytest.raises(ValueError, match="same number"):
        model.encode(io["quant_values"], ragged, io["labels"])
    with pytest.raises(ValueError, match="temperature"):
        model.sample_channels(io["head.condition"], temperature=-1.0)
    with pytest.raises(ValueError, match="channel_order"):
        TokenBridgeTransformer2DModel(latent_channels=4, channel_order=[0, 1, 2, 2])
    with pytest.raises(ValueError, match="preset"):
        TokenBridgeTransformer2DModel.from_preset("XL")


def test_save_and_load_round_trip(model, io, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = TokenBridgeTransformer2DModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.quantizer.reconstruction_values, model.quantizer.reconstruction_values)
    with torch.no_grad():
        assert torch.equal(
            loaded(io["latents"], io["labels"], io["mask"]).logits,
            model(io["latents"], io["labels"], io["mask"]).logits,
        )
    bf16 = TokenBridgeTransformer2DModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.quantizer.reconstruction_values.dtype == torch.float32
    assert bf16.z_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        tokens = bf16.eval().sample_channels(io["head.condition"], temperature=0.0)
    assert tokens.shape == (8, 16)


@pytest.mark.parametrize("name, preset", [("tokenbridge_large", "L"), ("tokenbridge_huge", "H")])
def test_released_checkpoints_convert_strictly_on_meta(name, preset):
    manifest = load_json("tokenbridge_manifest.json")[name]
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in manifest["state_dict"].items()}
    checkpoint = {
        "model": state_dict,
        "model_ema": {k: v for k, v in state_dict.items() if k not in manifest["buffers"]},
    }
    model = convert_tokenbridge(select_weights(checkpoint, "ema"))
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    expected = TOKENBRIDGE_PRESETS[preset]
    assert {key: model.config[key] for key in expected} == expected
    with torch.device("meta"):
        from_preset = TokenBridgeTransformer2DModel.from_preset(preset)
    assert sum(p.numel() for p in from_preset.parameters()) == manifest["num_params"]


def test_strict_conversion_names_missing_and_unexpected_keys():
    state_dict = load_fixture("tokenbridge_tiny.original.safetensors")
    broken = dict(state_dict)
    del broken["channel_heads.3.weight"]
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"channel_head\.proj_out\.3\.weight.*extra\.weight"):
        convert_tokenbridge(broken, num_attention_heads=4, head_num_attention_heads=4)


def test_ema_selection():
    state_dict = load_fixture("tokenbridge_tiny.original.safetensors")
    buffers = {"channel_mask", "reconstruction_values", "boundaries"}
    ema = {key: value + 1 for key, value in state_dict.items() if key not in buffers}
    checkpoint = {"model": state_dict, "model_ema": ema}
    selected = select_weights(checkpoint, "ema")
    assert torch.equal(selected["z_proj.weight"], ema["z_proj.weight"])
    assert torch.equal(selected["boundaries"], state_dict["boundaries"])  # buffers from "model"
    assert torch.equal(select_weights(checkpoint, "model")["z_proj.weight"], state_dict["z_proj.weight"])
    with pytest.raises(ValueError, match="missing"):
        select_weights({"model": state_dict, "model_ema": {"z_proj.weight": ema["z_proj.weight"]}})
    with pytest.raises(ValueError, match="model_ema"):
        select_weights({"model": state_dict})


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(io):
    def loss_and_grad(checkpointing):
        model = tiny_transformer()
        if checkpointing:
            model.enable_gradient_checkpointing()
        output = model(io["latents"], io["labels"], io["mask"])
        loss = masked_token_loss(output.logits, output.targets)
        loss.backward()
        return loss.detach(), model.encoder_blocks[0].attn.to_qkv.weight.grad

    plain, checkpointed = loss_and_grad(False), loss_and_grad(True)
    torch.testing.assert_close(checkpointed[0], plain[0])
    torch.testing.assert_close(checkpointed[1], plain[1])


def test_variant_save_and_load_round_trip(model, io, tmp_path):
    """diffusers' model convention: `save_pretrained(variant=...)` writes `diffusion_pytorch_model.<variant>.
    safetensors`, `from_pretrained(variant=...)` loads it, and without the variant the plain file is missing."""
    model.save_pretrained(tmp_path, variant="fp16")
    assert sorted(path.name for path in tmp_path.glob("*.safetensors")) == ["diffusion_pytorch_model.fp16.safetensors"]
    loaded = TokenBridgeTransformer2DModel.from_pretrained(tmp_path, variant="fp16").eval()
    with torch.no_grad():
        assert torch.equal(
            loaded(io["latents"], io["labels"], io["mask"]).logits,
            model(io["latents"], io["labels"], io["mask"]).logits,
        )
    with pytest.raises(OSError, match="no weights file diffusion_pytorch_model.safetensors"):
        TokenBridgeTransformer2DModel.from_pretrained(tmp_path)

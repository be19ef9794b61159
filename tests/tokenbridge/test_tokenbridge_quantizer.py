"""TokenBridgeQuantizer against the original's tables and outputs (tests/fixtures/tokenbridge/quantizer.*)."""

import pytest
import torch
from helpers.tokenbridge import (
    load_fixture,
    load_json,
    single_thread,  # noqa: F401 (autouse)
)

from tokenset_diffusers import TokenBridgeQuantizer


SETTINGS = load_json("quantizer_settings.json")
KINDS = ["normal", "boundaries", "levels", "midpoints", "special", "latent_shaped"]


@pytest.fixture(scope="module")
def quantizer_fixture():
    return load_fixture("quantizer.safetensors")


def _quantizer(name, fixture):
    settings = SETTINGS[name]
    quantizer = TokenBridgeQuantizer(
        settings["bits"], settings["quant_min"], settings["quant_max"], settings["std_range"]
    )
    # As conversion does: the original's stored tables, not a recomputation.
    quantizer.load_state_dict(
        {
            "boundaries": fixture[f"{name}.boundaries"],
            "reconstruction_values": fixture[f"{name}.reconstruction_values"],
        }
    )
    return quantizer


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_entry_bit_exact(quantizer_fixture, name):
    quantizer = _quantizer(name, quantizer_fixture)
    assert quantizer.num_levels == SETTINGS[name]["quant_levels"]
    assert torch.equal(quantizer.levels(), quantizer_fixture[f"{name}.levels_latent"])
    checked = 0
    for kind in KINDS:
        if f"{name}.{kind}.input" not in quantizer_fixture:
            continue
        indices, values = quantizer(quantizer_fixture[f"{name}.{kind}.input"])
        assert indices.dtype == torch.int64
        assert torch.equal(indices, quantizer_fixture[f"{name}.{kind}.indices"]), kind
        assert torch.equal(values, quantizer_fixture[f"{name}.{kind}.dequant"]), kind
        assert torch.equal(quantizer.dequantize(indices), values)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_recomputed_tables_match_the_stored_ones(quantizer_fixture, name):
    settings = SETTINGS[name]
    quantizer = TokenBridgeQuantizer(
        settings["bits"], settings["quant_min"], settings["quant_max"], settings["std_range"]
    )
    # Boundaries come from scipy as in the original; levels agree to float32 rounding (the stored ones are copied).
    assert torch.equal(quantizer.boundaries, quantizer_fixture[f"{name}.boundaries"])
    torch.testing.assert_close(
        quantizer.reconstruction_values, quantizer_fixture[f"{name}.reconstruction_values"], atol=5e-6, rtol=0
    )


def test_nearest_level_not_bin(quantizer_fixture):
    """An exact interior boundary goes to the bin nearer zero; bucketizing by boundaries would differ."""
    quantizer = _quantizer("b6_r5", quantizer_fixture)
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    by_bin = (torch.bucketize(quantizer.normalize(x).clamp(-3, 3), quantizer.boundaries) - 1).clamp(0, 63)
    differ = (quantizer.quantize(x) != by_bin).float().mean().item()
    assert 0.002 < differ < 0.01  # about 0.49 % (docs/tokenbridge.md#quantizer)


def test_tables_stay_float32_under_a_dtype_cast(quantizer_fixture):
    quantizer = _quantizer("b6_r5", quantizer_fixture).to(torch.bfloat16)
    assert quantizer.reconstruction_values.dtype == torch.float32
    assert torch.equal(quantizer.levels(), quantizer_fixture["b6_r5.levels_latent"])


@pytest.mark.parametrize(
    "kwargs", [{"bits": 0}, {"bits": 2.0}, {"quant_min": 5.0, "quant_max": -5.0}, {"std_range": 0.0}]
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        TokenBridgeQuantizer(**kwargs)


def test_dequantize_refuses_floats():
    with pytest.raises(ValueError, match="integer"):
        TokenBridgeQuantizer().dequantize(torch.zeros(3))

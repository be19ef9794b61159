"""benchmarks/baseline.py's original DiT-1D forward computes what the original computes (the fixture's logits), so
that the forward benchmark compares our model with the original's computation, not with itself."""

import sys
from pathlib import Path

import torch
from script_loading import load_script


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conversion"))
from transformer_conversion import convert_transformer  # noqa: E402


def test_original_forward_gives_the_fixture_logits_and_ours(dit_original_state_dict, dit_fixture):
    baseline = load_script("benchmarks/baseline.py")
    counts, t, y = dit_fixture["counts"], dit_fixture["t"], dit_fixture["y"]
    logits = baseline.original_dit_forward(dit_original_state_dict, counts, t, y, num_heads=4)
    torch.testing.assert_close(logits, dit_fixture["logits"], atol=1e-5, rtol=0)
    null = baseline.original_dit_forward(dit_original_state_dict, counts, t, torch.full_like(y, 10), num_heads=4)
    torch.testing.assert_close(null, dit_fixture["logits_null_class"], atol=1e-5, rtol=0)
    model = convert_transformer(dit_original_state_dict, num_attention_heads=4).eval()
    with torch.no_grad():
        ours = model(counts, t, y).logits
    torch.testing.assert_close(ours, logits, atol=1e-5, rtol=0)

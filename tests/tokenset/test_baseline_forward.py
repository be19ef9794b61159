"""benchmarks/baseline.py's original DiT-1D forward computes what the original computes (the fixture's logits), so
that the forward benchmark compares our model with the original's computation, not with itself."""

import sys
from pathlib import Path

import torch
from helpers.scripts import load_script


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conversion"))
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


def test_original_forward_and_guidance_give_the_fixture_guided_probabilities(dit_original_state_dict, dit_fixture):
    """The per-step benchmark's original side (the original's forward of the doubled batch, then `baseline_guidance`)
    gives the original's guided probabilities, at a scale of 1.5 and at the interval schedule's 55."""
    baseline = load_script("benchmarks/baseline.py")
    counts, y = dit_fixture["counts"], dit_fixture["y"]
    doubled_counts, doubled_labels = torch.cat([counts, counts]), torch.cat([y, torch.full_like(y, 10)])
    for which, interval_scale in (("t_low", 4.0), ("t_high", 55.0)):
        t = torch.full((2 * len(y),), float(dit_fixture[f"t_{which}"]))
        logits = baseline.original_dit_forward(dit_original_state_dict, doubled_counts, t, doubled_labels, 4)
        for scale, key in ((1.5, f"cfg_scale1.5_{which}"), (interval_scale, f"cfg_interval_{which}")):
            torch.testing.assert_close(baseline.baseline_guidance(logits, scale), dit_fixture[key], atol=1e-5, rtol=0)

"""The DiT-1D forward: ours (`TokenSetTransformer1DModel`) against the original's computation
(`benchmarks/baseline.py: original_dit_forward`) on identical weights, in interleaved runs (single runs on a shared
CPU vary by +-30%), float32, eager.

The weights are random, drawn in the original checkpoint's layout (`tests/fixtures/original_checkpoint_manifest.json`)
and converted with the project's converter, so both sides hold the same numbers.

    python benchmarks/bench_dit_forward.py [--preset small] [--batch_size 2] [--runs 5] [--threads 0]
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
import json
import os
import statistics
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = {"small": ("fsdd_small_128_4096.pth", 6), "base": ("fsdd_base_128_4096.pth", 12)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(CHECKPOINTS), default="small")
    parser.add_argument("--batch_size", type=int, default=2, help="rows of one forward (2 = one guided image)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved timed runs of each side")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import torch

from benchmarks.baseline import original_dit_forward
from conversion.transformer_conversion import convert_transformer


def random_original_state_dict(preset: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    manifest = json.loads((ROOT / "tests" / "fixtures" / "original_checkpoint_manifest.json").read_text())
    shapes = manifest[CHECKPOINTS[preset][0]]["ema"]
    return {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()}


def forward_sides(preset: str, batch_size: int, generator: torch.Generator, device="cpu") -> dict:
    """`{"original": f, "ours": g}`: zero-argument calls of the original's forward and ours, on the same random
    weights (in the original checkpoint's layout, converted by the project's converter) and the same random inputs of
    `batch_size` rows, both returning logits. Call them under `torch.no_grad()`."""
    state_dict = random_original_state_dict(preset, generator)
    num_heads = CHECKPOINTS[preset][1]
    model = convert_transformer(state_dict, num_attention_heads=num_heads).to(device).eval()
    state_dict = {key: value.to(device) for key, value in state_dict.items()}
    config = model.config
    counts = torch.randint(0, 2, (batch_size, config.codebook_size), generator=generator).to(device)
    t = torch.rand(batch_size, generator=generator).to(device)
    y = torch.randint(0, config.num_classes, (batch_size,), generator=generator).to(device)
    return {
        "original": lambda: original_dit_forward(state_dict, counts, t, y, num_heads),
        "ours": lambda: model(counts, t, y).logits,
    }


def main():
    parser = build_parser()
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sides = forward_sides(args.preset, args.batch_size, torch.Generator().manual_seed(0))
    times = {name: [] for name in sides}
    with torch.no_grad():
        logits = sides["original"]()  # (B, C, M + 1); also the warm-up
        difference = (logits - sides["ours"]()).abs().max().item()
        for _ in range(args.runs):
            for name, forward in sides.items():
                start = time.perf_counter()
                forward()
                times[name].append(time.perf_counter() - start)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {load:.1f}")
    print(
        f"DiT-{args.preset} forward, batch {args.batch_size}, C = {logits.shape[1]}, fp32, eager; "
        f"max |logit difference| {difference:.2e}"
    )
    original, ours = statistics.median(times["original"]), statistics.median(times["ours"])
    pairs = [o / u for o, u in zip(times["original"], times["ours"])]
    print("| side | median s | runs (s) |\n|---|---|---|")
    for name in sides:
        print(f"| {name} | {statistics.median(times[name]):.2f} | {', '.join(f'{s:.2f}' for s in times[name])} |")
    print(
        f"speed of ours / original: {original / ours:.2f}x (median of per-pair ratios {statistics.median(pairs):.2f}x)"
    )


if __name__ == "__main__":
    main()

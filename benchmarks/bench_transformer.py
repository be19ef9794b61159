"""Forward-pass benchmark of `TokenSetTransformer1DModel` at the released sizes (C = 4096, M = 128, K = 1000).

Prints one table row per (device, precision, preset, batch size):
- CPU, float32 (the original-equivalent path), batch 1 and 2;
- CUDA when available: float32, bf16 autocast over float32 weights (what the original's `--mixed-precision bf16
  --force-fp32` does), and bf16 weights with the float32 modules kept in float32 (what
  `from_pretrained(..., dtype=torch.bfloat16)` gives), with throughput and peak memory.

Weights are random (timings do not depend on them). Run: `python benchmarks/bench_transformer.py [--presets S B]`.
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
import contextlib
import platform
import statistics
import time


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["S", "B"], choices=["S", "B"])
    parser.add_argument("--cpu_batch_sizes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--cuda_batch_sizes", nargs="+", type=int, default=[1, 2, 32, 64])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip_cpu", action="store_true")
    parser.add_argument("--num_threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import torch

from benchmarks.hardware import (
    matmul_tflops,
    peak_memory_gib,
    reset_peak_memory,
    synchronize,
    transformer_forward_flops,
)
from tokenset_diffusers.tokenset.transformer_tokenset import TokenSetTransformer1DModel


CODEBOOK_SIZE, NUM_TOKENS, NUM_CLASSES = 4096, 128, 1000


def cast_keeping_fp32_modules(model: TokenSetTransformer1DModel, dtype: torch.dtype) -> TokenSetTransformer1DModel:
    """Cast like `from_pretrained(dtype=dtype)`: parameters of `_keep_in_fp32_modules` stay float32."""
    keep = set(model._keep_in_fp32_modules)
    for name, parameter in model.named_parameters():
        if not keep.intersection(name.split(".")):
            parameter.data = parameter.data.to(dtype)
    return model


def make_inputs(batch_size: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    # A realistic count vector: M tokens scattered over the codebook.
    token_ids = torch.randint(0, CODEBOOK_SIZE, (batch_size, NUM_TOKENS), generator=generator)
    sample = torch.zeros(batch_size, CODEBOOK_SIZE, dtype=torch.long).scatter_add_(
        1, token_ids, torch.ones_like(token_ids)
    )
    timestep = torch.rand(batch_size, generator=generator)
    class_labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    return sample.to(device), timestep.to(device), class_labels.to(device)


@torch.no_grad()
def time_forward(model, inputs, device, autocast_dtype=None, warmup=1, repeats=3) -> float:
    """Median seconds per forward."""
    context = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    )
    times = []
    with context:
        for index in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            model(*inputs)
            synchronize(device)
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(preset: str, device: torch.device, mode: str) -> TokenSetTransformer1DModel:
    model = TokenSetTransformer1DModel.from_preset(
        preset, codebook_size=CODEBOOK_SIZE, num_tokens=NUM_TOKENS, num_classes=NUM_CLASSES
    )
    if mode == "bf16 weights, fp32 modules":
        model = cast_keeping_fp32_modules(model, torch.bfloat16)
    return model.to(device).eval()


def run(presets, device: torch.device, modes, batch_sizes, repeats) -> list[dict]:
    rows = []
    matmul_rates = {}
    for preset in presets:
        for mode in modes:
            model = build(preset, device, mode)
            autocast_dtype = torch.bfloat16 if mode == "fp32 weights, bf16 autocast" else None
            rate_dtype = torch.float32 if mode.startswith("fp32 (") else torch.bfloat16
            if rate_dtype not in matmul_rates:
                matmul_rates[rate_dtype] = matmul_tflops(device, rate_dtype)
            for batch_size in batch_sizes:
                inputs = make_inputs(batch_size, device)
                reset_peak_memory(device)
                seconds = time_forward(model, inputs, device, autocast_dtype, repeats=repeats)
                peak = peak_memory_gib(device)
                rows.append(
                    {
                        "device": device.type,
                        "mode": mode,
                        "preset": preset,
                        "params": sum(p.numel() for p in model.parameters()),
                        "batch": batch_size,
                        "ms": seconds * 1e3,
                        "samples_per_s": batch_size / seconds,
                        "peak_gib": peak,
                        "tflops": transformer_forward_flops(model.config, batch_size) / seconds / 1e12,
                        "matmul_tflops": matmul_rates[rate_dtype],
                    }
                )
                print(format_row(rows[-1]), flush=True)
            del model
    return rows


HEADER = (
    f"| {'device':6} | {'precision':28} | {'preset':6} | {'params':>11} | {'batch':>5} | {'forward ms':>10} "
    f"| {'samples/s':>9} | {'peak GiB':>8} | {'TFLOP/s':>8} | {'of matmul rate':>14} |"
)


def format_row(row: dict) -> str:
    return (
        f"| {row['device']:6} | {row['mode']:28} | {row['preset']:6} | {row['params']:>11,} | {row['batch']:>5} "
        f"| {row['ms']:>10.1f} | {row['samples_per_s']:>9.2f} | {row['peak_gib']:>8.2f} | {row['tflops']:>8.3f} "
        f"| {row['tflops'] / row['matmul_tflops']:>14.0%} |"
    )


def main():
    parser = build_parser()
    args = parser.parse_args()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    if torch.cuda.is_available():
        print(f"CUDA device: {torch.cuda.get_device_name()}")
    print(f"C = {CODEBOOK_SIZE}, M = {NUM_TOKENS}, K = {NUM_CLASSES}; median of {args.repeats} forwards after warm-up")
    print(HEADER)
    print("|" + "|".join("-" * (len(cell)) for cell in HEADER.split("|")[1:-1]) + "|")
    if not args.skip_cpu:
        run(args.presets, torch.device("cpu"), ["fp32 (original-equivalent)"], args.cpu_batch_sizes, args.repeats)
    if torch.cuda.is_available():
        modes = ["fp32 (original-equivalent)", "fp32 weights, bf16 autocast", "bf16 weights, fp32 modules"]
        run(args.presets, torch.device("cuda"), modes, args.cuda_batch_sizes, args.repeats)


if __name__ == "__main__":
    main()

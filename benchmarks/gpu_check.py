"""One short GPU check of issue 13, inside a wall-time budget (default 140 s, model builds and compilation included):

1. images/s of the whole pipeline (25 steps, guidance on every step, batch 64, released C = 4096, M = 128, random
   weights), DiT-S and DiT-B: the original algorithm (`benchmarks/baseline.py`: float32 eager transformer, TF32
   matmuls allowed, separate guidance operations, the dense (B, C, M) pdf every step) against `TokenSetPipeline`
   (bf16 weights with the float32 conditioning modules), eager and with `compile_repeated_blocks(fullgraph=True)`;
   one untimed 1-step call first (CUDA context, kernels, compilation), then ONE timed 25-step call each;
2. the scheduler's share of a step: medians of 3 guided forwards and 3 `FSDDScheduler.step` calls at steps 5, 12 and
   22 of 25, and the original's step beside it.

Measurements run in order of importance and are skipped, with a line saying so, once the budget would be exceeded.

    bash benchmarks/gpu_check.sh        # on the GPU machine; or: python benchmarks/gpu_check.py [--budget_s 140]
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
import statistics
import time
from functools import partial


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget_s", type=float, default=140.0)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--presets", nargs="+", default=["B", "S"], choices=["S", "B"])
    parser.add_argument("--device", default="cuda", help="cpu only to try the script itself out")
    parser.add_argument("--skip_compile", action="store_true")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import torch

from benchmarks import bench_sampling as sampling
from benchmarks.baseline import baseline_sample_counts, baseline_step
from benchmarks.hardware import describe, peak_memory_gib, reset_peak_memory, synchronize
from tokenset_diffusers import FSDDScheduler
from tokenset_diffusers.tokenset.set_ops import sample_fixed_sum_noise


START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


def timed(function, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def median_of(function, device, repeats: int = 3) -> float:
    return statistics.median(timed(function, device) for _ in range(repeats))


def check_preset(preset: str, args, device: torch.device, labels: torch.Tensor, whole_run) -> list[tuple]:
    """Runs the whole-pipeline rows of `preset` (printed by `whole_run`); returns its step-split rows."""
    batch_size, steps = args.batch_size, args.num_inference_steps
    rows = []
    baseline_model = sampling.build_transformer(preset, device, torch.float32)
    fast_model = sampling.build_transformer(preset, device, torch.bfloat16)
    pipeline = sampling.build_pipeline(fast_model, device)
    baseline_scheduler = FSDDScheduler(codebook_size=sampling.CODEBOOK_SIZE, num_tokens=sampling.NUM_TOKENS)

    def run_fast(num_steps):
        generator = torch.Generator(device).manual_seed(0)
        pipeline(labels, num_steps, sampling.GUIDANCE, generator=generator, output_type="counts")

    def run_baseline(num_steps):
        generator = torch.Generator(device).manual_seed(0)
        baseline_sample_counts(baseline_model, baseline_scheduler, labels, num_steps, sampling.GUIDANCE, generator)

    scale = 1.0 if preset == "B" else 0.35  # rough cost of S relative to B, for the budget guard only
    fast_s = whole_run(preset, "ours, bf16, eager", run_fast, 20 * scale)
    whole_run(preset, "original algorithm, fp32 (TF32), eager", run_baseline, 3 * (fast_s or 20 * scale))

    # The scheduler's share of a step (eager bf16 forward), before compiling changes the model.
    if elapsed() + 10 * scale < args.budget_s:
        generator = torch.Generator(device).manual_seed(1)
        sample = sample_fixed_sum_noise(
            batch_size, sampling.CODEBOOK_SIZE, sampling.NUM_TOKENS, generator=generator, device=device
        )
        scheduler = pipeline.scheduler
        scheduler.set_timesteps(steps)
        for index in (5, 12, 22):
            t = scheduler.timesteps[index]
            probs = pipeline.guided_probabilities(sample, t, labels, sampling.GUIDANCE)
            guided = partial(pipeline.guided_probabilities, sample, t, labels, sampling.GUIDANCE)
            forward = median_of(guided, device)
            ours = median_of(partial(scheduler.step, probs, t, sample, generator=generator), device)
            original = median_of(partial(baseline_step, scheduler, probs, t, sample, generator), device)
            rows.append((preset, index, forward, ours, original))

    if not args.skip_compile:
        fast_model.compile_repeated_blocks(fullgraph=True)
        whole_run(preset, "ours, bf16, compile_repeated_blocks", run_fast, 40 * scale + (fast_s or 20 * scale))
    return rows


def main():
    parser = build_parser()
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    batch_size, steps = args.batch_size, args.num_inference_steps
    labels = torch.arange(batch_size, device=device) % sampling.NUM_CLASSES
    print(
        f"{describe(device)}; batch {batch_size}, {steps} steps, guidance {list(sampling.GUIDANCE)}, budget {args.budget_s} s"
    )
    print("| preset | path | images/s | s per 25-step call | peak GiB | warm-up s |")
    print("|---|---|---|---|---|---|")

    def whole_run(preset, name, run, estimate_s):
        """Warm up with 1 step, then time one full call; skipped if it would not fit the budget."""
        if elapsed() + estimate_s > args.budget_s:
            print(f"| {preset} | {name} | skipped: {elapsed():.0f} s used, about {estimate_s:.0f} s needed |")
            return None
        warm_up = timed(lambda: run(1), device)
        reset_peak_memory(device)
        seconds = timed(lambda: run(steps), device)
        print(
            f"| {preset} | {name} | {batch_size / seconds:.2f} | {seconds:.2f} | {peak_memory_gib(device):.1f} "
            f"| {warm_up:.1f} |",
            flush=True,
        )
        return seconds

    split_rows = []
    for preset in args.presets:
        split_rows += check_preset(preset, args, device, labels, whole_run)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print("\nOne step split (medians of 3): guided forward (doubled batch, bf16 eager) and the scheduler step")
    print(
        "| preset | step of 25 | forward ms | our step ms | share of the step | original's step ms | step speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    for preset, index, forward, ours, original in split_rows:
        print(
            f"| {preset} | {index} | {forward * 1e3:.1f} | {ours * 1e3:.2f} | {ours / (forward + ours):.1%} "
            f"| {original * 1e3:.2f} | {original / ours:.1f}x |"
        )
    print(f"\ntotal {elapsed():.0f} s")


if __name__ == "__main__":
    main()

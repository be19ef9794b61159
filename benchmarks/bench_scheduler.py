"""One FSDDScheduler.step at early, middle and late steps, and add_noise, at the released size (C = 4096, M = 128),
beside the original algorithm (`benchmarks/baseline.py`: the dense (B, C, M) float32 pdf, as released), with the ratio
and the peak bytes of the tensors each creates. Runs of the two alternate (interleaved), and the medians are
printed, so that a machine whose speed drifts favours neither.

python benchmarks/bench_scheduler.py [--batch_sizes 8 64] [--step_indices 5 12 22] [--repeats 3] [--device cpu]
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
import os
from functools import partial


def build_parser(cuda: bool = False) -> argparse.ArgumentParser:
    """The command line; `cuda` (whether torch sees a GPU) picks the defaults, which `--help` does not show."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--step_indices", nargs="+", type=int, default=[5, 12, 22], help="of 25 steps")
    parser.add_argument("--codebook_size", type=int, default=4096)
    parser.add_argument("--num_tokens", type=int, default=128)
    parser.add_argument("--exact_sum", action="store_true", help="the exact fixed-sum mode instead of the original's")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument(
        "--accelerator_path",
        action="store_true",
        help="the x_t draw and add_noise as on an accelerator (nothing read back: the x_t draw once per pair (z, x0), "
        "add_noise at a fixed width of 2M positions, no value checks); the x0 draw stays the CPU's",
    )
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import torch

from benchmarks.baseline import baseline_add_noise, baseline_step
from benchmarks.bench_sampling import live_peak
from benchmarks.hardware import describe, interleaved_medians
from tokenset_diffusers import FSDDScheduler, set_ops
from tokenset_diffusers.tokenset.set_ops import sample_fixed_sum_noise


def model_like_probs(batch_size, codebook_size, num_tokens, generator, device):
    """Probabilities shaped like a trained model's: confident about a token set (count 1 at M positions, 0 elsewhere),
    with the largest value under top-p's 0.8 at most positions, so that top-p keeps several values there."""
    target = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator, device=device)
    logits = torch.randn(batch_size, codebook_size, num_tokens + 1, generator=generator, device=device)
    logits.scatter_add_(-1, target[..., None], torch.full_like(logits[..., :1], 9.0))
    logits[..., 0] += 5.0
    return logits.softmax(-1)


def mib(function) -> float:
    return live_peak(function) / 2**20


def calls_for_batch(scheduler: FSDDScheduler, batch_size: int, step_indices, device) -> list[tuple]:
    """`(name, original, ours)` for each step index and for add_noise, on inputs of `batch_size` rows."""
    config = scheduler.config
    codebook_size, num_tokens = config.codebook_size, config.num_tokens
    generator = torch.Generator(device).manual_seed(0)
    probs = model_like_probs(batch_size, codebook_size, num_tokens, generator, device)
    sample = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator, device=device)
    calls = []
    for index in step_indices:
        t = scheduler.timesteps[index]
        calls.append(
            (
                f"step {index} of 25 (t = {float(t):.2f})",
                partial(baseline_step, scheduler, probs, t, sample, generator),
                partial(scheduler.step, probs, t, sample, generator=generator),
            )
        )
    data = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator, device=device)
    times = torch.rand(batch_size, generator=generator, device=device).clamp(min=1e-5)
    calls.append(
        (
            "add_noise",
            partial(baseline_add_noise, scheduler, data, sample, times, generator),
            partial(scheduler.add_noise, data, sample, times, generator=generator),
        )
    )
    return calls


def main():
    parser = build_parser(torch.cuda.is_available())
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.accelerator_path:  # what set_ops reads back on the CPU only, it does not read here either
        set_ops.checks_values = lambda tensor: False
    device = torch.device(args.device)
    codebook_size, num_tokens = args.codebook_size, args.num_tokens
    scheduler = FSDDScheduler(codebook_size=codebook_size, num_tokens=num_tokens, exact_sum=args.exact_sum)
    scheduler.set_timesteps(25)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{describe(device)}; load average {load}; C = {codebook_size}, M = {num_tokens}, exact_sum={args.exact_sum}"
        + (", x_t as on accelerators" if args.accelerator_path else "")
    )
    print(
        f"medians of {args.repeats} interleaved runs; MiB: peak of the tensors the call creates (its inputs excluded)"
    )
    print("| batch | operation | original ms | ours ms | speed-up | original MiB | ours MiB |")
    print("|---|---|---|---|---|---|---|")
    for batch_size in args.batch_sizes:
        for name, original, ours in calls_for_batch(scheduler, batch_size, args.step_indices, device):
            original_s, ours_s = interleaved_medians([original, ours], args.repeats, device)
            memory = ("-", "-") if args.skip_memory else (f"{mib(original):.0f}", f"{mib(ours):.1f}")
            print(
                f"| {batch_size} | {name} | {original_s * 1e3:,.0f} | {ours_s * 1e3:,.1f} | "
                f"{original_s / ours_s:.1f}x | {memory[0]} | {memory[1]} |",
                flush=True,
            )
    print(f"load average at the end: {' '.join(f'{value:.1f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()

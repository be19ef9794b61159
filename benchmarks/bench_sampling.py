"""Sampling throughput: the baseline path (what the original does, the way it does it) against the fast path.

    python benchmarks/bench_sampling.py                     # CUDA: whole sampling, S and B, batch 1 / 16 / 64
    python benchmarks/bench_sampling.py --threads 1         # CPU: the per-step table at batch 8 and 64, memory
    python benchmarks/bench_sampling.py --whole --presets S --batch_sizes 1 --num_inference_steps 2  # CPU, whole

Released sizes (C = 4096, M = 128, 1000 classes), random weights (timings do not depend on them), guidance on (the
released interval schedule [4, 50, 55], so every step runs the doubled batch), count vectors only (the tokenizer's
decode is `bench_tokenizer.py`'s). Tables:

0. one sampling step at early, middle and late steps (5, 12, 22 of 25) at each batch size, original against ours,
   interleaved: everything a step does after the transformer forward (guidance from the doubled batch's logits, the
   x0 and x_t draws and their adjustments: `baseline_guidance` + `baseline_step` against `combine_guidance` +
   `FSDDScheduler.step`), with the ratio and the peak MiB of the tensors each creates; and the DiT forward of one
   guided image (batch 2, float32, identical weights: `bench_dit_forward.py`'s), original against ours, from which
   the whole step's time at each batch size is estimated (forward time x batch + the rest). On a CPU a forward of a
   guided batch of 64 at the released size takes minutes, so the whole step is not timed there; by default this
   table is printed on CPUs, and table 1 on CUDA (`--whole` / `--per_step` ask for either);
1. sampling, images/s and peak memory: (a) baseline = `benchmarks/baseline.py` (float32 eager transformer,
   separate guidance operations, the full (B, C, M) transition tensor every step) and (b) fast = `TokenSetPipeline`
   (bf16 weights with the float32 modules kept, on CUDA; `--compile` adds `compile_repeated_blocks`), and (b)/(a);
2. one fast sampling step split into the transformer forward and the scheduler step: the scheduler's share, and the
   forward's TFLOP/s against the measured dense matmul rate of the same machine (`hardware.py`);
3. the live-tensor peak of one scheduler step, baseline and fast, measured on the meta device (so it runs anywhere,
   at any batch size, in no time): the (B, C, M) tensors against O(B x C).
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
import os
import weakref
from functools import partial


DTYPE_NAMES = ("float32", "bfloat16")


def build_parser(cuda: bool = False) -> argparse.ArgumentParser:
    """The command line; `cuda` (whether torch sees a GPU) picks the defaults, which `--help` does not show."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--presets", nargs="+", default=["S", "B"], choices=["S", "B"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--dtype", default="bfloat16" if cuda else "float32", choices=sorted(DTYPE_NAMES))
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's repeated blocks")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip_sampling", action="store_true", help="only the scheduler memory table")
    parser.add_argument("--whole", action="store_true", help="time whole sampling runs (table 1; default on CUDA)")
    parser.add_argument("--per_step", action="store_true", help="the per-step table (table 0; default on CPUs)")
    parser.add_argument("--step_batch_sizes", nargs="+", type=int, default=[8, 64], help="table 0's batch sizes")
    parser.add_argument("--step_indices", nargs="+", type=int, default=[5, 12, 22], help="table 0's steps, of 25")
    parser.add_argument("--forward_preset", default="small", choices=["small", "base"], help="table 0's forward")
    parser.add_argument("--skip_forward", action="store_true", help="table 0 without the forward and the estimate")
    parser.add_argument("--skip_memory", action="store_true", help="table 0 without the peak MiB")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.baseline import (
    baseline_guidance,
    baseline_next_sample,
    baseline_sample_counts,
    baseline_step,
)
from benchmarks.bench_transformer import cast_keeping_fp32_modules
from benchmarks.hardware import (
    describe,
    interleaved_medians,
    matmul_tflops,
    median_seconds,
    peak_memory_gib,
    reset_peak_memory,
    transformer_forward_flops,
)
from tokenset_diffusers import (
    FSDDScheduler,
    TokenSetPipeline,
    TokenSetTransformer1DModel,
    TokenSetVQVAE,
    TokenSetVQVAEConfig,
)
from tokenset_diffusers.tokenset.pipeline_tokenset import combine_guidance
from tokenset_diffusers.tokenset.set_ops import sample_fixed_sum_noise
from tokenset_diffusers.utils.testing_utils import TINY_TOKENIZER


CODEBOOK_SIZE, NUM_TOKENS, NUM_CLASSES = 4096, 128, 1000
GUIDANCE = (4.0, 50.0, 55.0)
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def build_pipeline(transformer: TokenSetTransformer1DModel, device: torch.device) -> TokenSetPipeline:
    """The pipeline around `transformer`, with a minimal tokenizer of the same C and M (never run here)."""
    tokenizer_config = TokenSetVQVAEConfig(
        **{**TINY_TOKENIZER, "codebook_size": CODEBOOK_SIZE, "num_tokens": NUM_TOKENS}
    )
    scheduler = FSDDScheduler(codebook_size=CODEBOOK_SIZE, num_tokens=NUM_TOKENS)
    pipeline = TokenSetPipeline(TokenSetVQVAE(tokenizer_config), transformer, scheduler).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_transformer(preset: str, device: torch.device, dtype: torch.dtype) -> TokenSetTransformer1DModel:
    torch.manual_seed(0)
    model = TokenSetTransformer1DModel.from_preset(
        preset, codebook_size=CODEBOOK_SIZE, num_tokens=NUM_TOKENS, num_classes=NUM_CLASSES
    )
    if dtype != torch.float32:
        model = cast_keeping_fp32_modules(model, dtype)
    return model.to(device).eval()


def measure(options, device, preset, baseline_model, pipeline, batch_size: int, peak_tflops: float) -> dict:
    """Table 1 and 2 figures of one preset and batch size."""
    labels = torch.arange(batch_size, device=device) % NUM_CLASSES
    steps = options.num_inference_steps
    baseline_scheduler = FSDDScheduler(codebook_size=CODEBOOK_SIZE, num_tokens=NUM_TOKENS)

    def run_baseline():
        generator = torch.Generator(device).manual_seed(0)
        baseline_sample_counts(baseline_model, baseline_scheduler, labels, steps, GUIDANCE, generator)

    def run_fast():
        generator = torch.Generator(device).manual_seed(0)
        pipeline(labels, steps, GUIDANCE, generator=generator, output_type="counts")

    reset_peak_memory(device)
    baseline_seconds = median_seconds(run_baseline, device, options.repeats)
    baseline_peak = peak_memory_gib(device)
    reset_peak_memory(device)
    fast_seconds = median_seconds(run_fast, device, options.repeats)
    fast_peak = peak_memory_gib(device)

    # one fast step, split: guided forward (doubled batch) and scheduler step
    generator = torch.Generator(device).manual_seed(1)
    sample = sample_fixed_sum_noise(batch_size, CODEBOOK_SIZE, NUM_TOKENS, generator=generator, device=device)
    pipeline.scheduler.set_timesteps(steps)
    t = pipeline.scheduler.timesteps[0]
    probs = pipeline.guided_probabilities(sample, t, labels, GUIDANCE)
    forward_seconds = median_seconds(
        lambda: pipeline.guided_probabilities(sample, t, labels, GUIDANCE), device, options.repeats
    )
    step_seconds = median_seconds(
        lambda: pipeline.scheduler.step(probs, t, sample, generator=generator), device, options.repeats
    )
    tflops = transformer_forward_flops(pipeline.transformer.config, 2 * batch_size) / forward_seconds / 1e12
    return {
        "preset": preset,
        "batch": batch_size,
        "baseline_images_per_s": batch_size / baseline_seconds,
        "fast_images_per_s": batch_size / fast_seconds,
        "speedup": baseline_seconds / fast_seconds,
        "baseline_peak_gib": baseline_peak,
        "fast_peak_gib": fast_peak,
        "scheduler_share": step_seconds / (forward_seconds + step_seconds),
        "forward_tflops": tflops,
        "matmul_fraction": tflops / peak_tflops,
        "step_ms": step_seconds * 1e3,
        "forward_ms": forward_seconds * 1e3,
    }


def sampling_rows(options, device: torch.device) -> list[dict]:
    """Table 1 and 2 for every preset and batch size."""
    rows = []
    dtype = DTYPES[options.dtype]
    peak_tflops = matmul_tflops(device, dtype)
    print(f"measured dense matmul rate ({options.dtype}): {peak_tflops:.2f} TFLOP/s")
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    for preset in options.presets:
        baseline_model = build_transformer(preset, device, torch.float32)
        fast_model = build_transformer(preset, device, dtype)
        if options.compile:
            fast_model.compile_repeated_blocks(fullgraph=True)
        pipeline = build_pipeline(fast_model, device)
        for batch_size in options.batch_sizes:
            rows.append(measure(options, device, preset, baseline_model, pipeline, batch_size, peak_tflops))
            print(format_row(rows[-1]), flush=True)
    return rows


HEADER = (
    "| preset | batch | baseline img/s | fast img/s | fast/baseline | baseline peak GiB | fast peak GiB "
    "| forward ms | scheduler ms | scheduler share | forward TFLOP/s | of matmul rate |"
)


def format_row(row: dict) -> str:
    return (
        f"| {row['preset']} | {row['batch']} | {row['baseline_images_per_s']:.3f} | {row['fast_images_per_s']:.3f} "
        f"| {row['speedup']:.2f}x | {row['baseline_peak_gib']:.2f} | {row['fast_peak_gib']:.2f} "
        f"| {row['forward_ms']:.1f} | {row['step_ms']:.1f} | {row['scheduler_share']:.1%} "
        f"| {row['forward_tflops']:.2f} | {row['matmul_fraction']:.0%} |"
    )


# ------------------------------------------------------------------------------------------ one step, per step index


def model_like_logits(batch_size: int, generator: torch.Generator, device) -> torch.Tensor:
    """Logits `(2 * batch_size, C, M + 1)` of a doubled guided batch shaped like a trained model's: confident about a
    token set (count 1 at M positions, 0 elsewhere), the conditional half sharper than the unconditional one."""
    target = sample_fixed_sum_noise(batch_size, CODEBOOK_SIZE, NUM_TOKENS, generator=generator, device=device)
    logits = torch.randn(2 * batch_size, CODEBOOK_SIZE, NUM_TOKENS + 1, generator=generator, device=device)
    boost = torch.full_like(logits[:batch_size, :, :1], 9.0)
    logits[:batch_size].scatter_add_(-1, target[..., None], boost)
    logits[batch_size:].scatter_add_(-1, target[..., None], boost / 2)
    logits[..., 0] += 5.0
    return logits


def original_rest_of_step(scheduler, logits, scale, t, sample, generator):
    """The original's step after its forward: guidance as separate operations, then its dense-pdf step."""
    return baseline_step(scheduler, baseline_guidance(logits, scale), t, sample, generator)


def our_rest_of_step(scheduler, logits, scale, t, sample, generator):
    """The pipeline's step after its forward: `combine_guidance`, then `FSDDScheduler.step`."""
    return scheduler.step(combine_guidance(logits, scale), t, sample, generator=generator, return_dict=False)


def forward_seconds(preset: str, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of the original's DiT forward and ours on one guided image (batch 2), float32, on identical
    weights (`bench_dit_forward.py`'s), interleaved."""
    from benchmarks.bench_dit_forward import forward_sides

    sides = forward_sides(preset, 2, torch.Generator().manual_seed(0), device)
    with torch.no_grad():
        return tuple(interleaved_medians([sides["original"], sides["ours"]], repeats, device))


def per_step_rows(options, device: torch.device) -> list[dict]:
    """Table 0: the rest of a step (after the forward), original against ours, per batch size and step index; the
    forward of one guided image; the estimated whole step."""
    scheduler = FSDDScheduler(codebook_size=CODEBOOK_SIZE, num_tokens=NUM_TOKENS)
    scheduler.set_timesteps(25)
    forward = None
    if not options.skip_forward:
        forward = forward_seconds(options.forward_preset, options.repeats, device)
        print(
            f"DiT-{options.forward_preset} forward of one guided image (batch 2, float32, identical weights, "
            f"{options.repeats} interleaved runs): original {forward[0]:.2f} s, ours {forward[1]:.2f} s, "
            f"ours {forward[0] / forward[1]:.2f}x the original's speed",
            flush=True,
        )
    print(
        "| batch | step | rest of step: original ms | ours ms | speed-up | original MiB | ours MiB "
        "| whole step (est.): original s | ours s | speed-up | scheduler share of ours |"
    )
    print("|---" * 11 + "|")
    rows = []
    for batch_size in options.step_batch_sizes:
        generator = torch.Generator(device).manual_seed(0)
        logits = model_like_logits(batch_size, generator, device)
        sample = sample_fixed_sum_noise(batch_size, CODEBOOK_SIZE, NUM_TOKENS, generator=generator, device=device)
        for index in options.step_indices:
            t = scheduler.timesteps[index]
            scale = GUIDANCE[min(int(float(t) * len(GUIDANCE)), len(GUIDANCE) - 1)]
            calls = [
                partial(function, scheduler, logits, scale, t, sample, generator)
                for function in (original_rest_of_step, our_rest_of_step)
            ]
            original_s, ours_s = interleaved_medians(calls, options.repeats, device)
            peaks = [float("nan")] * 2
            if not options.skip_memory:
                peaks = [live_peak(call, inputs=(logits, sample)) / 2**20 for call in calls]
            row = {
                "batch": batch_size,
                "step": index,
                "original_ms": original_s * 1e3,
                "ours_ms": ours_s * 1e3,
                "original_mib": peaks[0],
                "ours_mib": peaks[1],
            }
            whole = ("-", "-", "-", "-")
            if forward is not None:  # the forward of B guided images, taken as B times that of one
                original_whole, ours_whole = batch_size * forward[0] + original_s, batch_size * forward[1] + ours_s
                whole = (
                    f"{original_whole:,.1f}",
                    f"{ours_whole:,.1f}",
                    f"{original_whole / ours_whole:.2f}x",
                    f"{ours_s / ours_whole:.2%}",
                )
            rows.append(row)
            print(
                f"| {batch_size} | {index} of 25 (t = {float(t):.2f}) | {original_s * 1e3:,.0f} | {ours_s * 1e3:,.1f} "
                f"| {original_s / ours_s:.1f}x | {peaks[0]:,.0f} | {peaks[1]:,.1f} | " + " | ".join(whole) + " |",
                flush=True,
            )
    return rows


# ------------------------------------------------------------------------------------------ scheduler memory (meta)


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside the mode and alive at once; `peak` is the maximum. The
    storages of `inputs` (and so views of them, e.g. the halves of the doubled batch's logits) are not counted."""

    def __init__(self, inputs=()):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0
        self.live.update({tensor.untyped_storage()._cdata: 0 for tensor in inputs})  # never freed, never counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += self.live[key]
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return output

    def _free(self, key):
        self.current -= self.live.pop(key, 0)


def live_peak(function, inputs=()) -> int:
    """Peak bytes of live tensors created while `function()` runs, the storages of the tensors `inputs` excluded."""
    with LiveTensorBytes(inputs) as tracker:
        function()
    return tracker.peak


def step_peaks(scheduler: FSDDScheduler, probs, sample, t, index: int) -> dict[str, int]:
    return {
        "step_baseline": live_peak(lambda: baseline_step(scheduler, probs, t, sample)),
        "step_fast": live_peak(lambda: scheduler.step(probs, t, sample)),
        "xt_baseline": live_peak(lambda: baseline_next_sample(scheduler, sample, sample, t)),
        "xt_fast": live_peak(
            lambda: scheduler._draw_next_sample(sample, sample, index, scheduler._adjusts(index), None)
        ),
    }


def scheduler_memory_rows(batch_sizes) -> list[dict]:
    """Table 3: one step at t = 0.8 (both draws adjusted), whole and its x_t part alone."""
    rows = []
    scheduler = FSDDScheduler(codebook_size=CODEBOOK_SIZE, num_tokens=NUM_TOKENS)
    scheduler.set_timesteps(25)
    index = 20
    t = scheduler.timesteps[index]
    print(
        "| batch | model output MiB | step: baseline | step: fast | x_t draw + adjust: baseline | x_t: fast | x_t ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for batch_size in batch_sizes:
        probs = torch.rand(batch_size, CODEBOOK_SIZE, NUM_TOKENS + 1, device="meta")
        sample = torch.zeros(batch_size, CODEBOOK_SIZE, dtype=torch.long, device="meta")
        row = {"batch": batch_size, **step_peaks(scheduler, probs, sample, t, index)}
        rows.append(row)
        mib = {key: value / 2**20 for key, value in row.items()}
        print(
            f"| {batch_size} | {probs.numel() * 4 / 2**20:.0f} | {mib['step_baseline']:.0f} | {mib['step_fast']:.0f} "
            f"| {mib['xt_baseline']:.1f} | {mib['xt_fast']:.1f} | {row['xt_baseline'] / row['xt_fast']:.0f}x |",
            flush=True,
        )
    return rows


def main():
    parser = build_parser(torch.cuda.is_available())
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    compiled = ", compiled" if options.compile else ""
    print(
        f"{describe(device)}; C = {CODEBOOK_SIZE}, M = {NUM_TOKENS}, {options.num_inference_steps} steps, guidance "
        f"{list(GUIDANCE)}, fast path in {options.dtype}{compiled}"
    )
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"load average {load}")
    whole = options.whole or (device.type == "cuda" and not options.per_step)
    if not options.skip_sampling and (options.per_step or not whole):
        print(
            f"\nOne sampling step after the forward (guidance + scheduler step), medians of {options.repeats} "
            "interleaved runs; MiB: peak of the tensors the call creates (the logits excluded):"
        )
        per_step_rows(options, device)
    if not options.skip_sampling and whole:
        sampling_rows(options, device)
    print(
        "\nOne scheduler step at t = 0.8, peak MiB of the tensors it creates (meta device; the model output is input):"
    )
    scheduler_memory_rows(options.batch_sizes)


if __name__ == "__main__":
    main()

"""Training throughput (images per second) of both stages, one process, synthetic data.

python benchmarks/bench_training.py [--device cpu|cuda] [--steps 5] [--mixed_precision no|bf16]
    [--tokenizer_config training/configs/digits_tokenizer.yaml] [--generator_config training/configs/digits_generator.yaml]
    [--batch_size N]

Each stage runs the real `train_step` of its script (forward, backward, optimiser step, EMA update; the tokenizer
with its discriminator on, as in the GAN phase), on random images / token sets of the presets' sizes, so the numbers
exclude data loading. The FLOPs of a step (matmuls, convolutions, attention; forward and backward) are counted by
`torch.utils.flop_counter.FlopCounterMode`, and the achieved rate is compared with the same machine's measured dense
matmul rate (`benchmarks/hardware.py`). The generator's C and M come from the tokenizer preset unless its own preset sets them.
On the 2-core CPU of this project, the defaults (the digits presets) take about a minute.
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
import tempfile
import time


def build_parser(cuda: bool = False) -> argparse.ArgumentParser:
    """The command line; `cuda` (whether torch sees a GPU) picks the defaults, which `--help` does not show."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--tokenizer_config", default="training/configs/digits_tokenizer.yaml")
    parser.add_argument("--generator_config", default="training/configs/digits_generator.yaml")
    parser.add_argument("--batch_size", type=int, default=None, help="Override the presets' per-process batch size.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--stages", nargs="+", default=["tokenizer", "generator"], choices=["tokenizer", "generator"])
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import torch
from accelerate.state import AcceleratorState
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.hardware import describe, matmul_tflops
from training import train_generator, train_tokenizer
from training.training_utils import build_accelerator


def counted_flops(step_function) -> int:
    """FLOPs of one call of `step_function` (matmuls, convolutions and attention, forward and backward), counted by
    `torch.utils.flop_counter.FlopCounterMode`."""
    with FlopCounterMode(display=False) as counter:
        step_function()
    return counter.get_total_flops()


def timed_steps(step_function, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per call of `step_function`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step_function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step_function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def common_flags(options, output_dir: str) -> list[str]:
    flags = ["--output_dir", output_dir, "--report_to", "none", "--mixed_precision", options.mixed_precision]
    if options.device == "cpu":
        flags.append("--use_cpu")
    if options.batch_size is not None:
        flags += ["--train_batch_size", str(options.batch_size)]
    return flags


def bench_tokenizer(options, output_dir: str) -> tuple[int, float, dict]:
    argv = [
        "--config",
        options.tokenizer_config,
        *common_flags(options, output_dir),
        "--discriminator_start_step",
        "0",
    ]
    _, model_args, args = train_tokenizer.parse_args(argv)
    accelerator = build_accelerator(args)
    state = train_tokenizer.build_training_state(accelerator, model_args, args)
    size, batch_size = model_args.image_size, args.train_batch_size
    batch = {"pixel_values": torch.rand(batch_size, 3, size, size) * 2 - 1}

    def step():
        train_tokenizer.train_step(accelerator, state, [batch], args)
        state.progress.step += 1

    seconds = timed_steps(step, options.warmup, options.steps, accelerator.device)
    flops = counted_flops(step)
    config = state.ema.shadow.config
    sizes = {"image_size": size, "C": config.codebook_size, "M": config.num_tokens}
    AcceleratorState._reset_state(True)
    return batch_size, seconds, flops, sizes


def bench_generator(options, output_dir: str, codebook_size: int, num_tokens: int) -> tuple[int, float, dict]:
    argv = ["--config", options.generator_config, *common_flags(options, output_dir)]
    argv += ["--pretokenized_dataset", "unused-synthetic-data"]
    _, model_args, args = train_generator.parse_args(argv)
    accelerator = build_accelerator(args)
    codebook_size = model_args.codebook_size or codebook_size
    num_tokens = model_args.num_tokens or num_tokens
    num_classes = model_args.num_classes or 10
    data = train_generator.GeneratorData(None, codebook_size, num_tokens, num_classes, None, None)
    state = train_generator.build_training_state(accelerator, model_args, args, data)
    batch_size = args.train_batch_size
    generator = torch.Generator().manual_seed(0)
    token_ids = torch.randint(0, codebook_size, (batch_size, 2, num_tokens), generator=generator)
    batch = {"token_ids": token_ids, "label": torch.randint(0, num_classes, (batch_size,), generator=generator)}

    def step():
        train_generator.train_step(accelerator, state, data, [batch], model_args, args)
        state.progress.step += 1

    seconds = timed_steps(step, options.warmup, options.steps, accelerator.device)
    flops = counted_flops(step)
    width = model_args.num_attention_heads * model_args.attention_head_dim
    sizes = {"C": codebook_size, "M": num_tokens, "layers": model_args.num_layers, "width": width}
    AcceleratorState._reset_state(True)
    return batch_size, seconds, flops, sizes


def main():
    parser = build_parser(torch.cuda.is_available())
    options = parser.parse_args()
    device = torch.device(options.device)
    dtype = torch.bfloat16 if options.mixed_precision == "bf16" else torch.float32
    peak = matmul_tflops(device, dtype)
    print(f"{describe(device)}; mixed precision {options.mixed_precision}")
    print(f"measured dense matmul rate ({dtype}): {peak:.3f} TFLOP/s")
    print("| stage | batch | s/step | images/s | TFLOP/step | TFLOP/s | of matmul rate | sizes |")
    print("|---|---|---|---|---|---|---|---|")

    def report(stage, batch_size, seconds, flops, sizes):
        achieved = flops / seconds / 1e12
        print(
            f"| {stage} | {batch_size} | {seconds:.3f} | {batch_size / seconds:.1f} | {flops / 1e12:.4f} "
            f"| {achieved:.3f} | {achieved / peak:.0%} | {sizes} |",
            flush=True,
        )

    with tempfile.TemporaryDirectory() as output_dir:
        _, model_args, _ = train_tokenizer.parse_args(
            ["--config", options.tokenizer_config, "--output_dir", output_dir]
        )
        codebook_size, num_tokens = model_args.codebook_size, model_args.num_tokens
        if "tokenizer" in options.stages:
            report("tokenizer", *bench_tokenizer(options, output_dir))
        if "generator" in options.stages:
            report("generator", *bench_generator(options, output_dir, codebook_size, num_tokens))


if __name__ == "__main__":
    main()

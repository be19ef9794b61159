"""Time the set tokenizer (`TokenSetVQVAE`) at the released size: encode and decode, float32 and bfloat16.

Random weights (timing does not depend on them). Prints a table; on CUDA also images/s and peak memory.

    PYTHONPATH=. python benchmarks/bench_tokenizer.py                      # CPU, batch 1 and 2
    PYTHONPATH=. python benchmarks/bench_tokenizer.py --device cuda --batch_sizes 1 8 32
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
from functools import partial


DTYPE_NAMES = ("float32", "bfloat16")


def build_parser(cuda: bool = False) -> argparse.ArgumentParser:
    """The command line; `cuda` (whether torch sees a GPU) picks the defaults, which `--help` does not show."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPE_NAMES), default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per entry (the median is printed)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--channels_last", action="store_true", help="channels_last memory format for the pixel decoder's convolutions"
    )
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import torch

from benchmarks.hardware import median_seconds
from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE


DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def parse_args() -> argparse.Namespace:
    return build_parser(torch.cuda.is_available()).parse_args()


@torch.inference_mode()
def main():
    args = parse_args()
    device = torch.device(args.device)
    config = TokenSetVQVAEConfig()
    torch.manual_seed(0)
    model = TokenSetVQVAE(config).eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for the float32 rows (no effect on bf16)
        torch.backends.cudnn.allow_tf32 = True
    num_parameters = sum(p.numel() for p in model.parameters())
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"TokenSetVQVAE, released size ({num_parameters:,} parameters), {config.image_size} px, ")
    print(f"M = {config.num_tokens}, C = {config.codebook_size}; device: {device_name}, torch {torch.__version__}, ")
    memory_format = "channels_last" if args.channels_last else "contiguous"
    print(f"threads: {torch.get_num_threads()}; {memory_format}; median of {args.repeats} runs")
    header = f"{'dtype':<9} {'batch':>5} {'encode s':>9} {'decode s':>9} {'enc img/s':>10} {'dec img/s':>10}"
    if device.type == "cuda":
        header += f" {'peak GiB':>9}"
    print(header)
    print("-" * len(header))

    for dtype_name in args.dtypes:
        model = model.to(DTYPES[dtype_name])
        for batch_size in args.batch_sizes:
            generator = torch.Generator(device="cpu").manual_seed(batch_size)
            pixel_values = (
                torch.rand(batch_size, 3, config.image_size, config.image_size, generator=generator) * 2 - 1
            ).to(device)
            token_ids = model.encode(pixel_values).token_ids
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                encode_s = median_seconds(partial(model.encode, pixel_values), device, args.repeats, args.warmup)
                decode_s = median_seconds(partial(model.decode, token_ids), device, args.repeats, args.warmup)
            except RuntimeError as error:  # e.g. a bf16 kernel missing on this backend
                print(f"{dtype_name:<9} {batch_size:>5}  not supported here: {str(error).splitlines()[0]}")
                continue
            row = (
                f"{dtype_name:<9} {batch_size:>5} {encode_s:>9.3f} {decode_s:>9.3f} "
                f"{batch_size / encode_s:>10.2f} {batch_size / decode_s:>10.2f}"
            )
            if device.type == "cuda":
                row += f" {torch.cuda.max_memory_allocated(device) / 2**30:>9.2f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()

# ruff: noqa: E402
"""TokenBridge sampling speed: the pipeline (one batched guidance pass, the channel head's KV cache) against the
original's way of computing the same samples (`benchmarks/baseline_tokenbridge.py`: two guidance passes through the
encoder and decoder, the head recomputing its prefix for every channel), in one run on one machine.

    python benchmarks/bench_tokenbridge.py                       # CPU: L (random weights) at 4 iterations + bundled
    python benchmarks/bench_tokenbridge.py --device cuda --dtype bf16 --configs L H --batch_size 64 \
        --num_inference_steps 64 256

Reported per configuration: images/s of the whole pipeline (tokens and VAE decoding) for both paths and their ratio,
and the seconds of the token loop alone. Both paths run in the same dtype (`--dtype`); the released models and
settings: L (guidance 3.1, temperature 0.96) and H (3.45, 0.91) with random weights and a random KL-16-shaped VAE;
`bundled` is the trained `tokenbridge-digits` pipeline with its stored defaults.
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
import json
import time


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype -> torch dtype name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="fp32")
    parser.add_argument("--configs", nargs="+", default=["L", "bundled"], help="L, H and/or bundled")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--bundled_batch_size", type=int, default=100)
    parser.add_argument("--num_inference_steps", type=int, nargs="+", default=[4])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup_steps", type=int, default=4, help="iterations of the untimed first run; 0: none")
    parser.add_argument(
        "--no_token_loop", action="store_true", help="skip timing the token loops alone and the same-tokens check"
    )
    parser.add_argument("--output", default=None, help="append each row as a JSON line here")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import torch
from diffusers import AutoencoderKL

from benchmarks.baseline_tokenbridge import baseline_images, baseline_sample_indices
from benchmarks.hardware import describe, median_seconds
from tokenset_diffusers import (
    MaskedARScheduler,
    TokenBridgePipeline,
    TokenBridgeTransformer2DModel,
    bundled_pipeline_path,
)


RELEASED = {"L": (3.1, 0.96), "H": (3.45, 0.91)}
KL16_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=16, sample_size=256,
    down_block_types=["DownEncoderBlock2D"] * 4 + ["AttnDownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"] * 5,
    block_out_channels=[128, 128, 256, 256, 512], layers_per_block=2, norm_num_groups=32, scaling_factor=0.2325,
)  # fmt: skip
DTYPES = {flag: getattr(torch, name) for flag, name in DTYPE_NAMES.items()}


def build_pipeline(name: str, device: torch.device, dtype: torch.dtype) -> TokenBridgePipeline:
    if name == "bundled":
        pipeline = TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))
    else:
        torch.manual_seed(0)
        transformer = TokenBridgeTransformer2DModel.from_preset(name)
        pipeline = TokenBridgePipeline(transformer, AutoencoderKL(**KL16_CONFIG), MaskedARScheduler(num_tokens=256))
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(device)
    return pipeline if dtype == torch.float32 else pipeline.to(dtype=dtype)


def measure(
    pipeline, name: str, batch_size: int, steps: int, device, repeats: int, token_loop: bool, warmup_steps: int = 4
) -> dict:
    """Seconds of both paths (after a short warm-up run of each), and whether they draw the same tokens."""
    config = pipeline.config
    guidance, temperature = RELEASED.get(name, (config.default_guidance_scale, config.default_temperature))
    num_classes = pipeline.transformer.config.num_classes
    labels = torch.arange(batch_size, device=device) % num_classes

    def generators():
        return [torch.Generator(device).manual_seed(seed) for seed in range(batch_size)]

    def fast(num_steps=steps, output_type="pt"):
        kwargs = dict(temperature=temperature, generator=generators(), output_type=output_type)
        return pipeline(labels, num_steps, guidance, **kwargs)

    def baseline_tokens(num_steps=steps):
        return baseline_sample_indices(pipeline, labels, num_steps, guidance, temperature, generators())

    def baseline(num_steps=steps):
        return baseline_images(pipeline, baseline_tokens(num_steps))

    row = {"config": name, "batch": batch_size, "iterations": steps, "guidance": guidance, "temperature": temperature}
    with torch.no_grad():
        if warmup_steps > 0:  # a short run of each path first (kernels, allocator)
            fast(min(steps, warmup_steps)), baseline(min(steps, warmup_steps))
        baseline_seconds = median_seconds(baseline, device, repeats, warmup=0)
        fast_seconds = median_seconds(fast, device, repeats, warmup=0)
        row.update(
            baseline_images_per_s=batch_size / baseline_seconds,
            fast_images_per_s=batch_size / fast_seconds,
            speedup=baseline_seconds / fast_seconds,
        )
        if token_loop:
            baseline_token_seconds = median_seconds(baseline_tokens, device, repeats, warmup=0)
            fast_token_seconds = median_seconds(lambda: fast(output_type="indices"), device, repeats, warmup=0)
            row.update(
                baseline_token_loop_s=baseline_token_seconds,
                fast_token_loop_s=fast_token_seconds,
                token_loop_speedup=baseline_token_seconds / fast_token_seconds,
                same_tokens=torch.equal(fast(output_type="indices").indices, baseline_tokens()),
            )
    return row


def format_row(row: dict) -> str:
    token_loop = "not measured"
    if "token_loop_speedup" in row:
        token_loop = (
            f"{row['baseline_token_loop_s']:.3g} / {row['fast_token_loop_s']:.3g} s "
            f"({row['token_loop_speedup']:.2f}x), same tokens: {row['same_tokens']}"
        )
    return (
        f"| {row['config']} | {row['batch']} | {row['iterations']} | {row['baseline_images_per_s']:.3g} | "
        f"{row['fast_images_per_s']:.3g} | **{row['speedup']:.2f}x** | {token_loop} |"
    )


def main(argv=None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(describe(device), f"dtype {args.dtype}", flush=True)
    print("| config | batch | iterations | baseline images/s | fast images/s | speedup | token loop baseline / fast |\n"
          "|---|---|---|---|---|---|---|", flush=True)  # fmt: skip
    rows = []
    for name in args.configs:
        pipeline = build_pipeline(name, device, DTYPES[args.dtype])
        step_counts = [None] if name == "bundled" else args.num_inference_steps
        for steps in step_counts:
            steps = steps or pipeline.config.default_num_inference_steps
            batch = args.bundled_batch_size if name == "bundled" else args.batch_size
            start = time.perf_counter()
            row = measure(
                pipeline, name, batch, steps, device, args.repeats, not args.no_token_loop, args.warmup_steps
            )
            row["wall_s"] = round(time.perf_counter() - start, 1)
            row["device"] = describe(device)
            row["dtype"] = args.dtype
            rows.append(row)
            print(format_row(row), flush=True)
            if args.output:
                with open(args.output, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
        del pipeline
    return rows


if __name__ == "__main__":
    main()

"""Generate images with a TokenSet pipeline.

    python pipelines/generate.py                                   # every class of the bundled digits model
    python pipelines/generate.py --model org/tokenset-imagenet --class_labels 207 "golden retriever" \\
        --num_images_per_class 4 --guidance_scale 4 50 55 --device cuda --dtype bfloat16 --output samples.png

`--output` ending in .png writes one labelled grid (a row per class); anything else is a folder of PNGs.
"""

import argparse
import sys
from pathlib import Path

import torch

from tokenset_diffusers import FSDDScheduler, TokenSetPipeline, bundled_pipeline_path
from tokenset_diffusers.visualization import labelled_grid


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline folder or Hub repo id (default: the bundled model)")
    parser.add_argument("--class_labels", nargs="+", default=None, help="class ids or names (default: every class)")
    parser.add_argument("--num_images_per_class", type=int, default=1)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument(
        "--guidance_scale",
        type=float,
        nargs="+",
        default=None,
        help="one number (constant) or several (interval schedule over t); default: the pipeline's stored default",
    )
    parser.add_argument("--exact_sum", action="store_true", help="sample with the exact fixed-sum adjustment")
    parser.add_argument("--seed", type=int, default=0, help="image i uses torch.Generator().manual_seed(seed + i)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--output", default="samples.png", help="a .png grid, or a folder for one PNG per image")
    args = parser.parse_args(argv)
    if args.num_images_per_class < 1:
        parser.error(f"--num_images_per_class must be at least 1, got {args.num_images_per_class}")
    if args.num_inference_steps < 1:
        parser.error(f"--num_inference_steps must be at least 1, got {args.num_inference_steps}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    return args


def parse_label(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def load_pipeline(model: str | None, device: str, dtype: torch.dtype, exact_sum: bool) -> TokenSetPipeline:
    pipeline = TokenSetPipeline.from_pretrained(model or bundled_pipeline_path(), dtype=dtype)
    if exact_sum:
        pipeline.scheduler = FSDDScheduler.from_config(pipeline.scheduler.config, exact_sum=True)
    return pipeline.to(device)


def class_names(pipeline: TokenSetPipeline, label_ids: list[int]) -> list[str]:
    id2label = pipeline.config.id2label or {}
    return [f"{i}: {id2label[i].split(',')[0]}" if i in id2label else str(i) for i in label_ids]


def generate(pipeline: TokenSetPipeline, label_ids: list[int], args: argparse.Namespace) -> list:
    """Images for `label_ids`, each repeated `num_images_per_class` times, image i seeded with `seed + i`."""
    labels = [label for label in label_ids for _ in range(args.num_images_per_class)]
    generator_device = "cpu"  # the same images on every device family for the noise draws
    images = []
    for start in range(0, len(labels), args.batch_size):
        batch = labels[start : start + args.batch_size]
        generators = [torch.Generator(generator_device).manual_seed(args.seed + start + i) for i in range(len(batch))]
        output = pipeline(
            batch,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            generator=generators,
        )
        images.extend(output.images)
    return images


def main(argv=None) -> Path:
    args = parse_args(argv)
    try:
        pipeline = load_pipeline(args.model, args.device, DTYPES[args.dtype], args.exact_sum)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")
    if args.class_labels is None:
        label_ids = list(range(pipeline.transformer.config.num_classes))
    else:
        try:
            label_ids = pipeline.prepare_class_labels([parse_label(t) for t in args.class_labels]).tolist()
        except ValueError as error:
            sys.exit(f"error: {error}")
    images = generate(pipeline, label_ids, args)
    output = Path(args.output)
    if output.suffix.lower() == ".png":
        n = args.num_images_per_class
        rows = [images[i * n : (i + 1) * n] for i in range(len(label_ids))]
        output.parent.mkdir(parents=True, exist_ok=True)
        labelled_grid(rows, row_labels=class_names(pipeline, label_ids)).save(output)
    else:
        output.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            label = label_ids[index // args.num_images_per_class]
            image.save(output / f"class{label:04d}_{index % args.num_images_per_class:03d}.png")
    print(f"wrote {len(images)} images to {output}")
    return output


if __name__ == "__main__":
    main()

"""Generate images with a TokenSet pipeline.

    python pipelines/generate.py                                   # every class of the bundled digits model
    python pipelines/generate.py --class_labels 3 7 --num_images_per_class 4 --output sevens.jpg
    python pipelines/generate.py --model org/tokenset-imagenet --class_labels 207 "golden retriever" \\
        --num_images_per_class 4 --guidance_scale 4 50 55 --device cuda --dtype bfloat16 --output samples.png

`--output` with an image suffix (.png, .jpg, .webp, ...) writes one labelled grid in that format: a row per class, or,
with one image per class, a near-square grid with each image captioned by its class. Anything else is a folder of
PNGs, one per image.
"""

import argparse
import sys
from pathlib import Path


# Arguments are parsed before torch and diffusers are imported, so that `--help` and argument errors come at once.
DTYPES = ("bfloat16", "float16", "float32")
GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=None, help="pipeline folder or Hub repo id (default: the bundled digits model)"
    )
    parser.add_argument(
        "--class_labels",
        nargs="+",
        default=None,
        help="class ids or names, from the model's id2label (default: every class)",
    )
    parser.add_argument(
        "--num_images_per_class", type=int, default=1, help="images per class label (default: %(default)s)"
    )
    parser.add_argument(
        "--num_inference_steps", type=int, default=25, help="FSDD sampling steps (default: %(default)s)"
    )
    parser.add_argument(
        "--guidance_scale",
        type=float,
        nargs="+",
        default=None,
        help="one number (constant) or several (interval schedule over t) (default: the pipeline's stored default)",
    )
    parser.add_argument(
        "--exact_sum", action="store_true", help="sample with the exact fixed-sum adjustment (default: off)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="image i uses torch.Generator().manual_seed(seed + i) (default: %(default)s)",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="images per pipeline call (default: %(default)s)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weights' dtype (default: %(default)s)")
    parser.add_argument(
        "--output",
        default="samples.png",
        help=f"an image file ({', '.join(GRID_SUFFIXES)}) for one labelled grid, else a folder of PNGs "
        "(default: %(default)s)",
    )
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


def load_pipeline(model: str | None, device: str | None, dtype: str, exact_sum: bool):
    import torch

    from tokenset_diffusers import FSDDScheduler, TokenSetPipeline, bundled_pipeline_path

    pipeline = TokenSetPipeline.from_pretrained(model or bundled_pipeline_path(), dtype=getattr(torch, dtype))
    if exact_sum:
        pipeline.scheduler = FSDDScheduler.from_config(pipeline.scheduler.config, exact_sum=True)
    return pipeline.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def class_names(pipeline, label_ids: list[int]) -> list[str]:
    id2label = pipeline.config.id2label or {}
    return [f"{i}: {id2label[i].split(',')[0]}" if i in id2label else str(i) for i in label_ids]


def generate(pipeline, label_ids: list[int], args: argparse.Namespace) -> list:
    """Images for `label_ids`, each repeated `num_images_per_class` times, image i seeded with `seed + i`."""
    import torch

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


def grid_image(images: list, names: list[str], images_per_class: int):
    """One image per class: a near-square grid, each image captioned with its class; more: a row per class."""
    from tokenset_diffusers.visualization import class_rows_grid, near_square_grid

    if images_per_class == 1:
        return near_square_grid(images, names)
    return class_rows_grid(images, names, images_per_class)


def main(argv=None) -> Path:
    args = parse_args(argv)
    try:
        pipeline = load_pipeline(args.model, args.device, args.dtype, args.exact_sum)
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
    if output.suffix.lower() in GRID_SUFFIXES:
        output.parent.mkdir(parents=True, exist_ok=True)
        grid_image(images, class_names(pipeline, label_ids), args.num_images_per_class).save(output)
    else:
        output.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            label = label_ids[index // args.num_images_per_class]
            image.save(output / f"class{label:04d}_{index % args.num_images_per_class:03d}.png")
    print(f"wrote {len(images)} images to {output}")
    return output


if __name__ == "__main__":
    main()

"""Generate images with a TokenSet or TokenBridge pipeline.

    python pipelines/generate.py                                   # every class of the bundled digits model
    python pipelines/generate.py --class_labels 3 7 --num_images_per_class 4 --output sevens.jpg
    python pipelines/generate.py --model tokenbridge-digits --temperature 0.9 --output tokenbridge.png
    python pipelines/generate.py --model org/tokenset-imagenet --class_labels 207 "golden retriever" \\
        --num_images_per_class 4 --guidance_scale 4 50 55 --device cuda --dtype bfloat16 --output samples.png

`--model` is a pipeline folder, a bundled model's name (`digits`, `tokenbridge-digits`) or a Hub repo id; the system
is read from the folder's `model_index.json`. `--exact_sum` and a guidance schedule (several `--guidance_scale`
values) are TokenSet's, `--temperature` is TokenBridge's; each is refused for the other system.

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
        "--model",
        default="digits",
        help="pipeline folder, bundled model (digits, tokenbridge-digits) or Hub repo id (default: %(default)s)",
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
        "--num_inference_steps",
        type=int,
        default=None,
        help="FSDD steps or masked-AR iterations (default: 25 for TokenSet, the stored default for TokenBridge)",
    )
    parser.add_argument(
        "--guidance_scale",
        type=float,
        nargs="+",
        default=None,
        help="one number (constant; TokenBridge: its linear schedule's top) or, for TokenSet, several (interval "
        "schedule over t) (default: the pipeline's stored default)",
    )
    parser.add_argument(
        "--exact_sum", action="store_true", help="TokenSet: sample with the exact fixed-sum adjustment (default: off)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="TokenBridge: divides the logits, 0 is greedy (default: the pipeline's stored default)",
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
    if args.num_inference_steps is not None and args.num_inference_steps < 1:
        parser.error(f"--num_inference_steps must be at least 1, got {args.num_inference_steps}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.temperature is not None and args.temperature < 0:
        parser.error(f"--temperature must be at least 0, got {args.temperature}")
    return args


def parse_label(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def system_options(args: argparse.Namespace, system: str) -> dict:
    """The sampling keywords of `system`'s pipeline; raises `ValueError` for a flag that only the other system has."""
    if system == "tokenset":
        if args.temperature is not None:
            raise ValueError("--temperature is a TokenBridge option; this is a TokenSet pipeline.")
        steps = 25 if args.num_inference_steps is None else args.num_inference_steps
        return {"num_inference_steps": steps, "guidance_scale": args.guidance_scale}
    if args.exact_sum:
        raise ValueError("--exact_sum is a TokenSet option (the fixed-sum sampler); this is a TokenBridge pipeline.")
    if args.guidance_scale is not None and len(args.guidance_scale) != 1:
        raise ValueError(
            f"TokenBridge takes one --guidance_scale (its linear schedule's top), got {len(args.guidance_scale)}."
        )
    guidance_scale = None if args.guidance_scale is None else args.guidance_scale[0]
    return {
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": guidance_scale,
        "temperature": args.temperature,
    }


def load_pipeline(resolved, device: str | None, dtype: str, exact_sum: bool):
    """`resolved` ([`~tokenset_diffusers.bundled.ResolvedPipeline`]) loaded in `dtype` onto `device`."""
    import torch

    from tokenset_diffusers import FSDDScheduler

    pipeline = resolved.pipeline_class.from_pretrained(resolved.folder, dtype=getattr(torch, dtype))
    if exact_sum:
        pipeline.scheduler = FSDDScheduler.from_config(pipeline.scheduler.config, exact_sum=True)
    return pipeline.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def class_names(pipeline, label_ids: list[int]) -> list[str]:
    from tokenset_diffusers.class_labels import class_caption

    return [class_caption(pipeline.config.id2label, i) for i in label_ids]


def generate(pipeline, label_ids: list[int], args: argparse.Namespace, options: dict) -> list:
    """Images for `label_ids`, each repeated `num_images_per_class` times, image i seeded with `seed + i`; `options`
    are the pipeline's sampling keywords ([`system_options`])."""
    import torch

    labels = [label for label in label_ids for _ in range(args.num_images_per_class)]
    generator_device = "cpu"  # the same images on every device family for the noise draws
    images = []
    for start in range(0, len(labels), args.batch_size):
        batch = labels[start : start + args.batch_size]
        generators = [torch.Generator(generator_device).manual_seed(args.seed + start + i) for i in range(len(batch))]
        output = pipeline(batch, generator=generators, **options)
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
    from tokenset_diffusers.bundled import resolve_pipeline

    try:
        resolved = resolve_pipeline(args.model)
        options = system_options(args, resolved.system)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    pipeline = load_pipeline(resolved, args.device, args.dtype, args.exact_sum)
    if args.class_labels is None:
        label_ids = list(range(pipeline.transformer.config.num_classes))
    else:
        try:
            label_ids = pipeline.prepare_class_labels([parse_label(t) for t in args.class_labels]).tolist()
        except ValueError as error:
            sys.exit(f"error: {error}")
    images = generate(pipeline, label_ids, args, options)
    output = Path(args.output)
    if output.suffix.lower() in GRID_SUFFIXES:
        output.parent.mkdir(parents=True, exist_ok=True)
        grid_image(images, class_names(pipeline, label_ids), args.num_images_per_class).save(output)
    else:
        output.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            label = label_ids[index // args.num_images_per_class]
            image.save(output / f"class{label:04d}_{index % args.num_images_per_class:03d}.png")
    print(f"wrote {len(images)} image{'' if len(images) == 1 else 's'} to {output}")
    return output


if __name__ == "__main__":
    main()

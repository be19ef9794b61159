"""Set interpolation: a strip of images between two images, through a path of fixed-sum count vectors.

    python pipelines/interpolate.py first.png second.png --num_points 8 --output strip.png
    python pipelines/interpolate.py a.png b.png --redenoise_strength 0.3 --class_label 8   # re-denoise every point

Each point is the fixed-sum rounding of the weighted mean of the two images' count vectors
(`tokenset_diffusers.interpolate_counts`); `--redenoise_strength` re-denoises every inner point briefly with the
generator (image variations from that point), with `--class_label` or without a class. The first row of the figure
holds the rounded means decoded as they are; with re-denoising, a second row holds the re-denoised points. `--model` is
a TokenSet pipeline folder, a bundled model's name (`digits`) or a Hub repo id (default: the bundled digits model); set
interpolation needs a set tokenizer, so TokenBridge pipelines (`tokenbridge-digits`) are refused.
"""

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs=2, help="the two end images")
    parser.add_argument(
        "--model",
        default="digits",
        help="TokenSet pipeline folder, bundled model or Hub repo id (default: %(default)s)",
    )
    parser.add_argument("--num_points", type=int, default=8, help="points on the path, both ends included")
    parser.add_argument(
        "--redenoise_strength", type=float, default=0.0, help="0 = decode the rounded means as they are"
    )
    parser.add_argument("--class_label", default=None, help="class id or name for re-denoising (default: no class)")
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--output", default="interpolation.png")
    args = parser.parse_args(argv)
    if args.num_points < 2:
        parser.error(f"--num_points must be at least 2, got {args.num_points}")
    if not 0.0 <= args.redenoise_strength <= 1.0:
        parser.error(f"--redenoise_strength must be in [0, 1], got {args.redenoise_strength}")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    # Imported after the arguments are parsed, so that `--help` and argument errors come before torch.
    import PIL.Image
    import torch

    from tokenset_diffusers import TokenSetImg2ImgPipeline, interpolate_images
    from tokenset_diffusers.bundled import resolve_pipeline
    from tokenset_diffusers.visualization import labelled_grid

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = resolve_pipeline(args.model, system="tokenset")
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    images = []
    for path in args.images:
        if not Path(path).is_file():
            sys.exit(f"error: no such image file: {path}")
        try:
            images.append(PIL.Image.open(path).convert("RGB"))
        except PIL.UnidentifiedImageError:
            sys.exit(f"error: {path} is not an image PIL can read")
    pipeline = TokenSetImg2ImgPipeline.from_pretrained(resolved.folder).to(device)
    label = args.class_label
    if label is not None and label.isdigit():
        label = int(label)
    kwargs = dict(num_points=args.num_points, num_inference_steps=args.num_inference_steps)
    plain = interpolate_images(pipeline, images[0], images[1], **kwargs)
    rows, row_labels = [plain.images], ["set mean"]
    if args.redenoise_strength > 0:
        generator = torch.Generator(device).manual_seed(args.seed)
        redenoised = interpolate_images(
            pipeline,
            images[0],
            images[1],
            redenoise_strength=args.redenoise_strength,
            class_labels=label,
            generator=generator,
            **kwargs,
        )
        rows.append(redenoised.images)
        row_labels.append(f"re-denoised {args.redenoise_strength:g}")
    size = max(96, pipeline.image_tokenizer.config.image_size)
    columns = [f"w={weight:.2f}" for weight in plain.weights.tolist()]
    figure = labelled_grid(rows, row_labels=row_labels, column_labels=columns, min_cell_size=size)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.save(output)
    print(f"wrote {output} ({args.num_points} points)")
    return output


if __name__ == "__main__":
    main()

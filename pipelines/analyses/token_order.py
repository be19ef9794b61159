"""The paper's Table 1 for any set tokenizer: reconstructions decoded from five orders of the same tokens, with rFID.

    python pipelines/analyses/token_order.py --dataset data/digits --dataset_split test \\
        --feature_extractor pipelines/digits_features.py:build --output_dir analyses/token_order

Every image is encoded once; its M token ids are decoded in the encoder's order, reversed, shuffled (seeded), sorted
ascending and sorted descending. For each order: the rFID between the reconstructions and the (centre-cropped)
originals, and the largest pixel difference from the encoder-order reconstruction (0 up to float rounding for a
decoder that sees a set). Features come from `--feature_extractor`: `inception` (torch-fidelity's
`inception-v3-compat`, as the paper; needs its weights) or `module:callable` / `path/to/file.py:callable`, which the
result names. Writes `token_order.json` and `token_order.png` (inputs and the five reconstructions of a few images).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.analyses.tokenized_images import (
    ImageBatches,
    add_common_arguments,
    load_tokenizer,
    resolve_device,
    to_uint8,
    write_result,
)


if TYPE_CHECKING:  # torch is imported where used, so that `--help` comes before it
    import torch


ORDERS = ("original", "reversed", "shuffled", "ascending", "descending")


def token_orders(token_ids: torch.LongTensor, generator: torch.Generator) -> dict[str, torch.LongTensor]:
    """The same token sets `(B, M)` in the five orders of Table 1 (the shuffle drawn from `generator`, per row)."""
    import torch

    batch_size, num_tokens = token_ids.shape
    shuffle = torch.rand(batch_size, num_tokens, generator=generator).argsort(-1).to(token_ids.device)  # (B, M)
    ascending = token_ids.sort(-1).values
    return {
        "original": token_ids,
        "reversed": token_ids.flip(-1),
        "shuffled": token_ids.gather(1, shuffle),
        "ascending": ascending,
        "descending": ascending.flip(-1),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument(
        "--feature_extractor", default="inception", help="inception, module:callable or file.py:callable"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    parser.add_argument("--num_shown", type=int, default=8, help="images in the figure")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from tokenset_diffusers.metrics import load_feature_extractor

    args.device = resolve_device(args.device)
    tokenizer = load_tokenizer(args.tokenizer, args.device)
    extractor = load_feature_extractor(args.feature_extractor, device=args.device)  # may train: outside no_grad
    images = ImageBatches(args, tokenizer.config.image_size)
    with torch.no_grad():
        result, shown = compare_orders(tokenizer, extractor, images, args)
    path = write_result(args.output_dir, "token_order", result, args)
    figure = _figure(shown)
    figure.save(Path(args.output_dir) / "token_order.png")
    print(markdown_table(result))
    print(f"wrote {path} and {Path(args.output_dir) / 'token_order.png'}")
    return result


def compare_orders(tokenizer, extractor, images: ImageBatches, args) -> tuple[dict, dict]:
    """The table (rFID and largest difference per order) and the images for the figure."""
    import torch

    from tokenset_diffusers.metrics import FeatureStatistics, extract_features, frechet_distance

    generator = torch.Generator().manual_seed(args.seed)
    real_statistics = None
    statistics = {name: None for name in ORDERS}
    largest_difference = dict.fromkeys(ORDERS, 0.0)
    shown = {name: [] for name in ("input", *ORDERS)}
    for _, pixel_values in images:
        pixel_values = pixel_values.to(args.device)
        token_ids = tokenizer.encode(pixel_values).token_ids  # (B, M)
        real_features, _ = extract_features(extractor, to_uint8(pixel_values), device=args.device)
        if real_statistics is None:
            real_statistics = FeatureStatistics(real_features.shape[1])
            statistics = {name: FeatureStatistics(real_features.shape[1]) for name in ORDERS}
        real_statistics.update(real_features.double().numpy())
        reconstructions = {name: tokenizer.decode(ids) for name, ids in token_orders(token_ids, generator).items()}
        for name, decoded in reconstructions.items():
            features, _ = extract_features(extractor, to_uint8(decoded), device=args.device)
            statistics[name].update(features.double().numpy())
            difference = (decoded - reconstructions["original"]).abs().max().item()
            largest_difference[name] = max(largest_difference[name], difference)
        room = args.num_shown - len(shown["input"])
        if room > 0:
            shown["input"].extend(to_uint8(pixel_values[:room]))
            for name, decoded in reconstructions.items():
                shown[name].extend(to_uint8(decoded[:room]))
    real_mean, real_covariance = real_statistics.mean, real_statistics.covariance
    table = {
        name: {
            "rfid": frechet_distance(statistics[name].mean, statistics[name].covariance, real_mean, real_covariance),
            "max_abs_difference_from_original_order": largest_difference[name],
        }
        for name in ORDERS
    }
    result = {"num_images": len(images), "feature_extractor": args.feature_extractor, "orders": table}
    return result, shown


def _figure(shown: dict) -> "PIL.Image.Image":  # noqa: F821
    import PIL.Image

    from tokenset_diffusers.visualization import labelled_grid

    def pil(image):
        return PIL.Image.fromarray(image.permute(1, 2, 0).numpy())

    columns = list(shown)
    rows = [[pil(shown[name][i]) for name in columns] for i in range(len(shown["input"]))]
    return labelled_grid(rows, column_labels=columns, min_cell_size=64)


def markdown_table(result: dict) -> str:
    lines = [
        f"| token order | rFID ({result['feature_extractor']}) | max pixel difference from the original order |",
        "|---|---|---|",
    ]
    for name, row in result["orders"].items():
        lines.append(f"| {name} | {row['rfid']:.4f} | {row['max_abs_difference_from_original_order']:.2e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The paper's Fig. 6 for any set tokenizer: images whose token sets hold the same token several times.

    python pipelines/analyses/shared_tokens.py --dataset data/digits --dataset_split test --min_count 3 \\
        --output_dir analyses/shared_tokens

Every image is encoded to its count vector. A token "is shared" by the images that hold it at least `--min_count`
times; the figure shows, for `--tokens` (or else the `--num_tokens_shown` tokens shared by the most images), a row of
up to `--images_per_token` of those images (the highest counts first). With a `--label_column` (a dataset's class
column), the result also gives, per token, the share of its images in their most common class (the "semantic
clustering" the paper points at) next to the share that class has in the whole dataset (what chance would give).
Writes `shared_tokens.json` and `shared_tokens.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

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


def images_sharing_token(counts: torch.LongTensor, token: int, min_count: int) -> torch.LongTensor:
    """Indices of the rows of `counts` `(N, C)` that hold `token` at least `min_count` times, highest count first
    (ties by index)."""
    import torch

    holders = torch.nonzero(counts[:, token] >= min_count).flatten()  # (K,)
    order = torch.argsort(-counts[holders, token] * (len(counts) + 1) + holders)  # count descending, index ascending
    return holders[order]


def most_shared_tokens(counts: torch.LongTensor, min_count: int, num_tokens: int) -> list[int]:
    """The `num_tokens` codebook entries held at least `min_count` times by the most images (ties by index)."""
    import torch

    holders = (counts >= min_count).sum(0)  # (C,)
    order = torch.argsort(-holders * (counts.shape[1] + 1) + torch.arange(counts.shape[1]))
    return [int(token) for token in order[:num_tokens] if holders[token] > 0]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--min_count", type=int, default=3, help="how often a token must occur in an image's set")
    parser.add_argument(
        "--tokens", type=int, nargs="*", default=None, help="the tokens to show (default: most shared)"
    )
    parser.add_argument("--num_tokens_shown", type=int, default=6)
    parser.add_argument("--images_per_token", type=int, default=10)
    parser.add_argument("--label_column", default="label", help="class column of a dataset, if it has one")
    args = parser.parse_args(argv)
    if args.min_count < 1:
        parser.error(f"--min_count must be at least 1, got {args.min_count}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    args.device = resolve_device(args.device)
    with torch.no_grad():
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    import torch

    from tokenset_diffusers import tokens_to_counts
    from tokenset_diffusers.visualization import labelled_grid

    tokenizer = load_tokenizer(args.tokenizer, args.device)
    images = ImageBatches(args, tokenizer.config.image_size)
    codebook_size = tokenizer.config.codebook_size
    if args.tokens and not all(0 <= token < codebook_size for token in args.tokens):
        raise SystemExit(f"error: --tokens must lie in [0, {codebook_size}), got {args.tokens}")
    counts, pictures = [], []
    for _, pixel_values in images:
        token_ids = tokenizer.encode(pixel_values.to(args.device)).token_ids  # (B, M)
        counts.append(tokens_to_counts(token_ids, codebook_size).cpu())
        pictures.extend(to_uint8(pixel_values))
    counts = torch.cat(counts)  # (N, C)
    labels = images.labels(args.label_column)
    tokens = args.tokens or most_shared_tokens(counts, args.min_count, args.num_tokens_shown)
    rows, row_labels, per_token = [], [], {}
    for token in tokens:
        holders = images_sharing_token(counts, token, args.min_count)
        entry = {
            "num_images": len(holders),
            "image_indices": holders.tolist(),
            "counts": counts[holders, token].tolist(),
        }
        if labels is not None and len(holders):
            values, frequency = np.unique(labels[holders.numpy()], return_counts=True)
            majority = values[frequency.argmax()]
            entry |= {
                "majority_label": majority.item(),
                "majority_share": float(frequency.max() / len(holders)),
                "majority_label_share_in_dataset": float((labels == majority).mean()),
            }
        per_token[str(token)] = entry
        if len(holders):
            rows.append([_pil(pictures[i]) for i in holders[: args.images_per_token].tolist()])
            row_labels.append(f"token {token} (x>={args.min_count}): {len(holders)} images")
    result = {
        "num_images": len(images),
        "min_count": args.min_count,
        "tokens": per_token,
        "images_per_token_mean": float((counts >= args.min_count).sum(0).float().mean()),
    }
    path = write_result(args.output_dir, "shared_tokens", result, args)
    if rows:
        labelled_grid(rows, row_labels=row_labels, min_cell_size=64).save(Path(args.output_dir) / "shared_tokens.png")
    print(markdown_table(result))
    print(f"wrote {path} and {Path(args.output_dir) / 'shared_tokens.png'}")
    return result


def _pil(image: torch.Tensor) -> "PIL.Image.Image":  # noqa: F821
    import PIL.Image

    return PIL.Image.fromarray(image.permute(1, 2, 0).numpy())


def markdown_table(result: dict) -> str:
    lines = [
        f"| token | images holding it >= {result['min_count']} times | most common class | its share among them "
        "| its share in the data |",
        "|---|---|---|---|---|",
    ]
    for token, entry in result["tokens"].items():
        if "majority_label" in entry:
            lines.append(
                f"| {token} | {entry['num_images']} | {entry['majority_label']} | "
                f"{100 * entry['majority_share']:.0f}% | {100 * entry['majority_label_share_in_dataset']:.0f}% |"
            )
        else:
            lines.append(f"| {token} | {entry['num_images']} | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

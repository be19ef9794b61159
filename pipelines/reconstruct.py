"""Images -> token sets -> reconstructions, decoded from several orders of the same tokens.

    python pipelines/reconstruct.py photo1.jpg photo2.png --model org/tokenset-imagenet --output reconstructions.png

Each row shows the input, its reconstructions from the token set in the encoder's order, reversed, shuffled and
sorted (the set property: all four should look the same, as in the paper's figure 4), and the count vector as a
histogram. `--model` is a TokenSet pipeline folder, a tokenizer folder, a bundled model's name (`digits`) or a Hub
repo id (default: the bundled digits model); TokenBridge pipelines (`tokenbridge-digits`) have no set tokenizer and are
refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:  # imported where used, so that `--help` and argument errors come before torch
    import PIL.Image
    import torch

    from tokenset_diffusers import TokenSetVQVAE


ORDERS = ("encoder order", "reversed", "shuffled", "sorted")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument(
        "--model",
        default="digits",
        help="TokenSet pipeline or tokenizer folder, bundled model or Hub repo id (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--output", default="reconstructions.png")
    return parser.parse_args(argv)


def load_image_tokenizer(model: str | os.PathLike | None = None) -> TokenSetVQVAE:
    """The set tokenizer of `model`: a tokenizer folder, or the `image_tokenizer/` of a TokenSet pipeline named as
    [`~tokenset_diffusers.bundled.resolve_pipeline`] takes it (folder, bundled name, Hub repo id; `None`: `digits`).

    Raises `ValueError` for a name that is none of these and for a TokenBridge pipeline (it has no set tokenizer)."""
    from tokenset_diffusers import TokenSetVQVAE
    from tokenset_diffusers.bundled import resolve_pipeline

    if model is not None and Path(model).is_dir() and not (Path(model) / "model_index.json").is_file():
        return TokenSetVQVAE.from_pretrained(model)
    return TokenSetVQVAE.from_pretrained(resolve_pipeline(model, system="tokenset").folder / "image_tokenizer")


def token_orders(token_ids: torch.LongTensor, generator: torch.Generator) -> dict[str, torch.LongTensor]:
    """The same token sets (B, M) in four orders."""
    import torch

    shuffle = torch.stack([torch.randperm(token_ids.shape[1], generator=generator) for _ in range(len(token_ids))])
    return {
        "encoder order": token_ids,
        "reversed": token_ids.flip(-1),
        "shuffled": token_ids.gather(1, shuffle.to(token_ids.device)),
        "sorted": token_ids.sort(-1).values,
    }


def reconstruct(image_tokenizer: TokenSetVQVAE, images: list[PIL.Image.Image], seed: int = 0) -> PIL.Image.Image:
    """The side-by-side figure for `images`."""
    import torch

    from tokenset_diffusers import postprocess_images, preprocess_images
    from tokenset_diffusers.visualization import count_histogram, labelled_grid

    device = image_tokenizer.device
    pixel_values = preprocess_images(images, image_tokenizer.config.image_size).to(device)  # (B, 3, S, S)
    with torch.no_grad():
        encoded = image_tokenizer.encode(pixel_values)
        orders = token_orders(encoded.token_ids, torch.Generator().manual_seed(seed))
        decoded = {
            name: postprocess_images(image_tokenizer.decode(ids).float(), "pil") for name, ids in orders.items()
        }
        counts = image_tokenizer.encode_to_counts(pixel_values).cpu()
    inputs = postprocess_images(pixel_values.float(), "pil")
    size = max(96, image_tokenizer.config.image_size)
    rows = [
        [inputs[i], *(decoded[name][i] for name in ORDERS), count_histogram(counts[i], width=2 * size, height=size)]
        for i in range(len(images))
    ]
    return labelled_grid(rows, column_labels=["input", *ORDERS, "count vector"], min_cell_size=size)


def main(argv=None) -> Path:
    args = parse_args(argv)
    import PIL.Image
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:
        sys.exit(f"error: no such image file(s): {missing}")
    images = []
    for path in args.images:
        try:
            images.append(PIL.Image.open(path).convert("RGB"))
        except PIL.UnidentifiedImageError:
            sys.exit(f"error: {path} is not an image PIL can read")
    try:
        image_tokenizer = load_image_tokenizer(args.model).to(device).eval()
    except ValueError as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # FileNotFoundError included
        sys.exit(f"error: could not load a set tokenizer from {args.model}: {error}")
    figure = reconstruct(image_tokenizer, images, seed=args.seed)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.save(output)
    print(f"wrote {output} ({len(images)} image{'' if len(images) == 1 else 's'})")
    return output


if __name__ == "__main__":
    main()

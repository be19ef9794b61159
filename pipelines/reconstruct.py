"""Images -> token sets -> reconstructions, decoded from several orders of the same tokens.

    python pipelines/reconstruct.py photo1.jpg photo2.png --model org/tokenset-imagenet --output reconstructions.png

Each row shows the input, its reconstructions from the token set in the encoder's order, reversed, shuffled and
sorted (the set property: all four should look the same, as in the paper's figure 4), and the count vector as a
histogram. `--model` is a pipeline folder, a tokenizer folder, or a Hub repo id (default: the bundled model).
"""

import argparse
import os
import sys
from pathlib import Path

import PIL.Image
import torch

from tokenset_diffusers import TokenSetVQVAE, bundled_pipeline_path, postprocess_images, preprocess_images
from tokenset_diffusers.visualization import count_histogram, labelled_grid


ORDERS = ("encoder order", "reversed", "shuffled", "sorted")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", default=None, help="pipeline or tokenizer folder, or Hub repo id")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="reconstructions.png")
    return parser.parse_args(argv)


def load_image_tokenizer(model: str | os.PathLike | None) -> TokenSetVQVAE:
    path = Path(model) if model is not None else bundled_pipeline_path()
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(model)))
    if (path / "model_index.json").is_file():
        path = path / "image_tokenizer"
    return TokenSetVQVAE.from_pretrained(path)


def token_orders(token_ids: torch.LongTensor, generator: torch.Generator) -> dict[str, torch.LongTensor]:
    """The same token sets (B, M) in four orders."""
    shuffle = torch.stack([torch.randperm(token_ids.shape[1], generator=generator) for _ in range(len(token_ids))])
    return {
        "encoder order": token_ids,
        "reversed": token_ids.flip(-1),
        "shuffled": token_ids.gather(1, shuffle.to(token_ids.device)),
        "sorted": token_ids.sort(-1).values,
    }


@torch.no_grad()
def reconstruct(image_tokenizer: TokenSetVQVAE, images: list[PIL.Image.Image], seed: int = 0) -> PIL.Image.Image:
    """The side-by-side figure for `images`."""
    device = image_tokenizer.device
    pixel_values = preprocess_images(images, image_tokenizer.config.image_size).to(device)  # (B, 3, S, S)
    encoded = image_tokenizer.encode(pixel_values)
    orders = token_orders(encoded.token_ids, torch.Generator().manual_seed(seed))
    decoded = {name: postprocess_images(image_tokenizer.decode(ids).float(), "pil") for name, ids in orders.items()}
    inputs = postprocess_images(pixel_values.float(), "pil")
    counts = image_tokenizer.encode_to_counts(pixel_values).cpu()
    size = max(96, image_tokenizer.config.image_size)
    rows = [
        [inputs[i], *(decoded[name][i] for name in ORDERS), count_histogram(counts[i], width=2 * size, height=size)]
        for i in range(len(images))
    ]
    return labelled_grid(rows, column_labels=["input", *ORDERS, "count vector"], min_cell_size=size)


def main(argv=None) -> Path:
    args = parse_args(argv)
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
        image_tokenizer = load_image_tokenizer(args.model).to(args.device).eval()
    except (FileNotFoundError, OSError) as error:
        sys.exit(f"error: could not load a set tokenizer from {args.model or 'the bundled model'}: {error}")
    figure = reconstruct(image_tokenizer, images, seed=args.seed)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.save(output)
    print(f"wrote {output} ({len(images)} images)")
    return output


if __name__ == "__main__":
    main()

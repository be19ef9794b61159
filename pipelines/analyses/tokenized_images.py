"""What the three tokenizer analyses share: the tokenizer, the images, batched encoding with a progress bar, and
the JSON result.

Images come from a folder (recursive, sorted file names), a `datasets.save_to_disk` folder or a Hub dataset split,
exactly as `pipelines/evaluate_generation.py` reads them; every image is ADM-centre-cropped to the tokenizer's size.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm


if TYPE_CHECKING:  # torch is imported where used, so that the analyses' `--help` comes before it
    import torch

    from tokenset_diffusers import TokenSetVQVAE


def add_common_arguments(parser) -> None:
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer or pipeline folder, or Hub repo id (default: bundled)"
    )
    parser.add_argument("--dataset", required=True, help="image folder, save_to_disk folder or Hub dataset name")
    parser.add_argument("--dataset_split", default="test", help="split of a dataset (ignored for an image folder)")
    parser.add_argument("--dataset_config", default=None, help="configuration name of a Hub dataset")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--max_images", type=int, default=None, help="use the first N images only")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--output_dir", required=True, help="folder for the JSON result and the figure")


def resolve_device(device: str | None) -> str:
    """`--device`, or `"cuda"` when available and `"cpu"` otherwise."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(model: str | os.PathLike | None, device: str) -> TokenSetVQVAE:
    """A set tokenizer from a tokenizer folder, a pipeline folder (its `image_tokenizer/`), or a Hub repo id."""
    from pipelines.reconstruct import load_image_tokenizer

    return load_image_tokenizer(model).to(device).eval()


class ImageBatches:
    """The images of `--dataset` (the first `max_images`), loaded in batches and centre-cropped to `image_size`."""

    def __init__(self, args, image_size: int):
        from pipelines.evaluate_generation import ImageSource

        self.source = ImageSource(args.dataset, args.dataset_split, args.dataset_config, args.image_column)
        self.num_images = len(self.source) if args.max_images is None else min(args.max_images, len(self.source))
        if self.num_images < 1:
            raise ValueError(f"`--max_images` must be at least 1, got {args.max_images}.")
        self.batch_size, self.image_size = args.batch_size, image_size

    def __len__(self) -> int:
        return self.num_images

    def __iter__(self) -> Iterator[tuple[int, torch.FloatTensor]]:
        """`(start, pixel_values)`: pixel values `(B, 3, S, S)` in [-1, 1] of images `start .. start + B - 1`."""
        from tokenset_diffusers.image_processing import preprocess_images

        starts = range(0, self.num_images, self.batch_size)
        for start in tqdm(starts, desc="batches", unit="batch"):
            images = self.source.load(start, min(start + self.batch_size, self.num_images))
            yield start, preprocess_images(images, self.image_size)

    def labels(self, column: str) -> np.ndarray | None:
        """The dataset's `column` for the images used, or `None` for an image folder or a dataset without it."""
        dataset = self.source.dataset
        if dataset is None or column not in dataset.column_names:
            return None
        return np.asarray(dataset[: self.num_images][column])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] `(B, 3, H, W)` -> uint8 on the CPU, rounded as saved PNGs would be."""
    import torch

    return ((images.float().clamp(-1, 1) / 2 + 0.5) * 255).round().to(torch.uint8).cpu()


def write_result(output_dir: str | os.PathLike, name: str, result: dict, args) -> Path:
    """Writes `{name}.json` with the result, the settings and the machine."""
    import torch

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{name}.json"
    settings = {key: value for key, value in vars(args).items()}
    record = {
        **result,
        "settings": settings,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, path)
    return path

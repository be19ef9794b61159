"""A digits-specific feature extractor, for an honest FID of models trained on scikit-learn's 8x8 digits.

Inception features mean little on 8x8 pen-written digits, so FID on the bundled digits model uses the penultimate layer
of a small classifier trained on the real digits instead (as "FID" on MNIST usually does). The classifier is trained
here, deterministically (fixed seed, full-batch, CPU), on the *train* part of a fixed split of the 1,797 digits; the
*held-out* part is the reference set of the FID and the classifier's test set.

The extractor follows the interface of `tokenset_diffusers.metrics` (uint8 images `(batch_size, 3, height, width)`
-> `(features, logits)`), so the evaluation script takes it as `--feature_extractor pipelines/digits_features.py:build`.
Images of any size are reduced to the digits' 8x8 grid by averaging the grey levels over equal areas, so the extractor
does not depend on how a model renders the digits, as long as the digit fills the square like the originals.

Command line: writes the held-out digits as PNGs (the FID reference folder) and prints the classifier's accuracy:

    python pipelines/digits_features.py --output_dir digits_held_out --image_size 32
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
from pathlib import Path
from typing import Literal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder for the held-out digits as PNGs")
    parser.add_argument("--image_size", type=int, default=32, help="side of the written PNGs (nearest enlargement)")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.25
TRAIN_SEED = 0
TRAIN_STEPS = 200
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
DIGIT_GRID = 8
MAX_INK = 16.0  # scikit-learn's digits hold grey levels 0..16


def digits_split(split: Literal["train", "held_out"]) -> tuple[np.ndarray, np.ndarray]:
    """
    The fixed split of scikit-learn's digits used by the extractor and the FID reference.

    Args:
        split (`str`): `"train"` (the classifier's training data; 75%) or `"held_out"` (its test set and the FID
            reference; 25%).

    Returns:
        `(images, labels)`: uint8 `(N, 8, 8)` grey levels scaled from 0..16 to 0..255 (white ink on black, as
        scikit-learn stores them), and int64 `(N,)` labels.
    """
    from tokenset_diffusers.utils.import_utils import require

    load_digits = require("sklearn.datasets", "the digits data (scikit-learn's)").load_digits
    if split not in ("train", "held_out"):
        raise ValueError(f"`split` must be 'train' or 'held_out', got {split!r}.")
    digits = load_digits()
    order = np.random.RandomState(SPLIT_SEED).permutation(len(digits.target))
    num_held_out = int(round(HELD_OUT_FRACTION * len(order)))
    indices = order[:-num_held_out] if split == "train" else order[-num_held_out:]
    images = np.round(digits.images[indices] * (255.0 / MAX_INK)).astype(np.uint8)  # (N, 8, 8)
    return images, digits.target[indices].astype(np.int64)


def render_digits(images: np.ndarray, image_size: int) -> np.ndarray:
    """8x8 uint8 digits -> uint8 RGB images `(N, image_size, image_size, 3)` (nearest-neighbour enlargement)."""
    if image_size < DIGIT_GRID:
        raise ValueError(f"`image_size` must be at least {DIGIT_GRID}, got {image_size}.")
    pil_images = [Image.fromarray(image).resize((image_size, image_size), Image.NEAREST) for image in images]
    return np.stack([np.asarray(image.convert("RGB")) for image in pil_images])


class DigitsFeatureExtractor(nn.Module):
    """A 64 -> 128 -> 64 -> 10 MLP on the 8x8 grid; features are the 64 penultimate activations (after ReLU).

    Forward: uint8 images `(batch_size, 3, height, width)` -> `(features (batch_size, 64), logits (batch_size, 10))`.
    """

    feature_dim = 64
    num_logits = 10

    def __init__(self, hidden_size: int = 128, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(DIGIT_GRID * DIGIT_GRID, hidden_size)
        self.fc2 = nn.Linear(hidden_size, feature_dim)
        self.classifier = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def to_grid(images: torch.Tensor) -> torch.Tensor:
        """uint8 `(B, 3, H, W)` -> float `(B, 64)`: grey levels in [0, 1] averaged over the cells of an 8x8 grid."""
        grey = images.float().mean(dim=1, keepdim=True) / 255.0  # (B, 1, H, W) in [0, 1]
        grid = F.adaptive_avg_pool2d(grey, DIGIT_GRID)  # (B, 1, 8, 8)
        return grid.flatten(1)  # (B, 64)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"`images` must be uint8 of shape (batch_size, 3, height, width), got {images.dtype} "
                f"{tuple(images.shape)}."
            )
        return self.classify_grid(self.to_grid(images))

    def classify_grid(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, 64)` grids from [`to_grid`] -> `(features (B, 64), logits (B, 10))`."""
        hidden_states = F.relu(self.fc1(grid))  # (B, hidden)
        features = F.relu(self.fc2(hidden_states))  # (B, 64)
        logits = self.classifier(features)  # (B, 10)
        return features, logits


def train_digits_classifier(steps: int = TRAIN_STEPS, seed: int = TRAIN_SEED) -> DigitsFeatureExtractor:
    """Trains [`DigitsFeatureExtractor`] on the train split (full-batch AdamW, fixed seed; about a second on CPU).

    Runs on one CPU thread: with matrices this small, more threads only slow it down (by 10x and more on a busy
    machine), and one thread makes the weights independent of the machine's thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(steps: int, seed: int) -> DigitsFeatureExtractor:
    with torch.random.fork_rng(devices=[]):  # seeded default initialisation, without touching the caller's RNG
        torch.manual_seed(seed)
        model = DigitsFeatureExtractor()
    images, labels = digits_split("train")
    inputs = torch.from_numpy(render_digits(images, DIGIT_GRID)).permute(0, 3, 1, 2)  # (N, 3, 8, 8) uint8
    grids = model.to_grid(inputs)  # (N, 64)
    targets = torch.from_numpy(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    for _ in range(steps):
        _, logits = model.classify_grid(grids)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def held_out_accuracy(model: DigitsFeatureExtractor, image_size: int = DIGIT_GRID) -> float:
    """Classification accuracy on the held-out digits rendered at `image_size`."""
    images, labels = digits_split("held_out")
    inputs = torch.from_numpy(render_digits(images, image_size)).permute(0, 3, 1, 2)
    _, logits = model(inputs)
    return (logits.argmax(-1).numpy() == labels).mean().item()


def build() -> DigitsFeatureExtractor:
    """The entry point for `--feature_extractor pipelines/digits_features.py:build`: the trained classifier."""
    return train_digits_classifier()


def write_reference_images(output_dir: str, image_size: int, split: Literal["train", "held_out"] = "held_out"):
    """Writes a split as PNGs `{index:04d}_{label}.png` (the reference folder for `pipelines/evaluate_generation.py`)."""
    images, labels = digits_split(split)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(render_digits(images, image_size), labels)):
        Image.fromarray(image).save(output / f"{index:04d}_{label}.png")
    return len(labels)


def main():
    args = build_parser().parse_args()
    count = write_reference_images(args.output_dir, args.image_size)
    accuracy = held_out_accuracy(build(), args.image_size)
    print(f"wrote {count} held-out digits to {args.output_dir}; classifier held-out accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()

"""Turn scikit-learn's bundled handwritten digits into a small image dataset for quick TokenSet runs.

    python training/prepare_digits.py --output_dir data/digits [--image_size 16 --resample bilinear]

`sklearn.datasets.load_digits` ships 1,797 8x8 images with 17 gray levels (0..16) of the digits 0-9, no download
needed. Each becomes an RGB image of `image_size` x `image_size` pixels (gray level g -> 255 * g / 16, upscaled with
`resample`); the images are split at random (fixed `seed`) into `num_train` training and the rest test images, and
saved with `datasets.DatasetDict.save_to_disk`: splits `train` / `test`, columns `image` (PIL) and `label`
(`ClassLabel` with names "0".."9"). `training/configs/digits_*.yaml` train on it.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from training.config import arg, check_choices, check_positive, parse_config
from training.output_folders import recover_output_folder, replace_folder


NUM_DIGITS = 1797
MAX_GRAY_LEVEL = 16
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass
class DigitsArguments:
    output_dir: Optional[str] = arg(None, "Folder to save the DatasetDict to.")
    image_size: int = arg(16, "Side of the saved images, in pixels (the digits presets train at 16).")
    resample: Literal["nearest", "bilinear", "bicubic"] = arg("bilinear", "Upscaling filter.")
    num_train: int = arg(1500, "Images in the train split; the remaining 297 form the test split.")
    seed: int = arg(0, "Seed of the train/test split.")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "image_size", "num_train")
        check_positive(self, "seed", allow_zero=True)
        if self.output_dir is None:
            raise ValueError("`output_dir` is required, got None.")
        if self.num_train >= NUM_DIGITS:
            raise ValueError(f"`num_train` must be below {NUM_DIGITS} (the number of digits), got {self.num_train}.")


def digit_to_image(gray_levels: np.ndarray, image_size: int, resample: str) -> Image.Image:
    """An 8x8 array of gray levels 0..16 -> an RGB PIL image of `image_size` x `image_size`."""
    pixels = np.rint(gray_levels * (255.0 / MAX_GRAY_LEVEL)).astype(np.uint8)  # (8, 8)
    image = Image.fromarray(pixels).resize((image_size, image_size), resample=RESAMPLE[resample])
    return image.convert("RGB")


def build_digits_dataset(
    image_size: int = 16, resample: str = "bilinear", num_train: int = 1500, seed: int = 0
) -> DatasetDict:
    """The digits as a `DatasetDict` with `train` (`num_train` images) and `test` splits."""
    from tokenset_diffusers.utils.import_utils import require

    digits = require("sklearn.datasets", "training/prepare_digits.py").load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[str(i) for i in range(10)])})

    def split(indices: np.ndarray) -> Dataset:
        images = [digit_to_image(digits.images[i], image_size, resample) for i in indices]
        return Dataset.from_dict({"image": images, "label": digits.target[indices].tolist()}, features=features)

    return DatasetDict({"train": split(order[:num_train]), "test": split(order[num_train:])})


def main(argv: Optional[list[str]] = None) -> None:
    (args,) = parse_config((DigitsArguments,), argv)
    dataset = build_digits_dataset(args.image_size, args.resample, args.num_train, args.seed)
    output_dir = Path(args.output_dir)
    partial_dir = output_dir.with_name(f".partial-{output_dir.name}")
    recover_output_folder(output_dir)
    shutil.rmtree(partial_dir, ignore_errors=True)  # left by a run killed while saving
    dataset.save_to_disk(str(partial_dir))
    replace_folder(partial_dir, output_dir)  # the previous dataset survives a kill at any point
    sizes = ", ".join(f"{split} {len(rows)} images" for split, rows in dataset.items())
    print(f"wrote {args.output_dir} (the digits at {args.image_size} px: {sizes})")


if __name__ == "__main__":
    main()

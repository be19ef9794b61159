"""Tiny models and data for tests and benchmarks (as `diffusers.utils.testing_utils`): configurations of the real
classes small enough to build and run in a fraction of a second, and small labelled image sets made on the fly.

Nothing here loads a weight or touches the network; nothing here imports the repository's scripts.
"""

from pathlib import Path

import numpy as np
from PIL import Image


# A tokenizer small enough to train a step in a fraction of a second: 16 px, 4x4 patches, M = 8 tokens from C = 32.
TINY_TOKENIZER = {
    "image_size": 16,
    "patch_size": 4,
    "encoder_hidden_size": 32,
    "encoder_num_hidden_layers": 1,
    "encoder_num_attention_heads": 2,
    "decoder_hidden_size": 32,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2,
    "decoder_ffn_hidden_size": 32,
    "codebook_size": 32,
    "num_tokens": 8,
    "code_dim": 8,
    "z_channels": 16,
    "pixel_decoder_hidden_channels": 16,
    "pixel_decoder_channel_mult": [1, 1, 1],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
}


# A VAE (diffusers `AutoencoderKL`) of two levels: 8 px images -> 4 x 4 latents of 4 channels.
TINY_VAE = {
    "image_size": 8,
    "latent_channels": 4,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


# A TokenBridge generator for TINY_VAE's 4 x 4 x 4 latents: widths 16, one block each, 16 quantizer levels.
TINY_TOKENBRIDGE = {
    "buffer_size": 2,
    "encoder_hidden_size": 16,
    "encoder_num_layers": 1,
    "decoder_hidden_size": 16,
    "decoder_num_layers": 1,
    "num_attention_heads": 2,
    "head_hidden_size": 16,
    "head_num_layers": 1,
    "head_num_attention_heads": 2,
    "quantizer_bits": 4,
}


TINY_GENERATOR = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16}


CLASS_NAMES = ["red", "green", "blue"]


def synthetic_image(index: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A noisy 20x24 RGB image whose dominant colour is its class (`index % 3`)."""
    label = index % len(CLASS_NAMES)
    pixels = (rng.random((20, 24, 3)) * 80).astype(np.uint8)
    pixels[..., label] += 150
    return pixels, label


def make_image_folder(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """An `imagefolder` tree `root/<split>/<class>/<i>.png` with `sizes[split]` PNGs per split."""
    rng = np.random.default_rng(seed)
    for split, count in sizes.items():
        for index in range(count):
            pixels, label = synthetic_image(index, rng)
            folder = root / split / CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def make_saved_dataset(path: Path, sizes: dict[str, int], seed: int = 1) -> Path:
    """A `datasets.DatasetDict` (`image`, `label` as a `ClassLabel`) written with `save_to_disk`."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=CLASS_NAMES)})
    splits = {}
    for split, count in sizes.items():
        images, labels = zip(*(synthetic_image(index, rng) for index in range(count)))
        splits[split] = Dataset.from_dict(
            {"image": [Image.fromarray(image) for image in images], "label": list(labels)}, features=features
        )
    DatasetDict(splits).save_to_disk(str(path))
    return path


def save_tiny_tokenizer(path: Path, seed: int = 0) -> Path:
    """A randomly initialised `TokenSetVQVAE` of the `TINY_TOKENIZER` size, saved with `save_pretrained`."""
    import torch

    from ..tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
    from ..tokenset.modeling_tokenset_vqvae import TokenSetVQVAE

    torch.manual_seed(seed)
    TokenSetVQVAE(TokenSetVQVAEConfig(**TINY_TOKENIZER)).save_pretrained(path)
    return path

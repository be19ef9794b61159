"""Cached VAE posteriors for TokenBridge training (written by `training/encode_latents.py`).

Layout of a cache folder:

    latents_info.json                   what was encoded (VAE, scaling factor, latent shape, splits, rows, shards)
    <split>/shard-00000.safetensors     rows [0, shard_size) of the split, in source order
    <split>/shard-00001.safetensors     rows [shard_size, 2 * shard_size) ...

Each shard holds `moments` `(n, 2, 2 * C, h, w)` (the posterior's mean and log-variance, concatenated on the channel
axis as diffusers' `DiagonalGaussianDistribution.parameters`; index 0 of the second axis is the image, 1 its mirror
image) and `labels` `(n,)` int64. Shards are written under a temporary name and renamed when complete, so an
interrupted run leaves only whole shards, and running it again encodes the missing ones.

Training draws, per example and from the step's generator, the image or its mirror (probability 1/2 each) and a
posterior sample `mean + std * noise` ([`sample_latents`]), as the original's cached mode does.
"""

import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file


LATENTS_INFO_NAME = "latents_info.json"
SHARD_PATTERN = "shard-{:05d}.safetensors"


def shard_path(root: str | os.PathLike, split: str, index: int) -> Path:
    return Path(root) / split / SHARD_PATTERN.format(index)


def write_shard(path: Path, moments: torch.Tensor, labels: torch.Tensor) -> None:
    """Writes one shard atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".partial-{path.name}")
    save_file({"moments": moments.contiguous().cpu(), "labels": labels.to(torch.int64).contiguous().cpu()}, temporary)
    os.replace(temporary, path)


def shard_rows(path: Path) -> Optional[int]:
    """The number of rows of a complete shard, or None if there is none at `path`."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_slice("labels").get_shape()[0]


def read_latents_info(root: str | os.PathLike) -> dict:
    path = Path(root) / LATENTS_INFO_NAME
    if not path.is_file():
        raise ValueError(f"{root} is not a `training/encode_latents.py` output folder (no {LATENTS_INFO_NAME}).")
    info = json.loads(path.read_text())
    if not info.get("complete", False):
        raise ValueError(f"{root} is incomplete: run `training/encode_latents.py` again with the same arguments.")
    return info


def write_latents_info(root: str | os.PathLike, info: dict) -> None:
    path = Path(root) / LATENTS_INFO_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".partial-{path.name}")
    temporary.write_text(json.dumps(info, indent=2))
    os.replace(temporary, path)


class LatentExamples(torch.utils.data.Dataset):
    """One split of a latent cache: example i is `{"moments": (2, 2C, h, w) float32, "label": int64}`.

    The shards are memory-mapped (safetensors) and read row by row, so a cache larger than memory works.
    """

    def __init__(self, root: str | os.PathLike, split: str):
        self.info = read_latents_info(root)
        if split not in self.info["num_rows"]:
            raise ValueError(f"Split {split!r} is not in {root}; available splits: {sorted(self.info['num_rows'])}.")
        self.num_rows = self.info["num_rows"][split]
        self.shard_size = self.info["shard_size"]
        self.paths = [shard_path(root, split, index) for index in range(-(-self.num_rows // self.shard_size))]
        self.handles: dict[int, object] = {}

    def __len__(self) -> int:
        return self.num_rows

    def _handle(self, shard: int):
        if shard not in self.handles:  # opened lazily, so that each DataLoader worker opens its own
            self.handles[shard] = safe_open(str(self.paths[shard]), framework="pt")
        return self.handles[shard]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_rows:
            raise IndexError(f"index {index} is out of range for {self.num_rows} rows")
        shard, row = divmod(int(index), self.shard_size)
        handle = self._handle(shard)
        moments = handle.get_slice("moments")[row : row + 1][0].float()  # (2, 2C, h, w)
        label = handle.get_slice("labels")[row : row + 1][0]
        return {"moments": moments, "label": label.to(torch.int64)}

    def __getstate__(self) -> dict:  # file handles do not pickle (DataLoader workers)
        return {**self.__dict__, "handles": {}}


def sample_latents(moments: torch.Tensor, generator: torch.Generator, random_flip: bool = True) -> torch.Tensor:
    """Posterior samples from cached moments, each of the image or of its mirror at random.

    Args:
        moments (`torch.Tensor` of shape `(batch_size, 2, 2 * C, h, w)`): [`LatentExamples`] moments (image, mirror).
        generator (`torch.Generator`): the source of every draw (flip choice, then the noise).
        random_flip (`bool`, defaults to `True`): `False` always takes the image (the flip is drawn all the same, so
            the noise does not depend on this setting).

    Returns:
        `torch.Tensor` of shape `(batch_size, C, h, w)`: `mean + exp(logvar / 2) * noise` (unscaled VAE latents),
        with the log-variance clamped to [-30, 20] as diffusers' `DiagonalGaussianDistribution` does.
    """
    batch_size = moments.shape[0]
    device = moments.device
    flip = (torch.rand(batch_size, generator=generator, device=generator.device) < 0.5).to(device)  # (B,)
    flip = flip & random_flip
    chosen = moments[torch.arange(batch_size, device=device), flip.long()]  # (B, 2C, h, w)
    mean, logvar = chosen.float().chunk(2, dim=1)  # (B, C, h, w) each
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(device)  # (B, C, h, w)
    return mean + std * noise

"""Data for both training stages.

Images come from a Hub dataset (e.g. ImageNet-1k with `image` and `label` columns), a local image folder (ImageNet's
`train/n01440764/*.JPEG` layout, read by `datasets`' `imagefolder` builder) or a folder written by
`datasets.save_to_disk`, optionally streamed. Every image gets the ADM centre crop to the model's resolution and is
scaled to [-1, 1] ([`tokenset_diffusers.preprocess_images`]); the random horizontal flip is applied per batch in the
training step, drawn from that step's generator ([`random_horizontal_flip`]).

Batches of a map-style dataset come from [`DistributedBatchSampler`]: an endless, reproducible sequence of batches per
process, where epoch e is a permutation seeded by (seed, e), so a run resumed at step k continues with exactly the
batches an uninterrupted run would have seen.

An example whose image cannot be read (a corrupt JPEG, a truncated PNG, a text file named `.jpg`) is skipped, not
fatal: images are decoded here rather than by `datasets`, so the failure names the file ([`process_example`]). In a
training batch its place is taken by a readable example drawn with a generator seeded by (seed, the unreadable
index), so batches keep their size, no other example moves, and a resumed run skips exactly what an uninterrupted one
skips; [`collate_examples`] passes the skipped names on to the training loop, which counts them per epoch, logs the
first few, puts them in the run summary and stops past `max_bad_samples` ([`training.training_utils.UnreadableSamples`]).

Token sets written by `training/pretokenize.py` are read by [`load_pretokenized`] / [`TokenSetExamples`].
"""

import json
import logging
import os
import struct
from itertools import count, islice
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node
from PIL import Image

from tokenset_diffusers.image_processing import preprocess_images
from training.config import DataArguments
from training.training_utils import UnreadableSamples, derived_seed


logger = logging.getLogger(__name__)

PRETOKENIZED_INFO_NAME = "tokenset_pretokenized.json"
# What PIL and `datasets` raise for a file that is not a readable image (missing, truncated, not an image, too big).
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)
# How many random draws may replace one unreadable training example before the data is declared unusable.
MAX_REPLACEMENT_DRAWS = 100


# ------------------------------------------------------------------------------------------------------------ loading


def resolve_source(data_args: DataArguments) -> str:
    """`hub`, `imagefolder` or `disk` for `data_args.dataset_name`."""
    if data_args.dataset_name is None:
        raise ValueError("`dataset_name` must be set (a Hub dataset id or a local folder), got None.")
    if data_args.dataset_source != "auto":
        return data_args.dataset_source
    path = Path(data_args.dataset_name)
    if not path.is_dir():
        return "hub"
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        return "disk"
    return "imagefolder"


def load_split(data_args: DataArguments, split: str) -> Dataset | IterableDataset:
    """One split of the image dataset, streamed if `data_args.streaming`, with its columns checked."""
    source = resolve_source(data_args)
    name, streaming = data_args.dataset_name, data_args.streaming
    if source == "disk":
        loaded = load_from_disk(name)
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(f"Split {split!r} is not in {name}; available splits: {sorted(loaded)}.")
            dataset = loaded[split]
        elif split == data_args.train_split:
            dataset = loaded
        else:
            raise ValueError(f"{name} holds a single dataset without splits; it cannot provide split {split!r}.")
        if streaming:
            dataset = dataset.to_iterable_dataset(num_shards=min(len(dataset), 64))
    elif source == "imagefolder":
        dataset = load_dataset(
            "imagefolder", data_dir=name, split=split, streaming=streaming, cache_dir=data_args.cache_dir
        )
    else:
        dataset = load_dataset(
            name, data_args.dataset_config_name, split=split, streaming=streaming, cache_dir=data_args.cache_dir
        )
    columns = dataset.column_names if dataset.column_names is not None else list(dataset.features or {})
    for column in (data_args.image_column, data_args.label_column):
        if column is not None and column not in columns:
            raise ValueError(f"Column {column!r} is not in split {split!r} of {name}; its columns are {columns}.")
    return dataset


def class_names(dataset: Dataset | IterableDataset, label_column: Optional[str]) -> Optional[list[str]]:
    """The names of a `ClassLabel` label column, else None."""
    if label_column is None or dataset.features is None:
        return None
    feature = dataset.features.get(label_column)
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def num_classes_of(dataset: Dataset | IterableDataset, label_column: Optional[str]) -> Optional[int]:
    """The number of classes: from a `ClassLabel` feature, or max label + 1 of a map-style dataset; None if unknown."""
    if label_column is None:
        return 1
    names = class_names(dataset, label_column)
    if names is not None:
        return len(names)
    if isinstance(dataset, Dataset):
        return int(max(dataset[label_column])) + 1
    return None


# --------------------------------------------------------------------------------------------------------- examples


class UnreadableSampleError(Exception):
    """An example whose image could not be read; `record` (`{"name", "error"}`) names the file and the failure."""

    def __init__(self, name: str, error: BaseException):
        self.record = {"name": name, "error": f"{type(error).__name__}: {error}"}
        super().__init__(f"{name}: {self.record['error']}")


def undecoded_images(dataset: Dataset | IterableDataset, image_column: str):
    """`(dataset, feature)`: the dataset with its `datasets.Image` column left undecoded (`{"path", "bytes"}`) and
    the feature that decodes it, so that [`process_example`] can name an unreadable file; `(dataset, None)` when the
    column is not a decoding `Image` feature (e.g. arrays)."""
    feature = (dataset.features or {}).get(image_column)
    if isinstance(feature, ImageFeature) and feature.decode:
        return dataset.cast_column(image_column, ImageFeature(mode=feature.mode, decode=False)), feature
    return dataset, None


def process_example(
    example: dict,
    image_size: int,
    image_column: str,
    label_column: Optional[str],
    image_feature: Optional[ImageFeature] = None,
    name: str = "an example",
) -> dict:
    """One raw example -> `{"pixel_values": (3, S, S) float in [-1, 1], "label": int64}` (ADM centre crop).

    `image_feature` decodes a stored image (see [`undecoded_images`]). An image that cannot be read raises
    [`UnreadableSampleError`] naming its file (or `name` for images stored as bytes).
    """
    image = example[image_column]
    if isinstance(image, dict) and image.get("path"):
        name = image["path"]
    try:
        if image_feature is not None:
            image = image_feature.decode_example(image)
        pixel_values = preprocess_images(image, image_size)[0]  # (3, S, S)
    except UNREADABLE_IMAGE_ERRORS as error:
        raise UnreadableSampleError(name, error) from error
    label = example[label_column] if label_column is not None else 0
    return {"pixel_values": pixel_values, "label": torch.tensor(label, dtype=torch.long)}


def collate_examples(examples: list[dict]) -> dict:
    """Batches the readable examples (`torch.utils.data.default_collate`); `batch["skipped"]` lists the records of
    the unreadable ones (examples that hold only a `"skipped"` list) and of those that readable examples replaced."""
    skipped = [record for example in examples for record in example.get("skipped", ())]
    readable = [
        {key: value for key, value in example.items() if key != "skipped"}
        for example in examples
        if set(example) - {"skipped"}
    ]
    batch = torch.utils.data.default_collate(readable) if readable else {}
    batch["skipped"] = skipped
    return batch


class ImageExamples(torch.utils.data.Dataset):
    """A map-style image dataset as centre-cropped tensors (see [`process_example`]).

    An unreadable image gives `{"skipped": [record]}` instead of an example. With `replacement_seed`, a batch read
    through `__getitems__` (what `DataLoader` does with a batch sampler) replaces it with a readable example drawn by a
    generator seeded by (`replacement_seed`, the unreadable index), and records the skip on the replacement.
    """

    def __init__(
        self,
        dataset: Dataset,
        image_size: int,
        image_column: str,
        label_column: Optional[str],
        replacement_seed: Optional[int] = None,
    ):
        self.dataset, self.image_feature = undecoded_images(dataset, image_column)
        self.image_size = image_size
        self.image_column = image_column
        self.label_column = label_column
        self.replacement_seed = replacement_seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        name = f"row {int(index)} of split {self.dataset.split}"
        try:
            return process_example(
                self.dataset[int(index)],
                self.image_size,
                self.image_column,
                self.label_column,
                self.image_feature,
                name,
            )
        except UnreadableSampleError as error:
            return {"skipped": [error.record]}

    def __getitems__(self, indices: list[int]) -> list[dict]:
        examples = [self[index] for index in indices]
        if self.replacement_seed is None:
            return examples
        for position, example in enumerate(examples):
            if "pixel_values" not in example:
                examples[position] = self.replacement(indices[position], example["skipped"])
        return examples

    def replacement(self, index: int, skipped: list[dict]) -> dict:
        """A readable example in place of the unreadable `index`, drawn by a generator seeded by (seed, index),
        carrying the `skipped` record of `index`."""
        generator = torch.Generator().manual_seed(derived_seed(self.replacement_seed, "replacement", int(index)))
        draws = torch.randint(len(self), (MAX_REPLACEMENT_DRAWS,), generator=generator).tolist()
        for draw in draws:  # an unreadable draw is not counted: only the examples the batch order placed are
            candidate = self[draw]
            if "pixel_values" in candidate:
                return {**candidate, "skipped": skipped}
        raise RuntimeError(
            f"{MAX_REPLACEMENT_DRAWS} random examples drawn to replace the unreadable {skipped[0]['name']} were all "
            "unreadable too; check the dataset (most of its images cannot be read)."
        )


class StreamingImageExamples(torch.utils.data.IterableDataset):
    """A streamed image dataset as an endless sequence of centre-cropped tensors, epoch after epoch.

    `dataset` is this process's part of the stream (`split_dataset_by_node`), already shuffled with a buffer; each
    epoch calls `set_epoch`, which reshuffles it. DataLoader workers share the stream's shards among them.
    """

    def __init__(self, dataset: IterableDataset, image_size: int, image_column: str, label_column: Optional[str]):
        self.dataset, self.image_feature = undecoded_images(dataset, image_column)
        self.image_size = image_size
        self.image_column = image_column
        self.label_column = label_column

    def __iter__(self) -> Iterator[dict]:
        skipped = []  # records of unreadable examples, passed on with the next readable one (`"skipped"`)
        for epoch in count():
            self.dataset.set_epoch(epoch)
            empty = True
            for number, example in enumerate(self.dataset):
                empty = False
                name = f"example {number} of the stream (epoch {epoch})"
                try:
                    processed = process_example(
                        example, self.image_size, self.image_column, self.label_column, self.image_feature, name
                    )
                except UnreadableSampleError as error:
                    skipped.append({**error.record, "epoch": epoch})
                    continue
                yield {**processed, "skipped": skipped} if skipped else processed
                skipped = []
            if empty:  # this worker has no shard of the stream
                return


def random_horizontal_flip(pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flips each image of `pixel_values` (`(batch_size, channels, height, width)`) left-right with probability 1/2."""
    flip = torch.rand(pixel_values.shape[0], generator=generator, device=generator.device) < 0.5  # (B,)
    flip = flip.to(pixel_values.device)[:, None, None, None]  # (B, 1, 1, 1)
    return torch.where(flip, pixel_values.flip(-1), pixel_values)  # (B, C, H, W)


# ---------------------------------------------------------------------------------------------------------- batching


class DistributedBatchSampler(torch.utils.data.Sampler):
    """Endless, reproducible training batches of one process.

    Epoch e visits the examples in the order of a permutation seeded by (seed, e). The permutation is cut into global
    batches of `batch_size * num_processes` examples (an incomplete last one is dropped); process r takes the r-th
    slice of `batch_size` of each. Batch k of the run (counting across epochs) is therefore fixed by (seed, k, number of
    processes), and `start_batch` resumes the sequence at batch k.

    Args:
        num_examples (`int`): size of the dataset.
        batch_size (`int`): examples per batch of this process.
        num_processes (`int`), process_index (`int`): the process group.
        seed (`int`): the run's seed.
        start_batch (`int`, defaults to 0): the index of the first batch to yield.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        num_processes: int,
        process_index: int,
        seed: int,
        start_batch: int = 0,
    ):
        if batch_size < 1 or num_processes < 1 or not 0 <= process_index < num_processes or start_batch < 0:
            raise ValueError(
                f"Invalid batching: batch_size={batch_size}, num_processes={num_processes}, "
                f"process_index={process_index}, start_batch={start_batch}."
            )
        self.batches_per_epoch = num_examples // (batch_size * num_processes)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The dataset has {num_examples} examples, fewer than one global batch of "
                f"{batch_size} x {num_processes} processes; lower `train_batch_size`."
            )
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.start_batch = start_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, "epoch", epoch))
        return torch.randperm(self.num_examples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, first = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            order = self.epoch_order(epoch)
            for batch in range(first, self.batches_per_epoch):
                start = (batch * self.num_processes + self.process_index) * self.batch_size
                yield order[start : start + self.batch_size].tolist()
            epoch, first = epoch + 1, 0


def build_dataloader(
    examples: torch.utils.data.Dataset,
    batch_size: int,
    accelerator,
    seed: int,
    start_batch: int,
    data_args: DataArguments,
    unreadable: Optional[UnreadableSamples] = None,
) -> Iterator[dict]:
    """An endless iterator over this process's training batches, starting at batch `start_batch`.

    Map-style `examples` use [`DistributedBatchSampler`]; streamed ones ([`StreamingImageExamples`]) are batched in
    stream order, and resuming skips `start_batch` batches by reading them (exact, but it re-decodes those images).
    The unreadable examples each batch skipped are added to `unreadable` (with their epoch) as the batch is taken.
    """
    pin_memory = data_args.pin_memory and accelerator.device.type == "cuda"
    workers = data_args.dataloader_num_workers
    if isinstance(examples, torch.utils.data.IterableDataset):
        loader = torch.utils.data.DataLoader(
            examples,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=pin_memory,
            drop_last=True,
            collate_fn=collate_examples,
        )
        return recording_skips(islice(iter(loader), start_batch, None), unreadable)
    sampler = DistributedBatchSampler(
        len(examples), batch_size, accelerator.num_processes, accelerator.process_index, seed, start_batch
    )
    loader = torch.utils.data.DataLoader(
        examples,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        collate_fn=collate_examples,
    )
    return recording_skips(iter(loader), unreadable, start_batch, sampler.batches_per_epoch)


def recording_skips(
    batches: Iterator[dict],
    unreadable: Optional[UnreadableSamples],
    first_batch: int = 0,
    batches_per_epoch: Optional[int] = None,
) -> Iterator[dict]:
    """`batches` without their `"skipped"` records, which go to `unreadable` (epoch = batch number // batches per
    epoch for map-style data; streamed records carry their epoch)."""
    for number, batch in enumerate(batches, start=first_batch):
        skipped = batch.pop("skipped", [])
        if unreadable is not None and skipped:
            unreadable.add(skipped, number // batches_per_epoch if batches_per_epoch else None)
        yield batch


def build_train_examples(
    data_args: DataArguments, image_size: int, accelerator, seed: int
) -> tuple[torch.utils.data.Dataset, Dataset | IterableDataset]:
    """The training images as examples for [`build_dataloader`], and the underlying `datasets` split."""
    dataset = load_split(data_args, data_args.train_split)
    if not data_args.streaming:
        if data_args.max_train_samples is not None:
            dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
        examples = ImageExamples(dataset, image_size, data_args.image_column, data_args.label_column, seed)
        return examples, dataset
    if data_args.max_train_samples is not None:
        dataset = dataset.take(data_args.max_train_samples)
    stream = dataset.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
    stream = split_dataset_by_node(stream, rank=accelerator.process_index, world_size=accelerator.num_processes)
    examples = StreamingImageExamples(stream, image_size, data_args.image_column, data_args.label_column)
    return examples, dataset


def build_eval_dataloader(
    data_args: DataArguments, image_size: int, batch_size: int, accelerator
) -> Optional[torch.utils.data.DataLoader]:
    """This process's share of the first `max_eval_samples` examples of `eval_split` (None without `eval_split`)."""
    if data_args.eval_split is None:
        return None
    dataset = load_split(data_args, data_args.eval_split)
    if data_args.streaming:
        undecoded, _ = undecoded_images(dataset, data_args.image_column)  # an unreadable image fails later, named
        dataset = Dataset.from_list(list(undecoded.take(data_args.max_eval_samples)), features=dataset.features)
    else:
        dataset = dataset.select(range(min(data_args.max_eval_samples, len(dataset))))
    examples = ImageExamples(dataset, image_size, data_args.image_column, data_args.label_column)
    indices = list(range(accelerator.process_index, len(examples), accelerator.num_processes))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(examples, indices),
        batch_size=batch_size,
        num_workers=data_args.dataloader_num_workers,
        collate_fn=collate_examples,
    )


# ------------------------------------------------------------------------------------------------------- token sets


def load_pretokenized(path: str, split: str) -> tuple[Dataset, dict]:
    """A split of a `training/pretokenize.py` output folder and its info (`codebook_size`, `num_tokens`, ...)."""
    info_path = Path(path) / PRETOKENIZED_INFO_NAME
    if not info_path.is_file():
        raise ValueError(f"{path} is not a `training/pretokenize.py` output folder (no {PRETOKENIZED_INFO_NAME}).")
    info = json.loads(info_path.read_text())
    loaded = load_from_disk(path)
    if split not in loaded:
        raise ValueError(f"Split {split!r} is not in {path}; available splits: {sorted(loaded)}.")
    return loaded[split], info


class TokenSetExamples(torch.utils.data.Dataset):
    """Pre-tokenized examples: `{"token_ids": (2, num_tokens) int64 (the image's and its mirror's), "label": int64}`."""

    def __init__(self, dataset: Dataset, label_column: Optional[str] = "label"):
        self.dataset = dataset.with_format("numpy")
        self.label_column = label_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        example = self.dataset[int(index)]
        token_ids = np.stack([example["token_ids"], example["token_ids_flipped"]]).astype(np.int64)  # (2, M)
        label = int(example[self.label_column]) if self.label_column is not None else 0
        return {"token_ids": torch.from_numpy(token_ids), "label": torch.tensor(label, dtype=torch.long)}


def write_pretokenized_info(path: str, info: dict) -> None:
    with open(os.path.join(path, PRETOKENIZED_INFO_NAME), "w") as handle:
        json.dump(info, handle, indent=2)

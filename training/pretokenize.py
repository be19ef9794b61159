"""Tokenize a dataset once with a trained set tokenizer, for generator training.

    accelerate launch training/pretokenize.py --tokenizer_name_or_path outputs/tokenizer/image_tokenizer \
        --dataset_name ILSVRC/imagenet-1k --output_dir data/imagenet256_tokens [--eval_split validation]

Every image of `train_split` (and `eval_split`, if given) gets the ADM centre crop, and its token set and its mirror
image's token set are stored: a `datasets.DatasetDict` saved to `output_dir` with columns `token_ids` and
`token_ids_flipped` (`num_tokens` ids each, uint16 when `codebook_size <= 65536`, so 2 x 256 bytes per image at the
released size) and `label` (the source's `ClassLabel`, or 0 for unlabelled data), plus `tokenset_pretokenized.json`
describing the tokenizer. `train_generator.py --pretokenized_dataset output_dir` trains on it.

Work is sharded across the launched processes: each encodes a contiguous block of rows (a map-style dataset; the
output keeps the source order) or its part of the stream (`--streaming`; rows then come process by process). The
output is written under a temporary name and renamed when complete.

An image that cannot be read (corrupt, truncated, not an image) is left out of the output; the run logs its name,
records the count and the first names per split in `tokenset_pretokenized.json` (`unreadable_samples`), and stops with
an error once a process has met more than `--max_bad_samples`.
"""

# ruff: noqa: E402 (`--help` answers before the heavy imports below: `answer_help`)

from training.arguments import PretokenizeArguments
from training.config import DataArguments, answer_help


if __name__ == "__main__":
    answer_help((DataArguments, PretokenizeArguments))

import logging
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value, concatenate_datasets, load_from_disk
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm

from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from training.config import parse_config
from training.data import (
    ImageExamples,
    StreamingImageExamples,
    UnreadableSampleError,
    class_names,
    collate_examples,
    load_split,
    num_classes_of,
    process_example,
    write_pretokenized_info,
)
from training.output_folders import recover_output_folder, replace_folder
from training.training_utils import create_accelerator, launch_command, read_provenance, setup_logging


logger = logging.getLogger(__name__)


def token_features(codebook_size: int, num_tokens: int, label_feature) -> Features:
    dtype = "uint16" if codebook_size <= 2**16 else "int32"
    ids = Sequence(Value(dtype), length=num_tokens)
    return Features({"token_ids": ids, "token_ids_flipped": ids, "label": label_feature})


def this_process_examples(accelerator: Accelerator, data_args: DataArguments, split: str, image_size: int):
    """This process's share of a split: a contiguous block of rows, or its part of the stream."""
    dataset = load_split(data_args, split)
    if split == data_args.train_split and data_args.max_train_samples is not None:
        if data_args.streaming:
            dataset = dataset.take(data_args.max_train_samples)
        else:
            dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    if data_args.streaming:
        part = split_dataset_by_node(dataset, rank=accelerator.process_index, world_size=accelerator.num_processes)
        return StreamingImageExamples(part, image_size, data_args.image_column, data_args.label_column), dataset
    start = len(dataset) * accelerator.process_index // accelerator.num_processes
    end = len(dataset) * (accelerator.process_index + 1) // accelerator.num_processes
    block = dataset.select(range(start, end))
    return ImageExamples(block, image_size, data_args.image_column, data_args.label_column), dataset


def check_unreadable(skipped: list[dict], max_bad_samples: Optional[int]) -> None:
    """Raises once more than `max_bad_samples` images were unreadable (None: no limit)."""
    if max_bad_samples is not None and len(skipped) > max_bad_samples:
        raise RuntimeError(
            f"{len(skipped)} images could not be read, more than `max_bad_samples` = {max_bad_samples}; the first "
            f"ones: {[record['name'] for record in skipped[:10]]}. Remove or repair them, or raise `--max_bad_samples`."
        )


@torch.no_grad()
def encode_examples(
    accelerator: Accelerator,
    tokenizer: TokenSetVQVAE,
    examples,
    batch_size: int,
    num_workers: int = 0,
    max_bad_samples: Optional[int] = None,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Token sets of every readable example and of its mirror image: `token_ids`, `token_ids_flipped`
    `(N, num_tokens)` and `label` `(N,)` numpy arrays (ids as uint16 when the codebook allows), and the records
    (`{"name", "error"}`) of the unreadable examples left out. A streamed `examples` is read once."""
    if isinstance(examples, StreamingImageExamples):
        examples = OnePass(examples)
    loader = torch.utils.data.DataLoader(
        examples, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_examples
    )
    id_dtype = np.uint16 if tokenizer.config.codebook_size <= 2**16 else np.int32
    num_tokens = tokenizer.config.num_tokens
    token_ids, flipped, labels = [np.zeros((0, num_tokens), id_dtype)], [np.zeros((0, num_tokens), id_dtype)], []
    skipped = []
    for batch in tqdm(loader, disable=not accelerator.is_local_main_process, desc="pretokenize"):
        for record in batch["skipped"]:
            logger.warning("Left out an unreadable image: %s (%s)", record["name"], record["error"])
        skipped += batch["skipped"]
        check_unreadable(skipped, max_bad_samples)
        if "pixel_values" not in batch:  # every image of the batch was unreadable
            continue
        pixel_values = batch["pixel_values"].to(accelerator.device)  # (B, 3, S, S)
        both = torch.cat([pixel_values, pixel_values.flip(-1)])  # (2B, 3, S, S)
        with accelerator.autocast():
            ids = tokenizer.encode(both).token_ids.cpu().numpy().astype(id_dtype)  # (2B, M)
        token_ids.append(ids[: len(pixel_values)])
        flipped.append(ids[len(pixel_values) :])
        labels.append(batch["label"].numpy())
    arrays = {
        "token_ids": np.concatenate(token_ids),
        "token_ids_flipped": np.concatenate(flipped),
        "label": np.concatenate(labels) if labels else np.zeros(0, np.int64),
    }
    return arrays, skipped


class OnePass(torch.utils.data.IterableDataset):
    """One pass over a [`StreamingImageExamples`] (which otherwise repeats epoch after epoch)."""

    def __init__(self, examples: StreamingImageExamples):
        self.examples = examples

    def __iter__(self):
        examples = self.examples
        for number, example in enumerate(examples.dataset):
            try:
                yield process_example(
                    example,
                    examples.image_size,
                    examples.image_column,
                    examples.label_column,
                    examples.image_feature,
                    f"example {number} of the stream",
                )
            except UnreadableSampleError as error:
                yield {"skipped": [error.record]}


def to_dataset(arrays: dict[str, np.ndarray], features: Features) -> Dataset:
    """The arrays of [`encode_examples`] as a `datasets.Dataset` (built in Arrow, no per-row Python objects)."""
    num_tokens = arrays["token_ids"].shape[1]
    columns = {
        name: pa.FixedSizeListArray.from_arrays(pa.array(arrays[name].reshape(-1)), num_tokens)
        for name in ("token_ids", "token_ids_flipped")
    }
    columns["label"] = pa.array(arrays["label"].astype(np.int64))
    return Dataset(pa.table(columns)).cast(features)


def label_feature(dataset, data_args: DataArguments):
    names = class_names(dataset, data_args.label_column)
    return ClassLabel(names=names) if names is not None else Value("int64")


def pretokenize_split(
    accelerator: Accelerator,
    tokenizer: TokenSetVQVAE,
    data_args: DataArguments,
    args: PretokenizeArguments,
    split: str,
    shard_root: Path,
) -> tuple[Optional[Dataset], list[dict]]:
    """Encodes this process's share of `split` into a shard; the main process returns the joined split. Also returns
    the records of the unreadable images every process left out."""
    config = tokenizer.config
    examples, dataset = this_process_examples(accelerator, data_args, split, config.image_size)
    arrays, skipped = encode_examples(
        accelerator,
        tokenizer,
        examples,
        args.batch_size,
        data_args.dataloader_num_workers,
        data_args.max_bad_samples,
    )
    if accelerator.num_processes > 1:
        skipped = [record for part in gather_object([skipped]) for record in part]
    features = token_features(config.codebook_size, config.num_tokens, label_feature(dataset, data_args))
    to_dataset(arrays, features).save_to_disk(str(shard_root / split / f"rank{accelerator.process_index}"))
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None, skipped
    shards = [load_from_disk(str(shard_root / split / f"rank{rank}")) for rank in range(accelerator.num_processes)]
    return concatenate_datasets(shards), skipped


def main(argv: Optional[list[str]] = None) -> None:
    data_args, args = parse_config((DataArguments, PretokenizeArguments), argv)
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not args.overwrite_output_dir:
        raise ValueError(f"`output_dir` {output_dir} exists; pass --overwrite_output_dir to replace it.")
    partial_dir = output_dir.with_name(f".partial-{output_dir.name}")
    shard_root = output_dir.with_name(f".shards-{output_dir.name}")
    accelerator = create_accelerator(args.use_cpu, mixed_precision=args.mixed_precision)
    setup_logging(accelerator)
    if accelerator.is_main_process:
        recover_output_folder(output_dir)  # a run killed while replacing `output_dir` renamed the old one aside
        for path in (partial_dir, shard_root):
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()

    tokenizer = TokenSetVQVAE.from_pretrained(args.tokenizer_name_or_path).to(accelerator.device).eval()
    splits = [data_args.train_split] + ([data_args.eval_split] if data_args.eval_split else [])
    results = {
        split: pretokenize_split(accelerator, tokenizer, data_args, args, split, shard_root) for split in splits
    }
    joined = {split: dataset for split, (dataset, _) in results.items()}
    unreadable = {
        split: {"total": len(skipped), "first_names": [record["name"] for record in skipped[:10]]}
        for split, (_, skipped) in results.items()
    }

    if accelerator.is_main_process:
        DatasetDict(joined).save_to_disk(str(partial_dir))
        train_split = load_split(data_args, data_args.train_split)
        # How the token sets came about: the tokenizer's own commands (when it was trained here), then this one.
        tokenizer_provenance = read_provenance(args.tokenizer_name_or_path)
        commands = [*tokenizer_provenance.get("commands", []), launch_command("training/pretokenize.py", argv)]
        write_pretokenized_info(
            str(partial_dir),
            {
                "tokenizer_name_or_path": args.tokenizer_name_or_path,
                "codebook_size": tokenizer.config.codebook_size,
                "num_tokens": tokenizer.config.num_tokens,
                "image_size": tokenizer.config.image_size,
                "source_dataset": data_args.dataset_name,
                "num_classes": num_classes_of(train_split, data_args.label_column),
                "num_rows": {split: len(dataset) for split, dataset in joined.items()},
                "row_order": "stream order, process by process" if data_args.streaming else "source order",
                "num_processes": accelerator.num_processes,
                "unreadable_samples": unreadable,
                "tokenizer_steps": tokenizer_provenance.get("steps"),
                "commands": commands,
            },
        )
        replace_folder(partial_dir, output_dir)  # the previous output survives a kill at any point
        shutil.rmtree(shard_root)
        logger.info("Wrote %s (unreadable images left out: %s)", output_dir, unreadable)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()

"""Cache the VAE posterior of every image and of its mirror image, for TokenBridge training (the original's cached
mode, `main_cache.py`).

    accelerate launch training/encode_latents.py --vae_name_or_path outputs/digits/vae \
        --dataset_name data/digits --eval_split test --output_dir data/digits_latents

Every image of `train_split` (and `eval_split`, if given) gets the ADM centre crop to the VAE's `sample_size` (or
`--image_size`), and the moments (mean and log-variance) of the VAE's posterior for it and for its horizontal flip are
stored in shards of `shard_size` rows (layout: [`training.latents`]). Shards are spread over the launched processes
(shard k goes to process k mod N) and written atomically; running the same command again after an interruption
encodes only the shards that are missing, and the cache is marked complete (`latents_info.json`) when every shard of
every split exists. `train_tokenbridge.py --latents_dir output_dir` trains on it.
"""

# ruff: noqa: E402 (`--help` answers before the heavy imports below: `answer_help`)

from training.arguments import EncodeLatentsArguments
from training.config import DataArguments, answer_help


if __name__ == "__main__":
    answer_help((DataArguments, EncodeLatentsArguments))

import json
import logging
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from training.config import parse_config
from training.data import ImageExamples, class_names, load_split, num_classes_of
from training.latents import LATENTS_INFO_NAME, shard_path, shard_rows, write_latents_info, write_shard
from training.training_utils import create_accelerator, setup_logging


logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cache_settings(
    data_args: DataArguments, args: EncodeLatentsArguments, vae: AutoencoderKL, image_size: int
) -> dict:
    """What determines the cache's content: a rerun with other settings must not complete it."""
    return {
        "vae_name_or_path": args.vae_name_or_path,
        "vae_subfolder": args.vae_subfolder,
        "scaling_factor": vae.config.scaling_factor,
        "latent_channels": vae.config.latent_channels,
        "image_size": image_size,
        "source_dataset": data_args.dataset_name,
        "image_column": data_args.image_column,
        "label_column": data_args.label_column,
        "max_train_samples": data_args.max_train_samples,
        "shard_size": args.shard_size,
        "storage_dtype": args.storage_dtype,
    }


def check_resumable(output_dir: Path, settings: dict) -> None:
    """Raises if `output_dir` holds a cache made with other settings."""
    info_path = output_dir / LATENTS_INFO_NAME
    if not info_path.is_file():
        return
    previous = json.loads(info_path.read_text())
    changed = {key: (previous.get(key), value) for key, value in settings.items() if previous.get(key) != value}
    if changed:
        raise ValueError(
            f"`output_dir` {output_dir} holds a cache made with other settings {changed} (old, new); "
            "choose another `output_dir` or delete it."
        )


@torch.no_grad()
def encode_shard(
    accelerator: Accelerator, vae: AutoencoderKL, examples: ImageExamples, rows: range, args: EncodeLatentsArguments
) -> tuple[torch.Tensor, torch.Tensor]:
    """Moments `(n, 2, 2C, h, w)` (image, mirror) and labels `(n,)` of `rows` of `examples`."""
    moments, labels = [], []
    for start in range(rows.start, rows.stop, args.batch_size):
        batch = [examples[index] for index in range(start, min(start + args.batch_size, rows.stop))]
        pixel_values = torch.stack([example["pixel_values"] for example in batch]).to(
            accelerator.device
        )  # (B, 3, S, S)
        both = torch.cat([pixel_values, pixel_values.flip(-1)])  # (2B, 3, S, S)
        with accelerator.autocast():
            parameters = vae.encode(both).latent_dist.parameters.float()  # (2B, 2C, h, w)
        image, mirror = parameters.chunk(2)  # (B, 2C, h, w) each
        moments.append(torch.stack([image, mirror], dim=1).to(DTYPES[args.storage_dtype]).cpu())  # (B, 2, 2C, h, w)
        labels.append(torch.stack([example["label"] for example in batch]))
    return torch.cat(moments), torch.cat(labels)


def encode_split(
    accelerator: Accelerator,
    vae: AutoencoderKL,
    data_args: DataArguments,
    args: EncodeLatentsArguments,
    split: str,
    image_size: int,
) -> int:
    """Encodes this process's missing shards of `split`; returns the split's number of rows."""
    dataset = load_split(data_args, split)
    if split == data_args.train_split and data_args.max_train_samples is not None:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    examples = ImageExamples(dataset, image_size, data_args.image_column, data_args.label_column)
    num_shards = -(-len(examples) // args.shard_size)
    mine = range(accelerator.process_index, num_shards, accelerator.num_processes)
    progress = tqdm(mine, disable=not accelerator.is_local_main_process, desc=f"encode {split}")
    for index in progress:
        rows = range(index * args.shard_size, min((index + 1) * args.shard_size, len(examples)))
        path = shard_path(args.output_dir, split, index)
        if shard_rows(path) == len(rows):
            continue  # done by an earlier run
        moments, labels = encode_shard(accelerator, vae, examples, rows, args)
        write_shard(path, moments, labels)
    return len(examples)


def main(argv: Optional[list[str]] = None) -> None:
    data_args, args = parse_config((DataArguments, EncodeLatentsArguments), argv)
    if data_args.streaming:
        raise ValueError("`streaming` is not supported: the cache is sharded by row index; got --streaming.")
    accelerator = create_accelerator(args.use_cpu, mixed_precision=args.mixed_precision)
    setup_logging(accelerator)
    vae = AutoencoderKL.from_pretrained(args.vae_name_or_path, subfolder=args.vae_subfolder)
    vae = vae.to(accelerator.device).eval()
    image_size = args.image_size or vae.config.sample_size
    output_dir = Path(args.output_dir)
    settings = cache_settings(data_args, args, vae, image_size)
    check_resumable(output_dir, settings)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # marks the folder as this cache, incomplete until the end
        write_latents_info(output_dir, {**settings, "complete": False})
    accelerator.wait_for_everyone()

    splits = [data_args.train_split] + ([data_args.eval_split] if data_args.eval_split else [])
    num_rows = {split: encode_split(accelerator, vae, data_args, args, split, image_size) for split in splits}
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        for split, count in num_rows.items():  # every shard must now exist
            for index in range(-(-count // args.shard_size)):
                expected = min(args.shard_size, count - index * args.shard_size)
                if shard_rows(shard_path(output_dir, split, index)) != expected:
                    raise RuntimeError(f"Shard {index} of split {split!r} is missing or incomplete in {output_dir}.")
        train_split = load_split(data_args, data_args.train_split)
        posterior_shape = [
            vae.config.latent_channels,
            *[image_size // 2 ** (len(vae.config.block_out_channels) - 1)] * 2,
        ]
        write_latents_info(
            output_dir,
            {
                **settings,
                "latent_shape": posterior_shape,
                "num_rows": num_rows,
                "num_classes": num_classes_of(train_split, data_args.label_column),
                "class_names": class_names(train_split, data_args.label_column),
                "num_processes": accelerator.num_processes,
                "complete": True,
            },
        )
        logger.info("Wrote %s", output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()

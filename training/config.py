"""Typed configuration of the training scripts: dataclasses parsed by `transformers.HfArgumentParser`, with
`--config preset.yaml` giving the defaults and every other flag overriding them ([`parse_config`]), and the run
settings every training script shares ([`RunArguments`])."""

import argparse
import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml
from transformers import HfArgumentParser


def arg(default: Any = None, help: str = "", **kwargs) -> Any:
    """A dataclass field with a `--help` text; list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def _literal_choices(hint: Any) -> Optional[tuple]:
    """The allowed values of a `Literal[...]` (or `Optional[Literal[...]]`) annotation, else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for member in typing.get_args(hint):
            if typing.get_origin(member) is Literal:
                return typing.get_args(member) + (None,)
    return None


def _without_none(hint: Any) -> tuple[Any, bool]:
    """`(T, True)` for `Optional[T]`, `(hint, False)` otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(hint) if member is not type(None)]
        if len(members) == 1:
            return members[0], len(members) < len(typing.get_args(hint))
    return hint, False


def _checked_value(name: str, hint: Any, value: Any) -> Any:
    """`value` as the annotation `hint` (int, float, bool, str, list of those) wants it, or `ValueError` naming the
    field `name`: numbers must be real and finite (no NaN, no infinity), integers whole (an integral float such as
    `1000.0` becomes `1000`; `2.5` is refused), strings are not numbers."""
    hint, optional = _without_none(hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"`{name}` must not be None, got None.")
    if typing.get_origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"`{name}` must be a list, got {value!r}.")
        (item_hint,) = typing.get_args(hint) or (Any,)
        return [_checked_value(f"{name}[{index}]", item_hint, item) for index, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be true or false, got {value!r}.")
    elif hint is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"`{name}` must be a whole number, got {value!r}.")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint_text = " (YAML reads `1e-4` as a string: write `1.0e-4`)" if isinstance(value, str) else ""
            raise ValueError(f"`{name}` must be a number, got {value!r}{hint_text}.")
        if not math.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
        return float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ValueError(f"`{name}` must be a string, got {value!r}.")
    return value


def check_choices(instance: Any) -> None:
    """Raises `ValueError` naming the field if a field of the dataclass `instance` holds a value its annotation does
    not allow: a `Literal[...]` field another value, a number field a string, NaN or infinity, an `int` field a
    fractional number, a `bool` field anything but true/false. Whole floats in `int` fields become `int`s and `int`s
    in `float` fields become `float`s (in place).

    argparse converts and checks values given on the command line, but not defaults, and YAML values (and values of
    dataclasses built in Python) arrive as defaults.
    """
    hints = typing.get_type_hints(type(instance))
    for dataclass_field in dataclasses.fields(instance):
        hint = hints[dataclass_field.name]
        value = getattr(instance, dataclass_field.name)
        choices = _literal_choices(hint)
        if choices is not None:
            if value not in choices:
                raise ValueError(f"`{dataclass_field.name}` must be one of {list(choices)}, got {value!r}.")
            continue
        checked = _checked_value(dataclass_field.name, hint, value)
        if checked is not value:
            setattr(instance, dataclass_field.name, checked)


def check_positive(instance: Any, *names: str, allow_zero: bool = False) -> None:
    """Raises `ValueError` unless every named field of `instance` is a positive (or non-negative) finite number or
    None."""
    for name in names:
        value = getattr(instance, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"`{name}` must be {bound}, got {value!r}.")


def load_yaml_config(path: str) -> dict:
    """Reads a flat YAML mapping of field names to values."""
    with open(path) as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"`--config` {path} must hold a mapping of field names to values, got {type(values)}.")
    return values


def config_parser(dataclass_types: tuple) -> HfArgumentParser:
    """The command-line parser of a script: one flag per field of `dataclass_types` (the script's argument groups),
    plus `--config`."""
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", type=str, default=None, help="YAML preset giving defaults; other flags win.")
    return parser


def answer_help(dataclass_types: tuple, args: Optional[list] = None) -> None:
    """Prints the `--help` of [`parse_config`]`(dataclass_types)` and exits when the command line (`sys.argv[1:]` by
    default) asks for it (`-h` or `--help`); returns otherwise. A training script calls it before its heavy imports
    (torch, accelerate, diffusers), so that `--help` answers in the time Python and `transformers`' argument parser
    take to start."""
    argv = sys.argv[1:] if args is None else list(args)
    if "-h" in argv or "--help" in argv:
        config_parser(dataclass_types).parse_args(["--help"])


def parse_config(dataclass_types: tuple, args: Optional[list] = None) -> tuple:
    """Parses the typed configuration of a script.

    `--config preset.yaml` (a flat mapping of field names to values) sets the defaults; every other flag on the
    command line overrides them, e.g. `--config training/configs/digits_generator.yaml --max_train_steps 10`.
    Unknown YAML keys and values outside a `Literal` field's choices raise `ValueError`.

    Args:
        dataclass_types (`tuple` of dataclass types): the script's argument groups.
        args (`list[str]`, *optional*): the command line, `sys.argv[1:]` by default.

    Returns:
        One instance per type in `dataclass_types`, in order.
    """
    argv = sys.argv[1:] if args is None else list(args)
    parser = config_parser(dataclass_types)
    yaml_path = config_path(argv)
    if yaml_path is not None:
        values = load_yaml_config(yaml_path)
        known = {f.name for dataclass_type in dataclass_types for f in dataclasses.fields(dataclass_type)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"`--config` {yaml_path} has unknown keys {unknown}; known keys: {sorted(known)}.")
        parser.set_defaults(**values)
    outputs = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    outputs = outputs[: len(dataclass_types)]  # the rest is the namespace holding `--config`
    for output in outputs:  # also for argument groups whose `__post_init__` does not check
        check_choices(output)
    return tuple(outputs)


def config_path(args: Optional[list] = None) -> Optional[str]:
    """The `--config` YAML file named on the command line, if any."""
    argv = sys.argv[1:] if args is None else list(args)
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument("--config", type=str, default=None)
    return pre_parser.parse_known_args(argv)[0].config


def flat_config(*instances: Any) -> dict:
    """The fields of dataclass instances as one flat dict of scalars (what trackers accept)."""
    flat = {}
    for instance in instances:
        for key, value in dataclasses.asdict(instance).items():
            flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


@dataclass
class RunArguments:
    """Settings of a training run that every training script shares, with the same meaning and checks in each; a script
    subclasses it to set its own defaults (and add its own settings)."""

    output_dir: str = arg("outputs/run", "Folder for checkpoints, logs, the run summary and the final model(s).")
    seed: int = arg(0, "Seed of model initialisation, data order and every random draw of training.")
    max_train_steps: int = arg(1000, "Number of optimiser steps.")
    train_batch_size: int = arg(8, "Images per process per micro-batch (global batch = this x processes x accum).")
    gradient_accumulation_steps: int = arg(1, "Micro-batches per optimiser step.")
    learning_rate: float = arg(1e-4, "Peak AdamW learning rate.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine"] = arg(
        "constant", "Learning-rate schedule (diffusers' `get_scheduler`)."
    )
    lr_warmup_steps: int = arg(0, "Linear warm-up steps of the learning rate.")
    weight_decay: float = arg(0.0, "AdamW weight decay.")
    adam_beta1: float = arg(0.9, "AdamW beta1.")
    adam_beta2: float = arg(0.999, "AdamW beta2.")
    adam_epsilon: float = arg(1e-8, "AdamW epsilon.")
    max_grad_norm: Optional[float] = arg(None, "Clip the gradient norm to this value; None disables clipping.")
    ema_decay: float = arg(0.9999, "Decay of the exponential moving average of the weights (0 = copy the model).")
    mixed_precision: Literal["no", "fp16", "bf16"] = arg("no", "Autocast precision of forward passes.")
    use_cpu: bool = arg(False, "Train on CPU even if an accelerator is available.")
    allow_tf32: bool = arg(True, "Allow TF32 matmuls on Ampere+ GPUs.")
    gradient_checkpointing: bool = arg(False, "Recompute activations in backward to save memory.")
    random_flip: bool = arg(
        True,
        "Train on randomly mirrored images (or the stored token sets / latents of the mirror images), each with "
        "probability 1/2; off for data, such as digits, whose mirror images are not examples of their class.",
    )
    checkpointing_steps: int = arg(1000, "Save a resumable checkpoint every this many steps (and at the end).")
    checkpoints_total_limit: Optional[int] = arg(3, "Keep only the newest this many checkpoints; None keeps all.")
    resume_from_checkpoint: Optional[str] = arg(
        None, "`latest` (the newest complete checkpoint in output_dir, or a fresh start if none) or a checkpoint path."
    )
    logging_steps: int = arg(10, "Log averaged metrics to the trackers every this many steps.")
    report_to: Literal["tensorboard", "wandb", "none"] = arg("tensorboard", "Tracker for the logged metrics.")
    tracker_project_name: Optional[str] = arg(None, "Tracker project name (defaults to the script's name).")
    push_to_hub: bool = arg(False, "Upload the final folder to the Hub repository `hub_model_id`.")
    hub_model_id: Optional[str] = arg(None, "Hub repository id for `push_to_hub`, e.g. `user/tokenset-digits`.")
    hub_private_repo: bool = arg(False, "Create the Hub repository as private.")

    def __post_init__(self):
        check_choices(self)
        if not 0 <= self.seed < 2**32:  # what `accelerate.utils.set_seed` (NumPy) accepts
            raise ValueError(f"`seed` must be in [0, 2**32), got {self.seed!r}.")
        check_positive(
            self, "max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps"
        )
        check_positive(self, "logging_steps", "learning_rate", "checkpoints_total_limit", "max_grad_norm")
        check_positive(self, "lr_warmup_steps", "weight_decay", allow_zero=True)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("`push_to_hub` needs `hub_model_id` (e.g. `user/tokenset-digits`), got None.")


@dataclass
class AutoencoderTrainingArguments(RunArguments):
    """The loss and evaluation settings both image-autoencoder trainings share (`train_tokenizer.py`,
    `train_vae.py`), with the same meaning and checks; each script sets its own defaults."""

    reconstruction_loss: Literal["l1", "l2"] = arg("l1", "Pixel reconstruction loss (mean over pixels).")
    reconstruction_weight: float = arg(1.0, "Weight of the reconstruction loss.")
    perceptual_weight: float = arg(0.0, "Weight of the LPIPS loss; > 0 needs the `lpips` package and its weights.")
    discriminator_start_step: Optional[int] = arg(None, "Step at which the GAN loss starts; None: no GAN.")
    discriminator_weight: float = arg(0.5, "Weight of the adaptively scaled GAN loss.")
    discriminator_learning_rate: Optional[float] = arg(None, "Discriminator learning rate (default: learning_rate).")
    discriminator_base_channels: int = arg(64, "Channels of the discriminator's first layer.")
    discriminator_num_layers: int = arg(3, "Stride-2 layers of the PatchGAN discriminator.")
    discriminator_norm_num_groups: int = arg(32, "GroupNorm groups of the discriminator.")
    eval_steps: int = arg(10_000, "Evaluate PSNR / L1 of the EMA model on `eval_split` every this many steps.")
    eval_batch_size: int = arg(32, "Images per process per evaluation batch.")

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        check_positive(self, "eval_steps", "eval_batch_size", "discriminator_learning_rate")
        check_positive(
            self,
            "reconstruction_weight",
            "perceptual_weight",
            "discriminator_weight",
            "discriminator_start_step",
            allow_zero=True,
        )


@dataclass
class DataArguments:
    """Where the images come from and how they are loaded."""

    dataset_name: Optional[str] = arg(
        None,
        "A Hub dataset id (e.g. `ILSVRC/imagenet-1k`), a local image folder (`<split>/<class>/<image>` or "
        "`<class>/<image>`) or a folder written by `datasets.save_to_disk`.",
    )
    dataset_config_name: Optional[str] = arg(None, "Configuration name of a Hub dataset.")
    dataset_source: Literal["auto", "hub", "imagefolder", "disk"] = arg(
        "auto", "How to read `dataset_name`; `auto`: a `save_to_disk` folder, else an image folder, else the Hub."
    )
    train_split: str = arg("train", "Split to train on.")
    eval_split: Optional[str] = arg(None, "Held-out split for evaluation during training (tokenizer stage).")
    image_column: str = arg("image", "Column holding the images.")
    label_column: Optional[str] = arg("label", "Column holding integer class labels; None for unlabelled data.")
    streaming: bool = arg(False, "Stream the dataset instead of reading it whole (for data that does not fit).")
    shuffle_buffer_size: int = arg(10_000, "Shuffle buffer of a streamed dataset.")
    max_train_samples: Optional[int] = arg(None, "Use only the first this many training examples.")
    max_eval_samples: int = arg(1000, "Use only the first this many evaluation examples.")
    cache_dir: Optional[str] = arg(None, "`datasets` cache folder.")
    dataloader_num_workers: int = arg(0, "DataLoader worker processes (image decoding and cropping).")
    pin_memory: bool = arg(True, "Pin DataLoader memory when training on CUDA.")
    max_bad_samples: int = arg(
        100,
        "Unreadable images (corrupt, truncated, not an image) are skipped, counted and named in the log and the run "
        "summary; the run stops with an error once more than this many were met (all processes together). 0 stops "
        "at the first one.",
    )

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "shuffle_buffer_size", "max_train_samples", "max_eval_samples")
        check_positive(self, "dataloader_num_workers", "max_bad_samples", allow_zero=True)

"""Machinery shared by the training scripts.

- typed configuration: dataclasses parsed by `transformers.HfArgumentParser`, with `--config preset.yaml` giving the
  defaults and every other flag overriding them ([`parse_config`]);
- the run settings both stages share ([`RunArguments`]) and the [`Accelerator`] built from them;
- an exponential moving average of the weights ([`ExponentialMovingAverage`]);
- per-step random generators that depend only on (seed, process, step), so a resumed run draws what an uninterrupted
  one would ([`step_generator`]);
- checkpoints written atomically (saved under a hidden name, then renamed) and rotated ([`save_checkpoint`],
  [`resolve_checkpoint`]);
- run summaries and Hub upload.
"""

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration
from transformers import HfArgumentParser


logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_CHECKPOINT_PREFIX = ".partial-checkpoint-"
SUMMARY_PATTERN = "run_summary_rank{}.json"


def arg(default: Any = None, help: str = "", **kwargs) -> Any:
    """A dataclass field with a `--help` text; list defaults are copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


# ----------------------------------------------------------------------------------------------------- configuration


def _literal_choices(hint: Any) -> Optional[tuple]:
    """The allowed values of a `Literal[...]` (or `Optional[Literal[...]]`) annotation, else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for member in typing.get_args(hint):
            if typing.get_origin(member) is Literal:
                return typing.get_args(member) + (None,)
    return None


def check_choices(instance: Any) -> None:
    """Raises `ValueError` if a `Literal[...]` field of the dataclass `instance` holds another value.

    argparse checks choices given on the command line, but not defaults, and YAML values arrive as defaults.
    """
    hints = typing.get_type_hints(type(instance))
    for dataclass_field in dataclasses.fields(instance):
        choices = _literal_choices(hints[dataclass_field.name])
        value = getattr(instance, dataclass_field.name)
        if choices is not None and value not in choices:
            raise ValueError(f"`{dataclass_field.name}` must be one of {list(choices)}, got {value!r}.")


def check_positive(instance: Any, *names: str, allow_zero: bool = False) -> None:
    """Raises `ValueError` unless every named field of `instance` is a positive (or non-negative) number or None."""
    for name in names:
        value = getattr(instance, name)
        if value is None:
            continue
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
    parser = HfArgumentParser(dataclass_types)
    parser.add_argument("--config", type=str, default=None, help="YAML preset giving defaults; other flags win.")
    yaml_path = config_path(argv)
    if yaml_path is not None:
        values = load_yaml_config(yaml_path)
        known = {f.name for dataclass_type in dataclass_types for f in dataclasses.fields(dataclass_type)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"`--config` {yaml_path} has unknown keys {unknown}; known keys: {sorted(known)}.")
        parser.set_defaults(**values)
    outputs = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    return tuple(outputs[: len(dataclass_types)])  # the rest is the namespace holding `--config`


def config_path(args: Optional[list] = None) -> Optional[str]:
    """The `--config` YAML file named on the command line, if any."""
    argv = sys.argv[1:] if args is None else list(args)
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument("--config", type=str, default=None)
    return pre_parser.parse_known_args(argv)[0].config


def launch_command(script: str, args: Optional[list] = None) -> str:
    """The command line that reproduces this run, for model cards."""
    argv = sys.argv[1:] if args is None else list(args)
    return " ".join(["accelerate launch", script, *argv])


PROVENANCE_NAME = "training_provenance.json"


def read_provenance(folder: str | os.PathLike) -> dict:
    """What `folder/training_provenance.json` records (`commands`, `steps`, `dataset`), or `{}` when absent."""
    path = Path(folder) / PROVENANCE_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def write_provenance(folder: str | os.PathLike, **fields: Any) -> None:
    """Writes `folder/training_provenance.json` (atomically): how the weights in `folder` came about."""
    path = Path(folder) / PROVENANCE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(fields, indent=2))
    os.replace(temporary, path)


def record_launch(accelerator: Accelerator, output_dir: str, command: str, resumed: bool) -> list[str]:
    """The command lines that produced the run in `output_dir` so far, this launch last: a fresh run starts the list,
    a resumed one appends to it. Kept in `output_dir/training_provenance.json` (written by the main process)."""
    previous = read_provenance(output_dir).get("commands", []) if resumed else []
    commands = [*previous, command]
    if accelerator.is_main_process:
        write_provenance(output_dir, commands=commands)
    return commands


def flat_config(*instances: Any) -> dict:
    """The fields of dataclass instances as one flat dict of scalars (what trackers accept)."""
    flat = {}
    for instance in instances:
        for key, value in dataclasses.asdict(instance).items():
            flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


@dataclass
class RunArguments:
    """Settings of a training run that both stages share. Each script subclasses it with its own defaults."""

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
        check_positive(
            self, "max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps"
        )
        check_positive(self, "logging_steps", "learning_rate", "checkpoints_total_limit", "max_grad_norm")
        check_positive(self, "lr_warmup_steps", "weight_decay", allow_zero=True)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("`push_to_hub` needs `hub_model_id` (e.g. `user/tokenset-digits`), got None.")


# ------------------------------------------------------------------------------------------------------- accelerator


def create_accelerator(use_cpu: bool = False, **kwargs) -> Accelerator:
    """An `Accelerator` whose process group really spans every launched process.

    On a machine without CUDA, `accelerate launch --multi_gpu --num_processes N` starts N processes but accelerate
    only joins them into a gloo group (`DistributedType.MULTI_CPU`) when asked for CPU; this function asks, and
    raises if the processes still do not form one group, instead of letting N independent copies run.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = use_cpu or (world_size > 1 and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=cpu, **kwargs)
    if accelerator.num_processes != world_size:
        raise RuntimeError(
            f"The launcher started WORLD_SIZE={world_size} processes, but accelerate joined "
            f"{accelerator.num_processes} ({accelerator.distributed_type}); check the `accelerate launch` flags."
        )
    return accelerator


def build_accelerator(args: RunArguments, find_unused_parameters: bool = False) -> Accelerator:
    """The run's `Accelerator` ([`create_accelerator`]): mixed precision, trackers logging under `output_dir/logs`,
    DDP settings.

    Gradient accumulation is done by the scripts themselves (one optimiser step = `gradient_accumulation_steps`
    micro-batches, synchronised on the last), so the accelerator runs with one micro-batch per step.
    """
    accelerator = create_accelerator(
        args.use_cpu,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    setup_logging(accelerator)
    return accelerator


def setup_logging(accelerator: Accelerator) -> None:
    """Warnings from libraries; our own progress messages (INFO) from the main process only."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    for name in ("training", "__main__"):
        logging.getLogger(name).setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    logger.info("%s", accelerator.state)


def build_optimizer(parameters, args: RunArguments, learning_rate: Optional[float] = None) -> torch.optim.AdamW:
    """AdamW with the run's settings (`learning_rate` overrides `args.learning_rate`), fused: one kernel updates
    every parameter (CUDA and CPU)."""
    return torch.optim.AdamW(
        parameters,
        lr=learning_rate or args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        fused=True,
    )


def build_lr_scheduler(optimizer: torch.optim.Optimizer, args: RunArguments):
    """The learning-rate schedule, stepped once per optimiser step.

    Not passed to `accelerator.prepare` (whose wrapper steps it once per process on every step); register it for
    checkpointing instead.
    """
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=args.max_train_steps,
    )


# --------------------------------------------------------------------------------------------------------------- EMA


class ExponentialMovingAverage:
    """Exponential moving average of a model's weights, updated after every optimiser step:
    `shadow = decay * shadow + (1 - decay) * weights`, starting from a copy of the model (as DiT does).

    `shadow` is a full copy of the model (eval mode, no gradients), so it can be evaluated and `save_pretrained`
    directly. `state_dict`/`load_state_dict` make it a checkpointable object for `accelerator.register_for_checkpointing`.

    Args:
        model (`torch.nn.Module`): the (unwrapped) model to follow.
        decay (`float`): in [0, 1); 0 makes the shadow a copy of the latest weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1), got {decay}.")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        shadow_parameters = list(self.shadow.parameters())
        parameters = [
            parameter.detach().to(shadow.dtype) for parameter, shadow in zip(model.parameters(), shadow_parameters)
        ]
        if len(parameters) != len(shadow_parameters):
            raise ValueError("`model` does not have the parameters of the model this EMA was built from.")
        torch._foreach_lerp_(shadow_parameters, parameters, 1.0 - self.decay)
        for shadow_buffer, buffer in zip(self.shadow.buffers(), model.buffers()):
            shadow_buffer.copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.shadow.load_state_dict(state_dict["shadow"])
        self.num_updates = int(state_dict["num_updates"])


class UnreadableSamples:
    """The training examples that could not be read (a corrupt JPEG, a truncated PNG, a text file named `.png`): how
    many per epoch, the first few names, and the limit after which the run stops.

    Each process records what its own batches skipped ([`add`]); [`sync`], called at every logging step, gathers the
    new records of every process, logs them, and raises on every process at once when the run's total passes
    `max_bad_samples`. Its state is part of [`TrainingProgress`], so a resumed run keeps counting from the
    checkpoint.

    Args:
        max_bad_samples (`int`): the most unreadable samples the run tolerates (all processes together); 0 stops at
            the first one.
        num_names (`int`, defaults to 10): how many distinct names to keep for the log and the run summary.
    """

    def __init__(self, max_bad_samples: int = 100, num_names: int = 10):
        if isinstance(max_bad_samples, bool) or not isinstance(max_bad_samples, int) or max_bad_samples < 0:
            raise ValueError(f"`max_bad_samples` must be an integer >= 0, got {max_bad_samples!r}.")
        self.max_bad_samples = max_bad_samples
        self.num_names = num_names
        self.per_epoch: dict[int, int] = {}
        self.first_names: list[str] = []
        self.pending: list[dict] = []

    @property
    def total(self) -> int:
        return sum(self.per_epoch.values())

    def add(self, records: list[dict], epoch: Optional[int] = None) -> None:
        """Keeps this process's records (`{"name", "error"}`, optionally `"epoch"`) until the next [`sync`]."""
        self.pending.extend({**record, "epoch": record.get("epoch", epoch)} for record in records)

    def merge(self, records: list[dict], log: bool = True) -> None:
        for record in records:
            epoch = int(record["epoch"] or 0)
            self.per_epoch[epoch] = self.per_epoch.get(epoch, 0) + 1
            if record["name"] not in self.first_names and len(self.first_names) < self.num_names:
                self.first_names.append(record["name"])
                if log:
                    logger.warning(
                        "Skipped an unreadable sample (epoch %d): %s (%s)", epoch, record["name"], record["error"]
                    )

    def sync(self, accelerator: Optional[Accelerator] = None) -> None:
        """Merges every process's pending records (one `gather_object`), logs the counts, applies the limit."""
        records = self.pending
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            records = [record for part in gather_object([self.pending]) for record in part]
        self.pending = []
        log = accelerator is None or accelerator.is_main_process
        if records:
            self.merge(records, log)
        if records and log:
            logger.warning(
                "Unreadable samples skipped so far, per epoch: %s (total %d, limit `max_bad_samples` = %d).",
                self.per_epoch,
                self.total,
                self.max_bad_samples,
            )
        self.check_limit()

    def check_limit(self) -> None:
        if self.total > self.max_bad_samples:
            raise RuntimeError(
                f"{self.total} training samples could not be read, more than `max_bad_samples` = "
                f"{self.max_bad_samples}; the first ones: {self.first_names}. Remove or repair them, or raise "
                "`--max_bad_samples`."
            )

    def summary(self) -> dict:
        return {"total": self.total, "per_epoch": dict(self.per_epoch), "first_names": list(self.first_names)}

    def state_dict(self) -> dict:
        return {"per_epoch": dict(self.per_epoch), "first_names": list(self.first_names)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.per_epoch = {int(epoch): int(count) for epoch, count in state_dict["per_epoch"].items()}
        self.first_names = [str(name) for name in state_dict["first_names"]]


@dataclass
class TrainingProgress:
    """The number of optimiser steps done and the unreadable samples skipped so far; checkpointed with the run."""

    step: int = 0
    unreadable: UnreadableSamples = field(default_factory=UnreadableSamples)

    def state_dict(self) -> dict:
        return {"step": self.step, "unreadable_samples": self.unreadable.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.step = int(state_dict["step"])
        if "unreadable_samples" in state_dict:  # checkpoints written before the count existed have none
            self.unreadable.load_state_dict(state_dict["unreadable_samples"])


# -------------------------------------------------------------------------------------------------------- randomness


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on `parts` (stable across runs, processes and Python versions)."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_generator(seed: int, process_index: int, step: int, micro_step: int, device: torch.device) -> torch.Generator:
    """The `torch.Generator` for one micro-batch: seeded by (seed, process, step, micro-batch) only.

    Every random draw of a training step (flips, timesteps, noise, label dropout, token shuffling) comes from it, so
    resuming at step k draws exactly what an uninterrupted run draws at step k, with no generator state to save.
    """
    return torch.Generator(device=device).manual_seed(derived_seed(seed, process_index, step, micro_step))


# ----------------------------------------------------------------------------------------------------------- metrics


def reduce_metrics(accelerator: Accelerator, metrics: dict[str, torch.Tensor | float]) -> dict[str, torch.Tensor]:
    """Averages scalar metrics over the processes (one all-reduce); every process must pass the same keys.

    Returns 0-d tensors on the device: nothing waits for the device here (see [`PendingMetrics`])."""
    names = sorted(metrics)
    values = torch.stack(
        [torch.as_tensor(metrics[name], dtype=torch.float32).to(accelerator.device).reshape(()) for name in names]
    )
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(names, values.unbind(0)))


class PendingMetrics:
    """Per-step metrics kept on the device until the next logging step, then read back to the host at once: one
    host-device synchronisation per logging interval instead of one per step."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict[str, torch.Tensor | float]) -> None:
        self.pending.append((step, dict(metrics)))

    def flush(self) -> list[dict[str, float]]:
        """`[{"step": step, **metrics}, ...]` as Python floats, for every step added since the last flush."""
        tensors = [
            value.detach().float().reshape(1)
            for _, metrics in self.pending
            for value in metrics.values()
            if torch.is_tensor(value)
        ]
        values = iter(torch.cat(tensors).tolist() if tensors else [])  # the one synchronisation
        entries = []
        for step, metrics in self.pending:
            entry = {name: next(values) if torch.is_tensor(value) else value for name, value in metrics.items()}
            entries.append({"step": step, **entry})
        self.pending = []
        return entries


class MetricWindow:
    """Running means of logged metrics between two logging steps."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if name == "step":
                continue
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1

    def pop_means(self, prefix: str = "train/") -> dict[str, float]:
        means = {f"{prefix}{name}": total / self.counts[name] for name, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


# ------------------------------------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: str) -> list[tuple[int, Path]]:
    """Complete checkpoints `output_dir/checkpoint-{step}` as `(step, path)`, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def remove_partial_checkpoints(accelerator: Accelerator, output_dir: str) -> None:
    """Deletes checkpoints a killed run left half-written (they were never renamed to `checkpoint-*`)."""
    if accelerator.is_main_process and Path(output_dir).is_dir():
        for path in Path(output_dir).glob(f"{PARTIAL_CHECKPOINT_PREFIX}*"):
            logger.info("Removing the partial checkpoint %s", path)
            shutil.rmtree(path)
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, total_limit: Optional[int]) -> Path:
    """`accelerator.save_state` (model, optimiser, registered objects, every process's RNG state) into
    `output_dir/checkpoint-{step}`, atomically: the state is written under a hidden name and renamed only once every
    process has finished, so a killed run never leaves a `checkpoint-*` folder that resume would pick up half-written.
    Then only the newest `total_limit` checkpoints are kept.

    Assumes `output_dir` is on a file system that every process sees (as multi-node `save_state` does).
    """
    final_path = Path(output_dir) / f"checkpoint-{step}"
    partial_path = Path(output_dir) / f"{PARTIAL_CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        if partial_path.exists():
            shutil.rmtree(partial_path)
        partial_path.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial_path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final_path.exists():
            shutil.rmtree(final_path)
        os.replace(partial_path, final_path)
        if total_limit is not None:
            for _, old_path in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old_path)
        logger.info("Saved %s", final_path)
    accelerator.wait_for_everyone()
    return final_path


def resolve_checkpoint(resume_from_checkpoint: Optional[str], output_dir: str) -> Optional[Path]:
    """The checkpoint to resume from: None, `latest` (None if `output_dir` has no complete checkpoint yet) or a path
    to a `checkpoint-{step}` folder (which must exist)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir() or not CHECKPOINT_PATTERN.match(path.name):
        raise ValueError(
            f"`resume_from_checkpoint` must be 'latest' or an existing `checkpoint-<step>` folder, got "
            f"{resume_from_checkpoint!r}."
        )
    return path


def resume_if_requested(accelerator: Accelerator, args: RunArguments, progress: TrainingProgress) -> None:
    """Removes partial checkpoints, then loads the checkpoint `args.resume_from_checkpoint` points at, if any
    (model, optimiser, every registered object including `progress`, RNG states)."""
    remove_partial_checkpoints(accelerator, args.output_dir)
    path = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if path is None:
        if args.resume_from_checkpoint is not None:
            logger.info("No checkpoint in %s yet; starting a new run.", args.output_dir)
        return
    accelerator.load_state(str(path))
    logger.info("Resumed from %s at step %d", path, progress.step)


# ----------------------------------------------------------------------------------------------------------- outputs


def parameters_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of `module.state_dict()` (names and bytes), to compare weights across processes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_run_summary(accelerator: Accelerator, output_dir: str, summary: dict) -> None:
    """Every process writes `output_dir/run_summary_rank{i}.json`: what the launched run actually was (process count,
    distributed type, steps, losses, weight checksums), for tests and for the record."""
    summary = {
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        **summary,
    }
    path = Path(output_dir) / SUMMARY_PATTERN.format(accelerator.process_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(summary, indent=2))
    os.replace(temporary, path)


def push_folder_to_hub(folder: str, repo_id: str, private: bool, commit_message: str) -> str:
    """Uploads `folder` (without checkpoints, logs and run summaries) to the Hub model repository `repo_id`."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(repo_id, exist_ok=True, private=private).repo_id
    upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message,
        ignore_patterns=["checkpoint-*", f"{PARTIAL_CHECKPOINT_PREFIX}*", "logs/*", "run_summary_rank*.json"],
    )
    return repo_id

"""The training loop every training script runs ([`run_training`]) and what it is made of.

A script describes only what is its own (its arguments, model, loss, data and evaluation, and what it saves) in a
[`TrainingHooks`] subclass; [`run_training`] does the rest the same way for all of them: the accelerator, seeds, the
checkpoint to resume from, the EMA's place in checkpoints, the training batches with unreadable samples skipped and
counted against `--max_bad_samples`, logging, the evaluation cadence, checkpoints, the final save (written to a
temporary folder, then moved into place), the model card, the record of the command lines, the Hub upload and the
run summary.

Building blocks:

- the [`Accelerator`] of a run ([`build_accelerator`]), AdamW and the learning-rate schedule;
- an exponential moving average of the weights ([`ExponentialMovingAverage`]);
- the unreadable samples met so far and the step count, checkpointed with the run ([`TrainingProgress`]);
- per-step random generators that depend only on (seed, process, step), so a resumed run draws what an uninterrupted
  one would ([`step_generator`]);
- metrics averaged over processes and read back once per logging interval ([`PendingMetrics`]);
- provenance (the command lines that made a run) and run summaries.
"""

import copy
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from tokenset_diffusers.model_cards import write_model_card
from training.checkpointing import parameters_checksum, resume_if_requested, save_checkpoint
from training.config import RunArguments, config_path, flat_config, parse_config
from training.output_folders import replace_output_folder, stage_final_outputs


logger = logging.getLogger(__name__)

SUMMARY_PATTERN = "run_summary_rank{}.json"
PROVENANCE_NAME = "training_provenance.json"
# What a Hub upload of an output folder leaves out.
HUB_IGNORE_PATTERNS = ["checkpoint-*", ".partial-*", "logs/*", "run_summary_rank*.json"]


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


@dataclass
class TrainingState:
    """What every training step touches: the (prepared) model, its optimiser and learning-rate schedule, the EMA of
    its weights and the progress, the last three registered for checkpointing. Scripts subclass it to add their own
    parts (a discriminator, a noise scheduler, ...)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: ExponentialMovingAverage
    progress: TrainingProgress


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


# -------------------------------------------------------------------------------------------- provenance and summary


def launch_command(script: str, args: Optional[list] = None) -> str:
    """The command line that reproduces this run, for model cards."""
    argv = sys.argv[1:] if args is None else list(args)
    return " ".join(["accelerate launch", script, *argv])


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


# ----------------------------------------------------------------------------------------------------- training loop


@dataclass
class FinalOutput:
    """What a script's [`TrainingHooks.save_final`] wrote, for the model card, the provenance and the Hub upload.

    Args:
        subfolder (`str`): the folder of `output_dir` that holds the final model (`""`: `output_dir` itself, a
            pipeline folder); it gets the provenance and the card, and is what `--push_to_hub` uploads.
        card_kind (`str`, *optional*): the kind of [`tokenset_diffusers.model_cards.write_model_card`]; None: no card.
        card_fields (`dict`): the card's fields besides `repo_id`, `preset` and `training_commands`.
        dataset (`str`, *optional*): the source images, recorded in the provenance.
        upstream_commands (`list[str]`): command lines that made the inputs (e.g. the tokenizer's training), listed
            on the card before this run's.
    """

    subfolder: str
    card_kind: Optional[str] = None
    card_fields: dict = field(default_factory=dict)
    dataset: Optional[str] = None
    upstream_commands: list = field(default_factory=list)


class TrainingHooks:
    """What one training script owns: its arguments, model, loss, data, evaluation and final outputs. [`run_training`]
    calls these methods; everything else (accelerator, resume, batches, logging, checkpoints, the final save, card,
    provenance, Hub upload, run summary) is the loop's and means the same in every script.

    Subclasses set the class attributes and implement [`build`], [`train_examples`], [`train_step`] and
    [`save_final`]; [`eval_dataloader`] / [`evaluate`], [`logging_metrics`] and [`summary`] are optional.

    Class attributes:
        script (`str`): the script's path from the repository root, e.g. `training/train_vae.py` (command lines,
            default tracker project name).
        argument_types (`tuple`): `(DataArguments, <model arguments>, <a RunArguments subclass>)`.
        hub_commit_message (`str`): the commit message of `--push_to_hub`.

    After [`build`], `self.state` is a [`TrainingState`] (a subclass of it).
    """

    script: str = ""
    argument_types: tuple = ()
    hub_commit_message: str = "Training output"

    def __init__(self, data_args, model_args, args: RunArguments):
        self.data_args, self.model_args, self.args = data_args, model_args, args
        self.state: Optional[TrainingState] = None

    @property
    def tracker_name(self) -> str:
        return Path(self.script).stem

    def find_unused_parameters(self) -> bool:
        """Whether DDP must allow parameters without gradients (e.g. a frozen part)."""
        return False

    def build(self, accelerator: Accelerator) -> TrainingState:
        """Builds (after the seed is set) the model, optimiser, schedule, EMA and progress, prepared and registered for
        checkpointing, and whatever else the steps need; sets and returns `self.state`."""
        raise NotImplementedError

    def train_examples(self, accelerator: Accelerator) -> torch.utils.data.Dataset:
        """The training examples for [`training.data.build_dataloader`] (called after resuming)."""
        raise NotImplementedError

    def eval_dataloader(self, accelerator: Accelerator) -> Optional[torch.utils.data.DataLoader]:
        """This process's held-out batches, evaluated every `args.eval_steps` steps and at the last (a script that
        evaluates has `eval_steps` among its arguments, e.g. [`training.config.AutoencoderTrainingArguments`]); None:
        no evaluation."""
        return None

    def train_step(self, accelerator: Accelerator, micro_batches: list[dict]) -> dict[str, torch.Tensor | float]:
        """One optimiser step on `gradient_accumulation_steps` micro-batches; returns the metrics averaged over
        micro-batches and processes (0-d device tensors or floats), `loss` among them."""
        raise NotImplementedError

    def evaluate(self, accelerator: Accelerator, eval_dataloader) -> dict[str, float]:
        """`{"eval/<name>": value}` over the held-out data of every process."""
        raise NotImplementedError

    def evaluation_message(self, metrics: dict[str, float]) -> str:
        """How an evaluation is printed on the console."""
        return ", ".join(f"{name.removeprefix('eval/')} {value:.4f}" for name, value in metrics.items())

    def logging_metrics(self, accelerator: Accelerator) -> dict[str, float]:
        """Extra metrics logged with the averaged training metrics at every logging step (every process calls it)."""
        return {}

    def check_metrics(self, step: int, means: dict[str, float]) -> None:
        """Looks at the averaged training metrics of each logging step (`{"train/<name>": value}`, main process only)
        and warns about a run that is going wrong (e.g. a collapsed codebook) while it trains."""

    def save_final(self, accelerator: Accelerator, folder: Path, history: list[dict]) -> FinalOutput:
        """Saves the final model(s) into `folder`, laid out as `output_dir` will hold them (the loop moves them there
        afterwards). Called on the main process only."""
        raise NotImplementedError

    def trained_model(self, accelerator: Accelerator) -> torch.nn.Module:
        """The trained (unwrapped) model whose checksum goes into the run summary."""
        return accelerator.unwrap_model(self.state.model)

    def summary(self, accelerator: Accelerator, history: list[dict]) -> dict:
        """Script-specific fields of the run summary."""
        return {}


def run_training(hooks_class: type[TrainingHooks], argv: Optional[list[str]] = None) -> TrainingHooks:
    """Parses the arguments of `hooks_class.argument_types`, trains, saves and writes the run summary.

    Order: accelerator, `set_seed(args.seed)`, [`TrainingHooks.build`], resume (`--resume_from_checkpoint`), the
    command line recorded in `output_dir/training_provenance.json`, the batches from step `start_step` on (unreadable
    samples skipped, counted, and the run stopped past `--max_bad_samples`), the loop ([`train_loop`]), the final save
    ([`save_final_outputs`]) and `output_dir/run_summary_rank{i}.json`.

    Args:
        hooks_class (`type[TrainingHooks]`): the script's hooks.
        argv (`list[str]`, *optional*): the command line, `sys.argv[1:]` by default.

    Returns:
        The script's hooks, holding the trained state.
    """
    from training.data import build_dataloader  # training.data imports this module

    data_args, model_args, args = parse_config(hooks_class.argument_types, argv)
    hooks = hooks_class(data_args, model_args, args)
    accelerator = build_accelerator(args, find_unused_parameters=hooks.find_unused_parameters())
    set_seed(args.seed)  # the same initial weights on every process
    state = hooks.build(accelerator)
    state.progress.unreadable.max_bad_samples = data_args.max_bad_samples
    resume_if_requested(accelerator, args, state.progress)
    start_step = state.progress.step
    command = launch_command(hooks.script, argv)
    commands = record_launch(accelerator, args.output_dir, command, resumed=start_step > 0)
    batches = build_dataloader(
        hooks.train_examples(accelerator),
        args.train_batch_size,
        accelerator,
        args.seed,
        start_step * args.gradient_accumulation_steps,
        data_args,
        state.progress.unreadable,
    )
    eval_dataloader = hooks.eval_dataloader(accelerator)
    config = flat_config(data_args, model_args, args)
    accelerator.init_trackers(args.tracker_project_name or hooks.tracker_name, config=config)

    history = train_loop(accelerator, hooks, batches, eval_dataloader)
    target = save_final_outputs(accelerator, hooks, history, commands, argv)
    write_run_summary(
        accelerator,
        args.output_dir,
        {
            "start_step": start_step,
            "final_step": state.progress.step,
            "history": history,
            "unreadable_samples": state.progress.unreadable.summary(),
            "model_checksum": parameters_checksum(hooks.trained_model(accelerator)),
            "ema_checksum": parameters_checksum(state.ema.shadow),
            "all_finite": all(math.isfinite(value) for entry in history for value in entry.values()),
            **hooks.summary(accelerator, history),
        },
    )
    accelerator.end_training()
    if target is not None:  # the main process: what the run wrote, and where, as its last line
        print(f"wrote {target} (checkpoints, logs and run_summary_rank*.json in {args.output_dir})")
    return hooks


def train_loop(
    accelerator: Accelerator, hooks: TrainingHooks, batches: Iterator[dict], eval_dataloader=None
) -> list[dict]:
    """Runs optimiser steps until `max_train_steps` and returns the per-step metrics (`[{"step", **metrics}]`).

    After step s: an evaluation if `eval_dataloader` is set and s is a multiple of `eval_steps` or the last step
    (printed, logged, and added to that step's metrics); the averaged metrics are logged every `logging_steps` and at
    the last step; the unreadable samples are counted (and the limit applied) at those steps and at every checkpoint;
    a checkpoint every `checkpointing_steps` and at the last step. Metrics stay on the device until they are logged.
    """
    args, progress = hooks.args, hooks.state.progress
    history, window, pending = [], MetricWindow(), PendingMetrics()
    last_eval = None  # the latest evaluation, shown on the progress bar beside the loss
    progress_bar = tqdm(
        initial=progress.step, total=args.max_train_steps, disable=not accelerator.is_local_main_process
    )
    while progress.step < args.max_train_steps:
        micro_batches = [next(batches) for _ in range(args.gradient_accumulation_steps)]
        metrics = hooks.train_step(accelerator, micro_batches)
        progress.step += 1
        step = progress.step
        progress_bar.update(1)
        last = step == args.max_train_steps
        logging_step = step % args.logging_steps == 0 or last
        evaluating = eval_dataloader is not None and (step % args.eval_steps == 0 or last)
        if evaluating:
            last_eval = hooks.evaluate(accelerator, eval_dataloader)
            metrics.update(last_eval)
            if accelerator.is_local_main_process:  # on the console too, not only in the tracker
                tqdm.write(f"step {step}: evaluation of the EMA model: {hooks.evaluation_message(last_eval)}")
        pending.add(step, metrics)  # read back at the next logging step: no per-step host synchronisation
        if logging_step or evaluating:
            entries = pending.flush()
            for entry in entries:
                window.add({name: value for name, value in entry.items() if not name.startswith("eval/")})
            history.extend(entries)
            postfix = {"loss": f"{entries[-1]['loss']:.4f}"}
            if last_eval is not None:
                postfix.update({name.removeprefix("eval/"): f"{value:.4g}" for name, value in last_eval.items()})
            progress_bar.set_postfix(postfix)
        if logging_step:
            means = window.pop_means()
            if accelerator.is_main_process:
                hooks.check_metrics(step, means)
            accelerator.log({**means, **hooks.logging_metrics(accelerator)}, step=step)
        if evaluating:
            accelerator.log(last_eval, step=step)
        if logging_step or step % args.checkpointing_steps == 0:
            progress.unreadable.sync(accelerator)  # counts, logs, and stops past `max_bad_samples`
        if step % args.checkpointing_steps == 0 or last:
            save_checkpoint(accelerator, args.output_dir, step, args.checkpoints_total_limit)
    progress_bar.close()
    return history


def save_final_outputs(
    accelerator: Accelerator,
    hooks: TrainingHooks,
    history: list[dict],
    commands: list[str],
    argv: Optional[list[str]] = None,
) -> Optional[Path]:
    """The main process writes the final outputs ([`TrainingHooks.save_final`]), their model card and provenance
    (every command line of the run, the step count, the dataset) into a staging folder, then puts them into
    `output_dir` atomically ([`training.output_folders.replace_output_folder`]): a run killed at any instant leaves
    the previous outputs or the new ones whole, never a mixture or a half-written model. Then it uploads the final
    folder if `--push_to_hub`. Returns the final folder on the main process, else None."""
    args = hooks.args
    accelerator.wait_for_everyone()
    target = None
    if accelerator.is_main_process:
        output_dir = Path(args.output_dir)
        temporary = stage_final_outputs(output_dir)
        output = hooks.save_final(accelerator, temporary, history)
        target = output_dir / output.subfolder
        if output.card_kind is not None:
            write_model_card(
                temporary / output.subfolder,
                output.card_kind,
                repo_id=args.hub_model_id or str(target),
                preset=config_path(argv) or "command line",
                training_commands=[*output.upstream_commands, *commands],
                **output.card_fields,
            )
        write_provenance(
            temporary / output.subfolder, commands=commands, steps=hooks.state.progress.step, dataset=output.dataset
        )
        replace_output_folder(temporary, output_dir)
        if args.push_to_hub:
            from tokenset_diffusers.utils.hub import push_folder_to_hub

            push_folder_to_hub(
                target,
                args.hub_model_id,
                commit_message=hooks.hub_commit_message,
                private=args.hub_private_repo,
                ignore_patterns=HUB_IGNORE_PATTERNS,
            )
    accelerator.wait_for_everyone()
    return target

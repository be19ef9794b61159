"""Resumable checkpoints of a training run: `accelerator.save_state` written atomically (under a hidden name, renamed
once every process is done) and rotated ([`save_checkpoint`]), found again ([`resolve_checkpoint`]) and loaded
([`resume_if_requested`])."""

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator

from training.config import RunArguments


logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_CHECKPOINT_PREFIX = ".partial-checkpoint-"


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


def resume_if_requested(accelerator: Accelerator, args: RunArguments, progress: Any) -> None:
    """Removes partial checkpoints, then loads the checkpoint `args.resume_from_checkpoint` points at, if any
    (model, optimiser, every registered object including `progress`, a [`training.training_utils.TrainingProgress`],
    RNG states)."""
    remove_partial_checkpoints(accelerator, args.output_dir)
    path = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if path is None:
        if args.resume_from_checkpoint is not None:
            logger.info("No checkpoint in %s yet; starting a new run.", args.output_dir)
        return
    accelerator.load_state(str(path))
    logger.info("Resumed from %s at step %d", path, progress.step)


def parameters_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of `module.state_dict()` (names and bytes), to compare weights across processes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

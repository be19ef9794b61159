"""Resumable checkpoints of a training run, in a format that holds only tensors and plain data, so that resuming from
a checkpoint folder someone hands you never runs code from it.

`accelerator.save_state` / `load_state` unpickle the registered objects (`custom_checkpoint_*.pkl`, always with
`weights_only=False`) and the random states: a crafted file runs code on resume. A checkpoint here is instead
([`save_checkpoint`], [`load_checkpoint`]):

- `model.safetensors`, `model_1.safetensors`, ...: the weights of every model given to `accelerator.prepare`
  (safetensors);
- `optimizer.pt`, `optimizer_1.pt`, ...: every prepared optimiser's state; `custom_0.pt`, `custom_1.pt`, ...: the
  state of every object registered with `accelerator.register_for_checkpointing` (EMA, progress, LR schedules);
  `scaler.pt`: the fp16 gradient scaler, if any; `random_states_{process}.pt`: each process's RNG states (Python,
  NumPy, torch, CUDA). All written with `torch.save` and read with `torch.load(weights_only=True)`, which only
  rebuilds tensors and plain containers;
- `checkpoint.json`: the format, the step and the list of the files above (JSON).

Loading refuses a folder holding any other file, and names the file at fault when one cannot be read. Checkpoints are
written atomically (under a hidden name, renamed once every process is done) and rotated ([`save_checkpoint`]), found
again ([`resolve_checkpoint`]) and loaded ([`resume_if_requested`]).
"""

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_model, save_model

from training.config import RunArguments
from training.output_folders import recover_output_folder


logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
PARTIAL_CHECKPOINT_PREFIX = ".partial-checkpoint-"
CHECKPOINT_FORMAT = "tokenset-training-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
MANIFEST_NAME = "checkpoint.json"


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


# ------------------------------------------------------------------------------------------- what a checkpoint holds


def _indexed_name(stem: str, index: int, suffix: str) -> str:
    """`model.safetensors`, `model_1.safetensors`, ... (the first without an index, as accelerate names them)."""
    return f"{stem}{'' if index == 0 else f'_{index}'}{suffix}"


def checkpoint_objects(accelerator: Accelerator) -> dict[str, Any]:
    """The objects a checkpoint of `accelerator`'s run holds, by file name: every prepared model
    (`model*.safetensors`) and optimiser (`optimizer*.pt`), every object registered for checkpointing
    (`custom_{i}.pt`), and the fp16 gradient scaler (`scaler.pt`), if any: what `accelerator.save_state` saves.

    Raises `ValueError` for what this format does not save (prepared dataloaders or LR schedulers: the scripts build
    their own batches and register their schedules instead)."""
    if accelerator._dataloaders or accelerator._schedulers:
        raise ValueError(
            "Checkpoints save models, optimisers and objects registered with `register_for_checkpointing`; got "
            f"{len(accelerator._dataloaders)} prepared dataloader(s) and {len(accelerator._schedulers)} prepared "
            "scheduler(s): register the schedule instead and build the batches with `training.data.build_dataloader`."
        )
    objects = {}
    for index, model in enumerate(accelerator._models):
        objects[_indexed_name("model", index, ".safetensors")] = model
    for index, optimizer in enumerate(accelerator._optimizers):
        objects[_indexed_name("optimizer", index, ".pt")] = optimizer
    for index, custom in enumerate(accelerator._custom_objects):
        objects[f"custom_{index}.pt"] = custom
    if accelerator.scaler is not None:
        objects["scaler.pt"] = accelerator.scaler
    return objects


def random_states() -> dict:
    """This process's RNG states (Python, NumPy, torch, CUDA) as tensors and plain data."""
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict) -> None:
    """Restores what [`random_states`] returned."""
    python = states["python"]
    random.setstate((int(python["version"]), tuple(int(value) for value in python["state"].tolist()), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state(
        (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_checkpoint(accelerator: Accelerator, folder: Path, step: int) -> None:
    """Writes the run's state into the existing `folder` (see the module's docstring); every process writes its own
    RNG states, the main process everything else."""
    objects = checkpoint_objects(accelerator)
    if accelerator.is_main_process:
        for name, obj in objects.items():
            if name.endswith(".safetensors"):
                save_model(accelerator.unwrap_model(obj), str(folder / name))
            else:
                torch.save(obj.state_dict(), folder / name)
    torch.save(random_states(), folder / f"random_states_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_FORMAT_VERSION,
            "step": step,
            "num_processes": accelerator.num_processes,
            "files": sorted(objects),
        }
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(
            f"{folder} is not a checkpoint of this project's training scripts: it has no {MANIFEST_NAME} (checkpoints "
            "written by `accelerator.save_state` are not read, since loading them unpickles arbitrary objects)."
        )
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"Could not read the checkpoint manifest {path}: {error}") from error
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != CHECKPOINT_FORMAT
        or manifest.get("version") != CHECKPOINT_FORMAT_VERSION
        or not isinstance(manifest.get("files"), list)
        or not all(isinstance(name, str) for name in manifest["files"])
        or isinstance(manifest.get("num_processes"), bool)
        or not isinstance(manifest.get("num_processes"), int)
        or not 1 <= manifest["num_processes"] <= 2**20
    ):
        raise ValueError(f"{path} is not a version-{CHECKPOINT_FORMAT_VERSION} {CHECKPOINT_FORMAT} manifest.")
    return manifest


def _load_tensors(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, the error naming `path`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Could not load the checkpoint file {path} as tensors and plain data (`weights_only=True`): {error}"
        ) from error


def load_checkpoint(accelerator: Accelerator, folder: Path) -> None:
    """Loads a checkpoint [`write_checkpoint`] wrote into the objects of `accelerator`'s run, reading only
    safetensors, JSON and `torch.load(weights_only=True)`.

    Raises `ValueError` naming the file at fault if the folder holds a file this format does not write (e.g. an
    accelerate `custom_checkpoint_0.pkl`), lacks one, or one cannot be read; nothing in the folder is unpickled
    beyond tensors and plain containers.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    objects = checkpoint_objects(accelerator)
    if sorted(manifest["files"]) != sorted(objects):
        raise ValueError(
            f"{folder / MANIFEST_NAME} lists {sorted(manifest['files'])}, but this run checkpoints {sorted(objects)}: "
            "was the checkpoint written by another script or configuration?"
        )
    random_names = [f"random_states_{index}.pt" for index in range(manifest["num_processes"])]
    expected = {MANIFEST_NAME, *objects, *random_names}
    for path in sorted(folder.iterdir()):
        if path.name not in expected:
            raise ValueError(f"Unexpected file {path} in the checkpoint {folder}; refusing to resume from it.")
    for name in sorted(expected):
        if not (folder / name).is_file():
            raise ValueError(f"The checkpoint {folder} lacks the file {folder / name}.")
    for name, obj in objects.items():
        path = folder / name
        if name.endswith(".safetensors"):
            try:
                load_model(accelerator.unwrap_model(obj), str(path), strict=True, device=str(accelerator.device))
            except Exception as error:
                raise ValueError(f"Could not load the model weights {path}: {error}") from error
        else:
            state = _load_tensors(path)
            try:
                obj.load_state_dict(state)
            except Exception as error:
                raise ValueError(
                    f"The state in {path} does not fit the run's {type(obj).__name__}: {error}"
                ) from error
    random_path = folder / f"random_states_{accelerator.process_index}.pt"
    if random_path.name in random_names:  # a run resumed on another number of processes keeps its seeded states
        states = _load_tensors(random_path)
        try:
            set_random_states(states)
        except Exception as error:
            raise ValueError(f"Could not restore the random states in {random_path}: {error}") from error


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, total_limit: Optional[int]) -> Path:
    """The run's state ([`write_checkpoint`]: models, optimisers, registered objects, every process's RNG states) in
    `output_dir/checkpoint-{step}`, atomically: the state is written under a hidden name and renamed only once every
    process has finished, so a killed run never leaves a `checkpoint-*` folder that resume would pick up half-written.
    Then only the newest `total_limit` checkpoints are kept.

    Assumes `output_dir` is on a file system that every process sees.
    """
    final_path = Path(output_dir) / f"checkpoint-{step}"
    partial_path = Path(output_dir) / f"{PARTIAL_CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        if partial_path.exists():
            shutil.rmtree(partial_path)
        partial_path.mkdir(parents=True)
    accelerator.wait_for_everyone()
    write_checkpoint(accelerator, partial_path, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final_path.exists():  # renamed aside first: a folder cannot be renamed onto a non-empty one
            stale_path = Path(output_dir) / f"{PARTIAL_CHECKPOINT_PREFIX}{step}-stale"
            os.replace(final_path, stale_path)
            os.replace(partial_path, final_path)
            shutil.rmtree(stale_path)
        else:
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
    """Puts back an output folder whose final save was interrupted, removes partial checkpoints, then loads the checkpoint `args.resume_from_checkpoint` points at, if any
    ([`load_checkpoint`]: model, optimiser, every registered object including `progress`, a
    [`training.training_utils.TrainingProgress`], RNG states)."""
    if accelerator.is_main_process and Path(args.output_dir).is_dir():
        recover_output_folder(args.output_dir)  # a final save killed midway may have moved checkpoints aside
    remove_partial_checkpoints(accelerator, args.output_dir)
    path = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if path is None:
        if args.resume_from_checkpoint is not None:
            logger.info("No checkpoint in %s yet; starting a new run.", args.output_dir)
        return
    load_checkpoint(accelerator, path)
    logger.info("Resumed from %s at step %d", path, progress.step)


def parameters_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of `module.state_dict()` (names and bytes), to compare weights across processes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

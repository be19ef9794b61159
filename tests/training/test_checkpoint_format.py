"""Checkpoints hold only tensors and plain data (`training/checkpointing.py`): a save -> load round trip restores
every part of a run exactly, and resuming from a folder in which any file was replaced by a crafted pickle runs no
code and names the file."""

import os
import pickle
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from training.checkpointing import MANIFEST_NAME, load_checkpoint, resume_if_requested, save_checkpoint
from training.config import RunArguments
from training.training_utils import ExponentialMovingAverage, TrainingProgress, build_lr_scheduler, build_optimizer


class Payload:
    """Unpickling this creates the file `path`: what a crafted checkpoint would run instead."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def build_run(output_dir, seed: int = 0):
    """A tiny run as the training scripts set it up: a prepared model and optimiser, the LR schedule, EMA and
    progress registered for checkpointing."""
    args = RunArguments(output_dir=str(output_dir), learning_rate=1e-2, lr_scheduler="cosine", report_to="none")
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    optimizer = build_optimizer(model.parameters(), args)
    lr_scheduler = build_lr_scheduler(optimizer, args)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = ExponentialMovingAverage(accelerator.unwrap_model(model), decay=0.5)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(lr_scheduler, ema, progress)
    return accelerator, args, model, optimizer, lr_scheduler, ema, progress


def train(run, steps: int) -> None:
    accelerator, _, model, optimizer, lr_scheduler, ema, progress = run
    for _ in range(steps):
        loss = model(torch.randn(3, 4)).square().mean()
        accelerator.backward(loss)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema.update(accelerator.unwrap_model(model))
        progress.step += 1
        progress.unreadable.merge([{"name": f"bad-{progress.step}.png", "error": "x", "epoch": 0}], log=False)


def snapshot(run) -> dict:
    _, _, model, optimizer, lr_scheduler, ema, progress = run
    return {
        "model": {name: tensor.clone() for name, tensor in model.state_dict().items()},
        "ema": {name: tensor.clone() for name, tensor in ema.shadow.state_dict().items()},
        "exp_avg": [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()],
        "lr": lr_scheduler.get_last_lr(),
        "progress": progress.state_dict(),
        "num_updates": ema.num_updates,
    }


@pytest.fixture
def checkpoint(tmp_path):
    run = build_run(tmp_path / "run")
    train(run, 3)
    return run, save_checkpoint(run[0], str(tmp_path / "run"), 3, None)


def test_round_trip_restores_the_run_and_the_random_states(checkpoint, tmp_path):
    run, path = checkpoint
    expected = snapshot(run)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # the states saved with the checkpoint
    save_checkpoint(run[0], str(tmp_path / "run"), 3, None)  # overwriting a checkpoint of the same step
    draws = (random.random(), np.random.rand(), torch.rand(2))
    fresh = build_run(tmp_path / "run", seed=5)
    train(fresh, 1)  # different weights, optimiser state, schedule and progress
    load_checkpoint(fresh[0], path)
    restored = snapshot(fresh)
    for key in ("model", "ema"):
        assert restored[key].keys() == expected[key].keys()
        assert all(torch.equal(restored[key][name], expected[key][name]) for name in expected[key])
    assert all(torch.equal(a, b) for a, b in zip(restored["exp_avg"], expected["exp_avg"]))
    assert restored["lr"] == expected["lr"] and restored["num_updates"] == expected["num_updates"] == 3
    assert restored["progress"] == expected["progress"] and restored["progress"]["step"] == 3
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(2), draws[2])
    # Training on from the checkpoint on the same inputs gives what training on from the original gives.
    for each in (run, fresh):
        torch.manual_seed(7)
        train(each, 2)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(run)["model"].values(), snapshot(fresh)["model"].values()))
    assert sorted(os.listdir(path)) == [
        MANIFEST_NAME,
        "custom_0.pt",
        "custom_1.pt",
        "custom_2.pt",
        "model.safetensors",
        "optimizer.pt",
        "random_states_0.pt",
    ]


def crafted_files(payload_path) -> dict[str, bytes]:
    """A raw pickle and a `torch.save` zip archive that both create `payload_path` when unpickled."""
    archive = payload_path.parent / "archive.pt"
    torch.save({"state": Payload(str(payload_path))}, archive)
    crafted = {"pickle": pickle.dumps(Payload(str(payload_path))), "torch.save": archive.read_bytes()}
    archive.unlink()
    return crafted


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_crafted_pickle_in_any_file_of_a_checkpoint_runs_nothing(checkpoint, tmp_path, kind):
    run, path = checkpoint
    payload_path = tmp_path / "payload-ran"
    crafted = crafted_files(payload_path)[kind]
    assert not payload_path.exists()
    pickle.loads(crafted) if kind == "pickle" else None  # the payload is real: plain unpickling runs it
    if kind == "pickle":
        assert payload_path.exists()
        payload_path.unlink()
    names = sorted(os.listdir(path)) + ["custom_checkpoint_0.pkl", "optimizer.bin"]  # + what accelerate writes
    assert {name.rsplit(".", 1)[-1] for name in names} == {"json", "pt", "safetensors", "pkl", "bin"}
    for name in names:
        target = path / name
        original = target.read_bytes() if target.exists() else None
        target.write_bytes(crafted)
        args = RunArguments(output_dir=str(path.parent), resume_from_checkpoint=str(path), report_to="none")
        with pytest.raises(ValueError, match=str(target)):
            resume_if_requested(run[0], args, run[-1])
        assert not payload_path.exists(), f"loading a crafted {name} ran its payload"
        if original is None:
            target.unlink()
        else:
            target.write_bytes(original)
    resume_if_requested(run[0], args, run[-1])  # the restored folder loads again


def test_checkpoints_of_another_format_or_with_missing_files_are_refused(checkpoint):
    run, path = checkpoint
    (path / "custom_2.pt").unlink()
    with pytest.raises(ValueError, match="custom_2.pt"):
        load_checkpoint(run[0], path)
    (path / MANIFEST_NAME).unlink()
    with pytest.raises(ValueError, match=MANIFEST_NAME):
        load_checkpoint(run[0], path)

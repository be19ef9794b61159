"""The final outputs of a training run replace the previous ones atomically (`training/output_folders.py`): a run
killed at any instant of its final save leaves a folder that loads as the previous pipeline or the new one, whole,
with the same outputs, and the next run puts every checkpoint back."""

import os
import shutil

import pytest
import torch

import training.output_folders as output_folders
from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from tokenset_diffusers.tokenset.pipeline_tokenset import TokenSetPipeline
from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler
from tokenset_diffusers.tokenset.transformer_tokenset import TokenSetTransformer1DModel
from tokenset_diffusers.utils.testing_utils import TINY_GENERATOR, TINY_TOKENIZER
from training.output_folders import (
    move_into_place,
    recover_output_folder,
    replace_output_folder,
    stage_final_outputs,
    staging_folder,
)


class Killed(BaseException):
    """Stands for the process being killed: not an `Exception`, so nothing on the way catches it."""


def tiny_pipeline(seed: int) -> TokenSetPipeline:
    torch.manual_seed(seed)
    tokenizer = TokenSetVQVAE(TokenSetVQVAEConfig(**TINY_TOKENIZER)).eval()
    transformer = TokenSetTransformer1DModel(
        codebook_size=TINY_TOKENIZER["codebook_size"],
        num_tokens=TINY_TOKENIZER["num_tokens"],
        num_classes=3,
        **TINY_GENERATOR,
    ).eval()
    scheduler = FSDDScheduler(codebook_size=TINY_TOKENIZER["codebook_size"], num_tokens=TINY_TOKENIZER["num_tokens"])
    return TokenSetPipeline(tokenizer, transformer, scheduler)


def sample(folder) -> torch.Tensor:
    pipe = TokenSetPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe([0, 2], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Two different saved pipelines and their outputs."""
    root = tmp_path_factory.mktemp("pipelines")
    saved = {}
    for name, seed in [("previous", 0), ("new", 1)]:
        tiny_pipeline(seed).save_pretrained(root / name)
        (root / name / "README.md").write_text(f"{name} card")
        saved[name] = (root / name, sample(root / name))
    assert not torch.equal(saved["previous"][1], saved["new"][1])
    return saved


def make_run_folder(path, previous):
    """An output folder after a first run: its pipeline, two checkpoints and logs."""
    shutil.copytree(previous, path)
    for step in (2, 4):
        (path / f"checkpoint-{step}").mkdir()
        (path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"step %d" % step)
    (path / "logs").mkdir()
    (path / "logs" / "events").write_text("log")
    return path


def run_state(path) -> dict:
    return {
        str(file.relative_to(path)): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.relative_to(path).parts[0] in ("checkpoint-2", "checkpoint-4", "logs")
    }


def final_save(output_dir, new):
    """What `training.training_utils.save_final_outputs` does around a script's `save_final`."""
    staging = stage_final_outputs(output_dir)
    for entry in sorted(new.iterdir()):
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name)
        else:
            shutil.copy2(entry, staging / entry.name)
    replace_output_folder(staging, output_dir)


def test_final_save_replaces_the_pipeline_and_keeps_the_run(pipelines, tmp_path):
    (previous, _), (new, new_images) = pipelines["previous"], pipelines["new"]
    output_dir = make_run_folder(tmp_path / "run", previous)
    state = run_state(output_dir)
    final_save(output_dir, new)
    torch.testing.assert_close(sample(output_dir), new_images, rtol=0, atol=0)
    assert (output_dir / "README.md").read_text() == "new card"
    assert run_state(output_dir) == state
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # no staging folder left beside it
    assert not list(output_dir.glob(".partial*"))


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_a_kill_at_any_point_of_the_final_save_leaves_a_whole_pipeline(pipelines, tmp_path, monkeypatch, exchange):
    """The final save is killed before its 1st, 2nd, ... file-system operation (every rename, unlink, removal and
    copy), until one run gets through. After each kill the folder loads, as it is, as the previous pipeline or the
    new one with that pipeline's outputs; then the next run's recovery puts every checkpoint and log back."""
    (previous, previous_images), (new, new_images) = pipelines["previous"], pipelines["new"]
    if not exchange:  # a file system without RENAME_EXCHANGE: two renames, and recovery of the gap between them
        monkeypatch.setattr(output_folders, "exchange_folders", lambda first, second: False)
    operations = {
        (os, "replace"): os.replace,
        (os, "unlink"): os.unlink,
        (shutil, "rmtree"): shutil.rmtree,
        (shutil, "copy2"): shutil.copy2,
        (shutil, "copytree"): shutil.copytree,
    }
    if exchange:
        operations[(output_folders, "exchange_folders")] = output_folders.exchange_folders
    seen = {"previous": 0, "new": 0}
    counter = {"calls": 0, "kill_at": 0}

    def counting(original):
        def wrapper(*args, **kwargs):
            if counter["calls"] == counter["kill_at"]:
                raise Killed
            counter["calls"] += 1
            return original(*args, **kwargs)

        return wrapper

    kill_at = 0
    while True:
        output_dir = tmp_path / f"run-{kill_at}"
        make_run_folder(output_dir, previous)
        state = run_state(output_dir)
        counter.update(calls=0, kill_at=kill_at)
        with monkeypatch.context() as patch:
            for (module, name), original in operations.items():
                patch.setattr(module, name, counting(original))
            try:
                final_save(output_dir, new)
                finished = True
            except Killed:
                finished = False
        if (output_dir / "model_index.json").exists():  # as the folder is right after the kill, before recovery
            images = sample(output_dir)
            which = "new" if torch.equal(images, new_images) else "previous"
            torch.testing.assert_close(images, previous_images if which == "previous" else new_images, rtol=0, atol=0)
            assert (output_dir / "README.md").read_text() == f"{which} card"
            seen[which] += 1
        else:  # only in the gap between the two renames; recovery gives the previous pipeline back
            assert not exchange and not output_dir.exists()
        recover_output_folder(output_dir)
        images = sample(output_dir)
        assert torch.equal(images, previous_images) or torch.equal(images, new_images)
        assert run_state(output_dir) == state  # every checkpoint and log is back
        assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []
        assert not list(output_dir.glob(".partial*"))
        if finished:
            break
        kill_at += 1
    assert kill_at > 10 and seen["previous"] > 5 and seen["new"] >= 1


def test_a_kill_while_the_new_pipeline_is_written_keeps_the_previous_one(pipelines, tmp_path):
    (previous, previous_images), (new, _) = pipelines["previous"], pipelines["new"]
    output_dir = make_run_folder(tmp_path / "run", previous)
    staging = stage_final_outputs(output_dir)
    assert staging == staging_folder(output_dir) and staging.parent == tmp_path
    (staging / "transformer").mkdir()
    (staging / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"trunc")  # killed here
    torch.testing.assert_close(sample(output_dir), previous_images, rtol=0, atol=0)
    final_save(output_dir, new)  # the next run's final save starts over
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_final_outputs_replace_the_previous_ones_whole(tmp_path):
    """The fallback `move_into_place` (an output folder that cannot be exchanged) puts every entry of the temporary
    folder into the output folder: a folder replaces the old one whole (no stale file survives in it), files are
    replaced, other entries are kept, nothing hidden is left."""
    output_dir = tmp_path / "run"
    (output_dir / "transformer").mkdir(parents=True)
    (output_dir / "transformer" / "old_weights.safetensors").write_text("old")
    (output_dir / "model_index.json").write_text("old")
    (output_dir / "checkpoint-4").mkdir()
    new = output_dir / output_folders.PARTIAL_FINAL_NAME
    (new / "transformer").mkdir(parents=True)
    (new / "transformer" / "weights.safetensors").write_text("new")
    (new / "model_index.json").write_text("new")
    (new / "README.md").write_text("card")
    move_into_place(new, output_dir)
    assert sorted(path.name for path in output_dir.iterdir()) == [
        "README.md",
        "checkpoint-4",
        "model_index.json",
        "transformer",
    ]
    assert [path.name for path in (output_dir / "transformer").iterdir()] == ["weights.safetensors"]
    assert (output_dir / "model_index.json").read_text() == "new"


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_replace_folder_keeps_the_old_folder_or_the_new_one_whole(tmp_path, monkeypatch, exchange):
    """`replace_folder` (the datasets of `prepare_digits.py` and `pretokenize.py`) killed before each of its renames
    and removals leaves the old folder or the new one, whole; recovery gives back the old one when neither is there."""
    if not exchange:
        monkeypatch.setattr(output_folders, "exchange_folders", lambda first, second: False)
    contents = {"old": {"a.arrow": b"old a", "b.json": b"old b"}, "new": {"a.arrow": b"new a", "c.json": b"new c"}}

    def read(folder):
        return {path.name: path.read_bytes() for path in folder.iterdir()}

    counter = {"calls": 0, "kill_at": 0}

    def killing(original):
        def wrapper(*args, **kwargs):
            if counter["calls"] == counter["kill_at"]:
                raise Killed
            counter["calls"] += 1
            return original(*args, **kwargs)

        return wrapper

    for kill_at in range(10):
        root = tmp_path / str(kill_at)
        for name in ("old", "new"):
            (root / name).mkdir(parents=True)
            for file, data in contents[name].items():
                (root / name / file).write_bytes(data)
        target, source = root / "dataset", root / "new"
        (root / "old").rename(target)
        counter.update(calls=0, kill_at=kill_at)
        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", killing(os.replace))
            patch.setattr(shutil, "rmtree", killing(shutil.rmtree))
            try:
                output_folders.replace_folder(source, target)
                finished = True
            except Killed:
                finished = False
        if target.exists():
            assert read(target) in (contents["old"], contents["new"])
        else:
            assert not exchange
        recover_output_folder(target)
        assert read(target) in (contents["old"], contents["new"])
        assert sorted(path.name for path in root.iterdir() if path.name.startswith(".")) == []
        if finished:
            assert read(target) == contents["new"]
            break
    assert finished


def test_an_output_folder_that_cannot_be_exchanged_gets_the_entries_one_by_one(pipelines, tmp_path, monkeypatch):
    """With the working directory inside `output_dir` (an exchange would move it away), the final outputs are staged
    inside `output_dir` and moved in entry by entry; the run's checkpoints stay."""
    (previous, _), (new, new_images) = pipelines["previous"], pipelines["new"]
    output_dir = make_run_folder(tmp_path / "run", previous)
    state = run_state(output_dir)
    monkeypatch.chdir(output_dir / "logs")
    assert not output_folders.can_exchange(output_dir)
    assert stage_final_outputs(output_dir).parent == output_dir.resolve()
    final_save(output_dir, new)
    torch.testing.assert_close(sample(output_dir), new_images, rtol=0, atol=0)
    assert run_state(output_dir) == state
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"] and not list(output_dir.glob(".partial*"))

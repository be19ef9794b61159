"""One unreadable image never stops a run: a folder holding a corrupt JPEG, a truncated PNG and a text file named
`.png` (plus a `.txt` file, which the image folder does not list) trains (the tokenizer and the VAE, through the one
training loop), resumes and pre-tokenizes, with the bad files skipped, counted per epoch, named, and the run stopped
past `max_bad_samples`."""

import json
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.scripts import copy_checkpoint, read_summaries, write_yaml

from tokenset_diffusers.utils.testing_utils import TINY_TOKENIZER, TINY_VAE, make_image_folder, save_tiny_tokenizer
from training.data import (
    DataArguments,
    DistributedBatchSampler,
    ImageExamples,
    StreamingImageExamples,
    build_dataloader,
    build_train_examples,
    load_split,
)
from training.pretokenize import main as pretokenize
from training.train_tokenizer import main as train_tokenizer
from training.train_vae import main as train_vae
from training.training_utils import TrainingProgress, UnreadableSamples


NUM_GOOD = 7
BAD_NAMES = {"corrupt.jpg", "truncated.png", "text.png"}
CPU = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0)


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    root = make_image_folder(tmp_path_factory.mktemp("bad") / "images", {"train": NUM_GOOD})
    folder = root / "train" / "red"
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" * 20)
    png = (folder / "0.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "text.png").write_text("a text file, not an image\n")
    (folder / "notes.txt").write_text("not listed by the image folder\n")
    return root


def data_args(folder: Path, **kwargs) -> DataArguments:
    return DataArguments(dataset_name=str(folder), cache_dir=str(folder.parent / "cache"), **kwargs)


def bad_name(record: dict) -> str:
    return Path(record["name"]).name


def test_unreadable_examples_are_named_not_raised(bad_folder):
    examples = ImageExamples(load_split(data_args(bad_folder), "train"), 16, "image", "label")
    assert len(examples) == NUM_GOOD + len(BAD_NAMES)
    results = [examples[index] for index in range(len(examples))]
    skipped = [result["skipped"][0] for result in results if "pixel_values" not in result]
    assert {bad_name(record) for record in skipped} == BAD_NAMES
    assert all(Path(record["name"]).is_absolute() for record in skipped)  # the full path, to find the file
    errors = {bad_name(record): record["error"] for record in skipped}
    assert "cannot identify image file" in errors["text.png"] and "truncated" in errors["truncated.png"].lower()
    assert errors["corrupt.jpg"].startswith("OSError")


def test_batches_keep_their_size_order_and_resume(bad_folder):
    examples, _ = build_train_examples(data_args(bad_folder), 16, CPU, seed=3)
    readable = {index: examples[index] for index in range(len(examples)) if "pixel_values" in examples[index]}
    unreadable = UnreadableSamples(max_bad_samples=100)
    batches = list(islice(build_dataloader(examples, 2, CPU, 3, 0, data_args(bad_folder), unreadable), 10))
    sampler = DistributedBatchSampler(len(examples), 2, 1, 0, seed=3)
    replaced = 0
    for batch, indices in zip(batches, islice(iter(sampler), 10)):
        assert batch["pixel_values"].shape == (2, 3, 16, 16) and "skipped" not in batch
        for position, index in enumerate(indices):
            if index in readable:  # every readable example is where the unshuffled order puts it
                torch.testing.assert_close(batch["pixel_values"][position], readable[index]["pixel_values"])
            else:
                replaced += 1
    unreadable.sync()
    assert replaced == unreadable.total > 0
    assert {Path(name).name for name in unreadable.first_names} <= BAD_NAMES
    assert max(unreadable.per_epoch) < 10 // sampler.batches_per_epoch + 1  # counted per epoch of the batches

    # resumed at batch 4: the same batches and the same skipped samples as the uninterrupted run
    resumed_counts = UnreadableSamples()
    resumed = list(islice(build_dataloader(examples, 2, CPU, 3, 4, data_args(bad_folder), resumed_counts), 6))
    for batch, expected in zip(resumed, batches[4:]):
        torch.testing.assert_close(batch, expected)
    resumed_counts.sync()
    later = UnreadableSamples()
    for batch_number, indices in enumerate(islice(iter(sampler), 10)):
        if batch_number >= 4:
            later.add([examples[index]["skipped"][0] for index in indices if index not in readable], 0)
    later.sync()
    assert resumed_counts.total == later.total


def test_streamed_examples_skip_unreadable_images(bad_folder):
    stream = load_split(data_args(bad_folder, streaming=True), "train")
    examples = list(islice(iter(StreamingImageExamples(stream, 16, "image", "label")), 2 * NUM_GOOD))
    assert all("pixel_values" in example for example in examples)  # two epochs of the readable images only
    skipped = [record for example in examples for record in example.get("skipped", [])]
    assert sorted(bad_name(record) for record in skipped if record["epoch"] == 0) == sorted(BAD_NAMES)


def test_limit_stops_the_run_with_the_names():
    counts = UnreadableSamples(max_bad_samples=2)
    counts.add([{"name": f"/data/bad{index}.jpg", "error": "OSError: broken"} for index in range(3)], epoch=0)
    with pytest.raises(RuntimeError, match=r"3 training samples could not be read, more than `max_bad_samples` = 2"):
        counts.sync()
    assert counts.first_names == ["/data/bad0.jpg", "/data/bad1.jpg", "/data/bad2.jpg"]
    with pytest.raises(ValueError, match=r"`max_bad_samples` must be an integer >= 0, got -1"):
        UnreadableSamples(max_bad_samples=-1)
    with pytest.raises(ValueError, match="`max_bad_samples` must be >= 0, got -3"):
        DataArguments(dataset_name="x", max_bad_samples=-3)


def test_counts_are_checkpointed_with_the_progress():
    progress = TrainingProgress(step=5)
    progress.unreadable.add([{"name": "/data/a.png", "error": "OSError"}], epoch=1)
    progress.unreadable.sync()
    restored = TrainingProgress()
    restored.load_state_dict(progress.state_dict())
    assert restored.step == 5 and restored.unreadable.summary() == progress.unreadable.summary()
    restored.load_state_dict({"step": 2})  # a checkpoint written before the counts existed
    assert restored.step == 2


def test_training_and_resume_skip_the_same_files(bad_folder, tmp_path):
    preset = write_yaml(
        tmp_path / "tiny.yaml",
        {**TINY_TOKENIZER, "train_batch_size": 4, "report_to": "none", "discriminator_start_step": None},
    )
    common = ["--config", str(preset), "--dataset_name", str(bad_folder), "--cache_dir", str(tmp_path / "cache")]
    common += ["--use_cpu", "--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "1"]
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    train_tokenizer([*common, "--output_dir", str(full_dir)])
    copy_checkpoint(full_dir, 2, resumed_dir)
    train_tokenizer([*common, "--output_dir", str(resumed_dir), "--resume_from_checkpoint", "latest"])
    (full,), (resumed,) = read_summaries(full_dir), read_summaries(resumed_dir)
    assert full["unreadable_samples"]["total"] > 0
    assert {Path(name).name for name in full["unreadable_samples"]["first_names"]} <= BAD_NAMES
    assert resumed["start_step"] == 2 and resumed["unreadable_samples"] == full["unreadable_samples"]
    assert resumed["model_checksum"] == full["model_checksum"]


def test_vae_training_counts_unreadable_images_against_the_limit(bad_folder, tmp_path):
    """`train_vae.py` skips the unreadable images, counts and names them, and stops past `--max_bad_samples`."""
    preset = write_yaml(
        tmp_path / "vae.yaml",
        {**TINY_VAE, "train_batch_size": 4, "report_to": "none", "discriminator_start_step": None},
    )
    common = ["--config", str(preset), "--dataset_name", str(bad_folder), "--cache_dir", str(tmp_path / "cache")]
    common += ["--use_cpu", "--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "1"]
    train_vae([*common, "--output_dir", str(tmp_path / "full")])
    (summary,) = read_summaries(tmp_path / "full")

    # Second computation: the unreadable examples among those the batch order placed in the 4 steps' batches.
    examples, _ = build_train_examples(data_args(bad_folder), TINY_VAE["image_size"], CPU, seed=1)
    sampler = DistributedBatchSampler(len(examples), 4, 1, 0, seed=1)
    placed = [index for indices in islice(iter(sampler), 4) for index in indices]
    unreadable = [examples[index]["skipped"][0]["name"] for index in placed if "pixel_values" not in examples[index]]
    assert len(unreadable) > 0
    assert summary["unreadable_samples"]["total"] == len(unreadable)
    assert summary["unreadable_samples"]["first_names"] == list(dict.fromkeys(unreadable))
    assert {Path(name).name for name in unreadable} <= BAD_NAMES
    assert summary["final_step"] == 4 and summary["all_finite"]

    # Exactly at the limit the run completes; one fewer allowed stops it, naming the files.
    at_limit = ["--output_dir", str(tmp_path / "at_limit"), "--max_bad_samples", str(len(unreadable))]
    train_vae([*common, *at_limit])
    (at_limit_summary,) = read_summaries(tmp_path / "at_limit")
    assert at_limit_summary["model_checksum"] == summary["model_checksum"]
    beyond = ["--output_dir", str(tmp_path / "beyond"), "--max_bad_samples", str(len(unreadable) - 1)]
    with pytest.raises(
        RuntimeError, match=rf"more than `max_bad_samples` = {len(unreadable) - 1}; the first ones: \["
    ):
        train_vae([*common, *beyond])
    assert not (tmp_path / "beyond" / "vae").exists()


def test_pretokenize_leaves_unreadable_images_out(bad_folder, tmp_path):
    tokenizer_dir = save_tiny_tokenizer(tmp_path / "tokenizer")
    output_dir = tmp_path / "tokens"
    args = ["--tokenizer_name_or_path", str(tokenizer_dir), "--dataset_name", str(bad_folder), "--use_cpu"]
    args += ["--output_dir", str(output_dir), "--batch_size", "4", "--cache_dir", str(tmp_path / "cache")]
    pretokenize(args)
    info = json.loads((output_dir / "tokenset_pretokenized.json").read_text())
    assert info["num_rows"] == {"train": NUM_GOOD}
    found = info["unreadable_samples"]["train"]
    assert found["total"] == len(BAD_NAMES) and {Path(name).name for name in found["first_names"]} == BAD_NAMES

    failing = [*args[:-4], "--output_dir", str(tmp_path / "stopped"), "--max_bad_samples", "1"]
    with pytest.raises(RuntimeError, match=r"more than `max_bad_samples` = 1; the first ones: \[.*(jpg|png)"):
        pretokenize(failing)

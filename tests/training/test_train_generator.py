"""Stage 2 (`training/train_generator.py`) launched for real with accelerate, on tiny data made on the fly.

Three launches: one process for 8 steps on pre-tokenized data, with a tokenizer so that the output is a full
pipeline (checkpoints every 2 steps keeping 3, TensorBoard); the same run resumed from its step-4 checkpoint; two
gloo processes tokenizing images on the fly, with gradient accumulation and gradient checkpointing.
"""

import json

import numpy as np
import pytest
import torch
from datasets import DatasetDict, load_from_disk
from helpers.scripts import checkpoint_steps, copy_checkpoint, history_values, launch, read_summaries, write_yaml

from tokenset_diffusers.image_processing import preprocess_images
from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from tokenset_diffusers.tokenset.pipeline_tokenset import TokenSetPipeline
from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler
from tokenset_diffusers.tokenset.transformer_tokenset import TokenSetTransformer1DModel
from tokenset_diffusers.utils.testing_utils import CLASS_NAMES, TINY_GENERATOR, make_saved_dataset, save_tiny_tokenizer
from training.checkpointing import parameters_checksum
from training.data import write_pretokenized_info
from training.pretokenize import to_dataset, token_features
from training.train_generator import batch_token_ids, time_bucket_sums


MAX_STEPS = 8
PRESET = {
    **TINY_GENERATOR,
    "train_batch_size": 4,
    "learning_rate": 1e-3,
    "max_train_steps": MAX_STEPS,
    "checkpointing_steps": 2,
    "checkpoints_total_limit": 3,
    "logging_steps": 2,
    "ema_decay": 0.9,
    "num_time_buckets": 4,
    "report_to": "none",
}


UPSTREAM_TOKENIZER_COMMAND = "accelerate launch training/train_tokenizer.py --config tokenizer.yaml"
UPSTREAM_PRETOKENIZE_COMMAND = "accelerate launch training/pretokenize.py --output_dir tokens"


def pretokenize_in_process(dataset_dir, tokenizer_dir, output_dir):
    """The pretokenize script's output format, built here directly with the tokenizer (that script has its own test)."""
    tokenizer = TokenSetVQVAE.from_pretrained(tokenizer_dir).eval()
    source = load_from_disk(str(dataset_dir))["train"]
    pixel_values = preprocess_images(list(source["image"]), tokenizer.config.image_size)
    with torch.no_grad():
        token_ids = tokenizer.encode(pixel_values).token_ids.numpy().astype(np.uint16)
        flipped = tokenizer.encode(pixel_values.flip(-1)).token_ids.numpy().astype(np.uint16)
    arrays = {"token_ids": token_ids, "token_ids_flipped": flipped, "label": np.array(list(source["label"]))}
    features = token_features(32, 8, source.features["label"])
    DatasetDict({"train": to_dataset(arrays, features)}).save_to_disk(str(output_dir))
    write_pretokenized_info(
        str(output_dir),
        {
            "codebook_size": 32,
            "num_tokens": 8,
            "num_classes": 3,
            # What training/pretokenize.py records of where the token sets come from (its own test checks that).
            "source_dataset": str(dataset_dir),
            "tokenizer_steps": 5,
            "commands": [UPSTREAM_TOKENIZER_COMMAND, UPSTREAM_PRETOKENIZE_COMMAND],
        },
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_generator")
    make_saved_dataset(root / "saved", {"train": 12})
    save_tiny_tokenizer(root / "tokenizer")
    pretokenize_in_process(root / "saved", root / "tokenizer", root / "tokens")
    write_yaml(root / "tiny.yaml", PRESET)
    return root


@pytest.fixture(scope="module")
def single_process_run(workdir):
    output_dir = workdir / "run"
    args = ["--config", str(workdir / "tiny.yaml"), "--pretokenized_dataset", str(workdir / "tokens")]
    extra = ["--tokenizer_name_or_path", str(workdir / "tokenizer"), "--report_to", "tensorboard"]
    launch("train_generator.py", [*args, *extra, "--output_dir", str(output_dir)], 1, workdir)
    return output_dir, args


def test_single_process_run_trains(single_process_run):
    output_dir, _ = single_process_run
    (summary,) = read_summaries(output_dir)
    assert summary["num_processes"] == 1 and summary["final_step"] == MAX_STEPS and summary["all_finite"]
    assert (summary["codebook_size"], summary["num_tokens"], summary["num_classes"]) == (32, 8, 3)
    losses = history_values(summary, "loss")
    assert losses[0] == pytest.approx(np.log(9), abs=1e-4)  # zero-initialised output: uniform over M + 1 = 9 counts
    assert losses[-1] < losses[0] - 0.1  # overfits the 12 token sets
    assert checkpoint_steps(output_dir) == [4, 6, 8] and not list(output_dir.glob(".partial-*"))


def test_loss_per_time_bucket_reaches_tensorboard(single_process_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = single_process_run
    accumulator = EventAccumulator(str(output_dir / "logs" / "train_generator"))  # the run's own event file
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/lr"} <= tags
    bucket_tags = {tag for tag in tags if tag.startswith("train/loss_t")}
    assert bucket_tags and bucket_tags <= {f"train/loss_t{i / 4:.2f}-{(i + 1) / 4:.2f}" for i in range(4)}
    assert [event.step for event in accumulator.Scalars("train/loss")] == [2, 4, 6, 8]


def test_outputs_make_a_working_pipeline(single_process_run, workdir):
    output_dir, _ = single_process_run
    (summary,) = read_summaries(output_dir)
    transformer = TokenSetTransformer1DModel.from_pretrained(output_dir / "transformer")
    assert parameters_checksum(transformer) == summary["ema_checksum"]
    pipeline = TokenSetPipeline.from_pretrained(output_dir)
    assert pipeline.config.id2label == dict(enumerate(CLASS_NAMES))  # class names from the dataset's ClassLabel
    scheduler_config = FSDDScheduler.from_pretrained(output_dir / "scheduler").config
    assert (scheduler_config.codebook_size, scheduler_config.num_tokens) == (32, 8)
    output = pipeline(
        ["red", "blue"], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    assert output.images.shape == (2, 3, 16, 16) and torch.isfinite(output.images).all()
    assert (output_dir / "README.md").is_file()


def test_model_card_tells_how_the_weights_were_made(single_process_run, workdir):
    output_dir, _ = single_process_run
    card = (output_dir / "README.md").read_text()
    assert f"# TokenSet on {workdir / 'saved'}" in card  # the source images, not the token-set folder
    assert "steps: 5 (set tokenizer), 8 (generator)" in card
    commands = card.split("Reproduce with:")[1].split("```bash")[1].split("```")[0].strip().splitlines()
    assert commands[:2] == [UPSTREAM_TOKENIZER_COMMAND, UPSTREAM_PRETOKENIZE_COMMAND]
    assert commands[2].startswith("accelerate launch training/train_generator.py") and len(commands) == 3
    assert "unconditional-image-generation" not in card


def test_resumed_run_records_every_command(workdir, tmp_path):
    """A fresh run starts the list of command lines, a resume appends to it (what the card then lists)."""
    from accelerate import Accelerator

    from training.training_utils import read_provenance, record_launch

    accelerator = Accelerator(cpu=True)
    assert record_launch(accelerator, str(tmp_path), "first", resumed=False) == ["first"]
    assert record_launch(accelerator, str(tmp_path), "resume", resumed=True) == ["first", "resume"]
    assert read_provenance(tmp_path)["commands"] == ["first", "resume"]
    assert record_launch(accelerator, str(tmp_path), "fresh again", resumed=False) == ["fresh again"]


def test_resume_matches_uninterrupted_run(single_process_run, workdir):
    output_dir, args = single_process_run
    resumed_dir = workdir / "resumed"
    copy_checkpoint(output_dir, 4, resumed_dir)
    launch(
        "train_generator.py",
        [*args, "--output_dir", str(resumed_dir), "--resume_from_checkpoint", "latest"],
        1,
        workdir,
        launcher="python",
    )
    (reference,) = read_summaries(output_dir)
    (resumed,) = read_summaries(resumed_dir)
    assert resumed["start_step"] == 4 and resumed["final_step"] == MAX_STEPS
    assert resumed["history"] == reference["history"][4:]  # step for step
    assert resumed["model_checksum"] == reference["model_checksum"]
    assert resumed["ema_checksum"] == reference["ema_checksum"]
    # Without a tokenizer the output is the transformer alone.
    assert (resumed_dir / "transformer").is_dir() and not (resumed_dir / "model_index.json").exists()


def test_two_processes_on_images_stay_in_sync(workdir):
    output_dir = workdir / "two_processes"
    args = ["--config", str(workdir / "tiny.yaml"), "--dataset_name", str(workdir / "saved")]
    args += ["--tokenizer_name_or_path", str(workdir / "tokenizer"), "--output_dir", str(output_dir)]
    args += ["--max_train_steps", "3", "--train_batch_size", "2", "--gradient_accumulation_steps", "2"]
    args += ["--gradient_checkpointing", "--checkpointing_steps", "3"]
    launch("train_generator.py", args, 2, workdir)
    summaries = read_summaries(output_dir)
    assert [summary["num_processes"] for summary in summaries] == [2, 2]  # asserted from inside the processes
    assert summaries[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    for key in ("model_checksum", "ema_checksum", "history"):
        assert summaries[0][key] == summaries[1][key]
    assert summaries[0]["all_finite"]
    assert json.loads((output_dir / "model_index.json").read_text())["_class_name"][-1] == "TokenSetPipeline"


def test_time_buckets_partition_the_batch():
    per_example = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    timesteps = torch.tensor([1e-5, 0.25, 0.49, 0.75, 1.0])  # buckets 0, 1, 1, 3, 3: t = 1 joins the last one
    sums = time_bucket_sums(per_example, timesteps, 4)
    torch.testing.assert_close(sums, torch.tensor([[1.0, 5.0, 0.0, 9.0], [1.0, 2.0, 0.0, 2.0]]))


def test_random_flip_picks_stored_mirror_token_sets_only_when_asked():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    token_ids = torch.stack([torch.zeros(64, 4, dtype=torch.long), torch.ones(64, 4, dtype=torch.long)], dim=1)
    batch = {"token_ids": token_ids}  # (B, 2, M): the image's token set (zeros) and its mirror's (ones)
    mixed = batch_token_ids(batch, None, torch.Generator().manual_seed(0), accelerator, random_flip=True)
    assert 0 < mixed[:, 0].sum() < 64  # some rows took the mirror's token set
    plain = batch_token_ids(batch, None, torch.Generator().manual_seed(0), accelerator, random_flip=False)
    assert torch.equal(plain, torch.zeros(64, 4, dtype=torch.long))


@pytest.mark.parametrize("init_std", [None, 1.0])
def test_class_embedding_init_std_sets_the_class_table_only(init_std):
    """`class_embedding_init_std` re-draws the class table (default: DiT's 0.02) and leaves every other weight as the
    model's own initialisation, with the same seed."""
    from accelerate import Accelerator

    from training.train_generator import GeneratorData, build_training_state, parse_args

    argv = ["--pretokenized_dataset", "unused", "--report_to", "none", "--use_cpu", "--output_dir", "unused"]
    argv += [f"--{key}={value}" for key, value in TINY_GENERATOR.items()]
    if init_std is not None:
        argv += ["--class_embedding_init_std", str(init_std)]
    _, model_args, args = parse_args(argv)
    data = GeneratorData(None, codebook_size=32, num_tokens=8, num_classes=100, id2label=None, tokenizer=None)
    torch.manual_seed(0)
    state = build_training_state(Accelerator(cpu=True), model_args, args, data)
    table = state.model.class_embedder.weight
    expected_std = 0.02 if init_std is None else init_std
    assert abs(table.std().item() / expected_std - 1) < 0.1
    torch.manual_seed(0)
    reference = TokenSetTransformer1DModel(codebook_size=32, num_tokens=8, num_classes=100, **TINY_GENERATOR)
    assert torch.equal(state.model.pos_embed, reference.pos_embed)
    assert torch.equal(state.ema.shadow.class_embedder.weight, table)  # the EMA starts from the re-drawn table

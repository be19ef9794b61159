"""Stage 1 (`training/train_tokenizer.py`) launched for real with accelerate, on tiny data made on the fly.

Three launches: one process for 8 steps on an `imagefolder` (GAN on from step 3, decoder-only from step 6, checkpoints
every 2 steps keeping 3, evaluation every 4), the same run resumed from its step-4 checkpoint in a fresh folder, and
two gloo processes on a saved `datasets` folder, streamed, with gradient accumulation and gradient checkpointing.
"""

import math
import re

import pytest
import torch
from helpers.scripts import checkpoint_steps, copy_checkpoint, history_values, launch, read_summaries, write_yaml
from safetensors.torch import load_file

from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from tokenset_diffusers.utils.testing_utils import TINY_TOKENIZER, make_image_folder, make_saved_dataset
from training.checkpointing import parameters_checksum
from training.training_utils import read_provenance


MAX_STEPS = 8
PRESET = {
    **TINY_TOKENIZER,
    "train_batch_size": 4,
    "learning_rate": 1e-3,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 1,
    "max_train_steps": MAX_STEPS,
    "checkpointing_steps": 2,
    "checkpoints_total_limit": 3,
    "logging_steps": 2,
    "ema_decay": 0.9,
    "discriminator_start_step": 2,
    "discriminator_base_channels": 8,
    "discriminator_num_layers": 1,
    "discriminator_norm_num_groups": 4,
    "decoder_only_start_step": 5,
    "bootstrap_steps": 3,
    "eval_steps": 4,
    "eval_batch_size": 4,
    "report_to": "none",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_tokenizer")
    make_image_folder(root / "images", {"train": 12, "validation": 3})
    make_saved_dataset(root / "saved", {"train": 12})
    write_yaml(root / "tiny.yaml", PRESET)
    return root


@pytest.fixture(scope="module")
def single_process_run(workdir):
    output_dir = workdir / "run"
    args = ["--config", str(workdir / "tiny.yaml"), "--dataset_name", str(workdir / "images")]
    args += ["--eval_split", "validation"]
    result = launch("train_tokenizer.py", [*args, "--output_dir", str(output_dir)], 1, workdir)
    (workdir / "run_console.txt").write_text(result.stdout + result.stderr)
    (workdir / "run_stdout.txt").write_text(result.stdout)
    return output_dir, args


def test_the_run_ends_by_saying_what_it_wrote(single_process_run, workdir):
    output_dir, _ = single_process_run
    last_line = (workdir / "run_stdout.txt").read_text().strip().splitlines()[-1]
    assert last_line.startswith(f"wrote {output_dir / 'image_tokenizer'} ")
    assert (output_dir / "image_tokenizer" / "config.json").is_file()
    assert "codebook has collapsed" not in (workdir / "run_console.txt").read_text()  # a healthy run: no warning


def test_evaluation_reaches_the_console(single_process_run, workdir):
    """Evaluation metrics are printed (and shown on the progress bar), not only sent to the tracker."""
    console = (workdir / "run_console.txt").read_text()
    printed = re.findall(r"step (\d+): evaluation of the EMA model: PSNR ([\d.]+) dB, L1 ([\d.]+)", console)
    (summary,) = read_summaries(single_process_run[0])
    logged = {entry["step"]: entry for entry in summary["history"] if "eval/psnr" in entry}
    assert [int(step) for step, _, _ in printed] == sorted(logged) == [4, 8]
    for step, psnr, l1 in printed:
        assert float(psnr) == pytest.approx(logged[int(step)]["eval/psnr"], abs=0.006)
        assert float(l1) == pytest.approx(logged[int(step)]["eval/l1"], abs=6e-5)


def test_single_process_run_trains_and_saves(single_process_run):
    output_dir, _ = single_process_run
    (summary,) = read_summaries(output_dir)
    assert summary["num_processes"] == 1 and summary["final_step"] == MAX_STEPS
    assert summary["all_finite"]
    reconstruction = history_values(summary, "reconstruction_loss")
    assert reconstruction[-1] < 0.8 * reconstruction[0]  # overfits the 12 images
    # The GAN phase starts at step index 2 (the 3rd step): discriminator loss and adaptive weight appear then.
    with_gan = [entry["step"] for entry in summary["history"] if "discriminator_loss" in entry]
    assert with_gan == list(range(3, MAX_STEPS + 1))
    assert all(math.isfinite(entry["adaptive_weight"]) for entry in summary["history"][2:])
    # The bootstrap readout's loss is part of the first 3 steps only.
    assert [entry["step"] for entry in summary["history"] if "bootstrap_loss" in entry] == [1, 2, 3]
    # Evaluation of the EMA model on the held-out split every 4 steps.
    evaluated = [entry for entry in summary["history"] if "eval/psnr" in entry]
    assert [entry["step"] for entry in evaluated] == [4, 8]
    assert all(0 < entry["eval/psnr"] < 100 and 0 <= entry["eval/l1"] <= 1 for entry in evaluated)


def test_checkpoints_rotate_and_final_model_loads(single_process_run):
    output_dir, _ = single_process_run
    assert checkpoint_steps(output_dir) == [4, 6, 8]  # every 2 steps, the newest 3 kept
    assert not list(output_dir.glob(".partial-*"))
    (summary,) = read_summaries(output_dir)
    tokenizer = TokenSetVQVAE.from_pretrained(output_dir / "image_tokenizer")
    assert parameters_checksum(tokenizer) == summary["ema_checksum"]  # the EMA weights were saved
    assert (output_dir / "image_tokenizer" / "README.md").is_file()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert tokenizer.decode(tokenizer.encode(images).token_ids).shape == (2, 3, 16, 16)


def test_decoder_only_phase_freezes_encoder_and_codebook(single_process_run):
    output_dir, _ = single_process_run
    # Steps 6-8 are decoder-only: the encoder and codebook of checkpoint-6 and checkpoint-8 agree, the decoder moved.
    before = load_file(output_dir / "checkpoint-6" / "model.safetensors")
    after = load_file(output_dir / "checkpoint-8" / "model.safetensors")
    earlier = load_file(output_dir / "checkpoint-4" / "model.safetensors")
    frozen = [name for name in before if name.startswith(("encoder.", "quantizer."))]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    assert any(not torch.equal(earlier[name], before[name]) for name in frozen)  # step 5 still trained them
    decoder = [name for name in before if name.startswith("pixel_decoder.")]
    assert any(not torch.equal(before[name], after[name]) for name in decoder)


def test_resume_matches_uninterrupted_run(single_process_run, workdir):
    output_dir, args = single_process_run
    resumed_dir = workdir / "resumed"
    copy_checkpoint(output_dir, 4, resumed_dir)
    (resumed_dir / ".partial-checkpoint-6").mkdir()  # what a run killed while saving leaves behind
    resume_args = [*args, "--output_dir", str(resumed_dir), "--resume_from_checkpoint", "latest"]
    launch("train_tokenizer.py", resume_args, 1, workdir, launcher="python")
    (reference,) = read_summaries(output_dir)
    (resumed,) = read_summaries(resumed_dir)
    assert resumed["start_step"] == 4 and resumed["final_step"] == MAX_STEPS
    assert resumed["history"] == reference["history"][4:]  # step for step, every metric
    for key in ("model_checksum", "ema_checksum", "discriminator_checksum"):
        assert resumed[key] == reference[key]
    assert not list(resumed_dir.glob(".partial-*"))
    # The saved tokenizer records both command lines that made it, and the real step count; its card lists them.
    provenance = read_provenance(resumed_dir / "image_tokenizer")
    first, resume = provenance["commands"]
    assert first.endswith(f"--output_dir {output_dir}") and resume.endswith("--resume_from_checkpoint latest")
    assert provenance["steps"] == MAX_STEPS and provenance["dataset"] == str(workdir / "images")
    card = (resumed_dir / "image_tokenizer" / "README.md").read_text()
    assert first in card and resume in card and card.index(first) < card.index(resume)


def test_two_processes_stay_in_sync(workdir):
    output_dir = workdir / "two_processes"
    args = ["--config", str(workdir / "tiny.yaml"), "--dataset_name", str(workdir / "saved")]
    args += ["--output_dir", str(output_dir), "--max_train_steps", "4", "--train_batch_size", "2"]
    args += ["--gradient_accumulation_steps", "2", "--streaming", "--gradient_checkpointing"]
    args += ["--discriminator_start_step", "1", "--decoder_only_start_step", "3", "--checkpointing_steps", "4"]
    launch("train_tokenizer.py", args, 2, workdir)
    summaries = read_summaries(output_dir)
    assert [summary["num_processes"] for summary in summaries] == [2, 2]  # asserted from inside the processes
    assert summaries[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    for key in ("model_checksum", "ema_checksum", "discriminator_checksum", "history"):
        assert summaries[0][key] == summaries[1][key]
    assert summaries[0]["all_finite"] and summaries[0]["final_step"] == 4
    assert checkpoint_steps(output_dir) == [4]
    TokenSetVQVAE.from_pretrained(output_dir / "image_tokenizer")


def test_codebook_collapse_is_one_code_per_batch():
    """The `codebook_usage` metric is the fraction of the codebook that a batch's token sets use (computed here as
    `tokenizer_losses` does): one code used -> a collapse message; two codes or more -> none."""
    from training.train_tokenizer import codebook_collapse_message

    codebook_size = 16

    def usage(token_ids: torch.Tensor) -> float:
        return float(torch.zeros(codebook_size).index_fill_(0, token_ids.flatten(), 1.0).mean())

    collapsed = usage(torch.full((4, 8), 5))
    assert "1.00 of 16 codes" in codebook_collapse_message(collapsed, codebook_size)
    assert codebook_collapse_message(usage(torch.tensor([[5, 5, 5, 6]])), codebook_size) is None
    assert codebook_collapse_message(usage(torch.arange(16).view(2, 8)), codebook_size) is None
    # Averaged over a logging window: mostly one code (1.25 on average) is still a collapse.
    assert codebook_collapse_message((3 * collapsed + 2 / codebook_size) / 4, codebook_size) is not None


def test_a_collapsed_codebook_warns_once_while_training(caplog):
    from training.data import DataArguments
    from training.train_tokenizer import TokenizerModelArguments, TokenizerTraining, TokenizerTrainingArguments

    hooks = TokenizerTraining(
        DataArguments(), TokenizerModelArguments(codebook_size=16), TokenizerTrainingArguments(output_dir="unused")
    )
    with caplog.at_level("WARNING"):
        hooks.check_metrics(10, {"train/loss": 0.5, "train/codebook_usage": 4 / 16})
        assert caplog.records == []
        hooks.check_metrics(20, {"train/loss": 0.0, "train/codebook_usage": 1 / 16})
        hooks.check_metrics(30, {"train/loss": 0.0, "train/codebook_usage": 1 / 16})
    (record,) = caplog.records
    assert record.levelname == "WARNING" and record.getMessage().startswith("step 20: the codebook has collapsed")

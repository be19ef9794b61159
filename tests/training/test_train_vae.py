"""`training/train_vae.py` and `training/encode_latents.py` launched for real with accelerate, on tiny data made on
the fly.

The VAE: one process for 8 steps on an `imagefolder` (GAN from step 3, checkpoints every 2 steps keeping 3,
evaluation every 4), the same run resumed from its step-4 checkpoint in a fresh folder, and two gloo processes on a
saved `datasets` folder with gradient accumulation. The latent cache: written by one process, checked against the
VAE's own encoding of each image and its mirror, then completed by two processes after a shard was lost.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from helpers.scripts import checkpoint_steps, copy_checkpoint, history_values, launch, read_summaries, write_yaml
from safetensors.torch import load_file

from tokenset_diffusers import preprocess_images
from tokenset_diffusers.utils.testing_utils import TINY_VAE, make_image_folder, make_saved_dataset
from training.checkpointing import parameters_checksum
from training.latents import LatentExamples, sample_latents, shard_path
from training.train_vae import VAEModelArguments, VAETrainingArguments, kl_divergence


MAX_STEPS = 8
PRESET = {
    **TINY_VAE,
    "train_batch_size": 4,
    "learning_rate": 3e-3,
    "adam_beta1": 0.9,
    "adam_beta2": 0.99,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 1,
    "max_train_steps": MAX_STEPS,
    "checkpointing_steps": 2,
    "checkpoints_total_limit": 3,
    "logging_steps": 2,
    "ema_decay": 0.5,
    "kl_weight": 1e-3,
    "discriminator_start_step": 2,
    "discriminator_base_channels": 8,
    "discriminator_num_layers": 1,
    "discriminator_norm_num_groups": 4,
    "eval_steps": 4,
    "eval_batch_size": 4,
    "scaling_factor_samples": 12,
    "report_to": "none",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_vae")
    make_image_folder(root / "images", {"train": 12, "validation": 3})
    make_saved_dataset(root / "saved", {"train": 12, "test": 5})
    write_yaml(root / "tiny.yaml", PRESET)
    return root


@pytest.fixture(scope="module")
def single_process_run(workdir):
    output_dir = workdir / "run"
    args = ["--config", str(workdir / "tiny.yaml"), "--dataset_name", str(workdir / "images")]
    args += ["--eval_split", "validation"]
    result = launch("train_vae.py", [*args, "--output_dir", str(output_dir)], 1, workdir)
    (workdir / "run_stdout.txt").write_text(result.stdout)
    return output_dir, args


def test_the_run_ends_by_saying_what_it_wrote(single_process_run, workdir):
    output_dir, _ = single_process_run
    last_line = (workdir / "run_stdout.txt").read_text().strip().splitlines()[-1]
    assert last_line.startswith(f"wrote {output_dir / 'vae'} ")
    assert (output_dir / "vae" / "config.json").is_file()


def test_single_process_run_trains_and_saves(single_process_run):
    output_dir, _ = single_process_run
    (summary,) = read_summaries(output_dir)
    assert summary["num_processes"] == 1 and summary["final_step"] == MAX_STEPS
    assert summary["all_finite"]
    reconstruction = history_values(summary, "reconstruction_loss")
    assert reconstruction[-1] < 0.85 * reconstruction[0]  # learns the 12 images
    with_gan = [entry["step"] for entry in summary["history"] if "discriminator_loss" in entry]
    assert with_gan == list(range(3, MAX_STEPS + 1))  # the GAN from step index 2 on
    evaluated = [entry for entry in summary["history"] if "eval/psnr" in entry]
    assert [entry["step"] for entry in evaluated] == [4, 8]
    assert all(0 < entry["eval/psnr"] < 100 and 0 <= entry["eval/l1"] <= 1 for entry in evaluated)
    assert checkpoint_steps(output_dir) == [4, 6, 8]


def test_final_vae_is_the_ema_with_a_unit_variance_scaling_factor(single_process_run, workdir):
    output_dir, _ = single_process_run
    (summary,) = read_summaries(output_dir)
    vae = AutoencoderKL.from_pretrained(output_dir / "vae")
    assert parameters_checksum(vae) == summary["ema_checksum"]
    assert vae.config.scaling_factor == pytest.approx(summary["scaling_factor"])
    assert vae.config.latent_channels == TINY_VAE["latent_channels"] and vae.config.sample_size == 8
    # Second computation: posterior samples of the training images, scaled, have unit standard deviation.
    from PIL import Image

    images = [Image.open(path) for path in sorted((workdir / "images" / "train").rglob("*.png"))]
    pixel_values = preprocess_images(images, 8)  # (12, 3, 8, 8)
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        latents = vae.encode(pixel_values).latent_dist.sample(generator=generator) * vae.config.scaling_factor
    assert latents.shape == (12, 4, 4, 4)
    assert latents.std().item() == pytest.approx(1.0, rel=0.15)
    card = (output_dir / "vae" / "README.md").read_text()
    assert "train_vae.py" in card and "tokenbridge" in card


def test_resume_matches_uninterrupted_run(single_process_run, workdir):
    output_dir, args = single_process_run
    resumed_dir = workdir / "resumed"
    copy_checkpoint(output_dir, 4, resumed_dir)
    (resumed_dir / ".partial-checkpoint-6").mkdir()  # what a run killed while saving leaves behind
    resume_args = [*args, "--output_dir", str(resumed_dir), "--resume_from_checkpoint", "latest"]
    result = launch("train_vae.py", resume_args, 1, workdir, launcher="python")
    (reference,) = read_summaries(output_dir)
    (resumed,) = read_summaries(resumed_dir)
    assert resumed["start_step"] == 4 and resumed["final_step"] == MAX_STEPS
    # A plain single-process run: no warning from accelerate (its launcher's "defaults used instead" included).
    console = result.stdout + result.stderr
    assert "WARNING accelerate" not in console and "had defaults used instead" not in console
    assert result.stdout.strip().splitlines()[-1].startswith(f"wrote {resumed_dir / 'vae'} ")
    assert resumed["history"] == reference["history"][4:]  # step for step, every metric
    for key in ("model_checksum", "ema_checksum", "discriminator_checksum", "scaling_factor"):
        assert resumed[key] == reference[key]
    assert not list(resumed_dir.glob(".partial-*"))


def test_two_processes_stay_in_sync(workdir):
    output_dir = workdir / "two_processes"
    args = ["--config", str(workdir / "tiny.yaml"), "--dataset_name", str(workdir / "saved")]
    args += ["--output_dir", str(output_dir), "--max_train_steps", "3", "--train_batch_size", "2"]
    args += ["--gradient_accumulation_steps", "2", "--discriminator_start_step", "1", "--checkpointing_steps", "3"]
    args += ["--eval_split", "test"]
    launch("train_vae.py", args, 2, workdir)
    summaries = read_summaries(output_dir)
    assert [summary["num_processes"] for summary in summaries] == [2, 2]  # asserted from inside the processes
    assert summaries[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    for key in ("model_checksum", "ema_checksum", "discriminator_checksum", "history"):
        assert summaries[0][key] == summaries[1][key]
    assert summaries[0]["all_finite"] and summaries[0]["final_step"] == 3
    assert summaries[0]["scaling_factor"] > 0 and summaries[1]["scaling_factor"] is None  # the main process saves
    AutoencoderKL.from_pretrained(output_dir / "vae")


def test_push_to_hub_uploads_the_final_folder_once(workdir, tmp_path, monkeypatch):
    """`--push_to_hub` goes through `tokenset_diffusers.utils.hub.push_folder_to_hub` (recorded here, no network)
    with the saved `vae/` folder, after the move into place, leaving checkpoints and logs out."""
    import tokenset_diffusers.utils.hub
    from training.train_vae import main as train_vae

    calls = []

    def record(folder, repo_id, **kwargs):
        calls.append((Path(folder), repo_id, kwargs, sorted(path.name for path in Path(folder).iterdir())))

    monkeypatch.setattr(tokenset_diffusers.utils.hub, "push_folder_to_hub", record)
    output_dir = tmp_path / "pushed"
    args = ["--config", str(workdir / "tiny.yaml"), "--dataset_name", str(workdir / "images"), "--use_cpu"]
    args += ["--max_train_steps", "2", "--discriminator_start_step", "1", "--output_dir", str(output_dir)]
    train_vae([*args, "--push_to_hub", "--hub_model_id", "user/tiny-vae", "--hub_private_repo"])
    ((folder, repo_id, kwargs, files),) = calls
    assert folder == output_dir / "vae" and repo_id == "user/tiny-vae"
    assert kwargs["private"] is True and kwargs["commit_message"] == "VAE (AutoencoderKL)"
    assert {"checkpoint-*", "logs/*"} <= set(kwargs["ignore_patterns"])
    assert files == ["README.md", "config.json", "diffusion_pytorch_model.safetensors", "training_provenance.json"]
    assert "user/tiny-vae" in (folder / "README.md").read_text()
    assert not list(output_dir.glob(".partial-*"))


# ------------------------------------------------------------------------------------------------- latent cache


def test_encode_latents_caches_both_flips_and_resumes(single_process_run, workdir):
    output_dir, _ = single_process_run
    vae_dir = output_dir / "vae"
    cache = workdir / "latents"
    args = ["--vae_name_or_path", str(vae_dir), "--dataset_name", str(workdir / "saved"), "--eval_split", "test"]
    args += ["--output_dir", str(cache), "--shard_size", "5", "--batch_size", "3"]
    launch("encode_latents.py", args, 1, workdir)
    info = json.loads((cache / "latents_info.json").read_text())
    assert info["complete"] and info["num_rows"] == {"train": 12, "test": 5}
    assert info["latent_shape"] == [4, 4, 4] and info["num_classes"] == 3
    assert sorted(path.name for path in (cache / "train").iterdir()) == [
        f"shard-0000{i}.safetensors" for i in range(3)
    ]

    # Second computation: the VAE's posterior of each image and of its mirror, in source order.
    from datasets import load_from_disk

    dataset = load_from_disk(str(workdir / "saved"))["train"]
    pixel_values = preprocess_images(list(dataset["image"]), 8)  # (12, 3, 8, 8)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        expected = vae.encode(pixel_values).latent_dist.parameters  # (12, 8, 4, 4)
        expected_flipped = vae.encode(pixel_values.flip(-1)).latent_dist.parameters
    examples = LatentExamples(cache, "train")
    assert len(examples) == 12
    moments = torch.stack([examples[i]["moments"] for i in range(12)])  # (12, 2, 8, 4, 4)
    torch.testing.assert_close(moments[:, 0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moments[:, 1], expected_flipped, atol=1e-5, rtol=1e-5)
    assert [int(examples[i]["label"]) for i in range(12)] == list(dataset["label"])

    # Lose a shard and leave a partial file, as an interrupted run would: a rerun (2 processes) rebuilds only it.
    kept = load_file(shard_path(cache, "train", 0))
    kept_mtime = shard_path(cache, "train", 0).stat().st_mtime_ns
    shard_path(cache, "train", 1).unlink()
    (cache / "train" / ".partial-shard-00001.safetensors").write_bytes(b"")
    launch("encode_latents.py", args, 2, workdir)
    assert shard_path(cache, "train", 0).stat().st_mtime_ns == kept_mtime  # not recomputed
    torch.testing.assert_close(load_file(shard_path(cache, "train", 0))["moments"], kept["moments"])
    rebuilt = LatentExamples(cache, "train")
    torch.testing.assert_close(torch.stack([rebuilt[i]["moments"] for i in range(12)]), moments, atol=1e-5, rtol=0)

    # Other settings into the same folder are refused.
    with pytest.raises(AssertionError, match="other settings"):
        launch("encode_latents.py", [*args[:-4], "--shard_size", "4", "--batch_size", "3"], 1, workdir)


def test_sample_latents_draws_flip_and_noise_from_the_generator():
    mean = torch.randn(4000, 2, 3, 2, 2)
    logvar = torch.full_like(mean, math.log(0.25))  # std 0.5
    moments = torch.cat([mean, logvar], dim=2)  # (N, 2, 6, 2, 2)
    moments[:, 1, :3] += 100.0  # the mirror's mean is far away: which flip was chosen is visible
    first = sample_latents(moments, torch.Generator().manual_seed(0))
    again = sample_latents(moments, torch.Generator().manual_seed(0))
    assert torch.equal(first, again)
    flipped = first.mean(dim=(1, 2, 3)) > 50  # (N,)
    assert abs(flipped.float().mean().item() - 0.5) < 0.03
    chosen_mean = torch.where(flipped[:, None, None, None], mean[:, 1] + 100.0, mean[:, 0])
    residual = (first - chosen_mean) / 0.5  # standard normal
    assert abs(residual.mean().item()) < 0.02 and residual.std().item() == pytest.approx(1.0, abs=0.02)


def test_kl_divergence_matches_diffusers_posterior():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    parameters = torch.randn(3, 8, 4, 4)
    posterior = DiagonalGaussianDistribution(parameters)
    # diffusers sums over (C, h, w); ours is the mean over every element.
    expected = posterior.kl().mean() / (4 * 4 * 4)
    torch.testing.assert_close(kl_divergence(posterior.mean, posterior.logvar), expected)


def test_config_checks():
    with pytest.raises(ValueError, match="divisible by the stride"):
        VAEModelArguments(image_size=10, block_out_channels=[8, 16, 16], norm_num_groups=4)
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEModelArguments(image_size=8, block_out_channels=[8, 12], norm_num_groups=8)
    with pytest.raises(ValueError, match="kl_weight"):
        VAETrainingArguments(kl_weight=-1.0)
    with pytest.raises(ValueError, match="lpips"):
        from training.image_losses import build_perceptual_loss

        build_perceptual_loss(VAETrainingArguments(perceptual_weight=0.1))

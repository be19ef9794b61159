"""`training/train_tokenbridge.py` launched for real with accelerate, on tiny data made on the fly.

A tiny VAE (random weights) and a latent cache written by `training/encode_latents.py`; then one process for 6 steps
on the cache (checkpoints every 2 steps keeping 3), the same run resumed from its step-2 checkpoint in a fresh folder,
and two gloo processes encoding a saved `datasets` folder with the VAE on the fly, with gradient accumulation.
"""

import math

import pytest
import torch
from helpers.scripts import (
    checkpoint_steps,
    copy_checkpoint,
    history_values,
    launch,
    read_summaries,
    save_tiny_vae,
    write_yaml,
)

from tokenset_diffusers import MaskedARScheduler, TokenBridgePipeline, TokenBridgeTransformer2DModel
from tokenset_diffusers.utils.testing_utils import CLASS_NAMES, TINY_TOKENBRIDGE, make_saved_dataset
from training.checkpointing import parameters_checksum
from training.train_tokenbridge import (
    TokenBridgeModelArguments,
    TokenBridgeTrainingArguments,
    drop_labels,
    effective_learning_rate,
    parameter_groups,
    training_mask,
)


MAX_STEPS = 6
PRESET = {
    **TINY_TOKENBRIDGE,
    "train_batch_size": 4,
    "base_learning_rate": 1.6,  # lr = 1.6 x 4 / 256 = 0.025
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 1,
    "max_train_steps": MAX_STEPS,
    "checkpointing_steps": 2,
    "checkpoints_total_limit": 3,
    "logging_steps": 2,
    "ema_decay": 0.5,
    "random_flip": True,
    "default_guidance_scale": 2.0,
    "default_num_inference_steps": 4,
    "report_to": "none",
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_tokenbridge")
    make_saved_dataset(root / "saved", {"train": 12})
    save_tiny_vae(root / "vae")
    write_yaml(root / "tiny.yaml", PRESET)
    args = ["--vae_name_or_path", str(root / "vae"), "--dataset_name", str(root / "saved")]
    launch("encode_latents.py", [*args, "--output_dir", str(root / "latents"), "--shard_size", "8"], 1, root)
    return root


@pytest.fixture(scope="module")
def single_process_run(workdir):
    output_dir = workdir / "run"
    args = ["--config", str(workdir / "tiny.yaml"), "--latents_dir", str(workdir / "latents")]
    launch("train_tokenbridge.py", [*args, "--output_dir", str(output_dir)], 1, workdir)
    return output_dir, args


def test_single_process_run_trains(single_process_run):
    output_dir, _ = single_process_run
    (summary,) = read_summaries(output_dir)
    assert summary["num_processes"] == 1 and summary["final_step"] == MAX_STEPS and summary["all_finite"]
    assert summary["learning_rate"] == pytest.approx(0.025)  # base lr x global batch / 256
    assert summary["sample_size"] == 4 and summary["num_classes"] == 3
    loss = history_values(summary, "loss")
    assert sum(loss[-2:]) < 0.92 * sum(loss[:2])
    ratios = history_values(summary, "mask_ratio")  # ceil(16 x r) / 16 with r in [0.7, 1]
    assert all(0.7 <= ratio <= 1.0 for ratio in ratios)
    assert checkpoint_steps(output_dir) == [2, 4, 6]


def test_output_is_a_pipeline_with_the_ema_transformer(single_process_run, workdir):
    output_dir, _ = single_process_run
    (summary,) = read_summaries(output_dir)
    pipeline = TokenBridgePipeline.from_pretrained(output_dir)
    assert isinstance(pipeline.transformer, TokenBridgeTransformer2DModel)
    assert isinstance(pipeline.scheduler, MaskedARScheduler) and pipeline.scheduler.config.num_tokens == 16
    assert parameters_checksum(pipeline.transformer) == summary["ema_checksum"]
    config = pipeline.transformer.config
    assert (config.sample_size, config.latent_channels, config.num_classes) == (4, 4, 3)
    assert list(config.channel_order) == [0, 1, 2, 3] and config.quantizer_bits == 4
    assert pipeline.vae.config.scaling_factor == 2.0
    assert [pipeline.config.id2label[i] for i in range(3)] == CLASS_NAMES
    assert pipeline.config.default_guidance_scale == 2.0 and pipeline.config.default_num_inference_steps == 4
    generator = torch.Generator().manual_seed(0)
    images = pipeline(["green", 2], generator=generator, output_type="pt").images
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
    card = (output_dir / "README.md").read_text()
    assert "train_tokenbridge.py" in card and "tokenbridge" in card


def test_resume_matches_uninterrupted_run(single_process_run, workdir):
    output_dir, args = single_process_run
    resumed_dir = workdir / "resumed"
    copy_checkpoint(output_dir, 2, resumed_dir)
    resume_args = [*args, "--output_dir", str(resumed_dir), "--resume_from_checkpoint", "latest"]
    launch("train_tokenbridge.py", resume_args, 1, workdir, launcher="python")
    (reference,) = read_summaries(output_dir)
    (resumed,) = read_summaries(resumed_dir)
    assert resumed["start_step"] == 2 and resumed["final_step"] == MAX_STEPS
    assert resumed["history"] == reference["history"][2:]  # step for step, dropout included
    assert resumed["model_checksum"] == reference["model_checksum"]
    assert resumed["ema_checksum"] == reference["ema_checksum"]


def test_two_processes_encoding_on_the_fly_stay_in_sync(workdir):
    output_dir = workdir / "two_processes"
    args = ["--config", str(workdir / "tiny.yaml"), "--vae_name_or_path", str(workdir / "vae")]
    args += ["--dataset_name", str(workdir / "saved"), "--output_dir", str(output_dir), "--max_train_steps", "2"]
    args += ["--train_batch_size", "2", "--gradient_accumulation_steps", "2", "--checkpointing_steps", "2"]
    launch("train_tokenbridge.py", args, 2, workdir)
    summaries = read_summaries(output_dir)
    assert [summary["num_processes"] for summary in summaries] == [2, 2]  # asserted from inside the processes
    assert summaries[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    for key in ("model_checksum", "ema_checksum", "history"):
        assert summaries[0][key] == summaries[1][key]
    # The global batch is 2 x 2 processes x 2 micro-batches = 8: lr = 1.6 x 8 / 256.
    assert summaries[0]["learning_rate"] == pytest.approx(0.05)
    assert summaries[0]["all_finite"] and summaries[0]["final_step"] == 2
    TokenBridgePipeline.from_pretrained(output_dir)


# ---------------------------------------------------------------------------------------------------- in-process


def test_weight_decay_only_on_matrices_and_embeddings():
    model = TokenBridgeTransformer2DModel(
        sample_size=2, latent_channels=4, num_classes=3, channel_order=[0, 1, 2, 3], **TINY_TOKENBRIDGE
    )
    decay, no_decay = parameter_groups(model, 0.02)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    decayed = {names[id(parameter)] for parameter in decay["params"]}
    assert {"unconditional_embedding", "mask_token", "encoder_pos_embed", "class_embedding.weight"} <= decayed
    assert {"channel_head.channel_embed", "channel_head.timestep_embed", "z_proj.weight"} <= decayed
    assert all(model.get_parameter(name).ndim >= 2 and not name.endswith(".bias") for name in decayed)
    not_decayed = {names[id(parameter)] for parameter in no_decay["params"]}
    assert {"z_proj.bias", "encoder_norm.weight"} <= not_decayed
    assert all(model.get_parameter(name).ndim == 1 for name in not_decayed)
    assert len(decayed) + len(not_decayed) == len(names)


def test_label_dropout_rate_and_unconditional_id():
    labels = torch.arange(20000) % 3
    dropped = drop_labels(labels, 0.1, 3, torch.Generator().manual_seed(0))
    changed = dropped != labels
    assert torch.all(dropped[changed] == 3) and torch.equal(dropped[~changed], labels[~changed])
    assert abs(changed.float().mean().item() - 0.1) < 0.006  # 4 standard deviations
    assert torch.equal(drop_labels(labels, 0.0, 3, torch.Generator()), labels)


def test_training_masks_mask_the_same_number_of_positions_in_every_row(monkeypatch):
    """Each row of a training mask hides exactly `ceil(L * ratio)` positions, the ratio in [mask_ratio_min, 1]: the
    transformer reads the count from the first row, so an uneven row would show targets to the encoder."""
    scheduler = MaskedARScheduler(num_tokens=16, mask_ratio_min=0.5, mask_ratio_std=0.25)
    counts_seen = set()
    for seed in range(40):
        batch_size = 1 + seed % 5
        generator = torch.Generator().manual_seed(seed)
        ratio = scheduler.sample_mask_ratio(torch.Generator().manual_seed(seed))  # the draw the mask starts with
        mask = training_mask(scheduler, batch_size, generator)
        assert mask.shape == (batch_size, 16) and mask.dtype == torch.bool
        assert mask.sum(dim=1).tolist() == [math.ceil(16 * ratio)] * batch_size
        assert 8 <= math.ceil(16 * ratio) <= 16
        counts_seen.add(math.ceil(16 * ratio))
    assert len(counts_seen) > 3  # the ratio varies between batches, not between rows
    uneven = torch.zeros(3, 16, dtype=torch.bool)
    uneven[0, :12], uneven[1, :12], uneven[2, :10] = True, True, True
    monkeypatch.setattr(scheduler, "sample_training_mask", lambda batch_size, generator: uneven)
    with pytest.raises(ValueError, match=r"same number of positions.*\[12, 12, 10\]"):
        training_mask(scheduler, 3, torch.Generator())
    monkeypatch.setattr(
        scheduler, "sample_training_mask", lambda batch_size, generator: uneven[:, :0].new_zeros(3, 16)
    )
    with pytest.raises(ValueError, match="at least one position"):
        training_mask(scheduler, 3, torch.Generator())


def test_learning_rate_rule_and_config_checks():
    args = TokenBridgeTrainingArguments(train_batch_size=64, base_learning_rate=5e-5)
    assert effective_learning_rate(args, 32) == pytest.approx(4e-4)  # the original's L run: 2048 images per step
    assert effective_learning_rate(TokenBridgeTrainingArguments(base_learning_rate=None, learning_rate=0.1), 8) == 0.1
    with pytest.raises(ValueError, match="latents_dir"):
        TokenBridgeModelArguments()


@pytest.mark.parametrize(
    "preset, size, num_parameters",
    [("imagenet256_tokenbridge_L.yaml", "L", 486_889_472), ("imagenet256_tokenbridge_H.yaml", "H", 910_040_576)],
)
def test_imagenet_presets_build_the_released_sizes(preset, size, num_parameters):
    from helpers.scripts import REPOSITORY_ROOT

    from tokenset_diffusers.tokenbridge.transformer_tokenbridge import TOKENBRIDGE_PRESETS
    from training.train_tokenbridge import parse_args

    _, model_args, args = parse_args(["--config", str(REPOSITORY_ROOT / "training" / "configs" / preset)])
    assert all(getattr(model_args, name) == value for name, value in TOKENBRIDGE_PRESETS[size].items())
    with torch.device("meta"):
        model = model_args.build_transformer(sample_size=16, latent_channels=16, num_classes=1000)
    assert sum(parameter.numel() for parameter in model.parameters()) == num_parameters
    # the original's recipe: lr = 5e-5 x 2048 / 256 on 32 processes x 64, (0.9, 0.95), 0.02, clipping 3, EMA 0.9999
    assert effective_learning_rate(args, 32) == pytest.approx(4e-4)
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay, args.max_grad_norm) == (0.9, 0.95, 0.02, 3.0)
    assert args.ema_decay == 0.9999 and model_args.label_dropout_prob == 0.1

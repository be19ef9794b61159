"""In-process tests of the training building blocks: configuration, presets, data, batching, EMA, randomness,
checkpoint bookkeeping, the discriminator's losses and the digits dataset."""

import dataclasses
import inspect
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from helpers.scripts import REPOSITORY_ROOT

from tokenset_diffusers.image_processing import preprocess_images
from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler
from tokenset_diffusers.tokenset.transformer_tokenset import TRANSFORMER_PRESETS
from tokenset_diffusers.utils.testing_utils import CLASS_NAMES, make_image_folder, make_saved_dataset
from training.checkpointing import list_checkpoints, resolve_checkpoint
from training.config import RunArguments, parse_config
from training.data import (
    DataArguments,
    DistributedBatchSampler,
    ImageExamples,
    StreamingImageExamples,
    load_split,
    random_horizontal_flip,
    resolve_source,
)
from training.discriminator import (
    PatchGANDiscriminator,
    adaptive_generator_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from training.image_losses import build_perceptual_loss, reconstruction_metrics
from training.prepare_digits import build_digits_dataset
from training.train_generator import (
    GeneratorModelArguments,
    GeneratorTrainingArguments,
    batch_token_ids,
)
from training.train_generator import parse_args as parse_generator_args
from training.train_tokenizer import TokenizerModelArguments, TokenizerTrainingArguments
from training.train_tokenizer import parse_args as parse_tokenizer_args
from training.training_utils import ExponentialMovingAverage, derived_seed, step_generator


CONFIGS = REPOSITORY_ROOT / "training" / "configs"


# --------------------------------------------------------------------------------------------------- configuration


def test_yaml_gives_defaults_and_command_line_wins(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "max_train_steps: 7\nlearning_rate: 3e-4\nreconstruction_loss: l1\npixel_decoder_channel_mult: [1, 2]\n"
        "max_grad_norm: null\nshuffle_tokens: false\n"
    )
    data_args, model_args, args = parse_tokenizer_args(["--config", str(preset), "--max_train_steps", "9"])
    assert args.max_train_steps == 9  # the command line wins
    assert args.learning_rate == 3e-4  # YAML's "3e-4" (a string for YAML 1.1) converted by the field's type
    assert args.reconstruction_loss == "l1" and args.max_grad_norm is None and args.shuffle_tokens is False
    assert model_args.pixel_decoder_channel_mult == [1, 2]
    assert data_args.image_column == "image"  # untouched defaults stay
    _, _, args = parse_tokenizer_args(["--config", str(preset), "--shuffle_tokens", "--max_grad_norm", "0.5"])
    assert args.shuffle_tokens is True and args.max_grad_norm == 0.5


def test_bad_configuration_fails_loudly(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("max_train_step: 7\n")
    with pytest.raises(ValueError, match="unknown keys \\['max_train_step'\\]"):
        parse_tokenizer_args(["--config", str(unknown)])
    bad_choice = tmp_path / "bad_choice.yaml"
    bad_choice.write_text("reconstruction_loss: l3\n")
    with pytest.raises(ValueError, match="`reconstruction_loss` must be one of \\['l1', 'l2'\\], got 'l3'"):
        parse_tokenizer_args(["--config", str(bad_choice)])
    with pytest.raises(SystemExit):  # argparse rejects a bad choice on the command line
        parse_tokenizer_args(["--mixed_precision", "fp8"])
    with pytest.raises(ValueError, match="hub_model_id"):
        RunArguments(push_to_hub=True)
    with pytest.raises(ValueError, match="ema_decay"):
        RunArguments(ema_decay=1.0)
    with pytest.raises(ValueError, match="train_batch_size"):
        RunArguments(train_batch_size=0)
    with pytest.raises(ValueError, match="pretokenized_dataset"):
        GeneratorModelArguments()
    with pytest.raises(ValueError, match="lpips"):  # not installed here
        build_perceptual_loss(TokenizerTrainingArguments(perceptual_weight=0.1))
    assert build_perceptual_loss(TokenizerTrainingArguments()) is None


def test_numbers_are_checked_and_named(tmp_path, capsys):
    """Fractional step counts, strings, NaN and infinity where a setting needs a number, and seeds outside what the
    seeding accepts are refused, naming the setting, whether they come from YAML, the command line or Python."""
    preset = tmp_path / "preset.yaml"
    for text, message in [
        ("max_train_steps: 2.5\n", "`max_train_steps` must be a whole number, got 2.5"),
        ("learning_rate: .nan\n", "`learning_rate` must be a finite number, got nan"),
        ("adam_beta1: .inf\n", "`adam_beta1` must be a finite number, got inf"),
        ("pixel_decoder_channel_mult: [1, two]\n", "`pixel_decoder_channel_mult\\[1\\]` must be a whole number"),
        ("seed: 18446744073709551616\n", "`seed` must be in \\[0, 2\\*\\*32\\), got 18446744073709551616"),
    ]:
        preset.write_text(text)
        with pytest.raises(ValueError, match=message):
            parse_tokenizer_args(["--config", str(preset)])
    for flags, message in [
        (["--learning_rate", "nan"], "`learning_rate` must be a finite number"),
        (["--max_grad_norm", "inf"], "`max_grad_norm` must be a finite number"),
        (["--seed", str(2**64)], "`seed` must be in"),
        (["--seed", "-1"], "`seed` must be in"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_tokenizer_args(flags)
    with pytest.raises(SystemExit):  # argparse refuses it, naming the flag
        parse_tokenizer_args(["--max_train_steps", "2.5"])
    assert "argument --max_train_steps/--max-train-steps: invalid int value: '2.5'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`learning_rate` must be a number, got '1e-4'"):
        RunArguments(learning_rate="1e-4")
    with pytest.raises(ValueError, match="`max_train_steps` must be a whole number, got '10'"):
        RunArguments(max_train_steps="10")
    with pytest.raises(ValueError, match="`use_cpu` must be true or false"):
        RunArguments(use_cpu="no")
    preset.write_text("max_train_steps: 1000.0\nseed: 4294967295\n")
    _, _, args = parse_tokenizer_args(["--config", str(preset)])
    assert args.max_train_steps == 1000 and isinstance(args.max_train_steps, int) and args.seed == 2**32 - 1


@pytest.mark.parametrize(
    "preset", sorted(path.name for path in (REPOSITORY_ROOT / "training" / "configs").glob("*.yaml"))
)
def test_no_preset_or_default_puts_nan_into_a_config(preset):
    """Every setting a run records (trackers, model configs built from the arguments) is finite, for every preset."""
    import importlib
    import math
    import re

    from training.config import flat_config

    script = next(name for name in ("generator", "tokenbridge", "tokenizer", "vae", "pretokenize") if name in preset)
    module = importlib.import_module(f"training.{'pretokenize' if script == 'pretokenize' else 'train_' + script}")
    if script == "pretokenize":
        argument_types = (module.DataArguments, module.PretokenizeArguments)
    else:
        hooks = [
            value for value in vars(module).values() if getattr(value, "script", "") == f"training/train_{script}.py"
        ]
        argument_types = hooks[0].argument_types
    config = flat_config(
        *parse_config(argument_types, ["--config", str(REPOSITORY_ROOT / "training" / "configs" / preset)])
    )
    numbers = [value for value in config.values() if isinstance(value, float)]
    assert all(math.isfinite(value) for value in numbers) and (numbers or script == "pretokenize")
    lists = [value for value in config.values() if isinstance(value, str) and value.startswith("[")]
    assert not any(re.search(r"\b(nan|inf)\b", value.lower()) for value in lists)


def test_documented_defaults_are_the_library_defaults():
    # The tokenizer's architecture defaults are TokenSetVQVAEConfig's (the released model).
    config = TokenSetVQVAEConfig()
    for name, value in dataclasses.asdict(TokenizerModelArguments()).items():
        assert getattr(config, name) == value, name
    # The generator's size defaults are the paper's S model, its scheduler defaults FSDDScheduler's.
    model_args = GeneratorModelArguments(pretokenized_dataset="unused")
    for name, value in TRANSFORMER_PRESETS["S"].items():
        assert getattr(model_args, name) == value, name
    scheduler_config = FSDDScheduler().config
    built = model_args.build_scheduler(scheduler_config.codebook_size, scheduler_config.num_tokens).config
    public = lambda config: {key: value for key, value in config.items() if not key.startswith("_")}  # noqa: E731
    assert public(built) == public(scheduler_config)
    # The paper's optimisation settings.
    tokenizer_args, generator_args = TokenizerTrainingArguments(), GeneratorTrainingArguments()
    assert (tokenizer_args.learning_rate, tokenizer_args.weight_decay, tokenizer_args.ema_decay) == (1e-4, 1e-4, 0.999)
    assert (tokenizer_args.max_grad_norm, tokenizer_args.lr_scheduler) == (1.0, "cosine")
    assert (generator_args.learning_rate, generator_args.ema_decay, generator_args.lr_scheduler) == (
        1e-4,
        0.9999,
        "constant",
    )


def training_scripts() -> list:
    from training.train_generator import GeneratorTraining
    from training.train_tokenbridge import TokenBridgeTraining
    from training.train_tokenizer import TokenizerTraining
    from training.train_vae import VAETraining

    return [TokenizerTraining, GeneratorTraining, VAETraining, TokenBridgeTraining]


def test_every_flag_means_the_same_in_every_training_script():
    """The four scripts read the same `DataArguments` and subclass `RunArguments`: a flag they share has one type,
    every flag has a help text, and the same bad value is refused by every script."""
    import typing

    types_by_name = {}
    for hooks in training_scripts():
        data_type, model_type, args_type = hooks.argument_types
        assert data_type is DataArguments and issubclass(args_type, RunArguments)
        for argument_type in hooks.argument_types:
            hints = typing.get_type_hints(argument_type)
            for field in dataclasses.fields(argument_type):
                assert field.metadata.get("help"), f"{argument_type.__name__}.{field.name} has no help text"
                if argument_type is args_type:
                    types_by_name.setdefault(field.name, set()).add(str(hints[field.name]))
        bad_values = {
            "max_train_steps": 0,
            "train_batch_size": 0,
            "learning_rate": -1.0,
            "lr_warmup_steps": -1,
            "ema_decay": 1.0,
            "lr_scheduler": "linear",
            "logging_steps": 0,
            "checkpoints_total_limit": 0,
            "hub_model_id": None,
        }
        for name, value in bad_values.items():
            overrides = {name: value, "push_to_hub": name == "hub_model_id"}
            with pytest.raises(ValueError, match=f"`{name}`"):
                args_type(**overrides)
        assert args_type().random_flip is True
    assert all(len(types) == 1 for types in types_by_name.values()), types_by_name
    for hooks in training_scripts()[::2]:  # the tokenizer and the VAE evaluate and train a discriminator
        args_type = hooks.argument_types[2]
        for name, value in {"eval_steps": 0, "perceptual_weight": -0.5, "discriminator_learning_rate": 0.0}.items():
            with pytest.raises(ValueError, match=f"`{name}`"):
                args_type(**{name: value})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_preset_parses(path):
    if "tokenizer" in path.name:
        _, model_args, _ = parse_tokenizer_args(["--config", str(path)])
        model_args.to_config()  # a consistent architecture
    elif "generator" in path.name:
        parse_generator_args(["--config", str(path)])
    elif "tokenbridge" in path.name:
        from training.train_tokenbridge import parse_args

        parse_args(["--config", str(path)])
    elif "vae" in path.name:
        from training.train_vae import parse_args

        _, model_args, _ = parse_args(["--config", str(path)])
        with torch.device("meta"):
            model_args.build_model()  # a consistent architecture
    else:
        from training.pretokenize import DataArguments as PretokenizeData
        from training.pretokenize import PretokenizeArguments

        parse_config((PretokenizeData, PretokenizeArguments), ["--config", str(path)])


@pytest.mark.parametrize("size", ["S", "B"])
def test_imagenet_generator_presets_are_the_papers(size):
    _, model_args, args = parse_generator_args(["--config", str(CONFIGS / f"imagenet256_generator_{size}.yaml")])
    for name, value in TRANSFORMER_PRESETS[size].items():
        assert getattr(model_args, name) == value
    assert args.train_batch_size * 8 * args.gradient_accumulation_steps == 256  # on 8 processes
    assert (args.learning_rate, args.ema_decay, args.weight_decay) == (1e-4, 0.9999, 0.01)
    assert model_args.default_guidance_scale == [4.0, 50.0, 55.0]


def test_imagenet_tokenizer_preset_is_the_released_architecture():
    _, model_args, args = parse_tokenizer_args(["--config", str(CONFIGS / "imagenet256_tokenizer.yaml")])
    assert model_args.to_config().to_dict() == TokenSetVQVAEConfig().to_dict()
    assert (args.max_train_steps, args.decoder_only_start_step, args.train_batch_size * 8) == (1_000_000, 500_000, 256)


# ---------------------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"), {"train": 6, "validation": 3})


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory):
    return make_saved_dataset(tmp_path_factory.mktemp("saved") / "dataset", {"train": 5})


def test_sources_are_recognised_and_loaded(image_folder, saved_dataset):
    assert resolve_source(DataArguments(dataset_name="ILSVRC/imagenet-1k")) == "hub"
    assert resolve_source(DataArguments(dataset_name=str(image_folder))) == "imagefolder"
    assert resolve_source(DataArguments(dataset_name=str(saved_dataset))) == "disk"
    folder = load_split(DataArguments(dataset_name=str(image_folder)), "validation")
    assert len(folder) == 3 and folder.features["label"].names == sorted(CLASS_NAMES)
    saved = load_split(DataArguments(dataset_name=str(saved_dataset)), "train")
    assert len(saved) == 5
    with pytest.raises(ValueError, match="available splits: \\['train'\\]"):
        load_split(DataArguments(dataset_name=str(saved_dataset)), "validation")
    with pytest.raises(ValueError, match="Column 'picture'"):
        load_split(DataArguments(dataset_name=str(saved_dataset), image_column="picture"), "train")


def test_examples_are_centre_cropped_images(saved_dataset):
    dataset = load_split(DataArguments(dataset_name=str(saved_dataset)), "train")
    examples = ImageExamples(dataset, 16, "image", "label")
    example = examples[3]
    torch.testing.assert_close(example["pixel_values"], preprocess_images(dataset[3]["image"], 16)[0])
    assert example["label"].item() == dataset[3]["label"] and example["pixel_values"].shape == (3, 16, 16)


def test_streamed_examples_repeat_epoch_after_epoch(image_folder):
    args = DataArguments(dataset_name=str(image_folder), streaming=True)
    stream = load_split(args, "train").shuffle(seed=0, buffer_size=4)
    examples = list(islice(iter(StreamingImageExamples(stream, 16, "image", "label")), 13))
    assert len(examples) == 13  # more than the 6 images: it goes on into the next epochs
    first_epoch = torch.stack([example["pixel_values"] for example in examples[:6]])
    assert len({tuple(image.flatten()[:8].tolist()) for image in first_epoch}) == 6  # each image once per epoch


def test_batches_partition_each_epoch_across_processes():
    samplers = [DistributedBatchSampler(23, 3, 2, rank, seed=5) for rank in range(2)]
    assert samplers[0].batches_per_epoch == 3  # 23 // (3 x 2); the incomplete remainder is dropped
    epochs = [list(islice(iter(sampler), 6)) for sampler in samplers]  # two epochs per process
    for epoch in range(2):
        seen = [index for rank in range(2) for batch in epochs[rank][3 * epoch : 3 * epoch + 3] for index in batch]
        assert len(seen) == len(set(seen)) == 18  # disjoint across processes, no repeats within an epoch
    assert epochs[0][:3] != epochs[0][3:]  # a new order every epoch
    resumed = list(islice(iter(DistributedBatchSampler(23, 3, 2, 1, seed=5, start_batch=4)), 2))
    assert resumed == epochs[1][4:6]  # resuming at batch 4 continues the same sequence
    assert list(islice(iter(DistributedBatchSampler(23, 3, 2, 0, seed=6)), 3)) != epochs[0][:3]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DistributedBatchSampler(5, 3, 2, 0, seed=0)


def test_random_flip_mirrors_about_half_the_images():
    images = torch.randn(64, 3, 4, 5)
    flipped = random_horizontal_flip(images, torch.Generator().manual_seed(0))
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    unchanged = (flipped == images).flatten(1).all(1)
    assert bool((mirrored ^ unchanged).all())  # every image is itself or its mirror
    assert 16 < int(mirrored.sum()) < 48
    torch.testing.assert_close(flipped, random_horizontal_flip(images, torch.Generator().manual_seed(0)))


def test_pretokenized_batches_pick_one_of_the_two_token_sets():
    token_ids = torch.arange(64 * 2 * 4).view(64, 2, 4)
    cpu = SimpleNamespace(device=torch.device("cpu"))  # only the accelerator's device is used on this path
    chosen = batch_token_ids({"token_ids": token_ids}, None, torch.Generator().manual_seed(0), cpu)
    picked_first = (chosen == token_ids[:, 0]).all(1)
    assert bool((picked_first | (chosen == token_ids[:, 1]).all(1)).all())
    assert 16 < int(picked_first.sum()) < 48


# --------------------------------------------------------------------------------------------- EMA and randomness


def test_ema_follows_the_formula_and_round_trips():
    model = torch.nn.Linear(3, 2)
    start = [parameter.detach().clone() for parameter in model.parameters()]
    ema = ExponentialMovingAverage(model, decay=0.75)
    expected = start
    for _ in range(3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        ema.update(model)
        expected = [0.75 * old + 0.25 * new.detach() for old, new in zip(expected, model.parameters())]
    for shadow, value in zip(ema.shadow.parameters(), expected):
        torch.testing.assert_close(shadow, value)
    assert not any(parameter.requires_grad for parameter in ema.shadow.parameters())
    restored = ExponentialMovingAverage(torch.nn.Linear(3, 2), decay=0.75)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 3
    torch.testing.assert_close(restored.shadow.weight, ema.shadow.weight)


def test_step_generators_depend_only_on_seed_process_and_step():
    draw = lambda *key: torch.rand(4, generator=step_generator(*key, device=torch.device("cpu")))  # noqa: E731
    torch.testing.assert_close(draw(0, 1, 7, 0), draw(0, 1, 7, 0))
    for other in [(1, 1, 7, 0), (0, 0, 7, 0), (0, 1, 8, 0), (0, 1, 7, 1)]:
        assert not torch.equal(draw(0, 1, 7, 0), draw(*other))
    assert derived_seed("a", 1) == derived_seed("a", 1) < 2**63


# --------------------------------------------------------------------------------------------------- checkpoints


def test_resolve_checkpoint_picks_the_newest_complete_one(tmp_path):
    assert resolve_checkpoint(None, str(tmp_path)) is None
    assert resolve_checkpoint("latest", str(tmp_path)) is None  # nothing yet: a fresh start
    for name in ["checkpoint-10", "checkpoint-9", ".partial-checkpoint-20", "checkpoint-x"]:
        (tmp_path / name).mkdir()
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [9, 10]
    assert resolve_checkpoint("latest", str(tmp_path)) == tmp_path / "checkpoint-10"
    assert resolve_checkpoint(str(tmp_path / "checkpoint-9"), str(tmp_path)) == tmp_path / "checkpoint-9"
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        resolve_checkpoint(str(tmp_path / "checkpoint-11"), str(tmp_path))


def test_final_outputs_replace_the_previous_ones_whole(tmp_path):
    """`move_into_place` puts every entry of the temporary folder into the output folder: a folder replaces the old
    one whole (no stale file survives in it), files are replaced, other entries are kept, nothing hidden is left."""
    from training.output_folders import PARTIAL_FINAL_NAME, move_into_place

    output_dir = tmp_path / "run"
    (output_dir / "transformer").mkdir(parents=True)
    (output_dir / "transformer" / "old_weights.safetensors").write_text("old")
    (output_dir / "model_index.json").write_text("old")
    (output_dir / "checkpoint-4").mkdir()
    new = output_dir / PARTIAL_FINAL_NAME
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


# ------------------------------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("num_layers, image_size", [(1, 16), (2, 32), (3, 64), (3, 256)])
def test_discriminator_output_size(num_layers, image_size):
    discriminator = PatchGANDiscriminator(base_channels=8, num_layers=num_layers, norm_num_groups=4)
    logits = discriminator(torch.randn(2, 3, image_size, image_size))
    size = discriminator.output_size(image_size)
    assert logits.shape == (2, 1, size, size)
    with pytest.raises(ValueError, match="norm_num_groups"):
        PatchGANDiscriminator(base_channels=6, num_layers=2, norm_num_groups=8)


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # real: relu(1 - x) = [0, 0.5, 2] -> mean 5/6; fake: relu(1 + x) = [0, 1, 2] -> mean 1
    torch.testing.assert_close(hinge_discriminator_loss(real, fake), torch.tensor(0.5 * (5 / 6 + 1)))
    torch.testing.assert_close(hinge_generator_loss(fake), torch.tensor(1 / 3))


def test_adaptive_weight_is_the_gradient_norm_ratio():
    weight = torch.randn(4, 3, requires_grad=True)
    inputs = torch.randn(5, 3)
    outputs = inputs @ weight.T  # (5, 4)
    reconstruction_loss, generator_loss = outputs.pow(2).mean(), -outputs.mean() * 3
    adaptive = adaptive_generator_weight(reconstruction_loss, generator_loss, weight)
    # The same gradients by another route: closed forms of d/dW of both losses.
    reconstruction_grad = 2 * outputs.detach().T @ inputs / outputs.numel()
    generator_grad = -3 * torch.ones(5, 4).T @ inputs / outputs.numel()
    expected = reconstruction_grad.norm() / (generator_grad.norm() + 1e-4)
    torch.testing.assert_close(adaptive, expected)
    assert not adaptive.requires_grad
    assert adaptive_generator_weight(reconstruction_loss, generator_loss * 1e-12, weight, max_weight=10.0) == 10.0


def test_reconstruction_metrics():
    target = torch.zeros(2, 3, 4, 4)
    reconstruction = torch.stack([torch.full((3, 4, 4), 0.2), torch.full((3, 4, 4), 5.0)])  # the second is clipped
    psnr, l1 = reconstruction_metrics(reconstruction, target)
    # On the [0, 1] scale the errors are 0.1 and 0.5: MSE 0.01 -> 20 dB, MSE 0.25 -> 6.02 dB.
    torch.testing.assert_close(psnr, torch.tensor([20.0, 10 * np.log10(4.0)], dtype=torch.float32))
    torch.testing.assert_close(l1, torch.tensor([0.1, 0.5]))


# ------------------------------------------------------------------------------------------------------- digits


def test_digits_dataset_is_sklearn_digits_upscaled():
    from sklearn.datasets import load_digits

    digits = load_digits()
    dataset = build_digits_dataset(image_size=32, resample="nearest", num_train=1500, seed=3)
    assert (len(dataset["train"]), len(dataset["test"])) == (1500, 297)
    assert dataset["train"].features["label"].names == [str(i) for i in range(10)]
    labels = np.array(list(dataset["train"]["label"]) + list(dataset["test"]["label"]))
    assert np.array_equal(np.bincount(labels), np.bincount(digits.target))  # every digit exactly once
    order = np.random.default_rng(3).permutation(len(digits.images))
    for split, offset in (("train", 0), ("test", 1500)):
        image = dataset[split][5]["image"]
        assert image.mode == "RGB" and image.size == (32, 32)
        # Nearest upscaling by 4: each 4x4 block is one original pixel, gray level g -> round(255 g / 16).
        expected = np.rint(digits.images[order[offset + 5]] * 255 / 16).astype(np.uint8)
        pixels = np.asarray(image)
        assert np.array_equal(pixels[::4, ::4, 0], expected) and np.array_equal(pixels[..., 0], pixels[..., 2])
        assert dataset[split][5]["label"] == digits.target[order[offset + 5]]
    bilinear = build_digits_dataset(image_size=20, resample="bilinear", num_train=1000, seed=3)
    assert bilinear["train"][0]["image"].size == (20, 20) and len(bilinear["test"]) == 797


def test_digits_presets_fit_the_digits_data():
    _, model_args, _ = parse_tokenizer_args(["--config", str(CONFIGS / "digits_tokenizer.yaml")])
    config = model_args.to_config()
    data_image_size = inspect.signature(build_digits_dataset).parameters["image_size"].default
    assert config.image_size == data_image_size and 64 <= config.codebook_size <= 256 and 16 <= config.num_tokens <= 64
    with open(CONFIGS / "digits_generator.yaml") as handle:
        generator = yaml.safe_load(handle)
    assert generator["tokenizer_name_or_path"].startswith(
        yaml.safe_load((CONFIGS / "digits_tokenizer.yaml").read_text())["output_dir"]
    )
    assert Path(generator["pretokenized_dataset"]).name == "digits_tokens"

"""The conversion script and the command-line entry points, run end to end on tiny folders."""

import argparse
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from helpers.scripts import load_script

from tokenset_diffusers import TokenSetPipeline, TokenSetTransformer1DModel, TokenSetVQVAE


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


convert_script = load_script("conversion/convert_tokenset_to_diffusers.py")
generate_script = load_script("pipelines/generate.py")
reconstruct_script = load_script("pipelines/reconstruct.py")


@pytest.fixture(scope="module")
def original_checkpoints(tmp_path_factory, tokenizer_original_state_dict, dit_original_state_dict):
    """The fixtures' weights saved the way the released .pth files are."""
    folder = tmp_path_factory.mktemp("original")
    torch.save(dict(tokenizer_original_state_dict), folder / "set_tokenizer.pth")
    args = argparse.Namespace(model="DiT-1D", num_classes=10, image_size=32)
    torch.save({"ema": dict(dit_original_state_dict), "model": dict(dit_original_state_dict), "args": args},
               folder / "fsdd_tiny.pth")  # fmt: skip
    labels = {str(i): name for i, name in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven",
                                                     "eight", "nine"])}  # fmt: skip
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


@pytest.fixture(scope="module")
def converted_pipeline(original_checkpoints, tmp_path_factory):
    output = tmp_path_factory.mktemp("converted")
    convert_script.main(
        [
            "--tokenizer_checkpoint", str(original_checkpoints / "set_tokenizer.pth"),
            "--generator_checkpoint", str(original_checkpoints / "fsdd_tiny.pth"),
            "--tokenizer_num_heads", "4",
            "--generator_num_heads", "4",
            "--id2label", str(original_checkpoints / "labels.json"),
            "--output_dir", str(output),
        ]
    )  # fmt: skip
    return output


def test_conversion_writes_a_faithful_pipeline(converted_pipeline, dit_fixture, tokenizer_fixture):
    index = json.loads((converted_pipeline / "model_index.json").read_text())
    assert index["default_guidance_scale"] == [4.0, 50.0, 55.0]
    assert index["id2label"]["7"] == "seven"
    assert (converted_pipeline / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (converted_pipeline / "image_tokenizer" / "model.safetensors").is_file()
    pipeline = TokenSetPipeline.from_pretrained(converted_pipeline)
    # The released sampling settings are what the scheduler was saved with.
    assert pipeline.scheduler.config.top_p == 0.8 and pipeline.scheduler.config.adjust_start == 0.65
    # The original's numbers, through the converted folder.
    probs = pipeline.guided_probabilities(dit_fixture["counts"], dit_fixture["t_t_mid"], dit_fixture["y"], [4, 50, 55])
    torch.testing.assert_close(probs, dit_fixture["cfg_interval_t_mid"], atol=1e-5, rtol=0)
    encoded = pipeline.image_tokenizer.encode(tokenizer_fixture["pixel_values"])
    assert torch.equal(encoded.token_ids, tokenizer_fixture["token_ids"])
    reconstruction = pipeline.image_tokenizer.decode(tokenizer_fixture["token_ids"])
    # 5e-5: the pixel decoder amplifies float32 rounding (the fixture's own two decodes differ by 2e-5).
    torch.testing.assert_close(reconstruction, tokenizer_fixture["reconstruction"], atol=5e-5, rtol=0)


def test_conversion_of_single_checkpoints(original_checkpoints, tmp_path, dit_fixture):
    folder = convert_script.main(
        ["--generator_checkpoint", str(original_checkpoints / "fsdd_tiny.pth"), "--generator_key", "model",
         "--generator_num_heads", "4", "--output_dir", str(tmp_path)]
    )  # fmt: skip
    assert folder == tmp_path / "transformer"
    transformer = TokenSetTransformer1DModel.from_pretrained(folder)
    logits = transformer(dit_fixture["counts"], dit_fixture["t"], dit_fixture["y"]).logits
    torch.testing.assert_close(logits, dit_fixture["logits"], atol=1e-5, rtol=0)
    folder = convert_script.main(
        ["--tokenizer_checkpoint", str(original_checkpoints / "set_tokenizer.pth"), "--tokenizer_num_heads", "4",
         "--output_dir", str(tmp_path)]
    )  # fmt: skip
    assert folder == tmp_path / "image_tokenizer"
    assert TokenSetVQVAE.from_pretrained(folder).config.codebook_size == 64


def test_conversion_refuses_bad_arguments(original_checkpoints, tmp_path):
    with pytest.raises(SystemExit):
        convert_script.main(["--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        convert_script.main(["--tokenizer_checkpoint", str(tmp_path / "missing.pth"), "--output_dir", str(tmp_path)])
    (tmp_path / "five.json").write_text(json.dumps({str(i): str(i) for i in range(5)}))
    with pytest.raises(ValueError, match="5 classes"):
        convert_script.convert(
            tokenizer_checkpoint=str(original_checkpoints / "set_tokenizer.pth"),
            generator_checkpoint=str(original_checkpoints / "fsdd_tiny.pth"),
            tokenizer_num_heads=4,
            generator_num_heads=4,
            id2label=str(tmp_path / "five.json"),
            output_dir=str(tmp_path / "out"),
        )


def _assert_not_blank(image: PIL.Image.Image):
    array = np.asarray(image.convert("L"), dtype=np.float32)
    assert array.std() > 5, "image is blank"


def test_generate_cli_writes_a_labelled_grid(converted_pipeline, tmp_path):
    output = generate_script.main(
        ["--model", str(converted_pipeline), "--class_labels", "3", "seven", "--num_images_per_class", "2",
         "--num_inference_steps", "3", "--guidance_scale", "1.5", "--output", str(tmp_path / "grid.png")]
    )  # fmt: skip
    grid = PIL.Image.open(output)
    # 2 rows of 2 cells of at least 96 px, plus the label column.
    assert grid.width > 2 * 96 and grid.height >= 2 * 96
    _assert_not_blank(grid)


def test_generate_cli_writes_a_folder_and_is_reproducible(converted_pipeline, tmp_path):
    arguments = ["--model", str(converted_pipeline), "--class_labels", "1", "--num_images_per_class", "3",
                 "--num_inference_steps", "2", "--batch_size", "2", "--seed", "5"]  # fmt: skip
    first = generate_script.main(arguments + ["--output", str(tmp_path / "a")])
    second = generate_script.main(arguments + ["--batch_size", "3", "--output", str(tmp_path / "b")])
    names = sorted(p.name for p in first.iterdir())
    assert names == ["class0001_000.png", "class0001_001.png", "class0001_002.png"]
    for name in names:  # image i is seeded with seed + i, whatever the batch size
        a = np.asarray(PIL.Image.open(first / name))
        b = np.asarray(PIL.Image.open(second / name))
        assert a.shape == (32, 32, 3)
        np.testing.assert_array_equal(a, b)


def test_generate_cli_errors(converted_pipeline, tmp_path):
    for bad in (["--class_labels", "eleven"], ["--class_labels", "10"], ["--num_images_per_class", "0"]):
        with pytest.raises(SystemExit) as error:
            generate_script.main(["--model", str(converted_pipeline), "--output", str(tmp_path / "x.png"), *bad])
        assert error.value.code != 0


def test_reconstruct_cli_figure(converted_pipeline, tmp_path, tokenizer_fixture):
    paths = []
    for i, pixels in enumerate(tokenizer_fixture["pixel_values"][:2]):
        array = ((pixels.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        PIL.Image.fromarray(array).resize((48, 40)).save(tmp_path / f"image{i}.png")  # non-square: centre crop
        paths.append(str(tmp_path / f"image{i}.png"))
    output = reconstruct_script.main([*paths, "--model", str(converted_pipeline), "--output", str(tmp_path / "r.png")])
    figure = PIL.Image.open(output)
    assert figure.width > 6 * 96 and figure.height > 2 * 96  # 2 rows: input, 4 orders, histogram
    _assert_not_blank(figure)
    # Tokenizer-only folders work too.
    tokenizer_folder = converted_pipeline / "image_tokenizer"
    assert reconstruct_script.main([paths[0], "--model", str(tokenizer_folder), "--output", str(tmp_path / "s.png")])


def test_reconstructions_from_every_order_agree(converted_pipeline, tokenizer_fixture):
    image_tokenizer = TokenSetVQVAE.from_pretrained(converted_pipeline / "image_tokenizer")
    token_ids = image_tokenizer.encode(tokenizer_fixture["pixel_values"]).token_ids
    orders = reconstruct_script.token_orders(token_ids, torch.Generator().manual_seed(0))
    reference = image_tokenizer.decode(token_ids)
    for name, ids in orders.items():
        assert torch.equal(ids.sort(-1).values, token_ids.sort(-1).values), name
        torch.testing.assert_close(image_tokenizer.decode(ids), reference, atol=1e-4, rtol=0)


def test_reconstruct_cli_errors(tmp_path):
    with pytest.raises(SystemExit):
        reconstruct_script.main([str(tmp_path / "missing.png"), "--output", str(tmp_path / "r.png")])
    (tmp_path / "not_an_image.png").write_text("hello")
    with pytest.raises(SystemExit):
        reconstruct_script.main([str(tmp_path / "not_an_image.png"), "--model", str(tmp_path), "--output", "x.png"])


def test_scripts_show_help():
    for script in (convert_script, generate_script, reconstruct_script):
        with pytest.raises(SystemExit) as error:
            script.parse_args(["--help"])
        assert error.value.code == 0


def test_conversion_writes_a_model_card(converted_pipeline, original_checkpoints, tmp_path):
    from huggingface_hub import ModelCard

    card = ModelCard.load(converted_pipeline / "README.md")
    assert card.data.license == "mit" and card.data.library_name == "diffusers"
    folder = convert_script.convert(
        tokenizer_checkpoint=str(original_checkpoints / "set_tokenizer.pth"), tokenizer_num_heads=4,
        output_dir=str(tmp_path), repo_id="org/tiny-tokenizer",
    )  # fmt: skip
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and "org/tiny-tokenizer" in card.text


@pytest.mark.parametrize("suffix, image_format", [(".jpg", "JPEG"), (".webp", "WEBP"), (".png", "PNG")])
def test_generate_cli_image_suffix_writes_a_grid_in_that_format(converted_pipeline, tmp_path, suffix, image_format):
    output = generate_script.main(
        ["--model", str(converted_pipeline), "--class_labels", "1", "2", "--num_inference_steps", "2",
         "--output", str(tmp_path / f"grid{suffix}")]
    )  # fmt: skip
    assert output.is_file()
    with PIL.Image.open(output) as image:
        assert image.format == image_format
        _assert_not_blank(image)


def test_generate_cli_one_image_per_class_is_a_near_square_grid(converted_pipeline, tmp_path):
    """Ten classes, one image each: 4 columns x 3 rows of captioned cells, the images in class order."""
    output = generate_script.main(
        ["--model", str(converted_pipeline), "--num_inference_steps", "2", "--output", str(tmp_path / "all.png")]
    )
    grid = np.asarray(PIL.Image.open(output).convert("RGB"))
    pipeline = TokenSetPipeline.from_pretrained(converted_pipeline)
    pipeline.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(i) for i in range(10)]
    images = pipeline(list(range(10)), num_inference_steps=2, generator=generators).images
    cell = images[0].resize((96, 96), PIL.Image.NEAREST)  # 32 px upscaled by 3 to the 96 px minimum cell
    assert grid.shape[1] < grid.shape[0] * 1.5 and grid.shape[0] < grid.shape[1] * 1.5  # near square
    assert 4 * 96 < grid.shape[1] < 5 * 96 and 3 * 96 < grid.shape[0] < 4 * 96
    # The first image sits in the first cell, below its caption.
    expected = np.asarray(cell)
    found = any(np.array_equal(grid[top : top + 96, 4 : 4 + 96], expected) for top in range(0, grid.shape[0] - 96))
    assert found


def test_generate_help_parses_before_importing_torch_and_shows_every_default():
    import subprocess
    import sys

    script = (
        "import importlib.util, sys, contextlib, io;"
        "spec = importlib.util.spec_from_file_location('generate', 'pipelines/generate.py');"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module);"
        "module.parse_args(['--class_labels', '3', '7']);"
        "print(sorted({'torch', 'diffusers', 'tokenset_diffusers'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    parser_help = subprocess.run(
        [sys.executable, "pipelines/generate.py", "--help"], cwd=Path(__file__).parents[2], capture_output=True,
        text=True, timeout=120,
    ).stdout  # fmt: skip
    options = parser_help[parser_help.index("options:") :]
    flags = [line.split()[0] for line in options.splitlines() if line.strip().startswith("--")]
    assert len(flags) == 12  # every flag but --help
    for flag in flags:
        block = options[options.index(flag) :].split("\n  --")[0]
        assert "default" in block, flag

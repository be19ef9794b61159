"""`pipelines/edit_figure.py`: the README's TokenBridge editing figure, from the bundled model, against the
inpainting pipeline called directly."""

import numpy as np
import PIL.Image
import pytest
import torch
from helpers.scripts import load_script
from helpers.tokenbridge import single_thread  # noqa: F401 (autouse)

from tokenset_diffusers import TokenBridgeInpaintPipeline, TokenBridgePipeline, bundled_pipeline_path
from tokenset_diffusers.visualization import labelled_grid


figure_script = load_script("pipelines/edit_figure.py")


def test_figure_rows_are_the_image_its_mask_and_the_completions(tmp_path):
    output = tmp_path / "figure.png"
    written = figure_script.main(
        ["--output", str(output), "--source_class", "7", "--source_seed", "1", "--mask", "top half", "--classes",
         "7", "1", "--completions", "2", "--seed", "4"]
    )  # fmt: skip
    assert written == output and not list(tmp_path.glob("*.png.*")) and len(list(tmp_path.iterdir())) == 1
    plain = TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))
    plain.set_progress_bar_config(disable=True)
    image = plain(7, generator=torch.Generator().manual_seed(1)).images[0]
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4] = 255  # the top half: the top two rows of the 4 x 4 latent grid
    inpaint = TokenBridgeInpaintPipeline.from_pipe(plain)
    inpaint.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(4 + j) for j in (0, 1, 0, 1)]
    completions = inpaint(image, mask, [7, 7, 1, 1], generator=generators).images
    overlay = figure_script.mask_overlay(image, PIL.Image.fromarray(mask))
    expected = labelled_grid(
        [[image, overlay, *completions[:2]], [image, overlay, *completions[2:]]],
        row_labels=["7", "1"], column_labels=["image", "mask", "seed 4", "seed 5"],
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(output).convert("RGB")), np.asarray(expected))


def test_mask_overlay_tints_only_the_regenerated_region():
    image = PIL.Image.new("RGB", (8, 8), (10, 20, 30))
    mask = PIL.Image.fromarray(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((4, 4), dtype=np.uint8)))
    pixels = np.asarray(figure_script.mask_overlay(image, mask))
    assert (pixels[:4, 4:] == (10, 20, 30)).all() and (pixels[4:, :4] == (10, 20, 30)).all()
    assert (pixels[:4, :4] != (10, 20, 30)).any(axis=-1).all()


def test_bad_arguments_exit_with_a_message():
    with pytest.raises(SystemExit, match="Unknown class name"):
        figure_script.main(["--classes", "eleven", "--output", "/nonexistent/x.png"])
    with pytest.raises(SystemExit):
        figure_script.main(["--mask", "everything"])

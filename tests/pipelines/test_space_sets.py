"""The Space's "Image variations" and "Set interpolation" tabs (pipelines/space/tabs_sets.py): served around a tiny
pipeline, driven through gradio_client, and checked against the library called directly."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the Space needs gradio (the `demo` extra)")
gradio_client = pytest.importorskip("gradio_client", reason="the Space tests need gradio_client (the `test` extra)")

from conversion.tokenizer_conversion import convert_tokenizer  # noqa: E402
from conversion.transformer_conversion import convert_transformer  # noqa: E402
from tokenset_diffusers import (  # noqa: E402
    FSDDScheduler,
    TokenSetImg2ImgPipeline,
    TokenSetPipeline,
    interpolate_images,
    preprocess_images,
)
from tokenset_diffusers.visualization import labelled_grid  # noqa: E402


ROOT = Path(__file__).resolve().parents[2]
SPACE_DIR = ROOT / "pipelines" / "space"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"tokenset_space_{name}", SPACE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = _load("app")
tabs = _load("tabs_sets")
choosers = sys.modules["pipelines.space.class_choosers"]  # the module the tabs import
EXAMPLES = [app.EXAMPLES_DIR / "digit_3.png", app.EXAMPLES_DIR / "digit_7.png"]


@pytest.fixture(scope="module")
def pipeline(tokenizer_original_state_dict, dit_original_state_dict):
    image_tokenizer = convert_tokenizer(tokenizer_original_state_dict, num_attention_heads=4).eval()
    transformer = convert_transformer(dit_original_state_dict, num_attention_heads=4).eval()
    names = dict(enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    return TokenSetPipeline(
        image_tokenizer, transformer, FSDDScheduler(codebook_size=64, num_tokens=16), id2label=names
    )


@pytest.fixture(scope="module")
def served(pipeline):
    demo = app.build_demo(pipeline, max_images=4, max_steps=8)
    _, url, _ = demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False)
    try:
        yield gradio_client.Client(url, verbose=False)
    finally:
        demo.close()


def _image(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def test_class_choices_put_no_class_first(pipeline):
    options = choosers.class_choices(pipeline, no_class=True)
    assert options[0] == ("no class (unconditional)", choosers.NO_CLASS)
    assert options[4] == ("3: three", 3) and len(options) == 11


def test_class_choices_caption_as_the_other_tabs():
    """One caption for a class on every tab: the bundled digits (named "0" ... "9") read "3", not "3: 3"."""
    from tokenset_diffusers import bundled_pipeline_path

    digits = TokenSetPipeline.from_pretrained(bundled_pipeline_path("digits"))
    options = choosers.class_choices(digits, no_class=True)
    assert options[1:] == [(app.class_name(digits, i), i) for i in range(10)] == choosers.class_choices(digits)
    assert options[4] == ("3", 3)


def test_variations_tab_returns_the_pipelines_variations(served, pipeline):
    figure_path, info = served.predict(gradio_client.handle_file(str(EXAMPLES[0])), 8, 0.5, 6, 11, 2, api_name="/vary")
    variations = TokenSetImg2ImgPipeline.from_pipe(pipeline)
    variations.set_progress_bar_config(disable=True)
    pixel_values = preprocess_images(PIL.Image.open(EXAMPLES[0]), 32)
    generators = [torch.Generator().manual_seed(11 + i) for i in range(2)]
    images = variations(pixel_values, [8, 8], strength=0.5, num_inference_steps=6, generator=generators).images
    reconstruction = variations(pixel_values, None, strength=0.0).images[0]
    crop = PIL.Image.fromarray(((pixel_values[0].permute(1, 2, 0) / 2 + 0.5) * 255).round().byte().numpy())
    columns = ["input (cropped)", "reconstruction", "seed 11", "seed 12"]
    expected = labelled_grid([[crop, reconstruction, *images]], column_labels=columns, min_cell_size=128)
    np.testing.assert_array_equal(_image(figure_path), np.asarray(expected))
    assert "2 variations, the last 3 of 6 steps" in info


def test_interpolation_tab_returns_the_strip(served, pipeline):
    figure_path, info = served.predict(
        *(gradio_client.handle_file(str(path)) for path in EXAMPLES),
        4,
        0.0,
        choosers.NO_CLASS,
        4,
        0,
        api_name="/interpolate",
    )
    images = [PIL.Image.open(path).convert("RGB") for path in EXAMPLES]
    strip = interpolate_images(pipeline, images[0], images[1], num_points=4)
    columns = [f"w = {w:.2f}" for w in strip.weights.tolist()]
    expected = labelled_grid([strip.images], row_labels=["set mean"], column_labels=columns, min_cell_size=96)
    np.testing.assert_array_equal(_image(figure_path), np.asarray(expected))
    assert info.startswith("4 points; the two token sets share")
    # With re-denoising: a second row.
    figure_path, _ = served.predict(
        *(gradio_client.handle_file(str(path)) for path in EXAMPLES), 4, 0.5, 2, 4, 0, api_name="/interpolate"
    )
    assert _image(figure_path).shape[0] > np.asarray(expected).shape[0] + 90


@pytest.mark.parametrize(
    ("api_name", "inputs", "message"),
    [
        ("/vary", (None, 1, 0.5, 4, 0, 1), "Upload an image"),
        ("/interpolate", (None, None, 4, 0.0, 1, 4, 0), "Upload two images"),
    ],
)
def test_tabs_explain_bad_inputs(served, api_name, inputs, message):
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        served.predict(*inputs, api_name=api_name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strength=1.5), "strength"),
        (dict(class_id=10), "class"),
        (dict(num_variations=0), "variations"),
        (dict(seed=-1), "seed"),
    ],
)
def test_variation_request_checks(pipeline, kwargs, message):
    call = (
        dict(
            image=PIL.Image.open(EXAMPLES[0]),
            class_id=1,
            strength=0.5,
            num_inference_steps=2,
            seed=0,
            num_variations=1,
        )
        | kwargs
    )
    with pytest.raises(ValueError, match=message):
        tabs.vary_image(TokenSetImg2ImgPipeline.from_pipe(pipeline), **call)


@pytest.mark.parametrize("api_name", ["/vary", "/interpolate"])
def test_tabs_refuse_uploads_that_are_not_images(served, tmp_path, api_name):
    """The tabs use the Space's upload check (as the tokenizer tab): a text file is refused before decoding."""
    notes = tmp_path / "notes.png"
    notes.write_text("a text file, not an image")
    upload = gradio_client.handle_file(str(notes))
    inputs = (upload, 1, 0.5, 4, 0, 1) if api_name == "/vary" else (upload, upload, 4, 0.0, 1, 4, 0)
    with pytest.raises(gradio_client.exceptions.AppError, match="not an image this demo can read"):
        served.predict(*inputs, api_name=api_name)

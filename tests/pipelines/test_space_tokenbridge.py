"""The demo's "TokenBridge" tab (`pipelines/space/tab_tokenbridge.py`): loading (bundled model by default), request
checks, the served API against the pipeline called directly, and a click in headless Chromium."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import gradio_client
import numpy as np
import PIL.Image
import pytest
import torch
from helpers.tokenbridge import single_thread, tiny_transformer, tiny_vae  # noqa: F401

from conversion.tokenizer_conversion import convert_tokenizer
from conversion.transformer_conversion import convert_transformer
from tokenset_diffusers import (
    FSDDScheduler,
    MaskedARScheduler,
    TokenBridgeInpaintPipeline,
    TokenBridgePipeline,
    TokenSetPipeline,
    mask_to_latent_grid,
    preprocess_masks,
)
from tokenset_diffusers.visualization import labelled_grid


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[2]
SPACE_DIR = ROOT / "pipelines" / "space"


NAMES = dict(enumerate(["nought", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = _load("tokenset_space_app_for_tokenbridge", SPACE_DIR / "app.py")
tab = sys.modules["pipelines.space.tab_tokenbridge"]  # the module app.py imports
edit_figure = sys.modules["pipelines.edit_figure"]  # the figure pieces the "Edit" tab imports


@pytest.fixture(scope="module")
def tokenbridge_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space_tokenbridge") / "tiny-tokenbridge"
    pipeline = TokenBridgePipeline(
        tiny_transformer(), tiny_vae(), MaskedARScheduler(num_tokens=16), id2label=NAMES,
        default_num_inference_steps=4, default_guidance_scale=2.0, default_temperature=0.9,
    )  # fmt: skip
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenbridge(tokenbridge_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(tab.TOKENBRIDGE_MODEL_ENV_VAR, str(tokenbridge_dir))
        return tab.load_tokenbridge_pipeline()


@pytest.fixture(scope="module")
def served(tokenbridge, tokenizer_original_state_dict, dit_original_state_dict):
    """The whole demo (the two TokenSet tabs and this one) on a local port: (url, client)."""
    tokenset = TokenSetPipeline(
        convert_tokenizer(tokenizer_original_state_dict, num_attention_heads=4).eval(),
        convert_transformer(dit_original_state_dict, num_attention_heads=4).eval(),
        FSDDScheduler(codebook_size=64, num_tokens=16),
    )
    demo = app.build_demo(tokenset, max_images=16, max_steps=8, tokenbridge_pipeline=tokenbridge)
    _, url, _ = demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False)
    try:
        yield url, gradio_client.Client(url, verbose=False)
    finally:
        demo.close()


def test_loading_defaults_to_the_bundled_model(tokenbridge, tokenbridge_dir, monkeypatch):
    assert tokenbridge.config.default_guidance_scale == 2.0  # the folder named by the environment variable
    monkeypatch.delenv(tab.TOKENBRIDGE_MODEL_ENV_VAR, raising=False)
    bundled = tab.load_tokenbridge_pipeline()
    assert bundled.transformer.config.num_classes == 10 and bundled.vae.config.sample_size == 8
    explicit = tab.load_tokenbridge_pipeline(str(tokenbridge_dir))
    assert explicit.config.default_num_inference_steps == 4


@pytest.mark.parametrize(
    "request_, message",
    [
        (([], 1, 2.0, 1.0, 4, 0), "at least one class"),
        (([10], 1, 2.0, 1.0, 4, 0), r"Unknown class 10: pick a class id in \[0, 10\)"),
        (([1, 2], 9, 2.0, 1.0, 4, 0), "At most 16 images"),
        (([1], 1, 2.0, 1.0, 17, 0), r"iterations must be in \[1, 16\]"),
        (([1], 1, 2.0, 1.0, 2.5, 0), "iterations must be a whole number"),
        (([1], 1, -1.0, 1.0, 4, 0), "Guidance and temperature"),
        (([1], 1, 2.0, 1.0, 4, -3), "seed must be >= 0"),
    ],
)
def test_request_checks(tokenbridge, request_, message):
    with pytest.raises(ValueError, match=message):
        tab.check_request(*request_, tokenbridge, 16)


def test_tab_returns_the_pipelines_images(served, tokenbridge):
    _, client = served
    path, info = client.predict([3, 7], 2, 2.5, 0.8, 3, 5, api_name="/generate_tokenbridge")
    grid = np.asarray(PIL.Image.open(path).convert("RGB"))
    generators = [torch.Generator().manual_seed(5 + i) for i in range(4)]
    direct = tokenbridge([3, 3, 7, 7], num_inference_steps=3, guidance_scale=2.5, temperature=0.8,
                         generator=generators).images  # fmt: skip
    expected = tab.generate_tokenbridge_grid(tokenbridge, [3, 7], 2, 2.5, 0.8, 3, 5)
    assert np.array_equal(grid, np.asarray(expected.convert("RGB")))
    assert len(direct) == 4 and "4 images, 3 iterations, guidance 2.5" in info and "seeds 5 to 8" in info


def test_tab_explains_bad_inputs(served):
    _, client = served
    with pytest.raises(gradio_client.exceptions.AppError, match="At most 16 images"):
        client.predict([1, 2], 9, 2.0, 1.0, 4, 0, api_name="/generate_tokenbridge")


def test_tokenbridge_tab_in_headless_chromium(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM} (`apt-get install -y chromium`)")
    url, _ = served
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="TokenBridge").click()
            page.locator("#tokenbridge-generate-button").click()
            page.wait_for_function(
                "() => { const img = document.querySelector('#tokenbridge-grid img');"
                " return img !== null && img.complete && img.naturalWidth > 0; }",
                timeout=120_000,
            )
            size = page.evaluate(
                "() => { const img = document.querySelector('#tokenbridge-grid img');"
                " return [img.naturalWidth, img.naturalHeight]; }"
            )
            page.screenshot(path=str(tmp_path / "tokenbridge_tab.png"), full_page=True)
        finally:
            browser.close()
    assert size[1] > 10 * 96  # the default request: every class (10 <= 16 images), a row each
    shutil.copy(tmp_path / "tokenbridge_tab.png", "/tmp/space_screenshot_tokenbridge.png")


# ---------------------------------------------------------------------- the "Edit" tab


def test_mask_presets_and_cells_become_latent_grid_masks():
    left = tab.cells_to_mask(tab.preset_cells("left half", 4), grid_size=4, image_size=8)
    assert left.size == (8, 8) and left.mode == "L"
    grid = mask_to_latent_grid(preprocess_masks(left, 8), 4).reshape(4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:, :2] = True
    assert torch.equal(grid, expected)
    border = mask_to_latent_grid(preprocess_masks(tab.cells_to_mask(tab.preset_cells("border", 4), 4, 8), 8), 4)
    assert int(border.sum()) == 12 and not border.reshape(4, 4)[1:3, 1:3].any()
    with pytest.raises(ValueError, match="Unknown cells"):
        tab.cells_to_mask(["row 9, col 9"], 4, 8)
    with pytest.raises(ValueError, match="Unknown mask preset"):
        tab.preset_cells("everything", 4)


def test_edit_tab_returns_the_inpainting_pipelines_completions(served, tokenbridge):
    _, client = served
    cells = tab.preset_cells("left half", 4)
    path, info = client.predict(
        None, 3, 2, cells, [1, 7], 2, 2.0, 0.9, 3, 5, api_name="/edit_tokenbridge"
    )  # upload, source class, source seed, cells, classes, completions, guidance, temperature, steps, seed
    figure = np.asarray(PIL.Image.open(path).convert("RGB"))
    # Independently: the source generated directly, the completions from the inpainting pipeline called directly.
    source = tokenbridge(3, generator=torch.Generator().manual_seed(2)).images[0]
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255
    inpaint = TokenBridgeInpaintPipeline.from_pipe(tokenbridge)
    inpaint.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(5 + j) for j in (0, 1, 0, 1)]
    output = inpaint(source, mask, [1, 1, 7, 7], num_inference_steps=3, guidance_scale=2.0, temperature=0.9,
                     generator=generators)  # fmt: skip
    overlay = edit_figure.mask_overlay(source, PIL.Image.fromarray(mask))
    rows = [[source, overlay, *output.images[:2]], [source, overlay, *output.images[2:]]]
    expected = labelled_grid(
        rows, row_labels=[tab.class_name(tokenbridge, 1), tab.class_name(tokenbridge, 7)],
        column_labels=["image", "mask", "seed 5", "seed 6"],
    )  # fmt: skip
    np.testing.assert_array_equal(figure, np.asarray(expected.convert("RGB")))
    own = tokenbridge.encode_images(source)[0]
    left = torch.arange(16).reshape(4, 4)[:, :2].flatten()
    right = torch.arange(16).reshape(4, 4)[:, 2:].flatten()
    assert torch.equal(output.indices[:, right], own[right].expand(4, -1, -1))  # the kept half
    assert not torch.equal(output.indices[:, left], own[left].expand(4, -1, -1))
    assert "8 of 16 positions regenerated, 2 classes x 2 completions" in info


def test_edit_tab_explains_bad_inputs(served):
    _, client = served
    with pytest.raises(gradio_client.exceptions.AppError, match="Pick at least one class"):
        client.predict(None, 3, 0, [], [], 1, 2.0, 1.0, 3, 0, api_name="/edit_tokenbridge")
    with pytest.raises(gradio_client.exceptions.AppError, match="At most 16 images"):
        client.predict(None, 3, 0, [], [1, 2], 9, 2.0, 1.0, 3, 0, api_name="/edit_tokenbridge")


def test_edit_tab_in_headless_chromium(served, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM} (`apt-get install -y chromium`)")
    url, _ = served
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url)
            page.get_by_role("tab", name="Edit").click()
            page.locator("#edit-cells").get_by_label("row 0, col 3").check()  # draw: one more cell
            page.locator("#edit-generate-button").click()
            page.wait_for_function(
                "() => { const img = document.querySelector('#edit-figure img');"
                " return img !== null && img.complete && img.naturalWidth > 0; }",
                timeout=120_000,
            )
            size = page.evaluate(
                "() => { const img = document.querySelector('#edit-figure img');"
                " return [img.naturalWidth, img.naturalHeight]; }"
            )
            info = page.locator("#edit-info").inner_text()
            page.screenshot(path=str(tmp_path / "edit_tab.png"), full_page=True)
        finally:
            browser.close()
    # The default request: two classes (two rows), the image, its mask and three completions (five columns).
    assert size[0] > 5 * 96 and size[1] > 2 * 96
    assert "9 of 16 positions regenerated, 2 classes x 3 completions" in info  # the left half and the drawn cell
    shutil.copy(tmp_path / "edit_tab.png", "/tmp/space_screenshot_edit.png")

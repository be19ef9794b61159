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
from tokenset_diffusers import FSDDScheduler, MaskedARScheduler, TokenBridgePipeline, TokenSetPipeline


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
        (([10], 1, 2.0, 1.0, 4, 0), r"ids in \[0, 10\)"),
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

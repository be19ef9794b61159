"""The Gradio Space (pipelines/space/): served locally around a tiny pipeline and driven through gradio_client (both
tabs, checked against the pipeline called directly) and in a real headless Chromium."""

import importlib.util
import os
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the Space needs gradio (the `demo` extra)")
gradio_client = pytest.importorskip("gradio_client", reason="the Space tests need gradio_client (the `test` extra)")

from huggingface_hub import SpaceCard  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

from conversion.tokenizer_conversion import convert_tokenizer  # noqa: E402
from conversion.transformer_conversion import convert_transformer  # noqa: E402
from tokenset_diffusers import FSDDScheduler, TokenSetPipeline, postprocess_images, preprocess_images  # noqa: E402
from tokenset_diffusers.visualization import labelled_grid  # noqa: E402


ROOT = Path(__file__).resolve().parents[2]
SPACE_DIR = ROOT / "pipelines" / "space"


DIGIT_NAMES = dict(enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
MAX_IMAGES, MAX_STEPS = 16, 8
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _load_app():
    spec = importlib.util.spec_from_file_location("tokenset_space_app", SPACE_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = _load_app()


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, tokenizer_original_state_dict, dit_original_state_dict) -> Path:
    """A tiny pipeline folder (C = 64, M = 16, 10 named classes, 32x32 images) from the original's fixtures."""
    image_tokenizer = convert_tokenizer(tokenizer_original_state_dict, num_attention_heads=4).eval()
    transformer = convert_transformer(dit_original_state_dict, num_attention_heads=4).eval()
    scheduler = FSDDScheduler(codebook_size=64, num_tokens=16)
    folder = tmp_path_factory.mktemp("space") / "tiny-pipeline"
    TokenSetPipeline(image_tokenizer, transformer, scheduler, id2label=DIGIT_NAMES).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(pipeline_dir):
    # Loaded the way the Space loads a model given by the environment variable.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(app.MODEL_ENV_VAR, str(pipeline_dir))
        return app.load_pipeline()


@pytest.fixture(scope="module")
def served(pipeline):
    """(url, client) of the demo running on a local port."""
    demo = app.build_demo(pipeline, max_images=MAX_IMAGES, max_steps=MAX_STEPS)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False)
    try:
        yield url, gradio_client.Client(url, verbose=False)
    finally:
        demo.close()


def _image(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB"))


def _direct_samples(pipeline, labels, steps, guidance_scale, seed):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    return pipeline(labels, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators).images


# ---------------------------------------------------------------- loading and the Space folder


def test_model_source_precedence(monkeypatch):
    monkeypatch.setenv(app.MODEL_ENV_VAR, "org/from-env")
    assert app.resolve_model_source("org/explicit") == "org/explicit"
    assert app.resolve_model_source(None) == "org/from-env"
    monkeypatch.delenv(app.MODEL_ENV_VAR)
    try:
        bundled = app.bundled_pipeline_path()
    except FileNotFoundError:
        with pytest.raises(FileNotFoundError):
            app.resolve_model_source(None)
    else:
        assert app.resolve_model_source(None) == bundled


def test_main_without_a_model_says_how_to_pick_one(monkeypatch):
    def no_bundled_model():
        raise FileNotFoundError("No bundled pipeline")

    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    monkeypatch.setattr(app, "bundled_pipeline_path", no_bundled_model)
    with pytest.raises(SystemExit, match="No bundled pipeline.*--model.*TOKENSET_MODEL"):
        app.main(["--device", "cpu"])


def test_loaded_pipeline_is_the_folder(pipeline, pipeline_dir):
    assert Path(pipeline.config._name_or_path) == pipeline_dir
    assert pipeline.config.id2label == DIGIT_NAMES
    assert app.class_choices(pipeline)[3] == ("3: three", 3)


def test_model_line_names_the_model_not_a_local_path(pipeline, pipeline_dir):
    summary = app.model_summary(pipeline)
    assert "**tiny-pipeline**" in summary and str(pipeline_dir.parent) not in summary
    assert app.tokenizer_domain_note(pipeline) == ""  # not the bundled model: no digits-only warning
    pipeline.register_to_config(_name_or_path="org/tokenset-test")
    try:
        assert "**org/tokenset-test**" in app.model_summary(pipeline)
    finally:
        pipeline.register_to_config(_name_or_path=str(pipeline_dir))


def test_bundled_model_is_named_and_its_domain_stated(monkeypatch):
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    try:
        bundled = app.load_pipeline()
    except FileNotFoundError:
        pytest.skip("this installation ships without the bundled model")
    assert "**the bundled digits model**" in app.model_summary(bundled)
    assert str(app.bundled_pipeline_path()) not in app.model_summary(bundled)
    assert "handwritten digits only" in app.tokenizer_domain_note(bundled)
    # The examples are in its domain: digits.
    assert all(Path(path).name.startswith("digit_") for path in app.DemoSettings().example_images())


def test_space_readme_header_and_requirements():
    card = SpaceCard.load(SPACE_DIR / "README.md")
    assert card.data.sdk == "gradio"
    assert (SPACE_DIR / card.data.app_file).is_file() and card.data.app_file == "app.py"
    assert Version(card.data.sdk_version).major == Version(gr.__version__).major
    assert card.data.license == "mit"
    assert card.data.models and all("/" in model for model in card.data.models)
    assert len(card.data.short_description) <= 60  # the Hub's limit
    lines = [line.strip() for line in (SPACE_DIR / "requirements.txt").read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
    # The package's dependencies; the package itself ships in the built folder (tests/pipelines/test_space_build.py).
    assert {"torch", "diffusers", "transformers"} <= {r.name for r in requirements}


def test_example_images_are_small_pngs():
    examples = sorted(app.EXAMPLES_DIR.glob("*.png"))
    assert 2 <= len(examples) <= 3
    for path in examples:
        assert path.stat().st_size < 10_000
        image = _image(path)
        assert min(image.shape[:2]) >= 8 and image.std() > 10


# ---------------------------------------------------------------- request checks


def test_guidance_widgets():
    assert app.parse_guidance("constant", 2.5, (None, None, None)) == 2.5
    assert app.parse_guidance("interval schedule", 9.0, (4, 50, 55)) == [4.0, 50.0, 55.0]
    with pytest.raises(ValueError, match="guidance mode must be one of"):
        app.parse_guidance("cosine", 1.0, (4, 50, 55))
    with pytest.raises(ValueError, match="three numbers >= 0"):
        app.parse_guidance("interval schedule", 1.0, (4, float("nan"), 55))


@pytest.mark.parametrize(
    "request_, message",
    [
        (([], 1, 3, 0), "Pick at least one class"),
        (([10], 1, 3, 0), r"Unknown classes \[10\]: this model has classes 0 to 9"),
        (([1, 2], 17, 3, 0), r"number of images per class must be a whole number in \[1, 16\]"),
        (([1, 2], 1, 9, 0), r"number of steps must be a whole number in \[1, 8\], got 9"),
        (([1, 2], 1, 2.5, 0), r"number of steps must be a whole number"),
        (([1, 2], 1, 3, None), "The seed must be a whole number"),
        (([1, 2, 3], 6, 3, 0), "3 classes x 6 images per class = 18 images; this demo makes at most 16"),
    ],
)
def test_request_checks(request_, message):
    with pytest.raises(ValueError, match=message):
        app.check_generation_request(*request_, num_classes=10, max_images=MAX_IMAGES, max_steps=MAX_STEPS)
    assert app.check_generation_request([3, 1], 2.0, 4.0, 7, 10, MAX_IMAGES, MAX_STEPS) == ([3, 1], 2, 4, 7)


def test_default_guidance_follows_the_stored_default(pipeline):
    assert app.default_guidance(pipeline) == ("constant", 1.0, app.RELEASED_GUIDANCE_SCHEDULE)
    scheduled = TokenSetPipeline(
        pipeline.image_tokenizer, pipeline.transformer, pipeline.scheduler, default_guidance_scale=[3.0, 5.0, 7.0]
    )
    assert app.default_guidance(scheduled) == ("interval schedule", 1.0, (3.0, 5.0, 7.0))
    constant = TokenSetPipeline(
        pipeline.image_tokenizer, pipeline.transformer, pipeline.scheduler, default_guidance_scale=2.0
    )
    assert app.default_guidance(constant) == ("constant", 2.0, app.RELEASED_GUIDANCE_SCHEDULE)


# ---------------------------------------------------------------- both tabs through gradio_client


@pytest.mark.parametrize(
    "mode, constant, schedule",
    [("constant", 1.5, (4.0, 50.0, 55.0)), ("interval schedule", 9.0, (2.0, 3.0, 4.0))],
)
def test_generate_tab_returns_the_pipelines_images(served, pipeline, mode, constant, schedule):
    _, client = served
    grid_path, info = client.predict([1, 2], 2, mode, constant, *schedule, 3, 5, api_name="/generate")
    grid = _image(grid_path)
    # The same request made directly: image i seeded with 5 + i, a row per class.
    guidance_scale = constant if mode == "constant" else list(schedule)
    images = _direct_samples(pipeline, [1, 1, 2, 2], 3, guidance_scale, seed=5)
    expected = np.asarray(labelled_grid([images[:2], images[2:]], row_labels=["1: one", "2: two"]))
    assert grid.shape == expected.shape
    np.testing.assert_array_equal(grid, expected)
    assert grid.std() > 10  # not blank
    assert info.startswith("4 images, 3 steps") and "seeds 5 to 8" in info


def test_generate_tab_accepts_class_choices_as_strings(served, pipeline):
    """gradio_client documents the class choices as strings: ids as text, picker entries and names all work."""
    _, client = served
    as_ints = _image(client.predict([3, 7], 1, "constant", 1.0, 4, 50, 55, 2, 0, api_name="/generate")[0])
    for choices in (["3", "7"], ["3: three", "7: seven"], ["three", "seven"], [3, "seven"]):
        grid_path, info = client.predict(choices, 1, "constant", 1.0, 4, 50, 55, 2, 0, api_name="/generate")
        np.testing.assert_array_equal(_image(grid_path), as_ints)
    for bad in (["eleven"], ["3: seven"], ["12"]):
        with pytest.raises(gradio_client.exceptions.AppError, match="Unknown class"):
            client.predict(bad, 1, "constant", 1.0, 4, 50, 55, 2, 0, api_name="/generate")


def test_generate_tab_reports_progress_per_step(served, pipeline, monkeypatch):
    _, client = served
    step = pipeline.scheduler.step

    def slow_step(*args, **kwargs):  # the real step, slowed so that the client sees several updates (Gradio sends
        time.sleep(0.25)  # progress at its own pace, and a loaded machine delays the polling)
        return step(*args, **kwargs)

    monkeypatch.setattr(pipeline.scheduler, "step", slow_step)
    job = client.submit([1], 1, "constant", 1.0, 4, 50, 55, 6, 0, api_name="/generate")
    seen, deadline = set(), time.monotonic() + 60
    while not job.done() and time.monotonic() < deadline:
        seen.update((p.desc, p.index, p.length) for p in job.status().progress_data or [])
        time.sleep(0.005)
    job.result(timeout=60)
    steps = {index for desc, index, length in seen if desc == "FSDD steps" and length == 6}
    assert len(steps) >= 2, seen  # a progress bar over the six steps, moving


def test_tokenizer_tab_shows_reconstruction_histogram_and_orders(served, pipeline):
    _, client = served
    example = app.EXAMPLES_DIR / "digit_3.png"
    side_path, histogram_path, orders_path, info = client.predict(
        gradio_client.handle_file(str(example)), 7, api_name="/tokenize"
    )
    # The same computation directly.
    image_tokenizer = pipeline.image_tokenizer
    pixel_values = preprocess_images(PIL.Image.open(example), image_tokenizer.config.image_size)
    with torch.no_grad():
        token_ids = image_tokenizer.encode(pixel_values).token_ids  # (1, 16)
        reconstruction = postprocess_images(image_tokenizer.decode(token_ids))[0]
    crop = postprocess_images(pixel_values)[0]
    labels = ["input (cropped)", "reconstruction"]
    expected = np.asarray(labelled_grid([[crop, reconstruction]], column_labels=labels, min_cell_size=160))
    np.testing.assert_array_equal(_image(side_path), expected)
    # Every order of the same tokens decodes to the same image (up to float rounding of one grey level).
    orders = _image(orders_path).astype(int)
    same = np.asarray(labelled_grid([[reconstruction] * 4], column_labels=list(app.ORDERS), min_cell_size=160))
    assert orders.shape == same.shape and np.abs(orders - same).max() <= 1
    histogram = _image(histogram_path)
    assert histogram.shape == (160, 480, 3) and histogram.std() > 10
    distinct = len(set(token_ids[0].tolist()))
    assert f"16 tokens, {distinct} distinct codebook entries" in info


@pytest.mark.parametrize(
    "inputs, message",
    [
        (([], 1, "constant", 1.5, 4, 50, 55, 3, 0), "Pick at least one class"),
        (([1, 2, 3, 4, 5, 6, 7, 8, 9], 2, "constant", 1.5, 4, 50, 55, 3, 0), "at most 16 per request"),
        # Gradio's slider refuses out-of-range steps itself; the app's own check backs it up (test_request_checks).
        (([1], 1, "constant", 1.5, 4, 50, 55, MAX_STEPS + 1, 0), "greater than maximum value 8"),
        (([1], 1, "constant", -1.0, 4, 50, 55, 3, 0), "(?i)guidance scale must be a number >= 0|minimum"),
        (([1], 1, "interval schedule", 1.0, 4, None, 55, 3, 0), "interval schedule needs three numbers"),
    ],
)
def test_generate_tab_explains_bad_inputs(served, inputs, message):
    _, client = served
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        client.predict(*inputs, api_name="/generate")


def test_tokenizer_tab_without_an_image_asks_for_one(served):
    _, client = served
    with pytest.raises(gradio_client.exceptions.AppError, match="Upload an image"):
        client.predict(None, 0, api_name="/tokenize")


# ---------------------------------------------------------------- a real browser


def test_generate_in_headless_chromium(served, pipeline, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM} (`apt-get install -y chromium`)")
    url, _ = served
    screenshot = tmp_path / "space.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#generate-button").click()
            page.wait_for_function(
                "() => { const img = document.querySelector('#generate-grid img');"
                " return img !== null && img.complete && img.naturalWidth > 0; }",
                timeout=120_000,
            )
            size = page.evaluate(
                "() => { const img = document.querySelector('#generate-grid img');"
                " return [img.naturalWidth, img.naturalHeight]; }"
            )
            page.wait_for_function(
                "() => document.querySelector('#generate-info').innerText.includes('images')", timeout=30_000
            )
            page.screenshot(path=str(screenshot), full_page=True)
            # The other tab: clicking an example runs it; wait for the reconstruction, no button pressed.
            page.get_by_role("tab", name="Set tokenizer").click()
            page.locator("#tokenize-examples").get_by_role("gridcell").first.click()
            page.wait_for_function(
                "() => { const img = document.querySelector('#tokenize-orders img');"
                " return img !== null && img.complete && img.naturalWidth > 0; }",
                timeout=60_000,
            )
            tokenize_info = page.locator("#tokenize-info").inner_text()
            page.screenshot(path=str(tmp_path / "space_tokenizer.png"), full_page=True)
        finally:
            browser.close()
    # The default request: every class (10 <= 16 images), one image each, so ten rows of 96 px cells.
    assert size[1] > 10 * 96 and size[0] > 96
    assert screenshot.stat().st_size > 10_000
    assert f"{pipeline.scheduler.config.num_tokens} tokens" in tokenize_info
    shutil.copy(screenshot, "/tmp/space_screenshot.png")
    shutil.copy(tmp_path / "space_tokenizer.png", "/tmp/space_screenshot_tokenizer.png")

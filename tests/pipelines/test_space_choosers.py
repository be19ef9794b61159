"""The Space's class choosers (pipelines/space/class_choosers.py): one convention on every tab. The choices and the
parser are checked against `class_caption` and `id2label` directly, and in a headless Chromium every tab's chooser
shows the same captions over the same values, and choosing a class or "no class" generates what the pipeline makes
for that label."""

import importlib.util
import io
import os
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the Space needs gradio (the `demo` extra)")

from tokenset_diffusers import (  # noqa: E402
    TokenBridgePipeline,
    TokenSetImg2ImgPipeline,
    TokenSetPipeline,
    bundled_pipeline_path,
)
from tokenset_diffusers.class_labels import class_caption  # noqa: E402


ROOT = Path(__file__).resolve().parents[2]
SPACE_DIR = ROOT / "pipelines" / "space"
# Class 0 has a synonym ("zero"), as ImageNet's comma-separated labels.
NAMES = dict(enumerate(["nought, zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
# Every class chooser of the demo: (tab, elem_id, offers "no class").
CHOOSERS = [
    ("Generate", "classes", False),
    ("Image variations", "vary-class", True),
    ("Set interpolation", "interpolate-class", True),
    ("TokenBridge", "tokenbridge-classes", False),
    ("Edit", "edit-source-class", False),
    ("Edit", "edit-classes", False),
]


def _load_app():
    spec = importlib.util.spec_from_file_location("tokenset_space_app_for_choosers", SPACE_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = _load_app()
choosers = sys.modules["pipelines.space.class_choosers"]  # the module the tabs import


@pytest.fixture(scope="module")
def tokenset():
    """The bundled digits model's components, with named classes."""
    digits = TokenSetPipeline.from_pretrained(bundled_pipeline_path("digits"))
    return TokenSetPipeline(digits.image_tokenizer, digits.transformer, digits.scheduler, id2label=NAMES)


@pytest.fixture(scope="module")
def tokenbridge():
    """The bundled TokenBridge model's components, with the same named classes (few iterations: a fast test)."""
    digits = TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))
    return TokenBridgePipeline(
        digits.transformer, digits.vae, digits.scheduler, id2label=NAMES, default_num_inference_steps=4
    )


# ---------------------------------------------------------------- the choices and the parser


def test_choices_are_the_figures_captions_over_class_ids(tokenset, tokenbridge):
    expected = [(class_caption(NAMES, class_id), class_id) for class_id in range(10)]
    assert expected[0] == ("0: nought", 0) and expected[3] == ("3: three", 3)
    assert choosers.class_choices(tokenset) == expected == choosers.class_choices(tokenbridge)
    with_none = choosers.class_choices(tokenset, no_class=True)
    assert with_none == [(choosers.NO_CLASS_CAPTION, choosers.NO_CLASS), *expected]
    # The bundled digits are named "0" ... "9": the caption is the bare id, as in the figures.
    digits = TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))
    assert choosers.class_choices(digits)[3] == ("3", 3)
    assert choosers.parse_class_choice(digits, "3") == 3


def test_every_choice_parses_back_to_its_class(tokenset):
    """The caption and the value of each choice give the same label (what a browser and gradio_client send)."""
    for caption, value in choosers.class_choices(tokenset, no_class=True):
        label = choosers.parse_class_choice(tokenset, value, no_class=True)
        assert choosers.parse_class_choice(tokenset, caption, no_class=True) == label
        assert label == (None if value == choosers.NO_CLASS else value)
        if label is not None:
            assert choosers.parse_class_choice(tokenset, str(value)) == label


@pytest.mark.parametrize(
    "choice, label",
    [(3, 3), (np.int64(3), 3), (" 3 ", 3), ("3: three", 3), ("three", 3), ("nought", 0), ("zero", 0), ("0", 0)],
)
def test_parser_reads_ids_captions_and_names(tokenset, choice, label):
    assert choosers.parse_class_choice(tokenset, choice) == label
    assert choosers.parse_class_choice(tokenset, choice, no_class=True) == label


@pytest.mark.parametrize("choice", [None, choosers.NO_CLASS, "-1", "no class (unconditional)"])
def test_no_class_only_where_a_tab_offers_it(tokenset, choice):
    assert choosers.parse_class_choice(tokenset, choice, no_class=True) is None
    with pytest.raises(ValueError, match="Unknown class"):
        choosers.parse_class_choice(tokenset, choice)


@pytest.mark.parametrize("choice", [10, "10", "3: seven", "eleven", True, 3.0, "", [3]])
def test_parser_refuses_what_is_not_a_class(tokenset, choice):
    with pytest.raises(ValueError, match=r"Unknown class .*: pick a class id in \[0, 10\)"):
        choosers.parse_class_choice(tokenset, choice, no_class=True)


def test_multi_class_parser(tokenset):
    assert choosers.parse_class_choices(tokenset, [3, "seven", "0: nought"]) == [3, 7, 0]
    for empty in ([], None):
        with pytest.raises(ValueError, match="Pick at least one class"):
            choosers.parse_class_choices(tokenset, empty)
    with pytest.raises(ValueError, match="must be a list"):
        choosers.parse_class_choices(tokenset, "3")
    with pytest.raises(ValueError, match="Unknown class"):
        choosers.parse_class_choices(tokenset, [3, choosers.NO_CLASS])  # "no class" is no choice of a class list


# ---------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def served(tokenset, tokenbridge):
    demo = app.build_demo(tokenset, max_images=16, max_steps=4, tokenbridge_pipeline=tokenbridge)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False)
    try:
        yield url
    finally:
        demo.close()


def _open_options(page, elem_id: str) -> list[str]:
    """The captions the chooser `#elem_id` lists when clicked (its listbox); closes it again."""
    combobox = page.locator(f"#{elem_id} input[role=combobox]")
    combobox.click()
    listbox = page.locator(f"#{combobox.get_attribute('aria-controls')}")
    listbox.wait_for(state="visible", timeout=10_000)
    captions = [option.get_attribute("aria-label") for option in listbox.get_by_role("option").all()]
    combobox.press("Escape")
    return captions


def _choose(page, elem_id: str, caption: str) -> None:
    combobox = page.locator(f"#{elem_id} input[role=combobox]")
    combobox.click()
    page.locator(f"#{combobox.get_attribute('aria-controls')}").get_by_role("option", name=caption, exact=True).click()


def _vary(page, request) -> np.ndarray:
    """Clicks "Vary" and returns the figure that replaces the one shown before."""
    figure = page.locator("#vary-figure img")
    before = figure.get_attribute("src") if figure.count() else None
    page.locator("#vary-button").click()
    page.wait_for_function(
        "before => { const img = document.querySelector('#vary-figure img');"
        " return img !== null && img.complete && img.naturalWidth > 0 && img.src !== before; }",
        arg=before,
        timeout=120_000,
    )
    png = request.get(figure.get_attribute("src")).body()
    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB"))


def test_choosers_in_headless_chromium(served, tokenset):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM} (`apt-get install -y chromium`)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(served)
            page.wait_for_selector("#classes input[role=combobox]")
            config = page.evaluate("() => window.gradio_config.components")
            values = {c["props"].get("elem_id"): c["props"].get("choices") for c in config if "props" in c}
            shown = {}
            for tab, elem_id, _ in CHOOSERS:
                page.get_by_role("tab", name=tab, exact=True).click()
                shown[elem_id] = _open_options(page, elem_id)
            # Choosing a class, then "no class", on the variations tab generates what the pipeline makes for each.
            page.get_by_role("tab", name="Image variations", exact=True).click()
            page.locator("#vary-examples button.gallery-item").first.click()
            page.wait_for_function(
                "() => { const img = document.querySelector('#vary-input img'); return img && img.naturalWidth > 0; }"
            )
            _choose(page, "vary-class", "7: seven")
            seven = _vary(page, page.request)
            _choose(page, "vary-class", choosers.NO_CLASS_CAPTION)
            unconditional = _vary(page, page.request)
            vary_info = page.locator("#vary-info").inner_text()
        finally:
            browser.close()
    expected = [(class_caption(NAMES, class_id), class_id) for class_id in range(10)]
    none = (choosers.NO_CLASS_CAPTION, choosers.NO_CLASS)
    for _, elem_id, no_class in CHOOSERS:
        choices = [none, *expected] if no_class else expected
        assert shown[elem_id] == [caption for caption, _ in choices], elem_id  # the captions the page lists
        assert [tuple(choice) for choice in values[elem_id]] == choices, elem_id  # the values behind them
    # The same requests made directly: the example image (the first), the tab's defaults (strength 0.6, seed 0,
    # four variations, min(25, max_steps) = 4 steps).
    variations = TokenSetImg2ImgPipeline.from_pipe(tokenset)
    image = PIL.Image.open(app.DemoSettings(16, 4, app.EXAMPLES_DIR).example_images()[0])
    for label, figure in ((7, seven), (None, unconditional)):
        with torch.no_grad():
            direct, _ = sys.modules["pipelines.space.tabs_sets"].vary_image(variations, image, label, 0.6, 4, 0, 4)
        np.testing.assert_array_equal(figure, np.asarray(direct.convert("RGB")), err_msg=f"class {label}")
    assert not np.array_equal(seven, unconditional)
    assert vary_info.startswith("4 variations")

"""The Space under hostile input and load, served on 127.0.0.1: strings in number fields, a string where a list of
classes is expected, a huge guidance scale, seeds past the stated maximum, a text file and a 20000 x 20000 PNG as the
image (refused before decoding); a bounded queue, and cancelled requests that stop between FSDD steps."""

import importlib.util
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the Space needs gradio (the `demo` extra)")
gradio_client = pytest.importorskip("gradio_client", reason="the Space tests need gradio_client (the `test` extra)")

from tokenset_diffusers import FSDDScheduler, TokenSetPipeline, TokenSetTransformer1DModel, TokenSetVQVAE  # noqa: E402
from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig  # noqa: E402
from tokenset_diffusers.utils.testing_utils import TINY_GENERATOR, TINY_TOKENIZER  # noqa: E402


SPACE_APP = Path(__file__).resolve().parents[2] / "pipelines" / "space" / "app.py"
MAX_STEPS, QUEUE_SIZE = 400, 2
AppError = gradio_client.exceptions.AppError


def _load_app():
    spec = importlib.util.spec_from_file_location("tokenset_space_app_load", SPACE_APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = _load_app()


class StepCounter:
    """Counts the transformer's forward passes (one per FSDD step without guidance) and slows each a little, so that a
    long request is still running when the test cancels it."""

    def __init__(self, delay: float):
        self.count, self.delay, self.lock = 0, delay, threading.Lock()

    def __call__(self, module, inputs, output):
        with self.lock:
            self.count += 1
        time.sleep(self.delay)


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)
    c, m = TINY_TOKENIZER["codebook_size"], TINY_TOKENIZER["num_tokens"]
    pipeline = TokenSetPipeline(
        TokenSetVQVAE(TokenSetVQVAEConfig(**TINY_TOKENIZER)).eval(),
        TokenSetTransformer1DModel(codebook_size=c, num_tokens=m, num_classes=3, **TINY_GENERATOR).eval(),
        FSDDScheduler(codebook_size=c, num_tokens=m),
        id2label={0: "red", 1: "green", 2: "blue"},
    )
    counter = StepCounter(delay=0.02)
    pipeline.transformer.register_forward_hook(counter)
    demo = app.build_demo(pipeline, max_images=4, max_steps=MAX_STEPS, max_queue_size=QUEUE_SIZE)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False)
    try:
        yield url, gradio_client.Client(url, verbose=False), counter
    finally:
        demo.close()


def generate(client, classes=(0,), images=1, mode="constant", scale=1.0, steps=2, seed=0):
    classes = list(classes) if isinstance(classes, tuple) else classes
    return client.predict(classes, images, mode, scale, 4, 50, 55, steps, seed, api_name="/generate")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": "abc"}, r"The number of steps must be a number, got str 'abc'"),
        ({"images": "two"}, r"The number of images per class must be a number, got str 'two'"),
        ({"classes": "red"}, r"The classes must be a list of class ids or names, got str 'red'"),
        ({"classes": [[0, 1]]}, r"Unknown classes \[\[0, 1\]\]|Unknown class"),
        ({"scale": 1e39}, r"guidance scale must be a number >= 0 .* at most 10000, got 1e\+39"),
        ({"mode": "interval schedule", "scale": 1.0}, None),  # the schedule fields hold 4, 50, 55: fine
        ({"seed": 2**32}, r"seed must be a whole number in \[0, 4294967295\]|greater than maximum value"),
        ({"seed": 2**32 - 1, "images": 2}, r"seed must be a whole number in \[0, 4294967294\] \(image i uses seed"),
        ({"seed": "7"}, r"The seed must be a number, got str '7'"),
    ],
)
def test_bad_generate_inputs_are_explained(served, kwargs, message):
    _, client, _ = served
    if message is None:
        grid, info = generate(client, **kwargs)
        assert Path(grid).is_file() and info.startswith("1 images")
        return
    with pytest.raises(AppError, match=message):
        generate(client, **kwargs)


def test_seed_checks_directly():
    for value, shown in ((2**32, "4294967296"), ("3", "'3'"), (True, "True"), (float("nan"), "nan")):
        with pytest.raises(ValueError, match=rf"The seed must be a whole number in \[0, 4294967295\] .*got {shown}\."):
            app.check_generation_request([0], 1, 2, value, 3, 4, 8)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares `width x height` pixels but holds almost no data (what a decompression bomb looks like
    before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda d: _png_header_only(d / "bomb.png", 20000, 20000),
            r"too large|20000 x 20000 px .* at most 16.8 megapixels",
        ),
        (
            lambda d: _png_header_only(d / "big.png", 5000, 5000),
            r"5000 x 5000 px \(25.0 megapixels\); this demo takes",
        ),
        (
            lambda d: (d / "notes.png").write_text("a text file, not an image") and d / "notes.png",
            "not an image this demo can read",
        ),
        (lambda d: (d / "notes.txt").write_text("a text file") and d / "notes.txt", "not an image this demo can read"),
    ],
)
def test_uploads_are_checked_before_decoding(served, tmp_path, make, message):
    _, client, _ = served
    path = make(tmp_path)
    with pytest.raises(AppError, match=message):
        client.predict(gradio_client.handle_file(str(path)), 0, api_name="/tokenize")


def test_a_truncated_upload_is_named_damaged(tmp_path):
    good = tmp_path / "good.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    app.check_uploaded_image(good)
    with pytest.raises(ValueError, match="damaged or truncated"):
        app.check_uploaded_image(tmp_path / "cut.png")


def _wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_queue_is_bounded_and_cancelled_requests_stop_between_steps(served):
    url, client, counter = served
    start = counter.count
    running = client.submit([0], 1, "constant", 1.0, 4, 50, 55, MAX_STEPS, 0, api_name="/generate")
    assert _wait_until(lambda: counter.count >= start + 3), "the long request never started"
    waiting = [
        gradio_client.Client(url, verbose=False).submit(
            [0], 1, "constant", 1.0, 4, 50, 55, MAX_STEPS, 0, api_name="/generate"
        )
        for _ in range(QUEUE_SIZE)
    ]
    time.sleep(0.5)  # let them join the queue
    refused = gradio_client.Client(url, verbose=False).submit(
        [0], 1, "constant", 1.0, 4, 50, 55, 2, 0, api_name="/generate"
    )
    with pytest.raises(Exception, match="(?i)queue is full"):
        refused.result(timeout=60)

    # Cancel everything: the running request stops after its current step, the waiting ones never start.
    for job in [running, *waiting]:
        job.cancel()
    time.sleep(1.0)
    stopped_at = counter.count
    time.sleep(1.5)
    assert counter.count == stopped_at, "a cancelled request kept the server busy"
    assert stopped_at - start < MAX_STEPS  # the long request did not run to the end

    # The server is free again: a short request is served at once.
    before = counter.count
    grid, info = generate(client, steps=2)
    assert Path(grid).is_file() and counter.count - before == 2

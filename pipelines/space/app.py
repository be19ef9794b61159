"""TokenSet demo (the Hugging Face Space): class-conditional generation, and the set tokenizer at work.

    python pipelines/space/app.py                                        # the bundled digits model, on CPU
    python pipelines/space/app.py --model org/tokenset-base-imagenet256 --device cuda
    TOKENSET_MODEL=path/to/pipeline python pipelines/space/app.py       # the same, for a Space (a "variable")
    python pipelines/space/app.py --model tokenbridge-digits             # a TokenBridge --model: the TokenBridge tab

Tab "Generate": pick classes by name, set the guidance (a constant, or the three-interval schedule of the released
models), the number of FSDD steps, the seed and the number of images per class; the result is a labelled grid, a
row per class. Tab "Set tokenizer": an image becomes a set of M codebook entries; shown are its reconstruction, the
token set as a count histogram, and reconstructions from the same tokens in four orders (the decoder sees a set, so
they agree).

The file only needs the `tokenset_diffusers` package and gradio; `build_space.py` next to it writes the folder to upload
(this file, the package source and the requirements). New tabs are builders added to `TAB_BUILDERS`.
`build_demo(pipeline)` builds the interface around any loaded [`TokenSetPipeline`] (the tests pass a tiny one).

Under load: one request runs at a time and at most `max_queue_size` wait (more are refused with "queue is full");
generation runs step by step, so a request that is cancelled or whose page is closed stops after the current FSDD
step. Uploads are checked before they are decoded (not an image, or more than `MAX_UPLOAD_PIXELS` pixels: refused).
"""

import argparse
import base64
import binascii
import io
import numbers
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenset_diffusers.utils.import_utils import install_line


MODEL_ENV_VAR = "TOKENSET_MODEL"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Per-request limits, so that one visitor cannot hold a CPU Space for minutes.
MAX_IMAGES = 16
MAX_STEPS = 50
MAX_SEED = 2**32 - 1  # the largest seed any image of a request may get (image i uses seed + i)
MAX_QUEUE_SIZE = 8  # requests that may wait while one runs; more are refused
MAX_UPLOAD_PIXELS = 4096 * 4096  # larger uploads are refused before they are decoded (decompression bombs)
# How long a generation waits for the page to ask for its next step before it gives up (a vanished client).
STEP_WAIT_SECONDS = 60.0
RELEASED_GUIDANCE_SCHEDULE = (4.0, 50.0, 55.0)
GUIDANCE_MODES = ("constant", "interval schedule")
ORDERS = ("encoder order", "reversed", "shuffled", "sorted")
DTYPE_NAMES = ("bfloat16", "float32")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=None,
        help="pipeline folder, bundled model (digits, tokenbridge-digits) or Hub repo id; a TokenBridge one serves "
        f"the TokenBridge tab (default: ${MODEL_ENV_VAR}, else the bundled digits model)",
    )
    parser.add_argument(
        "--tokenbridge_model",
        default=None,
        help="TokenBridge tab's pipeline: folder, bundled model or Hub repo id (default: $TOKENBRIDGE_MODEL, else "
        "tokenbridge-digits)",
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    parser.add_argument("--max_images", type=int, default=MAX_IMAGES, help="most images per request")
    parser.add_argument("--max_steps", type=int, default=MAX_STEPS, help="most FSDD steps per request")
    parser.add_argument("--max_queue_size", type=int, default=MAX_QUEUE_SIZE, help="most requests waiting at once")
    parser.add_argument("--server_name", default=None, help="e.g. 0.0.0.0 to listen on all interfaces")
    parser.add_argument("--server_port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.max_images < 1 or args.max_steps < 1 or args.max_queue_size < 1:
        parser.error(
            "--max_images, --max_steps and --max_queue_size must be at least 1, got "
            f"{args.max_images}, {args.max_steps} and {args.max_queue_size}"
        )
    return args


if __name__ == "__main__":
    # `--help` and argument errors answer here, before gradio and torch are imported (seconds); `main` parses again.
    parse_args()


try:
    import gradio as gr
except ImportError as error:
    raise ImportError(f"The Space needs gradio, which is not installed: {install_line('gradio')}") from error

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from pipelines.space.class_choosers import class_choices, class_chooser, class_name, parse_class_choices  # noqa: E402
from pipelines.space.tab_tokenbridge import (  # noqa: E402
    build_tokenbridge_edit_tab,
    build_tokenbridge_tab,
    load_tokenbridge_pipeline,
)
from pipelines.space.tabs_sets import build_set_tabs  # noqa: E402
from tokenset_diffusers import TokenSetPipeline, bundled_pipeline_path, postprocess_images, preprocess_images  # noqa: E402
from tokenset_diffusers.bundled import resolve_pipeline  # noqa: E402
from tokenset_diffusers.tokenset.pipeline_tokenset import MAX_GUIDANCE_SCALE  # noqa: E402
from tokenset_diffusers.visualization import class_rows_grid, count_histogram, labelled_grid  # noqa: E402


DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


# ---------------------------------------------------------------------- loading


def resolve_model_source(model: str | None = None) -> str | Path:
    """The pipeline to load: `model` if given, else the `TOKENSET_MODEL` environment variable, else the bundled model.

    Raises `FileNotFoundError` (from [`bundled_pipeline_path`]) when neither is set and there is no bundled model.
    """
    if model:
        return model
    if os.environ.get(MODEL_ENV_VAR):
        return os.environ[MODEL_ENV_VAR]
    return bundled_pipeline_path()


def load_pipeline(
    model: str | os.PathLike | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> TokenSetPipeline:
    """Loads a TokenSet pipeline folder, bundled model or Hub repo id (see [`resolve_model_source`] and
    [`~tokenset_diffusers.bundled.resolve_pipeline`]) onto `device`; `ValueError` for anything else."""
    resolved = resolve_pipeline(resolve_model_source(model), system="tokenset")
    return TokenSetPipeline.from_pretrained(resolved.folder, dtype=dtype).to(device)


def split_models(
    model: str | os.PathLike | None, tokenbridge_model: str | os.PathLike | None
) -> tuple[str | os.PathLike | None, str | os.PathLike | None]:
    """`(TokenSet model, TokenBridge model)` from `--model` and `--tokenbridge_model`: `--model` may name a pipeline
    of either system (a TokenBridge one serves the "TokenBridge" tab, the other tabs keep their default).

    Raises `ValueError` when `--model` is a TokenBridge pipeline and `--tokenbridge_model` is given too."""
    if model is None or resolve_pipeline(model).system == "tokenset":
        return model, tokenbridge_model
    if tokenbridge_model is not None:
        raise ValueError(
            f"--model {os.fspath(model)!r} is a TokenBridge pipeline and --tokenbridge_model is given too; pass one."
        )
    return None, model


# ---------------------------------------------------------------------- the "Generate" tab


def default_guidance(pipeline: TokenSetPipeline) -> tuple[str, float, tuple[float, float, float]]:
    """The initial guidance widgets from the pipeline's `default_guidance_scale`: (mode, constant, schedule).

    A stored three-value schedule opens in "interval schedule" mode, anything else in "constant" mode (a stored
    constant, or 1.0 = no guidance); the schedule fields otherwise show the released `[4, 50, 55]`.
    """
    stored = pipeline.config.default_guidance_scale
    if stored is not None and len(stored) == 3:
        return "interval schedule", 1.0, tuple(float(v) for v in stored)
    constant = float(stored[0]) if stored is not None and len(stored) == 1 else 1.0
    return "constant", constant, RELEASED_GUIDANCE_SCHEDULE


def parse_guidance(mode: str, constant: float | None, schedule: Sequence[float | None]) -> float | list[float]:
    """The `guidance_scale` argument of the pipeline from the widgets; raises `ValueError` for bad values."""
    if mode == "constant":
        if not _is_number(constant) or not 0 <= constant <= MAX_GUIDANCE_SCALE:
            raise ValueError(
                f"The guidance scale must be a number >= 0 (1 = no guidance) and at most {MAX_GUIDANCE_SCALE:g}, got "
                f"{constant!r}."
            )
        return float(constant)
    if mode == "interval schedule":
        if len(schedule) != 3 or not all(_is_number(v) and 0 <= v <= MAX_GUIDANCE_SCALE for v in schedule):
            raise ValueError(
                f"The interval schedule needs three numbers >= 0 and at most {MAX_GUIDANCE_SCALE:g}, got "
                f"{list(schedule)!r}."
            )
        return [float(v) for v in schedule]
    raise ValueError(f"The guidance mode must be one of {GUIDANCE_MODES}, got {mode!r}.")


def _is_number(value) -> bool:
    """A finite real number (numpy numbers included), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))


def _whole_number(name: str, value, low: int, high: int, note: str = "") -> int:
    if not _is_number(value) or not float(value).is_integer() or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number in [{low}, {high}]{note}, got {value!r}.")
    return int(value)


def check_generation_request(
    class_ids: Sequence[int] | None,
    images_per_class: float | None,
    num_inference_steps: float | None,
    seed: float | None,
    num_classes: int,
    max_images: int,
    max_steps: int,
) -> tuple[list[int], int, int, int]:
    """Validates the "Generate" inputs against the limits; returns (class ids, images per class, steps, seed)."""
    if class_ids is not None and not isinstance(class_ids, (list, tuple)):
        raise ValueError(
            f"The classes must be a list of class ids or names, got {type(class_ids).__name__} {class_ids!r}."
        )
    if not class_ids:
        raise ValueError("Pick at least one class.")
    bad = [
        c for c in class_ids if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes
    ]
    if bad:
        raise ValueError(f"Unknown classes {bad}: this model has classes 0 to {num_classes - 1}.")
    images_per_class = _whole_number("The number of images per class", images_per_class, 1, max_images)
    num_inference_steps = _whole_number("The number of steps", num_inference_steps, 1, max_steps)
    total = len(class_ids) * images_per_class
    seed = _whole_number("The seed", seed, 0, max(MAX_SEED - total + 1, 0), f" (image i uses seed + i <= {MAX_SEED})")
    if total > max_images:
        raise ValueError(
            f"{len(class_ids)} classes x {int(images_per_class)} images per class = {total} images; this demo makes "
            f"at most {max_images} per request. Pick fewer classes or fewer images per class."
        )
    return [int(c) for c in class_ids], int(images_per_class), int(num_inference_steps), int(seed)


def generate_grid(
    pipeline: TokenSetPipeline,
    class_ids: Sequence[int],
    images_per_class: int,
    guidance_scale: float | list[float],
    num_inference_steps: int,
    seed: int,
    callback_on_step_end: Callable | None = None,
) -> tuple[PIL.Image.Image, torch.LongTensor]:
    """Generates `images_per_class` images per class (image i seeded with `seed + i`, as `pipelines/generate.py`);
    returns the labelled grid (a row per class) and the count vectors `(num_images, codebook_size)`.
    `callback_on_step_end` goes to the pipeline (see [`StepwiseRun`])."""
    labels = [class_id for class_id in class_ids for _ in range(images_per_class)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    output = pipeline(
        labels,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generators,
        callback_on_step_end=callback_on_step_end,
    )
    grid = class_rows_grid(output.images, [class_name(pipeline, class_id) for class_id in class_ids], images_per_class)
    return grid, output.counts


class GenerationCancelled(Exception):
    """Raised in the pipeline's step callback to stop a generation that nobody waits for any more."""


class StepwiseRun:
    """Runs `work(callback)` (a pipeline call given `callback` as its `callback_on_step_end`) in a worker thread, one
    FSDD step at a time, for a Gradio generator function.

    After every step the worker reports it and waits until the consumer of [`steps`] asks for the next one. Gradio
    asks after it has sent the previous update, and stops asking when the request is cancelled or its page closed;
    it then closes the generator, and the worker stops at its next step callback (a consumer that neither asks nor
    closes is given up after `max_wait` seconds). `lock` (shared by the runs of one demo) keeps a stopping run from
    overlapping the next one on the same pipeline.
    """

    def __init__(self, work: Callable[[Callable], object], lock: threading.Lock, max_wait: float = STEP_WAIT_SECONDS):
        self.work = work
        self.lock = lock
        self.max_wait = max_wait
        self.reports: queue.Queue = queue.Queue()
        self.go = threading.Semaphore(0)
        self.stop = threading.Event()

    def callback(self, pipeline, step_index: int, timestep, tensors: dict) -> dict:
        self.reports.put(("step", step_index + 1))
        if not self.go.acquire(timeout=self.max_wait) or self.stop.is_set():
            raise GenerationCancelled(f"stopped after step {step_index + 1}")
        return {}

    def _run(self) -> None:
        with self.lock:
            try:
                self.reports.put(("done", self.work(self.callback)))
            except GenerationCancelled:
                self.reports.put(("cancelled", None))
            except Exception as error:  # handed to the consumer, which raises it
                self.reports.put(("error", error))

    def steps(self) -> Iterator[int]:
        """Yields the number of every finished step; returns what `work` returned."""
        threading.Thread(target=self._run, daemon=True, name="tokenset-generation").start()
        try:
            while True:
                kind, value = self.reports.get()
                if kind == "step":
                    yield value
                    self.go.release()
                elif kind == "done":
                    return value
                elif kind == "error":
                    raise value
                else:
                    raise GenerationCancelled(f"no request for the next step within {self.max_wait} s")
        finally:
            self.stop.set()
            self.go.release()


# ---------------------------------------------------------------------- the "Set tokenizer" tab


def check_uploaded_image(path: str | os.PathLike | io.BytesIO, max_pixels: int = MAX_UPLOAD_PIXELS) -> None:
    """Raises `ValueError` unless `path` (a file, or the bytes of one) is an image PIL can read, of at most
    `max_pixels` pixels; the size is read from the header, so a decompression bomb is refused before it is
    decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as image:
                width, height = image.size
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(f"The image is too large: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(
            "The uploaded file is not an image this demo can read (PNG, JPEG, WebP, GIF, BMP, ...)."
        ) from error
    if width * height > max_pixels:
        raise ValueError(
            f"The image is {width} x {height} px ({width * height / 1e6:.1f} megapixels); this demo takes images of "
            f"at most {max_pixels / 1e6:.1f} megapixels. Shrink it first."
        )
    if isinstance(path, io.BytesIO):
        path.seek(0)
    try:
        with PIL.Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"The image file is damaged or truncated ({error}).") from error


def guard_input(component: gr.components.Component, name: str, kind: str) -> gr.components.Component:
    """Makes an input refuse a value of the wrong kind (what the API lets through: a string in a number field, a
    string where a list is expected) with a message naming the field, instead of Gradio's processing error.

    Args:
        kind (`str`): `"number"` (number and slider fields) or `"list"` (a multiselect dropdown).
    """
    preprocess = component.preprocess

    def checked_preprocess(payload):
        wrong = not _is_number(payload) if kind == "number" else not isinstance(payload, (list, tuple))
        if payload is not None and wrong:
            allowed = "a number" if kind == "number" else "a list of class ids or names"
            raise _user_error(f"{name} must be {allowed}, got {type(payload).__name__} {payload!r}.")
        return preprocess(payload)

    component.preprocess = checked_preprocess
    return component


def data_url_bytes(url: str) -> io.BytesIO:
    """The file in a `data:[<mime>][;base64],<data>` URL (how the API may send an upload instead of a file), as bytes
    to check before Gradio decodes them; raises `ValueError` for a URL that is not one."""
    header, separator, data = url.partition(",")
    if not separator or not header.startswith("data:") or not header.endswith(";base64"):
        raise ValueError("The uploaded image is not a base64 `data:` URL this demo can read.")
    try:
        return io.BytesIO(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as error:
        raise ValueError("The uploaded image's `data:` URL holds no valid base64 data.") from error


def guard_uploads(image: gr.Image) -> gr.Image:
    """Makes `image` check every upload ([`check_uploaded_image`]) before Gradio decodes it (its `preprocess`
    opens the file), whatever the transport: a file, or a `data:` URL (which Gradio decodes without a file); a
    refused upload is explained to the visitor."""
    preprocess = image.preprocess

    def checked_preprocess(payload):
        url = getattr(payload, "url", None)
        if isinstance(url, str) and url.startswith("data:"):
            try:
                check_uploaded_image(data_url_bytes(url))
            except ValueError as error:
                raise _user_error(str(error)) from error
            return preprocess(payload)
        path = getattr(payload, "path", None)
        if path:
            try:
                check_uploaded_image(path)
            except ValueError as error:
                raise _user_error(str(error)) from error
        return preprocess(payload)

    image.preprocess = checked_preprocess
    return image


def token_orders(token_ids: torch.LongTensor, generator: torch.Generator) -> dict[str, torch.LongTensor]:
    """The token sets `(batch_size, num_tokens)` in the four orders of `ORDERS`."""
    shuffle = torch.rand(token_ids.shape, generator=generator).argsort(-1)  # (B, M) random permutations
    return {
        "encoder order": token_ids,
        "reversed": token_ids.flip(-1),
        "shuffled": token_ids.gather(1, shuffle.to(token_ids.device)),
        "sorted": token_ids.sort(-1).values,
    }


@torch.no_grad()
def tokenize_image(pipeline: TokenSetPipeline, image: PIL.Image.Image, seed: int = 0) -> dict:
    """Encodes `image` to a token set and decodes it back, from the four token orders.

    Returns a dict with `"input"` (the image as the tokenizer sees it, centre-cropped), `"reconstructions"` (a PIL
    image per order), `"counts"` (the count vector `(codebook_size,)`), `"token_ids"` (`(num_tokens,)`, encoder
    order) and `"max_order_difference"` (the largest pixel difference between the orders' reconstructions, in [0, 1]).
    """
    image_tokenizer = pipeline.image_tokenizer
    pixel_values = preprocess_images(image, image_tokenizer.config.image_size)  # (1, 3, S, S) in [-1, 1]
    pixel_values = pixel_values.to(device=image_tokenizer.device, dtype=image_tokenizer.dtype)
    token_ids = image_tokenizer.encode(pixel_values).token_ids  # (1, M)
    orders = token_orders(token_ids, torch.Generator().manual_seed(seed))
    decoded = {name: image_tokenizer.decode(ids).float() for name, ids in orders.items()}  # (1, 3, S, S) each
    reference = decoded["encoder order"]
    difference = max(float((d - reference).abs().max()) / 2 for d in decoded.values())  # [-1, 1] -> [0, 1] units
    counts = torch.bincount(token_ids[0].cpu(), minlength=image_tokenizer.config.codebook_size)  # (C,)
    return {
        "input": postprocess_images(pixel_values.float(), "pil")[0],
        "reconstructions": {name: postprocess_images(d, "pil")[0] for name, d in decoded.items()},
        "counts": counts,
        "token_ids": token_ids[0].cpu(),
        "max_order_difference": difference,
    }


def describe_token_set(result: dict) -> str:
    counts = result["counts"]
    present = torch.nonzero(counts).flatten().tolist()
    shown = ", ".join(f"{i}x{int(counts[i])}" if counts[i] > 1 else str(i) for i in present[:48])
    more = f", ... ({len(present) - 48} more)" if len(present) > 48 else ""
    return (
        f"**{int(counts.sum())} tokens, {len(present)} distinct codebook entries** (of {counts.numel()}); "
        f"largest count {int(counts.max())}.\n\n"
        f"Token set (codebook id x count): {shown}{more}\n\n"
        f"Largest pixel difference between the four orders' reconstructions: "
        f"{result['max_order_difference']:.2e} (of 1): the decoder sees a set, so the order does not matter."
    )


# ---------------------------------------------------------------------- the interface


def _user_error(message: str) -> gr.Error:
    """An error shown to the visitor; a bad input, so no traceback in the server log."""
    return gr.Error(message, print_exception=False)


def model_name(pipeline: TokenSetPipeline) -> str:
    """How the interface names the model: a Hub repo id as is, the bundled model as such, a local folder by its name
    (never an absolute path of the machine serving the demo)."""
    source = pipeline.config.get("_name_or_path") or ""
    if not source:
        return "a pipeline in memory"
    if not os.path.isdir(source):
        return source
    try:
        if Path(source).resolve() == Path(bundled_pipeline_path()).resolve():
            return "the bundled digits model"
    except FileNotFoundError:
        pass
    return Path(source).resolve().name


def model_summary(pipeline: TokenSetPipeline) -> str:
    tokenizer, transformer = pipeline.image_tokenizer.config, pipeline.transformer.config
    return (
        f"Model **{model_name(pipeline)}**: {tokenizer.image_size} px images as sets of M = {tokenizer.num_tokens} tokens from a "
        f"codebook of C = {tokenizer.codebook_size}; {transformer.num_classes} classes; on "
        f"`{pipeline.device}`."
    )


@dataclass
class DemoSettings:
    """What every tab builder gets besides the pipeline.

    Args:
        max_images (`int`, defaults to 16): the most images one "Generate" request may ask for.
        max_steps (`int`, defaults to 50): the most FSDD steps one request may ask for.
        examples_dir (path, *optional*): PNG/JPEG files offered as examples in the "Set tokenizer" tab.
        tokenbridge_pipeline ([`TokenBridgePipeline`], *optional*): the "TokenBridge" tab's pipeline; no such tab
            without one.
    """

    max_images: int = MAX_IMAGES
    max_steps: int = MAX_STEPS
    examples_dir: str | os.PathLike | None = EXAMPLES_DIR
    tokenbridge_pipeline: Any = None

    def example_images(self) -> list[str]:
        if self.examples_dir is None or not Path(self.examples_dir).is_dir():
            return []
        suffixes = (".png", ".jpg", ".jpeg")
        return sorted(str(p) for p in Path(self.examples_dir).iterdir() if p.suffix.lower() in suffixes)


def build_generate_tab(pipeline: TokenSetPipeline, settings: DemoSettings) -> None:
    """Tab "Generate" (API name `/generate`); called inside the demo's `gr.Blocks`."""
    max_images, max_steps = settings.max_images, settings.max_steps
    num_classes = pipeline.transformer.config.num_classes
    choices = class_choices(pipeline)
    initial_classes = [class_id for _, class_id in choices] if num_classes <= max_images else [choices[0][1]]
    mode, constant, schedule = default_guidance(pipeline)

    lock = threading.Lock()  # one generation at a time, also while a cancelled one is stopping

    # Gradio finds the progress tracker by the default value of the last parameter. A generator: Gradio stops
    # iterating it when the request is cancelled or its page closed, and the generation stops after that step.
    def on_generate(
        class_ids,
        images_per_class,
        guidance_mode,
        scale,
        s0,
        s1,
        s2,
        steps,
        seed,
        progress=gr.Progress(),  # noqa: B008
    ):
        try:
            class_ids = parse_class_choices(pipeline, class_ids)
            class_ids, images_per_class, steps, seed = check_generation_request(
                class_ids, images_per_class, steps, seed, num_classes, max_images, max_steps
            )
            guidance_scale = parse_guidance(guidance_mode, scale, (s0, s1, s2))
        except ValueError as error:
            raise _user_error(str(error)) from error
        start = time.perf_counter()
        run = StepwiseRun(
            lambda callback: generate_grid(
                pipeline, class_ids, images_per_class, guidance_scale, steps, seed, callback_on_step_end=callback
            ),
            lock,
        )
        progress((0, steps), desc="FSDD steps")
        finished = run.steps()
        try:
            while True:
                try:
                    step = next(finished)
                except StopIteration as done:
                    grid, counts = done.value
                    break
                progress((step, steps), desc="FSDD steps")
                yield gr.update(), f"Step {step} of {steps}..."
        finally:
            finished.close()
        sums = counts.sum(-1)
        info = (
            f"{len(counts)} images, {steps} steps, guidance {guidance_scale}, seeds {seed} to {seed + len(counts) - 1}; "
            f"{time.perf_counter() - start:.1f} s. {int((sums == pipeline.scheduler.config.num_tokens).sum())} of "
            f"{len(counts)} count vectors sum to exactly M = {pipeline.scheduler.config.num_tokens}."
        )
        yield grid, info

    with gr.Tab("Generate"):
        with gr.Row():
            with gr.Column(scale=1):
                classes = class_chooser(
                    pipeline,
                    initial_classes,
                    "Classes",
                    multiselect=True,
                    info="Type to search by name; one row of images per class.",
                    elem_id="classes",
                )
                images_per_class = gr.Slider(1, max_images, value=1, step=1, label="Images per class")
                guidance_mode = gr.Radio(list(GUIDANCE_MODES), value=mode, label="Classifier-free guidance")
                guidance_constant = gr.Number(
                    value=constant, minimum=0, label="Guidance scale (1 = none)", visible=mode == "constant"
                )
                with gr.Row(visible=mode == "interval schedule") as schedule_row:
                    schedule_inputs = [
                        gr.Number(value=value, minimum=0, label=f"t in [{i}/3, {i + 1}/3)")
                        for i, value in enumerate(schedule)
                    ]
                steps = gr.Slider(1, max_steps, value=min(25, max_steps), step=1, label="FSDD steps")
                seed = gr.Number(
                    value=0,
                    precision=0,
                    minimum=0,
                    maximum=MAX_SEED,
                    label=f"Seed (image i uses seed + i <= {MAX_SEED})",
                )
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            with gr.Column(scale=2):
                grid = gr.Image(label="Samples", type="pil", format="png", show_label=False, elem_id="generate-grid")
                generate_info = gr.Markdown(elem_id="generate-info")
        guard_input(classes, "The classes", "list")
        numbers_by_name = [
            (images_per_class, "The number of images per class"),
            (guidance_constant, "The guidance scale"),
            *((field, f"Interval schedule value {i + 1}") for i, field in enumerate(schedule_inputs)),
            (steps, "The number of steps"),
            (seed, "The seed"),
        ]
        for component, name in numbers_by_name:
            guard_input(component, name, "number")
        guidance_mode.change(
            lambda m: (gr.Number(visible=m == "constant"), gr.Row(visible=m == "interval schedule")),
            inputs=guidance_mode,
            outputs=[guidance_constant, schedule_row],
            api_name=False,
        )
        generate_button.click(
            on_generate,
            inputs=[classes, images_per_class, guidance_mode, guidance_constant, *schedule_inputs, steps, seed],
            outputs=[grid, generate_info],
            api_name="generate",
        )


def tokenizer_domain_note(pipeline: TokenSetPipeline) -> str:
    """What the tokenizer was trained on, said plainly when it is the bundled digits model: other pictures only come
    back as digit-like strokes."""
    if model_name(pipeline) != "the bundled digits model":
        return ""
    size = pipeline.image_tokenizer.config.image_size
    return (
        f"The bundled model knows **handwritten digits only** ({size}x{size} px, light strokes on dark): an image of "
        "anything else is cropped, shrunk to that size and comes back as digit-like strokes."
    )


def build_tokenizer_tab(pipeline: TokenSetPipeline, settings: DemoSettings) -> None:
    """Tab "Set tokenizer" (API name `/tokenize`); clicking an example runs it."""
    examples = settings.example_images()

    def on_tokenize(image, seed):
        if image is None:
            raise _user_error("Upload an image, or pick one of the examples.")
        try:
            seed = _whole_number("The shuffle seed", seed, 0, MAX_SEED)
        except ValueError as error:
            raise _user_error(str(error)) from error
        try:
            result = tokenize_image(pipeline, image, int(seed))
        except ValueError as error:
            raise _user_error(str(error)) from error
        size = max(160, pipeline.image_tokenizer.config.image_size)
        side_by_side = labelled_grid(
            [[result["input"], result["reconstructions"]["encoder order"]]],
            column_labels=["input (cropped)", "reconstruction"],
            min_cell_size=size,
        )
        orders = labelled_grid(
            [[result["reconstructions"][name] for name in ORDERS]], column_labels=list(ORDERS), min_cell_size=size
        )
        histogram = count_histogram(result["counts"], width=3 * size, height=size)
        return side_by_side, histogram, orders, describe_token_set(result)

    with gr.Tab("Set tokenizer"):
        note = tokenizer_domain_note(pipeline)
        if note:
            gr.Markdown(note, elem_id="tokenize-domain")
        with gr.Row():
            with gr.Column(scale=1):
                image = guard_uploads(
                    gr.Image(
                        label=f"Image (at most {MAX_UPLOAD_PIXELS / 1e6:.1f} megapixels)",
                        type="pil",
                        sources=["upload", "clipboard"],
                        height=256,
                        elem_id="tokenize-input",
                    )
                )
                shuffle_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed of the shuffled order")
                tokenize_button = gr.Button("Tokenize and reconstruct", variant="primary", elem_id="tokenize-button")
            with gr.Column(scale=2):
                # The figures carry their own captions; Gradio's label badge would cover their first line.
                figure = dict(type="pil", format="png", show_label=False)
                gr.Markdown("**Reconstruction** from the token set")
                reconstruction = gr.Image(label="Reconstruction", elem_id="tokenize-reconstruction", **figure)
                gr.Markdown("**The token set as a count vector**: codebook index left to right, count upwards")
                histogram = gr.Image(label="Count histogram", elem_id="tokenize-histogram", **figure)
                gr.Markdown("**Decoded from four orders of the same tokens**")
                orders = gr.Image(label="Token orders", elem_id="tokenize-orders", **figure)
                token_info = gr.Markdown(elem_id="tokenize-info")
        guard_input(shuffle_seed, "The shuffle seed", "number")
        outputs = [reconstruction, histogram, orders, token_info]
        tokenize_button.click(on_tokenize, inputs=[image, shuffle_seed], outputs=outputs, api_name="tokenize")
        if examples:
            gr.Examples(
                examples=[[path, 0] for path in examples],
                inputs=[image, shuffle_seed],
                outputs=outputs,
                fn=on_tokenize,
                run_on_click=True,
                cache_examples=False,
                label="Examples (click one to run it)",
                elem_id="tokenize-examples",
            )


# The tabs, in order: each is `builder(pipeline, settings)`, called inside the demo's `gr.Blocks`. A new tab is one
# more builder here (its module imported at the top).
TabBuilder = Callable[[TokenSetPipeline, DemoSettings], None]


def build_sets_tabs(pipeline: TokenSetPipeline, settings: DemoSettings) -> None:
    """The "Image variations" and "Set interpolation" tabs (pipelines/space/tabs_sets.py)."""
    build_set_tabs(
        pipeline, max_steps=settings.max_steps, examples=settings.example_images(), guard_image=guard_uploads
    )


def build_tokenbridge_tabs(pipeline: TokenSetPipeline, settings: DemoSettings) -> None:
    """The "TokenBridge" and "Edit" tabs (pipelines/space/tab_tokenbridge.py), where the demo has a TokenBridge
    pipeline."""
    if settings.tokenbridge_pipeline is not None:
        build_tokenbridge_tab(settings.tokenbridge_pipeline, settings.max_images)
        build_tokenbridge_edit_tab(settings.tokenbridge_pipeline, settings.max_images)


TAB_BUILDERS: list[TabBuilder] = [build_generate_tab, build_tokenizer_tab, build_sets_tabs, build_tokenbridge_tabs]


def build_demo(
    pipeline: TokenSetPipeline,
    max_images: int = MAX_IMAGES,
    max_steps: int = MAX_STEPS,
    examples_dir: str | os.PathLike | None = EXAMPLES_DIR,
    tabs: Sequence[TabBuilder] | None = None,
    max_queue_size: int = MAX_QUEUE_SIZE,
    tokenbridge_pipeline=None,
) -> gr.Blocks:
    """The interface around `pipeline`: a header, then one tab per builder.

    Args:
        pipeline ([`TokenSetPipeline`]): the loaded pipeline; its progress bar is switched on (the "Generate" tab
            shows it).
        max_images (`int`, defaults to 16): the most images one "Generate" request may ask for.
        max_steps (`int`, defaults to 50): the most FSDD steps one request may ask for.
        examples_dir (path, *optional*): PNG/JPEG files offered as examples in the "Set tokenizer" tab.
        tabs (sequence of tab builders, *optional*): defaults to `TAB_BUILDERS`.
        max_queue_size (`int`, defaults to 8): requests that may wait while one runs; more are refused ("queue is
            full"). The demo's queue is set here (one request at a time); launch it without calling `queue` again.
        tokenbridge_pipeline ([`TokenBridgePipeline`], *optional*): adds the "TokenBridge" tab.

    API names (for `gradio_client`): `/generate`, `/tokenize`, `/vary` and `/interpolate` (and the TokenBridge tab's,
    see pipelines/space/tab_tokenbridge.py).
    """
    if max_images < 1 or max_steps < 1 or max_queue_size < 1:
        raise ValueError(
            f"`max_images`, `max_steps` and `max_queue_size` must be at least 1, got {max_images}, {max_steps} and "
            f"{max_queue_size}."
        )
    pipeline.set_progress_bar_config(disable=False, desc="FSDD steps")
    settings = DemoSettings(
        max_images=max_images,
        max_steps=max_steps,
        examples_dir=examples_dir,
        tokenbridge_pipeline=tokenbridge_pipeline,
    )
    with gr.Blocks(title="TokenSet") as demo:
        gr.Markdown(
            "# TokenSet: images as sets of tokens\n"
            "[Tokenize Image as a Set](https://arxiv.org/abs/2503.16425) represents an image as an unordered set of "
            "codebook entries, written as a count vector, and generates count vectors with Fixed-Sum Discrete "
            f"Diffusion.\n\n{model_summary(pipeline)}",
            elem_id="model-summary",
        )
        for build_tab in TAB_BUILDERS if tabs is None else tabs:
            build_tab(pipeline, settings)
    return demo.queue(default_concurrency_limit=1, max_size=max_queue_size)


# ---------------------------------------------------------------------- command line


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        model, tokenbridge_model = split_models(args.model, args.tokenbridge_model)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipeline = load_pipeline(model, device, DTYPES[args.dtype])
        tokenbridge = load_tokenbridge_pipeline(tokenbridge_model, device, DTYPES[args.dtype])
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error} (set --model or ${MODEL_ENV_VAR})") from error
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    demo = build_demo(
        pipeline,
        max_images=args.max_images,
        max_steps=args.max_steps,
        max_queue_size=args.max_queue_size,
        tokenbridge_pipeline=tokenbridge,
    )
    demo.launch(
        server_name=args.server_name,
        server_port=args.server_port,
        max_file_size="20mb",
        allowed_paths=[str(EXAMPLES_DIR)],
    )


if __name__ == "__main__":
    main()

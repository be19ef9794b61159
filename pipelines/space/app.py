"""TokenSet demo (the Hugging Face Space): class-conditional generation, and the set tokenizer at work.

    python pipelines/space/app.py                                        # the bundled digits model, on CPU
    python pipelines/space/app.py --model org/tokenset-base-imagenet256 --device cuda
    TOKENSET_MODEL=path/to/pipeline python pipelines/space/app.py       # the same, for a Space (a "variable")

Tab "Generate": pick classes by name, set the guidance (a constant, or the three-interval schedule of the released
models), the number of FSDD steps, the seed and the number of images per class; the result is a labelled grid, a
row per class. Tab "Set tokenizer": an image becomes a set of M codebook entries; shown are its reconstruction, the
token set as a count histogram, and reconstructions from the same tokens in four orders (the decoder sees a set, so
they agree).

The file only needs the installed `tokenset_diffusers` package and gradio, so the folder uploads to a Space as is.
`build_demo(pipeline)` builds the interface around any loaded [`TokenSetPipeline`] (the tests pass a tiny one).
"""

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import torch

from tokenset_diffusers import TokenSetPipeline, bundled_pipeline_path, postprocess_images, preprocess_images
from tokenset_diffusers.visualization import count_histogram, labelled_grid


sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's tab modules
from tab_tokenbridge import build_tokenbridge_tab, load_tokenbridge_pipeline  # noqa: E402


MODEL_ENV_VAR = "TOKENSET_MODEL"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Per-request limits, so that one visitor cannot hold a CPU Space for minutes.
MAX_IMAGES = 16
MAX_STEPS = 50
RELEASED_GUIDANCE_SCHEDULE = (4.0, 50.0, 55.0)
GUIDANCE_MODES = ("constant", "interval schedule")
ORDERS = ("encoder order", "reversed", "shuffled", "sorted")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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
    """Loads a pipeline folder or Hub repo id (see [`resolve_model_source`]) onto `device`."""
    pipeline = TokenSetPipeline.from_pretrained(resolve_model_source(model), torch_dtype=dtype)
    return pipeline.to(device)


# ---------------------------------------------------------------------- the "Generate" tab


def class_choices(pipeline: TokenSetPipeline) -> list[tuple[str, int]]:
    """`(display name, class id)` pairs for the class picker, e.g. `("207: golden retriever", 207)`."""
    return [(class_name(pipeline, i), i) for i in range(pipeline.transformer.config.num_classes)]


def class_name(pipeline: TokenSetPipeline, class_id: int) -> str:
    """`"<id>: <first name>"`, or the bare id for a pipeline without `id2label`."""
    id2label = pipeline.config.id2label or {}
    return f"{class_id}: {id2label[class_id].split(',')[0]}" if class_id in id2label else str(class_id)


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
        if constant is None or not np.isfinite(constant) or constant < 0:
            raise ValueError(f"The guidance scale must be a number >= 0 (1 = no guidance), got {constant}.")
        return float(constant)
    if mode == "interval schedule":
        if len(schedule) != 3 or any(v is None or not np.isfinite(v) or v < 0 for v in schedule):
            raise ValueError(f"The interval schedule needs three numbers >= 0, got {list(schedule)}.")
        return [float(v) for v in schedule]
    raise ValueError(f"The guidance mode must be one of {GUIDANCE_MODES}, got {mode!r}.")


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
    if not class_ids:
        raise ValueError("Pick at least one class.")
    bad = [
        c for c in class_ids if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes
    ]
    if bad:
        raise ValueError(f"Unknown classes {bad}: this model has classes 0 to {num_classes - 1}.")
    for name, value, low, high in (
        ("The number of images per class", images_per_class, 1, max_images),
        ("The number of steps", num_inference_steps, 1, max_steps),
        ("The seed", seed, 0, 2**63 - 1),
    ):
        if value is None or not float(value).is_integer() or not low <= value <= high:
            raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value}.")
    total = len(class_ids) * int(images_per_class)
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
) -> tuple[PIL.Image.Image, torch.LongTensor]:
    """Generates `images_per_class` images per class (image i seeded with `seed + i`, as `pipelines/generate.py`);
    returns the labelled grid (a row per class) and the count vectors `(num_images, codebook_size)`."""
    labels = [class_id for class_id in class_ids for _ in range(images_per_class)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    output = pipeline(
        labels, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generators
    )
    rows = [output.images[r * images_per_class : (r + 1) * images_per_class] for r in range(len(class_ids))]
    grid = labelled_grid(rows, row_labels=[class_name(pipeline, class_id) for class_id in class_ids])
    return grid, output.counts


# ---------------------------------------------------------------------- the "Set tokenizer" tab


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


def model_summary(pipeline: TokenSetPipeline) -> str:
    tokenizer, transformer = pipeline.image_tokenizer.config, pipeline.transformer.config
    source = pipeline.config.get("_name_or_path") or "a pipeline in memory"
    return (
        f"Model `{source}`: {tokenizer.image_size} px images as sets of M = {tokenizer.num_tokens} tokens from a "
        f"codebook of C = {tokenizer.codebook_size}; {transformer.num_classes} classes; on "
        f"`{pipeline.device}`."
    )


def build_demo(
    pipeline: TokenSetPipeline,
    max_images: int = MAX_IMAGES,
    max_steps: int = MAX_STEPS,
    examples_dir: str | os.PathLike | None = EXAMPLES_DIR,
    tokenbridge_pipeline=None,
) -> gr.Blocks:
    """The two-tab interface around `pipeline`.

    Args:
        pipeline ([`TokenSetPipeline`]): the loaded pipeline; its progress bar is switched on (the "Generate" tab
            shows it).
        max_images (`int`, defaults to 16): the most images one "Generate" request may ask for.
        max_steps (`int`, defaults to 50): the most FSDD steps one request may ask for.
        examples_dir (path, *optional*): PNG/JPEG files offered as examples in the "Set tokenizer" tab.

    API names (for `gradio_client`): `/generate` and `/tokenize`.
    """
    if max_images < 1 or max_steps < 1:
        raise ValueError(f"`max_images` and `max_steps` must be at least 1, got {max_images} and {max_steps}.")
    pipeline.set_progress_bar_config(disable=False, desc="FSDD steps")
    num_classes = pipeline.transformer.config.num_classes
    choices = class_choices(pipeline)
    initial_classes = [class_id for _, class_id in choices] if num_classes <= max_images else [choices[0][1]]
    mode, constant, schedule = default_guidance(pipeline)
    examples = []
    if examples_dir is not None and Path(examples_dir).is_dir():
        examples = sorted(
            str(p) for p in Path(examples_dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
        )

    # Gradio finds the progress tracker by the default value of the last parameter; it follows the pipeline's tqdm.
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
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        try:
            class_ids, images_per_class, steps, seed = check_generation_request(
                class_ids, images_per_class, steps, seed, num_classes, max_images, max_steps
            )
            guidance_scale = parse_guidance(guidance_mode, scale, (s0, s1, s2))
        except ValueError as error:
            raise _user_error(str(error)) from error
        start = time.perf_counter()
        grid, counts = generate_grid(pipeline, class_ids, images_per_class, guidance_scale, steps, seed)
        sums = counts.sum(-1)
        info = (
            f"{len(counts)} images, {steps} steps, guidance {guidance_scale}, seeds {seed} to {seed + len(counts) - 1}; "
            f"{time.perf_counter() - start:.1f} s. {int((sums == pipeline.scheduler.config.num_tokens).sum())} of "
            f"{len(counts)} count vectors sum to exactly M = {pipeline.scheduler.config.num_tokens}."
        )
        return grid, info

    def on_tokenize(image, seed):
        if image is None:
            raise _user_error("Upload an image, or pick one of the examples.")
        if seed is None or not float(seed).is_integer() or seed < 0:
            raise _user_error(f"The shuffle seed must be a whole number >= 0, got {seed}.")
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

    with gr.Blocks(title="TokenSet") as demo:
        gr.Markdown(
            "# TokenSet: images as sets of tokens\n"
            "[Tokenize Image as a Set](https://arxiv.org/abs/2503.16425) represents an image as an unordered set of "
            "codebook entries, written as a count vector, and generates count vectors with Fixed-Sum Discrete "
            f"Diffusion.\n\n{model_summary(pipeline)}"
        )
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    classes = gr.Dropdown(
                        choices=choices,
                        value=initial_classes,
                        multiselect=True,
                        filterable=True,
                        label="Classes",
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
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (image i uses seed + i)")
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column(scale=2):
                    grid = gr.Image(
                        label="Samples", type="pil", format="png", show_label=False, elem_id="generate-grid"
                    )
                    generate_info = gr.Markdown(elem_id="generate-info")
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
        with gr.Tab("Set tokenizer"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(
                        label="Image",
                        type="pil",
                        sources=["upload", "clipboard"],
                        height=256,
                        elem_id="tokenize-input",
                    )
                    shuffle_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed of the shuffled order")
                    tokenize_button = gr.Button(
                        "Tokenize and reconstruct", variant="primary", elem_id="tokenize-button"
                    )
                    if examples:
                        gr.Examples(
                            examples=[[path] for path in examples],
                            inputs=[image],
                            label="Examples",
                            elem_id="tokenize-examples",
                        )
                with gr.Column(scale=2):
                    # The figures carry their own captions; Gradio's label badge would cover their first line.
                    figure = dict(type="pil", format="png", show_label=False)
                    gr.Markdown("**Reconstruction** from the token set")
                    reconstruction = gr.Image(label="Reconstruction", elem_id="tokenize-reconstruction", **figure)
                    gr.Markdown("**The token set as a count vector**: codebook index left to right, count upwards")
                    histogram = gr.Image(label="Count histogram", elem_id="tokenize-histogram", **figure)
                    gr.Markdown("**Decoded from four orders of the same tokens**")
                    orders = gr.Image(label="Token orders", elem_id="tokenize-orders", **figure)
                    token_info = gr.Markdown()
            tokenize_button.click(
                on_tokenize,
                inputs=[image, shuffle_seed],
                outputs=[reconstruction, histogram, orders, token_info],
                api_name="tokenize",
            )
        if tokenbridge_pipeline is not None:  # a third tab: pipelines/space/tab_tokenbridge.py
            build_tokenbridge_tab(tokenbridge_pipeline, max_images)
    return demo


# ---------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=None,
        help=f"pipeline folder or Hub repo id (default: ${MODEL_ENV_VAR}, else the bundled model)",
    )
    parser.add_argument("--tokenbridge_model", default=None, help="TokenBridge tab's pipeline (default: bundled)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--max_images", type=int, default=MAX_IMAGES, help="most images per request")
    parser.add_argument("--max_steps", type=int, default=MAX_STEPS, help="most FSDD steps per request")
    parser.add_argument("--server_name", default=None, help="e.g. 0.0.0.0 to listen on all interfaces")
    parser.add_argument("--server_port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.max_images < 1 or args.max_steps < 1:
        parser.error(f"--max_images and --max_steps must be at least 1, got {args.max_images} and {args.max_steps}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        pipeline = load_pipeline(args.model, args.device, DTYPES[args.dtype])
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error} (set --model or ${MODEL_ENV_VAR})") from error
    tokenbridge = load_tokenbridge_pipeline(args.tokenbridge_model, args.device, DTYPES[args.dtype])
    demo = build_demo(pipeline, args.max_images, args.max_steps, tokenbridge_pipeline=tokenbridge)
    demo.queue(default_concurrency_limit=1).launch(
        server_name=args.server_name,
        server_port=args.server_port,
        max_file_size="20mb",
        allowed_paths=[str(EXAMPLES_DIR)],
    )


if __name__ == "__main__":
    main()

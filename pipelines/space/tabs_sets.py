"""The Space's tabs for what only a set representation can do: image variations and set interpolation.

Tab "Image variations": an image is encoded to its token set, noised to `t = 1 - strength` by the scheduler and
denoised towards a class (its own, another one: "turn this 3 into an 8", or none) with
[`TokenSetImg2ImgPipeline`]; strength 0 gives the reconstruction back, 1 a fresh sample of the class. Tab "Set
interpolation": the path between two images' token sets (fixed-sum roundings of the weighted mean of their count
vectors), decoded as a strip, optionally with every inner point briefly re-denoised.

`build_set_tabs(pipeline, ...)` adds both tabs inside the caller's `gr.Blocks` (app.py calls it); the functions
`vary_image` and `interpolation_strip` are what the tabs run, and can be called without a server.
"""

import time
from collections.abc import Callable, Sequence

import gradio as gr
import PIL.Image
import torch

from pipelines.space.class_choosers import NO_CLASS, class_chooser, parse_class_choice
from tokenset_diffusers import TokenSetImg2ImgPipeline, TokenSetPipeline, interpolate_images, postprocess_images
from tokenset_diffusers.image_processing import preprocess_images
from tokenset_diffusers.visualization import labelled_grid


MAX_VARIATIONS = 8
MAX_POINTS = 12


def _whole_number(name: str, value, low: int, high: int) -> int:
    if value is None or not float(value).is_integer() or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value}.")
    return int(value)


def vary_image(
    pipeline: TokenSetImg2ImgPipeline,
    image: PIL.Image.Image,
    class_id: int | str | None,
    strength: float,
    num_inference_steps: int,
    seed: int,
    num_variations: int,
) -> tuple[PIL.Image.Image, torch.LongTensor]:
    """`(figure, counts)`: the cropped input, its reconstruction and `num_variations` variations (variation i drawn
    with seed `seed + i`), in one labelled row; raises `ValueError` for bad values."""
    if image is None:
        raise ValueError("Upload an image, or pick one of the examples.")
    if strength is None or not 0.0 <= strength <= 1.0:
        raise ValueError(f"The strength must be in [0, 1], got {strength}.")
    label = parse_class_choice(pipeline, class_id, no_class=True)
    steps = _whole_number("The number of steps", num_inference_steps, 1, 10_000)
    seed = _whole_number("The seed", seed, 0, 2**63 - 1)
    count = _whole_number("The number of variations", num_variations, 1, MAX_VARIATIONS)
    pixel_values = preprocess_images(image, pipeline.image_tokenizer.config.image_size)  # (1, 3, S, S)
    output = pipeline(
        pixel_values.to(pipeline.device),
        class_labels=label,  # `None`: no class (unconditional)
        num_images_per_class=count,
        strength=float(strength),
        num_inference_steps=steps,
        generator=[torch.Generator(pipeline.device).manual_seed(seed + i) for i in range(count)],
    )
    reconstruction = pipeline(pixel_values.to(pipeline.device), class_labels=None, strength=0.0).images[0]
    cells = [postprocess_images(pixel_values)[0], reconstruction, *output.images]
    columns = ["input (cropped)", "reconstruction", *(f"seed {seed + i}" for i in range(count))]
    size = max(128, pipeline.image_tokenizer.config.image_size)
    return labelled_grid([cells], column_labels=columns, min_cell_size=size), output.counts


def interpolation_strip(
    pipeline: TokenSetImg2ImgPipeline,
    image_a: PIL.Image.Image,
    image_b: PIL.Image.Image,
    num_points: int,
    redenoise_strength: float,
    class_id: int | str | None,
    num_inference_steps: int,
    seed: int,
) -> tuple[PIL.Image.Image, torch.LongTensor]:
    """`(figure, path_counts)`: the decoded path (and, with re-denoising, a second row); raises `ValueError`."""
    if image_a is None or image_b is None:
        raise ValueError("Upload two images (or pick examples) to interpolate between.")
    points = _whole_number("The number of points", num_points, 2, MAX_POINTS)
    if redenoise_strength is None or not 0.0 <= redenoise_strength <= 1.0:
        raise ValueError(f"The re-denoising strength must be in [0, 1], got {redenoise_strength}.")
    label = parse_class_choice(pipeline, class_id, no_class=True)
    steps = _whole_number("The number of steps", num_inference_steps, 1, 10_000)
    seed = _whole_number("The seed", seed, 0, 2**63 - 1)
    plain = interpolate_images(pipeline, image_a, image_b, num_points=points)
    rows, row_labels = [plain.images], ["set mean"]
    if redenoise_strength > 0:
        redenoised = interpolate_images(
            pipeline,
            counts_a=plain.counts[0],
            counts_b=plain.counts[-1],
            num_points=points,
            redenoise_strength=float(redenoise_strength),
            class_labels=label,
            num_inference_steps=steps,
            generator=torch.Generator(pipeline.device).manual_seed(seed),
        )
        rows.append(redenoised.images)
        row_labels.append(f"re-denoised {redenoise_strength:g}")
    columns = [f"w = {weight:.2f}" for weight in plain.weights.tolist()]
    size = max(96, pipeline.image_tokenizer.config.image_size)
    figure = labelled_grid(rows, row_labels=row_labels, column_labels=columns, min_cell_size=size)
    return figure, plain.path_counts


def build_set_tabs(
    pipeline: TokenSetPipeline,
    max_steps: int,
    examples: Sequence[str] = (),
    guard_image: Callable[[gr.Image], gr.Image] = lambda image: image,
) -> None:
    """Adds the "Image variations" and "Set interpolation" tabs to the enclosing `gr.Blocks`. `guard_image` wraps
    every image input (app.py passes its upload check, which refuses non-images and decompression bombs).

    API names (for `gradio_client`): `/vary` and `/interpolate`.
    """
    variations = TokenSetImg2ImgPipeline.from_pipe(pipeline)
    variations.set_progress_bar_config(disable=False, desc="FSDD steps")

    def on_vary(image, class_id, strength, steps, seed, count, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        start = time.perf_counter()
        try:
            figure, counts = vary_image(variations, image, class_id, strength, steps, seed, count)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error
        run = int(steps * strength + 1e-9)
        return (
            figure,
            f"{len(counts)} variations, the last {run} of {steps} steps; {time.perf_counter() - start:.1f} s.",
        )

    def on_interpolate(
        image_a,
        image_b,
        points,
        strength,
        class_id,
        steps,
        seed,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008
    ):
        try:
            figure, path = interpolation_strip(variations, image_a, image_b, points, strength, class_id, steps, seed)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error
        shared = int(torch.minimum(path[0], path[-1]).sum())
        return figure, f"{len(path)} points; the two token sets share {shared} of M = {int(path[0].sum())} tokens."

    image_input = dict(type="pil", sources=["upload", "clipboard"], height=200)
    with gr.Tab("Image variations"):
        with gr.Row():
            with gr.Column(scale=1):
                image = guard_image(gr.Image(label="Image", elem_id="vary-input", **image_input))
                target = class_chooser(
                    pipeline, NO_CLASS, "Denoise towards class", no_class=True, elem_id="vary-class"
                )
                strength = gr.Slider(0, 1, value=0.6, step=0.05, label="Strength (0 = reconstruction, 1 = new)")
                steps = gr.Slider(1, max_steps, value=min(25, max_steps), step=1, label="FSDD steps (full schedule)")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (variation i uses seed + i)")
                count = gr.Slider(1, MAX_VARIATIONS, value=4, step=1, label="Variations")
                vary_button = gr.Button("Vary", variant="primary", elem_id="vary-button")
                if examples:
                    gr.Examples(
                        examples=[[path] for path in examples],
                        inputs=[image],
                        label="Examples",
                        elem_id="vary-examples",
                    )
            with gr.Column(scale=2):
                vary_figure = gr.Image(type="pil", format="png", show_label=False, elem_id="vary-figure")
                vary_info = gr.Markdown(elem_id="vary-info")
        vary_button.click(
            on_vary,
            inputs=[image, target, strength, steps, seed, count],
            outputs=[vary_figure, vary_info],
            api_name="vary",
        )
    with gr.Tab("Set interpolation"):
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    image_a = guard_image(gr.Image(label="Image A", elem_id="interpolate-a", **image_input))
                    image_b = guard_image(gr.Image(label="Image B", elem_id="interpolate-b", **image_input))
                if examples:
                    gr.Examples(examples=[[p, q] for p, q in zip(examples, examples[1:])], inputs=[image_a, image_b])
                points = gr.Slider(2, MAX_POINTS, value=8, step=1, label="Points (both ends included)")
                redenoise = gr.Slider(0, 1, value=0.0, step=0.05, label="Re-denoise inner points (strength; 0 = off)")
                redenoise_class = class_chooser(
                    pipeline, NO_CLASS, "Class for re-denoising", no_class=True, elem_id="interpolate-class"
                )
                redenoise_steps = gr.Slider(1, max_steps, value=min(25, max_steps), step=1, label="FSDD steps")
                interpolate_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                interpolate_button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
            with gr.Column(scale=2):
                strip = gr.Image(type="pil", format="png", show_label=False, elem_id="interpolate-strip")
                interpolate_info = gr.Markdown()
        interpolate_button.click(
            on_interpolate,
            inputs=[image_a, image_b, points, redenoise, redenoise_class, redenoise_steps, interpolate_seed],
            outputs=[strip, interpolate_info],
            api_name="interpolate",
        )

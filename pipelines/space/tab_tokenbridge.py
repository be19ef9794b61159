"""The "TokenBridge" tab of the demo: class-conditional generation with a `TokenBridgePipeline` (the bundled
`tokenbridge-digits` model by default, or the folder / Hub id in `$TOKENBRIDGE_MODEL` or `--tokenbridge_model`).

Pick classes (chips), the guidance scale (linear schedule, as the released models), the temperature, the number of
masked-autoregressive iterations and the seed; the result is a labelled grid, a row per class, image i of the
request seeded with `seed + i`. `build_tokenbridge_tab(pipeline)` adds the tab inside an open `gr.Blocks`;
API name (for `gradio_client`): `/generate_tokenbridge`.

The "Edit" tab (`build_tokenbridge_edit_tab(pipeline)`) inpaints with [`TokenBridgeInpaintPipeline`]: an uploaded
image, or one the model generates for a source class and seed, keeps the latent positions left unticked and
regenerates the ticked ones (pick a mask preset, or tick cells of the latent grid), for one or more classes; the result
is a figure with a row per class: the image, its mask, and the completions (completion j seeded with `seed + j`).
API name: `/edit_tokenbridge`.
"""

import os
import time
from collections.abc import Sequence

import gradio as gr
import PIL.Image
import torch

from pipelines.edit_figure import (
    DEFAULT_MASK_PRESET,
    MASK_PRESETS,
    cell_name,
    cells_to_mask,
    inpainting_figure,
    preset_cells,
)
from pipelines.space.class_choosers import class_chooser, class_name, parse_class_choice, parse_class_choices
from tokenset_diffusers import TokenBridgeInpaintPipeline, TokenBridgePipeline, postprocess_images, preprocess_images
from tokenset_diffusers.bundled import resolve_pipeline
from tokenset_diffusers.visualization import class_rows_grid


TOKENBRIDGE_MODEL_ENV_VAR = "TOKENBRIDGE_MODEL"


def load_tokenbridge_pipeline(
    model: str | os.PathLike | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> TokenBridgePipeline:
    """`model`, else `$TOKENBRIDGE_MODEL`, else the bundled `tokenbridge-digits` pipeline, loaded onto `device`: a
    folder, bundled model or Hub repo id (see [`~tokenset_diffusers.bundled.resolve_pipeline`]); `ValueError` for
    anything else, a TokenSet pipeline included."""
    source = model or os.environ.get(TOKENBRIDGE_MODEL_ENV_VAR) or None
    resolved = resolve_pipeline(source, default="tokenbridge-digits", system="tokenbridge")
    return TokenBridgePipeline.from_pretrained(resolved.folder, dtype=dtype).to(device)


def check_request(
    class_ids, images_per_class, guidance_scale, temperature, steps, seed, pipeline, max_images: int
) -> tuple[list[int], int, float, float, int, int]:
    """The request as Python numbers, or `ValueError` naming the bad input and what is allowed."""
    num_tokens = pipeline.transformer.num_tokens
    class_ids = parse_class_choices(pipeline, class_ids)
    for name, value in (("images per class", images_per_class), ("iterations", steps), ("seed", seed)):
        if value is None or not float(value).is_integer():
            raise ValueError(f"The {name} must be a whole number, got {value}.")
    images_per_class, steps, seed = int(images_per_class), int(steps), int(seed)
    if images_per_class < 1 or len(class_ids) * images_per_class > max_images:
        raise ValueError(
            f"At most {max_images} images per request: {len(class_ids)} classes x {images_per_class} per class."
        )
    if not 1 <= steps <= num_tokens:
        raise ValueError(f"The iterations must be in [1, {num_tokens}] (the number of tokens), got {steps}.")
    if seed < 0:
        raise ValueError(f"The seed must be >= 0, got {seed}.")
    if guidance_scale is None or guidance_scale < 0 or temperature is None or temperature < 0:
        raise ValueError(f"Guidance and temperature must be >= 0, got {guidance_scale} and {temperature}.")
    return class_ids, images_per_class, float(guidance_scale), float(temperature), steps, seed


def generate_tokenbridge_grid(
    pipeline: TokenBridgePipeline,
    class_ids: Sequence[int],
    images_per_class: int,
    guidance_scale: float,
    temperature: float,
    num_inference_steps: int,
    seed: int,
) -> PIL.Image.Image:
    """`images_per_class` images per class (image i seeded with `seed + i`) as a labelled grid, a row per class."""
    labels = [class_id for class_id in class_ids for _ in range(images_per_class)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    images = pipeline(
        labels,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        temperature=temperature,
        generator=generators,
    ).images
    return class_rows_grid(images, [class_name(pipeline, class_id) for class_id in class_ids], images_per_class)


def build_tokenbridge_tab(pipeline: TokenBridgePipeline, max_images: int = 16) -> gr.Tab:
    """Adds the "TokenBridge" tab to the `gr.Blocks` being built (call it inside `with gr.Blocks() as demo:`)."""
    if max_images < 1:
        raise ValueError(f"`max_images` must be at least 1, got {max_images}.")
    pipeline.set_progress_bar_config(disable=False, desc="masked-AR iterations")
    num_classes, num_tokens = pipeline.transformer.config.num_classes, pipeline.transformer.num_tokens
    initial = list(range(num_classes)) if num_classes <= max_images else [0]
    config = pipeline.config

    def on_generate(class_ids, images_per_class, guidance_scale, temperature, steps, seed, progress=gr.Progress()):  # noqa: B008
        try:
            request = check_request(
                class_ids, images_per_class, guidance_scale, temperature, steps, seed, pipeline, max_images
            )
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error
        class_ids, images_per_class, guidance_scale, temperature, steps, seed = request
        start = time.perf_counter()
        grid = generate_tokenbridge_grid(
            pipeline, class_ids, images_per_class, guidance_scale, temperature, steps, seed
        )
        count = len(class_ids) * images_per_class
        info = (
            f"{count} images, {steps} iterations, guidance {guidance_scale:g} (linear), temperature "
            f"{temperature:g}, seeds {seed} to {seed + count - 1}; {time.perf_counter() - start:.1f} s."
        )
        return grid, info

    with gr.Tab("TokenBridge") as tab:
        gr.Markdown(
            "[TokenBridge](https://arxiv.org/abs/2503.16430) quantizes each channel of a continuous VAE's latents "
            "after training and generates the discrete tokens with a masked autoregressive transformer and a "
            f"channel-by-channel head. This model: {num_classes} classes, {num_tokens} tokens of "
            f"{pipeline.transformer.config.latent_channels} channels, {pipeline.transformer.num_levels} levels each."
        )
        with gr.Row():
            with gr.Column(scale=1):
                classes = class_chooser(
                    pipeline,
                    initial,
                    "Classes",
                    multiselect=True,
                    info="One row of images per class.",
                    elem_id="tokenbridge-classes",
                )
                images_per_class = gr.Slider(1, max_images, value=1, step=1, label="Images per class")
                guidance = gr.Number(
                    value=config.default_guidance_scale, minimum=0, label="Guidance scale (1 = none; linear schedule)"
                )
                temperature = gr.Number(value=config.default_temperature, minimum=0, label="Temperature (0 = greedy)")
                steps = gr.Slider(
                    1, num_tokens, value=config.default_num_inference_steps, step=1, label="Masked-AR iterations"
                )
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (image i uses seed + i)")
                button = gr.Button("Generate", variant="primary", elem_id="tokenbridge-generate-button")
            with gr.Column(scale=2):
                grid = gr.Image(type="pil", format="png", show_label=False, elem_id="tokenbridge-grid")
                info = gr.Markdown(elem_id="tokenbridge-info")
        button.click(
            on_generate,
            inputs=[classes, images_per_class, guidance, temperature, steps, seed],
            outputs=[grid, info],
            api_name="generate_tokenbridge",
        )
    return tab


# ---------------------------------------------------------------------- the "Edit" tab


def source_image(
    pipeline: TokenBridgePipeline, upload: PIL.Image.Image | None, source_class: int, source_seed: int
) -> PIL.Image.Image:
    """The image to edit: the upload centre-cropped to the model's size, else the model's image of `source_class`
    seeded with `source_seed`."""
    if upload is not None:
        return postprocess_images(preprocess_images(upload, pipeline.image_size))[0]
    return pipeline(source_class, generator=torch.Generator().manual_seed(source_seed)).images[0]


def build_tokenbridge_edit_tab(pipeline: TokenBridgePipeline, max_images: int = 16) -> gr.Tab:
    """Adds the "Edit" tab (inpainting with the TokenBridge pipeline) to the `gr.Blocks` being built."""
    if max_images < 1:
        raise ValueError(f"`max_images` must be at least 1, got {max_images}.")
    inpaint = TokenBridgeInpaintPipeline.from_pipe(pipeline)
    inpaint.set_progress_bar_config(disable=False, desc="masked-AR iterations")
    num_classes, num_tokens = pipeline.transformer.config.num_classes, pipeline.transformer.num_tokens
    grid_size, image_size = pipeline.transformer.config.sample_size, pipeline.image_size
    all_cells = [cell_name(row, column) for row in range(grid_size) for column in range(grid_size)]
    config = pipeline.config

    def on_edit(
        upload, source_class, source_seed, cells, class_ids, completions, guidance_scale, temperature, steps, seed,
        progress=gr.Progress(),  # noqa: B008
    ):  # fmt: skip
        try:
            class_ids, completions, guidance_scale, temperature, steps, seed = check_request(
                class_ids, completions, guidance_scale, temperature, steps, seed, pipeline, max_images
            )
            if source_seed is None or not float(source_seed).is_integer() or source_seed < 0:
                raise ValueError(f"The source seed must be a whole number >= 0, got {source_seed}.")
            if upload is None:
                source_class = parse_class_choice(pipeline, source_class)
            mask = cells_to_mask(cells or [], grid_size, image_size)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error
        start = time.perf_counter()
        image = source_image(pipeline, upload, source_class, int(source_seed))
        figure = inpainting_figure(
            inpaint, image, mask, class_ids, completions, seed, guidance_scale, temperature, steps
        )
        info = (
            f"{len(cells or [])} of {num_tokens} positions regenerated, {len(class_ids)} classes x {completions} "
            f"completions, guidance {guidance_scale:g} (linear), temperature {temperature:g}; "
            f"{time.perf_counter() - start:.1f} s."
        )
        return figure, info

    with gr.Tab("Edit"):
        gr.Markdown(
            "Inpainting with TokenBridge: the image's tokens at the positions you keep start the masked "
            "autoregressive schedule as known; the model generates the ticked positions, conditioned on them and on "
            f"the class. The latent grid is {grid_size} x {grid_size} (one cell per {image_size // grid_size} x "
            f"{image_size // grid_size} pixels of the {image_size} px image)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.Image(
                    type="pil",
                    label=f"Image to edit (optional; centre-cropped to {image_size} px)",
                    sources=["upload"],
                )
                source_class = class_chooser(
                    pipeline, min(3, num_classes - 1), "Without an upload: the class", elem_id="edit-source-class"
                )
                source_seed = gr.Number(value=0, precision=0, minimum=0, label="Without an upload: the seed")
                preset = gr.Dropdown(
                    choices=list(MASK_PRESETS), value=DEFAULT_MASK_PRESET, label="Mask preset", elem_id="edit-preset"
                )
                cells = gr.CheckboxGroup(
                    choices=all_cells,
                    value=preset_cells(DEFAULT_MASK_PRESET, grid_size),
                    label="Cells to regenerate (the mask on the latent grid, row by row)",
                    elem_id="edit-cells",
                )
                classes = class_chooser(
                    pipeline,
                    [min(3, num_classes - 1), min(8, num_classes - 1)],
                    "Classes",
                    multiselect=True,
                    info="One row of completions per class.",
                    elem_id="edit-classes",
                )
                completions = gr.Slider(1, max_images, value=3, step=1, label="Completions per class")
                guidance = gr.Number(value=config.default_guidance_scale, minimum=0, label="Guidance scale")
                temperature = gr.Number(value=config.default_temperature, minimum=0, label="Temperature")
                steps = gr.Slider(
                    1, num_tokens, value=config.default_num_inference_steps, step=1, label="Masked-AR iterations"
                )
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (completion j uses seed + j)")
                button = gr.Button("Generate", variant="primary", elem_id="edit-generate-button")
            with gr.Column(scale=2):
                figure = gr.Image(type="pil", format="png", show_label=False, elem_id="edit-figure")
                info = gr.Markdown(elem_id="edit-info")
        preset.change(lambda name: preset_cells(name, grid_size), inputs=preset, outputs=cells, api_name=False)
        button.click(
            on_edit,
            inputs=[
                upload,
                source_class,
                source_seed,
                cells,
                classes,
                completions,
                guidance,
                temperature,
                steps,
                seed,
            ],
            outputs=[figure, info],
            api_name="edit_tokenbridge",
        )

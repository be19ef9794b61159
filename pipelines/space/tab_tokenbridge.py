"""The "TokenBridge" tab of the demo: class-conditional generation with a `TokenBridgePipeline` (the bundled
`tokenbridge-digits` model by default, or the folder / Hub id in `$TOKENBRIDGE_MODEL` or `--tokenbridge_model`).

Pick classes (chips), the guidance scale (linear schedule, as the released models), the temperature, the number of
masked-autoregressive iterations and the seed; the result is a labelled grid, a row per class, image i of the
request seeded with `seed + i`. `build_tokenbridge_tab(pipeline)` adds the tab inside an open `gr.Blocks`;
API name (for `gradio_client`): `/generate_tokenbridge`.
"""

import os
import time
from collections.abc import Sequence

import gradio as gr
import PIL.Image
import torch

from tokenset_diffusers import TokenBridgePipeline
from tokenset_diffusers.bundled import resolve_pipeline
from tokenset_diffusers.class_labels import class_caption
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


def class_name(pipeline: TokenBridgePipeline, class_id: int) -> str:
    """`"<id>: <first name>"`, or the bare id for a pipeline without `id2label`."""
    return class_caption(pipeline.config.id2label, class_id)


def check_request(
    class_ids, images_per_class, guidance_scale, temperature, steps, seed, pipeline, max_images: int
) -> tuple[list[int], int, float, float, int, int]:
    """The request as Python numbers, or `ValueError` naming the bad input and what is allowed."""
    num_classes, num_tokens = pipeline.transformer.config.num_classes, pipeline.transformer.num_tokens
    if not class_ids:
        raise ValueError("Pick at least one class.")
    class_ids = [int(class_id) for class_id in class_ids]
    if any(not 0 <= class_id < num_classes for class_id in class_ids):
        raise ValueError(f"Classes must be ids in [0, {num_classes}), got {class_ids}.")
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
    choices = [(class_name(pipeline, i), i) for i in range(num_classes)]
    initial = [class_id for _, class_id in choices] if num_classes <= max_images else [0]
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
                classes = gr.Dropdown(
                    choices=choices,
                    value=initial,
                    multiselect=True,
                    filterable=True,
                    label="Classes",
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

"""TokenBridge editing: TokenBridgeInpaintPipeline and TokenBridgeImg2ImgPipeline.

The identities, on a tiny random model and on the bundled digits model: an all-black mask (strength 0) returns the
image's own tokens; an all-white mask (strength 1) is plain generation with the same generator, draw for draw; kept
tokens never change during sampling (checked at every step); the mask is reduced to the latent grid with the
any-pixel rule. Also: a chi-square test that the kept tokens condition what is generated, the cost in forward passes,
outpainting, `from_pipe` and loading from a folder.
"""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL
from helpers.tokenbridge import single_thread  # noqa: F401 (autouse)
from scipy.stats import chi2_contingency

from tokenset_diffusers import (
    MaskedARScheduler,
    TokenBridgeImg2ImgPipeline,
    TokenBridgeInpaintPipeline,
    TokenBridgePipeline,
    TokenBridgeTransformer2DModel,
    bundled_pipeline_path,
    mask_to_latent_grid,
    outpaint_canvas,
    preprocess_masks,
)
from tokenset_diffusers.utils.testing_utils import TINY_TOKENBRIDGE, TINY_VAE


NAMES = {0: "red", 1: "green", 2: "blue"}
SIZE = TINY_VAE["image_size"]  # 8 px, a 4 x 4 latent grid: one latent position per 2 x 2 pixels


def build_tiny() -> TokenBridgePipeline:
    """A tiny random TokenBridge pipeline of the real classes (8 px images, 16 positions of 4 channels)."""
    torch.manual_seed(0)
    levels = len(TINY_VAE["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(TINY_VAE["block_out_channels"]),
        layers_per_block=TINY_VAE["layers_per_block"],
        latent_channels=TINY_VAE["latent_channels"],
        norm_num_groups=TINY_VAE["norm_num_groups"],
        sample_size=SIZE,
    ).eval()
    sample_size = SIZE // 2 ** (levels - 1)
    transformer = TokenBridgeTransformer2DModel(
        sample_size=sample_size,
        latent_channels=TINY_VAE["latent_channels"],
        num_classes=len(NAMES),
        channel_order=[2, 0, 3, 1],
        **TINY_TOKENBRIDGE,
    ).eval()
    pipe = TokenBridgePipeline(
        transformer,
        vae,
        MaskedARScheduler(num_tokens=sample_size**2),
        id2label=NAMES,
        default_num_inference_steps=4,
        default_guidance_scale=2.0,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _edit_pipelines(pipe):
    inpaint, img2img = TokenBridgeInpaintPipeline.from_pipe(pipe), TokenBridgeImg2ImgPipeline.from_pipe(pipe)
    inpaint.set_progress_bar_config(disable=True)
    img2img.set_progress_bar_config(disable=True)
    return {"plain": pipe, "inpaint": inpaint, "img2img": img2img}


@pytest.fixture(scope="module", params=["tiny", "bundled"])
def pipes(request):
    if request.param == "tiny":
        return _edit_pipelines(build_tiny())
    pipe = TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))
    pipe.set_progress_bar_config(disable=True)
    return _edit_pipelines(pipe)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def image(pipes):
    """A generated image of the model (PIL, 8 x 8)."""
    return pipes["plain"](1, generator=seeded(3)).images[0]


def left_half_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:, : SIZE // 2] = 255
    return mask


# ---------------------------------------------------------------------- the identities


def test_all_black_mask_and_strength_zero_return_the_images_own_tokens(pipes, image):
    own = pipes["plain"].encode_images(image)  # (1, L, C)
    black = np.zeros((SIZE, SIZE), dtype=np.uint8)
    inpainted = pipes["inpaint"](image, black, [0, 2], generator=seeded(0), output_type="latent")
    varied = pipes["img2img"](image, 0.0, [0, 2], generator=seeded(0), output_type="latent")
    for output in (inpainted, varied):
        assert torch.equal(output.indices, own.expand(2, -1, -1))
        transformer = pipes["plain"].transformer
        expected = transformer.unpatchify(transformer.quantizer.dequantize(own))  # (1, C, h, w)
        assert torch.equal(output.images, expected.expand(2, -1, -1, -1))


def test_encoded_tokens_are_the_quantized_posterior_mean(pipes, image):
    """The posterior mean, not a sample: computed here from the VAE and the quantizer directly, and the same whatever
    was drawn in between."""
    plain = pipes["plain"]
    first = plain.encode_images(image)
    pixel_values = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, 8, 8)
    torch.manual_seed(123)
    mean = plain.vae.encode(pixel_values).latent_dist.mean * plain.vae.config.scaling_factor  # (1, C, 4, 4)
    tokens = mean.reshape(1, mean.shape[1], -1).transpose(1, 2)  # (1, L, C), positions row-major
    assert torch.equal(first, plain.transformer.quantizer.quantize(tokens))
    torch.rand(100)
    assert torch.equal(first, plain.encode_images(image))


@pytest.mark.parametrize("batch_size", [None, 1])
def test_all_white_mask_and_strength_one_are_plain_generation(pipes, image, batch_size):
    white = PIL.Image.new("L", (SIZE, SIZE), 255)
    kwargs = {"num_inference_steps": 4, "guidance_scale": 2.5, "temperature": 0.9, "output_type": "np"}
    kwargs |= {"num_images_per_class": 2, "batch_size": batch_size}
    plain = pipes["plain"]([0, 2], generator=[seeded(i) for i in range(4)], **kwargs)
    inpainted = pipes["inpaint"](image, white, [0, 2], generator=[seeded(i) for i in range(4)], **kwargs)
    varied = pipes["img2img"](image, 1.0, [0, 2], generator=[seeded(i) for i in range(4)], **kwargs)
    for output in (inpainted, varied):
        assert torch.equal(output.indices, plain.indices)
        np.testing.assert_array_equal(output.images, plain.images)
    # One shared generator too, and unconditional generation.
    plain = pipes["plain"](None, generator=seeded(7), num_images=3, output_type="indices")
    inpainted = pipes["inpaint"]([image] * 3, white, None, generator=seeded(7), output_type="indices")
    assert torch.equal(inpainted.indices, plain.indices)


def test_kept_tokens_never_change_during_sampling(pipes, image):
    own = pipes["plain"].encode_images(image)[0]  # (L, C)
    grid = pipes["plain"].transformer.config.sample_size
    regenerate = torch.zeros(grid, grid, dtype=torch.bool)
    regenerate[:, : grid // 2] = True
    regenerate = regenerate.flatten()  # (L,): the left half of the grid
    seen = []

    def check(pipeline, step_index, timestep, tensors):
        latents, mask = tensors["latents"], tensors["mask"]  # (B, L, C), (B, L)
        seen.append(
            (
                step_index,
                bool((latents[:, ~regenerate] == own[~regenerate]).all()),
                bool(mask[:, ~regenerate].any()),
                int(mask.sum(dim=1).max()),
            )
        )
        return {}

    output = pipes["inpaint"](
        image,
        left_half_mask(),
        [0, 1, 2],
        num_inference_steps=4,
        generator=seeded(1),
        callback_on_step_end=check,
        callback_on_step_end_tensor_inputs=["latents", "mask"],
        output_type="indices",
    )
    assert [step for step, *_ in seen] == [0, 1, 2, 3]  # 8 positions to generate, 4 steps
    assert all(kept_equal for _, kept_equal, _, _ in seen)
    assert not any(kept_masked for _, _, kept_masked, _ in seen)
    assert seen[-1][3] == 0  # everything known after the last step
    assert torch.equal(output.indices[:, ~regenerate], own[~regenerate].expand(3, -1, -1))


def test_masked_ar_schedule_counts_only_the_regenerated_positions(pipes, image):
    one_cell = np.zeros((SIZE, SIZE), dtype=np.uint8)
    one_cell[3, 5] = 255  # one pixel: the position (row 1, column 2) alone
    steps = []
    pipes["inpaint"](
        image, one_cell, 0, num_inference_steps=4, callback_on_step_end=lambda p, i, t, x: steps.append(i) or {}
    )
    scheduler = pipes["inpaint"].scheduler
    assert steps == [0] and scheduler.num_generated == 1 and scheduler.num_predicted == [1]
    pipes["inpaint"](image, left_half_mask(), 0, num_inference_steps=4)
    num_tokens = scheduler.config.num_tokens
    assert scheduler.num_generated == num_tokens // 2 and sum(scheduler.num_predicted) == num_tokens // 2
    assert scheduler.num_unknown[0] == num_tokens // 2


def test_an_edit_costs_no_more_forward_passes_than_plain_generation(pipes, image, monkeypatch):
    transformer = pipes["plain"].transformer
    calls = []
    conditions = transformer.conditions
    monkeypatch.setattr(transformer, "conditions", lambda *args: calls.append(len(args[0])) or conditions(*args))
    pipes["plain"]([0, 1], num_inference_steps=4, guidance_scale=2.0, generator=seeded(0))
    plain_calls = len(calls)
    for edit in (
        lambda: pipes["inpaint"](image, left_half_mask(), [0, 1], num_inference_steps=4, guidance_scale=2.0),
        lambda: pipes["img2img"](image, 0.75, [0, 1], num_inference_steps=4, guidance_scale=2.0),
    ):
        calls.clear()
        edit()
        assert 0 < len(calls) <= plain_calls == 4


# ---------------------------------------------------------------------- distributions


def test_all_white_mask_token_distribution_equals_plain(image):
    """The same code path: many samples agree draw for draw, so their token histograms are equal."""
    pipes = _edit_pipelines(build_tiny())
    num_samples = 200
    levels = pipes["plain"].transformer.quantizer.num_levels
    plain = pipes["plain"](
        [0, 1], num_images_per_class=num_samples // 2, generator=[seeded(i) for i in range(num_samples)],
        output_type="indices",
    ).indices  # fmt: skip
    white = np.full((SIZE, SIZE), 255, dtype=np.uint8)
    inpainted = pipes["inpaint"](
        image, white, [0, 1], num_images_per_class=num_samples // 2, generator=[seeded(i) for i in range(num_samples)],
        output_type="indices",
    ).indices  # fmt: skip
    assert torch.equal(torch.bincount(inpainted.flatten(), minlength=levels), torch.bincount(plain.flatten()))
    assert torch.equal(inpainted, plain)
    assert len(torch.unique(plain[:, 0, 0])) > 1  # the samples do vary


def test_kept_tokens_condition_the_generated_ones():
    """Chi-square: on the bundled model, the one regenerated position's levels depend on the kept tokens around it
    (unconditional, so the kept tokens are the only condition). A sampler that ignored them would draw both contexts
    from the same distribution."""
    pipe = TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))
    inpaint = TokenBridgeInpaintPipeline.from_pipe(pipe)
    inpaint.set_progress_bar_config(disable=True)
    contexts = [pipe(digit, generator=seeded(digit), output_type="pt").images for digit in (1, 8)]  # (1, 3, 8, 8)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[2:4, 2:4] = 255  # the position (1, 1) alone
    position = 5
    channel = pipe.transformer.config.channel_order[0]  # the first channel the head samples
    num_samples = 300
    histograms = []
    for context in contexts:
        indices = inpaint(
            context * 2 - 1, mask, None, num_images_per_class=num_samples, generator=seeded(0), output_type="indices"
        ).indices  # (num_samples, L, C)
        levels = indices[:, position, channel]
        histograms.append(torch.bincount(levels // 4, minlength=pipe.transformer.quantizer.num_levels // 4).numpy())
    table = np.stack(histograms)
    table = table[:, table.sum(axis=0) > 0]
    assert chi2_contingency(table)[1] < 1e-6


# ---------------------------------------------------------------------- masks


def test_mask_forms_agree_and_reduce_with_the_any_pixel_rule():
    array = np.zeros((SIZE, SIZE), dtype=np.uint8)
    array[0, 0] = 255  # one pixel of cell (0, 0)
    array[5:7, 5:7] = 255  # one pixel of each of the cells (2, 2), (2, 3), (3, 2), (3, 3)
    forms = [
        array,
        PIL.Image.fromarray(array),
        PIL.Image.fromarray(array).convert("RGB"),
        array.astype(np.float32) / 255,
        torch.from_numpy(array).float()[None] / 255,  # (1, H, W)
        torch.from_numpy(array).float()[None, None] / 255,  # (B, 1, H, W)
    ]
    masks = [preprocess_masks(form, SIZE) for form in forms]
    for mask in masks:
        assert torch.equal(mask, masks[0])
    grid = mask_to_latent_grid(masks[0], 4).reshape(4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 0] = expected[2:, 2:] = True
    assert torch.equal(grid, expected)
    # Grey below one half keeps, from one half on regenerates (diffusers binarises at 0.5).
    assert not preprocess_masks(np.full((SIZE, SIZE), 0.49, dtype=np.float32), SIZE).any()
    assert preprocess_masks(np.full((SIZE, SIZE), 0.5, dtype=np.float32), SIZE).all()


def test_bad_masks_are_clear_value_errors(pipes, image):
    inpaint = pipes["inpaint"]
    with pytest.raises(ValueError, match="mask_image` must have the size of its image.*4x8.*8x8"):
        inpaint(image, np.zeros((8, 4), dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="must have the size of its image"):
        inpaint(image.resize((16, 16)), np.zeros((8, 8), dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        inpaint(image, np.full((8, 8), 2.0, dtype=np.float32), 0)
    different = [np.zeros((SIZE, SIZE), dtype=np.uint8), left_half_mask()]
    with pytest.raises(ValueError, match="same number of latent positions.*\\[0, 8\\]"):
        inpaint([image, image], different, 0)
    with pytest.raises(ValueError, match="2 images and 3 masks"):
        inpaint([image, image], [left_half_mask()] * 3, 0)
    with pytest.raises(ValueError, match="strength"):
        pipes["img2img"](image, 1.5, 0)


def test_a_larger_mask_and_image_get_the_same_crop(pipes):
    """A 16 px image and mask are centre-cropped alike: a mask of the right half keeps the left half's tokens."""
    big = pipes["plain"](2, generator=seeded(0), output_type="pil").images[0].resize((16, 16), PIL.Image.NEAREST)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255
    own = pipes["plain"].encode_images(big)[0]
    output = pipes["inpaint"](big, mask, 0, generator=seeded(0), output_type="indices")
    left = torch.arange(16).reshape(4, 4)[:, :2].flatten()
    assert torch.equal(output.indices[0, left], own[left])


# ---------------------------------------------------------------------- variations


def test_img2img_regenerates_a_random_share_chosen_with_the_generator(pipes, image, monkeypatch):
    """The regenerated positions are the first floor(strength * L) of each drawn order, a different set per image;
    the others keep the image's tokens at every step."""
    own = pipes["plain"].encode_images(image)[0]  # (L, C)
    scheduler = pipes["img2img"].scheduler
    num_tokens = scheduler.config.num_tokens
    orders, kept_ok = [], []
    sample_orders = scheduler.sample_orders
    monkeypatch.setattr(
        scheduler, "sample_orders", lambda *args, **kwargs: orders.append(sample_orders(*args, **kwargs)) or orders[-1]
    )

    def check(pipeline, step_index, timestep, tensors):
        kept = torch.argsort(orders[-1], dim=1) >= num_tokens // 2  # (B, L)
        kept_ok.append(bool((tensors["latents"][kept] == own.expand(3, -1, -1)[kept]).all()))
        kept_ok.append(not bool(tensors["mask"][kept].any()))
        return {}

    first = pipes["img2img"](
        image, 0.5, [0, 1, 2], num_inference_steps=3, generator=seeded(4), output_type="indices",
        callback_on_step_end=check, callback_on_step_end_tensor_inputs=["latents", "mask"],
    ).indices  # fmt: skip
    assert scheduler.num_generated == num_tokens // 2 and len(kept_ok) == 6 and all(kept_ok)
    kept = torch.argsort(orders[-1], dim=1) >= num_tokens // 2
    assert torch.equal(first[kept], own.expand(3, -1, -1)[kept])
    assert len({tuple(row.tolist()) for row in kept}) > 1  # a different random set per image
    again = pipes["img2img"](image, 0.5, [0, 1, 2], num_inference_steps=3, generator=seeded(4), output_type="indices")
    assert torch.equal(first, again.indices)
    # floor(strength * L) positions.
    pipes["img2img"](image, 0.3, 0, output_type="indices")
    assert scheduler.num_generated == int(0.3 * num_tokens)


# ---------------------------------------------------------------------- outpainting


def test_outpaint_canvas_places_the_image_and_masks_the_rest(image):
    canvas, mask = outpaint_canvas(image, canvas_size=(12, 8), offset=(4, -2))
    assert canvas.size == mask.size == (12, 8) and canvas.mode == "RGB" and mask.mode == "L"
    pixels, mask = np.asarray(canvas), np.asarray(mask)
    np.testing.assert_array_equal(pixels[0:6, 4:12], np.asarray(image)[2:8, 0:8])
    expected = np.full((8, 12), 255, dtype=np.uint8)
    expected[0:6, 4:12] = 0
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(ValueError, match="canvas_size"):
        outpaint_canvas(image, canvas_size=0)


def test_outpainting_is_inpainting_on_a_shifted_canvas(pipes, image):
    """Shifted right by half the width: the right half's tokens are those of the shifted image, the left half is
    generated."""
    canvas, mask = outpaint_canvas(image, canvas_size=SIZE, offset=(SIZE // 2, 0))
    own = pipes["plain"].encode_images(canvas)[0]
    output = pipes["inpaint"](canvas, mask, 1, generator=seeded(0), output_type="indices")
    grid = torch.arange(16).reshape(4, 4)
    assert torch.equal(output.indices[0, grid[:, 2:].flatten()], own[grid[:, 2:].flatten()])
    assert pipes["inpaint"].scheduler.num_generated == 8


# ---------------------------------------------------------------------- building and loading


def test_from_pipe_shares_the_components(pipes):
    plain = pipes["plain"]
    for name in ("inpaint", "img2img"):
        edit = pipes[name]
        assert edit.transformer is plain.transformer and edit.vae is plain.vae and edit.scheduler is plain.scheduler
        assert edit.config.id2label == plain.config.id2label
        assert edit.config.default_num_inference_steps == plain.config.default_num_inference_steps
    back = TokenBridgePipeline.from_pipe(pipes["inpaint"])
    assert type(back) is TokenBridgePipeline and back.transformer is plain.transformer
    with pytest.raises(ValueError, match="TokenBridgePipeline"):
        TokenBridgeInpaintPipeline.from_pipe(object())


def test_load_from_a_folder(tmp_path, image):
    pipe = build_tiny()
    pipe.save_pretrained(tmp_path / "plain")
    inpaint = TokenBridgeInpaintPipeline.from_pretrained(tmp_path / "plain")
    inpaint.set_progress_bar_config(disable=True)
    reference = TokenBridgeInpaintPipeline.from_pipe(pipe)
    reference.set_progress_bar_config(disable=True)
    args = (image, left_half_mask(), [0, 2])
    expected = reference(*args, generator=seeded(0), output_type="np")
    loaded = inpaint(*args, generator=seeded(0), output_type="np")
    assert torch.equal(loaded.indices, expected.indices)
    np.testing.assert_allclose(loaded.images, expected.images, atol=1e-6)
    # The edit pipeline saves and loads as itself, and as a plain pipeline.
    inpaint.save_pretrained(tmp_path / "inpaint")
    again = TokenBridgeInpaintPipeline.from_pretrained(tmp_path / "inpaint")
    again.set_progress_bar_config(disable=True)
    assert torch.equal(again(*args, generator=seeded(0), output_type="indices").indices, expected.indices)
    img2img = TokenBridgeImg2ImgPipeline.from_pretrained(tmp_path / "inpaint")
    assert isinstance(img2img, TokenBridgeImg2ImgPipeline)
    # A bare DiffusionPipeline loads the saved edit folder as its own class (import files written by save_pretrained).
    from diffusers import DiffusionPipeline

    bare = DiffusionPipeline.from_pretrained(tmp_path / "inpaint", trust_remote_code=True)
    assert type(bare).__name__ == "TokenBridgeInpaintPipeline"
    bare.set_progress_bar_config(disable=True)
    assert torch.equal(bare(*args, generator=seeded(0), output_type="indices").indices, expected.indices)


def test_bundled_model_loads_as_edit_pipelines():
    folder = bundled_pipeline_path("tokenbridge-digits")
    for cls in (TokenBridgeInpaintPipeline, TokenBridgeImg2ImgPipeline):
        pipe = cls.from_pretrained(folder)
        assert type(pipe) is cls and pipe.transformer.config.num_classes == 10


# ---------------------------------------------------------------------- the scheduler's hooks


@pytest.mark.parametrize("num_generated", [2, 5, 12])
def test_schedule_over_the_generated_positions_is_a_schedule_of_that_many_tokens(num_generated):
    scheduler, alone = MaskedARScheduler(num_tokens=16), MaskedARScheduler(num_tokens=num_generated)
    steps = min(4, num_generated)
    scheduler.set_timesteps(steps, num_generated=num_generated)
    alone.set_timesteps(steps)
    assert scheduler.num_unknown == alone.num_unknown and scheduler.num_predicted == alone.num_predicted
    assert scheduler.mask_lengths == alone.mask_lengths and scheduler.num_generated == num_generated
    # The guidance weight grows with the known share of the whole grid (kept positions are known).
    assert scheduler.guidance_weight(0, 3.0) == 1.0 + 2.0 * (16 - scheduler.mask_lengths[0]) / 16


def test_schedule_hooks_check_their_arguments():
    scheduler = MaskedARScheduler(num_tokens=16)
    scheduler.set_timesteps(0, num_generated=0)
    assert scheduler.num_inference_steps == 0 and scheduler.num_unknown == [] and scheduler.num_generated == 0
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(5, num_generated=4)
    with pytest.raises(ValueError, match="num_generated"):
        scheduler.set_timesteps(4, num_generated=17)
    scheduler.set_timesteps(4)
    assert scheduler.num_generated == 16
    with pytest.raises(ValueError, match="known"):
        scheduler.sample_orders(2, known=torch.zeros(2, 15, dtype=torch.bool))


def test_orders_put_known_positions_last_from_the_same_draws():
    scheduler = MaskedARScheduler(num_tokens=16)
    known = torch.zeros(3, 16, dtype=torch.bool)
    assert torch.equal(scheduler.sample_orders(3, seeded(0), known=known), scheduler.sample_orders(3, seeded(0)))
    known[0, [1, 4, 9]] = known[1, :8] = known[2, 15] = True
    orders = scheduler.sample_orders(3, seeded(0), known=known)
    for row in range(3):
        num_known = int(known[row].sum())
        assert set(orders[row, 16 - num_known :].tolist()) == set(known[row].nonzero().flatten().tolist())
        # The generated positions come in the relative order of the plain draw.
        plain = scheduler.sample_orders(3, seeded(0))[row]
        assert orders[row, : 16 - num_known].tolist() == [p for p in plain.tolist() if not known[row, p]]

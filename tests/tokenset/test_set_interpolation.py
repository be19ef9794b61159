"""Set interpolation: the path of fixed-sum count vectors (checked against a direct largest-remainder rounding), its
ends, re-denoising, the strip of images, and the command line on the bundled model."""

import numpy as np
import PIL.Image
import pytest
import torch
from helpers.scripts import load_script

from tokenset_diffusers import (
    TokenSetPipeline,
    bundled_pipeline_path,
    interpolate_counts,
    interpolate_images,
    interpolation_weights,
    tokens_to_counts,
)


def _largest_remainder(values: list[float], total: int) -> list[int]:
    """The direct computation: floors, then +1 on the largest fractional parts until the sum is `total`."""
    floors = [int(np.floor(v)) for v in values]
    order = sorted(range(len(values)), key=lambda i: -(values[i] - floors[i]))
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return floors


def _random_counts(generator, batch_size, codebook_size, num_tokens):
    token_ids = torch.randint(0, codebook_size, (batch_size, num_tokens), generator=generator)
    return tokens_to_counts(token_ids, codebook_size)


def test_path_is_the_fixed_sum_rounding_of_the_weighted_mean():
    generator = torch.Generator().manual_seed(0)
    counts_a, counts_b = _random_counts(generator, 2, 24, 11)
    weights = torch.tensor([0.0, 0.13, 0.5, 0.77, 1.0])
    path = interpolate_counts(counts_a, counts_b, weights)
    assert path.shape == (5, 24) and path.dtype == torch.long
    assert (path.sum(-1) == 11).all()
    torch.testing.assert_close(path[0], counts_a, rtol=0, atol=0)
    torch.testing.assert_close(path[-1], counts_b, rtol=0, atol=0)
    for point, weight in zip(path, weights.tolist()):
        mean = ((1 - weight) * counts_a.double() + weight * counts_b.double()).tolist()
        assert (point.double() - torch.tensor(mean)).abs().max() < 1
        # Equal fractional parts may be ordered either way; the rounding is unique up to such ties.
        direct = _largest_remainder(mean, 11)
        fractions = [m - np.floor(m) for m in mean]
        differ = [i for i in range(24) if direct[i] != int(point[i])]
        assert len({round(fractions[i], 9) for i in differ}) <= 1, (differ, direct, point.tolist())


def test_batched_ends_give_one_path_per_row_and_the_overlap_moves_from_a_to_b():
    generator = torch.Generator().manual_seed(1)
    counts_a = _random_counts(generator, 3, 40, 16)
    counts_b = _random_counts(generator, 3, 40, 16)
    path = interpolate_counts(counts_a, counts_b, interpolation_weights(9))  # (3, 9, 40)
    assert path.shape == (3, 9, 40)
    for row in range(3):
        torch.testing.assert_close(
            path[row], interpolate_counts(counts_a[row], counts_b[row], interpolation_weights(9))
        )
    overlap_b = torch.minimum(path, counts_b[:, None]).sum(-1)  # (3, 9)
    assert (overlap_b.diff(dim=-1) >= 0).all()
    assert (overlap_b[:, -1] == 16).all()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.ones(4, dtype=torch.long), torch.ones(5, dtype=torch.long), [0.5]), "same shape"),
        ((torch.ones(4, dtype=torch.long), torch.tensor([4, 0, 0, 1]), [0.5]), "same M"),
        ((torch.ones(4), torch.ones(4), [0.5]), "integer tensor"),
        ((torch.ones(4, dtype=torch.long), torch.ones(4, dtype=torch.long), [1.5]), "weights"),
        ((torch.ones(4, dtype=torch.long), torch.ones(4, dtype=torch.long), []), "weights"),
    ],
)
def test_bad_paths_raise(args, match):
    with pytest.raises(ValueError, match=match):
        interpolate_counts(*args)


def test_weights_need_two_points():
    torch.testing.assert_close(interpolation_weights(3), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="num_points"):
        interpolation_weights(1)


@pytest.fixture(scope="module")
def digits():
    pipeline = TokenSetPipeline.from_pretrained(bundled_pipeline_path())
    pipeline.set_progress_bar_config(disable=True)
    quality = load_script("pipelines/digits_quality.py")
    images, labels = quality.held_out_digits(pipeline.image_tokenizer.config.image_size)
    return pipeline, images, labels


def test_strip_of_images_decodes_the_path_and_redenoising_moves_inner_points_only(digits):
    pipeline, images, labels = digits
    first, second = images[int(np.flatnonzero(labels == 0)[0])], images[int(np.flatnonzero(labels == 1)[0])]
    plain = interpolate_images(pipeline, first, second, num_points=5, output_type="pt")
    tokenizer = pipeline.image_tokenizer
    ends = torch.cat([plain.counts[:1], plain.counts[-1:]])
    from tokenset_diffusers import preprocess_images

    encoded = tokenizer.encode_to_counts(preprocess_images([first, second], tokenizer.config.image_size))
    torch.testing.assert_close(ends, encoded, rtol=0, atol=0)
    torch.testing.assert_close(plain.counts, plain.path_counts, rtol=0, atol=0)
    decoded = (tokenizer.decode_counts(plain.counts) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(plain.images, decoded)
    redenoised = interpolate_images(
        pipeline,
        counts_a=encoded[0],
        counts_b=encoded[1],
        num_points=5,
        redenoise_strength=0.5,
        class_labels=[0, 1, 1],
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    torch.testing.assert_close(redenoised.path_counts, plain.path_counts, rtol=0, atol=0)
    torch.testing.assert_close(redenoised.counts[[0, -1]], encoded, rtol=0, atol=0)
    assert (redenoised.counts[1:-1] != plain.counts[1:-1]).any(-1).all()
    with pytest.raises(ValueError, match="one per inner point"):
        interpolate_images(pipeline, first, second, num_points=5, redenoise_strength=0.5, class_labels=[0, 1])


def test_command_line_writes_the_strip(digits, tmp_path):
    _, images, _ = digits
    paths = []
    for index in (0, 1):
        paths.append(tmp_path / f"{index}.png")
        images[index].save(paths[-1])
    interpolate = load_script("pipelines/interpolate.py")
    output = interpolate.main(
        [
            *map(str, paths),
            "--num_points",
            "4",
            "--redenoise_strength",
            "0.5",
            "--num_inference_steps",
            "4",
            "--class_label",
            "3",
            "--output",
            str(tmp_path / "strip.png"),
            "--device",
            "cpu",
        ]
    )
    strip = np.asarray(PIL.Image.open(output).convert("L"))
    assert strip.shape[1] >= 4 * 96 and strip.shape[0] >= 2 * 96

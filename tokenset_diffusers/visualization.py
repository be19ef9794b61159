"""Pictures of results: labelled image grids and count-vector histograms (PIL only)."""

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch


def _font(size: int) -> PIL.ImageFont.ImageFont:
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return PIL.ImageFont.load_default()


def upscale(image: PIL.Image.Image, min_size: int) -> PIL.Image.Image:
    """Enlarges `image` by an integer factor (nearest neighbour) until its short side is at least `min_size`."""
    factor = max(1, -(-min_size // min(image.size)))
    return image.resize((image.width * factor, image.height * factor), PIL.Image.NEAREST) if factor > 1 else image


def labelled_grid(
    rows: Sequence[Sequence[PIL.Image.Image]],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    min_cell_size: int = 96,
    padding: int = 4,
    cell_labels: Sequence[Sequence[str]] | None = None,
) -> PIL.Image.Image:
    """Arranges images in a grid with a label left of each row and above each column.

    Args:
        rows: a list of rows, each a list of PIL images (of any size; each cell takes the largest).
        row_labels, column_labels: text for each row / column.
        min_cell_size: small images are enlarged by an integer factor to at least this size.
        cell_labels: text above each image, nested as `rows`.
    """
    rows = [[upscale(image.convert("RGB"), min_cell_size) for image in row] for row in rows]
    if not rows or not any(rows):
        raise ValueError("`rows` must hold at least one image.")
    cell_w = max(image.width for row in rows for image in row)
    cell_h = max(image.height for row in rows for image in row)
    columns = max(len(row) for row in rows)
    font = _font(max(12, min(cell_h // 6, 20)))
    label_w = 0
    if row_labels:
        label_w = max(
            int(PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1))).textlength(t, font=font)) for t in row_labels
        )
        label_w += 2 * padding
    label_h = (font.size + 2 * padding) if column_labels else 0
    caption_h = (font.size + padding) if cell_labels else 0
    width = label_w + columns * (cell_w + padding) + padding
    height = label_h + len(rows) * (caption_h + cell_h + padding) + padding
    grid = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(grid)
    for c, text in enumerate(column_labels or []):
        draw.text((label_w + padding + c * (cell_w + padding), padding), text, fill="black", font=font)
    for r, row in enumerate(rows):
        top = label_h + padding + r * (caption_h + cell_h + padding)
        if row_labels:
            draw.text(
                (padding, top + caption_h + cell_h // 2 - font.size // 2), row_labels[r], fill="black", font=font
            )
        for c, image in enumerate(row):
            left = label_w + padding + c * (cell_w + padding)
            if cell_labels:
                draw.text((left, top), cell_labels[r][c], fill="black", font=font)
            grid.paste(image, (left, top + caption_h))
    return grid


def class_rows_grid(
    images: Sequence[PIL.Image.Image], row_labels: Sequence[str], images_per_class: int
) -> PIL.Image.Image:
    """`images` made of `images_per_class` consecutive images per class as a labelled grid, a row per class."""
    rows = [images[r * images_per_class : (r + 1) * images_per_class] for r in range(len(row_labels))]
    return labelled_grid(rows, row_labels=row_labels)


def near_square_grid(
    images: Sequence[PIL.Image.Image], labels: Sequence[str], min_cell_size: int = 96
) -> PIL.Image.Image:
    """`images` in `ceil(sqrt(n))` columns, row by row, each captioned with its label (e.g. its class)."""
    if len(images) != len(labels) or not images:
        raise ValueError(f"Pass one label per image and at least one image, got {len(images)} and {len(labels)}.")
    columns = math.ceil(math.sqrt(len(images)))
    rows = [list(images[i : i + columns]) for i in range(0, len(images), columns)]
    captions = [list(labels[i : i + columns]) for i in range(0, len(labels), columns)]
    return labelled_grid(rows, min_cell_size=min_cell_size, cell_labels=captions)


def count_histogram(counts: torch.Tensor | np.ndarray, width: int = 256, height: int = 96) -> PIL.Image.Image:
    """Draws one count vector `(codebook_size,)` as a bar chart: codebook index left to right, count upwards.

    Codebook entries are binned to the image width (a bin shows the largest count in it); the title gives the number
    of distinct tokens and the total.
    """
    counts = torch.as_tensor(counts).flatten().long()
    codebook_size = counts.numel()
    bins = min(width - 8, codebook_size)
    bin_index = torch.arange(codebook_size) * bins // codebook_size  # (C,)
    heights = torch.zeros(bins, dtype=torch.long).scatter_reduce(0, bin_index, counts, reduce="amax")  # (bins,)
    image = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(image)
    font = _font(11)
    title = f"{int((counts > 0).sum())} distinct / {int(counts.sum())} tokens, max {int(counts.max())}"
    draw.text((4, 2), title, fill="black", font=font)
    top, bottom = 18, height - 4
    scale = (bottom - top) / max(int(counts.max()), 1)
    bar_w = (width - 8) / bins
    for i, value in enumerate(heights.tolist()):
        if value > 0:
            x0 = 4 + i * bar_w
            draw.rectangle([x0, bottom - value * scale, x0 + max(bar_w - 1, 1), bottom], fill=(40, 90, 200))
    draw.line([4, bottom, width - 4, bottom], fill="gray")
    return image

"""The paper's Table 2 for any set tokenizer: the share of tokens kept when Gaussian noise is added to the input.

    python pipelines/analyses/noise_robustness.py --dataset data/digits --dataset_split test \\
        --output_dir analyses/noise_robustness

Every image x (pixel values in [0, 1]) gets white Gaussian noise n at the signal-to-noise ratios `--snr_db` (the
paper's 40, 30, 20, 10 and 1 dB), with `SNR = 10 log10(mean(x^2) / mean(n^2))` per image, so the noise's standard
deviation is `sqrt(mean(x^2) / 10^(SNR / 10))`; the noisy image is clipped to [0, 1] (a valid image) and encoded
again. Kept tokens are counted two ways: as a set overlap, `sum_j min(counts_clean[j], counts_noisy[j]) / M` (the
multiset intersection; the set representation's own measure), and as a sequence overlap, the share of the M positions
at which the encoder emits the same token id as for the clean image (what an ordered 1-D tokenizer keeps). Writes
`noise_robustness.json` and `noise_robustness.png` (a few noisy inputs and their reconstructions at every level).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.analyses.tokenized_images import (
    ImageBatches,
    add_common_arguments,
    load_tokenizer,
    resolve_device,
    to_uint8,
    write_result,
)


if TYPE_CHECKING:  # torch is imported where used, so that `--help` comes before it
    import torch


PAPER_SNR_DB = (40.0, 30.0, 20.0, 10.0, 1.0)


def noise_std_for_snr(images: torch.Tensor, snr_db: float) -> torch.Tensor:
    """The per-image standard deviation `(B,)` of white noise at `snr_db` for images `(B, ...)` in [0, 1]:
    `sqrt(mean(x^2) / 10^(snr_db / 10))`."""
    signal_power = images.float().pow(2).flatten(1).mean(-1)  # (B,)
    return (signal_power / 10 ** (snr_db / 10)).sqrt()


def add_noise_at_snr(images: torch.Tensor, snr_db: float, generator: torch.Generator) -> torch.Tensor:
    """Images `(B, C, H, W)` in [0, 1] plus Gaussian noise at `snr_db` (before any clipping)."""
    import torch

    std = noise_std_for_snr(images, snr_db)  # (B,)
    noise = torch.randn(images.shape, generator=generator, device=generator.device).to(images.device)
    return images + noise * std.view(-1, *([1] * (images.ndim - 1)))


def kept_fractions(clean_ids: torch.LongTensor, noisy_ids: torch.LongTensor, codebook_size: int) -> tuple:
    """`(set_overlap, sequence_overlap)`, each `(B,)` in [0, 1], of token ids `(B, M)` before and after the noise."""
    import torch

    from tokenset_diffusers import tokens_to_counts

    num_tokens = clean_ids.shape[1]
    clean_counts = tokens_to_counts(clean_ids, codebook_size)  # (B, C)
    noisy_counts = tokens_to_counts(noisy_ids, codebook_size)  # (B, C)
    set_overlap = torch.minimum(clean_counts, noisy_counts).sum(-1).float() / num_tokens  # (B,)
    sequence_overlap = (clean_ids == noisy_ids).float().mean(-1)  # (B,)
    return set_overlap, sequence_overlap


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--snr_db", type=float, nargs="+", default=list(PAPER_SNR_DB), help="SNR levels in dB")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--num_shown", type=int, default=4, help="images in the figure")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    args.device = resolve_device(args.device)
    with torch.no_grad():
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    import torch

    tokenizer = load_tokenizer(args.tokenizer, args.device)
    images = ImageBatches(args, tokenizer.config.image_size)
    generator = torch.Generator().manual_seed(args.seed)
    codebook_size = tokenizer.config.codebook_size
    sums = {snr: {"set": 0.0, "sequence": 0.0, "measured_snr_db": 0.0} for snr in args.snr_db}
    shown = []
    for _, pixel_values in images:
        pixel_values = pixel_values.to(args.device)
        clean_ids = tokenizer.encode(pixel_values).token_ids  # (B, M)
        clean = pixel_values / 2 + 0.5  # (B, 3, S, S) in [0, 1]
        rows = [[] for _ in range(max(0, min(args.num_shown - len(shown), len(clean))))]
        for snr in args.snr_db:
            noisy = add_noise_at_snr(clean, snr, generator)
            measured = 10 * torch.log10(clean.pow(2).flatten(1).sum(-1) / (noisy - clean).pow(2).flatten(1).sum(-1))
            noisy = noisy.clamp(0, 1) * 2 - 1  # (B, 3, S, S) in [-1, 1]
            noisy_ids = tokenizer.encode(noisy).token_ids  # (B, M)
            set_overlap, sequence_overlap = kept_fractions(clean_ids.cpu(), noisy_ids.cpu(), codebook_size)
            sums[snr]["set"] += set_overlap.sum().item()
            sums[snr]["sequence"] += sequence_overlap.sum().item()
            sums[snr]["measured_snr_db"] += measured.sum().item()
            if rows:
                decoded = tokenizer.decode(noisy_ids[: len(rows)])
                for row, noisy_image, reconstruction in zip(rows, to_uint8(noisy), to_uint8(decoded)):
                    row.extend([noisy_image, reconstruction])
        shown.extend(rows)
    table = {
        f"{snr:g}": {
            "set_overlap_percent": 100 * sums[snr]["set"] / len(images),
            "sequence_overlap_percent": 100 * sums[snr]["sequence"] / len(images),
            "measured_snr_db_before_clipping": sums[snr]["measured_snr_db"] / len(images),
        }
        for snr in args.snr_db
    }
    result = {"num_images": len(images), "num_tokens": tokenizer.config.num_tokens, "snr_db": table}
    path = write_result(args.output_dir, "noise_robustness", result, args)
    _figure(shown, args.snr_db).save(Path(args.output_dir) / "noise_robustness.png")
    print(markdown_table(result))
    print(f"wrote {path} and {Path(args.output_dir) / 'noise_robustness.png'}")
    return result


def _figure(rows: list, snr_db: list[float]) -> "PIL.Image.Image":  # noqa: F821
    import PIL.Image

    from tokenset_diffusers.visualization import labelled_grid

    columns = [f"{label} {snr:g} dB" for snr in snr_db for label in ("noisy", "recon.")]
    pictures = [[PIL.Image.fromarray(image.permute(1, 2, 0).numpy()) for image in row] for row in rows]
    return labelled_grid(pictures, column_labels=columns, min_cell_size=64)


def markdown_table(result: dict) -> str:
    lines = ["| SNR (dB) | tokens kept, set overlap (%) | tokens kept, sequence overlap (%) |", "|---|---|---|"]
    for snr, row in result["snr_db"].items():
        lines.append(f"| {snr} | {row['set_overlap_percent']:.1f} | {row['sequence_overlap_percent']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

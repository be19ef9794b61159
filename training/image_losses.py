"""Losses and metrics on images that both image-autoencoder trainings use (`train_tokenizer.py`, `train_vae.py`):
the optional LPIPS perceptual loss, per-image PSNR / L1 of reconstructions and their evaluation on held-out images."""

import logging
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F


logger = logging.getLogger(__name__)


def build_perceptual_loss(args: Any) -> Optional[torch.nn.Module]:
    """LPIPS (VGG) when `args.perceptual_weight > 0`, else None; it needs the `lpips` package and its weights (they
    are not downloaded by this project)."""
    if args.perceptual_weight == 0:
        return None
    try:
        import lpips
    except ImportError as error:
        raise ValueError(
            f"`perceptual_weight`={args.perceptual_weight} needs the `lpips` package (pip install lpips) with its "
            "VGG weights available; set `perceptual_weight` to 0 to train without a perceptual loss."
        ) from error
    return lpips.LPIPS(net="vgg").eval().requires_grad_(False)


def reconstruction_nll(
    reconstruction: torch.Tensor, target: torch.Tensor, perceptual: Optional[torch.nn.Module], args: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(reconstruction_loss, nll_loss)`: the L1 or L2 distance of `args.reconstruction_loss`, and
    `reconstruction_weight` times it plus `perceptual_weight` times the LPIPS distance when `perceptual` is given."""
    if args.reconstruction_loss == "l1":
        reconstruction_loss = F.l1_loss(reconstruction, target)
    else:
        reconstruction_loss = F.mse_loss(reconstruction, target)
    nll_loss = args.reconstruction_weight * reconstruction_loss
    if perceptual is not None:
        nll_loss = nll_loss + args.perceptual_weight * perceptual(reconstruction, target).mean()
    return reconstruction_loss, nll_loss


def reconstruction_metrics(reconstruction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and mean absolute error of images in [-1, 1], both measured on the [0, 1] scale
    (`reconstruction` is clipped to [-1, 1] first). Returns two `(batch_size,)` tensors."""
    difference = (reconstruction.float().clamp(-1, 1) - target.float()) / 2  # (B, C, H, W), [0, 1] scale
    mse = difference.pow(2).flatten(1).mean(1)  # (B,)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))  # (B,)
    return psnr, difference.abs().flatten(1).mean(1)


@torch.no_grad()
def evaluate_reconstruction(
    accelerator, reconstruct: Callable[[torch.Tensor], torch.Tensor], eval_dataloader
) -> dict[str, float]:
    """`eval/psnr` and `eval/l1` (on the [0, 1] scale, see [`reconstruction_metrics`]) of `reconstruct(images)`
    (`(B, C, H, W)` -> `(B, C, H, W)`, run under `accelerator.autocast()`) over the held-out images of every process.
    Unreadable images are left out and named in a warning."""
    totals = torch.zeros(3, device=accelerator.device)  # psnr sum, l1 sum, image count
    skipped = []
    for batch in eval_dataloader:
        skipped += batch.pop("skipped", [])
        if "pixel_values" not in batch:  # every image of the batch was unreadable
            continue
        pixel_values = batch["pixel_values"].to(accelerator.device)  # (B, C, H, W)
        with accelerator.autocast():
            reconstruction = reconstruct(pixel_values)  # (B, C, H, W)
        psnr, l1 = reconstruction_metrics(reconstruction, pixel_values)
        totals += torch.stack([psnr.sum(), l1.sum(), torch.tensor(float(len(psnr)), device=psnr.device)])
    totals = accelerator.reduce(totals, reduction="sum")
    count = max(totals[2].item(), 1.0)
    if skipped:
        logger.warning("Evaluation skipped %d unreadable images: %s", len(skipped), skipped[:10])
    return {"eval/psnr": totals[0].item() / count, "eval/l1": totals[1].item() / count}


def describe_reconstruction_metrics(metrics: dict[str, float]) -> str:
    """`PSNR 21.37 dB, L1 0.0712`: an evaluation of [`evaluate_reconstruction`] as printed on the console."""
    return f"PSNR {metrics['eval/psnr']:.2f} dB, L1 {metrics['eval/l1']:.4f}"

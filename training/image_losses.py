"""Losses and metrics on images that both image-autoencoder trainings use (`train_tokenizer.py`, `train_vae.py`):
the optional LPIPS perceptual loss and per-image PSNR / L1 of reconstructions."""

from typing import Any, Optional

import torch
import torch.nn.functional as F


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

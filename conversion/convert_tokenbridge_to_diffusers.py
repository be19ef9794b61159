"""Convert the released TokenBridge checkpoints to a `TokenBridgePipeline` folder.

    python conversion/convert_tokenbridge_to_diffusers.py \\
        --checkpoint pretrained_models/tokenbridge/tokenbridge_large/checkpoint-last.pth \\
        --vae_checkpoint pretrained_models/vae/kl16.ckpt \\
        --output_dir tokenbridge-l-imagenet256 [--weights ema|model] [--push_to_hub org/tokenbridge-l-imagenet256]

`--vae_name_or_path` takes an already converted diffusers `AutoencoderKL` (a folder or a Hub id) instead of
`kl16.ckpt`; its `scaling_factor` is set to 0.2325. Without a VAE only the transformer is written (`DIR/transformer`).
The generator uses the EMA weights by default (buffers from `"model"`), as the original's evaluation does; the size
(L, H or any other) is read from the shapes, and so is the channel head's attention head count (from its per-head q/k
norms). The encoder's and decoder's head count is stored nowhere in the weights: it is known for L and H, and any other
size stops with a message asking for `--num_attention_heads`. Checkpoints are read with `torch.load(weights_only=True)` and loaded
strictly: a missing or unexpected key is an error, never a silently random weight.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from conversion.class_names import load_id2label
from conversion.command_line import add_shared_arguments, check_checkpoint_files, report_and_push


if TYPE_CHECKING:  # the heavy modules are imported where used, so that `--help` comes before torch
    from tokenset_diffusers import TokenBridgePipeline


# Released sizes by encoder width.
RELEASED_SIZES = {1024: "L", 1280: "H"}


def load_vae(vae_checkpoint: str | None = None, vae_name_or_path: str | None = None, sample_size: int = 256):
    """The VAE from `kl16.ckpt` (converted strictly) or a diffusers `AutoencoderKL` folder / Hub id."""
    if (vae_checkpoint is None) == (vae_name_or_path is None):
        raise ValueError("Pass exactly one of `vae_checkpoint` and `vae_name_or_path`.")
    from conversion.vae_conversion import KL16_SCALING_FACTOR, convert_vae, load_vae_checkpoint

    if vae_checkpoint is not None:
        return convert_vae(load_vae_checkpoint(vae_checkpoint), sample_size=sample_size)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_name_or_path)
    if vae.config.scaling_factor != KL16_SCALING_FACTOR:
        print(f"setting the VAE's scaling_factor from {vae.config.scaling_factor} to {KL16_SCALING_FACTOR}")
        vae.register_to_config(scaling_factor=KL16_SCALING_FACTOR)
    return vae.eval()


def convert(
    checkpoint: str,
    output_dir: str,
    vae_checkpoint: str | None = None,
    vae_name_or_path: str | None = None,
    weights: str = "ema",
    num_attention_heads: int | None = None,
    head_num_attention_heads: int | None = None,
    id2label: str | None = "hub",
    repo_id: str | None = None,
) -> Path:
    """Converts the generator (and the VAE, if given) and saves it with a model card under `output_dir`; returns the
    folder written."""
    from conversion.tokenbridge_conversion import convert_tokenbridge, load_tokenbridge_checkpoint, select_weights
    from tokenset_diffusers import MaskedARScheduler, TokenBridgePipeline
    from tokenset_diffusers.tokenbridge.pipeline_tokenbridge import RELEASED_SAMPLING_DEFAULTS

    output_dir = Path(output_dir)
    state_dict = select_weights(load_tokenbridge_checkpoint(checkpoint), weights)
    transformer = convert_tokenbridge(
        state_dict, num_attention_heads=num_attention_heads, head_num_attention_heads=head_num_attention_heads
    )
    if vae_checkpoint is None and vae_name_or_path is None:
        transformer.save_pretrained(output_dir / "transformer")
        return output_dir / "transformer"
    config = transformer.config
    vae = load_vae(vae_checkpoint, vae_name_or_path)
    size = RELEASED_SIZES.get(config.encoder_hidden_size) if config.num_classes == 1000 else None
    defaults = RELEASED_SAMPLING_DEFAULTS.get(size, {})
    pipeline = TokenBridgePipeline(
        transformer=transformer,
        vae=vae,
        scheduler=MaskedARScheduler(num_tokens=transformer.num_tokens, mask_ratio_min=config.mask_ratio_min),
        id2label=load_id2label(id2label, config.num_classes),
        default_num_inference_steps=defaults.get("num_inference_steps", 64),
        default_guidance_scale=defaults.get("guidance_scale", 1.0),
        default_temperature=defaults.get("temperature", 1.0),
    )
    pipeline.save_pretrained(output_dir)
    card = model_card(pipeline, repo_id or output_dir.name, size)
    card.save(output_dir / "README.md")
    return output_dir


def model_card(pipeline: TokenBridgePipeline, repo_id: str, size: str | None):
    """The converted release's card (paper numbers, released settings) for L and H; the pipeline's own card else."""
    from tokenset_diffusers.model_cards import render_model_card

    if size is None:
        return pipeline.model_card(repo_id)
    num_parameters = sum(p.numel() for p in pipeline.transformer.parameters())
    return render_model_card(
        "tokenbridge_converted_pipeline", repo_id=repo_id, model_size=size, num_parameters=num_parameters
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint-last.pth ('model' and 'model_ema')")
    vae = parser.add_mutually_exclusive_group()
    vae.add_argument("--vae_checkpoint", help="MAR's kl16.ckpt (state dict under 'model')")
    vae.add_argument("--vae_name_or_path", help="a diffusers AutoencoderKL folder or Hub id")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--weights", choices=["ema", "model"], default="ema")
    parser.add_argument(
        "--num_attention_heads",
        type=int,
        default=None,
        help="encoder/decoder heads (not stored in the weights: known for the released L and H, needed otherwise)",
    )
    parser.add_argument(
        "--head_num_attention_heads",
        type=int,
        default=None,
        help="channel head heads (read from the checkpoint's per-head q/k norms; a different value is refused)",
    )
    add_shared_arguments(parser)
    args = parser.parse_args(argv)
    check_checkpoint_files(parser, args.checkpoint, args.vae_checkpoint)
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    import torch

    try:
        with torch.no_grad():
            folder = convert(
                checkpoint=args.checkpoint,
                output_dir=args.output_dir,
                vae_checkpoint=args.vae_checkpoint,
                vae_name_or_path=args.vae_name_or_path,
                weights=args.weights,
                num_attention_heads=args.num_attention_heads,
                head_num_attention_heads=args.head_num_attention_heads,
                id2label=args.id2label,
                repo_id=args.push_to_hub,
            )
    except ValueError as error:  # a checkpoint that cannot be converted as asked: one line, naming the flag to set
        raise SystemExit(f"{Path(__file__).name}: error: {error}") from error
    report_and_push(folder, args.push_to_hub, "TokenBridge")
    return folder


if __name__ == "__main__":
    main()

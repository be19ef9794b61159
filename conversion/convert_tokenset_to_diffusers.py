"""Convert the released TokenSet checkpoints to Hugging Face folders.

    python conversion/convert_tokenset_to_diffusers.py \\
        --tokenizer_checkpoint set_tokenizer_128_4096.pth \\
        --generator_checkpoint fsdd_base_128_4096.pth \\
        --output_dir tokenset-base-imagenet256 [--push_to_hub org/tokenset-base-imagenet256]

With both checkpoints the output is a complete `TokenSetPipeline` folder (`model_index.json`, `image_tokenizer/`,
`transformer/`, `scheduler/`) with the ImageNet class names and the released sampling defaults (25 steps, guidance
interval schedule [4, 50, 55]); with one, that component's `save_pretrained` folder (`DIR/image_tokenizer` or
`DIR/transformer`). Checkpoints are read with `torch.load(weights_only=True)`, only `argparse.Namespace` allow-listed.
"""

import argparse
from pathlib import Path

from conversion.class_names import IMAGENET_LABELS_FILE, IMAGENET_LABELS_REPO, load_id2label  # noqa: F401
from conversion.command_line import add_shared_arguments, check_checkpoint_files, report_and_push


RELEASED_GUIDANCE_SCALE = [4.0, 50.0, 55.0]


def convert(
    tokenizer_checkpoint: str | None = None,
    generator_checkpoint: str | None = None,
    output_dir: str = "tokenset",
    tokenizer_num_heads: int = 12,
    generator_num_heads: int | None = None,
    generator_key: str = "ema",
    id2label: str | None = "hub",
    repo_id: str | None = None,
) -> Path:
    """Converts one or both checkpoints and saves them, with a model card (README.md), under `output_dir`; returns
    the folder written. `repo_id` is the Hub id the card's usage snippet names (default: the folder's name)."""
    if tokenizer_checkpoint is None and generator_checkpoint is None:
        raise ValueError("Pass `tokenizer_checkpoint`, `generator_checkpoint`, or both.")
    # Imported here, so that `--help` and argument errors come before torch.
    from conversion.tokenizer_conversion import convert_tokenizer
    from conversion.transformer_conversion import convert_transformer, load_original_generator_checkpoint
    from tokenset_diffusers import FSDDScheduler, TokenSetPipeline
    from tokenset_diffusers.model_cards import write_model_card

    output_dir = Path(output_dir)
    image_tokenizer = transformer = None
    if tokenizer_checkpoint is not None:
        state_dict = load_original_generator_checkpoint(tokenizer_checkpoint)  # a plain state dict
        image_tokenizer = convert_tokenizer(state_dict, num_attention_heads=tokenizer_num_heads)
    if generator_checkpoint is not None:
        state_dict = load_original_generator_checkpoint(generator_checkpoint, key=generator_key)
        transformer = convert_transformer(state_dict, num_attention_heads=generator_num_heads)
    if transformer is None:
        folder = output_dir / "image_tokenizer"
        image_tokenizer.save_pretrained(folder)
        config = image_tokenizer.config
        write_model_card(
            folder, "tokenizer", repo_id=repo_id or folder.name, image_size=config.image_size,
            codebook_size=config.codebook_size, num_tokens=config.num_tokens,
        )  # fmt: skip
        return folder
    if image_tokenizer is None:
        transformer.save_pretrained(output_dir / "transformer")
        return output_dir / "transformer"
    config = transformer.config
    # The released sampling settings are the scheduler's defaults.
    scheduler = FSDDScheduler(codebook_size=config.codebook_size, num_tokens=config.num_tokens)
    pipeline = TokenSetPipeline(
        image_tokenizer=image_tokenizer,
        transformer=transformer,
        scheduler=scheduler,
        id2label=load_id2label(id2label, config.num_classes),
        default_guidance_scale=RELEASED_GUIDANCE_SCALE,
    )
    pipeline.save_pretrained(output_dir)
    if config.codebook_size == 4096 and config.num_tokens == 128 and config.num_classes == 1000:
        # A released ImageNet model: the card with the paper's numbers and settings.
        size = {384: "S", 768: "B"}.get(config.num_attention_heads * config.attention_head_dim, "B")
        write_model_card(output_dir, "converted_pipeline", repo_id=repo_id or output_dir.name, generator_size=size)
    else:
        (output_dir / "README.md").write_text(str(pipeline.model_card(repo_id or output_dir.name)))
    return output_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer_checkpoint", help="set_tokenizer_128_4096.pth (a plain state dict)")
    parser.add_argument("--generator_checkpoint", help="fsdd_{small,base}_128_4096.pth (weights under 'ema')")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--tokenizer_num_heads", type=int, default=12, help="attention heads of both ViTs")
    parser.add_argument(
        "--generator_num_heads", type=int, default=None, help="default: by width (384 -> 6, 768 -> 12, else width/64)"
    )
    parser.add_argument("--generator_key", choices=["ema", "model"], default="ema")
    add_shared_arguments(parser)
    args = parser.parse_args(argv)
    if args.tokenizer_checkpoint is None and args.generator_checkpoint is None:
        parser.error("pass --tokenizer_checkpoint, --generator_checkpoint, or both")
    check_checkpoint_files(parser, args.tokenizer_checkpoint, args.generator_checkpoint)
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    folder = convert(
        tokenizer_checkpoint=args.tokenizer_checkpoint,
        generator_checkpoint=args.generator_checkpoint,
        output_dir=args.output_dir,
        tokenizer_num_heads=args.tokenizer_num_heads,
        generator_num_heads=args.generator_num_heads,
        generator_key=args.generator_key,
        id2label=args.id2label,
        repo_id=args.push_to_hub,
    )
    report_and_push(folder, args.push_to_hub, "TokenSet")
    return folder


if __name__ == "__main__":
    main()

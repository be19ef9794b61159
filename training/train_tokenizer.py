# ruff: noqa: E402
"""Stage 1: train the TokenSet set tokenizer (`TokenSetVQVAE`) from scratch.

    accelerate launch training/train_tokenizer.py --config training/configs/digits_tokenizer.yaml [--flag value ...]

Loss per micro-batch: `reconstruction_weight * L1/L2(reconstruction, image)` (+ `perceptual_weight * LPIPS`, when
the `lpips` package is installed) + `codebook_weight * codebook_loss` + `commitment_weight * commitment_loss` (from the
model's forward) + from `discriminator_start_step` on, `adaptive_weight * discriminator_weight * hinge GAN loss` of a
PatchGAN discriminator, which is trained alongside with the hinge loss. From `decoder_only_start_step` on, the encoder,
the codebook and the latent tokens are frozen and only the decoder trains (the paper's final phase). AdamW with
warm-up + cosine decay, gradient clipping, and an EMA of the weights, which is what gets evaluated (PSNR / L1 on
`eval_split`) and saved: `output_dir/image_tokenizer` (`TokenSetVQVAE.from_pretrained`).
"""

import contextlib
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional


if __package__ in (None, ""):  # run as a file: make the repository root importable instead of training/
    script_dir = str(Path(__file__).resolve().parent)
    sys.path = [path for path in sys.path if Path(path or ".").resolve() != Path(script_dir)]
    sys.path.insert(0, str(Path(script_dir).parent))

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from tokenset_diffusers.model_cards import write_model_card
from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from training.common import (
    ExponentialMovingAverage,
    MetricWindow,
    PendingMetrics,
    RunArguments,
    TrainingProgress,
    arg,
    build_accelerator,
    build_lr_scheduler,
    build_optimizer,
    check_choices,
    check_positive,
    config_path,
    flat_config,
    launch_command,
    parameters_checksum,
    parse_config,
    push_folder_to_hub,
    record_launch,
    reduce_metrics,
    resume_if_requested,
    save_checkpoint,
    step_generator,
    write_provenance,
    write_run_summary,
)
from training.data import (
    DataArguments,
    build_dataloader,
    build_eval_dataloader,
    build_train_examples,
    random_horizontal_flip,
)
from training.discriminator import adversarial_loss, discriminator_update, prepare_discriminator
from training.image_losses import build_perceptual_loss, reconstruction_metrics, reconstruction_nll


logger = logging.getLogger(__name__)


@dataclass
class TokenizerModelArguments:
    """Architecture of the tokenizer; the names and defaults are `TokenSetVQVAEConfig`'s (the released model)."""

    image_size: int = arg(256, "Image side in pixels.")
    patch_size: int = arg(16, "Patch side of the encoder's patch embedding.")
    encoder_hidden_size: int = arg(768, "Encoder ViT width.")
    encoder_num_hidden_layers: int = arg(12, "Encoder ViT blocks.")
    encoder_num_attention_heads: int = arg(12, "Encoder attention heads.")
    decoder_hidden_size: int = arg(768, "Decoder ViT width.")
    decoder_num_hidden_layers: int = arg(12, "Decoder ViT blocks.")
    decoder_num_attention_heads: int = arg(12, "Decoder attention heads.")
    mlp_ratio: float = arg(4.0, "ViT MLP width as a multiple of the block width.")
    decoder_ffn_hidden_size: int = arg(1536, "Hidden channels of the decoder's output projection.")
    codebook_size: int = arg(4096, "Codebook entries C.")
    num_tokens: int = arg(128, "Tokens per image M.")
    code_dim: int = arg(12, "Dimension of a codebook vector.")
    z_channels: int = arg(256, "Channels of the decoder ViT's feature map (the pixel decoder's input).")
    pixel_decoder_hidden_channels: int = arg(128, "Base channels of the pixel decoder.")
    pixel_decoder_channel_mult: list[int] = arg([1, 1, 2, 2, 4], "Pixel decoder channel multiplier per level.")
    num_res_blocks: int = arg(2, "Residual blocks per pixel decoder level.")
    norm_num_groups: int = arg(32, "GroupNorm groups of the pixel decoder.")

    def to_config(self) -> TokenSetVQVAEConfig:
        return TokenSetVQVAEConfig(**asdict(self))


@dataclass
class TokenizerTrainingArguments(RunArguments):
    """Run and loss settings; the defaults are the paper's ImageNet recipe (TiTok's)."""

    output_dir: str = arg("outputs/tokenizer", "Folder for checkpoints, logs and `image_tokenizer/`.")
    max_train_steps: int = arg(1_000_000, "Optimiser steps.")
    train_batch_size: int = arg(32, "Images per process per micro-batch.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine"] = arg("cosine", "Learning-rate schedule.")
    lr_warmup_steps: int = arg(10_000, "Linear warm-up steps.")
    weight_decay: float = arg(1e-4, "AdamW weight decay.")
    max_grad_norm: Optional[float] = arg(1.0, "Gradient clipping norm; None disables clipping.")
    ema_decay: float = arg(0.999, "EMA decay of the saved weights.")
    checkpointing_steps: int = arg(10_000, "Save a resumable checkpoint every this many steps.")
    reconstruction_loss: Literal["l1", "l2"] = arg("l2", "Pixel reconstruction loss.")
    reconstruction_weight: float = arg(1.0, "Weight of the reconstruction loss.")
    perceptual_weight: float = arg(0.0, "Weight of the LPIPS loss; > 0 needs the `lpips` package and its weights.")
    codebook_weight: float = arg(1.0, "Weight of the codebook loss.")
    commitment_weight: float = arg(0.25, "Weight of the commitment loss.")
    shuffle_tokens: bool = arg(True, "Permute the latent tokens before the decoder, as in the paper's training.")
    discriminator_start_step: Optional[int] = arg(20_000, "Step at which the GAN loss starts; None: no GAN.")
    discriminator_weight: float = arg(0.1, "Weight of the adaptively scaled GAN loss.")
    discriminator_learning_rate: Optional[float] = arg(None, "Discriminator learning rate (default: learning_rate).")
    discriminator_base_channels: int = arg(64, "Channels of the discriminator's first layer.")
    discriminator_num_layers: int = arg(3, "Stride-2 layers of the PatchGAN discriminator.")
    discriminator_norm_num_groups: int = arg(32, "GroupNorm groups of the discriminator.")
    decoder_only_start_step: Optional[int] = arg(500_000, "Step from which only the decoder trains; None: never.")
    bootstrap_steps: int = arg(
        0,
        "For this many first steps, a linear readout of the encoder's codes (before quantisation) must also "
        "reconstruct the image. From random weights the ViT decoder starts at the mean image and passes the encoder "
        "almost no image-specific gradient, so small models can stall there; the readout gives the encoder a direct "
        "signal (the role TiTok's proxy codes play). 0: off.",
    )
    bootstrap_weight: float = arg(1.0, "Weight of the bootstrap readout loss.")
    eval_steps: int = arg(10_000, "Evaluate PSNR / L1 of the EMA model on `eval_split` every this many steps.")
    eval_batch_size: int = arg(32, "Images per process per evaluation batch.")

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        check_positive(self, "eval_steps", "eval_batch_size", "discriminator_learning_rate")
        check_positive(
            self,
            "reconstruction_weight",
            "perceptual_weight",
            "codebook_weight",
            "commitment_weight",
            "discriminator_weight",
            "discriminator_start_step",
            "decoder_only_start_step",
            "bootstrap_steps",
            "bootstrap_weight",
            allow_zero=True,
        )


@dataclass
class TokenizerTrainingState:
    """Everything a training step touches (prepared by accelerate where it applies)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: ExponentialMovingAverage
    progress: TrainingProgress
    discriminator: Optional[torch.nn.Module] = None
    discriminator_optimizer: Optional[torch.optim.Optimizer] = None
    discriminator_lr_scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    perceptual: Optional[torch.nn.Module] = None
    readout: Optional[torch.nn.Module] = None


# ---------------------------------------------------------------------------------------------------------- building


def build_training_state(
    accelerator: Accelerator, model_args: TokenizerModelArguments, args: TokenizerTrainingArguments
) -> TokenizerTrainingState:
    """Model, discriminator, optimisers, schedules and EMA, prepared and registered for checkpointing."""
    model = TokenSetVQVAE(model_args.to_config())
    if args.gradient_checkpointing:  # transformers >= 5.x renamed it; either recomputes the ViT blocks in backward
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    ema = ExponentialMovingAverage(model, args.ema_decay)
    ema.shadow.to(accelerator.device)
    config = model.config
    readout = None
    if args.bootstrap_steps > 0:  # codes (B, M * code_dim) -> pixels (B, 3 * H * W)
        readout = torch.nn.Linear(config.num_tokens * config.code_dim, config.num_channels * config.image_size**2)
    parameters = [*model.parameters(), *(readout.parameters() if readout is not None else [])]
    optimizer = build_optimizer(parameters, args)
    lr_scheduler = build_lr_scheduler(optimizer, args)
    progress = TrainingProgress()
    state = TokenizerTrainingState(model, optimizer, lr_scheduler, ema, progress)
    if readout is None:
        state.model, state.optimizer = accelerator.prepare(model, optimizer)
    else:
        state.model, state.readout, state.optimizer = accelerator.prepare(model, readout, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler, ema, progress)
    if args.discriminator_start_step is not None:
        state.discriminator, state.discriminator_optimizer, state.discriminator_lr_scheduler = prepare_discriminator(
            accelerator, args, model_args.to_config().num_channels, model_args.image_size
        )
    state.perceptual = build_perceptual_loss(args)
    if state.perceptual is not None:
        state.perceptual.to(accelerator.device)
    return state


def set_decoder_only(model: TokenSetVQVAE, decoder_only: bool) -> None:
    """Freezes (or unfreezes) the encoder, its latent tokens and the codebook."""
    model.encoder.requires_grad_(not decoder_only)
    model.quantizer.requires_grad_(not decoder_only)


# ---------------------------------------------------------------------------------------------------------- training


def tokenizer_losses(
    state: TokenizerTrainingState,
    accelerator: Accelerator,
    pixel_values: torch.Tensor,
    generator: torch.Generator,
    use_gan: bool,
    args: TokenizerTrainingArguments,
    use_bootstrap: bool = False,
) -> dict[str, torch.Tensor]:
    """The model's loss on one micro-batch and its parts (all scalars), plus the `reconstruction` itself."""
    outputs = state.model(pixel_values, shuffle_tokens=args.shuffle_tokens, generator=generator)
    reconstruction = outputs.reconstruction.float()  # (B, 3, H, W)
    reconstruction_loss, nll_loss = reconstruction_nll(reconstruction, pixel_values, state.perceptual, args)
    loss = nll_loss + args.codebook_weight * outputs.codebook_loss + args.commitment_weight * outputs.commitment_loss
    unique_tokens = torch.zeros(accelerator.unwrap_model(state.model).config.codebook_size, device=pixel_values.device)
    losses = {
        "reconstruction_loss": reconstruction_loss.detach(),
        "codebook_loss": outputs.codebook_loss.detach(),
        "commitment_loss": outputs.commitment_loss.detach(),
        "codebook_usage": unique_tokens.index_fill_(0, outputs.token_ids.flatten(), 1.0).mean(),
    }
    if use_bootstrap:
        readout = state.readout(outputs.encoder_codes.flatten(1).float()).view_as(pixel_values)  # (B, 3, H, W)
        bootstrap_loss = F.mse_loss(readout, pixel_values)
        loss = loss + args.bootstrap_weight * bootstrap_loss
        losses["bootstrap_loss"] = bootstrap_loss.detach()
    if use_gan:
        last_layer = accelerator.unwrap_model(state.model).pixel_decoder.conv_out.weight
        term, generator_loss, adaptive_weight = adversarial_loss(
            accelerator, state.discriminator, reconstruction, nll_loss, last_layer, args.discriminator_weight
        )
        loss = loss + term
        losses.update(generator_loss=generator_loss.detach(), adaptive_weight=adaptive_weight)
    losses.update(loss=loss, reconstruction=reconstruction)
    return losses


def discriminator_step(
    accelerator: Accelerator, state: TokenizerTrainingState, pairs: list, args: TokenizerTrainingArguments
) -> torch.Tensor:
    """One optimiser step of the discriminator on (real, reconstructed) micro-batches; returns the mean hinge loss."""
    return discriminator_update(
        accelerator,
        state.discriminator,
        state.discriminator_optimizer,
        state.discriminator_lr_scheduler,
        pairs,
        args.max_grad_norm,
    )


def train_step(
    accelerator: Accelerator,
    state: TokenizerTrainingState,
    micro_batches: list[dict],
    args: TokenizerTrainingArguments,
) -> dict[str, float]:
    """One optimiser step of the tokenizer (and of the discriminator once the GAN is on); returns the metrics averaged
    over micro-batches and processes."""
    step = state.progress.step
    model = accelerator.unwrap_model(state.model)
    use_gan = state.discriminator is not None and step >= args.discriminator_start_step
    decoder_only = args.decoder_only_start_step is not None and step >= args.decoder_only_start_step
    use_bootstrap = state.readout is not None and step < args.bootstrap_steps
    set_decoder_only(model, decoder_only)
    if use_gan:
        accelerator.unwrap_model(state.discriminator).requires_grad_(False)
    state.model.train()

    # 1. tokenizer: forward and backward on every micro-batch, gradients synchronised on the last
    sums, pairs = {}, []
    for index, batch in enumerate(micro_batches):
        generator = step_generator(args.seed, accelerator.process_index, step, index, accelerator.device)
        pixel_values = random_horizontal_flip(batch["pixel_values"].to(accelerator.device), generator)  # (B, 3, H, W)
        sync = index == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(state.model):
            with accelerator.autocast():
                losses = tokenizer_losses(state, accelerator, pixel_values, generator, use_gan, args, use_bootstrap)
            accelerator.backward(losses["loss"] / len(micro_batches))
        reconstruction = losses.pop("reconstruction")
        if use_gan:
            pairs.append((pixel_values, reconstruction.detach()))
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value.detach() / len(micro_batches)

    # 2. tokenizer update (frozen parts keep no gradient, whatever DDP filled in), then the EMA
    if decoder_only:
        for parameter in [*model.encoder.parameters(), *model.quantizer.parameters()]:
            parameter.grad = None
    if args.max_grad_norm is not None:
        sums["grad_norm"] = accelerator.clip_grad_norm_(state.model.parameters(), args.max_grad_norm)
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.ema.update(model)

    # 3. discriminator update on the same images
    if use_gan:
        accelerator.unwrap_model(state.discriminator).requires_grad_(True)
        sums["discriminator_loss"] = discriminator_step(accelerator, state, pairs, args)
    metrics = reduce_metrics(accelerator, sums)
    metrics["lr"] = state.lr_scheduler.get_last_lr()[0]
    return metrics


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: TokenSetVQVAE, eval_dataloader) -> dict[str, float]:
    """PSNR and L1 (on the [0, 1] scale) of `decode(encode(image))` over the held-out images of every process."""
    totals = torch.zeros(3, device=accelerator.device)  # psnr sum, l1 sum, image count
    skipped = []
    for batch in eval_dataloader:
        skipped += batch.pop("skipped")
        if "pixel_values" not in batch:  # every image of the batch was unreadable
            continue
        pixel_values = batch["pixel_values"].to(accelerator.device)  # (B, 3, H, W)
        with accelerator.autocast():
            reconstruction = model.decode(model.encode(pixel_values).token_ids)  # (B, 3, H, W)
        psnr, l1 = reconstruction_metrics(reconstruction, pixel_values)
        totals += torch.stack([psnr.sum(), l1.sum(), torch.tensor(float(len(psnr)), device=psnr.device)])
    totals = accelerator.reduce(totals, reduction="sum")
    count = max(totals[2].item(), 1.0)
    if skipped:
        logger.warning("Evaluation skipped %d unreadable images: %s", len(skipped), skipped[:10])
    return {"eval/psnr": totals[0].item() / count, "eval/l1": totals[1].item() / count}


def train(
    accelerator: Accelerator,
    state: TokenizerTrainingState,
    batches,
    eval_dataloader,
    args: TokenizerTrainingArguments,
) -> list[dict]:
    """Runs steps until `max_train_steps`, logging, evaluating and checkpointing; returns the per-step metrics."""
    history, window, pending = [], MetricWindow(), PendingMetrics()
    last_eval = None  # the latest evaluation, shown on the progress bar beside the loss
    progress_bar = tqdm(
        initial=state.progress.step, total=args.max_train_steps, disable=not accelerator.is_local_main_process
    )
    while state.progress.step < args.max_train_steps:
        micro_batches = [next(batches) for _ in range(args.gradient_accumulation_steps)]
        metrics = train_step(accelerator, state, micro_batches, args)
        state.progress.step += 1
        step = state.progress.step
        progress_bar.update(1)
        last = step == args.max_train_steps
        evaluating = eval_dataloader is not None and (step % args.eval_steps == 0 or last)
        if evaluating:
            eval_metrics = evaluate(accelerator, state.ema.shadow, eval_dataloader)
            metrics.update(eval_metrics)
            if accelerator.is_local_main_process:  # on the console too, not only in the tracker
                tqdm.write(
                    f"step {step}: evaluation of the EMA model: PSNR {eval_metrics['eval/psnr']:.2f} dB, "
                    f"L1 {eval_metrics['eval/l1']:.4f}"
                )
        pending.add(step, metrics)  # read back at the next logging step: no per-step host synchronisation
        if step % args.logging_steps == 0 or last or evaluating:
            entries = pending.flush()
            for entry in entries:
                window.add({name: value for name, value in entry.items() if not name.startswith("eval/")})
            history.extend(entries)
            postfix = {"loss": f"{entries[-1]['loss']:.4f}"}
            if last_eval is not None or evaluating:
                last_eval = eval_metrics if evaluating else last_eval
                postfix.update(psnr=f"{last_eval['eval/psnr']:.2f}", l1=f"{last_eval['eval/l1']:.4f}")
            progress_bar.set_postfix(postfix)
        if step % args.logging_steps == 0 or last:
            accelerator.log(window.pop_means(), step=step)
        if evaluating:
            accelerator.log(eval_metrics, step=step)
        if step % args.logging_steps == 0 or step % args.checkpointing_steps == 0 or last:
            state.progress.unreadable.sync(accelerator)  # counts, logs, and stops past `max_bad_samples`
        if step % args.checkpointing_steps == 0 or last:
            save_checkpoint(accelerator, args.output_dir, step, args.checkpoints_total_limit)
    progress_bar.close()
    return history


# ------------------------------------------------------------------------------------------------------------ saving


def save_final_model(
    accelerator: Accelerator,
    state: TokenizerTrainingState,
    data_args: DataArguments,
    args: TokenizerTrainingArguments,
    history: list[dict],
    argv: Optional[list[str]],
    commands: list[str],
) -> None:
    """Saves the EMA tokenizer to `output_dir/image_tokenizer` with a model card and its provenance (every command
    line of the run, resumes included, and the step count), and pushes it if asked."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder = Path(args.output_dir) / "image_tokenizer"
        state.ema.shadow.save_pretrained(folder)
        config = state.ema.shadow.config
        final = history[-1] if history else {}
        write_model_card(
            folder,
            "tokenizer",
            source="trained",
            repo_id=args.hub_model_id or str(folder),
            image_size=config.image_size,
            codebook_size=config.codebook_size,
            num_tokens=config.num_tokens,
            dataset=data_args.dataset_name,
            training_steps=state.progress.step,
            preset=config_path(argv),
            metrics={name: value for name, value in final.items() if name != "step"} or None,
            training_commands=commands,
        )
        write_provenance(folder, commands=commands, steps=state.progress.step, dataset=data_args.dataset_name)
        if args.push_to_hub:
            push_folder_to_hub(str(folder), args.hub_model_id, args.hub_private_repo, "TokenSet set tokenizer")
    accelerator.wait_for_everyone()


def main(argv: Optional[list[str]] = None) -> None:
    data_args, model_args, args = parse_args(argv)
    accelerator = build_accelerator(args, find_unused_parameters=args.decoder_only_start_step is not None)
    set_seed(args.seed)
    state = build_training_state(accelerator, model_args, args)
    state.progress.unreadable.max_bad_samples = data_args.max_bad_samples
    resume_if_requested(accelerator, args, state.progress)
    start_step = state.progress.step
    command = launch_command("training/train_tokenizer.py", argv)
    commands = record_launch(accelerator, args.output_dir, command, resumed=start_step > 0)
    examples, _ = build_train_examples(data_args, model_args.image_size, accelerator, args.seed)
    batches = build_dataloader(
        examples,
        args.train_batch_size,
        accelerator,
        args.seed,
        start_step * args.gradient_accumulation_steps,
        data_args,
        state.progress.unreadable,
    )
    eval_dataloader = build_eval_dataloader(data_args, model_args.image_size, args.eval_batch_size, accelerator)
    config = flat_config(data_args, model_args, args)
    accelerator.init_trackers(args.tracker_project_name or "train_tokenizer", config=config)

    history = train(accelerator, state, batches, eval_dataloader, args)
    save_final_model(accelerator, state, data_args, args, history, argv, commands)
    write_run_summary(
        accelerator,
        args.output_dir,
        {
            "start_step": start_step,
            "final_step": state.progress.step,
            "history": history,
            "unreadable_samples": state.progress.unreadable.summary(),
            "model_checksum": parameters_checksum(accelerator.unwrap_model(state.model)),
            "ema_checksum": parameters_checksum(state.ema.shadow),
            "discriminator_checksum": (
                parameters_checksum(accelerator.unwrap_model(state.discriminator))
                if state.discriminator is not None
                else None
            ),
            "all_finite": all(math.isfinite(value) for entry in history for value in entry.values()),
        },
    )
    accelerator.end_training()


def parse_args(argv: Optional[list[str]] = None):
    return parse_config((DataArguments, TokenizerModelArguments, TokenizerTrainingArguments), argv)


if __name__ == "__main__":
    main()

"""Stage 2: train the FSDD generator (`TokenSetTransformer1DModel`) on the token sets of a trained set tokenizer.

    accelerate launch training/train_generator.py --config training/configs/digits_generator.yaml [--flag value ...]

Data: either a dataset written by `training/pretokenize.py` (`--pretokenized_dataset`; each step picks the token set
of the image or of its mirror image at random) or images (`--dataset_name`) tokenized on the fly by
`--tokenizer_name_or_path` after a random flip.

One micro-batch, as the original's training step, with the noising owned by the scheduler:

    counts = tokens_to_counts(token_ids, C)                                   # (B, C), rows sum to M
    noise = sample_fixed_sum_noise(B, C, M)                                   # M distinct positions, count 1
    t = rand(B) * (1 - 1e-5) + 1e-5                                           # t = 0 noise, t = 1 data
    noisy = scheduler.add_noise(counts, noise, t)
    labels[rand(B) < class_dropout_prob] = num_classes                        # the null class, for guidance
    loss = cross_entropy(model(noisy, t, labels).logits.transpose(1, 2), counts)

The loss is also logged per bucket of t. The EMA of the weights is saved to `output_dir/transformer`; given a tokenizer,
`output_dir` also becomes a complete `TokenSetPipeline` folder (tokenizer, EMA transformer, scheduler, class names).

The loop (resume, logging, checkpoints, unreadable images counted against `--max_bad_samples`, the final save, card
and Hub upload) is `training.training_utils.run_training`'s; this file holds the generator's part
([`GeneratorTraining`]).
"""

# ruff: noqa: E402 (`--help` answers before the heavy imports below: `answer_help`)

from training.arguments import GeneratorModelArguments, GeneratorTrainingArguments
from training.config import DataArguments, answer_help


if __name__ == "__main__":
    answer_help((DataArguments, GeneratorModelArguments, GeneratorTrainingArguments))

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler
from tokenset_diffusers.tokenset.set_ops import sample_fixed_sum_noise, tokens_to_counts
from tokenset_diffusers.tokenset.transformer_tokenset import TokenSetTransformer1DModel
from training.config import parse_config
from training.data import (
    PRETOKENIZED_INFO_NAME,
    DataArguments,
    TokenSetExamples,
    build_train_examples,
    class_names,
    load_pretokenized,
    num_classes_of,
    random_horizontal_flip,
)
from training.training_utils import (
    ExponentialMovingAverage,
    FinalOutput,
    TrainingHooks,
    TrainingProgress,
    TrainingState,
    build_lr_scheduler,
    build_optimizer,
    read_provenance,
    reduce_metrics,
    run_training,
    step_generator,
)


@dataclass
class GeneratorData:
    """What the data determines: the examples, the sizes C and M, the classes, and the tokenizer if any."""

    examples: torch.utils.data.Dataset
    codebook_size: int
    num_tokens: int
    num_classes: int
    id2label: Optional[dict[int, str]]
    tokenizer: Optional[TokenSetVQVAE]


@dataclass
class GeneratorTrainingState(TrainingState):
    """The generator's [`TrainingState`] and the FSDD scheduler that noises its data."""

    scheduler: FSDDScheduler


# ---------------------------------------------------------------------------------------------------------- building


def _agree(name: str, configured: Optional[int], found: int, where: str) -> int:
    if configured is not None and configured != found:
        raise ValueError(f"`{name}`={configured} disagrees with {where}, which has {name}={found}.")
    return found


def build_data(
    accelerator: Accelerator,
    data_args: DataArguments,
    model_args: GeneratorModelArguments,
    args: GeneratorTrainingArguments,
) -> GeneratorData:
    """Token sets (pre-tokenized) or images (+ the frozen tokenizer), and the sizes they imply."""
    tokenizer = None
    if model_args.tokenizer_name_or_path is not None:
        tokenizer = TokenSetVQVAE.from_pretrained(model_args.tokenizer_name_or_path)
        tokenizer = tokenizer.to(accelerator.device).eval().requires_grad_(False)
    if model_args.pretokenized_dataset is not None:
        where = model_args.pretokenized_dataset
        dataset, sizes = load_pretokenized(where, data_args.train_split)
        if data_args.max_train_samples is not None:
            dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
        examples, names, num_classes = TokenSetExamples(dataset), class_names(dataset, "label"), sizes["num_classes"]
        if tokenizer is not None:
            _agree("codebook_size", tokenizer.config.codebook_size, sizes["codebook_size"], where)
            _agree("num_tokens", tokenizer.config.num_tokens, sizes["num_tokens"], where)
    else:
        where, sizes = model_args.tokenizer_name_or_path, tokenizer.config.to_dict()
        examples, dataset = build_train_examples(data_args, tokenizer.config.image_size, accelerator, args.seed)
        names = class_names(dataset, data_args.label_column)
        num_classes = num_classes_of(dataset, data_args.label_column)
    if num_classes is not None:
        num_classes = _agree("num_classes", model_args.num_classes, num_classes, "the dataset's labels")
    elif model_args.num_classes is not None:
        num_classes = model_args.num_classes
    else:
        raise ValueError("The number of classes is unknown for this (streamed) dataset; set `num_classes`.")
    return GeneratorData(
        examples=examples,
        codebook_size=_agree("codebook_size", model_args.codebook_size, sizes["codebook_size"], where),
        num_tokens=_agree("num_tokens", model_args.num_tokens, sizes["num_tokens"], where),
        num_classes=num_classes,
        id2label=dict(enumerate(names)) if names is not None else None,
        tokenizer=tokenizer,
    )


def build_training_state(
    accelerator: Accelerator,
    model_args: GeneratorModelArguments,
    args: GeneratorTrainingArguments,
    data: GeneratorData,
) -> GeneratorTrainingState:
    """Transformer, optimiser, schedule, EMA and scheduler, prepared and registered for checkpointing."""
    model = TokenSetTransformer1DModel(
        codebook_size=data.codebook_size,
        num_tokens=data.num_tokens,
        num_classes=data.num_classes,
        num_layers=model_args.num_layers,
        num_attention_heads=model_args.num_attention_heads,
        attention_head_dim=model_args.attention_head_dim,
        mlp_ratio=model_args.mlp_ratio,
        class_dropout_prob=model_args.class_dropout_prob,
    )
    if args.class_embedding_init_std is not None:
        torch.nn.init.normal_(model.class_embedder.weight, std=args.class_embedding_init_std)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = ExponentialMovingAverage(model, args.ema_decay)
    ema.shadow.to(accelerator.device)
    optimizer = build_optimizer(model.parameters(), args)
    lr_scheduler = build_lr_scheduler(optimizer, args)
    progress = TrainingProgress()
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler, ema, progress)
    scheduler = model_args.build_scheduler(data.codebook_size, data.num_tokens)
    return GeneratorTrainingState(model, optimizer, lr_scheduler, ema, progress, scheduler)


# ---------------------------------------------------------------------------------------------------------- training


def batch_token_ids(
    batch: dict,
    tokenizer: Optional[TokenSetVQVAE],
    generator: torch.Generator,
    accelerator: Accelerator,
    random_flip: bool = True,
) -> torch.LongTensor:
    """The token sets `(batch_size, num_tokens)` of a batch: a random one of the two stored (image or mirror image)
    for pre-tokenized data, else the tokenizer's encoding of the randomly flipped images."""
    if "token_ids" in batch:
        token_ids = batch["token_ids"].to(accelerator.device)  # (B, 2, M)
        flip = torch.rand(token_ids.shape[0], generator=generator, device=generator.device) < 0.5  # (B,)
        flip = flip & random_flip
        rows = torch.arange(token_ids.shape[0], device=token_ids.device)
        return token_ids[rows, flip.long().to(token_ids.device)]  # (B, M)
    pixel_values = batch["pixel_values"].to(accelerator.device)  # (B, 3, H, W)
    flipped = random_horizontal_flip(pixel_values, generator)  # draws even when unused: the same random stream
    pixel_values = flipped if random_flip else pixel_values
    with torch.no_grad(), accelerator.autocast():
        return tokenizer.encode(pixel_values).token_ids  # (B, M)


def fsdd_loss(
    model: torch.nn.Module,
    scheduler: FSDDScheduler,
    counts: torch.LongTensor,
    class_labels: torch.LongTensor,
    class_dropout_prob: float,
    num_classes: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The FSDD training loss of one batch of count vectors.

    Returns the mean cross-entropy over positions and batch (a scalar), the per-example losses `(batch_size,)` and
    the times `t` `(batch_size,)` they were drawn at.
    """
    batch_size, codebook_size = counts.shape
    num_tokens = scheduler.config.num_tokens
    device = counts.device
    # 1. noise from the fixed-sum prior, a time, and the scheduler's noisy sample between them
    noise = sample_fixed_sum_noise(batch_size, codebook_size, num_tokens, generator=generator, device=device)  # (B, C)
    timesteps = torch.rand(batch_size, generator=generator, device=generator.device).to(device)  # (B,)
    timesteps = timesteps * (1 - 1e-5) + 1e-5  # (B,) in (0, 1]
    noisy = scheduler.add_noise(counts, noise, timesteps, generator=generator)  # (B, C)
    # 2. label dropout to the null class
    drop = torch.rand(batch_size, generator=generator, device=generator.device).to(device) < class_dropout_prob
    class_labels = torch.where(drop, torch.full_like(class_labels, num_classes), class_labels)  # (B,)
    # 3. cross-entropy over the M + 1 count values at every position
    logits = model(noisy, timesteps, class_labels).logits  # (B, C, M + 1)
    per_position = F.cross_entropy(logits.float().transpose(1, 2), counts, reduction="none")  # (B, C)
    per_example = per_position.mean(-1)  # (B,)
    return per_example.mean(), per_example.detach(), timesteps


def time_bucket_sums(per_example: torch.Tensor, timesteps: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """`(2, num_buckets)`: the sum of the per-example losses and the number of examples in each interval
    `[i / num_buckets, (i + 1) / num_buckets)` of t."""
    buckets = (timesteps * num_buckets).long().clamp(0, num_buckets - 1)  # (B,)
    sums = torch.zeros(2, num_buckets, device=per_example.device)
    sums[0].index_add_(0, buckets, per_example.float())
    sums[1].index_add_(0, buckets, torch.ones_like(per_example, dtype=torch.float32))
    return sums


def train_step(
    accelerator: Accelerator,
    state: GeneratorTrainingState,
    data: GeneratorData,
    micro_batches: list[dict],
    model_args: GeneratorModelArguments,
    args: GeneratorTrainingArguments,
) -> tuple[dict[str, float], torch.Tensor]:
    """One optimiser step; returns the metrics (averaged over micro-batches and processes; 0-d device tensors, and
    the learning rate) and the per-bucket loss sums `(2, num_time_buckets)` of this process."""
    step = state.progress.step
    state.model.train()
    total = torch.zeros((), device=accelerator.device)
    buckets = torch.zeros(2, args.num_time_buckets, device=accelerator.device)
    for index, batch in enumerate(micro_batches):
        generator = step_generator(args.seed, accelerator.process_index, step, index, accelerator.device)
        token_ids = batch_token_ids(batch, data.tokenizer, generator, accelerator, args.random_flip)  # (B, M)
        counts = tokens_to_counts(token_ids, data.codebook_size)  # (B, C)
        class_labels = batch["label"].to(accelerator.device)  # (B,)
        sync = index == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(state.model):
            with accelerator.autocast():
                loss, per_example, timesteps = fsdd_loss(
                    state.model,
                    state.scheduler,
                    counts,
                    class_labels,
                    model_args.class_dropout_prob,
                    data.num_classes,
                    generator,
                )
            accelerator.backward(loss / len(micro_batches))
        total += loss.detach() / len(micro_batches)
        buckets += time_bucket_sums(per_example, timesteps, args.num_time_buckets)
    metrics = {"loss": total}
    if args.max_grad_norm is not None:
        metrics["grad_norm"] = accelerator.clip_grad_norm_(state.model.parameters(), args.max_grad_norm)
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.ema.update(accelerator.unwrap_model(state.model))
    metrics = reduce_metrics(accelerator, metrics)
    metrics["lr"] = state.lr_scheduler.get_last_lr()[0]
    return metrics, buckets


def bucket_metrics(bucket_sums: torch.Tensor) -> dict[str, float]:
    """`train/loss_t{low}-{high}` for every bucket of t that saw examples."""
    num_buckets = bucket_sums.shape[1]
    return {
        f"train/loss_t{i / num_buckets:.2f}-{(i + 1) / num_buckets:.2f}": (
            bucket_sums[0, i] / bucket_sums[1, i]
        ).item()
        for i in range(num_buckets)
        if bucket_sums[1, i] > 0
    }


# ------------------------------------------------------------------------------------------------------------ saving


def upstream_provenance(data_args: DataArguments, model_args: GeneratorModelArguments) -> dict:
    """How the generator's inputs came about: `dataset` (the source images' name), `tokenizer_steps` (or `None`) and
    `commands` (the tokenizer's training and the pre-tokenization, where their folders record them)."""
    if model_args.pretokenized_dataset is not None:
        info = json.loads((Path(model_args.pretokenized_dataset) / PRETOKENIZED_INFO_NAME).read_text())
        return {
            "dataset": info.get("source_dataset") or model_args.pretokenized_dataset,
            "tokenizer_steps": info.get("tokenizer_steps"),
            "commands": info.get("commands", []),
        }
    tokenizer = read_provenance(model_args.tokenizer_name_or_path)
    return {
        "dataset": data_args.dataset_name,
        "tokenizer_steps": tokenizer.get("steps"),
        "commands": tokenizer.get("commands", []),
    }


class GeneratorTraining(TrainingHooks):
    """What [`run_training`] needs from this script: the transformer and its FSDD loss, the token sets (or images and
    the tokenizer), the loss per bucket of t, and `output_dir/transformer` (with a tokenizer: `output_dir` as a
    `TokenSetPipeline` folder)."""

    script = "training/train_generator.py"
    argument_types = (DataArguments, GeneratorModelArguments, GeneratorTrainingArguments)
    hub_commit_message = "TokenSet generator"

    def __init__(
        self, data_args: DataArguments, model_args: GeneratorModelArguments, args: GeneratorTrainingArguments
    ):
        super().__init__(data_args, model_args, args)
        self.data = None
        self.window_buckets = None  # (2, num_time_buckets): loss sums and counts of this process since the last log
        self.last_buckets = {}  # the last logged `train/loss_t...` of every process together

    def build(self, accelerator: Accelerator) -> GeneratorTrainingState:
        self.data = build_data(accelerator, self.data_args, self.model_args, self.args)
        self.state = build_training_state(accelerator, self.model_args, self.args, self.data)
        self.window_buckets = torch.zeros(2, self.args.num_time_buckets, device=accelerator.device)
        return self.state

    def train_examples(self, accelerator: Accelerator):
        return self.data.examples

    def train_step(self, accelerator: Accelerator, micro_batches: list[dict]) -> dict:
        metrics, buckets = train_step(accelerator, self.state, self.data, micro_batches, self.model_args, self.args)
        self.window_buckets += buckets
        return metrics

    def logging_metrics(self, accelerator: Accelerator) -> dict[str, float]:
        self.last_buckets = bucket_metrics(accelerator.reduce(self.window_buckets, reduction="sum"))
        self.window_buckets.zero_()
        return self.last_buckets

    def save_final(self, accelerator: Accelerator, folder: Path, history: list[dict]) -> FinalOutput:
        """The EMA transformer in `folder/transformer`; with a tokenizer, `folder` becomes a complete
        `TokenSetPipeline` folder whose card lists every command line that produced the weights (tokenizer training
        and pre-tokenization where recorded, then this run's launches)."""
        from tokenset_diffusers.model_cards import pipeline_card_fields
        from tokenset_diffusers.tokenset.pipeline_tokenset import TokenSetPipeline

        model_args = self.model_args
        transformer = self.state.ema.shadow
        transformer.save_pretrained(folder / "transformer")
        upstream = upstream_provenance(self.data_args, model_args)
        if model_args.tokenizer_name_or_path is None:
            return FinalOutput("transformer", dataset=upstream["dataset"])
        pipeline = TokenSetPipeline(
            image_tokenizer=self.data.tokenizer,
            transformer=transformer,
            scheduler=self.state.scheduler,
            id2label=self.data.id2label,
            default_guidance_scale=model_args.default_guidance_scale,
        )
        pipeline.save_pretrained(folder)
        card_fields = {
            "dataset": upstream["dataset"],
            "tokenizer_steps": upstream["tokenizer_steps"]
            or f"not recorded (see {model_args.tokenizer_name_or_path})",
            "generator_steps": self.state.progress.step,
            "metrics": {"loss": history[-1]["loss"], **self.last_buckets} if history else {},
            **pipeline_card_fields(pipeline),
        }
        return FinalOutput(
            "", "trained_pipeline", card_fields, dataset=upstream["dataset"], upstream_commands=upstream["commands"]
        )

    def summary(self, accelerator: Accelerator, history: list[dict]) -> dict:
        return {
            "time_bucket_losses": self.last_buckets,
            "codebook_size": self.data.codebook_size,
            "num_tokens": self.data.num_tokens,
            "num_classes": self.data.num_classes,
        }


def parse_args(argv: Optional[list[str]] = None):
    return parse_config(GeneratorTraining.argument_types, argv)


def main(argv: Optional[list[str]] = None) -> GeneratorTraining:
    return run_training(GeneratorTraining, argv)


if __name__ == "__main__":
    main()

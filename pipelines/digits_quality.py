"""Quality of a digits pipeline (the bundled model by default), judged independently.

    python pipelines/digits_quality.py [--model FOLDER | digits | tokenbridge-digits] [--num_samples_per_class 50] \
        [--output quality.json]

TokenSet and TokenBridge pipelines are both judged (the system is read from the folder's `model_index.json`); for
TokenBridge, (a) is the VAE's reconstruction through the quantizer, and (c) has no fixed-sum variant.

The judge is a plain scikit-learn classifier (an RBF SVM) on the real digits of the held-out split, which neither
stage saw in training, after the same 32 px -> 8x8 reduction that every image here goes through:

- (a) reconstruction accuracy: the tokenizer's reconstructions of held-out digits, each classified by a judge trained
  on the other folds of the held-out split (5-fold), so no judge has seen the digit it classifies;
- (b) generation accuracy: generated samples (`--num_samples_per_class` per class, image i of class c seeded with
  `seed + 1000 * c + i`) classified as the class they were asked for, by the judge trained on the whole held-out
  split;
- (c) the same for the exact fixed-sum sampler and with guidance off, the fraction of generated count vectors that
  sum to M, and the FID between generated and held-out real digits in the feature space of a small digits
  classifier (`pipelines/digits_features.py`).
"""

# ruff: noqa: E402 (`--help` and argument errors answer before the heavy imports below)

import argparse
import json
import sys
import time
from pathlib import Path

from tokenset_diffusers.bundled import BUNDLED_MODELS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=None,
        help="a digits pipeline folder (TokenSet or TokenBridge), a bundled model's name "
        f"({', '.join(sorted(BUNDLED_MODELS))}) or a Hub repo id; default: the bundled TokenSet model",
    )
    parser.add_argument("--num_samples_per_class", type=int, default=50)
    parser.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="default: 25 for TokenSet, the stored default for TokenBridge",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # `--help` and argument errors, before torch is imported

import numpy as np
import torch

from pipelines import digits_features
from tokenset_diffusers import (
    FSDDScheduler,
    TokenBridgePipeline,
    TokenSetPipeline,
    frechet_distance,
    preprocess_images,
)
from tokenset_diffusers.bundled import resolve_pipeline
from tokenset_diffusers.utils.import_utils import require


StratifiedKFold = require("sklearn.model_selection", "pipelines/digits_quality.py").StratifiedKFold
SVC = require("sklearn.svm", "pipelines/digits_quality.py").SVC


def held_out_digits(image_size: int) -> tuple[list, np.ndarray]:
    """The held-out (`test`) split of `training/prepare_digits.py`, as the bundled model's training made it."""
    from training.prepare_digits import build_digits_dataset

    digits = build_digits_dataset(image_size=image_size)["test"]
    return list(digits["image"]), np.asarray(list(digits["label"]))


def to_judge_features(images: torch.Tensor) -> np.ndarray:
    """`(B, 3, S, S)` images in [-1, 1] -> `(B, 64)`: gray, area-averaged to 8x8, on the digits' 0..16 scale."""
    gray = (images.float().mean(1, keepdim=True) + 1) / 2  # (B, 1, S, S) in [0, 1]
    small = torch.nn.functional.adaptive_avg_pool2d(gray.clamp(0, 1), 8)  # (B, 1, 8, 8)
    return (small.flatten(1) * 16).cpu().numpy()


def make_judge() -> "SVC":
    return SVC(gamma=0.001, C=10.0)


@torch.no_grad()
def reconstruction_accuracy(pipeline: TokenSetPipeline, real: torch.Tensor, labels: np.ndarray) -> dict:
    """(a): 5-fold over the held-out split; also the judge's own accuracy on the real digits."""
    image_tokenizer = pipeline.image_tokenizer
    reconstructions = image_tokenizer.decode(image_tokenizer.encode(real).token_ids)
    real_features, reconstruction_features = to_judge_features(real), to_judge_features(reconstructions)
    correct_real = correct_reconstruction = 0
    for train, test in StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(real_features, labels):
        judge = make_judge().fit(real_features[train], labels[train])
        correct_real += (judge.predict(real_features[test]) == labels[test]).sum()
        correct_reconstruction += (judge.predict(reconstruction_features[test]) == labels[test]).sum()
    return {
        "judge_accuracy_on_real": float(correct_real / len(labels)),
        "reconstruction_accuracy": float(correct_reconstruction / len(labels)),
    }


@torch.no_grad()
def generate_digits(pipeline: TokenSetPipeline, per_class: int, seed: int, batch_size: int = 100, **kwargs):
    """`per_class` samples of every class: images (N, 3, S, S) in [-1, 1], their labels and count vectors."""
    num_classes = pipeline.transformer.config.num_classes
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    seeds = [seed + 1000 * c + i for c in range(num_classes) for i in range(per_class)]
    images, counts = [], []
    for start in range(0, len(labels), batch_size):
        generators = [torch.Generator().manual_seed(s) for s in seeds[start : start + batch_size]]
        output = pipeline(labels[start : start + batch_size], generator=generators, output_type="pt", **kwargs)
        images.append(output.images * 2 - 1)
        counts.append(output.counts)
    return torch.cat(images), np.asarray(labels), torch.cat(counts)


def feature_statistics(extractor, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    uint8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    features = extractor(uint8)
    features = (features[0] if isinstance(features, tuple) else features).double().cpu().numpy()
    return features.mean(0), np.cov(features, rowvar=False)


def is_tokenbridge(folder: str | Path) -> bool:
    """Whether the pipeline folder (or bundled name) holds a TokenBridge pipeline."""
    return resolve_pipeline(folder).system == "tokenbridge"


def evaluate(model: str | None, per_class: int = 50, seed: int = 0, num_inference_steps: int | None = None) -> dict:
    resolved = resolve_pipeline(model)
    folder = resolved.folder
    if resolved.system == "tokenbridge":
        return evaluate_tokenbridge(folder, per_class, seed, num_inference_steps)
    num_inference_steps = 25 if num_inference_steps is None else num_inference_steps
    pipeline = TokenSetPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    image_size = pipeline.image_tokenizer.config.image_size
    real_images, real_labels = held_out_digits(image_size)
    real = preprocess_images(real_images, image_size)  # (N, 3, S, S) in [-1, 1]
    results = {"model": str(model or "bundled"), "held_out_images": len(real_labels), **reconstruction_accuracy(
        pipeline, real, real_labels)}  # fmt: skip
    judge = make_judge().fit(to_judge_features(real), real_labels)
    extractor = digits_features.build()
    real_mu, real_sigma = feature_statistics(extractor, real)
    exact = FSDDScheduler.from_config(pipeline.scheduler.config, exact_sum=True)
    variants = {
        "default": (pipeline.scheduler, {}),
        "exact_sum": (exact, {}),
        "guidance_off": (pipeline.scheduler, {"guidance_scale": 1.0}),
    }
    default_scheduler = pipeline.scheduler
    for name, (scheduler, kwargs) in variants.items():
        pipeline.scheduler = scheduler
        start = time.perf_counter()
        images, labels, counts = generate_digits(
            pipeline, per_class, seed, num_inference_steps=num_inference_steps, **kwargs
        )
        mu, sigma = feature_statistics(extractor, images)
        results[name] = {
            "samples": len(labels),
            "generation_accuracy": float((judge.predict(to_judge_features(images)) == labels).mean()),
            "fraction_sum_is_M": float((counts.sum(-1) == pipeline.scheduler.config.num_tokens).float().mean()),
            "fid_digits_features": float(frechet_distance(mu, sigma, real_mu, real_sigma)),
            "seconds": round(time.perf_counter() - start, 1),
        }
    pipeline.scheduler = default_scheduler
    results["settings"] = {
        "num_inference_steps": num_inference_steps,
        "default_guidance_scale": pipeline.config.default_guidance_scale,
        "samples_per_class": per_class,
        "seed": seed,
    }
    return results


@torch.no_grad()
def tokenbridge_reconstruction_accuracy(pipeline: TokenBridgePipeline, real: torch.Tensor, labels: np.ndarray) -> dict:
    """(a) for TokenBridge: the VAE's reconstructions of the held-out digits from the posterior mean, through the
    quantizer (what the generator can produce) and without it, judged 5-fold as for TokenSet."""
    vae, quantizer = pipeline.vae, pipeline.transformer.quantizer
    scaling_factor = vae.config.scaling_factor
    mean = vae.encode(real).latent_dist.mode()  # (N, C, h, w)
    quantized = quantizer.dequantize(quantizer.quantize(mean * scaling_factor)) / scaling_factor
    features = {
        "real": to_judge_features(real),
        "continuous": to_judge_features(vae.decode(mean).sample),
        "quantized": to_judge_features(vae.decode(quantized).sample),
    }
    correct = dict.fromkeys(features, 0)
    for train, test in StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(features["real"], labels):
        judge = make_judge().fit(features["real"][train], labels[train])
        for name, values in features.items():
            correct[name] += (judge.predict(values[test]) == labels[test]).sum()
    return {
        "judge_accuracy_on_real": float(correct["real"] / len(labels)),
        "reconstruction_accuracy": float(correct["quantized"] / len(labels)),
        "continuous_reconstruction_accuracy": float(correct["continuous"] / len(labels)),
    }


@torch.no_grad()
def generate_tokenbridge_digits(
    pipeline: TokenBridgePipeline, per_class: int, seed: int, batch_size: int = 100, **kwargs
):
    """`per_class` samples of every class (image i of class c seeded with `seed + 1000 * c + i`): images
    `(N, 3, S, S)` in [-1, 1] and their labels."""
    num_classes = pipeline.transformer.config.num_classes
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    seeds = [seed + 1000 * c + i for c in range(num_classes) for i in range(per_class)]
    images = []
    for start in range(0, len(labels), batch_size):
        generators = [torch.Generator().manual_seed(s) for s in seeds[start : start + batch_size]]
        output = pipeline(labels[start : start + batch_size], generator=generators, output_type="pt", **kwargs)
        images.append(output.images.cpu() * 2 - 1)
    return torch.cat(images), np.asarray(labels)


def evaluate_tokenbridge(
    folder: Path, per_class: int = 50, seed: int = 0, num_inference_steps: int | None = None
) -> dict:
    """(a)-(c) for a TokenBridge pipeline with its stored sampling defaults, and with guidance off."""
    pipeline = TokenBridgePipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    image_size = pipeline.vae.config.sample_size
    real_images, real_labels = held_out_digits(image_size)
    real = preprocess_images(real_images, image_size)  # (N, 3, S, S) in [-1, 1]
    results = {"model": str(folder), "kind": "TokenBridge", "held_out_images": len(real_labels)}
    results.update(tokenbridge_reconstruction_accuracy(pipeline, real, real_labels))
    judge = make_judge().fit(to_judge_features(real), real_labels)
    extractor = digits_features.build()
    real_mu, real_sigma = feature_statistics(extractor, real)
    for name, kwargs in {"default": {}, "guidance_off": {"guidance_scale": 1.0}}.items():
        start = time.perf_counter()
        images, labels = generate_tokenbridge_digits(
            pipeline, per_class, seed, num_inference_steps=num_inference_steps, **kwargs
        )
        mu, sigma = feature_statistics(extractor, images)
        results[name] = {
            "samples": len(labels),
            "generation_accuracy": float((judge.predict(to_judge_features(images)) == labels).mean()),
            "fid_digits_features": float(frechet_distance(mu, sigma, real_mu, real_sigma)),
            "seconds": round(time.perf_counter() - start, 1),
        }
    results["settings"] = {
        "num_inference_steps": num_inference_steps or pipeline.config.default_num_inference_steps,
        "default_guidance_scale": pipeline.config.default_guidance_scale,
        "default_temperature": pipeline.config.default_temperature,
        "samples_per_class": per_class,
        "seed": seed,
    }
    return results


def markdown_table(results: dict) -> str:
    if results.get("kind") == "TokenBridge":
        return tokenbridge_markdown_table(results)
    rows = [
        "| sampler | generated digits classified as asked | count vectors summing to M | FID (digits features) |",
        "|---|---|---|---|",
    ]
    for name in ("default", "exact_sum", "guidance_off"):
        r = results[name]
        rows.append(
            f"| {name} | {r['generation_accuracy']:.1%} ({r['samples']} samples) | {r['fraction_sum_is_M']:.1%} | "
            f"{r['fid_digits_features']:.2f} |"
        )
    rows.append(
        f"\nReconstructions of the {results['held_out_images']} held-out digits classified correctly: "
        f"{results['reconstruction_accuracy']:.1%} (the judge on the real digits: {results['judge_accuracy_on_real']:.1%})."
    )
    return "\n".join(rows)


def tokenbridge_markdown_table(results: dict) -> str:
    rows = ["| sampler | generated digits classified as asked | FID (digits features) |", "|---|---|---|"]
    for name in ("default", "guidance_off"):
        r = results[name]
        rows.append(
            f"| {name} | {r['generation_accuracy']:.1%} ({r['samples']} samples) | {r['fid_digits_features']:.2f} |"
        )
    rows.append(
        f"\nReconstructions of the {results['held_out_images']} held-out digits classified correctly: "
        f"{results['reconstruction_accuracy']:.1%} through the quantizer, "
        f"{results['continuous_reconstruction_accuracy']:.1%} without it "
        f"(the judge on the real digits: {results['judge_accuracy_on_real']:.1%})."
    )
    return "\n".join(rows)


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_samples_per_class < 2:
        parser.error("--num_samples_per_class must be at least 2 (the FID needs a covariance)")
    try:
        resolve_pipeline(args.model)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    results = evaluate(args.model, args.num_samples_per_class, args.seed, args.num_inference_steps)
    print(markdown_table(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)

"""Evaluate TokenSet models with the paper's protocol: gFID / IS of a pipeline, rFID of a set tokenizer, and reference
statistics. Accelerate-launched; any number of processes (or GPUs) gives the same numbers.

Modes (`--mode`):

- `gfid`: `--num_images_per_class` images for every class of a [`TokenSetPipeline`] (`--pipeline`). Image `i` of class
  `c` is drawn with its own generator, seeded from `(seed, c, i)`, so neither the number of processes nor the batch
  size changes any image. Classes are dealt out to the processes; each finished class is stored at once (its PNGs under
  `images/`, its features and logits in `class_features/class_{c:05d}.npz`, written atomically), so an interrupted
  run resumes where it stopped (finished classes are skipped). Then FID against `--reference` (an `.npz` with `mu` /
  `sigma`, e.g. the ADM statistics, or a folder of images) and the Inception Score. A `TokenBridgePipeline` folder
  works the same way (its kind is read from `model_index.json`); `--num_inference_steps` is then its masked-AR
  iterations, `--guidance_scale` one scale (linear schedule) and `--temperature` applies (defaults: the stored ones).
- `rfid`: encode -> decode a dataset split (`--dataset`: a `datasets` Hub name, a folder of images or a
  `save_to_disk` folder) with a set tokenizer (`--tokenizer`) and compare the reconstructions with the originals (both
  ADM-centre-cropped to the tokenizer's image size); optionally also with `--reference`.
- `compute_reference`: the `mu` / `sigma` statistics of any image dataset, as an `.npz` (`--statistics_output`).

Every mode prints its numbers and writes `{mode}_results.json` (numbers, settings, timing) to `--output_dir`.
Features come from `--feature_extractor`: `inception` (torch-fidelity's `inception-v3-compat`, as in the paper) or
`module:callable` / `path/to/file.py:callable` (see `tokenset_diffusers.metrics.load_feature_extractor`).

    accelerate launch pipelines/evaluate_generation.py --mode gfid --pipeline PATH --reference adm_in256_stats.npz \\
        --output_dir eval/gfid

On CPU, several processes need `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...`.
"""

# ruff: noqa: E402 (`--help` answers before the heavy imports below)

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, List, Literal, Optional

from transformers import HfArgumentParser


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
CLASS_FEATURES_DIR = "class_features"
GFID_SETTINGS_FILE = "gfid_settings.json"


@dataclass
class EvaluateConfig:
    mode: Literal["gfid", "rfid", "compute_reference"] = field(
        metadata={"help": "what to evaluate (module docstring)"}
    )
    output_dir: str = field(metadata={"help": "results JSON, images, per-class features and statistics go here"})
    feature_extractor: str = field(
        default="inception", metadata={"help": "'inception' or 'module:callable' / 'path/to/file.py:callable'"}
    )
    inception_weights: Optional[str] = field(
        default=None, metadata={"help": "local torch-fidelity Inception weights (default: torch hub cache/download)"}
    )
    feature_batch_size: int = field(default=50, metadata={"help": "images per feature-extractor call"})
    reference: Optional[str] = field(
        default=None, metadata={"help": "FID reference: an .npz with mu/sigma, or a folder of images"}
    )
    inception_score_splits: int = field(default=10, metadata={"help": "splits of the Inception Score"})
    # gfid
    pipeline: Optional[str] = field(
        default=None,
        metadata={
            "help": "gfid: TokenSetPipeline or TokenBridgePipeline folder, bundled model (digits, tokenbridge-digits) "
            "or Hub repo id"
        },
    )
    num_images_per_class: int = field(default=50, metadata={"help": "gfid: images per class (paper: 50)"})
    class_ids: Optional[List[int]] = field(default=None, metadata={"help": "gfid: only these classes (default all)"})
    num_inference_steps: Optional[int] = field(
        default=None,
        metadata={
            "help": "gfid: FSDD steps (TokenSet, default 25) or masked-AR iterations (TokenBridge, default: stored)"
        },
    )
    temperature: Optional[float] = field(
        default=None, metadata={"help": "gfid, TokenBridge only: sampling temperature (default: the pipeline's)"}
    )
    guidance_scale: Optional[List[float]] = field(
        default=None,
        metadata={"help": "gfid: one scale or an interval schedule, e.g. 4 50 55 (default: the pipeline's)"},
    )
    exact_sum: bool = field(default=False, metadata={"help": "gfid: use the scheduler's exact fixed-sum sampler"})
    seed: int = field(default=0, metadata={"help": "gfid: base seed; image i of class c is seeded from (seed, c, i)"})
    generation_batch_size: int = field(default=50, metadata={"help": "gfid: images per pipeline call"})
    save_images: bool = field(default=True, metadata={"help": "gfid/rfid: write the generated/reconstructed PNGs"})
    dtype: Literal["float32", "bfloat16"] = field(
        default="float32", metadata={"help": "weights dtype of the pipeline / tokenizer"}
    )
    # rfid / compute_reference
    tokenizer: Optional[str] = field(default=None, metadata={"help": "rfid: TokenSetVQVAE folder or Hub repo id"})
    tokenizer_subfolder: Optional[str] = field(
        default=None, metadata={"help": "rfid: subfolder of --tokenizer, e.g. image_tokenizer of a pipeline"}
    )
    dataset: Optional[str] = field(
        default=None, metadata={"help": "rfid/compute_reference: Hub dataset, image folder or save_to_disk folder"}
    )
    dataset_config: Optional[str] = field(default=None, metadata={"help": "configuration name of a Hub dataset"})
    dataset_split: str = field(default="validation", metadata={"help": "split of --dataset"})
    image_column: str = field(default="image", metadata={"help": "image column of --dataset"})
    image_size: Optional[int] = field(
        default=None, metadata={"help": "centre-crop size (default: the tokenizer's / pipeline's image size, or 256)"}
    )
    max_images: Optional[int] = field(default=None, metadata={"help": "use only the first N images of --dataset"})
    statistics_output: Optional[str] = field(
        default=None, metadata={"help": "compute_reference: .npz path (default OUTPUT_DIR/reference_statistics.npz)"}
    )

    def __post_init__(self):
        required = {
            "gfid": ("pipeline", "reference"),
            "rfid": ("tokenizer", "dataset"),
            "compute_reference": ("dataset",),
        }
        missing = [name for name in required[self.mode] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"--mode {self.mode} needs {', '.join('--' + name for name in missing)}.")
        for name in ("feature_batch_size", "num_images_per_class", "num_inference_steps", "generation_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`--{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.seed < 0:
            raise ValueError(f"`--seed` must be non-negative, got {self.seed}.")
        for name in ("inception_score_splits", "max_images", "image_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`--{name}` must be a positive integer, got {getattr(self, name)}.")


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    HfArgumentParser(EvaluateConfig).parse_args(["--help"])  # before the heavy imports below


import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from PIL import Image

import tokenset_diffusers
from tokenset_diffusers.image_processing import center_crop_arr, postprocess_images
from tokenset_diffusers.metrics import (
    FeatureStatistics,
    extract_features,
    frechet_distance,
    images_to_uint8,
    inception_score,
    load_feature_extractor,
    load_statistics,
)


# ---------------------------------------------------------------------------------------------- image sources


class ImageSource:
    """Indexable images: a folder (recursive, sorted file names), a `save_to_disk` folder or a Hub dataset split."""

    def __init__(self, name_or_path: str, split: str, config_name: Optional[str], image_column: str):
        self.paths, self.dataset, self.image_column = None, None, image_column
        path = Path(name_or_path)
        if path.is_dir() and not any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
            self.paths = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not self.paths:
                raise ValueError(f"The folder {name_or_path!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
            return
        import datasets

        if path.is_dir():
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise ValueError(
                        f"`--dataset_split` {split!r} is not in {name_or_path!r}; it has {list(dataset)}."
                    )
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(name_or_path, config_name, split=split)
        if image_column not in dataset.column_names:
            raise ValueError(
                f"`--image_column` {image_column!r} is not a column of the dataset: {dataset.column_names}."
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else len(self.dataset)

    def load(self, start: int, stop: int) -> list:
        """Images `start..stop-1` as PIL images."""
        if self.paths is not None:
            images = []
            for path in self.paths[start:stop]:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            return images
        return list(self.dataset[start:stop][self.image_column])


def batch_ranges(num_images: int, batch_size: int, accelerator: Accelerator) -> Iterator[tuple[int, int]]:
    """This process's share of the global batches `[k * batch_size, (k + 1) * batch_size)` (round robin), so every
    batch holds the same images whatever the number of processes."""
    num_batches = -(-num_images // batch_size)
    for batch_index in range(accelerator.process_index, num_batches, accelerator.num_processes):
        yield batch_index * batch_size, min((batch_index + 1) * batch_size, num_images)


def center_crop_uint8(images: list, image_size: int) -> torch.Tensor:
    """PIL images -> ADM centre crops as uint8 `(B, 3, S, S)` (the tokenizer's pre-processing, before scaling)."""
    return images_to_uint8([center_crop_arr(image.convert("RGB"), image_size) for image in images])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] `(B, 3, H, W)` -> uint8, rounded exactly as PIL output (and so the saved PNGs) would be."""
    return (postprocess_images(images, output_type="pt") * 255).round().to(torch.uint8).cpu()


def gather_statistics(statistics: FeatureStatistics, accelerator: Accelerator) -> FeatureStatistics:
    """Merges every process's statistics, in process order."""
    states = gather_object([statistics.state_dict()])
    merged = FeatureStatistics(statistics.num_features)
    for state in states:
        merged.merge(FeatureStatistics.from_state_dict(state))
    return merged


def dataset_statistics(
    source: ImageSource,
    image_size: int,
    extractor,
    config: EvaluateConfig,
    accelerator: Accelerator,
    max_images: Optional[int] = None,
) -> FeatureStatistics:
    """Feature statistics of the (first `max_images`) centre-cropped images of `source`, over all processes."""
    num_images = min(len(source), max_images or len(source))
    statistics = None
    for start, stop in batch_ranges(num_images, config.feature_batch_size, accelerator):
        images = center_crop_uint8(source.load(start, stop), image_size)
        features, _ = extract_features(extractor, images, config.feature_batch_size, accelerator.device)
        statistics = statistics or FeatureStatistics(features.shape[1])
        statistics.update(features)
    return gather_statistics(_non_empty(statistics, extractor, image_size, accelerator), accelerator)


def _non_empty(statistics, extractor, image_size, accelerator) -> FeatureStatistics:
    """A process without any batch still needs the feature dimension to take part in the gather."""
    if statistics is not None:
        return statistics
    probe = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    features, _ = extract_features(extractor, probe, 1, accelerator.device)
    return FeatureStatistics(features.shape[1])


def reference_statistics(config: EvaluateConfig, image_size: int, extractor, accelerator) -> tuple:
    """`(mu, sigma)` of `--reference`: read from an .npz, or computed from a folder of images (and saved)."""
    if config.reference.endswith(".npz"):
        return load_statistics(config.reference)
    source = ImageSource(config.reference, "train", None, "image")
    statistics = dataset_statistics(source, image_size, extractor, config, accelerator)
    if accelerator.is_main_process:
        statistics.save(Path(config.output_dir) / "reference_statistics.npz")
    return statistics.mean, statistics.covariance


# ---------------------------------------------------------------------------------------------- gfid


def image_generator(seed: int, class_id: int, image_index: int, device: torch.device) -> torch.Generator:
    """The generator of image `image_index` of class `class_id`: independent of processes and batch sizes."""
    state = np.random.SeedSequence([seed, class_id, image_index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def is_tokenbridge(pipeline) -> bool:
    return type(pipeline).__name__ == "TokenBridgePipeline"


def pipeline_image_size(pipeline) -> int:
    """The side of the images a TokenSet or TokenBridge pipeline generates."""
    return pipeline.vae.config.sample_size if is_tokenbridge(pipeline) else pipeline.image_tokenizer.config.image_size


def resolved_steps(config: EvaluateConfig, pipeline) -> int:
    if config.num_inference_steps is not None:
        return config.num_inference_steps
    return pipeline.config.default_num_inference_steps if is_tokenbridge(pipeline) else 25


def load_pipeline(config: EvaluateConfig, accelerator: Accelerator):
    """A `TokenSetPipeline` or a `TokenBridgePipeline`, as the folder's `model_index.json` says (`--pipeline`: a folder,
    a bundled model's name or a Hub repo id, see `tokenset_diffusers.bundled.resolve_pipeline`)."""
    from tokenset_diffusers import FSDDScheduler
    from tokenset_diffusers.bundled import resolve_pipeline

    resolved = resolve_pipeline(config.pipeline)
    if resolved.system == "tokenbridge" and config.exact_sum:
        raise ValueError("`--exact_sum` is a TokenSet sampler option; the pipeline is a TokenBridgePipeline.")
    if resolved.system == "tokenset" and config.temperature is not None:
        raise ValueError(f"`--temperature` is a TokenBridge option; got {config.temperature} for a TokenSetPipeline.")
    pipeline = resolved.pipeline_class.from_pretrained(resolved.folder, dtype=getattr(torch, config.dtype))
    if config.exact_sum:
        pipeline.scheduler = FSDDScheduler.from_config(pipeline.scheduler.config, exact_sum=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(accelerator.device)


def check_gfid_settings(config: EvaluateConfig, pipeline, accelerator: Accelerator) -> None:
    """Stores the settings that decide the images; a resumed run must use the same ones."""
    settings = {
        "pipeline": os.path.abspath(config.pipeline) if os.path.isdir(config.pipeline) else config.pipeline,
        "num_images_per_class": config.num_images_per_class,
        "num_inference_steps": resolved_steps(config, pipeline),
        "guidance_scale": config.guidance_scale or pipeline.config.default_guidance_scale,
        "exact_sum": config.exact_sum,
        "temperature": (config.temperature if config.temperature is not None else pipeline.config.default_temperature)
        if is_tokenbridge(pipeline)
        else None,
        "seed": config.seed,
        "dtype": config.dtype,
        "feature_extractor": config.feature_extractor,
        "scheduler": {key: value for key, value in pipeline.scheduler.config.items() if not key.startswith("_")},
    }
    path = Path(config.output_dir) / GFID_SETTINGS_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != json.loads(json.dumps(settings)):
            raise ValueError(
                f"{config.output_dir!r} holds a gfid run with other settings ({stored}); these are {settings}. Use "
                "another --output_dir or the same settings to resume."
            )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not path.exists():
        path.write_text(json.dumps(settings, indent=2))


def generate_class(pipeline, class_id: int, config: EvaluateConfig, extractor, accelerator: Accelerator) -> None:
    """Generates, saves and featurises the images of one class; the features file marks the class as done."""
    images = []
    for start in range(0, config.num_images_per_class, config.generation_batch_size):
        indices = range(start, min(start + config.generation_batch_size, config.num_images_per_class))
        generators = [image_generator(config.seed, class_id, i, accelerator.device) for i in indices]
        call_kwargs = {"num_inference_steps": resolved_steps(config, pipeline), "generator": generators}
        if config.guidance_scale is not None:
            guidance = config.guidance_scale
            if is_tokenbridge(pipeline):  # one scale (linear schedule), not an interval schedule
                if len(guidance) != 1:
                    raise ValueError(f"A TokenBridgePipeline takes one `--guidance_scale`, got {guidance}.")
                guidance = guidance[0]
            call_kwargs["guidance_scale"] = guidance
        if config.temperature is not None:
            call_kwargs["temperature"] = config.temperature
        with accelerator.autocast():
            images.extend(pipeline([class_id] * len(indices), output_type="pil", **call_kwargs).images)
    if config.save_images:
        image_dir = Path(config.output_dir) / "images"
        for index, image in enumerate(images):
            image.save(image_dir / f"{class_id:05d}_{index:05d}.png")
    features, logits = extract_features(extractor, images, config.feature_batch_size, accelerator.device)
    arrays = {"features": features.numpy()}
    if logits is not None:
        arrays["logits"] = logits.numpy()
    path = Path(config.output_dir) / CLASS_FEATURES_DIR / f"class_{class_id:05d}.npz"
    temporary = path.with_name(f".{path.name}.{accelerator.process_index}.tmp")
    with open(temporary, "wb") as file:
        np.savez(file, **arrays)
    os.replace(temporary, path)  # atomic: a class is either done or not


def run_gfid(config: EvaluateConfig, accelerator: Accelerator, extractor) -> dict:
    output_dir = Path(config.output_dir)
    (output_dir / CLASS_FEATURES_DIR).mkdir(parents=True, exist_ok=True)
    if config.save_images:
        (output_dir / "images").mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline(config, accelerator)
    num_classes = pipeline.transformer.config.num_classes
    class_ids = config.class_ids if config.class_ids is not None else list(range(num_classes))
    invalid = [c for c in class_ids if not 0 <= c < num_classes]
    if invalid or len(set(class_ids)) != len(class_ids):
        raise ValueError(f"`--class_ids` must be distinct ids in [0, {num_classes}), got {class_ids}.")
    check_gfid_settings(config, pipeline, accelerator)

    # 1. resume: every process sees the same finished classes before anyone writes
    done = [c for c in class_ids if (output_dir / CLASS_FEATURES_DIR / f"class_{c:05d}.npz").exists()]
    todo = [c for c in class_ids if c not in set(done)]
    accelerator.wait_for_everyone()

    # 2. generate this process's classes
    start_time = time.perf_counter()
    my_classes = todo[accelerator.process_index :: accelerator.num_processes]
    for number, class_id in enumerate(my_classes):
        generate_class(pipeline, class_id, config, extractor, accelerator)
        if accelerator.is_main_process:
            print(f"[gfid] class {class_id}: done ({number + 1}/{len(my_classes)} on process 0)", flush=True)
    generation_seconds = time.perf_counter() - start_time
    accelerator.wait_for_everyone()

    # 3. statistics of all classes, read back in class order: identical for any number of processes
    results = {}
    mu_sigma = reference_statistics(config, pipeline_image_size(pipeline), extractor, accelerator)
    if accelerator.is_main_process:
        statistics, logits = None, []
        for class_id in class_ids:
            with np.load(output_dir / CLASS_FEATURES_DIR / f"class_{class_id:05d}.npz") as data:
                statistics = statistics or FeatureStatistics(data["features"].shape[1])
                statistics.update(data["features"])
                if "logits" in data.files:
                    logits.append(data["logits"])
        statistics.save(output_dir / "generated_statistics.npz")
        results["fid"] = frechet_distance(statistics.mean, statistics.covariance, *mu_sigma)
        if logits:
            mean, std = inception_score(np.concatenate(logits), splits=config.inception_score_splits)
            results.update(inception_score_mean=mean, inception_score_std=std)
        results.update(
            num_images=statistics.num_samples,
            num_classes=len(class_ids),
            num_classes_skipped=len(done),
            num_classes_generated=len(todo),
            guidance_scale=config.guidance_scale or pipeline.config.default_guidance_scale,
        )
    results["generation_seconds"] = generation_seconds
    return results


# ---------------------------------------------------------------------------------------------- rfid


def load_tokenizer(config: EvaluateConfig, accelerator: Accelerator):
    from tokenset_diffusers import TokenSetVQVAE

    kwargs = {"subfolder": config.tokenizer_subfolder} if config.tokenizer_subfolder else {}
    tokenizer = TokenSetVQVAE.from_pretrained(config.tokenizer, dtype=getattr(torch, config.dtype), **kwargs)
    return tokenizer.to(accelerator.device).eval()


@torch.inference_mode()
def run_rfid(config: EvaluateConfig, accelerator: Accelerator, extractor) -> dict:
    tokenizer = load_tokenizer(config, accelerator)
    image_size = config.image_size or tokenizer.config.image_size
    if image_size != tokenizer.config.image_size:
        raise ValueError(
            f"`--image_size` {image_size} differs from the tokenizer's image_size {tokenizer.config.image_size}."
        )
    source = ImageSource(config.dataset, config.dataset_split, config.dataset_config, config.image_column)
    num_images = min(len(source), config.max_images or len(source))
    image_dir = Path(config.output_dir) / "reconstructions"
    if config.save_images:
        image_dir.mkdir(parents=True, exist_ok=True)
    original_statistics, reconstruction_statistics = None, None
    start_time = time.perf_counter()
    for start, stop in batch_ranges(num_images, config.feature_batch_size, accelerator):
        originals = center_crop_uint8(source.load(start, stop), image_size)  # (B, 3, S, S) uint8
        pixel_values = (originals.float() / 127.5 - 1.0).to(accelerator.device, tokenizer.dtype)  # as preprocess
        with accelerator.autocast():
            token_ids = tokenizer.encode(pixel_values).token_ids  # (B, M)
            reconstructions = to_uint8(tokenizer.decode(token_ids).float())  # (B, 3, S, S) uint8
        if config.save_images:
            for offset, image in enumerate(reconstructions.permute(0, 2, 3, 1).numpy()):
                Image.fromarray(image).save(image_dir / f"{start + offset:06d}.png")
        for images, name in ((originals, "original"), (reconstructions, "reconstruction")):
            features, _ = extract_features(extractor, images, config.feature_batch_size, accelerator.device)
            if name == "original":
                original_statistics = (original_statistics or FeatureStatistics(features.shape[1])).update(features)
            else:
                reconstruction_statistics = (reconstruction_statistics or FeatureStatistics(features.shape[1])).update(
                    features
                )
    seconds = time.perf_counter() - start_time
    original_statistics = gather_statistics(
        _non_empty(original_statistics, extractor, image_size, accelerator), accelerator
    )
    reconstruction_statistics = gather_statistics(
        _non_empty(reconstruction_statistics, extractor, image_size, accelerator), accelerator
    )
    mu_sigma = reference_statistics(config, image_size, extractor, accelerator) if config.reference else None
    results = {"reconstruction_seconds": seconds}
    if accelerator.is_main_process:
        output_dir = Path(config.output_dir)
        original_statistics.save(output_dir / "original_statistics.npz")
        reconstruction_statistics.save(output_dir / "reconstruction_statistics.npz")
        results["rfid"] = frechet_distance(
            reconstruction_statistics.mean,
            reconstruction_statistics.covariance,
            original_statistics.mean,
            original_statistics.covariance,
        )
        if mu_sigma is not None:
            results["fid_reconstructions_vs_reference"] = frechet_distance(
                reconstruction_statistics.mean, reconstruction_statistics.covariance, *mu_sigma
            )
        results["num_images"] = original_statistics.num_samples
    return results


# ---------------------------------------------------------------------------------------------- compute_reference


def run_compute_reference(config: EvaluateConfig, accelerator: Accelerator, extractor) -> dict:
    source = ImageSource(config.dataset, config.dataset_split, config.dataset_config, config.image_column)
    image_size = config.image_size or 256
    start_time = time.perf_counter()
    statistics = dataset_statistics(source, image_size, extractor, config, accelerator, config.max_images)
    path = config.statistics_output or str(Path(config.output_dir) / "reference_statistics.npz")
    if accelerator.is_main_process:
        statistics.save(path)
    return {"statistics_file": path, "num_images": statistics.num_samples, "seconds": time.perf_counter() - start_time}


# ---------------------------------------------------------------------------------------------- main


def check_launch(accelerator: Accelerator) -> None:
    """Two processes that each believe they are alone would both do all the work; fail instead."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != accelerator.num_processes:
        raise ValueError(
            f"Launched as {world_size} processes, but accelerate runs {accelerator.num_processes} "
            f"({accelerator.distributed_type}). Without a GPU, set ACCELERATE_USE_CPU=true: "
            "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N pipelines/evaluate_generation.py ...`."
        )


def main(args: Optional[List[str]] = None) -> dict:
    (config,) = HfArgumentParser(EvaluateConfig).parse_args_into_dataclasses(args=args)
    accelerator = Accelerator()
    check_launch(accelerator)
    total_start = time.perf_counter()
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    extractor = load_feature_extractor(
        config.feature_extractor, device=accelerator.device, weights_path=config.inception_weights
    )
    runner = {"gfid": run_gfid, "rfid": run_rfid, "compute_reference": run_compute_reference}[config.mode]
    results = runner(config, accelerator, extractor)
    per_process_seconds = gather_object([time.perf_counter() - total_start])
    accelerator.wait_for_everyone()
    report = {}
    if accelerator.is_main_process:
        report = {
            "mode": config.mode,
            **results,
            "num_processes": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type),
            "mixed_precision": accelerator.mixed_precision,
            "device": str(accelerator.device),
            "timing_seconds": {"total": time.perf_counter() - total_start, "per_process": per_process_seconds},
            "settings": asdict(config),
            "versions": {
                "tokenset_diffusers": tokenset_diffusers.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }
        path = Path(config.output_dir) / f"{config.mode}_results.json"
        path.write_text(json.dumps(report, indent=2))
        numbers = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        print(json.dumps(numbers, indent=2))
        print(f"[{config.mode}] results written to {path}", file=sys.stderr)
    accelerator.end_training()
    return report


if __name__ == "__main__":
    main()

"""Helpers for the training tests: tiny data made on the fly, tiny presets, and launching the real scripts.

Launched runs are offline (`HF_HUB_OFFLINE`, `HF_DATASETS_OFFLINE`), keep their `datasets` cache under the test's
folder, and use one thread per process so that two gloo processes do not oversubscribe a 2-core machine.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from PIL import Image


REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

# A tokenizer small enough to train a step in a fraction of a second: 16 px, 4x4 patches, M = 8 tokens from C = 32.
TINY_TOKENIZER = {
    "image_size": 16,
    "patch_size": 4,
    "encoder_hidden_size": 32,
    "encoder_num_hidden_layers": 1,
    "encoder_num_attention_heads": 2,
    "decoder_hidden_size": 32,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2,
    "decoder_ffn_hidden_size": 32,
    "codebook_size": 32,
    "num_tokens": 8,
    "code_dim": 8,
    "z_channels": 16,
    "pixel_decoder_hidden_channels": 16,
    "pixel_decoder_channel_mult": [1, 1, 1],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
}
# A VAE (diffusers `AutoencoderKL`) of two levels: 8 px images -> 4 x 4 latents of 4 channels.
TINY_VAE = {
    "image_size": 8,
    "latent_channels": 4,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
# A TokenBridge generator for TINY_VAE's 4 x 4 x 4 latents: widths 16, one block each, 16 quantizer levels.
TINY_TOKENBRIDGE = {
    "buffer_size": 2,
    "encoder_hidden_size": 16,
    "encoder_num_layers": 1,
    "decoder_hidden_size": 16,
    "decoder_num_layers": 1,
    "num_attention_heads": 2,
    "head_hidden_size": 16,
    "head_num_layers": 1,
    "head_num_attention_heads": 2,
    "quantizer_bits": 4,
}
TINY_GENERATOR = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16}
CLASS_NAMES = ["red", "green", "blue"]


def synthetic_image(index: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A noisy 20x24 RGB image whose dominant colour is its class (`index % 3`)."""
    label = index % len(CLASS_NAMES)
    pixels = (rng.random((20, 24, 3)) * 80).astype(np.uint8)
    pixels[..., label] += 150
    return pixels, label


def make_image_folder(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """An `imagefolder` tree `root/<split>/<class>/<i>.png` with `sizes[split]` PNGs per split."""
    rng = np.random.default_rng(seed)
    for split, count in sizes.items():
        for index in range(count):
            pixels, label = synthetic_image(index, rng)
            folder = root / split / CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def make_saved_dataset(path: Path, sizes: dict[str, int], seed: int = 1) -> Path:
    """A `datasets.DatasetDict` (`image`, `label` as a `ClassLabel`) written with `save_to_disk`."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=CLASS_NAMES)})
    splits = {}
    for split, count in sizes.items():
        images, labels = zip(*(synthetic_image(index, rng) for index in range(count)))
        splits[split] = Dataset.from_dict(
            {"image": [Image.fromarray(image) for image in images], "label": list(labels)}, features=features
        )
    DatasetDict(splits).save_to_disk(str(path))
    return path


def save_tiny_tokenizer(path: Path, seed: int = 0) -> Path:
    """A randomly initialised `TokenSetVQVAE` of the `TINY_TOKENIZER` size, saved with `save_pretrained`."""
    import torch

    from tokenset_diffusers.configuration_tokenset_vqvae import TokenSetVQVAEConfig
    from tokenset_diffusers.modeling_tokenset_vqvae import TokenSetVQVAE

    torch.manual_seed(seed)
    TokenSetVQVAE(TokenSetVQVAEConfig(**TINY_TOKENIZER)).save_pretrained(path)
    return path


def save_tiny_vae(path: Path, seed: int = 0, scaling_factor: float = 2.0) -> Path:
    """A randomly initialised `AutoencoderKL` of the `TINY_VAE` size, saved with `save_pretrained`."""
    import torch

    from training.train_vae import VAEModelArguments

    torch.manual_seed(seed)
    VAEModelArguments(**TINY_VAE, scaling_factor=scaling_factor).build_model().save_pretrained(path)
    return path


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def launch(
    script: str,
    args: list[str],
    num_processes: int,
    workdir: Path,
    launcher: str = "accelerate",
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """Runs `training/<script>` and raises with its output if it fails.

    `launcher="accelerate"`: `accelerate launch --num_processes 1 --cpu` for one process, and for several
    `accelerate launch --multi_gpu --num_processes N` (gloo on CPU; `--cpu` would silently run one process).
    `launcher="python"`: a plain `python training/<script>` (one process).
    """
    script_path = str(REPOSITORY_ROOT / "training" / script)
    if launcher == "python":
        command = [sys.executable, script_path]
    elif num_processes == 1:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu"]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script_path]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        command += ["--num_processes", str(num_processes), "--num_machines", "1", "--main_process_port", "0"]
        command += ["--mixed_precision", "no", "--dynamo_backend", "no", script_path]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HOME": str(workdir / "hf_home"),
        "HF_DATASETS_CACHE": str(workdir / "hf_datasets_cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(
        [*command, *args], cwd=REPOSITORY_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command + args)} failed with exit code {result.returncode}:\n"
            f"{result.stdout[-5000:]}\n{result.stderr[-10000:]}"
        )
    return result


def read_summaries(output_dir: Path) -> list[dict]:
    """The `run_summary_rank{i}.json` files of a run, by rank."""
    paths = sorted(output_dir.glob("run_summary_rank*.json"), key=lambda path: int(path.stem.split("rank")[-1]))
    return [json.loads(path.read_text()) for path in paths]


def copy_checkpoint(source_dir: Path, step: int, target_dir: Path) -> Path:
    """Copies `checkpoint-{step}` of one run into a fresh output folder, to resume from it there, with the run's
    record of its command lines (`training_provenance.json`), as the output folder of an interrupted run holds it."""
    from training.common import PROVENANCE_NAME

    target_dir.mkdir(parents=True, exist_ok=True)
    if (source_dir / PROVENANCE_NAME).is_file():
        shutil.copy2(source_dir / PROVENANCE_NAME, target_dir / PROVENANCE_NAME)
    return Path(shutil.copytree(source_dir / f"checkpoint-{step}", target_dir / f"checkpoint-{step}"))


def checkpoint_steps(output_dir: Path) -> list[int]:
    return sorted(int(path.name.split("-")[1]) for path in output_dir.glob("checkpoint-*"))


def history_values(summary: dict, key: str, steps: Optional[range] = None) -> list[float]:
    return [entry[key] for entry in summary["history"] if steps is None or entry["step"] in steps]

"""Helpers of the tests that run the repository's scripts: load a script as a module, as a user runs it by path, and
launch the training scripts (offline, their `datasets` cache under the test's folder, one thread per process so that
two gloo processes do not oversubscribe a 2-core machine), then read what they wrote.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml

from tokenset_diffusers.utils.testing_utils import TINY_VAE


REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
ROOT = REPOSITORY_ROOT


def load_script(relative_path: str):
    """The script `relative_path` (from the repository root) loaded as a module named after its file."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    from training.training_utils import PROVENANCE_NAME

    target_dir.mkdir(parents=True, exist_ok=True)
    if (source_dir / PROVENANCE_NAME).is_file():
        shutil.copy2(source_dir / PROVENANCE_NAME, target_dir / PROVENANCE_NAME)
    return Path(shutil.copytree(source_dir / f"checkpoint-{step}", target_dir / f"checkpoint-{step}"))


def checkpoint_steps(output_dir: Path) -> list[int]:
    return sorted(int(path.name.split("-")[1]) for path in output_dir.glob("checkpoint-*"))


def history_values(summary: dict, key: str, steps: Optional[range] = None) -> list[float]:
    return [entry[key] for entry in summary["history"] if steps is None or entry["step"] in steps]

"""The Space as uploaded: `pipelines/space/build_space.py` assembles the folder, its requirements install into a fresh
virtual environment (the package itself is not installed there: it ships in the folder), and `python app.py` run from
that folder serves the bundled model, checked through gradio_client against the pipeline called here.

Slow by nature (a real install of torch, diffusers, transformers and gradio; pip's cache makes repeats quicker)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from helpers.scripts import load_script
from huggingface_hub import SpaceCard
from packaging.requirements import Requirement

from tokenset_diffusers import TokenSetPipeline, bundled_pipeline_path


gradio_client = pytest.importorskip("gradio_client", reason="the Space tests need gradio_client (the `test` extra)")

ROOT = Path(__file__).resolve().parents[2]
build_script = load_script("pipelines/space/build_space.py")
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_served(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"app.py did not serve {url} within {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def test_build_refuses_to_overwrite_and_lists_the_package_dependencies(tmp_path):
    folder = build_script.build_space(tmp_path / "space")
    with pytest.raises(FileExistsError):
        build_script.build_space(folder)
    assert build_script.build_space(folder, overwrite=True) == folder
    lines = [line for line in (folder / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    names = [Requirement(line).name for line in lines]
    assert names[0] == "torch" and {"diffusers", "transformers", "accelerate"} <= set(names)
    assert "tokenset-diffusers" not in names  # not on PyPI: its source ships in the folder
    # The repository's Space folder states the same requirements.
    assert (ROOT / "pipelines" / "space" / "requirements.txt").read_text() == (folder / "requirements.txt").read_text()
    for relative in ("app.py", "README.md", "tokenset_diffusers/__init__.py", "tokenset_diffusers/templates",
                     "pipelines/space/tabs_sets.py", "pipelines/space/tab_tokenbridge.py"):  # fmt: skip
        assert (folder / relative).exists(), relative
    assert (folder / "tokenset_diffusers" / "bundled" / "digits" / "model_index.json").is_file()
    assert not list(folder.rglob("__pycache__"))


def test_built_space_installs_in_a_fresh_venv_and_serves(tmp_path):
    space = build_script.main(["--output_dir", str(tmp_path / "space")])
    sdk_version = SpaceCard.load(space / "README.md").data.sdk_version

    # 1. A fresh virtual environment (no system site-packages) with the Space's requirements, and gradio at the
    #    Space's sdk_version (the Hub installs it from there).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(python), "-m", "pip", "install", "--no-compile", "--quiet"]
    for arguments in (["torch==2.13.0"], ["-r", "requirements.txt", f"gradio=={sdk_version}"]):
        result = subprocess.run(
            pip + arguments, cwd=space, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
        assert result.returncode == 0, result.stderr[-3000:]

    # 2. The package is the folder's copy: not installed, imported from next to app.py.
    where = subprocess.run(
        [str(python), "-c", "import tokenset_diffusers; print(tokenset_diffusers.__file__)"],
        cwd=space, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).resolve().is_relative_to(space.resolve())
    listed = subprocess.run([str(python), "-m", "pip", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert "tokenset" not in listed.stdout.lower()

    # 3. Launched as the Space launches it, from the folder.
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = tmp_path / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(python), "app.py", "--server_name", "127.0.0.1", "--server_port", str(port), "--device", "cpu"],
            cwd=space, env={**env, "GRADIO_ANALYTICS_ENABLED": "False"}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_until_served(url, process, log_path)
        client = gradio_client.Client(url, verbose=False)
        grid_path, info = client.predict(["3", 7], 1, "constant", 1.0, 4, 50, 55, 3, 11, api_name="/generate")
        assert info.startswith("2 images, 3 steps")
    finally:
        process.terminate()
        process.wait(timeout=60)

    # 4. The images are the bundled model's: the same request made here.
    pipeline = TokenSetPipeline.from_pretrained(bundled_pipeline_path())
    pipeline.set_progress_bar_config(disable=True)
    expected = load_script("pipelines/space/app.py").generate_grid(pipeline, [3, 7], 1, 1.0, 3, 11)[0]
    grid = np.asarray(PIL.Image.open(grid_path).convert("RGB"))
    np.testing.assert_array_equal(grid, np.asarray(expected))
    assert grid.std() > 10  # not blank

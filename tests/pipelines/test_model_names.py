"""`--model` of every command line: a folder, a bundled model's name (`digits`, `tokenbridge-digits`) or a Hub repo id,
resolved by `tokenset_diffusers.bundled.resolve_pipeline`; an unknown name is one line, no traceback; the scripts run
by path as a user runs them (subprocesses, offline); and no file outside `tests/` edits `sys.path`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from helpers.scripts import load_script

from tokenset_diffusers import TokenBridgePipeline, TokenSetPipeline
from tokenset_diffusers.bundled import BUNDLED_MODELS, bundled_pipeline_path, resolve_pipeline
from tokenset_diffusers.class_labels import class_caption
from tokenset_diffusers.visualization import class_rows_grid


ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *arguments: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python <script> <arguments>` as a user runs it, offline, from `cwd`, with this checkout importable."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    command = [sys.executable, str(ROOT / script), *arguments]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def write_digit_images(folder: Path) -> list[str]:
    """Two 32 px images (the Space's example digits) as files."""
    paths = []
    for name in ("digit_3.png", "digit_7.png"):
        PIL.Image.open(ROOT / "pipelines" / "space" / "examples" / name).convert("RGB").resize((32, 32)).save(
            folder / name
        )
        paths.append(str(folder / name))
    return paths


# ---------------------------------------------------------------------- resolve_pipeline


def _pipeline_folder(path: Path, class_name) -> Path:
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return path


@pytest.mark.parametrize(
    "class_name, system",
    [
        ("TokenSetPipeline", "tokenset"),
        (["pipeline_tokenset", "TokenSetPipeline"], "tokenset"),  # as TokenSet's save_pretrained writes it
        ("TokenSetImg2ImgPipeline", "tokenset"),
        ("TokenBridgePipeline", "tokenbridge"),
        (["tokenset_diffusers.pipeline_tokenbridge", "TokenBridgePipeline"], "tokenbridge"),
    ],
)
def test_the_system_is_read_from_model_index(tmp_path, class_name, system):
    folder = _pipeline_folder(tmp_path / "pipeline", class_name)
    resolved = resolve_pipeline(str(folder))
    assert resolved.folder == folder and resolved.system == system
    assert resolved.pipeline_class is {"tokenset": TokenSetPipeline, "tokenbridge": TokenBridgePipeline}[system]


def test_bundled_names_and_the_default():
    for name in BUNDLED_MODELS:
        resolved = resolve_pipeline(name)
        assert resolved.folder == bundled_pipeline_path(name)
        assert resolved.system == ("tokenbridge" if name == "tokenbridge-digits" else "tokenset")
    assert resolve_pipeline().folder == bundled_pipeline_path("digits")
    assert resolve_pipeline(None, default="tokenbridge-digits").system == "tokenbridge"


def test_a_folder_wins_over_a_bundled_name(tmp_path, monkeypatch):
    _pipeline_folder(tmp_path / "digits", "TokenBridgePipeline")
    monkeypatch.chdir(tmp_path)
    assert resolve_pipeline("digits").system == "tokenbridge"  # ./digits, not the bundled TokenSet model


def test_refusals_are_one_line_value_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    cases = {
        "nonexistent-name": "neither a folder, a bundled model",
        str(tmp_path / "missing"): "not a folder",
        str(_pipeline_folder(tmp_path / "other", "StableDiffusionPipeline")): "'StableDiffusionPipeline' folder",
        str(tmp_path): "has no model_index.json",
    }
    for model, message in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            resolve_pipeline(model)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="digits, tokenbridge-digits"):
        resolve_pipeline("nonexistent-name")
    with pytest.raises(ValueError, match="is a TokenBridgePipeline folder; this needs a TokenSetPipeline"):
        resolve_pipeline("tokenbridge-digits", system="tokenset")
    with pytest.raises(ValueError, match="`system` must be one of"):
        resolve_pipeline("digits", system="dit")


# ---------------------------------------------------------------------- generate.py


def test_generate_tokenbridge_digits_writes_the_grid(tmp_path):
    """Run by path: a row per class, captioned, each image the pipeline's for seed + i, as for TokenSet."""
    arguments = ["--model", "tokenbridge-digits", "--class_labels", "3", "7", "--num_images_per_class", "2"]
    arguments += ["--num_inference_steps", "2", "--temperature", "0.5", "--output", str(tmp_path / "grid.png")]
    result = run_script("pipelines/generate.py", *arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    pipeline = TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))
    pipeline.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    images = pipeline([3, 3, 7, 7], num_inference_steps=2, temperature=0.5, generator=generators).images
    captions = [class_caption(pipeline.config.id2label, label) for label in (3, 7)]
    expected = np.asarray(class_rows_grid(images, captions, 2).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "grid.png").convert("RGB")), expected)
    assert expected.std() > 5


def test_generate_digits_by_name_writes_the_grid(tmp_path):
    arguments = ["--model", "digits", "--class_labels", "3", "7", "--num_images_per_class", "2"]
    arguments += ["--num_inference_steps", "2", "--output", str(tmp_path / "grid.png")]
    result = run_script("pipelines/generate.py", *arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    pipeline = TokenSetPipeline.from_pretrained(bundled_pipeline_path("digits"))
    pipeline.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    images = pipeline([3, 3, 7, 7], num_inference_steps=2, generator=generators).images
    captions = [class_caption(pipeline.config.id2label, label) for label in (3, 7)]
    expected = np.asarray(class_rows_grid(images, captions, 2).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "grid.png").convert("RGB")), expected)


@pytest.mark.parametrize(
    "model, flags, message",
    [
        ("digits", ["--temperature", "0.5"], "--temperature is a TokenBridge option"),
        ("tokenbridge-digits", ["--exact_sum"], "--exact_sum is a TokenSet option"),
        ("tokenbridge-digits", ["--guidance_scale", "4", "50", "55"], "TokenBridge takes one --guidance_scale"),
    ],
)
def test_generate_refuses_the_other_systems_flags(tmp_path, model, flags, message):
    generate = load_script("pipelines/generate.py")
    with pytest.raises(SystemExit, match=message):
        generate.main(["--model", model, *flags, "--output", str(tmp_path / "grid.png")])
    assert not (tmp_path / "grid.png").exists()


# ---------------------------------------------------------------------- every command line with --model


def _cli_arguments(script: str, model: str, folder: Path) -> list[str]:
    if script == "pipelines/generate.py":
        return ["--model", model, "--class_labels", "3", "--num_inference_steps", "1", "--output", str(folder / "o.png")]  # fmt: skip
    if script == "pipelines/interpolate.py":
        return [*write_digit_images(folder), "--model", model, "--num_points", "2", "--output", str(folder / "o.png")]
    if script == "pipelines/reconstruct.py":
        return [*write_digit_images(folder)[:1], "--model", model, "--output", str(folder / "o.png")]
    if script == "pipelines/digits_quality.py":
        return ["--model", model, "--num_samples_per_class", "2", "--num_inference_steps", "1"]
    raise AssertionError(script)


CLIS = ["pipelines/generate.py", "pipelines/interpolate.py", "pipelines/reconstruct.py", "pipelines/digits_quality.py"]


@pytest.mark.parametrize("script", [*CLIS, "pipelines/space/app.py"])
def test_an_unknown_model_is_one_line_naming_the_bundled_models(tmp_path, script):
    arguments = ["--model", "nonexistent-name"] if script.endswith("app.py") else None
    result = run_script(script, *(arguments or _cli_arguments(script, "nonexistent-name", tmp_path)), cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ") and "'nonexistent-name'" in lines[0]
    assert "digits" in lines[0] and "tokenbridge-digits" in lines[0]


@pytest.mark.parametrize("script", ["pipelines/interpolate.py", "pipelines/reconstruct.py"])
def test_tokenset_only_clis_run_digits_and_name_tokenbridge_digits_as_the_other_system(tmp_path, script):
    """Set interpolation and set reconstructions need a set tokenizer: `digits` runs, `tokenbridge-digits` is
    recognised (not "unknown") and refused in one line."""
    result = run_script(script, *_cli_arguments(script, "digits", tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with PIL.Image.open(tmp_path / "o.png") as figure:
        assert np.asarray(figure.convert("L"), dtype=np.float32).std() > 5
    result = run_script(script, *_cli_arguments(script, "tokenbridge-digits", tmp_path), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: `model` 'tokenbridge-digits' is a TokenBridgePipeline folder; this needs a TokenSetPipeline."
    ]


@pytest.mark.parametrize("model", ["digits", "tokenbridge-digits"])
def test_digits_quality_judges_either_bundled_model(tmp_path, model):
    result = run_script("pipelines/digits_quality.py", *_cli_arguments("pipelines/digits_quality.py", model, tmp_path),
                        "--output", str(tmp_path / "quality.json"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "quality.json").read_text())
    assert results.get("kind", "TokenSet") == ("TokenBridge" if model == "tokenbridge-digits" else "TokenSet")
    assert results["default"]["samples"] == 20  # 10 classes x 2


def test_space_model_takes_either_bundled_model(monkeypatch):
    """The Space's `--model`: a TokenSet pipeline serves its tabs, a TokenBridge one the "TokenBridge" tab."""
    pytest.importorskip("gradio", reason="the Space needs gradio (the `demo` extra)")
    app = load_script("pipelines/space/app.py")
    assert app.split_models("digits", None) == ("digits", None)
    assert app.split_models("tokenbridge-digits", None) == (None, "tokenbridge-digits")
    assert app.split_models(None, "tokenbridge-digits") == (None, "tokenbridge-digits")
    with pytest.raises(ValueError, match="pass one"):
        app.split_models("tokenbridge-digits", "tokenbridge-digits")
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    assert Path(app.load_pipeline("digits").config._name_or_path) == bundled_pipeline_path("digits")
    with pytest.raises(ValueError, match="this needs a TokenSetPipeline"):
        app.load_pipeline("tokenbridge-digits")
    tab = sys.modules["pipelines.space.tab_tokenbridge"]
    with pytest.raises(ValueError, match="this needs a TokenBridgePipeline"):
        tab.load_tokenbridge_pipeline("digits")


# ---------------------------------------------------------------------- no sys.path edits


# The package and the script folders.
CHECKED_FOLDERS = ("tokenset_diffusers", "pipelines", "benchmarks", "conversion", "training")


def test_no_file_outside_tests_edits_sys_path():
    """The script folders are packages (pyproject.toml), so scripts import their siblings as `pipelines.x`,
    `conversion.x`, `benchmarks.x`; nothing outside `tests/` mentions `sys.path`."""
    checked, offending = 0, []
    for folder in CHECKED_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".safetensors", ".png", ".pyc"):
                continue
            checked += 1
            if "sys.path" in path.read_text(errors="ignore"):
                offending.append(str(path.relative_to(ROOT)))
    assert checked > 50 and not offending, offending


def test_class_caption_leaves_out_a_name_that_repeats_the_id():
    """The bundled digits are named "0" ... "9": a caption reads "3", not "3: 3"; other names keep "<id>: <name>"."""
    digits = json.loads((bundled_pipeline_path("digits") / "model_index.json").read_text())["id2label"]
    digits = {int(key): value for key, value in digits.items()}
    assert [class_caption(digits, i) for i in (0, 3, 9)] == ["0", "3", "9"]
    assert class_caption({207: "golden retriever", 1: "goldfish, Carassius auratus"}, 207) == "207: golden retriever"
    assert class_caption({1: "goldfish, Carassius auratus"}, 1) == "1: goldfish"
    assert class_caption({1: "1, one"}, 1) == "1"
    assert class_caption(None, 5) == class_caption({}, 5) == "5"


def test_generate_says_what_it_wrote_in_the_singular_and_plural(tmp_path):
    arguments = ["--model", "digits", "--class_labels", "3", "--num_inference_steps", "1"]
    one = run_script(
        "pipelines/generate.py", *arguments, "--num_images_per_class", "1", "--output", "one.png", cwd=tmp_path
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert one.stdout.strip().splitlines()[-1] == "wrote 1 image to one.png"
    two = run_script(
        "pipelines/generate.py", *arguments, "--num_images_per_class", "2", "--output", "two", cwd=tmp_path
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.strip().splitlines()[-1] == "wrote 2 images to two"
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == ["class0003_000.png", "class0003_001.png"]


@pytest.mark.parametrize("model", sorted(BUNDLED_MODELS))
def test_loading_shows_one_progress_bar(model, tmp_path):
    """Loading a pipeline shows diffusers' "Loading pipeline components" bar, without transformers' "Loading
    weights" bar nested inside it, and leaves transformers' bars enabled afterwards."""
    code = (
        "import sys\n"
        "from transformers.utils import logging\n"
        "from tokenset_diffusers.bundled import resolve_pipeline\n"
        "resolved = resolve_pipeline(sys.argv[1])\n"
        "resolved.pipeline_class.from_pretrained(resolved.folder)\n"
        "print(logging.is_progress_bar_enabled())\n"
    )
    environment = {name: value for name, value in os.environ.items() if name != "TQDM_DISABLE"}
    environment.update(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code, model], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Loading pipeline components" in result.stderr
    assert "Loading weights" not in result.stderr
    assert result.stdout.strip() == "True"

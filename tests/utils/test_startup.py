"""Start-up cost: `import tokenset_diffusers` imports no torch (public names load lazily, as in diffusers and
transformers), the first public name registers the set tokenizer with transformers' Auto classes, and every script's
`--help` answers without importing torch. Each check runs in a fresh interpreter (a subprocess), as a user starts it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "datasets", "gradio")

# Runs a script by path as `python <script> --help` does (`runpy`, `__name__ == "__main__"`), then reports its exit
# code, how much help it printed and which heavy libraries got imported.
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
path = sys.argv[1]
sys.argv = [path, "--help"]
printed = io.StringIO()
code = "returned without exiting"
with contextlib.redirect_stdout(printed):
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exit:
        code = exit.code
heavy = [name for name in {heavy!r} if name in sys.modules]
print(json.dumps({{"code": code, "help": printed.getvalue(), "heavy": heavy}}))
""".format(heavy=HEAVY)

# Every script with a command line, found on disk, so that a new script is checked too.
SCRIPTS = sorted(
    str(path.relative_to(ROOT))
    for folder in ("pipelines", "training", "conversion", "benchmarks")
    for path in (ROOT / folder).rglob("*.py")
    if 'if __name__ == "__main__":' in path.read_text()
)


def run_python(*arguments: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, *arguments], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def test_import_loads_no_heavy_library():
    code = "import sys, tokenset_diffusers; print([name for name in {!r} if name in sys.modules])".format(HEAVY)
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_release_module_paths_import_without_a_public_name():
    """The release-0.1 module paths (`tokenset_diffusers.scheduling_fsdd`, ...) resolve to the modules of the new
    layout without importing anything else first."""
    code = (
        "import tokenset_diffusers.scheduling_fsdd as old, tokenset_diffusers.tokenset.scheduling_fsdd as new;"
        "print(old is new, old.__name__)"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "tokenset_diffusers.tokenset.scheduling_fsdd"]


def test_first_public_name_registers_the_set_tokenizer_with_auto_classes():
    code = """
import tokenset_diffusers
from transformers import AutoConfig
def registered():
    try:
        return type(AutoConfig.for_model("tokenset_vqvae")).__name__
    except ValueError:
        return None
before = registered()
tokenset_diffusers.FSDDScheduler  # any public name
print(before, registered())
"""
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "TokenSetVQVAEConfig"]


def test_register_auto_classes_is_there_for_auto_class_only_users():
    code = """
import tokenset_diffusers
from transformers import AutoConfig
tokenset_diffusers.register_auto_classes()
tokenset_diffusers.register_auto_classes()  # idempotent
print(type(AutoConfig.for_model("tokenset_vqvae")).__name__, "register_auto_classes" in tokenset_diffusers.__all__)
"""
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["TokenSetVQVAEConfig", "True"]


def test_the_scripts_are_found():
    assert len(SCRIPTS) > 20 and {
        "pipelines/generate.py",
        "pipelines/space/build_space.py",
        "training/prepare_digits.py",
    } <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_torch(script):
    result = run_python("-c", HELP_RUNNER, str(ROOT / script))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    assert "usage:" in report["help"]
    assert "torch" not in report["heavy"], report["heavy"]


# Runs a script by path with one top-level module made unimportable, as on a machine without that optional package
# (`None` in `sys.modules`: `import` raises `ModuleNotFoundError`, `importlib.util.find_spec` answers None).
BLOCKING_RUNNER = """
import runpy, sys
blocked, path, *arguments = sys.argv[1:]
sys.modules[blocked] = None
sys.argv = [path, *arguments]
runpy.run_path(path, run_name="__main__")
"""


def test_optional_dependencies_name_the_extras_that_install_them():
    """Second source: `pyproject.toml`'s extras hold each distribution that an install line sends users to."""
    import tomllib

    from tokenset_diffusers.utils.import_utils import OPTIONAL_DEPENDENCIES, install_line

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (distribution, extra) in OPTIONAL_DEPENDENCIES.items():
        requirements = [requirement.split(">")[0].split("<")[0].split("=")[0] for requirement in extras[extra]]
        assert distribution in requirements, (module, extra)
        assert f'pip install -e ".[{extra}]"' in install_line(f"{module}.submodule")


@pytest.mark.parametrize(
    "blocked, script, arguments, extra",
    [
        ("sklearn", "training/prepare_digits.py", ["--output_dir", "{tmp}/digits"], "train"),
        ("sklearn", "pipelines/digits_quality.py", [], "train"),
        ("gradio", "pipelines/space/app.py", [], "demo"),
    ],
)
def test_a_missing_optional_dependency_gives_the_install_line(blocked, script, arguments, extra, tmp_path):
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    result = run_python("-c", BLOCKING_RUNNER, blocked, str(ROOT / script), *arguments)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError:") and f'pip install -e ".[{extra}]"' in last_line, last_line
    assert not (tmp_path / "digits").exists()

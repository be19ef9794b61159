"""Assembles the uploadable Hugging Face Space folder: the demo, the package source with its bundled model, and the
requirements that install its dependencies.

    python pipelines/space/build_space.py --output_dir build/space
    hf upload --repo-type space <org>/tokenset build/space .       # then upload the folder as it is

tokenset-diffusers is not on PyPI, so the Space cannot `pip install tokenset-diffusers`. Nor can its requirements.txt
name a wheel or a folder inside the Space: the Space installs requirements.txt before the rest of the repository is
in place. So the folder carries the package's source next to `app.py` (Python imports it from there, bundled digits
model included), and requirements.txt lists the package's dependencies, read from pyproject.toml. Gradio itself
comes from `sdk_version` in the Space's README.md.

The folder holds:

    app.py, README.md                 from pipelines/space/
    pipelines/space/                  the tab modules, which `app.py` imports as `pipelines.space.*` (as in the repository)
    examples/                         from pipelines/space/
    tokenset_diffusers/               the package source, with the bundled model and the model-card templates
    requirements.txt                  the dependencies of the package ([project].dependencies of pyproject.toml)
"""

import argparse
import shutil
import sys
from pathlib import Path


SPACE_DIR = Path(__file__).resolve().parent
REPOSITORY = SPACE_DIR.parents[1]
PACKAGE = "tokenset_diffusers"
SPACE_FILES = ("app.py", "README.md")
# The modules `app.py` imports from its package, at their paths in the repository: `pipelines.space.<module>`.
SPACE_MODULES = (
    "pipelines/__init__.py",
    "pipelines/space/__init__.py",
    "pipelines/space/class_choosers.py",
    "pipelines/space/tabs_sets.py",
    "pipelines/space/tab_tokenbridge.py",
    "pipelines/edit_figure.py",
)
SPACE_FOLDERS = ("examples",)
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".DS_Store")


def package_dependencies(pyproject: Path = REPOSITORY / "pyproject.toml") -> list[str]:
    """The package's runtime requirements (`[project].dependencies`), torch first."""
    import tomllib

    with open(pyproject, "rb") as file:
        dependencies = list(tomllib.load(file)["project"]["dependencies"])
    return sorted(dependencies, key=lambda requirement: not requirement.startswith("torch"))


def requirements_text(dependencies: list[str]) -> str:
    return (
        "# The Space's Python dependencies: those of tokenset-diffusers (pyproject.toml), whose source ships in this\n"
        "# folder (tokenset_diffusers/, bundled digits model included). Gradio comes from `sdk_version` in README.md.\n"
        + "".join(f"{requirement}\n" for requirement in dependencies)
    )


def build_space(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Writes the Space folder to `output_dir` (which must not exist, unless `overwrite`) and returns its path."""
    output_dir = Path(output_dir)
    if output_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it.")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    for name in SPACE_FILES:
        shutil.copy2(SPACE_DIR / name, output_dir / name)
    for relative in SPACE_MODULES:
        (output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPOSITORY / relative, output_dir / relative)
    for name in SPACE_FOLDERS:
        shutil.copytree(SPACE_DIR / name, output_dir / name, ignore=IGNORED)
    shutil.copytree(REPOSITORY / PACKAGE, output_dir / PACKAGE, ignore=IGNORED)
    if not (output_dir / PACKAGE / "bundled" / "digits" / "model_index.json").is_file():
        raise FileNotFoundError(f"The package source at {REPOSITORY / PACKAGE} has no bundled model.")
    (output_dir / "requirements.txt").write_text(requirements_text(package_dependencies()))
    return output_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output_dir", default="build/space", help="where to write the Space folder (default: %(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder (default: refuse)")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    try:
        folder = build_space(args.output_dir, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    print(f"wrote the Space folder {folder} ({size / 1e6:.1f} MB); upload it as it is")
    return folder


if __name__ == "__main__":
    main()

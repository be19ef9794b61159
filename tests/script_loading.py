"""Loads the repository's scripts (pipelines/, conversion/, training/) as modules, as a user runs them by path."""

import importlib.util
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str):
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""Optional dependencies: which extra of `pyproject.toml` brings each, and an `ImportError` that gives the install
line when one is missing."""

import importlib
from types import ModuleType


# Top-level module -> (distribution name, extra of this package that installs it).
OPTIONAL_DEPENDENCIES = {
    "sklearn": ("scikit-learn", "train"),
    "yaml": ("pyyaml", "train"),
    "tensorboard": ("tensorboard", "train"),
    "gradio": ("gradio", "demo"),
    "gradio_client": ("gradio_client", "test"),
    "evaluate": ("evaluate", "eval"),
    "scipy": ("scipy", "test"),
}


def install_line(module_name: str) -> str:
    """The command that installs the optional dependency `module_name` (e.g. `"sklearn.datasets"`), through this
    package's extra when it has one: `pip install -e ".[train]"` (in a clone of the repository)."""
    top_level = module_name.split(".")[0]
    if top_level not in OPTIONAL_DEPENDENCIES:
        return f"pip install {top_level}"
    distribution, extra = OPTIONAL_DEPENDENCIES[top_level]
    return f'pip install -e ".[{extra}]" (in a clone of tokenset-diffusers), or pip install {distribution}'


def require(module_name: str, purpose: str) -> ModuleType:
    """Imports `module_name`, or raises `ImportError` naming what needs it and how to install it.

    Args:
        module_name (`str`): the module to import, e.g. `"sklearn.datasets"`.
        purpose (`str`): what needs it, for the message, e.g. `"training/prepare_digits.py"`.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        message = f"{purpose} needs `{module_name.split('.')[0]}`, which is not installed: {install_line(module_name)}"
        raise ImportError(message) from error

"""Import-only files written next to saved weights, so that the loaders of diffusers and transformers find this
package's classes: `DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)` on a pipeline,
`AutoModel.from_pretrained(folder_or_repo_id, trust_remote_code=True)` on a set tokenizer.

Each file imports one class from the installed package, so the code that runs is the package's, never a copy; without
the package it raises an `ImportError` that says where the install line is.
"""

import os


INSTALL_HINT = "the Usage section of the model card (README.md)"

_TEMPLATE = '''"""Imports {class_name} from the installed tokenset-diffusers package, for diffusers' and transformers' loaders.

`trust_remote_code=True` loads this folder through this file; see {install_hint} for the install line.
"""

try:
    from {module} import {class_name}  # noqa: F401
except ImportError as error:
    raise ImportError(
        "This model needs the tokenset-diffusers package; see {install_hint}."
    ) from error
'''


def write_import_file(path: str | os.PathLike, module: str, class_name: str) -> None:
    """Writes a file at `path` that imports `class_name` from the package module `module`."""
    text = _TEMPLATE.format(module=module, class_name=class_name, install_hint=INSTALL_HINT)
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)

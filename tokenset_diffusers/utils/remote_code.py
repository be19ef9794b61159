"""Import-only files written next to saved weights, so that the loaders of diffusers and transformers find this
package's classes: `DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)` on a pipeline of
either system, `AutoModel.from_pretrained(folder_or_repo_id, trust_remote_code=True)` on a set tokenizer.

Each file imports one class from the installed package, so the code that runs is the package's, never a copy; without
the package it raises an `ImportError` that says where the install line is.

A saved pipeline folder's `model_index.json` names the pipeline `[<module>, <class>]` with a root `<module>.py`
(diffusers' custom-pipeline entry), and each component of this package by a file in its folder, e.g.
`["scheduling_masked_ar", "MaskedARScheduler"]` with `scheduler/scheduling_masked_ar.py` (diffusers' custom-component
entry, which its Hub download checks for). Components of diffusers or transformers (TokenBridge's `AutoencoderKL`) keep
their library entry. The package's own loaders read every entry as the package module instead ([`read_as_package`]):
the folder's files are never imported by them.
"""

import importlib
import json
import os
import tempfile


INSTALL_HINT = "the Usage section of the model card (README.md)"

# Every class of this package that a saved folder names -> the module that defines it.
PIPELINE_MODULES = {
    "TokenSetPipeline": "tokenset_diffusers.tokenset.pipeline_tokenset",
    "TokenSetImg2ImgPipeline": "tokenset_diffusers.tokenset.pipeline_tokenset_img2img",
    "TokenBridgePipeline": "tokenset_diffusers.tokenbridge.pipeline_tokenbridge",
    "TokenBridgeInpaintPipeline": "tokenset_diffusers.tokenbridge.pipeline_tokenbridge_inpaint",
    "TokenBridgeImg2ImgPipeline": "tokenset_diffusers.tokenbridge.pipeline_tokenbridge_img2img",
}
COMPONENT_MODULES = {
    "TokenSetVQVAE": "tokenset_diffusers.tokenset.modeling_tokenset_vqvae",
    "TokenSetTransformer1DModel": "tokenset_diffusers.tokenset.transformer_tokenset",
    "FSDDScheduler": "tokenset_diffusers.tokenset.scheduling_fsdd",
    "TokenBridgeTransformer2DModel": "tokenset_diffusers.tokenbridge.transformer_tokenbridge",
    "MaskedARScheduler": "tokenset_diffusers.tokenbridge.scheduling_masked_ar",
}
# The libraries whose components a pipeline folder names by library (diffusers loads them itself).
LIBRARIES = ("diffusers", "transformers")

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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder, so that `path` is never half-written."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_import_file(path: str | os.PathLike, module: str, class_name: str) -> None:
    """Writes a file at `path` that imports `class_name` from the package module `module`."""
    write_text_atomic(path, _TEMPLATE.format(module=module, class_name=class_name, install_hint=INSTALL_HINT))


def is_component_entry(entry) -> bool:
    """Whether a `model_index.json` value names a component: `[library_or_module, class_name]`, two strings."""
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(part, str) for part in entry)


def pipeline_class_name(index: dict) -> str | None:
    """The pipeline class a `model_index.json` names (`"TokenSetPipeline"` or `["pipeline_tokenset",
    "TokenSetPipeline"]` alike)."""
    class_name = index.get("_class_name")
    return class_name[-1] if isinstance(class_name, (list, tuple)) and class_name else class_name


def read_as_package(index: dict) -> dict:
    """`model_index.json` as this package reads it, in place: the pipeline entry becomes the class name and every
    entry naming a component class of this package (by a remote-code file's short name, a release 0.1 flat module path
    like `tokenset_diffusers.scheduling_masked_ar`, or the current module path) becomes `[<package module>,
    <class>]`, with that module imported (diffusers loads components only from imported modules)."""
    if isinstance(index.get("_class_name"), (list, tuple)):
        index["_class_name"] = pipeline_class_name(index)
    for name, entry in index.items():
        if not name.startswith("_") and is_component_entry(entry) and entry[1] in COMPONENT_MODULES:
            module = COMPONENT_MODULES[entry[1]]
            importlib.import_module(module)
            index[name] = [module, entry[1]]
    return index


def write_remote_code_files(folder: str | os.PathLike) -> None:
    """Makes a saved pipeline folder of this package loadable with `DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)`, also once uploaded to the Hub: writes `<pipeline module>.py` and one
    `<component>/<module>.py` per component of this package (each imports its class from the installed package) and
    points `model_index.json`'s entries at them. Also upgrades folders saved before these files existed (release 0.1's
    TokenBridge folders) without touching their weights.

    Raises:
        `ValueError` if `model_index.json` names a pipeline that is not this package's, or a component that is
        neither this package's nor a diffusers or transformers class.
    """
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path, encoding="utf-8") as file:
        index = json.load(file)
    class_name = pipeline_class_name(index)
    if class_name not in PIPELINE_MODULES:
        raise ValueError(f"{index_path} describes a {class_name!r}, not one of {sorted(PIPELINE_MODULES)}.")
    module = PIPELINE_MODULES[class_name]
    short_name = module.rsplit(".", 1)[-1]
    files = {f"{short_name}.py": (module, class_name)}
    index["_class_name"] = [short_name, class_name]
    for name, entry in index.items():
        if name.startswith("_") or not is_component_entry(entry) or entry[0] in LIBRARIES:
            continue
        if entry[1] not in COMPONENT_MODULES:
            raise ValueError(
                f"{index_path}: `{name}` is {entry}, not a tokenset-diffusers, diffusers or transformers class."
            )
        module = COMPONENT_MODULES[entry[1]]
        short_name = module.rsplit(".", 1)[-1]
        files[os.path.join(name, f"{short_name}.py")] = (module, entry[1])
        index[name] = [short_name, entry[1]]
    for relative, (module, component_class) in files.items():
        write_import_file(os.path.join(folder, relative), module, component_class)
    write_text_atomic(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")

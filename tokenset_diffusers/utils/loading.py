"""Checks of a saved component folder before `from_pretrained` reads it, so that a broken folder fails with a message
that names the file, the component and what is wrong, instead of a deserialiser's or a meta-device error.

- a mistyped local path is reported as a missing folder (not as an invalid Hub repo id);
- a missing `config.json` is reported as missing (instead of a default-sized model and a report of size mismatches);
- a truncated, empty or garbage `.safetensors` file is named, with its size;
- weights that do not fit the config (another layer count, another width) are listed before any weight is loaded.

Only local folders are checked; Hub repo ids go to `from_pretrained` unchanged. Nothing here loads a weight: the
safetensors headers are read, and the model is built on the meta device.
"""

import difflib
import json
import os
from collections.abc import Callable

import torch
from safetensors import SafetensorError, safe_open


def looks_like_local_path(path: str) -> bool:
    """Whether `path` cannot be a Hub repo id (`name` or `namespace/name`) and so must be a local path."""
    return (
        path.startswith(("/", ".", "~"))
        or path.count("/") > 1
        or "\\" in path
        or os.path.exists(path)
        or (os.sep != "/" and os.sep in path)
    )


def check_local_folder(path: str | os.PathLike, what: str) -> None:
    """Raises `OSError` if `path` looks like a local path (see [`looks_like_local_path`]) but is not a folder, naming
    the closest existing sibling folder if there is one."""
    path = os.fspath(path)
    if os.path.isdir(path) or not looks_like_local_path(path):
        return
    if os.path.isfile(path):
        raise OSError(f"{what}: {path!r} is a file; pass the folder that holds the saved {what}.")
    parent, name = os.path.split(os.path.abspath(os.path.expanduser(path)))
    siblings = (
        sorted(entry for entry in os.listdir(parent) if os.path.isdir(os.path.join(parent, entry)))
        if (os.path.isdir(parent))
        else []
    )
    close = difflib.get_close_matches(name, siblings, n=1)
    hint = f" Did you mean {os.path.join(os.path.dirname(path), close[0])!r}?" if close else ""
    raise OSError(
        f"{what}: there is no folder {path!r} (a local path, since it cannot be a Hub repo id of the form "
        f"'namespace/name').{hint}"
    )


def _weights_files(folder: str, weights_name: str) -> list[str]:
    """The safetensors files holding the weights: `weights_name`, or the shards its `.index.json` lists."""
    single = os.path.join(folder, weights_name)
    index = f"{single}.index.json"
    if os.path.isfile(single) or not os.path.isfile(index):
        return [single]
    with open(index) as handle:
        weight_map = json.load(handle).get("weight_map", {})
    return sorted({os.path.join(folder, shard) for shard in weight_map.values()})


def _read_shapes(path: str, component: str) -> dict[str, tuple[int, ...]]:
    """`{name: shape}` from the header of a safetensors file; raises `OSError` naming the file if it is unreadable."""
    try:
        with safe_open(path, framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        size = os.path.getsize(path)
        raise OSError(
            f"{component}: cannot read the weights file {path} ({size} bytes): {error}. The file is truncated, empty "
            "or not a safetensors file; download or save it again."
        ) from error


def _examples(names: list[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def check_saved_component(
    cls: type,
    pretrained_model_name_or_path: str | os.PathLike,
    kwargs: dict,
    config_name: str,
    weights_name: str,
    build_meta_model: Callable[[str], torch.nn.Module],
) -> None:
    """Checks a local folder saved by `cls.save_pretrained` before `cls.from_pretrained` loads it.

    Args:
        cls (`type`): the model class, named in messages.
        pretrained_model_name_or_path (`str` or `os.PathLike`): what `from_pretrained` got.
        kwargs (`dict`): its keyword arguments (`subfolder`, `variant`, `ignore_mismatched_sizes` are read).
        config_name (`str`), weights_name (`str`): the file names the library saves (`config.json`,
            `model.safetensors` / `diffusion_pytorch_model.safetensors`).
        build_meta_model (`Callable[[str], torch.nn.Module]`): builds the model of a folder's config on the meta
            device.
    """
    component = cls.__name__
    path = os.fspath(pretrained_model_name_or_path)
    check_local_folder(path, component)
    if not os.path.isdir(path):
        return  # a Hub repo id
    folder = os.path.join(path, kwargs["subfolder"]) if kwargs.get("subfolder") else path
    if not os.path.isdir(folder):
        raise OSError(f"{component}: {path} has no subfolder {kwargs.get('subfolder')!r}.")
    if not os.path.isfile(os.path.join(folder, config_name)):
        raise OSError(
            f"{component}: {folder} has no {config_name}, which says how to build the model; a saved {component} "
            f"folder holds {config_name} and {weights_name}. The folder holds {sorted(os.listdir(folder))}."
        )
    variant = kwargs.get("variant")
    if variant:
        stem, extension = os.path.splitext(weights_name)
        weights_name = f"{stem}.{variant}{extension}"
    files = [file for file in _weights_files(folder, weights_name) if os.path.isfile(file)]
    if not files:
        return  # another weights format (e.g. a `.bin` file): the library reports what it finds
    stored = {}
    for file in files:
        stored.update(_read_shapes(file, component))
    expected = {name: tuple(tensor.shape) for name, tensor in build_meta_model(folder).state_dict().items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    common = sorted(set(stored) & set(expected))
    reshaped = [
        f"{name}: file {stored[name]} vs config {expected[name]}" for name in common if stored[name] != expected[name]
    ]
    if kwargs.get("ignore_mismatched_sizes"):
        reshaped = []
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensors the config needs are not in the file ({_examples(missing)})")
        if unexpected:
            problems.append(
                f"{len(unexpected)} tensors in the file have no place in the model ({_examples(unexpected)})"
            )
        if reshaped:
            problems.append(f"{len(reshaped)} tensors have another shape ({_examples(reshaped, 2)})")
        raise ValueError(
            f"{component}: the weights in {', '.join(files)} do not fit {os.path.join(folder, config_name)}: "
            f"{'; '.join(problems)}. Do the config's layer counts and sizes belong to these weights?"
        )

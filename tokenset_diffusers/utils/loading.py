"""Strict loading and saving of both systems' models and pipelines, in one place.

Every model class ([`TokenSetVQVAE`], [`TokenSetTransformer1DModel`], [`TokenBridgeTransformer2DModel`]) loads through
[`StrictLoadingMixin`], and every pipeline ([`TokenSetPipeline`], [`TokenSetImg2ImgPipeline`], [`TokenBridgePipeline`])
through [`PipelineLoadingMixin`], which also checks the folders of components that diffusers loads itself (TokenBridge's
`AutoencoderKL`) before anything is loaded ([`check_loaded_component`] covers that VAE when diffusers alone loads the
folder). A broken folder fails with a message that names the folder, the file, the component and the first keys
concerned, instead of a deserialiser's error, a meta-device error, random weights or a warning:

- a mistyped local path is reported as a missing folder (not as an invalid Hub repo id);
- a missing `config.json` is reported as missing (instead of a default-sized model and a report of size mismatches);
- a missing weights file, or a truncated, empty or garbage `.safetensors` file, is an `OSError` naming the file;
- weights that do not fit the config (missing, unexpected or reshaped tensors: another layer count, another width)
  are a `ValueError` listing the first keys, before any weight is loaded;
- a config that builds a model of more than `LIMITS["model_parameters"]` parameters (10 billion by default, see
  `tokenset_diffusers/utils/validation.py`; e.g. `hidden_size=10**6`) is a `ValueError` naming the config file and the
  largest tensor, before anything is allocated.

Only local folders are checked by the models; a pipeline downloads a Hub repo id first and checks the download. Nothing
here loads a weight: the safetensors headers are read, and the model is built on the meta device.
"""

import difflib
import json
import math
import os
import pickle
from collections.abc import Callable

import torch
from safetensors import SafetensorError, safe_open

from .remote_code import (
    PIPELINE_MODULES,
    is_component_entry,
    pipeline_class_name,
    read_as_package,
    write_remote_code_files,
)
from .validation import LIMITS, check_limit


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


def _read_shapes(path: str, component: str, needed: str) -> dict[str, tuple[int, ...]]:
    """`{name: shape}` from the header of a safetensors file (or, for a `.bin` file, from a `weights_only` load on the
    meta device); raises `OSError` naming the file and `needed` (what the config needs) if it is unreadable."""
    try:
        if path.endswith(".bin"):
            state_dict = torch.load(path, map_location="meta", weights_only=True)
            return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}
        with safe_open(path, framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        size = os.path.getsize(path)
        raise OSError(
            f"{component}: cannot read the weights file {path} ({size} bytes): {error}. The file is truncated, empty "
            f"or not a safetensors file; download or save it again (the config needs {needed})."
        ) from error


def _examples(names: list[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def saved_layout(model_class: type) -> tuple[str, str, Callable[[str], torch.nn.Module]] | None:
    """`(config_name, weights_name, build_meta_model)` of a diffusers `ModelMixin` or transformers `PreTrainedModel`
    class: the file names its `save_pretrained` writes, and a function that builds the model of a folder's config on
    the meta device. `None` for classes without weights (schedulers)."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    if issubclass(model_class, PreTrainedModel):
        from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

        def build_transformers_model(folder: str) -> torch.nn.Module:
            with torch.device("meta"):
                return model_class(model_class.config_class.from_pretrained(folder))

        return CONFIG_NAME, SAFE_WEIGHTS_NAME, build_transformers_model
    if issubclass(model_class, ModelMixin):
        from diffusers.utils import SAFETENSORS_WEIGHTS_NAME

        def build_diffusers_model(folder: str) -> torch.nn.Module:
            with torch.device("meta"):
                return model_class.from_config(model_class.load_config(folder))

        return model_class.config_name, SAFETENSORS_WEIGHTS_NAME, build_diffusers_model
    return None


def check_component_folder(
    model_class: type, folder: str, variant: str | None = None, ignore_mismatched_sizes: bool = False
) -> None:
    """Checks a local folder saved by `model_class.save_pretrained` before anything is loaded from it.

    Args:
        model_class (`type`): a diffusers `ModelMixin` or transformers `PreTrainedModel` class (others pass).
        folder (`str`): the folder holding `config.json` and the weights.
        variant (`str`, *optional*): the weights variant (`diffusion_pytorch_model.<variant>.safetensors`).
        ignore_mismatched_sizes (`bool`, defaults to `False`): accept tensors of another shape (the library then
            initialises them anew, as asked).

    Raises:
        `OSError`: no `config.json`, no weights file, or an unreadable one (named with its size).
        `ValueError`: the weights do not fit the config: tensors the config needs are missing, tensors have no place
            in the model, or have another shape; the message names the weights file, the config file and the first
            keys of each kind.
    """
    layout = saved_layout(model_class)
    if layout is None:
        return
    config_name, weights_name, build_meta_model = layout
    component = model_class.__name__
    if not os.path.isfile(os.path.join(folder, config_name)):
        raise OSError(
            f"{component}: {folder} has no {config_name}, which says how to build the model; a saved {component} "
            f"folder holds {config_name} and {weights_name}. The folder holds {sorted(os.listdir(folder))}."
        )
    if variant:
        stem, extension = os.path.splitext(weights_name)
        weights_name = f"{stem}.{variant}{extension}"
    expected = {name: tuple(tensor.shape) for name, tensor in build_meta_model(folder).state_dict().items()}
    # Counted on the meta device, before anything is allocated: a config with `hidden_size=10**6` is refused here.
    num_parameters = sum(math.prod(shape) for shape in expected.values())
    if num_parameters > LIMITS["model_parameters"]:
        largest = max(expected, key=lambda name: math.prod(expected[name]))
        check_limit(
            os.path.join(folder, config_name),
            num_parameters,
            "model_parameters",
            f"parameters in {component}; the largest tensor is {largest} of shape {expected[largest]}: which "
            "config sizes make it so large?",
        )
    needed = f"{len(expected)} tensors: {_examples(sorted(expected))}"
    files = [file for file in _weights_files(folder, weights_name) if os.path.isfile(file)]
    if not files:
        pickled = os.path.join(folder, weights_name.replace(".safetensors", ".bin"))
        files = [pickled] if os.path.isfile(pickled) else []
    if not files:
        raise OSError(
            f"{component}: {folder} has no weights file {weights_name} (nor a sharded or `.bin` one); the config "
            f"{os.path.join(folder, config_name)} needs {needed}. The folder holds {sorted(os.listdir(folder))}."
        )
    stored = {}
    for file in files:
        stored.update(_read_shapes(file, component, needed))
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    common = sorted(set(stored) & set(expected))
    reshaped = [
        f"{name}: file {stored[name]} vs config {expected[name]}" for name in common if stored[name] != expected[name]
    ]
    if ignore_mismatched_sizes:
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


def check_saved_component(cls: type, pretrained_model_name_or_path: str | os.PathLike, kwargs: dict) -> None:
    """Checks what `cls.from_pretrained(pretrained_model_name_or_path, **kwargs)` is about to load, if it is a local
    folder ([`check_component_folder`] on it, or on its `subfolder`); a Hub repo id passes unchanged.

    Args:
        cls (`type`): the model class, named in messages.
        pretrained_model_name_or_path (`str` or `os.PathLike`): what `from_pretrained` got.
        kwargs (`dict`): its keyword arguments (`subfolder`, `variant`, `ignore_mismatched_sizes` are read).
    """
    component = cls.__name__
    path = os.fspath(pretrained_model_name_or_path)
    check_local_folder(path, component)
    if not os.path.isdir(path):
        return  # a Hub repo id
    folder = os.path.join(path, kwargs["subfolder"]) if kwargs.get("subfolder") else path
    if not os.path.isdir(folder):
        raise OSError(f"{component}: {path} has no subfolder {kwargs.get('subfolder')!r}.")
    check_component_folder(
        cls, folder, variant=kwargs.get("variant"), ignore_mismatched_sizes=bool(kwargs.get("ignore_mismatched_sizes"))
    )


class StrictLoadingMixin:
    """`from_pretrained` for the package's model classes (put before `ModelMixin` / `PreTrainedModel`): a local folder
    is checked with [`check_saved_component`] first, so missing, unexpected or reshaped weights, a config that
    disagrees with the weights, or a missing or unreadable file fail with a message naming the file and the first keys,
    never with randomly initialised weights or only a warning."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """The library's `from_pretrained`, after [`check_saved_component`] (skipped when transformers gets an
        explicit `config`, which then describes the model instead of the folder's `config.json`)."""
        if kwargs.get("config") is None:
            check_saved_component(cls, pretrained_model_name_or_path, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def check_loaded_component(model: torch.nn.Module) -> None:
    """Checks the folder a model of another library was loaded from (its config's `_name_or_path`), for models that
    load without [`StrictLoadingMixin`]: TokenBridge's `AutoencoderKL`, which diffusers loads itself, with randomly
    initialised weights and only a warning when they do not fit, under a bare `DiffusionPipeline.from_pretrained`.
    Raises as [`check_component_folder`] does; passes for models built in memory, loaded from the Hub, or loaded from
    another weights file than the plain one (a variant)."""
    if isinstance(model, StrictLoadingMixin) or saved_layout(type(model)) is None:
        return
    folder = model.config.get("_name_or_path") if hasattr(model.config, "get") else None
    if not folder or not os.path.isdir(folder):
        return
    _, weights_name, _ = saved_layout(type(model))
    if os.path.isfile(os.path.join(folder, weights_name)) or os.path.isfile(
        os.path.join(folder, f"{weights_name}.index.json")
    ):
        check_component_folder(type(model), folder)


# ---------------------------------------------------------------------- pipelines


def check_model_index(pipeline_class: type, folder: str, component_classes: dict[str, type]) -> None:
    """Raises `ValueError` if the folder's `model_index.json` is another system's pipeline (naming the class that
    loads it) or names a component of another class (e.g. diffusers' `DDPMScheduler`), before anything is loaded."""
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        return  # diffusers says that the file is missing
    with open(index_path, encoding="utf-8") as file:
        index = json.load(file)
    expected = {name: component_class.__name__ for name, component_class in component_classes.items()}
    class_name = pipeline_class_name(index)
    named = {name: entry[1] for name, entry in index.items() if not name.startswith("_") and is_component_entry(entry)}
    if class_name in PIPELINE_MODULES and set(named) != set(expected):  # another system's components
        raise ValueError(
            f"{folder} holds a saved {class_name} (its model_index.json names the components {named}), not a "
            f"{pipeline_class.__name__}, which needs {expected}. Load it with `{class_name}.from_pretrained(...)` (or "
            "`diffusers.DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`)."
        )
    for name, component_class in expected.items():
        entry = index.get(name)
        if entry is None:
            raise ValueError(
                f"{index_path} has no `{name}` entry; a {pipeline_class.__name__} needs a {component_class}."
            )
        if not (is_component_entry(entry) and entry[1] == component_class):
            raise ValueError(
                f"{index_path}: `{name}` is {entry}; a {pipeline_class.__name__} needs a {component_class} "
                f"([{component_classes[name].__module__!r}, {component_class!r}])."
            )


def check_component_folders(folder: str, component_classes: dict[str, type], kwargs: dict) -> None:
    """[`check_component_folder`] on every model component of a pipeline folder (`<folder>/<name>`), including those
    diffusers loads without this package's classes (TokenBridge's `AutoencoderKL`), except components passed to
    `from_pretrained` as objects (`kwargs[name]`). With `kwargs["variant"]`, a component folder is checked with the
    variant where it holds variant weights and with its plain weights otherwise, as diffusers loads it."""
    for name, component_class in component_classes.items():
        if name in kwargs or saved_layout(component_class) is None:
            continue
        component_folder = os.path.join(folder, name)
        if not os.path.isdir(component_folder):
            raise OSError(
                f"{component_class.__name__}: {folder} has no `{name}` folder; the model_index.json names one."
            )
        variant = kwargs.get("variant")
        if variant and not has_variant_weights(component_class, component_folder, variant):
            variant = None
        check_component_folder(
            component_class,
            component_folder,
            variant=variant,
            ignore_mismatched_sizes=bool(kwargs.get("ignore_mismatched_sizes")),
        )


def has_variant_weights(model_class: type, folder: str, variant: str) -> bool:
    """Whether `folder` holds `model_class`'s weights of `variant` (`<weights stem>.<variant>.safetensors`, its
    sharded index, or the `.bin` form)."""
    stem, _ = os.path.splitext(saved_layout(model_class)[1])
    return any(
        os.path.isfile(os.path.join(folder, f"{stem}.{variant}{extension}"))
        for extension in (".safetensors", ".safetensors.index.json", ".bin")
    )


def _download_pipeline(pipeline_name: str, repo_id: str, kwargs: dict) -> str:
    """The snapshot folder of the Hub repo `repo_id` (popping `cache_dir`, `revision`, `local_files_only`, `token`
    from `kwargs`); a name that cannot be had (not a repo id, not on the Hub, offline and not cached) is a one-line
    `OSError` saying that it is neither a folder nor a downloadable repository, and naming the bundled pipelines."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        return snapshot_download(
            repo_id,
            cache_dir=kwargs.pop("cache_dir", None),
            revision=kwargs.pop("revision", None),
            local_files_only=kwargs.pop("local_files_only", False),
            token=kwargs.pop("token", None),
        )
    except (HFValidationError, HfHubHTTPError, OSError) as error:  # OSError: offline, not cached, no connection
        from ..bundled import BUNDLED_MODELS

        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(
            f"{pipeline_name}: {repo_id!r} is not a folder, and not a Hub repository that could be downloaded "
            f"({type(error).__name__}: {reason}). The pipelines bundled with the package ({', '.join(BUNDLED_MODELS)}) "
            "load with `from_pretrained(tokenset_diffusers.bundled_pipeline_path(name))`."
        ) from None


class PipelineLoadingMixin:
    """Loading, saving and uploading of the package's pipelines (put before `DiffusionPipeline`), the same for both
    systems. A pipeline class sets `_component_classes` (`{model_index.json key: class}`).

    - `from_pretrained` takes a local folder or a Hub repo id (downloaded with `huggingface_hub.snapshot_download`,
      since diffusers refuses repo ids whose components live outside diffusers, its issue #5553), refuses another
      system's folder or other component classes ([`check_model_index`]), checks every model component's folder
      ([`check_component_folders`]) and only then loads;
    - `load_config` reads `model_index.json` as the package's modules ([`~remote_code.read_as_package`]): release 0.1
      flat module paths, current paths and remote-code short names alike, and imports nothing from the folder;
    - `save_pretrained` adds the import-only files that let `DiffusionPipeline.from_pretrained(folder,
      trust_remote_code=True)` load the folder ([`~remote_code.write_remote_code_files`]);
    - `push_to_hub` saves the pipeline with a model card and uploads it with [`~hub.push_folder_to_hub`];
    - `model_card` renders the minimal card of the pipeline ([`~model_cards.pipeline_model_card`]).
    """

    _component_classes: dict[str, type] = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Loads a pipeline from a local folder or a Hub repo id.

        A repo id is first downloaded with `huggingface_hub.snapshot_download` (honouring `cache_dir`, `revision`,
        `local_files_only`, `token`, and `HF_HUB_OFFLINE`), then the folder is loaded. Other keyword arguments
        (`dtype`, components to use instead of the saved ones, ...) go to `DiffusionPipeline.from_pretrained`. A path
        that looks local but is no folder is reported as such, not as a bad repo id.

        Raises:
            `OSError` or `ValueError`, before anything is loaded, for another system's folder, a component of another
            class, or a component folder whose files are missing, unreadable or do not fit its config.
        """
        path = os.fspath(pretrained_model_name_or_path)
        check_local_folder(path, cls.__name__)
        if not os.path.isdir(path):
            path = _download_pipeline(cls.__name__, path, kwargs)
        else:
            for name in ("cache_dir", "revision", "token"):
                kwargs.pop(name, None)
        check_model_index(cls, path, cls._component_classes)
        check_component_folders(path, cls._component_classes, kwargs)
        # One bar ("Loading pipeline components"), not transformers' "Loading weights" bar nested inside it.
        from transformers.utils import logging as transformers_logging

        bars_enabled = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            return super().from_pretrained(path, **kwargs)
        finally:
            if bars_enabled:
                transformers_logging.enable_progress_bar()

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' `load_config`, reading model_index.json as this package: the pipeline entry becomes the class
        name and each entry of a package component the package module, so no file in the folder is imported."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        read_as_package(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """diffusers' `save_pretrained`, plus the files that let `DiffusionPipeline.from_pretrained(save_directory,
        trust_remote_code=True)` load the folder: `<pipeline module>.py`, one `<component>/<module>.py` per package
        component, and model_index.json's entries pointing at them. With `push_to_hub=True` the complete folder is
        uploaded afterwards (`repo_id`, `commit_message`, `private`, `token`, `create_pr` as in [`push_to_hub`])."""
        push_to_hub = kwargs.pop("push_to_hub", False)
        upload = {
            name: kwargs.pop(name)
            for name in ("repo_id", "commit_message", "private", "token", "create_pr")
            if name in kwargs
        }
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code_files(save_directory)
        if push_to_hub:
            from .hub import push_folder_to_hub

            repo_id = upload.pop("repo_id", None) or os.path.basename(os.path.normpath(save_directory))
            readme = os.path.join(save_directory, "README.md")
            if not os.path.isfile(readme):
                self.model_card(repo_id).save(readme)
            upload.setdefault("commit_message", f"Upload {type(self).__name__}")
            push_folder_to_hub(save_directory, repo_id, **upload)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        model_card: "huggingface_hub.ModelCard | None" = None,  # noqa: F821
    ):
        """Saves the pipeline with a model card (README.md) to a temporary folder and uploads it to `repo_id` with
        [`~hub.push_folder_to_hub`].

        Args:
            repo_id (`str`): `namespace/name` of the Hub model repository (created if needed).
            commit_message (`str`, *optional*): defaults to `"Upload <pipeline class>"`.
            private (`bool`, *optional*), token (`str`, *optional*), create_pr (`bool`, defaults to `False`): see
                [`~hub.push_folder_to_hub`].
            model_card (`huggingface_hub.ModelCard`, *optional*): defaults to the README.md of the folder the pipeline
                was loaded from (conversion and training write one), else [`model_card`].

        Returns:
            The `huggingface_hub.CommitInfo` of the upload.
        """
        import tempfile

        from huggingface_hub import ModelCard

        from .hub import push_folder_to_hub

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            if model_card is None:
                loaded_from = self.config.get("_name_or_path") or ""
                source = os.path.join(loaded_from, "README.md")
                use_source = bool(loaded_from) and os.path.isdir(loaded_from) and os.path.isfile(source)
                model_card = ModelCard.load(source) if use_source else self.model_card(repo_id)
            model_card.save(os.path.join(folder, "README.md"))
            return push_folder_to_hub(
                folder,
                repo_id,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                private=private,
                token=token,
                create_pr=create_pr,
            )

    def model_card(self, repo_id: str = "<repo_id>") -> "huggingface_hub.ModelCard":  # noqa: F821
        """A minimal model card for this pipeline (metadata, sizes, sampling defaults, usage), rendered by
        [`~model_cards.pipeline_model_card`]."""
        from ..model_cards import pipeline_model_card

        return pipeline_model_card(self, repo_id)

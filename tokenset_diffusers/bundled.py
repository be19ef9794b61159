"""The small pipelines that ship inside the package, so that generation works offline out of the box, and
[`resolve_pipeline`], which turns what a command line's `--model` says (a folder, a bundled name or a Hub repo id)
into a pipeline folder and the system it holds."""

import json
import os
from dataclasses import dataclass
from pathlib import Path


BUNDLED_ROOT = Path(__file__).parent / "bundled"
# Name -> folder under `bundled/`: the TokenSet digits pipeline (the default) and the TokenBridge one.
BUNDLED_MODELS = {"digits": "digits", "tokenset-digits": "digits", "tokenbridge-digits": "tokenbridge-digits"}
BUNDLED_DIR = BUNDLED_ROOT / BUNDLED_MODELS["digits"]


def bundled_pipeline_path(name: str = "digits") -> Path:
    """The folder of a bundled pipeline.

    Args:
        name (`str`, defaults to `"digits"`): `"digits"` (also `"tokenset-digits"`), the TokenSet digits pipeline
            (`TokenSetPipeline.from_pretrained(bundled_pipeline_path())`), or `"tokenbridge-digits"`, the TokenBridge
            one (`TokenBridgePipeline.from_pretrained(bundled_pipeline_path("tokenbridge-digits"))`).

    Raises `ValueError` for an unknown name and `FileNotFoundError` when this installation lacks that model.
    """
    if name not in BUNDLED_MODELS:
        raise ValueError(f"`name` must be one of {sorted(BUNDLED_MODELS)}, got {name!r}.")
    folder = BUNDLED_ROOT / BUNDLED_MODELS[name]
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"No bundled pipeline at {folder}: this installation of tokenset-diffusers ships without one. "
            "Pass a pipeline folder or Hub repo id instead."
        )
    return folder


# `model_index.json`'s `_class_name` -> the system it belongs to.
PIPELINE_SYSTEMS = {
    "TokenSetPipeline": "tokenset",
    "TokenSetImg2ImgPipeline": "tokenset",
    "TokenBridgePipeline": "tokenbridge",
    "TokenBridgeInpaintPipeline": "tokenbridge",
    "TokenBridgeImg2ImgPipeline": "tokenbridge",
}
# The system -> the class that loads and generates with its folders.
SYSTEM_PIPELINE_CLASSES = {"tokenset": "TokenSetPipeline", "tokenbridge": "TokenBridgePipeline"}


@dataclass(frozen=True)
class ResolvedPipeline:
    """A pipeline folder found by [`resolve_pipeline`].

    Attributes:
        folder (`Path`): the local pipeline folder (for a Hub repo id, its downloaded snapshot).
        system (`str`): `"tokenset"` or `"tokenbridge"`, read from the folder's `model_index.json`.
    """

    folder: Path
    system: str

    @property
    def pipeline_class(self) -> type:
        """`TokenSetPipeline` or `TokenBridgePipeline`, the class that loads this folder."""
        import tokenset_diffusers

        return getattr(tokenset_diffusers, SYSTEM_PIPELINE_CLASSES[self.system])


def _read_system(folder: Path, model: str) -> str:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"`model` {model!r} is not a pipeline: {folder} has no model_index.json.")
    class_name = json.loads(index.read_text()).get("_class_name")
    if isinstance(class_name, (list, tuple)):  # `[module, class]`, as diffusers stores components of other libraries
        class_name = class_name[-1]
    if class_name not in PIPELINE_SYSTEMS:
        raise ValueError(
            f"`model` {model!r} is a {class_name!r} folder; expected one of {sorted(PIPELINE_SYSTEMS)} "
            f"(`_class_name` in {index})."
        )
    return PIPELINE_SYSTEMS[class_name]


def resolve_pipeline(
    model: str | os.PathLike | None = None, *, default: str = "digits", system: str | None = None
) -> ResolvedPipeline:
    """The pipeline folder that `model` names, and which system's pipeline it holds: what every command line and the
    Space load with `resolved.pipeline_class.from_pretrained(resolved.folder)`.

    Args:
        model (`str` or `os.PathLike`, *optional*): a pipeline folder, a bundled model's name (see `BUNDLED_MODELS`:
            `"digits"`, `"tokenbridge-digits"`, ...) or a Hub repo id (downloaded with
            `huggingface_hub.snapshot_download`, honouring `HF_HUB_OFFLINE`). An existing folder wins over a bundled
            name. `None` takes `default`.
        default (`str`, defaults to `"digits"`): the bundled model used when `model` is `None`.
        system (`str`, *optional*): `"tokenset"` or `"tokenbridge"`: the system the caller can run; a pipeline of
            the other is refused.

    Returns:
        [`ResolvedPipeline`]: the local folder and its system (`"tokenset"` or `"tokenbridge"`, from the
        `_class_name` of its `model_index.json`, a class name or a `[module, class]` pair).

    Raises:
        `ValueError` with a one-line message: `model` is neither a folder, a bundled name nor a Hub repository that
        can be downloaded; the folder holds no pipeline of this package; or it holds the other `system`'s pipeline.
        `FileNotFoundError` when a bundled model is missing from this installation.
    """
    if system is not None and system not in SYSTEM_PIPELINE_CLASSES:
        raise ValueError(f"`system` must be one of {sorted(SYSTEM_PIPELINE_CLASSES)}, got {system!r}.")
    model = default if model is None else os.fspath(model)
    if os.path.isdir(model):
        folder = Path(model)
    elif model in BUNDLED_MODELS:
        folder = bundled_pipeline_path(model)
    else:
        folder = _download(model)
    resolved = ResolvedPipeline(folder=folder, system=_read_system(folder, model))
    if system is not None and resolved.system != system:
        raise ValueError(
            f"`model` {model!r} is a {SYSTEM_PIPELINE_CLASSES[resolved.system]} folder; this needs a "
            f"{SYSTEM_PIPELINE_CLASSES[system]}."
        )
    return resolved


def _download(model: str) -> Path:
    """A Hub repo id's snapshot; anything that cannot be one, or cannot be had, is a one-line `ValueError`."""
    from tokenset_diffusers.utils.loading import looks_like_local_path

    names = ", ".join(sorted(BUNDLED_MODELS))
    if looks_like_local_path(model):
        raise ValueError(f"`model` {model!r} is not a folder (nor a bundled model: {names}).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model))
    except (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:  # OSError: connection
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"`model` {model!r} is neither a folder, a bundled model ({names}), nor a Hub repository that could be "
            f"downloaded ({type(error).__name__}: {reason})."
        ) from error

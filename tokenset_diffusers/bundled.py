"""The small pipelines that ship inside the package, so that generation works offline out of the box."""

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

"""The small TokenSet pipeline that ships inside the package, so that generation works offline out of the box."""

from pathlib import Path


BUNDLED_DIR = Path(__file__).parent / "bundled" / "digits"


def bundled_pipeline_path() -> Path:
    """The folder of the bundled pipeline (load it with `TokenSetPipeline.from_pretrained(bundled_pipeline_path())`).

    Raises `FileNotFoundError` when this installation has no bundled model.
    """
    if not (BUNDLED_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"No bundled pipeline at {BUNDLED_DIR}: this installation of tokenset-diffusers ships without one. "
            "Pass a pipeline folder or Hub repo id instead."
        )
    return BUNDLED_DIR

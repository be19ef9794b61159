"""Lets diffusers load this folder: `DiffusionPipeline.from_pretrained(path_or_repo_id, trust_remote_code=True)`.

It imports TokenSetPipeline from the installed tokenset-diffusers package; see the Usage section of the model card (README.md).
"""

try:
    from tokenset_diffusers.pipeline_tokenset import TokenSetPipeline  # noqa: F401
except ImportError as error:
    raise ImportError(
        "This model needs the tokenset-diffusers package; see the Usage section of the model card (README.md)."
    ) from error

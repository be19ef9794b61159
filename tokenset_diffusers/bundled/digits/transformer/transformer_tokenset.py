"""Lets diffusers load this folder: `DiffusionPipeline.from_pretrained(path_or_repo_id, trust_remote_code=True)`.

It imports TokenSetTransformer1DModel from the installed tokenset-diffusers package; see the Usage section of the model card (README.md).
"""

try:
    from tokenset_diffusers.transformer_tokenset import TokenSetTransformer1DModel  # noqa: F401
except ImportError as error:
    raise ImportError(
        "This model needs the tokenset-diffusers package; see the Usage section of the model card (README.md)."
    ) from error

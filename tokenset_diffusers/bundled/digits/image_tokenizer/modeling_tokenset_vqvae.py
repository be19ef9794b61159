"""Lets diffusers load this folder: `DiffusionPipeline.from_pretrained(path_or_repo_id, trust_remote_code=True)`.

It imports TokenSetVQVAE from the installed tokenset-diffusers package; see the Usage section of the model card (README.md).
"""

try:
    from tokenset_diffusers.modeling_tokenset_vqvae import TokenSetVQVAE  # noqa: F401
except ImportError as error:
    raise ImportError(
        "This model needs the tokenset-diffusers package; see the Usage section of the model card (README.md)."
    ) from error

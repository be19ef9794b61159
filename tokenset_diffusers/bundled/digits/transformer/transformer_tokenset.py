"""Imports TokenSetTransformer1DModel from the installed tokenset-diffusers package, for diffusers' and transformers' loaders.

`trust_remote_code=True` loads this folder through this file; see the Usage section of the model card (README.md) for the install line.
"""

try:
    from tokenset_diffusers.tokenset.transformer_tokenset import TokenSetTransformer1DModel  # noqa: F401
except ImportError as error:
    raise ImportError(
        "This model needs the tokenset-diffusers package; see the Usage section of the model card (README.md)."
    ) from error

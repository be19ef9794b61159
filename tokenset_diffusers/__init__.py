"""TokenSet ("Tokenize Image as a Set") for diffusers and transformers.

Images become an unordered set of ``num_tokens`` (M) discrete tokens from a codebook of ``codebook_size`` (C)
entries. A set is written as a count vector of length C that sums to M; a transformer over the C positions
generates count vectors with Fixed-Sum Discrete Diffusion (FSDD), and the set tokenizer decodes them to images.

Public names are imported lazily, as in diffusers and transformers: ``import tokenset_diffusers`` imports neither
torch nor diffusers nor transformers; the module that holds a name is imported on its first use. That first use also
registers the set tokenizer with transformers' Auto classes (``AutoConfig`` / ``AutoModel`` for
``model_type="tokenset_vqvae"``). Code that uses only the Auto classes, without any name of this package, calls
``tokenset_diffusers.register_auto_classes()`` first (or loads with ``trust_remote_code=True``).
"""

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING


__version__ = "0.1.0"

_import_structure = {
    "tokenset.set_ops": [
        "DiscretizedGaussian",
        "counts_to_tokens",
        "discretized_gaussian",
        "greedy_adjust",
        "quantize_to_sum",
        "sample_fixed_sum_noise",
        "tokens_to_counts",
    ],
    "utils.sampling": ["filter_probs"],
    "tokenset.scheduling_fsdd": ["FSDDScheduler", "FSDDSchedulerOutput"],
    "tokenset.configuration_tokenset_vqvae": ["TokenSetVQVAEConfig"],
    "tokenset.modeling_tokenset_vqvae": ["TokenSetVQVAE", "TokenSetVQVAEEncoderOutput", "TokenSetVQVAEOutput"],
    "image_processing": [
        "center_crop_arr",
        "preprocess_images",
        "postprocess_images",
        "preprocess_masks",
        "mask_to_latent_grid",
        "outpaint_canvas",
    ],
    "tokenset.transformer_tokenset": [
        "TokenSetTransformer1DModel",
        "TokenSetTransformer1DModelOutput",
        "TRANSFORMER_PRESETS",
    ],
    "tokenset.pipeline_tokenset": ["TokenSetPipeline", "TokenSetPipelineOutput"],
    "tokenset.pipeline_tokenset_img2img": ["TokenSetImg2ImgPipeline"],
    "tokenset.set_interpolation": ["interpolate_counts", "interpolate_images", "interpolation_weights"],
    "bundled": ["bundled_pipeline_path"],
    "metrics": [
        "FeatureStatistics",
        "InceptionFeatureExtractor",
        "extract_features",
        "frechet_distance",
        "images_to_uint8",
        "inception_score",
        "inception_weights_cached_path",
        "load_feature_extractor",
        "load_statistics",
        "precision_recall",
        "save_statistics",
    ],
    "model_cards": ["render_model_card", "write_model_card", "pipeline_card_fields"],
    # TokenBridge (arXiv 2503.16430)
    "tokenbridge.quantization_tokenbridge": ["TokenBridgeQuantizer"],
    "tokenbridge.transformer_tokenbridge": [
        "TokenBridgeTransformer2DModel",
        "TokenBridgeTransformer2DModelOutput",
        "TOKENBRIDGE_PRESETS",
    ],
    "tokenbridge.scheduling_masked_ar": ["MaskedARScheduler", "MaskedARSchedulerOutput"],
    "tokenbridge.pipeline_tokenbridge": ["TokenBridgePipeline", "TokenBridgePipelineOutput"],
    "tokenbridge.pipeline_tokenbridge_inpaint": ["TokenBridgeInpaintPipeline"],
    "tokenbridge.pipeline_tokenbridge_img2img": ["TokenBridgeImg2ImgPipeline"],
    "class_labels": ["ClassLabelsMixin"],
}

_name_to_module = {name: module for module, names in _import_structure.items() for name in names}

__all__ = sorted([*_name_to_module, "register_auto_classes"])


_auto_classes_registered = False


def register_auto_classes() -> None:
    """Lets `AutoConfig` / `AutoModel.from_pretrained` load a saved set tokenizer without `trust_remote_code`.

    Runs once, on the first use of any public name of the package; idempotent. Imports transformers and torch.
    """
    global _auto_classes_registered
    if _auto_classes_registered:
        return
    _auto_classes_registered = True  # set first: the imports below may look names up in this package again
    from transformers import AutoConfig, AutoModel

    from .tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
    from .tokenset.modeling_tokenset_vqvae import TokenSetVQVAE

    AutoConfig.register(TokenSetVQVAEConfig.model_type, TokenSetVQVAEConfig, exist_ok=True)
    AutoModel.register(TokenSetVQVAEConfig, TokenSetVQVAE, exist_ok=True)


def __getattr__(name):
    if name in _name_to_module:
        register_auto_classes()
        module = importlib.import_module(f".{_name_to_module[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


# Folders saved by release 0.1.0 name the flat module paths of that release in their `model_index.json` and import
# files (e.g. `tokenset_diffusers.tokenset.scheduling_fsdd`); those paths keep importing, as the modules of the new layout.
_RELEASE_0_1_MODULES = {
    "configuration_tokenset_vqvae": "tokenset.configuration_tokenset_vqvae",
    "modeling_tokenset_vqvae": "tokenset.modeling_tokenset_vqvae",
    "transformer_tokenset": "tokenset.transformer_tokenset",
    "scheduling_fsdd": "tokenset.scheduling_fsdd",
    "pipeline_tokenset": "tokenset.pipeline_tokenset",
    "pipeline_tokenset_img2img": "tokenset.pipeline_tokenset_img2img",
    "set_interpolation": "tokenset.set_interpolation",
    "set_ops": "tokenset.set_ops",
    "quantization_tokenbridge": "tokenbridge.quantization_tokenbridge",
    "transformer_tokenbridge": "tokenbridge.transformer_tokenbridge",
    "scheduling_masked_ar": "tokenbridge.scheduling_masked_ar",
    "pipeline_tokenbridge": "tokenbridge.pipeline_tokenbridge",
    "loading": "utils.loading",
    "remote_code": "utils.remote_code",
}


class _ReleaseModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `tokenset_diffusers.<release 0.1 module>` as the module that holds its code now (the same module
    object, so classes are identical whichever path loaded them)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in _RELEASE_0_1_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_RELEASE_0_1_MODULES[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        pass  # already executed under its own name


if not any(isinstance(finder, _ReleaseModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_ReleaseModuleFinder())


if TYPE_CHECKING:  # pragma: no cover
    from .tokenset.scheduling_fsdd import FSDDScheduler, FSDDSchedulerOutput
    from .tokenset.set_ops import (
        DiscretizedGaussian,
        counts_to_tokens,
        discretized_gaussian,
        greedy_adjust,
        quantize_to_sum,
        sample_fixed_sum_noise,
        tokens_to_counts,
    )
    from .utils.sampling import filter_probs

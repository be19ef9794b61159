"""TokenSet ("Tokenize Image as a Set") for diffusers and transformers.

Images become an unordered set of ``num_tokens`` (M) discrete tokens from a codebook of ``codebook_size`` (C)
entries. A set is written as a count vector of length C that sums to M; a transformer over the C positions
generates count vectors with Fixed-Sum Discrete Diffusion (FSDD), and the set tokenizer decodes them to images.

Public names are imported lazily. Importing the package registers the set tokenizer with transformers' Auto classes
(``AutoConfig`` / ``AutoModel`` for ``model_type="tokenset_vqvae"``), which imports transformers and torch.
"""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0"

_import_structure = {
    "set_ops": [
        "DiscretizedGaussian",
        "counts_to_tokens",
        "discretized_gaussian",
        "filter_probs",
        "greedy_adjust",
        "quantize_to_sum",
        "sample_fixed_sum_noise",
        "tokens_to_counts",
    ],
    "scheduling_fsdd": ["FSDDScheduler", "FSDDSchedulerOutput"],
    "configuration_tokenset_vqvae": ["TokenSetVQVAEConfig"],
    "modeling_tokenset_vqvae": ["TokenSetVQVAE", "TokenSetVQVAEEncoderOutput", "TokenSetVQVAEOutput"],
    "image_processing": ["center_crop_arr", "preprocess_images", "postprocess_images"],
    "transformer_tokenset": ["TokenSetTransformer1DModel", "TokenSetTransformer1DModelOutput", "TRANSFORMER_PRESETS"],
    "pipeline_tokenset": ["TokenSetPipeline", "TokenSetPipelineOutput"],
    "pipeline_tokenset_img2img": ["TokenSetImg2ImgPipeline"],
    "set_interpolation": ["interpolate_counts", "interpolate_images", "interpolation_weights"],
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
    "quantization_tokenbridge": ["TokenBridgeQuantizer"],
    "transformer_tokenbridge": [
        "TokenBridgeTransformer2DModel",
        "TokenBridgeTransformer2DModelOutput",
        "TOKENBRIDGE_PRESETS",
    ],
    "scheduling_masked_ar": ["MaskedARScheduler", "MaskedARSchedulerOutput"],
    "pipeline_tokenbridge": ["TokenBridgePipeline", "TokenBridgePipelineOutput"],
    "class_labels": ["ClassLabelsMixin"],
}

_name_to_module = {name: module for module, names in _import_structure.items() for name in names}

__all__ = sorted(_name_to_module)


def _register_auto_classes() -> None:
    """`AutoConfig` / `AutoModel.from_pretrained` on a saved set tokenizer, without `trust_remote_code`."""
    from transformers import AutoConfig, AutoModel

    from .configuration_tokenset_vqvae import TokenSetVQVAEConfig
    from .modeling_tokenset_vqvae import TokenSetVQVAE

    AutoConfig.register(TokenSetVQVAEConfig.model_type, TokenSetVQVAEConfig, exist_ok=True)
    AutoModel.register(TokenSetVQVAEConfig, TokenSetVQVAE, exist_ok=True)


_register_auto_classes()


def __getattr__(name):
    if name in _name_to_module:
        module = importlib.import_module(f".{_name_to_module[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .scheduling_fsdd import FSDDScheduler, FSDDSchedulerOutput
    from .set_ops import (
        DiscretizedGaussian,
        counts_to_tokens,
        discretized_gaussian,
        filter_probs,
        greedy_adjust,
        quantize_to_sum,
        sample_fixed_sum_noise,
        tokens_to_counts,
    )

"""Hub model cards for TokenSet repositories, rendered from the Jinja templates shipped with the package.

These kinds of repository get a card:

- `"tokenset_pipeline"` / `"tokenbridge_pipeline"`: the minimal card of any loaded pipeline of either system (sizes,
  class names, sampling defaults, usage), made by [`pipeline_model_card`] for the pipelines' `model_card()` and
  `push_to_hub()`;
- `"converted_pipeline"`: a released ImageNet generator converted to a [`TokenSetPipeline`] folder (what TokenSet is,
  the paper's rFID / gFID table, the released sampling settings, usage, licence, citation);
- `"tokenizer"`: a set tokenizer alone ([`TokenSetVQVAE`] folder), released or trained;
- `"trained_pipeline"`: a pipeline trained with this project's scripts (dataset, preset, steps and the run's
  metrics).

The templates are `tokenset_diffusers/templates/<kind>.md` (package data, so an installed package renders cards);
the repository's `model_cards/` folder links to them. Scripts write a card next to the weights:

```python
>>> from tokenset_diffusers.model_cards import render_model_card

>>> card = render_model_card("converted_pipeline", repo_id="org/tokenset-base-imagenet256", generator_size="B")
>>> card.save("tokenset-base-imagenet256/README.md")  # or card.push_to_hub("org/tokenset-base-imagenet256")
```
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import ModelCard, ModelCardData


TEMPLATE_DIR = Path(__file__).parent / "templates"
CardKind = Literal[
    "tokenset_pipeline",
    "tokenbridge_pipeline",
    "converted_pipeline",
    "tokenizer",
    "trained_pipeline",
    "vae",
    "tokenbridge_trained_pipeline",
    "tokenbridge_converted_pipeline",
]

PAPER_URL = "https://arxiv.org/abs/2503.16425"
ORIGINAL_REPOSITORY = "https://github.com/Gengzigang/TokenSet"
# The paper's ImageNet 256x256 results (50k samples, ADM reference statistics); +-0.1 from seed to seed.
PAPER_RFID = 2.74
PAPER_GFID = {"S": 5.56, "B": 5.09}
RELEASED_SETTINGS = {
    "num_inference_steps": 25,
    "guidance_scale": [4.0, 50.0, 55.0],
    "sigma_schedule": "sigmoid (slope 100, midpoint 0.8)",
    "top_p": 0.8,
    "adjust_start": 0.65,
}

# TokenBridge (arXiv 2503.16430): the paper's ImageNet 256x256 FID-50K of the released sizes.
TOKENBRIDGE_PAPER_FID = {"L": 1.76, "H": 1.55}
# Until a release is on PyPI, the package installs from its repository.
INSTALL_COMMANDS = "# tokenset-diffusers is not on PyPI yet: in a clone of its repository, run\npip install ."

BASE_TAGS = ["tokenset", "tokenset-diffusers", "image-tokenizer", "discrete-diffusion", "arxiv:2503.16425"]
_COMMON_DEFAULTS = {"library_name": None, "tags": (), "datasets": None}

# Per kind: the template, the default metadata, the fields a caller must pass, and the defaults of the others.
_KINDS: dict[str, dict[str, Any]] = {
    # The minimal card of any loaded TokenSet pipeline ([`pipeline_model_card`]).
    "tokenset_pipeline": {
        "library_name": "diffusers",
        "tags": ["class-conditional-image-generation", "image-generation"],
        "required": ("repo_id", "image_size", "codebook_size", "num_tokens", "num_classes"),
        "defaults": {"guidance_scale": None, "class_names": None, "example_class_label": 0},
    },
    # The minimal card of any loaded TokenBridge pipeline ([`pipeline_model_card`]).
    "tokenbridge_pipeline": {
        "library_name": "diffusers",
        "base_tags": ["tokenbridge", "tokenset-diffusers", "arxiv:2503.16430"],
        "tags": ["class-conditional-image-generation"],
        "required": ("repo_id", "image_size", "sample_size", "latent_channels", "num_levels", "num_classes"),
        "defaults": {
            "num_inference_steps": 64,
            "guidance_scale": 1.0,
            "temperature": 1.0,
            "class_names": None,
            "example_class_label": 0,
        },
    },
    "converted_pipeline": {
        "library_name": "diffusers",
        "tags": ["class-conditional-image-generation", "imagenet"],
        "required": ("repo_id", "generator_size"),
        "defaults": {
            "image_size": 256,
            "codebook_size": 4096,
            "num_tokens": 128,
            "num_classes": 1000,
            "example_class_label": "golden retriever",
            "tokenizer_repo_id": None,
        },
    },
    "tokenizer": {
        "library_name": "transformers",
        "tags": ["vq-vae"],
        "required": ("repo_id",),
        "defaults": {
            "source": "converted",
            "image_size": 256,
            "codebook_size": 4096,
            "num_tokens": 128,
            "dataset": "ImageNet-1k (ILSVRC 2012), 256x256",
            "training_steps": None,
            "preset": None,
            "metrics": None,
            "training_commands": None,
        },
    },
    "trained_pipeline": {
        "library_name": "diffusers",
        "tags": ["class-conditional-image-generation"],
        "required": (
            "repo_id",
            "dataset",
            "preset",
            "tokenizer_steps",
            "generator_steps",
            "metrics",
            "image_size",
            "codebook_size",
            "num_tokens",
            "num_classes",
        ),
        "defaults": {
            "example_class_label": 0,
            "num_inference_steps": 25,
            "guidance_scale": None,
            "training_commands": None,
            "training_time": None,
            "hardware": None,
            "class_names": None,
        },
    },
    # TokenBridge (arXiv 2503.16430): a continuous VAE trained with `training/train_vae.py`.
    "vae": {
        "library_name": "diffusers",
        "base_tags": ["tokenbridge", "tokenset-diffusers", "autoencoder-kl", "arxiv:2503.16430"],
        "tags": [],
        "required": ("repo_id", "image_size", "latent_channels", "downsampling_factor", "scaling_factor", "dataset"),
        "defaults": {"training_steps": None, "preset": None, "metrics": None, "training_commands": None},
    },
    # A released TokenBridge ImageNet generator converted by `conversion/convert_tokenbridge_to_diffusers.py`.
    "tokenbridge_converted_pipeline": {
        "library_name": "diffusers",
        "base_tags": ["tokenbridge", "tokenset-diffusers", "arxiv:2503.16430"],
        "tags": ["class-conditional-image-generation", "imagenet"],
        "required": ("repo_id", "model_size"),
        "defaults": {"num_parameters": None, "example_class_label": "golden retriever"},
    },
    # A TokenBridgePipeline trained with `training/train_tokenbridge.py`.
    "tokenbridge_trained_pipeline": {
        "library_name": "diffusers",
        "base_tags": ["tokenbridge", "tokenset-diffusers", "arxiv:2503.16430"],
        "tags": ["class-conditional-image-generation"],
        "required": (
            "repo_id",
            "dataset",
            "preset",
            "training_steps",
            "metrics",
            "image_size",
            "sample_size",
            "latent_channels",
            "num_classes",
        ),
        "defaults": {
            "example_class_label": 0,
            "num_inference_steps": 64,
            "guidance_scale": 1.0,
            "temperature": 1.0,
            "training_commands": None,
            "training_time": None,
            "hardware": None,
            "class_names": None,
        },
    },
}


def template_path(kind: CardKind) -> Path:
    """The Jinja template of `kind` (`tokenset_diffusers/templates/<kind>.md`)."""
    _check_kind(kind)
    return TEMPLATE_DIR / f"{kind}.md"


def render_model_card(kind: CardKind, **fields) -> ModelCard:
    """Renders the model card of `kind` with `huggingface_hub.ModelCard.from_template`.

    Args:
        kind (`str`): `"converted_pipeline"`, `"tokenizer"` or `"trained_pipeline"`.
        **fields: the template's fields. Every kind takes `repo_id` (used in the usage snippet) and the metadata
            overrides `library_name`, `tags` (added to the defaults) and `datasets` (Hub dataset ids).
            - `"converted_pipeline"`: `generator_size` (`"S"` or `"B"`, required); `image_size`, `codebook_size`,
              `num_tokens`, `num_classes` (the released 256, 4096, 128, 1000); `example_class_label` (a class name or
              id for the usage snippet, `"golden retriever"`); `tokenizer_repo_id` (a link, optional).
            - `"tokenizer"`: `source` (`"converted"`: the released tokenizer, with the paper's rFID; `"trained"`: one
              trained with this project's scripts); `image_size`, `codebook_size`, `num_tokens`, `dataset` (a
              description); for trained ones also `training_steps`, `preset`, `metrics` (`dict`),
              `training_commands` (`list[str]`).
            - `"trained_pipeline"`: required `dataset` (a description), `preset` (the training preset(s)),
              `tokenizer_steps`, `generator_steps`, `metrics` (`dict[str, float | str]`, from the run),
              `image_size`, `codebook_size`, `num_tokens`, `num_classes` ([`pipeline_card_fields`] reads these four
              from a pipeline); optional `example_class_label`, `num_inference_steps`, `guidance_scale`,
              `training_commands`, `training_time`, `hardware`, `class_names` (`list[str]`).
            - `"tokenbridge_converted_pipeline"`: `model_size` (`"L"` or `"H"`, required); `num_parameters` (of the
              generator, optional); `example_class_label` (`"golden retriever"`). The paper's FID and the released
              sampling settings of that size are filled in.
            - `"tokenset_pipeline"`, `"tokenbridge_pipeline"`: the fields of [`pipeline_card_fields`] (for TokenBridge
              also `num_levels`); [`pipeline_model_card`] fills them in from a pipeline.

    Returns:
        `huggingface_hub.ModelCard`; `.save(path)` writes it, `.push_to_hub(repo_id)` uploads it as `README.md`.

    Raises:
        `ValueError` for an unknown kind, a missing required field, or a field the kind does not take.
    """
    _check_kind(kind)
    spec = _KINDS[kind]
    allowed = {*spec["required"], *spec["defaults"], *_COMMON_DEFAULTS}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"The {kind!r} model card takes no field(s) {unknown}; it takes {sorted(allowed)}.")
    missing = [name for name in spec["required"] if fields.get(name) is None]
    if missing:
        raise ValueError(f"The {kind!r} model card needs the field(s) {missing}.")
    values = {**spec["defaults"], **fields}
    _check_values(kind, values)

    card_data = ModelCardData(
        license="mit",
        library_name=values.pop("library_name", None) or spec["library_name"],
        tags=[*spec.get("base_tags", BASE_TAGS), *spec["tags"], *values.pop("tags", ())],
        datasets=values.pop("datasets", None) or _default_datasets(kind, values),
    )
    template_fields = {
        **values,
        "paper_url": PAPER_URL,
        "original_repository": ORIGINAL_REPOSITORY,
        "paper_rfid": PAPER_RFID,
        "paper_gfid": PAPER_GFID,
        "released": RELEASED_SETTINGS,
        "install_commands": INSTALL_COMMANDS,
        "metrics": _format_metrics(values.get("metrics")),
    }
    if "example_class_label" in values:
        # A Python literal for the usage snippet: "golden retriever" (with double quotes) or 207.
        template_fields["example_class_code"] = json.dumps(values["example_class_label"])
    if kind == "tokenbridge_converted_pipeline":
        from .tokenbridge.pipeline_tokenbridge import RELEASED_SAMPLING_DEFAULTS

        template_fields["paper_fid"] = TOKENBRIDGE_PAPER_FID
        template_fields["released"] = RELEASED_SAMPLING_DEFAULTS[values["model_size"]]
    if "guidance_scale" in values:
        template_fields["guidance_text"] = _describe_guidance(values["guidance_scale"])
    return ModelCard.from_template(card_data, template_path=str(template_path(kind)), **template_fields)


def write_model_card(output_dir: str | os.PathLike, kind: CardKind, **fields) -> Path:
    """Renders the card (see [`render_model_card`]) and saves it as `output_dir/README.md`; returns that path."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    render_model_card(kind, **fields).save(path)
    return path


def pipeline_card_fields(pipeline) -> dict[str, Any]:
    """The fields a pipeline determines: sizes, class names and its sampling defaults.

    For a [`TokenSetPipeline`]: `image_size`, `codebook_size`, `num_tokens`, `num_classes`, `guidance_scale` (the
    stored default, `None` for none). For a [`TokenBridgePipeline`]: `image_size`, `sample_size`, `latent_channels`,
    `num_classes`, `num_inference_steps`, `guidance_scale`, `temperature` (the stored defaults). Both: `class_names`
    (the first name of each class, or `None`) and `example_class_label` (the first class's name, or 0).
    """
    from .tokenbridge.pipeline_tokenbridge import TokenBridgePipeline

    id2label = pipeline.config.id2label or {}
    class_names = [id2label[i].split(",")[0].strip() for i in sorted(id2label)] if id2label else None
    labels = {"class_names": class_names, "example_class_label": class_names[0] if class_names else 0}
    config = pipeline.transformer.config
    if isinstance(pipeline, TokenBridgePipeline):
        downsampling = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
        return {
            "image_size": config.sample_size * downsampling,
            "sample_size": config.sample_size,
            "latent_channels": config.latent_channels,
            "num_classes": config.num_classes,
            "num_inference_steps": pipeline.config.default_num_inference_steps,
            "guidance_scale": pipeline.config.default_guidance_scale,
            "temperature": pipeline.config.default_temperature,
            **labels,
        }
    return {
        "image_size": pipeline.image_tokenizer.config.image_size,
        "codebook_size": config.codebook_size,
        "num_tokens": config.num_tokens,
        "num_classes": config.num_classes,
        "guidance_scale": pipeline.config.default_guidance_scale,
        **labels,
    }


def pipeline_model_card(pipeline, repo_id: str = "<repo_id>") -> ModelCard:
    """The minimal model card of a loaded pipeline of either system, as `pipeline.model_card(repo_id)` and
    `pipeline.push_to_hub(repo_id)` (without a README.md of its own) give it: the `"tokenset_pipeline"` or
    `"tokenbridge_pipeline"` template filled with [`pipeline_card_fields`].

    Args:
        pipeline ([`TokenSetPipeline`], [`TokenSetImg2ImgPipeline`] or [`TokenBridgePipeline`]).
        repo_id (`str`, defaults to `"<repo_id>"`): the repository named in the usage snippets.
    """
    from .tokenbridge.pipeline_tokenbridge import TokenBridgePipeline

    fields = pipeline_card_fields(pipeline)
    if isinstance(pipeline, TokenBridgePipeline):
        fields["num_levels"] = 2**pipeline.transformer.config.quantizer_bits
        return render_model_card("tokenbridge_pipeline", repo_id=repo_id, **fields)
    return render_model_card("tokenset_pipeline", repo_id=repo_id, **fields)


# ---------------------------------------------------------------------- helpers


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {sorted(_KINDS)}, got {kind!r}.")


def _check_values(kind: str, values: Mapping[str, Any]) -> None:
    if kind == "converted_pipeline" and values["generator_size"] not in PAPER_GFID:
        raise ValueError(f"`generator_size` must be one of {sorted(PAPER_GFID)}, got {values['generator_size']!r}.")
    if kind == "tokenbridge_converted_pipeline" and values["model_size"] not in TOKENBRIDGE_PAPER_FID:
        raise ValueError(f"`model_size` must be one of {sorted(TOKENBRIDGE_PAPER_FID)}, got {values['model_size']!r}.")
    if kind == "tokenizer" and values["source"] not in ("converted", "trained"):
        raise ValueError(f"`source` must be 'converted' or 'trained', got {values['source']!r}.")
    if values.get("metrics") is not None and not isinstance(values["metrics"], Mapping):
        raise ValueError(f"`metrics` must be a dict of metric name -> value, got {type(values['metrics']).__name__}.")
    tags = values.get("tags", ())
    if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError(f"`tags` must be a list of strings, got {tags!r}.")
    label = values.get("example_class_label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, str))):
        raise ValueError(f"`example_class_label` must be a class name (str) or id (int), got {label!r}.")


def _default_datasets(kind: str, values: Mapping[str, Any]) -> list[str] | None:
    """ImageNet for the released models; a trained model names its dataset through the `datasets` field."""
    if kind in ("converted_pipeline", "tokenbridge_converted_pipeline") or (
        kind == "tokenizer" and values["source"] == "converted"
    ):
        return ["ILSVRC/imagenet-1k"]
    return None


def _format_metrics(metrics: Mapping[str, Any] | None) -> dict[str, str] | None:
    if metrics is None:
        return None
    return {str(name): f"{value:.4g}" if isinstance(value, float) else str(value) for name, value in metrics.items()}


def _describe_guidance(guidance_scale) -> str:
    if guidance_scale is None:
        return "none (scale 1)"
    values = [guidance_scale] if isinstance(guidance_scale, (int, float)) else list(guidance_scale)
    if len(values) == 1:
        return f"constant {values[0]:g}"
    return f"interval schedule {[float(v) for v in values]} over equal parts of t"

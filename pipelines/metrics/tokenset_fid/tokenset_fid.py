"""FID, Inception Score and k-NN precision / recall of generated images, as an `evaluate` metric.

Load by path: `evaluate.load("pipelines/metrics/tokenset_fid")` (needs `tokenset_diffusers` importable and, for the
default extractor, `torch-fidelity`). The computation lives in `tokenset_diffusers.metrics`; this module only adapts
it to `evaluate`.
"""

from typing import Optional, Union

import datasets
import evaluate
import numpy as np
import torch

from tokenset_diffusers.metrics import (
    FeatureStatistics,
    extract_features,
    frechet_distance,
    inception_score,
    load_feature_extractor,
    load_statistics,
    precision_recall,
)


_CITATION = """\
@inproceedings{heusel2017gans,
  title={GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium},
  author={Heusel, Martin and Ramsauer, Hubert and Unterthiner, Thomas and Nessler, Bernhard and Hochreiter, Sepp},
  booktitle={NeurIPS}, year={2017}
}
@inproceedings{salimans2016improved,
  title={Improved Techniques for Training GANs},
  author={Salimans, Tim and Goodfellow, Ian and Zaremba, Wojciech and Cheung, Vicki and Radford, Alec and Chen, Xi},
  booktitle={NeurIPS}, year={2016}
}
@inproceedings{kynkaanniemi2019improved,
  title={Improved Precision and Recall Metric for Assessing Generative Models},
  author={Kynk{\\"a}{\\"a}nniemi, Tuomas and Karras, Tero and Laine, Samuli and Lehtinen, Jaakko and Aila, Timo},
  booktitle={NeurIPS}, year={2019}
}
"""

_DESCRIPTION = """\
Fréchet Inception Distance (FID) of generated images against reference images or reference statistics (an `.npz`
with `mu` and `sigma`, such as the ADM ImageNet statistics), Inception Score (IS), and optionally improved
precision / recall. Features come from torch-fidelity's `inception-v3-compat` network (the TensorFlow FID Inception
graph; the extractor of torch-fidelity, torchmetrics and the TokenSet paper), or from any extractor with the same
interface. Statistics and distances are computed in float64 with a stable matrix square root.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `PIL.Image.Image` or uint8 `(height, width, 3)` arrays): the generated images, all the same
        size (the Inception network resizes them to 299x299 itself).
    references (`list` of images, *optional*): reference images (all the same size); FID compares with them.
    reference_statistics (`str` or `dict`, *optional*): instead of `references`, a path to an `.npz` with `mu` and
        `sigma`, or a dict with those arrays.
    feature_extractor (`str` or callable, *optional*, defaults to `"inception"`): `"inception"`, `"module:callable"`,
        `"path/to/file.py:callable"` or an extractor object (uint8 `(B, 3, H, W)` -> features or (features, logits)).
    inception_weights (`str`, *optional*): a local copy of torch-fidelity's Inception weights.
    batch_size (`int`, *optional*, defaults to 50): images per extractor call.
    device (`str`, *optional*): where the extractor runs (default: CUDA if available, else CPU).
    compute_inception_score (`bool`, *optional*, defaults to `True`): needs an extractor that returns logits.
    inception_score_splits (`int`, *optional*, defaults to 10).
    compute_precision_recall (`bool`, *optional*, defaults to `False`): needs `references` (images, not statistics).
    precision_recall_k (`int`, *optional*, defaults to 3): the k of the k-NN manifolds.

Returns:
    `dict` with `fid` (when a reference is given), `inception_score_mean` and `inception_score_std` (when computed),
    `precision` and `recall` (when asked for), `num_predictions` and `num_references`.

Examples:
    >>> fid = evaluate.load("pipelines/metrics/tokenset_fid")
    >>> results = fid.compute(predictions=generated_images, reference_statistics="adm_in256_stats.npz")
    >>> results["fid"], results["inception_score_mean"]
"""


def _features(extractor, images: list, batch_size: int, device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Features of a list of images, converting one batch of images at a time."""
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        batch_features, batch_logits = extract_features(
            extractor, images[start : start + batch_size], batch_size, device
        )
        features.append(batch_features)
        if batch_logits is not None:
            logits.append(batch_logits)
    return torch.cat(features), (torch.cat(logits) if logits else None)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TokensetFid(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image()}),
            reference_urls=[
                "https://arxiv.org/abs/1706.08500",
                "https://github.com/toshas/torch-fidelity",
                "https://arxiv.org/abs/2503.16425",
            ],
        )

    # Reference images are not stored row by row beside the predictions (the two sets differ in size, and with
    # `reference_statistics` there are none): `references` goes straight to `_compute`.
    def compute(self, *, predictions=None, references=None, **kwargs):
        """Computes the metric for the stored and the given `predictions`; `references` are reference images."""
        if references is not None:
            if "reference_images" in kwargs:
                raise ValueError("Pass the reference images once, as `references`.")
            kwargs["reference_images"] = references
        return super().compute(predictions=predictions, **kwargs)

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Stores a batch of generated images (`predictions`); reference images go to `compute`."""
        if references is not None:
            raise ValueError("Pass reference images to `compute(references=...)`, not to `add_batch`.")
        return super().add_batch(predictions=predictions, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Stores one generated image (`prediction`); reference images go to `compute`."""
        if reference is not None:
            raise ValueError("Pass reference images to `compute(references=...)`, not to `add`.")
        return super().add(prediction=prediction, **kwargs)

    def _compute(
        self,
        predictions,
        reference_images: Optional[list] = None,
        reference_statistics: Optional[Union[str, dict]] = None,
        feature_extractor="inception",
        inception_weights: Optional[str] = None,
        batch_size: int = 50,
        device: Optional[str] = None,
        compute_inception_score: bool = True,
        inception_score_splits: int = 10,
        compute_precision_recall: bool = False,
        precision_recall_k: int = 3,
    ):
        if reference_images is not None and reference_statistics is not None:
            raise ValueError("Pass either `references` (images) or `reference_statistics`, not both.")
        if compute_precision_recall and reference_images is None:
            raise ValueError("`compute_precision_recall=True` needs reference images (`references`), not statistics.")
        if len(predictions) < 2:
            raise ValueError(f"`predictions` must hold at least two images, got {len(predictions)}.")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        extractor = load_feature_extractor(feature_extractor, device=device, weights_path=inception_weights)
        features, logits = _features(extractor, list(predictions), batch_size, device)
        results = {}

        # 1. FID against reference images or statistics
        reference_features = None
        if reference_images is not None:
            reference_features, _ = _features(extractor, list(reference_images), batch_size, device)
            reference = FeatureStatistics(reference_features.shape[1]).update(reference_features)
            mu_sigma = (reference.mean, reference.covariance)
        elif isinstance(reference_statistics, dict):
            mu_sigma = (np.asarray(reference_statistics["mu"]), np.asarray(reference_statistics["sigma"]))
        elif reference_statistics is not None:
            mu_sigma = load_statistics(reference_statistics)
        else:
            mu_sigma = None
        if mu_sigma is not None:
            generated = FeatureStatistics(features.shape[1]).update(features)
            results["fid"] = frechet_distance(generated.mean, generated.covariance, *mu_sigma)

        # 2. Inception Score from the extractor's logits
        if compute_inception_score:
            if logits is None:
                raise ValueError(
                    "The feature extractor returns no logits; pass `compute_inception_score=False` or use one that "
                    "returns (features, logits)."
                )
            results["inception_score_mean"], results["inception_score_std"] = inception_score(
                logits, splits=inception_score_splits
            )

        # 3. precision / recall of the k-NN manifolds
        if compute_precision_recall:
            results["precision"], results["recall"] = precision_recall(
                reference_features, features, k=precision_recall_k, device=device
            )
        results["num_predictions"] = len(predictions)
        results["num_references"] = len(reference_images) if reference_images is not None else None
        return results

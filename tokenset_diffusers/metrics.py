"""Image-generation metrics: Fréchet (Inception) Distance, Inception Score, k-NN precision / recall, the streaming
feature statistics they are computed from, and the feature extractors that produce the features.

The numbers follow the protocol of the TokenSet paper (and of torch-fidelity, torchmetrics, ADM and MAR): features
are the 2048-d pool features and the 1008 "unbiased" logits of torch-fidelity's `inception-v3-compat` network
(the TensorFlow FID Inception graph ported to PyTorch), statistics are a float64 mean and an unbiased (`ddof=1`)
covariance, and the Fréchet distance is computed in float64.

A *feature extractor* is any callable (usually an `nn.Module`) that maps a `torch.uint8` tensor of images of shape
`(batch_size, 3, height, width)` to either a `(batch_size, feature_dim)` float tensor of features, or a tuple
`(features, logits)` with `logits` of shape `(batch_size, num_logits)` (needed for the Inception Score) or `None`.
[`load_feature_extractor`] builds the real Inception extractor (`"inception"`) or any stand-in given as
`"module:callable"` / `"path/to/file.py:callable"`.
"""

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch import nn


__all__ = [
    "FeatureStatistics",
    "INCEPTION_WEIGHTS_FILENAME",
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
]

ArrayLike = Union[np.ndarray, torch.Tensor]
FeatureExtractor = Callable[[torch.Tensor], Union[torch.Tensor, tuple]]

# torch-fidelity 0.4 downloads these weights into `torch.hub.get_dir()/checkpoints/` on first use.
INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"


def _to_float64_numpy(name: str, value: ArrayLike) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        _check_real_dtype(name, value.dtype, value.is_complex())
        value = value.detach().cpu().double().numpy()
    if not isinstance(value, np.ndarray):
        raise ValueError(f"`{name}` must be a numpy array or a torch tensor, got {type(value).__name__}.")
    real = (np.issubdtype(value.dtype, np.number) or value.dtype == bool) and not np.iscomplexobj(value)
    _check_real_dtype(name, value.dtype, not real)
    return value.astype(np.float64, copy=False)


def _check_real_dtype(name: str, dtype, rejected: bool) -> None:
    if rejected:
        raise ValueError(f"`{name}` must hold real numbers, got dtype {dtype}.")


def _check_finite(name: str, value: np.ndarray | torch.Tensor) -> None:
    finite = torch.isfinite(value).all() if isinstance(value, torch.Tensor) else np.isfinite(value).all()
    if not finite:
        count = (
            int((~torch.isfinite(value)).sum())
            if isinstance(value, torch.Tensor)
            else int((~np.isfinite(value)).sum())
        )
        raise ValueError(f"`{name}` must be finite, got {count} NaN or infinite entries.")


# ---------------------------------------------------------------------------------------------- Fréchet distance


def _check_gaussian(mu_name: str, mu: np.ndarray, sigma_name: str, sigma: np.ndarray) -> None:
    if mu.ndim != 1:
        raise ValueError(f"`{mu_name}` must be a vector of shape (num_features,), got shape {mu.shape}.")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"`{sigma_name}` must be a square matrix of shape ({mu.shape[0]}, {mu.shape[0]}) matching `{mu_name}`, "
            f"got shape {sigma.shape}."
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"`{mu_name}` and `{sigma_name}` must be finite, got NaN or infinite entries.")
    scale = max(np.abs(sigma).max(initial=0.0), 1e-300)
    if np.abs(sigma - sigma.T).max(initial=0.0) > 1e-6 * scale:
        raise ValueError(
            f"`{sigma_name}` must be a symmetric covariance matrix, got an asymmetry of "
            f"{np.abs(sigma - sigma.T).max():.3g} (largest entry {scale:.3g})."
        )
    eigenvalues = np.linalg.eigvalsh((sigma + sigma.T) / 2)
    if eigenvalues.size and eigenvalues.min() < -1e-6 * max(np.abs(eigenvalues).max(), 1e-300):
        raise ValueError(
            f"`{sigma_name}` must be a positive semi-definite covariance matrix, got an eigenvalue of "
            f"{eigenvalues.min():.3g} (largest {eigenvalues.max():.3g})."
        )


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (rounding negatives clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    r"""
    The Fréchet distance between two Gaussians, `|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`
    (FID when the Gaussians are fitted to Inception features).

    Computed in float64. The trace of `(sigma1 sigma2)^(1/2)` is taken as `tr((A sigma2 A)^(1/2))` with
    `A = sigma1^(1/2)`: the same eigenvalues, but of a symmetric positive semi-definite matrix, so only symmetric
    eigen-decompositions are needed (no complex intermediate results and no `eps` offsets, also for the rank-deficient
    covariances of fewer samples than features).

    Args:
        mu1 (`np.ndarray` or `torch.Tensor` of shape `(num_features,)`): mean of the first set.
        sigma1 (`np.ndarray` or `torch.Tensor` of shape `(num_features, num_features)`): its covariance.
        mu2 (`np.ndarray` or `torch.Tensor` of shape `(num_features,)`): mean of the second set.
        sigma2 (`np.ndarray` or `torch.Tensor` of shape `(num_features, num_features)`): its covariance.

    Returns:
        `float`: the distance (non-negative up to rounding).
    """
    mu1, sigma1 = _to_float64_numpy("mu1", mu1), _to_float64_numpy("sigma1", sigma1)
    mu2, sigma2 = _to_float64_numpy("mu2", mu2), _to_float64_numpy("sigma2", sigma2)
    _check_gaussian("mu1", mu1, "sigma1", sigma1)
    _check_gaussian("mu2", mu2, "sigma2", sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"`mu1` and `mu2` must have the same number of features, got {mu1.shape} and {mu2.shape}.")
    sigma1 = (sigma1 + sigma1.T) / 2
    sigma2 = (sigma2 + sigma2.T) / 2
    # 1. eigenvalues of sigma1 sigma2 = eigenvalues of the symmetric PSD matrix A sigma2 A, A = sigma1^(1/2)
    sqrt_sigma1 = _psd_sqrt(sigma1)
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    product = (product + product.T) / 2
    # 2. tr((sigma1 sigma2)^(1/2)) = sum of the square roots of those eigenvalues
    trace_sqrt_product = np.sqrt(np.clip(np.linalg.eigvalsh(product), 0.0, None)).sum()
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product)


# ---------------------------------------------------------------------------------------------- Inception Score


def inception_score(
    logits: ArrayLike, splits: int = 10, permutation_seed: Optional[int] = 2020
) -> tuple[float, float]:
    r"""
    The Inception Score `exp(E_x KL(p(y|x) || p(y)))`, as mean and standard deviation over `splits` disjoint splits.

    Computed in float64 from logits (softmax over the last dimension). Split `i` holds rows
    `[i * N // splits, (i + 1) * N // splits)`; the standard deviation is the population one (`ddof=0`). Both as in
    torch-fidelity, whose default also permutes the rows first with `np.random.RandomState(2020).permutation(N)`:
    without that, a class-ordered sample set (e.g. 50 images per class, class by class) puts few classes in each split
    and lowers the score.

    Args:
        logits (`np.ndarray` or `torch.Tensor` of shape `(num_samples, num_classes)`):
            Classifier logits, e.g. the Inception extractor's 1008 "unbiased" logits.
        splits (`int`, *optional*, defaults to 10): number of splits, at most `num_samples`.
        permutation_seed (`int` or `None`, *optional*, defaults to 2020):
            Seed of the row permutation applied before splitting (torch-fidelity's default); `None` keeps the order.

    Returns:
        `tuple[float, float]`: `(mean, std)` of the per-split scores.
    """
    logits = _to_float64_numpy("logits", logits)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"`logits` must have shape (num_samples, num_classes), got {logits.shape}.")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"`splits` must be an integer in [1, num_samples={logits.shape[0]}], got {splits!r}.")
    _check_finite("logits", logits)
    num_samples = logits.shape[0]
    if permutation_seed is not None:
        logits = logits[np.random.RandomState(permutation_seed).permutation(num_samples)]
    log_probs = torch.from_numpy(logits).log_softmax(dim=-1)  # (N, K) float64
    scores = []
    for split in range(splits):
        chunk = log_probs[split * num_samples // splits : (split + 1) * num_samples // splits]  # (n, K)
        log_marginal = chunk.logsumexp(dim=0) - np.log(chunk.shape[0])  # (K,) log of the mean of p(y|x)
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=-1)  # (n,)
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------- precision / recall


def _kth_neighbour_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance of every row to its k-th nearest other row (the row itself, at distance 0, is not counted)."""
    radii = [torch.cdist(chunk, features).kthvalue(k + 1, dim=1).values for chunk in features.split(batch_size)]
    return torch.cat(radii)  # (N,)


def _fraction_inside_manifold(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch_size: int):
    """Fraction of `queries` within `radii[j]` of some `support[j]`."""
    inside = [(torch.cdist(chunk, support) <= radii).any(dim=1) for chunk in queries.split(batch_size)]
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    k: int = 3,
    batch_size: int = 1024,
    device: Optional[Union[str, torch.device]] = None,
) -> tuple[float, float]:
    r"""
    Improved precision and recall (Kynkäänniemi et al., 2019) of k-nearest-neighbour manifolds.

    Each set's manifold is the union of balls around its samples, of radius = the distance to the sample's k-th
    nearest neighbour in its own set. Precision is the fraction of fake samples inside the real manifold; recall the
    fraction of real samples inside the fake manifold. Distances are Euclidean, in float32 (as torch-fidelity).

    Args:
        real_features (`np.ndarray` or `torch.Tensor` of shape `(num_real, feature_dim)`): reference features.
        fake_features (`np.ndarray` or `torch.Tensor` of shape `(num_fake, feature_dim)`): generated features.
        k (`int`, *optional*, defaults to 3): the neighbourhood size (torch-fidelity's default); both sets need more
            than `k` samples.
        batch_size (`int`, *optional*, defaults to 1024): rows of a distance matrix computed at once.
        device (`str` or `torch.device`, *optional*): where to compute; defaults to the features' device (CPU for
            numpy arrays).

    Returns:
        `tuple[float, float]`: `(precision, recall)`, each in [0, 1].
    """
    tensors = []
    for name, value in (("real_features", real_features), ("fake_features", fake_features)):
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor) or value.ndim != 2:
            shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
            raise ValueError(f"`{name}` must be an array of shape (num_samples, feature_dim), got {shape}.")
        _check_real_dtype(name, value.dtype, value.is_complex())
        _check_finite(name, value)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < value.shape[0]:
            raise ValueError(f"`k` must be an integer in [1, {value.shape[0]}) for `{name}`, got {k!r}.")
        tensors.append(value.to(device=device if device is not None else value.device, dtype=torch.float32))
    real, fake = tensors
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"`real_features` and `fake_features` must have the same feature_dim, got {real.shape[1]} and "
            f"{fake.shape[1]}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    real_radii = _kth_neighbour_radii(real, k, batch_size)  # (num_real,)
    fake_radii = _kth_neighbour_radii(fake, k, batch_size)  # (num_fake,)
    precision = _fraction_inside_manifold(fake, real, real_radii, batch_size)
    recall = _fraction_inside_manifold(real, fake, fake_radii, batch_size)
    return precision, recall


# ---------------------------------------------------------------------------------------------- feature statistics


class FeatureStatistics:
    r"""
    Streaming mean and covariance of features, in float64, mergeable across processes.

    Keeps the sample count, the mean and the scatter matrix `sum_i (x_i - mean)(x_i - mean)^T`; batches and other
    accumulators are combined with the pairwise update of Chan et al., so any chunking or merge order gives the same
    statistics up to float64 rounding (and the result is as accurate as a two-pass computation).

    Args:
        num_features (`int`): the feature dimension D (2048 for Inception pool features).

    Example:

    ```py
    >>> stats = FeatureStatistics(2048)
    >>> for batch in feature_batches:
    ...     stats.update(batch)
    >>> stats.save("generated.npz")  # mu, sigma: the ADM reference format
    ```
    """

    def __init__(self, num_features: int):
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"`num_features` must be a positive integer, got {num_features!r}.")
        self.num_features = num_features
        self.num_samples = 0
        self._mean = np.zeros(num_features, dtype=np.float64)
        self._scatter = np.zeros((num_features, num_features), dtype=np.float64)

    def _combine(self, count: int, mean: np.ndarray, scatter: np.ndarray) -> "FeatureStatistics":
        total = self.num_samples + count
        if count == 0:
            return self
        delta = mean - self._mean  # (D,)
        self._scatter = self._scatter + scatter + np.outer(delta, delta) * (self.num_samples * count / total)
        self._mean = self._mean + delta * (count / total)
        self.num_samples = total
        return self

    def update(self, features: ArrayLike) -> "FeatureStatistics":
        """Adds a batch of features (`(batch_size, num_features)`, numpy or torch, any float dtype); returns self."""
        features = _to_float64_numpy("features", features)
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"`features` must have shape (batch_size, {self.num_features}), got {features.shape}.")
        if not np.isfinite(features).all():
            raise ValueError("`features` must be finite, got NaN or infinite entries.")
        if features.shape[0] == 0:
            return self
        batch_mean = features.mean(axis=0)  # (D,)
        centered = features - batch_mean  # (n, D)
        return self._combine(features.shape[0], batch_mean, centered.T @ centered)

    def merge(self, other: "FeatureStatistics") -> "FeatureStatistics":
        """Adds the samples summarised by `other` (e.g. another process's accumulator); returns self."""
        if not isinstance(other, FeatureStatistics) or other.num_features != self.num_features:
            got = other.num_features if isinstance(other, FeatureStatistics) else type(other).__name__
            raise ValueError(f"`other` must be a FeatureStatistics with num_features={self.num_features}, got {got}.")
        return self._combine(other.num_samples, other._mean, other._scatter)

    @property
    def mean(self) -> np.ndarray:
        """`np.ndarray` of shape `(num_features,)`, float64: the mean (`mu`)."""
        if self.num_samples < 1:
            raise ValueError("The mean needs at least one sample; call `update` first.")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """`np.ndarray` of shape `(num_features, num_features)`, float64: the unbiased covariance (`sigma`)."""
        if self.num_samples < 2:
            raise ValueError(f"The covariance needs at least two samples, got {self.num_samples}.")
        return self._scatter / (self.num_samples - 1)

    def state_dict(self) -> dict:
        """A picklable summary (`num_samples`, `mean`, `scatter`), e.g. for `accelerate.utils.gather_object`."""
        return {"num_samples": self.num_samples, "mean": self._mean.copy(), "scatter": self._scatter.copy()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "FeatureStatistics":
        """Rebuilds an accumulator from [`state_dict`] (checked: a count >= 0, finite mean and scatter of matching
        shapes)."""
        if not isinstance(state, dict) or not {"num_samples", "mean", "scatter"} <= set(state):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"`state` must be a dict with 'num_samples', 'mean' and 'scatter', got {got}.")
        count, mean, scatter = state["num_samples"], np.asarray(state["mean"]), np.asarray(state["scatter"])
        if isinstance(count, (bool, float)) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"`state['num_samples']` must be an integer >= 0, got {count!r}.")
        mean = _to_float64_numpy("state['mean']", mean)
        scatter = _to_float64_numpy("state['scatter']", scatter)
        if mean.ndim != 1 or mean.shape[0] < 1 or scatter.shape != (mean.shape[0], mean.shape[0]):
            raise ValueError(
                f"`state['mean']` and `state['scatter']` must have shapes (D,) and (D, D), got {mean.shape} and "
                f"{scatter.shape}."
            )
        _check_finite("state['mean']", mean)
        _check_finite("state['scatter']", scatter)
        statistics = cls(int(mean.shape[0]))
        return statistics._combine(int(count), mean, scatter)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes `mu`, `sigma` and `num_samples` to an `.npz` file (see [`save_statistics`])."""
        save_statistics(path, self.mean, self.covariance, num_samples=self.num_samples)


def save_statistics(
    path: Union[str, os.PathLike], mu: ArrayLike, sigma: ArrayLike, num_samples: Optional[int] = None
) -> None:
    """
    Writes Gaussian statistics as an `.npz` file with arrays `mu` `(D,)` and `sigma` `(D, D)` (float64), the format of
    the ADM / MAR reference statistics (e.g. `adm_in256_stats.npz`), plus `num_samples` when given. The file is written
    at exactly `path` (no `.npz` suffix is appended).
    """
    mu, sigma = _to_float64_numpy("mu", mu), _to_float64_numpy("sigma", sigma)
    _check_gaussian("mu", mu, "sigma", sigma)
    arrays = {"mu": mu, "sigma": sigma}
    if num_samples is not None:
        arrays["num_samples"] = np.asarray(num_samples, dtype=np.int64)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def load_statistics(path: Union[str, os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """
    Reads `mu` `(D,)` and `sigma` `(D, D)` (as float64) from an `.npz` file: the ADM / MAR reference statistics or a
    file written by [`save_statistics`] / [`FeatureStatistics.save`]. Other arrays in the file are ignored.
    """
    if not os.path.isfile(path):
        raise ValueError(f"`path` must be an existing .npz file with arrays 'mu' and 'sigma', got {str(path)!r}.")
    with np.load(path) as data:
        missing = [key for key in ("mu", "sigma") if key not in data.files]
        if missing:
            raise ValueError(
                f"The statistics file {str(path)!r} must hold arrays 'mu' and 'sigma'; it lacks {missing} "
                f"(it has {sorted(data.files)})."
            )
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    _check_gaussian("mu", mu, "sigma", sigma)
    return mu, sigma


# ---------------------------------------------------------------------------------------------- feature extractors


def _import_torch_fidelity_inception() -> type:
    """torch-fidelity's `FeatureExtractorInceptionV3`, loaded with torch alone.

    `torch_fidelity/__init__.py` (0.4) imports its CLIP, DINOv2 and VGG extractors, which need torch's separate
    vision package (absent here, and broken beside some torch builds); the Inception module itself needs only torch.
    So, unless the package is already imported, the Inception module and its torch-only helpers are loaded from the
    installed package directory without running the package's `__init__` (the temporary package entry is removed
    again from `sys.modules`).
    """
    if "torch_fidelity" in sys.modules:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        raise ImportError(
            "The Inception feature extractor needs torch-fidelity: `pip install torch-fidelity` (add `--no-deps` "
            "to keep its vision-package dependency out; the Inception network itself needs only torch)."
        )
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["torch_fidelity"] = package
    try:
        module = importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    finally:
        if sys.modules.get("torch_fidelity") is package:
            del sys.modules["torch_fidelity"]
    return module.FeatureExtractorInceptionV3


def inception_weights_cached_path() -> Optional[str]:
    """The path of torch-fidelity's Inception weights in the local torch hub cache, or `None` if not downloaded."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_WEIGHTS_FILENAME)
    return path if os.path.isfile(path) else None


class InceptionFeatureExtractor(nn.Module):
    r"""
    torch-fidelity's `inception-v3-compat` network: the TensorFlow FID Inception-v3 (2015-12-05 graph) in PyTorch,
    the extractor behind torch-fidelity's and torchmetrics' FID and behind the FID numbers of the TokenSet paper.

    Images of any size are resized inside the network to 299x299 with TensorFlow-1.x-compatible bilinear
    interpolation, so pass the generated / reference images as they are (e.g. 256x256).

    Args:
        weights_path (`str`, *optional*):
            A local copy of torch-fidelity's converted weights (`weights-inception-2015-12-05-6726825d.pth`). By
            default torch-fidelity downloads them once into `torch.hub.get_dir()/checkpoints/` and reuses that file.

    Forward: `images` (`torch.uint8` of shape `(batch_size, 3, height, width)`) -> `(features, logits)`: float32
    `(batch_size, 2048)` pool features (for FID, precision/recall) and `(batch_size, 1008)` logits without the
    classifier bias (torch-fidelity's `logits_unbiased`, used for its Inception Score).
    """

    feature_dim = 2048
    num_logits = 1008

    def __init__(self, weights_path: Optional[str] = None):
        super().__init__()
        if weights_path is not None and not os.path.isfile(weights_path):
            raise ValueError(f"`weights_path` must be an existing file, got {weights_path!r}.")
        network_class = _import_torch_fidelity_inception()
        self.network = network_class(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=weights_path
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"`images` must be a uint8 tensor of shape (batch_size, 3, height, width), got {got}.")
        features, logits = self.network(images)  # (B, 2048), (B, 1008)
        return features, logits


def _load_callable(reference: str) -> Callable:
    """`"package.module:name"` or `"path/to/file.py:name"` -> the named object."""
    module_name, _, attribute = reference.rpartition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"`feature_extractor` must be 'inception', 'module:callable' or 'path/to/file.py:callable', got "
            f"{reference!r}."
        )
    if module_name.endswith(".py") or os.path.sep in module_name:
        path = Path(module_name).resolve()
        if not path.is_file():
            raise ValueError(f"`feature_extractor` names the file {module_name!r}, which does not exist.")
        unique_name = f"_tokenset_feature_extractor_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(unique_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique_name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    if not hasattr(module, attribute):
        raise ValueError(f"`feature_extractor`: {module_name!r} has no attribute {attribute!r}.")
    return getattr(module, attribute)


def load_feature_extractor(
    feature_extractor: Union[str, FeatureExtractor] = "inception",
    device: Optional[Union[str, torch.device]] = None,
    weights_path: Optional[str] = None,
) -> FeatureExtractor:
    r"""
    Builds a feature extractor (see the module docstring for the interface).

    Args:
        feature_extractor (`str` or callable, *optional*, defaults to `"inception"`):
            - `"inception"`: [`InceptionFeatureExtractor`] (torch-fidelity's `inception-v3-compat`);
            - `"package.module:build"` or `"path/to/file.py:build"`: `build()` is called without arguments and must
              return the extractor (e.g. `"pipelines/digits_features.py:build"`, or a small fixed network in tests);
            - a callable: used as it is.
        device (`str` or `torch.device`, *optional*): an `nn.Module` extractor is moved there.
        weights_path (`str`, *optional*): local Inception weights, only for `"inception"`.

    Returns:
        The extractor; an `nn.Module` is put in eval mode with gradients disabled.
    """
    if isinstance(feature_extractor, str):
        if feature_extractor == "inception":
            extractor = InceptionFeatureExtractor(weights_path=weights_path)
        else:
            if weights_path is not None:
                raise ValueError("`weights_path` only applies to `feature_extractor='inception'`.")
            extractor = _load_callable(feature_extractor)()
    else:
        extractor = feature_extractor
    if not callable(extractor):
        raise ValueError(f"The feature extractor must be callable, got {type(extractor).__name__}.")
    if isinstance(extractor, nn.Module):
        extractor = extractor.to(device).eval().requires_grad_(False)
    return extractor


def images_to_uint8(images) -> torch.Tensor:
    r"""
    Images -> the extractors' input, a `torch.uint8` tensor of shape `(batch_size, 3, height, width)`.

    Args:
        images: a list of PIL images (converted to RGB) or of `uint8` arrays `(height, width, 3)`; a `uint8` array
            `(batch_size, height, width, 3)`; or a `torch.uint8` tensor `(batch_size, 3, height, width)`. All images
            must have the same size. Float images are refused (convert `[0, 1]` floats with
            `(x * 255).round().to(torch.uint8)`, as PNG saving does).
    """
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"A tensor of `images` must be uint8 of shape (batch_size, 3, height, width), got {images.dtype} "
                f"{tuple(images.shape)}."
            )
        return images
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"An array of `images` must be uint8 of shape (batch_size, height, width, 3), got {images.dtype} "
                f"{images.shape}."
            )
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError(f"`images` must be a non-empty list of images, an array or a tensor, got {type(images)}.")
    arrays = []
    for index, image in enumerate(images):
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"`images[{index}]` must be a PIL image or a uint8 (height, width, 3) array, got {got}.")
        if arrays and image.shape != arrays[0].shape:
            raise ValueError(
                f"All `images` must have the same size, got {arrays[0].shape[:2]} and {image.shape[:2]} (index "
                f"{index}); resize or centre-crop them first."
            )
        arrays.append(image)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)


@torch.inference_mode()
def extract_features(
    extractor: FeatureExtractor,
    images,
    batch_size: int = 50,
    device: Optional[Union[str, torch.device]] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    r"""
    Runs a feature extractor over images in batches.

    Args:
        extractor: see [`load_feature_extractor`].
        images: anything [`images_to_uint8`] accepts.
        batch_size (`int`, *optional*, defaults to 50): images per extractor call.
        device (`str` or `torch.device`, *optional*): where the images are sent (the extractor's device).

    Returns:
        `(features, logits)`: float32 CPU tensors `(num_images, feature_dim)` and `(num_images, num_logits)`, or
        `None` for `logits` when the extractor returns features only.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    images = images_to_uint8(images)  # (N, 3, H, W) uint8
    features, logits = [], []
    for batch in images.split(batch_size):
        output = extractor(batch.to(device))
        batch_features, batch_logits = output if isinstance(output, tuple) else (output, None)
        if not isinstance(batch_features, torch.Tensor) or batch_features.shape[:1] != batch.shape[:1]:
            raise ValueError(
                "The feature extractor must return a (batch_size, feature_dim) tensor or a (features, logits) tuple, "
                f"got {type(batch_features).__name__} for a batch of {batch.shape[0]}."
            )
        features.append(batch_features.reshape(batch.shape[0], -1).float().cpu())
        if batch_logits is not None:
            logits.append(batch_logits.reshape(batch.shape[0], -1).float().cpu())
    if logits and len(logits) != len(features):
        raise ValueError("The feature extractor returned logits for some batches only.")
    return torch.cat(features), (torch.cat(logits) if logits else None)

"""Metrics: Fréchet distance vs scipy's sqrtm, Inception Score vs a direct computation, streaming statistics vs numpy,
precision/recall vs brute force, the feature-extractor interface, the Inception and digits extractors, and the
`evaluate` module loaded by path."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import torch
from PIL import Image

from tokenset_diffusers.metrics import (
    FeatureStatistics,
    InceptionFeatureExtractor,
    extract_features,
    frechet_distance,
    images_to_uint8,
    inception_score,
    inception_weights_cached_path,
    load_feature_extractor,
    load_statistics,
    precision_recall,
    save_statistics,
)


ROOT = Path(__file__).resolve().parents[2]

STAND_IN_EXTRACTOR = '''
import torch
import torch.nn.functional as F
from torch import nn


class FixedRandomConvNet(nn.Module):
    """A fixed random conv net: uint8 (B, 3, H, W) -> (features (B, 32), logits (B, 10))."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("conv", torch.randn(8, 3, 3, 3, generator=generator) / 3)
        self.register_buffer("head", torch.randn(10, 32, generator=generator) / 3)

    def forward(self, images):
        hidden = torch.tanh(F.conv2d(images.float() / 127.5 - 1, self.conv, stride=2))  # (B, 8, h, w)
        features = F.adaptive_avg_pool2d(hidden, 2).flatten(1)  # (B, 32)
        return features, features @ self.head.T  # (B, 32), (B, 10)


def build():
    return FixedRandomConvNet()
'''


@pytest.fixture(scope="module")
def stand_in_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("extractor") / "stand_in_extractor.py"
    path.write_text(STAND_IN_EXTRACTOR)
    return str(path)


def random_images(count: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def scipy_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy's general matrix square root (as pytorch-fid / ADM compute it)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def gaussian_from_samples(rng, num_samples, dim, scale=1.0, shift=0.0):
    samples = rng.standard_normal((num_samples, dim)) @ rng.standard_normal((dim, dim)) * scale + shift
    return samples.mean(0), np.cov(samples, rowvar=False)


# ---------------------------------------------------------------------------------------------- Fréchet distance


@pytest.mark.parametrize("dim, num_samples", [(8, 500), (64, 1000), (100, 1000)])
def test_frechet_distance_matches_scipy_sqrtm(dim, num_samples):
    rng = np.random.default_rng(dim)
    mu1, sigma1 = gaussian_from_samples(rng, num_samples, dim)
    mu2, sigma2 = gaussian_from_samples(rng, num_samples, dim, scale=1.3, shift=0.2)
    expected = scipy_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10, abs=1e-9)


@pytest.mark.parametrize("kind", ["fewer_samples_than_features", "tiny_eigenvalues", "one_exactly_singular_direction"])
def test_frechet_distance_matches_scipy_sqrtm_nearly_singular(kind):
    rng = np.random.default_rng(7)
    dim = 64
    if kind == "fewer_samples_than_features":  # rank 39 covariances, as from 40 images of 2048-d features
        mu1, sigma1 = gaussian_from_samples(rng, 40, dim)
        mu2, sigma2 = gaussian_from_samples(rng, 40, dim, shift=0.5)
    else:
        eigenvalues = np.logspace(-12, 0, dim)
        if kind == "one_exactly_singular_direction":
            eigenvalues[0] = 0.0
        basis1, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        basis2, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        sigma1 = (basis1 * eigenvalues) @ basis1.T
        sigma2 = (basis2 * eigenvalues[::-1]) @ basis2.T
        sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    expected = scipy_frechet_distance(mu1, sigma1, mu2, sigma2)
    result = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert np.isfinite(result)
    assert result == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_frechet_distance_closed_forms():
    # 1-d: (mu1 - mu2)^2 + (s1 - s2)^2 for standard deviations s
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(
        4.0 + 1.0
    )
    # commuting (diagonal) covariances: sum of the per-axis 1-d distances
    var1, var2 = np.array([1.0, 2.0, 0.5]), np.array([0.25, 2.0, 3.0])
    expected = np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2) + 3.0
    result = frechet_distance(np.zeros(3), np.diag(var1), np.ones(3), np.diag(var2))
    assert result == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_is_zero_for_equal_and_symmetric():
    rng = np.random.default_rng(1)
    mu1, sigma1 = gaussian_from_samples(rng, 300, 32)
    mu2, sigma2 = gaussian_from_samples(rng, 300, 32, shift=1.0)
    assert abs(frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-9 * np.trace(sigma1)
    forward, backward = frechet_distance(mu1, sigma1, mu2, sigma2), frechet_distance(mu2, sigma2, mu1, sigma1)
    assert forward == pytest.approx(backward, rel=1e-10)
    as_tensors = frechet_distance(*(torch.from_numpy(x).float() for x in (mu1, sigma1, mu2, sigma2)))
    assert as_tensors == pytest.approx(forward, rel=1e-4)


def test_frechet_distance_rejects_bad_inputs():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(mu, np.eye(4), mu, sigma)
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(mu, sigma + np.triu(np.ones((3, 3)), 1), mu, sigma)
    with pytest.raises(ValueError, match="same number of features"):
        frechet_distance(mu, sigma, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="finite"):
        frechet_distance(np.array([np.nan, 0, 0]), sigma, mu, sigma)


# ---------------------------------------------------------------------------------------------- Inception Score


def direct_inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """IS written out with numpy: exp(mean_x KL(p(y|x) || mean_x p(y|x))) per split; mean and population std.
    Split i holds rows [i * N // splits, (i + 1) * N // splits), torch-fidelity's rule."""
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    scores = []
    bounds = [i * len(probs) // splits for i in range(splits + 1)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        p = probs[start:stop]
        marginal = p.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


@pytest.mark.parametrize("num_samples, splits", [(100, 10), (103, 10), (50, 1), (37, 4)])
def test_inception_score_matches_direct_computation(num_samples, splits):
    logits = np.random.default_rng(num_samples).standard_normal((num_samples, 20)) * 3
    mean, std = inception_score(logits, splits=splits, permutation_seed=None)
    expected_mean, expected_std = direct_inception_score(logits, splits)
    assert mean == pytest.approx(expected_mean, rel=1e-12)
    assert std == pytest.approx(expected_std, rel=1e-9, abs=1e-12)


def test_inception_score_permutes_like_torch_fidelity():
    logits = np.random.default_rng(3).standard_normal((60, 12)) * 2
    permuted = logits[np.random.RandomState(2020).permutation(60)]
    assert inception_score(logits, splits=6) == pytest.approx(direct_inception_score(permuted, 6), rel=1e-12)
    assert inception_score(torch.from_numpy(logits).float(), splits=6) == pytest.approx(
        direct_inception_score(permuted, 6), rel=1e-5
    )


def test_inception_score_limits():
    # confident, balanced predictions over K classes: IS = K; identical predictions: IS = 1
    num_classes = 8
    confident = np.eye(num_classes)[np.arange(80) % num_classes] * 60.0
    mean, std = inception_score(confident, splits=10, permutation_seed=None)
    assert mean == pytest.approx(num_classes, rel=1e-6) and std < 1e-6
    same = np.tile(np.random.default_rng(0).standard_normal(num_classes), (40, 1))
    assert inception_score(same, splits=4)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_rejects_bad_splits():
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((5, 3)), splits=6)
    with pytest.raises(ValueError, match="logits"):
        inception_score(np.zeros(5))


# ---------------------------------------------------------------------------------------------- statistics


def test_feature_statistics_match_numpy_and_ignore_chunking():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((257, 16)) * 3 + 10  # an offset mean, as post-ReLU features have
    whole = FeatureStatistics(16).update(features)
    np.testing.assert_allclose(whole.mean, features.mean(0), rtol=1e-13)
    np.testing.assert_allclose(whole.covariance, np.cov(features, rowvar=False), rtol=1e-11, atol=1e-12)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(features))
        cuts = np.sort(np.random.default_rng(seed + 10).choice(np.arange(1, 257), size=6, replace=False))
        chunks = np.split(features[order], cuts)
        # half the chunks streamed into one accumulator, half into others merged afterwards in reverse
        streamed = FeatureStatistics(16)
        for chunk in chunks[::2]:
            streamed.update(chunk)
        for chunk in reversed(chunks[1::2]):
            streamed.merge(FeatureStatistics(16).update(chunk))
        np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-13)
        np.testing.assert_allclose(streamed.covariance, whole.covariance, rtol=1e-11, atol=1e-12)
        assert streamed.num_samples == 257


def test_feature_statistics_state_dict_and_file_round_trip(tmp_path):
    features = np.random.default_rng(1).standard_normal((50, 6))
    statistics = FeatureStatistics(6).update(features[:20]).update(torch.from_numpy(features[20:]))
    rebuilt = FeatureStatistics.from_state_dict(statistics.state_dict())
    assert rebuilt.num_samples == 50
    np.testing.assert_array_equal(rebuilt.covariance, statistics.covariance)
    path = tmp_path / "stats.npz"
    statistics.save(path)
    with np.load(path) as data:  # the ADM reference format: plain arrays mu and sigma
        np.testing.assert_array_equal(data["mu"], statistics.mean)
        np.testing.assert_array_equal(data["sigma"], statistics.covariance)
        assert int(data["num_samples"]) == 50
    mu, sigma = load_statistics(path)
    np.testing.assert_array_equal(sigma, statistics.covariance)


def test_statistics_files_are_validated(tmp_path):
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="sigma"):
        load_statistics(tmp_path / "no_sigma.npz")
    with pytest.raises(ValueError, match="existing"):
        load_statistics(tmp_path / "missing.npz")
    save_statistics(tmp_path / "adm_like", np.zeros(2), np.eye(2))  # no suffix appended
    assert (tmp_path / "adm_like").is_file()
    with pytest.raises(ValueError, match="two samples"):
        _ = FeatureStatistics(3).update(np.zeros((1, 3))).covariance
    with pytest.raises(ValueError, match="batch_size, 3"):
        FeatureStatistics(3).update(np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------- precision / recall


def brute_force_precision_recall(real, fake, k):
    def radii(x):
        return np.sort(scipy.spatial.distance.cdist(x, x), axis=1)[:, k]

    real_radii, fake_radii = radii(real), radii(fake)
    precision = (scipy.spatial.distance.cdist(fake, real) <= real_radii[None, :]).any(1).mean()
    recall = (scipy.spatial.distance.cdist(real, fake) <= fake_radii[None, :]).any(1).mean()
    return precision, recall


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_brute_force(k):
    rng = np.random.default_rng(k)
    real = rng.standard_normal((120, 5))
    fake = rng.standard_normal((90, 5)) * 0.7 + 0.8
    expected = brute_force_precision_recall(real, fake, k)
    assert precision_recall(real, fake, k=k, batch_size=32) == pytest.approx(expected, abs=1e-12)
    same = precision_recall(real, real.copy(), k=k)
    assert same == (1.0, 1.0)
    far = precision_recall(real, real + 1000.0, k=k)
    assert far == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------- extractors


def test_images_to_uint8_accepts_the_documented_forms():
    arrays = random_images(3)
    expected = torch.from_numpy(arrays).permute(0, 3, 1, 2)
    for form in (arrays, list(arrays), [Image.fromarray(a) for a in arrays], expected.clone()):
        assert torch.equal(images_to_uint8(form), expected)
    with pytest.raises(ValueError, match="uint8"):
        images_to_uint8(expected.float() / 255)
    with pytest.raises(ValueError, match="same size"):
        images_to_uint8([arrays[0], arrays[0][:8]])


def test_extract_features_is_batch_size_invariant(stand_in_path):
    extractor = load_feature_extractor(f"{stand_in_path}:build")
    images = random_images(7)
    features, logits = extract_features(extractor, images, batch_size=7)
    assert features.shape == (7, 32) and logits.shape == (7, 10)
    for batch_size in (1, 3):
        other_features, other_logits = extract_features(extractor, images, batch_size=batch_size)
        torch.testing.assert_close(other_features, features, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(other_logits, logits, rtol=1e-6, atol=1e-6)
    features_only, no_logits = extract_features(lambda x: extractor(x)[0], images)
    assert no_logits is None and torch.equal(features_only, features)


def test_load_feature_extractor_by_module_name(stand_in_path, monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(stand_in_path))
    extractor = load_feature_extractor("stand_in_extractor:build")
    assert not extractor.training
    with pytest.raises(ValueError, match="inception"):
        load_feature_extractor("no_colon_here")
    with pytest.raises(ValueError, match="has no attribute"):
        load_feature_extractor("stand_in_extractor:missing")
    with pytest.raises(ValueError, match="does not exist"):
        load_feature_extractor("does/not/exist.py:build")


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is None, reason="torch-fidelity is not installed")
def test_inception_network_runs_without_torchvision(tmp_path, monkeypatch):
    """torch-fidelity's Inception module loads (also without torchvision) and maps uint8 images of any size to 2048
    features and 1008 logits. Random weights: its constructor always loads a state dict, so it gets an empty file and
    `load_state_dict` is skipped; no download."""
    from tokenset_diffusers.metrics import _import_torch_fidelity_inception

    network_class = _import_torch_fidelity_inception()
    if importlib.util.find_spec("torchvision") is None:
        assert "torchvision" not in sys.modules
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    monkeypatch.setattr(network_class, "load_state_dict", lambda self, state_dict: None)
    torch.manual_seed(0)
    extractor = InceptionFeatureExtractor(weights_path=str(empty))
    features, logits = extractor(torch.from_numpy(random_images(1, size=64)).permute(0, 3, 1, 2))
    assert features.shape == (1, 2048) and logits.shape == (1, 1008)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.zeros(1, 3, 8, 8))


@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is None or inception_weights_cached_path() is None,
    reason="torch-fidelity or its Inception weights (torch hub cache: checkpoints/"
    "weights-inception-2015-12-05-6726825d.pth) are not available, and tests do not download",
)
def test_real_inception_extractor_feature_shape():
    extractor = load_feature_extractor("inception")
    features, logits = extract_features(extractor, random_images(3, size=256), batch_size=3)
    assert features.shape == (3, 2048) and logits.shape == (3, 1008)
    assert (features >= 0).all()  # pool features after ReLU


# ---------------------------------------------------------------------------------------------- digits extractor


def load_digits_features_module():
    spec = importlib.util.spec_from_file_location("digits_features", ROOT / "pipelines" / "digits_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_extractor_separates_real_from_corrupted_digits():
    digits_features = load_digits_features_module()
    extractor = load_feature_extractor(f"{ROOT / 'pipelines' / 'digits_features.py'}:build")
    assert digits_features.held_out_accuracy(extractor, image_size=32) > 0.93
    held_out, _ = digits_features.digits_split("held_out")
    train, _ = digits_features.digits_split("train")
    assert len(held_out) + len(train) == 1797 and len(held_out) == 449

    def statistics(images_8x8, image_size=32):
        features, logits = extract_features(extractor, digits_features.render_digits(images_8x8, image_size), 500)
        assert features.shape[1] == 64 and logits.shape[1] == 10
        return FeatureStatistics(64).update(features)

    reference = statistics(held_out)
    real = statistics(train, image_size=24)  # another rendering size, same digits distribution
    shuffled = statistics(np.random.default_rng(0).permuted(train.reshape(len(train), -1), axis=1).reshape(-1, 8, 8))
    fid_real = frechet_distance(real.mean, real.covariance, reference.mean, reference.covariance)
    fid_shuffled = frechet_distance(shuffled.mean, shuffled.covariance, reference.mean, reference.covariance)
    assert fid_real * 10 < fid_shuffled


# ---------------------------------------------------------------------------------------------- evaluate module


def test_evaluate_module_loads_by_path_and_returns_a_dict(stand_in_path, tmp_path):
    import evaluate

    metric = evaluate.load(str(ROOT / "pipelines" / "metrics" / "tokenset_fid"), keep_in_memory=True)
    predictions = [Image.fromarray(image) for image in random_images(12, seed=1)]
    references = list(random_images(10, seed=2) // 2)
    extractor = f"{stand_in_path}:build"
    results = metric.compute(
        predictions=predictions,
        references=references,
        feature_extractor=extractor,
        inception_score_splits=3,
        compute_precision_recall=True,
    )
    assert isinstance(results, dict)
    assert set(results) == {
        "fid",
        "inception_score_mean",
        "inception_score_std",
        "precision",
        "recall",
        "num_predictions",
        "num_references",
    }

    # the same numbers by a direct route
    model = load_feature_extractor(extractor)
    features, logits = extract_features(model, predictions)
    reference_features, _ = extract_features(model, references)
    mu1, sigma1 = features.double().mean(0).numpy(), np.cov(features.double().numpy(), rowvar=False)
    mu2, sigma2 = (
        reference_features.double().mean(0).numpy(),
        np.cov(reference_features.double().numpy(), rowvar=False),
    )
    assert results["fid"] == pytest.approx(scipy_frechet_distance(mu1, sigma1, mu2, sigma2), rel=1e-6)
    assert (results["inception_score_mean"], results["inception_score_std"]) == pytest.approx(
        inception_score(logits, splits=3), rel=1e-9
    )
    assert (results["precision"], results["recall"]) == pytest.approx(
        brute_force_precision_recall(reference_features.numpy(), features.numpy(), 3), abs=1e-12
    )

    # streamed predictions against a statistics file
    save_statistics(tmp_path / "reference.npz", mu2, sigma2)
    for start in range(0, 12, 5):
        metric.add_batch(predictions=predictions[start : start + 5])
    from_file = metric.compute(
        reference_statistics=str(tmp_path / "reference.npz"),
        feature_extractor=extractor,
        compute_inception_score=False,
    )
    assert from_file["fid"] == pytest.approx(results["fid"], rel=1e-9)
    assert "inception_score_mean" not in from_file
    with pytest.raises(ValueError, match="compute"):
        metric.add_batch(predictions=predictions[:2], references=references[:2])

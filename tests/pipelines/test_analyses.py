"""The paper's tokenizer analyses as scripts (pipelines/analyses/): their pieces against direct computations, and each
script end to end on the tiny tokenizer (an image folder) and the bundled digits tokenizer (a `datasets` split)."""

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch
from helpers.scripts import load_script

from conversion.tokenizer_conversion import convert_tokenizer
from tokenset_diffusers import preprocess_images, tokens_to_counts
from tokenset_diffusers.metrics import extract_features, frechet_distance, load_feature_extractor


token_order = load_script("pipelines/analyses/token_order.py")
noise_robustness = load_script("pipelines/analyses/noise_robustness.py")
shared_tokens = load_script("pipelines/analyses/shared_tokens.py")

STAND_IN_EXTRACTOR = '''
import torch
import torch.nn.functional as F


def build():
    """uint8 (B, 3, H, W) -> (B, 12): the mean colour of each image quarter, and its square (a fixed extractor)."""
    def extract(images):
        pooled = F.adaptive_avg_pool2d(images.float() / 255, 2).flatten(1)  # (B, 12)
        return torch.cat([pooled, pooled.square()], dim=1)
    return extract
'''


# ---------------------------------------------------------------- the pieces


@pytest.mark.parametrize("snr_db", noise_robustness.PAPER_SNR_DB)
def test_noise_has_the_asked_snr(snr_db):
    """Against the direct computation: 10 log10(sum x^2 / sum n^2) of the drawn noise, per image."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 96, 96, generator=generator)
    images[1] *= 0.2  # a dark image: the noise follows the image's own power
    noisy = noise_robustness.add_noise_at_snr(images, snr_db, torch.Generator().manual_seed(1))
    noise = (noisy - images).double()
    measured = 10 * torch.log10(images.double().pow(2).sum((1, 2, 3)) / noise.pow(2).sum((1, 2, 3)))
    assert measured.tolist() == pytest.approx([snr_db] * 4, abs=0.1)
    std = noise_robustness.noise_std_for_snr(images, snr_db)
    direct = [
        math.sqrt(float(np.mean(image.numpy().astype(np.float64) ** 2)) / 10 ** (snr_db / 10)) for image in images
    ]
    assert std.tolist() == pytest.approx(direct, rel=1e-5)
    assert noise.std().item() == pytest.approx(float(np.sqrt(np.mean(np.square(direct)))), rel=0.02)


def test_kept_fractions_count_the_multiset_and_the_positions():
    clean = torch.tensor([[1, 2, 2, 3], [0, 0, 0, 0]])
    noisy = torch.tensor([[2, 1, 2, 5], [0, 0, 0, 0]])
    set_overlap, sequence_overlap = noise_robustness.kept_fractions(clean, noisy, codebook_size=6)
    assert set_overlap.tolist() == [0.75, 1.0]  # {1, 2, 2} of {1, 2, 2, 3}
    assert sequence_overlap.tolist() == [0.25, 1.0]  # only position 2 agrees


def test_token_orders_are_the_same_multisets():
    token_ids = torch.randint(0, 50, (5, 12), generator=torch.Generator().manual_seed(0))
    orders = token_order.token_orders(token_ids, torch.Generator().manual_seed(1))
    assert list(orders) == list(token_order.ORDERS)
    counts = tokens_to_counts(token_ids, 50)
    for name, ids in orders.items():
        torch.testing.assert_close(tokens_to_counts(ids, 50), counts, rtol=0, atol=0, msg=name)
    assert (orders["ascending"].diff(dim=-1) >= 0).all() and (orders["descending"].diff(dim=-1) <= 0).all()
    torch.testing.assert_close(orders["reversed"], token_ids.flip(-1))
    assert not torch.equal(orders["shuffled"], token_ids)


def test_shared_token_helpers():
    counts = torch.tensor([[3, 0, 1], [1, 4, 0], [5, 2, 0], [3, 3, 0]])
    assert shared_tokens.images_sharing_token(counts, 0, 3).tolist() == [2, 0, 3]
    assert shared_tokens.images_sharing_token(counts, 2, 3).tolist() == []
    assert shared_tokens.most_shared_tokens(counts, 3, 5) == [0, 1]
    assert shared_tokens.most_shared_tokens(counts, 1, 2) == [0, 1]


# ---------------------------------------------------------------- the scripts on the tiny tokenizer


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory, tokenizer_original_state_dict):
    root = tmp_path_factory.mktemp("analyses")
    tokenizer = convert_tokenizer(tokenizer_original_state_dict, num_attention_heads=4).eval()
    tokenizer.save_pretrained(root / "tokenizer")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for index in range(10):  # assorted sizes, smooth enough to have structure
        size = (int(rng.integers(32, 48)), int(rng.integers(32, 48)))
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        PIL.Image.fromarray(small).resize(size, PIL.Image.BILINEAR).save(root / "images" / f"{index}.png")
    (root / "extractor.py").write_text(STAND_IN_EXTRACTOR)
    return {"root": root, "tokenizer": tokenizer}


def _common(assets, output_dir) -> list[str]:
    root = assets["root"]
    return [
        "--tokenizer",
        str(root / "tokenizer"),
        "--dataset",
        str(root / "images"),
        "--batch_size",
        "4",
        "--device",
        "cpu",
        "--output_dir",
        str(output_dir),
    ]


def test_token_order_script_on_the_tiny_tokenizer(tiny_assets, tmp_path):
    extractor = f"{tiny_assets['root'] / 'extractor.py'}:build"
    result = token_order.main([*_common(tiny_assets, tmp_path), "--feature_extractor", extractor])
    stored = json.loads((tmp_path / "token_order.json").read_text())
    assert stored["orders"] == result["orders"] and stored["num_images"] == 10
    assert PIL.Image.open(tmp_path / "token_order.png").size[0] > 6 * 64
    # The rFID of the encoder order, by a second route: every image at once, features, Frechet distance.
    tokenizer = tiny_assets["tokenizer"]
    paths = sorted((tiny_assets["root"] / "images").glob("*.png"))
    pixel_values = preprocess_images([PIL.Image.open(p) for p in paths], tokenizer.config.image_size)
    with torch.no_grad():
        reconstructions = tokenizer.decode(tokenizer.encode(pixel_values).token_ids)
    to_uint8 = lambda x: ((x.clamp(-1, 1) / 2 + 0.5) * 255).round().to(torch.uint8)  # noqa: E731
    extract = load_feature_extractor(extractor)
    real, _ = extract_features(extract, to_uint8(pixel_values))
    fake, _ = extract_features(extract, to_uint8(reconstructions))
    real, fake = real.double().numpy(), fake.double().numpy()
    direct = frechet_distance(fake.mean(0), np.cov(fake, rowvar=False), real.mean(0), np.cov(real, rowvar=False))
    assert result["orders"]["original"]["rfid"] == pytest.approx(direct, rel=1e-6, abs=1e-9)
    for row in result["orders"].values():  # the decoder sees a set
        assert row["rfid"] == pytest.approx(direct, rel=1e-4, abs=1e-6)
        assert row["max_abs_difference_from_original_order"] < 1e-4


def test_noise_robustness_script_on_the_tiny_tokenizer(tiny_assets, tmp_path):
    result = noise_robustness.main([*_common(tiny_assets, tmp_path), "--snr_db", "60", "20", "-5"])
    rows = result["snr_db"]
    assert list(rows) == ["60", "20", "-5"]
    for row in rows.values():
        assert 0 <= row["sequence_overlap_percent"] <= row["set_overlap_percent"] <= 100
    assert rows["60"]["set_overlap_percent"] >= rows["-5"]["set_overlap_percent"]
    assert rows["20"]["measured_snr_db_before_clipping"] == pytest.approx(20, abs=0.3)
    assert json.loads((tmp_path / "noise_robustness.json").read_text())["snr_db"] == rows
    assert (tmp_path / "noise_robustness.png").is_file()


def test_shared_tokens_script_on_the_tiny_tokenizer(tiny_assets, tmp_path):
    result = shared_tokens.main([*_common(tiny_assets, tmp_path), "--min_count", "2", "--images_per_token", "3"])
    tokenizer = tiny_assets["tokenizer"]
    paths = sorted((tiny_assets["root"] / "images").glob("*.png"))
    with torch.no_grad():
        pixel_values = preprocess_images([PIL.Image.open(p) for p in paths], tokenizer.config.image_size)
        counts = tokenizer.encode_to_counts(pixel_values)
    assert result["tokens"], "some token occurs twice in some image"
    for token, entry in result["tokens"].items():
        holders = sorted(np.flatnonzero(counts[:, int(token)].numpy() >= 2).tolist())
        assert sorted(entry["image_indices"]) == holders
        assert entry["counts"] == sorted(entry["counts"], reverse=True)
        assert "majority_label" not in entry  # an image folder has no classes
    assert (tmp_path / "shared_tokens.png").is_file()


# ---------------------------------------------------------------- the bundled digits tokenizer on a datasets split


@pytest.fixture(scope="module")
def digits_dataset(tmp_path_factory):
    prepare = load_script("training/prepare_digits.py")
    folder = tmp_path_factory.mktemp("digits") / "digits"
    prepare.build_digits_dataset(image_size=16).save_to_disk(str(folder))
    return folder


def test_analyses_on_the_bundled_tokenizer(digits_dataset, tmp_path):
    """No `--tokenizer`: the scripts use the bundled one."""
    common = ["--dataset", str(digits_dataset), "--dataset_split", "test", "--max_images", "60", "--device", "cpu"]
    table_2 = noise_robustness.main([*common, "--output_dir", str(tmp_path / "noise")])["snr_db"]
    kept = [table_2[snr]["set_overlap_percent"] for snr in ("40", "30", "20", "10", "1")]
    assert kept == sorted(kept, reverse=True) and kept[0] > 90  # the paper's trend: less noise, more tokens kept
    assert table_2["1"]["set_overlap_percent"] > table_2["1"]["sequence_overlap_percent"]
    figure_6 = shared_tokens.main([*common, "--output_dir", str(tmp_path / "shared"), "--num_tokens_shown", "3"])
    labels = np.asarray(load_script("training/prepare_digits.py").build_digits_dataset(image_size=16)["test"]["label"])
    for entry in figure_6["tokens"].values():
        majority = np.bincount(labels[:60][entry["image_indices"]]).argmax()
        assert entry["majority_label"] == majority

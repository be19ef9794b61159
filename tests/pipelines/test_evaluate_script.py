"""pipelines/evaluate_generation.py end to end with a tiny real pipeline (random weights) and a small fixed stand-in feature
extractor: 1 vs 2 processes, resume, the numbers by a direct route, rFID, reference statistics, launch checks."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from tokenset_diffusers import (
    FSDDScheduler,
    TokenSetPipeline,
    TokenSetTransformer1DModel,
    TokenSetVQVAE,
    TokenSetVQVAEConfig,
)
from tokenset_diffusers.image_processing import center_crop_arr, preprocess_images
from tokenset_diffusers.metrics import extract_features, inception_score, load_feature_extractor


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "pipelines" / "evaluate_generation.py"
C, M, K, IMAGE_SIZE = 32, 8, 4, 16
IMAGES_PER_CLASS = 3

STAND_IN_EXTRACTOR = '''
import torch
import torch.nn.functional as F
from torch import nn


class FixedRandomConvNet(nn.Module):
    """A fixed random conv net: uint8 (B, 3, H, W) -> (features (B, 12), logits (B, 5))."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("conv", torch.randn(3, 3, 3, 3, generator=generator) / 3)
        self.register_buffer("head", torch.randn(5, 12, generator=generator))

    def forward(self, images):
        hidden = torch.tanh(F.conv2d(images.float() / 127.5 - 1, self.conv, stride=2))  # (B, 3, h, w)
        features = F.adaptive_avg_pool2d(hidden, 2).flatten(1)  # (B, 12)
        return features, features @ self.head.T  # (B, 12), (B, 5)


def build():
    return FixedRandomConvNet()
'''


def load_script():
    spec = importlib.util.spec_from_file_location("tokenset_evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny real pipeline saved to disk, the stand-in extractor file and a folder of reference images."""
    root = tmp_path_factory.mktemp("evaluate_assets")
    torch.manual_seed(0)
    tokenizer_config = TokenSetVQVAEConfig(
        image_size=IMAGE_SIZE,
        patch_size=4,
        encoder_hidden_size=32,
        encoder_num_hidden_layers=1,
        encoder_num_attention_heads=2,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_ffn_hidden_size=64,
        codebook_size=C,
        num_tokens=M,
        code_dim=8,
        z_channels=16,
        pixel_decoder_hidden_channels=8,
        pixel_decoder_channel_mult=[1, 2, 2],
        num_res_blocks=1,
        norm_num_groups=4,
    )
    transformer = TokenSetTransformer1DModel(
        codebook_size=C, num_tokens=M, num_classes=K, num_layers=1, num_attention_heads=2, attention_head_dim=8
    )
    pipeline = TokenSetPipeline(TokenSetVQVAE(tokenizer_config).eval(), transformer.eval(), FSDDScheduler(C, M))
    pipeline.save_pretrained(root / "pipeline")
    (root / "stand_in_extractor.py").write_text(STAND_IN_EXTRACTOR)
    rng = np.random.default_rng(0)
    (root / "reference").mkdir()
    for index in range(10):  # assorted sizes: the script centre-crops them to the pipeline's image size
        size = (int(rng.integers(16, 40)), int(rng.integers(16, 40)))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "reference" / f"{index}.png")
    return {
        "pipeline": str(root / "pipeline"),
        "extractor": f"{root / 'stand_in_extractor.py'}:build",
        "reference": str(root / "reference"),
    }


def gfid_args(assets, output_dir, **overrides) -> list[str]:
    options = {
        "mode": "gfid",
        "pipeline": assets["pipeline"],
        "reference": assets["reference"],
        "feature_extractor": assets["extractor"],
        "output_dir": str(output_dir),
        "num_images_per_class": IMAGES_PER_CLASS,
        "num_inference_steps": 3,
        "generation_batch_size": 2,
        "feature_batch_size": 2,
        "inception_score_splits": 2,
        "seed": 7,
        **overrides,
    }
    return [item for key, value in options.items() for item in (f"--{key}", str(value))]


def run_in_process(script, args: list[str]) -> dict:
    """`main` in this process on one thread, as each process of a multi-process launch runs (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return script.main(args)
    finally:
        torch.set_num_threads(threads)


def read_results(output_dir, mode="gfid") -> dict:
    return json.loads((Path(output_dir) / f"{mode}_results.json").read_text())


@pytest.fixture(scope="module")
def gfid_run(script, assets, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("gfid_one_process")
    run_in_process(script, gfid_args(assets, output_dir))
    return output_dir


def scipy_fid(features1: np.ndarray, features2: np.ndarray) -> float:
    mu1, mu2 = features1.mean(0), features2.mean(0)
    sigma1, sigma2 = np.cov(features1, rowvar=False), np.cov(features2, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def folder_features(extractor, folder, batch_size: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Features of a folder's images, centre-cropped, in the given batches (float32 results depend on them)."""
    crops = [center_crop_arr(Image.open(path).convert("RGB"), image_size) for path in sorted(Path(folder).glob("*"))]
    return extract_features(extractor, crops, batch_size=batch_size)[0].double().numpy()


# ---------------------------------------------------------------------------------------------- gfid


def test_gfid_is_the_same_for_one_and_two_processes(assets, gfid_run, tmp_path):
    output_dir = tmp_path / "two_processes"
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",  # without it, accelerate 1.x does not join CPU processes (see README)
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"]
    command += ["29517", str(SCRIPT), *gfid_args(assets, output_dir)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]

    one, two = read_results(gfid_run), read_results(output_dir)
    assert one["num_processes"] == 1
    assert two["num_processes"] == 2 and two["distributed_type"] == "DistributedType.MULTI_CPU"
    for key in ("inception_score_mean", "inception_score_std", "num_images"):
        assert two[key] == one[key], key
    # the generated statistics are read back in class order: bit-identical; the reference folder's statistics are
    # merged across processes: equal up to float64 rounding
    with np.load(gfid_run / "generated_statistics.npz") as a, np.load(output_dir / "generated_statistics.npz") as b:
        np.testing.assert_array_equal(a["mu"], b["mu"])
        np.testing.assert_array_equal(a["sigma"], b["sigma"])
    with np.load(gfid_run / "reference_statistics.npz") as a, np.load(output_dir / "reference_statistics.npz") as b:
        np.testing.assert_allclose(a["sigma"], b["sigma"], rtol=1e-12, atol=1e-15)
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-12)
    for class_id in range(K):
        name = f"class_{class_id:05d}.npz"
        with np.load(gfid_run / "class_features" / name) as a, np.load(output_dir / "class_features" / name) as b:
            np.testing.assert_array_equal(a["features"], b["features"])
            np.testing.assert_array_equal(a["logits"], b["logits"])
    one_images, two_images = sorted((gfid_run / "images").iterdir()), sorted((output_dir / "images").iterdir())
    assert [p.name for p in one_images] == [p.name for p in two_images] and len(one_images) == K * IMAGES_PER_CLASS
    for a, b in zip(one_images, two_images):
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_gfid_images_and_numbers_by_a_direct_route(script, assets, gfid_run):
    results = read_results(gfid_run)
    assert results["num_images"] == K * IMAGES_PER_CLASS and results["num_classes_generated"] == K
    assert results["settings"]["num_images_per_class"] == IMAGES_PER_CLASS and "total" in results["timing_seconds"]

    # image i of class c is the pipeline's output for that image alone (the run generated two at a time)
    pipeline = TokenSetPipeline.from_pretrained(assets["pipeline"])
    pipeline.set_progress_bar_config(disable=True)
    for class_id, index in [(0, 0), (2, 1), (3, 2)]:
        generator = script.image_generator(7, class_id, index, torch.device("cpu"))
        expected = pipeline([class_id], num_inference_steps=3, generator=[generator]).images[0]
        saved = Image.open(gfid_run / "images" / f"{class_id:05d}_{index:05d}.png")
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(expected))

    # FID and IS from the saved PNGs and the reference folder, through numpy / scipy
    extractor = load_feature_extractor(assets["extractor"])
    per_class = [
        extract_features(extractor, [Image.open(p) for p in sorted((gfid_run / "images").glob(f"{c:05d}_*.png"))], 2)
        for c in range(K)
    ]  # class by class, in feature batches of 2 like the run, so that the float32 features are the same
    features, logits = torch.cat([f for f, _ in per_class]), torch.cat([g for _, g in per_class])
    reference = folder_features(extractor, assets["reference"], batch_size=2)
    assert results["fid"] == pytest.approx(scipy_fid(features.double().numpy(), reference), rel=1e-8)
    mean, std = inception_score(logits, splits=2)
    assert (results["inception_score_mean"], results["inception_score_std"]) == pytest.approx((mean, std), rel=1e-9)
    with np.load(gfid_run / "reference_statistics.npz") as saved:
        np.testing.assert_allclose(saved["sigma"], np.cov(reference, rowvar=False), rtol=1e-10, atol=1e-12)


def test_gfid_resume_skips_finished_classes(script, assets, gfid_run, tmp_path):
    output_dir = tmp_path / "resumed"
    shutil.copytree(gfid_run, output_dir)
    (output_dir / "class_features" / "class_00001.npz").unlink()
    for path in (output_dir / "images").glob("00001_*.png"):
        path.unlink()
    untouched = {p.name: p.stat().st_mtime_ns for p in (output_dir / "class_features").iterdir()}

    run_in_process(script, gfid_args(assets, output_dir))
    results = read_results(output_dir)
    assert results["num_classes_skipped"] == K - 1 and results["num_classes_generated"] == 1
    for name, mtime in untouched.items():
        assert (output_dir / "class_features" / name).stat().st_mtime_ns == mtime, name
    with np.load(gfid_run / "class_features" / "class_00001.npz") as a:
        with np.load(output_dir / "class_features" / "class_00001.npz") as b:
            np.testing.assert_array_equal(a["features"], b["features"])
    assert len(list((output_dir / "images").glob("00001_*.png"))) == IMAGES_PER_CLASS
    assert results["fid"] == read_results(gfid_run)["fid"]

    run_in_process(script, gfid_args(assets, output_dir))  # everything finished: nothing is generated
    assert read_results(output_dir)["num_classes_generated"] == 0

    with pytest.raises(ValueError, match="other settings"):
        run_in_process(script, gfid_args(assets, output_dir, num_inference_steps=4))


def test_gfid_reference_npz_and_class_subset(script, assets, gfid_run, tmp_path):
    args = gfid_args(assets, tmp_path / "subset", reference=str(gfid_run / "reference_statistics.npz"))
    run_in_process(script, [*args, "--class_ids", "2", "0", "--exact_sum", "--no_save_images"])
    results = read_results(tmp_path / "subset")
    assert results["num_classes"] == 2 and results["num_images"] == 2 * IMAGES_PER_CLASS
    assert results["settings"]["exact_sum"] is True
    assert not (tmp_path / "subset" / "images").exists()
    assert sorted(p.name for p in (tmp_path / "subset" / "class_features").iterdir()) == [
        "class_00000.npz",
        "class_00002.npz",
    ]
    with pytest.raises(ValueError, match="class_ids"):
        run_in_process(script, [*gfid_args(assets, tmp_path / "bad"), "--class_ids", str(K)])


# ---------------------------------------------------------------------------------------------- rfid, reference


def test_rfid_matches_a_direct_computation(script, assets, tmp_path):
    args = [
        "--mode", "rfid",
        "--tokenizer", assets["pipeline"],
        "--tokenizer_subfolder", "image_tokenizer",
        "--dataset", assets["reference"],
        "--feature_extractor", assets["extractor"],
        "--feature_batch_size", "4",
        "--output_dir", str(tmp_path / "rfid"),
    ]  # fmt: skip
    run_in_process(script, args)
    results = read_results(tmp_path / "rfid", mode="rfid")
    assert results["num_images"] == 10

    tokenizer = TokenSetVQVAE.from_pretrained(assets["pipeline"], subfolder="image_tokenizer").eval()
    paths = sorted(Path(assets["reference"]).glob("*"))
    crops = [center_crop_arr(Image.open(path).convert("RGB"), IMAGE_SIZE) for path in paths]
    with torch.no_grad():
        pixel_values = preprocess_images(crops, IMAGE_SIZE)
        decoded = tokenizer.decode(tokenizer.encode(pixel_values).token_ids)
    reconstructions = (((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)).permute(0, 2, 3, 1).numpy()
    saved = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "rfid" / "reconstructions").iterdir())]
    np.testing.assert_array_equal(np.stack(saved), reconstructions)

    extractor = load_feature_extractor(assets["extractor"])
    original_features = extract_features(extractor, crops, batch_size=4)[0].double().numpy()
    reconstruction_features = extract_features(extractor, reconstructions, batch_size=4)[0].double().numpy()
    assert results["rfid"] == pytest.approx(scipy_fid(reconstruction_features, original_features), rel=1e-8)


def test_compute_reference_from_a_folder_and_a_saved_dataset(script, assets, tmp_path):
    import datasets

    images = [Image.open(path).convert("RGB") for path in sorted(Path(assets["reference"]).glob("*"))]
    saved_dir = tmp_path / "saved_dataset"
    datasets.Dataset.from_dict({"picture": images}).cast_column("picture", datasets.Image()).save_to_disk(saved_dir)
    sources = {
        "folder": ["--dataset", assets["reference"]],
        "saved": ["--dataset", str(saved_dir), "--image_column", "picture", "--max_images", "7"],
    }
    for name, source in sources.items():
        args = ["--mode", "compute_reference", "--output_dir", str(tmp_path / name), "--image_size", "12"]
        args += ["--feature_extractor", assets["extractor"], "--feature_batch_size", "3"]
        run_in_process(script, [*args, "--statistics_output", str(tmp_path / f"{name}.npz"), *source])

    extractor = load_feature_extractor(assets["extractor"])
    crops = [center_crop_arr(image, 12) for image in images]
    for name, count in (("folder", 10), ("saved", 7)):
        features = extract_features(extractor, crops[:count], batch_size=3)[0].double().numpy()  # the run's batches
        with np.load(tmp_path / f"{name}.npz") as data:
            assert int(data["num_samples"]) == count
            np.testing.assert_allclose(data["mu"], features.mean(0), rtol=1e-12)
            np.testing.assert_allclose(data["sigma"], np.cov(features, rowvar=False), rtol=1e-10, atol=1e-13)
        assert read_results(tmp_path / name, mode="compute_reference")["num_images"] == count


# ---------------------------------------------------------------------------------------------- launch and arguments


def test_unjoined_processes_are_refused(script, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what `accelerate launch --multi_gpu` sets without ACCELERATE_USE_CPU
    with pytest.raises(ValueError, match="ACCELERATE_USE_CPU"):
        script.main(gfid_args(assets, tmp_path / "unjoined"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "gfid"], "needs --pipeline, --reference"),
        (["--mode", "rfid", "--dataset", "x"], "needs --tokenizer"),
        (["--mode", "compute_reference"], "needs --dataset"),
        (["--mode", "compute_reference", "--dataset", "x", "--feature_batch_size", "0"], "feature_batch_size"),
    ],
)
def test_arguments_are_validated(script, tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        script.main([*args, "--output_dir", str(tmp_path)])

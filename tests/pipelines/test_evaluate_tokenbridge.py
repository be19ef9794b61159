"""`pipelines/evaluate_generation.py --mode gfid` on a TokenBridge pipeline folder: the same protocol as for TokenSet (per-image
seeds, per-class resume), the images checked by a direct route."""

import numpy as np
import pytest
import torch
from helpers.tokenbridge import single_thread, tiny_transformer, tiny_vae  # noqa: F401
from PIL import Image
from test_evaluate_script import STAND_IN_EXTRACTOR, load_script, read_results, run_in_process

from tokenset_diffusers import MaskedARScheduler, TokenBridgePipeline


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_tokenbridge")
    pipeline = TokenBridgePipeline(tiny_transformer(), tiny_vae(), MaskedARScheduler(num_tokens=16),
                                   default_num_inference_steps=4, default_temperature=0.9)  # fmt: skip
    pipeline.save_pretrained(root / "pipeline")
    (root / "extractor.py").write_text(STAND_IN_EXTRACTOR)
    rng = np.random.default_rng(0)
    (root / "reference").mkdir()
    for index in range(8):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / "reference" / f"{index}.png")
    return root


def gfid_args(assets, output_dir, **overrides) -> list[str]:
    options = {
        "mode": "gfid", "pipeline": assets / "pipeline", "reference": assets / "reference",
        "feature_extractor": f"{assets / 'extractor.py'}:build", "output_dir": output_dir, "num_images_per_class": 3,
        "generation_batch_size": 2, "feature_batch_size": 2, "inception_score_splits": 2, "seed": 7,
        "guidance_scale": 2.0, **overrides,
    }  # fmt: skip
    return [*(item for key, value in options.items() for item in (f"--{key}", str(value))), "--class_ids", "2", "5"]


def test_gfid_of_a_tokenbridge_folder(script, assets, tmp_path):
    output_dir = tmp_path / "gfid"
    run_in_process(script, gfid_args(assets, output_dir))
    results = read_results(output_dir)
    assert results["num_images"] == 6 and results["num_classes"] == 2 and np.isfinite(results["fid"])
    settings = (output_dir / "gfid_settings.json").read_text()
    assert '"num_inference_steps": 4' in settings and '"temperature": 0.9' in settings  # the stored defaults
    # Direct route: image i of class c from the generator seeded by (seed, c, i), the pipeline called alone.
    pipeline = TokenBridgePipeline.from_pretrained(assets / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    for class_id in (2, 5):
        generators = [script.image_generator(7, class_id, i, torch.device("cpu")) for i in range(3)]
        direct = pipeline([class_id] * 3, guidance_scale=2.0, generator=generators).images
        for index, image in enumerate(direct):
            saved = np.asarray(Image.open(output_dir / "images" / f"{class_id:05d}_{index:05d}.png"))
            assert np.array_equal(saved, np.asarray(image))
    # A second run in the same folder skips the finished classes; other settings are refused.
    run_in_process(script, gfid_args(assets, output_dir))
    assert read_results(output_dir)["num_classes_skipped"] == 2
    with pytest.raises(ValueError, match="other settings"):
        run_in_process(script, gfid_args(assets, output_dir, temperature=0.5))


def test_tokenset_only_options_are_refused(script, assets, tmp_path):
    with pytest.raises(ValueError, match="exact_sum"):
        run_in_process(script, [*gfid_args(assets, tmp_path / "a"), "--exact_sum"])
    args = gfid_args(assets, tmp_path / "b")
    at = args.index("--guidance_scale")
    with pytest.raises(ValueError, match="one `--guidance_scale`"):
        run_in_process(script, [*args[: at + 1], "4", "50", "55", *args[at + 2 :]])

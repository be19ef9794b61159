"""Size limits (`LIMITS` in tokenset_diffusers/utils/validation.py): a small request or file that would exhaust memory
or hang is refused with a `ValueError` naming the argument.

Each case runs in a subprocess under `RLIMIT_AS` (3 GiB of address space; importing torch and loading a bundled
pipeline take about 1.1 GiB), so that a regression fails the test instead of taking the machine down.
"""

import base64
import io
import os
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from tokenset_diffusers.image_processing import center_crop_arr
from tokenset_diffusers.tokenbridge.quantization_tokenbridge import TokenBridgeQuantizer
from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler
from tokenset_diffusers.tokenset.set_interpolation import interpolation_weights
from tokenset_diffusers.utils.validation import LIMIT_DEFAULTS, LIMITS


ROOT = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 3 * 2**30
REFUSED = "REFUSED: "

PREAMBLE = """
import json, shutil, tempfile
from pathlib import Path
import torch
from tokenset_diffusers import bundled_pipeline_path

def copy_with_config(source, config_file, **changes):
    folder = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(source, folder)
    config = json.loads((folder / config_file).read_text())
    config.update(changes)
    (folder / config_file).write_text(json.dumps(config))
    return folder
"""

# (case, code that must raise ValueError, the argument the message must name)
CASES = [
    (
        "fsdd_steps",
        "from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler\nFSDDScheduler().set_timesteps(10**7)",
        "num_inference_steps",
    ),
    (
        "masked_ar_steps",
        "from tokenset_diffusers.tokenbridge.scheduling_masked_ar import MaskedARScheduler\n"
        "MaskedARScheduler(num_tokens=10**8).set_timesteps(10**7)",
        "num_inference_steps",
    ),
    (
        "quantizer_bits",
        "from tokenset_diffusers.tokenbridge.quantization_tokenbridge import TokenBridgeQuantizer\n"
        "TokenBridgeQuantizer(bits=16)",
        "bits",
    ),
    (
        "interpolation_points",
        "from tokenset_diffusers.tokenset.set_interpolation import interpolation_weights\n"
        "interpolation_weights(10**9)",
        "num_points",
    ),
    (
        "interpolation_weights",
        "from tokenset_diffusers.tokenset.set_interpolation import interpolate_counts\n"
        "counts = torch.full((64, 4096), 4, dtype=torch.long)\n"
        "interpolate_counts(counts, counts.flip(-1), [0.5] * 10**6)",
        "weights",
    ),
    (
        "tokenbridge_unconditional_images",
        "from tokenset_diffusers.tokenbridge.pipeline_tokenbridge import TokenBridgePipeline\n"
        "pipe = TokenBridgePipeline.from_pretrained(bundled_pipeline_path('tokenbridge-digits'))\n"
        "pipe(class_labels=None, num_images=10**9, num_inference_steps=1)",
        "num_images",
    ),
    (
        "tokenbridge_images_per_class",
        "from tokenset_diffusers.tokenbridge.pipeline_tokenbridge import TokenBridgePipeline\n"
        "pipe = TokenBridgePipeline.from_pretrained(bundled_pipeline_path('tokenbridge-digits'))\n"
        "pipe(class_labels=[0, 1], num_images_per_class=150_000, num_inference_steps=1, batch_size=1, output_type='latent')",
        "num_images_per_class",
    ),
    (
        "tokenset_images_per_class",
        "from tokenset_diffusers import TokenSetPipeline\n"
        "pipe = TokenSetPipeline.from_pretrained(bundled_pipeline_path())\n"
        "pipe(class_labels=[0, 1], num_images_per_class=150_000, num_inference_steps=1, batch_size=1, output_type='latent')",
        "num_images_per_class",
    ),
    (
        "centre_crop_thin_image",
        "import io, PIL.Image\n"
        "from tokenset_diffusers.image_processing import preprocess_images\n"
        "buffer = io.BytesIO()\n"
        "PIL.Image.new('RGB', (1, 1_000_000)).save(buffer, format='PNG')\n"
        "assert len(buffer.getvalue()) < 10_000, len(buffer.getvalue())  # a small file\n"
        "preprocess_images(PIL.Image.open(buffer), 256)",
        "pil_image",
    ),
    (
        "tokenset_pipeline_num_classes",
        "from tokenset_diffusers import TokenSetPipeline\n"
        "folder = copy_with_config(bundled_pipeline_path(), 'transformer/config.json', num_classes=10**9)\n"
        "TokenSetPipeline.from_pretrained(folder)",
        "transformer/config.json",
    ),
    (
        "tokenset_tokenizer_hidden_size",
        "from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE\n"
        "folder = copy_with_config(bundled_pipeline_path(), 'image_tokenizer/config.json', encoder_hidden_size=10**6)\n"
        "TokenSetVQVAE.from_pretrained(folder / 'image_tokenizer')",
        "image_tokenizer/config.json",
    ),
    (
        "tokenbridge_transformer_sample_size",
        "from tokenset_diffusers.tokenbridge.transformer_tokenbridge import TokenBridgeTransformer2DModel\n"
        "folder = copy_with_config(bundled_pipeline_path('tokenbridge-digits'), 'transformer/config.json', "
        "sample_size=10**5)\n"
        "TokenBridgeTransformer2DModel.from_pretrained(folder / 'transformer')",
        "transformer/config.json",
    ),
    (
        "tokenbridge_pipeline_vae_channels",
        "from tokenset_diffusers.tokenbridge.pipeline_tokenbridge import TokenBridgePipeline\n"
        "folder = copy_with_config(bundled_pipeline_path('tokenbridge-digits'), 'vae/config.json', "
        "block_out_channels=[10**5, 10**5])\n"
        "TokenBridgePipeline.from_pretrained(folder)",
        "vae/config.json",
    ),
]


def _limit_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_limited(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter under `RLIMIT_AS`; a `ValueError` is printed as `REFUSED: <message>`."""
    script = (
        PREAMBLE
        + "try:\n"
        + textwrap.indent(code, "    ")
        + f"\nexcept ValueError as error:\n    print({REFUSED!r} + str(error))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        preexec_fn=_limit_address_space,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("case, code, argument", CASES, ids=[case[0] for case in CASES])
def test_a_request_over_a_limit_is_refused_before_allocating(case, code, argument):
    result = run_limited(code)
    assert result.returncode == 0, result.stderr[-3000:]
    refused = [line for line in result.stdout.splitlines() if line.startswith(REFUSED)]
    assert refused, f"no ValueError; stdout: {result.stdout[-2000:]}"
    # The argument, or for a config the path of its file, in backticks.
    assert re.search(rf"`([^`]*/)?{re.escape(argument)}`", refused[0]), refused[0]
    assert "TOKENSET_DIFFUSERS_MAX_" in refused[0], refused[0]


def test_a_limit_is_raised_by_its_environment_variable():
    code = (
        "from tokenset_diffusers.tokenset.scheduling_fsdd import FSDDScheduler\n"
        "scheduler = FSDDScheduler()\n"
        "scheduler.set_timesteps(50)\n"
        "print('STEPS', len(scheduler.timesteps))\n"
        "scheduler.set_timesteps(51)"
    )
    result = run_limited(code, env={"TOKENSET_DIFFUSERS_MAX_INFERENCE_STEPS": "50"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "STEPS 50" in result.stdout
    assert f"{REFUSED}`num_inference_steps`=51 exceeds the limit inference_steps=50" in result.stdout


def test_a_limit_is_raised_at_run_time(monkeypatch):
    monkeypatch.setitem(LIMITS, "interpolation_points", 3)
    assert len(interpolation_weights(3)) == 3
    with pytest.raises(ValueError, match="`num_points`=4 exceeds the limit interpolation_points=3"):
        interpolation_weights(4)


def test_normal_sizes_still_work():
    # The defaults leave room above what the released models use.
    assert LIMIT_DEFAULTS["inference_steps"] >= 1000 and LIMIT_DEFAULTS["quantizer_bits"] >= 6
    scheduler = FSDDScheduler()
    scheduler.set_timesteps(LIMIT_DEFAULTS["inference_steps"])
    assert len(scheduler.timesteps) == LIMIT_DEFAULTS["inference_steps"]
    assert TokenBridgeQuantizer(bits=LIMIT_DEFAULTS["quantizer_bits"]).num_levels == 2**12
    # A 4000 x 3000 photo crops to the square; a thin one at the limit too.
    assert center_crop_arr(PIL.Image.new("RGB", (4000, 3000)), 256).size == (256, 256)
    assert center_crop_arr(PIL.Image.new("L", (256 * 1000, 256)), 256).size == (256, 256)


def test_the_bundled_pipelines_load_and_generate_under_the_limits():
    code = (
        "from tokenset_diffusers import TokenSetPipeline\n"
        "from tokenset_diffusers.tokenbridge.pipeline_tokenbridge import TokenBridgePipeline\n"
        "tokenset = TokenSetPipeline.from_pretrained(bundled_pipeline_path())\n"
        "images = tokenset(class_labels=[3], num_inference_steps=2, output_type='np').images\n"
        "print('TOKENSET', images.shape)\n"
        "bridge = TokenBridgePipeline.from_pretrained(bundled_pipeline_path('tokenbridge-digits'))\n"
        "images = bridge(class_labels=None, num_images=2, num_inference_steps=2, output_type='np').images\n"
        "print('TOKENBRIDGE', images.shape)"
    )
    result = run_limited(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert REFUSED not in result.stdout, result.stdout
    assert "TOKENSET (1," in result.stdout and "TOKENBRIDGE (2," in result.stdout, result.stdout


def _png_data_url(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_the_space_checks_data_url_uploads_before_decoding():
    gr = pytest.importorskip("gradio")
    from gradio.data_classes import ImageData

    from pipelines.space import app

    image = app.guard_uploads(gr.Image(type="pil"))
    # A 12,000 x 12,000 px (144 MP) black image: a small request, far above the Space's pixel limit.
    bomb = _png_data_url(PIL.Image.new("1", (12_000, 12_000)))
    assert len(bomb) < 400_000
    with pytest.raises(gr.Error, match="megapixels"):
        image.preprocess(ImageData(url=bomb))
    with pytest.raises(gr.Error, match="base64"):
        image.preprocess(ImageData(url="data:image/png;base64,not base64!"))
    small = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    decoded = image.preprocess(ImageData(url=_png_data_url(PIL.Image.fromarray(small))))
    assert np.array_equal(np.asarray(decoded.convert("RGB")), small)

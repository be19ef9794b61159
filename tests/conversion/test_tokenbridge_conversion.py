"""TokenBridge conversion: the KL-16 VAE against the original (fixtures and the released manifest), and the command
line end to end on original-format checkpoints (EMA selection, strict loading, weights_only)."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from helpers.tokenbridge import (
    TINY_HEADS,
    load_fixture,
    load_json,
    single_thread,  # noqa: F401 (autouse)
    tiny_vae,
)

import conversion.convert_tokenbridge_to_diffusers as script
from conversion.checkpoint_loading import load_checkpoint
from conversion.vae_conversion import KL16_SCALING_FACTOR, convert_vae, infer_vae_config
from tokenset_diffusers import TokenBridgePipeline


ROOT = Path(__file__).resolve().parents[2]

SCRIPT = ROOT / "conversion" / "convert_tokenbridge_to_diffusers.py"
# docs/tokenbridge.md#vae: the released KL-16 as a diffusers AutoencoderKL.
KL16_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "sample_size": 256,
    "down_block_types": ["DownEncoderBlock2D"] * 4 + ["AttnDownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"] * 5,
    "block_out_channels": [128, 128, 256, 256, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "mid_block_add_attention": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "scaling_factor": 0.2325,
}


@pytest.fixture(scope="module")
def vae_io():
    return load_fixture("vae_tiny.io.safetensors")


def test_tiny_vae_config(vae_io):
    config = infer_vae_config(load_fixture("vae_tiny.original.safetensors"), sample_size=32)
    expected = load_json("vae_tiny.diffusers_config.json")
    assert config == {key: value for key, value in expected.items() if key != "_class_name"}


@torch.no_grad()
def test_tiny_vae_matches_the_original(vae_io):
    vae = tiny_vae()
    posterior = vae.encode(vae_io["pixel_values"]).latent_dist
    torch.testing.assert_close(posterior.mean, vae_io["mean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(posterior.logvar, vae_io["logvar"], atol=1e-5, rtol=0)
    sample = posterior.mean + posterior.std * vae_io["sample_noise"]
    torch.testing.assert_close(sample, vae_io["posterior_sample"], atol=1e-5, rtol=0)
    torch.testing.assert_close(vae.decode(vae_io["mean"]).sample, vae_io["decoded_mean"], atol=1e-5, rtol=0)


def test_released_vae_converts_strictly_on_meta():
    manifest = load_json("vae_kl16_manifest.json")
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in manifest["state_dict"].items()}
    assert infer_vae_config(state_dict) == KL16_CONFIG
    vae = convert_vae(state_dict)
    assert sum(p.numel() for p in vae.parameters()) == manifest["num_params"] == 66_456_019


def test_vae_conversion_is_strict():
    state_dict = dict(load_fixture("vae_tiny.original.safetensors"))
    state_dict["encoder.down.0.block.0.extra.weight"] = torch.zeros(1)
    del state_dict["decoder.conv_out.bias"]
    with pytest.raises(ValueError, match=r"missing \['decoder\.conv_out\.bias'\].*extra"):
        convert_vae(state_dict, sample_size=32)


def _write_checkpoints(folder: Path) -> tuple[Path, Path, dict]:
    """An original-format `checkpoint-last.pth` whose EMA holds the fixture weights and whose raw weights differ, and
    a `kl16.ckpt`-format VAE file."""
    original = load_fixture("tokenbridge_tiny.original.safetensors")
    buffers = {"channel_mask", "reconstruction_values", "boundaries"}
    raw = {key: value if key in buffers else value + 0.05 for key, value in original.items()}
    ema = {key: value for key, value in original.items() if key not in buffers}
    checkpoint = {
        "model": raw,
        "model_ema": ema,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0]}]},
        "epoch": 399,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
    }
    generator_path, vae_path = folder / "checkpoint-last.pth", folder / "kl16.ckpt"
    torch.save(checkpoint, generator_path)
    torch.save({"model": load_fixture("vae_tiny.original.safetensors")}, vae_path)
    return generator_path, vae_path, original


def test_command_line_end_to_end(tmp_path):
    generator_path, vae_path, _ = _write_checkpoints(tmp_path)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({str(i): f"digit {i}" for i in range(10)}))
    arguments = [
        "--checkpoint", str(generator_path), "--vae_checkpoint", str(vae_path), "--num_attention_heads", "4",
        "--id2label", str(names),
    ]  # fmt: skip
    # The command line as a user runs it (default weights: EMA), and the raw weights in this process.
    environment = {"PYTHONPATH": str(ROOT), "PATH": "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), *arguments, "--output_dir", str(tmp_path / "ema")]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT, env=environment)
    script.main([*arguments, "--output_dir", str(tmp_path / "model"), "--weights", "model"])
    io = load_fixture("tokenbridge_tiny.io.safetensors")
    run = {"num_inference_steps": 4, "guidance_scale": 3.0, "temperature": 0.0, "output_type": "indices"}
    indices = {}
    for weights in ("ema", "model"):
        pipeline = TokenBridgePipeline.from_pretrained(tmp_path / weights)
        pipeline.set_progress_bar_config(disable=True)
        assert pipeline.config.id2label[3] == "digit 3"
        assert pipeline.vae.config.scaling_factor == KL16_SCALING_FACTOR
        assert (tmp_path / weights / "README.md").is_file()
        indices[weights] = pipeline(
            [1, 3, 5, 7], orders=io["greedy_cfg3_linear_iter4.orders"], **run
        ).indices  # fmt: skip
    # EMA weights by default: the original's evaluation weights, whose recorded run is reproduced.
    assert torch.equal(indices["ema"], io["greedy_cfg3_linear_iter4.indices"])
    assert not torch.equal(indices["model"], indices["ema"])


def test_transformer_only_without_a_vae(tmp_path):
    generator_path, _, _ = _write_checkpoints(tmp_path)
    folder = script.main(
        ["--checkpoint", str(generator_path), "--output_dir", str(tmp_path / "out"), "--num_attention_heads", "4",
         "--head_num_attention_heads", "4", "--id2label", "none"]
    )  # fmt: skip
    assert folder == tmp_path / "out" / "transformer" and (folder / "config.json").is_file()


@pytest.mark.parametrize("size, fid, temperature", [("L", "1.76", "0.96"), ("H", "1.55", "0.91")])
def test_released_card_renders_and_its_snippet_runs(tmp_path, size, fid, temperature, monkeypatch):
    from helpers.tokenbridge import tiny_transformer

    from tokenset_diffusers import MaskedARScheduler

    pipeline = TokenBridgePipeline(
        tiny_transformer(), tiny_vae(), MaskedARScheduler(num_tokens=16), id2label={207 % 10: "golden retriever"},
        default_num_inference_steps=2,
    )  # fmt: skip
    card = script.model_card(pipeline, "org/tokenbridge", size)
    text = str(card)
    assert f"TokenBridge-{size}" in text and f"**{fid}**" in text and temperature in text and "269,472" in text
    assert card.data.datasets == ["ILSVRC/imagenet-1k"] and "arxiv:2503.16430" in card.data.tags
    # the usage snippet runs against a local folder (with the tiny model's class names and 2 steps)
    pipeline.save_pretrained(tmp_path / "folder")
    monkeypatch.chdir(tmp_path)
    code = text.split("```python")[1].split("```")[0].replace("org/tokenbridge", str(tmp_path / "folder"))
    code = code.replace("num_inference_steps=64", "num_inference_steps=2")
    exec(compile(code, "<card>", "exec"), {})  # noqa: S102
    assert (tmp_path / "sample.png").is_file()
    assert "TokenBridge pipeline" in str(script.model_card(pipeline, "org/x", None))  # other sizes: a plain card


def test_checkpoints_are_read_with_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "hook": functools.partial(print, "never run")}, path)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_checkpoint(str(path))


def test_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        script.parse_args(["--checkpoint", str(tmp_path / "none.pth"), "--output_dir", str(tmp_path)])
    assert error.value.code == 2 and "no such checkpoint file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one VAE source at most
        script.parse_args(
            ["--checkpoint", "c", "--output_dir", "o", "--vae_checkpoint", "a", "--vae_name_or_path", "b"]
        )


def test_diffusers_vae_folder_gets_the_scaling_factor(tmp_path):
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.18215)
    vae.save_pretrained(tmp_path / "vae")
    loaded = script.load_vae(vae_name_or_path=str(tmp_path / "vae"))
    assert isinstance(loaded, AutoencoderKL) and loaded.config.scaling_factor == KL16_SCALING_FACTOR


def test_channel_head_heads_are_read_from_the_checkpoint():
    """The channel head normalises q and k per head: its head count is read from the norm's size (the tiny model has
    4 heads of width 8; the released ones 8 of 128, see test_released_checkpoints_convert_strictly_on_meta)."""
    from conversion.tokenbridge_conversion import infer_tokenbridge_config

    state_dict = load_fixture("tokenbridge_tiny.original.safetensors")
    config = infer_tokenbridge_config(state_dict, num_attention_heads=4)
    head_width = state_dict["condition_proj.weight"].shape[0]
    assert (
        config["head_num_attention_heads"] == head_width // state_dict["channel_blocks.0.attn.q_norm.weight"].shape[0]
    )
    assert config["head_num_attention_heads"] == TINY_HEADS["head_num_attention_heads"]
    assert infer_tokenbridge_config(state_dict, num_attention_heads=4, head_num_attention_heads=4) == config


def test_head_counts_that_cannot_be_read_stop_and_name_the_flag(tmp_path):
    from conversion.tokenbridge_conversion import infer_tokenbridge_config

    state_dict = load_fixture("tokenbridge_tiny.original.safetensors")
    # not a released size: the encoder/decoder head count is stored nowhere
    with pytest.raises(ValueError, match="pass it with `--num_attention_heads`"):
        infer_tokenbridge_config(state_dict)
    # a channel head count the per-head norms contradict
    with pytest.raises(ValueError, match=r"`--head_num_attention_heads`.* is 2, but .* give 32 / 8 = 4 heads"):
        infer_tokenbridge_config(state_dict, num_attention_heads=4, head_num_attention_heads=2)
    without_norm = {key: value for key, value in state_dict.items() if "q_norm" not in key}
    with pytest.raises(ValueError, match="pass it with `--head_num_attention_heads`"):
        infer_tokenbridge_config(without_norm, num_attention_heads=4)
    # the command line stops with that line, before writing anything
    generator_path, _, _ = _write_checkpoints(tmp_path)
    with pytest.raises(SystemExit, match="--num_attention_heads") as stopped:
        script.main(["--checkpoint", str(generator_path), "--output_dir", str(tmp_path / "out"), "--id2label", "none"])
    assert "\n" not in str(stopped.value) and not (tmp_path / "out").exists()

"""What diffusers users reach for, on tiny real components: `DiffusionPipeline.from_pretrained` on saved folders and
Hub snapshots, `output_type="latent"`, `num_images_per_class`, step callbacks with `"latents"` and a changing
`_guidance_scale`, `num_timesteps`, the scheduler interface, and no deprecation warnings on the load path."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tokenset_diffusers import FSDDScheduler, TokenSetPipeline, bundled_pipeline_path
from tokenset_diffusers.utils.remote_code import write_remote_code_files


sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "conversion"))
from tokenizer_conversion import convert_tokenizer  # noqa: E402
from transformer_conversion import convert_transformer  # noqa: E402


C, M, K = 64, 16, 10
NAMES = dict(enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))


@pytest.fixture(scope="module")
def pipeline(tokenizer_original_state_dict, dit_original_state_dict):
    image_tokenizer = convert_tokenizer(tokenizer_original_state_dict, num_attention_heads=4).eval()
    transformer = convert_transformer(dit_original_state_dict, num_attention_heads=4).eval()
    pipe = TokenSetPipeline(image_tokenizer, transformer, FSDDScheduler(codebook_size=C, num_tokens=M), id2label=NAMES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved(pipeline, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "tiny-pipeline"
    pipeline.save_pretrained(folder)
    return folder


def _counts(pipe, labels, steps=3, seed=0, **kwargs):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    return pipe(labels, num_inference_steps=steps, generator=generators, output_type="counts", **kwargs).counts


# ---------------------------------------------------------------- DiffusionPipeline.from_pretrained

# Run in a fresh process that imports diffusers only: nothing of ours is imported beforehand.
LOAD_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("error", FutureWarning)
import torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
generators = [torch.Generator().manual_seed(i) for i in range(2)]
counts = pipe([3, "seven"], num_inference_steps=3, generator=generators, output_type="latent").images
print(json.dumps({
    "class": type(pipe).__module__ + "." + type(pipe).__name__,
    "components": {name: type(c).__module__ for name, c in pipe.components.items()},
    "counts": counts.tolist(),
}))
"""


def _run_load_script(target: str, env: dict) -> dict:
    env = {**os.environ, **env}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, target], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_diffusion_pipeline_loads_a_saved_folder(pipeline, saved, tmp_path):
    loaded = _run_load_script(str(saved), {"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert loaded["class"] == "tokenset_diffusers.tokenset.pipeline_tokenset.TokenSetPipeline"
    assert loaded["components"] == {
        "image_tokenizer": "tokenset_diffusers.tokenset.modeling_tokenset_vqvae",
        "transformer": "tokenset_diffusers.tokenset.transformer_tokenset",
        "scheduler": "tokenset_diffusers.tokenset.scheduling_fsdd",
    }
    # The same samples as the pipeline in memory: the same classes and weights, not copies.
    assert torch.equal(torch.tensor(loaded["counts"]), _counts(pipeline, [3, 7]))


def test_diffusion_pipeline_loads_a_hub_snapshot_offline(pipeline, tmp_path):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hub" / "models--tokenset--tiny-test"
    pipeline.save_pretrained(repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_MODULES_CACHE": str(tmp_path / "m")}
    loaded = _run_load_script("tokenset/tiny-test", env)
    assert torch.equal(torch.tensor(loaded["counts"]), _counts(pipeline, [3, 7]))


def test_hub_download_check_accepts_the_saved_files(saved):
    """Online, diffusers' download first checks that every component not in diffusers has its file in the repo
    (where a plain full-module-path entry is refused, diffusers issue #5553); the saved files pass that check."""
    from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders

    files = [path.relative_to(saved).as_posix() for path in saved.rglob("*") if path.is_file()]
    index = json.loads((saved / "model_index.json").read_text())
    custom, _ = _get_custom_components_and_folders("tokenset/tiny-test", index, files)
    assert custom == {
        "image_tokenizer": "modeling_tokenset_vqvae",
        "transformer": "transformer_tokenset",
        "scheduler": "scheduling_fsdd",
    }
    # A folder without the files (saved before they existed) is what diffusers refuses.
    old = {**index, "scheduler": ["tokenset_diffusers.tokenset.scheduling_fsdd", "FSDDScheduler"]}
    with pytest.raises(ValueError, match="does not exist"):
        _get_custom_components_and_folders("tokenset/tiny-test", old, files)


def test_diffusion_pipeline_without_trust_remote_code_says_what_to_pass(saved):
    from diffusers import DiffusionPipeline

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(saved)


def test_own_loader_runs_no_code_from_the_folder(pipeline, saved, tmp_path):
    """`TokenSetPipeline.from_pretrained` needs no `trust_remote_code`: it never imports the folder's files (here
    replaced by files that would fail), and loads folders saved before the files existed."""
    tampered = tmp_path / "tampered"
    pipeline.save_pretrained(tampered)
    for path in tampered.rglob("*.py"):
        path.write_text("raise RuntimeError('imported')\n")
    loaded = TokenSetPipeline.from_pretrained(tampered)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(_counts(loaded, [3]), _counts(pipeline, [3]))
    # The layout of older folders: a class name and full module paths, no files.
    legacy = tmp_path / "legacy"
    pipeline.save_pretrained(legacy)
    index = json.loads((legacy / "model_index.json").read_text())
    index["_class_name"] = "TokenSetPipeline"
    for name, module in (
        ("image_tokenizer", "tokenset_diffusers.tokenset.modeling_tokenset_vqvae"),
        ("transformer", "tokenset_diffusers.tokenset.transformer_tokenset"),
        ("scheduler", "tokenset_diffusers.tokenset.scheduling_fsdd"),
    ):
        index[name][0] = module
    (legacy / "model_index.json").write_text(json.dumps(index))
    for path in legacy.rglob("*.py"):
        path.unlink()
    assert isinstance(TokenSetPipeline.from_pretrained(legacy), TokenSetPipeline)
    write_remote_code_files(legacy)  # upgrades it in place
    assert json.loads((legacy / "model_index.json").read_text())["_class_name"] == [
        "pipeline_tokenset",
        "TokenSetPipeline",
    ]
    assert (legacy / "scheduler" / "scheduling_fsdd.py").is_file()


def test_bundled_folder_carries_the_files():
    folder = bundled_pipeline_path()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_tokenset", "TokenSetPipeline"]
    for name in ("image_tokenizer", "transformer", "scheduler"):
        assert (folder / name / f"{index[name][0]}.py").is_file()


def test_loading_and_config_access_raise_no_deprecation_warning(saved):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        loaded = TokenSetPipeline.from_pretrained(saved, dtype=torch.float32)
        assert loaded.id2label == NAMES == loaded.config.id2label


# ---------------------------------------------------------------- both systems: DiffusionPipeline, release 0.1, Hub

RELEASE_0_1 = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1"

# Loads each folder with diffusers alone (a fresh process importing diffusers only) and samples two images.
LOAD_BOTH_SCRIPT = """
import sys, warnings
warnings.simplefilter("error", FutureWarning)
import torch
from diffusers import DiffusionPipeline
results = {}
for folder in sys.argv[2:]:
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    images, tokens = pipe([0, 1], num_inference_steps=2, generator=generators, output_type="pt", return_dict=False)
    results[folder] = {
        "class": type(pipe).__module__ + "." + type(pipe).__name__,
        "components": {name: type(c).__module__ for name, c in pipe.components.items()},
        "images": images,
        "tokens": tokens,
    }
torch.save(results, sys.argv[1])
"""


def _sample_with_the_pipeline_class(folder: Path):
    from tokenset_diffusers import TokenBridgePipeline
    from tokenset_diffusers.utils.remote_code import pipeline_class_name

    index = json.loads((folder / "model_index.json").read_text())
    pipeline_class = TokenBridgePipeline if pipeline_class_name(index) == "TokenBridgePipeline" else TokenSetPipeline
    pipe = pipeline_class.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    return type(pipe), pipe([0, 1], num_inference_steps=2, generator=generators, output_type="pt", return_dict=False)


def test_diffusion_pipeline_loads_both_systems_saved_bundled_and_release_0_1_folders(tmp_path):
    """A bare `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads a saved TokenBridge folder, both
    bundled pipelines and the folders release 0.1 saved, as the package's classes, with the images the pipeline class
    gives for the same generators. Release 0.1's TokenBridge folder (no import files) loads in place with the pipeline
    class and, once `write_remote_code_files` upgraded a copy (weights untouched), with diffusers alone."""
    from tokenset_diffusers import TokenBridgePipeline
    from tokenset_diffusers.utils.remote_code import write_remote_code_files

    saved = tmp_path / "tokenbridge-saved"
    TokenBridgePipeline.from_pretrained(RELEASE_0_1 / "tokenbridge_tiny").save_pretrained(saved)
    upgraded = Path(shutil.copytree(RELEASE_0_1 / "tokenbridge_tiny", tmp_path / "tokenbridge-release-0.1"))
    write_remote_code_files(upgraded)
    for name in ("transformer", "vae"):
        weights = "diffusion_pytorch_model.safetensors"
        assert (upgraded / name / weights).read_bytes() == (
            RELEASE_0_1 / "tokenbridge_tiny" / name / weights
        ).read_bytes()
    folders = {
        saved: saved,
        bundled_pipeline_path("tokenbridge-digits"): bundled_pipeline_path("tokenbridge-digits"),
        bundled_pipeline_path("digits"): bundled_pipeline_path("digits"),
        RELEASE_0_1 / "tokenset_tiny": RELEASE_0_1 / "tokenset_tiny",
        upgraded: RELEASE_0_1 / "tokenbridge_tiny",  # loaded by diffusers: loaded by the pipeline class in place
    }
    output = tmp_path / "outputs.pt"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_BOTH_SCRIPT, str(output), *map(str, folders)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(output, weights_only=True)
    for folder, original in folders.items():
        pipeline_class, (images, tokens) = _sample_with_the_pipeline_class(original)
        by_diffusers = loaded[str(folder)]
        assert by_diffusers["class"] == f"{pipeline_class.__module__}.{pipeline_class.__name__}", folder
        expected_modules = {
            name: type(c).__module__ for name, c in pipeline_class.from_pretrained(original).components.items()
        }
        assert by_diffusers["components"] == expected_modules, folder
        assert torch.equal(by_diffusers["tokens"], tokens), folder
        torch.testing.assert_close(by_diffusers["images"], images, rtol=0, atol=1e-5)


def test_bundled_tokenbridge_folder_carries_the_files():
    folder = bundled_pipeline_path("tokenbridge-digits")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_tokenbridge", "TokenBridgePipeline"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    for name in ("transformer", "scheduler"):
        assert (folder / name / f"{index[name][0]}.py").is_file()


def test_img2img_pipeline_saves_and_loads_like_the_others(pipeline, tmp_path):
    """An image-variations pipeline saves its own import file and loads with its class, `TokenSetPipeline` (the same
    components) and diffusers alone."""
    from diffusers import DiffusionPipeline

    from tokenset_diffusers import TokenSetImg2ImgPipeline

    folder = tmp_path / "img2img"
    TokenSetImg2ImgPipeline.from_pipe(pipeline).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_tokenset_img2img", "TokenSetImg2ImgPipeline"]
    assert (folder / "pipeline_tokenset_img2img.py").is_file()
    assert type(TokenSetImg2ImgPipeline.from_pretrained(folder)) is TokenSetImg2ImgPipeline
    assert type(TokenSetPipeline.from_pretrained(folder)) is TokenSetPipeline
    assert type(DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)) is TokenSetImg2ImgPipeline


def _tokenbridge_pipeline():
    from tokenset_diffusers import TokenBridgePipeline

    return TokenBridgePipeline.from_pretrained(RELEASE_0_1 / "tokenbridge_tiny")


@pytest.mark.parametrize("system", ["tokenset", "tokenbridge"])
def test_push_to_hub_uploads_the_saved_pipeline_with_a_model_card(system, pipeline, monkeypatch, tmp_path):
    """Both pipelines upload through `push_folder_to_hub`: the saved folder with its import files and a card; the Hub
    is the one thing stubbed (it records the folder it is given), and what was uploaded loads and samples the same."""
    import huggingface_hub

    pipe = pipeline if system == "tokenset" else _tokenbridge_pipeline()
    pipe.set_progress_bar_config(disable=True)
    uploads = []

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, commit_message=None, create_pr=False, **kwargs):
        copy = tmp_path / f"upload{len(uploads)}"
        shutil.copytree(folder_path, copy)
        uploads.append({"repo_id": repo_id, "folder": copy, "commit_message": commit_message})

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    class_name = type(pipe).__name__
    pipe.push_to_hub("org/tiny-upload")
    pipe.save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="org/tiny-upload-2")
    assert [upload["repo_id"] for upload in uploads] == ["org/tiny-upload", "org/tiny-upload-2"]
    assert uploads[0]["commit_message"] == f"Upload {class_name}"
    for upload in uploads:
        folder = upload["folder"]
        index = json.loads((folder / "model_index.json").read_text())
        assert (folder / f"{index['_class_name'][0]}.py").is_file()
        card = huggingface_hub.ModelCard.load(folder / "README.md")
        assert card.data.license == "mit" and card.data.library_name == "diffusers"
        assert f'{class_name}.from_pretrained("{upload["repo_id"]}")' in card.text
        assert f'DiffusionPipeline.from_pretrained("{upload["repo_id"]}", trust_remote_code=True)' in card.text
        loaded = type(pipe).from_pretrained(folder)
        loaded.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        expected = pipe([1], num_inference_steps=2, generator=generator, output_type="pt", return_dict=False)[1]
        generator = torch.Generator().manual_seed(0)
        got = loaded([1], num_inference_steps=2, generator=generator, output_type="pt", return_dict=False)[1]
        assert torch.equal(got, expected)


# ---------------------------------------------------------------- the call


def test_latent_is_an_alias_of_counts(pipeline):
    generator = torch.Generator().manual_seed(1)
    latent = pipeline([2, 5], num_inference_steps=3, generator=generator, output_type="latent")
    generator = torch.Generator().manual_seed(1)
    expected = pipeline([2, 5], num_inference_steps=3, generator=generator, output_type="counts")
    assert torch.equal(latent.images, expected.images) and torch.equal(latent.counts, expected.counts)
    assert latent.images.shape == (2, C) and (latent.images.sum(-1) > 0).all()


def test_num_images_per_class_repeats_each_label(pipeline):
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    repeated = pipeline([2, 5], num_images_per_class=2, num_inference_steps=3, generator=generators, output_type="np")
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    spelled_out = pipeline([2, 2, 5, 5], num_inference_steps=3, generator=generators, output_type="np")
    assert repeated.images.shape[0] == 4
    assert (repeated.images == spelled_out.images).all()


# ---------------------------------------------------------------- callbacks, guidance_scale, num_timesteps


def test_callback_sees_latents_as_the_sample_and_can_replace_them(pipeline):
    seen, replacements = [], []

    def callback(pipe, index, timestep, tensors):
        seen.append(tensors["latents"] is tensors["sample"])
        if index == pipe.num_timesteps - 1:  # diffusers' test_callback_inputs habit, with valid count vectors
            latents = tensors["latents"]
            replacement = torch.zeros_like(latents)
            replacement[:, -1] = latents.sum(-1)  # every token on the last codebook entry: the same row sums
            replacements.append(replacement)
            tensors["latents"] = replacement
        return tensors

    inputs = pipeline._callback_tensor_inputs
    assert "latents" in inputs
    output = pipeline(
        [1], num_inference_steps=4, output_type="counts", callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=inputs,
    )  # fmt: skip
    assert seen == [True] * 4 and pipeline.num_timesteps == 4
    assert torch.equal(output.counts, replacements[0])


def test_callback_can_change_guidance_between_steps(pipeline):
    """diffusers' callback_cfg habit: the callback changes `pipe._guidance_scale`, the next steps use it."""

    def increase(pipe, index, timestep, tensors):
        pipe._guidance_scale += 1.0
        return tensors

    pipeline([1], num_inference_steps=5, guidance_scale=2.0, output_type="counts", callback_on_step_end=increase)
    assert pipeline.guidance_scale == 2.0 + pipeline.num_timesteps

    # Guidance switched off for the last two of four steps = guidance 1.0 from t = 0.5 on, as an interval schedule.
    def off_at_the_end(pipe, index, timestep, tensors):
        if index == 1:
            pipe._guidance_scale = 1.0
        return tensors

    switched = _counts(pipeline, [4, 6], steps=4, guidance_scale=5.0, callback_on_step_end=off_at_the_end)
    as_schedule = _counts(pipeline, [4, 6], steps=4, guidance_scale=[5.0, 1.0])
    constant = _counts(pipeline, [4, 6], steps=4, guidance_scale=5.0)
    assert torch.equal(switched, as_schedule)
    assert not torch.equal(switched, constant)


def test_callback_returning_two_different_samples_raises(pipeline):
    def confused(pipe, index, timestep, tensors):
        return {"sample": tensors["sample"].clone(), "latents": tensors["latents"].clone()}

    with pytest.raises(ValueError, match="different tensors"):
        pipeline(
            [1], num_inference_steps=2, output_type="counts", callback_on_step_end=confused,
            callback_on_step_end_tensor_inputs=["sample", "latents"],
        )  # fmt: skip


# ---------------------------------------------------------------- scheduler interface


def test_scheduler_has_diffusers_interface():
    scheduler = FSDDScheduler(codebook_size=C, num_tokens=M)
    assert scheduler.init_noise_sigma == 1.0
    sample = torch.randint(0, 3, (2, C))
    assert scheduler.scale_model_input(sample, 0.5) is sample
    assert scheduler.scale_model_input(sample) is sample


def test_model_card_is_not_tagged_unconditional(pipeline):
    card = pipeline.model_card("org/tiny")
    assert card.data.pipeline_tag != "unconditional-image-generation"
    assert "class-conditional-image-generation" in card.data.tags


# ---------------------------------------------------------------- transformers conventions (the set tokenizer)


@pytest.fixture(scope="module")
def tokenizer_dir(pipeline, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer") / "image_tokenizer"
    pipeline.image_tokenizer.save_pretrained(folder)
    return folder


def _images(n=2, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_tokenizer_returns_hidden_states_and_attentions(pipeline):
    model = pipeline.image_tokenizer
    config = model.config
    pixel_values = _images()
    plain = model(pixel_values)
    full = model(pixel_values, output_hidden_states=True, output_attentions=True)
    # (attention probabilities come from the eager computation: float rounding apart, the same reconstruction)
    torch.testing.assert_close(full.reconstruction, plain.reconstruction, rtol=0, atol=1e-4)
    assert plain.encoder_hidden_states is None and plain.decoder_attentions is None
    num_patches = (config.image_size // config.patch_size) ** 2
    length = num_patches + 1 + config.num_tokens
    assert len(full.encoder_hidden_states) == config.encoder_num_hidden_layers + 1
    assert len(full.decoder_hidden_states) == config.decoder_num_hidden_layers + 1
    assert full.encoder_hidden_states[0].shape == (2, length, config.encoder_hidden_size)
    assert len(full.encoder_attentions) == config.encoder_num_hidden_layers
    heads = config.encoder_num_attention_heads
    assert full.encoder_attentions[0].shape == (2, heads, length, length)
    # The first layer's attention, recomputed by torch's MultiheadAttention from the first hidden state.
    layer = model.encoder.layers[0]
    reference = torch.nn.MultiheadAttention(config.encoder_hidden_size, heads, batch_first=True)
    reference.in_proj_weight.data.copy_(layer.self_attn.in_proj.weight)
    reference.in_proj_bias.data.copy_(layer.self_attn.in_proj.bias)
    normed = layer.layer_norm1(full.encoder_hidden_states[0])
    with torch.no_grad():
        _, weights = reference(normed, normed, normed, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(full.encoder_attentions[0], weights, rtol=0, atol=1e-5)
    # As a tuple: the five plain outputs, then the ones asked for.
    as_tuple = model(pixel_values, output_hidden_states=True, return_dict=False)
    assert len(as_tuple) == 7 and len(model(pixel_values, return_dict=False)) == 5


def test_eager_attention_is_honoured(tokenizer_dir, monkeypatch):
    from tokenset_diffusers import TokenSetVQVAE

    sdpa = TokenSetVQVAE.from_pretrained(tokenizer_dir).eval()
    eager = TokenSetVQVAE.from_pretrained(tokenizer_dir, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    pixel_values = _images()
    with torch.no_grad():
        expected = sdpa(pixel_values).reconstruction
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        eager_output = eager(pixel_values).reconstruction
        assert calls == []  # the eager model never runs SDPA
        sdpa(pixel_values)
        assert len(calls) == sdpa.config.encoder_num_hidden_layers + sdpa.config.decoder_num_hidden_layers
    torch.testing.assert_close(eager_output, expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="attn_implementation"):
        eager.encoder.layers[0].self_attn(torch.zeros(1, 3, eager.config.encoder_hidden_size), "flex_attention")


def test_auto_model_loads_a_saved_tokenizer(pipeline, tokenizer_dir, tmp_path):
    from transformers import AutoConfig, AutoModel

    from tokenset_diffusers import TokenSetVQVAE, TokenSetVQVAEConfig

    config = json.loads((tokenizer_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_tokenset_vqvae.TokenSetVQVAEConfig",
        "AutoModel": "modeling_tokenset_vqvae.TokenSetVQVAE",
    }
    # After `import tokenset_diffusers` (done above): registered, no remote code needed.
    assert isinstance(AutoConfig.from_pretrained(tokenizer_dir), TokenSetVQVAEConfig)
    model = AutoModel.from_pretrained(tokenizer_dir)
    assert type(model) is TokenSetVQVAE
    pixel_values = _images()
    with torch.no_grad():
        expected = pipeline.image_tokenizer.encode(pixel_values).token_ids
    assert torch.equal(model.encode(pixel_values).token_ids, expected)
    # In a process that imports transformers only: through the saved files, with trust_remote_code.
    torch.save(pixel_values, tmp_path / "pixels.pt")
    script = (
        "import sys, torch; from transformers import AutoModel;"
        "m = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True);"
        "print(type(m).__module__, m.encode(torch.load(sys.argv[2])).token_ids.tolist())"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tokenizer_dir), str(tmp_path / "pixels.pt")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    module, token_ids = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert module == "tokenset_diffusers.tokenset.modeling_tokenset_vqvae"
    assert torch.equal(torch.tensor(json.loads(token_ids)), expected)

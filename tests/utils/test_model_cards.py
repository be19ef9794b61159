"""Model cards: every template renders, its metadata block parses, and its usage snippets run on a tiny local folder."""

import re
import sys
from pathlib import Path

import PIL.Image
import pytest
from huggingface_hub import ModelCard

from tokenset_diffusers import FSDDScheduler, TokenSetPipeline
from tokenset_diffusers.model_cards import (
    PAPER_GFID,
    pipeline_card_fields,
    render_model_card,
    template_path,
    write_model_card,
)


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "conversion"))
from tokenizer_conversion import convert_tokenizer  # noqa: E402
from transformer_conversion import convert_transformer  # noqa: E402


REPO_ID = "someone/tokenset-test-repo"
KINDS = ("converted_pipeline", "tokenizer", "trained_pipeline")
DIGIT_NAMES = dict(enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
TRAINED_FIELDS = dict(
    dataset="scikit-learn digits",
    preset="training/configs/digits_generator.yaml",
    tokenizer_steps=3000,
    generator_steps=6000,
    metrics={"sample accuracy": 0.9312345, "fixed-sum fraction": "97.5%"},
    training_commands=["python training/train_tokenizer.py a.yaml", "python training/train_generator.py b.yaml"],
    training_time="18 minutes",
    hardware="2-core CPU",
)


@pytest.fixture(scope="module")
def tiny_pipeline(tokenizer_original_state_dict, dit_original_state_dict):
    image_tokenizer = convert_tokenizer(tokenizer_original_state_dict, num_attention_heads=4).eval()
    transformer = convert_transformer(dit_original_state_dict, num_attention_heads=4).eval()
    scheduler = FSDDScheduler(codebook_size=64, num_tokens=16)
    return TokenSetPipeline(image_tokenizer, transformer, scheduler, id2label=DIGIT_NAMES, default_guidance_scale=2.0)


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tiny_pipeline, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cards") / "pipeline"
    tiny_pipeline.save_pretrained(folder)
    return folder


def _minimal_fields(kind: str) -> dict:
    if kind == "converted_pipeline":
        return dict(repo_id=REPO_ID, generator_size="B")
    if kind == "tokenizer":
        return dict(repo_id=REPO_ID)
    return dict(
        repo_id=REPO_ID,
        dataset="scikit-learn digits",
        preset="digits",
        tokenizer_steps=1,
        generator_steps=2,
        metrics={},
        image_size=32,
        codebook_size=64,
        num_tokens=16,
        num_classes=10,
    )


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_block_parses(kind):
    card = render_model_card(kind, **_minimal_fields(kind))
    data = ModelCard(str(card)).data  # parsed back from the rendered text
    assert data.license == "mit"
    assert data.library_name == {"converted_pipeline": "diffusers", "tokenizer": "transformers"}.get(kind, "diffusers")
    assert {"tokenset", "tokenset-diffusers", "arxiv:2503.16425"} <= set(data.tags)
    expected_datasets = None if kind == "trained_pipeline" else ["ILSVRC/imagenet-1k"]
    assert data.datasets == expected_datasets
    # Every branch a minimal card takes renders without leftovers.
    assert "{{" not in card.text and "{%" not in card.text and "None" not in card.text
    assert "MIT" in card.text and "arXiv:2503.16425" in card.text and "@article{geng2025tokenset" in card.text


def test_metadata_overrides():
    card = render_model_card(
        "trained_pipeline", **{**_minimal_fields("trained_pipeline"), "tags": ["digits"], "datasets": ["org/digits"]}
    )
    data = ModelCard(str(card)).data
    assert "digits" in data.tags and "tokenset" in data.tags and data.datasets == ["org/digits"]
    card = render_model_card("tokenizer", repo_id=REPO_ID, source="trained", dataset="digits")
    assert ModelCard(str(card)).data.datasets is None  # no ImageNet claim for a tokenizer trained elsewhere


# ---------------------------------------------------------------- content


@pytest.mark.parametrize("generator_size", ["S", "B"])
def test_converted_card_states_the_paper_and_the_released_settings(generator_size):
    text = render_model_card("converted_pipeline", repo_id=REPO_ID, generator_size=generator_size).text
    for fact in ("rFID", "2.74", "5.56", "5.09", "25 FSDD steps", "[4.0, 50.0, 55.0]", "top-p 0.8", "t = 0.65"):
        assert fact in text, fact
    assert "sigmoid (slope 100, midpoint 0.8)" in text
    assert f"| **TokenSet-{generator_size}** | 128 | 4096 | | **{PAPER_GFID[generator_size]}** |" in text
    other = "B" if generator_size == "S" else "S"
    assert f"| TokenSet-{other} | 128 | 4096 | | {PAPER_GFID[other]} |" in text
    # The usage snippet is three lines of code.
    first = _python_blocks(text)[0]
    assert len([line for line in first.splitlines() if line.strip()]) == 3


def test_trained_card_fills_in_the_run():
    text = render_model_card("trained_pipeline", repo_id=REPO_ID, **TRAINED_FIELDS, image_size=32, codebook_size=64,
                             num_tokens=16, num_classes=10, guidance_scale=[2.0]).text  # fmt: skip
    assert "| sample accuracy | 0.9312 |" in text and "| fixed-sum fraction | 97.5% |" in text
    assert "steps: 3000 (set tokenizer), 6000 (generator)" in text
    assert "preset: `training/configs/digits_generator.yaml`" in text
    assert "python training/train_tokenizer.py a.yaml\npython training/train_generator.py b.yaml\n```" in text
    assert "training time: 18 minutes" in text and "hardware: 2-core CPU" in text
    assert "classifier-free guidance: constant 2" in text


def test_trained_tokenizer_card_lists_its_run():
    text = render_model_card(
        "tokenizer", repo_id=REPO_ID, source="trained", dataset="scikit-learn digits", image_size=32, codebook_size=64,
        num_tokens=16, training_steps=3000, preset="digits_tokenizer.yaml", metrics={"digit accuracy": 0.97},
    ).text  # fmt: skip
    assert "rFID" not in text and "converted" not in text.lower().split("## usage")[0]
    assert "| digit accuracy | 0.97 |" in text and "steps: 3000" in text and "32x32" in text


# ---------------------------------------------------------------- the usage snippets run


@pytest.mark.parametrize("kind", KINDS)
def test_usage_snippets_run_on_a_local_folder(kind, tiny_pipeline_dir, tmp_path, monkeypatch):
    fields = {**_minimal_fields(kind), "image_size": 32, "codebook_size": 64, "num_tokens": 16}
    if kind != "tokenizer":
        fields.update(example_class_label="three", num_classes=10)
    card = render_model_card(kind, **fields)
    blocks = _python_blocks(card.text)
    assert blocks and all(REPO_ID in block for block in blocks[:1])
    folder = tiny_pipeline_dir / "image_tokenizer" if kind == "tokenizer" else tiny_pipeline_dir
    monkeypatch.chdir(tmp_path)
    PIL.Image.new("RGB", (48, 40), (200, 30, 90)).save("image.png")
    namespace = {}
    for block in blocks:
        exec(compile(block.replace(REPO_ID, str(folder)), f"<{kind} card>", "exec"), namespace)  # noqa: S102
    written = "reconstruction.png" if kind == "tokenizer" else "sample.png"
    assert PIL.Image.open(written).size == (32, 32)
    if kind == "converted_pipeline":  # the second block swaps in the top-k scheduler and samples with a seed
        assert namespace["pipeline"].scheduler.config.x0_sampling == "top_k"
        assert len(namespace["images"]) == 1


# ---------------------------------------------------------------- helpers and errors


def test_pipeline_card_fields(tiny_pipeline):
    fields = pipeline_card_fields(tiny_pipeline)
    assert fields == {
        "image_size": 32,
        "codebook_size": 64,
        "num_tokens": 16,
        "num_classes": 10,
        "guidance_scale": [2.0],
        "class_names": list(DIGIT_NAMES.values()),
        "example_class_label": "zero",
    }
    text = render_model_card("trained_pipeline", repo_id=REPO_ID, **{**TRAINED_FIELDS, **fields}).text
    assert "for\n10 classes (zero, one, two" in text


def test_write_model_card(tmp_path):
    path = write_model_card(tmp_path / "out", "converted_pipeline", repo_id=REPO_ID, generator_size="S")
    assert path == tmp_path / "out" / "README.md"
    assert ModelCard.load(path).data.license == "mit"


def test_templates_ship_in_the_package_and_model_cards_links_them():
    package_dir = ROOT / "tokenset_diffusers"
    for kind in KINDS:
        path = template_path(kind)
        assert path.parent == package_dir / "templates" and path.is_file()
        assert (ROOT / "model_cards" / f"{kind}.md").read_text() == path.read_text()


@pytest.mark.parametrize(
    "kind, fields, message",
    [
        ("model", dict(repo_id=REPO_ID), "`kind` must be one of"),
        ("converted_pipeline", dict(repo_id=REPO_ID), r"needs the field\(s\) \['generator_size'\]"),
        ("converted_pipeline", dict(repo_id=REPO_ID, generator_size="XL"), "`generator_size` must be one of"),
        ("converted_pipeline", dict(repo_id=REPO_ID, generator_size="S", gfid=1.0), r"takes no field\(s\) \['gfid'\]"),
        ("tokenizer", dict(repo_id=REPO_ID, source="scratch"), "`source` must be"),
        ("tokenizer", dict(repo_id=REPO_ID, tags="digits"), "`tags` must be a list of strings"),
        ("trained_pipeline", dict(repo_id=REPO_ID, dataset="d"), r"needs the field\(s\) \['preset'"),
        ("trained_pipeline", {**_minimal_fields("trained_pipeline"), "metrics": [0.9]}, "`metrics` must be a dict"),
        (
            "trained_pipeline",
            {**_minimal_fields("trained_pipeline"), "example_class_label": 1.5},
            "`example_class_label` must be",
        ),
    ],
)
def test_bad_fields_raise(kind, fields, message):
    with pytest.raises(ValueError, match=message):
        render_model_card(kind, **fields)


@pytest.mark.parametrize("kind", KINDS)
def test_cards_install_from_the_repository_and_use_current_arguments(kind):
    """The package is not on PyPI: no card tells people to `pip install tokenset-diffusers`; no deprecated
    `torch_dtype`; pipelines show the diffusers-only loading call."""
    text = render_model_card(kind, **_minimal_fields(kind)).text
    assert "pip install tokenset-diffusers" not in text and "pip install ." in text and "not on PyPI" in text
    assert "torch_dtype" not in text
    if kind != "tokenizer":
        assert "DiffusionPipeline.from_pretrained(" in text and "trust_remote_code=True" in text


# ---------------------------------------------------------------- the pipelines' own minimal cards, both systems

RELEASE_TOKENBRIDGE = ROOT / "tests" / "fixtures" / "release_0_1" / "tokenbridge_tiny"


@pytest.fixture(scope="module")
def tiny_tokenbridge_dir(tmp_path_factory) -> Path:
    from tokenset_diffusers import TokenBridgePipeline

    folder = tmp_path_factory.mktemp("cards") / "tokenbridge"
    TokenBridgePipeline.from_pretrained(RELEASE_TOKENBRIDGE).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("system", ["tokenset", "tokenbridge"])
def test_pipeline_model_card_comes_from_its_template_and_its_snippets_run(
    system, tiny_pipeline, tiny_pipeline_dir, tiny_tokenbridge_dir, tmp_path, monkeypatch
):
    """`pipeline.model_card()` (also what `push_to_hub` uploads without a README.md of its own) is the
    `<system>_pipeline` template filled from the pipeline: its metadata parses, it states the sizes and defaults read
    from the configs, and its usage snippets run against the saved folder."""
    from tokenset_diffusers import TokenBridgePipeline
    from tokenset_diffusers.model_cards import pipeline_model_card

    if system == "tokenset":
        pipeline, folder, class_name = tiny_pipeline, tiny_pipeline_dir, "TokenSetPipeline"
        facts = ["classes: 10 (zero, one, two", "32x32", "C = 64", "M = 16", "default guidance: constant 2"]
        arxiv = "arxiv:2503.16425"
    else:
        folder, class_name = tiny_tokenbridge_dir, "TokenBridgePipeline"
        pipeline = TokenBridgePipeline.from_pretrained(folder)
        facts = ["classes: 3 (red, green, blue)", "8x8", "latent grid 4x4, 4", "16 levels per channel", "4 steps"]
        arxiv = "arxiv:2503.16430"
    card = pipeline.model_card(REPO_ID)
    assert card.text == pipeline_model_card(pipeline, REPO_ID).text
    assert template_path(f"{system}_pipeline").parent == ROOT / "tokenset_diffusers" / "templates"
    assert (ROOT / "model_cards" / f"{system}_pipeline.md").read_text() == template_path(
        f"{system}_pipeline"
    ).read_text()
    data = ModelCard(str(card)).data
    assert data.license == "mit" and data.library_name == "diffusers" and data.pipeline_tag is None
    assert {"class-conditional-image-generation", arxiv} <= set(data.tags)
    text = card.text
    assert "{{" not in text and "{%" not in text and "None" not in text and "torch_dtype" not in text
    assert "pip install ." in text and "pip install tokenset-diffusers" not in text
    for fact in facts:
        assert fact in text, fact
    assert f'{class_name}.from_pretrained("{REPO_ID}")' in text
    assert f'DiffusionPipeline.from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in _python_blocks(text):
        exec(compile(block.replace(REPO_ID, str(folder)), f"<{system} card>", "exec"), namespace)  # noqa: S102
    size = 32 if system == "tokenset" else 8
    assert PIL.Image.open("sample.png").size == (size, size)
    assert type(namespace["pipeline"]).__name__ == class_name  # the last block: diffusers alone, the same class

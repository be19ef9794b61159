"""`training/pretokenize.py` launched with two gloo processes: its stored token sets round-trip through the tokenizer."""

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, load_from_disk
from helpers.scripts import launch

from tokenset_diffusers.image_processing import preprocess_images
from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from tokenset_diffusers.tokenset.set_ops import tokens_to_counts
from tokenset_diffusers.utils.testing_utils import CLASS_NAMES, make_saved_dataset, save_tiny_tokenizer
from training.data import PRETOKENIZED_INFO_NAME
from training.pretokenize import main as pretokenize_main


SIZES = {"train": 11, "validation": 4}  # 11 rows: the two processes get unequal blocks (5 and 6)


@pytest.fixture(scope="module")
def pretokenized(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretokenize")
    dataset_dir = make_saved_dataset(root / "saved", SIZES)
    tokenizer_dir = save_tiny_tokenizer(root / "tokenizer")
    output_dir = root / "tokens"
    args = ["--tokenizer_name_or_path", str(tokenizer_dir), "--dataset_name", str(dataset_dir)]
    args += ["--eval_split", "validation", "--output_dir", str(output_dir), "--batch_size", "4"]
    launch("pretokenize.py", args, 2, root)
    return root, dataset_dir, tokenizer_dir, output_dir, args


def fresh_encoding(tokenizer, images):
    pixel_values = preprocess_images(images, tokenizer.config.image_size)  # (N, 3, S, S)
    with torch.no_grad():
        return (
            pixel_values,
            tokenizer.encode(pixel_values).token_ids,
            tokenizer.encode(pixel_values.flip(-1)).token_ids,
        )


@pytest.mark.parametrize("split", list(SIZES))
def test_stored_token_sets_round_trip(pretokenized, split):
    _, dataset_dir, tokenizer_dir, output_dir, _ = pretokenized
    tokenizer = TokenSetVQVAE.from_pretrained(tokenizer_dir).eval()
    source = load_from_disk(str(dataset_dir))[split]
    stored = load_from_disk(str(output_dir))[split]
    assert len(stored) == SIZES[split]  # every row once, from both processes
    assert stored.features["token_ids"].feature.dtype == "uint16"
    assert list(stored["label"]) == list(source["label"])  # source order kept across the two shards
    _, token_ids, flipped_ids = fresh_encoding(tokenizer, list(source["image"]))
    stored_ids = torch.tensor(np.array(list(stored["token_ids"]), dtype=np.int64))  # (N, M)
    stored_flipped = torch.tensor(np.array(list(stored["token_ids_flipped"]), dtype=np.int64))  # (N, M)
    codebook_size = tokenizer.config.codebook_size
    assert torch.equal(tokens_to_counts(stored_ids, codebook_size), tokens_to_counts(token_ids, codebook_size))
    assert torch.equal(tokens_to_counts(stored_flipped, codebook_size), tokens_to_counts(flipped_ids, codebook_size))
    with torch.no_grad():
        torch.testing.assert_close(tokenizer.decode(stored_ids), tokenizer.decode(token_ids), atol=1e-5, rtol=0)
        torch.testing.assert_close(tokenizer.decode(stored_flipped), tokenizer.decode(flipped_ids), atol=1e-5, rtol=0)


def test_output_describes_the_tokenizer(pretokenized):
    root, _, tokenizer_dir, output_dir, _ = pretokenized
    info = json.loads((output_dir / PRETOKENIZED_INFO_NAME).read_text())
    assert (info["codebook_size"], info["num_tokens"], info["image_size"]) == (32, 8, 16)
    assert info["num_classes"] == len(CLASS_NAMES) and info["num_rows"] == SIZES and info["num_processes"] == 2
    # Its own command line, after the tokenizer's (none here: that tokenizer was not trained by training/).
    assert info["tokenizer_steps"] is None
    assert len(info["commands"]) == 1 and info["commands"][0].startswith("accelerate launch training/pretokenize.py")
    stored = load_from_disk(str(output_dir))["train"]
    assert stored.features["label"] == ClassLabel(names=CLASS_NAMES)
    assert not list(root.glob(".partial-*")) and not list(root.glob(".shards-*"))  # temporary folders are gone


def test_refuses_to_overwrite(pretokenized):
    _, _, _, _, args = pretokenized
    with pytest.raises(ValueError, match="overwrite_output_dir"):
        pretokenize_main(args)


def test_streamed_source_gives_the_same_token_sets(pretokenized):
    root, dataset_dir, tokenizer_dir, output_dir, _ = pretokenized
    streamed_dir = root / "streamed_tokens"
    args = ["--tokenizer_name_or_path", str(tokenizer_dir), "--dataset_name", str(dataset_dir)]
    args += ["--output_dir", str(streamed_dir), "--streaming", "--max_train_samples", "6", "--batch_size", "4"]
    launch("pretokenize.py", args, 1, root, launcher="python")
    streamed = load_from_disk(str(streamed_dir))
    assert list(streamed) == ["train"]  # no eval_split asked for
    full = load_from_disk(str(output_dir))["train"]
    # One process reads the stream in source order, so the rows are the first 6 of the map-style run's.
    assert len(streamed["train"]) == 6
    for column in ("token_ids", "token_ids_flipped", "label"):
        assert list(streamed["train"][column]) == list(full[column])[:6]

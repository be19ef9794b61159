"""Shared pieces of the TokenBridge tests: the fixtures' paths and the tiny converted models."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conversion.tokenbridge_conversion import convert_tokenbridge
from conversion.vae_conversion import convert_vae


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tokenbridge"


# The tiny fixture model's head counts (not stored in weights): 4 in the encoder/decoder and 4 in the channel head.
TINY_HEADS = {"num_attention_heads": 4, "head_num_attention_heads": 4}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The tiny models run on one thread: their operations are too small to share, and on a loaded machine threads
    waiting for each other make them 10x slower. Import this fixture into a test module to apply it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_fixture(name: str) -> dict:
    return load_file(FIXTURES / name)


def load_json(name: str):
    return json.loads((FIXTURES / name).read_text())


def tiny_transformer():
    return convert_tokenbridge(load_fixture("tokenbridge_tiny.original.safetensors"), **TINY_HEADS)


def tiny_vae():
    return convert_vae(load_fixture("vae_tiny.original.safetensors"), sample_size=32)

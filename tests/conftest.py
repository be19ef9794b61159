"""Shared test fixtures: the original implementation's stored inputs and outputs (tests/fixtures/)."""

import os
import sys
import tempfile
from pathlib import Path

import pytest
from safetensors.torch import load_file


FIXTURES = Path(__file__).parent / "fixtures"
# The shared helpers (`tests/helpers/`) import as `helpers.*` from every test folder.
sys.path.insert(0, str(Path(__file__).parent))

# `trust_remote_code=True` loads copy a folder's import-only files into diffusers' and transformers' module cache;
# keep them out of $HOME (read when diffusers / transformers are first imported, which is after this file).
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="tokenset_hf_modules_"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def fsdd_fixture():
    return load_file(FIXTURES / "fsdd_tiny.io.safetensors")


@pytest.fixture(scope="session")
def dit_fixture():
    return load_file(FIXTURES / "dit1d_tiny.io.safetensors")


@pytest.fixture(scope="session")
def dit_original_state_dict():
    return load_file(FIXTURES / "dit1d_tiny.original.safetensors")


@pytest.fixture(scope="session")
def tokenizer_fixture():
    return load_file(FIXTURES / "tokenizer_tiny.io.safetensors")


@pytest.fixture(scope="session")
def tokenizer_original_state_dict():
    return load_file(FIXTURES / "tokenizer_tiny.original.safetensors")

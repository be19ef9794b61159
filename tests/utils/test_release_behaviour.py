"""Behaviour kept across the one-package restructure: the outputs recorded from release 0.1.0 (before it) for fixed
generators and arguments, repeated now, must be identical.

`tests/fixtures/release_0_1/` holds tiny pipelines of both systems saved by that release and the outputs that it gave
for them and for the two bundled pipelines (`record.py` made them; `calls.py` holds the calls)."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1"
sys.path.insert(0, str(RECORD))

from calls import RECORDED_CALLS  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recorded():
    return load_file(RECORD / "outputs.safetensors")


@pytest.mark.filterwarnings("ignore:Decoding count vectors")
@pytest.mark.parametrize("call", sorted(RECORDED_CALLS))
def test_outputs_equal_the_release_before_the_restructure(call, recorded):
    outputs = RECORDED_CALLS[call](RECORD)
    expected = {key.split(".", 1)[1]: value for key, value in recorded.items() if key.startswith(f"{call}.")}
    assert sorted(outputs) == sorted(expected)
    for field, value in outputs.items():
        assert value.dtype == expected[field].dtype and value.shape == expected[field].shape, field
        assert torch.equal(value, expected[field]), f"{call}.{field} differs from the recorded release output"


def test_the_recorded_folders_name_the_release_module_paths():
    """The saved tiny folders are those of the release: their model_index.json and import files name the old flat
    module paths, which must keep importing."""
    index = (RECORD / "tokenbridge_tiny" / "model_index.json").read_text()
    assert "tokenset_diffusers.transformer_tokenbridge" in index
    remote = (RECORD / "tokenset_tiny" / "pipeline_tokenset.py").read_text()
    assert "tokenset_diffusers.pipeline_tokenset" in remote

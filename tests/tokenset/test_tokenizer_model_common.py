"""The set tokenizer against what transformers' common model tests (`ModelTesterMixin` in transformers' own test
suite, which the installed package does not ship) check of a model that declares attentions and hidden states:
`test_hidden_states_output`, `test_attention_outputs`, `test_retain_grad_hidden_states_attentions` and
`test_model_outputs_equivalence`, run the way those tests run them (asked for by argument and by config, the eager
implementation, the output's length growing by the hidden-state fields). The tokenizer is not an encoder-decoder in
transformers' sense (no cross-attention): `hidden_states` and `attentions` hold its two ViTs, encoder first."""

import pytest
import torch

from tokenset_diffusers.tokenset.configuration_tokenset_vqvae import TokenSetVQVAEConfig
from tokenset_diffusers.tokenset.modeling_tokenset_vqvae import TokenSetVQVAE
from tokenset_diffusers.utils.testing_utils import TINY_TOKENIZER


# Different depths and widths for the two ViTs, so that a mix-up shows.
ENCODER_LAYERS, DECODER_LAYERS = 2, 1
CONFIG = {
    **TINY_TOKENIZER,
    "encoder_num_hidden_layers": ENCODER_LAYERS,
    "decoder_num_hidden_layers": DECODER_LAYERS,
    "decoder_hidden_size": 16,
    "decoder_num_attention_heads": 4,
}
NUM_HIDDEN_LAYERS = ENCODER_LAYERS + DECODER_LAYERS
# Two kinds of hidden-state fields (encoder, decoder): the tester's `num_hidden_states_types`.
NUM_HIDDEN_STATES_TYPES = 2
SEQ_LENGTH = (CONFIG["image_size"] // CONFIG["patch_size"]) ** 2 + 1 + CONFIG["num_tokens"]


def prepare_config_and_inputs() -> tuple[TokenSetVQVAEConfig, dict]:
    config = TokenSetVQVAEConfig(**CONFIG)
    size = CONFIG["image_size"]
    pixel_values = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return config, {"pixel_values": pixel_values}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_config_is_not_an_encoder_decoder():
    config, _ = prepare_config_and_inputs()
    assert not config.is_encoder_decoder  # so the common tests read `hidden_states` and `attentions`


@pytest.mark.parametrize("through", ["argument", "config"])
def test_hidden_states_output(through):
    config, inputs = prepare_config_and_inputs()
    if through == "argument":
        inputs["output_hidden_states"] = True
    else:
        config.output_hidden_states = True
    model = TokenSetVQVAE(config).eval()
    with torch.no_grad():
        outputs = model(**inputs)
    hidden_states = outputs.hidden_states
    assert isinstance(hidden_states, tuple)
    assert len(hidden_states) == NUM_HIDDEN_LAYERS + NUM_HIDDEN_STATES_TYPES  # embeddings + each layer, per ViT
    assert list(hidden_states[0].shape[-2:]) == [SEQ_LENGTH, CONFIG["encoder_hidden_size"]]
    assert list(hidden_states[ENCODER_LAYERS + 1].shape[-2:]) == [SEQ_LENGTH, CONFIG["decoder_hidden_size"]]
    joined = outputs.encoder_hidden_states + outputs.decoder_hidden_states
    assert all(mine is theirs for mine, theirs in zip(hidden_states, joined, strict=True))
    if through == "argument":  # not asked for: none
        with torch.no_grad():
            assert model(**prepare_config_and_inputs()[1]).hidden_states is None


def test_attention_outputs():
    config, inputs = prepare_config_and_inputs()
    config._attn_implementation = "eager"
    config.return_dict = True
    inputs["output_attentions"] = True
    inputs["output_hidden_states"] = False
    model = TokenSetVQVAE._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        outputs = model(**inputs)
    attentions = outputs.attentions
    assert len(attentions) == NUM_HIDDEN_LAYERS

    # asked for through the config
    del inputs["output_attentions"]
    config.output_attentions = True
    model = TokenSetVQVAE._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        outputs = model(**inputs)
    attentions = outputs.attentions
    assert len(attentions) == NUM_HIDDEN_LAYERS
    assert list(attentions[0].shape[-3:]) == [CONFIG["encoder_num_attention_heads"], SEQ_LENGTH, SEQ_LENGTH]
    assert list(attentions[-1].shape[-3:]) == [CONFIG["decoder_num_attention_heads"], SEQ_LENGTH, SEQ_LENGTH]
    # probabilities: every row sums to 1
    for attention in attentions:
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    out_len = len(outputs)

    # with hidden states too: the output grows by the hidden-state fields, attentions stay last
    inputs["output_attentions"] = True
    inputs["output_hidden_states"] = True
    model = TokenSetVQVAE(config).eval()
    with torch.no_grad():
        outputs = model(**inputs)
    assert out_len + NUM_HIDDEN_STATES_TYPES == len(outputs)
    assert outputs[-1] is outputs.decoder_attentions
    self_attentions = outputs.attentions
    assert len(self_attentions) == NUM_HIDDEN_LAYERS
    assert list(self_attentions[0].shape[-3:]) == [CONFIG["encoder_num_attention_heads"], SEQ_LENGTH, SEQ_LENGTH]


def test_retain_grad_hidden_states_attentions():
    config, inputs = prepare_config_and_inputs()
    config.output_hidden_states = True
    config.output_attentions = True
    model = TokenSetVQVAE(config)
    outputs = model(**inputs)
    output = outputs[0]
    hidden_states = outputs.hidden_states[0]
    hidden_states.retain_grad()
    attentions = outputs.attentions[0]
    attentions.retain_grad()
    output.flatten()[0].backward(retain_graph=True)
    assert hidden_states.grad is not None
    assert attentions.grad is not None


def test_model_outputs_equivalence():
    """The tuple output holds the dict output's values in order, whatever is asked for."""
    config, inputs = prepare_config_and_inputs()
    model = TokenSetVQVAE(config).eval()
    asked_for = ({}, {"output_hidden_states": True}, {"output_attentions": True})
    for extra in (*asked_for, {"output_hidden_states": True, "output_attentions": True}):
        with torch.no_grad():
            as_dict = model(**inputs, **extra, return_dict=True)
            as_tuple = model(**inputs, **extra, return_dict=False)
        flat_dict = list(as_dict.to_tuple())
        assert len(flat_dict) == len(as_tuple) == 5 + 2 * len(extra)
        for expected, actual in zip(flat_dict, as_tuple):
            if isinstance(expected, tuple):
                assert all(torch.equal(e, a) for e, a in zip(expected, actual, strict=True))
            else:
                assert torch.equal(expected, actual)

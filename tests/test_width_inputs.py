"""Example inputs that grow with width (encoder states fed to a decoder): `example_inputs` as a callable."""

import subprocess
import sys

import pytest
import torch

import muprewrite
from fixtures import cross_attention


def test_inputs_of_the_width_make_the_cross_attention_hidden():
    """muP by hand for this decoder (m = 128 / 32 = 4): q, k, v, out are hidden (Adam LR 1/m; k and v
    because the encoder states they read grow with width), the head is the readout, one 1/d
    attention scale; verified with the inputs of the verification width."""
    torch.manual_seed(0)
    result = muprewrite.mupify(cross_attention.make_model, base=32, target=128,
                               example_inputs=cross_attention.example_inputs)
    params = result.plan.parameters
    for name in ("key.weight", "value.weight", "query.weight", "out.weight"):
        assert (params[name].role, params[name].lr_mult["adam"]) == ("hidden", 0.25), name
    assert params["head.weight"].role == "output"
    assert params["embed.weight"].lr_mult["adam"] == 1.0
    assert [e.kind for e in result.plan.edits] == ["attention_scale", "readout_multiplier"]
    assert result.report.verification["width"] == 64


def test_fixed_inputs_of_one_width_are_refused_with_the_reason():
    """Encoder states of the base width cannot feed the model at delta: the error says so."""
    with pytest.raises(muprewrite.MuRewriteError, match=r"at width 64 although .* example_inputs\(width\)"):
        muprewrite.mupify(cross_attention.make_model, base=32, target=128,
                          example_inputs=cross_attention.example_inputs(32), materialize=False)


def test_model_file_with_example_inputs_of_width(tmp_path):
    done = subprocess.run([sys.executable, "-m", "muprewrite.cli", "tests/fixtures/cross_attention.py", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '"key.weight"' in done.stdout


def test_hf_decoder_built_alone_gets_encoder_states_of_its_width():
    from muprewrite import hf

    factory = hf.factory("trocr")
    inputs = hf.example_inputs(factory)
    assert isinstance(inputs, hf.WithEncoderStates)
    base, delta, target = hf.widths(factory)
    assert inputs(base)["encoder_hidden_states"].shape[-1] == base
    assert inputs(delta)["encoder_hidden_states"].shape[-1] == delta
    plan = muprewrite.mupify(factory, base=base, delta=delta, target=target, example_inputs=inputs,
                             materialize=False).plan
    cross = plan.parameters["model.decoder.layers.0.encoder_attn.k_proj.weight"]
    assert (cross.role, cross.lr_mult["adam"]) == ("hidden", base / target)


def test_hf_decoder_without_cross_attention_keeps_plain_inputs():
    from muprewrite import hf

    inputs = hf.example_inputs("gpt2")  # its forward takes encoder_hidden_states, but it has no cross-attention
    assert isinstance(inputs, dict) and set(inputs) == {"input_ids", "attention_mask"}

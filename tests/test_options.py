"""The paper's knobs as rewrite options: each reaches the plan, the report and the model."""

import copy
from pathlib import Path

import pytest
import torch

import gpt_sdpa
import mlp
import muprewrite
from muprewrite.cli import main
from muprewrite.errors import MuRewriteError
from muprewrite.options import OPTIONS, markdown_table
import transformer_encoder
from test_passes import TOKENS, EinsumNet


def mupify(module, target=None, **kwargs):
    torch.manual_seed(0)
    return muprewrite.mupify(module.make_model, base=module.BASE_WIDTH, target=target or 4 * module.BASE_WIDTH,
                             example_inputs=module.example_inputs(), **kwargs)


def train(model, groups, optimizer, inputs, steps=3):
    opt = optimizer(groups)
    model.eval()  # no dropout: the three tables must give the same function
    for _ in range(steps):
        opt.zero_grad()
        model(*inputs).float().pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        return model(*inputs)


@pytest.mark.parametrize("module", [mlp, gpt_sdpa], ids=["mlp", "gpt"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_tables_3_8_9_train_the_same_function(module, optimizer):
    """TP5 Lemma J.1: multiplier x theta, init / theta, Adam LR / theta (SGD / theta^2) is invisible."""
    make = {"sgd": lambda g: torch.optim.SGD(g, lr=0.05), "adam": lambda g: torch.optim.Adam(g, lr=1e-3, eps=1e-20)}
    outputs = {}
    for table in ("mup", "table3", "table9"):
        result = mupify(module, parametrization=table)
        model = result.model.double()
        groups = muprewrite.param_groups(model, result.plan, lr=0.05 if optimizer == "sgd" else 1e-3, optimizer=optimizer)
        inputs = tuple(x.double() if x.is_floating_point() else x for x in module.example_inputs())
        outputs[table] = train(model, groups, make[optimizer], inputs)
    assert not torch.allclose(outputs["mup"], mupify(module).model.double()(*inputs))  # training moved it
    torch.testing.assert_close(outputs["table3"], outputs["mup"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(outputs["table9"], outputs["mup"], rtol=1e-6, atol=1e-9)


def test_table9_puts_multipliers_on_vector_weights():
    plan = mupify(gpt_sdpa, parametrization="table9").plan
    kinds = {(e.kind, e.family) for e in plan.edits}
    assert {("weight_multiplier", "embedding"), ("weight_multiplier", "norm"), ("weight_multiplier", "linear")} <= kinds
    ln = plan.parameters["blocks.0.ln_1.weight"]
    assert ln.weight_multiplier == pytest.approx(2.0) and ln.lr_mult["adam"] == pytest.approx(0.5)


def test_zero_init_readout():
    result = mupify(mlp, options={"zero_init_readout": True})
    assert result.plan.parameters["readout.weight"].zero and result.plan.parameters["readout.bias"].zero
    assert not result.model.readout.weight.any() and not result.model.readout.bias.any()
    assert result.model.fc2.weight.any()
    assert not result.model(*mlp.example_inputs()).any()


def test_zero_init_query_hits_only_the_query_slice_of_fused_qkv():
    result = mupify(gpt_sdpa, options={"zero_init_query": True})
    d = 4 * gpt_sdpa.BASE_WIDTH
    for block in result.model.blocks:
        weight, bias = block.attn.c_attn.weight, block.attn.c_attn.bias
        assert not weight[:d].any() and weight[d:].abs().sum() > 0
        assert result.plan.parameters["blocks.0.attn.c_attn.weight"].zero == [{"dim": 0, "start": 0, "stop": d}]
        assert bias.shape == (3 * d,)


def test_zero_init_query_in_nn_multihead_attention_and_matmul_projections():
    result = mupify(transformer_encoder, options={"zero_init_query": True})
    d = 4 * transformer_encoder.BASE_WIDTH
    in_proj = result.model.encoder.layers[0].self_attn.in_proj_weight
    assert not in_proj[:d].any() and in_proj[d:].abs().sum() > 0
    torch.manual_seed(0)
    einsum = muprewrite.mupify(EinsumNet, base=16, target=64, example_inputs=TOKENS, options={"zero_init_query": True})
    qkv = einsum.model.qkv  # used as x @ qkv, then chunked: the query is the first third of the columns
    assert not qkv[:, :64].any() and qkv[:, 64:].abs().sum() > 0


class UnprojectedQuery(torch.nn.Module):
    """Attention whose query is the block's input itself: no weight computes q, none can be zeroed."""

    def __init__(self, width):
        super().__init__()
        self.inp, self.kv, self.out = torch.nn.Linear(8, width), torch.nn.Linear(width, 2 * width), torch.nn.Linear(width, 3)

    def forward(self, x):
        h = self.inp(x)
        k, v = self.kv(h).chunk(2, -1)
        split = lambda t: t.unflatten(-1, (2, -1)).transpose(1, 2)  # noqa: E731
        return self.out(torch.nn.functional.scaled_dot_product_attention(split(h), split(k), split(v)).transpose(1, 2).flatten(2))


def test_zero_init_query_that_cannot_be_traced_is_refused():
    inputs = (torch.randn(2, 5, 8),)
    with pytest.raises(MuRewriteError, match="zero_init_query: the query of attention scaled_dot_product_attention"):
        muprewrite.mupify(UnprojectedQuery, base=32, target=128, example_inputs=inputs, options={"zero_init_query": True})
    muprewrite.mupify(UnprojectedQuery, base=32, target=128, example_inputs=inputs)  # fine without the option


def test_sp_attention_scale_keeps_one_over_sqrt_d():
    plan = mupify(gpt_sdpa, options={"attention_scale": "sp"}).plan
    assert [e.kind for e in plan.edits] == ["readout_multiplier"]


def test_norm_gains_frozen_and_removed():
    frozen = mupify(gpt_sdpa, options={"norm_gains": "frozen"})
    gain = frozen.model.blocks[0].ln_1
    assert not gain.weight.requires_grad and gain.bias.requires_grad
    grouped = {n for g in frozen.param_groups(lr=1e-3) for n in g["names"]}
    assert "blocks.0.ln_1.weight" not in grouped and "blocks.0.ln_1.bias" in grouped
    assert "trainable-norm-gains" not in [w.code for w in frozen.plan.warnings]

    removed = mupify(gpt_sdpa, options={"norm_gains": "removed"})
    checkpoint = copy.deepcopy(removed.model.state_dict())
    checkpoint["blocks.0.ln_1.weight"].fill_(3.0)
    model = gpt_sdpa.make_model(4 * gpt_sdpa.BASE_WIDTH)
    model.load_state_dict(checkpoint)
    restored = muprewrite.apply_plan(model, removed.plan)
    assert torch.equal(restored.blocks[0].ln_1.weight, torch.ones_like(restored.blocks[0].ln_1.weight))
    assert not restored.blocks[0].ln_1.weight.requires_grad


def test_scaled_adam_eps():
    result = mupify(gpt_sdpa, options={"adam_eps": "scaled"})
    eps = {n: g["eps"] for g in result.param_groups(lr=1e-3, eps=1e-8) for n in g["names"]}
    assert eps["blocks.0.mlp.c_fc.weight"] == pytest.approx(1e-8 / 4)
    assert eps["blocks.0.ln_1.weight"] == pytest.approx(1e-8)
    plain = {g.get("eps") for g in mupify(gpt_sdpa).param_groups(lr=1e-3, eps=1e-8)}
    assert plain == {1e-8}


def test_alpha_in_multiplies_input_weights():
    base = mlp.BASE_WIDTH
    torch.manual_seed(0)
    result = muprewrite.mupify(mlp.make_model, base=base, target=base, example_inputs=mlp.example_inputs(),
                               options={"alpha_in": 2.0})
    (edit,) = result.plan.edits
    assert (edit.kind, edit.param, edit.new) == ("weight_multiplier", "fc1.weight", 2.0)
    torch.manual_seed(0)
    reference = mlp.make_model(base)
    (x,) = mlp.example_inputs()
    # the stored weight is divided by 2 and multiplied back at its use: the same function at init
    torch.testing.assert_close(result.model(x), reference(x), rtol=1e-6, atol=1e-7)
    assert torch.allclose(result.model.fc1.weight * 2, reference.fc1.weight)


def test_options_are_in_the_report():
    result = mupify(gpt_sdpa, options={"zero_init_query": True, "norm_gains": "frozen", "weight_decay": "coupled"})
    text = result.report.to_markdown()
    assert "zero_init_query=True" in text and "norm_gains=frozen" in text and "weight_decay=coupled" in text
    assert "frozen" in text.split("blocks.{0..1}.ln_1.weight")[1].splitlines()[0]
    assert "zero" in text.split("blocks.{0..1}.attn.c_attn.weight")[1].splitlines()[0]
    assert "WD× = 1: weight decay coupled" in text


def test_bad_option_values_are_refused():
    with pytest.raises(muprewrite.MuRewriteError, match="norm_gains='gone' is not one of"):
        mupify(mlp, options={"norm_gains": "gone"})
    with pytest.raises(muprewrite.MuRewriteError, match="unknown parametrization"):
        mupify(mlp, parametrization="table7")


def test_readme_table_is_the_declared_options():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert markdown_table() in readme


def test_cli_help_lists_every_option_with_what_it_takes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    for option in OPTIONS:
        assert f"{option.name}={option.takes}" in text

"""The analysis passes on models written in unusual ways: roles from use sites, attention forms."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cnn
import muprewrite


def plan_for(factory, inputs, base=16, target=64, **kwargs):
    return muprewrite.mupify(factory, base=base, target=target, example_inputs=inputs, **kwargs).plan


def roles(plan):
    return {name: p.role for name, p in plan.parameters.items()}


class TransposedLinear(nn.Module):
    """HF Conv1D style: weight stored [in, out], applied with addmm."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class EinsumNet(nn.Module):
    """Weights used through einsum and matmul, a fused qkv split, an einsum readout."""

    def __init__(self, width, vocab=11):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(vocab, width))
        self.qkv = nn.Parameter(torch.randn(width, 3 * width) / math.sqrt(width))
        self.up = TransposedLinear(width, 2 * width)
        self.down = nn.Parameter(torch.randn(2 * width, width) / math.sqrt(2 * width))
        self.unembed = nn.Parameter(torch.randn(vocab, width) / width)

    def forward(self, tokens):
        x = self.embed[tokens]  # indexing lookup
        q, k, v = (x @ self.qkv).chunk(3, dim=-1)
        att = torch.einsum("btd,bsd->bts", q, k) / math.sqrt(q.shape[-1])
        x = x + torch.einsum("bts,bsd->btd", att.softmax(-1), v)
        x = x + torch.relu(self.up(x)) @ self.down
        return torch.einsum("btd,vd->btv", x, self.unembed)


TOKENS = (torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def einsum_plan():
    return plan_for(EinsumNet, TOKENS)


def test_roles_come_from_use_sites_not_module_types(einsum_plan):
    plan = einsum_plan
    assert roles(plan) == {
        "embed": "input",  # a lookup by indexing, like an embedding
        "qkv": "hidden", "up.weight": "hidden", "up.bias": "vector", "down": "hidden", "unembed": "output",
    }
    assert plan.parameters["up.weight"].lr_mult["adam"] == pytest.approx(1 / 4)  # transposed layout
    assert plan.parameters["qkv"].infinite == [True, True]
    assert not [w for w in plan.warnings if w.code == "unclassified-use"]


def test_einsum_attention_and_einsum_readout_are_edited(einsum_plan):
    plan = einsum_plan
    kinds = {(e.kind, e.family, e.apply_to) for e in plan.edits}
    assert ("attention_scale", "matmul", "input") in kinds
    assert ("readout_multiplier", "matmul", "input") in kinds
    attention = next(e for e in plan.edits if e.kind == "attention_scale")
    assert attention.old == pytest.approx(1 / math.sqrt(64))
    assert attention.new == pytest.approx(math.sqrt(16) / 64)


class BaddbmmAttention(nn.Module):
    """Older HF style: logits = baddbmm(bias, q, k^T, alpha=1/sqrt(d)), heads fixed."""

    def __init__(self, width):
        super().__init__()
        self.inp = nn.Linear(6, width)
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        h = self.inp(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        bias = torch.zeros(x.shape[0], x.shape[1], x.shape[1], device=x.device)
        logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=1 / math.sqrt(q.shape[-1]))
        return self.out(torch.bmm(logits.softmax(-1), v))


def test_baddbmm_alpha_is_the_old_scale():
    plan = plan_for(BaddbmmAttention, (torch.randn(2, 4, 6),))
    (attention,) = [e for e in plan.edits if e.kind == "attention_scale"]
    assert attention.old == pytest.approx(1 / 8) and attention.new == pytest.approx(4 / 64)


def test_cnn_roles():
    plan = plan_for(cnn.make_model, cnn.example_inputs(), base=8, target=32)
    assert roles(plan) == {"conv1.weight": "input", "conv1.bias": "vector", "conv2.weight": "hidden",
                           "conv2.bias": "vector", "readout.weight": "output", "readout.bias": "scalar"}
    assert plan.parameters["conv2.weight"].infinite == [True, True, False, False]


class MLP(nn.Module):
    def __init__(self, n_in, width, depth, n_out):
        super().__init__()
        sizes = [n_in] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.readout = nn.Linear(width, n_out)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.readout(x)


@settings(max_examples=12, deadline=None)
@given(n_in=st.integers(1, 9), depth=st.integers(1, 3), n_out=st.integers(1, 7),
       base=st.sampled_from([4, 8, 12]), factor=st.sampled_from([1, 2, 3, 8]))
def test_mlp_rules_hold_for_any_shape(n_in, depth, n_out, base, factor):
    def factory(width):
        return MLP(n_in, width, depth, n_out)

    target = base * factor
    inputs = (torch.randn(3, n_in),)
    torch.manual_seed(0)
    result = muprewrite.mupify(factory, base=base, target=target, example_inputs=inputs)
    plan = result.plan
    expected = {"hidden.0.weight": "input", "readout.weight": "output"}
    expected |= {f"hidden.{i}.weight": "hidden" for i in range(1, depth)}
    expected |= {f"hidden.{i}.bias": "vector" for i in range(depth)}
    assert {n: r for n, r in roles(plan).items() if n != "readout.bias"} == expected
    for i in range(1, depth):
        assert plan.parameters[f"hidden.{i}.weight"].lr_mult["adam"] == pytest.approx(1 / factor)
    if factor > 1:
        (readout,) = plan.edits
        assert readout.new == pytest.approx(1 / factor) and readout.realized_by == "forward_pre_hook"
    else:  # base width: nothing to edit, and the original, bit for bit
        assert plan.edits == []
        torch.manual_seed(0)
        original = factory(base)
        assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), original.state_dict().values()))
        x = torch.randn(3, n_in)
        assert torch.equal(result.model(x), original(x))


@settings(max_examples=10, deadline=None)
@given(base=st.sampled_from([8, 16]), factor=st.sampled_from([2, 4]), parametrization=st.sampled_from(["mup", "sp"]))
def test_sp_is_the_identity_and_mup_lr_scales_with_fan_in(base, factor, parametrization):
    plan = plan_for(lambda w: MLP(5, w, 2, 3), (torch.randn(2, 5),), base=base, target=base * factor,
                    parametrization=parametrization)
    hidden = plan.parameters["hidden.1.weight"]
    if parametrization == "sp":
        assert plan.edits == [] and set(hidden.lr_mult.values()) == {1.0}
        assert all(p.init_std["before"] == p.init_std["after"] for p in plan.parameters.values())
    else:
        assert hidden.lr_mult["adam"] == pytest.approx(1 / factor)
        assert hidden.wd_mult["adam"] == pytest.approx(factor)
        assert hidden.init_std["after"] == pytest.approx(hidden.init_std["before"], rel=1e-6)  # torch init is already 1/sqrt(fan_in)


def test_options_reach_the_plan():
    def factory(width):
        return MLP(5, width, 2, 3)

    inputs = (torch.randn(2, 5),)
    plan = plan_for(factory, inputs, options={"weight_decay": "coupled", "alpha_out": 2.0})
    assert plan.options["weight_decay"] == "coupled"
    assert set(plan.parameters["hidden.1.weight"].wd_mult.values()) == {1.0}
    assert "coupled-weight-decay" in [w.code for w in plan.warnings]
    assert plan.edits[0].new == pytest.approx(2.0 / 4)
    attention = plan_for(BaddbmmAttention, (torch.randn(2, 4, 6),), options={"alpha_attn": 0.5})
    (edit,) = [e for e in attention.edits if e.kind == "attention_scale"]
    assert edit.new == pytest.approx(0.5 * 4 / 64)
    with pytest.raises(muprewrite.MuRewriteError, match="unknown option"):
        plan_for(factory, inputs, options={"alpha": 1.0})

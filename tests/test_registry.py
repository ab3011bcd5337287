"""The op registry binds arguments by schema, the same way in captured graphs and at run time."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import muprewrite
from muprewrite.passes import ops
from muprewrite.passes.inline import inline_hops

X = torch.randn(2, 3, 3)


@pytest.mark.parametrize("func, args, kwargs, slot, expected", [
    (torch.baddbmm, (X, X, X), {}, "batch1", ("args", 1)),
    (torch.Tensor.baddbmm, (X,), {"batch1": X, "batch2": X, "alpha": 0.5}, "batch1", ("kwargs", "batch1")),
    (torch.Tensor.baddbmm, (X,), {"batch1": X, "batch2": X}, "input", ("args", 0)),
    (torch.matmul, (), {"input": X, "other": X}, "input", ("kwargs", "input")),
    (torch.Tensor.__rmatmul__, (X, X), {}, "input", ("args", 1)),  # y.__rmatmul__(x) is x @ y
    (F.linear, (X, X[0]), {"bias": None}, "weight", ("args", 1)),
    (F.embedding, (torch.tensor([0]), X[0]), {}, "weight", ("args", 1)),
    (F.layer_norm, (X, (3,)), {"weight": X[0, 0]}, "weight", ("kwargs", "weight")),
    (torch.einsum, ("bij,bjk->bik", X, X), {}, "tensors.1", ("args", 2)),
    (torch.einsum, ("bij,bjk->bik", [X, X]), {}, "tensors.1", ("list", 1, 1)),
])
def test_runtime_calls_bind_by_schema(func, args, kwargs, slot, expected):
    assert ops.call_location(func, args, kwargs, slot) == expected


def test_an_edit_on_a_keyword_operand_scales_that_operand():
    location = ops.call_location(torch.Tensor.baddbmm, (X,), {"batch1": X, "batch2": X}, "batch1")
    args, kwargs = ops.replace(location, (X,), {"batch1": X, "batch2": X}, X * 2)
    assert torch.equal(kwargs["batch1"], X * 2) and kwargs["batch2"] is X and args[0] is X


def test_graph_nodes_bind_by_schema():
    class Alibi(nn.Module):
        def forward(self, bias, q, k):
            return bias.baddbmm(batch1=q, batch2=k, beta=1.0, alpha=0.5)

    program = torch.export.export(Alibi(), (X.clone(), X.clone(), X.clone()), strict=False)
    (node,) = [n for n in program.graph.nodes if ops.op_name(n) == "baddbmm"]
    slots = ops.node_slots(node)
    assert slots["batch1"].name == "q" and slots["input"].name == "bias" and slots["alpha"] == 0.5
    assert ops.spec(node).query == "batch1" and ops.contracted_dims(node, "batch1", 3) == (2,)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["ij,jk->ik", "bij,bkj->bik", "...d,de->...e", "ecd,efd->ecf", "ij,j"]))
def test_einsum_contracted_dims_are_the_letters_missing_from_the_output(equation):
    lhs, _, rhs = equation.partition("->")
    spec = lhs.split(",")[0]
    ndim = len(spec.replace("...", "")) + (1 if "..." in spec else 0)
    expected = ops._einsum_contracted(equation, 0, ndim) or ()
    letters = [c for c in spec.replace("...", "")]
    if not rhs and "->" not in equation:
        all_letters = lhs.replace(",", "")
        rhs = "".join(c for c in set(all_letters) if all_letters.count(c) == 1)
    assert len(expected) == sum(1 for c in letters if c not in rhs)


def test_inplace_ops_are_their_out_of_place_op():
    class Masked(nn.Module):
        def forward(self, x):
            y = x.clone()
            y.masked_fill_(x > 0, 0.0)
            return y.add_(1.0)

    program = torch.export.export(Masked(), (X,), strict=False)
    names = [ops.op_name(n) for n in program.graph.nodes if n.op == "call_function"]
    assert "masked_fill" in names and "add" in names


class NoGradBlock(nn.Module):
    """A width x width linear under no_grad feeding the main path, and a readout under autocast."""

    def __init__(self, width):
        super().__init__()
        self.inp, self.ema, self.hidden = nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, width)
        self.head = nn.Parameter(torch.randn(3, width) / math.sqrt(width))

    def forward(self, x):
        h = self.inp(x)
        with torch.no_grad():
            target = self.ema(h)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
            h = self.hidden(h) + target
        return F.linear(h, self.head)


def test_no_grad_and_autocast_bodies_are_analysed_and_verified():
    result = muprewrite.mupify(NoGradBlock, base=32, target=128, example_inputs=(torch.randn(2, 8),))
    params = result.plan.parameters
    assert params["ema.weight"].role == "hidden" and params["ema.weight"].lr_mult["adam"] == 0.25
    assert params["hidden.weight"].role == "hidden" and params["head"].role == "output"
    (readout,) = [e for e in result.plan.edits if e.kind == "readout_multiplier"]
    assert readout.param == "head" and readout.factor == 0.25
    assert result.report.verification["outputs"] == 0.0


def test_inlining_keeps_what_the_graph_computes():
    program = torch.export.export(NoGradBlock(16), (torch.randn(2, 8),), strict=False)
    module = program.module()
    flat = inline_hops(module)
    assert not any(isinstance(n.target, torch._ops.HigherOrderOperator) for n in flat.graph.nodes)
    x = torch.randn(2, 8)
    torch.testing.assert_close(flat(x), module(x), rtol=0, atol=0)
    out = flat(x)
    out.sum().backward()
    assert flat.ema.weight.grad is None  # the no_grad body still records no gradient

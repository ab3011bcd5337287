"""The verify pass catches realizations that put an edit in the wrong place or drop it."""

import copy
import dataclasses
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import muprewrite
from muprewrite import VerificationError
from muprewrite.api import analyse
from muprewrite.passes.realize import realize
from muprewrite.passes.verify import verify
from muprewrite.widths import Widths


def delta_plan(name):
    module = importlib.import_module(name)
    widths = Widths(module.BASE_WIDTH, 2 * module.BASE_WIDTH, module.TARGET_WIDTH)
    analysis = analyse(module.make_model, module.example_inputs(), widths)
    return module, analysis.plan(at="delta"), widths.delta


@pytest.fixture(scope="module")
def tied_gpt():
    return delta_plan("gpt_tied")


def test_correct_realization_verifies(tied_gpt):
    module, plan, width = tied_gpt
    assert verify(module.make_model, module.example_inputs(), plan, width) == {
        "outputs": 0.0, "gradients": 0.0, "baseline": None, "copies": 1}  # no baseline needed: equal bit for bit


def test_dropped_hook_is_caught():
    module, plan, width = delta_plan("mlp")

    def realize_without_hooks(model, plan, reinit):
        realize(model, plan, reinit)
        for sub in model.modules():
            sub._forward_pre_hooks.clear()
        return model

    with pytest.raises(VerificationError, match="output 0 of the realized model differs"):
        verify(module.make_model, module.example_inputs(), plan, width, realize_fn=realize_without_hooks)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_infinity_on_one_side_only_is_caught(tied_gpt, bad):
    module, plan, width = tied_gpt  # a NaN compares false with any bound: it must not pass for "close"

    def realize_with_a_bad_output(model, plan, reinit):
        realize(model, plan, reinit)
        model.register_forward_hook(lambda m, args, output: output.index_fill(-1, torch.tensor([0]), bad))
        return model

    with pytest.raises(VerificationError, match="output 0 of the realized model differs from the edited graph by up to inf"):
        verify(module.make_model, module.example_inputs(), plan, width, realize_fn=realize_with_a_bad_output)


def test_edit_on_the_wrong_call_is_caught(tied_gpt):
    module, plan, width = tied_gpt
    # Move the readout multiplier from the readout linear to the first linear in the root's scope.
    wrong = [dataclasses.replace(e, occurrence=0) if e.kind == "readout_multiplier" else e for e in plan.edits]

    def realize_misplaced(model, plan, reinit):
        return realize(model, dataclasses.replace(plan, edits=wrong), reinit)

    with pytest.raises(VerificationError, match="differs from the edited graph"):
        verify(module.make_model, module.example_inputs(), plan, width, realize_fn=realize_misplaced)


def test_edit_that_never_fires_is_caught(tied_gpt):
    module, plan, width = tied_gpt
    ghost = [dataclasses.replace(e, occurrence=99) if e.kind == "attention_scale" else e for e in plan.edits]
    plan_with_ghosts = dataclasses.replace(plan, edits=ghost)
    with pytest.raises(VerificationError):
        verify(module.make_model, module.example_inputs(), plan_with_ghosts, width)


def test_wrong_attention_factor_is_caught(tied_gpt):
    module, plan, width = tied_gpt
    off = [dataclasses.replace(e, new=e.new * 1.01) if e.kind == "attention_scale" else e for e in plan.edits]

    def realize_off(model, plan, reinit):
        return realize(model, dataclasses.replace(plan, edits=off), reinit)

    with pytest.raises(VerificationError):
        verify(module.make_model, module.example_inputs(), plan, width, realize_fn=realize_off)


def test_realized_model_trains_like_the_edited_graph_under_manual_attention():
    module, plan, width = delta_plan("gpt_manual")
    kinds = sorted(e.kind for e in plan.edits)
    assert kinds == ["attention_scale", "attention_scale", "readout_multiplier"]
    assert all(e.apply_to == "input" and e.operand == "input" for e in plan.edits if e.kind == "attention_scale")
    report = verify(module.make_model, module.example_inputs(), plan, width)
    assert report["outputs"] <= 1e-6 and report["gradients"] <= 1e-6
    assert torch.isfinite(torch.tensor([report["outputs"], report["gradients"]])).all()


def test_inference_fast_path_does_not_skip_the_attention_edit(monkeypatch):
    """nn.TransformerEncoderLayer has a fused eval/no_grad path that would bypass the SDPA edit;
    torch skips it when hooks are attached to its submodules, as the interception hooks are."""
    module = importlib.import_module("transformer_encoder")
    result = muprewrite.mupify(module.make_model, base=32, target=128, example_inputs=module.example_inputs())
    fast_calls = []
    fused = torch._transformer_encoder_layer_fwd
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a, **k: fast_calls.append(1) or fused(*a, **k))
    model = result.model.eval()
    (tokens,) = module.example_inputs()
    with torch.no_grad():
        inference = model(tokens)
    assert fast_calls == []
    torch.testing.assert_close(inference, model(tokens).detach(), rtol=0, atol=0)


class EagerOnlyNoise(nn.Module):
    """A model whose eager forward adds a perturbation its exported graph does not have (as a
    nondeterministic kernel or an untraced side computation would): graph != eager, no edit needed."""

    def __init__(self, width):
        super().__init__()
        self.inp, self.hidden, self.out = nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 3)

    def forward(self, x):
        h = torch.relu(self.hidden(self.inp(x)))
        if not torch.compiler.is_exporting():
            h = h + 1e-3 * torch.sin(1e3 * h)
        return self.out(h)


def test_a_model_whose_graph_differs_from_eager_is_judged_against_that_baseline():
    widths = Widths(32, 64, 128)
    inputs = (torch.randn(4, 8),)
    plan = analyse(EagerOnlyNoise, inputs, widths).plan(at="delta")
    report = verify(EagerOnlyNoise, inputs, plan, widths.delta)
    assert report["baseline"]["outputs"] > 1e-4  # the model's own graph is off, with no edit at all
    assert report["outputs"] <= 4 * report["baseline"]["outputs"] + 1e-5


def test_a_misplaced_edit_is_caught_even_above_the_baseline():
    widths = Widths(32, 64, 128)
    inputs = (torch.randn(4, 8),)
    plan = analyse(EagerOnlyNoise, inputs, widths).plan(at="delta")
    (readout,) = [e for e in plan.edits if e.kind == "readout_multiplier"]
    wrong = dataclasses.replace(plan, edits=[dataclasses.replace(readout, new=readout.new * 3)])
    with pytest.raises(VerificationError, match="more than the .* by which the model's own graph differs"):
        verify(EagerOnlyNoise, inputs, wrong, widths.delta, realize_fn=lambda m, p, reinit: realize(m, plan, reinit))


class CheckpointedForward(nn.Module):
    """A GPT-like block whose attention can be run as `checkpoint(self.attn.forward, x)`: then
    the module's call (and its hooks) never runs, only its forward — when training turns
    checkpointing on, after the model was compiled without it."""

    def __init__(self, width, heads=2):
        super().__init__()
        self.heads = heads
        self.inp, self.qkv, self.out = nn.Linear(8, width), nn.Linear(width, 3 * width), nn.Linear(width, 3)
        self.attn = _SdpaAttention(heads)
        self.use_checkpoint = False

    def forward(self, x):
        q, k, v = self.qkv(self.inp(x)).chunk(3, -1)
        if self.use_checkpoint:
            h = torch.utils.checkpoint.checkpoint(self.attn.forward, q, k, v, use_reentrant=False)
        else:
            h = self.attn(q, k, v)
        return self.out(h)


class _SdpaAttention(nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.heads = heads

    def forward(self, q, k, v):
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)


def test_checkpointing_a_modules_forward_keeps_its_edits():
    inputs = (torch.randn(2, 5, 8),)
    result = muprewrite.mupify(CheckpointedForward, base=32, target=128, example_inputs=inputs)
    assert [e.kind for e in result.plan.edits if e.module == "attn"] == ["attention_scale"]
    plain = result.model
    checkpointed = copy.deepcopy(plain)
    checkpointed.use_checkpoint = True
    grads = []
    for model in (checkpointed, plain):
        model(*inputs).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-6, atol=1e-7)
    unedited = CheckpointedForward(128)
    unedited.load_state_dict(checkpointed.state_dict())
    unedited(*inputs).square().sum().backward()
    assert not torch.allclose(unedited.qkv.weight.grad, grads[1]["qkv.weight"])  # the edit matters here


class AlwaysCheckpointed(CheckpointedForward):
    """Checkpointed while compiled too: export sees the attention under the root module, and
    backward recomputes it outside the root's forward, where no edit can reach it."""

    def __init__(self, width):
        super().__init__(width)
        self.use_checkpoint = True


def test_a_recomputation_outside_the_edits_scope_fails_loudly():
    with pytest.raises(VerificationError, match="recomputed for backward outside the module"):
        muprewrite.mupify(AlwaysCheckpointed, base=32, target=128, example_inputs=(torch.randn(2, 5, 8),))


class _NoGradForward(torch.autograd.Function):
    """Computes its forward under no_grad and its own backward (as reversible layers do): the
    exported graph has no gradient path through it."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        with torch.no_grad():
            return x @ weight.T

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad @ weight, grad.transpose(-1, -2) @ x


class CustomBackward(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.inp, self.hidden, self.out = nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 3)

    def forward(self, x):
        return self.out(_NoGradForward.apply(torch.relu(self.inp(x)), self.hidden.weight))


def test_graph_without_gradient_path_is_verified_on_outputs_and_says_so():
    result = muprewrite.mupify(CustomBackward, base=32, target=128, example_inputs=(torch.randn(4, 8),))
    verification = result.report.verification
    assert verification["gradients"] is None and verification["outputs"] <= 1e-5
    assert "gradients not compared" in result.report.to_markdown()
    assert result.plan.parameters["hidden.weight"].role == "hidden"

"""Models whose weights have 3 dims: mixture-of-experts (examples/moe.py) and einsum attention with
[d_model, heads, d_head] projections (examples/einsum_attention.py). Roles come from the use sites."""

import copy
import functools
import importlib

import pytest
import torch

import muprewrite

SEED = 99


@functools.cache
def mupified(name):
    module = importlib.import_module(name)
    torch.manual_seed(SEED)
    result = muprewrite.mupify(module.make_model, base=module.BASE_WIDTH, target=4 * module.BASE_WIDTH,
                               example_inputs=module.example_inputs())
    return module, result


def use(entry, op):
    (found,) = [u for u in entry.uses if u["op"] == op]
    return found


@pytest.mark.parametrize("name", ["moe", "einsum_attention"])
def test_mupify_verifies(name):
    module, result = mupified(name)
    assert result.report.verification["outputs"] <= 1e-5
    assert result.report.verification["gradients"] <= 1e-5
    assert type(result.model) is type(module.make_model(module.BASE_WIDTH))


def test_moe_roles():
    module, result = mupified("moe")
    plan = result.plan
    for layer in range(module.N_LAYER):
        up, down = plan.parameters[f"layers.{layer}.w_up"], plan.parameters[f"layers.{layer}.w_down"]
        # [experts, d_ffn, d_model] and [experts, d_model, d_ffn]: experts is a finite batch dim
        assert up.infinite == [False, True, True] and down.infinite == [False, True, True]
        for entry in (up, down):
            assert entry.role == "hidden"
            einsum = use(entry, "einsum")
            assert einsum["fan_in_mult"] == 4.0 and einsum["fan_out_mult"] == 4.0
            assert entry.lr_mult["adam"] == pytest.approx(0.25)
            # the init is 1/sqrt(3 fan_in) already: muP's base std / sqrt(m) is what the model does
            assert entry.init_ratio == pytest.approx(1.0)
        # The router maps width -> n_experts (finite): by its use it is a readout ("output"), with
        # the 1/m multiplier on its input, like the LM head (TP5: infinite fan_in, finite fan_out).
        router = plan.parameters[f"layers.{layer}.router.weight"]
        assert router.infinite == [False, True] and router.role == "output"
        assert plan.parameters[f"layers.{layer}.router.bias"].role == "scalar"
    readouts = sorted(e.module for e in plan.edits if e.kind == "readout_multiplier")
    assert readouts == ["head", "layers.0.router", "layers.1.router"]
    assert all(e.new == pytest.approx(0.25) for e in plan.edits)
    assert not [e for e in plan.edits if e.kind == "attention_scale"]  # the gate softmax is no attention


def test_moe_router_biases_get_one_init_ratio():
    plan = mupified("moe")[1].plan
    ratios = {n: p.init_ratio for n, p in plan.parameters.items() if n.endswith("router.bias")}
    assert len(set(ratios.values())) == 1, ratios


def test_einsum_attention_roles_and_edit():
    module, result = mupified("einsum_attention")
    plan, base = result.plan, module.BASE_WIDTH
    d_head_base, d_head = base // module.N_HEAD, 4 * base // module.N_HEAD
    for layer in range(module.N_LAYER):
        prefix = f"blocks.{layer}.attn"
        for proj in ("w_q", "w_k", "w_v"):
            entry = plan.parameters[f"{prefix}.{proj}"]
            assert entry.shape == [4 * base, module.N_HEAD, d_head]
            assert entry.infinite == [True, False, True]  # d_model, heads (fixed), d_head
            assert entry.role == "hidden"
            einsum = use(entry, "einsum")
            # fan_in = d_model, fan_out = heads * d_head
            assert einsum["fan_in_mult"] == 4.0 and einsum["fan_out_mult"] == 4.0
        out = plan.parameters[f"{prefix}.w_o"]
        assert out.infinite == [False, True, True] and out.role == "hidden"
        assert use(out, "einsum")["fan_in_mult"] == 4.0  # contracts heads x d_head
    edits = [e for e in plan.edits if e.kind == "attention_scale"]
    assert sorted(e.module for e in edits) == [f"blocks.{i}.attn" for i in range(module.N_LAYER)]
    for edit in edits:
        assert edit.old == pytest.approx(d_head_base**-0.5 * (d_head / d_head_base) ** -0.5)  # 1/sqrt(d_head)
        assert edit.new == pytest.approx(d_head_base**0.5 / d_head)
        assert edit.family == "matmul" and edit.operand == "tensors.0"


def test_einsum_attention_matches_a_hand_edit():
    """Scaling q's projection by sqrt(d_base/d) is the same product as the rewritten logits."""
    module, result = mupified("einsum_attention")
    rewritten = copy.deepcopy(result.model)
    hand = module.make_model(4 * module.BASE_WIDTH)
    hand.load_state_dict(rewritten.state_dict())
    with torch.no_grad():
        for block in hand.blocks:
            block.attn.w_q.mul_(0.5)
    hand.head.register_forward_pre_hook(lambda mod, args: (args[0] * 0.25,))
    (ids,) = module.example_inputs()
    torch.testing.assert_close(rewritten(ids), hand(ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["moe", "einsum_attention"])
def test_base_width_rewrite_is_the_original(name):
    module = importlib.import_module(name)
    base, inputs = module.BASE_WIDTH, module.example_inputs()
    torch.manual_seed(SEED)
    result = muprewrite.mupify(module.make_model, base=base, target=base, example_inputs=inputs, verify_width=False)
    torch.manual_seed(SEED)
    original = module.make_model(base)
    assert result.plan.edits == []
    rewritten = result.model
    for a, b in zip(rewritten.state_dict().items(), original.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1]), a[0]
    assert torch.equal(rewritten(*inputs), original(*inputs))
    emitted = torch.optim.AdamW(result.param_groups(lr=1e-2, weight_decay=0.1), lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(original.parameters(), lr=1e-2, weight_decay=0.1)
    for model, optimizer in ((rewritten, emitted), (original, plain)):
        model(*inputs).pow(2).mean().backward()
        optimizer.step()
    for a, b in zip(rewritten.parameters(), original.parameters()):
        assert torch.equal(a, b)

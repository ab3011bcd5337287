"""verify: the compiler checks its own output before anyone trains on it.

Reads:  the model factory, example inputs and a `Plan` made for a small width (delta).
Writes: nothing; raises `VerificationError` when, at that width with real tensors,
        * the realized model (hooks, interception, re-init) and the captured graph edited by
          `rewrite` disagree on the outputs or on one step of parameter gradients, or
        * some edit of the plan never fired while the realized model ran.
Both sides are computed from the same parameters and the same RNG state, so they agree
bit for bit unless the realization put an edit in the wrong place.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

from ..errors import VerificationError
from ..plan import Plan
from .capture import build_model, export_with_fallbacks, split_inputs
from .realize import InterceptCalls, realize
from .rewrite import rewrite_graph

RTOL, ATOL = 1e-5, 1e-6


def verify(factory, inputs, plan: Plan, width: int, realize_fn=realize) -> dict:
    """Return {"outputs": max |diff|, "gradients": max |diff|} or raise VerificationError."""
    torch.manual_seed(0)
    realized = realize_fn(build_model(factory, width), plan, reinit=True)
    exported = export_with_fallbacks(build_model(factory, width), inputs, "cpu")
    oracle = rewrite_graph(exported.program.module(), plan)
    oracle.load_state_dict(realized.state_dict())
    for name, param in oracle.named_parameters():  # frozen stays frozen on both sides
        param.requires_grad_(realized.get_parameter(name).requires_grad)
    realized.train(exported.mode == "train")  # the mode the graph could be captured in
    got, got_grads = _run(realized, inputs)
    want, want_grads = _run(oracle, inputs)
    differences = {
        "outputs": _compare("output", got, want),
        "gradients": _compare("gradient of", got_grads, want_grads),
    }
    _check_all_fired(realized, plan)
    return differences


def _run(module, inputs):
    args, kwargs = split_inputs(inputs)
    module.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        outputs = module(*args, **kwargs)
    leaves = [t for t in tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    generator = torch.Generator().manual_seed(2)
    loss = sum((leaf.float() * torch.randn(leaf.shape, generator=generator)).sum() for leaf in leaves)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return {str(i): leaf.detach() for i, leaf in enumerate(leaves)}, grads


def _compare(what: str, got: dict, want: dict) -> float:
    if got.keys() != want.keys():
        missing = sorted(set(got) ^ set(want))
        raise VerificationError(f"realized model and edited graph disagree on which {what} exist: {missing[:3]}")
    worst = 0.0
    for key in want:
        if got[key].shape != want[key].shape:
            raise VerificationError(f"{what} {key}: shape {tuple(got[key].shape)} vs {tuple(want[key].shape)}")
        diff = (got[key].float() - want[key].float()).abs()
        bound = ATOL + RTOL * want[key].float().abs()
        if (diff > bound).any():
            raise VerificationError(
                f"{what} {key} of the realized model differs from the edited graph by up to "
                f"{diff.max().item():.3g}: an edit was realized in the wrong place; please report "
                "this model (run with --debug)"
            )
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


def _check_all_fired(model, plan: Plan) -> None:
    fired = set()
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, InterceptCalls):
                fired |= {(e.module, k) for k in owner.fired for e in owner.edits[k]}
    for edit in plan.edits:
        key = (edit.module, (edit.call, edit.family, edit.occurrence))
        if edit.realized_by == "call_interception" and key not in fired:
            raise VerificationError(
                f"the {edit.kind} edit at {edit.module or 'the root module'} ({edit.node}) never "
                "fired while the realized model ran; please report this model (run with --debug)"
            )

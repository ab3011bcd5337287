"""realize: give the user their own model back, with the plan applied.

Reads:  an `nn.Module` (fresh from the factory, or loaded from a checkpoint) and a `Plan` made
        for its width.
Writes: the same module (same class, hierarchy, parameters and state_dict keys) with
        * parameters re-initialised to the plan's std, when asked: a centred tensor is scaled by
          after/before, any other one only in its deviation from its mean, so the init family
          is kept (at base width the ratio is exactly 1 and nothing is touched);
        * readout multipliers on an `nn.Linear` as a forward pre-hook scaling its input;
        * every other use-site edit by scoped call interception: the owning module's `forward`
          is replaced (an instance attribute, so no caller can reach the old one: `__call__`,
          `checkpoint(module.forward, x)`, HF's gradient-checkpointing layers, compile) by one
          that keeps a TorchFunctionMode active which counts calls of the op's family (linear,
          matmul, sdpa, embedding, norm, conv) and edits the plan's occurrence of the plan's
          call of the module — exact, and blind to how the forward is written;
        * frozen parameters (requires_grad False) and removed gains (set to their constant).
        Hooks are small picklable objects, so `torch.save`, deepcopy and DDP keep working;
        `remove_edits` takes them all out again (the fold pass).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import MuRewriteError
from ..plan import Plan
from .intercept import InterceptCalls

REALIZED_FLAG = "_muprewrite_realized"


def realize(model: nn.Module, plan: Plan, reinit: bool) -> nn.Module:
    """Apply `plan` to `model` in place and return it."""
    if getattr(model, REALIZED_FLAG, False):
        raise MuRewriteError("this model already has a muprewrite plan applied; apply a plan to a fresh model")
    check_shapes(model, plan)
    if reinit:
        reinitialize(model, plan)
    fix_frozen(model, plan)
    install_edits(model, plan.edits)
    setattr(model, REALIZED_FLAG, True)
    return model


def check_shapes(model: nn.Module, plan: Plan) -> None:
    for name, param in model.named_parameters():
        entry = plan.param(name)
        if entry is None:
            continue
        if list(param.shape) != list(entry.shape):
            raise MuRewriteError(
                f"parameter '{name}' has shape {list(param.shape)} but the plan expects "
                f"{entry.shape} (made for width {plan.target_width}); make a plan at this model's width"
            )
    names = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n in plan.parameters if n not in names]
    if missing:
        raise MuRewriteError(
            f"the plan names parameter(s) this model lacks: {', '.join(missing[:3])}; "
            "apply the plan to the model it was made for"
        )


def reinitialize(model: nn.Module, plan: Plan) -> None:
    """Effective std from the plan; the stored tensor divided by its weight multiplier; zero slices."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            entry = plan.param(name)
            if entry is None:
                continue
            if entry.init_ratio != 1.0 and entry.zero_mean:
                param.mul_(entry.init_ratio)
            elif entry.init_ratio != 1.0:
                mean = param.mean()
                param.sub_(mean).mul_(entry.init_ratio).add_(mean)
            if entry.weight_multiplier != 1.0:
                param.div_(entry.weight_multiplier)
            for piece in entry.zero:
                param.narrow(piece["dim"], piece["start"], _length(param, piece)).zero_()


def fix_frozen(model: nn.Module, plan: Plan) -> None:
    """Freeze what the plan freezes and set removed gains to their constant (also on checkpoints)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            entry = plan.param(name)
            if entry is not None and entry.fill is not None:
                param.fill_(entry.fill)
            if entry is not None and not entry.trainable:
                param.requires_grad_(False)


def _length(param: torch.Tensor, piece: dict) -> int:
    stop = param.shape[piece["dim"]] if piece["stop"] is None else piece["stop"]
    return stop - piece["start"]


def install_edits(model: nn.Module, edits: list) -> None:
    """One hook or interceptor per module *object*: a module listed at several paths (a weight-tied
    layer run at each) gets its paths' edits, the k-th path's calls numbered after the earlier paths'."""
    hooked, by_object = {}, {}
    for edit in edits:
        module = module_at(model, edit.module)
        if edit.realized_by == "forward_pre_hook":
            if id(module) not in hooked:
                hooked[id(module)] = edit.factor
                module.register_forward_pre_hook(ScaleFirstInput(edit.factor))
            elif hooked[id(module)] != edit.factor:
                raise MuRewriteError(f"module '{edit.module}' is listed at several places with different readout "
                                     "multipliers; give each place its own module")
        else:
            by_object.setdefault(id(module), (module, {}))[1].setdefault(edit.module, []).append(edit)
    installed = []
    for module, by_path in by_object.values():
        if isinstance(module.__dict__.get("forward"), InterceptCalls):
            raise MuRewriteError(f"module '{next(iter(by_path))}' already has muprewrite edits; apply a plan to a "
                                 "fresh model")
        interceptor = InterceptCalls(module, _numbered_across_paths(by_path))
        module.forward = interceptor  # wherever this forward runs: __call__, checkpoint(m.forward), compile
        # fused fast paths that would skip this forward (nn.TransformerEncoderLayer's inference
        # kernel) are not taken while any submodule has a hook
        module.register_forward_pre_hook(_disable_fused_paths)
        installed.append(interceptor)
    if installed:  # each forward of the model counts its modules' calls from 0
        model.register_forward_pre_hook(ResetCalls(installed))


def module_at(model: nn.Module, path: str) -> nn.Module:
    """The module at `path` (a path the captured graph names)."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise MuRewriteError(f"the captured graph names module '{path}', which the model does not have; please "
                             "report this model (run with --debug)") from None


def _numbered_across_paths(by_path: dict) -> list:
    """(edit as the object counts its calls, the plan's edit): the paths in the order their edits run."""
    total = sum(max(e.calls for e in path_edits) for path_edits in by_path.values())
    numbered, offset = [], 0
    for path_edits in by_path.values():
        numbered += [(dataclasses.replace(e, call=offset + e.call, calls=total), e) for e in path_edits]
        offset += max(e.calls for e in path_edits)
    return numbered


def remove_edits(model: nn.Module) -> nn.Module:
    """Take out whatever `realize` installed (hooks, interceptors, the flag); parameters stay as they are."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), InterceptCalls):
            del module.forward
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, (ScaleFirstInput, ResetCalls)) or hook is _disable_fused_paths:
                del module._forward_pre_hooks[key]
    model.__dict__.pop(REALIZED_FLAG, None)
    return model


def interceptors(model: nn.Module) -> list:
    """The call interceptors installed on `model`'s modules."""
    return [m.__dict__["forward"] for m in model.modules() if isinstance(m.__dict__.get("forward"), InterceptCalls)]


def _disable_fused_paths(module, args):
    return None


class ScaleFirstInput:
    """Forward pre-hook: multiply the module's first input by a constant (a readout multiplier)."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, module, args):
        return (args[0] * self.factor, *args[1:])


class ResetCalls:
    """Forward pre-hook on the model: a new forward starts every module's call count again."""

    def __init__(self, installed: list):
        self.installed = installed

    def __call__(self, module, args):
        for interceptor in self.installed:
            if not interceptor.depth:
                interceptor.calls = 0

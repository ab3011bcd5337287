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
from collections import Counter

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack, redispatch_function

from ..errors import MuRewriteError
from ..plan import Edit, Plan
from . import ops

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


class InterceptCalls:
    """Replaces one module's `forward` (as an instance attribute, so it runs however the forward
    is reached: the module's call, `checkpoint(module.forward, ...)`, a wrapper calling it) and
    keeps an `_EditCalls` mode active while it runs; the k-th call of the module in a forward gets
    the edits the plan made for call k."""

    def __init__(self, module: nn.Module, edits: list):
        """`edits`: (edit as this object counts its calls, the plan's edit) pairs."""
        self.module = module
        self.edits = {}  # (call, family, occurrence) -> the edits of that op (a weight and its bias, say)
        self.planned = {}  # the same key -> (module path, (call, family, occurrence)) of the plan's edits
        for edit, planned in edits:
            key = (edit.call, edit.family, edit.occurrence)
            self.edits.setdefault(key, []).append(edit)
            self.planned.setdefault(key, set()).add((planned.module, (planned.call, planned.family, planned.occurrence)))
        self.calls_per_forward = max((e.calls for e, _ in edits), default=1)
        self.calls = 0
        self.depth = 0
        self.fired = Counter()

    def __call__(self, *args, **kwargs):
        call = self.calls % self.calls_per_forward
        self.calls += 1
        self.depth += 1
        try:
            with _EditCalls({k[1:]: v for k, v in self.edits.items() if k[0] == call}, self.fired, call):
                return type(self.module).forward(as_traced(self.module), *args, **kwargs)
        finally:
            self.depth -= 1


class _EditCalls(TorchFunctionMode):
    def __init__(self, edits: dict, fired: Counter, call: int):
        super().__init__()
        self.edits = edits
        self.fired = fired
        self.call = call
        self.counts = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in ops.COMPOSITES:
            with self:  # stay active inside, to see the family calls it makes
                return redispatch_function(func, types, args, kwargs)
        name = ops.RUNTIME.get(func)
        if name is None:
            return func(*args, **kwargs)
        family = ops.REGISTRY[name].family
        key = (family, self.counts[family])
        self.counts[family] += 1
        edits = self.edits.get(key)
        if not edits:
            return func(*args, **kwargs)
        self.fired[(self.call, *key)] += 1
        for edit in edits:
            args, kwargs = edit_arguments(edit, func, args, kwargs)
        return func(*args, **kwargs)


def as_traced(module: nn.Module) -> nn.Module:
    """The module as an export sees it: when a model holds one module object at several paths,
    export tracks each submodule through a proxy named by its access path, and a forward run on the
    raw module would name its children by their attribute alone (`fc`, for every GLU layer)."""
    if torch.compiler.is_dynamo_compiling():  # dynamo cannot trace the dispatch-mode query; it names modules itself
        return module
    tracer = getattr(get_proxy_mode(), "tracer", None)
    if not getattr(tracer, "enable_attr_proxy", False) or not tracer.module_stack:
        return module
    path, _ = next(reversed(tracer.module_stack.values()))  # the call now running: this module's
    return tracer.proxy_type(module, path) if path in tracer.module_id_cache.get(id(module), ()) else module


def counting_calls(function, *args, **kwargs) -> tuple:
    """(function(*args, **kwargs), the op-family calls it made as an edited module counts them),
    counted only where some edited module's calls are being counted (else an empty Counter)."""
    if not _edit_modes():
        return function(*args, **kwargs), Counter()
    counter = _EditCalls({}, Counter(), 0)
    with counter:
        return function(*args, **kwargs), counter.counts


def skip_calls(counts: Counter) -> None:
    """Count `counts` in every edited module now running, as if those calls were made here (a
    repeated block passed through in place of its ops: passes/repeats.py)."""
    for mode in _edit_modes():
        mode.counts.update(counts)


def _edit_modes() -> list:
    return [mode for mode in _get_current_function_mode_stack() if isinstance(mode, _EditCalls)]


def edit_arguments(edit: Edit, func, args, kwargs) -> tuple:
    """The call's (args, kwargs) with one edit applied, its arguments bound by the op's schema."""
    slot = ops.REGISTRY[ops.RUNTIME[func]].scale if edit.apply_to == "scale_kwarg" else edit.operand
    location = ops.call_location(func, args, kwargs, slot)
    if edit.apply_to == "scale_kwarg":
        return ops.replace(location, args, kwargs, edit.new) if location else (args, {**kwargs, slot: edit.new})
    if location is None:
        raise MuRewriteError(
            f"the {edit.kind} edit at {edit.module or 'the root module'} expected argument '{slot}' in a call of "
            f"{getattr(func, '__name__', func)} and found none; please report this model (run with --debug)")
    return ops.replace(location, args, kwargs, ops.read(location, args, kwargs) * edit.factor)

"""intercept: editing a module's op calls as they run (for realize), and counting them (for passthrough).

`InterceptCalls` replaces one module's `forward` and keeps an `_EditCalls` TorchFunctionMode active
while it runs: the mode counts the calls of each op family (linear, matmul, sdpa, embedding, norm,
conv: the registry's `family`) and edits the planned occurrence. `counting_calls` and `skip_calls`
let a repeated block passed through in place of its ops (passes/passthrough.py) count as if it ran.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack, redispatch_function

from ..errors import MuRewriteError
from ..plan import Edit
from . import ops


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

"""realize: give the user their own model back, with the plan applied.

Reads:  an `nn.Module` (fresh from the factory, or loaded from a checkpoint) and a `Plan` made
        for its width.
Writes: the same module (same class, hierarchy, parameters and state_dict keys) with
        * parameters re-initialised to the plan's std, when asked: a centred tensor is scaled by
          after/before, any other one only in its deviation from its mean, so the init family
          is kept (at base width the ratio is exactly 1 and nothing is touched);
        * readout multipliers on an `nn.Linear` as a forward pre-hook scaling its input;
        * every other use-site edit by scoped call interception: while the owning module runs,
          a TorchFunctionMode counts calls of the op's family (linear, matmul, sdpa, embedding,
          norm, conv) and edits the plan's occurrence — exact, and blind to how the forward is
          written;
        * frozen parameters (requires_grad False) and removed gains (set to their constant).
        Hooks are small picklable objects, so `torch.save`, deepcopy and DDP keep working.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, redispatch_function

from ..errors import MuRewriteError
from ..plan import Edit, Plan

REALIZED_FLAG = "_muprewrite_realized"

RUNTIME_FAMILIES = {
    F.linear: "linear",
    F.scaled_dot_product_attention: "sdpa",
    F.embedding: "embedding",
    **dict.fromkeys([F.layer_norm, F.rms_norm, F.group_norm], "norm"),
    **dict.fromkeys([F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d], "conv"),
    **dict.fromkeys(
        [torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
         torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.baddbmm,
         torch.Tensor.baddbmm, torch.addmm, torch.Tensor.addmm, torch.einsum],
        "matmul",
    ),
}

# Overridable torch functions written in Python that make family calls of their own.
COMPOSITES = {F.multi_head_attention_forward}
# Where a runtime function's arguments sit in another order than the captured aten op's.
RUNTIME_POSITION = {"embedding": {0: 1, 1: 0}}  # aten.embedding(weight, ids) vs F.embedding(ids, weight)
# The keyword a runtime function takes an argument by when it is not passed positionally.
RUNTIME_KEYWORD = {"norm": {2: "weight", 3: "bias"}, "linear": {1: "weight", 2: "bias"},
                   "conv": {1: "weight", 2: "bias"}, "embedding": {1: "weight"}}


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
    missing = [n for n in plan.parameters if n not in dict(model.named_parameters(remove_duplicate=False))]
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
    by_module = {}
    for edit in edits:
        if edit.realized_by == "forward_pre_hook":
            model.get_submodule(edit.module).register_forward_pre_hook(ScaleFirstInput(edit.factor))
        else:
            by_module.setdefault(edit.module, []).append(edit)
    for path, module_edits in by_module.items():
        interceptor = InterceptCalls(module_edits)
        module = model.get_submodule(path)
        module.register_forward_pre_hook(interceptor.enter)
        module.register_forward_hook(interceptor.exit, always_call=True)


class ScaleFirstInput:
    """Forward pre-hook: multiply the module's first input by a constant (a readout multiplier)."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, module, args):
        return (args[0] * self.factor, *args[1:])


class InterceptCalls:
    """Pre/post hooks that keep an `_EditCalls` mode active while one module runs."""

    def __init__(self, edits: list):
        self.edits = {}  # (family, occurrence) -> the edits of that call (a weight and its bias, say)
        for edit in edits:
            self.edits.setdefault((edit.family, edit.occurrence), []).append(edit)
        self.fired = Counter()
        self._active = []

    def enter(self, module, args):
        mode = _EditCalls(self.edits, self.fired)
        mode.__enter__()
        self._active.append(mode)

    def exit(self, module, args, output):
        if self._active:
            self._active.pop().__exit__(None, None, None)

    def __getstate__(self):
        return {**self.__dict__, "_active": []}


class _EditCalls(TorchFunctionMode):
    def __init__(self, edits: dict, fired: Counter):
        super().__init__()
        self.edits = edits
        self.fired = fired
        self.counts = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        family = RUNTIME_FAMILIES.get(func)
        if func in COMPOSITES:
            with self:  # stay active inside, to see the family calls it makes
                return redispatch_function(func, types, args, kwargs)
        if family is None:
            return func(*args, **kwargs)
        key = (family, self.counts[family])
        self.counts[family] += 1
        edits = self.edits.get(key)
        if not edits:
            return func(*args, **kwargs)
        self.fired[key] += 1
        for edit in edits:
            args, kwargs = edit_arguments(edit, args, kwargs)
        return func(*args, **kwargs)


def edit_arguments(edit: Edit, args, kwargs) -> tuple:
    """The call's (args, kwargs) with one edit applied."""
    if edit.apply_to == "scale_kwarg":  # scale is the 7th parameter of scaled_dot_product_attention
        return args[:6], {**kwargs, "scale": edit.new}
    operand = RUNTIME_POSITION.get(edit.family, {}).get(edit.operand, edit.operand)
    if isinstance(operand, int) and operand >= len(args):  # passed by keyword, e.g. F.layer_norm(x, s, weight=w)
        name = RUNTIME_KEYWORD[edit.family][operand]
        return args, {**kwargs, name: kwargs[name] * edit.factor}
    return _scale_operand(args, operand, edit.factor), kwargs


def _scale_operand(args, operand, factor):
    args = list(args)
    if isinstance(operand, (tuple, list)):  # einsum(equation, *operands) or einsum(equation, [operands])
        index = operand[1]
        if len(args) == 2 and isinstance(args[1], (list, tuple)):
            operands = list(args[1])
            operands[index] = operands[index] * factor
            return [args[0], operands]
        args[1 + index] = args[1 + index] * factor
        return args
    args[operand] = args[operand] * factor
    return args

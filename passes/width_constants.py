"""width_constants: the constants a model itself puts on a readout that change with width.

Read by decide (option `width_constants="freeze"`): T5's tied `d_model**-0.5`, a tied readout's
`logits * dim**-0.5`. Each is found by walking from the readout's activation input back, and from
its output forward, through view-like ops, and valued at base and at the plan's width (a width
that was not captured: predicted as a power law of the readout's fan_in), so the readout
multiplier can hold it at its base value.
"""

from __future__ import annotations

import math

from torch import fx

from ..errors import MuRewriteError
from ..widths import WIDTH_NAMES, scalar_at
from . import ops
from .source import where


def width_constants_around(flow, name, use, operand: str, at) -> dict | None:
    """The width-dependent constant factors the model puts on a readout's activation input and on
    its output (reached through view-like ops), with the factor that restores their base value.
    A one-element tensor there computed from buffers alone is valued from a CPU build
    (passes/constant_values.py); any other (a constant made in forward) has no value on the meta
    device: muprewrite cannot tell whether it changes with width, so it refuses. The graph is
    walked at `at`, or at the target for a width that was not captured (the same nodes); a
    constant is then predicted as a power law of the readout's fan_in."""
    node = flow.fx(use.node, at if isinstance(at, str) else "target")
    fan_in = {w: use.fan_in(w) for w in WIDTH_NAMES}
    constant_at = lambda measured, what: scalar_at(measured, fan_in, flow.widths, at, what)  # noqa: E731
    found = _constants_before(flow, ops.node_slots(node).get(operand), constant_at) + \
        _constants_after(flow, node, constant_at)
    unknown = [n for n, base, now in found if base is None]
    if unknown:
        raise MuRewriteError(
            f"the readout '{name}' in {where(flow, unknown[0], flow.module(unknown[0]))} is multiplied by the tensor "
            f"{unknown[0]}, whose value muprewrite cannot read: if it changes with width, muP's 1/m would "
            "come on top of it; make it a Python float, or pass --option width_constants=keep")
    changing = [(n, base, now) for n, base, now in found if base != now]
    if not changing:
        return None
    if any(n in {c[0] for c in _constants_after(flow, node, constant_at)} for n, _, _ in changing) and \
            ops.spec(use.op).bias and ops.node_slots(node).get(ops.spec(use.op).bias[0]) is not None:
        raise MuRewriteError(
            f"the readout '{name}' in {where(flow, use.node, use.module)} has a bias and its output is scaled "
            "by a width-dependent constant, which a multiplier on its input cannot hold at its base value; "
            "pass --option width_constants=keep to keep the constant")
    base, now = math.prod(c[1] for c in changing), math.prod(c[2] for c in changing)
    return {"node": ", ".join(c[0] for c in changing), "base": base, "now": now, "correction": base / now}


def _constants_before(flow, arg, constant_at) -> list:
    found = []
    while isinstance(arg, fx.Node):
        factor = _scalar_factor(flow, arg, constant_at)
        if factor is not None:
            found.append(factor[0])
            arg = factor[1]
        elif ops.kind(arg) != ops.VIEW or ops.op_name(arg) in ops.CONCATENATING or not arg.args:
            break
        else:
            arg = ops.node_slots(arg).get("input", arg.args[0])
    return found


def _constants_after(flow, node: fx.Node, constant_at) -> list:
    found = []
    while len(node.users) == 1:
        (node,) = node.users
        factor = _scalar_factor(flow, node, constant_at)
        if factor is not None:
            found.append(factor[0])
        elif ops.kind(node) != ops.VIEW or ops.op_name(node) in ops.CONCATENATING or ops.op_name(node) == "getitem":
            break
    return found


def _scalar_factor(flow, node: fx.Node, constant_at):
    """((name, value at base, value at the plan's width), the tensor it scales) for a mul/div of a
    tensor by a constant, the value as a factor on the tensor (None when the constant is a
    one-element tensor, whose value the meta device does not hold); None when `node` is no such
    op. `constant_at(measured, what)`: the constant at the plan's width from its captured values."""
    name = ops.op_name(node)
    if name not in ops.SCALAR_ARITH:
        return None
    slots = ops.node_slots(node)
    for constant_slot, tensor_slot in (("other", "input"), ("input", "other")):
        constant, tensor = slots.get(constant_slot), slots.get(tensor_slot)
        if not isinstance(tensor, fx.Node) or _is_one_element(flow, tensor):
            continue
        held = isinstance(constant, fx.Node) and constant.name in flow.constants  # a buffer's value, read
        if held or isinstance(constant, (int, float)) and not isinstance(constant, bool):
            measured = flow.constants[constant.name] if held else \
                {w: ops.node_slots(flow.fx(node.name, w)).get(constant_slot) for w in WIDTH_NAMES}
            base = measured["base"]
            constant = constant_at(measured, f"the constant of {name} {node.name} "
                                             f"({flow.module(node.name) or 'the root module'}) on a readout")
            values = (1.0 / base, 1.0 / constant) if name == "div" else (float(base), float(constant))
            return (node.name, *values), tensor
        if isinstance(constant, fx.Node) and _is_one_element(flow, constant) and flow.is_constant(constant.name):
            return (node.name, None, None), tensor
    return None


def _is_one_element(flow, node: fx.Node) -> bool:
    shape = flow.shape(node.name)
    return shape is not None and not isinstance(shape, list) and shape.numel("target") == 1

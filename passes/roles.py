"""roles: classify every parameter by how the graph uses it, not by its module type.

Reads:  `Dataflow`.
Writes: `{parameter FQN: [Use, ...]}`, one `Use` per use site in graph order. A parameter is
        followed through views, casts, slices (fused qkv) and scalar arithmetic to the ops that
        consume it. At a contraction (linear, matmul, einsum, conv, embedding lookup) fan_in is
        the product of the contracted dims and fan_out the rest of the operand; elsewhere
        (biases, norm gains, anything pointwise) fan_in is 1. The role of the use follows from
        which of the two grows with width:

            fan_in infinite, fan_out infinite -> hidden     fan_in finite, fan_out infinite -> input
            fan_in infinite, fan_out finite   -> output     no contraction, infinite dims  -> vector
            no infinite dim                   -> scalar     an op we do not understand     -> unclassified
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import fx

from ..widths import WIDTH_NAMES
from . import ops
from .dims import Dataflow


@dataclass(frozen=True)
class Use:
    node: str  # the consuming op
    op: str  # its aten name ("linear", "embedding", "add", ...)
    module: str  # innermost module that ran the op ("" = the root)
    role: str
    fan_in: dict  # width name -> product of contracted sizes (1 when none)
    fan_out: dict  # width name -> operand size / fan_in
    position: object = None  # where the parameter enters the op

    def fan_in_mult(self, at: str) -> float:
        return self.fan_in[at] / self.fan_in["base"]

    def fan_out_mult(self, at: str) -> float:
        return self.fan_out[at] / self.fan_out["base"]


def classify_uses(flow: Dataflow) -> dict:
    return {fqn: _uses_of(flow, node) for fqn, node in flow.parameters().items()}


def _uses_of(flow: Dataflow, param_node: str) -> list:
    uses, seen = [], set()
    stack = [flow.fx(param_node)]
    while stack:
        source = stack.pop()
        for user in sorted(source.users, key=_order(flow)):
            for position in ops.operand_positions(user, source) or [None]:
                use = _classify(flow, param_node, source, user, position)
                if use == "follow":
                    stack.append(user)
                elif use is not None and (use.node, str(position)) not in seen:
                    seen.add((use.node, str(position)))
                    uses.append(use)
    return sorted(uses, key=lambda u: _order(flow)(flow.fx(u.node)))


def _order(flow: Dataflow):
    index = {name: i for i, name in enumerate(flow.graph.nodes)}
    return lambda node: index[node.name]


def _classify(flow: Dataflow, param_node: str, source: fx.Node, user: fx.Node, position):
    name = ops.op_name(user)
    if name in ops.IGNORED_OPS:
        return None
    if name in ops.VIEW_OPS or name == "getitem" or _is_scalar_arith(user, name, position):
        return "follow"
    operand_shape = flow.shape(source.name)
    if isinstance(operand_shape, list):  # a multi-output node is only read through getitem
        return "follow"
    ndim = len(operand_shape.base)
    contracted = ops.contracted_dims(user, position, ndim)
    if contracted is not None:
        fan_in = {w: math.prod(operand_shape.at(w)[d] for d in contracted) for w in WIDTH_NAMES}
        fan_out = {w: operand_shape.numel(w) // fan_in[w] for w in WIDTH_NAMES}
        role = _contraction_role(fan_in, fan_out)
    elif name in ops.NORM_OPS or name in ops.PLACEMENT_OPS or ops.is_pointwise(user) or _is_bias_slot(name, position):
        param_shape = flow.shape(param_node)
        fan_in = dict.fromkeys(WIDTH_NAMES, 1)
        fan_out = {w: param_shape.numel(w) for w in WIDTH_NAMES}
        role = "vector" if param_shape.num_infinite else "scalar"
    else:
        fan_in = fan_out = dict.fromkeys(WIDTH_NAMES, 1)
        role = "unclassified"
    return Use(user.name, name, flow.module(user.name), role, fan_in, fan_out, position)


def _contraction_role(fan_in: dict, fan_out: dict) -> str:
    grows_in = fan_in["base"] != fan_in["delta"]
    grows_out = fan_out["base"] != fan_out["delta"]
    if grows_in and grows_out:
        return "hidden"
    if grows_out:
        return "input"
    if grows_in:
        return "output"
    return "scalar"


def _is_scalar_arith(user: fx.Node, name: str, position) -> bool:
    """x * 2.0 or x / c keeps the parameter's identity; x * other_tensor is a use."""
    if name not in ops.SCALAR_ARITH_OPS or position != 0:
        return False
    return not isinstance(user.args[1], fx.Node)


def _is_bias_slot(name: str, position) -> bool:
    return (name == "linear" and position == 2) or (name in ("addmm", "baddbmm") and position == 0) or (
        name.startswith("conv") and position == 2
    )

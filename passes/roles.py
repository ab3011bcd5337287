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
from dataclasses import dataclass, replace

from torch import fx

from ..widths import WidthShape
from . import ops
from .contractions import data_dependent
from .dims import Dataflow


@dataclass(frozen=True)
class Use:
    node: str  # the consuming op
    op: str  # its aten name ("linear", "embedding", "add", ...)
    module: str  # innermost module that ran the op ("" = the root)
    role: str
    # the operand's shape at a contraction, the parameter's at a coordinate-wise use, None for an
    # op with no rule (fan_in = fan_out = 1)
    shape: WidthShape | None
    contracted: tuple | None  # the dims of `shape` the op contracts; None: no contraction (fan_in 1)
    position: str | None = None  # the op's argument slot the parameter enters at (see ops)

    def fan_in(self, at: str | int) -> int:
        """Product of the contracted sizes at width `at` (1 when none)."""
        if self.shape is None or self.contracted is None:
            return 1
        sizes = self.shape.at(at)
        return math.prod(sizes[d] for d in self.contracted)

    def fan_out(self, at: str | int) -> int:
        """The operand's size at width `at` over its fan_in."""
        return 1 if self.shape is None else self.shape.numel(at) // self.fan_in(at)

    def fan_in_mult(self, at: str | int) -> float:
        return self.fan_in(at) / self.fan_in("base")

    def fan_out_mult(self, at: str | int) -> float:
        return self.fan_out(at) / self.fan_out("base")


def classify_uses(flow: Dataflow) -> dict:
    return {fqn: _uses_of(flow, node) for fqn, node in flow.parameters().items()}


def _uses_of(flow: Dataflow, param_node: str) -> list:
    uses, seen = [], set()
    stack = [flow.fx(param_node)]
    while stack:
        source = stack.pop()
        for user in sorted(source.users, key=_order(flow)):
            for slot in ops.slots_of(user, source) or [None]:
                use = _classify(flow, param_node, source, user, slot)
                if use == "follow":
                    stack.append(user)
                elif use is not None and (use.node, str(slot)) not in seen:
                    seen.add((use.node, str(slot)))
                    uses.append(use)
    return sorted(uses, key=lambda u: _order(flow)(flow.fx(u.node)))


def _order(flow: Dataflow):
    index = {name: i for i, name in enumerate(flow.graph.nodes)}
    return lambda node: index[node.name]


def _classify(flow: Dataflow, param_node: str, source: fx.Node, user: fx.Node, slot):
    name, kind = ops.op_name(user), ops.kind(user)
    if kind == ops.IGNORED:
        return None
    operand_shape = flow.shape(source.name)
    if kind == ops.VIEW and _joins_activation(flow, user, source):
        # bias_k appended to the keys, a token placed among the activations: a piece of that
        # activation, coordinate-wise like a bias (a contraction it then meets is the activation's)
        param_shape = flow.shape(param_node)
        return Use(user.name, name, flow.module(user.name), "vector" if param_shape.num_infinite else "scalar",
                   param_shape, None, slot)
    if kind == ops.VIEW or _is_scalar_arith(flow, user, name, slot) or isinstance(operand_shape, list):
        return "follow"  # a multi-output node is only read through getitem
    if kind == ops.POINTWISE and _same_shape(flow.shape(param_node), operand_shape) \
            and _same_shape(operand_shape, flow.shape(user.name)):
        return "follow"  # W * mask, 1 + gain: the tensor itself passes through coordinate-wise
    contracted = None
    if slot is not None and operand_shape is not None:
        contracted = ops.contracted_dims(user, slot, len(operand_shape.base))
        if contracted is None and kind is None:
            contracted = ops.infer_contraction(user, slot, _shapes_around(flow, user, source))
    if contracted is not None:
        use = Use(user.name, name, flow.module(user.name), "", operand_shape, tuple(contracted), slot)
        return replace(use, role=_contraction_role(use))
    if kind is not None and kind != ops.SOFTMAX:
        # a norm's gain or input, a bias, a pointwise use, the activation side of a contraction:
        # the tensor acts coordinate-wise
        param_shape = flow.shape(param_node)
        role = "vector" if param_shape.num_infinite else "scalar"
        return Use(user.name, name, flow.module(user.name), role, param_shape, None, slot)
    role = "unclassified" if flow.shape(param_node).num_infinite else "scalar"
    return Use(user.name, name, flow.module(user.name), role, None, None, slot)


def _joins_activation(flow: Dataflow, user: fx.Node, source: fx.Node) -> bool:
    """Whether `user` puts the parameter's values together with an activation's (cat, stack, a scatter)."""
    if ops.op_name(user) not in ops.JOINING:
        return False
    data = data_dependent(flow)
    return any(a.name in data for a in user.all_input_nodes if a is not source)


def _shapes_around(flow: Dataflow, user: fx.Node, source: fx.Node) -> dict:
    others = [flow.shape(a.name) for a in user.all_input_nodes if a is not source]
    return {"operand": flow.shape(source.name), "output": flow.shape(user.name),
            "others": [o for o in others if o is not None and not isinstance(o, list)]}


def _same_shape(a, b) -> bool:
    return a is not None and not isinstance(b, list) and b is not None and a.sizes == b.sizes


def _contraction_role(use: Use) -> str:
    grows_in = use.fan_in("base") != use.fan_in("delta")
    grows_out = use.fan_out("base") != use.fan_out("delta")
    if grows_in and grows_out:
        return "hidden"
    if grows_out:
        return "input"
    if grows_in:
        return "output"
    return "scalar"


def _is_scalar_arith(flow: Dataflow, user: fx.Node, name: str, slot) -> bool:
    """x * 2.0, x / c or x * a one-element tensor keeps the parameter's identity; x * other is a use."""
    if name not in ops.SCALAR_ARITH or slot != "input":
        return False
    other = ops.node_slots(user).get("other")
    if not isinstance(other, fx.Node):
        return True
    shape = flow.shape(other.name)
    return shape is not None and not isinstance(shape, list) and shape.numel("target") == 1 and not flow.graph.nodes[other.name]["param"]


def norm_gains(flow: Dataflow, uses: dict) -> set:
    """Parameters used as the gain of a normalization: the gain slot of a norm op, or a vector
    multiplying an activation that was just normalised (a hand-written RMSNorm or LayerNorm)."""
    return {name for name, param_uses in uses.items()
            if any(_is_gain_use(flow, u) for u in param_uses if u.role == "vector")}


def _is_gain_use(flow: Dataflow, use) -> bool:
    spec = ops.spec(use.op)
    if spec is not None and spec.kind == ops.NORM:
        return use.position == spec.gain
    if use.op != "mul":
        return False
    other = ops.node_slots(flow.fx(use.node)).get("other" if use.position == "input" else "input")
    return isinstance(other, fx.Node) and _is_normalised(other)


def _is_normalised(node: fx.Node, depth: int = 6) -> bool:
    """Whether `node` divides (or multiplies) by a root of a variance / norm a few pointwise ops up."""
    frontier = [(node, 0)]
    while frontier:
        current, level = frontier.pop()
        name = ops.op_name(current)
        if name in ops.NORMALIZING or (ops.spec(name) is not None and ops.spec(name).kind == ops.NORM):
            return True
        if level < depth and (ops.kind(current) in (ops.POINTWISE, ops.VIEW) or name in ops.SUMMING):
            frontier += [(arg, level + 1) for arg in current.all_input_nodes]
    return False

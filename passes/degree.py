"""degree: how a tensor's size follows a common factor s on the tensors it is computed from.

Reads:  fx nodes and the op registry (`ops.DEGREE_*`, `ops.SCALE_INVARIANT`, `ops.ZEROS`).
Writes: nothing; `degree_of(node, degrees)` is the degree in s of an op's result given its inputs'
        (None where it is not homogeneous or not known), the step of contractions' walk that asks
        whether the size of a product of activations cancels before the model uses it.
"""

from __future__ import annotations

from torch import fx

from . import ops


def degree_of(node: fx.Node, degree: dict):
    """The degree of the node's result in s, from its inputs' (None: not homogeneous, or not known)."""
    name, kind = ops.op_name(node), ops.kind(node)
    slots = ops.node_slots(node)
    tensors = [a for a in node.all_input_nodes if ops.kind(a) != ops.IGNORED]
    of = lambda value: degree.get(value.name, 0.0) if isinstance(value, fx.Node) else 0.0  # noqa: E731
    if kind == ops.IGNORED:
        return 0.0
    if kind == ops.NORM:
        others = [of(v) for s, v in slots.items() if s != "input" and isinstance(v, fx.Node)]
        return 0.0 if not any(others) else None
    if name == "output":
        return max((abs(of(a)) for a in tensors), default=0.0)
    if name in ops.SCALE_INVARIANT:  # which entry is largest: the same whatever the common factor
        return 0.0
    if kind == ops.CONTRACTION or name == "mul":
        return sum(of(a) for a in tensors)
    if name == "div":
        return of(slots.get("input")) - of(slots.get("other"))
    if name == "pow" and isinstance(slots.get("exponent"), (int, float)):
        return of(slots.get("input")) * slots["exponent"]
    if name in ops.DEGREE_FACTOR:
        return of(slots.get("input")) * ops.DEGREE_FACTOR[name]
    if name in ops.DEGREE_LARGER:  # max(|n|, floor): as s grows the growing operand is the larger
        degrees = {of(a) for a in tensors if not is_zero(a)} - {0.0}
        if len(degrees) == 1 and next(iter(degrees)) > 0:
            return degrees.pop()
    if kind == ops.VIEW or name in ops.DEGREE_ALIKE or name in ops.LOGIT_AFFINE:
        degrees = {of(a) for a in tensors if not _is_mask(a) and not is_zero(a)}  # zeros have any degree
        return degrees.pop() if len(degrees) == 1 else (0.0 if not degrees else None)
    return 0.0 if not any(of(a) for a in tensors) else None

def _is_mask(node: fx.Node) -> bool:
    value = node.meta.get("val")
    return value is not None and getattr(value, "dtype", None) is not None and str(value.dtype) == "torch.bool"

def is_zero(node: fx.Node, depth: int = 8) -> bool:
    """A tensor of zeros, or a view or product of one (MiniMax's first block reads a state of zeros)."""
    node = behind_views(node)
    if all_zeros(node):
        return True
    return depth > 0 and (ops.op_name(node) == "mul" or ops.kind(node) == ops.CONTRACTION) and \
        any(is_zero(a, depth - 1) for a in node.all_input_nodes)

def all_zeros(node: fx.Node) -> bool:
    node = behind_constant_factors(node)
    name, slots = ops.op_name(node), ops.node_slots(node)
    return name in ops.ZEROS or (name in ("full", "new_full", "full_like") and slots.get("fill_value") == 0)

def behind_views(node: fx.Node) -> fx.Node:
    while node.args and isinstance(node.args[0], fx.Node) and ops.kind(node) == ops.VIEW \
            and ops.op_name(node) not in ops.JOINING:
        node = node.args[0]
    return node


def behind_constant_factors(node: fx.Node) -> fx.Node:
    while node.args and isinstance(node.args[0], fx.Node) and (
            (ops.kind(node) == ops.VIEW and ops.op_name(node) not in ops.JOINING)
            or (ops.op_name(node) in ops.SCALAR_ARITH and not isinstance(node.args[1], fx.Node))):
        node = node.args[0]
    return node

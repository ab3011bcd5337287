"""Vocabulary shared by the analysis passes: which aten ops contract which operand dims.

Reads and writes nothing; every pass that needs to know what an op does asks here, so the
knowledge about ops lives in one place.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

NORM_OPS = {
    "layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm", "group_norm",
    "native_group_norm", "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "instance_norm",
}
# Argument position of the gain (scale) in each normalization op.
NORM_GAIN_POSITION = {
    "layer_norm": 2, "native_layer_norm": 2, "rms_norm": 2, "_fused_rms_norm": 2, "group_norm": 2,
    "native_group_norm": 1, "batch_norm": 1, "native_batch_norm": 1, "_native_batch_norm_legit": 1,
    "_native_batch_norm_legit_no_training": 1, "instance_norm": 1,
}
VIEW_OPS = {
    "view", "reshape", "_unsafe_view", "t", "transpose", "permute", "unsqueeze", "squeeze",
    "expand", "expand_as", "contiguous", "clone", "detach", "alias", "lift_fresh_copy",
    "_to_copy", "to", "type_as", "slice", "select", "narrow", "split", "split_with_sizes",
    "chunk", "unbind", "flatten", "unflatten", "view_as", "movedim", "dropout", "neg",
}
SCALAR_ARITH_OPS = {"mul", "div"}
# Ops that place a parameter into an activation without contracting it (a ViT's cls token).
PLACEMENT_OPS = {"cat", "stack", "concat", "index_put", "slice_scatter", "select_scatter"}
IGNORED_OPS = {"sym_size", "_assert_tensor_metadata", "_assert_scalar", "sym_numel", "output"}
MATMUL_FAMILY = {"matmul", "mm", "bmm", "baddbmm", "addmm", "einsum"}
SOFTMAX_OPS = {"softmax", "_softmax", "_safe_softmax"}
SDPA_OPS = {"scaled_dot_product_attention"}
# A call of one of these at run time produces one node of its family in the captured graph.
CONV_OPS = {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
FAMILIES = {
    "linear": {"linear"}, "sdpa": SDPA_OPS, "matmul": MATMUL_FAMILY, "embedding": {"embedding"},
    "norm": {"layer_norm", "rms_norm", "group_norm"}, "conv": CONV_OPS,
}


def op_name(node: fx.Node) -> str:
    """'linear' for aten.linear.default, 'getitem' for operator.getitem, '' for non-calls."""
    if node.op != "call_function":
        return node.op if node.op == "output" else ""
    if node.target is operator.getitem:
        return "getitem"
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        return schema.name.split("::")[-1]
    return getattr(node.target, "__name__", str(node.target))


def family(name: str) -> str | None:
    return next((fam for fam, ops in FAMILIES.items() if name in ops), None)


def is_pointwise(node: fx.Node) -> bool:
    tags = getattr(node.target, "tags", ())
    return torch.Tag.pointwise in tags


def contracted_dims(node: fx.Node, position, ndim: int):
    """Dims of the operand at `position` that `node` sums over, or None if it sums over none.

    `position` is an argument index, or ("einsum", i) for the i-th einsum operand.
    """
    name = op_name(node)
    if name == "einsum":
        return _einsum_contracted(node.args[0], position[1], ndim)
    table = {
        "linear": {1: (1,)},
        "mm": {0: (1,), 1: (0,)},
        "bmm": {0: (2,), 1: (1,)},
        "addmm": {1: (1,), 2: (0,)},
        "baddbmm": {1: (2,), 2: (1,)},
        "embedding": {0: (0,)},
        "matmul": {0: (ndim - 1,), 1: (0,) if ndim == 1 else (ndim - 2,)},
    }
    if name in table:
        return table[name].get(position)
    if name in ("index", "_unsafe_index") and position == 0:  # table[ids]: a lookup, like embedding
        return tuple(i for i, ix in enumerate(node.args[1]) if ix is not None) or None
    if name == "index_select" and position == 0:
        return (node.args[1] % ndim,)
    if name.startswith("conv") and position == 1:
        transposed = name.startswith("conv_transpose") or (
            name == "convolution" and len(node.args) > 6 and node.args[6]
        )
        return (0, *range(2, ndim)) if transposed else tuple(range(1, ndim))
    return None


def operand_positions(node: fx.Node, source: fx.Node):
    """Argument positions at which `source` feeds `node` (einsum operands as ("einsum", i))."""
    positions = []
    for i, arg in enumerate(node.args):
        if arg is source:
            positions.append(i)
        elif isinstance(arg, (list, tuple)):
            positions += [("einsum", j) for j, a in enumerate(arg) if a is source]
    positions += [key for key, arg in node.kwargs.items() if arg is source]
    return positions


def _einsum_contracted(equation: str, index: int, ndim: int):
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if not _:
        letters = [c for c in lhs if c.isalpha()]
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    spec = inputs[index]
    head, ellipsis, tail = spec.partition("...")
    dims = {c: i for i, c in enumerate(head)}
    if ellipsis:
        dims.update({c: ndim - len(tail) + i for i, c in enumerate(tail)})
    contracted = tuple(sorted(d for c, d in dims.items() if c not in rhs))
    return contracted or None

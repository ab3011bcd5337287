"""attention: find every attention-logit contraction and the scale the model applies to it.

Reads:  `Dataflow`.
Writes: a list of `AttentionSite`, one per attention in graph order:
        * `scaled_dot_product_attention` — its scale is the explicit `scale=` or the implicit
          1/sqrt(d_head);
        * a q·k contraction (matmul, bmm, baddbmm, einsum) that reaches a softmax through masks,
          additive biases, dropout, casts and views — its scale is the product of the constant
          multiplications and divisions on that path (and baddbmm's alpha).
        d_head is the contracted size of q. Whether it grows with width decides, in the plan,
        whether the logit scale must change from ~1/sqrt(d) to ~1/d. Each site also records
        which rows of which weight (and bias) produce q — the query slice of a fused qkv — for
        the zero-init-query option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import fx

from ..widths import WIDTH_NAMES
from . import ops
from .dims import Dataflow

# Ops between the q·k contraction and the softmax that do not change what the logits mean.
_LOGIT_PATH_OPS = {
    "add", "sub", "mul", "div", "masked_fill", "where", "dropout", "_to_copy", "to", "view",
    "reshape", "_unsafe_view", "expand", "clone", "contiguous", "float", "type_as", "clamp",
    "maximum", "minimum",
}


@dataclass(frozen=True)
class AttentionSite:
    node: str  # the sdpa node, or the q·k contraction node
    kind: str  # "sdpa" | "matmul"
    module: str
    d_head: dict  # width name -> contracted size of q
    old_scale: dict  # width name -> the scale the model applies today
    q_operand: object = None  # argument position of q at a q·k contraction
    query_slices: dict | None = None  # width -> {parameter: {"dim", "start", "stop"}} of the q projection

    @property
    def head_dim_grows(self) -> bool:
        return self.d_head["base"] != self.d_head["delta"]


def find_attention(flow: Dataflow) -> list:
    sites, seen = [], set()
    for name in flow.graph.nodes:
        op = ops.op_name(flow.fx(name))
        if op in ops.SDPA_OPS:
            sites.append(_sdpa_site(flow, name))
        elif op in ops.SOFTMAX_OPS:
            for contraction, scalars in _qk_contractions(flow, flow.fx(name)):
                if contraction.name not in seen and not _has_parameter_operand(flow, contraction):
                    seen.add(contraction.name)
                    sites.append(_matmul_site(flow, contraction.name, scalars))
    return sites


def _sdpa_site(flow: Dataflow, name: str) -> AttentionSite:
    d_head = {w: flow.fx(name, w).args[0].meta["val"].shape[-1] for w in WIDTH_NAMES}
    old = {}
    for w in WIDTH_NAMES:
        explicit = flow.fx(name, w).kwargs.get("scale")
        old[w] = float(explicit) if explicit is not None else 1.0 / math.sqrt(d_head[w])
    return AttentionSite(name, "sdpa", flow.module(name), d_head, old, None, _query_slices(flow, name, 0))


def _qk_contractions(flow: Dataflow, softmax: fx.Node):
    """Yield (contraction node, [(path node name, kind)]) reaching the softmax's input."""
    frontier = [(softmax.args[0], [])]
    visited = set()
    while frontier:
        node, scalars = frontier.pop()
        if not isinstance(node, fx.Node) or node.name in visited:
            continue
        visited.add(node.name)
        name = ops.op_name(node)
        if name in ops.MATMUL_FAMILY:
            yield node, scalars
        elif name in _LOGIT_PATH_OPS:
            if name in ("mul", "div") and not isinstance(node.args[1], fx.Node):
                scalars = scalars + [node.name]
            frontier += [(arg, scalars) for arg in node.all_input_nodes]


def _has_parameter_operand(flow: Dataflow, contraction: fx.Node) -> bool:
    """A contraction with a weight is a projection, not q·k (e.g. a classifier before softmax)."""
    for arg in contraction.all_input_nodes:
        upstream = {arg.name} | _view_ancestors(arg)
        if any(flow.graph.nodes[n]["param"] for n in upstream):
            return True
    return False


def _view_ancestors(node: fx.Node) -> set:
    names = set()
    while ops.op_name(node) in ops.VIEW_OPS or ops.op_name(node) == "getitem":
        node = node.args[0]
        names.add(node.name)
    return names


def _matmul_site(flow: Dataflow, name: str, scalar_nodes: list) -> AttentionSite:
    d_head, old = {}, {}
    position = _q_position(flow.fx(name))
    for w in WIDTH_NAMES:
        node = flow.fx(name, w)
        q = node.args[1][0] if position == ("einsum", 0) else node.args[position]
        q_shape = tuple(q.meta["val"].shape)
        dims = ops.contracted_dims(node, position, len(q_shape)) or ()
        d_head[w] = math.prod(q_shape[d] for d in dims)
        old[w] = _path_scale(flow, node, scalar_nodes, w)
    return AttentionSite(name, "matmul", flow.module(name), d_head, old, position,
                         _query_slices(flow, name, position))


def _q_position(node: fx.Node):
    """q is the first matrix operand (after the bias of baddbmm/addmm)."""
    name = ops.op_name(node)
    if name == "einsum":
        return ("einsum", 0)
    return 1 if name in ("baddbmm", "addmm") else 0


def _path_scale(flow: Dataflow, contraction: fx.Node, scalar_nodes: list, width: str) -> float:
    scale = float(contraction.kwargs.get("alpha", 1.0))
    for name in scalar_nodes:
        node = flow.fx(name, width)
        value = float(node.args[1])
        scale *= value if ops.op_name(node) == "mul" else 1.0 / value
    return scale


def _query_slices(flow: Dataflow, name: str, position):
    """Per width, the rows of the projection weight (and bias) that produce q; None if not found."""
    slices = {}
    for w in WIDTH_NAMES:
        node = flow.fx(name, w)
        q = node.args[1][0] if position == ("einsum", 0) else node.args[position]
        found = _trace_query(flow, q)
        if found is None:
            return None
        slices[w] = found
    return slices


def _trace_query(flow: Dataflow, node: fx.Node):
    """Walk back from q through views and splits to the projection that computed it."""
    piece, selected = None, None  # feature range [start, stop) of the projection output; MHA's select index
    while True:
        name = ops.op_name(node)
        if name == "getitem" and ops.op_name(node.args[0]) in ("split", "split_with_sizes", "chunk"):
            piece = _split_piece(node.args[0], node.args[1])
            if piece is None:
                return None
            node = node.args[0].args[0]
        elif name == "select":
            selected, node = node.args[2], node.args[0]
        elif name == "unflatten" and selected is not None and len(node.args[2]) == 2:
            size = node.args[2][1]
            piece, node = (selected * size, (selected + 1) * size), node.args[0]
        elif name in ops.VIEW_OPS:
            node = node.args[0]
        else:
            return _projection_slices(flow, node, piece)


def _split_piece(split: fx.Node, index: int):
    features = split.args[0].meta["val"].shape
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if dim % len(features) != len(features) - 1:
        return None  # only a split of the projection's feature (last) dim is understood
    total, arg = features[-1], split.args[1]
    if ops.op_name(split) == "chunk":
        arg = -(-total // arg)
    sizes = list(arg) if isinstance(arg, (list, tuple)) else [arg] * (-(-total // arg))
    start = sum(sizes[:index])
    return start, min(start + sizes[index], total)


def _projection_slices(flow: Dataflow, node: fx.Node, piece):
    """{weight: slice, bias: slice} for a linear / addmm / matmul projection with a weight operand."""
    layouts = {"linear": ((1, 0), (2, 0)), "addmm": ((2, 1), (0, 0)), "matmul": ((1, 1), (None, 0)),
               "mm": ((1, 1), (None, 0))}
    (weight_pos, weight_dim), (bias_pos, bias_dim) = layouts.get(ops.op_name(node), ((None, 0), (None, 0)))
    weight = _param_behind(flow, node.args[weight_pos]) if weight_pos is not None else None
    if weight is None:
        return None
    start, stop = piece if piece is not None else (0, None)
    slices = {weight: {"dim": weight_dim, "start": start, "stop": stop}}
    bias = _param_behind(flow, node.args[bias_pos]) if bias_pos is not None and len(node.args) > bias_pos else None
    if bias is not None:
        slices[bias] = {"dim": bias_dim, "start": start, "stop": stop}
    return slices


def _param_behind(flow: Dataflow, node) -> str | None:
    """The parameter a node is (a view of), if any."""
    while isinstance(node, fx.Node):
        if flow.graph.nodes[node.name]["param"]:
            return flow.graph.nodes[node.name]["param"]
        if ops.op_name(node) not in ops.VIEW_OPS:
            return None
        node = node.args[0]
    return None

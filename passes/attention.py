"""attention: find every attention-logit contraction and the scale the model applies to it.

Reads:  `Dataflow`.
Writes: a list of `AttentionSite`, one per attention in graph order:
        * `scaled_dot_product_attention` — its scale is the explicit `scale=` or the implicit
          1/sqrt(d_head);
        * a q·k contraction (matmul, bmm, baddbmm, einsum) that reaches a softmax through masks,
          additive biases, dropout, casts and views — its scale is the product of the constant
          multiplications and divisions on that path (and baddbmm's alpha); or a summed
          elementwise product `(q_i * k_j).sum(-1)` reaching one, scaled at the sum's input;
        * such a product reaching only score functions (exp, sigmoid, ReLU, a group max).
        d_head is the contracted size of q. Whether it grows with width decides, in the plan,
        whether the logit scale must change from ~1/sqrt(d) to ~1/d. Each site also records
        which rows of which weight (and bias) produce q — the query slice of a fused qkv — for
        the zero-init-query option. d_head, the scale and the query rows are known at the
        captured widths and, by `muprewrite.widths`' prediction, at any other (`*_at(at)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
from torch import fx

from ..widths import WIDTH_NAMES, Widths, WidthShape, record_at, scalar_at
from . import ops
from .contractions import (between_unit_vectors, grows, growing_products, of_activations, param_behind, score_path,
                           score_paths, summed_product_grows)
from .dims import Dataflow


@dataclass(frozen=True)
class AttentionSite:
    node: str  # the sdpa node, the q·k contraction node, or the sum of a summed product q * k
    kind: str  # the family realize counts its calls in: "sdpa" | "matmul" | "sum" (a summed product q * k)
    module: str
    d_head: dict  # width name -> contracted size of q
    old_scale: dict  # width name -> the scale the model applies today
    q_operand: object = None  # slot of q at a q·k contraction (see ops)
    query_slices: dict | None = None  # width -> {parameter: {"dim", "start", "stop"}} of the q projection
    softmax: str | None = None  # the softmax the logits reach (q·k contractions)
    query: WidthShape | None = None  # q's shape; d_head is the product of its dims `query_dims`
    query_dims: tuple = ()
    # the factors making up old_scale, in order: (op, {width name: value}); op "scale" is the
    # contraction's own (SDPA's scale=, None when implicit), "mul" and "div" the constants on the path
    scale_terms: tuple = ()
    widths: Widths | None = None

    @property
    def head_dim_grows(self) -> bool:
        return self.d_head["base"] != self.d_head["delta"]

    def d_head_at(self, at: str | int) -> int:
        if isinstance(at, str):
            return self.d_head[at]
        sizes = self.query.at(at)
        return math.prod(sizes[d] for d in self.query_dims)

    def old_scale_at(self, at: str | int) -> float:
        """The model's own logit scale at width `at` (each constant predicted from its captures)."""
        if isinstance(at, str):
            return self.old_scale[at]
        return _combined_scale([(op, self._term_at(op, values, at)) for op, values in self.scale_terms],
                               self.d_head_at(at))

    def query_slices_at(self, at: str | int) -> dict | None:
        if self.query_slices is None:
            return None
        return record_at(self.query_slices, self.widths, at, f"the query rows of attention {self.node}")

    def _term_at(self, op: str, values: dict, at: int):
        if op == "scale" and all(v is None for v in values.values()):
            return None
        return scalar_at(values, self.d_head, self.widths, at,
                         f"the {'scale' if op == 'scale' else f'{op} constant'} of attention {self.node}")


def _combined_scale(terms: list, d_head: int) -> float:
    """The logit scale from its factors at one width (an SDPA scale that is not given is 1/sqrt(d_head);
    a path constant that is not a number at this width is no factor)."""
    (_, own), *path = terms
    scale = 1.0 / math.sqrt(d_head) if own is None else float(own)
    for op, value in path:
        if value is not None:
            scale *= value if op == "mul" else 1.0 / value
    return scale


def find_attention(flow: Dataflow) -> list:
    """Every SDPA call, every parameter-free contraction whose result reaches a softmax, and every
    product of activations over a growing dim whose result reaches only score functions."""
    sites, seen = [], set()
    for name in flow.graph.nodes:
        kind = ops.kind(flow.fx(name))
        if kind == ops.SDPA:
            sites.append(_sdpa_site(flow, name))
        elif kind == ops.SOFTMAX:
            for contraction, path in _qk_contractions(flow, name):
                # cosine attention (q and k of unit length): its logits stay bounded at any width
                if contraction not in seen and not between_unit_vectors(flow, contraction):
                    seen.add(contraction)
                    sites.append(_matmul_site(flow, contraction, path))
    for contraction in growing_products(flow):  # logits that meet no softmax op: exp/logsumexp, sigmoid, ReLU
        path = None if contraction in seen else score_path(flow, contraction)
        if path is not None and _is_qk(flow, contraction) and of_activations(flow, contraction) \
                and _one_scale(flow, contraction):
            sites.append(_matmul_site(flow, contraction, path))
    return sites


def _one_scale(flow: Dataflow, contraction: str) -> bool:
    """Whether the logits reach every score function they meet with the same constant factors."""
    region_paths = [_path_terms(flow, path) for path in score_paths(flow, contraction)]
    return all(terms == region_paths[0] for terms in region_paths)


def hidden_logit_paths(flow: Dataflow) -> list:
    """(softmax, op, contraction) where a q·k contraction with a growing contracted dim reaches
    a softmax only through an op the registry does not know to be pointwise or a view: the
    compiler cannot tell what that op does to the logit scale."""
    found = []
    for name in flow.graph.nodes:
        if ops.kind(flow.fx(name)) != ops.SOFTMAX:
            continue
        direct = {c for c, _ in _qk_contractions(flow, name)}
        for contraction, blocker in _contractions_past_unknown_ops(flow, name):
            if contraction not in direct and grows(flow, contraction):
                found.append((name, blocker, contraction))
    return found


def _transparent(flow: Dataflow, name: str) -> bool:
    return ops.kind(flow.fx(name)) in (ops.VIEW, ops.POINTWISE)


def _logit_input(flow: Dataflow, softmax: str) -> str | None:
    start = ops.node_slots(flow.fx(softmax)).get("input")
    return start.name if isinstance(start, fx.Node) else None


def _logit_region(flow: Dataflow, softmax: str) -> set:
    """The softmax's input and what it is computed from through pointwise ops and views (empty
    when the input itself is neither)."""
    start = _logit_input(flow, softmax)
    if start is None or not _transparent(flow, start):
        return set()
    transparent = nx.subgraph_view(flow.graph, filter_node=lambda n: _transparent(flow, n))
    return nx.ancestors(transparent, start) | {start}


def _qk_contractions(flow: Dataflow, softmax: str):
    """Yield (q·k contraction, path of node names from it to the softmax)."""
    start = _logit_input(flow, softmax)
    if start is not None and _is_qk(flow, start):
        yield start, [start, softmax]
        return
    region = _logit_region(flow, softmax)
    candidates = {p for n in region for p in flow.graph.predecessors(n) if p not in region and _is_qk(flow, p)}
    for contraction in sorted(candidates, key=_graph_order(flow)):
        on_path = nx.subgraph_view(flow.graph, filter_node=lambda n: n in region or n in (contraction, softmax))
        yield contraction, nx.shortest_path(on_path, contraction, softmax)


def _contractions_past_unknown_ops(flow: Dataflow, softmax: str):
    """Yield (contraction, unknown op) for parameter-free contractions behind an unknown op."""
    start = _logit_input(flow, softmax)
    region = _logit_region(flow, softmax)
    blockers = {p for n in region for p in flow.graph.predecessors(n)
                if p not in region and ops.kind(flow.fx(p)) is None}
    if start is not None and not region and ops.kind(flow.fx(start)) is None:
        blockers.add(start)  # the softmax's input itself
    for blocker in sorted(blockers, key=_graph_order(flow)):
        frontier, seen = [blocker], set()
        while frontier:
            node = frontier.pop()
            for pred in flow.graph.predecessors(node):
                if pred in seen:
                    continue
                seen.add(pred)
                if ops.kind(flow.fx(pred)) == ops.CONTRACTION:
                    if _is_qk(flow, pred):
                        yield pred, blocker
                elif ops.kind(flow.fx(pred)) not in (ops.NORM, ops.LOOKUP):
                    frontier.append(pred)


def _is_qk(flow: Dataflow, name: str) -> bool:
    node = flow.fx(name)
    spec = ops.spec(node)
    if _is_summed_product(flow, name):
        return not _has_parameter_operand(flow, node.args[0])
    return spec is not None and spec.kind == ops.CONTRACTION and spec.query is not None \
        and not _has_parameter_operand(flow, node)


def _is_summed_product(flow: Dataflow, name: str) -> bool:
    """q·k written out: `(q_i * k_j).sum(-1)` over a growing dim (torch_geometric's TransformerConv)."""
    return ops.op_name(flow.fx(name)) == "sum" and summed_product_grows(flow, name)


def _graph_order(flow: Dataflow):
    index = {name: i for i, name in enumerate(flow.graph.nodes)}
    return lambda name: index[name]


def _sdpa_site(flow: Dataflow, name: str) -> AttentionSite:
    d_head = {w: ops.node_slots(flow.fx(name, w))["query"].meta["val"].shape[-1] for w in WIDTH_NAMES}
    terms = (("scale", {w: ops.node_slots(flow.fx(name, w)).get("scale") for w in WIDTH_NAMES}),)
    old = {w: _combined_scale([(op, values[w]) for op, values in terms], d_head[w]) for w in WIDTH_NAMES}
    query = ops.node_slots(flow.fx(name))["query"]
    return AttentionSite(name, "sdpa", flow.module(name), d_head, old, None, _query_slices(flow, name, "query"),
                         query=flow.shape(query.name), query_dims=(len(query.meta["val"].shape) - 1,),
                         scale_terms=terms, widths=flow.widths)


def _has_parameter_operand(flow: Dataflow, contraction: fx.Node) -> bool:
    """A contraction with a weight is a projection, not q·k (e.g. a classifier before softmax)."""
    return any(param_behind(flow, arg) for arg in contraction.all_input_nodes)


def _query_dims(flow: Dataflow, name: str) -> tuple:
    """The dims of q the contraction `name` contracts."""
    node = flow.fx(name)
    slot = ops.spec(node).query
    return tuple(ops.contracted_dims(node, slot, len(ops.node_slots(node)[slot].meta["val"].shape)) or ())


def _d_head(flow: Dataflow, name: str) -> dict:
    slot = ops.spec(flow.fx(name)).query
    d_head = {}
    for w in WIDTH_NAMES:
        node = flow.fx(name, w)
        q_shape = tuple(ops.node_slots(node)[slot].meta["val"].shape)
        dims = ops.contracted_dims(node, slot, len(q_shape)) or ()
        d_head[w] = math.prod(q_shape[d] for d in dims)
    return d_head


def _matmul_site(flow: Dataflow, name: str, path: list) -> AttentionSite:
    if _is_summed_product(flow, name):
        return _summed_site(flow, name, path)
    slot = ops.spec(flow.fx(name)).query
    terms, d_head = _path_terms(flow, path), _d_head(flow, name)
    old = {w: _combined_scale([(op, values[w]) for op, values in terms], d_head[w]) for w in WIDTH_NAMES}
    query = ops.node_slots(flow.fx(name))[slot]
    return AttentionSite(name, "matmul", flow.module(name), d_head, old, slot,
                         _query_slices(flow, name, slot), softmax=path[-1], query=flow.shape(query.name),
                         query_dims=_query_dims(flow, name), scale_terms=terms, widths=flow.widths)


def _summed_site(flow: Dataflow, name: str, path: list) -> AttentionSite:
    """A summed product's site: the sum's input (the product) is scaled, at the sum's call."""
    dims = ops.node_slots(flow.fx(name)).get("dim")
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    product = {w: tuple(flow.fx(name, w).args[0].meta["val"].shape) for w in WIDTH_NAMES}
    d_head = {w: math.prod(product[w][d] for d in dims) for w in WIDTH_NAMES}
    terms = _path_terms(flow, path)
    old = {w: _combined_scale([(op, values[w]) for op, values in terms], d_head[w]) for w in WIDTH_NAMES}
    return AttentionSite(name, "sum", flow.module(name), d_head, old, "input", None, softmax=path[-1],
                         query=flow.shape(flow.fx(name).args[0].name), query_dims=dims, scale_terms=terms,
                         widths=flow.widths)


def _path_terms(flow: Dataflow, path: list) -> tuple:
    """The contraction's own scale and the constant factors on the path, up to the first op that
    is not affine in the logits: (op, {width name: value}) each."""
    contraction = flow.fx(path[0])
    scale_slot = ops.spec(contraction).scale
    own = {w: float(ops.node_slots(flow.fx(path[0], w)).get(scale_slot, 1.0) or 1.0) if scale_slot else 1.0
           for w in WIDTH_NAMES}
    terms = [("scale", own)]
    for name in path[1:-1]:
        node = flow.fx(name)
        op = ops.op_name(node)
        if ops.kind(node) != ops.VIEW and op not in ops.LOGIT_AFFINE:
            break
        other = {w: ops.node_slots(flow.fx(name, w)).get("other") for w in WIDTH_NAMES}
        if op in ops.SCALAR_ARITH and any(isinstance(v, (int, float)) for v in other.values()):
            terms.append((op, {w: v if isinstance(v, (int, float)) else None for w, v in other.items()}))
    return tuple(terms)


def _query_slices(flow: Dataflow, name: str, slot: str):
    """Per width, the rows of the projection weight (and bias) that produce q; None if not found."""
    slices = {}
    for w in WIDTH_NAMES:
        found = _trace_query(flow, ops.node_slots(flow.fx(name, w))[slot])
        if found is None:
            return None
        slices[w] = found
    return slices


def _trace_query(flow: Dataflow, node: fx.Node):
    """Walk back from q through views and splits to the projection that computed it."""
    piece, selected = None, None  # feature range [start, stop) of the projection output; MHA's select index
    while True:
        name = ops.op_name(node)
        if name == "getitem" and ops.op_name(node.args[0]) in ops.SPLITTING:
            piece = _split_piece(node.args[0], node.args[1])
            if piece is None:
                return None
            node = node.args[0].args[0]
        elif name == "select":
            selected, node = node.args[2], node.args[0]
        elif name == "unflatten" and selected is not None and len(node.args[2]) == 2:
            size = node.args[2][1]
            piece, node = (selected * size, (selected + 1) * size), node.args[0]
        elif ops.kind(node) == ops.VIEW and name not in ops.SCALAR_ARITH and node.args \
                and isinstance(node.args[0], fx.Node):
            node = node.args[0]
        elif piece is None and len(node.users) > 1:
            return None  # the whole output also feeds something else (k, v, a residual): not q's own projection
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
    """{weight: slice, bias: slice} for a projection whose weight is a 2-D parameter: the weight's
    output-feature dim is the one it does not contract."""
    spec = ops.spec(node)
    if spec is None or spec.kind != ops.CONTRACTION:
        return None
    slots = ops.node_slots(node)
    for weight_slot in spec.contracts:
        weight = param_behind(flow, slots.get(weight_slot))
        shape = flow.shape(flow.parameters()[weight]) if weight else None
        if weight is None or shape is None or len(shape.base) != 2:
            continue
        contracted = ops.contracted_dims(node, weight_slot, 2) or ()
        start, stop = piece if piece is not None else (0, None)
        slices = {weight: {"dim": 1 - contracted[0], "start": start, "stop": stop}}
        for bias_slot in spec.bias:
            bias = param_behind(flow, slots.get(bias_slot))
            if bias is not None:
                slices[bias] = {"dim": 0, "start": start, "stop": stop}
        return slices
    return None

"""residuals (for depth transfer): the residual streams of the graph and the branches added to them.

Reads:  `Dataflow`.
Returns: one `Residual` per residual add, in graph order. An add is residual when one operand, the
        stream, is an ancestor of the other, the branch (x + F(x)); or when one operand is the sum of a
        residual add and the other is computed from the stream that add read (a parallel block:
        x + attn(ln(x)) + mlp(ln(x)), both branches read x). The branch is every node computed from
        the stream read on the way to the add. Adds follow each other along a stream: an add's stream
        operand comes from an earlier residual add's sum, through views or a norm; a norm on the way
        (post-LN: norm(x + F(x)) continues the stream) is recorded, since it leaves no identity path.
        Adds of two independent tensors (token + position embeddings, q cos + rotate(q) sin, a mask on
        attention logits) are not residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from . import ops
from .dims import Dataflow


@dataclass(frozen=True)
class Residual:
    node: str  # the add
    stream: str  # the add's operand slot that holds the stream ("input" or "other")
    read: str  # the stream value the branch was computed from
    branch: tuple  # the branch's nodes, in graph order; its output (the add's other operand) last
    module: str  # the module that runs the add ("" = the root)
    stream_id: int  # adds along one stream share it (numbered from 0 in graph order)
    after_norm: bool  # the stream reached this add through a norm on an earlier sum (post-LN)


def find_residuals(flow: Dataflow) -> list:
    graph, order = flow.graph, {name: i for i, name in enumerate(flow.graph.nodes)}
    found, streams = [], {}  # streams: a residual add's sum -> its stream id
    for name in graph.nodes:
        node = flow.fx(name)
        if ops.op_name(node) != "add":
            continue
        operands = {slot: ops.node_slots(node).get(slot) for slot in ("input", "other")}
        if not all(hasattr(value, "name") for value in operands.values()):
            continue  # a tensor plus a number
        residual = _residual(flow, name, {slot: value.name for slot, value in operands.items()}, found, order)
        if residual is None:
            continue
        previous, through_norm = _previous_sum(flow, operands[residual.stream].name, streams)
        stream_id = streams[previous] if previous is not None else len(set(streams.values()))
        streams[name] = stream_id
        found.append(_with(residual, stream_id=stream_id, after_norm=through_norm))
    return found


def _residual(flow: Dataflow, name: str, operands: dict, found: list, order: dict) -> Residual | None:
    graph = flow.graph
    for stream_slot, branch_slot in (("input", "other"), ("other", "input")):
        stream, out = operands[stream_slot], operands[branch_slot]
        read = stream if stream in nx.ancestors(graph, out) else _parallel_read(stream, out, found, graph)
        if read is not None:
            branch = (nx.descendants(graph, read) & nx.ancestors(graph, out)) | {out}
            return Residual(name, stream_slot, read, tuple(sorted(branch, key=order.get)), flow.module(name), -1, False)
    return None


def _parallel_read(stream: str, out: str, found: list, graph: nx.DiGraph) -> str | None:
    """Where `stream` is the sum of a residual add whose own stream read `out` is computed from."""
    earlier = next((r for r in reversed(found) if r.node == stream), None)
    if earlier is not None and earlier.read in nx.ancestors(graph, out):
        return earlier.read
    return None


def _previous_sum(flow: Dataflow, read: str, streams: dict) -> tuple:
    """(the residual sum `read` continues, whether a norm lies between), walking back through views and
    norms; (None, False) where the stream starts here."""
    through_norm, current = False, read
    while current not in streams:
        node = flow.fx(current)
        if ops.kind(node) == ops.NORM:
            through_norm = True
        elif ops.kind(node) != ops.VIEW or ops.op_name(node) in ops.JOINING:
            return None, False
        inputs = [n.name for n in node.all_input_nodes]
        if not inputs:
            return None, False
        current = inputs[0]
    return current, through_norm


def _with(residual: Residual, **changes) -> Residual:
    return Residual(**{**residual.__dict__, **changes})

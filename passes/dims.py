"""dims: match the graphs captured at each width node by node and mark every dim finite or infinite.

Reads:  `Captures` (one exported program per width).
Writes: `Dataflow` — a networkx DiGraph over the graph's nodes, no_grad/autocast bodies inlined
        (an edge runs from an argument to its user). Each node carries `fx` (its torch.fx Node per width name), `shape` (a
        `WidthShape`, a list of them for multi-output nodes, or None), `param` (the parameter
        FQN of a parameter placeholder; a repeated block's copy has none: passes/repeats.py), `module` and `module_type` (the innermost module that ran it), `calls` (which call of each
        enclosing module ran it, for modules that run several times per forward).
Raises: `WidthError` when the graphs differ between widths (naming the first differing node),
        when a dim is equal at base and delta but differs at target (the `mup` package would
        silently call it finite), or when no dim is infinite (the factory ignores width).
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import fx

from ..errors import WidthError
from ..widths import WIDTH_NAMES, Widths, WidthShape
from . import ops
from .capture import Captures
from .inline import inline_hops
from .source import line_in_forward


@dataclass
class Dataflow:
    graph: nx.DiGraph
    widths: Widths
    captures: Captures
    modules: dict  # width name -> the captured GraphModule with no_grad/autocast bodies inlined
    # node name -> {width name: value} of a one-element tensor computed from buffers alone
    # (passes/constant_values.py; filled after capture, where such a tensor scales something)
    constants: dict = field(default_factory=dict)

    def fx(self, name: str, at: str = "target") -> fx.Node:
        """Node `name` of the graph captured at width `at` (a captured width's name)."""
        return self.graph.nodes[name]["fx"][at]

    def shape(self, name: str) -> WidthShape | None:
        return self.graph.nodes[name]["shape"]

    def module(self, name: str) -> str:
        return self.graph.nodes[name]["module"]

    def module_type(self, name: str) -> str:
        return self.graph.nodes[name]["module_type"]

    def call(self, name: str, scope: str) -> int:
        """Which call of the module at `scope` (0 for the first of a forward) ran node `name`."""
        return self.graph.nodes[name]["calls"].get(scope, 0)

    def in_scope(self, name: str, scope: str) -> bool:
        """Whether `name` ran inside the module at path `scope` (itself or a descendant)."""
        module = self.module(name)
        return scope == "" or module == scope or module.startswith(scope + ".")

    def is_constant(self, name: str) -> bool:
        """Whether node `name` is computed from neither the model's inputs nor its parameters
        (a buffer, a constant made in forward, or arithmetic on them)."""
        nodes = self.graph.nodes
        return not any(nodes[n]["user_input"] or nodes[n]["param"] for n in nx.ancestors(self.graph, name) | {name})

    def parameters(self) -> dict:
        """Parameter FQN -> placeholder node name, in graph order."""
        return {d["param"]: n for n, d in self.graph.nodes(data=True) if d["param"]}


def analyse_dims(captures: Captures) -> Dataflow:
    modules = {name: inline_hops(captures.programs[name].graph_module) for name in WIDTH_NAMES}
    graphs = {name: modules[name].graph for name in WIDTH_NAMES}
    canonical = {alias: name for name, aliases in captures.aliases.items() for alias in aliases}
    params = {node: canonical.get(fqn, fqn)  # a tied tensor goes by its first name in named_parameters()
              for node, fqn in captures.programs["target"].graph_signature.inputs_to_parameters.items()}
    user_inputs = set(captures.programs["target"].graph_signature.user_inputs)
    _check_same_structure(graphs, captures.branches)
    graph = nx.DiGraph()
    for nodes in zip(*(graphs[name].nodes for name in WIDTH_NAMES)):
        by_width = dict(zip(WIDTH_NAMES, nodes))
        target = by_width["target"]
        shape = _width_shape(by_width, params.get(target.name, target.name), captures.widths)
        graph.add_node(
            target.name,
            fx=by_width,
            shape=shape,
            param=params.get(target.name),
            module=_innermost_module(target)[0],
            module_type=_innermost_module(target)[1],
            calls=_module_calls(target),
            user_input=target.name in user_inputs,
        )
        for arg in target.all_input_nodes:
            graph.add_edge(arg.name, target.name)
    _check_some_dim_infinite(graph, captures.widths)
    return Dataflow(graph=graph, widths=captures.widths, captures=captures, modules=modules)


def _check_same_structure(graphs: dict, branches: str | None = None) -> None:
    """Same nodes, same ops, same order at every width; else name the first difference. `branches`:
    where the model branches on tensor data (graphs traced on real tensors, each holding the branches
    its example took, and guards that say which)."""
    rows = itertools.zip_longest(*(graphs[name].nodes for name in WIDTH_NAMES))
    for nodes in rows:
        base = nodes[0]
        for name, node in zip(WIDTH_NAMES, nodes):
            if _signature(node) != _signature(base) and branches is not None and (_is_guard(base) or _is_guard(node)):
                raise WidthError(
                    f"the model branches on tensor data{branches}, and the example inputs take another branch at "
                    f"{name} width than at base (the graphs first differ at node {_describe(base)} vs "
                    f"{_describe(node)}); muP needs the same computation at every width: make the condition not "
                    "depend on the weights' values, or compute both sides and select with torch.where")
            if _signature(node) != _signature(base):
                raise WidthError(
                    f"the graph at {name} width differs from the base graph at node "
                    f"{_describe(base)} vs {_describe(node)}{_located(base)}; the model's structure (layers, ops) "
                    f"must not depend on width{_slice_hint(base, node, branches)}"
                )


_NOOP_SLICE = (" (a slice that takes the whole dim at one width, such as an expert capacity equal to the "
               "tokens, is no op there: make the size differ from the dim's at every width)")


def _slice_hint(base, node, branches: str | None) -> str:
    if {_op(base), _op(node)} != {"slice", "alias"}:
        return ""
    if branches is None:
        return _NOOP_SLICE
    return (f"; the model reads sizes from tensor data{branches}, and one the example sets at one width makes this "
            "slice take the whole dim (a one-hot sized by the largest index, say): size it by a constant")


def _op(node) -> str:
    return "" if node is None else str(getattr(node.target, "__name__", node.target)).split(".")[0]


_SIZE_COMPARISONS = {operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne}


def _is_guard(node) -> bool:
    """A node of the checks a real-tensor trace leaves on the branches it took (`_assert_scalar`, `sym_not`,
    a comparison of sizes)."""
    name = "" if node is None else str(getattr(node.target, "__name__", node.target))
    return "assert" in name or name.startswith("sym_") or getattr(node, "target", None) in _SIZE_COMPARISONS


def _signature(node):
    return None if node is None else (node.name, node.op, str(node.target))


def _located(node) -> str:
    """" in module 'PATH' (Type) at FILE:LINE: `code`" of a graph node, for a message."""
    if node is None:
        return ""
    path, module_type = _innermost_module(node)
    owner = f" in module '{path}' ({module_type.rpartition('.')[2]})" if path else " in the root module"
    return owner + line_in_forward(module_type, ops.op_name(node))


def _describe(node) -> str:
    return "(end of graph)" if node is None else f"'{node.name}' ({node.target})"


def _width_shape(by_width: dict, label: str, widths: Widths):
    vals = {name: node.meta.get("val") for name, node in by_width.items()}
    if all(isinstance(v, torch.Tensor) for v in vals.values()):
        return _checked_shape(label, {k: tuple(v.shape) for k, v in vals.items()}, widths)
    if all(isinstance(v, (list, tuple)) for v in vals.values()):
        parts = zip(*vals.values())
        return [_part_shape(label, i, dict(zip(vals, p)), widths) for i, p in enumerate(parts)]
    return None


def _part_shape(name: str, index: int, vals: dict, widths: Widths):
    if not all(isinstance(v, torch.Tensor) for v in vals.values()):
        return None
    return _checked_shape(f"{name}[{index}]", {k: tuple(v.shape) for k, v in vals.items()}, widths)


def _checked_shape(name: str, sizes: dict, widths: Widths) -> WidthShape:
    ranks = {len(s) for s in sizes.values()}
    if len(ranks) > 1:
        raise WidthError(
            f"node '{name}' has a different rank at different widths {sizes}; the model's "
            "structure must not depend on width"
        )
    for dim, (b, d, t) in enumerate(zip(sizes["base"], sizes["delta"], sizes["target"])):
        if b == d and t != b:
            raise WidthError(
                f"dim {dim} of '{name}' is {b} at base and delta but {t} at target: it would be "
                "treated as finite although it grows; pick a delta width at which it differs "
                "from base (or make it not depend on width)"
            )
    return WidthShape(sizes=sizes, widths=widths, name=name)


def _check_some_dim_infinite(graph: nx.DiGraph, widths: Widths) -> None:
    for _, data in graph.nodes(data=True):
        if data["param"] and data["shape"] is not None and data["shape"].num_infinite:
            return
    raise WidthError(
        f"no parameter changes shape between widths {widths.base} and {widths.delta}: the "
        "model factory seems to ignore its width argument; make the hidden sizes depend on it"
    )


def _innermost_module(node: fx.Node) -> tuple:
    """(path, qualified type name) of the innermost module that ran `node`."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, module_type = list(stack.values())[-1]
    if isinstance(module_type, type):
        module_type = f"{module_type.__module__}.{module_type.__qualname__}"
    return _clean_path(path), str(module_type)


def _module_calls(node: fx.Node) -> dict:
    """{module path: call index} of every module running `node`: export names the k-th call of a
    module in one forward with the suffix "@k" on its stack key."""
    calls = {}
    for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
        _, at, index = key.rpartition("@")
        calls[_clean_path(path)] = int(index) if at and index.isdigit() else 0
    return calls


def _clean_path(path: str) -> str:
    """nn_module_stack paths look like "L['self'].blocks[0].attn" in some versions, "blocks.0.attn" in others."""
    path = path.replace("L['self'].", "").replace("L['self']", "")
    for ch in "[]":
        path = path.replace(ch, "." if ch == "[" else "")
    return path.strip(".").replace("..", ".")

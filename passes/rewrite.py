"""rewrite: apply the plan's use-site edits to a captured graph, as explicit graph nodes.

Reads:  a GraphModule captured at the plan's width (`ExportedProgram.module()` to run it, or
        the exported program's own `graph_module`, parameters as inputs, for the diff) and a `Plan`.
Writes: the same GraphModule, edited in place and recompiled: a readout multiplier becomes a
        `mul` on the readout's activation input, a q·k scale a `mul` on q, an SDPA scale its
        `scale=` argument (a repeated block's copies are not in the graph: their representative is). This edited graph is the verification oracle for the
        realized model and the source of the report's code diff.
"""

from __future__ import annotations

import difflib
import re

import torch
from torch import fx

from ..plan import Plan
from . import ops
from .inline import inline_hops

_MUL = torch.ops.aten.mul.Tensor
_CLEANUP = re.compile(r";\s+(\w+ = )+None$")


def rewrite_graph(module: fx.GraphModule, plan: Plan) -> fx.GraphModule:
    """Inline no_grad/autocast bodies (the analysis names nodes inside them), then edit."""
    module = inline_hops(module)
    nodes = {node.name: node for node in module.graph.nodes}
    for edit in plan.graph_edits():
        node = nodes[edit.node]
        if edit.apply_to == "scale_kwarg":
            slot = ops.spec(node).scale
            location = ops.node_location(node, slot)
            if location is None:
                node.kwargs = {**node.kwargs, slot: edit.new}
            else:
                node.args, node.kwargs = _tupled(ops.replace(location, node.args, node.kwargs, edit.new))
        else:
            _scale_input(module.graph, node, edit.operand, edit.factor)
    module.graph.lint()
    module.recompile()
    return module


def graph_diff(exported: fx.GraphModule, plan: Plan) -> str:
    """The code diff of the exported graph (parameters as inputs) and its edited copy: two code
    generations, without the unlifting of `ExportedProgram.module()` (0.7 s on a 32-layer LLaMA)."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(exported.graph, {}))
    return code_diff(exported.code, rewrite_graph(fx.GraphModule(exported, graph), plan).code)


def code_diff(before: str, after: str) -> str:
    """A unified diff of two generated forward() sources, with a little context."""
    lines = difflib.unified_diff(_readable(before), _readable(after), "original", "muP", n=1, lineterm="")
    return "\n".join(line.strip() if line.startswith("@@") else line for line in lines)


def _readable(code: str) -> list:
    """Generated code without FX's `;  a = b = None` clean-up statements."""
    return [_CLEANUP.sub("", line) for line in code.splitlines()]


def _scale_input(graph: fx.Graph, node: fx.Node, slot: str, factor: float) -> None:
    location = ops.node_location(node, slot)
    with graph.inserting_before(node):
        scaled = graph.call_function(_MUL, (ops.read(location, node.args, node.kwargs), factor))
    node.args, node.kwargs = _tupled(ops.replace(location, node.args, node.kwargs, scaled))


def _tupled(args_kwargs) -> tuple:
    args, kwargs = args_kwargs
    return tuple(args), kwargs

"""inline: splice higher-order-op bodies (no_grad and autocast regions) into their graph.

Reads:  a GraphModule from torch.export, whose `torch.no_grad()` / `torch.autocast` regions are
        `wrap_with_set_grad_enabled` / `wrap_with_autocast` calls of a submodule.
Writes: a new GraphModule computing the same thing with each body inlined between the
        grad-mode or autocast enter/exit calls export used before it wrapped them, the body's
        nodes keeping their names. The analysis passes then see every parameter use, and the
        edited graph (the verification oracle) can name any node of the model. Deterministic:
        the graphs of every width inline to the same node names.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

_SET_GRAD = "wrap_with_set_grad_enabled"
_AUTOCAST = "wrap_with_autocast"


def inline_hops(module: fx.GraphModule) -> fx.GraphModule:
    if not any(_hop_kind(node) for node in module.graph.nodes):
        return module
    graph = fx.Graph()
    graph.set_codegen(module.graph._codegen)  # keeps ep.module()'s pytree calling convention
    env = {}
    for node in module.graph.nodes:
        if node.op == "get_attr" and _is_body(module, node):
            continue
        kind = _hop_kind(node)
        if kind:
            env[node] = _inline_body(graph, module, node, kind, env)
        elif node.target is operator.getitem and node.args[0] in env and isinstance(env[node.args[0]], tuple):
            env[node] = env[node.args[0]][node.args[1]]
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    return fx.GraphModule(module, graph)


def _hop_kind(node: fx.Node) -> str | None:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.HigherOrderOperator):
        return None
    return node.target.__name__ if node.target.__name__ in (_SET_GRAD, _AUTOCAST) else None


def _is_body(module: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(getattr(module, node.target, None), fx.GraphModule) and all(_hop_kind(u) for u in node.users)


def _inline_body(graph: fx.Graph, module: fx.GraphModule, hop: fx.Node, kind: str, env: dict) -> tuple:
    """Emit the body of `hop` into `graph`; return its outputs (as new nodes)."""
    split = 1 if kind == _SET_GRAD else 4  # (enabled, body, *operands) / (device, dtype, enabled, cache, body, *operands)
    body = inline_hops(getattr(module, hop.args[split].target))
    operands = [env[a] if isinstance(a, fx.Node) else a for a in hop.args[split + 1:]]
    if kind == _SET_GRAD:
        graph.call_function(torch._C._set_grad_enabled, (hop.args[0],))
    else:
        context = graph.call_function(torch.amp.autocast_mode._enter_autocast, tuple(hop.args[:split]))
    inner, placeholders = {}, iter(operands)
    outputs = ()
    for node in body.graph.nodes:
        if node.op == "placeholder":
            inner[node] = next(placeholders)
        elif node.op == "output":
            outputs = tuple(inner[n] if isinstance(n, fx.Node) else n for n in node.args[0])
        elif node.op == "get_attr":
            inner[node] = _copy_attribute(graph, module, body, node)
        else:
            inner[node] = graph.node_copy(node, lambda n: inner[n])
    if kind == _SET_GRAD:
        graph.call_function(torch._C._set_grad_enabled, (not hop.args[0],))
    else:
        graph.call_function(torch.amp.autocast_mode._exit_autocast, (context,))
    return outputs


def _copy_attribute(graph: fx.Graph, module: fx.GraphModule, body: fx.GraphModule, node: fx.Node) -> fx.Node:
    """A constant the body reads from itself, re-registered on the outer module."""
    name = f"_inlined_{node.target}"
    if not hasattr(module, name):
        setattr(module, name, getattr(body, node.target))
    return graph.get_attr(name)

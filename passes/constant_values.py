"""constant_values: the values of one-element tensors a model computes from its buffers alone.

Reads:  the factory and the `Dataflow`.
Writes: {node name: {width name: float}} for every one-element node computed from buffers alone
        (no input, no parameter) that multiplies or divides another tensor: a scale the model keeps
        in a buffer (Gemma-3n's `router_input_scale`, hidden_size**-1 on a router's input), which
        width_constants holds at its base value where it sits on a readout. The graphs are captured
        on meta, where a buffer holds no value, so the model is built on the CPU at each width with
        its init fills deferred (no parameter memory is written) and each node is evaluated from
        that build's buffers (and the constants the forward made that the capture kept with their
        values). A node that reads a constant the capture holds on meta is left out: it stays
        unknown, and a readout it scales is refused.
"""

from __future__ import annotations

import math

import torch
from torch import fx
from torch._subclasses.fake_tensor import is_fake

from ..widths import WIDTH_NAMES
from . import ops
from .deferred_init import build_deferred
from .dims import Dataflow

SEED = 0


def read_constant_values(factory, flow: Dataflow) -> dict:
    wanted = [name for name in flow.graph.nodes if _is_scale_constant(flow, name)]
    if not wanted:
        return {}
    values = {name: {} for name in wanted}
    for at in WIDTH_NAMES:
        build = build_deferred(factory, flow.widths[at], SEED)
        buffers = _buffers_by_placeholder(flow, at, build)
        memo = {}
        for name in wanted:
            value = _evaluate(flow.fx(name, at), buffers, memo)
            if value is not None:
                values[name][at] = float(value.reshape(()))
    return {name: by_width for name, by_width in values.items() if len(by_width) == len(WIDTH_NAMES)}


def _is_scale_constant(flow: Dataflow, name: str) -> bool:
    shape = flow.shape(name)
    if shape is None or isinstance(shape, list) or flow.graph.nodes[name]["param"]:
        return False
    sizes = shape.at("target")
    if not all(isinstance(size, int) for size in sizes) or math.prod(sizes) != 1:
        return False  # a size only known at run time (unbacked) is no one-element constant
    node = flow.fx(name)
    return node.op != "output" and any(ops.op_name(user) in ops.SCALAR_ARITH for user in node.users) \
        and flow.is_constant(name)


def _buffers_by_placeholder(flow: Dataflow, at: str, build) -> dict:
    """Placeholder name -> the build's buffer, its deferred fill run (a buffer drawn at random), or a
    constant the forward made whose value the capture kept (`torch.FloatTensor([0.5])` is made on the
    CPU whatever the device)."""
    named = dict(build.model.named_buffers(remove_duplicate=False))
    program = flow.captures.programs[at]
    found = {placeholder: value for placeholder, name in program.graph_signature.inputs_to_lifted_tensor_constants.items()
             if isinstance(value := program.constants.get(name), torch.Tensor) and _holds_values(value)}
    with build.stream() as fills:
        for placeholder, fqn in program.graph_signature.inputs_to_buffers.items():
            if fqn in named and named[fqn].numel() <= 1 << 16:
                fills.run(named[fqn])
                found[placeholder] = named[fqn]
    return found


def _holds_values(tensor: torch.Tensor) -> bool:
    return tensor.device.type != "meta" and not is_fake(tensor) and tensor.numel() <= 1 << 16


def _evaluate(node: fx.Node, buffers: dict, memo: dict):
    """The node's value from the buffers, by running the ops that compute it; None when some input
    has no value here (a lifted constant, a large buffer)."""
    if node.name in memo:
        return memo[node.name]
    if node.op == "placeholder":
        value = buffers.get(node.name)
    elif node.op != "call_function":
        value = None
    else:
        missing = object()
        resolve = lambda a: _evaluate(a, buffers, memo) if isinstance(a, fx.Node) else a  # noqa: E731
        args = fx.node.map_aggregate(node.args, lambda a: missing if isinstance(a, fx.Node) and resolve(a) is None
                                     else resolve(a))
        kwargs = fx.node.map_aggregate(node.kwargs, resolve)
        flat = fx.node.map_aggregate(args, lambda a: a)
        value = None if _holds(flat, missing) else _run(node, args, kwargs)
    memo[node.name] = value
    return value


def _holds(structure, item) -> bool:
    if structure is item:
        return True
    return isinstance(structure, (list, tuple)) and any(_holds(s, item) for s in structure)


def _run(node: fx.Node, args, kwargs):
    if kwargs.get("device") is not None:  # a tensor the forward makes, on the device it was captured on
        kwargs = {**kwargs, "device": torch.device("cpu")}
    with torch.no_grad():
        try:
            value = node.target(*args, **kwargs)
        except Exception:  # noqa: BLE001  an op that does not run outside its graph: no value known
            return None
    return value if isinstance(value, torch.Tensor) and value.device.type != "meta" else None

"""source: point at the line of the user's model code that produced a graph node.

Reads:  `Dataflow` and a node name (or a module's class and an op name).
Writes: nothing; gives ` at FILE:LINE: `code`` for error messages. Graphs are captured without
        per-node stack traces (a tenth of export's time), so the line is found in the forward of
        the module that ran the node: the first line there that calls the op by name, else the
        forward's `def` line.
"""

from __future__ import annotations

import importlib
import inspect

from typing import TYPE_CHECKING

from . import ops

if TYPE_CHECKING:
    from .dims import Dataflow




def where(flow: Dataflow, node: str, module: str) -> str:
    """"module 'PATH' (Type) at FILE:LINE: `code`" (or "the root module ...") for an error message."""
    owner = f"module '{module}' ({flow.module_type(node).rpartition('.')[2]})" if module else "the root module"
    return owner + source_line(flow, node)


def source_line(flow: Dataflow, node: str) -> str:
    return line_in_forward(flow.module_type(node), ops.op_name(flow.fx(node)))


def line_in_forward(module_type: str, op: str) -> str:
    """` at FILE:LINE: `code`` of the first line of the forward of `module_type` (a qualified class name)
    that calls `op` by name, else ` (its forward is at FILE:LINE)`, else ""."""
    forward = _forward_of(module_type)
    if forward is None:
        return ""
    try:
        lines, first = inspect.getsourcelines(forward)
        filename = inspect.getsourcefile(forward)
    except (OSError, TypeError):
        return ""
    op = op.strip("_")
    spellings = [f".{op}(", f" {op}(", f"({op}("] + ([ops.OPERATOR_SPELLING[op]] if op in ops.OPERATOR_SPELLING else [])
    for offset, line in enumerate(lines):
        if op and any(spelling in line for spelling in spellings):
            return f" at {filename}:{first + offset}: `{line.strip()}`"
    return f" (its forward is at {filename}:{first})"


def _forward_of(qualified_type: str):
    module_name, _, class_name = qualified_type.rpartition(".")
    if not module_name:
        return None
    try:
        owner = importlib.import_module(module_name)
    except ImportError:
        return None
    for part in class_name.split("."):
        owner = getattr(owner, part, None)
    forward = getattr(owner, "forward", None)
    try:  # the function a decorator wraps (transformers' hub-kernel hooks): the user's own lines
        return inspect.unwrap(forward) if forward is not None else None
    except ValueError:
        return forward

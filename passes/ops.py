"""Queries on the op registry (passes/op_registry.py: every fact about an op): an op's name, spec and
kind, its arguments bound by schema, the dims a contraction sums over. The registry's facts are read
through here (`ops.REGISTRY`, `ops.VIEW`, `ops.JOINING`, ...).
"""

from __future__ import annotations

import inspect
import operator

import torch
from torch import fx
from torch.fx.operator_schemas import get_signature_for_torch_op

from .op_registry import (  # noqa: F401  the facts, read by the passes as ops.NAME
    ADDITIVE, AUXILIARY_OUTPUTS, CASTS, COMPOSITES, CONCATENATING, CONTRACTION, DEGREE_ALIKE, DEGREE_FACTOR,
    DEGREE_LARGER, ID_PRESERVING, IGNORED, INDEXING, INPLACE_BASES, JOINING, LINEAR_MODULES, LOGIT_AFFINE, LOOKUP,
    METADATA_SLOTS, NORM, NORMALIZING, OPERATOR_SPELLING, OpSpec, PLACING, POINTWISE, RECIPROCALS, REGISTRY,
    RUNTIME, RUNTIME_CHECKS, RUNTIME_NAMES, SCALAR_ARITH, SCALE_INVARIANT, SCATTER_MAXIMA, SCORE_FUNCTIONS, SDPA,
    SHAPE_READS, SIZE_GROWING_REDUCTIONS, SOFTMAX, SPLITTING, SQUASHING, SUMMING, VIEW, ZEROS,
)


def is_score_function(node: fx.Node) -> bool:
    name = op_name(node)
    return name in SCORE_FUNCTIONS or node_slots(node).get("reduce") in SCATTER_MAXIMA.get(name, ())


def op_name(node: fx.Node) -> str:
    """'linear' for aten.linear.default, 'add' for aten.add_.Tensor, 'getitem', '' for non-calls."""
    if node.op != "call_function":
        return node.op if node.op == "output" else ""
    if node.target is operator.getitem:
        return "getitem"
    schema = getattr(node.target, "_schema", None)
    name = schema.name.split("::")[-1] if schema is not None else getattr(node.target, "__name__", str(node.target))
    return name[:-1] if name.endswith("_") and not name.startswith("_") and name[:-1] in INPLACE_BASES else name


def spec(node_or_name) -> OpSpec | None:
    name = node_or_name if isinstance(node_or_name, str) else op_name(node_or_name)
    return REGISTRY.get(name)


def kind(node: fx.Node) -> str | None:
    found = spec(node)
    if found is not None:
        return found.kind
    return POINTWISE if is_pointwise(node) else None


def family(name: str) -> str | None:
    found = REGISTRY.get(name)
    return found.family if found else None


def is_pointwise(node: fx.Node) -> bool:
    return torch.Tag.pointwise in getattr(node.target, "tags", ())


# ---------------------------------------------------------------- binding arguments by schema

def node_slots(node: fx.Node) -> dict:
    """{slot: value} of a captured op's arguments by its schema ("self" is called "input")."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {str(i): a for i, a in enumerate(node.args)} | dict(node.kwargs)
    names = [_canonical(a.name) for a in schema.arguments]
    slots = dict(zip(names, node.args))
    slots.update({_canonical(k): v for k, v in node.kwargs.items()})
    for i, tensor in enumerate(slots.get("tensors") or ()) if isinstance(slots.get("tensors"), (list, tuple)) else ():
        slots[f"tensors.{i}"] = tensor
    return slots


def slots_of(node: fx.Node, source: fx.Node) -> list:
    """The slots at which `source` feeds `node`."""
    return [slot for slot, value in node_slots(node).items() if value is source]


def node_location(node: fx.Node, slot: str) -> tuple:
    """Where a slot sits in a captured node: ("args", i), ("kwargs", key) or ("list", i, j)."""
    return _location(node.target, node.args, node.kwargs, slot, _node_names(node))


def call_location(func, args, kwargs, slot: str) -> tuple | None:
    """Where a slot sits in a run-time call `func(*args, **kwargs)`, or None if it is absent."""
    names = RUNTIME_NAMES.get(func)  # read at import, so torch.compile traces this without a graph break
    return _location(func, args, kwargs, slot, names) if names is not None else None


def read(location: tuple, args, kwargs):
    if location[0] == "args":
        return args[location[1]]
    if location[0] == "kwargs":
        return kwargs[location[1]]
    return args[location[1]][location[2]]


def replace(location: tuple, args, kwargs, value) -> tuple:
    """(args, kwargs) with the argument at `location` replaced."""
    args, kwargs = list(args), dict(kwargs)
    if location[0] == "args":
        args[location[1]] = value
    elif location[0] == "kwargs":
        kwargs[location[1]] = value
    else:
        items = list(args[location[1]])
        items[location[2]] = value
        args[location[1]] = type(args[location[1]])(items) if isinstance(args[location[1]], tuple) else items
    return args, kwargs


def _location(target, args, kwargs, slot: str, names: list):
    head, _, index = slot.partition(".")
    if index:  # an operand of a list argument (einsum's tensors), or of *operands at run time
        position = names.index(head) if head in names else 1
        if position < len(args) and isinstance(args[position], (list, tuple)):
            return ("list", position, int(index))
        return ("args", position + int(index))
    for key in kwargs:
        if _canonical(key) == slot:
            return ("kwargs", key)
    if slot in names and names.index(slot) < len(args):
        return ("args", names.index(slot))
    return None


def _node_names(node: fx.Node) -> list:
    schema = getattr(node.target, "_schema", None)
    return [_canonical(a.name) for a in schema.arguments] if schema is not None else []


def _positional_names(func, name: str) -> tuple:
    """From the callable's own signature or schema ("self" and "input" are one slot)."""
    override = REGISTRY[name].runtime_names.get(func)
    if override:
        return tuple(override)
    if name == "einsum":
        return ("equation", "tensors")
    for signature in _signatures(func):
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return tuple(_canonical(p.name) for p in signature.parameters.values() if p.kind in kinds)
    raise TypeError(f"no signature for {func}")  # a registry entry without a bindable callable


def _signatures(func) -> list:
    found = None
    try:
        found = get_signature_for_torch_op(func)
    except Exception:  # not a torch.* builtin
        found = None
    name = getattr(func, "__name__", "")
    if not found and getattr(torch.Tensor, name, None) is func:  # Tensor.mm binds like torch.mm(input, mat2)
        torch_twin = getattr(torch, name.strip("_"), None)
        found = get_signature_for_torch_op(torch_twin) if torch_twin is not None else None
    if not found:
        found = [inspect.signature(func)]
    return found


def _canonical(name: str) -> str:
    return "input" if name == "self" else name


# ---------------------------------------------------------------- what a contraction sums over

def contracted_dims(node: fx.Node, slot: str, ndim: int):
    """Dims of the operand at `slot` that `node` sums over as a weight, or None."""
    name = op_name(node)
    found = REGISTRY.get(name)
    if name == "einsum" and slot.startswith("tensors."):
        return _einsum_contracted(node_slots(node)["equation"], int(slot.split(".")[1]), ndim)
    if name in INDEXING and slot == "input":
        return tuple(i for i, ix in enumerate(node_slots(node)["indices"]) if ix is not None) or None
    if name == "index_select" and slot == "input":
        return (node_slots(node)["dim"] % ndim,)
    if found is None or slot not in found.contracts:
        return None
    return tuple(found.contracts[slot](ndim))


def activation_slot(node: fx.Node, weight_slot: str) -> str | None:
    """The slot of the activation a weight at `weight_slot` is contracted with."""
    name = op_name(node)
    if name == "einsum":
        count = len(node_slots(node)["tensors"])
        return f"tensors.{1 - int(weight_slot.split('.')[1])}" if count == 2 else None
    found = REGISTRY.get(name)
    return found.partner.get(weight_slot) if found else None


def infer_contraction(node: fx.Node, slot: str, shapes: dict) -> tuple | None:
    """For an op with no entry: the dims of the weight at `slot` that match a dim of another
    tensor operand and appear in no output dim, at every width (the only unambiguous case)."""
    weight, others, output = shapes["operand"], shapes["others"], shapes["output"]
    if not others or output is None:
        return None
    sizes = lambda shape, d: tuple(shape.at(w)[d] for w in ("base", "delta", "target"))  # noqa: E731
    out_sizes = {sizes(output, d) for d in range(len(output.base))}
    other_sizes = {sizes(o, d) for o in others for d in range(len(o.base))}
    dims = tuple(d for d in range(len(weight.base))
                 if sizes(weight, d) in other_sizes and sizes(weight, d) not in out_sizes)
    return dims or None


def _einsum_contracted(equation: str, index: int, ndim: int):
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if not arrow:
        letters = [c for c in lhs if c.isalpha()]
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    head, ellipsis, tail = inputs[index].partition("...")
    dims = {c: i for i, c in enumerate(head)}
    if ellipsis:
        dims.update({c: ndim - len(tail) + i for i, c in enumerate(tail)})
    return tuple(sorted(d for c, d in dims.items() if c not in rhs)) or None


RUNTIME_NAMES.update({func: _positional_names(func, name) for func, name in RUNTIME.items()})

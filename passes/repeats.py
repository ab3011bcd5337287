"""repeats: a model's structurally identical repeated blocks (a transformer's layers), analysed once.

Reads:  a built model (any device).
Writes: `{copy path: representative path}` — the children of a container indexed "0", "1", ...
        (nn.ModuleList, nn.Sequential) that have the same code as an earlier sibling, its
        *representative*: the same module classes all the way down, the same parameter and
        buffer names, shapes, dtypes and requires_grad, the same plain attributes (an int equal
        to the block's own index in every block, such as `layer_idx`, is the index), the same hooks and
        instance-level forwards — and submodules of their own; a tensor also known by a name
        outside the block is the very tensor at the same place in the representative (Zamba's
        hybrid layers, one attention block's weights tied into each), any other is the block's
        own. Where blocks are told apart, their parts at the same place that know the block's
        index are grouped so in turn (Zamba2's hybrid layers, each with its own attention block,
        hold alike Mamba layers). A copy's own children are not looked into: all of it is a copy.
How the copies are used: capture exports the model with every copy passed through
(passes/passthrough.py), so the graph holds each distinct block once; decide counts the copies'
ops where an edited module around them would (`copies_ops_before`); `stamp` (passes/stamp.py)
writes the representative's plan entries onto every copy; init_scan checks each copy's init
against its representative's; verify checks every copy computes what its representative computes
with the copy's tensors.
"""

from __future__ import annotations

import enum
import functools

import torch
from torch import nn

_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device, enum.Enum)


def find_repeats(model: nn.Module) -> dict:
    """{copy path: representative path} of `model`'s repeated blocks."""
    owners = _owners(model)
    copies = {}

    def group(blocks: dict, index_keys: set, prefix: str, suffix: str = "") -> None:
        """Copies among `blocks` ({index: module} at `prefix` + index + `suffix`)."""
        representatives = {}
        for name, block in blocks.items():
            path = f"{prefix}{name}{suffix}"
            shared = _shared_tensors(block, path, owners)
            if shared is not None:
                representative = representatives.setdefault((_signature(block, index_keys), shared), path)
                if representative != path:
                    copies[path] = representative

    def visit(path: str, module: nn.Module) -> None:
        prefix = f"{path}." if path else ""
        indexed = {name: child for name, child in module.named_children() if name.isdigit()}
        group(indexed, _index_attributes(indexed), prefix)
        distinct = {name: child for name, child in indexed.items() if prefix + name not in copies}
        for part, holders in _common_parts(distinct).items():  # blocks told apart, each holding a layer alike
            parts = {name: distinct[name].get_submodule(part) for name in holders}  # (Zamba2's Mamba layers)
            index_keys = _index_attributes(parts)
            if index_keys:  # a layer of the model (it knows its index), not a projection of one
                group(parts, index_keys, prefix, "." + part)
        for name, child in module.named_children():
            if prefix + name not in copies:
                visit(prefix + name, child)

    visit("", model)
    return copies


def _common_parts(blocks: dict) -> dict:
    """{name of a direct submodule: the blocks holding one}, for those two or more blocks hold."""
    holders = {}
    for name, block in blocks.items():
        for part, _ in block.named_children():
            holders.setdefault(part, []).append(name)
    return {part: names for part, names in holders.items() if len(names) >= 2}


def representative_of(name: str, copies: dict) -> str | None:
    """The name in the captured graph of a dotted name (parameter or module path) inside a copy:
    its representative's (that of the representative's own representative, for a copy inside a
    representative); None outside every copy."""
    found = None
    while (resolved := _one_level(name, copies)) is not None:
        found = name = resolved
    return found


def _one_level(name: str, copies: dict) -> str | None:
    end = len(name)
    while end > 0:
        representative = copies.get(name[:end])
        if representative is not None:
            return representative + name[end:]
        end = name.rfind(".", 0, end)
    return None


def inside(name: str, path: str) -> bool:
    """Whether a dotted name is the module at `path` or inside it."""
    return name == path or name.startswith(path + ".")


def _owners(model: nn.Module) -> dict:
    """id of every tensor and module -> all the names it goes by in `model`."""
    owners = {}
    named = (model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False),
             model.named_modules(remove_duplicate=False))
    for items in named:
        for name, value in items:
            owners.setdefault(id(value), []).append(name)
    return owners


def _shared_tensors(block: nn.Module, path: str, owners: dict) -> tuple | None:
    """(name in `block`, identity) of each of its tensors also known by a name outside it, such as
    one attention block's weights tied into every hybrid layer; None if a submodule of it is
    (a module's calls would be counted across the blocks)."""
    def outside(value) -> bool:
        return not all(inside(name, path) for name in owners[id(value)])

    if any(outside(module) for _, module in block.named_modules(remove_duplicate=False)):
        return None
    return tuple((name, id(value)) for items in (block.named_parameters(remove_duplicate=False),
                                                 block.named_buffers(remove_duplicate=False))
                 for name, value in items if outside(value))


def _index_attributes(indexed: dict) -> set:
    """(submodule, attribute) pairs that equal the block's own index in every block that has them,
    at least two (`layer_idx`); an int that happens to equal one block's index is no index."""
    holders, matches = {}, {}
    for name, block in indexed.items():
        for sub, module in block.named_modules(remove_duplicate=False):
            for key, value in vars(module).items():
                if type(value) is int:
                    holders[sub, key] = holders.get((sub, key), 0) + 1
                    matches[sub, key] = matches.get((sub, key), 0) + (value == int(name))
    return {key for key, count in holders.items() if count >= 2 and matches[key] == count}


def _signature(block: nn.Module, index_keys: set) -> tuple:
    parts = []
    for name, module in block.named_modules(remove_duplicate=False):
        parts.append(("module", name, type(module), _attributes(module, name, index_keys), _hooks(module)))
    for name, param in block.named_parameters(remove_duplicate=False):
        parts.append(("param", name, tuple(param.shape), param.dtype, param.requires_grad))
    for name, buffer in block.named_buffers(remove_duplicate=False):
        parts.append(("buffer", name, tuple(buffer.shape), buffer.dtype))
    return tuple(parts)


def _attributes(module: nn.Module, name: str, index_keys: set) -> tuple:
    return tuple((key, "<the block's index>" if (name, key) in index_keys else _canonical(value))
                 for key, value in vars(module).items() if not key.startswith("_") and key != "training")


def _canonical(value, depth: int = 0):
    """A plain value as itself; a container, a `functools.partial` or a small object of plain values
    (x-transformers' `always(1.0)`, einops' axes_lengths) by what it holds, so one each block made alike
    matches; anything else by identity, so an object the blocks share matches and one each block made
    for itself does not."""
    if isinstance(value, _PLAIN):
        return value
    if callable(value) and hasattr(value, "__code__"):
        return "code", value.__code__
    if depth < 3:
        if isinstance(value, (tuple, list)):
            return type(value).__name__, tuple(_canonical(v, depth + 1) for v in value)
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            # keyed by names only: a mapping keyed by numbers may be looked up by the index a block is
            # passed (Zamba2's layer_dic), so each block's own stays told apart by identity
            return "dict", tuple((k, _canonical(v, depth + 1)) for k, v in value.items())
        if isinstance(value, functools.partial):
            return "partial", _canonical(value.func, depth + 1), _canonical(value.args, depth + 1), \
                _canonical(value.keywords, depth + 1)
        if _plain_object(value):
            return "object of", type(value), _canonical(vars(value), depth + 1)
    return "object", id(value)


def _plain_object(value) -> bool:
    """An instance of a Python class holding only plain values (no module, tensor or other object)."""
    fields = getattr(value, "__dict__", None)
    return (isinstance(fields, dict) and not isinstance(value, (nn.Module, torch.Tensor, type))
            and all(isinstance(v, _PLAIN) for v in fields.values()))


def _hooks(module: nn.Module) -> tuple:
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values(),
             *module._backward_hooks.values(), *module._backward_pre_hooks.values()]
    own_forward = module.__dict__.get("forward")
    return tuple(_canonical(h) for h in hooks + ([own_forward] if own_forward is not None else []))


def copies_ops_before(flow, node: str, scope: str, same_family) -> int:
    """How many ops `same_family(n)` the copies inside the module at `scope` run, in the call of
    it that runs `node`, before `node` (each as many as its representative, copies inside it
    included): what a graph of every block would count among the scope's ops before `node`."""
    copies, positions = flow.captures.repeats, flow.captures.copy_positions
    inside = [c for c in copies if c != scope and (scope == "" or c.startswith(scope + "."))]
    if not inside:
        return 0
    order = {name: i for i, name in enumerate(flow.graph.nodes)}
    call = flow.call(node, scope)
    start = min(order[n] for n in flow.graph.nodes if flow.in_scope(n, scope) and flow.call(n, scope) == call)
    counts = {}
    return sum(_ops_in(flow, copies[c], same_family, counts) for c in inside
               if start <= order[positions[c]] < order[node])


def _ops_in(flow, path: str, same_family, counts: dict) -> int:
    """Ops `same_family(n)` of the module at `path` in a graph of every block."""
    if path not in counts:
        copies = flow.captures.repeats
        counts[path] = sum(1 for n in flow.graph.nodes if flow.in_scope(n, path) and same_family(n)) + sum(
            _ops_in(flow, copies[c], same_family, counts) for c in copies if c.startswith(path + "."))
    return counts[path]


def unlike_copies(copies: dict, measured) -> set:
    """The copies holding a parameter in `measured` (init_scan measures a copy's tensor only when
    its init is not its representative's): they are not copies."""
    return {copy_path for copy_path in copies if any(inside(name, copy_path) for name in measured)}

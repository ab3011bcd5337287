"""repeats: a model's structurally identical repeated blocks (a transformer's layers), analysed once.

Reads:  a built model (any device).
Writes: `{copy path: representative path}` — the children of a container indexed "0", "1", ...
        (nn.ModuleList, nn.Sequential) that have the same code as an earlier sibling, its
        *representative*: the same module classes all the way down, the same parameter and
        buffer names, shapes, dtypes and requires_grad, the same plain attributes (an int equal
        to the block's own index in every block, such as `layer_idx`, is the index), the same hooks and
        instance-level forwards — and tensors and submodules of their own (nothing shared with
        any other module). A copy's own children are not looked into: all of it is a copy.
The capture exports the model with every copy replaced by a pass-through (`stubbed`), so the
graph holds each distinct block once (verify runs the realized model so too: an edited module
around the blocks counts a passed-through copy's ops as if they ran); `stamp` writes the representative's plan entries
(parameters, uses, edits, warnings) onto every copy. The copies' own init is checked against the
representative's (init_scan), and verify checks every copy computes what its representative
computes with the copy's tensors.
"""

from __future__ import annotations

import contextlib
import copy as copying
import enum
import functools
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..errors import CaptureError
from .realize import counting_calls, skip_calls

_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device, enum.Enum)


class StubError(CaptureError):
    """A copy cannot be replaced by a pass-through (its outputs are not shaped like its inputs)."""


def find_repeats(model: nn.Module) -> dict:
    """{copy path: representative path} of `model`'s repeated blocks."""
    owners = _owners(model)
    copies = {}

    def visit(path: str, module: nn.Module) -> None:
        indexed = {name: child for name, child in module.named_children() if name.isdigit()}
        index_keys = _index_attributes(indexed)
        representatives = {}
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            if name in indexed and _exclusive(child, child_path, owners):
                representative = representatives.setdefault(_signature(child, index_keys), child_path)
                if representative != child_path:
                    copies[child_path] = representative
                    continue
            visit(child_path, child)

    visit("", model)
    return copies


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


def _inside(name: str, path: str) -> bool:
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


def _exclusive(block: nn.Module, path: str, owners: dict) -> bool:
    """Whether every tensor and submodule of `block` is known only by names inside it."""
    named = (block.named_parameters(remove_duplicate=False), block.named_buffers(remove_duplicate=False),
             block.named_modules(remove_duplicate=False))
    return all(_inside(name, path) for items in named for _, value in items for name in owners[id(value)])


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


def _canonical(value):
    """A plain value as itself; anything else by identity, so an object the blocks share matches
    and one each block made for itself does not."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value):
        return type(value).__name__, tuple(value)
    if callable(value) and hasattr(value, "__code__"):
        return "code", value.__code__
    return "object", id(value)


def _hooks(module: nn.Module) -> tuple:
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values(),
             *module._backward_hooks.values(), *module._backward_pre_hooks.values()]
    own_forward = module.__dict__.get("forward")
    return tuple(_canonical(h) for h in hooks + ([own_forward] if own_forward is not None else []))


# ---------------------------------------------------------------------------------------------
# Capture: each copy's forward passes its input through, shaped like its representative's output.

@dataclass
class _Passthrough:
    """How the representative's outputs relate to its inputs: the input pytree's structure, and
    per output leaf the index of the first input leaf of the same shape and dtype (or the
    non-tensor value itself)."""

    inputs: object
    outputs: object
    sources: list
    calls: Counter  # the op-family calls it made, as an edited module around it counts them


@contextlib.contextmanager
def stubbed(model: nn.Module, copies: dict, positions: dict | None = None):
    """While active, every copy is a module without tensors whose forward returns its inputs,
    shaped as its representative's outputs were when it last ran (`StubError` when that cannot
    be), so an export sees neither its ops nor its parameters. While traced, `positions` gets the
    name of the graph's last node when each copy ran."""
    modules = dict(model.named_modules())
    seen, restore = {}, []
    for representative in set(copies.values()):
        module = modules[representative]
        before = module.__dict__.get("forward")
        module.forward = _recording(module, representative, seen)
        restore.append(lambda module=module, before=before: _set_forward(module, before))
    for copy_path, representative in copies.items():
        parent, _, name = copy_path.rpartition(".")
        container = modules[parent]
        stub = _stub(modules[copy_path], _passthrough(copy_path, representative, seen,
                                                      {} if positions is None else positions))
        container._modules[name] = stub
        restore.append(lambda container=container, name=name, original=modules[copy_path]:
                       container._modules.__setitem__(name, original))
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()


def _set_forward(module: nn.Module, forward) -> None:
    if forward is None:
        del module.forward
    else:
        module.forward = forward


class _Stub(nn.Module):
    """Stands in for a copy, as an instance of the copy's own class (a model may test
    `isinstance(layer, ...)`): its forward passes through, its plain attributes are the copy's
    (a model may read `layer.attention_type`), its tensors and submodules are not there."""

    def forward(self, *args, **kwargs):
        return self._passthrough(*args, **kwargs)

    def __getattr__(self, name: str):
        value = getattr(self.__dict__["_original"], name)
        if isinstance(value, (torch.Tensor, nn.Module)):
            raise StubError(f"the model reads {name} of a repeated block outside the block's forward")
        return value


@functools.cache
def _stub_class(cls: type) -> type:
    return type(f"PassedThrough{cls.__name__}", (_Stub, cls), {})


def _stub(original: nn.Module, forward) -> nn.Module:
    stub = _stub_class(type(original)).__new__(_stub_class(type(original)))
    nn.Module.__init__(stub)  # not the copy's own __init__: no tensors, no submodules
    object.__setattr__(stub, "_original", original)
    object.__setattr__(stub, "_passthrough", forward)
    return stub


def _recording(module: nn.Module, path: str, seen: dict):
    original = module.forward

    def forward(*args, **kwargs):
        outputs, calls = counting_calls(original, *args, **kwargs)
        leaves, structure = tree_flatten((args, kwargs))
        out_leaves, out_structure = tree_flatten(outputs)
        seen[path] = _Passthrough(structure, out_structure, [_source(leaf, leaves) for leaf in out_leaves], calls)
        return outputs

    return forward


def _source(leaf, inputs: list):
    if not isinstance(leaf, torch.Tensor):
        return ("value", leaf)
    for index, candidate in enumerate(inputs):
        if isinstance(candidate, torch.Tensor) and candidate.shape == leaf.shape and candidate.dtype == leaf.dtype:
            return ("input", index)
    return ("none", f"an output of shape {tuple(leaf.shape)} that no input has")


def _passthrough(path: str, representative: str, seen: dict, positions: dict):
    def forward(*args, **kwargs):
        mode = get_proxy_mode()
        positions.setdefault(path, next(reversed(mode.tracer.graph.nodes)).name if mode is not None else None)
        record = seen.get(representative)
        if record is None:
            raise StubError(f"block {path} ran before {representative}, the identical block it repeats")
        leaves, structure = tree_flatten((args, kwargs))
        if structure != record.inputs:
            raise StubError(f"block {path} is called with other arguments than {representative}")
        skip_calls(record.calls)  # an edited module around the blocks counts the copy's ops too
        return tree_unflatten([_output(path, source, leaves) for source in record.sources], record.outputs)

    return forward


def _output(path: str, source: tuple, leaves: list):
    kind, value = source
    if kind == "none":
        raise StubError(f"block {path} cannot pass its input through: its representative returns {value}")
    return leaves[value] if kind == "input" else value


# ---------------------------------------------------------------------------------------------
# The plan: the representative's entries written onto every copy.

def stamp(plan, copies: dict, order: list):
    """`plan` (made from a graph holding each distinct block once) with every copy's parameters,
    uses, edits and warnings, named as the copy; parameters in `order` (the model's own). Copies
    inside a representative first, so a copy of that representative gets theirs too."""
    rank = {name: i for i, name in enumerate(order)}
    for representative in sorted(set(copies.values()), key=lambda path: path.count("."), reverse=True):
        _stamp_block(plan, {representative: [c for c, r in copies.items() if r == representative]}, rank)
    plan.parameters = dict(sorted(plan.parameters.items(), key=lambda item: rank.get(item[0], len(rank))))
    plan.repeats = dict(copies)
    return plan


def _stamp_block(plan, by_representative: dict, rank: dict) -> None:
    (representative, copy_paths), = by_representative.items()
    parameters = {}
    for name, entry in plan.parameters.items():
        if not _inside(name, representative):
            parameters[name] = _with_copied_uses(entry, by_representative)
            continue
        parameters[name] = entry
        for copy_path in copy_paths:
            parameters[_renamed(name, representative, copy_path)] = _renamed_param(entry, representative, copy_path)
    plan.parameters = parameters
    plan.edits = _stamped_edits(plan.edits, by_representative)
    for warning in plan.warnings:
        _stamp_warning(warning, by_representative, rank)


def _owner(name: str, by_representative: dict) -> str | None:
    return next((r for r in by_representative if _inside(name, r)), None)


def _renamed(name: str, representative: str, copy_path: str) -> str:
    return copy_path + name[len(representative):] if _inside(name, representative) else name


def _renamed_param(entry, representative: str, copy_path: str):
    entry = copying.deepcopy(entry)
    entry.uses = [use for use in entry.uses if _inside(use["module"], representative)]
    entry.uses = [{**use, "module": _renamed(use["module"], representative, copy_path)} for use in entry.uses]
    entry.aliases = [_renamed(alias, representative, copy_path) for alias in entry.aliases]
    return entry


def _with_copied_uses(entry, by_representative: dict):
    """A parameter from outside the blocks used inside a representative is used inside each of
    its copies as well."""
    uses = []
    for use in entry.uses:
        uses.append(use)
        representative = _owner(use["module"], by_representative)
        if representative is not None:
            uses += [{**use, "module": _renamed(use["module"], representative, c)} for c in by_representative[representative]]
    entry.uses = uses
    return entry


def _stamped_edits(edits: list, by_representative: dict) -> list:
    """Each run of consecutive edits inside one representative, followed by the same run for each
    of its copies in order (the order a capture of every block gives)."""
    stamped, run, run_of = [], [], None
    for edit in edits + [None]:
        owner = None if edit is None else _owner(edit.module, by_representative)
        if run and owner != run_of:
            stamped += [e for copy_path in by_representative[run_of] for e in _renamed_edits(run, run_of, copy_path)]
            run = []
        if edit is None:
            break
        stamped.append(edit)
        if owner is not None:
            run.append(edit)
        run_of = owner
    return stamped


def _renamed_edits(run: list, representative: str, copy_path: str) -> list:
    renamed = []
    for edit in run:
        edit = copying.deepcopy(edit)
        edit.module = _renamed(edit.module, representative, copy_path)
        edit.param = None if edit.param is None else _renamed(edit.param, representative, copy_path)
        for place in (edit.fold or {}).get("into", []):
            place["param"] = _renamed(place["param"], representative, copy_path)
        renamed.append(edit)
    return renamed


def _stamp_warning(warning, by_representative: dict, rank: dict) -> None:
    """A warning's subjects inside a representative, for each copy too: a parameter under the
    copy's name, a graph node as "node@copy" located in the copy's module."""
    subjects = []
    for subject in warning.subjects:
        subjects.append(subject)
        location = warning.locations.get(subject)
        representative = _owner(location["module"] if location else subject, by_representative)
        for copy_path in by_representative.get(representative, []):
            if location is None:
                subjects.append(_renamed(subject, representative, copy_path))
                continue
            module = _renamed(location["module"], representative, copy_path)
            subjects.append(f"{subject.split('@')[0]}@{module}")
            warning.locations[subjects[-1]] = {**location, "module": module}
    if warning.subjects == sorted(warning.subjects):
        subjects.sort()
    elif all(subject in rank for subject in subjects):
        subjects.sort(key=rank.get)
    warning.subjects = subjects


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
    return {copy_path for copy_path in copies if any(_inside(name, copy_path) for name in measured)}

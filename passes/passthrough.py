"""passthrough: a model whose repeated blocks' copies pass their input through (for capture and verify).

While `stubbed(model, copies)` is active, every copy (passes/repeats.py) is a stand-in of its own
class without tensors or submodules, whose forward returns its inputs shaped as its
representative's outputs were when that last ran; an export then sees neither the copy's ops nor
its parameters, and records (`positions`) the graph's last node when each copy ran. In a realized
model an edited module around the blocks counts a passed-through copy's ops as if they ran
(intercept.skip_calls). `StubError` when a copy cannot be passed through.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..errors import StubError
from .intercept import as_traced, counting_calls, skip_calls
from .repeats import representative_of



def copies_own(model: nn.Module, copies: dict) -> dict:
    """{name: tensor}, under each of its names, of the parameters and buffers known only by names
    inside copies (not a tensor tied into a representative too)."""
    names = {}
    for name, tensor in itertools.chain(model.named_parameters(remove_duplicate=False),
                                        model.named_buffers(remove_duplicate=False)):
        names.setdefault(id(tensor), (tensor, []))[1].append(name)
    return {name: tensor for tensor, known_as in names.values()
            if all(representative_of(name, copies) is not None for name in known_as) for name in known_as}


def refuse_reads(program: torch.export.ExportedProgram, tensors: dict) -> None:
    """StubError if `program`, captured with the copies passed through, reads one of `tensors`
    (`copies_own`): code outside a copy holds it by a reference the stub cannot see (a plain list),
    and the graph has it as a parameter or a lifted constant. The same storage is the same tensor
    (`_cdata`: a meta tensor has no data pointer to tell storages apart)."""
    signature = program.graph_signature
    named = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    storages = {tensor.untyped_storage()._cdata: name for name, tensor in tensors.items()}
    for node in program.graph.nodes:
        if node.op != "placeholder" or not node.users:
            continue
        constant = program.constants.get(signature.inputs_to_lifted_tensor_constants.get(node.name))
        read = named.get(node.name) if named.get(node.name) in tensors else \
            storages.get(constant.untyped_storage()._cdata) if isinstance(constant, torch.Tensor) else None
        if read is not None:
            raise StubError(f"the model reads {read}, a tensor of a repeated block, outside the block")


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
    own = module.__dict__.get("forward")  # a forward set on the instance (realize's interceptor)

    def forward(*args, **kwargs):
        original = own or functools.partial(type(module).forward, as_traced(module))
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

"""deferred_init: build a model on the CPU with its init fills run only where they are looked at.

While a `Deferred` mode is active, a fill of a whole tensor (uniform_, normal_, fill_, zero_: what
nn.init and model init code call) is remembered instead of run, the last one of each tensor; any
other op on a tensor with a remembered fill runs that fill first, so whatever the model's code
computes from its weights while it is built is what it would be. After the build, `fill_of` says
which fill a tensor is waiting for (the op and its numbers) and `run` runs it.

init_scan builds its models so: a repeated block's copy whose fill is its representative's is
drawn alike by construction and is never filled, and a first fill overwritten by a second (a
Linear's kaiming init before the model's own normal init) costs nothing. A model built so is the
model its factory builds, drawn from another part of the RNG stream (a skipped fill draws
nothing): the same distributions, not the same numbers.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
FILLS = {aten.uniform_.default, aten.normal_.default, aten.fill_.Scalar, aten.zero_.default}
# ops that read no tensor's values (aliases and views): a remembered fill can wait past them
ALIASING = {aten.detach.default, aten.alias.default, aten.view.default, aten._unsafe_view.default,
            aten.t.default, aten.transpose.int, aten.lift_fresh.default, aten.expand.default}


class Deferred(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.pending = {}  # storage address -> (fill, args, kwargs)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FILLS and _whole(args[0]) and kwargs.get("generator") is None:
            self.pending[_key(args[0])] = (func, args, kwargs)
            return args[0]
        if func not in ALIASING:
            for tensor in _tensors(args, kwargs):
                self.run(tensor)
        return func(*args, **kwargs)

    def fill_of(self, tensor: torch.Tensor):
        """(op, its numbers, shape, dtype) of the fill `tensor` waits for; None if it waits for none."""
        entry = self.pending.get(_key(tensor)) if tensor.numel() else None
        if entry is None:
            return None
        func, args, kwargs = entry
        return str(func), tuple(args[1:]), tuple(sorted(kwargs.items())), tuple(tensor.shape), tensor.dtype

    def run(self, tensor: torch.Tensor) -> None:
        """Run the fill `tensor` waits for, if any (outside the mode, or inside an op it handles)."""
        entry = self.pending.pop(_key(tensor), None) if tensor.numel() else None
        if entry is not None:
            func, args, kwargs = entry
            with torch.no_grad():  # an init, as nn.init runs it
                func(*args, **kwargs)


def _tensors(args, kwargs):
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple, dict)):  # a list of tensors (cat, stack, ...)
            yield from (leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor))


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _whole(tensor: torch.Tensor) -> bool:
    """Whether `tensor` covers its whole storage, densely (a fill of it is the tensor's init)."""
    return (tensor.device.type == "cpu" and tensor.numel() > 0 and tensor.storage_offset() == 0 and
            tensor.is_contiguous() and tensor.numel() * tensor.element_size() == tensor.untyped_storage().nbytes())

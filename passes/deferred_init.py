"""deferred_init: build a model on the CPU with its init fills run only where they are looked at.

While a `Deferred` mode is active, a fill of a whole tensor (uniform_, normal_, fill_, zero_: what
nn.init and model init code call; and nn.init.trunc_normal_, whose rejection loop reads the tensor
it fills) is remembered instead of run, the last one of each tensor; any
other op on a tensor with a remembered fill runs that fill first, so whatever the model's code
computes from its weights while it is built is what it would be. After the build, `fill_of` says
which fill a tensor is waiting for (the op and its numbers) and `run` runs it.

init_scan builds its models so: a repeated block's copy whose fill is its representative's is
drawn alike by construction and is never filled, and a first fill overwritten by a second (a
Linear's kaiming init before the model's own normal init) costs nothing. A model built so is the
model its factory builds, drawn from another part of the RNG stream (a skipped fill draws
nothing): the same distributions, not the same numbers. `build_deferred` builds one so and keeps
the fills with it: verify runs the seed-0 delta build the init scan read (`DeferredBuild.finished`)
instead of building that model again, the fills of the copies' own tensors never run (it reads
their representatives' in their place).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .capture import build_model

aten = torch.ops.aten
FILLS = {aten.uniform_.default, aten.normal_.default, aten.fill_.Scalar, aten.zero_.default}
# ops that read no tensor's values (aliases and views): a remembered fill can wait past them
ALIASING = {aten.detach.default, aten.alias.default, aten.view.default, aten._unsafe_view.default,
            aten.t.default, aten.transpose.int, aten.lift_fresh.default, aten.expand.default}


class _TruncNormal:
    """nn.init.trunc_normal_ as one fill (torch.nn.init calls `_no_grad_trunc_normal_` by its
    module's name, whoever holds a reference to trunc_normal_ itself)."""

    name = "torch.nn.init.trunc_normal_"

    def __init__(self, original):
        self.original = original

    def __call__(self, tensor, mean, std, a, b, generator=None):
        return self.original(tensor, mean, std, a, b, generator=generator)

    def __str__(self):
        return self.name


class Deferred(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.pending = {}  # storage address -> (fill, args, kwargs)
        self._trunc_normal = _TruncNormal(getattr(torch.nn.init, "_no_grad_trunc_normal_", None))

    def __enter__(self):
        self._thread = threading.get_ident()  # another thread's trunc_normal_ runs as ever
        if self._trunc_normal.original is not None:
            torch.nn.init._no_grad_trunc_normal_ = self._deferred_trunc_normal
        return super().__enter__()

    def __exit__(self, *exc_info):
        if self._trunc_normal.original is not None:
            torch.nn.init._no_grad_trunc_normal_ = self._trunc_normal.original
        return super().__exit__(*exc_info)

    def _deferred_trunc_normal(self, tensor, mean, std, a, b, generator=None):
        if generator is not None or not _whole(tensor) or threading.get_ident() != self._thread:
            return self._trunc_normal(tensor, mean, std, a, b, generator)
        self.pending[_key(tensor)] = (self._trunc_normal, (tensor, float(mean), float(std), float(a), float(b)), {})
        return tensor

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
        return None if entry is None else _described(entry, tensor)

    def drop(self, tensor: torch.Tensor) -> None:
        """Forget the fill `tensor` waits for: it keeps the values it was allocated with."""
        self.pending.pop(_key(tensor), None)

    def run_all(self) -> None:
        """Run every fill still waiting (in the order the build asked for them)."""
        while self.pending:
            func, args, kwargs = self.pending.pop(next(iter(self.pending)))
            with torch.no_grad():
                func(*args, **kwargs)

    def run(self, tensor: torch.Tensor) -> None:
        """Run the fill `tensor` waits for, if any (outside the mode, or inside an op it handles)."""
        entry = self.pending.pop(_key(tensor), None) if tensor.numel() else None
        if entry is not None:
            func, args, kwargs = entry
            with torch.no_grad():  # an init, as nn.init runs it
                func(*args, **kwargs)


@dataclass
class DeferredBuild:
    """A model built with its init fills deferred, the fills it still waits for, and its own RNG
    stream (where the build left it): fills run from it, whatever the caller's RNG does between."""

    model: nn.Module
    fills: Deferred
    rng: torch.Tensor

    @contextlib.contextmanager
    def stream(self):
        """Fills run inside draw from the build's stream, which then goes on from there."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng)
            yield self.fills
            self.rng = torch.get_rng_state()

    def finished(self, unread=()) -> nn.Module:
        """The model with every waiting fill run but those of `unread`: tensors whose values
        nothing will read, left as allocated (uninitialised, never written: no memory touched)."""
        for tensor in unread:
            self.fills.drop(tensor)
        with self.stream() as fills:
            fills.run_all()
        return self.model


def build_deferred(factory, width: int, seed: int) -> DeferredBuild:
    """`factory(width)` on the CPU, built with `seed` and its init fills deferred."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fills = Deferred()
        with fills:
            model = build_model(factory, width, device="cpu")
        return DeferredBuild(model, fills, torch.get_rng_state())


def _described(entry: tuple, tensor: torch.Tensor) -> tuple:
    func, args, kwargs = entry
    return str(func), tuple(args[1:]), tuple(sorted(kwargs.items())), tuple(tensor.shape), tensor.dtype


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

"""element_ids: which output features of a projection each of its views holds.

Read by foldable, to find the query rows of a fused qkv projection: the projection's output is
replaced by a tensor of element ids and its single-input views are run on it, so whatever the
reshapes (GPT-2's split, GPT-NeoX's per-head interleaving, in_proj, a slice) the ids a view ends
up holding say which rows of the weight produced it.
"""

from __future__ import annotations

import math

import torch
from torch import fx
from torch.utils._pytree import tree_map

from . import ops



def ids_of_views(projection: fx.Node) -> dict:
    """Node name -> the projection's output element ids it holds, for the projection and everything
    computed from it by single-input views (run on a tensor of ids: which rows go where, whatever
    the reshapes — a fused qkv interleaved per head included)."""
    shape = tuple(projection.meta["val"].shape)
    values = {projection.name: torch.arange(math.prod(shape)).view(shape)}
    frontier = [projection]
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user.name in values or ops.kind(user) != ops.VIEW or len(user.all_input_nodes) != 1:
                continue
            value = _run_on_ids(user, values[node.name])
            if value is not None:
                values[user.name] = value
                frontier.append(user)
    return values


def _run_on_ids(node: fx.Node, value):
    op = ops.op_name(node)
    if op in ops.ID_PRESERVING:
        return value
    if op in ops.CASTS:  # strides kept; the ids need not take its dtype
        return value.clone()
    if op in ops.PLACING or op == "native_dropout":
        return None
    args, kwargs = tree_map(lambda a: value if isinstance(a, fx.Node) else a, (node.args, node.kwargs))
    try:
        return node.target(*args, **kwargs)
    except Exception:  # an op that cannot run on integer ids: its users are then outside the views
        return None


def features_held(value, features: int) -> set:
    """The output features (last-dim indices of the projection) whose ids `value` holds."""
    tensors = value if isinstance(value, (list, tuple)) else [value]
    counts = [torch.bincount(t.reshape(-1) % features, minlength=features) for t in tensors if t is not None]
    return set().union(*(set(c.nonzero().flatten().tolist()) for c in counts))


def as_ranges(indices: set) -> list:
    """Sorted indices as [[start, stop], ...] runs."""
    runs = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs

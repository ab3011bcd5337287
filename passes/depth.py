"""depth (depth transfer, CompleteP / depth-muP): which residual branches repeat with depth.

Reads:  the user's factory `make_model(width, depth=L)`, the depths (base, delta, target), the
        model built at the target depth, and the residual adds (passes/residuals.py) of its capture.
Returns: a `DepthAnalysis`: the blocks whose count grows in proportion to depth (found by building
        the model on meta at the base and delta depths and grouping identical blocks,
        passes/repeats.py), the residual adds inside them (each gets the branch multiplier
        m_L^-alpha, m_L = depth / base depth) and the parameters inside them (their LR and eps take
        the depth factors). Fail closed, one line each: a block group whose count changes with depth
        but not in proportion to it, a repeating branch added after a norm on the stream (post-LN:
        no identity path for the multiplier to act on), no repeating branch at all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from ..errors import MuRewriteError
from ..widths import Depths
from .capture import build_model
from .init_scan import scan_init
from .repeats import find_repeats, inside, representative_of
from .source import where


class AtDepth:
    """`make_model(width, depth=L)` as the width-only factory the passes call; everything else
    (a Hugging Face factory's width rule) is the user's factory's own."""

    def __init__(self, factory, depth: int):
        self.factory, self.depth = factory, depth

    def __call__(self, width: int) -> nn.Module:
        return self.factory(width, depth=self.depth)

    def __getattr__(self, name):
        if name == "factory":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.factory, name)


@dataclass
class DepthAnalysis:
    depths: Depths
    blocks: list  # module paths, at the target depth, of the blocks that repeat with depth
    branches: list  # the residual adds (passes/residuals.Residual) inside them
    counts: dict  # a repeating group's first block -> its number of blocks at (base, delta, target) depth

    def holds(self, module: str) -> bool:
        """Whether `module` runs inside a block that repeats with depth."""
        return any(inside(module, block) for block in self.blocks)


def analyse_depth(factory: AtDepth, depths: Depths, width: int, target_model: nn.Module, residuals: list,
                  flow) -> DepthAnalysis:
    shallow = {depth: build_model(AtDepth(factory.factory, depth), width, "meta") for depth in (depths.base, depths.delta)}
    groups = {depth: _groups(model) for depth, model in shallow.items()}
    groups[depths.target] = _groups(target_model)
    counts, blocks = {}, []
    for first, members in groups[depths.target].items():
        count = tuple(len(groups[d].get(first, [first])) for d in (depths.base, depths.delta, depths.target))
        if count[0] == count[1] == count[2]:
            continue  # as many blocks at every depth: not what depth grows
        if any(n * depths.base != count[0] * d for n, d in zip(count, (depths.base, depths.delta, depths.target))):
            raise MuRewriteError(
                f"the blocks repeating {first} number {count[0]}, {count[1]} and {count[2]} at depths {depths.base}, "
                f"{depths.delta} and {depths.target}: not in proportion to the depth, so no depth multiplier fits them; "
                "make the factory's depth argument the number of blocks")
        counts[first], blocks = count, blocks + members
    analysis = DepthAnalysis(depths, blocks, [], counts)
    analysis.branches = [r for r in residuals if analysis.holds(r.module)]
    _refuse(analysis, flow)
    _refuse_adds_outside(analysis, residuals, flow)
    _refuse_growing_outside(analysis, residuals, flow, shallow, [p for p in flow.parameters()])
    return analysis


def with_proxy_init(factory: AtDepth, depths: Depths, widths, init: dict, target_model: nn.Module) -> dict:
    """`init` (measured at the target depth) with each tensor's `proxy_std`: its std at base width in the
    model at the base depth, a tensor of a block the base depth lacks read off its representative
    (CompleteP keeps the proxy's init at every depth: GPT-2's 0.02/sqrt(2 L) is not followed to depth L)."""
    proxy = AtDepth(factory.factory, depths.base)
    proxy_copies = find_repeats(build_model(proxy, widths.base, "meta"))
    scanned = scan_init(proxy, widths, proxy_copies)
    copies = find_repeats(target_model)
    with_proxy = {}
    for name, stats in init.items():
        deep = representative_of(name, copies) or name  # a block the proxy lacks: its representative's
        source = next((n for n in (name, deep, representative_of(name, proxy_copies),
                                   representative_of(deep, proxy_copies)) if n in scanned), None)
        if source is None:
            raise MuRewriteError(f"parameter '{name}' has no counterpart in the model at the base depth "
                                 f"{depths.base}, so its proxy init is unknown; make the depth argument add or "
                                 "remove whole blocks only")
        with_proxy[name] = replace(stats, proxy_std=scanned[source].base_std)
    return with_proxy


def _groups(model: nn.Module) -> dict:
    """First block -> every block identical to it (itself first), from the model's own structure."""
    groups = {}
    for copy, first in find_repeats(model).items():
        groups.setdefault(first, [first]).append(copy)
    return groups


def _refuse_adds_outside(analysis: DepthAnalysis, residuals: list, flow) -> None:
    """A block's output added to the stream outside the block (`x = x + block(x)` in the parent's forward):
    where the blocks are analysed once, the other blocks' adds are not seen as residual."""
    for r in residuals:
        if not analysis.holds(r.module) and analysis.holds(flow.module(r.branch[-1])):
            raise MuRewriteError(
                f"the residual add {r.node} in {where(flow, r.node, r.module)} adds the output of "
                f"{flow.module(r.branch[-1])}, a block that repeats with depth, outside that block; depth transfer "
                "needs the add inside the block's forward (x + F(x) written in the block)")


def _refuse_growing_outside(analysis: DepthAnalysis, residuals: list, flow, shallow: dict, parameters: list) -> None:
    """A residual add or a parameter outside the blocks found to repeat with depth whose kind of module
    (its path with the layer indices left out) still grows in number with depth: blocks that depth
    grows but that are not identical copies (an attribute differs), so they cannot be told apart from
    the fixed parts; scaling only some of the branches would be silently wrong."""
    count = {depth: _pattern_counts(model) for depth, model in shallow.items()}
    (base, delta) = sorted(count)
    places = [(r.module, f"the residual add {r.node} in {where(flow, r.node, r.module)}") for r in residuals
              if not analysis.holds(r.module)]
    places += [(name.rpartition(".")[0], f"parameter '{name}'") for name in parameters
               if not analysis.holds(name.rpartition(".")[0])]
    for module, what in places:
        pattern = _pattern(module)
        if count[base].get(pattern, 0) != count[delta].get(pattern, 0):
            raise MuRewriteError(
                f"{what} belongs to modules like {pattern} whose number grows with depth ({count[base].get(pattern, 0)} "
                f"at depth {base}, {count[delta].get(pattern, 0)} at {delta}), but they are not identical copies of "
                "one block, so depth transfer cannot tell which branches repeat; make the blocks identical (the same "
                "classes, shapes and plain attributes but the layer index)")


def _pattern(module: str) -> str:
    return ".".join("#" if part.isdigit() else part for part in module.split(".")) if module else ""


def _pattern_counts(model: nn.Module) -> dict:
    counts = {}
    for name, _ in model.named_modules():
        counts[_pattern(name)] = counts.get(_pattern(name), 0) + 1
    return counts


def _refuse(analysis: DepthAnalysis, flow) -> None:
    if not analysis.blocks:
        raise MuRewriteError("depth transfer asked, but no block of the model repeats in proportion to the depth "
                             "argument (the factory's depth= changes no count of identical blocks)")
    if not analysis.branches:
        raise MuRewriteError(f"depth transfer asked, but the blocks that repeat with depth ({analysis.blocks[0]}, "
                             "...) hold no residual add (x + F(x)); depth-muP and CompleteP scale residual branches")
    post_norm = next((r for r in analysis.branches if r.after_norm), None)
    if post_norm is not None:
        raise MuRewriteError(
            f"the residual add {post_norm.node} in {where(flow, post_norm.node, post_norm.module)} follows a norm "
            "on the stream (post-LN): there is no identity path for the depth multiplier to preserve; depth "
            "transfer (CompleteP, depth-muP) needs pre-LN blocks")

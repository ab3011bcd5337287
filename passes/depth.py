"""depth (depth transfer, CompleteP / depth-muP): which residual branches repeat with depth.

Reads:  the user's factory `make_model(width, depth=L)`, the depths (base, delta, target), the
        model built at the target depth, and the residual adds (passes/residuals.py) of its capture.
Returns: a `DepthAnalysis`: the blocks whose count grows in proportion to depth (found by building
        the model on meta at the base and delta depths and counting its modules of each kind: a
        path with its layer indices left out), the residual adds inside them (each gets the branch multiplier
        m_L^-alpha, m_L = depth / base depth) and the parameters inside them (their LR and eps take
        the depth factors). Fail closed, one line each: a kind of module whose count changes with
        depth but not in proportion to it, a repeating branch added after a norm on the stream (post-LN:
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
    counts: dict  # a kind of block (its path, layer indices as "#") -> its number at (base, delta, target) depth

    def holds(self, module: str) -> bool:
        """Whether `module` runs inside a block that repeats with depth."""
        return any(inside(module, block) for block in self.blocks)


def analyse_depth(factory: AtDepth, depths: Depths, width: int, target_model: nn.Module, residuals: list,
                  flow) -> DepthAnalysis:
    """The blocks are the modules of each kind (a path with its layer indices left out, `blocks.#`)
    whose number is in proportion to the depth at the base, delta and target depths — the outermost
    such kind, so T5's first block, which differs from the others, is one of them too."""
    models = {depths.base: build_model(AtDepth(factory.factory, depths.base), width, "meta"),
              depths.delta: build_model(AtDepth(factory.factory, depths.delta), width, "meta"),
              depths.target: target_model}
    counts = {depth: _pattern_counts(model) for depth, model in models.items()}
    at = lambda pattern: tuple(counts[d].get(pattern, 0) for d in (depths.base, depths.delta, depths.target))  # noqa: E731
    proportional = {p for p in counts[depths.target] if len(set(at(p))) > 1 and
                    all(n * depths.base == at(p)[0] * d for n, d in zip(at(p), (depths.base, depths.delta, depths.target)))}
    outermost = {p for p in proportional if not any(p != q and inside(p, q) for q in proportional)}
    blocks = [name for name, _ in target_model.named_modules() if _pattern(name) in outermost]
    analysis = DepthAnalysis(depths, blocks, [], {p: at(p) for p in sorted(outermost)})
    analysis.branches = [r for r in residuals if analysis.holds(r.module)]
    _refuse_growing_outside(analysis, residuals, flow, counts, list(flow.parameters()))
    _refuse(analysis, flow)
    _refuse_kinds_without_branch(analysis)
    _refuse_adds_outside(analysis, residuals, flow)
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


def _refuse_adds_outside(analysis: DepthAnalysis, residuals: list, flow) -> None:
    """A block's output added to the stream outside the block (`x = x + block(x)` in the parent's forward):
    where the blocks are analysed once, the other blocks' adds are not seen as residual."""
    for r in residuals:
        if not analysis.holds(r.module) and analysis.holds(flow.module(r.branch[-1])):
            raise MuRewriteError(
                f"the residual add {r.node} in {where(flow, r.node, r.module)} adds the output of "
                f"{flow.module(r.branch[-1])}, a block that repeats with depth, outside that block; depth transfer "
                "needs the add inside the block's forward (x + F(x) written in the block)")


def _refuse_growing_outside(analysis: DepthAnalysis, residuals: list, flow, counts: dict, parameters: list) -> None:
    """A residual add or a parameter outside the blocks whose kind of module still changes in number
    with depth, but not in proportion to it (the depth argument is not the number of blocks: L + 1
    layers, say): no depth multiplier fits it, and leaving it out would be silently wrong."""
    places = [(r.module, f"the residual add {r.node} in {where(flow, r.node, r.module)}") for r in residuals
              if not analysis.holds(r.module)]
    places += [(name.rpartition(".")[0], f"parameter '{name}'") for name in parameters
               if not analysis.holds(name.rpartition(".")[0])]
    depths = sorted(counts)
    for module, what in places:
        pattern = _pattern(module)
        numbers = [counts[d].get(pattern, 0) for d in depths]
        if len(set(numbers)) > 1:
            raise MuRewriteError(
                f"{what} belongs to modules like {pattern} whose number changes with depth but not in proportion "
                f"to it ({', '.join(map(str, numbers))} at depths {', '.join(map(str, depths))}), so no depth "
                "multiplier fits them; make the factory's depth argument the number of blocks")


def _refuse_kinds_without_branch(analysis: DepthAnalysis) -> None:
    """A kind of block depth grows in which no residual add was found (a residual written into another
    op, `torch.addmm(x, h, w)`): its blocks would go unscaled without a word."""
    for kind in analysis.counts:
        if not any(_pattern(block) == kind and any(inside(r.module, block) for r in analysis.branches)
                   for block in analysis.blocks):
            raise MuRewriteError(
                f"blocks like {kind} repeat with depth, but muprewrite finds no residual add (x + F(x)) in them, so "
                "it cannot scale their branches; write the residual as an add in the block's forward")


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
                             "argument (the factory's depth= changes the number of no kind of module in proportion)")
    if not analysis.branches:
        raise MuRewriteError(f"depth transfer asked, but the blocks that repeat with depth ({analysis.blocks[0]}, "
                             "...) hold no residual add (x + F(x)); depth-muP and CompleteP scale residual branches")
    post_norm = next((r for r in analysis.branches if r.after_norm), None)
    if post_norm is not None:
        raise MuRewriteError(
            f"the residual add {post_norm.node} in {where(flow, post_norm.node, post_norm.module)} follows a norm "
            "on the stream (post-LN): there is no identity path for the depth multiplier to preserve; depth "
            "transfer (CompleteP, depth-muP) needs pre-LN blocks")

"""lint: the warnings the papers call for, read off the analysis and the plan.

Reads:  the analysis (`Compilation`: its dataflow, uses, attention sites, init) and a `Plan`.
Returns: a list of `PlanWarning` (code, message, paper reference, the names it applies to: parameters,
        or graph nodes with their module and op), which the pipeline puts in the plan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..plan import Plan, PlanWarning
from . import ops
from .contractions import undecided
from .roles import norm_gains

if TYPE_CHECKING:
    from ..pipeline import Compilation

SMALL_D_HEAD = 32
UNIFORM_KURTOSIS = -0.9  # excess kurtosis: -1.2 for a uniform init, 0 for a Gaussian


def lint(c: Compilation, plan: Plan) -> list:
    checks = (_unclassified, _undecided_products, _tied, _uniform_init, _unresolved_init, _squashing, _small_heads, _gains,
              _coupled_decay, _width_dependent_constants)
    return [w for check in checks for w in check(c, plan)]


def _unclassified(c, plan):
    names = [n for n, p in plan.parameters.items() if p.role == "unclassified"]
    if names:
        seen = sorted({u["op"] for n in names for u in plan.parameters[n].uses if u["role"] == "unclassified"})
        yield PlanWarning("unclassified-use", f"{len(names)} parameter(s) reach an op the compiler does not "
                          f"understand ({', '.join(seen)}); as asked (unknown_ops='sp') they keep the standard "
                          "parametrization, so they may not transfer", "docs/design.md: fail closed", names)


def _undecided_products(c, plan):
    if plan.options.get("unknown_ops") != "sp":
        return
    nodes = [node for node, _ in undecided(c.flow, {site.node for site in c.sites})]
    if nodes:
        yield PlanWarning("undecided-product", "product(s) of activations over a dim that grows with width whose "
                          "scale muprewrite cannot decide (no softmax or score function follows, the size does not "
                          "cancel); as asked (unknown_ops='sp') they keep the model's own scale, so they may not "
                          "transfer", "docs/design.md: fail closed", nodes, _located(c.flow, nodes))


def _tied(c, plan):
    names = [n for n, p in plan.parameters.items() if len({u["role"] for u in p.uses}) > 1 and p.role != "unclassified"]
    if names:
        yield PlanWarning("tied-weights", "tensor(s) used in several roles (tied weights): the tensor follows "
                          "its first use's init and LR, every use site gets its own multiplier", "TP5 §B.1", names)


def _uniform_init(c, plan):
    names = [n for n, p in plan.parameters.items()
             if p.role in ("input", "hidden", "output") and c.init[n].excess_kurtosis < UNIFORM_KURTOSIS]
    if names:
        yield PlanWarning("uniform-init", "weights initialised from a uniform distribution; muP transfers "
                          "better with a Gaussian init", "TP5 §D.5", names)


def _unresolved_init(c, plan):
    names = [n for n in plan.parameters if n in c.init and not c.init[n].resolved]
    if names:
        yield PlanWarning("unresolved-init", "small random tensor(s) drawn too few times to tell whether their init "
                          "std grows or shrinks as width^1/2; as asked (unresolved_init='constant') they are taken "
                          "as width-independent", "docs/design.md: fail closed", names)


def _squashing(c, plan):
    nodes = [n for n in c.flow.graph.nodes if ops.op_name(c.flow.fx(n)) in ops.SQUASHING
             and "gelu" not in c.flow.module_type(n).lower()]  # GELU's tanh approximation is not a squashing
    if nodes:
        yield PlanWarning("squashing-activation", "tanh-like activations saturate as width grows unless the "
                          "pre-activations stay O(1); prefer ReLU/GELU", "TP5 §D.3", nodes, _located(c.flow, nodes))


def _small_heads(c, plan):
    nodes = [s.node for s in c.sites if s.d_head["base"] < SMALL_D_HEAD]
    if nodes:
        yield PlanWarning("small-head-dim", f"d_head below {SMALL_D_HEAD} at base width: the proxy model's "
                          "attention is far from the infinite-width limit, transfer may drift", "TP5 §D.4", nodes,
                          _located(c.flow, nodes))


def _gains(c, plan):
    gains = norm_gains(c.flow, c.uses)
    names = [n for n in plan.parameters if n in gains]
    if names and plan.options["norm_gains"] == "trainable":
        yield PlanWarning("trainable-norm-gains", "trainable normalization gains were found to break learning-"
                          "rate transfer (Lingle 2024); option norm_gains='frozen' or 'removed' fixes them",
                          "Lingle 2024 §4", names)


def _coupled_decay(c, plan):
    if plan.options["weight_decay"] == "coupled":
        yield PlanWarning("coupled-weight-decay", "weight decay coupled to the per-tensor LR moves the optimal "
                          "LR with width; use weight_decay='independent'", "TP5 §B.3; Lingle 2024", [])


def _width_dependent_constants(c, plan):
    """A constant multiplier that changes with width outside attention (T5's tied-readout d**-0.5)."""
    attention = {s.node for s in c.sites}
    frozen = {n for e in plan.edits if e.frozen_constant for n in e.frozen_constant["node"].split(", ")}
    nodes = []
    for name in c.flow.graph.nodes:
        if name in frozen:
            continue
        base, delta = c.flow.fx(name, "base"), c.flow.fx(name, "delta")
        if ops.op_name(base) in ops.SCALAR_ARITH and len(base.args) > 1 and isinstance(base.args[1], float):
            if base.args[1] != delta.args[1] and not _feeds_attention(base, attention):
                nodes.append(name)
    if nodes:
        yield PlanWarning("width-dependent-constant", "the model multiplies by a constant that depends on "
                          "width (e.g. d_model**-0.5) where muprewrite cannot hold it at its base value (not on a "
                          "readout's input, or width_constants='keep'); muP's multipliers are applied on top of it — "
                          "make it a constant if that is not intended",
                          "TP5 §B.1 (multipliers)", nodes, _located(c.flow, nodes))


def _located(flow, nodes: list) -> dict:
    """Where each graph node runs, for people: its module path and op."""
    return {n: {"module": flow.module(n), "op": ops.op_name(flow.fx(n))} for n in nodes}


def _feeds_attention(node, attention: set) -> bool:
    """Whether a scalar op sits between a q·k contraction and its softmax (handled by the attention pass)."""
    frontier, seen = list(node.all_input_nodes), set()
    while frontier:
        current = frontier.pop()
        if current.name in attention:
            return True
        if current.name in seen or ops.kind(current) not in (ops.VIEW, ops.POINTWISE):  # as the attention pass walks
            continue
        seen.add(current.name)
        frontier += current.all_input_nodes
    return False

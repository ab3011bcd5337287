"""decide (DESIGN step 5, "plan"): turn the analysis into the plan, the record of every decision.

Reads:  the analysis (`Compilation`: its `Dataflow`, the uses from `roles`, the sites from
        `attention`, the `InitStats` from `init_scan`), the parametrization and options, and the width `at` to plan for: a captured
        width's name, or any width (an int), at which every size and constant the plan reads is
        predicted from the captures (`muprewrite.widths`; `WidthPredictionError` where one cannot be).
Returns: a `Plan` without folds or warnings (the pipeline adds what `foldable` and `lint` return) — per parameter its shapes,
        role, init std before -> after, LR, weight-decay and eps multipliers, trainability and
        zero-init slices; per use site that changes, an `Edit` (readout multiplier, weight
        multiplier, attention scale) with the means that will realize it; a readout multiplier
        also holds a width-dependent scalar the model puts on the readout's input at its base
        value (option `width_constants`). An edit exists only where it changes something, so at
        base width the plan edits nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING


from .. import optimizers
from ..errors import MuRewriteError, StubError
from ..options import checked_options
from ..plan import Edit, ParamPlan, Plan
from ..rules import KEEP, attention_factor, rule_for, weight_decay_mult
from ..widths import check_at
from . import ops
from .attention import hidden_logit_paths
from .contractions import undecided
from .dims import Dataflow
from .repeats import copies_ops_before, inside
from .source import where
from .roles import norm_gains
from .width_constants import width_constants_around

if TYPE_CHECKING:
    from ..pipeline import Compilation


def decide(c: Compilation, parametrization: str = "mup", options: dict | None = None, at: str | int = "target") -> Plan:
    flow, uses, sites, init = c.flow, c.uses, c.sites, c.init
    at = check_at(at, flow.widths)
    options = checked_options(options)
    if options["unknown_ops"] == "error":
        _refuse_unknown_uses(flow, uses)
        _refuse_hidden_logits(flow)
        _refuse_undecided_products(flow, sites)
    if options["unresolved_init"] == "error":
        _refuse_unresolved_init(init)
    zeroed = _zero_init_slices(uses, sites, options, at)
    gains = norm_gains(flow, uses)
    parameters, edits, placed = {}, [], set()
    for name, node in flow.parameters().items():
        param_uses = uses.get(name, [])
        plan = _param_plan(flow, node, name, param_uses, init[name], parametrization, options, at)
        plan.zero = zeroed.get(name, [])
        if name in gains and options["norm_gains"] != "trainable":
            plan.trainable = False
            plan.fill = 1.0 if options["norm_gains"] == "removed" else None
        parameters[name] = plan
        if any(u.role == "unclassified" for u in param_uses):
            continue  # kept in SP as asked (unknown_ops='sp'): no use of it is edited either
        edits += _readout_edits(flow, name, param_uses, parametrization, options, at, placed)
        edits += _weight_multiplier_edits(flow, name, param_uses, plan.weight_multiplier, parametrization)
    depth = c.depth if parametrization != "sp" else None
    if depth is not None:
        parameters = {name: _at_depth(p, depth, options) if depth.holds(name.rpartition(".")[0]) else p
                      for name, p in parameters.items()}
        edits += _branch_edits(flow, depth, options)
    edits = sorted(edits + _attention_edits(flow, sites, parametrization, options, at), key=_graph_order(flow))
    widths = flow.widths
    return Plan(parametrization, widths.base, widths.delta, widths[at], options, parameters, edits, warnings=[],
                depth=_depth_record(depth, options))


def primary_use(param_uses: list):
    """The use whose rule the tensor follows: the first, unless some use is unclassifiable."""
    if not param_uses:
        return None
    unclassified = [u for u in param_uses if u.role == "unclassified"]
    return unclassified[0] if unclassified else param_uses[0]


def _role_unused(shape) -> str:
    """A parameter the example forward never reads: with one growing dim it is vector-like (as an
    input weight, the same init and Adam LR), but whether a matrix growing in two dims is an
    input, hidden or output weight only its use could say."""
    if not shape.num_infinite:
        return "scalar"
    return "vector" if shape.num_infinite == 1 else "unclassified"


def _refuse_unknown_uses(flow: Dataflow, uses: dict) -> None:
    representatives = set(flow.captures.repeats.values())
    for name, node in flow.parameters().items():
        if not uses.get(name) and _role_unused(flow.shape(node)) == "unclassified":
            block = next((r for r in representatives if inside(name, r)), None)
            if block is not None:  # mupify then analyses every block: a copy may use it
                raise StubError(f"parameter '{name}' not used in the captured call of {block}, a block others repeat "
                                "(a copy may use it: an argument can pick which tensors a block uses); pass "
                                "share_blocks=False to analyse every block")
            branches = flow.captures.branches
            taken = "" if branches is None else (
                f" (the model branches on tensor data{branches}, so it was traced on real tensors and holds the "
                "branches the example takes: every expert of a mixture needs tokens routed to it, a global-attention "
                "path its mask)")
            raise MuRewriteError(
                f"parameter '{name}' is not used by the model's forward on the example inputs{taken}, so its muP "
                "role is unknown; pass example inputs that run it (e.g. pixel_values for a vision tower), or pass "
                "--option unknown_ops=sp to keep such tensors in SP (the report marks them)")
    for name, param_uses in uses.items():
        for use in param_uses:
            if use.role == "unclassified" and use.op in ops.NORMALIZING:
                raise MuRewriteError(
                    f"parameter '{name}' is normalised by {use.op} in {where(flow, use.node, use.module)} (weight "
                    "normalisation, a cosine or nGPT-style layer): a normalised weight's entries shrink as "
                    "width^-1/2 whatever its init, and muprewrite has no muP rule for its init and LR yet; use the "
                    "plain weight, or pass --option unknown_ops=sp to keep it in SP (the report marks it)")
            if use.role == "unclassified":
                raise MuRewriteError(
                    f"parameter '{name}' is used by {use.op} in {where(flow, use.node, use.module)}, an op "
                    "muprewrite has no rule for, so its muP scaling is unknown; rewrite that use with a "
                    "standard op, or pass --option unknown_ops=sp to keep such tensors in SP (the report marks them)")


def _refuse_unresolved_init(init: dict) -> None:
    name = next((n for n, stats in init.items() if not stats.resolved), None)
    if name is not None:
        raise MuRewriteError(
            f"the init of '{name}', a small random tensor, was drawn too few times to tell whether its std "
            "grows or shrinks as width^1/2 (the model is costly to build, and no repeated block holds it), so "
            "its muP init scale is unknown; pass --option unresolved_init=constant to take it as "
            "width-independent (the report marks it)")


def _refuse_hidden_logits(flow: Dataflow) -> None:
    for softmax, blocker, contraction in hidden_logit_paths(flow):
        raise MuRewriteError(
            f"the softmax {softmax} in {where(flow, softmax, flow.module(softmax))} is fed by the q·k "
            f"contraction {contraction} (its d_head grows with width) through {ops.op_name(flow.fx(blocker))}, "
            "an op muprewrite cannot see through, so the attention scale cannot be set; compute the logits "
            "with pointwise ops, or pass --option unknown_ops=sp to leave this attention in SP")


def _refuse_undecided_products(flow: Dataflow, sites: list) -> None:
    for contraction, reason in undecided(flow, {site.node for site in sites}):
        raise MuRewriteError(
            f"the product {contraction} ({ops.op_name(flow.fx(contraction))}) in "
            f"{where(flow, contraction, flow.module(contraction))} contracts over a dim that grows with width, and "
            f"{reason}, so muprewrite cannot tell which scale it needs; feed it to a softmax or a score function as "
            "attention logits, normalise it (a ratio or a norm), or pass --option unknown_ops=sp to leave it in SP")


def _param_plan(flow, node, name, param_uses, stats, parametrization, options, at) -> ParamPlan:
    shape = flow.shape(node)
    use = primary_use(param_uses)
    role = use.role if use else _role_unused(shape)
    m, f = (use.fan_in_mult(at), use.fan_out_mult(at)) if use else (1.0, 1.0)
    rule = rule_for(parametrization, role, m, f, options["alpha_out"], options["alpha_in"])
    before = stats.std_at(flow.widths.ratio(at))
    effective = before if rule.init is None else (stats.proxy_std or stats.base_std) * rule.init
    stored = effective / rule.weight_multiplier
    tensor = optimizers.Tensor(role, tuple(shape.at(at)), tuple(shape.base), m, f, rule.lr_adam, rule.lr_sgd,
                               optimizers.rms_ratio(stored, _stored_std_at_base(stats, rule, parametrization, role,
                                                                                options), stats.zero_mean),
                               options, keep=rule is KEEP)
    lr = {name: family.lr(tensor) for name, family in optimizers.FAMILIES.items()}
    return ParamPlan(
        shape=list(shape.at(at)),
        base_shape=list(shape.base),
        infinite=list(shape.infinite),
        role=role,
        init_std={"before": before, "after": stored},
        lr_mult=lr,
        wd_mult={k: None if v is None else weight_decay_mult(v, options["weight_decay"]) for k, v in lr.items()},
        routes={name: route for name, family in optimizers.FAMILIES.items()
                if (route := family.route(tensor)) != name},
        uses=[_use_record(u, at) for u in param_uses],
        aliases=list(flow.captures.aliases.get(name, [])),
        weight_multiplier=rule.weight_multiplier,
        eps_mult=1.0 / m if options["adam_eps"] == "scaled" and parametrization != "sp" else 1.0,
        zero_mean=stats.zero_mean,
    )


def _stored_std_at_base(stats, rule, parametrization, role, options) -> float:
    """The stored tensor's std at base width (the table at m = f = 1: alpha_in's weight multiplier)."""
    if rule is KEEP:
        return stats.base_std
    at_base = rule_for(parametrization, role, 1.0, 1.0, options["alpha_out"], options["alpha_in"])
    return stats.base_std * (1.0 if at_base.init is None else at_base.init) / at_base.weight_multiplier


def _use_record(use, at) -> dict:
    return {"node": use.node, "op": use.op, "module": use.module, "role": use.role,
            "fan_in_mult": use.fan_in_mult(at), "fan_out_mult": use.fan_out_mult(at)}


def _readout_edits(flow, name, param_uses, parametrization, options, at, placed: set) -> list:
    """A multiplier on the activation of each readout use; `placed` holds the (node, operand)
    pairs already edited, since a readout whose weight is built from several parameters
    (`F.linear(h, torch.cat([w1, w2]))`) needs its multiplier once."""
    edits = []
    for use in param_uses:
        if use.role != "output":
            continue
        factor = rule_for(parametrization, "output", use.fan_in_mult(at), use.fan_out_mult(at),
                          options["alpha_out"]).readout_multiplier
        operand = ops.activation_slot(flow.fx(use.node), use.position)
        if operand is None:
            raise MuRewriteError(
                f"'{name}' is a readout at {use.op} in {where(flow, use.node, use.module)}, but muprewrite cannot "
                "tell which operand is its activation, so it cannot place the 1/m multiplier; use a linear or "
                "a two-operand matmul/einsum for it")
        frozen = None
        if parametrization != "sp" and options["width_constants"] == "freeze":
            frozen = width_constants_around(flow, name, use, operand, at)
        if frozen:
            factor *= frozen.pop("correction")
        if factor == 1.0 or (use.node, operand) in placed:
            continue
        placed.add((use.node, operand))
        owners = {n.rpartition(".")[0] for n in [name, *flow.captures.aliases.get(name, [])]}
        calls = _occurrence(flow, use.node, use.module, ops.family(use.op))
        hookable = (use.op == "linear" and operand == "input" and flow.module_type(use.node) in ops.LINEAR_MODULES
                    and use.module in owners and calls["calls"] == 1)  # a hook fires at every call
        edits.append(Edit(
            kind="readout_multiplier", module=use.module, node=use.node, old=1.0, new=factor,
            realized_by="forward_pre_hook" if hookable else "call_interception", family=ops.family(use.op),
            **calls, apply_to="input", operand=operand, param=name, frozen_constant=frozen,
        ))
    return edits


def _weight_multiplier_edits(flow, name, param_uses, multiplier, parametrization) -> list:
    if multiplier == 1.0:
        return []
    edits = []
    for use in param_uses:
        family = ops.family(use.op)
        if family is None:
            raise MuRewriteError(
                f"{parametrization} puts a multiplier on '{name}', which is used by {use.op} in "
                f"{use.module or 'the root module'}: that call cannot be intercepted; use parametrization 'mup'")
        edits.append(Edit(
            kind="weight_multiplier", module=use.module, node=use.node, old=1.0, new=multiplier,
            realized_by="call_interception", family=family,
            **_occurrence(flow, use.node, use.module, family), apply_to="input",
            operand=use.position, param=name,
        ))
    return edits


def _attention_edits(flow, sites, parametrization, options, at) -> list:
    if parametrization == "sp" or options["attention_scale"] == "sp":
        return []
    edits = []
    for site in sites:
        if not site.head_dim_grows:
            continue
        factor = attention_factor(parametrization, site.d_head["base"], site.d_head_at(at), options["alpha_attn"])
        if factor == 1.0:
            continue
        old = site.old_scale_at(at)
        edits.append(Edit(
            kind="attention_scale", module=site.module, node=site.node, old=old, new=old * factor,
            realized_by="call_interception", family=site.kind,
            **_occurrence(flow, site.node, site.module, site.kind),
            # scaling q rather than the (T x T) logits is the same product and costs less
            apply_to="scale_kwarg" if site.kind == "sdpa" else "input", operand=site.q_operand,
        ))
    return edits


def _zero_init_slices(uses, sites, options, at) -> dict:
    """{parameter: [{"dim", "start", "stop"}]} for the zero-init options (stop None = to the end)."""
    whole = [{"dim": 0, "start": 0, "stop": None}]
    zeroed = {}
    if options["zero_init_readout"]:
        readout_nodes = {u.node for param_uses in uses.values() for u in param_uses if u.role == "output"}
        for name, param_uses in uses.items():
            if any(u.node in readout_nodes for u in param_uses):  # the readout weight and its bias
                zeroed[name] = whole
    if options["zero_init_query"]:
        untraced = [s.node for s in sites if s.query_slices is None]
        if untraced:
            raise MuRewriteError(
                f"zero_init_query: the query of attention {untraced[0]} could not be traced back to the weight "
                "that computes it, so it cannot be zeroed; project q with a linear/matmul (a fused qkv split "
                "on its last dim is fine) or drop the option")
        for site in sites:
            for name, piece in (site.query_slices_at(at) or {}).items():
                zeroed.setdefault(name, []).append(piece)
    return zeroed


def _at_depth(plan: ParamPlan, depth, options: dict) -> ParamPlan:
    """A tensor inside the blocks that repeat with depth (CompleteP, Table 1): Adam's LR times
    m_L^(alpha-1), its eps (option adam_eps="scaled") times m_L^-alpha; no other family has a stated
    depth rule (None: param_groups refuses it)."""
    multiplier, alpha = depth.depths.multiplier, options["depth_alpha"]
    if multiplier == 1.0:
        return plan
    factor = multiplier ** (alpha - 1)
    lr = {name: (value * factor if value is not None else None) if name == "adam" else None
          for name, value in plan.lr_mult.items()}
    wd = {name: None if value is None else weight_decay_mult(value, options["weight_decay"]) for name, value in lr.items()}
    eps = plan.eps_mult * (multiplier ** -alpha if options["adam_eps"] == "scaled" else 1.0)
    return replace(plan, lr_mult=lr, wd_mult=wd, eps_mult=eps, depth_lr_mult=factor)


def _branch_edits(flow: Dataflow, depth, options: dict) -> list:
    """m_L^-alpha on each residual branch that repeats with depth, as an edit of its add's branch operand."""
    factor = depth.depths.multiplier ** -options["depth_alpha"]
    if factor == 1.0:
        return []
    return [Edit(kind="branch_multiplier", module=r.module, node=r.node, old=1.0, new=factor,
                 realized_by="call_interception", family="add", **_occurrence(flow, r.node, r.module, "add"),
                 apply_to="input", operand="other" if r.stream == "input" else "input")
            for r in depth.branches]


def _depth_record(depth, options: dict) -> dict | None:
    if depth is None:
        return None
    depths = depth.depths
    return {"base": depths.base, "delta": depths.delta, "target": depths.target, "multiplier": depths.multiplier,
            "alpha": options["depth_alpha"], "blocks": list(depth.blocks)}


def _occurrence(flow: Dataflow, node: str, scope: str, fam: str) -> dict:
    """Which call of the module at `scope` runs `node` ("call", of "calls" per forward) and the
    index of `node` among the `fam` calls made during that call of the module ("occurrence")."""
    call = flow.call(node, scope)
    in_scope = [n for n in flow.graph.nodes if flow.in_scope(n, scope)]
    is_family = lambda n: ops.family(ops.op_name(flow.fx(n))) == fam  # noqa: E731
    same = [n for n in in_scope if flow.call(n, scope) == call and is_family(n)]
    calls = 1 + max((flow.call(n, scope) for n in in_scope), default=0)
    return {"occurrence": same.index(node) + copies_ops_before(flow, node, scope, is_family), "call": call,
            "calls": calls}


def _graph_order(flow):
    index = {name: i for i, name in enumerate(flow.graph.nodes)}
    return lambda edit: index[edit.node]

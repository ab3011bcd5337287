"""decide (DESIGN step 5, "plan"): turn the analysis into the plan, the record of every decision.

Reads:  `Dataflow`, the uses from `roles`, the sites from `attention`, the `InitStats` from
        `init_scan`, the parametrization and options, and the width `at` to plan for.
Writes: a `Plan` — per parameter its shapes, role, init std before -> after, LR and weight-decay
        multipliers; per use site that needs one, an `Edit` (readout multiplier, attention
        scale) with the means that will realize it; and the warnings the papers call for.
"""

from __future__ import annotations

from ..errors import MuRewriteError
from ..plan import Edit, ParamPlan, Plan, PlanWarning
from ..rules import attention_factor, rule_for, weight_decay_mult
from . import ops
from .dims import Dataflow

DEFAULT_OPTIONS = {"alpha_out": 1.0, "alpha_attn": 1.0, "weight_decay": "independent"}
_HOOKABLE_LINEARS = {"torch.nn.modules.linear.Linear", "torch.nn.modules.linear.NonDynamicallyQuantizableLinear"}
SMALL_D_HEAD = 32


def decide(flow: Dataflow, uses: dict, sites: list, init: dict, parametrization: str = "mup",
           options: dict | None = None, at: str = "target") -> Plan:
    options = _checked_options(options)
    parameters, edits = {}, []
    for name, node in flow.parameters().items():
        param_uses = uses.get(name, [])
        parameters[name] = _param_plan(flow, node, name, param_uses, init[name], parametrization, options, at)
        edits += _readout_edits(flow, name, param_uses, parametrization, options, at)
    edits += _attention_edits(flow, sites, parametrization, options, at)
    warnings = _warnings(flow, uses, sites, init, parameters, options)
    widths = flow.widths
    return Plan(parametrization, widths.base, widths.delta, widths[at], options, parameters,
                sorted(edits, key=_graph_order(flow)), warnings)


def _checked_options(options: dict | None) -> dict:
    unknown = sorted(set(options or {}) - set(DEFAULT_OPTIONS))
    if unknown:
        raise MuRewriteError(f"unknown option(s) {', '.join(unknown)}; known options: {', '.join(DEFAULT_OPTIONS)}")
    return {**DEFAULT_OPTIONS, **(options or {})}


def primary_use(param_uses: list):
    """The use whose rule the tensor follows: the first, unless some use is unclassifiable."""
    if not param_uses:
        return None
    unclassified = [u for u in param_uses if u.role == "unclassified"]
    return unclassified[0] if unclassified else param_uses[0]


def _param_plan(flow, node, name, param_uses, stats, parametrization, options, at) -> ParamPlan:
    shape = flow.shape(node)
    use = primary_use(param_uses)
    role = use.role if use else ("vector" if shape.num_infinite else "scalar")
    m, f = (use.fan_in_mult(at), use.fan_out_mult(at)) if use else (1.0, 1.0)
    rule = rule_for(parametrization, role, m, f, options["alpha_out"])
    before = stats.std_at(flow.widths.ratio(at))
    after = before if rule.init is None else stats.base_std * rule.init
    lr = {"adam": rule.lr_adam, "sgd": rule.lr_sgd}
    return ParamPlan(
        shape=list(shape.at(at)),
        base_shape=list(shape.base),
        infinite=list(shape.infinite),
        role=role,
        init_std={"before": before, "after": after},
        lr_mult=lr,
        wd_mult={k: weight_decay_mult(v, options["weight_decay"]) for k, v in lr.items()},
        uses=[_use_record(u, at) for u in param_uses],
        aliases=list(flow.captures.aliases.get(name, [])),
    )


def _use_record(use, at) -> dict:
    return {"node": use.node, "op": use.op, "module": use.module, "role": use.role,
            "fan_in_mult": use.fan_in_mult(at), "fan_out_mult": use.fan_out_mult(at)}


def _readout_edits(flow, name, param_uses, parametrization, options, at) -> list:
    if parametrization == "sp":
        return []
    edits = []
    for use in param_uses:
        if use.role != "output":
            continue
        factor = rule_for(parametrization, "output", use.fan_in_mult(at), use.fan_out_mult(at),
                          options["alpha_out"]).multiplier
        operand = _activation_operand(use)
        hookable = (use.op == "linear" and operand == 0 and flow.module_type(use.node) in _HOOKABLE_LINEARS
                    and name.rpartition(".")[0] == use.module)
        fam = ops.family(use.op)
        edits.append(Edit(
            kind="readout_multiplier", module=use.module, node=use.node, old=1.0, new=factor,
            realized_by="forward_pre_hook" if hookable else "call_interception", family=fam,
            occurrence=_occurrence(flow, use.node, use.module, fam), apply_to="input",
            operand=operand, param=name,
        ))
    return edits


def _activation_operand(use):
    """The argument position of the activation that meets the readout weight."""
    if use.op == "einsum":
        return ("einsum", 1 - use.position[1])
    pairs = {"linear": (0, 1), "matmul": (0, 1), "mm": (0, 1), "bmm": (0, 1), "addmm": (1, 2), "baddbmm": (1, 2)}
    first, second = pairs.get(use.op, (0, 1))
    return second if use.position == first else first


def _attention_edits(flow, sites, parametrization, options, at) -> list:
    if parametrization == "sp":
        return []
    edits = []
    for site in sites:
        if not site.head_dim_grows:
            continue
        factor = attention_factor(parametrization, site.d_head["base"], site.d_head[at], options["alpha_attn"])
        old = site.old_scale[at]
        edits.append(Edit(
            kind="attention_scale", module=site.module, node=site.node, old=old, new=old * factor,
            realized_by="call_interception", family=site.kind,
            occurrence=_occurrence(flow, site.node, site.module, site.kind),
            # scaling q rather than the (T x T) logits is the same product and costs less
            apply_to="scale_kwarg" if site.kind == "sdpa" else "input", operand=site.q_operand,
        ))
    return edits


def _occurrence(flow: Dataflow, node: str, scope: str, fam: str) -> int:
    """Index of `node` among the `fam` calls that run while the module at `scope` runs."""
    same = [n for n in flow.graph.nodes
            if flow.in_scope(n, scope) and ops.family(ops.op_name(flow.fx(n))) == fam]
    return same.index(node)


def _graph_order(flow):
    index = {name: i for i, name in enumerate(flow.graph.nodes)}
    return lambda edit: index[edit.node]


def _warnings(flow, uses, sites, init, parameters, options) -> list:
    warnings = []
    unclassified = [n for n, p in parameters.items() if p.role == "unclassified"]
    if unclassified:
        ops_seen = sorted({u["op"] for n in unclassified for u in parameters[n].uses if u["role"] == "unclassified"})
        warnings.append(PlanWarning(
            "unclassified-use", f"{len(unclassified)} parameter(s) reach an op the compiler does not "
            f"understand ({', '.join(ops_seen)}); they keep the standard parametrization",
            "DESIGN.md: roles", unclassified))
    conflicting = [n for n, p in parameters.items() if len({u["role"] for u in p.uses}) > 1]
    if conflicting:
        warnings.append(PlanWarning(
            "tied-weights", "tensor(s) used in several roles (tied weights): the tensor follows "
            "its first use's init and LR, every use site gets its own multiplier", "TP5 §B.1", conflicting))
    uniform = [n for n, p in parameters.items()
               if p.role in ("input", "hidden", "output") and init[n].excess_kurtosis < -0.9]
    if uniform:
        warnings.append(PlanWarning(
            "uniform-init", "weights initialised from a uniform distribution; muP transfers "
            "better with a Gaussian init", "TP5 §D.5", uniform))
    tanh = [n for n in flow.graph.nodes if ops.op_name(flow.fx(n)) == "tanh"]
    if tanh:
        warnings.append(PlanWarning(
            "squashing-activation", "tanh-like activations saturate as width grows unless the "
            "pre-activations stay O(1); prefer ReLU/GELU", "TP5 §D.3", tanh))
    small = [s.node for s in sites if s.d_head["base"] < SMALL_D_HEAD]
    if small:
        warnings.append(PlanWarning(
            "small-head-dim", f"d_head below {SMALL_D_HEAD} at base width: the proxy model's "
            "attention is far from the infinite-width limit, transfer may drift", "TP5 §D.4", small))
    gains = [n for n, param_uses in uses.items()
             if any(ops.NORM_GAIN_POSITION.get(u.op) == u.position for u in param_uses)]
    if gains:
        warnings.append(PlanWarning(
            "trainable-norm-gains", "trainable normalization gains were found to break learning-"
            "rate transfer (Lingle 2024); consider making them non-trainable", "Lingle 2024 §4", gains))
    if options["weight_decay"] == "coupled":
        warnings.append(PlanWarning(
            "coupled-weight-decay", "weight decay coupled to the per-tensor LR moves the optimal "
            "LR with width; use weight_decay='independent'", "TP5 §B.3; Lingle 2024", []))
    return warnings

"""decide (DESIGN step 5, "plan"): turn the analysis into the plan, the record of every decision.

Reads:  `Dataflow`, the uses from `roles`, the sites from `attention`, the `InitStats` from
        `init_scan`, the parametrization and options, and the width `at` to plan for.
Writes: a `Plan` without warnings (the `lint` pass adds them) — per parameter its shapes,
        role, init std before -> after, LR, weight-decay and eps multipliers, trainability and
        zero-init slices; per use site that changes, an `Edit` (readout multiplier, weight
        multiplier, attention scale) with the means that will realize it; a readout multiplier
        also holds a width-dependent scalar the model puts on the readout's input at its base
        value (option `width_constants`). An edit exists only where it changes something, so at
        base width the plan edits nothing.
"""

from __future__ import annotations

from torch import fx

from ..errors import MuRewriteError
from ..plan import Edit, ParamPlan, Plan
from ..rules import attention_factor, rule_for, weight_decay_mult
from . import ops
from .dims import Dataflow

DEFAULT_OPTIONS = {
    "alpha_out": 1.0,  # readout multiplier (TP5 alpha_output)
    "alpha_attn": 1.0,  # attention logit multiplier
    "alpha_in": 1.0,  # input weight multiplier
    "weight_decay": "independent",  # lr * wd fixed per tensor; "coupled": torch's plain wd
    "attention_scale": "mup",  # "sp" keeps 1/sqrt(d_head) (Lingle: breaks transfer)
    "zero_init_readout": False,  # TP5 §D.2
    "zero_init_query": False,  # TP5 §D.2; Lingle: slightly better
    "norm_gains": "trainable",  # "frozen" (requires_grad False) or "removed" (fixed at 1)
    "adam_eps": "constant",  # "scaled": eps / fan_in multiplier (TP5 §B.3)
    # "freeze": a scalar on a readout's input that changes with width (T5's d_model**-0.5) is
    # held at its base value, so muP's 1/m is the readout's only width dependence; "keep" keeps it
    "width_constants": "freeze",
}
CHOICES = {
    "weight_decay": ("independent", "coupled"),
    "attention_scale": ("mup", "sp"),
    "norm_gains": ("trainable", "frozen", "removed"),
    "adam_eps": ("constant", "scaled"),
    "width_constants": ("freeze", "keep"),
}
_HOOKABLE_LINEARS = {"torch.nn.modules.linear.Linear", "torch.nn.modules.linear.NonDynamicallyQuantizableLinear"}


def decide(flow: Dataflow, uses: dict, sites: list, init: dict, parametrization: str = "mup",
           options: dict | None = None, at: str = "target") -> Plan:
    options = checked_options(options)
    zeroed = _zero_init_slices(uses, sites, options, at)
    gains = norm_gains(uses)
    parameters, edits = {}, []
    for name, node in flow.parameters().items():
        param_uses = uses.get(name, [])
        plan = _param_plan(flow, node, name, param_uses, init[name], parametrization, options, at)
        plan.zero = zeroed.get(name, [])
        if name in gains and options["norm_gains"] != "trainable":
            plan.trainable = False
            plan.fill = 1.0 if options["norm_gains"] == "removed" else None
        parameters[name] = plan
        edits += _readout_edits(flow, name, param_uses, parametrization, options, at)
        edits += _weight_multiplier_edits(flow, name, param_uses, plan.weight_multiplier, parametrization)
    edits += _attention_edits(flow, sites, parametrization, options, at)
    widths = flow.widths
    return Plan(parametrization, widths.base, widths.delta, widths[at], options, parameters,
                sorted(edits, key=_graph_order(flow)), warnings=[])


def checked_options(options: dict | None) -> dict:
    unknown = sorted(set(options or {}) - set(DEFAULT_OPTIONS))
    if unknown:
        raise MuRewriteError(f"unknown option(s) {', '.join(unknown)}; known options: {', '.join(DEFAULT_OPTIONS)}")
    options = {**DEFAULT_OPTIONS, **(options or {})}
    for key, default in DEFAULT_OPTIONS.items():
        value = options[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise MuRewriteError(f"option {key} takes true or false, got {value!r}")
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise MuRewriteError(f"option {key} takes a positive number, got {value!r}")
            options[key] = float(value)
    for key, allowed in CHOICES.items():
        if options[key] not in allowed:
            raise MuRewriteError(f"option {key}={options[key]!r} is not one of {', '.join(allowed)}")
    return options


def primary_use(param_uses: list):
    """The use whose rule the tensor follows: the first, unless some use is unclassifiable."""
    if not param_uses:
        return None
    unclassified = [u for u in param_uses if u.role == "unclassified"]
    return unclassified[0] if unclassified else param_uses[0]


def norm_gains(uses: dict) -> set:
    """Parameters used as the gain (scale) of a normalization."""
    return {name for name, param_uses in uses.items()
            if any(ops.NORM_GAIN_POSITION.get(u.op) == u.position for u in param_uses)}


def _param_plan(flow, node, name, param_uses, stats, parametrization, options, at) -> ParamPlan:
    shape = flow.shape(node)
    use = primary_use(param_uses)
    role = use.role if use else ("vector" if shape.num_infinite else "scalar")
    m, f = (use.fan_in_mult(at), use.fan_out_mult(at)) if use else (1.0, 1.0)
    rule = rule_for(parametrization, role, m, f, options["alpha_out"], options["alpha_in"])
    before = stats.std_at(flow.widths.ratio(at))
    effective = before if rule.init is None else stats.base_std * rule.init
    lr = {"adam": rule.lr_adam, "sgd": rule.lr_sgd}
    return ParamPlan(
        shape=list(shape.at(at)),
        base_shape=list(shape.base),
        infinite=list(shape.infinite),
        role=role,
        init_std={"before": before, "after": effective / rule.weight_multiplier},
        lr_mult=lr,
        wd_mult={k: weight_decay_mult(v, options["weight_decay"]) for k, v in lr.items()},
        uses=[_use_record(u, at) for u in param_uses],
        aliases=list(flow.captures.aliases.get(name, [])),
        weight_multiplier=rule.weight_multiplier,
        eps_mult=1.0 / m if options["adam_eps"] == "scaled" and parametrization != "sp" else 1.0,
        zero_mean=stats.zero_mean,
    )


def _use_record(use, at) -> dict:
    return {"node": use.node, "op": use.op, "module": use.module, "role": use.role,
            "fan_in_mult": use.fan_in_mult(at), "fan_out_mult": use.fan_out_mult(at)}


def _readout_edits(flow, name, param_uses, parametrization, options, at) -> list:
    edits = []
    for use in param_uses:
        if use.role != "output":
            continue
        factor = rule_for(parametrization, "output", use.fan_in_mult(at), use.fan_out_mult(at),
                          options["alpha_out"]).readout_multiplier
        operand = _activation_operand(use)
        frozen = None
        if parametrization != "sp" and options["width_constants"] == "freeze":
            frozen = _width_constant_on_input(flow, use.node, operand, at)
        if frozen:
            factor *= frozen.pop("correction")
        if factor == 1.0:
            continue
        owners = {n.rpartition(".")[0] for n in [name, *flow.captures.aliases.get(name, [])]}
        hookable = (use.op == "linear" and operand == 0 and flow.module_type(use.node) in _HOOKABLE_LINEARS
                    and use.module in owners)
        edits.append(Edit(
            kind="readout_multiplier", module=use.module, node=use.node, old=1.0, new=factor,
            realized_by="forward_pre_hook" if hookable else "call_interception", family=ops.family(use.op),
            occurrence=_occurrence(flow, use.node, use.module, ops.family(use.op)), apply_to="input",
            operand=operand, param=name, frozen_constant=frozen,
        ))
    return edits


def _width_constant_on_input(flow, node: str, operand, at: str) -> dict | None:
    """A mul/div by a float that differs between base and `at`, reached from the activation
    operand of `node` through view-like ops, with the factor that restores its base value."""
    if not isinstance(operand, int):
        return None
    arg = flow.fx(node, at).args[operand]
    while isinstance(arg, fx.Node):
        name = ops.op_name(arg)
        if name in ops.SCALAR_ARITH_OPS:
            now = arg.args[1] if len(arg.args) > 1 else None
            base = flow.fx(arg.name, "base").args[1] if isinstance(now, float) else None
            if base is None or base == now:
                return None
            correction = base / now if name == "mul" else now / base
            return {"node": arg.name, "base": base, "now": now, "correction": correction}
        if name not in ops.VIEW_OPS or not arg.args:
            return None
        arg = arg.args[0]
    return None


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
            occurrence=_occurrence(flow, use.node, use.module, family), apply_to="input",
            operand=use.position, param=name,
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
    if parametrization == "sp" or options["attention_scale"] == "sp":
        return []
    edits = []
    for site in sites:
        if not site.head_dim_grows:
            continue
        factor = attention_factor(parametrization, site.d_head["base"], site.d_head[at], options["alpha_attn"])
        if factor == 1.0:
            continue
        old = site.old_scale[at]
        edits.append(Edit(
            kind="attention_scale", module=site.module, node=site.node, old=old, new=old * factor,
            realized_by="call_interception", family=site.kind,
            occurrence=_occurrence(flow, site.node, site.module, site.kind),
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
        for site in sites:
            for name, piece in (site.query_slices or {}).get(at, {}).items():
                zeroed.setdefault(name, []).append(piece)
    return zeroed


def _occurrence(flow: Dataflow, node: str, scope: str, fam: str) -> int:
    """Index of `node` among the `fam` calls that run while the module at `scope` runs."""
    same = [n for n in flow.graph.nodes
            if flow.in_scope(n, scope) and ops.family(ops.op_name(flow.fx(n))) == fam]
    return same.index(node)


def _graph_order(flow):
    index = {name: i for i, name in enumerate(flow.graph.nodes)}
    return lambda edit: index[edit.node]

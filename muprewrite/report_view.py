"""What the report shows of the parameters, read off the plan alone: its rows (repeated layers
collapsed, or every row with `full`), their cells, which parameters change under which optimizer
family, and the sentences of the summary (the use sites: `report_sites`). The terminal, Markdown
and HTML renderers all draw these.

A parameter *changes* under an optimizer family when anything a user of that family sees
differs from SP: its init, its forward multiplier (on the tensor or, for a readout, on its use
site's input), whether it trains, or that family's LR or weight-decay multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .options import changed_options
from .plan import Plan
from .report_collapse import collapse, each

# the report's sections in order, the same in every form (terminal, Markdown, HTML): each renderer
# draws every one of them (a new section: its name here and one function in each renderer)
SECTIONS = ("title", "summary", "notes", "parameters", "edits", "warnings", "diff", "verification", "next_steps")

CHANGE_DEFINITION = ("a parameter whose init, forward multiplier (its own, or a readout's on its input), "
                     "trainability, or that family's LR or WD multiplier differs from SP")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    group: str = ""  # columns of one group (LR×, WD×) are headed "LR× adam", "sgd", ...
    numeric: bool = False

    @property
    def title(self) -> str:
        return f"{self.group} {self.label}".strip()


@dataclass
class Row:
    label: str  # the (collapsed) name
    count: int  # members
    note: str  # what follows the name: aliases, a tie
    cells: dict  # column key -> text
    members: list  # [(name, detail)] — the full names behind a collapsed row, with what tells them apart
    changed: bool = True
    role: str = ""

    @property
    def heading(self) -> str:
        return " ".join(part for part in (self.label, f"×{self.count}" if self.count > 1 else "", self.note) if part)


@dataclass
class Section:
    columns: list
    rows: list
    notes: list = field(default_factory=list)  # lines under the table


def num(x: float) -> str:
    return f"{x:.4g}"


# ---- optimizer families and what changes ------------------------------------------------------

def families(plan: Plan) -> list:
    """The optimizer families the user will train with (plan.optimizers), in their order."""
    return list(plan.optimizers)


def edits_by_param(plan: Plan) -> dict:
    """parameter name (and each alias) -> the edits that scale it at a use site."""
    found = {}
    for edit in plan.edits:
        if edit.param:
            found.setdefault(edit.param, []).append(edit)
    return found


def changes_under(p, family: str, edits: list) -> bool:
    return (p.init_ratio != 1.0 or p.weight_multiplier != 1.0 or bool(p.zero) or not p.trainable
            or p.fill is not None or any(e.factor != 1.0 for e in edits)
            or p.lr_mult.get(family, 1.0) not in (1.0, None) or p.wd_mult.get(family, 1.0) not in (1.0, None))


def change_counts(plan: Plan) -> dict:
    """family -> how many parameters change under it."""
    edits = edits_by_param(plan)
    return {f: sum(changes_under(p, f, _edits_of(name, p, edits)) for name, p in plan.parameters.items())
            for f in families(plan)}


def change_sentence(plan: Plan) -> str:
    """'28 parameters: 9 change under adam, 28 under sgd'."""
    counts, parameters = change_counts(plan), counted(len(plan.parameters), "parameter")
    if not any(counts.values()):
        return f"{parameters}: none changes" + (f" under {' or '.join(counts)}" if counts else "")
    parts = [f"{n} {'change ' if i == 0 else ''}under {f}" for i, (f, n) in enumerate(counts.items())]
    return f"{parameters}: " + ", ".join(parts)


def _edits_of(name: str, p, edits: dict) -> list:
    return [e for n in (name, *p.aliases) for e in edits.get(n, [])]


# ---- parameters --------------------------------------------------------------------------------

def parameter_section(plan: Plan, full: bool = False, derived_wd_shown: bool = True) -> Section:
    """`derived_wd_shown=False` leaves out the WD× columns where the weight-decay mode gives every
    one of them from LR× (the legend says so): the terminal's narrow layout."""
    edits, fams = edits_by_param(plan), families(plan)
    items = list(plan.parameters.items())
    key = lambda item: _param_key(item[1], _edits_of(*item, edits))  # noqa: E731
    name, aliases = (lambda item: item[0]), (lambda item: item[1].aliases)
    groups = each(items, name, aliases) if full else collapse(items, name, key, aliases)
    rows = [_param_row(g, fams, edits) for g in groups]
    wd_shown = derived_wd_shown or not wd_derived(plan)
    return Section(parameter_columns(plan, wd_shown), rows, parameter_legend(plan, wd_shown))


def parameter_columns(plan: Plan, wd_shown: bool = True) -> list:
    params, fams = list(plan.parameters.values()), families(plan)
    columns = [Column("shape", "shape"), Column("role", "role"), Column("init", "init std")]
    if any(p.weight_multiplier != 1.0 for p in params):
        columns.append(Column("weight", "weight×", numeric=True))
    if any(p.eps_mult != 1.0 for p in params):
        columns.append(Column("eps", "eps×", numeric=True))
    columns += [Column(f"lr:{f}", f, "LR×", numeric=True) for f in fams]
    return columns + ([Column(f"wd:{f}", f, "WD×", numeric=True) for f in fams] if wd_shown else [])


def wd_derived(plan: Plan) -> bool:
    """Whether every WD× is what the weight-decay mode makes of its LR× (1 / LR× or 1)."""
    rule = {"independent": lambda lr: 1.0 / lr, "coupled": lambda lr: 1.0}.get(plan.options.get("weight_decay"))
    return rule is not None and all(_wd_follows(p.lr_mult[f], p.wd_mult.get(f), rule)
                                    for p in plan.parameters.values() for f in p.lr_mult)


def _wd_follows(lr, wd, rule) -> bool:
    if lr is None or wd is None:  # no rule for the family: nothing to derive
        return lr is None and wd is None
    return lr != 0 and abs(wd - rule(lr)) <= 1e-9 * max(1.0, abs(wd))


def parameter_legend(plan: Plan, wd_shown: bool = True) -> list:
    lines = ["∞: a dim that grows with width. NAME ×N: N parameters alike, {a..b} their indices (--full: one "
             "row each).",
             "init std: the model's own at the target width → muP's (≈: the mean over a collapsed row); keep: "
             "unchanged; const, zeros: a constant init (norm gains at 1, zero biases), kept.",
             "LR×, WD×: factors on the lr and weight_decay given to param_groups, per optimizer family. Counted as "
             f"changed: {CHANGE_DEFINITION}."]
    if any(v is None for p in plan.parameters.values() for v in p.lr_mult.values()):
        lines.append("—: no exact rule for that family (param_groups refuses the family for this tensor).")
    hidden = "" if wd_shown else " (not shown; --full shows it)"
    decay = plan.options.get("weight_decay", "independent")
    if decay == "independent":
        lines.append(f"WD× = 1 / LR×{hidden}: independent weight decay keeps lr × wd per tensor as at the base "
                     "width (as mup's MuAdamW): the decay does not shrink with the per-tensor LR.")
    elif decay == "coupled":
        lines.append(f"WD× = 1{hidden}: weight decay coupled to the per-tensor LR (option weight_decay=coupled): "
                     "lr × wd shrinks with the LR.")
    return lines


def _param_key(p, edits: list) -> tuple:
    return (tuple(p.shape), tuple(p.base_shape), tuple(p.infinite), p.role, _use_roles(p), _init_kind(p),
            f"{p.init_ratio:.6g}", repr(p.zero), p.weight_multiplier, repr(p.lr_mult), repr(p.wd_mult),
            p.eps_mult, p.trainable, p.fill, tuple(num(e.factor) for e in edits))


def _param_row(group, fams: list, edits: dict) -> Row:
    (name, p), plans = group.members[0], [q for _, q in group.members]
    cells = {"shape": shape(p), "role": role(p), "init": init_cell(plans),
             "weight": num(p.weight_multiplier), "eps": num(p.eps_mult)}
    for f in fams:
        cells[f"lr:{f}"] = _mult(p.lr_mult, f)
        cells[f"wd:{f}"] = _mult(p.wd_mult, f)
    changed = any(changes_under(p, f, _edits_of(name, p, edits)) for f in fams) or not fams
    members = [(n, init_cell([q])) for n, q in group.members]
    return Row(group.label, len(group.members), _param_note(group, p), cells, members, changed, p.role)


def _param_note(group, p) -> str:
    notes = [f"(= {', '.join(group.extras)})"] if group.extras else []
    roles = _use_roles(p)
    if len(roles) > 1:
        notes.append(f"tied: {' + '.join(roles)}")
    return " ".join(notes)


def _mult(values: dict, family: str) -> str:
    return num(values[family]) if values.get(family) is not None else "—"


def _use_roles(p) -> tuple:
    return tuple(dict.fromkeys(u["role"] for u in p.uses))


def role(p) -> str:
    if p.fill is not None:
        return f"{p.role}, removed (= {p.fill:g})"
    return p.role if p.trainable else f"{p.role}, frozen"


def shape(p) -> str:
    return "[" + ", ".join(f"{s}∞" if inf else str(s) for s, inf in zip(p.shape, p.infinite)) + "]"


def _init_kind(p) -> str:
    before, after = p.init_std["before"], p.init_std["after"]
    if before == 0 and after == 0:
        return "zeros" if p.zero_mean else "const"
    return "keep" if before == after else "rescale"


def init_cell(plans: list) -> str:
    """'0.0201 → 0.00711', 'keep 0.0197', 'const, kept'; a collapsed row's stds as ≈ their mean."""
    p, kind = plans[0], _init_kind(plans[0])
    if kind in ("zeros", "const"):
        text = f"{kind}, kept"
    elif kind == "keep":
        text = "keep " + _std(q.init_std["before"] for q in plans)
    else:
        text = f"{_std(q.init_std['before'] for q in plans)} → {_std(q.init_std['after'] for q in plans)}"
    for piece in p.zero:
        stop = "" if piece["stop"] is None else piece["stop"]
        text += f", zero [{piece['start']}:{stop}] of dim {piece['dim']}"
    return text


def _std(values) -> str:
    values = list(values)
    shown = {f"{v:.3g}" for v in values}
    mean = sum(values) / len(values)
    return shown.pop() if len(shown) == 1 else f"≈{mean:.2g}"


# ---- summary -----------------------------------------------------------------------------------

def summary_lines(plan: Plan) -> list:
    return [f"Widths: base {plan.base_width}, delta {plan.delta_width}, target {plan.target_width}. "
            f"Options: {options_text(plan.options)}.",
            f"{change_sentence(plan)}. {counted(len(plan.edits), 'use-site edit')}, "
            f"{counted(len(plan.warnings), 'warning')}."] + depth_lines(plan)


def depth_lines(plan: Plan) -> list:
    """Depth transfer, in one sentence: "depth 2 -> 24 (m_L = 12), alpha = 1: 48 residual branches x 1/12"."""
    depth = plan.depth
    if not depth:
        return []
    branches = [e for e in plan.edits if e.kind == "branch_multiplier"]
    factor = depth["multiplier"] ** -depth["alpha"]
    lr = depth["multiplier"] ** (depth["alpha"] - 1)
    return [f"Depth {depth['base']} → {depth['target']} (m_L = {depth['multiplier']:g}), alpha = {depth['alpha']:g}: "
            f"{len(branches)} residual branch{'es' if len(branches) != 1 else ''} × {factor:.4g} in {counted(len(depth['blocks']), 'block')}; "
            f"Adam LR inside the blocks × {lr:.4g}; no other optimizer family has a stated depth rule."]


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def options_text(options: dict) -> str:
    names = changed_options(options)
    return ", ".join(names) if names else "defaults"


def verification_lines(verification: dict | None) -> list:
    if not verification:
        return ["Not verified (--no-verify, verify_width=False)."]
    v = verification
    if v["gradients"] is None:
        lines = [f"Verified at width {v['width']}: realized model == edited graph on the outputs (max |diff| "
                 f"{v['outputs']:.2g}); gradients not compared: the captured graph has no gradient path to the "
                 "parameters (an autograd.Function whose forward runs under no_grad, such as reversible layers)."]
    else:
        lines = [f"Verified at width {v['width']}: realized model == edited graph "
                 f"(max |diff| outputs {v['outputs']:.2g}, gradients {v['gradients']:.2g})."]
    noise = v.get("baseline") or {}  # None: not measured, the edited pair agreed to rounding
    if max(noise.values(), default=0.0) > 1e-6:
        lines.append(f"The model's own graph differs from its eager forward by {noise['outputs']:.2g} (outputs) / "
                     f"{noise.get('gradients', 0.0):.2g} (gradients) with no edit at all, so the edits were judged "
                     "against that distance.")
    return lines

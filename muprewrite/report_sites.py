"""What the report shows of the use sites, read off the plan: its edits by module path and op
(the same edit of repeated layers collapsed, with the weights it scales) and its warnings, whose
graph-node subjects are named by module and op (`full`: with the node)."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import Plan
from .report_collapse import collapse, each
from .report_view import Column, Row, Section, num


# ---- use-site edits ----------------------------------------------------------------------------

def edit_section(plan: Plan, full: bool = False) -> Section:
    columns = [Column("kind", "edit"), Column("op", "op"), Column("change", "old → new"),
               Column("realized", "realized by")] + ([Column("node", "graph node")] if full else [])
    groups = edit_groups(plan, full)
    return Section(columns, [_edit_row(g) for g in groups], [line for g in groups for line in _frozen_note(g)])


def edit_groups(plan: Plan, full: bool = False) -> list:
    """The edits by module path, the same edit of repeated layers collapsed (with its weights)."""
    module = lambda e: e.module or "(root)"  # noqa: E731
    params = lambda e: [e.param] if e.param else []  # noqa: E731
    return each(plan.edits, module, params) if full else collapse(plan.edits, module, _edit_key, params)


def _edit_key(e) -> tuple:
    frozen = (num(e.frozen_constant["base"]), num(e.frozen_constant["now"])) if e.frozen_constant else None
    return (e.kind, e.family, e.old, e.new, e.realized_by, e.apply_to, e.operand, e.occurrence, e.call, e.calls,
            frozen)


def _edit_row(group) -> Row:
    e = group.members[0]
    own = group.extras and group.extras[0].rpartition(".")[0] == group.label  # the module's own weight
    op = f"{e.family} on {group.extras[0]}" if group.extras and not own else e.family
    cells = {"kind": e.kind, "op": op, "change": f"{num(e.old)} → {num(e.new)}", "realized": e.realized_by,
             "node": e.node}
    members = [(m.module or "(root)", f"node {m.node}") for m in group.members]
    return Row(group.label, len(group.members), "", cells, members)


def _frozen_note(group) -> list:
    e = group.members[0]
    frozen = e.frozen_constant
    if not frozen:
        return []
    return [f"{group.label}: the {e.kind} also holds the model's width-dependent constant `{frozen['node']}` at "
            f"its base value {num(frozen['base'])}, not {num(frozen['now'])}"]


# ---- warnings ----------------------------------------------------------------------------------

@dataclass
class WarningView:
    code: str
    message: str
    reference: str
    subjects: list  # [Row]: label (module path or parameter), note (the op), members (name, graph node)


def warning_views(plan: Plan, full: bool = False) -> list:
    known = _node_locations(plan)
    return [WarningView(w.code, w.message, w.reference, _subject_rows(w, {**known, **w.locations}, full))
            for w in plan.warnings]


def _parameter_names(plan: Plan) -> set:
    return {n for name, p in plan.parameters.items() for n in (name, *p.aliases)}


def _node_locations(plan: Plan) -> dict:
    """Graph node -> {"module", "op"} from the plan's own records (edits, parameter uses): where a
    warning written without locations (an older plan) names nodes."""
    found = {u["node"]: {"module": u["module"], "op": u["op"]} for p in plan.parameters.values() for u in p.uses}
    found.update({e.node: {"module": e.module, "op": e.family} for e in plan.edits})
    return {node: where for node, where in found.items() if node not in _parameter_names(plan)}


def _subject_rows(warning, locations: dict, full: bool) -> list:
    located = [(s, locations.get(s)) for s in warning.subjects]
    where = lambda item: (item[1]["module"] or "(root)") if item[1] else item[0]  # noqa: E731
    op = lambda item: item[1]["op"] if item[1] else ""  # noqa: E731
    groups = each(located, where) if full else collapse(located, where, op)
    rows = []
    for g in groups:
        subject, location = g.members[0]
        note = f"({op(g.members[0])}{', node ' + subject if full and location else ''})" if location else ""
        members = [(where(m), f"node {m[0]}" if m[1] else "") for m in g.members]
        rows.append(Row(g.label, len(g.members), note, {}, members))
    return rows

"""The report: a view of the plan for people — terminal (rich), Jupyter (HTML) and Markdown."""

from __future__ import annotations

import io
from dataclasses import dataclass

from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from .plan import Plan

ROLE_STYLES = {"hidden": "cyan", "input": "green", "output": "magenta", "vector": "blue",
               "scalar": "dim", "unclassified": "red"}


@dataclass
class Report:
    plan: Plan
    code_diff: str = ""
    verification: dict | None = None  # {"width", "outputs", "gradients", "baseline"} max abs differences

    def __rich__(self) -> Group:
        parts = [self._header(), self._parameter_table()]
        if self.plan.notes:
            parts.insert(1, Text("\n".join(f"• {note}" for note in self.plan.notes)))
        if self.plan.edits:
            parts.append(self._edit_table())
        if self.plan.warnings:
            parts.append(self._warning_table())
        if self.code_diff:
            parts.append(Panel(Syntax(self.code_diff, "diff", word_wrap=True), title="graph diff (target width)"))
        return Group(*parts)

    def to_text(self, width: int = 140) -> str:
        console = Console(file=io.StringIO(), width=width, color_system=None, force_jupyter=False)
        console.print(self)
        return console.file.getvalue()

    def to_html(self) -> str:
        # force_jupyter=False: in a notebook rich would also display what it renders here (twice)
        console = Console(record=True, file=io.StringIO(), width=140, force_jupyter=False)
        console.print(self)
        return console.export_html(inline_styles=True)

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_markdown(self) -> str:
        plan = self.plan
        lines = [f"# muprewrite report: {plan.parametrization}", "", self._summary(), ""]
        lines += [f"- {note}" for note in plan.notes] + ([""] if plan.notes else [])
        lines += ["## Parameters", "", "| name | shape (∞ = infinite dim) | role | init std before → after | weight × | LR × Adam | LR × SGD | WD × Adam |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, p in plan.parameters.items():
            lines.append(f"| `{_name_with_aliases(name, p)}` | {_shape(p)} | {_role(p)} | {_init(p)} | "
                         f"{_num(p.weight_multiplier)} | {_num(p.lr_mult['adam'])} | {_num(p.lr_mult['sgd'])} | "
                         f"{_num(p.wd_mult['adam'])} |")
        if plan.edits:
            lines += ["", "## Use-site edits", "", "| edit | module | node | old → new | realized by |", "|---|---|---|---|---|"]
            for e in plan.edits:
                lines.append(f"| {_edit_label(e)} | `{e.module or '(root)'}` | `{e.node}` | {_num(e.old)} → {_num(e.new)} | {e.realized_by} |")
        if plan.warnings:
            lines += ["", "## Warnings", "", "| code | message | reference | applies to |", "|---|---|---|---|"]
            for w in plan.warnings:
                lines.append(f"| {w.code} | {w.message} | {w.reference} | {_subjects(w.subjects)} |")
        if self.code_diff:
            lines += ["", "## Graph diff (target width)", "", "```diff", self.code_diff, "```"]
        return "\n".join(lines) + "\n"

    def _summary(self) -> str:
        plan = self.plan
        changed = sum(1 for p in plan.parameters.values() if _changed(p))
        text = (f"Widths: base {plan.base_width}, delta {plan.delta_width}, target {plan.target_width}. "
                f"{len(plan.parameters)} parameters ({changed} changed), {len(plan.edits)} use-site edits, "
                f"{len(plan.warnings)} warnings. Options: {_options(plan.options)}.")
        if self.verification:
            v = self.verification
            if v["gradients"] is None:
                text += (f" Verified at width {v['width']}: realized model == edited graph on the outputs (max |diff| "
                         f"{v['outputs']:.2g}); gradients not compared: the captured graph has no gradient path to "
                         "the parameters (an autograd.Function whose forward runs under no_grad, such as reversible "
                         "layers).")
            else:
                text += (f" Verified at width {v['width']}: realized model == edited graph "
                         f"(max |diff| outputs {v['outputs']:.2g}, gradients {v['gradients']:.2g}).")
            noise = v.get("baseline", {})
            if max(noise.values(), default=0.0) > 1e-6:
                text += (f" The model's own graph differs from its eager forward by {noise['outputs']:.2g} (outputs) "
                         f"/ {noise.get('gradients', 0.0):.2g} (gradients) with no edit at all, so the edits were "
                         "judged against that distance.")
        return text

    def _header(self) -> Panel:
        return Panel(Text(self._summary()), title=f"muprewrite: {self.plan.parametrization}", expand=False)

    def _parameter_table(self) -> Table:
        table = Table(title="Parameters (∞ marks an infinite dim)", title_justify="left")
        for col in ("name", "shape", "role", "init std before → after", "weight×", "LR× Adam", "LR× SGD", "WD× Adam"):
            table.add_column(col, justify="right" if "×" in col else "left", overflow="fold")
        for name, p in self.plan.parameters.items():
            style = "" if _changed(p) else "dim"
            table.add_row(_name_with_aliases(name, p), _shape(p), Text(_role(p), style=ROLE_STYLES.get(p.role, "")),
                          _init(p), _num(p.weight_multiplier), _num(p.lr_mult["adam"]), _num(p.lr_mult["sgd"]),
                          _num(p.wd_mult["adam"]), style=style)
        return table

    def _edit_table(self) -> Table:
        table = Table(title="Use-site edits", title_justify="left")
        for col in ("edit", "module", "node", "old → new", "realized by"):
            table.add_column(col, overflow="fold")
        for e in self.plan.edits:
            table.add_row(_edit_label(e), e.module or "(root)", e.node, f"{_num(e.old)} → {_num(e.new)}", e.realized_by)
        return table

    def _warning_table(self) -> Table:
        table = Table(title="Warnings", title_justify="left")
        for col in ("code", "message", "reference", "applies to"):
            table.add_column(col, overflow="fold")
        for w in self.plan.warnings:
            table.add_row(Text(w.code, style="yellow"), w.message, w.reference, _subjects(w.subjects))
        return table


def _changed(p) -> bool:
    return (p.init_std["before"] != p.init_std["after"] or p.lr_mult["adam"] != 1.0 or p.lr_mult["sgd"] != 1.0
            or p.weight_multiplier != 1.0 or p.zero or not p.trainable)


def _role(p) -> str:
    roles = list(dict.fromkeys(u["role"] for u in p.uses))
    text = p.role if len(roles) <= 1 else f"{p.role} (tied: {' + '.join(roles)})"
    if p.fill is not None:
        return f"{text}, removed (= {p.fill:g})"
    return text if p.trainable else f"{text}, frozen"


def _init(p) -> str:
    text = f"{_num(p.init_std['before'])} → {_num(p.init_std['after'])}"
    for piece in p.zero:
        stop = "" if piece["stop"] is None else piece["stop"]
        text += f", zero [{piece['start']}:{stop}] of dim {piece['dim']}"
    return text


def _options(options: dict) -> str:
    from .passes.decide import DEFAULT_OPTIONS

    changed = [f"{k}={v}" for k, v in options.items() if DEFAULT_OPTIONS.get(k) != v]
    return ", ".join(changed) if changed else "defaults"


def _name_with_aliases(name: str, p) -> str:
    return name if not p.aliases else f"{name} (= {', '.join(p.aliases)})"


def _shape(p) -> str:
    return "[" + ", ".join(f"{s}∞" if inf else str(s) for s, inf in zip(p.shape, p.infinite)) + "]"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _subjects(subjects: list) -> str:
    shown = ", ".join(subjects[:4])
    return shown + (f" (+{len(subjects) - 4} more)" if len(subjects) > 4 else "")


def _edit_label(edit) -> str:
    frozen = edit.frozen_constant
    if not frozen:
        return edit.kind
    return (f"{edit.kind} (also holds the model's width-dependent constant `{frozen['node']}` at its base "
            f"value {_num(frozen['base'])}, not {_num(frozen['now'])})")

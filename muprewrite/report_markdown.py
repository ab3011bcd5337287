"""The report as GitHub Markdown (report.md): the same sections, rows and counts as the terminal."""

from __future__ import annotations

from .report_diff import diff_view, more_hunks
from .report_steps import next_steps
from .report_sites import edit_section, warning_views
from .report_view import SECTIONS, parameter_section, summary_lines, verification_lines


def report_markdown(report, full: bool) -> str:
    plan = report.plan
    draw = {
        "title": lambda: [f"# muprewrite report: {plan.parametrization}", ""],
        "summary": lambda: _paragraphs(summary_lines(plan)),
        "notes": lambda: [f"- {_escape(note)}" for note in plan.notes] + ([""] if plan.notes else []),
        "parameters": lambda: _parameters(plan, full),
        "edits": lambda: _edits(plan, full),
        "warnings": lambda: _warnings(plan, full),
        "diff": lambda: _diff(report, full),
        "verification": lambda: ["## Verification", "", *_paragraphs(verification_lines(report.verification))],
        "next_steps": lambda: _next_steps(report),
    }
    return "\n".join(line for name in SECTIONS for line in draw[name]()) + "\n"


def _next_steps(report) -> list:
    intro, code = next_steps(report.plan, report.origin or {})
    return ["## Next steps", "", *_paragraphs(intro), "```python", *code, "```"]


def _paragraphs(texts: list) -> list:
    return [line for text in texts for line in (_escape(text), "")]


def _escape(text: str) -> str:
    """Markdown's emphasis marks taken literally (d_model**-0.5)."""
    return text.replace("*", "\\*")


def _cell(text: str) -> str:
    return _escape(text).replace("|", "\\|")


def _name(row) -> str:
    count = f" ×{row.count}" if row.count > 1 else ""
    note = f" {_cell(row.note)}" if row.note else ""
    return f"`{row.label}`{count}{note}"


def _table(name_title: str, section) -> list:
    titles = [c.title for c in section.columns]
    align = ["---:" if c.numeric else "---" for c in section.columns]
    lines = ["| " + " | ".join([name_title, *titles]) + " |", "|" + "|".join(["---", *align]) + "|"]
    for row in section.rows:
        cells = [_name(row)] + [_cell(row.cells.get(c.key, "")) for c in section.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""] + _paragraphs(section.notes)


def _parameters(plan, full: bool) -> list:
    return ["## Parameters", ""] + _table("name", parameter_section(plan, full))


def _edits(plan, full: bool) -> list:
    if not plan.edits:
        return []
    return ["## Use-site edits", ""] + _table("module", edit_section(plan, full))


def _warnings(plan, full: bool) -> list:
    if not plan.warnings:
        return []
    lines = ["## Warnings", "", "| code | message | reference | applies to |", "|---|---|---|---|"]
    for w in warning_views(plan, full):
        subjects = ", ".join(_name(s) for s in w.subjects)
        lines.append(f"| {w.code} | {_cell(w.message)} | {_cell(w.reference)} | {subjects} |")
    return lines + [""]


def _diff(report, full: bool) -> list:
    if not report.code_diff:
        return []
    view = diff_view(report.code_diff, report.plan, full)
    shown = view.header + [line for hunk in view.hunks if hunk.shown for line in hunk.lines]
    lines = ["## Graph diff (target width)", "", "```diff", *shown, "```", ""]
    if view.hidden:
        lines += [f"… {more_hunks(view.hidden)}, each the same edit in another layer (--full, full=True: all).", ""]
    return lines

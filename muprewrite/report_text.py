"""The report for a terminal (rich `Text` lines) at any width, 80 columns included: its
sections, laid out by `report_layout` (no name or number broken; prose wraps at spaces)."""

from __future__ import annotations

import textwrap

from rich.text import Text

from .report_layout import cells_fit_one_line, code_lines, flow, python_lines, table
from .report_diff import diff_view, line_kind, more_hunks
from .report_steps import next_steps
from .report_sites import edit_section, warning_views
from .report_view import SECTIONS, parameter_section, summary_lines, verification_lines

DIFF_STYLES = {"add": "green", "del": "red", "hunk": "cyan", "file": "bold", "context": ""}
MAX_SUBJECTS = 6  # warning subjects shown before "(+N more)" unless full


def report_lines(report, width: int, full: bool) -> list:
    plan = report.plan
    draw = {
        "title": lambda: _title(plan),
        "summary": lambda: _prose(summary_lines(plan), width),
        "notes": lambda: _prose([f"• {n}" for n in plan.notes], width, "  "),
        "parameters": lambda: _parameters(plan, width, full),
        "edits": lambda: _edits(plan, width, full),
        "warnings": lambda: _warnings(plan, width, full),
        "diff": lambda: _diff(report.code_diff, plan, width, full),
        "verification": lambda: _heading("Verification") + _prose(verification_lines(report.verification), width),
        "next_steps": lambda: _next_steps(plan, report.origin, width),
    }
    lines = []
    for section in filter(None, (draw[name]() for name in SECTIONS)):
        lines += section + [Text("")]
    return lines[:-1]


def _title(plan) -> list:
    return [Text(f"muprewrite report: {plan.parametrization}", style="bold")]


def _heading(text: str) -> list:
    return [Text(text, style="bold underline")]


def _prose(paragraphs: list, width: int, indent: str = "", style: str = "") -> list:
    lines = []
    for paragraph in paragraphs:
        wrapped = textwrap.wrap(paragraph, width, subsequent_indent=indent, break_on_hyphens=False) or [""]
        lines += [Text(line, style=style) for line in wrapped]
    return lines


def _parameters(plan, width: int, full: bool) -> list:
    section = parameter_section(plan, full)
    if not full and not cells_fit_one_line(section.columns, section.rows, width, "name"):
        section = parameter_section(plan, full, derived_wd_shown=False)
    lines = _heading("Parameters") + table(section.columns, section.rows, width, "name")
    return lines + _prose(section.notes, width, "  ", style="dim")


def _edits(plan, width: int, full: bool) -> list:
    if not plan.edits:
        return []
    section = edit_section(plan, full)
    lines = _heading("Use-site edits") + table(section.columns, section.rows, width, "module")
    return lines + _prose(section.notes, width, "  ", style="dim")


def _warnings(plan, width: int, full: bool) -> list:
    if not plan.warnings:
        return []
    lines = _heading("Warnings")
    for w in warning_views(plan, full):
        message = _prose([f"{w.code} ({w.reference}): {w.message}"], width, "  ")
        message[0].stylize("yellow", 0, len(w.code))
        lines += message
        subjects = [s.heading for s in w.subjects]
        if not full and len(subjects) > MAX_SUBJECTS:
            subjects = subjects[:MAX_SUBJECTS] + [f"(+{len(subjects) - MAX_SUBJECTS} more; --full lists all)"]
        if subjects:
            lines += [Text(line, style="dim") for line in flow(subjects, width, "  applies to: ", "    ")]
    return lines


def _diff(code_diff: str, plan, width: int, full: bool) -> list:
    if not code_diff:
        return []
    view = diff_view(code_diff, plan, full)
    lines = _heading("Graph diff (target width)")
    for line in view.header + [line for hunk in view.hunks if hunk.shown for line in hunk.lines]:
        style = DIFF_STYLES[line_kind(line)]
        lines += [Text(piece, style=style) for piece in code_lines(line, width)]
    if view.hidden:
        lines += _prose([f"… {more_hunks(view.hidden)}, each the same edit in another layer (--full shows them)."],
                        width, style="dim")
    return lines


def _next_steps(plan, origin: dict, width: int) -> list:
    intro, code = next_steps(plan, origin or {})
    lines = _heading("Next steps") + _prose(intro, width)
    for line in code:
        if line.startswith("#"):
            lines += [Text(piece, style="dim") for piece in textwrap.wrap(
                line, width, initial_indent="  ", subsequent_indent="  # ", break_on_hyphens=False)]
        else:
            lines += [Text(piece, style="green") for piece in python_lines("  " + line, width)]
    return lines

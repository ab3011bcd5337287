"""The report as a self-contained web page (report.html) and, without the page around it, as
Jupyter's HTML: real tables, one section per part, collapsed rows as <details> listing their
members, the graph diff with its lines marked. Inline CSS only, every text escaped, nothing
fetched (no scripts, links or fonts)."""

from __future__ import annotations

from html import escape
from itertools import groupby

from .report_diff import diff_view, line_kind, more_hunks
from .report_steps import next_steps
from .report_sites import edit_section, warning_views
from .report_view import SECTIONS, parameter_section, summary_lines, verification_lines

STYLE = """
.muprewrite-report { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; font-size: 14px;
  line-height: 1.45; color: #1f2328; max-width: 1200px; }
.muprewrite-report h1 { font-size: 1.5em; margin: 0.4em 0; }
.muprewrite-report h2 { font-size: 1.15em; margin: 1.2em 0 0.4em; border-bottom: 1px solid #d0d7de; }
.muprewrite-report table { border-collapse: collapse; margin: 0.3em 0; }
.muprewrite-report th, .muprewrite-report td { border: 1px solid #d0d7de; padding: 2px 8px;
  text-align: left; vertical-align: top; }
.muprewrite-report th { background: #f6f8fa; }
.muprewrite-report td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muprewrite-report tr.unchanged td { color: #8c959f; }
.muprewrite-report code, .muprewrite-report pre { font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 0.92em; }
.muprewrite-report pre { background: #f6f8fa; padding: 8px; overflow-x: auto; }
.muprewrite-report summary { cursor: pointer; }
.muprewrite-report .legend { color: #57606a; font-size: 0.92em; }
.muprewrite-report .role-hidden { color: #0969da; } .muprewrite-report .role-input { color: #1a7f37; }
.muprewrite-report .role-output { color: #8250df; } .muprewrite-report .role-vector { color: #0550ae; }
.muprewrite-report .role-unclassified { color: #cf222e; }
.muprewrite-report .warning-code { color: #9a6700; font-weight: 600; }
.muprewrite-report .diff span { display: inline-block; min-width: 100%; }
.muprewrite-report .diff .add { background: #dafbe1; }
.muprewrite-report .diff .del { background: #ffebe9; }
.muprewrite-report .diff .hunk { color: #0969da; }
.muprewrite-report .diff .file { font-weight: 600; }
"""


def report_page(report, full: bool) -> str:
    title = escape(f"muprewrite report: {report.plan.parametrization}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n</head>\n'
            f"<body>\n{report_fragment(report, full)}</body>\n</html>\n")


def report_fragment(report, full: bool) -> str:
    """The page's body: what Jupyter shows."""
    plan = report.plan
    draw = {
        "title": lambda: f"<style>{STYLE}</style>\n<h1>{escape(f'muprewrite report: {plan.parametrization}')}</h1>",
        "summary": lambda: _section("summary", "Summary", _paragraphs(summary_lines(plan))),
        "notes": lambda: _notes(plan),
        "parameters": lambda: _parameters(plan, full),
        "edits": lambda: _edits(plan, full),
        "warnings": lambda: _warnings(plan, full),
        "diff": lambda: _diff(report, full),
        "verification": lambda: _section("verification", "Verification",
                                         _paragraphs(verification_lines(report.verification))),
        "next_steps": lambda: _next_steps(report),
    }
    parts = [draw[name]() for name in SECTIONS]
    return '<div class="muprewrite-report">\n' + "\n".join(p for p in parts if p) + "\n</div>\n"


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}" class="{key}">\n<h2>{escape(title)}</h2>\n{body}\n</section>'


def _paragraphs(texts: list, css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return "\n".join(f"<p{attribute}>{escape(text)}</p>" for text in texts)


def _notes(plan) -> str:
    if not plan.notes:
        return ""
    return _section("notes", "Notes", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in plan.notes) + "</ul>")


def _header(columns: list, name_title: str) -> str:
    """Two header rows where columns form groups (LR× over its families), else one."""
    if not any(c.group for c in columns):
        return "<tr>" + "".join(f"<th>{escape(t)}</th>" for t in [name_title, *(c.label for c in columns)]) + "</tr>"
    top, sub = [f'<th rowspan="2">{escape(name_title)}</th>'], []
    for group, members in groupby(columns, key=lambda c: c.group):
        members = list(members)
        if group:
            top.append(f'<th colspan="{len(members)}">{escape(group)}</th>')
            sub += [f"<th>{escape(c.label)}</th>" for c in members]
        else:
            top += [f'<th rowspan="2">{escape(c.label)}</th>' for c in members]
    return "<tr>" + "".join(top) + "</tr>\n<tr>" + "".join(sub) + "</tr>"


def _name_cell(row) -> str:
    name = f"<code>{escape(row.label)}</code>"
    note = f" {escape(row.note)}" if row.note else ""
    if row.count <= 1:
        return name + note
    members = "".join(f"<li><code>{escape(member)}</code>{' ' + escape(detail) if detail else ''}</li>"
                      for member, detail in row.members)
    return f"<details><summary>{name} ×{row.count}{note}</summary><ul>{members}</ul></details>"


def _cell(column, row) -> str:
    text = escape(row.cells.get(column.key, ""))
    if column.key == "role":
        return f'<td class="role-{escape(row.role)}">{text}</td>'
    return f'<td class="num">{text}</td>' if column.numeric else f"<td>{text}</td>"


def _table(section, name_title: str) -> str:
    rows = []
    for row in section.rows:
        css = "" if row.changed else ' class="unchanged"'
        cells = "".join(_cell(c, row) for c in section.columns)
        rows.append(f"<tr{css}><td>{_name_cell(row)}</td>{cells}</tr>")
    table = (f"<table>\n<thead>\n{_header(section.columns, name_title)}\n</thead>\n<tbody>\n" + "\n".join(rows)
             + "\n</tbody>\n</table>")
    return table + ("\n" + _paragraphs(section.notes, "legend") if section.notes else "")


def _parameters(plan, full: bool) -> str:
    return _section("parameters", "Parameters", _table(parameter_section(plan, full), "name"))


def _edits(plan, full: bool) -> str:
    if not plan.edits:
        return ""
    return _section("edits", "Use-site edits", _table(edit_section(plan, full), "module"))


def _warnings(plan, full: bool) -> str:
    if not plan.warnings:
        return ""
    rows = []
    for w in warning_views(plan, full):
        subjects = ", ".join(_name_cell(s) for s in w.subjects)
        rows.append(f'<tr><td class="warning-code">{escape(w.code)}</td><td>{escape(w.message)}</td>'
                    f"<td>{escape(w.reference)}</td><td>{subjects}</td></tr>")
    head = "<tr><th>code</th><th>message</th><th>reference</th><th>applies to</th></tr>"
    body = f"<table>\n<thead>\n{head}\n</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"
    return _section("warnings", "Warnings", body)


def _diff_lines(lines: list) -> str:
    return "\n".join(f'<span class="{line_kind(line)}">{escape(line) or " "}</span>' for line in lines)


def _diff(report, full: bool) -> str:
    if not report.code_diff:
        return ""
    view = diff_view(report.code_diff, report.plan, full)
    shown = view.header + [line for hunk in view.hunks if hunk.shown for line in hunk.lines]
    body = f'<pre class="diff">{_diff_lines(shown)}</pre>'
    if view.hidden:
        hidden = [line for hunk in view.hunks if not hunk.shown for line in hunk.lines]
        body += (f"\n<details><summary>{more_hunks(view.hidden)}, each the same edit in another layer</summary>"
                 f'<pre class="diff">{_diff_lines(hidden)}</pre></details>')
    return _section("graph-diff", "Graph diff (target width)", body)


def _next_steps(report) -> str:
    intro, code = next_steps(report.plan, report.origin or {})
    body = _paragraphs(intro) + "\n<pre><code>" + escape("\n".join(code)) + "</code></pre>"
    return _section("next-steps", "Next steps", body)

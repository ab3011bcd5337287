"""The report's graph diff in hunks, each tied to the plan's edits whose nodes it changes: where
edits collapse into one row (the same edit in every layer), only the first of their hunks is
shown, the others are counted (`full` shows every hunk)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .report_sites import edit_groups

_ASSIGNED = re.compile(r"^[+-]\s*(\w+) = ")


@dataclass
class Hunk:
    lines: list
    shown: bool = True


@dataclass
class DiffView:
    header: list  # the '---' / '+++' lines
    hunks: list  # [Hunk]

    @property
    def hidden(self) -> int:
        return sum(not h.shown for h in self.hunks)


def diff_view(code_diff: str, plan, full: bool = False) -> DiffView:
    lines = code_diff.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("@@")), len(lines))
    hunks = [Hunk(chunk) for chunk in _split_hunks(lines[start:])]
    if not full:
        _hide_repeats(hunks, plan)
    return DiffView(lines[:start], hunks)


def more_hunks(count: int) -> str:
    return f"{count} more hunk" + ("s" if count != 1 else "")


def line_kind(line: str) -> str:
    """'hunk', 'add', 'del' or 'context': what a diff line is (for colours and classes)."""
    if line.startswith("@@"):
        return "hunk"
    if line.startswith(("+++", "---")):
        return "file"
    return {"+": "add", "-": "del"}.get(line[:1], "context")


def _split_hunks(lines: list) -> list:
    hunks = []
    for line in lines:
        if line.startswith("@@") or not hunks:
            hunks.append([])
        hunks[-1].append(line)
    return hunks


def _hide_repeats(hunks: list, plan) -> None:
    """A hunk whose edits all belong to collapsed rows already shown is hidden."""
    row_of = {}
    for index, group in enumerate(edit_groups(plan)):
        row_of.update({e.node: index for e in group.members})
    seen = set()
    for hunk in hunks:
        rows = {row_of[m.group(1)] for line in hunk.lines if (m := _ASSIGNED.match(line)) and m.group(1) in row_of}
        if rows and rows <= seen:
            hunk.shown = False
        seen |= rows

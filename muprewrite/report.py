"""The report: a view of the plan for people — terminal (rich), Jupyter and report.html (HTML),
report.md (Markdown). What it shows is in `report_view`; each form is drawn by its own module.

Repeated layers are collapsed into one row per distinct layer (`blocks.{0..11}.attn.c_attn.weight
×12`); `full=True` (the command line's --full) shows every row, and the graph nodes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace

from rich.console import Console

from .plan import Plan
from .report_html import report_fragment, report_page
from .report_markdown import report_markdown
from .report_text import report_lines


@dataclass
class Report:
    plan: Plan
    code_diff: str = ""
    verification: dict | None = None  # {"width", "outputs", "gradients", "baseline"} max abs differences
    full: bool = False  # every row, uncollapsed, with graph node names
    origin: dict = field(default_factory=dict)  # where the run came from, for the next steps (report_steps)

    def __rich_console__(self, console, options):
        yield from report_lines(self, options.max_width, self.full)

    def expanded(self, full: bool = True) -> "Report":
        return replace(self, full=full)

    def to_text(self, width: int = 140, full: bool | None = None) -> str:
        # force_jupyter=False: in a notebook rich would also display what it renders here
        console = Console(file=io.StringIO(), width=width, color_system=None, force_jupyter=False)
        console.print(self if full is None else self.expanded(full))
        return console.file.getvalue()

    def to_markdown(self, full: bool | None = None) -> str:
        return report_markdown(self, self.full if full is None else full)

    def to_html(self, full: bool | None = None) -> str:
        """A whole web page (report.html)."""
        return report_page(self, self.full if full is None else full)

    def _repr_html_(self) -> str:
        return report_fragment(self, self.full)

    def __repr__(self) -> str:
        plan = self.plan
        return (f"Report({plan.parametrization}, {len(plan.parameters)} parameters, {len(plan.edits)} edits, "
                f"{len(plan.warnings)} warnings)")

"""The coordinate check's result: per-node traces, slopes, the verdict, and its views
(rich table, JSON, PNG plot). `muprewrite.coordcheck` produces it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .errors import MuRewriteError

SIDES = ("sp", "mup")


@dataclass
class NodeTrace:
    """mean |x| of one graph node on one side: sizes[step][i] at widths[i] (None: node absent)."""

    name: str
    op: str
    module: str
    module_type: str
    sizes: list  # [step][width index] -> float | None
    slopes: list = field(default_factory=list)  # [step] -> float | None (None: no slope)
    nonfinite: list = field(default_factory=list)  # [step] -> True when some size is NaN or inf
    judged: bool = True  # False: only ever multiplied or divided by a constant next; its user is judged
    seed_sizes: list = field(default_factory=list)  # [seed][step][width index]: mean |x| per initialisation

    @property
    def label(self) -> str:
        return f"{self.module or '(root)'}:{self.name}"

    def worst(self, from_step: int = 1) -> tuple:
        """(slope, step) of the largest slope at steps >= from_step; inf when training diverged."""
        candidates = [(math.inf if self.nonfinite[t] else s, t) for t, s in enumerate(self.slopes)
                      if t >= from_step and (s is not None or self.nonfinite[t])]
        return max(candidates, default=(None, None), key=lambda c: c[0])


@dataclass
class CoordCheckResult:
    """The sizes, slopes and verdict of a coordinate check; `.table()`, `.to_json()`, `.plot(path)`."""

    widths: list
    base_width: int
    steps: int
    optimizer: str
    lr: float
    threshold: float
    parametrization: str
    loss: str
    device: str
    traces: dict  # side -> {node name -> NodeTrace}
    losses: dict  # side -> [step][width index] -> float
    model: str = ""
    seeds: list = field(default_factory=lambda: [0])

    # ---- the verdict --------------------------------------------------------------------------
    def statistic(self, trace: NodeTrace) -> tuple:
        """(slope, standard error) the verdict judges a node by: one slope of log mean|x| against
        log width pooled over steps 1..steps and every seed (`pooled_slope`); (inf, 0) when
        training diverged at some width."""
        if any(trace.nonfinite[1:]):
            return math.inf, 0.0
        return pooled_slope(self.widths, trace.seed_sizes, range(1, self.steps + 1))

    def failures(self, side: str = "mup") -> list:
        """[(trace, step, slope)] of the nodes whose pooled slope exceeds the threshold, worst first;
        `step` is the step at which the node's own slope is largest (where to look)."""
        return [row for row in self.worst(side, None) if row[2] > self.threshold]

    @property
    def failing(self) -> list:
        return self.failures("mup")

    @property
    def passed(self) -> bool:
        return not self.failing

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def worst(self, side: str, n: int | None = 10) -> list:
        """The n judged nodes of `side` with the largest pooled slope, as (trace, step, slope)."""
        rows = []
        for trace in self.traces.get(side, {}).values():
            slope = self.statistic(trace)[0] if trace.judged else None
            if slope is not None:
                rows.append((trace, trace.worst()[1], slope))
        return sorted(rows, key=lambda r: -r[2])[:n]

    def ci95(self, trace: NodeTrace) -> float:
        """Half-width of the 95% interval of a node's pooled slope."""
        return 1.96 * self.statistic(trace)[1]

    def summary(self) -> str:
        """One line: the verdict, the worst node with its slope ± 95% interval, its step and module."""
        rows = self.worst("mup", 1)
        if not rows:
            return f"coordinate check: {self.verdict} (no judged node)"
        trace, step, slope = rows[0]
        value = "diverged" if math.isinf(slope) else f"{slope:+.3f} ± {self.ci95(trace):.3f}"
        where = f"{trace.name} in {trace.module or '(root)'}" + (f" ({trace.module_type})" if trace.module_type else "")
        return (f"coordinate check: {self.verdict} — worst node {where}: slope {value} (pooled over steps 1-"
                f"{self.steps} and {len(self.seeds)} seed(s); threshold {self.threshold:g}); its largest growth at "
                f"step {step}")

    # ---- views --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def number(x):
            return x if x is None or math.isfinite(x) else None

        def failure_record(trace, step, slope):
            return {"node": trace.name, "module": trace.module, "module_type": trace.module_type,
                    "op": trace.op, "step": step, "slope": number(slope), "ci95": number(self.ci95(trace)),
                    "nonfinite": not math.isfinite(slope)}

        return {
            "model": self.model, "parametrization": self.parametrization, "base_width": self.base_width,
            "widths": self.widths, "steps": self.steps, "optimizer": self.optimizer, "lr": self.lr,
            "threshold": self.threshold, "loss": self.loss, "device": self.device, "seeds": self.seeds,
            "verdict": self.verdict, "passed": self.passed, "summary": self.summary(),
            "statistic": "slope of log mean|x| vs log width, pooled over steps 1..steps and seeds",
            "failing": [failure_record(*row) for row in self.failing],
            "sides": {
                side: {
                    "losses": [[number(x) for x in row] for row in self.losses[side]],
                    "failing": [failure_record(*row) for row in self.failures(side)],
                    "nodes": {
                        name: {"op": t.op, "module": t.module, "module_type": t.module_type,
                               "sizes": [[number(x) for x in row] for row in t.sizes],
                               "slopes": [number(s) for s in t.slopes], "nonfinite": t.nonfinite,
                               "judged": t.judged}
                        for name, t in traces.items()
                    },
                }
                for side, traces in self.traces.items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self, n: int = 10):
        """A rich renderable: the verdict, the worst nodes of the rewritten side and of SP."""
        verdict = Text(self.summary(), style="bold green" if self.passed else "bold red")
        detail = (f"{self.model + ': ' if self.model else ''}{self.parametrization} vs sp, widths "
                  f"{', '.join(map(str, self.widths))} (base {self.base_width}), {self.steps} steps of "
                  f"{self.optimizer} at lr {self.lr:g}, loss: {self.loss}, on {self.device}. PASS = no "
                  f"activation of the {self.parametrization} model grows with width after step 1: the "
                  f"slope of log mean|x| vs log width, pooled over steps 1-{self.steps} and the seeds, is <= "
                  f"{self.threshold:g} for every node.")
        parts = [verdict, Text(detail, style="dim")]
        if not self.passed:
            names = ", ".join(f"{t.label} ({_fmt(s)}, largest at step {step})" for t, step, s in self.failing[:5])
            more = f" and {len(self.failing) - 5} more" if len(self.failing) > 5 else ""
            parts.append(Text(f"growing with width: {names}{more}", style="red"))
        for side in ("mup", "sp"):
            if side in self.traces:
                parts.append(self._side_table(side, n))
        return Group(*parts)

    def __rich__(self):
        return self.table()

    def _side_table(self, side: str, n: int) -> Table:
        title = (f"{self.parametrization} (rewritten graph)" if side == "mup" else "sp (the model as built)")
        failing = len(self.failures(side))
        judged = sum(t.judged for t in self.traces[side].values())
        table = Table(title=f"{title}: {failing} of {judged} nodes grow; worst {n}",
                      caption=f"slope of log mean|x| vs log width at step t (t=0: init); growth: mean|x| "
                      f"at width {self.widths[-1]} / at {self.widths[0]}, step {self.steps}",
                      title_justify="left", caption_justify="left")
        table.add_column("module", overflow="fold")
        table.add_column("node", overflow="fold")
        for step in range(self.steps + 1):
            table.add_column(f"t={step}", justify="right")
        table.add_column("pooled ± 95%", justify="right")
        table.add_column("growth", justify="right")
        for trace, _, worst in self.worst(side, n):
            style = "red" if worst > self.threshold else None
            pooled = "diverged" if math.isinf(worst) else f"{worst:+.2f} ± {self.ci95(trace):.2f}"
            last = [x for x in trace.sizes[-1] if x is not None]
            growth = (f"×{last[-1] / last[0]:.3g}" if len(last) >= 2 and last[0] > 0 and math.isfinite(last[-1] / last[0])
                      else "-")
            node = f"{trace.name} (edit)" if "muprewrite edit" in trace.op else trace.name
            table.add_row(trace.module or "(root)", node,
                          *(_fmt(s, trace.nonfinite[t]) for t, s in enumerate(trace.slopes)), pooled, growth,
                          style=style)
        return table

    def plot(self, path, n_labels: int = 4) -> None:
        """A PNG: one column per step, SP on top, the rewritten side below; log-log mean|x| vs width."""
        try:
            from matplotlib.figure import Figure  # optional dependency (the `plots` extra); no pyplot state
        except ImportError as exc:
            raise MuRewriteError("the coordinate check plot needs matplotlib: pip install 'muprewrite[plots]'") from exc

        sides = [s for s in ("sp", "mup") if s in self.traces]
        cols = self.steps + 1
        figure = Figure(figsize=(3.2 * cols, 3.0 * len(sides) + 0.8), layout="constrained")
        axes = figure.subplots(len(sides), cols, squeeze=False, sharex=True)
        for row, side in enumerate(sides):
            failing = {t.name for t, _, _ in self.failures(side)}
            for step in range(cols):
                ax = axes[row][step]
                worst = sorted(self.traces[side].values(), key=lambda t: -(_finite(t.slopes[step])))
                labelled = [t.name for t in worst if t.name in failing][:n_labels]
                for trace in self.traces[side].values():
                    points = [(w, s) for w, s in zip(self.widths, trace.sizes[step])
                              if s is not None and math.isfinite(s) and s > 0]
                    if len(points) < 2:
                        continue
                    xs, ys = zip(*points)
                    if trace.name in failing and step >= 1:
                        ax.plot(xs, ys, color="tab:red", lw=1.4, alpha=0.9, zorder=3,
                                label=trace.label if trace.name in labelled else None)
                    else:  # dashed: rewrite-inserted scalings and tensors only scaled by a constant next
                        dashed = not trace.judged or "muprewrite edit" in trace.op
                        ax.plot(xs, ys, color="tab:blue" if side == "mup" else "tab:gray", lw=0.6, alpha=0.45,
                                ls="--" if dashed else "-")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(self.widths, [str(w) for w in self.widths])
                ax.tick_params(which="both", labelsize=7)
                name = self.parametrization if side == "mup" else "sp"
                growing = f", {len(failing)} node(s) grow" if failing and step >= 1 else ""
                ax.set_title(f"{name}, step {step}{growing}", fontsize=9, color="tab:red" if growing else "black")
                if step == 0:
                    ax.set_ylabel("mean |x|", fontsize=8)
                if row == len(sides) - 1:
                    ax.set_xlabel("width", fontsize=8)
                if labelled and step >= 1:
                    ax.legend(fontsize=6, loc="upper left")
        figure.suptitle(f"coordinate check {self.model}: {self.parametrization} {self.verdict} "
                        f"(threshold slope {self.threshold:g}; {self.optimizer} lr {self.lr:g}; red: grows with width; "
                        f"dashed: inserted or pre-scaling nodes)",
                        fontsize=11, color="tab:green" if self.passed else "tab:red")
        figure.savefig(path, format="png", dpi=110)

    def save(self, out_dir) -> list:
        """Write coordcheck.json and coordcheck.png into `out_dir`."""
        from pathlib import Path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "coordcheck.json").write_text(self.to_json())
        self.plot(out / "coordcheck.png")
        return [out / "coordcheck.json", out / "coordcheck.png"]


# ---- the slope fit and the verdict on plain numbers ------------------------------------------

def fit_slope(widths, sizes) -> float | None:
    """Least-squares slope of log(size) against log(width) over the points with a finite log.

    Sizes that are zero, negative, None, NaN or inf are skipped; fewer than two usable points
    (or all at one width) give None.
    """
    points = [(math.log(w), math.log(s)) for w, s in zip(widths, sizes)
              if s is not None and s > 0 and math.isfinite(s)]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def pooled_slope(widths, seed_sizes, steps) -> tuple:
    """(slope, standard error) of log(size) against log(width) pooled over seeds and `steps`: one
    common slope with an intercept per (seed, step), fitted by least squares. The standard error is
    the residuals' (how far the points are from one power law); (None, None) without two usable
    points in some (seed, step), (slope, inf) when nothing is left to estimate the error with."""
    sxy = sxx = 0.0
    groups = []
    for rows in seed_sizes:
        for t in steps:
            points = [(math.log(w), math.log(s)) for w, s in zip(widths, rows[t])
                      if s is not None and s > 0 and math.isfinite(s)]
            if len(points) < 2:
                continue
            mx, my = (sum(p[i] for p in points) / len(points) for i in (0, 1))
            centred = [(x - mx, y - my) for x, y in points]
            sxx += sum(x * x for x, _ in centred)
            sxy += sum(x * y for x, y in centred)
            groups.append(centred)
    if not groups or sxx == 0:
        return None, None
    slope = sxy / sxx
    residual = sum((y - slope * x) ** 2 for centred in groups for x, y in centred)
    dof = sum(len(c) for c in groups) - len(groups) - 1
    return slope, (math.sqrt(residual / dof / sxx) if dof > 0 else math.inf)


def _nonfinite(sizes) -> bool:
    return any(s is not None and not math.isfinite(s) for s in sizes)


def make_trace(name, widths, sizes, op="", module="", module_type="", judged=True, seed_sizes=None) -> NodeTrace:
    """A NodeTrace with its slopes fitted: sizes[step][width index]."""
    return NodeTrace(name=name, op=op, module=module, module_type=module_type, sizes=sizes,
                     slopes=[fit_slope(widths, row) for row in sizes],
                     nonfinite=[_nonfinite(row) for row in sizes], judged=judged,
                     seed_sizes=seed_sizes if seed_sizes is not None else [sizes])


def _finite(x) -> float:
    return x if x is not None and math.isfinite(x) else -math.inf


def _fmt(slope, nonfinite: bool = False) -> str:
    if nonfinite:
        return "diverged"
    if slope is None:
        return "-"
    return "inf" if math.isinf(slope) else f"{slope:+.2f}"

"""The coordinate check across depth (depth transfer): at one width, the residual stream at the end
of the blocks, and how far a few steps of training move it, must not grow with depth.

For each depth L the model `make_model(width, depth=L)` is trained for a few Adam steps on one
fixed batch (the width check's loss and protocol: `coordcheck.default_loss`, reseeded dropout), on
two sides:

* **depth** — the plan `mupify(..., depth_base=depths[0], depth_target=L)` makes (CompleteP with
  the default `depth_alpha`), its init and its optimizer groups;
* **mup** — the model as written at depth L, planned for width only (at the base width: the model
  itself with one LR), for contrast (`compare=False` skips it).

At every step the output of the last block that repeats with depth is recorded (a forward hook:
the stream after the last residual add of the blocks); mean |h(t)| ("stream", steps 0..steps) and
mean |h(t) - h(0)| ("update", steps 1..steps), averaged over the seeds' runs. Their slopes against
log(depth), pooled over steps and seeds as the width check pools them
(`coordcheck_result.pooled_slope`), say how they scale; the check PASSES when, on the depth side,
both are at most `threshold`. Under plain muP the update of a deep pre-LN model grows with the
number of blocks it sums.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn
from torch.utils import _pytree as pytree

from .coordcheck import ADAM_EPS, DEFAULT_LR, DEFAULT_SEEDS, DEFAULT_STEPS, DEFAULT_THRESHOLD, default_loss
from .coordcheck_result import pooled_slope
from .errors import MuRewriteError

DEFAULT_DEPTHS = (2, 4, 8, 16)
METRICS = {"stream": "mean |h(t)|", "update": "mean |h(t) - h(0)|"}
SIDES = ("depth", "mup")


@dataclass
class DepthCheckResult:
    width: int
    depths: list
    steps: int
    lr: float
    threshold: float
    alpha: float
    seeds: list
    sizes: dict = field(default_factory=dict)  # side -> metric -> [seed][step][depth index]
    block: str = ""  # the last repeating block at the deepest depth, whose output is recorded

    def slope(self, side: str, metric: str) -> tuple:
        steps = range(1, self.steps + 1) if metric == "update" else range(0, self.steps + 1)
        return pooled_slope(self.depths, self.sizes[side][metric], steps)

    @property
    def passed(self) -> bool:
        return all((s := self.slope("depth", metric)[0]) is not None and s <= self.threshold for metric in METRICS)

    def verdict(self) -> str:
        slopes = {metric: self.slope("depth", metric)[0] for metric in METRICS}
        words = ", ".join(f"{metric} {_signed(s)}" for metric, s in slopes.items())
        head = ("PASS: the residual stream and its update stay flat with depth" if self.passed else
                "FAIL: the residual stream or its update grows with depth")
        contrast = ""
        if "mup" in self.sizes:
            contrast = f"; muP alone: update {_signed(self.slope('mup', 'update')[0])}"
        return (f"{head} (slopes against log depth, depths {self.depths[0]}..{self.depths[-1]}, alpha = "
                f"{self.alpha:g}: {words}; threshold {self.threshold:g}{contrast})")

    def table(self) -> Table:
        table = Table(title=f"depth check at width {self.width}: the output of {self.block}")
        table.add_column("side")
        table.add_column("metric")
        for depth in self.depths:
            table.add_column(f"depth {depth}", justify="right")
        table.add_column("slope", justify="right")
        for side, metrics in self.sizes.items():
            for metric, rows in metrics.items():
                last = [_mean(run[self.steps][i] for run in rows) for i in range(len(self.depths))]
                table.add_row(side, f"{METRICS[metric]} at t={self.steps}", *(f"{v:.3g}" for v in last),
                              _signed(self.slope(side, metric)[0]))
        return table

    def __rich__(self):
        return self.table()

    def to_dict(self) -> dict:
        return {"width": self.width, "depths": self.depths, "steps": self.steps, "lr": self.lr, "alpha": self.alpha,
                "threshold": self.threshold, "seeds": self.seeds, "block": self.block, "passed": self.passed,
                "verdict": self.verdict(), "sizes": self.sizes,
                "slopes": {side: {m: self.slope(side, m)[0] for m in METRICS} for side in self.sizes}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, out_dir) -> list:
        """coordcheck_depth.json and coordcheck_depth.png in `out_dir`, each written whole."""
        from .passes.emit import check_out_dir, write_atomically

        out = check_out_dir(out_dir, ("coordcheck_depth.json", "coordcheck_depth.png"))
        text = self.to_json().encode("utf-8")
        paths = [write_atomically(out / "coordcheck_depth.json", lambda f: f.write(text))]
        with tempfile.TemporaryDirectory() as scratch:
            self.plot(Path(scratch) / "plot.png")
            image = (Path(scratch) / "plot.png").read_bytes()
        paths.append(write_atomically(out / "coordcheck_depth.png", lambda f: f.write(image)))
        return paths

    def plot(self, path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(METRICS), figsize=(10, 4))
        for ax, metric in zip(axes, METRICS):
            for side, metrics in self.sizes.items():
                for t in range(1 if metric == "update" else 0, self.steps + 1):
                    values = [_mean(run[t][i] for run in metrics[metric]) for i in range(len(self.depths))]
                    ax.plot(self.depths, values, "o-" if side == "depth" else "s--", alpha=0.4 + 0.6 * t / self.steps,
                            color="tab:blue" if side == "depth" else "tab:red", label=f"{side}, t={t}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("depth")
            ax.set_title(METRICS[metric])
        axes[0].legend(fontsize=7)
        fig.suptitle(self.verdict()[:110], fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def coordcheck_depth(factory, *, width: int, depths=DEFAULT_DEPTHS, example_inputs=None, steps: int = DEFAULT_STEPS,
                     lr: float | None = None, seeds: int = DEFAULT_SEEDS, seed: int = 0,
                     threshold: float = DEFAULT_THRESHOLD, options: dict | None = None, compare: bool = True,
                     loss_fn=None, progress: bool = False) -> DepthCheckResult:
    """The depth check of `factory(width, depth=L) -> nn.Module` at `width` (see the module's docstring)."""
    from .api import apply_plan, mupify
    from .passes.capture import build_model, inputs_at
    from .passes.depth import AtDepth
    from .passes.emit import build_optimizer
    from .pipeline import guess_inputs

    depths = sorted(depths)
    if len(depths) < 3 or depths[0] < 1:
        raise MuRewriteError(f"the depth check needs at least three positive depths, got {depths}")
    lr = DEFAULT_LR["adam"] if lr is None else float(lr)
    inputs = example_inputs if example_inputs is not None else guess_inputs(AtDepth(factory, depths[0]), width)
    sides = SIDES if compare else SIDES[:1]
    seed_list = [seed + k for k in range(seeds)]
    sizes = {side: {m: [[[None] * len(depths) for _ in range(steps + 1)] for _ in seed_list] for m in METRICS}
             for side in sides}
    alpha, block = None, ""
    bar = Progress(TextColumn("depth check {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True, disable=not progress)
    with bar, torch.random.fork_rng(devices=[]):
        task = bar.add_task("", total=len(depths) * len(sides) * seeds)
        for i, depth in enumerate(depths):
            deep = mupify(factory, base=width, target=width, depth_base=depths[0], depth_target=depth,
                          example_inputs=inputs, options=options, materialize=False, verify_width=False).plan
            alpha, block = deep.depth["alpha"], _last_block(factory, width, depth, deep.depth["blocks"])
            plans = {"depth": deep}
            if "mup" in sides:
                plans["mup"] = mupify(AtDepth(factory, depth), base=width, target=width, example_inputs=inputs,
                                      materialize=False, verify_width=False).plan
            for side in sides:
                for k, run_seed in enumerate(seed_list):
                    bar.update(task, description=f"depth {depth}: {side}, seed {run_seed}")
                    torch.manual_seed(run_seed)
                    model = apply_plan(build_model(AtDepth(factory, depth), width), plans[side], reinit=True, inplace=True)
                    opt = build_optimizer(model, plans[side], "adam", lr=lr, eps=ADAM_EPS)
                    outputs = _train_and_watch(model, model.get_submodule(block), inputs_at(inputs, width), opt, steps,
                                               run_seed, loss_fn)
                    for metric, values in outputs.items():
                        for t, value in enumerate(values):
                            sizes[side][metric][k][t][i] = value
                    bar.advance(task)
    return DepthCheckResult(width, depths, steps, lr, threshold, alpha, seed_list, sizes, block)


def _last_block(factory, width: int, depth: int, blocks: list) -> str:
    """The repeating block that runs last: the last of them in the model's own module order."""
    from .passes.capture import build_model
    from .passes.depth import AtDepth

    order = {name: i for i, (name, _) in enumerate(build_model(AtDepth(factory, depth), width, "meta").named_modules())}
    return max(blocks, key=lambda name: order.get(name, -1))


def _train_and_watch(model: nn.Module, block: nn.Module, inputs, opt, steps: int, seed: int, loss_fn) -> dict:
    seen = []
    hook = block.register_forward_hook(lambda module, args, out: seen.append(_first_tensor(out).detach().clone()))
    model.train()
    stream, update = [], [None]
    try:
        for t in range(steps + 1):
            torch.manual_seed(seed)  # the same dropout masks at every step
            seen.clear()
            with torch.enable_grad():
                out = model(**inputs) if isinstance(inputs, dict) else model(*inputs) if isinstance(inputs, tuple) \
                    else model(inputs)
                loss = loss_fn(out, inputs) if loss_fn is not None else default_loss(out, inputs, seed)[0]
            h = seen[-1]
            stream.append(float(h.abs().float().mean()))
            if t == 0:
                first = h
            else:
                update.append(float((h - first).abs().float().mean()))
            if t == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        hook.remove()
    return {"stream": stream, "update": update}


def _first_tensor(out) -> torch.Tensor:
    found = next((x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor) and x.is_floating_point()), None)
    if found is None:
        raise MuRewriteError("the last repeating block returns no floating-point tensor to watch")
    return found


def _mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def _signed(slope) -> str:
    return "—" if slope is None else f"{slope:+.3f}"

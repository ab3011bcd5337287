"""The Python API: the whole pipeline as one call, and a plan applied to a model you already have."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import pipeline
from .errors import MuRewriteError
from .optimizers import family
from .passes.capture import build_model, inputs_at
from .passes.depth import AtDepth
from .passes.emit import build_optimizer, param_groups, write_artifacts
from .passes.fold import compare_outputs, describe
from .passes.fold import fold as fold_edits
from .passes.fold import unfold
from .passes.realize import REALIZED_FLAG, realize
from .plan import Plan
from .report import Report
from .rules import PARAMETRIZATIONS
from .widths import Widths, check_depths


@dataclass
class Result:
    """What `mupify` returns: the rewritten model (your own class), its plan, and the report."""

    model: nn.Module | None
    plan: Plan
    report: Report

    def param_groups(self, lr: float, weight_decay: float = 0.0, optimizer: str = "adamw",
                     eps: float | None = None):
        """Parameter groups for `torch.optim` with the plan's per-tensor LR, weight decay (and eps);
        optimizer="muon" gives {"muon": groups, "adamw": groups}."""
        return param_groups(self._model(), self.plan, lr, weight_decay, optimizer, eps)

    def optimizer(self, optimizer: str, lr: float, weight_decay: float = 0.0, eps: float | None = None, **settings):
        """The optimizer itself (adamw, sgd, lion, adafactor, or muon: Muon and AdamW as one)."""
        return build_optimizer(self._model(), self.plan, optimizer, lr, weight_decay, eps, **settings)

    def _model(self) -> nn.Module:
        if self.model is None:
            raise MuRewriteError("this result has no model (materialize=False); use muprewrite.param_groups(model, plan, ...)")
        return self.model

    def save(self, out_dir) -> list:
        """Write plan.json, report.md and report.html into `out_dir`."""
        return write_artifacts(self.plan, self.report, out_dir)

    def __rich__(self):
        return self.report

    def __repr__(self) -> str:
        plan = self.plan
        model = type(self.model).__name__ if self.model is not None else "none (materialize=False)"
        return (f"Result({plan.parametrization}, widths {plan.base_width}/{plan.delta_width}/{plan.target_width}, "
                f"{len(plan.parameters)} parameters, {len(plan.edits)} edits, {len(plan.warnings)} warnings; "
                f"model: {model})")

    def _repr_html_(self) -> str:
        return self.report._repr_html_()


def mupify(factory, *, base: int, target: int, delta: int | None = None, example_inputs=None,
           parametrization: str = "mup", options: dict | None = None, verify_width: bool = True,
           materialize: bool = True, progress: bool = False, optimizers=("adam", "sgd"),
           share_blocks: bool = True, depth_base: int | None = None, depth_target: int | None = None,
           depth_delta: int | None = None) -> Result:
    """Compile `factory(width) -> nn.Module` into its muP version at `target` width.

    The model is captured at `base`, `delta` (default 2 * base) and `target` on the meta device;
    a dim is infinite when it differs between base and delta. The returned model is built by
    `factory(target)` and edited in place (your class, your hierarchy); the plan is verified
    at width `delta` against the edited graph unless `verify_width=False`. `optimizers`: the
    families the report shows (every family's multipliers are in the plan). `share_blocks`:
    structurally identical repeated blocks (a transformer's layers) are analysed once and their
    plan entries written onto every copy; False analyses every block. Depth transfer (CompleteP,
    depth-muP; option depth_alpha): `factory(width, depth=L)` builds the model at any depth; the plan
    is for `depth_target`, its residual branches scaled for transfer from `depth_base` (`depth_delta`,
    default 2 * depth_base, tells which blocks repeat with depth).
    """
    widths = _check_widths(base, delta, target)
    if depth_base is not None and depth_target is None:
        depth_target = getattr(factory, "depth", None)  # a Hugging Face factory: its config's own layer count
    depths = check_depths(depth_base, depth_target, depth_delta)
    factory = AtDepth(factory, depths.target) if depths else factory
    families = _families(optimizers)
    _check_parametrization(parametrization)
    asked = pipeline.Compilation(factory, example_inputs, widths, share_blocks, keep_delta_build=verify_width,
                                 parametrization=parametrization, options=options, families=families,
                                 verify_width=verify_width, depths=depths)
    # The analysis must not consume the caller's RNG: the returned model is initialised exactly
    # as `factory(target)` would be right now (bit for bit the original at base width).
    with pipeline.Observer(progress) as observer, torch.random.fork_rng(devices=[]):
        compiled = pipeline.compile(asked, observer)
    plan, diff, verification = compiled.plan, compiled.diff, compiled.verification
    model = realize(build_model(factory, target), plan, reinit=True) if materialize else None
    named = factory.factory if depths else factory
    origin = {"factory": f"{getattr(named, '__module__', '')}.{getattr(named, '__name__', 'make_model')}",
              "materialized": materialize}
    return Result(model=model, plan=plan, report=Report(plan, diff, verification, origin=origin))


@dataclass
class Analysis:
    """What the analysis stages found (the pipeline's record); plans for any width are made from it."""

    compilation: pipeline.Compilation

    @property
    def flow(self):
        return self.compilation.flow

    @property
    def inputs(self):
        return self.compilation.inputs

    def plan(self, parametrization: str = "mup", options: dict | None = None, at: str | int = "target") -> Plan:
        """The plan at `at`: a captured width's name ("base", "delta", "target"), or any width, where
        every size and constant is predicted from the captures (WidthPredictionError if one cannot be)."""
        return pipeline.plan(self.compilation, parametrization, options, at)

    def plan_for(self, width: int, parametrization: str = "mup", options: dict | None = None,
                 optimizers=("adam", "sgd")) -> Plan:
        """The plan `mupify(factory, base, delta, target=width, ...)` makes, from this analysis; where
        a size or constant cannot be predicted at `width`, from a capture at `width` (the notes say why)."""
        _check_parametrization(parametrization)
        with torch.random.fork_rng(devices=[]):
            return pipeline.plan_for(self.compilation, width, parametrization, options, _families(optimizers))


def analyse_widths(factory, *, base: int, target: int, delta: int | None = None, example_inputs=None,
                   progress: bool = False, share_blocks: bool = True) -> Analysis:
    """The analysis `mupify` runs (capture at `base`, `delta` and `target`, roles, attention, init),
    once, for plans at every width: `analysis.plan_for(w, ...)` is `mupify(..., target=w, ...).plan`.
    Capture at the largest width you will plan for: a width above it is an extrapolation."""
    widths = _check_widths(base, delta, target)
    with pipeline.Observer(progress) as observer, torch.random.fork_rng(devices=[]):
        return analyse(factory, example_inputs, widths, observer, share_blocks)


def analyse(factory, example_inputs, widths: Widths, observer: pipeline.Observer | None = None,
            share_blocks: bool = True) -> Analysis:
    """The analysis stages of the pipeline at `widths`."""
    return Analysis(pipeline.analyse(pipeline.Compilation(factory, example_inputs, widths, share_blocks), observer))


def _families(optimizers) -> list:
    return list(dict.fromkeys(family(name).name for name in ([optimizers] if isinstance(optimizers, str)
                                                             else optimizers)))


def _check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise MuRewriteError(f"unknown parametrization {parametrization!r}; choose one of {', '.join(PARAMETRIZATIONS)}")


def apply_plan(model: nn.Module, plan: Plan | str | Path, *, reinit: bool = False, inplace: bool = False,
               from_folded: bool = False) -> nn.Module:
    """Apply a saved plan to a model of the plan's target width.

    `reinit=False` (the default) keeps the weights — right for a checkpoint-loaded model; use
    `reinit=True` on a freshly built model to get muP's init. `from_folded=True` takes a model
    made by `fold` (or its checkpoint loaded): the folded factors are divided back out and tied
    weights tied again first, giving back the muP model. The model is copied first unless
    `inplace=True`.
    """
    plan = _as_plan(plan)
    if from_folded and reinit:
        raise MuRewriteError("from_folded=True restores trained weights; it cannot be combined with reinit=True")
    if not inplace:
        model = copy.deepcopy(model)
    if from_folded:
        unfold(model, plan)
    return realize(model, plan, reinit=reinit)


def fold(model: nn.Module, plan: Plan | str | Path, *, example_inputs=None, inplace: bool = False) -> nn.Module:
    """The muP model as a plain SP model of your own class: no hooks, no interception, every edit
    multiplied into the weights (or an error naming the edit that cannot be folded exactly).

    `model` is the muP model (from `mupify` or `apply_plan`), or a model of the plan's target width
    with a muP checkpoint loaded. With `example_inputs`, the folded model's outputs are checked
    against the muP model's on them. The model is copied first unless `inplace=True`. The result
    computes what the muP model computes; trained with a plain optimizer it trains as SP (use
    `apply_plan(folded, plan, from_folded=True)` to continue in muP).
    """
    plan = _as_plan(plan)
    reference = None
    if example_inputs is not None:
        mup_model = model if getattr(model, REALIZED_FLAG, False) else realize(copy.deepcopy(model), plan, reinit=False)
        reference = copy.deepcopy(mup_model) if inplace else mup_model
    folded = fold_edits(model if inplace else copy.deepcopy(model), plan)
    if reference is not None:
        compare_outputs(reference, folded, inputs_at(example_inputs, plan.target_width))
    return folded


def fold_report(plan: Plan | str | Path) -> str:
    """What `fold` does with each edit of the plan, as a Markdown table."""
    lines = ["| edit | where | factor | folded into |", "|---|---|---|---|"]
    lines += [f"| {r['edit']} | {r['where']} | {r['factor']:.6g} | {r['into']} |" for r in describe(_as_plan(plan))]
    return "\n".join(lines)


def _as_plan(plan) -> Plan:
    return plan if isinstance(plan, Plan) else Plan.load(plan)


def _check_widths(base: int, delta: int | None, target: int) -> Widths:
    delta = 2 * base if delta is None else delta
    for name, value in (("base", base), ("delta", delta), ("target", target)):
        if not isinstance(value, int) or value <= 0:
            raise MuRewriteError(f"{name} width must be a positive integer, got {value!r}")
    if delta == base:
        raise MuRewriteError(f"delta width must differ from base width ({base}); e.g. delta = 2 * base")
    return Widths(base, delta, target)

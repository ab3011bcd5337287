"""The Python API: the whole pipeline as one call, and a plan applied to a model you already have."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import nn

from .errors import MuRewriteError, WidthPredictionError
from .optimizers import family
from .loading import infer_example_inputs
from .passes import ops
from .passes.attention import find_attention
from .passes.constant_values import read_constant_values
from .passes.contractions import scale_free_products
from .passes.capture import build_model, capture, inputs_at
from .passes.decide import decide
from .passes.dims import Dataflow, analyse_dims
from .passes.emit import build_optimizer, param_groups, write_artifacts
from .passes.fold import compare_outputs, describe
from .passes.fold import fold as fold_edits
from .passes.fold import unfold
from .passes.deferred_init import DeferredBuild, build_deferred
from .passes.init_scan import SEED as INIT_SEED
from .passes.init_scan import scan_init
from .passes.lint import lint
from .passes.realize import REALIZED_FLAG, realize
from .passes.passthrough import StubError
from .passes.repeats import find_repeats, unlike_copies
from .passes.stamp import stamp
from .passes.rewrite import graph_diff
from .passes.roles import classify_uses
from .passes.verify import verify
from .plan import Plan
from .report import Report
from .rules import PARAMETRIZATIONS
from .widths import Widths


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
           share_blocks: bool = True) -> Result:
    """Compile `factory(width) -> nn.Module` into its muP version at `target` width.

    The model is captured at `base`, `delta` (default 2 * base) and `target` on the meta device;
    a dim is infinite when it differs between base and delta. The returned model is built by
    `factory(target)` and edited in place (your class, your hierarchy); the plan is verified
    at width `delta` against the edited graph unless `verify_width=False`. `optimizers`: the
    families the report shows (every family's multipliers are in the plan). `share_blocks`:
    structurally identical repeated blocks (a transformer's layers) are analysed once and their
    plan entries written onto every copy; False analyses every block.
    """
    widths = _check_widths(base, delta, target)
    families = _families(optimizers)
    _check_parametrization(parametrization)
    # The analysis must not consume the caller's RNG: the returned model is initialised exactly
    # as `factory(target)` would be right now (bit for bit the original at base width).
    with _Steps(progress) as step, torch.random.fork_rng(devices=[]):
        compile_ = functools.partial(_compiled, factory, example_inputs, widths, step, parametrization, options,
                                     families, verify_width)
        try:
            plan, diff, verification, stubbed = *compile_(share_blocks), None
        except StubError as exc:  # the copies could not be checked against their representative
            stubbed = exc
        if stubbed is not None:  # outside the except clause: what this raises must not carry the StubError
            plan, diff, verification = compile_(False)
            plan.notes.append(f"every repeated block analysed: with each distinct block once, verification found "
                              f"{stubbed}")
    model = realize(build_model(factory, target), plan, reinit=True) if materialize else None
    origin = {"factory": f"{getattr(factory, '__module__', '')}.{getattr(factory, '__name__', 'make_model')}",
              "materialized": materialize}
    return Result(model=model, plan=plan, report=Report(plan, diff, verification, origin=origin))


def _compiled(factory, example_inputs, widths: Widths, step, parametrization, options, families, verify_width,
              share_blocks: bool) -> tuple:
    """(plan at the target, the graph diff, the verification at delta or None)."""
    analysis = analyse(factory, example_inputs, widths, step, share_blocks, keep_delta_build=verify_width)
    plan = _finished(analysis.plan(parametrization, options, "target"), factory, analysis.flow, families)
    step("rewriting the graph")
    diff = graph_diff(analysis.flow.modules["target"], plan)
    if not verify_width:
        return plan, diff, None
    step(f"verifying at width {widths.delta}")
    delta_plan = analysis.plan(parametrization, options, "delta")
    return plan, diff, {"width": widths.delta, **verify(factory, analysis.inputs, delta_plan, widths.delta,
                                                         built=analysis.delta_build)}


@dataclass
class Analysis:
    """What the analysis passes found; plans for any width are made from it."""

    inputs: object
    flow: Dataflow
    uses: dict
    sites: list
    init: dict
    factory: object = None
    share_blocks: bool = True
    delta_build: DeferredBuild | None = None  # the init scan's delta model, kept for verify to run

    def plan(self, parametrization: str = "mup", options: dict | None = None, at: str | int = "target") -> Plan:
        """The plan at `at`: a captured width's name ("base", "delta", "target"), or any width, where
        every size and constant is predicted from the captures (WidthPredictionError if one cannot be)."""
        plan = decide(self.flow, self.uses, self.sites, self.init, parametrization, options, at)
        plan.warnings = lint(self.flow, self.uses, self.sites, self.init, plan)
        captures = self.flow.captures
        return stamp(plan, captures.repeats, captures.parameter_order)

    def plan_for(self, width: int, parametrization: str = "mup", options: dict | None = None,
                 optimizers=("adam", "sgd")) -> Plan:
        """The plan `mupify(factory, base, delta, target=width, ...)` makes, from this analysis; where
        a size or constant cannot be predicted at `width`, from a capture at `width` (the notes say why)."""
        families = _families(optimizers)
        _check_parametrization(parametrization)
        widths = self.flow.widths
        with torch.random.fork_rng(devices=[]):
            try:
                plan, flow = self.plan(parametrization, options, width), self.flow
                notes = [] if widths.captured(width) else [
                    f"planned at width {width} from the analysis captured at widths {widths.base}, {widths.delta}, "
                    f"{widths.target} (sizes and constants predicted)"]
            except WidthPredictionError as exc:
                fresh = analyse(self.factory, self.inputs, Widths(widths.base, widths.delta, width),
                                share_blocks=self.share_blocks)
                plan, flow = fresh.plan(parametrization, options, "target"), fresh.flow
                notes = [f"captured at width {width}: not predictable from the analysis ({exc})"]
        return _finished(plan, self.factory, flow, families, notes)


def analyse_widths(factory, *, base: int, target: int, delta: int | None = None, example_inputs=None,
                   progress: bool = False, share_blocks: bool = True) -> Analysis:
    """The analysis `mupify` runs (capture at `base`, `delta` and `target`, roles, attention, init),
    once, for plans at every width: `analysis.plan_for(w, ...)` is `mupify(..., target=w, ...).plan`.
    Capture at the largest width you will plan for: a width above it is an extrapolation."""
    widths = _check_widths(base, delta, target)
    with _Steps(progress) as step, torch.random.fork_rng(devices=[]):
        return analyse(factory, example_inputs, widths, step, share_blocks)


def _finished(plan: Plan, factory, flow: Dataflow, families: list, notes=()) -> Plan:
    """The plan as `mupify` returns it: where the model came from, and the optimizer families shown."""
    plan.notes = model_notes(factory, flow) + list(notes)
    plan.optimizers = families
    return plan


def _families(optimizers) -> list:
    return list(dict.fromkeys(family(name).name for name in ([optimizers] if isinstance(optimizers, str)
                                                             else optimizers)))


def _check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise MuRewriteError(f"unknown parametrization {parametrization!r}; choose one of {', '.join(PARAMETRIZATIONS)}")


def guess_inputs(factory, width: int, model: nn.Module | None = None):
    """Example inputs read off the model's first layer: of `model` (built at `width`) if given, else
    of the model built on meta (on the CPU, at this small width, when it cannot be built on meta)."""
    if model is None:
        model = _built_on_meta(factory, width)
    if model is None:
        model = build_model(factory, width, "cpu")
    return infer_example_inputs(model)


def _built_on_meta(factory, width: int) -> nn.Module | None:
    """The model at `width` on meta; None when it cannot be built there (capture then finds out why)."""
    try:
        return build_model(factory, width, "meta")
    except MuRewriteError:
        return None


def model_notes(factory, flow: Dataflow) -> list:
    """What the plan should say about where the model came from and how it was captured."""
    notes = list(getattr(flow.captures, "notes", []))
    notes += [f"the product {name} ({ops.op_name(flow.fx(name))}) in {flow.module(name) or 'the root module'} "
              "contracts two activations over a dim that grows with width, and its size cancels or stays bounded "
              "(a ratio of products of the same operand or a norm, as in linear attention; a softmax over the "
              "summed dim; two factors of unit length along it): no edit"
              for name in scale_free_products(flow)]
    rule = getattr(factory, "width_rule", None)
    if rule:
        scaled = ", ".join(f"{k}={v}" for k, v in rule.get("scaled", {}).items())
        notes.insert(0, f"width rule ({rule.get('model_type', 'config')}, grow {rule.get('grow', '?')}): "
                        f"at the target width {scaled}; every other config field is kept")
    return notes


def analyse(factory, example_inputs, widths: Widths, step=lambda description: None, share_blocks: bool = True,
            keep_delta_build: bool = False) -> Analysis:
    """Run the analysis passes: repeated blocks, init scan, capture, dims, roles, attention.
    `keep_delta_build`: keep the init scan's model at delta width (Analysis.delta_build) for verify."""
    step("building example inputs")
    base_model = _built_on_meta(factory, widths.base)  # read here, then captured: one build
    inputs = example_inputs if example_inputs is not None else guess_inputs(factory, widths.base, base_model)
    copies = find_repeats(base_model) if share_blocks and base_model is not None else {}
    step("measuring the model's own init")
    delta_build = build_deferred(factory, widths.delta, INIT_SEED) if keep_delta_build else None
    init = scan_init(factory, widths, copies, delta_build)
    unlike = unlike_copies(copies, init)
    copies = {c: r for c, r in copies.items() if c not in unlike}
    step("capturing the model at 3 widths")
    captures = capture(factory, inputs, widths, copies, base_model)
    if unlike or captures.repeats != copies:  # blocks analysed apart need their own init, fully measured
        init = scan_init(factory, widths, captures.repeats, delta_build)
    captures.notes += _repeats_notes(captures.repeats, unlike)
    flow = analyse_dims(captures)
    flow.constants = read_constant_values(factory, flow)
    step("classifying roles and attention")
    uses, sites = classify_uses(flow), find_attention(flow)
    return Analysis(inputs, flow, uses, sites, init, factory, share_blocks, delta_build)


def _repeats_notes(copies: dict, unlike: set) -> list:
    by_representative = {}
    for copy_path, representative in copies.items():
        by_representative.setdefault(representative, []).append(copy_path)
    notes = [f"{len(paths)} block(s) repeat {representative} ({_listed(paths)}): analysed once, its plan entries "
             "written onto each" for representative, paths in by_representative.items()]
    if unlike:
        notes.append(f"analysed apart, their init differing from the identical block before them: {_listed(sorted(unlike))}")
    return notes


def _listed(paths: list) -> str:
    return ", ".join(paths) if len(paths) <= 3 else f"{paths[0]}, {paths[1]}, ..., {paths[-1]}"


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


class _Steps:
    """A transient rich progress display of the pipeline's steps (on stderr), or nothing."""

    def __init__(self, enabled: bool):
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True, disable=not enabled)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __call__(self, description: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=1)
        self.task = self.progress.add_task(description, total=1)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

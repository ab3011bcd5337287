"""The pipeline, declared once: the stages in their order over one `Compilation` record, each stage
one line, run under an `Observer` that shows progress and times each stage.

`analyse` runs ANALYSIS (everything width-independent: repeats, init, capture, dims, constants,
roles, attention); `plan` composes decide, lint and stamp at one width; `compile` runs the whole of
COMPILATION (the analysis, the plan at the target, the graph diff, the verification at delta) and
names the fallback: a repeated block whose copies cannot be checked against their representative is
analysed again with every block apart. `mupify`, `analyse_widths` and analysis_llama's step worker call
these (verify and coordcheck still capture on their own). docs/design.md lists the stages
(tests/test_pipeline.py checks it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import nn

from .errors import MuRewriteError, StubError, WidthPredictionError
from .loading import infer_example_inputs
from .passes import ops
from .passes.attention import find_attention
from .passes.capture import Captures, build_model, capture
from .passes.constant_values import read_constant_values
from .passes.contractions import scale_free_products
from .passes.decide import decide
from .passes.deferred_init import DeferredBuild, build_deferred
from .passes.depth import DepthAnalysis, analyse_depth, with_proxy_init
from .passes.dims import Dataflow, analyse_dims
from .passes.foldable import place_folds
from .passes.init_scan import SEED as INIT_SEED
from .passes.init_scan import scan_init
from .passes.lint import lint
from .passes.repeats import find_repeats, unlike_copies
from .passes.residuals import find_residuals
from .passes.rewrite import graph_diff
from .passes.roles import classify_uses
from .passes.stamp import stamp
from .passes.verify import verify
from .plan import Plan
from .widths import Depths, Widths, check_at


@dataclass
class Compilation:
    """The one record the stages read and fill, in order: what was asked, then what each stage found."""

    factory: Callable
    example_inputs: object
    widths: Widths
    share_blocks: bool = True
    keep_delta_build: bool = False  # keep the init scan's delta model for verify to run
    parametrization: str = "mup"
    options: dict | None = None
    families: list = field(default_factory=lambda: ["adam", "sgd"])
    verify_width: bool = True
    depths: Depths | None = None  # depth transfer: `factory` is then an AtDepth at the target depth
    # filled by ANALYSIS
    inputs: object = None
    base_model: nn.Module | None = None  # built on meta at base width: read for inputs and repeats, then captured
    copies: dict = field(default_factory=dict)  # repeated block -> its representative
    delta_build: DeferredBuild | None = None
    init: dict | None = None
    unlike: set = field(default_factory=set)  # copies whose init differs from their representative's
    captures: Captures | None = None
    flow: Dataflow | None = None
    uses: dict | None = None
    sites: list | None = None
    residuals: list | None = None  # the residual adds, their branches and streams (depth transfer)
    depth: DepthAnalysis | None = None  # the blocks and branches that repeat with depth
    # filled by the rest of COMPILATION
    plan: Plan | None = None
    diff: object = None
    verification: dict | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    description: str  # what the progress display shows
    run: Callable[[Compilation], None]


def _inputs(c: Compilation) -> None:
    c.base_model = built_on_meta(c.factory, c.widths.base)
    c.inputs = c.example_inputs if c.example_inputs is not None else guess_inputs(c.factory, c.widths.base, c.base_model)


def _repeats(c: Compilation) -> None:
    c.copies = find_repeats(c.base_model) if c.share_blocks and c.base_model is not None else {}


def _init(c: Compilation) -> None:
    c.delta_build = build_deferred(c.factory, c.widths.delta, INIT_SEED) if c.keep_delta_build else None
    c.init = scan_init(c.factory, c.widths, c.copies, c.delta_build)
    c.unlike = unlike_copies(c.copies, c.init)
    c.copies = {copy: representative for copy, representative in c.copies.items() if copy not in c.unlike}


def _capture(c: Compilation) -> None:
    c.captures = capture(c.factory, c.inputs, c.widths, c.copies, c.base_model)
    if c.unlike or c.captures.repeats != c.copies:  # blocks analysed apart need their own init, fully measured
        c.init = scan_init(c.factory, c.widths, c.captures.repeats, c.delta_build)
    c.captures.notes += _repeats_notes(c.captures.repeats, c.unlike)


def _dims(c: Compilation) -> None:
    c.flow = analyse_dims(c.captures)


def _constants(c: Compilation) -> None:
    c.flow.constants = read_constant_values(c.factory, c.flow)


def _roles(c: Compilation) -> None:
    c.uses = classify_uses(c.flow)


def _attention(c: Compilation) -> None:
    c.sites = find_attention(c.flow)


def _residuals(c: Compilation) -> None:
    c.residuals = find_residuals(c.flow)


def _depth(c: Compilation) -> None:
    if c.depths is not None:
        model = c.base_model or build_model(c.factory, c.widths.base, "cpu")  # where it cannot be built on meta
        c.depth = analyse_depth(c.factory, c.depths, c.widths.base, model, c.residuals, c.flow)
        c.init = with_proxy_init(c.factory, c.depths, c.widths, c.init, model)


def _plan(c: Compilation) -> None:
    c.plan = finished(plan(c, c.parametrization, c.options, "target"), c.factory, c.flow, c.families)


def _diff(c: Compilation) -> None:
    c.diff = graph_diff(c.flow.modules["target"], c.plan)


def _verify(c: Compilation) -> None:
    if c.verify_width:
        delta_plan = plan(c, c.parametrization, c.options, "delta")
        c.verification = {"width": c.widths.delta,
                          **verify(c.factory, c.inputs, delta_plan, c.widths.delta, built=c.delta_build)}


ANALYSIS = (
    Stage("inputs", "building example inputs", _inputs),
    Stage("repeats", "finding repeated blocks", _repeats),
    Stage("init", "measuring the model's own init", _init),
    Stage("capture", "capturing the model at 3 widths", _capture),
    Stage("dims", "classifying dims", _dims),
    Stage("constants", "reading scales kept in buffers", _constants),
    Stage("roles", "classifying roles", _roles),
    Stage("attention", "finding attention", _attention),
    Stage("residuals", "finding residual streams", _residuals),
    Stage("depth", "finding the blocks that repeat with depth", _depth),
)
COMPILATION = ANALYSIS + (
    Stage("plan", "planning at the target width", _plan),
    Stage("diff", "rewriting the graph", _diff),
    Stage("verify", "verifying at the delta width", _verify),
)


class Observer:
    """Around each stage: a transient rich progress display (on stderr, when enabled) and the time it took."""

    def __init__(self, progress: bool = False):
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True, disable=not progress)
        self.timings = {}  # stage name -> seconds, summed over runs

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def run(self, stage: Stage, compilation: Compilation) -> None:
        task = self.progress.add_task(stage.description, total=1)
        start = time.perf_counter()
        try:
            stage.run(compilation)
        finally:
            self.timings[stage.name] = self.timings.get(stage.name, 0.0) + time.perf_counter() - start
            self.progress.update(task, completed=1)


def run(stages: tuple, compilation: Compilation, observer: Observer | None = None) -> Compilation:
    observer = observer or Observer()
    for stage in stages:
        observer.run(stage, compilation)
    return compilation


def analyse(compilation: Compilation, observer: Observer | None = None) -> Compilation:
    return run(ANALYSIS, compilation, observer)


def plan(c: Compilation, parametrization: str = "mup", options: dict | None = None, at: str | int = "target") -> Plan:
    """The plan at `at` (a captured width's name, or any width: sizes and constants predicted), composed
    from what decide, lint and stamp make of the analysis."""
    at = check_at(at, c.flow.widths)
    decided = decide(c, parametrization, options, at)
    folds = place_folds(c.flow, decided.edits, decided.parameters, at)
    placed = replace(decided, edits=[replace(edit, fold=fold) for edit, fold in zip(decided.edits, folds)])
    linted = replace(placed, warnings=lint(c, placed))
    return stamp(linted, c.captures.repeats, c.captures.parameter_order)


def compile(compilation: Compilation, observer: Observer | None = None) -> Compilation:
    """COMPILATION; where verification finds a repeated block's copies unlike their representative, again
    with every block analysed apart (the fallback the plan's notes name)."""
    try:
        return run(COMPILATION, compilation, observer)
    except StubError as exc:
        stubbed = exc
    # outside the except clause: what this raises must not carry the StubError
    apart = run(COMPILATION, _fresh(compilation, share_blocks=False), observer)
    note = f"every repeated block analysed: with each distinct block once, verification found {stubbed}"
    apart.plan = replace(apart.plan, notes=apart.plan.notes + [note])
    return apart


def plan_for(c: Compilation, width: int, parametrization: str, options: dict | None, families: list) -> Plan:
    """The plan at any `width` from the analysis; where a size or constant cannot be predicted there, from a
    capture at `width` (the second fallback, named in the plan's notes)."""
    widths = c.widths
    try:
        made, flow = plan(c, parametrization, options, width), c.flow
        notes = [] if widths.captured(width) else [
            f"planned at width {width} from the analysis captured at widths {widths.base}, {widths.delta}, "
            f"{widths.target} (sizes and constants predicted)"]
    except WidthPredictionError as exc:
        fresh = analyse(_fresh(c, example_inputs=c.inputs, widths=Widths(widths.base, widths.delta, width),
                               keep_delta_build=False))
        made, flow = plan(fresh, parametrization, options, "target"), fresh.flow
        notes = [f"captured at width {width}: not predictable from the analysis ({exc})"]
    return finished(made, c.factory, flow, families, notes)


def _fresh(compilation: Compilation, **changes) -> Compilation:
    asked = {name: getattr(compilation, name) for name in ("factory", "example_inputs", "widths", "share_blocks",
                                                             "keep_delta_build", "parametrization", "options",
                                                             "families", "verify_width", "depths")}
    return Compilation(**{**asked, **changes})


def finished(plan_: Plan, factory, flow: Dataflow, families: list, notes=()) -> Plan:
    """The plan as `mupify` returns it: where the model came from, and the optimizer families shown."""
    return replace(plan_, notes=model_notes(factory, flow) + list(notes), optimizers=families)


def guess_inputs(factory, width: int, model: nn.Module | None = None):
    """Example inputs read off the model's first layer: of `model` (built at `width`) if given, else
    of the model built on meta (on the CPU, at this small width, when it cannot be built on meta)."""
    if model is None:
        model = built_on_meta(factory, width)
    if model is None:
        model = build_model(factory, width, "cpu")
    return infer_example_inputs(model)


def built_on_meta(factory, width: int) -> nn.Module | None:
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

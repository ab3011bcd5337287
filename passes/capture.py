"""capture: build the model at every width and capture each as an FX graph.

Reads:  a `factory(width) -> nn.Module`, example inputs (a tuple of args or a dict of kwargs),
        the `Widths` (base, delta, target).
Writes: `Captures` — one `torch.export.ExportedProgram` per width name, captured with
        `torch.export.export(strict=False)` and static shapes, plus how they were captured:
        * `device` "meta": the model is built on the `meta` device (no parameter memory);
          "fake-cpu": built on CPU under a `FakeTensorMode` (still no memory), taken when the
          model cannot be built or traced on meta (`torch.autocast(x.device.type)`, copies to
          a fixed device, ops without a meta kernel);
        * `mode` "train", or "eval" when train mode cannot be traced because of train-only
          data-dependent control flow (LayerDrop's `if self.training and torch.rand([]) < p`);
        * `notes`: one line per fallback taken, saying why;
        * `repeats`: {copy path: representative path} of the repeated blocks (passes/repeats.py)
          whose forward passed its input through while exported, so the graphs hold each
          distinct block once — the copies asked for, when every width's model has them and
          the export with them passed through works; else none (a note says why).
        The same strategy is used at every width, so the graphs match node for node.
Raises: `CaptureError` with one line: the cause in words (data-dependent control flow, a
        device problem, an op without a fake kernel, example inputs that do not fit, ...), the
        user's own file:line and module, and the fix that matches the cause (the diagnosis:
        capture_failures.py).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
import threading
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

from ..errors import CaptureError, MuRewriteError, StubError
from ..widths import WIDTH_NAMES, Widths
from .capture_failures import (DATA_DEPENDENT, Failure, Strategy, capture_error, describe_failure, exception_chain,
                               fallback_note, first_line, next_strategy, user_location)
from .passthrough import copies_own, refuse_reads, stubbed
from .repeats import find_repeats

@dataclass
class Captures:
    widths: Widths
    programs: dict  # width name -> torch.export.ExportedProgram
    aliases: dict  # parameter FQN -> the other names of the same (tied) tensor
    mode: str = "train"  # "train" | "eval": the module mode the graphs were captured in
    device: str = "meta"  # "meta" | "fake-cpu": where the models were built
    notes: list = field(default_factory=list)  # one line per fallback taken, saying why
    repeats: dict = field(default_factory=dict)  # copy path -> representative path, passed through
    copy_positions: dict = field(default_factory=dict)  # copy path -> the last graph node when it ran
    # where the model branches on tensor data, when it was traced on real tensors (Strategy.tracer)
    branches: str | None = None

    parameter_order: list = field(default_factory=list)  # every parameter's first name, in the model's order


@dataclass
class Exported:
    """One captured program and how it was captured (the shared helper of capture and verify)."""

    program: torch.export.ExportedProgram
    mode: str
    notes: list


def build_model(factory, width: int, device: str | torch.device = "cpu") -> nn.Module:
    """Call the user's factory at `width`, with tensors created on `device` by default."""
    try:
        with torch.device(device), _meta_init_skipped() if str(device) == "meta" else contextlib.nullcontext():
            model = factory(width)
    except Exception as exc:  # the user's code: report it, don't crash
        raise CaptureError(
            f"the model factory failed at width {width}: {type(exc).__name__}: {exc}"
            f"{user_location(exc)}; check that it accepts any width the CLI passes"
        ) from exc
    if not isinstance(model, nn.Module):
        raise CaptureError(
            f"the model factory returned {type(model).__name__} at width {width}, not an "
            "nn.Module; make it return the model"
        )
    _disable_kv_cache(model)
    return model


INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                  "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
_skipping = {"depth": 0, "lock": threading.Lock(), "originals": {}}


@contextlib.contextmanager
def _meta_init_skipped():
    """torch.nn.init's functions return a meta tensor untouched (it holds no values to fill): about
    40% of the time of building an 80-layer Llama on meta is nn.Linear's kaiming init. Any other
    tensor is initialised as ever, so another thread building meanwhile is not affected."""
    with _skipping["lock"]:
        if _skipping["depth"] == 0:
            _skipping["originals"] = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}
            for name, function in _skipping["originals"].items():
                setattr(torch.nn.init, name, _unless_meta(function))
        _skipping["depth"] += 1
    try:
        yield
    finally:
        with _skipping["lock"]:
            _skipping["depth"] -= 1
            if _skipping["depth"] == 0:
                for name, function in _skipping["originals"].items():
                    setattr(torch.nn.init, name, function)


def _unless_meta(function):
    @functools.wraps(function)
    def init_unless_meta(tensor, *args, **kwargs):
        return tensor if isinstance(tensor, torch.Tensor) and tensor.is_meta else function(tensor, *args, **kwargs)
    return init_unless_meta


def to_device(inputs, device):
    return tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, inputs)


def capture(factory, inputs, widths: Widths, copies: dict | None = None, base_model: nn.Module | None = None) -> Captures:
    """Export the model at base, delta and target width, falling back as the failures call for;
    with `copies`, each repeated block once (every block when that cannot be, noted). `base_model`:
    the model already built on meta at base width (`copies` found in it), exported by the first attempt instead of a build
    (a later attempt builds its own: an export may leave state behind in the model)."""
    if not copies:
        return _capture(factory, inputs, widths, {}, base_model)
    try:
        return _capture(factory, inputs, widths, copies, base_model)
    except (StubError, CaptureError) as exc:
        reason = first_line(exc)
    # outside the except clause: a failure of this capture must not carry the one above as its context
    captures = _capture(factory, inputs, widths, {})
    captures.notes.append(f"every repeated block captured: with each distinct block once, {reason}")
    return captures


def _capture(factory, inputs, widths: Widths, copies: dict, base_model: nn.Module | None = None) -> Captures:
    strategy, failures = Strategy(), []
    while True:
        try:
            prebuilt = {} if failures else {"base": base_model}
            programs, model, positions = _capture_widths(factory, inputs, widths, strategy, copies, prebuilt)
        except Failure as failure:
            stub = _stub_error(failure.exc)
            if stub is not None:
                raise stub
            failures.append(failure)
            following = next_strategy(failure)
            if following is None:
                raise capture_error(failures, widths) from failure.exc
            strategy = following
            continue
        notes = [fallback_note(f, widths) for f in failures]
        return Captures(widths=widths, programs=programs, aliases=tied_names(model),
                        mode=strategy.mode, device=strategy.device, notes=notes, repeats=dict(copies),
                        copy_positions=positions, parameter_order=[name for name, _ in model.named_parameters()],
                        branches=_branch_location(failures) if strategy.tracer == "real" else None)


def _branch_location(failures: list) -> str:
    first = next(f for f in failures if f.cause == DATA_DEPENDENT)
    return user_location(first.exc, first.model)


def _stub_error(exc: BaseException) -> StubError | None:
    """The StubError behind an export failure (torch.export may wrap what the forward raised)."""
    return next((e for e in exception_chain(exc) if isinstance(e, StubError)), None)


def export_model(model: nn.Module, inputs, device) -> torch.export.ExportedProgram:
    """Capture a built `model` (train mode, else eval mode); tensors the forward creates land on
    `device`. The model is left in the mode it was captured in."""
    return export_with_fallbacks(model, inputs, device).program


def export_with_fallbacks(model: nn.Module, inputs, device) -> Exported:
    """`export_model` with the mode used and the fallback notes (for a caller that must run the
    model in the same mode as the graph, such as verify)."""
    strategy, failures = Strategy(device=str(device), mode="train"), []
    while True:
        try:
            program = _export(model, inputs, strategy)
        except Exception as exc:
            failures.append(Failure(exc, model, strategy, "", built=True))
            following = next_strategy(failures[-1], may_change_device=False)
            if following is None:
                raise CaptureError(describe_failure(failures[-1])) from exc
            strategy = following
            continue
        return Exported(program=program, mode=strategy.mode, notes=[fallback_note(f) for f in failures])


def tied_names(model: nn.Module) -> dict:
    """First name of each tensor registered under several names -> its other names."""
    names_by_tensor = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_tensor.setdefault(id(param), []).append(name)
    return {names[0]: names[1:] for names in names_by_tensor.values() if len(names) > 1}


def inputs_at(inputs, width: int):
    """The example inputs at `width`: `inputs(width)` when they are a callable (inputs that grow
    with width, such as encoder hidden states fed to a decoder), else `inputs` themselves."""
    if not callable(inputs) or isinstance(inputs, torch.Tensor):
        return inputs
    try:
        return inputs(width)
    except Exception as exc:
        raise MuRewriteError(f"example_inputs({width}) failed: {type(exc).__name__}: {exc}") from exc


def split_inputs(inputs):
    """Example inputs are a tuple of positional args, a dict of kwargs, or a single tensor."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _capture_widths(factory, inputs, widths: Widths, strategy: Strategy, copies: dict, prebuilt: dict):
    programs, model, positions = {}, None, {}
    for name in WIDTH_NAMES:
        given = prebuilt.get(name)  # the model the copies were found in: no need to look again
        model = given if given is not None else _build(factory, widths[name], strategy, name)
        positions = {}
        try:
            if given is None:
                _check_copies(model, copies, widths[name])
            with stubbed(model, copies, positions):
                programs[name] = _export(model, inputs_at(inputs, widths[name]), strategy)
            _check_copies_placed(programs[name], copies, positions)
            refuse_reads(programs[name], copies_own(model, copies) if copies else {})
        except Exception as exc:
            raise Failure(exc, model, strategy, name, built=True) from exc
    return programs, model, positions


def _check_copies(model: nn.Module, copies: dict, width: int) -> None:
    found = find_repeats(model) if copies else {}
    differing = next((c for c, r in copies.items() if found.get(c) != r), None)
    if differing is not None:
        raise StubError(f"at width {width} block {differing} is not a copy of {copies[differing]}")


def _check_copies_placed(program: torch.export.ExportedProgram, copies: dict, positions: dict) -> None:
    """Every copy ran, after a node of the graph (what ops precede it is counted from there)."""
    nodes = {node.name for node in program.graph.nodes}
    unplaced = next((c for c in copies if positions.get(c) not in nodes), None)
    if unplaced is not None:
        raise StubError(f"block {unplaced} did not run after an op of the graph")


def _build(factory, width: int, strategy: Strategy, width_name: str) -> nn.Module:
    try:
        if strategy.device == "fake-cpu":
            with FakeTensorMode(allow_non_fake_inputs=True):
                return build_model(factory, width, "cpu")
        return build_model(factory, width, strategy.device)
    except CaptureError as error:
        raise Failure(error, None, strategy, width_name, built=False) from error


def _export(model: nn.Module, inputs, strategy: Strategy) -> torch.export.ExportedProgram:
    device = "cpu" if strategy.device == "fake-cpu" else strategy.device
    args, kwargs = split_inputs(to_device(inputs, device))
    model.train(strategy.mode == "train")  # left in the mode it was captured in
    for attempt in range(REAL_TRACE_ATTEMPTS if strategy.tracer == "real" else 1):
        try:
            with _state_kept(model), _moves_in_place_skipped(model):
                trace = torch.export.draft_export if strategy.tracer == "real" else torch.export.export
                with torch.device(device), _quiet(), _no_node_stack_traces():
                    return trace(model, args, kwargs, strict=False)
        except Exception as exc:
            if attempt + 1 == REAL_TRACE_ATTEMPTS or not _lost_real_value(exc):
                raise


# draft export's real-tensor propagation loses a data-dependent size's real value now and then (the same
# model and inputs fail about one trace in four, torch 2.13: a storage-offset check that cannot be decided)
REAL_TRACE_ATTEMPTS = 4


def _lost_real_value(exc: BaseException) -> bool:
    return any("_check_fake_real_tensors" in str(e) for e in exception_chain(exc))


@contextlib.contextmanager
def _state_kept(model: nn.Module):
    """Every module's attributes, buffers, parameters and children as they were before the export:
    a forward that caches a tensor on its module (a rotary table stored with register_buffer) would
    otherwise leave it holding a fake tensor, which the next eager run reads."""
    saved = [(m, dict(m.__dict__), dict(m._buffers), dict(m._parameters), dict(m._modules)) for m in model.modules()]
    try:
        yield
    finally:
        for module, attributes, buffers, parameters, children in saved:
            module.__dict__.clear()
            module.__dict__.update(attributes)
            for table, kept in ((module._buffers, buffers), (module._parameters, parameters), (module._modules, children)):
                table.clear()
                table.update(kept)


@contextlib.contextmanager
def _moves_in_place_skipped(model: nn.Module):
    """`module.to(device or dtype)` on one of `model`'s modules in a forward (offloading code:
    `expert.to(self.device)`; Switch Transformers' `self.classifier = self.classifier.to(self.dtype)`)
    returns the module when it changes nothing: export cannot swap a parameter, even for itself. Other
    modules (export's own copies, whose conversions carry real tensors) convert as ever."""
    original, own = nn.Module.to, {id(m) for m in model.modules()}

    def to_unless_in_place(module, *args, **kwargs):
        device, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        tensors = list(itertools.chain(module.parameters(), module.buffers()))
        same_place = all(device in (None, t.device) for t in tensors)
        same_dtype = dtype is None or all(t.dtype == dtype for t in tensors if t.is_floating_point() or t.is_complex())
        if id(module) in own and memory_format is None and same_place and same_dtype:
            return module
        return original(module, *args, **kwargs)

    nn.Module.to = to_unless_in_place
    try:
        yield
    finally:
        nn.Module.to = original


@contextlib.contextmanager
def _quiet():
    """torch.export logs and warns about the user's code; the error we raise says it in one line."""
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


@contextlib.contextmanager
def _no_node_stack_traces():
    """Skip recording a Python stack per graph node (a tenth of export's time on a 32-layer
    model); no pass reads `node.meta["stack_trace"]`, and capture errors are located from the
    exception's own traceback."""
    before = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = before


def _disable_kv_cache(model: nn.Module) -> None:
    """No KV cache in the captured graph (a cache object is no tensor export can return); every
    sub-config of a composite model (text_config, decoder, ...) too."""
    configs = [getattr(model, "config", None)]
    while configs:
        config = configs.pop()
        if config is None or not hasattr(config, "to_dict"):
            continue
        if getattr(config, "use_cache", False):
            config.use_cache = False
        configs += [v for v in vars(config).values() if hasattr(v, "to_dict") and hasattr(v, "use_cache")]



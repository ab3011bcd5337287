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
        * `notes`: one line per fallback taken, saying why.
        The same strategy is used at every width, so the graphs match node for node.
Raises: `CaptureError` with one line: the cause in words (data-dependent control flow, a
        device problem, an op without a fake kernel, example inputs that do not fit, ...), the
        user's own file:line and module, and the fix that matches the cause.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
from torch.utils._pytree import tree_map

from .. import errors
from ..errors import CaptureError, MuRewriteError
from ..widths import WIDTH_NAMES, Widths

_LIBRARY_DIRS = (Path(torch.__file__).parent.parent, Path(contextlib.__file__).parent)
_OWN_DIRS = (Path(__file__).resolve().parent, Path(errors.__file__).resolve().parent)

DATA_DEPENDENT, DEVICE, UNSUPPORTED_OP, INPUTS, WIDTH, FACTORY, OTHER = (
    "data-dependent", "device", "unsupported-op", "inputs", "width", "factory", "other")
_DATA_DEPENDENT_ERRORS = (GuardOnDataDependentSymNode, DataDependentOutputException, DynamicOutputShapeException)
_DATA_ACCESS = re.compile(r"\.numpy\(\)|data pointer|data_ptr|cannot be called on meta tensors|data-dependent")
_META = re.compile(r"\bmeta\b", re.IGNORECASE)
_INPUT_MISMATCH = re.compile(
    r"shapes cannot be multiplied|same reduction dim|size mismatch|must match the size of tensor|"
    r"expected scalar type|same dtype|dimension out of range|is invalid for input of size|"
    r"expected input|positional argument|unexpected keyword argument|required argument|"
    r"to have one of the following scalar types|not enough values to unpack|cannot be broadcast|"
    r"but got input of size|expected .*-?D .*input",
    re.IGNORECASE,
)


@dataclass
class Captures:
    widths: Widths
    programs: dict  # width name -> torch.export.ExportedProgram
    aliases: dict  # parameter FQN -> the other names of the same (tied) tensor
    mode: str = "train"  # "train" | "eval": the module mode the graphs were captured in
    device: str = "meta"  # "meta" | "fake-cpu": where the models were built
    notes: list = field(default_factory=list)  # one line per fallback taken, saying why


@dataclass(frozen=True)
class Strategy:
    """Where the model is built and which mode it is traced in."""

    device: str = "meta"  # "meta" | "fake-cpu" | "cpu" (real tensors: verify, coordcheck)
    mode: str = "train"


@dataclass
class Exported:
    """One captured program and how it was captured (the shared helper of capture and verify)."""

    program: torch.export.ExportedProgram
    mode: str
    notes: list


class _Failure(Exception):
    """An attempt failed; carries what the final error needs."""

    def __init__(self, exc: BaseException, model: nn.Module | None, strategy: Strategy, width: str, built: bool):
        super().__init__(str(exc))
        self.exc, self.model, self.strategy, self.width, self.built = exc, model, strategy, width, built
        self.cause = classify_failure(exc) if built else FACTORY


def build_model(factory, width: int, device: str | torch.device = "cpu") -> nn.Module:
    """Call the user's factory at `width`, with tensors created on `device` by default."""
    try:
        with torch.device(device):
            model = factory(width)
    except Exception as exc:  # the user's code: report it, don't crash
        raise CaptureError(
            f"the model factory failed at width {width}: {type(exc).__name__}: {exc}"
            f"{_where(exc)}; check that it accepts any width the CLI passes"
        ) from exc
    if not isinstance(model, nn.Module):
        raise CaptureError(
            f"the model factory returned {type(model).__name__} at width {width}, not an "
            "nn.Module; make it return the model"
        )
    _disable_kv_cache(model)
    return model


def to_device(inputs, device):
    return tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, inputs)


def capture(factory, inputs, widths: Widths) -> Captures:
    """Export the model at base, delta and target width, falling back as the failures call for."""
    strategy, failures = Strategy(), []
    while True:
        try:
            programs, model = _capture_widths(factory, inputs, widths, strategy)
        except _Failure as failure:
            failures.append(failure)
            following = _fallback(failure)
            if following is None:
                raise _capture_error(failures, widths) from failure.exc
            strategy = following
            continue
        notes = [_note(f, widths) for f in failures]
        return Captures(widths=widths, programs=programs, aliases=tied_names(model),
                        mode=strategy.mode, device=strategy.device, notes=notes)


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
            failures.append(_Failure(exc, model, strategy, "", built=True))
            following = _fallback(failures[-1], may_change_device=False)
            if following is None:
                raise CaptureError(_describe_failure(failures[-1])) from exc
            strategy = following
            continue
        return Exported(program=program, mode=strategy.mode, notes=[_note(f) for f in failures])


def classify_failure(exc: BaseException) -> str:
    """What kind of problem made torch.export fail: one of the cause constants above."""
    chain = list(_exception_chain(exc))
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, _DATA_DEPENDENT_ERRORS) for e in chain) or _DATA_ACCESS.search(text):
        return DATA_DEPENDENT
    if any(isinstance(e, UnsupportedOperatorException) for e in chain) or "no fake impl" in text:
        return UNSUPPORTED_OP
    if _META.search(text) or "autocast device_type" in text or "same device" in text:
        return DEVICE
    if any(isinstance(e, (RuntimeError, TypeError, ValueError, IndexError)) for e in chain) and _INPUT_MISMATCH.search(text):
        return INPUTS
    return OTHER


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


def _capture_widths(factory, inputs, widths: Widths, strategy: Strategy):
    programs, model = {}, None
    for name in WIDTH_NAMES:
        model = _build(factory, widths[name], strategy, name)
        try:
            programs[name] = _export(model, inputs_at(inputs, widths[name]), strategy)
        except Exception as exc:
            raise _Failure(exc, model, strategy, name, built=True) from exc
    return programs, model


def _build(factory, width: int, strategy: Strategy, width_name: str) -> nn.Module:
    try:
        if strategy.device == "fake-cpu":
            with FakeTensorMode(allow_non_fake_inputs=True):
                return build_model(factory, width, "cpu")
        return build_model(factory, width, strategy.device)
    except CaptureError as error:
        raise _Failure(error, None, strategy, width_name, built=False) from error


def _export(model: nn.Module, inputs, strategy: Strategy) -> torch.export.ExportedProgram:
    device = "cpu" if strategy.device == "fake-cpu" else strategy.device
    args, kwargs = split_inputs(to_device(inputs, device))
    model.train(strategy.mode == "train")
    with torch.device(device), _quiet(), _no_node_stack_traces():
        return torch.export.export(model, args, kwargs, strict=False)


def _fallback(failure: _Failure, may_change_device: bool = True) -> Strategy | None:
    """The next strategy to try after `failure`, or None when no fallback can help."""
    strategy = failure.strategy
    if failure.cause == DATA_DEPENDENT and strategy.mode == "train":
        return replace(strategy, mode="eval")
    if failure.cause not in (DATA_DEPENDENT, INPUTS) and strategy.device == "meta" and may_change_device:
        return replace(strategy, device="fake-cpu")
    if failure.cause not in (INPUTS, WIDTH) and failure.built and strategy.mode == "train":
        return replace(strategy, mode="eval")  # code that runs in train mode only (a weight clamped in place, say)
    return None


def _note(failure: _Failure, widths: Widths | None = None) -> str:
    """One line saying which fallback `failure` led to, and why."""
    at = f" at width {widths[failure.width]}" if widths is not None and failure.width else ""
    if failure.cause == DATA_DEPENDENT:
        return (f"captured in eval mode: train mode{at} has data-dependent control flow"
                f"{_where(failure.exc, failure.model)}; train-only branches (LayerDrop, say) are not in the graph")
    following = _fallback(failure)
    if following is not None and following.mode != failure.strategy.mode:
        return (f"captured in eval mode: train mode{at} could not be traced: {_reason(failure.exc)}"
                f"{_where(failure.exc, failure.model)}; code that runs in train mode only is not in the graph")
    what = "tracing" if failure.built else "building"
    original = failure.exc if failure.built else (failure.exc.__cause__ or failure.exc)
    return (f"built on CPU under fake tensors (no memory): {what} on the meta device failed{at}: "
            f"{_reason(original)}{_where(original, failure.model)}")


def _capture_error(failures: list, widths: Widths) -> CaptureError:
    """The error to raise when every fallback failed: a factory failure as the factory raised it
    on the meta device, else the last tracing failure described."""
    traced = [f for f in failures if f.built]
    if not traced:
        return failures[0].exc
    last = traced[-1]  # a factory that fails only under a fallback: the trace failure that led there says more
    failures = failures[:failures.index(last) + 1]
    if last.width != "base" and last.cause in (INPUTS, OTHER):
        last.cause = WIDTH
    if any(f.built and f.cause == DEVICE and _same_line(f.exc, last.exc) for f in failures[:-1]):
        last.cause = DEVICE  # the line that failed on meta for its device fails on CPU too
    return CaptureError(_describe_failure(last, widths))


def _describe_failure(failure: _Failure, widths: Widths | None = None) -> str:
    """One line: what failed and why in words, the user's file:line and module, what to do."""
    model, exc, cause = failure.model, failure.exc, failure.cause
    name = type(model).__name__ if model is not None else "the model"
    where = _where(exc, model)
    if cause == DATA_DEPENDENT:
        modes = " in train or eval mode" if failure.strategy.mode == "eval" else ""
        loop = _is_loop(_user_frame(exc))
        what = ("the number of loop iterations depends on tensor values" if loop
                else "Python control flow depends on a tensor's value")
        return f"torch.export could not capture {name}{modes}: {what}{where}; {_DATA_ADVICE[loop]}"
    reason = _reason(exc)
    if cause == WIDTH:
        return (f"torch.export could not capture {name} at width {widths[failure.width]} although it captures "
                f"at base width {widths.base}: {reason}{where}; check that every size the factory derives "
                "from width is valid there (e.g. divisible by the number of heads), and pass inputs whose size "
                "grows with width (encoder states, say) as a function: example_inputs(width)")
    tried = " (on the meta device, and on CPU under fake tensors)" if failure.strategy.device == "fake-cpu" and cause != INPUTS else ""
    return f"torch.export could not capture {name}{tried}: {reason}{where}; {_ADVICE[cause]}"


_DATA_ADVICE = {
    True: "torch.export cannot trace a loop whose length depends on data (a MoE 'expert hit' loop, "
          "say); loop over a fixed range instead (`for e in range(num_experts)`: an expert that gets "
          "no tokens adds nothing) or use a batched form over stacked weights",
    False: "torch.export cannot trace a branch on tensor data (`if t...`, `.item()`, `.tolist()`, "
           "`.numpy()`); compute both sides and select with torch.where, or branch on shapes and "
           "Python values; --debug shows the full trace",
}
_ADVICE = {
    DEVICE: "the forward depends on the device it runs on (device-type checks, copies to a fixed "
            "device); make it work on any device, e.g. create tensors on x.device instead of a fixed one",
    UNSUPPORTED_OP: "an op without a fake (meta) kernel cannot be traced without real data; register one "
                    "with @torch.library.register_fake, or use standard torch ops",
    INPUTS: "the example inputs do not fit the model: give them the shapes and dtypes forward() expects "
            "(example_inputs() in model.py, or example_inputs= in Python)",
    OTHER: "make that code traceable by torch.export(strict=False), or run with --debug for the full trace",
}


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


def _exception_chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The first line of the error, in words where torch's own is only a name."""
    unsupported = next((e for e in _exception_chain(exc) if isinstance(e, UnsupportedOperatorException)), None)
    if unsupported is not None:
        return f"op {unsupported.func} has no fake (meta) kernel"
    return _first_line(exc)


def _user_frame(exc: BaseException):
    """The innermost frame of the user's code in the traceback (following re-raises), or None."""
    frames = []
    for link in _exception_chain(exc):  # torch often re-raises: the user's frame may sit in the cause
        frames = traceback.extract_tb(link.__traceback__) + frames
    own = [f for f in frames if not _is_library(f.filename)]
    return own[-1] if own else None


def _same_line(a: BaseException, b: BaseException) -> bool:
    frame_a, frame_b = _user_frame(a), _user_frame(b)
    return frame_a is not None and frame_b is not None and (frame_a.filename, frame_a.lineno) == (frame_b.filename, frame_b.lineno)


def _is_loop(frame) -> bool:
    line = (frame.line or "").strip() if frame is not None else ""
    return line.startswith(("for ", "async for ")) or " for " in line or ".tolist()" in line


def _where(exc: BaseException, model: nn.Module | None = None) -> str:
    """' (in module PATH (Type), at file:line: code)' for the innermost frame of the user's code."""
    frame = _user_frame(exc)
    if frame is None:
        return ""
    code = f": `{frame.line.strip()}`" if frame.line else ""
    module = _module_running(model, frame) if model is not None else ""
    return f" ({module}at {frame.filename}:{frame.lineno}{code})"


def _module_running(model: nn.Module, frame) -> str:
    """'in module PATH (Type), ' when the frame's line sits in some submodule's forward."""
    for path, module in model.named_modules():
        code = getattr(type(module).forward, "__code__", None)
        if code is None or Path(code.co_filename).resolve() != Path(frame.filename).resolve():
            continue
        last = max((line for _, _, line in code.co_lines() if line), default=code.co_firstlineno)
        if code.co_firstlineno <= frame.lineno <= last:
            return f"in module '{path or '(root)'}' ({type(module).__name__}), "
    return ""


def _is_library(filename: str) -> bool:
    path = Path(filename).resolve()
    if path.parent in _OWN_DIRS:
        return True
    return any(root in path.parents for root in _LIBRARY_DIRS) or "site-packages" in path.parts

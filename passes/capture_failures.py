"""capture_failures: what went wrong when torch.export could not capture a model, in one line.

The capture pass's diagnosis: each failed attempt is classified (data-dependent control flow, a
device problem, an op without a fake kernel, inputs that do not fit, a width the factory cannot
build), mapped to the next capture strategy worth trying, and, when none is left, described with
the user's own file:line and module and the fix that matches the cause.
"""

from __future__ import annotations

import contextlib
import re
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
)
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from .. import errors
from ..errors import CaptureError
from ..widths import Widths

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


@dataclass(frozen=True)
class Strategy:
    """Where the model is built and which mode it is traced in."""

    device: str = "meta"  # "meta" | "fake-cpu" | "cpu" (real tensors: verify, coordcheck)
    mode: str = "train"
    # "export": torch.export; "real": torch.export's draft mode on real tensors, where the example's
    # own values decide each data-dependent branch (`if mask.any()`, an expert loop over hit experts)
    tracer: str = "export"


class Failure(Exception):
    """An attempt failed; carries what the final error needs."""

    def __init__(self, exc: BaseException, model: nn.Module | None, strategy: Strategy, width: str, built: bool):
        super().__init__(str(exc))
        self.exc, self.model, self.strategy, self.width, self.built = exc, model, strategy, width, built
        self.cause = classify_failure(exc) if built else FACTORY


def classify_failure(exc: BaseException) -> str:
    """What kind of problem made torch.export fail: one of the cause constants above."""
    chain = list(exception_chain(exc))
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


def next_strategy(failure: Failure, may_change_device: bool = True) -> Strategy | None:
    """The next strategy to try after `failure`, or None when no fallback can help."""
    strategy = failure.strategy
    if failure.cause == DATA_DEPENDENT and strategy.mode == "train" and strategy.tracer == "export":
        return replace(strategy, mode="eval")
    if failure.cause == DATA_DEPENDENT and strategy.tracer == "export" and (may_change_device or strategy.device == "cpu"):
        return Strategy(device="cpu", mode="train", tracer="real")
    if failure.cause not in (DATA_DEPENDENT, INPUTS) and strategy.device == "meta" and may_change_device:
        return replace(strategy, device="fake-cpu")
    if failure.cause not in (INPUTS, WIDTH) and failure.built and strategy.mode == "train":
        return replace(strategy, mode="eval")  # code that runs in train mode only (a weight clamped in place, say)
    if failure.cause not in (DATA_DEPENDENT, INPUTS, WIDTH) and strategy.device == "fake-cpu" and may_change_device:
        # a constructor that reads tensor values, a tensor made on the CPU whatever the device: real tensors
        return replace(strategy, device="cpu")
    return None


def fallback_note(failure: Failure, widths: Widths | None = None) -> str:
    """One line saying which fallback `failure` led to, and why."""
    at = f" at width {widths[failure.width]}" if widths is not None and failure.width else ""
    if failure.cause == DATA_DEPENDENT and failure.strategy.mode == "eval":
        return (f"traced on real tensors (CPU, train mode): the model branches on tensor data{at}"
                f"{user_location(failure.exc, failure.model)}; the graph holds the branches the example inputs "
                "take, the same at every width (checked), and verification runs the realized model eagerly on them")
    if failure.cause == DATA_DEPENDENT:
        return (f"captured in eval mode: train mode{at} has data-dependent control flow"
                f"{user_location(failure.exc, failure.model)}; train-only branches (LayerDrop, say) are not in the graph")
    following = next_strategy(failure)
    if following is not None and following.mode != failure.strategy.mode:
        return (f"captured in eval mode: train mode{at} could not be traced: {_reason(failure.exc)}"
                f"{user_location(failure.exc, failure.model)}; code that runs in train mode only is not in the graph")
    what = "tracing" if failure.built else "building"
    original = failure.exc if failure.built else (failure.exc.__cause__ or failure.exc)
    if failure.strategy.device == "fake-cpu":
        return (f"built on CPU with real tensors: {what} under fake tensors failed{at}: "
                f"{_reason(original)}{user_location(original, failure.model)}")
    return (f"built on CPU under fake tensors (no memory): {what} on the meta device failed{at}: "
            f"{_reason(original)}{user_location(original, failure.model)}")


def capture_error(failures: list, widths: Widths) -> CaptureError:
    """The error to raise when every fallback failed: a factory failure as the factory raised it
    on the meta device, else the last tracing failure described."""
    # tracing on real tensors is the last resort for data-dependent control flow: where it fails
    # too, the export's own failure names the construct and its fix
    traced = [f for f in failures if f.built and f.strategy.tracer == "export"] or [f for f in failures if f.built]
    if not traced:
        return failures[0].exc
    last = traced[-1]  # a factory that fails only under a fallback: the trace failure that led there says more
    failures = failures[:failures.index(last) + 1]
    if last.width != "base" and last.cause in (INPUTS, OTHER):
        last.cause = WIDTH
    if any(f.built and f.cause == DEVICE and _same_line(f.exc, last.exc) for f in failures[:-1]):
        last.cause = DEVICE  # the line that failed on meta for its device fails on CPU too
    return CaptureError(describe_failure(last, widths))


def describe_failure(failure: Failure, widths: Widths | None = None) -> str:
    """One line: what failed and why in words, the user's file:line and module, what to do."""
    model, exc, cause = failure.model, failure.exc, failure.cause
    name = type(model).__name__ if model is not None else "the model"
    where = user_location(exc, model)
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
    tried = {"fake-cpu": " (on the meta device, and on CPU under fake tensors)",
             "cpu": " (on the meta device, on CPU under fake tensors and with real tensors)"}.get(
        failure.strategy.device, "") if cause != INPUTS and failure.width else ""
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


def exception_chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The first line of the error, in words where torch's own is only a name."""
    unsupported = next((e for e in exception_chain(exc) if isinstance(e, UnsupportedOperatorException)), None)
    if unsupported is not None:
        return f"op {unsupported.func} has no fake (meta) kernel"
    return first_line(exc)


def _user_frame(exc: BaseException):
    """The innermost frame of the user's code in the traceback (following re-raises), or None."""
    frames = []
    for link in exception_chain(exc):  # torch often re-raises: the user's frame may sit in the cause
        frames = traceback.extract_tb(link.__traceback__) + frames
    # "<string>", "<eval_with_key>": code generated at run time, no line of the user's to show
    own = [f for f in frames if not f.filename.startswith("<") and not _is_library(f.filename)]
    return own[-1] if own else None


def _same_line(a: BaseException, b: BaseException) -> bool:
    frame_a, frame_b = _user_frame(a), _user_frame(b)
    return frame_a is not None and frame_b is not None and (frame_a.filename, frame_a.lineno) == (frame_b.filename, frame_b.lineno)


def _is_loop(frame) -> bool:
    line = (frame.line or "").strip() if frame is not None else ""
    return line.startswith(("for ", "async for ")) or " for " in line or ".tolist()" in line


def user_location(exc: BaseException, model: nn.Module | None = None) -> str:
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

"""capture: build the model at every width and capture each as an FX graph.

Reads:  a `factory(width) -> nn.Module`, example inputs (a tuple of args or a dict of kwargs),
        the `Widths` (base, delta, target).
Writes: `Captures` — one `torch.export.ExportedProgram` per width name, captured with
        `torch.export.export(strict=False)` in train mode with static shapes. Models are built
        on the `meta` device, so capturing a 4096-wide model allocates no parameter memory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .. import errors
from ..errors import CaptureError
from ..widths import WIDTH_NAMES, Widths

_LIBRARY_DIRS = (Path(torch.__file__).parent.parent, Path(contextlib.__file__).parent)
_OWN_DIRS = (Path(__file__).resolve().parent, Path(errors.__file__).resolve().parent)


@dataclass
class Captures:
    widths: Widths
    programs: dict  # width name -> torch.export.ExportedProgram
    aliases: dict  # parameter FQN -> the other names of the same (tied) tensor


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


def export_model(model: nn.Module, inputs, device) -> torch.export.ExportedProgram:
    """Capture `model` in train mode; tensors the forward creates land on `device`."""
    args, kwargs = split_inputs(to_device(inputs, device))
    model.train()
    try:
        with torch.device(device), _quiet(), _no_node_stack_traces():
            return torch.export.export(model, args, kwargs, strict=False)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {first_line}{_where(exc, model)}; "
            "make that code traceable (no Python branches on tensor values, no .item(), no "
            "printing tensors) or run with --debug for the full trace"
        ) from exc


def capture(factory, inputs, widths: Widths) -> Captures:
    """Build on `meta` and export the model at base, delta and target width."""
    programs = {}
    for name in WIDTH_NAMES:
        model = build_model(factory, widths[name], device="meta")
        programs[name] = export_model(model, inputs, "meta")
    return Captures(widths=widths, programs=programs, aliases=tied_names(model))


def tied_names(model: nn.Module) -> dict:
    """First name of each tensor registered under several names -> its other names."""
    names_by_tensor = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_tensor.setdefault(id(param), []).append(name)
    return {names[0]: names[1:] for names in names_by_tensor.values() if len(names) > 1}


@contextlib.contextmanager
def _quiet():
    """torch.export logs warnings about the user's code; the error we raise says it in one line."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
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


def split_inputs(inputs):
    """Example inputs are a tuple of positional args, a dict of kwargs, or a single tensor."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _disable_kv_cache(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "use_cache", False):
        config.use_cache = False


def _where(exc: BaseException, model: nn.Module | None = None) -> str:
    """' (in module PATH (Type), at file:line: code)' for the innermost frame of the user's code."""
    frames = []
    while exc is not None:  # torch often re-raises: the user's frame may sit in the cause
        frames = traceback.extract_tb(exc.__traceback__) + frames
        exc = exc.__cause__ or exc.__context__
    own = [f for f in frames if not _is_library(f.filename)]
    if not own:
        return ""
    frame = own[-1]
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

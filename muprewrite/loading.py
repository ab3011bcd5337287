"""Loading a user's `model.py` and making example inputs for a model."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from .errors import MuRewriteError

DEFAULT_FACTORY = "make_model"


def load_model_file(spec: str, grow: str | None = None) -> tuple:
    """'path/model.py[:factory]' -> (factory, module), loaded as `python path/model.py` would.

    'hf:TYPE', 'hf:config.json' or 'hf:FOLDER' gives a Hugging Face factory (see muprewrite.hf)
    growing head sizes or, with grow="heads", head counts; its module stands in with BASE_WIDTH,
    DELTA_WIDTH, TARGET_WIDTH and example_inputs().
    """
    if spec.startswith("hf:"):
        return _hf_model(spec[3:], grow or "head_dim")
    if grow is not None:
        raise MuRewriteError(f"--grow applies to Hugging Face models (hf:TYPE or hf:config.json), not to {spec}; "
                             "drop it, or make your factory grow what it should")
    path_text, _, factory_name = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    path = Path(path_text)
    if not path.is_file():
        raise MuRewriteError(f"model file {path} not found; pass the path to a .py file defining make_model(width)")
    module = _import_file(path)
    name = factory_name or DEFAULT_FACTORY
    factory = getattr(module, name, None)
    if not callable(factory):
        defined = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and
                   getattr(v, "__module__", None) == module.__name__]
        raise MuRewriteError(
            f"{path} defines no function {name}(width); define it or pick one with {path}:NAME "
            f"(functions found: {', '.join(defined) or 'none'})"
        )
    return factory, module


def _hf_model(name: str, grow: str) -> tuple:
    """The Hugging Face factory and a module standing in for a model file: its widths (None when
    no base width keeps the scaled fields exact: --base and --target are then needed) and inputs."""
    from . import hf

    factory = hf.factory(name, grow=grow)
    module = ModuleType(f"hf:{name}")
    try:
        module.BASE_WIDTH, module.DELTA_WIDTH, module.TARGET_WIDTH = hf.widths(factory)
    except MuRewriteError:
        module.BASE_WIDTH = module.DELTA_WIDTH = module.TARGET_WIDTH = None
    module.example_inputs = lambda: hf.example_inputs(factory)
    return factory, module


def _import_file(path: Path) -> ModuleType:
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_name = f"_muprewrite_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise MuRewriteError(
            f"importing {path} failed: {type(exc).__name__}: {exc} (at {frame.filename}:{frame.lineno}); "
            "fix the error so that `python model.py` runs"
        ) from exc
    return module


def infer_example_inputs(model: nn.Module):
    """Inputs for the obvious cases: the first Embedding, Linear or Conv (in module order) reads them."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return (torch.randint(0, module.num_embeddings, (2, 8), generator=generator),)
        if isinstance(module, nn.Linear):
            return (torch.randn(2, module.in_features, generator=generator),)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            spatial = (8,) * (module.weight.dim() - 2)
            return (torch.randn(2, module.in_channels, *spatial, generator=generator),)
    raise MuRewriteError(
        f"cannot guess example inputs for {type(model).__name__}; define example_inputs() in the "
        "model file (or pass example_inputs=...) returning a tuple of args or a dict of kwargs"
    )

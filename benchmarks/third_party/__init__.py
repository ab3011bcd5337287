"""Third-party models for benchmarks/third_party.py: one module per PyPI package, each with a `SPECS`
dict {model name: Spec}. The package itself is imported only inside `make_model`, so this registry
imports with torch alone; `REGISTRY` is every model of every module."""
from __future__ import annotations

import importlib

MODULES = ("x_transformers_models", "attention_models", "moe_models", "recurrent_models", "mixer_models",
           "bio_models", "tabular_models", "graph_models", "audio_models", "perceiver_models", "ngpt_models",
           "torch_models")


def _registry() -> dict:
    registry = {}
    for name in MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        for model, spec in module.SPECS.items():
            assert model not in registry, model
            registry[model] = spec
    return registry


REGISTRY = _registry()

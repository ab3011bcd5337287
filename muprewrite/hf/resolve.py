"""Resolving what `factory` is given (a model type, a config.json, a folder, a config) into a target."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MuRewriteError
from .configs import _Source, _attr, _build_config, _first_line, _sub_config_names, model_types
from .inputs import _placeholder_ids, _valid_token_ids
from .patterns import DROPPED_KEYS, TASKS, VOCAB
from .small import _small_spec


def _sources(config_or_type, grow: str, transformers):
    """Functions making the targets to try: the one given; for a bare model type its small config,
    then variants for models that refuse it (no grouped key/value heads, the default depth)."""
    if not (isinstance(config_or_type, str) and config_or_type in transformers.CONFIG_MAPPING and
            not _looks_like_path(config_or_type)):
        yield lambda: _resolve(config_or_type, grow, transformers)
        return
    for grouped, shallow in ((True, True), (False, True), (True, False), (False, False)):
        yield lambda grouped=grouped, shallow=shallow: _bare_source(config_or_type, grow, transformers, grouped,
                                                                    shallow)


def _resolve(config_or_type, grow: str, transformers) -> _Source:
    """A given target: a PretrainedConfig, or a config.json (or its folder)."""
    if isinstance(config_or_type, transformers.PretrainedConfig):
        return _real_source(type(config_or_type), config_or_type.to_dict(), config_or_type.model_type, "config")
    if isinstance(config_or_type, Path) or (isinstance(config_or_type, str) and _looks_like_path(config_or_type)):
        return _file_source(Path(config_or_type), transformers)
    raise MuRewriteError(
        f"unknown Hugging Face model {config_or_type!r}: pass a model type transformers knows (e.g. llama, qwen3, "
        "mixtral, gemma2, gpt2, bert, t5, vit), a config.json, or a folder holding one")


def _looks_like_path(text: str) -> bool:
    """A config.json, a path, or a folder holding a config.json (a model type otherwise)."""
    return text.endswith(".json") or "/" in text or (Path(text) / "config.json").is_file()


def _file_source(path: Path, transformers) -> _Source:
    """A config.json (or a folder's) read as the target; its model_type picks the config class."""
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise MuRewriteError(f"Hugging Face config {file} not found; pass a config.json, a folder holding one, "
                             "or a model type such as llama")
    try:
        values = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MuRewriteError(f"{file} is not a JSON config ({exc}); pass a transformers config.json") from exc
    model_type = values.get("model_type") if isinstance(values, dict) else None
    if model_type not in transformers.CONFIG_MAPPING:
        raise MuRewriteError(f"{file} has model_type {model_type!r}, which transformers "
                             f"{transformers.__version__} does not know; upgrade transformers or fix model_type")
    return _real_source(transformers.CONFIG_MAPPING[model_type], values, model_type, f"file:{file}")


def _real_source(config_class, values: dict, model_type: str, origin: str) -> _Source:
    """A given config, kept as it is but for loading-only keys (quantization, dtype: the model is built
    in float32 with random weights) and token ids outside its vocabulary (a cut vocabulary)."""
    spec = {k: v for k, v in values.items() if k not in DROPPED_KEYS + ("model_type",)}
    target = _build_config(config_class, spec, model_type, "the given config")
    spec, remapped = _valid_token_ids(spec, target)
    adjusted = {"dropped": [k for k in DROPPED_KEYS[:3] if values.get(k) is not None]}
    adjusted = {k: v for k, v in {**adjusted, "token_ids": remapped}.items() if v}
    return _Source(config_class, spec, model_type, origin, adjusted)


def _bare_source(model_type: str, grow: str, transformers, grouped: bool = True, shallow: bool = True) -> _Source:
    """A model type's default config, made small (see _small_spec)."""
    try:
        default = transformers.AutoConfig.for_model(model_type)
    except Exception as exc:
        raise MuRewriteError(f"transformers cannot build the default config of {model_type!r}: "
                             f"{_first_line(exc)}; pass a config.json instead") from exc
    spec = _small_spec(default, grow, grouped, shallow)
    spec, _ = _valid_token_ids(spec, default, VOCAB)
    return _Source(type(default), _placeholder_ids(spec, default, VOCAB), model_type, "type", {})


def _task(model_type: str, config, task: str | None, transformers) -> str:
    """The task: given, else seq2seq for encoder-decoder configs, else masked LM, causal LM, seq2seq, image."""
    available = [name for name in TASKS if model_type in model_types(name)]
    if task is not None:
        if task not in TASKS:
            raise MuRewriteError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if task not in available:
            raise MuRewriteError(f"transformers has no {task} model for {model_type!r}; "
                                 f"it has: {', '.join(available) or 'none of ' + ', '.join(TASKS)}")
        return task
    if not available:
        raise MuRewriteError(f"{model_type!r} has no causal LM, masked LM, seq2seq LM or image classification model "
                             "in transformers; muprewrite.hf builds only those (use your own factory)")
    if getattr(config, "is_encoder_decoder", False) and "seq2seq-lm" in available:
        return "seq2seq-lm"
    return next(name for name in ("masked-lm", "causal-lm", "seq2seq-lm", "image-classification") if name in available)


def _narrowed(source: _Source, model_class) -> _Source:
    """The sub-config the model class takes, when it takes one part of a composite config (e.g.
    Llama4ForCausalLM takes Llama4Config's text_config), as AutoModel.from_config does."""
    config_class = getattr(model_class, "config_class", None)
    target = _build_config(source.config_class, source.spec, source.model_type, "the target")
    if not isinstance(config_class, type) or isinstance(target, config_class):
        return source
    for name in _sub_config_names(target):
        sub = _attr(target, name)
        if isinstance(sub, config_class):
            spec = source.spec.get(name) if isinstance(source.spec.get(name), dict) else sub.to_dict()
            spec = {k: v for k, v in spec.items() if k not in DROPPED_KEYS + ("model_type",)}
            spec, _ = _valid_token_ids(spec, sub)
            return _Source(type(sub), spec, source.model_type, f"{source.origin} ({name})", source.adjusted)
    return source


def _model_class(model_type: str, task: str, transformers):
    """The transformers class the task's auto mapping names for the model type (the first of several)."""
    from transformers.models.auto import modeling_auto

    name = getattr(modeling_auto, TASKS[task])[model_type]
    name = name[0] if isinstance(name, (tuple, list)) else name
    return getattr(transformers, name)

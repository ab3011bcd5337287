"""Reading and building transformers configs and models: attributes, aliases, sub-configs, tasks."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import re
from dataclasses import dataclass
from fractions import Fraction

from ..errors import MuRewriteError
from .patterns import KV_HEADS, MULTIPLIER_UNIT, TASKS, WIDTH_MULTIPLIER, WIDTH_PATTERNS


def model_types(task: str | None = None) -> dict:
    """{model type: task} for every type of the four auto mappings (or of one task's)."""
    from transformers.models.auto import modeling_auto

    types = {}
    for name, mapping in TASKS.items():
        if task in (None, name):
            for model_type in getattr(modeling_auto, mapping):
                types.setdefault(model_type, name)
    return types


@dataclass
class _Source:
    config_class: type
    spec: dict  # explicit config fields (sub-configs as dicts); fields left out keep their defaults
    model_type: str
    origin: str
    adjusted: dict


def _kind(name: str):
    """The key of WIDTH_PATTERNS a field name matches, or None."""
    return next((kind for kind, pattern in WIDTH_PATTERNS.items() if re.fullmatch(pattern, name)), None)


def _kind_of(names: set):
    """The width kind of a field known by these names; a head count or head size wins over the rest."""
    kinds = {_kind(n) for n in names} - {None}
    for kind in ("heads", "head_size", "hidden", "intermediate", "rank"):
        if kind in kinds:
            return kind
    return None


def _names(config, name: str) -> set:
    """A field's name and its aliases in the config class's attribute_map."""
    return {name} | {alias for alias, real in getattr(config, "attribute_map", {}).items() if real == name}


def _matches(names: set, pattern: str) -> bool:
    """Whether any of a field's names fully matches the pattern."""
    return any(re.fullmatch(pattern, n) for n in names)


def _own_fields(config):
    """(name, value) of a config's own fields, sub-configs left out."""
    subs = _sub_config_names(config)
    return [(k, _attr(config, k, v)) for k, v in config.to_dict().items() if k not in subs and k != "model_type"]


def _sub_config_names(config) -> list:
    """The names of a config's sub-configs that are set (text_config, encoder, ...)."""
    return [name for name in getattr(config, "sub_configs", {}) if _is_config(_attr(config, name))]


def _is_config(value) -> bool:
    """Whether the value is a transformers config."""
    from transformers import PretrainedConfig

    return isinstance(value, PretrainedConfig)


def _is_derived(config_class, name: str, spec: dict) -> bool:
    """A field the config computes from others when it is not given (class default None or 'auto',
    or not a declared field at all, like Swin's hidden_size)."""
    if name in spec or not dataclasses.is_dataclass(config_class):
        return False
    if not _declared(config_class, name):
        return True
    default = next(f.default for f in dataclasses.fields(config_class) if f.name == name)
    return default is None or (isinstance(default, str) and default == "auto")


def _declared(config_class, name: str) -> bool:
    """Whether the name is a declared field of the config class (every name, for a non-dataclass)."""
    return not dataclasses.is_dataclass(config_class) or name in {f.name for f in dataclasses.fields(config_class)}


def _primary_hidden(config):
    """(field name, value) of a config node's hidden size: `hidden_size` (or what it aliases), else
    the widest entry of a per-stage list (hidden_sizes), else the first hidden-like field; or None."""
    value = _attr(config, "hidden_size")
    if _is_int(value):
        return _real_name(config, "hidden_size"), value
    sizes = [(n, v) for n, v in _own_fields(config) if _kind(n) == "hidden" and _is_size(v)]
    for name, value in sizes:
        if isinstance(value, (list, tuple)):
            return name, max(value)
    return next(((n, v) for n, v in sizes if _is_int(v)), None)


def _width_multiplier(config):
    """((field,), width at the target) of a width multiplier of the config's own (MobileNet's
    depth_multiplier, EfficientNet's width_coefficient): the model rounds each channel count it
    computes from it, so no channel field is scaled; None when there is none, or when the config
    has a hidden_size (then that is the width, and the multiplier means something else)."""
    if _is_int(_attr(config, "hidden_size")):
        return None
    name = next((n for n, v in _own_fields(config) if re.fullmatch(WIDTH_MULTIPLIER, n)), None)
    value = None if name is None else _attr(config, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return None
    return (name,), max(1, round(MULTIPLIER_UNIT * value))


def _hidden_path(config, task: str):
    """(path, value) of the width: the config's own hidden size, else its text (for images: vision)
    sub-config's, else any sub-config's."""
    own = _primary_hidden(config)
    if own is not None:
        return (own[0],), own[1]
    preferred = ["vision_config"] if task == "image-classification" else ["text_config", "decoder"]
    for name in preferred + _sub_config_names(config):
        sub = _attr(config, name)
        if _is_config(sub) and _primary_hidden(sub) is not None:
            field, value = _primary_hidden(sub)
            return (name, field), value
    return None, None


def _primary_heads(config):
    """The query head count of a config node (num_attention_heads or what stands for it), or None."""
    heads = _attr(config, "num_attention_heads")
    if _is_int(heads):
        return heads
    for name, value in _own_fields(config):
        if _kind(name) == "heads" and not re.fullmatch(KV_HEADS, name) and isinstance(value, int):
            return value
    return None


def _attr(config, name: str, default=None):
    """getattr that also survives configs whose global attributes refuse to be read (per-layer configs)."""
    try:
        return getattr(config, name, default)
    except Exception:  # e.g. AmbiguousGlobalPerLayerAttributeError
        return default


def _real_name(config, name: str) -> str:
    """The field an attribute_map alias stands for (the name itself when it is no alias)."""
    return getattr(config, "attribute_map", {}).get(name, name)


def _text_config(config):
    """The config's text part (the config itself when it has none)."""
    try:
        return config.get_text_config()
    except Exception:  # some composite configs have no text part
        return config


def _set_path(spec: dict, path: tuple, value) -> None:
    """spec[a][b] = value, creating sub-config dicts on the way (an absent one starts empty: its defaults)."""
    node = spec
    for name in path[:-1]:
        if not isinstance(node.get(name), dict):
            sub = node.get(name)
            node[name] = sub.to_dict() if _is_config(sub) else {}  # an absent sub-config: its defaults
        node = node[name]
    node[path[-1]] = value


def _flat_keys(values: dict, prefix: str = "") -> set:
    """Every key of a nested dict, dotted ('text_config.hidden_size')."""
    keys = set()
    for key, value in values.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _flat_keys(value, prefix + key + ".")
    return keys


def _with_fixed(spec: dict, fixed: dict, config_class) -> dict:
    """The spec with `fixed` fields (aliases resolved, dotted keys into sub-configs) held at their values."""
    spec = copy.deepcopy(spec)
    for key, value in fixed.items():
        _set_path(spec, _real_path(config_class, key), value)
    return spec


def _real_path(config_class, key: str) -> tuple:
    """'n_head' or 'num_attention_heads' -> the real field name (attribute_map); dotted keys are paths."""
    path = tuple(key.split("."))
    return (getattr(config_class, "attribute_map", {}).get(path[0], path[0]),) + path[1:]


def _map_values(value, function):
    """function(value), or function on each number of a list (other entries kept)."""
    if isinstance(value, (list, tuple)):
        return [function(v) if _is_number(v) else v for v in value]
    return function(value) if _is_number(value) else value


def _round_to(value, step: int) -> int:
    """The multiple of `step` nearest to value."""
    return int(round(Fraction(value) / step)) * step


def _is_number(value) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_size(value) -> bool:
    """A positive number, or a non-empty list of positive ints."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    return _is_number(value) and value > 0


def _is_int(value) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_or_ints(value) -> bool:
    """An int or a list of ints."""
    if isinstance(value, list):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def _int_values(value) -> list:
    """The ints of a value or of a list."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _all_even(value) -> bool:
    """Whether the value (or every entry) is an even int."""
    values = _int_values(value)
    return bool(values) and all(v % 2 == 0 for v in values)


def _build_config(config_class, spec: dict, model_type: str, what: str, step: int | None = None):
    """config_class(**spec); a config the class refuses is a one-line MuRewriteError."""
    try:
        return config_class(**copy.deepcopy(spec))
    except Exception as exc:
        hint = f"; widths that are multiples of {step} keep every scaled field exact" if step else \
            "; fix the config (or the fixed= values)"
        raise MuRewriteError(f"{model_type} config at {what} is invalid: {_first_line(exc)}{hint}") from exc


def _build_model(model_class, config, model_type: str, width: int, step: int):
    """model_class(config); a model that cannot be built is a one-line MuRewriteError."""
    try:
        return model_class(config)
    except Exception as exc:
        raise MuRewriteError(f"building {model_class.__name__} ({model_type}) at width {width} failed: "
                             f"{_first_line(exc)}; widths that are multiples of {step} keep every scaled field "
                             "exact") from exc


def _first_line(exc: Exception) -> str:
    """'TypeName: first line of the message'."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _transformers():
    """transformers, imported (a one-line error when it is not installed), its logging quiet."""
    if importlib.util.find_spec("transformers") is None:
        raise MuRewriteError("Hugging Face models need transformers: pip install 'muprewrite[hf]'")
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers

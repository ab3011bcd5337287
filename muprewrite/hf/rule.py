"""The general width rule: which config fields scale with width, and the widths it suggests."""

from __future__ import annotations

import copy
import functools
import itertools
import math
import re
from dataclasses import dataclass
from fractions import Fraction


from ..errors import MuRewriteError
from ..passes.capture import build_model
from .configs import (
    _Source, _all_even, _attr, _flat_keys, _hidden_path, _int_values, _is_config, _is_derived, _is_int, _is_size,
    _kind_of, _map_values, _names, _own_fields, _primary_hidden, _real_path, _round_to, _set_path, _sub_config_names,
    _width_multiplier,
)
from .patterns import FEATURE_SIZE, MIN_BASE, MIN_HEAD_SIZE, MULTIPLIER_STEP, PROBE_GROWTH


@dataclass
class Field:
    """One width-proportional config field: where it lives, its value at the target, how it rounds."""

    path: tuple  # ("text_config", "hidden_size")
    kind: str  # a key of WIDTH_PATTERNS
    value: object  # int, float or list of ints, at the target width
    even: bool = False  # a head size that is even at the target stays even (rotary embeddings)

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass
class WidthRule:
    """What a factory scales with width, and the widths it suggests."""

    model_type: str
    model_class: str
    task: str
    grow: str
    target_hidden: int
    hidden_field: str
    fields: list
    fixed: dict
    widen: dict | None
    adjusted: dict
    width_multiple: int
    source: str
    attention_nodes: list  # (path, hidden, heads, head size derived) of each config node with heads
    derived: list  # width-proportional fields the config computes from the scaled ones
    accepts: object = None  # width -> whether the config class accepts the config at that width
    consistent: object = None  # base -> whether the model has one structure at base, 2 x base and the target

    def hidden_at(self, width: int):
        """The value of the width field in the config at `width`: the width itself, or for a
        width multiplier the multiplier at that width."""
        field = next((f for f in self.fields if f.name == self.hidden_field and f.kind == "multiplier"), None)
        return width if field is None else _scale(field.value, Fraction(width, self.target_hidden), False)

    @functools.cached_property
    def suggested_base(self) -> int | None:
        """The base width `hf.widths` suggests (None: there is none), found once."""
        return _base_width(self)

    def widths(self) -> tuple:
        """(base, delta, target): the suggested base, twice it, the target."""
        base = self.suggested_base
        if base is None:
            raise MuRewriteError(
                f"no base width below {self.target_hidden // 2} keeps every scaled field of {self.model_type} a "
                f"positive integer (widths must be multiples of {self.width_multiple}); pass --base and --target yourself")
        return base, 2 * base, self.target_hidden

    def as_dict(self) -> dict:
        """The JSON-serialisable account shown in the report (`make_model.width_rule`). The suggested
        widths are not in it: finding them builds the model three times (`suggested_base`)."""
        return {"model_type": self.model_type, "model_class": self.model_class, "task": self.task,
                "source": self.source, "grow": self.grow, "target_hidden": self.target_hidden,
                "hidden_field": self.hidden_field, "scaled": {f.name: f.value for f in self.fields},
                "derived": self.derived,
                "widen": self.widen, "fixed_overrides": self.fixed, "adjusted": self.adjusted,
                "width_multiple": self.width_multiple}


def _width_rule(source: _Source, spec: dict, target, grow: str, fixed: dict, widen, task, model_class) -> WidthRule:
    """The fields to scale (the general rule, or `widen`), the hidden size they scale with, the width step."""
    multiplier = None if widen else _width_multiplier(target)
    hidden_path, target_hidden = _hidden_path(target, task) if multiplier is None else multiplier
    if hidden_path is None:
        raise MuRewriteError(f"{source.model_type}: no hidden size found in its config (hidden_size, d_model, "
                             "n_embd, ...); pass widen={field: multiple of the width} from Python")
    hidden_name = ".".join(hidden_path)
    if hidden_name in _flat_keys(fixed):
        raise MuRewriteError(f"{hidden_name} is the width; it cannot be fixed (drop it from fixed=)")
    if widen:
        widen = {".".join(_real_path(source.config_class, k)): m for k, m in widen.items()}
        fields = [Field(tuple(k.split(".")), "widen", round(m * target_hidden)) for k, m in widen.items()]
    elif multiplier is not None:  # the model multiplies its per-stage channel lists itself: they stay;
        # a single size beside the multiplier is the model's at that multiplier (EfficientNet's hidden_dim)
        fields = [Field(hidden_path, "multiplier", float(_attr(target, hidden_path[0])))] + [
            f for f in _proportional_fields(target, spec, grow)
            if not isinstance(f.value, (list, tuple)) and f.name not in _flat_keys(fixed)]
    else:
        fields = [f for f in _proportional_fields(target, spec, grow) if f.name not in _flat_keys(fixed)]
    if hidden_name not in {f.name for f in fields} and not _is_derived_path(target, spec, hidden_path):
        fields.insert(0, Field(hidden_path, "hidden", target_hidden))
    adjusted = dict(source.adjusted)
    if source.origin == "type":
        adjusted["small_config"] = _unscaled(source.spec, {f.path for f in fields})
    rule = WidthRule(source.model_type, model_class.__name__, task, grow, target_hidden, hidden_name, fields, fixed,
                     widen, adjusted, 1, source.origin, _attention_nodes(target, spec, grow),
                     _derived_sizes(target, spec, grow))
    rule.width_multiple = math.lcm(MULTIPLIER_STEP, _width_multiple(rule)) if multiplier is not None else \
        _width_multiple(rule)
    rule.accepts = lambda width: _accepts(source.config_class, _spec_at(spec, rule, width))
    rule.consistent = _structure_probe(source.config_class, model_class, spec, rule)
    return rule


def _accepts(config_class, spec: dict) -> bool:
    """Whether the config class accepts these values (its validators check e.g. hidden % heads)."""
    try:
        config_class(**copy.deepcopy(spec))
    except Exception:  # any validation failure: this width is not a usable one
        return False
    return True


def _structure_probe(config_class, model_class, spec: dict, rule: WidthRule):
    """base -> whether the model built on meta at base, delta = 2 x base and the target has the same
    parameters and buffers, each dim equal at all three or different at base and delta (a size the
    model rounds, like BiT's make_div(channels / 4) with its floor of 8, can coincide at base and delta
    and still grow to the target); shapes are built once per width."""
    shapes = {}

    def at(width: int):
        if width not in shapes:
            shapes[width] = _shapes(config_class, model_class, _spec_at(spec, rule, width))
        return shapes[width]

    return lambda base: _same_structure(at(base), at(2 * base), at(rule.target_hidden))


def _shapes(config_class, model_class, spec: dict):
    """{name: shape} of the parameters and buffers of the model built on meta, or None if it does not build."""
    try:
        model = build_model(lambda _: model_class(config_class(**copy.deepcopy(spec))), 0, "meta")
    except Exception:  # any failure: the width is not usable (the factory reports it when called)
        return None
    return {name: tuple(t.shape) for name, t in itertools.chain(model.named_parameters(), model.named_buffers())}


def _same_structure(base, delta, target) -> bool:
    """Same tensors at the three widths, and no dim equal at base and delta but different at the target."""
    if base is None or delta is None or target is None or not base.keys() == delta.keys() == target.keys():
        return False
    return all(len(base[n]) == len(delta[n]) == len(target[n]) and
               all(b != d or b == t for b, d, t in zip(base[n], delta[n], target[n])) for n in base)


def _unscaled(spec: dict, scaled: set, prefix=()) -> dict:
    """A bare type's small settings that do not change with width (layers, vocabulary, heads, ...)."""
    kept = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            kept[key] = _unscaled(value, scaled, prefix + (key,))
        elif prefix + (key,) not in scaled and key != "model_type":
            kept[key] = value
    return kept


def _is_derived_path(config, spec: dict, path: tuple) -> bool:
    """_is_derived for a dotted path into sub-configs."""
    for name in path[:-1]:
        config, spec = _attr(config, name), spec.get(name) if isinstance(spec.get(name), dict) else {}
    return _is_derived(type(config), path[-1], spec)


def _derived_sizes(config, spec: dict, grow: str, prefix=()) -> list:
    """Width-proportional fields the config computes itself from the scaled ones (llama's head_dim)."""
    kinds = {"hidden", "intermediate", "rank", "head_size" if grow == "head_dim" else "heads"}
    names = [".".join(prefix + (n,)) for n, v in _own_fields(config)
             if _kind_of(_names(config, n)) in kinds and _is_size(v) and _is_derived(type(config), n, spec)]
    for name in _sub_config_names(config):
        sub_spec = spec.get(name) if isinstance(spec.get(name), dict) else {}
        names += _derived_sizes(_attr(config, name), sub_spec, grow, prefix + (name,))
    return names


def _proportional_fields(config, spec: dict, grow: str, prefix=()) -> list:
    """Every field of `config` (and its sub-configs) that grows with width under `grow`."""
    scaled_kinds = {"hidden", "intermediate", "rank", "head_size" if grow == "head_dim" else "heads"}
    fields = []
    for name, value in _own_fields(config):
        kind = _kind_of(_names(config, name)) or _tied_kind(config, name, value)
        if kind in scaled_kinds and _is_size(value) and not _is_derived(type(config), name, spec):
            even = kind == "head_size" and _all_even(value)
            fields.append(Field(prefix + (name,), kind, value, even))
    for name in _sub_config_names(config):
        sub = _attr(config, name)
        if _is_config(sub):
            fields += _proportional_fields(sub, spec.get(name) if isinstance(spec.get(name), dict) else {}, grow,
                                           prefix + (name,))
    return fields


def _tied_kind(config, name: str, value):
    """"hidden" for a feature size equal to its config node's hidden size at the target: the model may
    rely on the two being equal (LUKE skips its entity projection), so it scales with the width and
    stays equal to the hidden size at every width; else None (other fields are fixed)."""
    hidden = _primary_hidden(config)
    if hidden is None or not _is_int(hidden[1]) or name == hidden[0] or not re.fullmatch(FEATURE_SIZE, name):
        return None
    return "hidden" if _is_int(value) and value == hidden[1] else None


def _attention_nodes(config, spec: dict, grow: str, prefix=()) -> list:
    """(path, hidden size, head count, head size derived as hidden / heads) of every config node with
    attention heads, when head counts stay fixed (grow="head_dim")."""
    if grow != "head_dim":
        return []
    pairs = []
    heads, hidden = _attr(config, "num_attention_heads"), _attr(config, "hidden_size")
    if isinstance(heads, int) and heads > 0 and isinstance(hidden, int):
        pairs.append((prefix, hidden, heads, not _has_explicit_head_size(config, spec)))
    for name in _sub_config_names(config):
        sub = _attr(config, name)
        if _is_config(sub):
            sub_spec = spec.get(name) if isinstance(spec.get(name), dict) else {}
            pairs += _attention_nodes(sub, sub_spec, grow, prefix + (name,))
    return pairs


def _has_explicit_head_size(config, spec: dict) -> bool:
    """Whether the config node sets a head size itself (else it is hidden / heads)."""
    return any(_kind_of(_names(config, n)) == "head_size" and _is_size(v) and not _is_derived(type(config), n, spec)
               for n, v in _own_fields(config))


def _width_multiple(rule: WidthRule) -> int:
    """The smallest step such that at every multiple of it each scaled field is exact (and even where
    it must be), and hidden sizes stay divisible by their head counts."""
    step = 1
    for field in rule.fields:
        for value in _int_values(field.value):
            step = math.lcm(step, _exact_step(value, rule.target_hidden, 2 if field.even else 1))
    for _, hidden, heads, derived in rule.attention_nodes:
        if derived:  # head size = hidden / heads, even for rotary embeddings
            step = math.lcm(step, _exact_step(hidden, rule.target_hidden, 2 * heads))
    return step


def _exact_step(value: int, target: int, divisor: int) -> int:
    """Smallest width step g with value * g / target a multiple of `divisor`."""
    return divisor * target // math.gcd(value, divisor * target)


def _base_width(rule: WidthRule):
    """Bare type: target / 4. Real config: the smallest multiple of the width step that is at least
    MIN_BASE wide with heads of at least MIN_HEAD_SIZE (else the smallest exact one), up to target / 2.
    Where the model's structure differs between that base, its delta and the target (see
    _structure_probe), the next usable widths are tried, each at least PROBE_GROWTH x the last one
    tried; when none is consistent, the first (muprewrite then names the dim that differs)."""
    candidates = range(rule.width_multiple, rule.target_hidden // 2 + 1, rule.width_multiple)
    preferred = [rule.target_hidden // 4] if rule.source == "type" and not rule.widen else []
    strict = [w for w in candidates if w >= MIN_BASE and _sizes_at(rule, w, MIN_HEAD_SIZE)]
    relaxed = [w for w in candidates if _sizes_at(rule, w, 1)]
    ordered = dict.fromkeys([w for w in preferred if w in relaxed] + strict + relaxed)
    usable = (w for w in ordered if rule.accepts(w) and rule.accepts(2 * w))
    first = next(usable, None)
    if first is None or rule.consistent is None or rule.consistent(first):
        return first
    tried = first
    for width in usable:
        if width >= tried * PROBE_GROWTH:
            tried = width
            if rule.consistent(width):
                return width
    return first


def _sizes_at(rule: WidthRule, width: int, min_head: int) -> bool:
    """Whether at `width` every scaled field is at least 1 and every head size at least `min_head`."""
    ratio = Fraction(width, rule.target_hidden)
    for field in rule.fields:
        least = min_head if field.kind == "head_size" else 1
        if any(value * ratio < least for value in _int_values(field.value)):
            return False
    return all(hidden * ratio / heads >= min_head for _, hidden, heads, derived in rule.attention_nodes if derived)


def _spec_at(spec: dict, rule: WidthRule, width: int) -> dict:
    """The explicit config fields of the model at `width`."""
    ratio = Fraction(width, rule.target_hidden)
    values = copy.deepcopy(spec)
    for field in rule.fields:
        if field.kind == "widen":
            new = round(rule.widen[field.name] * width)
        else:
            new = _map_values(field.value, lambda v: _scale(v, ratio, field.even))
        _set_path(values, field.path, width if field.name == rule.hidden_field and _is_int(new) else new)
    return values


def _scale(value, ratio: Fraction, even: bool):
    """value x ratio, rounded to an integer (an even one if `even`), at least 1 (2)."""
    if isinstance(value, float):
        return float(value * ratio)
    step = 2 if even else 1
    return max(step, _round_to(value * ratio, step))

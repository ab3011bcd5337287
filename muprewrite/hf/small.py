"""A bare model type's default config made small (few layers, heads, experts; a small vocabulary)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from .configs import (
    _attr, _declared, _is_derived, _is_int, _is_int_or_ints, _is_size, _kind, _kind_of, _map_values, _matches,
    _names, _own_fields, _primary_heads, _primary_hidden, _real_name, _round_to, _sub_config_names,
    _width_multiplier,
)
from .patterns import (
    BASE_WIDTH, DROPPED_KEYS, EXPERTS, FEATURE_SIZE, GROUPS, HEAD_SIZE_STEP, KV_HEADS, LAYER_INDICES, LAYER_INTERVAL,
    LAYER_SUBSET, POSITION_SHAPE, POSITIONS, ROTARY_FRACTION, SEQUENCE_LENGTH, SHARED_EXPERTS, SIZE_STEP,
    SMALL_EXPERTS, SMALL_GROUPED_HEADS, SMALL_HEADS, SMALL_HIDDEN, SMALL_IMAGE, SMALL_LAYERS, SMALL_PATCH,
    SMALL_POSITIONS, SMALL_TOP_K, SMALL_WINDOW, TOKENS_PER_IMAGE, TOP_K, VOCAB,
)


@dataclass
class _Shrink:
    """How one config node is made small: its default shape, and what to shrink it to."""

    depth: int | None  # the default number of layers (per-layer lists have this length)
    staged: bool  # depth comes in per-stage lists (`depths`): keep the stage count and its lists
    hidden_name: str | None
    ratio: Fraction  # hidden-like sizes: 256 / default hidden
    head_ratio: Fraction  # head sizes: so that heads x head size keeps its ratio to the hidden size
    heads: int  # query heads of the small config
    kv_heads: int  # key/value heads of the small config
    vision: bool  # the config has an image size
    grow: str
    shallow: bool = True  # cut the depth to SMALL_LAYERS (off when the config refuses a shorter stack)
    hidden: int | None = None  # the default hidden size (an int; None for per-stage sizes)
    rotary: float = 1.0  # the fraction of a head that rotary embeddings rotate (partial_rotary_factor)
    positions: int | None = None  # the default number of positions (max_position_embeddings, ...)
    multiplied: bool = False  # the model multiplies its channel counts by a width multiplier of the config


def _small_spec(config, grow: str, grouped: bool = True, shallow: bool = True) -> dict:
    """Overrides of a default config that make it small and fast: 2 layers, a small vocabulary,
    target hidden 256 with few heads (grouped key/value heads where the model groups queries and
    `grouped`), few experts, short positions, 32-pixel images. The default's shape is kept where the
    model depends on it: a rotary part of a head of at least HEAD_SIZE_STEP, feature sizes equal to
    the hidden size or apart from it as in the default, factored positions that multiply to the
    example sequence length."""
    shrink = _shrink(config, grow, grouped, shallow)
    spec = {}
    for name, value in _own_fields(config):
        if isinstance(value, bool) or _left_to_config(config, name, value):
            continue
        small = _small_value(type(config), name, value, shrink)
        small = _per_layer(name, small if small is not None else value, shrink)
        if small is not None and small != value:
            spec[name] = small
    spec.update(_filled_in(config, spec, shrink))
    for name in _sub_config_names(config):
        sub = _attr(config, name)
        spec[name] = {"model_type": sub.model_type, **_small_spec(sub, grow, grouped, shallow)}
    spec.update(_tokens_per_image(config, spec))
    return spec


def _tokens_per_image(config, spec: dict) -> dict:
    """Image token counts (`mm_tokens_per_image`, ...) shrunk with the image's patches per side: a
    projector pooling 64 x 64 patches into 16 x 16 tokens pools the small image's 4 x 4 patches
    into 1 x 1; never more tokens than patches, and a square count pools whole patches."""
    vision = _attr(config, "vision_config")
    small = spec.get("vision_config", {})
    sides = [_patch_side(_attr(vision, "image_size"), _attr(vision, "patch_size")),
             _patch_side(small.get("image_size", _attr(vision, "image_size")),
                         small.get("patch_size", _attr(vision, "patch_size")))] if vision is not None else [None]
    if None in sides or sides[0] == sides[1]:
        return {}
    shrunk = {}
    for name, value in _own_fields(config):
        if re.fullmatch(TOKENS_PER_IMAGE, name) and _is_int(value) and value > 0:
            side = math.isqrt(value)
            if side * side == value:  # pooled to a square: a whole number of patches per token
                wanted = min(max(1, round(side * sides[1] / sides[0])), sides[1])
                shrunk[name] = max(d for d in range(1, wanted + 1) if sides[1] % d == 0) ** 2
            else:
                shrunk[name] = max(1, min(round(value * (sides[1] / sides[0]) ** 2), sides[1] ** 2))
    return shrunk


def _patch_side(image_size, patch_size):
    """Patches along one side of a square image, or None."""
    size = image_size[0] if isinstance(image_size, (list, tuple)) and image_size else image_size
    patch = patch_size[0] if isinstance(patch_size, (list, tuple)) and patch_size else patch_size
    return size // patch if _is_int(size) and _is_int(patch) and patch > 0 else None


def _shrink(config, grow: str, grouped: bool, shallow: bool) -> _Shrink:
    """What a default config node shrinks to: ratios for its sizes, its small head counts."""
    name, hidden = _primary_hidden(config) or (None, None)
    ratio = Fraction(SMALL_HIDDEN, hidden) if hidden else Fraction(1)
    if any(_kind(n) == "heads" and isinstance(v, (list, tuple)) for n, v in _own_fields(config)):
        ratio = Fraction(2) ** round(math.log2(ratio))  # per-stage sizes stay divisible by per-stage heads
    grouped = grouped and _groups_queries(config)
    heads, kv_heads = SMALL_GROUPED_HEADS[grow] if grouped else (SMALL_HEADS[grow],) * 2
    default_heads = _primary_heads(config)
    head_ratio = ratio * Fraction(default_heads, heads) if default_heads else ratio
    staged = any(isinstance(_attr(config, n), (list, tuple)) for n in ("depths", "depth"))
    return _Shrink(_depth(config), staged, name, ratio, head_ratio, heads, kv_heads,
                   _attr(config, "image_size") is not None, grow, shallow, hidden if _is_int(hidden) else None,
                   _rotary_fraction(config), _positions(config), _width_multiplier(config) is not None)


def _rotary_fraction(config) -> float:
    """The smallest fraction of a head that rotary embeddings rotate (partial_rotary_factor, top level or
    in rope_parameters, per layer type too); 1 when the config says nothing."""
    fractions = [v for n, v in _own_fields(config) if re.fullmatch(ROTARY_FRACTION, n)]
    fractions += _rope_values(_attr(config, "rope_parameters"))
    fractions = [f for f in fractions if isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1]
    return min(fractions, default=1.0)


def _rope_values(rope) -> list:
    """The rotary fractions of a rope_parameters dict (or of its per-layer-type dicts)."""
    if not isinstance(rope, dict):
        return []
    values = [v for k, v in rope.items() if re.fullmatch(ROTARY_FRACTION, str(k))]
    return values + [v for sub in rope.values() for v in _rope_values(sub)]


def _positions(config):
    """The default number of positions of a config node, or None."""
    return next((v for n, v in _own_fields(config) if _matches(_names(config, n), POSITIONS) and _is_int(v)), None)


def _groups_queries(config) -> bool:
    """Whether the model can share key/value heads between query heads: it has a key/value head
    count that its default leaves to be derived or sets below the query heads, and no low-rank
    key/value projection (multi-head latent attention keeps one key/value per query head)."""
    if any(re.fullmatch(r".*kv_lora_rank", n) for n, _ in _own_fields(config)):
        return False
    heads = _primary_heads(config)
    return any(_kind(n) == "heads" and re.fullmatch(KV_HEADS, n) and
               (_is_derived(type(config), n, {}) or v is None or (_is_int(v) and heads and v < heads))
               for n, v in _own_fields(config))


def _left_to_config(config, name: str, value) -> bool:
    """Fields a bare type's small config leaves alone: bookkeeping, and derived fields (the config
    recomputes them from the small ones), except head counts (set to few heads)."""
    if name in DROPPED_KEYS or not _declared(type(config), name):
        return True
    return _is_derived(type(config), name, {}) and value is not None and _kind_of(_names(config, name)) != "heads"


def _small_value(config_class, name: str, value, shrink: _Shrink):
    """The small-config value of one field, or None to keep the default."""
    names = _names(config_class, name)
    kind = _kind_of(names)
    if kind in ("hidden", "intermediate") and shrink.multiplied:
        return None  # channels at multiplier 1: the model multiplies them (and rounds) itself
    if kind == "heads":
        return _small_heads(names, value, shrink)
    if kind is not None:
        return _small_size(config_class, name, value, kind, shrink)
    if not _is_int(value) and not isinstance(value, (list, tuple)):
        return None
    feature = _feature_size(value, shrink) if re.fullmatch(FEATURE_SIZE, name) and _is_int(value) else None
    if feature is not None:
        return feature
    if re.fullmatch(POSITION_SHAPE, name) and isinstance(value, (list, tuple)) and _is_int_or_ints(list(value)):
        return _position_shape(value, shrink)
    if _matches(names, POSITIONS) and _is_int(value):
        return min(value, SMALL_POSITIONS)
    if any("vocab_size" in n for n in names) and _is_int(value):
        return min(value, VOCAB)
    for pattern, small in ((GROUPS, 1), (EXPERTS, SMALL_EXPERTS), (TOP_K, SMALL_TOP_K)):
        if _matches(names, pattern) and _is_int(value):
            return min(value, small)
    if "image_size" in names:
        size = SMALL_IMAGE * (2 if shrink.staged else 1)  # a hierarchy of stages halves it at each
        return [size] * len(value) if isinstance(value, (list, tuple)) else size
    if "patch_size" in names and _is_int(value) and not shrink.staged:
        return min(value, SMALL_PATCH)
    window = next((w for n, w in SMALL_WINDOW.items() if n in names and (shrink.vision or n != "window_size")), None)
    if window:
        return _map_values(value, lambda v: min(v, window) if _is_int(v) else v)
    return _small_layers(names, name, value, shrink)


def _small_size(config_class, name: str, value, kind, shrink: _Shrink):
    """A hidden, intermediate, rank or head size at the small target (multiples of SIZE_STEP)."""
    if _is_derived(config_class, name, {}) or not _is_size(value):
        return None  # the config derives it from the fields we do set (e.g. llama's head_dim)
    if (name == shrink.hidden_name or "hidden_size" in name) and _is_int(value):
        return SMALL_HIDDEN  # every part's hidden size becomes 256, and so do fields that name one
    ratio, step = (shrink.head_ratio, HEAD_SIZE_STEP) if kind == "head_size" else (shrink.ratio, SIZE_STEP)
    least = _least_head_size(shrink) if "head_dim" in _names(config_class, name) else step
    return _map_values(value, lambda v: v * ratio if isinstance(v, float) else max(least, _round_to(v * ratio, step)))


def _least_head_size(shrink: _Shrink) -> int:
    """The smallest attention head size (head_dim, which rotary embeddings rotate a fraction of) at the
    small target: HEAD_SIZE_STEP for its rotary part too (a head that rotates a quarter of itself is at
    least 4 x HEAD_SIZE_STEP), so that at base width / 4 the rotary part still has HEAD_SIZE_STEP / 4
    dims and nothing the model cuts from it (m-rope sections) rounds to one size at base and delta."""
    return HEAD_SIZE_STEP * math.ceil(1 / shrink.rotary - 1e-9)


def _feature_size(value: int, shrink: _Shrink):
    """A fixed feature size keeps its relation to the hidden size: equal to it in the default (the model
    may skip a projection when they are equal), it becomes the small hidden size (and so scales with the
    width); different from it but equal to the small hidden size, it shrinks with the hidden size
    instead, so that the small target keeps the default's projection (LUKE's entity_emb_size)."""
    if shrink.hidden is None or shrink.staged:
        return None
    if value == shrink.hidden:
        return SMALL_HIDDEN
    if value != SMALL_HIDDEN:
        return None
    small = max(SIZE_STEP, _round_to(value * shrink.ratio, SIZE_STEP))
    while small in (BASE_WIDTH, 2 * BASE_WIDTH, SMALL_HIDDEN):  # nor equal to the hidden size at base or delta
        small += SIZE_STEP
    return small


def _position_shape(value, shrink: _Shrink):
    """Positions factored into axes (their product is the default number of positions) refactored into
    as many axes whose product is the example sequence length, which the model requires in training."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not shrink.positions or math.prod(values) != shrink.positions:
        return None
    return _even_factors(SEQUENCE_LENGTH, len(values))


def _even_factors(length: int, axes: int) -> list:
    """`axes` powers of two, as equal as can be, whose product is `length` (a power of two)."""
    exponent = length.bit_length() - 1
    return [2 ** (exponent // axes + (1 if i < exponent % axes else 0)) for i in range(axes)]


def _small_heads(names, value, shrink: _Shrink):
    """A head count at the small target: few query heads, fewer key/value heads where grouped."""
    small = shrink.kv_heads if _matches(names, KV_HEADS) else shrink.heads
    if value is None:  # left unset although the model divides by it (else it stays unset: a feature off)
        return small if "num_key_value_heads" in names else None
    if _is_int(value):
        return small if shrink.grow == "heads" else min(value, small)  # growing heads must be divisible by 4
    if isinstance(value, (list, tuple)) and _is_size(value):
        return [max(1, round(v * small / value[0])) for v in value]  # per stage: keep the progression
    return None


def _small_layers(names, name: str, value, shrink: _Shrink):
    """Depth fields -> 2 (per-stage depths -> 1 each, the stage count kept); counts of special layers
    shrink with the depth; layer indices past the new depth are dropped."""
    if not shrink.shallow:
        return None
    layerish = any(re.search(r"(^|_)(n_)?layers?($|_)|depths?$", n) for n in names) or name.endswith("dense_replace")
    if _is_int(value) and layerish and not shrink.staged and not re.fullmatch(LAYER_INTERVAL, name):
        if re.fullmatch(LAYER_SUBSET, name) and shrink.depth:
            return min(value, value * SMALL_LAYERS // shrink.depth)
        return min(value, SMALL_LAYERS)
    if isinstance(value, (list, tuple)) and name in ("depths", "depth") and _is_int_or_ints(list(value)):
        return [min(v, 1) for v in value]
    if isinstance(value, (list, tuple)) and _matches(names, LAYER_INDICES) and _is_int_or_ints(list(value)) and \
            len(value) != shrink.depth:
        return [v for v in value if v < SMALL_LAYERS]
    return None


def _per_layer(name: str, value, shrink: _Shrink):
    """A per-layer list (or layer pattern string) of the default depth, cut to the small depth; a
    per-layer dict keyed by layer index keeps the small depth's layers."""
    if not shrink.shallow or shrink.staged:
        return value
    if isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
        return {k: v for k, v in value.items() if int(k) < SMALL_LAYERS}
    per_layer = isinstance(value, (list, tuple)) or (isinstance(value, str) and "pattern" in name)
    if per_layer and shrink.depth and len(value) == shrink.depth > SMALL_LAYERS:
        return value[:SMALL_LAYERS] if isinstance(value, str) else list(value[:SMALL_LAYERS])
    return value


def _filled_in(config, spec: dict, shrink: _Shrink) -> dict:
    """Values a default config leaves None although its model needs them: the vocabulary size, the
    expert counts, and the head size (hidden / heads)."""
    filled = {}
    for name, value in _own_fields(config):
        if value is not None or not _declared(type(config), name):
            continue
        if name == "vocab_size":
            filled[name] = VOCAB
        elif re.fullmatch(EXPERTS, name) or re.fullmatch(TOP_K, name):
            filled[name] = SMALL_EXPERTS if re.fullmatch(EXPERTS, name) else SMALL_TOP_K
        elif re.fullmatch(SHARED_EXPERTS, name):
            filled[name] = 1
        elif name == "head_dim" and shrink.hidden_name:
            filled[name] = SMALL_HIDDEN // spec.get(_real_name(config, "num_attention_heads"), shrink.heads)
    return filled


def _depth(config):
    """The number of layers of a config node, or None."""
    value = _attr(config, "num_hidden_layers")
    return value if _is_int(value) else None

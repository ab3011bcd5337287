"""Width-aware factories for any Hugging Face `transformers` model, built from a config (nothing downloaded).

    make_model = muprewrite.hf.factory("qwen3")                 # the type's default config, made small
    make_model = muprewrite.hf.factory("path/to/config.json")   # a real config (or its folder) is the target
    make_model = muprewrite.hf.factory(config, grow="heads")    # a PretrainedConfig; heads grow, d_head fixed
    base, delta, target = muprewrite.hf.widths(make_model)
    model = make_model(width)                                   # the model whose hidden size is `width`

One general width rule, read off the config's field names (aliases through `attribute_map`, nested
sub-configs included): every width-proportional field — hidden, intermediate and low-rank sizes,
head sizes when grow="head_dim" (the default), head counts when grow="heads" — is scaled by
width / target hidden; every other field (vocabulary, depth, experts, positions, windows, rope) is
kept. `make_model.width_rule` is a JSON-serialisable account of what was scaled. On the command
line the same models are `muprewrite hf:qwen3`, `muprewrite hf:path/to/config.json --grow heads`.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from .errors import MuRewriteError

VOCAB = 256  # a bare model type's vocabulary, and the range example token ids are drawn from
SMALL_HIDDEN = 256  # a bare model type's target hidden size
SMALL_HEADS = {"head_dim": 2, "heads": 8}  # a bare type's head count at the target, by `grow`
SMALL_GROUPED_HEADS = {"head_dim": (4, 2), "heads": (8, 4)}  # ... query and key/value heads where they are grouped
SMALL_LAYERS, SMALL_EXPERTS, SMALL_TOP_K, SMALL_POSITIONS = 2, 4, 2, 128
SMALL_IMAGE, SMALL_PATCH = 32, 8
SIZE_STEP, HEAD_SIZE_STEP = 16, 32  # a bare type's scaled sizes are multiples of these (exact at width / 8)
MIN_BASE, MIN_HEAD_SIZE = 64, 8  # the default base width of a real config: at least this wide, heads this big
BASE_WIDTH, TARGET_WIDTH = SMALL_HIDDEN // 4, SMALL_HIDDEN  # the default widths of a bare model type
GROWS = ("head_dim", "heads")
TASKS = {  # task -> the transformers auto mapping that names its model class per model type
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "masked-lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "seq2seq-lm": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}
DROPPED_KEYS = ("quantization_config", "torch_dtype", "dtype", "auto_map", "_name_or_path", "transformers_version")

# Field-name patterns (full match, on the field's name or any alias of it in `attribute_map`).
WIDTH_PATTERNS = {
    "hidden": r"hidden_size|d_model|n_embd|dim|embed_dim|model_dim|d_embed|emb_dim|embedding_size|embedding_dim"
              r"|hidden_dim|word_embed_proj_dim|hidden_sizes|.*_hidden_sizes?|hidden_size_.*|.*_embed_dim|.*_embds?_dim"
              r"|embed_dims|(.*_)?(in|out|mid)_channels|pooler_\w*size",
    "intermediate": r".*intermediate_size.*|n_inner|d_ff|dff|dim_ff|d_inner|.*ffn_dim|.*ffn_hidden_size"
                    r"|.*bottleneck_size",
    "rank": r".*_rank",
    "head_size": r"head_dim|d_kv|d_head|dim_head|kv_channels|attention_head_size|.*_head_dim|.*_d_head|rotary_dim"
                 r"|query_pre_attn_scalar",
    "heads": r".*heads|.*heads_per_layer|(.*_)?n_head",
}
KV_HEADS = r".*(key_value|kv|key).*"  # head counts a bare type gets fewer of (grouped-query attention)
GROUPS = r"(.*_)?n_groups|num_groups|n_group|topk_group|num_expert_group"  # must divide a head, channel or expert count
EXPERTS = r"(num_|n_)?(local_|routed_|moe_)?experts|moe_num_experts"
TOP_K = r".*experts_per_tok(en)?|moe_top_?k|moe_k|top_k_experts|num_selected_experts"
SHARED_EXPERTS = r"(num_|n_|moe_num_)shared_experts"
POSITIONS = r"max_position_embeddings|n_positions|n_ctx|max_seq_len|max_sequence_length|max_\w+_positions" \
            r"|max_\w+_position_embeddings"
LAYER_INTERVAL = r".*(every|per|period|interval|freq|step|offset|index|idx|start|end|group_size|loop).*"
LAYER_SUBSET = r".*(window|dense|shared|nextn|mtp|skip).*"  # how many of the layers are special
LAYER_INDICES = r"(?!.*(num|numb|n)_).*_(layers|idxs|indices|layer_ids)"
# Longformer-style inputs are padded to a multiple of `attention_window`; a vision window must fit the last stage.
SMALL_WINDOW = {"attention_window": 16, "window_size": 2}
TOKEN_ID = r".*token_ids?|.*token_index"
TEXT_TOKENS = r"(pad|bos|eos|unk|sep|cls|mask|decoder_start|forced_bos|forced_eos)_token_ids?"


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

    def as_dict(self) -> dict:
        """The JSON-serialisable account shown in the report (`make_model.width_rule`)."""
        return {"model_type": self.model_type, "model_class": self.model_class, "task": self.task,
                "source": self.source, "grow": self.grow, "target_hidden": self.target_hidden,
                "hidden_field": self.hidden_field, "scaled": {f.name: f.value for f in self.fields},
                "derived": self.derived,
                "widen": self.widen, "fixed_overrides": self.fixed, "adjusted": self.adjusted,
                "width_multiple": self.width_multiple, "widths": _widths_or_none(self)}


def factory(config_or_type, *, grow: str = "head_dim", fixed: dict | None = None, widen: dict | None = None,
            task: str | None = None):
    """A `width -> model` factory whose model at `width` is the target config at hidden size `width`.

    `config_or_type`: a model type transformers knows ("qwen3", "t5", "vit": its default config made
    small, target hidden 256), a config.json, a folder holding one, or a `PretrainedConfig` (the
    target as given). `grow`: "head_dim" keeps head counts and grows head sizes, "heads" keeps head
    sizes and grows head counts. `fixed`: config fields (dotted for sub-configs) held at these
    values at every width. `widen`: {field: multiple of the width} replaces the general rule with
    exactly these fields. `task`: one of TASKS (default: from the model type).
    """
    transformers = _transformers()
    if grow not in GROWS:
        raise MuRewriteError(f"grow must be one of {', '.join(GROWS)}, got {grow!r}")
    first_error = None
    for source in _sources(config_or_type, grow, transformers):
        try:
            return _factory(source(), grow, fixed or {}, widen, task, transformers)
        except MuRewriteError as exc:
            first_error = first_error or exc
    raise first_error


def _factory(source, grow: str, fixed: dict, widen, task, transformers):
    """The factory for one resolved target; a bare type's is checked to build (on meta) at its target."""
    task = _task(source.model_type, _build_config(source.config_class, source.spec, source.model_type, "the target"),
                 task, transformers)
    model_class = _model_class(source.model_type, task, transformers)
    source = _narrowed(source, model_class)
    spec = _with_fixed(source.spec, fixed, source.config_class)
    target = _build_config(source.config_class, spec, source.model_type, "the target")
    rule = _width_rule(source, spec, target, grow, fixed, widen, task, model_class)

    def make_model(width: int):
        """The model whose hidden size is `width`."""
        if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
            raise MuRewriteError(f"width must be a positive integer, got {width!r}")
        config = _build_config(source.config_class, _spec_at(spec, rule, width), source.model_type, f"width {width}",
                               rule.width_multiple)
        if hasattr(config, "use_cache"):
            config.use_cache = False
        return _build_model(model_class, config, source.model_type, width, rule.width_multiple)

    if source.origin == "type":  # the small config must build at its widths, else try the next variant
        with torch.device("meta"):
            make_model(rule.target_hidden), make_model(rule.target_hidden // 4)
    make_model.width_rule = rule.as_dict()
    make_model.rule, make_model.config, make_model.task = rule, target, task
    make_model.model_class = model_class
    return make_model


def widths(make_model) -> tuple:
    """(base, delta, target) for a factory made by `factory`: see the README's "Hugging Face models"."""
    rule = getattr(make_model, "rule", None)
    if not isinstance(rule, WidthRule):
        raise MuRewriteError("widths() takes a factory made by muprewrite.hf.factory(...)")
    base = _base_width(rule)
    if base is None:
        raise MuRewriteError(
            f"no base width below {rule.target_hidden // 2} keeps every scaled field of {rule.model_type} a positive "
            f"integer (widths must be multiples of {rule.width_multiple}); pass --base and --target yourself")
    return base, 2 * base, rule.target_hidden


def example_inputs(config_or_type, *, task: str | None = None, fixed: dict | None = None) -> dict:
    """Inputs for the model `factory(config_or_type)` builds (or for a factory it made): token ids
    (2, 16), encoder and decoder ids for seq2seq, or pixel values at the config's image size and
    channels for a model whose main input is pixel_values."""
    make_model = config_or_type if isinstance(getattr(config_or_type, "rule", None), WidthRule) else \
        factory(config_or_type, fixed=fixed, task=task)
    config, task = make_model.config, make_model.task
    generator = torch.Generator().manual_seed(0)
    tokens = _token_ids(config, (2, 16), generator)
    if getattr(make_model.model_class, "main_input_name", "input_ids") == "pixel_values":
        return {"pixel_values": torch.randn(2, *_image_shape(config), generator=generator)}
    if task == "seq2seq-lm":
        return {"input_ids": tokens, "decoder_input_ids": tokens[:, :8]}
    return {"input_ids": tokens}


def model_types(task: str | None = None) -> dict:
    """{model type: task} for every type of the four auto mappings (or of one task's)."""
    from transformers.models.auto import modeling_auto

    types = {}
    for name, mapping in TASKS.items():
        if task in (None, name):
            for model_type in getattr(modeling_auto, mapping):
                types.setdefault(model_type, name)
    return types


# Resolving the target -----------------------------------------------------------------------


@dataclass
class _Source:
    config_class: type
    spec: dict  # explicit config fields (sub-configs as dicts); fields left out keep their defaults
    model_type: str
    origin: str
    adjusted: dict


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
    return _Source(type(default), spec, model_type, "type", {})


# A bare model type made small -----------------------------------------------------------------


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


def _small_spec(config, grow: str, grouped: bool = True, shallow: bool = True) -> dict:
    """Overrides of a default config that make it small and fast: 2 layers, a small vocabulary,
    target hidden 256 with few heads (grouped key/value heads where the model groups queries and
    `grouped`), few experts, short positions, 32-pixel images."""
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
    return spec


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
                   _attr(config, "image_size") is not None, grow, shallow)


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
    if kind == "heads":
        return _small_heads(names, value, shrink)
    if kind is not None:
        return _small_size(config_class, name, value, kind, shrink)
    if not _is_int(value) and not isinstance(value, (list, tuple)):
        return None
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
    return _map_values(value, lambda v: v * ratio if isinstance(v, float) else max(step, _round_to(v * ratio, step)))


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


# Token ids ------------------------------------------------------------------------------------


def _valid_token_ids(spec: dict, config, vocab: int | None = None) -> tuple:
    """Token ids at or beyond the vocabulary (a cut vocabulary) moved to its top, one slot each."""
    vocab = vocab or _vocab_size(config)
    remapped = {}
    if vocab:
        slots = {}
        for path, value in _token_id_fields(config):
            new = _map_values(value, lambda v: v if v < vocab else slots.setdefault(v, vocab - 1 - len(slots)))
            if new != value:
                _set_path(spec, path, new)
                remapped[".".join(path)] = new
    return spec, remapped


def _token_id_fields(config, prefix=()):
    """(path, value) of every special token id field, sub-configs included."""
    for name, value in _own_fields(config):
        if re.fullmatch(TOKEN_ID, name) and _is_int_or_ints(value) and value != []:
            yield prefix + (name,), value
    for name in _sub_config_names(config):
        sub = _attr(config, name)
        if _is_config(sub):
            yield from _token_id_fields(sub, prefix + (name,))


def _token_ids(config, shape, generator):
    """Random token ids below min(vocab, VOCAB), avoiding ids that stand for images, audio, ..."""
    high = min(_vocab_size(config) or VOCAB, VOCAB)
    reserved = {v for path, value in _token_id_fields(config) if not re.fullmatch(TEXT_TOKENS, path[-1])
                for v in (value if isinstance(value, list) else [value])}
    allowed = torch.tensor([i for i in range(high) if i not in reserved] or [0])
    return allowed[torch.randint(0, len(allowed), shape, generator=generator)]


def _vocab_size(config):
    """The vocabulary size of the config, or of its text part."""
    for node in (config, _text_config(config)):
        value = _attr(node, "vocab_size")
        if isinstance(value, int):
            return value
    return None


def _image_shape(config) -> tuple:
    """(channels, height, width) of the images the config (or its vision part) takes."""
    node = next((n for n in (config, _attr(config, "vision_config")) if _is_config(n) and
                 _attr(n, "image_size") is not None), config)
    size = _attr(node, "image_size", SMALL_IMAGE)
    height, width = (size[0], size[-1]) if isinstance(size, (list, tuple)) else (size, size)
    return _attr(node, "num_channels", 3), height, width


# The width rule -------------------------------------------------------------------------------


def _width_rule(source: _Source, spec: dict, target, grow: str, fixed: dict, widen, task, model_class) -> WidthRule:
    """The fields to scale (the general rule, or `widen`), the hidden size they scale with, the width step."""
    hidden_path, target_hidden = _hidden_path(target, task)
    if hidden_path is None:
        raise MuRewriteError(f"{source.model_type}: no hidden size found in its config (hidden_size, d_model, "
                             "n_embd, ...); pass widen={field: multiple of the width} from Python")
    hidden_name = ".".join(hidden_path)
    if hidden_name in _flat_keys(fixed):
        raise MuRewriteError(f"{hidden_name} is the width; it cannot be fixed (drop it from fixed=)")
    if widen:
        widen = {".".join(_real_path(source.config_class, k)): m for k, m in widen.items()}
        fields = [Field(tuple(k.split(".")), "widen", round(m * target_hidden)) for k, m in widen.items()]
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
    rule.width_multiple = _width_multiple(rule)
    rule.accepts = lambda width: _accepts(source.config_class, _spec_at(spec, rule, width))
    return rule


def _accepts(config_class, spec: dict) -> bool:
    """Whether the config class accepts these values (its validators check e.g. hidden % heads)."""
    try:
        config_class(**copy.deepcopy(spec))
    except Exception:  # any validation failure: this width is not a usable one
        return False
    return True


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
        kind = _kind_of(_names(config, name))
        if kind in scaled_kinds and _is_size(value) and not _is_derived(type(config), name, spec):
            even = kind == "head_size" and _all_even(value)
            fields.append(Field(prefix + (name,), kind, value, even))
    for name in _sub_config_names(config):
        sub = _attr(config, name)
        if _is_config(sub):
            fields += _proportional_fields(sub, spec.get(name) if isinstance(spec.get(name), dict) else {}, grow,
                                           prefix + (name,))
    return fields


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
    MIN_BASE wide with heads of at least MIN_HEAD_SIZE (else the smallest exact one), up to target / 2."""
    candidates = range(rule.width_multiple, rule.target_hidden // 2 + 1, rule.width_multiple)
    if rule.source == "type" and not rule.widen:
        candidates = [c for c in candidates if c == rule.target_hidden // 4] or candidates
    strict = [w for w in candidates if w >= MIN_BASE and _sizes_at(rule, w, MIN_HEAD_SIZE)]
    relaxed = [w for w in candidates if _sizes_at(rule, w, 1)]
    return next((w for w in strict + relaxed if rule.accepts(w) and rule.accepts(2 * w)), None)


def _widths_or_none(rule: WidthRule):
    """The suggested widths as a dict, or None when there is no base width."""
    base = _base_width(rule)
    return None if base is None else {"base": base, "delta": 2 * base, "target": rule.target_hidden}


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


# Reading configs ------------------------------------------------------------------------------


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


# Building -------------------------------------------------------------------------------------


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

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
line the same models are `muprewrite hf:qwen3`, `muprewrite hf:path/to/config.json --grow heads`."""

from __future__ import annotations

import inspect

import torch

from ..errors import MuRewriteError
from .configs import _build_config, _build_model, _transformers, _with_fixed, model_types
from .depth import config_depth, spec_at_depth
from .encoder_states import WithEncoderStates, with_encoder_states
from .inputs import _image_shape, _token_ids
from .modal import modal_inputs
from .patterns import BASE_WIDTH, GROWS, TARGET_WIDTH, VOCAB
from .resolve import _model_class, _narrowed, _sources, _task
from .rule import WidthRule, _spec_at, _width_rule

__all__ = ["factory", "widths", "example_inputs", "model_types", "WidthRule", "WithEncoderStates", "GROWS",
           "BASE_WIDTH", "TARGET_WIDTH", "VOCAB"]


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

    def make_model(width: int, depth: int | None = None):
        """The model whose hidden size is `width` (and layer count `depth`, if given: depth transfer)."""
        if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
            raise MuRewriteError(f"width must be a positive integer, got {width!r}")
        at_width = _spec_at(spec, rule, width)
        at_width = at_width if depth is None else spec_at_depth(at_width, depth)
        config = _build_config(source.config_class, at_width, source.model_type, f"width {width}",
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
    make_model.depth = config_depth(spec)  # the target's layer count: depth transfer's default target depth
    return make_model


def widths(make_model) -> tuple:
    """(base, delta, target) for a factory made by `factory`: see the README's "Hugging Face models"."""
    rule = getattr(make_model, "rule", None)
    if not isinstance(rule, WidthRule):
        raise MuRewriteError("widths() takes a factory made by muprewrite.hf.factory(...)")
    return rule.widths()


def example_inputs(config_or_type, *, task: str | None = None, fixed: dict | None = None) -> dict | WithEncoderStates:
    """Inputs for the model `factory(config_or_type)` builds (or for a factory it made): token ids
    (2, 16), encoder and decoder ids for seq2seq, or pixel values at the config's image size and
    channels for a model whose main input is pixel_values. For a decoder built alone whose
    cross-attention reads encoder states (Whisper's, TrOCR's causal LM) the inputs grow with width:
    a `WithEncoderStates`, called with the width (mupify accepts it as `example_inputs`)."""
    make_model = config_or_type if isinstance(getattr(config_or_type, "rule", None), WidthRule) else \
        factory(config_or_type, fixed=fixed, task=task)
    config, task = make_model.config, make_model.task
    generator = torch.Generator().manual_seed(0)
    tokens = _token_ids(config, (2, 16), generator)
    if getattr(make_model.model_class, "main_input_name", "input_ids") == "pixel_values":
        return {"pixel_values": torch.randn(2, *_image_shape(config), generator=generator)}
    inputs = {"input_ids": tokens, "decoder_input_ids": tokens[:, :8]} if task == "seq2seq-lm" else \
        {"input_ids": tokens}
    inputs = {**inputs, **modal_inputs(make_model, inputs, generator)}
    if "attention_mask" in inspect.signature(make_model.model_class.forward).parameters:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])  # as a tokenizer returns it: no padding
    return with_encoder_states(make_model, inputs) or inputs

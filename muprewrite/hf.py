"""Width-aware factories for Hugging Face `transformers` models, built from configs (no download).

    factory = muprewrite.hf.factory("llama")                    # small defaults, d_head grows
    factory = muprewrite.hf.factory("gpt2", fixed={"n_layer": 4}, widen={"n_embd": 1, "n_inner": 4})
    factory = muprewrite.hf.factory("path/to/config.json")      # any local config

`widen` maps config fields to their size as a multiple of the width; fields holding a head
size are derived from the width and the (fixed) head count. On the command line the same
models are `muprewrite hf:llama` or `muprewrite hf:path/to/config.json`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import MuRewriteError

VOCAB = 256


@dataclass(frozen=True)
class Family:
    """How one model type is built small and which of its config fields grow with width."""

    config: str  # config class in transformers
    model: str  # model class in transformers
    widen: dict  # config field -> multiple of the width
    fixed: dict  # small, width-independent settings
    inputs: str  # "tokens", "seq2seq" or "image"
    head_fields: dict = field(default_factory=dict)  # head-size field -> head-count field


FAMILIES = {
    "gpt2": Family("GPT2Config", "GPT2LMHeadModel", {"n_embd": 1, "n_inner": 4},
                   {"n_layer": 2, "n_head": 2, "vocab_size": VOCAB, "n_positions": 64}, "tokens"),
    "llama": Family("LlamaConfig", "LlamaForCausalLM", {"hidden_size": 1, "intermediate_size": 3},
                    {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "vocab_size": VOCAB, "max_position_embeddings": 64}, "tokens",
                    {"head_dim": "num_attention_heads"}),
    "bert": Family("BertConfig", "BertForMaskedLM", {"hidden_size": 1, "intermediate_size": 4},
                   {"num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": VOCAB,
                    "max_position_embeddings": 64}, "tokens"),
    "t5": Family("T5Config", "T5ForConditionalGeneration", {"d_model": 1, "d_ff": 4},
                 {"num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "vocab_size": VOCAB,
                  "decoder_start_token_id": 0}, "seq2seq", {"d_kv": "num_heads"}),
    "vit": Family("ViTConfig", "ViTForImageClassification", {"hidden_size": 1, "intermediate_size": 4},
                  {"num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 16, "patch_size": 4,
                   "num_labels": 5}, "image"),
}
BASE_WIDTH, TARGET_WIDTH = 64, 256


def factory(model: str, *, widen: dict | None = None, fixed: dict | None = None):
    """A `width -> model` factory for a model type (see FAMILIES) or a local config file."""
    transformers = _transformers()
    family, base_config = _family_and_config(model, transformers)
    widen = widen or family.widen
    fixed = {**family.fixed, **(fixed or {})} if base_config is None else (fixed or {})

    def make_model(width: int):
        values = {**fixed, **{k: int(round(m * width)) for k, m in widen.items()}}
        config = _config(transformers, family, base_config, values)
        for head_field, count_field in family.head_fields.items():
            if hasattr(config, head_field):
                setattr(config, head_field, width // getattr(config, count_field))
        config.use_cache = False
        return getattr(transformers, family.model)(config)

    make_model.family = family
    return make_model


def example_inputs(model: str):
    """Inputs for the family's models: token ids, encoder/decoder ids, or images."""
    family, _ = _family_and_config(model, _transformers())
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (2, 16), generator=generator)
    if family.inputs == "seq2seq":
        return {"input_ids": tokens, "decoder_input_ids": tokens[:, :8]}
    if family.inputs == "image":
        size = family.fixed["image_size"]
        return {"pixel_values": torch.randn(2, 3, size, size, generator=generator)}
    return {"input_ids": tokens}


def _family_and_config(model: str, transformers):
    if model in FAMILIES:
        return FAMILIES[model], None
    path = Path(model)
    if path.suffix == ".json" or path.is_dir():
        if not path.exists():
            raise MuRewriteError(f"Hugging Face config {path} not found; pass a local config.json or one of {', '.join(FAMILIES)}")
        config = transformers.AutoConfig.from_pretrained(str(path))
        if config.model_type not in FAMILIES:
            raise MuRewriteError(f"config model_type {config.model_type!r} has no width rules yet; "
                                 f"use muprewrite.hf.factory(..., widen={{field: multiple}}) from Python")
        return FAMILIES[config.model_type], config
    raise MuRewriteError(f"unknown Hugging Face model {model!r}; choose one of {', '.join(FAMILIES)} or a config.json path")


def _config(transformers, family: Family, base_config, values: dict):
    if base_config is None:
        return getattr(transformers, family.config)(**values)
    config = base_config.__class__.from_dict({**base_config.to_dict(), **values})
    return config


def _transformers():
    if importlib.util.find_spec("transformers") is None:
        raise MuRewriteError("Hugging Face models need transformers: pip install 'muprewrite[hf]'")
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers

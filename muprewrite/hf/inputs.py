"""Example inputs for a model built by `factory`: token ids avoiding special ids, images."""

from __future__ import annotations

import re

import torch

from .configs import (
    _attr, _is_config, _is_int_or_ints, _map_values, _own_fields, _set_path, _sub_config_names, _text_config,
)
from .patterns import PLACEHOLDER_ID, SMALL_IMAGE, TEXT_TOKENS, TOKEN_ID, VOCAB


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


def _placeholder_ids(spec: dict, config, vocab: int) -> dict:
    """A bare type whose default leaves a modality's placeholder id unset (Voxtral's audio_token_id,
    filled in by its processor) gets a free id at the top of the vocabulary."""
    used = {v for _, value in _token_id_fields(config) for v in (value if isinstance(value, list) else [value])}
    used |= {v for v in _spec_token_ids(spec)}
    for path in _unset_placeholders(config):
        free = next(i for i in range(vocab - 1, -1, -1) if i not in used)
        _set_path(spec, path, free)
        used.add(free)
    return spec


def _unset_placeholders(config, prefix=()):
    for name, value in _own_fields(config):
        if value is None and re.fullmatch(PLACEHOLDER_ID, name):
            yield prefix + (name,)
    for name in _sub_config_names(config):
        sub = _attr(config, name)
        if _is_config(sub):
            yield from _unset_placeholders(sub, prefix + (name,))


def _spec_token_ids(spec: dict):
    for name, value in spec.items():
        if isinstance(value, dict):
            yield from _spec_token_ids(value)
        elif re.fullmatch(TOKEN_ID, name) and isinstance(value, int):
            yield value


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

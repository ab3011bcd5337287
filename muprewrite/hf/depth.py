"""The depth of a Hugging Face config, for depth transfer: its layer counts and per-layer lists.

A config's depth is its layer count (`num_hidden_layers`, `n_layer`, ...; in a text sub-config for a
multimodal one). At another depth every count is that depth and every per-layer list (Gemma's
`layer_types`) follows its own repeating pattern to the new length; a depth that would drop a kind
of layer the pattern holds (a proxy with no full-attention layer) is refused.
"""

from __future__ import annotations

import copy

from ..errors import MuRewriteError

LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_decoder_layers", "encoder_layers",
                "decoder_layers")


def config_depth(spec: dict) -> int | None:
    """The layer count of a config's explicit fields (the first found, its text sub-config's first)."""
    for level in _levels(spec):
        found = next((level[name] for name in LAYER_COUNTS if isinstance(level.get(name), int)), None)
        if found is not None:
            return found
    return None


def spec_at_depth(spec: dict, depth: int) -> dict:
    values = copy.deepcopy(spec)
    changed = False
    for level in _levels(values):
        counts = [name for name in LAYER_COUNTS if isinstance(level.get(name), int)]
        for old in {level[name] for name in counts}:
            for key, value in list(level.items()):
                if isinstance(value, list) and len(value) == old and old > 0:
                    level[key] = _repeated(key, value, depth)
        for name in counts:
            level[name], changed = depth, True
    if not changed:
        raise MuRewriteError(f"the config has no layer count ({', '.join(LAYER_COUNTS)}) to set to depth {depth}; "
                             "pass a factory of your own, make_model(width, depth=L)")
    return values


def _levels(spec: dict) -> list:
    """The config's own fields, then each sub-config's (text_config, decoder, ...)."""
    return [spec, *(value for value in spec.values() if isinstance(value, dict))]


def _repeated(key: str, values: list, depth: int) -> list:
    period = next(p for p in range(1, len(values) + 1) if all(v == values[i % p] for i, v in enumerate(values)))
    repeated = [values[i % period] for i in range(depth)]
    lost = [v for v in dict.fromkeys(values) if v not in repeated]
    if lost:
        raise MuRewriteError(f"at depth {depth} the config's {key} (a pattern of {period} layers) would have no "
                             f"{lost[0]!r} layer; use a depth of at least {period}")
    return repeated

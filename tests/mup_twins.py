"""Hand-written muP versions of some examples, built with the `mup` package (the test oracle).

Each twin has the same parameter names and shapes as its example and consumes the RNG
the same way, so `torch.manual_seed(s)` before building either gives the same SP init.
The differences are muP's: the readout is a `mup.MuReadout`, and the GPT twins use the
1/d_head attention logit scale, normalised to equal 1/sqrt(d_head) at the example's BASE_WIDTH.
"""
import dataclasses
import math
from typing import Callable, Optional

import torch
import torch.nn as nn
from mup import MuReadout, set_base_shapes

import gpt_manual
import gpt_sdpa
import mlp
from nanogpt import GPT

GPT_EXAMPLES = {"sdpa": gpt_sdpa, "manual": gpt_manual}


class MuMLP(mlp.MLP):
    readout_cls = MuReadout


class MuGPT(GPT):
    readout_cls = MuReadout


def mlp_twin(width: int) -> MuMLP:
    return MuMLP(width)


def gpt_twin(width: int, attention: str = "sdpa") -> MuGPT:
    example = GPT_EXAMPLES[attention]
    config = example.make_config(width)
    d_head_base = example.make_config(example.BASE_WIDTH).d_head
    scale = math.sqrt(d_head_base) / config.d_head
    return MuGPT(dataclasses.replace(config, attn_scale=scale))


def mup_model(
    twin_fn: Callable[[int], nn.Module],
    width: int,
    base_width: int,
    delta_width: Optional[int] = None,
) -> nn.Module:
    """Build twin_fn(width) and set its muP base shapes from twins at base_width and delta_width.

    The base and delta models are built on the meta device: only their shapes are used,
    and they neither allocate memory nor consume the RNG.
    """
    model = twin_fn(width)
    with torch.device("meta"):
        base = twin_fn(base_width)
        delta = twin_fn(delta_width or 2 * base_width)
    return set_base_shapes(model, base, delta=delta)

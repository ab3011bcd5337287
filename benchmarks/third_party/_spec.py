"""The spec of one third-party model: the package it comes from and a small wrapper around its class."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

VOCAB, SEQ, BATCH = 256, 16, 2


@dataclass
class Spec:
    package: str  # the PyPI name (its version is read with importlib.metadata)
    make_model: Callable[[int], nn.Module]  # width -> the package's class built small, random weights
    example_inputs: Callable  # () -> inputs, or (width) -> inputs when `width_inputs`
    scales: str  # what the width scales (hidden size, FFN, head dim or heads)
    widths: tuple = (32, 64, 128)  # base, delta, target
    width_inputs: bool = False  # example_inputs takes the width
    note: str = ""
    extra: dict = field(default_factory=dict)

    def inputs(self):
        """What mupify gets as example_inputs: a value, or the function of width."""
        return self.example_inputs if self.width_inputs else self.example_inputs()

    def inputs_at(self, width: int):
        return self.example_inputs(width) if self.width_inputs else self.example_inputs()


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tokens(batch: int = BATCH, seq: int = SEQ, vocab: int = VOCAB, seed: int = 0) -> tuple:
    """(token ids,): positional inputs of a language model."""
    return (torch.randint(0, vocab, (batch, seq), generator=generator(seed)),)


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=generator(seed))


class TokenModel(nn.Module):
    """An embedding, a package's sequence model of width `dim` (b, n, dim) -> (b, n, dim), a linear head:
    for packages whose class has no embedding or head of its own. `call` picks the tensor out of a
    tuple output (MoE layers return (out, aux_loss))."""

    def __init__(self, width: int, body: nn.Module, vocab: int = VOCAB, pick: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.body = body
        self.head = nn.Linear(width, vocab)
        self.pick = pick

    def forward(self, ids):
        out = self.body(self.embed(ids))
        if self.pick is not None:
            out = out[self.pick]
        return self.head(out)

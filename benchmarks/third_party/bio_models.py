"""Protein language model: fair-esm's ESM2 built from its class (no download) with 2 layers, 2 heads
(d_head = width / 2), the ESM-1b alphabet (33 tokens). Width: embed_dim = width, FFN 4 x width."""
from __future__ import annotations

import torch

from ._spec import Spec, generator


def esm2(width: int):
    from esm.model.esm2 import ESM2

    return ESM2(num_layers=2, embed_dim=width, attention_heads=2, alphabet="ESM-1b", token_dropout=True)


def inputs():
    ids = torch.randint(4, 24, (2, 16), generator=generator(0))  # amino-acid tokens of the ESM-1b alphabet
    ids[:, 0] = 0  # <cls>
    return (ids,)


class Logits(torch.nn.Module):
    """ESM2 returns {"logits", "representations"}; the wrapper returns the logits."""

    def __init__(self, width):
        super().__init__()
        self.esm = esm2(width)

    def forward(self, ids):
        return self.esm(ids)["logits"]


SPECS = {
    "esm2": Spec("fair-esm", esm2, inputs, "embed_dim, 2 heads (d_head width/2), FFN 4 x width",
                 note="rotary, token dropout; tied LM head (weight = embed_tokens.weight); returns a dict"),
    "esm2_logits": Spec("fair-esm", Logits, inputs, "embed_dim, 2 heads (d_head width/2), FFN 4 x width",
                        note="the same ESM2 returning its logits alone"),
}

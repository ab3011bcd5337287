"""Mixture-of-experts language model with 3-D expert weights, routed densely.

Width is d_model. Each block is a pre-norm MoE feed-forward layer: a router
`Linear(d_model, n_experts)` gives softmax gates, every expert runs on every token
(dense routing, so the graph has no data-dependent control flow), and the expert outputs are
summed with the gates as weights. The experts live in two 3-D parameters applied with einsum:
`w_up` [n_experts, d_ffn, d_model] and `w_down` [n_experts, d_model, d_ffn]. d_model and
d_ffn = 2 x width grow; the vocabulary, the sequence length and the number of experts are fixed.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BASE_WIDTH = 32
TARGET_WIDTH = 256
VOCAB = 128
N_EXPERTS = 4
N_LAYER = 2
FFN_MULT = 2
SEQ_LEN = 8


class MoELayer(nn.Module):
    def __init__(self, d_model: int, n_experts: int, d_ffn: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.router = nn.Linear(d_model, n_experts)
        # Same std as nn.Linear's default init gives a layer of that fan_in (1/sqrt(3 fan_in)).
        self.w_up = nn.Parameter(torch.randn(n_experts, d_ffn, d_model) / math.sqrt(3 * d_model))
        self.w_down = nn.Parameter(torch.randn(n_experts, d_model, d_ffn) / math.sqrt(3 * d_ffn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        gates = torch.softmax(self.router(h), dim=-1)  # [b, t, e]
        up = F.gelu(torch.einsum("btd,efd->btef", h, self.w_up))  # every expert, every token
        down = torch.einsum("btef,edf->bted", up, self.w_down)
        return x + torch.einsum("bted,bte->btd", down, gates)


class MoELM(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.layers = nn.ModuleList(MoELayer(width, N_EXPERTS, FFN_MULT * width) for _ in range(N_LAYER))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def make_model(width: int) -> MoELM:
    return MoELM(width)


def example_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, VOCAB, (2, SEQ_LEN), generator=generator),)

"""Causal transformer whose attention is written with einsum and 3-D weights.

Width is d_model. The projections are parameters shaped by heads: W_q, W_k, W_v
[d_model, n_head, d_head] applied as `einsum("btd,dhk->bthk")`, logits
`einsum("bthk,bshk->bhts") / sqrt(d_head)` with a causal mask and a softmax, the values mixed
with `einsum("bhts,bshk->bthk")`, and W_o [n_head, d_head, d_model]. The head count is fixed,
so d_head = width / n_head grows with width (muP's attention then scales logits by 1/d_head).
The MLP is two Linears of 4 x width; vocab and sequence length are fixed.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BASE_WIDTH = 64
TARGET_WIDTH = 256
VOCAB = 128
N_HEAD = 4
N_LAYER = 2
SEQ_LEN = 8


def _param(*shape: int, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) / math.sqrt(fan_in))


class EinsumAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        d_head = d_model // n_head
        self.d_head = d_head
        self.w_q = _param(d_model, n_head, d_head, fan_in=d_model)
        self.w_k = _param(d_model, n_head, d_head, fan_in=d_model)
        self.w_v = _param(d_model, n_head, d_head, fan_in=d_model)
        self.w_o = _param(n_head, d_head, d_model, fan_in=d_model)
        self.register_buffer("causal", torch.ones(SEQ_LEN, SEQ_LEN, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        q = torch.einsum("btd,dhk->bthk", x, self.w_q)
        k = torch.einsum("btd,dhk->bthk", x, self.w_k)
        v = torch.einsum("btd,dhk->bthk", x, self.w_v)
        logits = torch.einsum("bthk,bshk->bhts", q, k) / math.sqrt(self.d_head)
        logits = logits.masked_fill(self.causal[:t, :t], float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        mixed = torch.einsum("bhts,bshk->bthk", weights, v)
        return torch.einsum("bthk,hkd->btd", mixed, self.w_o)


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = EinsumAttention(d_model, n_head)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class EinsumGPT(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList(Block(width, N_HEAD) for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def make_model(width: int) -> EinsumGPT:
    return EinsumGPT(width)


def example_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, VOCAB, (2, SEQ_LEN), generator=generator),)

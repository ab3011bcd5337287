"""A plain-PyTorch LLaMA-shaped decoder (no `transformers` dependency), for benchmarks.

Width is d_model. Fixed: vocab 32000, 32 layers, 32 query heads and 8 KV heads (grouped-query
attention), so d_head = width / 32 grows with width. RoPE on q and k (computed in forward on the
input's device, real arithmetic), RMSNorm with gains, SwiGLU MLP with d_ffn = 8/3 * width rounded
up to a multiple of 256 (11008 at width 4096), no biases, untied lm_head,
F.scaled_dot_product_attention(is_causal=True, enable_gqa=True).

    make_model(width) -> LlamaLike        example_inputs() -> (token ids of shape (1, 64),)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BASE_WIDTH = 128
TARGET_WIDTH = 4096


@dataclass
class LlamaConfig:
    d_model: int
    vocab_size: int = 32000
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int = 8
    multiple_of: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    seq_len: int = 64

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_ffn(self) -> int:
        hidden = int(8 * self.d_model / 3)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_cos_sin(seq_len: int, d_head: int, theta: float, device, dtype=torch.float32):
    """cos, sin of shape (seq_len, d_head // 2), created on `device` (meta-safe)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, device=device, dtype=torch.float32) / d_head))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); rotate interleaved pairs (x0, x1) by the position angle."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out1 = x1 * cos - x2 * sin
    out2 = x1 * sin + x2 * cos
    return torch.stack((out1, out2), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.d_head = c.n_head, c.n_kv_head, c.d_head
        self.rope_theta = c.rope_theta
        self.wq = nn.Linear(c.d_model, c.n_head * c.d_head, bias=False)
        self.wk = nn.Linear(c.d_model, c.n_kv_head * c.d_head, bias=False)
        self.wv = nn.Linear(c.d_model, c.n_kv_head * c.d_head, bias=False)
        self.wo = nn.Linear(c.n_head * c.d_head, c.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.d_head).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_head, self.d_head).transpose(1, 2)
        cos, sin = rope_cos_sin(T, self.d_head, self.rope_theta, x.device, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.d_head))


class FeedForward(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(c.d_model, c.d_ffn, bias=False)  # gate
        self.w3 = nn.Linear(c.d_model, c.d_ffn, bias=False)  # up
        self.w2 = nn.Linear(c.d_ffn, c.d_model, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attention = Attention(c)
        self.ffn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.feed_forward = FeedForward(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class LlamaLike(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.config = c
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.output = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.output(self.norm(h))


def make_config(width: int) -> LlamaConfig:
    return LlamaConfig(d_model=width)


def make_model(width: int) -> LlamaLike:
    return LlamaLike(make_config(width))


def example_inputs():
    """(token ids of shape (1, 64),), deterministic, on the CPU."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, 32000, (1, 64), generator=generator),)

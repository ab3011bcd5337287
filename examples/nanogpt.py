"""Shared nanoGPT-style GPT used by the gpt_*.py examples (not an example itself).

Width is d_model: embeddings, attention (d -> 3d fused qkv), the 4d MLP and,
depending on how an example picks n_head, d_head scale with it. Vocabulary size,
sequence length and depth are fixed.
"""
import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    d_model: int
    n_head: int
    vocab_size: int = 64
    block_size: int = 16
    n_layer: int = 2
    dropout: float = 0.1
    attention: Literal["sdpa", "manual"] = "sdpa"
    tied: bool = False
    # Multiplier on q @ k^T; None means the standard 1 / sqrt(d_head).
    attn_scale: Optional[float] = None

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head


def random_token_ids(config: GPTConfig, batch_size: int = 4) -> torch.Tensor:
    """Deterministic (batch_size, block_size) token ids on CPU."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(
        0, config.vocab_size, (batch_size, config.block_size), generator=generator
    )


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.d_model % config.n_head == 0
        self.n_head = config.n_head
        self.attention = config.attention
        self.scale = config.attn_scale
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model)
        self.c_proj = nn.Linear(config.d_model, config.d_model)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.attention == "sdpa":
            y = self._sdpa_attention(q, k, v)
        else:
            y = self._manual_attention(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _sdpa_attention(self, q, k, v):
        dropout_p = self.dropout if self.training else 0.0
        if self.scale is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=dropout_p, scale=self.scale
        )

    def _manual_attention(self, q, k, v):
        T = q.size(-2)
        if self.scale is None:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        else:
            att = (q @ k.transpose(-2, -1)) * self.scale
        causal = torch.tril(torch.ones(T, T, device=q.device))
        att = att.masked_fill(causal == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return att @ v


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    # Class of the untied lm_head; muP twins override it with mup.MuReadout.
    readout_cls = nn.Linear

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.tied = config.tied
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.block_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        if not config.tied:
            self.lm_head = self.readout_cls(config.d_model, config.vocab_size, bias=False)
        self._init_weights(config.n_layer)

    def _init_weights(self, n_layer: int) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if self.tied:
            return F.linear(x, self.wte.weight)
        return self.lm_head(x)

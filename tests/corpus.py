"""A corpus of tiny models, one per way a real model can trip the compiler, each with the
muP-correct expectation written by hand (Tensor Programs V, Table 8, as the `mup` package).

Every `make(width)` grows the hidden size with `width`: base 32, target 128 (delta 64), so the
fan-in multiplier of a hidden matrix is m = 4. What muP requires, per role:

    hidden (both dims grow)          init std / sqrt(m), Adam LR 1/m          -> ("hidden", 0.25)
    readout (fan_in grows only)      1/m on the readout's input, Adam LR 1    -> ("output", 1.0)
                                     and a readout_multiplier edit of factor 1/m = 0.25
    input weights, embeddings        unchanged                                -> ("input", 1.0)
    biases, gains (one growing dim)  unchanged                                -> ("vector", 1.0)
    no growing dim                   unchanged                                -> ("scalar", 1.0)
    attention logits, d_head grows   scale 1/sqrt(d) -> sqrt(d_base)/d: an attention_scale edit
                                     of factor sqrt(d_base/d) = sqrt(16/64) = 0.5

Attention models have 2 heads, so d_head = width / 2 grows (16 at base, 64 at target). An
entry that muP cannot be applied to safely has `refuse`: the regex its MuRewriteError matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

BASE, TARGET = 32, 128
M = TARGET / BASE
VOCAB, BATCH, SEQ, FEATURES = 16, 2, 8, 8
HEADS = 2
ATTENTION_FACTOR = math.sqrt((BASE // HEADS) / (TARGET // HEADS))  # 0.5
HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


def tokens() -> tuple:
    return (torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0)),)


def features() -> tuple:
    return (torch.randn(BATCH, SEQ, FEATURES, generator=torch.Generator().manual_seed(0)),)


def scaled(h: torch.Tensor, factor: float) -> torch.Tensor:
    """`h * factor`, and `h` itself at factor 1 (so the SP model's graph has no extra node)."""
    return h if factor == 1.0 else h * factor


def hidden(n_in: int, n_out: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))


@dataclass(frozen=True)
class P:
    """The expected plan of one parameter: role (or the roles sharing its rule), Adam LR multiplier."""

    role: str | tuple
    adam: float
    trainable: bool = True


@dataclass(frozen=True)
class Entry:
    name: str
    make: type  # the model class: make(width) -> nn.Module
    inputs: object = tokens
    params: dict = field(default_factory=dict)  # parameter name -> P
    edits: tuple = ()  # (kind, module, factor), one per edit, in any order
    refuse: str | None = None  # regex the MuRewriteError must match
    options: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Attention: every variant below must end with exactly one attention_scale edit of factor 0.5.


class Attention(nn.Module):
    """Plain softmax attention, 2 heads of d_head = width / 2, logits scaled by `self.scale` =
    1/sqrt(d_head). muP: since d_head grows, the logit scale must become sqrt(d_base)/d_head."""

    def __init__(self, width: int):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.scale = (width // HEADS) ** -0.5

    def forward(self, x):
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, HEADS, w // HEADS).permute(2, 0, 3, 1, 4)
        probs = self.attend(q, k)
        return self.proj((probs @ v).transpose(1, 2).reshape(b, t, w))

    def attend(self, q, k):
        return torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)


class SoftCapAttention(Attention):
    """Gemma-2's tanh soft-capping of the logits, `cap * tanh(logits / cap)`. muP: the q·k scale
    inside the cap goes to sqrt(d_base)/d; the cap itself does not depend on width and stays."""

    cap = 50.0

    def attend(self, q, k):
        logits = q @ k.transpose(-2, -1) * self.scale
        return torch.softmax(self.cap * torch.tanh(logits / self.cap), dim=-1)


class SinkAttention(Attention):
    """gpt-oss attention sinks: a learned logit per head joins the softmax as an extra column that
    is dropped afterwards. muP: the q·k scale changes; the sinks (no growing dim) are scalars."""

    def __init__(self, width: int):
        super().__init__(width)
        self.sinks = nn.Parameter(torch.zeros(HEADS))

    def attend(self, q, k):
        logits = q @ k.transpose(-2, -1) * self.scale
        b, h, t, _ = logits.shape
        sinks = self.sinks.reshape(1, h, 1, 1).expand(b, h, t, 1)
        probs = torch.softmax(torch.cat([logits, sinks], dim=-1), dim=-1)
        return probs[..., :-1]


class ClampAttention(Attention):
    """Logits clamped to [-30, 30] before the softmax. muP: the scale changes; the clamp stays."""

    def attend(self, q, k):
        return torch.softmax(torch.clamp(q @ k.transpose(-2, -1) * self.scale, -30.0, 30.0), dim=-1)


class MaximumAttention(Attention):
    """Logits floored with `torch.maximum(logits, tensor(min))` (old HF OPT/BLOOM). muP: the scale
    changes; the floor stays."""

    def attend(self, q, k):
        logits = q @ k.transpose(-2, -1) * self.scale
        return torch.softmax(torch.maximum(logits, torch.tensor(-1e4)), dim=-1)


class InplaceMaskAttention(Attention):
    """An additive causal mask added in place, `logits.add_(mask)`. muP: the scale changes; the
    mask stays."""

    def __init__(self, width: int):
        super().__init__(width)
        self.register_buffer("mask", torch.full((SEQ, SEQ), float("-inf")).triu(1))

    def attend(self, q, k):
        logits = q @ k.transpose(-2, -1) * self.scale
        logits.add_(self.mask)
        return torch.softmax(logits, dim=-1)


class InplaceMaskedFillAttention(Attention):
    """A causal mask filled in place, `logits.masked_fill_(mask, -inf)`. muP: the scale changes."""

    def __init__(self, width: int):
        super().__init__(width)
        self.register_buffer("causal", torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1))

    def attend(self, q, k):
        logits = q @ k.transpose(-2, -1) * self.scale
        logits.masked_fill_(self.causal, float("-inf"))
        return torch.softmax(logits, dim=-1)


class DropoutAttention(Attention):
    """Dropout on the attention probabilities. muP: the scale changes; dropout is width-free."""

    def attend(self, q, k):
        probs = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return F.dropout(probs, 0.1, self.training)


class AlibiKeywordAttention(Attention):
    """BLOOM's ALiBi: `alibi.baddbmm(batch1=q, batch2=k^T, beta=1.0, alpha=1/sqrt(d))`, all by
    keyword. muP: alpha (the q·k scale) goes to sqrt(d_base)/d; the ALiBi bias (beta) stays."""

    def __init__(self, width: int):
        super().__init__(width)
        self.register_buffer("slopes", 2.0 ** -torch.arange(1.0, HEADS + 1))

    def alibi(self, b: int, t: int):
        return (self.slopes[:, None, None] * torch.arange(t)[None, None, :]).repeat(b, 1, 1)

    def attend(self, q, k):
        b, h, t, d = q.shape
        q, k = q.reshape(b * h, t, d), k.reshape(b * h, t, d)
        logits = self.alibi(b, t).baddbmm(batch1=q, batch2=k.transpose(1, 2), beta=1.0, alpha=self.scale)
        return torch.softmax(logits, dim=-1).view(b, h, t, t)


class AlibiPositionalAttention(AlibiKeywordAttention):
    """ALiBi with q and k^T passed positionally, `torch.baddbmm(alibi, q, k^T, alpha=...)`."""

    def attend(self, q, k):
        b, h, t, d = q.shape
        q, k = q.reshape(b * h, t, d), k.reshape(b * h, t, d)
        logits = torch.baddbmm(self.alibi(b, t), q, k.transpose(1, 2), beta=1.0, alpha=self.scale)
        return torch.softmax(logits, dim=-1).view(b, h, t, t)


class CumsumLogitsAttention(Attention):
    """Logits through a cumulative sum before the softmax: no known logit semantics, so whether
    the 1/d rule applies is unknowable. muP cannot be applied safely: the compiler must refuse,
    naming the softmax/attention, not leave the logit scale at 1/sqrt(d) silently."""

    def attend(self, q, k):
        return torch.softmax(torch.cumsum(q @ k.transpose(-2, -1) * self.scale, dim=-1), dim=-1)


class SortedLogitsAttention(Attention):
    """Logits sorted along the key dim before the softmax (an op without a pointwise tag): refuse."""

    def attend(self, q, k):
        return torch.softmax(torch.sort(q @ k.transpose(-2, -1) * self.scale, dim=-1).values, dim=-1)


class AttentionModel(nn.Module):
    """Embedding -> residual attention -> readout. muP: embedding unchanged, q/k/v and output
    projections hidden (Adam LR 1/m), the readout gets 1/m on its input, the logits 1/d."""

    attention_class = Attention

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.attn = self.attention_class(width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + self.attn(h))


def attention_model(attention: type) -> type:
    """The AttentionModel around one attention variant (docstring: the variant's)."""
    return type(f"{attention.__name__}Model", (AttentionModel,), {"attention_class": attention, "__doc__": attention.__doc__})


ATTENTION_PARAMS = {
    "emb.weight": P("input", 1.0),
    "attn.qkv.weight": P("hidden", 1 / M),
    "attn.proj.weight": P("hidden", 1 / M),
    "head.weight": P("output", 1.0),
    "head.bias": P("scalar", 1.0),
}
ATTENTION_EDITS = (("attention_scale", "attn", ATTENTION_FACTOR), ("readout_multiplier", "head", 1 / M))
ATTENTION_VARIANTS = (Attention, SoftCapAttention, SinkAttention, ClampAttention, MaximumAttention,
                      InplaceMaskAttention, InplaceMaskedFillAttention, DropoutAttention,
                      AlibiKeywordAttention, AlibiPositionalAttention)


def _attention_entries() -> list:
    entries = []
    for variant in ATTENTION_VARIANTS:
        params = dict(ATTENTION_PARAMS)
        if variant is SinkAttention:
            params["attn.sinks"] = P("scalar", 1.0)
        entries.append(Entry(f"attention-{variant.__name__}", attention_model(variant),
                             params=params, edits=ATTENTION_EDITS))
    for variant in (CumsumLogitsAttention, SortedLogitsAttention):
        entries.append(Entry(f"attention-{variant.__name__}", attention_model(variant),
                             refuse=r"(?i)softmax|attention"))
    return entries


# ---------------------------------------------------------------------------------------------
# Grad mode and autocast regions: the parameters inside are classified as anywhere else.


class NoGradBranch(nn.Module):
    """An EMA/teacher-style linear run under `torch.no_grad()` whose output feeds the main path.
    muP: it is still a hidden matrix (init / sqrt(m), Adam LR 1/m); no_grad changes nothing."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.main = nn.Linear(width, width)
        self.ema = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        with torch.no_grad():
            target = self.ema(h)
        return self.head(h + torch.relu(self.main(h)) + target)


class AutocastBlock(nn.Module):
    """A hidden linear and a functional readout `F.linear(h, self.head_weight)` under
    `torch.autocast("cpu", bfloat16)`. muP: the linear is hidden, the readout weight gets 1/m on
    its input (by call interception: no nn.Linear to hook); autocast changes nothing."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.hid = nn.Linear(width, width)
        self.head_weight = hidden(width, VOCAB)
        self.readout_scale = 1.0

    def forward(self, ids):
        h = self.emb(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = h + torch.relu(self.hid(h))
            logits = F.linear(scaled(h, self.readout_scale), self.head_weight)
        return logits.float()


# ---------------------------------------------------------------------------------------------
# Weights reached through transposes, reshapes, repeats, resampling, placement and concatenation.


class TransposedWeights(nn.Module):
    """Falcon-style `x @ self.weight.T` for a hidden matrix and for the readout. muP: the same
    roles as through nn.Linear (hidden: Adam LR 1/m; readout: 1/m on its input)."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.weight = hidden(width, width)
        self.out_weight = hidden(width, VOCAB)
        self.readout_scale = 1.0

    def forward(self, ids):
        h = self.emb(ids)
        h = h + torch.relu(h @ self.weight.T)
        return scaled(h, self.readout_scale) @ self.out_weight.T


class MatrixTransposedWeights(TransposedWeights):
    """`x @ self.weight.mT`: the same as `.T`."""

    def forward(self, ids):
        h = self.emb(ids)
        h = h + torch.relu(h @ self.weight.mT)
        return scaled(h, self.readout_scale) @ self.out_weight.mT


class ReshapedAsWeight(nn.Module):
    """A [heads, d_head, d_model] weight applied as a matrix via `reshape_as` another weight.
    muP: both its dims grow once flattened (fan_in d_model): hidden, Adam LR 1/m."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.up = nn.Linear(width, width)
        self.per_head = nn.Parameter(torch.randn(HEADS, width // HEADS, width) / math.sqrt(width))
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        h = h + torch.relu(self.up(h)) + F.linear(h, self.per_head.reshape_as(self.up.weight))
        return self.head(h)


class RepeatedWeight(nn.Module):
    """A [width/2, width] weight repeated to [width, width] before use (a GQA-style repeat on the
    weight). muP: a hidden matrix with fan_in width: Adam LR 1/m."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.half_rows = hidden(width, width // 2)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + torch.relu(F.linear(h, self.half_rows.repeat(2, 1))))


class InterpolatedPositions(nn.Module):
    """A learned [width, 4] positional table resampled to the sequence length with
    `F.interpolate` and added. muP: an input-like vector (one growing dim, no contraction):
    unchanged, Adam LR 1."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(torch.randn(width, 4))
        self.hid = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        pos = F.interpolate(self.pos[None], size=ids.shape[1], mode="linear", align_corners=False)[0].T
        h = self.emb(ids) + pos
        return self.head(h + torch.relu(self.hid(h)))


class PlacedToken(nn.Module):
    """A learned token placed at position 0 with `index_put` (a ViT cls token). muP: a vector,
    unchanged, Adam LR 1."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        self.hid = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        rows = torch.arange(h.shape[0])
        h = h.index_put((rows, torch.zeros_like(rows)), self.cls.expand(h.shape[0], -1))
        return self.head(h + torch.relu(self.hid(h)))


class ConcatenatedReadoutInput(nn.Module):
    """A readout over `torch.cat([h1, h2], -1)` of two width-sized activations: fan_in 2 * width
    still grows by m, so the readout gets 1/m on its input (and no more)."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)
        self.head = nn.Linear(2 * width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(torch.cat([torch.relu(self.a(h)), torch.tanh(self.b(h))], dim=-1))


class ConcatenatedReadoutWeight(nn.Module):
    """A readout whose weight is the concatenation of two parameters,
    `F.linear(h, torch.cat([w1, w2], 0))`: both are readout weights of one use site, which gets
    exactly one 1/m multiplier (not one per parameter)."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.hid = nn.Linear(width, width)
        self.w1 = hidden(width, VOCAB)
        self.w2 = hidden(width, VOCAB // 2)
        self.readout_scale = 1.0

    def forward(self, ids):
        h = self.emb(ids)
        h = h + torch.relu(self.hid(h))
        return F.linear(scaled(h, self.readout_scale), torch.cat([self.w1, self.w2], 0))


# ---------------------------------------------------------------------------------------------
# Modules that run several times per forward.


class SharedBlock(nn.Module):
    """One transformer block (attention with growing d_head + a hidden linear)."""

    def __init__(self, width: int):
        super().__init__()
        self.attn = Attention(width)
        self.ff = nn.Linear(width, width)

    def forward(self, h):
        h = h + self.attn(h)
        return h + torch.relu(self.ff(h))


class SharedLayerThrice(nn.Module):
    """ALBERT-style: one block applied 3 times. muP: each of the 3 q·k contractions needs the
    1/d logit scale (3 attention_scale edits of factor 0.5), applied at every call."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.layer = SharedBlock(width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        for _ in range(3):
            h = self.layer(h)
        return self.head(h)


class ReadoutTwice(nn.Module):
    """The same nn.Linear readout called twice in a loop (deep supervision). muP: each call's
    input gets 1/m exactly once."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.hid = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        outputs = []
        for _ in range(2):
            h = h + torch.relu(self.hid(h))
            outputs.append(self.head(h))
        return torch.stack(outputs)


# ---------------------------------------------------------------------------------------------
# Stacked / fused MoE experts, expert-choice routing with a fixed capacity (static shapes).

EXPERTS, CAPACITY = 4, 4


class StackedExperts(nn.Module):
    """Expert weights stacked as [E, d_ffn, d] and [E, d, d_ffn] (d_ffn = 2 * width), applied with
    `torch.bmm` to the tokens each expert picked. muP: each expert is a hidden matrix with its own
    fan-in (d, resp. d_ffn; not E * d): Adam LR 1/m; the router (width -> E) is a readout with a
    1/m multiplier on its input."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.router = nn.Linear(width, EXPERTS, bias=False)
        self.w_up = nn.Parameter(torch.randn(EXPERTS, 2 * width, width) / math.sqrt(width))
        self.w_down = nn.Parameter(torch.randn(EXPERTS, width, 2 * width) / math.sqrt(2 * width))
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids).flatten(0, 1)
        gate, picked = torch.softmax(self.router(h), dim=-1).topk(CAPACITY, dim=0)
        y = self.experts(h[picked.T]) * gate.T[..., None]
        h = h.index_add(0, picked.T.flatten(), y.flatten(0, 1))
        return self.head(h.view(ids.shape[0], ids.shape[1], -1))

    def experts(self, x):
        return torch.bmm(torch.relu(torch.bmm(x, self.w_up.transpose(1, 2))), self.w_down.transpose(1, 2))


class EinsumExperts(StackedExperts):
    """The same experts through `torch.einsum("ecd,efd->ecf", ...)`."""

    def experts(self, x):
        up = torch.relu(torch.einsum("ecd,efd->ecf", x, self.w_up))
        return torch.einsum("ecf,edf->ecd", up, self.w_down)


class GroupedMatmulExperts(StackedExperts):
    """The same experts through `torch._grouped_mm` on the tokens laid out expert by expert
    (bfloat16, which its CPU kernel and fake kernel require)."""

    def experts(self, x):
        e, c, d = x.shape
        offsets = torch.arange(1, e + 1, dtype=torch.int32) * c
        up = torch._grouped_mm(x.reshape(e * c, d).bfloat16(), self.w_up.transpose(1, 2).bfloat16(), offs=offsets)
        down = torch._grouped_mm(torch.relu(up), self.w_down.transpose(1, 2).bfloat16(), offs=offsets)
        return down.float().view(e, c, d)


EXPERT_PARAMS = {
    "emb.weight": P("input", 1.0),
    "router.weight": P("output", 1.0),
    "w_up": P("hidden", 1 / M),
    "w_down": P("hidden", 1 / M),
    "head.weight": P("output", 1.0),
    "head.bias": P("scalar", 1.0),
}
EXPERT_EDITS = (("readout_multiplier", "router", 1 / M), ("readout_multiplier", "head", 1 / M))


# ---------------------------------------------------------------------------------------------
# Hand-written normalizations: their gains are gains (option norm_gains="frozen" freezes them).


class HandRMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class HandLayerNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.g = nn.Parameter(torch.ones(width))
        self.b = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * self.g + self.b


class RMSNormModel(nn.Module):
    """A hand-written RMSNorm `x * rsqrt(mean(x^2) + eps) * weight`. muP with
    norm_gains="frozen" (Lingle 2024): its weight is a norm gain, so it is not trainable."""

    norm_class = HandRMSNorm

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.norm = self.norm_class(width)
        self.hid = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + torch.relu(self.hid(self.norm(h))))


class LayerNormModel(RMSNormModel):
    """A hand-written LayerNorm `(x - mu) / sqrt(var + eps) * g + b`. muP with
    norm_gains="frozen": the gain g is frozen, the bias b stays trainable."""

    norm_class = HandLayerNorm


# ---------------------------------------------------------------------------------------------
# Width-dependent constants the model itself puts around a readout.


class TiedScaledLogits(nn.Module):
    """A tied readout whose output is scaled by `dim ** -0.5` (dim = width). That constant already
    shrinks with width; muP's 1/m on top of it would give 1/m^1.5. muP-correct: hold the constant
    at its base value (32 ** -0.5) so the readout's only width dependence is 1/m, or refuse."""

    def __init__(self, width: int):
        super().__init__()
        self.dim = width
        self.emb = nn.Embedding(VOCAB, width)
        self.hid = nn.Linear(width, width)
        self.readout_scale = 1.0

    def forward(self, ids):
        h = self.emb(ids)
        h = h + torch.relu(self.hid(h))
        return F.linear(scaled(h, self.readout_scale), self.emb.weight) * self.dim ** -0.5


class BufferScaledReadout(nn.Module):
    """A readout whose input is multiplied by a registered buffer holding `dim ** -0.5`. The same
    rule: the buffer's width dependence must be held at base, or the plan refused."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.hid = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)
        self.register_buffer("scale", torch.tensor(width ** -0.5))

    def forward(self, ids):
        h = self.emb(ids)
        h = h + torch.relu(self.hid(h))
        return self.head(h * self.scale)


# ---------------------------------------------------------------------------------------------
# Ops the compiler cannot know.


@torch.library.custom_op("muprewrite_corpus::reparametrize", mutates_args=())
def reparametrize(weight: torch.Tensor) -> torch.Tensor:
    return weight * 2.0


@reparametrize.register_fake
def _(weight):
    return torch.empty_like(weight)


def _reparametrize_backward(ctx, grad):
    return grad * 2.0


reparametrize.register_autograd(_reparametrize_backward)


class CumsumParameter(nn.Module):
    """A parameter used through `torch.cumsum`: no rule can say how it scales with width. muP
    cannot be applied safely: refused by default, naming it; kept in SP with unknown_ops="sp"."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.hid = nn.Linear(width, width)
        self.offsets = nn.Parameter(torch.randn(width) * 0.1)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + torch.relu(self.hid(h)) + torch.cumsum(self.offsets, 0))


class CustomOpParameter(nn.Module):
    """A weight passed through a custom `torch.library` op with no registered meaning before its
    linear: refused by default, naming it; kept in SP with unknown_ops="sp"."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.mystery_weight = hidden(width, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + torch.relu(F.linear(h, torch.ops.muprewrite_corpus.reparametrize(self.mystery_weight))))


UNKNOWN_OP_PARAMS = {CumsumParameter: "offsets", CustomOpParameter: "mystery_weight"}


# ---------------------------------------------------------------------------------------------
# Capture: models torch.export cannot take as written in train mode or on the meta device.


class LayerDropModel(nn.Module):
    """LayerDrop (`if self.training and torch.rand([]) < p: continue`): train-only data-dependent
    control flow, captured in eval mode where every layer runs. muP: every layer is hidden."""

    def __init__(self, width: int, p: float = 0.5):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(3))
        self.head = nn.Linear(width, VOCAB)
        self.p = p

    def forward(self, ids):
        h = self.emb(ids)
        for layer in self.layers:
            if self.training and torch.rand([]) < self.p:
                continue
            h = h + torch.relu(layer(h))
        return self.head(h)


class AutocastOnInputDevice(nn.Module):
    """`torch.autocast(device_type=x.device.type)`: "meta" is no autocast device, so capture falls
    back to fake tensors on CPU. muP: the input layer is input, the inner linear hidden."""

    def __init__(self, width: int):
        super().__init__()
        self.inp = nn.Linear(FEATURES, width)
        self.hid = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            h = h + torch.relu(self.hid(h))
        return self.head(h.float())


def _linear_params(prefix: str, role: str, adam: float, bias_role: str) -> dict:
    return {f"{prefix}.weight": P(role, adam), f"{prefix}.bias": P(bias_role, 1.0)}


READOUT = (("readout_multiplier", "head", 1 / M),)
EMB = {"emb.weight": P("input", 1.0)}
HEAD = _linear_params("head", "output", 1.0, "scalar")
VECTOR_LIKE = ("vector", "input")  # one growing dim: both roles keep init and Adam LR

ENTRIES = [
    *_attention_entries(),
    Entry("no-grad-branch", NoGradBranch, params={
        **EMB, **_linear_params("main", "hidden", 1 / M, "vector"),
        **_linear_params("ema", "hidden", 1 / M, "vector"), **HEAD}, edits=READOUT),
    Entry("autocast-block", AutocastBlock, params={
        **EMB, **_linear_params("hid", "hidden", 1 / M, "vector"), "head_weight": P("output", 1.0)},
        edits=(("readout_multiplier", "", 1 / M),)),
    *[Entry(f"layout-{cls.__name__}", cls, params={
        **EMB, "weight": P("hidden", 1 / M), "out_weight": P("output", 1.0)},
        edits=(("readout_multiplier", "", 1 / M),)) for cls in (TransposedWeights, MatrixTransposedWeights)],
    Entry("layout-reshape_as", ReshapedAsWeight, params={
        **EMB, **_linear_params("up", "hidden", 1 / M, "vector"), "per_head": P("hidden", 1 / M), **HEAD},
        edits=READOUT),
    Entry("layout-repeat", RepeatedWeight, params={**EMB, "half_rows": P("hidden", 1 / M), **HEAD}, edits=READOUT),
    Entry("layout-interpolate", InterpolatedPositions, params={
        **EMB, "pos": P(VECTOR_LIKE, 1.0), **_linear_params("hid", "hidden", 1 / M, "vector"), **HEAD},
        edits=READOUT),
    Entry("layout-index_put", PlacedToken, params={
        **EMB, "cls": P("vector", 1.0), **_linear_params("hid", "hidden", 1 / M, "vector"), **HEAD},
        edits=READOUT),
    Entry("layout-cat-readout-input", ConcatenatedReadoutInput, params={
        **EMB, **_linear_params("a", "hidden", 1 / M, "vector"), **_linear_params("b", "hidden", 1 / M, "vector"),
        **HEAD}, edits=READOUT),
    Entry("layout-cat-readout-weight", ConcatenatedReadoutWeight, params={
        **EMB, **_linear_params("hid", "hidden", 1 / M, "vector"), "w1": P("output", 1.0), "w2": P("output", 1.0)},
        edits=(("readout_multiplier", "", 1 / M),)),
    Entry("shared-layer-thrice", SharedLayerThrice, params={
        **EMB, "layer.attn.qkv.weight": P("hidden", 1 / M), "layer.attn.proj.weight": P("hidden", 1 / M),
        **_linear_params("layer.ff", "hidden", 1 / M, "vector"), **HEAD},
        edits=(("attention_scale", "layer.attn", ATTENTION_FACTOR),) * 3 + READOUT),
    Entry("readout-twice", ReadoutTwice, params={
        **EMB, **_linear_params("hid", "hidden", 1 / M, "vector"), **HEAD}, edits=READOUT * 2),
    Entry("experts-bmm", StackedExperts, params=EXPERT_PARAMS, edits=EXPERT_EDITS),
    Entry("experts-einsum", EinsumExperts, params=EXPERT_PARAMS, edits=EXPERT_EDITS),
    Entry("experts-grouped_mm", GroupedMatmulExperts, params=EXPERT_PARAMS, edits=EXPERT_EDITS),
    Entry("norm-rms-frozen", RMSNormModel, options={"norm_gains": "frozen"}, params={
        **EMB, "norm.weight": P("vector", 1.0, trainable=False), **_linear_params("hid", "hidden", 1 / M, "vector"),
        **HEAD}, edits=READOUT),
    Entry("norm-layer-frozen", LayerNormModel, options={"norm_gains": "frozen"}, params={
        **EMB, "norm.g": P("vector", 1.0, trainable=False), "norm.b": P("vector", 1.0),
        **_linear_params("hid", "hidden", 1 / M, "vector"), **HEAD}, edits=READOUT),
    *[Entry(f"unknown-op-{cls.__name__}", cls, refuse=name) for cls, name in UNKNOWN_OP_PARAMS.items()],
    Entry("capture-layerdrop", LayerDropModel, params={
        **EMB, **{k: v for i in range(3) for k, v in _linear_params(f"layers.{i}", "hidden", 1 / M, "vector").items()},
        **HEAD}, edits=READOUT),
    Entry("capture-autocast-input-device", AutocastOnInputDevice, inputs=features, params={
        **_linear_params("inp", "input", 1.0, "vector"), **_linear_params("hid", "hidden", 1 / M, "vector"), **HEAD},
        edits=READOUT),
]

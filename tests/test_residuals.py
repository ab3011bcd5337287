"""The residual streams found from the graph (passes/residuals.py), on hand-written models whose
residual structure is known: pre-LN, post-LN and parallel blocks, and adds that are not residual."""

import torch
import torch.nn.functional as F
from torch import nn

from muprewrite import analyse_widths


def residuals(make_model, width=32, inputs=None):
    inputs = inputs if inputs is not None else (torch.randint(0, 50, (2, 8)),)
    analysis = analyse_widths(make_model, base=width, target=4 * width, example_inputs=inputs, share_blocks=False)
    compilation = analysis.compilation
    return compilation.residuals, compilation.flow


class Rotary(nn.Module):
    def forward(self, q):
        cos, sin = torch.ones_like(q) * 0.5, torch.ones_like(q) * 0.25
        rotated = torch.cat([-q[..., q.shape[-1] // 2:], q[..., :q.shape[-1] // 2]], dim=-1)
        return q * cos + rotated * sin  # an add of two terms computed from q: not residual


class Attention(nn.Module):
    def __init__(self, width, heads=2):
        super().__init__()
        self.heads, self.qkv, self.proj, self.rotary = heads, nn.Linear(width, 3 * width), nn.Linear(width, width), Rotary()

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
        scores = self.rotary(q) @ k.transpose(-1, -2) / (d // self.heads) ** 0.5
        scores = scores + torch.triu(torch.full((t, t), -1e9), 1)  # a mask: not residual
        out = F.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, width, kind):
        super().__init__()
        self.kind, self.ln1, self.ln2 = kind, nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn, self.mlp = Attention(width), Mlp(width)

    def forward(self, x):
        if self.kind == "pre":
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        if self.kind == "post":
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.mlp(x))
        h = self.ln1(x)  # parallel (GPT-J): both branches read the same x
        return x + self.attn(h) + self.mlp(h)


class Model(nn.Module):
    def __init__(self, width, kind, depth=2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(50, width), nn.Parameter(torch.randn(8, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, kind) for _ in range(depth))
        self.head = nn.Linear(width, 50)

    def forward(self, ids):
        x = self.tok(ids) + self.pos  # two independent embeddings: not residual
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def branch_outputs(found, flow):
    return [flow.module(r.branch[-1]) for r in found]


def test_pre_ln_blocks_make_one_stream_of_branches():
    found, flow = residuals(lambda width: Model(width, "pre"))
    assert [r.module for r in found] == ["blocks.0", "blocks.0", "blocks.1", "blocks.1"]
    assert branch_outputs(found, flow) == ["blocks.0.attn.proj", "blocks.0.mlp.down", "blocks.1.attn.proj", "blocks.1.mlp.down"]
    assert {r.stream_id for r in found} == {0} and not any(r.after_norm for r in found)
    first = found[0]  # the branch is everything from the stream read to the add: ln1, the attention
    assert first.read == flow.fx(first.node).args[0].name
    modules = {flow.module(n) for n in first.branch}
    assert {"blocks.0.ln1", "blocks.0.attn.qkv", "blocks.0.attn.proj"} <= modules and "blocks.0.mlp.up" not in modules


def test_post_ln_blocks_are_marked_after_a_norm():
    found, _ = residuals(lambda width: Model(width, "post"))
    assert len(found) == 4 and {r.stream_id for r in found} == {0}
    assert [r.after_norm for r in found] == [False, True, True, True]  # the first add reads the embeddings


def test_parallel_branches_both_read_the_stream():
    found, flow = residuals(lambda width: Model(width, "parallel"))
    assert branch_outputs(found, flow) == ["blocks.0.attn.proj", "blocks.0.mlp.down", "blocks.1.attn.proj", "blocks.1.mlp.down"]
    assert found[1].read == found[0].read  # the mlp branch reads x, not x + attn(h)
    assert "blocks.0.attn.proj" not in {flow.module(n) for n in found[1].branch}
    assert {r.stream_id for r in found} == {0}


def test_two_independent_streams_are_told_apart():
    class TwoTowers(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.a, self.b = Model(width, "pre", depth=1), Model(width, "pre", depth=1)

        def forward(self, ids):
            return self.a(ids) + self.b(ids)  # two logits added: computed apart, not residual

    found, _ = residuals(TwoTowers)
    assert [r.module for r in found] == ["a.blocks.0", "a.blocks.0", "b.blocks.0", "b.blocks.0"]
    assert [r.stream_id for r in found] == [0, 0, 1, 1]

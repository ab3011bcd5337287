"""Depth transfer (CompleteP, depth-muP): the plan against a hand-written CompleteP twin, the
identity at base width and depth, and the refusals (post-LN, blocks not proportional to depth)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from muprewrite import Plan, apply_plan, fold, mupify
from muprewrite.errors import MuRewriteError

BASE, TARGET, VOCAB, SEQ = 32, 64, 61, 8


class Block(nn.Module):
    def __init__(self, width, branch_scale=1.0, post_ln=False):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.scale, self.post_ln = branch_scale, post_ln

    def attn(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, 2, d // 2).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        if self.post_ln:
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.down(F.gelu(self.up(x))))
        x = x + self.scale * self.attn(self.ln1(x))
        return x + self.scale * self.down(F.gelu(self.up(self.ln2(x))))


class Gpt(nn.Module):
    def __init__(self, width, depth, branch_scale=1.0, post_ln=False, extra_blocks=0, gpt2_init=False):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, width), nn.Embedding(SEQ, width)
        self.blocks = nn.ModuleList(Block(width, branch_scale, post_ln) for _ in range(depth + extra_blocks))
        self.ln_f, self.head = nn.LayerNorm(width), nn.Linear(width, VOCAB, bias=False)
        for name, param in self.named_parameters() if gpt2_init else ():
            if name.endswith(("proj.weight", "down.weight")):  # GPT-2: output projections 0.02 / sqrt(2 L)
                nn.init.normal_(param, std=0.02 / (2 * len(self.blocks)) ** 0.5)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def make_model(width, depth=2):
    return Gpt(width, depth)


def ids():
    return (torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0)),)


def twin(alpha, depth_base, depth):
    """CompleteP by hand: every residual branch times (depth / depth_base)^-alpha."""
    return lambda width: Gpt(width, depth, branch_scale=(depth / depth_base) ** -alpha)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_the_plan_is_the_hand_written_completep_twin(alpha):
    depth_base, depth_target = 2, 8
    deep = mupify(make_model, base=BASE, target=TARGET, example_inputs=ids(), depth_base=depth_base,
                  depth_target=depth_target, options={"depth_alpha": alpha})
    by_hand = mupify(twin(alpha, depth_base, depth_target), base=BASE, target=TARGET, example_inputs=ids())
    by_hand.model.load_state_dict(deep.model.state_dict())
    torch.testing.assert_close(deep.model(*ids()), by_hand.model(*ids()), rtol=1e-5, atol=1e-6)

    multiplier = depth_target / depth_base
    branches = [e for e in deep.plan.edits if e.kind == "branch_multiplier"]
    assert len(branches) == 2 * depth_target
    assert all(e.factor == pytest.approx(multiplier ** -alpha) for e in branches)
    assert deep.plan.depth["multiplier"] == multiplier and deep.plan.depth["alpha"] == alpha
    for name, entry in deep.plan.parameters.items():
        hand = by_hand.plan.parameters[name]
        in_blocks = name.startswith("blocks.")
        assert entry.lr_mult["adam"] == pytest.approx(hand.lr_mult["adam"] * (multiplier ** (alpha - 1) if in_blocks else 1))
        assert entry.init_std == pytest.approx(hand.init_std)  # no depth term in the init
        assert (entry.lr_mult["sgd"] is None) == in_blocks  # no stated depth rule for SGD
    with pytest.raises(MuRewriteError, match="inside the blocks that repeat with depth, and sgd has no stated depth rule"):
        deep.param_groups(lr=1e-3, optimizer="sgd")
    groups = deep.param_groups(lr=1e-3, optimizer="adamw")
    assert {round(g["lr"] / 1e-3, 9) for g in groups} >= {round(multiplier ** (alpha - 1) / 2, 9)}  # hidden: 1/m_N x depth


def test_an_init_that_shrinks_with_depth_is_the_proxys_at_every_depth():
    """CompleteP's init has no depth term: GPT-2's 0.02/sqrt(2L) is taken at the proxy's depth."""
    deep = mupify(lambda width, depth=2: Gpt(width, depth, gpt2_init=True), base=BASE, target=TARGET,
                  example_inputs=ids(), depth_base=2, depth_target=8, materialize=False, verify_width=False)
    proxy = mupify(lambda width: Gpt(width, 2, gpt2_init=True), base=BASE, target=TARGET, example_inputs=ids(),
                   materialize=False, verify_width=False)
    for name in ("blocks.0.proj.weight", "blocks.7.down.weight", "blocks.3.qkv.weight", "head.weight"):
        proxy_name = name.replace("blocks.7", "blocks.1").replace("blocks.3", "blocks.1")
        assert deep.plan.parameters[name].init_std["after"] == pytest.approx(
            proxy.plan.parameters[proxy_name].init_std["after"], rel=0.05), name
    own = deep.plan.parameters["blocks.7.down.weight"].init_std["before"]
    assert own == pytest.approx(0.02 / 4, rel=0.05)  # the model's own at depth 8, which the plan does not follow


def test_at_base_width_and_depth_the_rewrite_is_the_original_bit_for_bit():
    torch.manual_seed(3)
    result = mupify(make_model, base=BASE, target=BASE, example_inputs=ids(), depth_base=2, depth_target=2)
    torch.manual_seed(3)
    original = make_model(BASE, depth=2)
    assert not result.plan.edits
    for (name, a), (_, b) in zip(result.model.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(result.model(*ids()), original(*ids()))


def test_a_saved_deep_plan_applies_to_a_checkpoint(tmp_path):
    result = mupify(make_model, base=BASE, target=TARGET, example_inputs=ids(), depth_base=2, depth_target=4)
    result.save(tmp_path)
    torch.save(result.model.state_dict(), tmp_path / "model.pt")
    restored = make_model(TARGET, depth=4)
    restored.load_state_dict(torch.load(tmp_path / "model.pt"))
    restored = apply_plan(restored, Plan.load(tmp_path / "plan.json"))
    assert Plan.load(tmp_path / "plan.json").depth == result.plan.depth
    torch.testing.assert_close(restored(*ids()), result.model(*ids()), rtol=0, atol=0)


def test_the_deep_model_folds_to_a_plain_one():
    result = mupify(make_model, base=BASE, target=TARGET, example_inputs=ids(), depth_base=2, depth_target=4)
    assert all("into" in e.fold for e in result.plan.edits if e.kind == "branch_multiplier")
    folded = fold(result.model, result.plan, example_inputs=ids())  # checks the outputs itself
    torch.testing.assert_close(folded(*ids()), result.model(*ids()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("factory, message", [
    (lambda width, depth=2: Gpt(width, depth, post_ln=True), "post-LN"),
    (lambda width, depth=2: Gpt(width, depth, extra_blocks=1), "number changes with depth but not in proportion"),
    (lambda width, depth=2: Gpt(width, 2), "no block of the model repeats in proportion"),
])
def test_what_depth_transfer_cannot_scale_is_refused(factory, message):
    with pytest.raises(MuRewriteError, match=message):
        mupify(factory, base=BASE, target=TARGET, example_inputs=ids(), depth_base=2, depth_target=8, verify_width=False)


def test_a_hugging_face_config_gives_its_own_target_depth_and_keeps_each_kind_of_layer():
    hf = pytest.importorskip("muprewrite.hf")
    from muprewrite.hf.depth import spec_at_depth

    pattern = {"num_hidden_layers": 6, "layer_types": ["sliding"] * 5 + ["full"]}
    assert spec_at_depth(pattern, 12)["layer_types"] == (["sliding"] * 5 + ["full"]) * 2
    with pytest.raises(MuRewriteError, match="would have no 'full' layer; use a depth of at least 6"):
        spec_at_depth(pattern, 4)
    make_model = hf.factory("llama")
    assert len(make_model(64, depth=3).model.layers) == 3


class Adapter(nn.Module):
    def __init__(self, width, index):
        super().__init__()
        self.proj, self.tag = nn.Linear(width, width), f"adapter {index}"  # a plain attribute of its own

    def forward(self, x):
        return x + self.proj(x)


class WithAdapters(nn.Module):
    """Identical blocks, plus one adapter per block that are not identical (each its own tag)."""

    def __init__(self, width, depth=2):
        super().__init__()
        self.gpt = Gpt(width, depth)
        self.adapters = nn.ModuleList(Adapter(width, i) for i in range(depth))

    def forward(self, ids):
        x = self.gpt.wte(ids) + self.gpt.wpe(torch.arange(ids.shape[1]))
        for block, adapter in zip(self.gpt.blocks, self.adapters):
            x = adapter(block(x))
        return self.gpt.head(self.gpt.ln_f(x))


def test_blocks_that_grow_with_depth_but_differ_are_refused():
    """Adapters that depth grows but that are not copies of one: the proxy has no init for the deep ones."""
    with pytest.raises(MuRewriteError, match="'adapters.2.proj.weight' has no counterpart in the model at the base depth"):
        mupify(WithAdapters, base=BASE, target=TARGET, example_inputs=ids(), depth_base=2, depth_target=8, verify_width=False)


def test_t5_whose_first_block_differs_scales_every_block():
    """T5's first block holds the relative position bias: it differs from the others, yet it is one of
    the L blocks depth grows (encoder and decoder), so every residual branch is scaled."""
    hf = pytest.importorskip("muprewrite.hf")
    make_model = hf.factory("t5")
    base, _, target = hf.widths(make_model)
    result = mupify(make_model, base=base, target=target, example_inputs=hf.example_inputs("t5"), depth_base=2,
                    depth_target=4, materialize=False, verify_width=False)
    blocks = result.plan.depth["blocks"]
    assert {"encoder.block.0", "encoder.block.3", "decoder.block.0", "decoder.block.3"} <= set(blocks)
    # per block: encoder self-attention + MLP, decoder self-attention + cross-attention + MLP
    assert sum(e.kind == "branch_multiplier" for e in result.plan.edits) == 4 * 2 + 4 * 3


def test_depth_arguments_come_in_pairs():
    with pytest.raises(MuRewriteError, match="both depth_base and depth_target"):
        mupify(make_model, base=BASE, target=TARGET, example_inputs=ids(), depth_base=2)
    with pytest.raises(MuRewriteError, match="depth_target 2 is below depth_base 4"):
        mupify(make_model, base=BASE, target=TARGET, example_inputs=ids(), depth_base=4, depth_target=2)


def test_hugging_face_llama_matches_a_completep_twin_made_with_hooks():
    """hf:llama at depth 4 from a depth-2 proxy: the realized model is the width-only muP model whose
    attention and MLP outputs (the residual branches) are scaled by hooks, on the same weights."""
    hf = pytest.importorskip("muprewrite.hf")
    make_model = hf.factory("llama")
    base, _, target = hf.widths(make_model)
    inputs = hf.example_inputs("llama")
    deep = mupify(make_model, base=base, target=target, example_inputs=inputs, depth_base=2, depth_target=4,
                  options={"depth_alpha": 0.5})
    twin = mupify(lambda width: make_model(width, depth=4), base=base, target=target, example_inputs=inputs)
    twin.model.load_state_dict(deep.model.state_dict())
    factor = (4 / 2) ** -0.5
    for layer in twin.model.model.layers:
        for branch in (layer.self_attn, layer.mlp):
            branch.register_forward_hook(lambda module, args, out: (out[0] * factor, *out[1:]) if isinstance(out, tuple)
                                         else out * factor)
    deep.model.eval(), twin.model.eval()
    torch.testing.assert_close(deep.model(**inputs).logits, twin.model(**inputs).logits, rtol=1e-5, atol=1e-6)
    assert make_model.depth == 2  # the config's own layer count: the default target depth
    for name, entry in deep.plan.parameters.items():
        in_blocks = name.startswith("model.layers.")
        expected = twin.plan.parameters[name].lr_mult["adam"] * (factor if in_blocks else 1.0)  # m_L^(alpha-1)
        assert entry.lr_mult["adam"] == pytest.approx(expected), name


def test_x_transformers_decoder_gets_every_branch_scaled():
    """A library's own blocks (x-transformers: attention and feed-forward layers alternating, each with
    its Residual module): 2 branches per depth unit, verified."""
    xt = pytest.importorskip("x_transformers")

    def make(width, depth=2):
        return xt.TransformerWrapper(num_tokens=VOCAB, max_seq_len=SEQ,
                                     attn_layers=xt.Decoder(dim=width, depth=depth, heads=2, attn_dim_head=width // 2))

    result = mupify(make, base=BASE, target=TARGET, example_inputs=ids(), depth_base=2, depth_target=6,
                    materialize=False)
    assert sum(e.kind == "branch_multiplier" for e in result.plan.edits) == 2 * 6
    assert result.report.verification is not None


class AddmmResidual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.ln, self.w = nn.LayerNorm(width), nn.Parameter(torch.randn(width, width) / width ** 0.5)

    def forward(self, x):  # x + ln(x) @ w, the residual written into addmm's bias slot
        return torch.addmm(x.flatten(0, 1), self.ln(x).flatten(0, 1), self.w).view_as(x)


class AddmmStack(nn.Module):
    def __init__(self, width, depth=2):
        super().__init__()
        self.wte, self.blocks = nn.Embedding(VOCAB, width), nn.ModuleList(AddmmResidual(width) for _ in range(depth))
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        x = self.wte(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_blocks_with_a_residual_no_add_shows_are_refused():
    with pytest.raises(MuRewriteError, match="no residual add"):
        mupify(AddmmStack, base=BASE, target=TARGET, example_inputs=ids(), depth_base=2, depth_target=8, verify_width=False)

"""Constructs of third-party model code (issue 22's failure classes), each in a small hand-written model.

Each model reproduces one construct seen in public research code; the expectation is checked against
something independent of the pass that decides it: a twin written with the standard construct (a
softmax), the `mup` package's infinite dims and MuAdam LR, an exact invariance, or a one-line refusal
that names the user's source line.
"""
import math

import mup
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import muprewrite
from muprewrite.errors import MuRewriteError, VerificationError
from muprewrite.passes.capture import export_model
from muprewrite.passes.realize import realize
from muprewrite.passes.verify import verify, without_branch_checks

VOCAB, BASE, TARGET = 64, 32, 128


def tokens():
    return (torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0)),)


class LM(nn.Module):
    """Embedding, one residual block, a readout."""

    def __init__(self, width, block):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.block = block
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + self.block(h))


class Heads(nn.Module):
    """q, k, v of 2 heads whose size grows with width; `scores(q, k, v)` is the attention under test."""

    def __init__(self, width, scores):
        super().__init__()
        self.qkv, self.out, self.scores = nn.Linear(width, 3 * width), nn.Linear(width, width), scores

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, 2, c // 2).transpose(1, 2) for z in self.qkv(x).split(c, -1))
        return self.out(self.scores(q, k, v).transpose(1, 2).reshape(b, t, c))


def softmax_scores(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def logsumexp_scores(q, k, v):  # Reformer's normalisation: exp(x - logsumexp(x))
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.exp(logits - torch.logsumexp(logits, -1, keepdim=True)) @ v


def typed_logsumexp_scores(q, k, v):  # reformer-pytorch: the probabilities cast with .type_as(the logits)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.exp(logits - torch.logsumexp(logits, -1, keepdim=True)).type_as(logits) @ v


def hashed_scores(q, k, v):  # LSH: buckets from the argmax of random rotations, then attention within a bucket
    rotations = torch.randn(q.shape[-1], 4, generator=torch.Generator().manual_seed(0))
    buckets = torch.argmax(q @ rotations, -1)
    same = buckets[..., :, None] == buckets[..., None, :]
    return softmax_scores(q, k, v) * same.any(-1, keepdim=True)


def summed_product_scores(q, k, v):  # torch_geometric's TransformerConv: q_i * k_j summed over d, pair by pair
    return torch.softmax((q[..., :, None, :] * k[..., None, :, :]).sum(-1) / math.sqrt(q.shape[-1]), -1) @ v


def scatter_softmax_scores(q, k, v):  # torch_geometric's softmax: each group's max by scatter_reduce, then exp
    logits = (q[..., :, None, :] * k[..., None, :, :]).sum(-1) / math.sqrt(q.shape[-1])
    group = torch.zeros(logits.shape, dtype=torch.long)
    top = torch.full_like(logits[..., :1], -1e9).scatter_reduce(-1, group, logits.detach(), "amax")
    e = (logits - top).exp()
    return e / e.sum(-1, keepdim=True) @ v


def sigmoid_scores(q, k, v):
    return torch.sigmoid(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) - 2.0) @ v


def relu_scores(q, k, v):
    return torch.relu(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])) @ v / q.shape[-2]


def linear_scores(q, k, v):  # linear attention: phi(q) (phi(k)^T v) / phi(q) . sum phi(k)
    return feature_ratio(F.elu(q) + 1, F.elu(k) + 1, v)


def feature_ratio(q, k, v):
    numerator = q @ (k.transpose(-1, -2) @ v)
    normaliser = q @ k.sum(-2, keepdim=True).transpose(-1, -2)
    return numerator / normaliser.clamp(min=1e-6)


def efficient_scores(q, k, v):  # Shen et al.'s efficient attention: q a softmax over d, k over the sequence
    q, k = q.softmax(-1), k.softmax(-2)
    return q @ (k.transpose(-1, -2) @ v)


def gated_unit_scores(q, k, v):  # a delta rule's intra-chunk scores: unit q, k along d, a gate in between
    q, k = (z / torch.sqrt((z * z).sum(-1, keepdim=True) + 1e-6) for z in (q, k))
    gate = torch.sigmoid(v)
    return (q[..., :, None, :] * k[..., None, :, :] * gate[..., None, :, :]).sum(-1).tril() @ v


def cosine_scores(q, k, v):  # Swin v2: q and k of unit length, a temperature, a softmax
    return torch.softmax(F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2) * 10.0, -1) @ v


def rescaled_unit_scores(q, k, v):  # unit q and k made sqrt(d) long again: the product grows as d
    q, k = (F.normalize(z, dim=-1) * z.shape[-1] ** 0.5 for z in (q, k))
    return (q @ k.transpose(-1, -2)).tril() @ v


def lightning_scores(q, k, v):  # MiniMax: decayed q k^T v, a first block reading a zero state, then a norm
    state = torch.zeros(*q.shape[:-2], q.shape[-1], v.shape[-1])
    decay = torch.ones(q.shape[-2], q.shape[-2]).tril() * 0.9
    out = (q @ k.transpose(-1, -2) * decay) @ v + (q * 0.5) @ state
    return F.rms_norm(out, out.shape[-1:])


def mlstm_scores(q, k, v):  # xLSTM's parallel mLSTM: C / max(|sum C|, floor)
    c = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).tril()
    return c / torch.maximum(c.sum(-1, keepdim=True).abs(), torch.ones(())) @ v


def projection_removed(q, k, v):  # NeoMME: the component of the output along the unit value direction removed
    out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v
    unit = F.normalize(v, dim=-1)
    return out - (out * unit).sum(-1, keepdim=True) * unit


def unnormalised_scores(q, k, v):  # q k^T v with nothing that fixes the product's size
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])) @ v


class RandomFeatures(nn.Module):
    """FAVOR+-style: q and k meet a fixed random projection over d_head (a buffer)."""

    def __init__(self, width):
        super().__init__()
        self.register_buffer("projection", torch.randn(16, width // 2))

    def forward(self, q, k, v):
        d = q.shape[-1] ** -0.25
        fq = torch.exp(torch.einsum("bhnd,md->bhnm", q * d, self.projection))
        fk = torch.exp(torch.einsum("bhnd,md->bhnm", k * d, self.projection))
        return torch.einsum("bhnm,bhme->bhne", fq, torch.einsum("bhnm,bhne->bhme", fk, v))


def attention_lm(scores):
    def make_model(width):
        return LM(width, Heads(width, scores(width) if isinstance(scores, type) else scores))
    return make_model


def compiled(make_model, **kwargs):
    torch.manual_seed(0)
    return muprewrite.mupify(make_model, base=BASE, target=TARGET, example_inputs=tokens(), materialize=False,
                             **kwargs)


def attention_edits(plan):
    return [(e.module, e.old, e.new) for e in plan.edits if e.kind == "attention_scale"]


# --- 1. data-dependent Python control flow ---------------------------------------------------


class PaddingBranch(nn.Module):
    """fairseq-style: skip the mask when nothing is padded, and size a one-hot by the largest id."""

    def __init__(self, width):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.kinds = nn.Linear(VOCAB, width, bias=False)

    def forward(self, x, ids):
        padding_mask = ids.eq(0)
        if padding_mask.any():  # a branch on data: the same at every width for these inputs
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return self.mlp(x) + self.kinds(F.one_hot(ids, int(ids.max()) + 1).float()[..., :VOCAB])


class BranchLM(LM):
    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + self.block(h, ids))


def test_a_model_branching_on_data_is_traced_on_real_tensors_and_planned_like_its_twin():
    ids = torch.arange(VOCAB).view(2, 32) % VOCAB  # id 0 present, max id 63: every branch as the twin
    result = muprewrite.mupify(lambda w: BranchLM(w, PaddingBranch(w)), base=BASE, target=TARGET,
                               example_inputs=(ids,), materialize=False)
    assert any("traced on real tensors" in note and "if padding_mask.any():" in note for note in result.plan.notes)
    twin = muprewrite.mupify(lambda w: BranchLM(w, StraightPadding(w)), base=BASE, target=TARGET,
                             example_inputs=(ids,), materialize=False)
    assert {n: (p.role, p.lr_mult["adam"]) for n, p in result.plan.parameters.items()} == \
        {n: (p.role, p.lr_mult["adam"]) for n, p in twin.plan.parameters.items()}
    assert [(e.kind, e.module, e.new) for e in result.plan.edits] == [(e.kind, e.module, e.new) for e in twin.plan.edits]


class StraightPadding(PaddingBranch):
    """The same computation without the branches, which torch.export captures."""

    def forward(self, x, ids):
        x = x.masked_fill(ids.eq(0).unsqueeze(-1), 0.0)
        return self.mlp(x) + self.kinds(F.one_hot(ids, VOCAB).float())


# --- 4. attention without a softmax op -------------------------------------------------------


@pytest.mark.parametrize("scores", [logsumexp_scores, typed_logsumexp_scores, sigmoid_scores, relu_scores,
                                    hashed_scores, summed_product_scores, scatter_softmax_scores])
def test_attention_without_a_softmax_op_gets_the_scale_its_softmax_twin_gets(scores):
    twin = attention_edits(compiled(attention_lm(softmax_scores)).plan)
    assert twin == [("block", 1 / math.sqrt(64), 1 / math.sqrt(64) * math.sqrt(16 / 64))]  # 1/sqrt(d) -> 1/d
    assert attention_edits(compiled(attention_lm(scores)).plan) == twin


def test_linear_attention_is_scale_free_and_gets_no_attention_edit():
    result = compiled(attention_lm(linear_scores))  # verified at delta: the plan is realized as made
    assert attention_edits(result.plan) == []
    # the claim behind it: however the products of phi(q) grow (here x7), the output is the same
    q, k, v = torch.rand(3, 1, 2, 8, 16).unbind(0)
    assert torch.allclose(feature_ratio(7.0 * q, k, v), feature_ratio(q, k, v), atol=1e-5)


def test_a_product_with_a_softmax_over_its_summed_dim_is_an_average_and_gets_no_edit():
    plan = compiled(attention_lm(efficient_scores)).plan
    assert attention_edits(plan) == []
    assert any("its size cancels or stays bounded" in note for note in plan.notes)


def test_a_summed_product_of_two_unit_vectors_is_bounded_and_gets_no_edit():
    plan = compiled(attention_lm(gated_unit_scores)).plan
    assert attention_edits(plan) == [] and any("stays bounded" in note for note in plan.notes)
    # the bound behind it: |sum_d q_d k_d g_d| <= max|g| for unit q, k, at any width
    for d in (16, 256, 4096):
        q, k = F.normalize(torch.randn(2, d), dim=-1)
        assert (q * k * torch.rand(d)).sum().abs() <= 1.0


def test_cosine_attention_is_bounded_and_gets_no_attention_scale():
    """A logit scale on unit q and k would flatten the attention as width grows."""
    plan = compiled(attention_lm(cosine_scores)).plan
    assert attention_edits(plan) == [] and any("stays bounded" in note for note in plan.notes)


def test_unit_vectors_scaled_back_up_with_width_are_not_taken_as_bounded():
    with pytest.raises(MuRewriteError, match=r"product matmul .* does not cancel"):
        compiled(attention_lm(rescaled_unit_scores))


@pytest.mark.parametrize("scores", [lightning_scores, mlstm_scores, projection_removed])
def test_products_whose_size_a_norm_a_floored_normaliser_or_a_projection_takes_back_need_no_edit(scores):
    plan = compiled(attention_lm(scores)).plan
    # the projection's model keeps its softmax attention's scale; the others have no softmax attention
    expected = attention_edits(compiled(attention_lm(softmax_scores)).plan) if scores is projection_removed else []
    assert attention_edits(plan) == expected
    assert any("stays bounded" in note for note in plan.notes)


def test_a_product_whose_size_escapes_is_refused_naming_its_line():
    with pytest.raises(MuRewriteError, match=r"product matmul .* module 'block' \(Heads\).*test_any_code.py:\d+") as error:
        compiled(attention_lm(unnormalised_scores))
    assert "\n" not in str(error.value) and "unknown_ops=sp" in str(error.value)
    plan = compiled(attention_lm(unnormalised_scores), options={"unknown_ops": "sp"}).plan
    assert [w.code for w in plan.warnings if w.code == "undecided-product"] == ["undecided-product"]


def test_a_product_with_a_fixed_random_projection_is_refused():
    with pytest.raises(MuRewriteError, match=r"product einsum .* constant tensor .*random features"):
        compiled(attention_lm(RandomFeatures))


# --- 5. a parameter concatenated into the keys and values ------------------------------------


class BiasKV(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2, add_bias_kv=True, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def test_bias_kv_is_a_piece_of_the_keys_not_a_readout_as_mup_says():
    make_model = lambda width: LM(width, BiasKV(width))  # noqa: E731
    plan = compiled(make_model).plan
    twin = make_model(TARGET)
    mup.set_base_shapes(twin, make_model(BASE), delta=make_model(2 * BASE), rescale_params=False, do_assert=False)
    for name in ("block.attn.bias_k", "block.attn.bias_v"):
        entry = plan.parameters[name]
        assert entry.role == "vector" and entry.infinite == [False, False, True]
        assert twin.get_parameter(name).infshape.ninf() == 1  # mup: vector-like, Adam LR unchanged
        assert entry.lr_mult["adam"] == 1.0
    assert {(e.kind, e.module) for e in plan.edits} == {("attention_scale", "block.attn"), ("readout_multiplier", "head")}


# --- 6. a parameter used only for its shape, dtype and device --------------------------------


class StateMixer(nn.Module):
    """transformers' Mamba mixers allocate their scan state with `A_log.new_zeros(...)`."""

    def __init__(self, width):
        super().__init__()
        self.inner = nn.Linear(width, 2 * width)
        self.A_log = nn.Parameter(torch.zeros(2 * width, 4))
        self.out = nn.Linear(2 * width, width)

    def forward(self, x):
        h = self.inner(x)
        state = self.A_log.new_zeros(x.shape[0], h.shape[-1], 4) + torch.zeros_like(self.A_log)
        return self.out(h * torch.sigmoid((state - torch.exp(self.A_log)).sum(-1)).unsqueeze(1))


def test_metadata_reads_are_not_uses():
    plan = compiled(lambda width: LM(width, StateMixer(width))).plan
    entry = plan.parameters["block.A_log"]
    assert entry.role == "vector" and {u["op"] for u in entry.uses} == {"sub"}


class DataSizedOneHot(nn.Module):
    """mixture-of-experts' safe_one_hot: a one-hot sized by the largest index it holds, cut back to 8 classes
    (here the index is width / 8, so the cut is no op at base width and a slice at the others)."""

    def __init__(self, width):
        super().__init__()
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        ids = (x.sum(-1) * 0).long() + x.shape[-1] // 8
        classes = F.one_hot(ids, max(int(ids.max()) + 1, 8))[..., :8]
        return self.proj(x) + classes.argmax(-1, keepdim=True)


def test_a_size_read_from_data_that_differs_between_widths_is_refused_naming_the_module():
    """Always refused; the structural difference is named unless torch's draft export loses a real value
    on the way (nondeterministic, more often after other exports in the process: then the refusal is
    its data-dependent branch), so up to 4 tries for the full message."""
    for _ in range(4):
        with pytest.raises(MuRewriteError) as error:
            compiled(lambda width: LM(width, DataSizedOneHot(width)), verify_width=False)
        message = str(error.value)
        if "reads sizes from tensor data" in message:
            break
    assert "in module 'block' (DataSizedOneHot)" in message and "reads sizes from tensor data" in message
    assert f"{__file__}:{DataSizedOneHot.forward.__code__.co_firstlineno + 2}" in message  # the branching line


class RoutedRows(nn.Module):
    """A linear on the tokens whose first feature is positive: sizes read from data (unbacked in the graph,
    with the checks export records on them), no branch."""

    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        rows = torch.nonzero(flat[:, 0] > 0).squeeze(-1)
        return flat.index_add(0, rows, self.lin(flat[rows])).view_as(x)


def test_a_wrong_realization_of_a_model_with_data_sizes_is_a_mismatch_not_a_branch():
    make_model = lambda width: LM(width, RoutedRows(width))  # noqa: E731
    torch.manual_seed(0)
    plan = muprewrite.mupify(make_model, base=BASE, target=2 * BASE, example_inputs=tokens(), materialize=False,
                             verify_width=False).plan

    def realized_wrong(model, plan, reinit):
        realized = realize(model, plan, reinit=reinit)
        realized.head.register_forward_pre_hook(lambda module, args: (args[0] * 2,))  # a readout edit twice over
        return realized

    with pytest.raises(VerificationError) as error:
        verify(make_model, tokens(), plan, 2 * BASE, realize_fn=realized_wrong)
    assert "branches on tensor data" not in str(error.value)


class PositiveRows(nn.Module):
    """A Python branch on how many rows are positive, both sides computing the same sum (a fast path)."""

    def forward(self, x):
        rows = torch.nonzero(x[:, 0] > 0).squeeze(-1)
        if rows.shape[0] < x.shape[0]:  # some rows: those
            return (x[rows] * (x[rows] > 0)).sum(0)
        return (x * (x > 0)).sum(0)  # every row


def test_a_graph_without_its_branch_checks_runs_where_the_branch_flipped():
    """Verify runs the edited graph so: muP's edits (a router's multiplier) change what the model branches on."""
    traced_on = torch.tensor([[1.0, 2.0], [-1.0, 3.0]])
    program = torch.export.draft_export(PositiveRows(), (traced_on,))
    flipped = torch.tensor([[1.0, -2.0], [4.0, 3.0]])
    with pytest.raises(RuntimeError, match="Runtime assertion failed"):
        program.module()(flipped)
    assert torch.equal(without_branch_checks(program.module())(flipped), PositiveRows()(flipped))


# --- 2. module state written during forward --------------------------------------------------


class CachedRotary(nn.Module):
    """A table computed on first use and kept with register_buffer, as many rotary embeddings do."""

    def __init__(self, width):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.register_buffer("table", None, persistent=False)

    def forward(self, x):
        if self.table is None or self.table.shape[0] < x.shape[1]:
            angles = torch.arange(x.shape[1], device=x.device)[:, None] / 10000 ** torch.linspace(0, 1, x.shape[-1])
            self.register_buffer("table", angles.cos(), persistent=False)
        return self.proj(x * self.table[: x.shape[1]])


def test_a_forward_that_caches_a_buffer_is_exported_without_keeping_fakes():
    model = LM(BASE, CachedRotary(BASE))
    export_model(model, tokens(), "cpu")
    assert model.block.table is None and model.training  # as built: no fake tensor left, mode kept
    result = compiled(lambda width: LM(width, CachedRotary(width)))  # verify exports, then runs eagerly
    assert result.report.verification["outputs"] is not None


class Offloading(nn.Module):
    """st-moe-pytorch's experts: each moved to the model's device (and dtype) in every forward (there, a no-op)."""

    def __init__(self, width, moves=True):
        super().__init__()
        self.experts = nn.ModuleList([nn.Linear(width, width) for _ in range(2)])
        self.register_buffer("dummy", torch.zeros(1), persistent=False)
        self.moves = moves

    def forward(self, x):
        for expert in self.experts:
            if self.moves:
                expert.to(self.dummy.device)
                expert.to(self.dummy.dtype)  # Switch Transformers' router: self.classifier.to(self.dtype)
        return sum(expert(x) for expert in self.experts)


def test_a_forward_moving_its_modules_where_they_are_is_planned_like_its_twin():
    moving, twin = (compiled(lambda width: LM(width, Offloading(width, moves))) for moves in (True, False))
    assert moving.plan.edits == twin.plan.edits and moving.plan.parameters == twin.plan.parameters


# --- 3. one module object at several places --------------------------------------------------


class SharedBlocks(nn.Module):
    """A Universal-Transformer-style stack: one block object listed three times."""

    def __init__(self, width):
        super().__init__()
        block = Heads(width, softmax_scores)
        self.layers = nn.ModuleList([block, block, block])

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


def test_a_block_listed_three_times_is_realized_once_verified_and_folded():
    make_model = lambda width: LM(width, SharedBlocks(width))  # noqa: E731
    torch.manual_seed(0)
    result = muprewrite.mupify(make_model, base=BASE, target=TARGET, example_inputs=tokens())
    assert [e[0] for e in attention_edits(result.plan)] == ["block.layers.0", "block.layers.1", "block.layers.2"]
    # the twin: the same weights, the 1/d scale written into the forward by hand, readout / m
    twin = make_model(TARGET)
    twin.load_state_dict(result.model.state_dict())
    d = TARGET // 2
    twin.block.layers[0].scores = lambda q, k, v: torch.softmax(q @ k.transpose(-1, -2) * (math.sqrt(16) / d), -1) @ v
    twin.head.register_forward_pre_hook(lambda module, args: (args[0] * BASE / TARGET,))
    assert torch.allclose(result.model(*tokens()), twin(*tokens()), atol=1e-5)
    folded = muprewrite.fold(result.model, result.plan, example_inputs=tokens())  # checks the outputs itself
    assert torch.allclose(folded(*tokens()), twin(*tokens()), atol=1e-5)


class Selector(nn.Module):
    """A step's gate over 4 features: its linear is a readout."""

    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, 4)

    def forward(self, h):
        return h * torch.sigmoid(self.fc(h)).mean(-1, keepdim=True)


class SharedAndRepeated(nn.Module):
    """pytorch-tabnet's layout: one linear held at two paths, and repeated steps whose representative
    is captured for its copies (passes/repeats.py): export then tracks modules by access path."""

    def __init__(self, width):
        super().__init__()
        shared = nn.Linear(width, width)
        self.before, self.after = shared, shared
        self.steps = nn.ModuleList([Selector(width), Selector(width)])

    def forward(self, x):
        h = torch.relu(self.before(x))
        for step in self.steps:
            h = step(h)
        return self.after(h)


def test_children_of_a_repeated_block_keep_their_paths_when_a_module_is_shared_elsewhere():
    make_model = lambda width: LM(width, SharedAndRepeated(width))  # noqa: E731
    shared, unshared = (compiled(make_model, share_blocks=flag).plan for flag in (True, False))
    readouts = [(e.module, e.call, e.new) for e in shared.edits if e.kind == "readout_multiplier"]
    assert readouts == [("block.steps.0.fc", 0, BASE / TARGET), ("block.steps.1.fc", 0, BASE / TARGET),
                        ("head", 0, BASE / TARGET)]
    decided = lambda plan: [(e.kind, e.module, e.param, e.call, e.new) for e in plan.edits]  # noqa: E731
    assert decided(shared) == decided(unshared)
    torch.manual_seed(0)
    result = muprewrite.mupify(make_model, base=BASE, target=TARGET, example_inputs=tokens())  # realized, verified
    assert result.report.verification["outputs"] is not None


# --- 7. normalised parameters ----------------------------------------------------------------


class NormalisedSlots(nn.Module):
    """Learned slots compared by cosine with the activations, then mixed back (a mixture's slot embeddings)."""

    def __init__(self, width):
        super().__init__()
        self.slots = nn.Parameter(torch.randn(8, width))
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        similarity = torch.einsum("bnd,kd->bnk", self.proj(x), F.normalize(self.slots, dim=-1)) * 10
        return torch.einsum("bnk,kd->bnd", similarity.softmax(-1), self.slots)


def test_a_normalised_parameter_is_refused_naming_the_normalisation():
    with pytest.raises(MuRewriteError, match=r"parameter 'block.slots' is normalised by linalg_vector_norm .*"
                                             r"unknown_ops=sp") as error:
        compiled(lambda width: LM(width, NormalisedSlots(width)))
    assert "\n" not in str(error.value)


def test_a_normalised_parameter_kept_in_sp_gets_no_edit_at_its_uses():
    """It was both a readout and an attention logit to the compiler: two multipliers on one einsum."""
    plan = compiled(lambda width: LM(width, NormalisedSlots(width)), options={"unknown_ops": "sp"}).plan
    assert plan.parameters["block.slots"].role == "unclassified"
    assert [(e.kind, e.module) for e in plan.edits] == [("readout_multiplier", "head")]
    assert {w.code for w in plan.warnings} >= {"unclassified-use"} and "tied-weights" not in {w.code for w in plan.warnings}


# --- a constructor that reads tensor values --------------------------------------------------


class ReadsValues(nn.Module):
    """Sizes computed with tensor arithmetic in __init__ (`.item()`): no meta or fake build can run it."""

    def __init__(self, width):
        super().__init__()
        hidden = int(torch.tensor([width, width]).sum().item())
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))

    def forward(self, x):
        return self.mlp(x)


def test_a_constructor_reading_tensor_values_is_built_with_real_tensors():
    result = compiled(lambda width: LM(width, ReadsValues(width)))
    assert any("built on CPU with real tensors" in note for note in result.plan.notes)
    assert result.plan.parameters["block.mlp.0.weight"].role == "hidden"


# --- 8. a readout scaled by a buffer ---------------------------------------------------------


class BufferScaledHead(nn.Module):
    """Gemma-3n's router: its input scaled by a power of the hidden size, held in a buffer."""

    def __init__(self, width, in_buffer=True):
        super().__init__()
        self.router = nn.Linear(width, 4, bias=False)
        self.out = nn.Linear(4, width)
        self.in_buffer = in_buffer
        self.register_buffer("scale", torch.tensor(width ** -0.5), persistent=False)
        self.float_scale = width ** -0.5

    def forward(self, x):
        scale = self.scale if self.in_buffer else self.float_scale
        return self.out(torch.softmax(self.router(x * scale), -1))


def test_a_buffer_scale_on_a_readout_is_read_and_held_like_the_same_python_float():
    readouts = lambda plan: [(e.module, e.new, e.frozen_constant) for e in plan.edits  # noqa: E731
                             if e.kind == "readout_multiplier" and e.module == "block.router"]
    held = readouts(compiled(lambda width: LM(width, BufferScaledHead(width))).plan)
    twin = readouts(compiled(lambda width: LM(width, BufferScaledHead(width, in_buffer=False))).plan)
    # muP's 1/m = 1/4 on the readout's input, times 2 that holds width**-0.5 at its base value
    assert len(held) == len(twin) == 1 and held[0][1] == pytest.approx(twin[0][1]) == pytest.approx(0.5)
    assert held[0][2]["base"] == pytest.approx(BASE ** -0.5) and held[0][2]["now"] == pytest.approx(TARGET ** -0.5)

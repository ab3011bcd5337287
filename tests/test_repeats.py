"""Repeated blocks analysed once: the plan with each distinct block captured once and its entries
written onto every copy is the plan of a capture of every block (share_blocks=False), on every
bundled example and on Hugging Face models; what would make a copy differ from its
representative is found (signature, init, the copy check in verify) or falls back to capturing
every block, noted.

Node names are graph-local (a copy's entries name its representative's nodes), and a copy's
init std is its representative's estimate where the full analysis measures the copy's own tensor
(the same distribution, within sampling error); everything else must be equal.
"""

import functools
import importlib
import math

import pytest
import torch
from torch import nn

import muprewrite
from muprewrite.errors import StubError
from muprewrite.passes.repeats import find_repeats
from muprewrite.plan import Plan

EXAMPLES = ["mlp", "cnn", "einsum_attention", "gpt_heads", "gpt_manual", "gpt_sdpa", "gpt_tied", "moe",
            "transformer_encoder"]
HF = ["llama", "gpt2", "t5", "qwen3", "bert", "gpt_neox"]
NO_REPEATS = {"mlp", "cnn"}  # no two blocks alike


def canonical(plan: Plan) -> dict:
    """The plan without graph-local node names, notes and the record of repeats; init stds apart."""
    data = plan.to_dict()
    for key in ("notes", "repeats"):
        data.pop(key)
    stds = {}
    for name, entry in data["parameters"].items():
        stds[name] = entry.pop("init_std")
        entry["init_ratio"] = _rounded(plan.parameters[name].init_ratio)
        for key in ("lr_mult", "wd_mult"):  # adafactor's divides by the init's RMS change, a ratio of stds
            entry[key] = {family: _rounded(value) for family, value in entry[key].items()}
        for use in entry["uses"]:
            use.pop("node")
    for edit in data["edits"]:
        node = edit.pop("node")
        if "error" in (edit.get("fold") or {}):  # why it cannot be folded names the edit's node
            edit["fold"]["error"] = edit["fold"]["error"].replace(f"({node})", "(<node>)")
        for place in (edit.get("fold") or {}).get("into", []):
            place.pop("node", None)
        if edit.get("frozen_constant"):
            edit["frozen_constant"].pop("node")
    for warning in data["warnings"]:
        located = warning.pop("locations")
        warning["subjects"] = [located[s]["module"] if s in located else s for s in warning["subjects"]]
    return {"plan": data, "stds": stds}


def _rounded(value):
    return value if value is None else float(f"{value:.10g}")


def assert_same_plan(shared: Plan, every: Plan) -> None:
    a, b = canonical(shared), canonical(every)
    assert a["plan"] == b["plan"]
    for name, std in b["stds"].items():
        # two estimates of one distribution: 65536 entries give the std to ~0.3%, a small tensor's
        # pooled ~512 entries to ~3% (passes/init_scan.py)
        tolerance = 0.05 if math.prod(every.parameters[name].shape) >= 4096 else 0.25
        for key in ("before", "after"):
            assert math.isclose(a["stds"][name][key], std[key], rel_tol=tolerance, abs_tol=1e-12), (name, key)


def _both(factory, inputs, base, delta, target, **kwargs):
    plans = [muprewrite.mupify(factory, base=base, delta=delta, target=target, example_inputs=inputs,
                               materialize=False, verify_width=False, share_blocks=share, **kwargs).plan
             for share in (True, False)]
    return plans


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_plan_is_the_every_block_plan(name):
    module = importlib.import_module(name)
    shared, every = _both(module.make_model, module.example_inputs(), module.BASE_WIDTH, 2 * module.BASE_WIDTH,
                          module.TARGET_WIDTH)
    assert bool(shared.repeats) == (name not in NO_REPEATS)
    assert not every.repeats
    assert_same_plan(shared, every)


@pytest.mark.parametrize("name", HF)
def test_hf_plan_is_the_every_block_plan(name):
    hf = pytest.importorskip("muprewrite.hf")
    # t5's first block holds the relative position bias: a third block repeats the second
    factory = hf.factory(name, fixed={"num_layers": 3, "num_decoder_layers": 3} if name == "t5" else None)
    shared, every = _both(factory, hf.example_inputs(name), *hf.widths(factory))
    assert shared.repeats
    assert_same_plan(shared, every)


@pytest.mark.parametrize("name", ["zamba", "zamba2"])
def test_hybrid_layers_plan_is_the_every_block_plan(name):
    """Zamba ties one attention block's weights into every hybrid layer (grouped, the tensors named
    once); Zamba2's hybrid layers pick tied adapters by the index they are passed (told apart),
    each holding a Mamba layer alike (grouped)."""
    hf = pytest.importorskip("muprewrite.hf")
    mamba, hybrid = "linear_attention", "hybrid"
    layers = [mamba, hybrid, mamba, mamba, hybrid, mamba, hybrid]
    factory = hf.factory(name, fixed={"num_hidden_layers": len(layers), "layers_block_type": layers})
    shared, every = _both(factory, hf.example_inputs(name), *hf.widths(factory))
    hybrids = [f"model.layers.{i}" for i, kind in enumerate(layers) if kind == hybrid]
    grouped = hybrids if name == "zamba" else [f"{path}.mamba_decoder" for path in hybrids]
    assert {c: r for c, r in shared.repeats.items() if r == grouped[0]} == {c: grouped[0] for c in grouped[1:]}
    assert_same_plan(shared, every)


def test_options_and_parametrizations_stamp_alike():
    module = importlib.import_module("gpt_tied")
    for parametrization, options in [("table9", {}), ("sp", {}),
                                     ("mup", {"zero_init_query": True, "norm_gains": "frozen", "alpha_attn": 2.0})]:
        shared, every = _both(module.make_model, module.example_inputs(), 32, 64, 256,
                              parametrization=parametrization, options=options)
        assert_same_plan(shared, every)


def test_verification_checks_every_copy():
    module = importlib.import_module("gpt_sdpa")
    result = muprewrite.mupify(module.make_model, base=32, target=128, example_inputs=module.example_inputs(),
                               materialize=False)
    assert result.report.verification["copies"] == len(result.plan.repeats) > 0


def test_plan_with_repeats_round_trips(tmp_path):
    module = importlib.import_module("gpt_sdpa")
    plan = muprewrite.mupify(module.make_model, base=32, target=128, example_inputs=module.example_inputs(),
                             materialize=False, verify_width=False).plan
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    assert Plan.from_dict({k: v for k, v in plan.to_dict().items() if k != "repeats"}).repeats == {}


# ------------------------------------------------------------------------------ models made to differ

class Block(nn.Module):
    def __init__(self, width, index=0, std=0.02):
        super().__init__()
        self.layer_idx, self.groups = index, 2  # groups == 2 == index for the third block: not an index
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        nn.init.normal_(self.up.weight, std=std)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


class Stack(nn.Module):
    def __init__(self, width, blocks=4, block=Block, reverse=False, **kwargs):
        super().__init__()
        self.embed, self.head = nn.Embedding(50, width), nn.Linear(width, 50)
        self.blocks = nn.ModuleList(block(width, i, **kwargs) for i in range(blocks))
        self.reverse = reverse

    def forward(self, ids):
        x = self.embed(ids)
        for block in (reversed(self.blocks) if self.reverse else self.blocks):
            x = block(x)
        return self.head(x)


IDS = (torch.randint(0, 50, (2, 8)),)


def _plans(make):
    return _both(make, IDS, 16, 32, 128)


def test_blocks_alike_but_for_their_index_are_copies():
    assert find_repeats(Stack(16)) == {"blocks.1": "blocks.0", "blocks.2": "blocks.0", "blocks.3": "blocks.0"}
    assert find_repeats(nn.Sequential(Block(8), Block(8), nn.ReLU(), Block(8))) == {"1": "0", "3": "0"}


def test_a_differing_plain_attribute_separates_blocks():
    class Flagged(Block):
        def __init__(self, width, index=0):
            super().__init__(width, index)
            self.sliding = index % 2 == 1

    assert find_repeats(Stack(16, block=Flagged)) == {"blocks.2": "blocks.0", "blocks.3": "blocks.1"}


class Always:
    def __init__(self, value):
        self.value = value

    def __call__(self, *args):
        return self.value


def test_objects_each_block_makes_alike_do_not_separate_blocks():
    """x-transformers' blocks each hold their own always(1.0), functools.partial(softmax) and einops'
    {"h": 2}: alike in what they hold, so copies; a dict keyed by numbers (Zamba2's layer_dic, looked
    up by the index a block is passed) stays the block's own."""
    class Configured(Block):
        def __init__(self, width, index=0):
            super().__init__(width, index)
            self.mix, self.attend = Always(1.0), functools.partial(torch.softmax, dim=-1)
            self.axes = {"h": 2}

    assert find_repeats(Stack(16, block=Configured)) == {"blocks.1": "blocks.0", "blocks.2": "blocks.0",
                                                          "blocks.3": "blocks.0"}

    class Indexed(Block):
        def __init__(self, width, index=0):
            super().__init__(width, index)
            self.layer_dic = {1: 0, 3: 1}

    assert find_repeats(Stack(16, block=Indexed)) == {}


def test_shared_tensors_are_not_copies():
    model = Stack(16)
    model.blocks[2].up = model.blocks[1].up
    assert set(find_repeats(model)) == {"blocks.3"}


def test_depth_scaled_init_is_analysed_block_by_block():
    class DepthScaled(Block):
        def __init__(self, width, index=0):
            super().__init__(width, index, std=0.02 / math.sqrt(index + 1))

    shared, every = _plans(lambda w: Stack(w, block=DepthScaled))
    assert shared.repeats == {}
    assert any("their init differing" in note for note in shared.notes)
    assert_same_plan(shared, every)


def test_a_block_run_before_its_representative_is_captured_in_full():
    shared, every = _plans(lambda w: Stack(w, reverse=True))
    assert shared.repeats == {}
    assert any("every repeated block captured" in note and "ran before" in note for note in shared.notes)
    assert_same_plan(shared, every)


def test_a_block_whose_output_is_not_shaped_like_its_input_is_captured_in_full():
    class Widening(nn.Module):
        def __init__(self, width, index=0):
            super().__init__()
            self.proj = nn.Linear(width, width)

        def forward(self, x):
            return torch.cat([self.proj(x), x], -1)[..., : x.shape[-1] + 1]

    class Narrowing(Stack):
        def forward(self, ids):
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x)[..., :-1]
            return self.head(x)

    shared, every = _plans(lambda w: Narrowing(w, block=Widening))
    assert shared.repeats == {}
    assert any("cannot pass its input through" in note for note in shared.notes)
    assert_same_plan(shared, every)


def test_a_parameter_shared_by_every_block_gets_every_use():
    class UsesShared(Block):
        def forward(self, x, gate):
            return super().forward(x) * gate

    class Gated(Stack):
        def __init__(self, width):
            super().__init__(width, block=UsesShared)
            self.gate = nn.Parameter(torch.ones(width))

        def forward(self, ids):
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x, self.gate)
            return self.head(x)

    shared, every = _plans(Gated)
    assert shared.repeats
    assert len(shared.parameters["gate"].uses) == 4
    assert_same_plan(shared, every)


def test_a_copy_that_computes_otherwise_is_analysed_as_itself():
    table = {0: 1.0, 1: 1.0, 2: 3.0, 3: 1.0}  # shared by every block, so not in the signature

    class Indexed(Block):
        def __init__(self, width, index=0):
            super().__init__(width, index)
            self.table = table

        def forward(self, x):
            return super().forward(x) * self.table[self.layer_idx]

    from muprewrite.passes.verify import verify
    make = lambda w: Stack(w, block=Indexed)  # noqa: E731
    shared = muprewrite.analyse_widths(make, base=16, target=128, example_inputs=IDS).plan(at="delta")
    with pytest.raises(StubError, match="blocks.2 computing something else than blocks.0"):
        verify(make, IDS, shared, 32)
    result = muprewrite.mupify(make, base=16, target=128, example_inputs=IDS, materialize=False)
    assert result.plan.repeats == {} and result.report.verification["copies"] == 0
    assert any("every repeated block analysed" in note and "blocks.2 computing something else" in note
               for note in result.plan.notes)
    every = muprewrite.mupify(make, base=16, target=128, example_inputs=IDS, materialize=False, share_blocks=False)
    assert_same_plan(result.plan, every.plan)


def test_copies_inside_a_representative_are_stamped_into_each_copy_of_it():
    class Nested(nn.Module):  # MobileBERT's stack of FFNs inside each layer
        def __init__(self, width, index=0):
            super().__init__()
            self.ffn = nn.ModuleList(Block(width, i) for i in range(3))

        def forward(self, x):
            for block in self.ffn:
                x = block(x)
            return x

    class TiedHead(Stack):  # a readout in the root's own forward, after every block
        def forward(self, ids):
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x)
            return torch.nn.functional.linear(x, self.embed.weight)

    make = lambda w: TiedHead(w, blocks=3, block=Nested)  # noqa: E731
    assert find_repeats(make(16)) == {"blocks.0.ffn.1": "blocks.0.ffn.0", "blocks.0.ffn.2": "blocks.0.ffn.0",
                                      "blocks.1": "blocks.0", "blocks.2": "blocks.0"}
    shared, every = _plans(make)
    assert_same_plan(shared, every)
    result = muprewrite.mupify(make, base=16, target=128, example_inputs=IDS, materialize=False)
    assert result.report.verification["copies"] == 4


class TiedAttention(nn.Module):
    """Zamba's hybrid layer: an attention block of its own whose weights are tied into every
    such layer (the same tensors at the same place), and a projection of its own."""

    def __init__(self, width, index=0, tied=None):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width, bias=False) for _ in range(3))
        self.own = nn.Linear(width, width)
        if tied is not None:
            self.q.weight, self.k.weight, self.v.weight = tied.q.weight, tied.k.weight, tied.v.weight

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, 2, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.own(attended.transpose(1, 2).reshape(b, t, -1))


class Hybrid(Stack):
    def __init__(self, width):
        super().__init__(width, blocks=0)
        first = TiedAttention(width)
        self.blocks = nn.ModuleList([first, Block(width, 1)] + [TiedAttention(width, i, tied=first) for i in (2, 3)])


def test_blocks_with_tensors_tied_into_each_at_the_same_place_are_copies():
    assert find_repeats(Hybrid(16)) == {"blocks.2": "blocks.0", "blocks.3": "blocks.0"}
    shared, every = _plans(Hybrid)
    assert_same_plan(shared, every)
    tied = shared.parameters["blocks.0.q.weight"]
    assert tied.aliases == ["blocks.2.q.weight", "blocks.3.q.weight"] and len(tied.uses) == 3
    assert "blocks.2.q.weight" not in shared.parameters and "blocks.2.own.weight" in shared.parameters
    result = muprewrite.mupify(Hybrid, base=16, target=128, example_inputs=IDS, materialize=False)
    assert result.report.verification["copies"] == 2 and result.plan.repeats


def test_a_tensor_tied_into_blocks_at_different_places_makes_them_no_copies():
    model = Stack(16)
    model.blocks[2].norm.weight = model.blocks[1].norm.bias
    assert find_repeats(model) == {"blocks.3": "blocks.0"}


class Steered(Stack):
    """Each block is passed its index (Zamba2's shared blocks get `layer_idx` so)."""

    def forward(self, ids):
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, i)
        return self.head(x)


def _analysed_apart(make, because: str):
    result = muprewrite.mupify(make, base=16, target=128, example_inputs=IDS, materialize=False)
    assert result.plan.repeats == {}
    assert any("every repeated block analysed" in note and because in note for note in result.plan.notes)
    every = muprewrite.mupify(make, base=16, target=128, example_inputs=IDS, materialize=False, share_blocks=False)
    assert_same_plan(result.plan, every.plan)


def test_a_copy_an_argument_makes_compute_otherwise_is_analysed_as_itself():
    class Scaled(Block):
        def forward(self, x, layer):
            return super().forward(x) * (1.0 + layer)

    _analysed_apart(lambda w: Steered(w, block=Scaled), "computing something else")


def test_a_copy_an_argument_makes_use_other_tied_tensors_is_analysed_as_itself():
    class Adapted(Block):  # Zamba2: adapters tied into every block, the index picking one
        def __init__(self, width, index=0, tied=None):
            super().__init__(width, index)
            self.adapters = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(4))
            for mine, theirs in zip(self.adapters, tied or ()):
                mine.weight = theirs.weight

        def forward(self, x, layer):
            return super().forward(x) + self.adapters[layer](x)

    class Tied(Steered):
        def __init__(self, width):
            super().__init__(width, blocks=0)
            first = Adapted(width)
            self.blocks = nn.ModuleList([first] + [Adapted(width, i, tied=first.adapters) for i in (1, 2, 3)])

    assert len(find_repeats(Tied(16))) == 3
    _analysed_apart(Tied, "not used in the captured call of blocks.0")


def test_alike_parts_of_blocks_told_apart_are_copies():
    class Scaled(nn.Module):  # a float attribute of its own tells the blocks apart, not their inner blocks
        def __init__(self, width, index=0):
            super().__init__()
            self.scale, self.inner = 1.0 + index / 10, Block(width, index)

        def forward(self, x):
            return self.inner(x) * self.scale

    make = lambda w: Stack(w, block=Scaled)  # noqa: E731
    assert find_repeats(make(16)) == {f"blocks.{i}.inner": "blocks.0.inner" for i in (1, 2, 3)}
    shared, every = _plans(make)
    assert_same_plan(shared, every)
    result = muprewrite.mupify(make, base=16, target=128, example_inputs=IDS, materialize=False)
    assert result.report.verification["copies"] == 3


def test_a_copys_tensor_read_outside_the_copy_makes_every_block_analysed():
    class ReadsTheLastBlock(Stack):  # a plain list, not a registered module: the stub cannot see it
        def __init__(self, width):
            super().__init__(width)
            self.probe = [self.blocks[3].up]

        def forward(self, ids):
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x)
            return self.head(x) + (x @ self.probe[0].weight.T).mean()

    result = muprewrite.mupify(ReadsTheLastBlock, base=16, target=128, example_inputs=IDS, materialize=False)
    assert not result.plan.repeats and result.report.verification["copies"] == 0  # every block analysed
    assert any("blocks.3.up.weight" in note and "outside the block" in note for note in result.plan.notes)

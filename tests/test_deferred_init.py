"""A model built with its init fills deferred is the model its factory builds: whatever the build
computes from its weights sees them filled, a fill of part of a tensor sees the whole tensor's
fill first, and the statistics init_scan reads equal those of an eager build within sampling
error; a repeated block's copy drawn alike is never filled, and where verify finishes the build
it takes its representative's draw."""

import functools
import importlib
import math

import pytest
import torch
from torch import nn

from muprewrite.passes.deferred_init import Deferred, build_deferred
from muprewrite.passes.init_scan import MAX_DRAWS, POOL_MODULES, SEED, scan_init
from muprewrite.passes.repeats import find_repeats
from muprewrite.widths import Widths


class ReadsItsWeights(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.embed = nn.Embedding(10, width, padding_idx=0)  # normal_, then row 0 zeroed through a view
        self.proj = nn.Linear(width, width)
        nn.init.constant_(self.proj.weight, 0.5)
        self.register_buffer("norm", self.proj.weight.detach().sum())  # computed from a filled weight


def test_what_the_build_reads_is_filled():
    torch.manual_seed(0)
    with Deferred() as fills:
        model = ReadsItsWeights(8)
    assert float(model.norm) == 0.5 * 64
    assert fills.fill_of(model.embed.weight) is None  # run when its row 0 was zeroed
    assert torch.all(model.embed.weight[0] == 0) and model.embed.weight[1:].std() > 0.5
    assert fills.fill_of(model.proj.bias)[0] == "aten.uniform_.default"  # still waiting: nothing read it
    fills.run(model.proj.bias)
    assert fills.fill_of(model.proj.bias) is None and model.proj.bias.abs().max() <= 1 / math.sqrt(8)


def test_copies_drawn_alike_wait_for_the_same_fill():
    with Deferred() as fills:
        blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(3))
    assert fills.fill_of(blocks[1].weight) == fills.fill_of(blocks[0].weight) is not None
    assert fills.fill_of(blocks[2].weight) != fills.fill_of(nn.Linear(16, 32).weight)


@pytest.mark.parametrize("name", ["gpt_sdpa", "mlp", "moe"])
def test_init_scan_matches_an_eager_build(name):
    module = importlib.import_module(name)
    widths = Widths(module.BASE_WIDTH, 2 * module.BASE_WIDTH, module.TARGET_WIDTH)
    copies = find_repeats(module.make_model(widths.base))
    stats = scan_init(module.make_model, widths, copies)
    torch.manual_seed(123)
    eager = dict(module.make_model(widths.base).named_parameters())
    for name_, entry in stats.items():
        std = float(eager[name_].detach().double().std()) if eager[name_].numel() > 1 else 0.0
        tolerance = 0.1 if eager[name_].numel() >= 4096 else 0.5
        assert math.isclose(entry.base_std, std, rel_tol=tolerance, abs_tol=1e-9), name_


class ThreeBlocks(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(3))


def test_a_finished_build_leaves_unread_tensors_unwritten_and_fills_the_rest():
    build = build_deferred(ThreeBlocks, 16, seed=0)
    model = build.model
    unread = [model.blocks[1].weight, model.blocks[2].bias]
    before = [tensor.view(torch.int32).clone() for tensor in unread]  # the bits they were allocated with
    build.finished(unread)
    assert all(torch.equal(tensor.view(torch.int32), was) for tensor, was in zip(unread, before))
    fan_in_bound = 1 / 16 ** 0.5  # kaiming uniform, as nn.Linear fills them
    filled = [model.blocks[0].weight, model.blocks[0].bias, model.blocks[1].bias, model.blocks[2].weight]
    assert all(0 < float(t.abs().max()) <= fan_in_bound for t in filled)
    assert not torch.equal(model.blocks[0].weight, model.blocks[2].weight)  # each drew its own
    assert build.fills.pending == {}


def test_the_init_scan_reads_a_build_it_is_given_as_it_would_its_own():
    module = importlib.import_module("gpt_sdpa")
    widths = Widths(module.BASE_WIDTH, 2 * module.BASE_WIDTH, module.TARGET_WIDTH)
    copies = find_repeats(module.make_model(widths.base))
    given = build_deferred(module.make_model, widths.delta, seed=SEED)
    assert scan_init(module.make_model, widths, copies, given) == scan_init(module.make_model, widths, copies)
    assert given.fills.pending  # the copies drawn alike still wait: verify leaves them unread


class BiasedWithAComputedTable(nn.Module):
    """A Linear (kaiming uniform weight and bias: each just one fill's draw) and a small table the
    build computes (the same at every seed: nothing to pool)."""

    builds = 0

    def __init__(self, width):
        super().__init__()
        type(self).builds += 1
        self.proj = nn.Linear(width, width)
        self.table = nn.Parameter(torch.log(torch.arange(1.0, 9.0)))


def test_a_fills_draw_is_read_exactly_and_a_computed_small_tensor_is_built_twice_only():
    BiasedWithAComputedTable.builds = 0
    stats = scan_init(BiasedWithAComputedTable, Widths(64, 128, 256))
    weight, bias = stats["proj.weight"], stats["proj.bias"]
    assert math.isclose(weight.base_std, 1 / math.sqrt(3 * 64), rel_tol=1e-12)  # exact, not an estimate
    assert math.isclose(weight.delta_std, 1 / math.sqrt(3 * 128), rel_tol=1e-12)
    assert weight.exponent == bias.exponent == -0.5 and weight.excess_kurtosis == -1.2 and weight.zero_mean
    assert BiasedWithAComputedTable.builds == 4  # seeds 0 and 1 at base and delta: the table is not random
    assert stats["table"].exponent == 0.0


class SmallRandomPerBlock(nn.Module):
    """Blocks each holding a 4-entry tensor the build computes from fresh random numbers (no fill
    of its own: it must be sampled), its std ∝ width^(-1/2), and an 8-entry one of constant std."""

    builds = 0

    def __init__(self, width, blocks=48):
        super().__init__()
        type(self).builds += 1
        self.blocks = nn.ModuleList(_SmallRandomBlock(width) for _ in range(blocks))


class _SmallRandomBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.scaled = nn.Parameter(torch.empty(4))
        self.skewed = nn.Parameter(torch.empty(8))
        with torch.no_grad():
            self.scaled.copy_(torch.randn(4) / math.sqrt(width))
            self.skewed.copy_(torch.rand(8).pow(4))  # heavy right tail: four draws' std varies tenfold


def test_a_small_random_tensor_is_pooled_with_its_copies_and_no_copy_is_called_unlike_on_four_draws():
    model = SmallRandomPerBlock(64)
    SmallRandomPerBlock.builds = 0
    stats = scan_init(SmallRandomPerBlock, Widths(64, 128, 256), find_repeats(model))
    assert set(stats) == {"blocks.0.scaled", "blocks.0.skewed"}  # every copy drawn as block 0
    assert stats["blocks.0.scaled"].exponent == -0.5 and stats["blocks.0.scaled"].resolved
    assert stats["blocks.0.skewed"].exponent == 0.0 and stats["blocks.0.skewed"].resolved
    assert SmallRandomPerBlock.builds == 2 * 3  # 48 x 4 entries a build: ceil(512 / 192) builds a width


def test_a_model_costly_to_build_pools_fewer_builds_and_says_what_it_could_not_tell():
    def lone_small_tensors(width):  # 1002 modules, and no copies: nothing to pool a tensor with
        return SmallRandomPerBlock(width, blocks=1000)

    SmallRandomPerBlock.builds = 0
    stats = scan_init(lone_small_tensors, Widths(64, 128, 256))
    assert SmallRandomPerBlock.builds == 2 * (POOL_MODULES // 1002) < 2 * MAX_DRAWS
    skewed = stats["blocks.0.skewed"]  # 8 builds of 8 entries: a half step in width^p is not told from none
    assert skewed.exponent == 0.0 and not skewed.resolved


class WithALoneSmallRandomGain(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.up, self.down = nn.Linear(4, width), nn.Linear(width, 4)
        self.gain = nn.Parameter(torch.rand(8).pow(4))  # computed from fresh random numbers: sampled

    def forward(self, x):
        return self.down(torch.relu(self.up(x))) * self.gain.sum()


def test_a_small_random_tensor_whose_width_dependence_is_unknown_stops_the_run_unless_asked(monkeypatch):
    import muprewrite
    from muprewrite.errors import MuRewriteError
    from muprewrite.passes import init_scan

    monkeypatch.setattr(init_scan, "POOL_MODULES", 1)  # a model too costly to build more than MAX_DRAWS_LARGE times
    compile_ = functools.partial(muprewrite.mupify, WithALoneSmallRandomGain, base=16, delta=32, target=64,
                                 example_inputs=torch.randn(2, 4), materialize=False, verify_width=False)
    with pytest.raises(MuRewriteError, match="the init of 'gain'.*--option unresolved_init=constant"):
        compile_()
    plan = compile_(options={"unresolved_init": "constant"}).plan
    assert [w.subjects for w in plan.warnings if w.code == "unresolved-init"] == [["gain"]]
    assert plan.parameters["gain"].init_ratio == 1.0

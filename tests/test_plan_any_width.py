"""One analysis serves every width: a plan at any width made from the analysis captured at (base,
delta, target) is exactly the plan a fresh capture at that width gives; what cannot be predicted
is refused in one line, and `plan_for` then captures at that width.

The identity runs on every bundled example and on hf llama, gpt2, t5 and qwen3 with two analyses
per model: A captured at (base, delta, target) and A' at (base, delta, w) for an intermediate w.
A planned at w (interpolation) must equal A' at its target, and A' planned at the target
(extrapolation above its own target) must equal A at its target — `Plan.to_dict()` exactly, but
for the notes; for every parametrization and a set of options.
"""

import functools
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import muprewrite
from muprewrite.errors import WidthPredictionError
from muprewrite.widths import Widths, check_at, record_at, scalar_at, size_at

EXAMPLES = ["mlp", "cnn", "einsum_attention", "gpt_heads", "gpt_manual", "gpt_sdpa", "gpt_tied", "moe",
            "transformer_encoder"]
HF = ["llama", "gpt2", "t5", "qwen3"]
VARIANTS = [("mup", {}), ("table3", {}), ("table9", {}), ("sp", {}),
            ("mup", {"zero_init_query": True, "zero_init_readout": True, "adam_eps": "scaled"}),
            ("mup", {"width_constants": "keep", "attention_scale": "sp", "alpha_out": 2.0})]
W = Widths(32, 64, 256)


# ---------------------------------------------------------------------------------------------- the model zoo

def _example(name):
    module = importlib.import_module(name)
    return module.make_model, module.example_inputs(), (module.BASE_WIDTH, 2 * module.BASE_WIDTH,
                                                        module.TARGET_WIDTH)


def _hf(name):
    hf = pytest.importorskip("muprewrite.hf")
    pytest.importorskip("transformers")
    factory = hf.factory(name)
    return factory, hf.example_inputs(name), hf.widths(factory)


@functools.cache
def analyses(source, name):
    """(A at base/delta/target, A' at base/delta/w, w) for one model."""
    factory, inputs, (base, delta, target) = (_example if source == "example" else _hf)(name)
    middle = 3 * base  # not a power of two: 1/sqrt(d_head) is no exact binary fraction there
    captured = muprewrite.analyse_widths(factory, base=base, delta=delta, target=target, example_inputs=inputs)
    fresh = muprewrite.analyse_widths(factory, base=base, delta=delta, target=middle, example_inputs=inputs)
    return captured, fresh, middle


def outcome(analysis, at, parametrization, options):
    """The plan's record without its notes, or the one-line error the plan stops with."""
    try:
        plan = analysis.plan(parametrization, options, at)
    except muprewrite.MuRewriteError as exc:
        return f"{type(exc).__name__}: {exc}"
    record = plan.to_dict()
    record.pop("notes")
    return record


MODELS = [("example", n) for n in EXAMPLES] + [("hf", n) for n in HF]


@pytest.mark.parametrize("source,name", MODELS, ids=[n for _, n in MODELS])
def test_a_plan_at_any_width_is_the_plan_a_capture_there_gives(source, name):
    captured, fresh, middle = analyses(source, name)
    target = captured.flow.widths.target
    for parametrization, options in VARIANTS:
        between = outcome(captured, middle, parametrization, options)
        assert not str(between).startswith("WidthPredictionError"), between
        assert between == outcome(fresh, "target", parametrization, options), (parametrization, options)
        beyond = outcome(fresh, target, parametrization, options)
        assert not str(beyond).startswith("WidthPredictionError"), beyond
        assert beyond == outcome(captured, "target", parametrization, options), (parametrization, options)


def test_plan_for_is_mupifys_plan():
    make_model, inputs, (base, _, target) = _example("gpt_sdpa")
    captured, _, middle = analyses("example", "gpt_sdpa")
    for width in (middle, 2 * target):
        plan = captured.plan_for(width, optimizers=("adamw", "muon"))
        fresh = muprewrite.mupify(make_model, base=base, target=width, example_inputs=inputs, verify_width=False,
                                  materialize=False, optimizers=("adamw", "muon")).plan
        assert plan.target_width == width and plan.optimizers == fresh.optimizers
        assert {**plan.to_dict(), "notes": None} == {**fresh.to_dict(), "notes": None}
        assert plan.notes[-1].startswith(f"planned at width {width} from the analysis captured at widths 32, 64, 256")


def test_a_captured_width_by_name_or_number_is_the_same_plan():
    captured, _, _ = analyses("example", "gpt_tied")
    for name in ("base", "delta", "target"):
        by_number = captured.plan("mup", None, captured.flow.widths[name]).to_dict()
        assert by_number == captured.plan("mup", None, name).to_dict()


# ---------------------------------------------------------------------------------------------- what cannot be predicted

class Quadratic(nn.Module):
    """A hidden size that grows as width**2: not affine in width."""

    def __init__(self, width):
        super().__init__()
        self.up = nn.Linear(8, width)
        self.mid = nn.Linear(width, width * width // 32)
        self.down = nn.Linear(width * width // 32, 4)

    def forward(self, x):
        return self.down(torch.relu(self.mid(torch.relu(self.up(x)))))


class LogScaled(nn.Module):
    """Attention whose logit scale 1/log(d_head) is no power law of d_head."""

    def __init__(self, width):
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.width = width

    def forward(self, x):
        x = self.embed(x)
        logits = self.q(x) @ self.k(x).transpose(1, 2) * (1.0 / math.log(self.width))
        return self.out(logits.softmax(-1) @ self.v(x))


def test_a_size_that_is_not_affine_in_width_is_refused_then_captured():
    inputs = (torch.randn(2, 8),)
    analysis = muprewrite.analyse_widths(Quadratic, base=32, target=256, example_inputs=inputs)
    with pytest.raises(WidthPredictionError, match=r"dim 0 of 'mid.weight' is 32, 128, 2048 .* not affine in "
                                                   r"width, .* plan at a captured width"):
        analysis.plan("mup", None, 96)
    plan = analysis.plan_for(96)
    fresh = muprewrite.mupify(Quadratic, base=32, target=96, example_inputs=inputs, verify_width=False,
                              materialize=False).plan
    assert {**plan.to_dict(), "notes": None} == {**fresh.to_dict(), "notes": None}
    assert plan.notes[-1].startswith("captured at width 96: not predictable from the analysis (dim 0 of 'mid.weight'")
    assert analysis.plan("mup", None, 64).target_width == 64  # a captured width needs no prediction


def test_a_constant_that_is_no_power_law_is_refused():
    analysis = muprewrite.analyse_widths(LogScaled, base=16, target=64, example_inputs=(torch.randn(2, 5, 8),))
    with pytest.raises(WidthPredictionError, match="the mul constant of attention .* no power law of the size it "
                                                   "depends on gives it exactly"):
        analysis.plan("mup", None, 48)
    assert "captured at width 48" in analysis.plan_for(48).notes[-1]


# ---------------------------------------------------------------------------------------------- the predictors

def test_size_at_is_affine_in_width_and_checked_on_the_target():
    assert size_at({"base": 33, "delta": 65, "target": 257}, W, 96, "d") == 97  # width + 1
    assert size_at({"base": 96, "delta": 192, "target": 768}, W, 512, "d") == 1536
    assert size_at({"base": 7, "delta": 7, "target": 7}, W, 1000, "d") == 7
    assert size_at({"base": 7, "delta": 9, "target": 11}, W, "delta", "d") == 9  # a name: the capture itself
    with pytest.raises(WidthPredictionError, match="d is 32, 64, 300 at widths 32, 64, 256: not affine"):
        size_at({"base": 32, "delta": 64, "target": 300}, W, 96, "d")
    with pytest.raises(WidthPredictionError, match=r"d would be 16\.5 at width 33 .* not an integer >= 1"):
        size_at({"base": 16, "delta": 32, "target": 128}, W, 33, "d")
    with pytest.raises(WidthPredictionError, match="would be -8 at width 8"):
        size_at({"base": 16, "delta": 48, "target": 240}, W, 8, "d")


def test_scalar_at_follows_the_models_own_arithmetic():
    d_head = {"base": 16, "delta": 32, "target": 128}
    for rule in (lambda d: 1 / math.sqrt(d), lambda d: d ** -0.5, lambda d: math.sqrt(d), lambda d: 0.125 / d):
        values = {k: rule(v) for k, v in d_head.items()}
        assert scalar_at(values, d_head, W, 96, "s") == rule(48)
    assert scalar_at({"base": 2.0, "delta": 2.0, "target": 2.0}, d_head, W, 96, "s") == 2.0
    with pytest.raises(WidthPredictionError, match="s is .* no power law of the size it depends on"):
        scalar_at({k: 1 / math.log(v) for k, v in d_head.items()}, d_head, W, 96, "s")


def test_record_at_predicts_every_changing_integer_and_nothing_else():
    rows = {w: {"dim": 0, "ranges": [[0, d], [3 * d, 4 * d]], "param": "qkv"}
            for w, d in (("base", 32), ("delta", 64), ("target", 256))}
    assert record_at(rows, W, 96, "rows") == {"dim": 0, "ranges": [[0, 96], [288, 384]], "param": "qkv"}
    rows["target"] = {**rows["target"], "ranges": [[0, 256]]}
    with pytest.raises(WidthPredictionError, match=r"rows\['ranges'\] is .* cannot be predicted"):
        record_at(rows, W, 96, "rows")


def test_the_plan_width_is_a_name_or_a_positive_integer():
    for bad in ("middle", 0, -32, True, 96.0):
        with pytest.raises(muprewrite.MuRewriteError, match="neither one of base, delta, target nor a positive "
                                                            "integer") as refused:
            check_at(bad, W)
        assert not isinstance(refused.value, WidthPredictionError)  # plan_for does not capture at such a width


# ---------------------------------------------------------------------------------------------- the callers

def test_coordcheck_from_one_analysis_is_the_old_coordcheck_bit_for_bit():
    from muprewrite.coordcheck import coordcheck

    # width 48 (gpt_sdpa) and 192 (mlp) are planned from the analysis, not captured
    for name, multipliers in (("mlp", (1, 2, 3, 4)), ("gpt_sdpa", (1, 1.5, 2))):
        module = importlib.import_module(name)
        run = functools.partial(coordcheck, module.make_model, base=module.BASE_WIDTH, multipliers=multipliers,
                                steps=1, seeds=1, example_inputs=module.example_inputs(), device="cpu")
        assert run(reuse_analysis=True).to_dict() == run(reuse_analysis=False).to_dict(), name


def _transfer():
    spec = importlib.util.spec_from_file_location(
        "transfer_benchmark", Path(__file__).resolve().parent.parent / "benchmarks" / "transfer" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_transfer_benchmark_plans_every_run_from_one_analysis_as_mupify_would():
    transfer = _transfer()
    cfg = transfer.Config(**dict(transfer.CONFIGS["tiny"], widths=[32, 64, 96], variants={"sp": None, "mup": {}},
                                 optimizer="adamw"))
    for side, width in (("mup", 96), ("mup", 64), ("mup", 32)):
        model, optimizer = transfer.build(cfg, side, width, 2.0 ** -6, "cpu")
        after = torch.rand(4)  # the RNG is where mupify's path leaves it
        torch.manual_seed(cfg.seed)
        result = muprewrite.mupify(transfer.make_factory(cfg), base=cfg.base, target=width, verify_width=False,
                                   example_inputs=(torch.zeros(1, cfg.block_size, dtype=torch.long),))
        assert torch.equal(after, torch.rand(4))
        state, expected = model.state_dict(), result.model.state_dict()
        assert list(state) == list(expected) and all(torch.equal(state[k], expected[k]) for k in state)
        groups = result.param_groups(lr=2.0 ** -6, weight_decay=cfg.weight_decay, optimizer="adamw")
        assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == \
            [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(transfer._ANALYSES) == 1

"""`muprewrite coordcheck`: the graph-level coordinate check of TP5 §D.1 (Fig. 5).

The check trains the captured graph for a few steps at several widths and fits, per node, the
slope of log mean|x| against log width. muP must keep every slope <= the threshold after step 1;
SP, or muP with a rule broken on purpose, must not.
"""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import gpt_sdpa
import mlp
from muprewrite.cli import main
from muprewrite.coordcheck import coordcheck
from muprewrite.coordcheck_result import CoordCheckResult, fit_slope, make_trace

ROOT = Path(__file__).parent.parent
STEPS = 3
MLP_BASE, GPT_BASE = 32, 16


def run_mlp(**kwargs):
    return coordcheck(mlp.make_model, base=MLP_BASE, multipliers=(1, 2, 4, 8), steps=STEPS,
                      example_inputs=mlp.example_inputs(), device="cpu", seeds=1, **kwargs)


def run_gpt(**kwargs):
    return coordcheck(gpt_sdpa.make_model, base=GPT_BASE, multipliers=(1, 2, 4, 8), steps=STEPS,
                      example_inputs=gpt_sdpa.example_inputs(), device="cpu", seeds=1, **kwargs)


def failing_modules(result, side="mup"):
    return {trace.module for trace, _, _ in result.failures(side)}


@pytest.fixture(scope="module")
def gpt_result():
    return run_gpt()


# ---- muP passes, SP fails --------------------------------------------------------------------
def test_mlp_mup_passes_and_sp_fails():
    result = run_mlp()
    assert result.passed, [(t.label, step, s) for t, step, s in result.failing]
    assert result.widths == [32, 64, 128, 256]
    assert "readout" in failing_modules(result, "sp")  # SP's logits grow with width


def test_gpt_mup_passes_and_sp_logits_grow(gpt_result):
    result = gpt_result
    assert result.passed, [(t.label, step, s) for t, step, s in result.failing]
    assert result.loss == "next-token cross-entropy"
    # every call_function node with a float output is tracked, functional ops included
    names = set(result.traces["mup"])
    assert {"scaled_dot_product_attention", "scaled_dot_product_attention_1", "gelu", "layer_norm_4"} <= names
    assert result.traces["mup"]["linear_8"].module == "lm_head"
    sp_failing = failing_modules(result, "sp")
    assert "lm_head" in sp_failing, sp_failing
    lm_head = result.traces["sp"]["linear_8"]
    assert max(lm_head.slopes[1:]) > 0.5  # TP5 Fig. 5: SP logits blow up after one step


def test_base_width_is_the_same_model_on_both_sides(gpt_result):
    """At base width muP is SP bit for bit, so the two sides record the same sizes there."""
    for name, sp in gpt_result.traces["sp"].items():
        mup = gpt_result.traces["mup"][name]
        assert [row[0] for row in sp.sizes] == [row[0] for row in mup.sizes], name


def test_sp_parametrization_fails_on_the_logits():
    result = run_gpt(parametrization="sp", compare_sp=False)
    assert not result.passed and result.verdict == "FAIL"
    assert "lm_head" in failing_modules(result)
    assert set(result.traces) == {"mup"}  # the checked side only
    data = json.loads(result.to_json())
    assert data["verdict"] == "FAIL" and data["parametrization"] == "sp"
    assert any(f["module"] == "lm_head" for f in data["failing"])


def test_mlp_at_base_16_passes():
    """Regression: init_scan once rounded the std exponent of mlp's small biases from one noisy draw
    (readout.bias 10 entries: -1 instead of -0.5), the plan over-scaled readout.bias by
    sqrt(width / 16) and the logits grew with width (slope ~+0.3 at every step)."""
    result = coordcheck(mlp.make_model, base=16, multipliers=(1, 2, 4, 8), steps=STEPS,
                        example_inputs=mlp.example_inputs(), device="cpu", seeds=1)
    assert result.passed, [(t.label, step, s) for t, step, s in result.failing]


# ---- a rule broken on purpose is caught ------------------------------------------------------
def without_readout_multiplier(plan):
    return dataclasses.replace(plan, edits=[e for e in plan.edits if e.kind != "readout_multiplier"])


def hidden_lr_times_width(plan):
    m = plan.target_width / plan.base_width
    params = {name: dataclasses.replace(p, lr_mult={k: v * m for k, v in p.lr_mult.items()}) if p.role == "hidden" else p
              for name, p in plan.parameters.items()}
    return dataclasses.replace(plan, parameters=params)


def test_missing_readout_multiplier_fails_on_the_logits():
    result = run_mlp(plan_transform=without_readout_multiplier, compare_sp=False)
    assert not result.passed
    worst, step, slope = result.failing[0]
    assert worst.module == "readout" and worst.op == "linear" and step >= 1 and slope > 0.3


def test_hidden_lr_not_divided_by_width_fails():
    result = run_mlp(plan_transform=hidden_lr_times_width, compare_sp=False)
    assert not result.passed
    assert {"fc2", "readout"} <= failing_modules(result)


# ---- the slope fit and the verdict on hand-made numbers ---------------------------------------
WIDTHS = [32, 64, 128, 256]


def synthetic(sizes_by_node, threshold=0.1, steps=1):
    traces = {name: make_trace(name, WIDTHS, sizes) for name, sizes in sizes_by_node.items()}
    return CoordCheckResult(widths=WIDTHS, base_width=32, steps=steps, optimizer="adam", lr=1e-2,
                            threshold=threshold, parametrization="mup", loss="test", device="cpu",
                            traces={"mup": traces}, losses={"mup": [[0.0] * 4] * (steps + 1)})


def power(exponent, scale=1.0):
    return [scale * (w / 32) ** exponent for w in WIDTHS]


def test_fit_slope_recovers_power_laws_and_skips_unusable_points():
    assert fit_slope(WIDTHS, power(0.5)) == pytest.approx(0.5)
    assert fit_slope(WIDTHS, power(-1.0, 3.0)) == pytest.approx(-1.0)
    assert fit_slope(WIDTHS, [1.0, 0.0, 4.0, None]) == pytest.approx(1.0)  # zero and None skipped
    assert fit_slope(WIDTHS, [1.0, math.nan, math.inf, 0.0]) is None  # one usable point: no slope
    assert fit_slope(WIDTHS, [0.0] * 4) is None  # an all-zero mask has no slope
    assert fit_slope([64, 64], [1.0, 2.0]) is None


def test_verdict_flat_passes_growing_fails_worst_first():
    flat = synthetic({"a": [power(0.0), power(0.02)], "b": [power(1.0), power(-0.3)]})
    assert flat.passed  # the growth of "b" at step 0 (init) is not judged
    growing = synthetic({"a": [power(0.0), power(0.02)], "logits": [power(0.0), power(1.0)],
                         "hidden": [power(0.0), power(0.5)]})
    assert not growing.passed and growing.verdict == "FAIL"
    assert [(t.name, step) for t, step, _ in growing.failing] == [("logits", 1), ("hidden", 1)]
    assert growing.failing[0][2] == pytest.approx(1.0)


def test_threshold_is_respected():
    sizes = {"x": [power(0.0), power(0.15)]}
    assert not synthetic(sizes, threshold=0.1).passed
    assert synthetic(sizes, threshold=0.2).passed


def test_zero_sizes_are_skipped_and_divergence_fails():
    zeros = synthetic({"mask": [[0.0] * 4, [0.0] * 4], "x": [power(0.0), power(0.0)]})
    assert zeros.passed and zeros.traces["mup"]["mask"].slopes == [None, None]
    diverged = synthetic({"x": [power(0.0), [1.0, 1.0, math.inf, math.nan]]})
    assert not diverged.passed
    data = json.loads(diverged.to_json())  # valid JSON: no inf/nan
    assert data["failing"][0]["nonfinite"] and data["failing"][0]["slope"] is None


# ---- the command line ------------------------------------------------------------------------
def test_cli_writes_json_and_png(tmp_path, capsys):
    code = main(["coordcheck", str(ROOT / "examples" / "mlp.py"), "--multipliers", "1,2,4", "--steps", "2",
                 "--seeds", "1", "--out", str(tmp_path)])
    out, _ = capsys.readouterr()
    assert code == 0 and "PASS" in out
    data = json.loads((tmp_path / "coordcheck.json").read_text())
    assert data["widths"] == [64, 128, 256] and data["steps"] == 2 and data["verdict"] == "PASS"
    node = data["sides"]["mup"]["nodes"]["linear_2"]
    assert node["module"] == "readout" and len(node["sizes"]) == 3 and len(node["sizes"][0]) == 3
    assert len(node["slopes"]) == 3
    assert set(data["sides"]) == {"sp", "mup"}
    png = (tmp_path / "coordcheck.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cli_json_prints_only_json_and_fail_exits_1(capsys):
    code = main(["coordcheck", str(ROOT / "examples" / "mlp.py"), "--widths", "32,64,128", "--steps", "2", "--seeds", "1",
                 "--json", "--parametrization", "sp", "--no-sp", "--option", "alpha_out=1.0"])
    out, err = capsys.readouterr()
    data = json.loads(out)  # nothing else on stdout
    assert code == 1 and data["verdict"] == "FAIL" and data["widths"] == [32, 64, 128]
    assert data["base_width"] == 64  # BASE_WIDTH from the file; the widths need not include it


def test_cli_bad_input_is_one_line_exit_2(capsys):
    code = main(["coordcheck", str(ROOT / "examples" / "mlp.py"), "--widths", "64"])
    _, err = capsys.readouterr()
    assert code == 2 and "at least two different widths" in err and len(err.strip().splitlines()) == 1
    code = main(["coordcheck", str(ROOT / "examples" / "mlp.py"), "--option", "no_such_option=1", "--multipliers", "1,2"])
    _, err = capsys.readouterr()
    assert code == 2 and "no_such_option" in err
    code = main(["coordcheck", "does_not_exist.py"])
    assert code == 2


def test_main_command_still_works(capsys):
    code = main([str(ROOT / "examples" / "mlp.py"), "--json", "--target", "128"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["target_width"] == 128


def test_pooled_slope_is_exact_on_power_laws_with_own_intercepts():
    """Each seed and step may sit at its own height: the pooled slope is the common exponent."""
    from muprewrite.coordcheck_result import pooled_slope

    widths = [32, 64, 128, 256]
    seeds = [[[c * w ** 0.3 for w in widths] for c in (1.0, 2.0, 5.0)] for _ in range(2)]
    slope, error = pooled_slope(widths, seeds, range(3))
    assert math.isclose(slope, 0.3, rel_tol=1e-9) and error < 1e-9
    noisy = [[[w ** 0.3 * (1.1 if (i + s) % 2 else 0.9) for i, w in enumerate(widths)]] for s in range(2)]
    slope, error = pooled_slope(widths, noisy, range(1))
    assert error > 0.01  # a bent line: the interval says so


def test_verdict_line_names_node_module_step_and_interval():
    result = run_mlp(parametrization="sp", compare_sp=False)
    line = result.summary()
    assert line.startswith("coordinate check: FAIL") and "readout" in line and "±" in line and "step" in line
    assert json.loads(result.to_json())["failing"][0]["ci95"] >= 0


class _HandWrittenRMSNorm(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def _rms_mlp(width):
    return nn.Sequential(nn.Linear(8, width), _HandWrittenRMSNorm(width), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 4))


def test_a_hand_written_norms_reciprocal_is_not_judged():
    """rsqrt(mean(x^2)) grows exactly when x shrinks: not a blow-up (Llama's RMSNorm made the verdict
    flag the residual stream shrinking with width as growth)."""
    result = coordcheck(_rms_mlp, base=16, multipliers=(1, 2, 4), steps=2, seeds=1, device="cpu",
                        example_inputs=(torch.randn(4, 8),), compare_sp=False)
    traces = result.traces["mup"]
    (rsqrt,) = [t for name, t in traces.items() if name.startswith("rsqrt")]
    assert not rsqrt.judged
    assert [t for name, t in traces.items() if name.startswith("mul")] and all(
        t.judged for name, t in traces.items() if name.startswith("mul"))

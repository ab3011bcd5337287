"""Optimizer families (muprewrite/optimizers.py): Muon, Lion and Adafactor groups that stay muP under
each optimizer's own scaling; every family is the plain optimizer at base width."""

import json
import math

import pytest
import torch
from torch import nn

import mlp
import muprewrite
from muprewrite.coordcheck import coordcheck
from muprewrite.errors import MuRewriteError
from muprewrite.optimizers import FAMILIES, Lion, muon_ratio

BASE, TARGET = 32, 128


class WideMLP(nn.Module):
    """Hidden matrices of two shapes: width -> 4 width -> width (Muon's A/B differs)."""

    def __init__(self, width):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        return self.out(torch.relu(self.down(torch.relu(self.up(torch.relu(self.inp(x)))))))


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(16, 8, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def planned(width, **options):
    torch.manual_seed(0)
    return muprewrite.mupify(WideMLP, base=BASE, target=width, example_inputs=(batch()[0],), verify_width=False,
                             options=options or None)


def one_step(model, optimizer):
    x, y = batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def plain(name, model, lr):
    """The family's plain optimizer, as a user would build it without muprewrite."""
    if name == "muon":
        matrices = [p for n, p in model.named_parameters() if n in ("up.weight", "down.weight")]
        rest = [p for n, p in model.named_parameters() if n not in ("up.weight", "down.weight")]
        return muprewrite.optimizers.Combined([torch.optim.Muon(matrices, lr=lr, weight_decay=0.0),
                                               torch.optim.AdamW(rest, lr=lr, weight_decay=0.0)])
    make = {"adam": torch.optim.AdamW, "sgd": torch.optim.SGD, "lion": Lion, "adafactor": torch.optim.Adafactor}
    return make[name](model.parameters(), lr=lr, weight_decay=0.0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_the_plain_optimizer_at_base_width(name):
    result = planned(BASE)
    ours = one_step(result.model, result.optimizer(name, lr=1e-2))
    reference = planned(BASE).model
    theirs = one_step(reference, plain(name, reference, 1e-2))
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_muon_hidden_update_has_the_spectral_scaling_after_muons_own_factor(adjust):
    """||dW||_2 ~ sqrt(fan_out / fan_in): the same at both widths for these hidden matrices,
    whichever adjust_lr_fn Muon applies on top; plain Muon with match_rms_adamw grows as sqrt(width)."""
    steps = {}
    for width in (BASE, TARGET):
        result = planned(width, muon_adjust_lr=adjust)
        steps[width] = one_step(result.model, result.optimizer("muon", lr=1e-2))
        for name in ("up.weight", "down.weight"):
            entry = result.plan.parameters[name]
            assert entry.routes == {} and entry.lr_mult["muon"] == pytest.approx(
                muon_ratio(entry.base_shape, adjust) / muon_ratio(entry.shape, adjust))
    for name in ("up.weight", "down.weight"):
        ratio = torch.linalg.matrix_norm(steps[TARGET][name], 2) / torch.linalg.matrix_norm(steps[BASE][name], 2)
        assert ratio == pytest.approx(1.0, rel=0.2), name
    if adjust == "match_rms_adamw":
        grown = {}
        for width in (BASE, TARGET):
            model = planned(width).model
            optimizer = torch.optim.Muon([model.up.weight], lr=1e-2, weight_decay=0.0, adjust_lr_fn=adjust)
            grown[width] = torch.linalg.matrix_norm(one_step(model, optimizer)["up.weight"], 2)
        assert grown[TARGET] / grown[BASE] == pytest.approx(2.0, rel=0.2)  # sqrt(128 / 32)


def test_muon_sends_everything_but_hidden_matrices_to_adamw_with_adams_rule():
    result = planned(TARGET)
    groups = result.param_groups(lr=1e-2, optimizer="muon")
    assert set(groups) == {"muon", "adamw"}
    muon_names = {n for g in groups["muon"] for n in g["names"]}
    assert muon_names == {"up.weight", "down.weight"}
    assert all(g["adjust_lr_fn"] == "original" for g in groups["muon"])
    for group in groups["adamw"]:
        for name in group["names"]:
            assert result.plan.parameters[name].routes == {"muon": "adamw"}
            assert group["lr"] == pytest.approx(1e-2 * result.plan.parameters[name].lr_mult["adam"])


def test_lion_hidden_steps_are_exactly_lr_over_m():
    result = planned(TARGET)
    step = one_step(result.model, result.optimizer("lion", lr=1e-3))
    m = TARGET / BASE
    nonzero = step["down.weight"][step["down.weight"] != 0].abs()
    torch.testing.assert_close(nonzero, torch.full_like(nonzero, 1e-3 / m))
    assert step["inp.weight"][step["inp.weight"] != 0].abs().max() == pytest.approx(1e-3, rel=1e-5)  # float32


def test_adafactor_divides_out_the_rms_muP_gives_a_hidden_weight():
    """torch's Adafactor multiplies the step by RMS(W) ~ 1/sqrt(m) for a hidden weight: the group LR
    is Adam's 1/m over it, and the update's RMS shrinks as 1/m, as Adam's does."""
    m = TARGET / BASE
    assert planned(TARGET).plan.parameters["down.weight"].lr_mult["adafactor"] == pytest.approx(m ** -0.5, rel=0.02)
    sizes = {}
    for width in (BASE, TARGET):
        result = planned(width)
        sizes[width] = one_step(result.model, result.optimizer("adafactor", lr=1e-2))["down.weight"].pow(2).mean().sqrt()
    assert sizes[TARGET] / sizes[BASE] == pytest.approx(1 / m, rel=0.2)


class OffCentre(nn.Module):
    """A hidden weight with a non-centred init whose std does not follow 1/sqrt(fan_in)."""

    def __init__(self, width):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.hidden = nn.Linear(width, width)
        nn.init.uniform_(self.hidden.weight, 0.0, 0.2)
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(torch.relu(self.inp(x)))))


def test_adafactor_refuses_a_tensor_whose_rms_change_the_plan_does_not_know():
    result = muprewrite.mupify(OffCentre, base=BASE, target=TARGET, example_inputs=(batch()[0],), verify_width=False)
    assert result.plan.parameters["hidden.weight"].lr_mult["adafactor"] is None
    with pytest.raises(MuRewriteError, match="hidden.weight.*no exact adafactor rule"):
        result.param_groups(lr=1e-2, optimizer="adafactor")
    result.param_groups(lr=1e-2, optimizer="adamw")  # the other families are unaffected


def test_a_plan_without_a_family_asks_for_a_new_plan():
    result = planned(TARGET)
    for entry in result.plan.parameters.values():
        del entry.lr_mult["muon"]
    with pytest.raises(MuRewriteError, match="no muon multipliers"):
        result.param_groups(lr=1e-2, optimizer="muon")


@pytest.mark.parametrize("optimizer", ["muon", "lion", "adafactor"])
def test_coordinate_check_passes_with_the_family_and_sp_fails(optimizer):
    result = coordcheck(mlp.make_model, base=32, multipliers=(1, 2, 4, 8), steps=3, device="cpu",
                        example_inputs=mlp.example_inputs(), optimizer=optimizer)  # the calibrated 3 seeds
    assert result.passed, result.summary()
    assert result.failures("sp")
    assert math.isfinite(result.lr)


def test_the_command_line_plans_for_the_families_named(capsys):
    from pathlib import Path

    from muprewrite.cli import main

    model = str(Path(__file__).parent.parent / "examples" / "mlp.py")
    assert main([model, "--json", "--optimizer", "muon", "--optimizer", "lion"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["optimizers"] == ["muon", "lion"]
    assert set(plan["parameters"]["fc2.weight"]["lr_mult"]) == set(FAMILIES)
    assert main([model, "--optimizer", "muon"]) == 0
    out = capsys.readouterr().out
    assert "muon" in out and "build_optimizer(model, plan, 'muon'" in out.replace("\\\n", "")

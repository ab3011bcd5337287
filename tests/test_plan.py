"""The plan: JSON round trip, re-applying it to a checkpoint-loaded model, and guard rails."""

import copy
import io
import json

import pytest
import torch

import gpt_tied
import mlp
import muprewrite
from muprewrite import MuRewriteError, Plan


@pytest.fixture(scope="module")
def tied():
    torch.manual_seed(0)
    return muprewrite.mupify(gpt_tied.make_model, base=32, target=128, example_inputs=gpt_tied.example_inputs())


def outputs(model):
    model.eval()
    with torch.no_grad():
        return model(*gpt_tied.example_inputs())


def test_plan_json_round_trip(tied, tmp_path):
    path = tmp_path / "plan.json"
    tied.plan.save(path)
    loaded = Plan.load(path)
    assert loaded == tied.plan
    assert json.loads(loaded.to_json()) == json.loads(tied.plan.to_json())


def test_checkpoint_round_trip_with_reapplied_plan(tied, tmp_path):
    buffer = io.BytesIO()
    torch.save(tied.model.state_dict(), buffer)
    buffer.seek(0)
    fresh = gpt_tied.make_model(128)
    fresh.load_state_dict(torch.load(buffer))
    before = copy.deepcopy(fresh.state_dict())
    restored = muprewrite.apply_plan(fresh, Plan.from_dict(json.loads(tied.plan.to_json())))
    assert restored is not fresh and type(restored) is type(fresh)
    for name, tensor in restored.state_dict().items():
        assert torch.equal(tensor, before[name]), f"{name} changed: reinit=False must keep weights"
    torch.testing.assert_close(outputs(restored), outputs(tied.model), rtol=0, atol=0)
    # the plain loaded model (no plan) is SP and differs: the plan carries the multipliers
    assert not torch.allclose(outputs(fresh), outputs(tied.model))


def test_apply_plan_does_not_mutate_the_users_model(tied):
    model = gpt_tied.make_model(128)
    snapshot = copy.deepcopy(model.state_dict())
    muprewrite.apply_plan(model, tied.plan, reinit=True)
    assert all(torch.equal(t, snapshot[n]) for n, t in model.state_dict().items())
    assert not model._forward_pre_hooks and not any(m._forward_pre_hooks for m in model.modules())


def test_reinit_gives_the_plans_std(tied):
    torch.manual_seed(1)
    model = muprewrite.apply_plan(gpt_tied.make_model(128), tied.plan, reinit=True, inplace=True)
    for name, param in model.named_parameters():
        target = tied.plan.parameters[name].init_std["after"]
        if param.numel() >= 4096 and target > 0:
            assert float(param.detach().std()) == pytest.approx(target, rel=0.1), name


def test_wrong_width_and_double_application_are_refused(tied):
    with pytest.raises(MuRewriteError, match="made for width 128"):
        muprewrite.apply_plan(gpt_tied.make_model(64), tied.plan)
    with pytest.raises(MuRewriteError, match="already has a muprewrite plan"):
        muprewrite.apply_plan(tied.model, tied.plan)
    with pytest.raises(MuRewriteError, match="lacks"):
        muprewrite.apply_plan(mlp.make_model(128), tied.plan)


def test_saved_whole_model_keeps_its_edits(tied):
    buffer = io.BytesIO()
    torch.save(tied.model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(outputs(loaded), outputs(tied.model), rtol=0, atol=0)
    torch.testing.assert_close(outputs(copy.deepcopy(tied.model)), outputs(tied.model), rtol=0, atol=0)


def test_param_groups_cover_every_parameter_once(tied):
    groups = tied.param_groups(lr=1e-3, weight_decay=0.1, optimizer="adamw")
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in tied.model.parameters())
    lrs = {name: g["lr"] for g in groups for name in g["names"]}
    assert lrs["blocks.0.mlp.c_fc.weight"] == pytest.approx(1e-3 / 4)
    assert lrs["wte.weight"] == pytest.approx(1e-3)
    torch.optim.AdamW(groups)  # accepted as is
    with pytest.raises(MuRewriteError, match="unknown optimizer"):
        tied.param_groups(lr=1e-3, optimizer="rmsprop")


def test_report_is_a_view_of_the_plan(tied):
    markdown, full = tied.report.to_markdown(), tied.report.to_markdown(full=True)
    assert "`blocks.{0..1}.attn.c_attn.weight` ×2" in markdown and "`blocks.0.attn.c_attn.weight`" not in markdown
    for name in tied.plan.parameters:
        assert f"`{name}`" in full
    for edit in tied.plan.edits:
        assert f"| {edit.node} |" in full and edit.realized_by in markdown
    assert "tied: input + output" in markdown
    assert "<html" in tied.report.to_html().lower()
    assert "<html" not in tied._repr_html_().lower() and 'class="muprewrite-report"' in tied._repr_html_()
    assert "Verified at width 64" in markdown and "realized model == edited graph" in " ".join(tied.report.to_text(width=400).split())


def test_bad_plan_files_are_one_line_errors(tmp_path):
    with pytest.raises(MuRewriteError, match="does not exist"):
        Plan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MuRewriteError, match="not valid JSON"):
        Plan.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(MuRewriteError, match="not a muprewrite plan"):
        Plan.load(tmp_path / "other.json")


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d.update(target_width="256"), "target_width is '256', expected int"),
    (lambda d: d["edits"][0].update(kind="magic_multiplier"), "kind 'magic_multiplier' is not one of"),
    (lambda d: d["edits"][0].update(new=True), "new is True, expected float"),
    (lambda d: next(iter(d["parameters"].values())).update(role="hiden"), "role 'hiden' is not one of"),
    (lambda d: next(iter(d["parameters"].values())).update(lr_mult=[1, 2]), "lr_mult is [1, 2], expected dict"),
    (lambda d: next(iter(d["parameters"].values())).pop("shape"), "lacks 'shape'"),
    (lambda d: d["edits"][0].update(extra=1), "unknown field 'extra'"),
    (lambda d: d.update(edits={}), "edits is {}, expected list"),
    (lambda d: d.update(optimizers=["rmsprop"]), "optimizers names 'rmsprop'"),
])
def test_plan_with_wrong_types_or_kinds_is_refused_naming_the_field(tied, tmp_path, corrupt, message):
    data = json.loads(tied.plan.to_json())
    corrupt(data)
    (tmp_path / "plan.json").write_text(json.dumps(data))
    with pytest.raises(MuRewriteError, match="not a muprewrite plan") as info:
        Plan.load(tmp_path / "plan.json")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_param_groups_see_through_compile_and_ddp_wrappers(tied):
    compiled = torch.compile(tied.model)
    by_name = {n: g["lr"] for g in muprewrite.param_groups(compiled, tied.plan, lr=1e-3) for n in g["names"]}
    assert by_name["_orig_mod.blocks.0.mlp.c_fc.weight"] == pytest.approx(1e-3 / 4)
    with pytest.raises(MuRewriteError, match="not in the plan"):
        muprewrite.param_groups(mlp.make_model(128), tied.plan, lr=1e-3)


def test_report_renders_once_in_a_notebook_and_result_repr_is_short(tied, monkeypatch):
    """In Jupyter rich displays whatever a Console prints: rendering the HTML must not display it again."""
    import rich.console
    import rich.jupyter

    displayed = []
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    monkeypatch.setattr(rich.jupyter, "display", lambda *args, **kwargs: displayed.append(args))
    html, text = tied.report.to_html(), tied.report.to_text()
    assert "<html" in html.lower() and "hidden" in text and displayed == []
    assert "muprewrite report" in tied._repr_html_()
    line = repr(tied)
    assert line.startswith("Result(mup, widths 32/64/128") and "\n" not in line and len(line) < 160

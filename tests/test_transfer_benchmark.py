"""benchmarks/transfer/transfer.py: the optimum finder, the transfer summary and a tiny sweep end to end."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("transfer_benchmark", ROOT / "benchmarks" / "transfer" / "transfer.py")
transfer = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = transfer  # dataclasses look their module up there
_spec.loader.exec_module(transfer)


@given(vertex=st.floats(-9.45, -4.55), curvature=st.floats(0.01, 5.0), offset=st.floats(1.0, 3.0))
def test_fitted_optimum_recovers_a_parabolas_vertex(vertex, curvature, offset):
    """Any vertex nearer an interior grid point than the edge (so the argmin is interior)."""
    grid = [-10, -9, -8, -7, -6, -5, -4]
    points = [(x, offset + curvature * (x - vertex) ** 2) for x in grid]
    assert transfer.fitted_optimum(points) == pytest.approx(vertex, abs=1e-6)


def test_fitted_optimum_is_none_at_the_grid_edge_or_next_to_a_divergence():
    assert transfer.fitted_optimum([(-3, 1.0), (-2, 2.0), (-1, 3.0)]) is None
    assert transfer.fitted_optimum([(-3, 2.0), (-2, 1.0), (-1, math.inf)]) is None


def _runs(side, losses_by_width):
    """Runs from {width: {log2_lr: loss or None (diverged)}}."""
    return [{"side": side, "width": w, "log2_lr": lr, "final_val_loss": loss, "diverged": loss is None}
            for w, by_lr in losses_by_width.items() for lr, loss in by_lr.items()]


def _config(**overrides):
    values = dict(transfer.CONFIGS["tiny"], widths=[32, 64, 128], log2_lrs=[-8, -7, -6, -5, -4],
                  variants={"sp": None, "mup": {}})
    values.update(overrides)
    return transfer.Config(**values)


def test_summary_of_a_drifting_and_a_transferring_sweep():
    def bowl(center, floor):
        return {lr: floor + 0.1 * (lr - center) ** 2 for lr in [-8, -7, -6, -5, -4]}

    sp = _runs("sp", {32: bowl(-5, 2.0), 64: bowl(-6, 1.9), 128: bowl(-7, 1.8)})   # SP: one octave left per doubling
    mup = _runs("mup", {32: bowl(-5, 2.0), 64: bowl(-5, 1.9), 128: bowl(-5, 1.8)})
    mup[-1]["final_val_loss"], mup[-1]["diverged"] = None, True                   # width 128 diverges at 2^-4
    summary = transfer.summarize(_config(), sp + mup)
    assert summary["sp"]["drift_log2"] == 2 and summary["sp"]["optimum_shift_log2"] == -2
    assert summary["sp"]["drift_fitted_log2"] == pytest.approx(2)
    assert summary["mup"]["drift_log2"] == 0 and summary["mup"]["wider_is_better_at_optimum"]
    assert summary["mup"]["per_width"][128]["diverged"] == [-4]
    assert set(summary["mup"]["wider_is_better_per_lr"]) == {-8, -7, -6, -5}        # 2^-4: a width diverged
    assert summary["base_width_identity_max_abs_diff"] == 0
    # the LR tuned at width 32 (2^-5) used at every width: SP pays for its drift, muP does not
    assert summary["sp"]["at_base_lr"][128]["log2_lr"] == -5
    assert summary["sp"]["at_base_lr"][128]["regret"] == pytest.approx(0.4)
    assert summary["mup"]["at_base_lr"][128]["regret"] == 0


def test_wider_is_not_better_when_the_widest_loses():
    flat = {lr: 2.0 + 0.1 * (lr + 6) ** 2 for lr in [-8, -7, -6, -5, -4]}
    worse = {lr: loss + 0.05 for lr, loss in flat.items()}
    summary = transfer.summarize(_config(), _runs("mup", {32: flat, 64: flat, 128: worse}))
    assert not summary["mup"]["wider_is_better_at_optimum"]
    assert not any(summary["mup"]["wider_is_better_per_lr"].values())


def test_sides_share_base_width_runs_only_with_an_identical_partner():
    main, lingle = _config(), _config(variants=dict(transfer.LINGLE_VARIANTS))
    assert transfer.base_partner(main, "mup", 32) == "sp"
    assert transfer.base_partner(main, "sp", 32) is None and transfer.base_partner(main, "mup", 64) is None
    assert transfer.base_partner(lingle, "mup+coupled_wd", 32) == "mup"
    assert transfer.base_partner(lingle, "mup+sp_attention", 32) == "mup"
    assert transfer.base_partner(lingle, "mup+frozen_gains", 32) is None
    other = _config(variants={"sp": None, "mup": {"zero_init_readout": True}})
    assert transfer.base_partner(other, "mup", 32) is None


def _one_step(cfg, side):
    import torch
    import torch.nn.functional as F

    model, optimizer = transfer.build(cfg, side, cfg.base, 2.0 ** -6, "cpu")
    x = torch.randint(0, transfer.VOCAB, (2, cfg.block_size), generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(model(x).view(-1, transfer.VOCAB), x.roll(-1, 1).reshape(-1))
    loss.backward()
    optimizer.step()
    return loss.item(), {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("side", ["mup", "mup+coupled_wd", "mup+sp_attention", "mup+frozen_gains"])
def test_same_at_base_is_true_bit_for_bit(side):
    """What SAME_AT_BASE claims, checked: at the base width the side's model and optimizer give
    the SP loss and the SP parameters after a step exactly; frozen gains do not."""
    cfg = _config(variants={"sp": None, **transfer.LINGLE_VARIANTS})
    sp_loss, sp_state = _one_step(cfg, "sp")
    loss, state = _one_step(cfg, side)
    identical = loss == sp_loss and all(torch_equal(state[k], sp_state[k]) for k in sp_state)
    assert identical == (side in transfer.SAME_AT_BASE)


@pytest.mark.parametrize("optimizer", ["muon", "lion", "adafactor"])
def test_sp_and_mup_are_the_same_at_base_with_every_family(optimizer):
    """The sweep shares base-width runs between SP and muP with another optimizer family too."""
    cfg = _config(optimizer=optimizer)
    sp_loss, sp_state = _one_step(cfg, "sp")
    loss, state = _one_step(cfg, "mup")
    assert loss == sp_loss and all(torch_equal(state[k], sp_state[k]) for k in sp_state)


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_tiny_sweep_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "RESULTS", tmp_path)
    assert transfer.main(["--config", "tiny", "--threads", "1", "--name", "tiny"]) == 0
    data = json.loads((tmp_path / "tiny.json").read_text())
    cfg = transfer.CONFIGS["tiny"]
    assert len(data["runs"]) == len(cfg["widths"]) * len(cfg["log2_lrs"]) * 2
    shared = [r for r in data["runs"] if r.get("same_model_as")]
    assert {(r["side"], r["width"]) for r in shared} == {("mup", cfg["base"])}
    assert all(r["final_val_loss"] is not None and r["final_val_loss"] < r["init_val_loss"] for r in data["runs"])
    # muP differs from SP above the base width: the rewrite is in effect
    wide = {r["side"]: r["final_val_loss"] for r in data["runs"] if r["width"] == 64 and r["log2_lr"] == -8}
    assert wide["sp"] != wide["mup"]
    assert (tmp_path / "tiny.png").stat().st_size > 10_000
    assert "## Optimal learning rate per width" in (tmp_path / "tiny.md").read_text()
    assert not (tmp_path / "tiny.partial.json").exists()

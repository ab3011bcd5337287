"""benchmarks/transfer/depth.py: the depth summary on synthetic sweeps, and one run's plan and model."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks" / "transfer"))

import depth  # noqa: E402
import transfer  # noqa: E402


def config():
    preset = dict(depth.CONFIGS["tiny"])
    width, depths = preset.pop("width"), preset.pop("depths")
    cfg = transfer.Config(widths=[width], base=width, n_layer=depths[0], **preset)
    cfg.depths, cfg.depth_base = [2, 4, 8], 2
    return cfg


def sweep(optimum_per_depth: dict, side: str) -> list:
    return [{"side": side, "depth": d, "log2_lr": x, "final_val_loss": 2.0 - 0.1 * d / 8 + 0.05 * (x - opt) ** 2,
             "diverged": False} for d, opt in optimum_per_depth.items() for x in range(-10, -3)]


def test_summary_tells_a_drifting_side_from_a_transferring_one():
    runs = sweep({2: -6, 4: -7, 8: -8}, "mup") + sweep({2: -6, 4: -6, 8: -6}, "completep")
    summary = depth.summarize(config(), runs)
    assert summary["mup"]["drift_octaves"] == pytest.approx(2.0)
    assert summary["completep"]["drift_octaves"] == pytest.approx(0.0, abs=1e-9)
    assert summary["mup"]["regret_at_base_lr"][8] == pytest.approx(0.05 * 4)
    assert summary["completep"]["regret_at_base_lr"][8] == pytest.approx(0.0)
    assert summary["completep"]["deeper_is_better"]


@pytest.mark.parametrize("side", ["mup", "completep"])
def test_a_run_is_the_deep_model_with_its_sides_plan(side):
    cfg = config()
    model, optimizer = depth.build_at_depth(cfg, side, 4, 1e-3, torch.device("cpu"))
    assert len(model.blocks) == 4
    lrs = {round(group["lr"] / 1e-3, 9) for group in optimizer.param_groups}
    assert lrs == {1.0}  # at the base width muP's factors are 1, and CompleteP's LR factor is m_L^0
    ids = torch.zeros(1, cfg.block_size, dtype=torch.long)
    torch.manual_seed(cfg.seed)
    plain = depth.make_factory(cfg)(cfg.base, 4)
    same = torch.equal(model(ids), plain(ids))
    assert same == (side == "mup")  # CompleteP scales the branches and keeps the depth-2 proxy's init

"""The coordinate check reaches the `mup` package's own conclusion (`mup.coord_check`: module
outputs' l1 per width, MuAdam on the hand-written twin, Adam on the SP model) on the same MLP:
muP flat, SP growing."""

import math

import pytest
import torch

import mlp
import mup_twins
from muprewrite.coordcheck import DEFAULT_THRESHOLD, coordcheck

coord_check = pytest.importorskip("mup.coord_check")
WIDTHS, STEPS, LR, SEEDS = [64, 128, 256, 512], 4, 1e-2, 3


def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, mlp.IN_FEATURES, generator=generator), torch.randint(0, mlp.NUM_CLASSES, (4,),
                                                                                 generator=generator)


def mup_says_something_grows(make, use_mup: bool) -> bool:
    """mup's coord check: l1 of every module's output per width at steps 1..STEPS (t = 1 is the
    initial model); something grows when a slope of log l1 vs log width after t = 1 exceeds the
    threshold muprewrite uses."""
    models = {w: (lambda w=w: make(w)) for w in WIDTHS}
    frame = coord_check.get_coord_data(models, [batch()], optimizer="adam", lr=LR, mup=use_mup, nsteps=STEPS,
                                       cuda=False, nseeds=SEEDS, show_progress=False)
    means = frame.groupby(["module", "t", "width"])["l1"].mean()
    slopes = []
    for (module, t), sizes in means.groupby(level=[0, 1]):
        if t >= 2:
            xs = [math.log(w) for w in WIDTHS]
            ys = [math.log(sizes[(module, t, w)]) for w in WIDTHS]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slopes.append(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs))
    return max(slopes) > DEFAULT_THRESHOLD


def test_same_conclusion_as_mups_coord_check():
    twin = lambda w: mup_twins.mup_model(mup_twins.mlp_twin, w, WIDTHS[0])  # noqa: E731
    assert not mup_says_something_grows(twin, use_mup=True)
    assert mup_says_something_grows(mlp.make_model, use_mup=False)
    ours = coordcheck(mlp.make_model, base=WIDTHS[0], widths=WIDTHS, steps=STEPS, lr=LR, seeds=SEEDS,
                      example_inputs=(batch()[0],), device="cpu")
    assert ours.passed
    assert ours.failures("sp")

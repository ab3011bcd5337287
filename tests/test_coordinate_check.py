"""A one-line coordinate check (TP5 §D.1): after a few Adam steps, muP logits stay O(1) in width."""

import math

import torch
import torch.nn.functional as F

import gpt_sdpa
import muprewrite

WIDTHS = [32, 64, 128, 256]
LR, STEPS = 1e-2, 4


def logit_size_after_training(model, param_groups, tokens):
    optimizer = torch.optim.Adam(param_groups, lr=LR)
    model.train()
    for _ in range(STEPS):
        optimizer.zero_grad()
        logits = model(tokens)
        F.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return model(tokens).abs().mean().item()


def slope(widths, sizes):
    """Least-squares slope of log(size) against log(width)."""
    xs, ys = [math.log(w) for w in widths], [math.log(s) for s in sizes]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def test_mup_logits_stay_flat_while_sp_logits_grow():
    (tokens,) = gpt_sdpa.example_inputs()
    sp_sizes, mup_sizes = [], []
    for width in WIDTHS:
        torch.manual_seed(0)
        sp = gpt_sdpa.make_model(width)
        sp_sizes.append(logit_size_after_training(sp, sp.parameters(), tokens))
        torch.manual_seed(0)
        result = muprewrite.mupify(gpt_sdpa.make_model, base=WIDTHS[0], target=width,
                                   example_inputs=(tokens,), verify_width=False)
        mup_sizes.append(logit_size_after_training(result.model, result.param_groups(lr=LR, optimizer="adam"), tokens))
    assert sp_sizes[0] == mup_sizes[0]  # base width: the same model
    assert slope(WIDTHS, sp_sizes) > 0.5, sp_sizes  # SP: logits blow up with width
    assert slope(WIDTHS, mup_sizes) < 0.15, mup_sizes  # muP: does not grow
    assert max(mup_sizes) / min(mup_sizes) < 2, mup_sizes  # ... and stays O(1)

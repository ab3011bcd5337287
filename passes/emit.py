"""emit: the artifacts users take away, all read from the plan.

Reads:  a `Plan` (and a model, for parameter groups).
Writes: optimizer parameter groups — plain dicts any `torch.optim` optimizer, LR scheduler or
        FSDP accepts — and the files `plan.json`, `report.md`, `report.html`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import MuRewriteError
from ..plan import OPTIMIZER_FAMILIES, Plan


def param_groups(model: nn.Module, plan: Plan, lr: float, weight_decay: float = 0.0,
                 optimizer: str = "adamw", eps: float | None = None) -> list:
    """One group per distinct (LR, weight decay[, eps]) triple, in parameter order.

    Frozen parameters (requires_grad False) are left out. With `eps` (Adam), each group gets
    eps times the plan's eps multiplier (1 unless the plan has adam_eps="scaled"). At base
    width every multiplier is 1, so this is a single group with model.parameters() in order —
    the same optimizer state as a plain optimizer.
    """
    if optimizer not in OPTIMIZER_FAMILIES:
        raise MuRewriteError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZER_FAMILIES)}")
    family = OPTIMIZER_FAMILIES[optimizer]
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        entry = _entry(plan, name)
        lr_mult, wd_mult = entry.lr_mult[family], entry.wd_mult[family]
        key = (lr * lr_mult, weight_decay * wd_mult, None if eps is None else eps * entry.eps_mult)
        group = groups.setdefault(key, {"params": [], "lr": key[0], "weight_decay": key[1], "names": []})
        if eps is not None:
            group["eps"] = key[2]
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / FSDP and torch.compile wrappers


def _entry(plan: Plan, name: str):
    """The plan's entry for a parameter, seen through DDP and torch.compile wrappers."""
    entry = plan.param(name)
    while entry is None and name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
        entry = plan.param(name)
    if entry is None:
        raise MuRewriteError(f"parameter '{name}' is not in the plan; pass the model the plan was made for")
    return entry


def write_artifacts(plan: Plan, report, out_dir) -> list:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"plan.json": plan.to_json(), "report.md": report.to_markdown(), "report.html": report.to_html()}
    for name, text in files.items():
        (out / name).write_text(text)
    return [out / name for name in files]

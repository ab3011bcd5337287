"""The parametrization tables of Tensor Programs V, as data.

`m` is the use site's fan_in multiplier (fan_in / base fan_in) and `f` its fan_out multiplier.
All numbers are relative to the model's own behaviour at base width, so every rule is the
identity at base width. Table 8 (the `mup` package's choice) is the default:

| role              | init std          | multiplier   | Adam LR | SGD LR  |
|-------------------|-------------------|--------------|---------|---------|
| input, vector     | base std          | 1            | 1       | f       |
| hidden            | base std / sqrt(m)| 1            | 1 / m   | f / m   |
| output (readout)  | base std          | alpha_out / m| 1       | m       |
| scalar            | base std          | 1            | 1       | 1       |

"base std" is the std the model's own init gives the tensor at base width: a readout bias has
no infinite dim, yet torch's default init shrinks it as 1/sqrt(fan_in) — muP keeps it at base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PARAMETRIZATIONS = ("mup", "sp")
ROLES = ("input", "hidden", "output", "vector", "scalar", "unclassified")


@dataclass(frozen=True)
class Rule:
    init: float | None  # target std = base std * init; None keeps the model's own init
    multiplier: float  # applied to the use site's activation input (readouts only)
    lr_adam: float
    lr_sgd: float


KEEP = Rule(init=None, multiplier=1.0, lr_adam=1.0, lr_sgd=1.0)


def rule_for(parametrization: str, role: str, m: float, f: float, alpha_out: float = 1.0) -> Rule:
    if parametrization == "sp" or role == "unclassified":
        return KEEP
    if parametrization != "mup":
        raise ValueError(f"unknown parametrization {parametrization!r}; choose one of {PARAMETRIZATIONS}")
    if role == "scalar":
        return Rule(init=1.0, multiplier=1.0, lr_adam=1.0, lr_sgd=1.0)
    if role in ("input", "vector"):
        return Rule(init=1.0, multiplier=1.0, lr_adam=1.0, lr_sgd=f)
    if role == "hidden":
        return Rule(init=1.0 / math.sqrt(m), multiplier=1.0, lr_adam=1.0 / m, lr_sgd=f / m)
    if role == "output":
        return Rule(init=1.0, multiplier=alpha_out / m, lr_adam=1.0, lr_sgd=m)
    raise ValueError(f"unknown role {role!r}")


def attention_factor(parametrization: str, d_base: int, d: int, alpha_attn: float = 1.0) -> float:
    """Factor on the existing logit scale: sqrt(d_base / d), so 1/sqrt(d) becomes sqrt(d_base)/d."""
    if parametrization == "sp":
        return 1.0
    return math.sqrt(d_base / d) * alpha_attn


def weight_decay_mult(lr_mult: float, mode: str) -> float:
    """'independent' keeps lr * weight_decay fixed per tensor (MuAdamW); 'coupled' keeps wd as is."""
    if mode == "independent":
        return 1.0 / lr_mult
    if mode == "coupled":
        return 1.0
    raise ValueError(f"unknown weight-decay mode {mode!r}; choose 'independent' or 'coupled'")

"""The parametrization tables of Tensor Programs V, as data.

`m` is the use site's fan_in multiplier (fan_in / base fan_in) and `f` its fan_out multiplier.
Every number is relative to the model's own behaviour at base width, so every rule is the
identity at base width. "init" is the effective std as a factor on the base std; "weight mult"
multiplies the parameter at each of its use sites (the stored tensor is divided by it, so the
effective weight starts where the table says); "readout mult" multiplies the readout's input.

| table 8 (default, = `mup`) | init        | weight mult | readout mult | Adam LR  | SGD LR |
|----------------------------|-------------|-------------|--------------|----------|--------|
| input, vector              | 1           | alpha_in*   | -            | 1        | f      |
| hidden                     | 1/sqrt(m)   | 1           | -            | 1/m      | f/m    |
| output (readout)           | 1           | 1           | alpha_out/m  | 1        | m      |
| scalar                     | 1           | 1           | -            | 1        | 1      |

| table 3                    | init        | weight mult | readout mult | Adam LR  | SGD LR |
| input, vector              | 1           | 1           | -            | 1        | f      |
| hidden                     | 1/sqrt(m)   | 1           | -            | 1/m      | f/m    |
| output                     | 1/m         | 1           | alpha_out    | 1/m      | 1/m    |

| table 9 (TP4 form)         | init        | weight mult | readout mult | Adam LR  | SGD LR |
| input, vector              | 1           | sqrt(f)     | -            | 1/sqrt(f)| 1      |
| hidden                     | 1/sqrt(m)   | 1           | -            | 1/m      | 1      |
| output                     | 1/sqrt(m)   | 1           | alpha_out/sqrt(m) | 1/sqrt(m) | 1 |

(*) alpha_in multiplies input weights only. Tables 3, 8 and 9 train the same function
(TP5 Lemma J.1: multiplier x theta, init / theta, Adam LR / theta, SGD LR / theta^2).
"base std" is the std the model's own init gives the tensor at base width: a readout bias has
no infinite dim, yet torch's default init shrinks it as 1/sqrt(fan_in) — muP keeps it at base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PARAMETRIZATIONS = ("mup", "table3", "table9", "sp")
ROLES = ("input", "hidden", "output", "vector", "scalar", "unclassified")


@dataclass(frozen=True)
class Rule:
    init: float | None  # effective std = base std * init; None keeps the model's own init
    readout_multiplier: float  # on the use site's activation input (readouts only)
    lr_adam: float
    lr_sgd: float
    weight_multiplier: float = 1.0  # on the parameter at its use sites; stored tensor / it


KEEP = Rule(init=None, readout_multiplier=1.0, lr_adam=1.0, lr_sgd=1.0)


def rule_for(parametrization: str, role: str, m: float, f: float, alpha_out: float = 1.0,
             alpha_in: float = 1.0) -> Rule:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"unknown parametrization {parametrization!r}; choose one of {PARAMETRIZATIONS}")
    if parametrization == "sp" or role == "unclassified":
        return KEEP
    if role == "scalar":
        return Rule(init=1.0, readout_multiplier=1.0, lr_adam=1.0, lr_sgd=1.0)
    table = {"mup": _table8, "table3": _table3, "table9": _table9}[parametrization]
    return table(role, m, f, alpha_out, alpha_in)


def _table8(role, m, f, alpha_out, alpha_in) -> Rule:
    if role in ("input", "vector"):
        return Rule(1.0, 1.0, 1.0, f, weight_multiplier=alpha_in if role == "input" else 1.0)
    if role == "hidden":
        return Rule(1.0 / math.sqrt(m), 1.0, 1.0 / m, f / m)
    return Rule(1.0, alpha_out / m, 1.0, m)


def _table3(role, m, f, alpha_out, alpha_in) -> Rule:
    if role == "output":
        return Rule(1.0 / m, alpha_out, 1.0 / m, 1.0 / m)
    return _table8(role, m, f, alpha_out, alpha_in)


def _table9(role, m, f, alpha_out, alpha_in) -> Rule:
    if role in ("input", "vector"):
        theta = math.sqrt(f) * (alpha_in if role == "input" else 1.0)
        return Rule(1.0, 1.0, 1.0 / math.sqrt(f), 1.0, weight_multiplier=theta)
    if role == "hidden":
        return Rule(1.0 / math.sqrt(m), 1.0, 1.0 / m, 1.0)
    return Rule(1.0 / math.sqrt(m), alpha_out / math.sqrt(m), 1.0 / math.sqrt(m), 1.0)


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

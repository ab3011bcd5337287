"""Optimizer families as data: per family, the muP LR rule per tensor, how the family's own
internal scaling is accounted for, and how to build it. Adding a family is one entry in FAMILIES.

Each family's `lr` gives the per-tensor LR multiplier (relative to the model at base width, so 1
everywhere at base) from a `Tensor` description; weight decay follows the plan's weight-decay
mode from it (independent: lr x wd fixed per tensor). The rules:

* adam (adam, adamw): Table 8's Adam column (TP5): entrywise-normalised updates.
* sgd: Table 8's SGD column.
* lion: Lion's update is sign(.) entrywise, like Adam's, so it takes Adam's column (TP5's rule for
  any entrywise-normalised update; Lingle 2024 found this rule does not transfer Lion's optimum).
* adafactor (torch.optim.Adafactor): its step is multiplied by max(eps2, RMS(parameter)), and
  muP's init already changes a hidden weight's RMS with width; the multiplier is Adam's divided by
  that RMS's change (exact for centred tensors and for tensors whose init muP keeps). Its relative
  step caps each group's LR at 1/sqrt(step): the multipliers hold while lr x multiplier stays
  under that cap (lr <= 1/sqrt(total steps) is enough, multipliers being <= 1 above base).
* muon (torch.optim.Muon): 2-D hidden matrices take Muon, whose orthogonalised update has spectral
  norm ~1 and whose `adjust_lr_fn` multiplies the LR by r(A, B) = sqrt(max(1, A/B)) ("original")
  or 0.2 sqrt(max(A, B)) ("match_rms_adamw"). The spectral condition (Yang, Simon & Bernstein
  2023) asks for ||dW|| ~ sqrt(fan_out / fan_in), so the multiplier is
  sqrt(f / m) * r(base shape) / r(shape): Muon's own factor counted once, not twice. Every other
  tensor (embeddings, readout, vectors, scalars, 3-D experts, convolutions) goes to AdamW with
  Adam's column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import MuRewriteError

MUON_ADJUST_LR = ("original", "match_rms_adamw")
ADAFACTOR_EPS2 = 1e-3  # torch.optim.Adafactor's floor on a parameter's RMS (its eps[1])


@dataclass(frozen=True)
class Tensor:
    """What a family's rule may read about one parameter."""

    role: str
    shape: tuple
    base_shape: tuple
    m: float  # fan_in multiplier of its primary use
    f: float  # fan_out multiplier
    lr_adam: float  # the parametrization table's Adam column
    lr_sgd: float
    rms_ratio: float | None  # RMS of the stored tensor at this width / at base; None: not known
    options: dict
    keep: bool = False  # the parametrization keeps this tensor as it is (SP): every family's multiplier is 1


@dataclass(frozen=True)
class Family:
    name: str  # the key of ParamPlan.lr_mult / wd_mult
    aliases: tuple  # what `optimizer=` accepts
    lr: Callable[[Tensor], float | None]  # None: no exact rule for this tensor (param_groups refuses)
    route: Callable[[Tensor], str]  # the optimizer the tensor goes to (one of route_names)
    route_names: tuple
    build: Callable  # build(groups by route, **settings) -> a torch optimizer
    coordcheck_lr: float  # the coordinate check's default LR
    takes_eps: bool


def _adam_lr(t: Tensor) -> float:
    return t.lr_adam


def _adafactor_lr(t: Tensor) -> float | None:
    if t.keep:
        return 1.0
    return None if t.rms_ratio is None else t.lr_adam / t.rms_ratio


def muon_ratio(shape, adjust_lr_fn: str) -> float:
    """torch.optim.Muon's own LR factor for a matrix of this shape (its `_adjust_lr`)."""
    a, b = shape[:2]
    return math.sqrt(max(1.0, a / b)) if adjust_lr_fn == "original" else 0.2 * math.sqrt(max(a, b))


def goes_to_muon(t: Tensor) -> bool:
    return t.role == "hidden" and len(t.shape) == 2


def _muon_lr(t: Tensor) -> float:
    if t.keep or not goes_to_muon(t):
        return t.lr_adam
    adjust = t.options["muon_adjust_lr"]
    return math.sqrt(t.f / t.m) * muon_ratio(t.base_shape, adjust) / muon_ratio(t.shape, adjust)


def _build_single(make):
    def build(groups: dict, eps: float | None = None, **settings):
        (only,) = groups.values()
        return make(only, **settings)  # eps, when the family takes it, is in the groups
    return build


def _build_muon(groups: dict, eps: float | None = None, adamw: dict | None = None, **muon_settings):
    """Muon (its adjust_lr_fn is in each group) and AdamW (eps in its groups; `adamw`: its other
    settings, such as betas), stepped as one."""
    parts = []
    if groups.get("muon"):
        parts.append(torch.optim.Muon(groups["muon"], **muon_settings))
    if groups.get("adamw"):
        parts.append(torch.optim.AdamW(groups["adamw"], **(adamw or {})))
    return parts[0] if len(parts) == 1 else Combined(parts)


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): p -= lr * (sign(b1 m + (1 - b1) g) + wd p); m = b2 m + (1 - b2) g."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                momentum = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(momentum.lerp(p.grad, 1 - beta1).sign_(), alpha=-group["lr"])
                momentum.lerp_(p.grad, 1 - beta2)
        return loss


class Combined(torch.optim.Optimizer):
    """Several optimizers stepped as one (Muon for the hidden matrices, AdamW for the rest). Its
    param_groups are theirs (the same dicts), so LR schedulers, zero_grad and gradient clipping see
    every group; state_dict is the list of theirs."""

    def __init__(self, optimizers: list):
        self.optimizers = optimizers
        super().__init__([group for o in optimizers for group in o.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"]):
            optimizer.load_state_dict(state)


def _single(name: str, aliases: tuple, lr, make, coordcheck_lr: float, takes_eps: bool) -> Family:
    return Family(name, aliases, lr, lambda t: name, (name,), _build_single(make), coordcheck_lr, takes_eps)


FAMILIES = {family.name: family for family in (
    _single("adam", ("adam", "adamw"), _adam_lr, torch.optim.AdamW, 1e-2, True),
    _single("sgd", ("sgd",), lambda t: t.lr_sgd, torch.optim.SGD, 1e-1, False),
    # the coordinate check's LRs give a relative step like Adam's at 1e-2: Lion's sign step is Adam's
    # first one; Adafactor's step is lr x RMS(W), so its lr is the step relative to the weight
    _single("lion", ("lion",), _adam_lr, Lion, 1e-2, False),
    _single("adafactor", ("adafactor",), _adafactor_lr, torch.optim.Adafactor, 1e-1, False),
    Family("muon", ("muon",), _muon_lr, lambda t: "muon" if goes_to_muon(t) else "adamw", ("muon", "adamw"),
           _build_muon, 1e-2, True),
)}
NAMES = {alias: family for family in FAMILIES.values() for alias in family.aliases}


def family(optimizer: str) -> Family:
    if optimizer not in NAMES:
        raise MuRewriteError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(sorted(NAMES))}")
    return NAMES[optimizer]


def rms_ratio(stored: float, stored_at_base: float, zero_mean: bool) -> float | None:
    """RMS of the stored tensor at this width over its RMS at base, floored as Adafactor floors it:
    1 when its std is the base one; the std ratio for a centred tensor; else unknown (the mean,
    which the plan does not measure, enters the RMS)."""
    if math.isclose(stored, stored_at_base, rel_tol=1e-9):
        return 1.0
    if not zero_mean:
        return None
    return max(ADAFACTOR_EPS2, stored) / max(ADAFACTOR_EPS2, stored_at_base)

"""The width facts every pass needs, in one small value type (the `InfShape` of this project).

A width `at` is one of the captured widths by name ("base", "delta", "target") or any width as an
integer. At an integer width that was not captured, every size and constant the plan reads is
predicted here, and only here, from the three captures: a size (a tensor dim, a slice bound) as
the affine function of width through base and delta, a constant the model computes from a size
(1/sqrt(d_head), d_model**-0.5) as a power law of that size; each prediction must reproduce the
target's capture exactly, else `WidthPredictionError` says what cannot be predicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from .errors import MuRewriteError, WidthPredictionError

WIDTH_NAMES = ("base", "delta", "target")


@dataclass(frozen=True)
class Widths:
    """The widths the model is captured at; `at` names one of them, or is a width itself."""

    base: int
    delta: int
    target: int

    def __getitem__(self, at: str | int) -> int:
        return at if isinstance(at, int) else getattr(self, at)

    def ratio(self, at: str | int) -> float:
        return self[at] / self.base

    def captured(self, at: str | int) -> str | None:
        """The name of the captured width `at` is (a name, or an integer equal to a captured width)."""
        if isinstance(at, str):
            return at
        return next((name for name in WIDTH_NAMES if self[name] == at), None)


@dataclass(frozen=True)
class Depths:
    """The depths of depth transfer: the proxy's (base), a second one that tells which blocks repeat with
    depth (delta), and the model's (target); `make_model(width, depth=L)` builds each."""

    base: int
    delta: int
    target: int

    @property
    def multiplier(self) -> float:
        """m_L: the target depth over the base depth."""
        return self.target / self.base


def check_depths(base: int | None, target: int | None, delta: int | None = None) -> Depths | None:
    """The depths asked for (None: no depth transfer), checked: positive integers, delta apart from base."""
    if base is None and target is None and delta is None:
        return None
    if base is None or target is None:
        raise MuRewriteError("depth transfer needs both depth_base and depth_target (--depth-base, --depth-target; "
                             "a Hugging Face config's own layer count is its default target)")
    delta = 2 * base if delta is None else delta
    for name, value in (("depth_base", base), ("depth_delta", delta), ("depth_target", target)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise MuRewriteError(f"{name} must be a positive integer, got {value!r}")
    if delta == base:
        raise MuRewriteError(f"depth_delta must differ from depth_base ({base}); e.g. depth_delta = 2 * depth_base")
    if target < base:
        raise MuRewriteError(f"depth_target {target} is below depth_base {base}: depth transfer goes from a shallow "
                             "proxy to a deeper target; swap them (a Hugging Face config's own layer count is the "
                             "default target)")
    return Depths(base, delta, target)


def check_at(at, widths: Widths) -> str | int:
    """`at` as the plan takes it: a captured width's name or a positive integer width."""
    if isinstance(at, str) and at in WIDTH_NAMES:
        return at
    if isinstance(at, int) and not isinstance(at, bool) and at > 0:
        return at
    raise MuRewriteError(f"plan width {at!r} is neither one of {', '.join(WIDTH_NAMES)} nor a positive integer")


def size_at(sizes: dict, widths: Widths, at: str | int, what: str, minimum: int = 1) -> int:
    """A size measured at the captured widths ({name: int}), at width `at`: the affine function of
    width through base and delta, which must give the target's size and an integer >= `minimum`."""
    captured = widths.captured(at)
    if captured is not None:
        return sizes[captured]
    base, delta, target = (sizes[name] for name in WIDTH_NAMES)
    if base == delta == target:
        return base
    slope = Fraction(delta - base, widths.delta - widths.base)
    predict = lambda width: base + slope * (width - widths.base)  # noqa: E731
    if predict(widths.target) != target:
        raise WidthPredictionError(
            f"{what} is {base}, {delta}, {target} at widths {widths.base}, {widths.delta}, {widths.target}: not "
            f"affine in width, so its size at width {at} cannot be predicted; plan at a captured width "
            "(or capture at this one)")
    value = predict(at)
    if value.denominator != 1 or value < minimum:
        raise WidthPredictionError(
            f"{what} would be {float(value):g} at width {at} (affine through {base} at {widths.base} and {delta} at "
            f"{widths.delta}), not an integer >= {minimum}; plan at a captured width (or capture at this one)")
    return int(value)


def record_at(records: dict, widths: Widths, at: str | int, what: str):
    """A record (nested dicts, lists and tuples of numbers, strings, None) measured at each captured
    width, at width `at`: the same structure at every width, every integer that changes predicted
    by `size_at`, everything else equal at every width."""
    captured = widths.captured(at)
    if captured is not None:
        return records[captured]
    return _leaf_at([records[name] for name in WIDTH_NAMES], widths, at, what)


def _leaf_at(values: list, widths: Widths, at: int, what: str):
    first = values[0]
    if isinstance(first, dict) and all(isinstance(v, dict) and v.keys() == first.keys() for v in values):
        return {key: _leaf_at([v[key] for v in values], widths, at, f"{what}[{key!r}]") for key in first}
    if isinstance(first, (list, tuple)) and all(type(v) is type(first) and len(v) == len(first) for v in values):
        return type(first)(_leaf_at(list(parts), widths, at, f"{what}[{i}]") for i, parts in enumerate(zip(*values)))
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return size_at(dict(zip(WIDTH_NAMES, values)), widths, at, what, minimum=0)
    if all(v == first and type(v) is type(first) for v in values):
        return first
    raise WidthPredictionError(
        f"{what} is {values[0]!r}, {values[1]!r}, {values[2]!r} at widths {widths.base}, {widths.delta}, "
        f"{widths.target}: its value at width {at} cannot be predicted; plan at a captured width (or capture at this one)")


# How models write a constant k * s ** p from a size s (p a multiple of 1/2): each form is offered
# only for the exponents it is written with (d ** -0.5, 1 / d ** 0.5, 1 / math.sqrt(d), math.sqrt(d),
# and the same times a constant k). A form is trusted when it gives the three captured values bit
# for bit, and every trusted form must give the same value at the asked width.
_FORMS = (
    lambda s, p, k: s ** p,
    lambda s, p, k: 1.0 / s ** -p if p < 0 else None,
    lambda s, p, k: math.sqrt(s) if p == 0.5 else None,
    lambda s, p, k: 1.0 / math.sqrt(s) if p == -0.5 else None,
    lambda s, p, k: k * s ** p,
    lambda s, p, k: k / s ** -p if p < 0 else None,
    lambda s, p, k: k * math.sqrt(s) if p == 0.5 else None,
    lambda s, p, k: k / math.sqrt(s) if p == -0.5 else None,
)


def scalar_at(values: dict, sizes: dict, widths: Widths, at: str | int, what: str) -> float:
    """A constant the model computes ({name: number} at the captured widths), at width `at`: a
    power law k * s ** p of the size it depends on (`sizes`: that size at the captured widths),
    evaluated the way the model's captures say it computes it."""
    captured = widths.captured(at)
    if captured is not None:
        return values[captured]
    measured = [values[name] for name in WIDTH_NAMES]
    if measured[0] == measured[1] == measured[2]:
        return measured[0]
    size = [sizes[name] for name in WIDTH_NAMES]
    exponent = _half_integer_exponent(measured, size)
    predictions = set()
    if exponent is not None:
        k, now = measured[0] / size[0] ** exponent, size_at(sizes, widths, at, f"the size {what} depends on")
        predictions = {_evaluate(form, now, exponent, k) for form in _FORMS
                       if [_evaluate(form, s, exponent, k) for s in size] == measured} - {None}
    if len(predictions) != 1:
        reason = "no power law of the size it depends on" if not predictions else "power laws that disagree"
        raise WidthPredictionError(
            f"{what} is {measured[0]!r}, {measured[1]!r}, {measured[2]!r} at widths {widths.base}, {widths.delta}, "
            f"{widths.target} (size {size[0]}, {size[1]}, {size[2]}): {reason} gives it exactly, so its value at "
            f"width {at} cannot be predicted; plan at a captured width (or capture at this one)")
    return predictions.pop()


def _half_integer_exponent(values: list, sizes: list) -> float | None:
    """p with values ∝ sizes ** p (from base and delta), when p is a multiple of 1/2."""
    if sizes[0] == sizes[1] or any(not isinstance(v, (int, float)) or v <= 0 for v in values):
        return None
    p = math.log(values[1] / values[0]) / math.log(sizes[1] / sizes[0])
    return round(2 * p) / 2 if abs(2 * p - round(2 * p)) < 1e-6 else None


def _evaluate(form, s, p, k):
    try:
        return form(s, p, k)
    except (ZeroDivisionError, OverflowError, ValueError):
        return None


@dataclass(frozen=True)
class WidthShape:
    """One tensor's shape at each captured width, and at any width by prediction.

    A dim is infinite when its size differs between base and delta. A dim equal at base and
    delta but different at target is rejected by the dims pass before a WidthShape is trusted.
    """

    sizes: dict  # width name -> tuple[int, ...]
    widths: Widths | None = field(default=None, compare=False)
    name: str = field(default="", compare=False)  # the tensor it describes, for errors

    @property
    def base(self) -> tuple[int, ...]:
        return self.sizes["base"]

    def at(self, width: str | int) -> tuple[int, ...]:
        if isinstance(width, str):
            return self.sizes[width]
        return tuple(size_at({n: s[d] for n, s in self.sizes.items()}, self.widths, width,
                             f"dim {d} of '{self.name}'") for d in range(len(self.base)))

    @property
    def infinite(self) -> tuple[bool, ...]:
        return tuple(b != d for b, d in zip(self.sizes["base"], self.sizes["delta"]))

    @property
    def num_infinite(self) -> int:
        return sum(self.infinite)

    def mult(self, dims, at: str | int) -> float:
        """Product over `dims` of size-at-width / size-at-base (1.0 for no dims)."""
        sizes = self.at(at)
        return math.prod(sizes[d] / self.sizes["base"][d] for d in dims)

    def numel(self, at: str | int) -> int:
        return math.prod(self.at(at))

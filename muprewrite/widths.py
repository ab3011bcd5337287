"""The width facts every pass needs, in one small value type (the `InfShape` of this project)."""

from __future__ import annotations

import math
from dataclasses import dataclass

WIDTH_NAMES = ("base", "delta", "target")


@dataclass(frozen=True)
class Widths:
    """The widths the model is captured at; `at` names one of them."""

    base: int
    delta: int
    target: int

    def __getitem__(self, name: str) -> int:
        return getattr(self, name)

    def ratio(self, at: str) -> float:
        return self[at] / self.base


@dataclass(frozen=True)
class WidthShape:
    """One tensor's shape at each captured width.

    A dim is infinite when its size differs between base and delta. A dim equal at base and
    delta but different at target is rejected by the dims pass before a WidthShape is trusted.
    """

    sizes: dict  # width name -> tuple[int, ...]

    @property
    def base(self) -> tuple[int, ...]:
        return self.sizes["base"]

    def at(self, width: str) -> tuple[int, ...]:
        return self.sizes[width]

    @property
    def infinite(self) -> tuple[bool, ...]:
        return tuple(b != d for b, d in zip(self.sizes["base"], self.sizes["delta"]))

    @property
    def num_infinite(self) -> int:
        return sum(self.infinite)

    def mult(self, dims, at: str) -> float:
        """Product over `dims` of size-at-width / size-at-base (1.0 for no dims)."""
        return math.prod(self.sizes[at][d] / self.sizes["base"][d] for d in dims)

    def numel(self, at: str) -> int:
        return math.prod(self.sizes[at])

"""init_scan: measure the model's own initialisation at base and delta width.

Reads:  the model factory and the `Widths`.
Writes: `{parameter FQN: InitStats}` — per parameter the std at base and delta width (the model
        built with a fixed seed on the CPU), the exponent p of std ∝ width^p that links them
        (rounded to a multiple of 1/2, which absorbs sampling noise), the excess kurtosis at
        base (about -1.2 for a uniform init, 0 for a Gaussian), and whether the init is centred
        (its mean within sampling error of 0). The plan predicts the
        model's own std at any width from these and reads the base std as muP's reference.
Only base and delta are built, so the scan costs two small models whatever the target is.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ..widths import Widths
from .capture import build_model

SEED = 0
SAMPLE = 1 << 16  # elements per tensor: the std is then known to ~0.5%, at any model size


@dataclass(frozen=True)
class InitStats:
    base_std: float
    delta_std: float
    exponent: float  # std(width) = base_std * (width / base) ** exponent
    excess_kurtosis: float
    zero_mean: bool  # the mean is within sampling error of 0 (a centred init such as normal(0, s))

    def std_at(self, ratio: float) -> float:
        return self.base_std * ratio**self.exponent


def scan_init(factory, widths: Widths) -> dict:
    base = _stats(factory, widths.base)
    delta = _stats(factory, widths.delta)
    ratio = widths.delta / widths.base
    return {
        name: InitStats(b_std, delta[name][0], _exponent(b_std, delta[name][0], ratio), b_kurt, b_zero_mean)
        for name, (b_std, b_kurt, b_zero_mean) in base.items()
        if name in delta
    }


def _stats(factory, width: int) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = build_model(factory, width, device="cpu")
    with torch.no_grad(), _single_thread():  # many tiny ops: threads only add contention
        return {name: _moments(_sample(param)) for name, param in model.named_parameters()}


@contextlib.contextmanager
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sample(tensor: torch.Tensor) -> torch.Tensor:
    """A fixed, evenly strided subset of the tensor's entries, in float64."""
    flat = tensor.detach().flatten()
    stride = max(1, flat.numel() // SAMPLE)
    return flat[::stride].double()


def _moments(sample: torch.Tensor) -> tuple:
    """(std, excess kurtosis, zero mean); a constant tensor has std 0 and kurtosis 0."""
    mean = float(sample.mean())
    if sample.numel() < 2:
        return 0.0, 0.0, mean == 0.0
    centred = sample - mean
    var = centred.pow(2).mean()
    if var == 0:
        return 0.0, 0.0, mean == 0.0
    std = float(sample.std())
    zero_mean = abs(mean) <= 4 * std / math.sqrt(sample.numel())
    return std, float(centred.pow(4).mean() / var**2 - 3.0), zero_mean


def _exponent(base_std: float, delta_std: float, ratio: float) -> float:
    if base_std == 0 or delta_std == 0:
        return 0.0
    return round(2 * math.log(delta_std / base_std) / math.log(ratio)) / 2

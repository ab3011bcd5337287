"""init_scan: measure the model's own initialisation at base and delta width.

Reads:  the model factory and the `Widths`.
Writes: `{parameter FQN: InitStats}` — per parameter the std at base and delta width (the model
        built with a fixed seed on the CPU; small random tensors such as biases pooled over a
        few more seeds), the exponent p of std ∝ width^p that links them (a multiple of 1/2,
        and 0 unless the change is well outside sampling error, so a tensor whose init does not
        depend on width is never rescaled by noise), the excess kurtosis at base (about -1.2
        for a uniform init, 0 for a Gaussian), and whether the init is centred (mean within
        sampling error of 0). The plan predicts the model's own std at any width from these
        and reads the base std as muP's reference.
Only base and delta are built (a few times when small random tensors need it), whatever the target.
The models are built with their init fills deferred (passes/deferred_init.py), each run only
when its tensor is sampled. A copy of a repeated block (passes/repeats.py) whose fill is its
representative's (the same op, the same numbers) is not filled at all: it is drawn alike. Any
other copy is measured only as far as telling whether its init is its representative's (std and mean on a few thousand entries, at base and delta, within
COPY_EVIDENCE standard errors); only a copy parameter whose init differs is in the result, with
the statistics of that smaller sample (the caller measures such a block again, as itself).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ..widths import Widths
from .deferred_init import DeferredBuild, build_deferred
from .repeats import representative_of

SEED = 0
SAMPLE = 1 << 16  # elements per tensor: the std is then known to ~0.5%, at any model size
COPY_SAMPLE = 1 << 12  # elements of a copy's tensor compared with its representative's (std to ~1%)
# A model has thousands of copy tensors: at 6 standard errors a copy drawn alike is called unlike
# with odds below 1e-8 each (at 3, one 80-layer model had 6 such), and a depth-scaled init whose
# std is 7% or more away from the first block's is still told apart.
COPY_EVIDENCE = 6.0
SMALL = 4096  # a random tensor smaller than this is drawn again (more models) and pooled ...
POOLED = 512  # ... until about this many entries back its std (standard error ~3%) ...
MAX_DRAWS, MAX_DRAWS_LARGE, LARGE = 32, 4, 20_000_000  # ... within a budget of model builds
SAME_AS_REPRESENTATIVE = None  # a copy's sample, when its init fill is its representative's
EVIDENCE = 3.0  # the std must change by this many standard errors before the exponent is not 0


@dataclass(frozen=True)
class InitStats:
    base_std: float
    delta_std: float
    exponent: float  # std(width) = base_std * (width / base) ** exponent
    excess_kurtosis: float
    zero_mean: bool  # the mean is within sampling error of 0 (a centred init such as normal(0, s))

    def std_at(self, ratio: float) -> float:
        return self.base_std * ratio**self.exponent


def scan_init(factory, widths: Widths, copies: dict | None = None, built: DeferredBuild | None = None) -> dict:
    """`built`: the seed-SEED build at delta width, made by the caller to run it afterwards (verify):
    read instead of building it again (the tensors sampled are filled, the rest still wait)."""
    copies = copies or {}
    base = _stats(factory, widths.base, copies)
    delta = _stats(factory, widths.delta, copies, built)
    ratio = widths.delta / widths.base
    stats = {}
    for name, b in base.items():
        representative = representative_of(name, copies)
        if name not in delta or (representative is not None and _same_init(b, base[representative]) and
                                 _same_init(delta[name], delta[representative])):
            continue
        stats[name] = InitStats(b.std, delta[name].std, _exponent(b, delta[name], ratio), b.excess_kurtosis,
                                b.zero_mean)
    return stats


@dataclass(frozen=True)
class _Moments:
    std: float
    excess_kurtosis: float
    zero_mean: bool
    count: int  # entries the estimate rests on
    mean: float = 0.0


def _stats(factory, width: int, copies: dict, built: DeferredBuild | None = None) -> dict:
    """Moments of every parameter; small random tensors pooled over DRAWS independent builds
    (a copy's tensors: from a smaller sample, never pooled)."""
    samples = _draw(built or build_deferred(factory, width, SEED), copies)
    small = [n for n, x in samples.items() if x is not SAME_AS_REPRESENTATIVE and 1 < x.numel() < SMALL
             and x.std() > 0 and representative_of(n, copies) is None]
    for seed in range(SEED + 1, SEED + _draws(samples, small)):
        extra = _draw(build_deferred(factory, width, seed), copies)
        for name in small:
            samples[name] = torch.cat([samples[name], extra[name]])
    with _single_thread():  # many tiny ops: threads only add contention
        moments = {name: _moments(sample) for name, sample in samples.items() if sample is not SAME_AS_REPRESENTATIVE}
    return {name: moments.get(name) or moments[representative_of(name, copies)] for name in samples}


def _draws(samples: dict, small: list) -> int:
    if not small:
        return 1
    budget = MAX_DRAWS_LARGE if sum(x.numel() for x in samples.values() if x is not None) > LARGE else MAX_DRAWS
    return min(budget, math.ceil(POOLED / min(samples[n].numel() for n in small)))


def _draw(built: DeferredBuild, copies: dict) -> dict:
    """A sample of every parameter's entries; a copy whose init fill is its representative's
    (passes/deferred_init.py: the same op with the same numbers) gets SAME_AS_REPRESENTATIVE."""
    params = dict(built.model.named_parameters())
    planned = {name: built.fills.fill_of(param) for name, param in params.items()}
    samples = {}
    with torch.no_grad(), _single_thread(), built.stream() as fills:
        for name, param in params.items():
            representative = representative_of(name, copies)
            if representative is not None and planned[name] is not None and planned[name] == planned[representative]:
                samples[name] = SAME_AS_REPRESENTATIVE
                continue
            fills.run(param)
            samples[name] = _sample(param, SAMPLE if representative is None else COPY_SAMPLE)
    return samples


@contextlib.contextmanager
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sample(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """A fixed, evenly strided subset of about `size` of the tensor's entries, in float64."""
    flat = tensor.detach().flatten()
    stride = max(1, flat.numel() // size)
    return flat[::stride].double()


def _moments(sample: torch.Tensor) -> _Moments:
    """A constant tensor has std 0 and kurtosis 0."""
    mean, count = float(sample.mean()), sample.numel()
    centred = sample - mean
    var = centred.pow(2).mean() if count > 1 else 0.0
    if var == 0:
        return _Moments(0.0, 0.0, mean == 0.0, count, mean)
    std = float(sample.std())
    zero_mean = abs(mean) <= 4 * std / math.sqrt(count)
    return _Moments(std, float(centred.pow(4).mean() / var**2 - 3.0), zero_mean, count, mean)


def _same_init(copy: _Moments, representative: _Moments) -> bool:
    """Whether a copy's tensor is drawn as its representative's: the same constant, or a mean and
    std within COPY_EVIDENCE standard errors of its."""
    if copy.std == 0 or representative.std == 0:
        return copy.std == representative.std and \
            math.isclose(copy.mean, representative.mean, rel_tol=1e-6, abs_tol=1e-12)
    log_std_error = math.sqrt(1 / (2 * (copy.count - 1)) + 1 / (2 * (representative.count - 1)))
    mean_error = math.sqrt(copy.std**2 / copy.count + representative.std**2 / representative.count)
    return abs(math.log(copy.std / representative.std)) < COPY_EVIDENCE * log_std_error and \
        abs(copy.mean - representative.mean) < COPY_EVIDENCE * mean_error


def _exponent(base: _Moments, delta: _Moments, ratio: float) -> float:
    """p in std ∝ width^p, a multiple of 1/2; 0 unless the change is well outside sampling error."""
    if base.std == 0 or delta.std == 0:
        return 0.0
    log_change = math.log(delta.std / base.std)
    standard_error = math.sqrt(1 / (2 * (base.count - 1)) + 1 / (2 * (delta.count - 1)))
    if abs(log_change) < EVIDENCE * standard_error:
        return 0.0
    return round(2 * log_change / math.log(ratio)) / 2

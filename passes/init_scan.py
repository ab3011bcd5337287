"""init_scan: measure the model's own initialisation at base and delta width.

Reads:  the model factory and the `Widths`.
Writes: `{parameter FQN: InitStats}` — per parameter the std at base and delta width (the model
        built with a fixed seed on the CPU; a tensor holding just the draw of one fill, such as
        nn.Linear's kaiming uniform_ or a model's normal_(0, 0.02), read off the fill exactly;
        any other sampled, small random ones pooled over a few more seeds), the exponent p of std ∝ width^p that links them (a multiple of 1/2,
        and 0 unless the change is well outside sampling error, so a tensor whose init does not
        depend on width is never rescaled by noise), the excess kurtosis at base (about -1.2
        for a uniform init, 0 for a Gaussian), and whether the init is centred (mean within
        sampling error of 0). The plan predicts the model's own std at any width from these
        and reads the base std as muP's reference.
Only base and delta are built (a few times when small random tensors need it: a small tensor
drawn alike from two seeds is computed, not random, and no more builds are made for it), whatever
the target. The models are built with their init fills deferred (passes/deferred_init.py), each
run only when its tensor is sampled. A copy of a repeated block (passes/repeats.py) whose fill is its
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
EXACT = math.inf  # the count of moments read off a fill, not estimated: no sampling error
UNIFORM_EXCESS_KURTOSIS = -1.2


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
    count: float  # entries the estimate rests on (EXACT: read off the fill)
    mean: float = 0.0


def _stats(factory, width: int, copies: dict, built: DeferredBuild | None = None) -> dict:
    """Moments of every parameter: exact for a tensor holding just one fill's draw, else from a
    sample; small random tensors pooled over up to DRAWS independent builds (a copy's tensors:
    from a smaller sample, never pooled)."""
    samples = _draw(built or build_deferred(factory, width, SEED), copies)
    small = [n for n, x in samples.items() if isinstance(x, torch.Tensor) and 1 < x.numel() < SMALL
             and x.std() > 0 and representative_of(n, copies) is None]
    seed, draws = SEED + 1, _draws(samples, small)
    while seed < SEED + draws:
        extra = _draw(build_deferred(factory, width, seed), copies)
        if seed == SEED + 1:  # drawn alike from another seed: computed, not random, so pooling adds nothing
            small = [n for n in small if not (isinstance(extra[n], torch.Tensor) and torch.equal(extra[n], samples[n]))]
            draws = _draws(samples, small)  # from the first build's sizes, as the first count was
        for name in small:
            samples[name] = torch.cat([samples[name], extra[name]])
        seed += 1
    with _single_thread():  # many tiny ops: threads only add contention
        moments = {name: sample if isinstance(sample, _Moments) else _moments(sample)
                   for name, sample in samples.items() if sample is not SAME_AS_REPRESENTATIVE}
    return {name: moments.get(name) or moments[representative_of(name, copies)] for name in samples}


def _draws(samples: dict, small: list) -> int:
    if not small:
        return 1
    budget = MAX_DRAWS_LARGE if sum(x.numel() for x in samples.values() if isinstance(x, torch.Tensor)) > LARGE \
        else MAX_DRAWS
    return min(budget, math.ceil(POOLED / min(samples[n].numel() for n in small)))


def _draw(built: DeferredBuild, copies: dict) -> dict:
    """Per parameter: SAME_AS_REPRESENTATIVE for a copy whose init fill is its representative's
    (passes/deferred_init.py: the same op with the same numbers), the exact moments of the fill a
    tensor still waits for, else a sample of its entries."""
    params = dict(built.model.named_parameters())
    planned = {name: built.fills.fill_of(param) for name, param in params.items()}
    samples = {}
    with torch.no_grad(), _single_thread(), built.stream() as fills:
        for name, param in params.items():
            representative = representative_of(name, copies)
            if representative is not None and planned[name] is not None and planned[name] == planned[representative]:
                samples[name] = SAME_AS_REPRESENTATIVE
                continue
            exact = _fill_moments(planned[name])
            if exact is not None:
                samples[name] = exact
                continue
            fills.run(param)
            samples[name] = _sample(param, SAMPLE if representative is None else COPY_SAMPLE)
    return samples


def _fill_moments(fill) -> _Moments | None:
    """The exact moments of a floating tensor of two or more entries holding just the draw of `fill`
    (`Deferred.fill_of`: op, numbers, kwargs, shape, dtype); None for any other."""
    if fill is None:
        return None
    op, args, kwargs, shape, dtype = fill
    if not dtype.is_floating_point or math.prod(shape) < 2:
        return None
    named = dict(kwargs)
    if op == "aten.normal_.default":
        mean, std = _numbers(args, named, (("mean", 0.0), ("std", 1.0)))
        return _Moments(std, 0.0, mean == 0, EXACT, mean)
    if op == "aten.uniform_.default":
        low, high = _numbers(args, named, (("from", 0.0), ("to", 1.0)))
        return _Moments((high - low) / math.sqrt(12), UNIFORM_EXCESS_KURTOSIS, low == -high, EXACT, (low + high) / 2)
    if op == "aten.fill_.Scalar":
        (value,) = _numbers(args, named, (("value", 0.0),))
        return _Moments(0.0, 0.0, value == 0, EXACT, value)
    if op == "aten.zero_.default":
        return _Moments(0.0, 0.0, True, EXACT, 0.0)
    return None


def _numbers(args: tuple, named: dict, parameters: tuple) -> list:
    """The op's numbers by position, then by name, then its defaults."""
    return [float(args[i]) if i < len(args) else float(named.get(key, default))
            for i, (key, default) in enumerate(parameters)]


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
    return abs(math.log(copy.std / representative.std)) <= COPY_EVIDENCE * log_std_error and \
        abs(copy.mean - representative.mean) <= COPY_EVIDENCE * mean_error


def _exponent(base: _Moments, delta: _Moments, ratio: float) -> float:
    """p in std ∝ width^p, a multiple of 1/2; 0 unless the change is well outside sampling error."""
    if base.std == 0 or delta.std == 0:
        return 0.0
    log_change = math.log(delta.std / base.std)
    standard_error = math.sqrt(1 / (2 * (base.count - 1)) + 1 / (2 * (delta.count - 1)))
    if abs(log_change) < EVIDENCE * standard_error:
        return 0.0
    return round(2 * log_change / math.log(ratio)) / 2

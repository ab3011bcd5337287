"""init_scan: measure the model's own initialisation at base and delta width.

Reads:  the model factory and the `Widths`.
Writes: `{parameter FQN: InitStats}` — per parameter the std at base and delta width (the model
        built with a fixed seed on the CPU; a tensor holding just the draw of one fill, such as
        nn.Linear's kaiming uniform_, a model's normal_(0, 0.02) or trunc_normal_, read off the
        fill exactly; any other sampled; a small random one pooled with its repeated block's
        copies' and over a few more seeds), the exponent p of std ∝ width^p that links them (a
        multiple of 1/2, and 0 unless the change is well outside sampling error, so a tensor whose
        init does not depend on width is never rescaled by noise; `resolved` False where the
        samples are too few to tell a half step from none), the excess kurtosis at base (about
        -1.2 for a uniform init, 0 for a Gaussian), and whether the init is centred (mean within
        sampling error of 0). The plan predicts the model's own std at any width from these
        and reads the base std as muP's reference.
Only base and delta are built (a few times when small random tensors need it, within a budget of
modules constructed: a small tensor drawn alike from two seeds is computed, not random, and no
more builds are made for it), whatever the target. The models are built with their init fills deferred (passes/deferred_init.py), each
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
MAX_DRAWS, MAX_DRAWS_LARGE, LARGE = 32, 4, 20_000_000  # ... within a budget of model builds ...
POOL_MODULES = 8192  # ... of about this many modules constructed (a 256-module model: 32 builds)
MIN_COMPARED = 32  # entries below which a copy's sample cannot tell its init apart
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
    resolved: bool = True  # False: too few entries to tell std ∝ width^±1/2 from a constant std (taken as constant)
    # depth transfer: the std at base width in the model at the base depth (the proxy's), which muP's init
    # scales with width (CompleteP: no depth term in the init, whatever the model's own init does with depth)
    proxy_std: float | None = None

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
        exponent = _exponent(b, delta[name], ratio)
        stats[name] = InitStats(b.std, delta[name].std, exponent, b.excess_kurtosis, b.zero_mean,
                                resolved=exponent != 0 or _resolves_half_step(b, delta[name], ratio))
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
    sample; a small random tensor of a representative pooled with its alike copies' and over up to
    `_draws` independent builds (a copy's tensors: from a smaller sample, never pooled)."""
    first = built or build_deferred(factory, width, SEED)
    samples = _draw(first, copies)
    small = [n for n, x in samples.items() if isinstance(x, torch.Tensor) and 1 < x.numel() < SMALL
             and x.std() > 0 and representative_of(n, copies) is None]
    alike = _alike_copies(samples, small, copies)
    pooled = {name: _pooled(samples, name, alike) for name in small}
    budget = _draw_budget(first.model, samples)
    seed, draws = SEED + 1, _draws(pooled, small, budget)
    while seed < SEED + draws:
        extra = _draw(build_deferred(factory, width, seed), copies)
        if seed == SEED + 1:  # drawn alike from another seed: computed, not random, so pooling adds nothing
            computed = {n for n in small if torch.equal(_pooled(extra, n, alike), pooled[n])}
            pooled.update({n: _moments(pooled[n], count=EXACT) for n in computed})
            small = [n for n in small if n not in computed]
            draws = _draws(pooled, small, budget)  # from the first build's sizes, as the first count was
        for name in small:
            pooled[name] = torch.cat([pooled[name], _pooled(extra, name, alike)])
        seed += 1
    samples.update(pooled)
    with _single_thread():  # many tiny ops: threads only add contention
        moments = {name: sample if isinstance(sample, _Moments) else _moments(sample)
                   for name, sample in samples.items() if sample is not SAME_AS_REPRESENTATIVE}
    return {name: moments.get(name) or moments[representative_of(name, copies)] for name in samples}


def _alike_copies(samples: dict, small: list, copies: dict) -> dict:
    """Per small representative tensor, its copies' tensors sampled in the same build whose moments
    are within COPY_EVIDENCE of its own: independent draws of the same init, pooled with it."""
    by_representative = {name: [] for name in small}
    for name, sample in samples.items():
        representative = representative_of(name, copies)
        if representative in by_representative and isinstance(sample, torch.Tensor) and \
                sample.shape == samples[representative].shape and \
                _same_init(_moments(sample), _moments(samples[representative])):
            by_representative[representative].append(name)
    return by_representative


def _pooled(samples: dict, name: str, alike: dict) -> torch.Tensor:
    return torch.cat([samples[name], *(samples[copy] for copy in alike[name])])


def _draw_budget(model: torch.nn.Module, samples: dict) -> int:
    """Builds a small random tensor may be drawn in: MAX_DRAWS, fewer for a model whose build costs
    more (most of a build is constructing modules; its tensors' fills wait)."""
    if sum(x.numel() for x in samples.values() if isinstance(x, torch.Tensor)) > LARGE:
        return MAX_DRAWS_LARGE
    modules = sum(1 for _ in model.modules())
    return max(MAX_DRAWS_LARGE, min(MAX_DRAWS, POOL_MODULES // modules))


def _draws(pooled: dict, small: list, budget: int) -> int:
    if not small:
        return 1
    return min(budget, math.ceil(POOLED / min(pooled[n].numel() for n in small)))


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
    if op == "torch.nn.init.trunc_normal_":
        mean, std, a, b = _numbers(args, named, (("mean", 0.0), ("std", 1.0), ("a", -2.0), ("b", 2.0)))
        return _truncated_normal(mean, std, a, b) if std > 0 and a < b else None
    return None


def _truncated_normal(mean: float, std: float, a: float, b: float) -> _Moments:
    """The moments of normal(mean, std) truncated to [a, b], from the standard one's raw moments
    m_k = (k-1) m_(k-2) + (α^(k-1) φ(α) - β^(k-1) φ(β)) / Z on [α, β] = ([a, b] - mean) / std."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    cdf = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    pdf_times = lambda x, k: 0.0 if math.isinf(x) else x**k * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    mass = cdf(beta) - cdf(alpha)
    raw = [1.0, (pdf_times(alpha, 0) - pdf_times(beta, 0)) / mass]
    for k in (2, 3, 4):
        raw.append((k - 1) * raw[k - 2] + (pdf_times(alpha, k - 1) - pdf_times(beta, k - 1)) / mass)
    m1 = raw[1]
    variance = raw[2] - m1**2
    fourth = raw[4] - 4 * m1 * raw[3] + 6 * m1**2 * raw[2] - 3 * m1**4
    return _Moments(std * math.sqrt(variance), fourth / variance**2 - 3.0, mean == 0 and a == -b, EXACT,
                    mean + std * m1)


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


def _moments(sample: torch.Tensor, count: float | None = None) -> _Moments:
    """A constant tensor has std 0 and kurtosis 0. `count`: what the moments rest on, if not the
    sample's size (EXACT for a tensor computed, not drawn)."""
    mean, count = float(sample.mean()), count or sample.numel()
    centred = sample - mean
    var = centred.pow(2).mean() if count > 1 else 0.0
    if var == 0:
        return _Moments(0.0, 0.0, mean == 0.0, count, mean)
    std = float(sample.std())
    zero_mean = abs(mean) <= 4 * std / math.sqrt(count)
    return _Moments(std, float(centred.pow(4).mean() / var**2 - 3.0), zero_mean, count, mean)


def _same_init(copy: _Moments, representative: _Moments) -> bool:
    """Whether a copy's tensor is drawn as its representative's: the same constant, or a mean and
    std within COPY_EVIDENCE standard errors of its (the representative's spread and kurtosis:
    what they would be if it is). A random tensor of fewer than MIN_COMPARED entries tells nothing
    (the std of four draws may be a tenth of the distribution's): taken as drawn alike, as its code is."""
    if copy.std == 0 or representative.std == 0:
        return copy.std == representative.std and \
            math.isclose(copy.mean, representative.mean, rel_tol=1e-6, abs_tol=1e-12)
    if min(copy.count, representative.count) < MIN_COMPARED:
        return True
    mean_error = representative.std * math.sqrt(1 / copy.count + 1 / representative.count)
    return abs(math.log(copy.std / representative.std)) <= COPY_EVIDENCE * _log_std_error(copy, representative) \
        and abs(copy.mean - representative.mean) <= COPY_EVIDENCE * mean_error


def _exponent(base: _Moments, delta: _Moments, ratio: float) -> float:
    """p in std ∝ width^p, a multiple of 1/2; 0 unless the change is well outside sampling error."""
    if base.std == 0 or delta.std == 0:
        return 0.0
    log_change = math.log(delta.std / base.std)
    if abs(log_change) < EVIDENCE * _log_std_error(base, delta):
        return 0.0
    return round(2 * log_change / math.log(ratio)) / 2


def _resolves_half_step(base: _Moments, delta: _Moments, ratio: float) -> bool:
    """Whether a std ∝ width^±1/2 would have changed by more than EVIDENCE standard errors."""
    return base.std == 0 or delta.std == 0 or 0.5 * abs(math.log(ratio)) > EVIDENCE * _log_std_error(base, delta)


def _log_std_error(a: _Moments, b: _Moments) -> float:
    """The standard error of log(a.std / b.std) for two samples of one distribution (of b's
    kurtosis): var(log s) ≈ (excess kurtosis + 2) / (4 n), never below a Gaussian's (a few dozen
    entries of a uniform draw can look flatter still)."""
    spread = max(b.excess_kurtosis + 2, 2.0) / 4
    return math.sqrt(spread / (a.count - 1) + spread / (b.count - 1))

"""Judging one third-party model (benchmarks/third_party.py runs this in a fresh subprocess per model).

1. build: the wrapper builds the package's class at base and delta width and runs it once on its
   example inputs (eval, no_grad), while the observers below watch; any exception here is the
   wrapper's or the package's ("build", not counted against muprewrite).
2. `muprewrite.mupify(make_model, base, delta, target, example_inputs, materialize=False)`
   (verification on): a MuRewriteError is "refused" (its one line); any other exception is a
   "crash" (type, message and the last traceback frame inside muprewrite/ or passes/).
3. The plan is checked ("wrong" when a check fails):
   - the model-agnostic checks of benchmarks/_zoo_checks.py (those of hf_zoo.py): no unclassified
     role; every 2-D parameter with both dims infinite is hidden with Adam LR 1/m; the readout found
     by running the model has a use with role output; one attention_scale edit per attention module
     (4-D softmax, SDPA or multi-head attention) whose d_head grows;
   - attention without a softmax op (a module with such a contraction and an edit counts as an
     attention module for the check above): every contraction of two activations (matmul, bmm, baddbmm,
     einsum, or a product of two activations summed over its last dim) whose contracted size
     differs between base and delta must be covered by an attention_scale edit of its module (or a
     module beside it); else "unhandled activation contraction". An activation is a model input or
     anything computed from one (a parameter or buffer alone is not).
4. The `mup` package as an oracle, where `mup.set_base_shapes(target, base, delta=delta)` works on
   the models: per parameter, mup's infinite dims (`p.infshape`) vs the plan's, and MuAdam's LR
   multiplier (1 / the fan-in width multiplier for two infinite dims, else 1) vs the plan's Adam LR
   multiplier. A difference is a "disagreement" to inspect, never by itself "wrong".
"""
from __future__ import annotations

import collections
import re
import importlib.metadata
import math
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from _zoo_checks import (_einsum_fan_in, _tensors, attention_modules, call, growing_attention,  # noqa: E402
                         one_line, plan_failures, readouts, weight_products)

OUTCOMES = ("correct", "refused", "crash", "wrong", "build")
ATTENTION_EDITS = ("attention_scale",)


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def check_model(name: str, spec=None) -> dict:
    """One model of the registry judged (see the module docstring); a JSON-serialisable record."""
    import torch

    import muprewrite
    from muprewrite.errors import MuRewriteError

    if spec is None:
        from third_party import REGISTRY

        spec = REGISTRY[name]
    base, delta, target = spec.widths
    record = {"name": name, "package": spec.package, "version": package_version(spec.package),
              "widths": [base, delta, target], "scales": spec.scales, "note": spec.note}
    start = time.perf_counter()
    try:
        observed = observe(spec)
    except Exception as exc:  # noqa: BLE001  the wrapper's or the package's own failure
        return {**record, "outcome": "build", "message": one_line(exc), "frame": last_frame(exc, inside=None),
                "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        result = muprewrite.mupify(spec.make_model, base=base, delta=delta, target=target,
                                   example_inputs=spec.inputs(), materialize=False)
    except MuRewriteError as exc:
        return {**record, "outcome": "refused", "message": one_line(exc), "seconds": time.perf_counter() - start,
                **observed["summary"]}
    except Exception as exc:  # noqa: BLE001
        return {**record, "outcome": "crash", "message": one_line(exc), "frame": last_frame(exc),
                "seconds": time.perf_counter() - start, **observed["summary"]}
    seconds = time.perf_counter() - start
    plan = result.plan.to_dict()
    failures = plan_failures(plan, observed["readouts"], expected_attention(plan, observed), "head_dim")
    failures += contraction_failures(plan.get("edits", []), observed["contractions"], scale_free(plan))
    record.update(outcome="wrong" if failures else "correct", failures=failures, seconds=seconds,
                  parameters=len(plan.get("parameters", {})), edits=len(plan.get("edits", [])),
                  edit_kinds=dict(collections.Counter(e.get("kind") for e in plan.get("edits", []))),
                  **observed["summary"])
    record["mup"] = mup_oracle(spec, plan)
    return record


def observe(spec) -> dict:
    """The model at base and delta: its weight products (readout), attention modules and activation
    contractions, observed while it runs (eval, no_grad)."""
    import torch

    base, delta, _ = spec.widths
    products, attention, contractions, sizes = {}, {}, {}, {}
    for width in (base, delta):
        torch.manual_seed(0)
        model = spec.make_model(width).eval()
        inputs = spec.inputs_at(width)
        with torch.no_grad():
            products[width] = weight_products(model, inputs)
            attention[width] = attention_modules(model, inputs, sizes.setdefault(width, {}))
            contractions[width] = activation_contractions(model, inputs)
    # a softmax over a dim that grows with width normalises features (linear attention's feature map),
    # not attention scores over keys
    for module, base_sizes in sizes[base].items():
        if base_sizes == sizes[delta].get(module) or module not in attention[delta]:
            continue
        if all(b is not None and b != d for b, d in zip(base_sizes, sizes[delta][module])):
            attention[base].pop(module, None)
            attention[delta].pop(module, None)
    growing = growing_contractions(contractions[base], contractions[delta])
    semi = {m: what for m, what in growing.items() if "(one activation)" in what}
    growing = {m: what for m, what in growing.items() if m not in semi}
    attn = growing_attention(attention[base], attention[delta])
    return {"readouts": readouts(products[base], products[delta]), "attention": attn, "contractions": growing,
            "semi": semi,
            "summary": {"observed_attention": sorted(attn), "observed_contractions": sorted(growing)}}


# Attention without a softmax: contractions of two activations -----------------------------------

MATMULS = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "einsum"}
SUMS = {"sum"}


def activation_contractions(model, inputs) -> list:
    """[(module, op, contracted size)] of every contraction of two activations in one forward, in
    order: a matmul/mm/bmm/baddbmm/einsum whose two operands are activations, or the sum over the
    last dim of a product (`mul`) of two different activations. `module` is the innermost module
    running it ("" for the root)."""
    import torch
    from torch.overrides import TorchFunctionMode

    names = {id(m): n for n, m in model.named_modules()}
    activations = {id(t) for t in _tensors(inputs)}
    keep = list(_tensors(inputs))  # no id is reused while the forward runs
    products = set()  # ids of elementwise products of two different activations
    stack, found = [], []

    class Trace(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = getattr(func, "__name__", "")
            operands = list(_tensors((args, kwargs)))
            acts = [t for t in operands if id(t) in activations]
            results = list(_tensors(out))
            keep.extend(results)
            if not acts:
                return out
            activations.update(id(t) for t in results)
            size = None
            if name in MATMULS and len(acts) >= 2:
                size = contracted_size(name, args, kwargs)
            elif name in MATMULS and len(operands) >= 2 and not any(is_param(t) for t in operands):
                # one operand computed from parameters alone (a learned query, Perceiver's latents): not
                # an activation contraction, but an attention edit on it is expected, not extra
                size = contracted_size(name, args, kwargs)
                name = f"{name} (one activation)"
            elif name in ("mul", "__mul__", "__rmul__") and len(acts) == 2 and acts[0] is not acts[1]:
                if acts[0].dim() and acts[1].dim() and acts[0].shape[-1] == acts[1].shape[-1] > 1:
                    products.update(id(t) for t in results)
            elif name in SUMS and id(args[0] if args else None) in products and sums_last_dim(args, kwargs):
                size = args[0].shape[-1]
            if size is not None:
                found.append((stack[-1] if stack else "", name, int(size)))
            return out

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def is_param(tensor) -> bool:
        try:
            return tensor.untyped_storage().data_ptr() in params
        except (RuntimeError, NotImplementedError):
            return False

    def enter(module, args):
        stack.append(names.get(id(module), "?"))

    def leave(module, args, output):
        stack.pop()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        with Trace():
            call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    _ = torch  # the mode sees torch's functions
    return found


def contracted_size(name: str, args, kwargs):
    if name == "einsum":
        if not args or not isinstance(args[0], str):
            return None
        return _einsum_fan_in(args[0], list(_tensors(args[1:])))
    first = (args[1] if len(args) > 1 else kwargs.get("batch1")) if name == "baddbmm" else (args[0] if args else None)
    if name == "__rmatmul__" and len(args) > 1:
        first = args[1]
    return first.shape[-1] if first is not None and hasattr(first, "shape") and first.dim() else None


def sums_last_dim(args, kwargs) -> bool:
    tensor = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if dim is None:
        return False  # a full sum is a loss or a statistic, not a contraction
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return any(d % tensor.dim() == tensor.dim() - 1 for d in dims if isinstance(d, int))


def growing_contractions(at_base: list, at_delta: list) -> dict:
    """{module: "op over N -> M", ...} for the activation contractions whose size differs between
    base and delta (matched in order when both forwards make as many, else per module and op)."""
    growing = {}
    if len(at_base) == len(at_delta):
        pairs = zip(at_base, at_delta)
        for (module, op, size), (_, _, other) in pairs:
            if size != other:
                growing.setdefault(module, f"{op} over {size} -> {other}")
        return growing
    by_key = collections.defaultdict(lambda: ([], []))
    for side, items in ((0, at_base), (1, at_delta)):
        for module, op, size in items:
            by_key[(module, op)][side].append(size)
    for (module, op), (sizes, others) in by_key.items():
        if sorted(sizes) != sorted(others):
            growing.setdefault(module, f"{op} over {sorted(set(sizes))} -> {sorted(set(others))}")
    return growing


def expected_attention(plan: dict, observed: dict) -> dict:
    """The attention modules check (d) expects edits in: those running a softmax/SDPA/MHA whose d_head
    grows, and those with a growing activation contraction (attention without a softmax: sigmoid or
    linear attention) that the plan does edit. One with no edit is left to `contraction_failures`, so
    it is reported once, as an unhandled activation contraction."""
    expected = dict(observed["attention"])
    modules = [e.get("module", "") for e in plan.get("edits", []) if e.get("kind") in ATTENTION_EDITS]
    for module in [*observed["contractions"], *observed.get("semi", {})]:
        if not any(related(module, m) for m in expected) and any(related(e, module) for e in modules):
            expected[module] = 1
    return expected


def related(a: str, b: str) -> bool:
    """The edit's module is the contraction's, its parent or child, or a sibling (as in _zoo_checks)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".") or a.rpartition(".")[0] == b.rpartition(".")[0]


def scale_free(plan: dict) -> list:
    """Modules whose activation products the plan decides need no edit, their size cancelling (its notes)."""
    found = (re.match(r"the product \S+ \(\S+\) in (.+?) contracts two activations .* its size cancels", note)
             for note in plan.get("notes", []))
    return sorted({"" if m.group(1) == "the root module" else m.group(1) for m in found if m})


def contraction_failures(edits: list, contractions: dict, cancelling: list = ()) -> list:
    """Every module with a growing activation contraction has an attention edit beside it, or the plan
    says its products' size cancels there (linear attention's ratio)."""
    modules = [e.get("module", "") for e in edits if e.get("kind") in ATTENTION_EDITS] + list(cancelling)
    missing = {m: what for m, what in contractions.items() if not any(related(e, m) for e in modules)}
    if not missing:
        return []
    shown = "; ".join(f"{m or '(root)'}: {what}" for m, what in sorted(missing.items())[:3])
    return [f"unhandled activation contraction: {len(missing)} modules with no attention edit ({shown})"]


# The mup oracle -------------------------------------------------------------------------------


def mup_oracle(spec, plan: dict) -> dict:
    """mup's infinite dims and MuAdam LR multipliers against the plan's (see the module docstring)."""
    import torch

    try:
        import mup
    except ImportError:
        return {"status": "mup not installed"}
    base, delta, target = spec.widths
    try:
        models = []
        for width in (target, base, delta):
            torch.manual_seed(0)
            models.append(spec.make_model(width))
        # do_assert=False: mup asserts that a readout (infinite fan-in, finite fan-out) is its MuReadout;
        # a model of another package has a plain layer there, which mup then treats as a vector-like tensor
        mup.set_base_shapes(models[0], models[1], delta=models[2], do_assert=False)
    except Exception as exc:  # noqa: BLE001
        return {"status": f"set_base_shapes failed: {one_line(exc)}"}
    params = plan.get("parameters", {})
    by_name = {n: p for name, p in params.items() for n in (name, *p.get("aliases", []))}
    disagreements, compared = [], 0
    for name, param in models[0].named_parameters():
        entry = by_name.get(name)
        if entry is None:
            disagreements.append(f"{name}: not in the plan")
            continue
        compared += 1
        infshape = param.infshape
        mup_inf = [d.isinf() for d in infshape]
        mup_lr = 1 / infshape.width_mult() if infshape.ninf() == 2 else 1.0
        ours_lr = (entry.get("lr_mult") or {}).get("adam")
        if mup_inf != list(entry.get("infinite", [])):
            disagreements.append(f"{name}: infinite mup {mup_inf} vs plan {entry.get('infinite')}")
        elif ours_lr is None or not math.isclose(ours_lr, mup_lr, rel_tol=1e-6):
            disagreements.append(f"{name}: adam lr mup {mup_lr:g} vs plan {ours_lr} (role {entry.get('role')})")
    return {"status": "compared", "parameters": compared, "disagreements": disagreements}


def last_frame(exc: BaseException, inside: tuple | None = ("muprewrite", "passes")) -> str:
    """The last traceback frame in REPO/muprewrite or REPO/passes (any last frame when `inside` is None)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if inside is not None:
        roots = tuple(str(REPO / d) + "/" for d in inside)
        frames = [f for f in frames if f.filename.startswith(roots)]
    if not frames:
        return ""
    frame = frames[-1]
    path = Path(frame.filename)
    try:
        path = path.relative_to(REPO)
    except ValueError:
        pass
    return f"{path}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()[:120]}"

"""verify: the compiler checks its own output before anyone trains on it.

Reads:  the model factory, example inputs and a `Plan` made for a small width (delta).
Writes: nothing; raises `VerificationError` when, at that width with real tensors,
        * the realized model (hooks, interception, re-init) and the captured graph edited by
          `rewrite` disagree on the outputs or on one step of parameter gradients, or
        * some edit of the plan never fired while the realized model ran.
Both sides are computed from the same parameters and the same RNG state, so they agree bit for
bit unless the realization put an edit in the wrong place — or the model's own graph cannot
match its eager forward (randomness or nondeterministic kernels inside forward). So the same
comparison is first made with no edits (the baseline), and the edited pair is judged against
that distance; the result reports it.
A model with repeated blocks (`plan.repeats`) is compared with every copy passing its input
through, as it was captured; then, in one forward of the whole realized model with every copy
holding its representative's tensors, each copy's output must equal its representative's own run
on the copy's input tensors with the representative's own other arguments (same RNG state: a
`layer_idx` passed in that picks an adapter shows), so each copy's code computes what the verified
representative's computes. The copies' own tensors are never read, so never filled or
re-initialised (at delta width an 80-layer model's copies are a quarter of a GiB). Where that cannot be
shown (`StubError`: a copy computing otherwise, inputs it cannot be replayed on, a pass-through
the eager model refuses), mupify analyses every block instead, noted.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import traceback

import torch
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from ..errors import MuRewriteError, StubError, VerificationError
from ..plan import Plan
from .capture import build_model, export_with_fallbacks, inputs_at, split_inputs
from .capture_failures import first_line, user_location
from . import ops
from .deferred_init import DeferredBuild
from .realize import interceptors, realize
from .passthrough import copies_own, refuse_reads, stubbed
from .repeats import inside, representative_of
from .rewrite import rewrite_graph

RTOL, ATOL = 1e-5, 1e-6
NOISE_MARGIN = 4.0  # how far past the model's own graph-vs-eager distance an edited pair may go


def verify(factory, inputs, plan: Plan, width: int, realize_fn=realize, built: DeferredBuild | None = None) -> dict:
    """Return {"outputs", "gradients": max |diff| realized vs edited graph, "baseline": the same for
    the unedited model vs its own graph (None when not needed: the edited pair agreed to rounding),
    "copies": how many repeated blocks were checked against their representative} or raise
    VerificationError. `built`: the model at `width` built with its fills deferred (the init
    scan's), verified instead of building another."""
    torch.manual_seed(0)
    inputs = inputs_at(inputs, width)
    unread = copies_own(built.model, plan.repeats) if built is not None else {}  # left unfilled: see above
    built = built.finished(unread.values()) if built is not None else build_model(factory, width)
    with stubbed(built, plan.repeats):  # captured before realize puts its hooks on it
        exported = export_with_fallbacks(built, inputs, "cpu")
    refuse_reads(exported.program, unread)
    realized = realize_fn(built, _without_copies(plan), reinit=True)
    oracle = _loaded(without_branch_checks(rewrite_graph(exported.program.module(), plan)), realized)
    realized.train(exported.mode == "train")  # the mode the graph could be captured in
    with stubbed(realized, plan.repeats):
        got = _run(realized, inputs)
    try:
        differences, baseline = _judged(got, oracle, factory, width, inputs, exported, realized, plan)
    except VerificationError as exc:
        if _branch_flipped(exported.program, plan, realized, inputs):
            cause = exc.__cause__ or exc  # what the graph raised, or how the two differ
            raise VerificationError(
                "the model branches on tensor data and muP's edits change the values it branches on (a router's "
                "logits, say), so the edited graph, which holds the branches the example took before the edits, "
                f"no longer matches the realized model ({first_line(cause)}); verification cannot check this "
                "model: pass --no-verify to skip it") from exc
        raise
    differences["baseline"] = baseline and {k: max(v.values(), default=0.0) for k, v in baseline.items()}
    differences["copies"] = _check_copies(realized, plan.repeats, inputs)
    _check_all_fired(realized, plan)
    return differences


def _judged(got, oracle, factory, width, inputs, exported, realized, plan) -> tuple:
    """(differences, baseline): the realized model's outputs and gradients `got` against the edited graph's."""
    want = _run(oracle, inputs, graph=True)
    try:  # to rounding, with no allowance for the model's own graph-vs-eager distance
        return _differences(got, want, {"outputs": {}, "gradients": {}}), None
    except VerificationError:  # judged again against that distance, measured now
        baseline = _baseline(build_model(factory, width), inputs, exported, realized, plan.repeats)
        return _differences(got, want, baseline), baseline


def _branch_flipped(program, plan: Plan, realized, inputs) -> bool:
    """Whether the edited graph, with the checks its real-tensor trace recorded, refuses the realized
    model's routing on these inputs: then a difference is put down to the branch, not to an edit."""
    if not any(ops.op_name(node) in ops.RUNTIME_CHECKS for node in program.graph.nodes):
        return False
    checked = _loaded(rewrite_graph(program.module(), plan), realized)
    try:
        _forward_backward(checked, inputs)
    except Exception as exc:  # noqa: BLE001  only a failed check says that a branch flipped
        return "Runtime assertion failed" in str(exc)
    return False


def without_branch_checks(module):
    """The graph less the checks a real-tensor trace puts on data-dependent values (a routing's
    counts: "u0 >= 17"). The realized model routes its own way (other weights, muP's multipliers on
    the router): where the graph still computes what the model computes, the outputs agree and the
    edits are verified; where a branch flipped they do not, and verify says that it cannot check."""
    for node in [n for n in module.graph.nodes if n.op == "call_function" and ops.op_name(n) in ops.RUNTIME_CHECKS]:
        module.graph.erase_node(node)
    module.recompile()
    return module


def _differences(got: tuple, want: tuple, baseline: dict) -> dict:
    (outputs, grads), (want_outputs, want_grads) = got, want
    return {"outputs": _compare("output", outputs, want_outputs, baseline["outputs"]),
            # None: the graph has no gradient path to the parameters (an autograd.Function whose
            # forward runs under no_grad, such as reversible layers): only the outputs are compared
            "gradients": None if want_grads is None else _compare("gradient of", grads, want_grads,
                                                                  baseline["gradients"])}


def _without_copies(plan: Plan) -> Plan:
    """The plan less the copies' parameter entries: realize leaves their unread tensors untouched."""
    if not plan.repeats:
        return plan
    return dataclasses.replace(plan, parameters={name: entry for name, entry in plan.parameters.items()
                                                 if representative_of(name, plan.repeats) is None})


def _baseline(unedited, inputs, exported, realized, copies: dict) -> dict:
    """How far the model's own graph is from its eager forward with no edit at all, per tensor:
    randomness or nondeterminism inside forward (drawn with the RNG fixed, still) can keep the
    two apart, and the edits are then judged against that distance, not against zero.
    `unedited`: a fresh build of the model, given the realized model's tensors here."""
    plain = _loaded(unedited, realized)
    plain.train(exported.mode == "train")
    graph = _loaded(without_branch_checks(exported.program.module()), realized)
    with stubbed(plain, copies):
        got, got_grads = _run(plain, inputs)
    want, want_grads = _run(graph, inputs, graph=True)
    return {"outputs": _distances(got, want),
            "gradients": {} if want_grads is None else _distances(got_grads, want_grads)}


def _check_copies(realized, copies: dict, inputs) -> int:
    """Each copy's output in a forward of the whole model, every copy holding its representative's
    parameters and buffers, vs the representative's own run on the copy's inputs; the number of
    copies checked."""
    if not copies:
        return 0
    modules, bound = dict(realized.named_modules()), _representatives_tensors(realized, copies)
    calls = _record_calls(realized, {path: modules[path] for path in {*copies, *copies.values()}}, inputs, bound)
    for path, (args, kwargs, rng, output) in calls.items():
        if path not in copies:
            continue
        args, kwargs = _as_called_in(copies[path], calls, path, args, kwargs)
        representative = modules[copies[path]]
        for interceptor in interceptors(representative):
            interceptor.calls = 0
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng)
                expected = torch.func.functional_call(representative, _within(copies[path], bound), args, kwargs,
                                                      tie_weights=False, strict=False)
        except Exception as exc:  # its inputs changed since (a cache the next blocks append to)
            raise StubError(f"block {copies[path]} could not be run on the inputs of {path}, the block repeating "
                            f"it: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        _compare_copy(path, copies[path], tree_leaves(output), tree_leaves(expected))
    return sum(1 for path in calls if path in copies)


def _representatives_tensors(model, copies: dict) -> dict:
    """{name inside a copy: the tensor its representative holds at that place}."""
    tensors = dict(itertools.chain(model.named_parameters(remove_duplicate=False),
                                   model.named_buffers(remove_duplicate=False)))
    return {name: tensors[source] for name in tensors
            if (source := representative_of(name, copies)) is not None and source in tensors}


def _as_called_in(representative: str, calls: dict, path: str, args, kwargs) -> tuple:
    """The copy's call's tensors with the representative's call's other arguments (`layer_idx`):
    what the captured representative computed, as the copy's plan entries assume, unless the
    copy's output shows an argument made it compute otherwise (Zamba2 picks its adapter so)."""
    if representative not in calls:
        return args, kwargs
    leaves, spec = tree_flatten((args, kwargs))
    their_leaves, their_spec = tree_flatten(calls[representative][:2])
    if spec != their_spec:
        raise StubError(f"block {path} is called with other arguments than {representative}, the identical block "
                        "it repeats")
    return tree_unflatten([mine if isinstance(mine, torch.Tensor) else theirs
                           for mine, theirs in zip(leaves, their_leaves)], spec)


def _within(path: str, tensors: dict) -> dict:
    """`tensors` named inside the module at `path`, by their names relative to it (a copy inside
    a representative holds its own representative's tensors there too)."""
    return {name[len(path) + 1:]: tensor for name, tensor in tensors.items() if inside(name, path)}


def _record_calls(model, blocks: dict, inputs, tensors: dict) -> dict:
    """{path: (args, kwargs, RNG state, output)} of each block's first call in one forward of
    `model` holding `tensors` in place of its own of those names."""
    calls, handles = {}, []
    for path, block in blocks.items():
        def enter(module, args, kwargs, path=path):
            calls.setdefault(path, [args, kwargs, torch.get_rng_state(), None])

        def leave(module, args, kwargs, output, path=path):
            if calls[path][3] is None:
                calls[path][3] = output

        handles += [block.register_forward_pre_hook(enter, with_kwargs=True, prepend=True),
                    block.register_forward_hook(leave, with_kwargs=True)]
    args, kwargs = split_inputs(inputs)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            torch.func.functional_call(model, tensors, args, kwargs, tie_weights=False, strict=False)
    finally:
        for handle in handles:
            handle.remove()
    return {path: tuple(call) for path, call in calls.items()}


def _compare_copy(path: str, representative: str, got: list, want: list) -> None:
    same = len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want))
    if not same:  # mupify then analyses every block
        raise StubError(f"block {path} computing something else than {representative}, the identical block it "
                        "repeats, given the same inputs and its own tensors")


def _close(got, want) -> bool:
    if not isinstance(want, torch.Tensor):
        return not isinstance(got, torch.Tensor)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    return not largest_difference(got, want) > ATOL + RTOL * largest_magnitude(want)


def _loaded(module, realized):
    """`module` holding the realized model's parameters and buffers (non-persistent ones too:
    the graph module keeps them as its own), frozen where they are frozen."""
    state = {**dict(realized.named_buffers()), **realized.state_dict()}
    module.load_state_dict(state, strict=False)  # what only the graph has are its own constants
    for name, param in module.named_parameters():
        param.requires_grad_(realized.get_parameter(name).requires_grad)
    return module


def _distances(got: dict, want: dict) -> dict:
    return {key: largest_difference(got[key], want[key])
            for key in want if key in got and got[key].shape == want[key].shape}


def _run(module, inputs, graph: bool = False):
    """Outputs and parameter gradients of one forward and backward; what raises there is named, in one
    line: the model's own code, or its captured graph (`graph`)."""
    try:
        return _forward_backward(module, inputs)
    except (MuRewriteError, StubError):
        raise
    except Exception as exc:  # noqa: BLE001
        if graph and _backward_failed(exc):  # checked on its outputs only, as a graph with no gradient path
            with torch.no_grad():
                return _forward_backward(module, inputs)[0], None
        if graph:
            raise VerificationError(
                f"the model's captured graph cannot run forward and backward on the example inputs, so the "
                f"realized model cannot be checked against it: {type(exc).__name__}: {first_line(exc)} (an "
                "in-place write inside an autograd.Function, say); pass --no-verify to skip the check") from exc
        raise VerificationError(
            f"running the model forward and backward on the example inputs raised {type(exc).__name__}: "
            f"{first_line(exc)}{user_location(exc, module)}; check that the model as written runs "
            "`model(*inputs).sum().backward()` on them, or run with --debug and report it") from exc


def _backward_failed(exc: BaseException) -> bool:
    return any(frame.name in ("backward", "_engine_run_backward") for frame in traceback.extract_tb(exc.__traceback__))


def _forward_backward(module, inputs):
    args, kwargs = split_inputs(inputs)
    module.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        outputs = module(*args, **kwargs)
    leaves = [t for t in tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    generator = torch.Generator().manual_seed(2)
    loss = sum((leaf.float() * torch.randn(leaf.shape, generator=generator)).sum() for leaf in leaves)
    values = {str(i): leaf.detach() for i, leaf in enumerate(leaves)}
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        return values, None
    loss.backward()
    # no clone: the next run sets every grad to None before its backward makes new ones
    return values, {n: p.grad.detach() for n, p in module.named_parameters() if p.grad is not None}


def _compare(what: str, got: dict, want: dict, baseline: dict) -> float:
    if got.keys() != want.keys():
        missing = sorted(set(got) ^ set(want))
        raise VerificationError(f"realized model and edited graph disagree on which {what} exist: {missing[:3]}")
    worst = 0.0
    for key in want:
        if got[key].shape != want[key].shape:
            raise VerificationError(f"{what} {key}: shape {tuple(got[key].shape)} vs {tuple(want[key].shape)}")
        diff, noise = largest_difference(got[key], want[key]), baseline.get(key, 0.0)
        bound = ATOL + RTOL * largest_magnitude(want[key]) + NOISE_MARGIN * noise  # rounding moves with the scale
        if diff > bound:
            raise VerificationError(_mismatch(what, key, diff, noise))
        worst = max(worst, diff)
    return worst


def largest_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| (0.0 when empty) in one temporary (an 80-layer model's gradients are 64 M
    numbers, each pass over them tens of milliseconds), at float32 or the wider input's precision.
    Entries equal or NaN on both sides agree; a NaN or infinity on one side only is an infinite
    difference (a NaN compares false with any bound: a check `difference > bound` passed it)."""
    if not want.numel():
        return 0.0
    dtype = torch.promote_types(torch.promote_types(got.dtype, want.dtype), torch.float32)
    got, want = got.to(dtype), want.to(dtype)
    difference = torch.sub(got, want).abs_()
    largest = float(difference.max())
    if math.isnan(largest):  # rare: only then the exact, slower test
        difference.masked_fill_((got == want) | (got.isnan() & want.isnan()), 0.0)
        largest = float(difference.nan_to_num(nan=math.inf).max())
    return largest


def largest_magnitude(tensor: torch.Tensor) -> float:
    """max |tensor| over its finite entries (0.0 when there are none)."""
    if not tensor.numel():
        return 0.0
    tensor = tensor.to(torch.promote_types(tensor.dtype, torch.float32))
    low, high = (float(bound) for bound in torch.aminmax(tensor))
    if math.isfinite(low) and math.isfinite(high):
        return max(-low, high)
    finite = tensor[tensor.isfinite()]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _mismatch(what: str, key: str, diff: float, noise: float) -> str:
    if noise > ATOL:
        return (f"{what} {key} of the realized model differs from the edited graph by up to {diff:.3g}, more "
                f"than the {noise:.3g} by which the model's own graph differs from its eager forward with no "
                "edit: an edit was realized in the wrong place; please report this model (run with --debug)")
    if what.startswith("gradient"):  # the outputs agreed: a recomputation ran without the edit
        return (f"{what} {key} of the realized model differs from the edited graph by up to {diff:.3g} while "
                "the outputs agree: part of the forward is recomputed for backward outside the module that "
                "owns an edit (activation checkpointing of a bare function or forward?); checkpoint the "
                "module's call instead, or report this model (run with --debug)")
    return (f"{what} {key} of the realized model differs from the edited graph by up to {diff:.3g}: an edit "
            "was realized in the wrong place; please report this model (run with --debug)")


def _check_all_fired(model, plan: Plan) -> None:
    fired = {planned for owner in interceptors(model) for k in owner.fired for planned in owner.planned[k]}
    for edit in plan.edits:
        key = (edit.module, (edit.call, edit.family, edit.occurrence))
        if edit.realized_by == "call_interception" and key not in fired:
            raise VerificationError(
                f"the {edit.kind} edit at {edit.module or 'the root module'} ({edit.node}) never "
                "fired while the realized model ran; please report this model (run with --debug)"
            )

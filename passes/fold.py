"""fold: the muP model as a plain SP model — every edit of the plan folded into the weights.

Reads:  a model of the plan's target width holding the muP model's parameters (the realized model,
        or its class with a muP checkpoint loaded) and the `Plan`, whose edits say where each one
        goes (`Edit.fold`, decided by `passes/foldable.py`).
Writes: the same module (in place; the API copies first) with no hook or interception left and
        each edit's factor multiplied into its targets: once per parameter slice, however many
        calls share it; a tied readout gets a tensor of its own (the tied tensor times the factor)
        and a Hugging Face config `tie_word_embeddings=False`, so `save_pretrained` /
        `from_pretrained` and other tools keep it untied. Its outputs are the muP model's; its
        parameter gradients are the muP ones divided by the factors (a reparametrization:
        training it with a plain optimizer is SP, not muP).
        `unfold` is the reverse: the factors divided back out and tied tensors tied again (the
        embedding is the source of truth), ready for `realize` to re-install the edits.
Raises: `MuRewriteError` naming the edit when the plan says it cannot be folded exactly, or when
        the plan predates fold; `VerificationError` when a check on example inputs disagrees.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..errors import MuRewriteError, VerificationError
from ..plan import Plan
from .capture import split_inputs
from .realize import REALIZED_FLAG, check_shapes, remove_edits
from .verify import largest_difference, largest_magnitude

RTOL = 1e-4  # folding moves rounding (r q instead of r on the logits, c W instead of c x), nothing else


def fold(model: nn.Module, plan: Plan) -> nn.Module:
    """Fold `plan`'s edits into `model`'s parameters, in place, and return it."""
    scalings, unties = planned_targets(plan)
    check_shapes(model, plan)
    remove_edits(model)
    with torch.no_grad():
        for (name, dim, ranges, offset), factor in scalings.items():
            for piece in _pieces(model.get_parameter(name), dim, ranges):
                _affine(piece, offset, lambda x: x.mul_(factor))
        for own, (tied_to, factor) in unties.items():
            source = model.get_parameter(tied_to)
            _set_parameter(model, own, nn.Parameter(source.detach() * factor, requires_grad=source.requires_grad))
    if unties:
        _set_tie_config(model, False)
    return model


def unfold(model: nn.Module, plan: Plan) -> nn.Module:
    """The reverse of `fold`, in place: parameters as the muP model stores them, tied tensors tied."""
    if getattr(model, REALIZED_FLAG, False):
        raise MuRewriteError("this model has a muprewrite plan applied; unfold a folded (plain) model")
    scalings, unties = planned_targets(plan)
    with torch.no_grad():
        for own, (tied_to, factor) in unties.items():
            source = model.get_parameter(tied_to)
            _check_still_tied(model.get_parameter(own), source, factor, own, tied_to)
            _set_parameter(model, own, source)
        for (name, dim, ranges, offset), factor in scalings.items():
            for piece in _pieces(model.get_parameter(name), dim, ranges):
                _affine(piece, offset, lambda x: x.div_(factor))
    if unties:
        _set_tie_config(model, True)
    return model


def planned_targets(plan: Plan) -> tuple:
    """({(param, dim, ranges, offset): factor} of in-place scalings — (w + offset) times the factor,
    minus the offset —, {own name: (tied name, factor)} of unties); the first edit that cannot be
    folded raises its one line."""
    scalings, unties = {}, {}
    for edit in plan.edits:
        if edit.fold is None:
            raise MuRewriteError("the plan was written before muprewrite could fold (its edits say nothing about "
                                 "folding); make the plan again with this muprewrite (muprewrite MODEL --out DIR)")
        if "error" in edit.fold:
            raise MuRewriteError(edit.fold["error"])
        for target in edit.fold["into"]:
            if target.get("untie"):
                unties[target["param"]] = (target["untie"], edit.factor)
                continue
            key = (edit.kind, target["param"], target["dim"], _key(target["ranges"]), target.get("offset", 0.0))
            scalings[key] = edit.factor  # edits of one slice at several calls scale it once
    merged = {}
    for (_, *slice_, offset), factor in scalings.items():  # different kinds of edit on one slice multiply
        key = (*slice_, offset)
        merged[key] = merged.get(key, 1.0) * factor
    return merged, unties


def describe(plan: Plan) -> list:
    """Per edit: {"edit", "where", "factor", "into"} in words — what went where."""
    rows = []
    for edit in plan.edits:
        fold_ = edit.fold or {"error": "the plan predates fold"}
        into = fold_["error"] if "error" in fold_ else ", ".join(_target_words(t) for t in fold_["into"])
        rows.append({"edit": edit.kind, "where": f"{edit.module or '(root)'} ({edit.node})",
                     "factor": edit.factor, "into": into, "folds": "error" not in fold_})
    return rows


def compare_outputs(reference: nn.Module, folded: nn.Module, inputs) -> float:
    """Max |difference| of the two models' floating-point outputs on `inputs` in eval mode (no
    dropout); a difference beyond rounding raises VerificationError."""
    got, want = _outputs(folded, inputs), _outputs(reference, inputs)
    if len(got) != len(want):
        raise VerificationError(f"the folded model returns {len(got)} tensors, the muP model {len(want)}")
    worst = 0.0
    for index, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            raise VerificationError(f"output {index} of the folded model has shape {tuple(a.shape)}, "
                                    f"the muP model's {tuple(b.shape)}")
        diff, scale = largest_difference(a.double(), b.double()), largest_magnitude(b)  # a lone NaN: inf
        eps = torch.finfo(b.dtype).eps
        if diff > max(RTOL, 64 * eps) * scale + 1e-6:
            raise VerificationError(f"output {index} of the folded model differs from the muP model by {diff:.3g} "
                                    f"(scale {scale:.3g}): folding changed what the model computes; please report "
                                    "this model (run with --debug)")
        worst = max(worst, diff)
    return worst


def _outputs(model: nn.Module, inputs) -> list:
    args, kwargs = split_inputs(inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(*args, **kwargs)
    finally:
        model.train(was_training)
    return [t for t in tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _key(ranges):
    return None if ranges is None else tuple(tuple(r) for r in ranges)


def _pieces(param: torch.Tensor, dim, ranges) -> list:
    if ranges is None:
        return [param]
    return [param.narrow(dim, start, stop - start) for start, stop in ranges]


def _affine(piece: torch.Tensor, offset: float, scale) -> None:
    """Scale `piece` as the gain `offset + piece` is scaled (plain `piece` when there is no offset)."""
    if offset:
        piece.add_(offset)
    scale(piece)
    if offset:
        piece.sub_(offset)


def _set_parameter(model: nn.Module, name: str, value: nn.Parameter) -> None:
    owner, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attribute, value)


def _check_still_tied(own: torch.Tensor, source: torch.Tensor, factor: float, own_name: str, tied_to: str) -> None:
    """The untied readout must still be the factor times the embedding (up to rounding of the
    dtype it was saved in): the plan ties them, and the embedding is the one kept."""
    expected = source.detach().double() * factor
    bound = 4 * torch.finfo(own.dtype).eps * largest_magnitude(expected)
    if own.shape != source.shape or largest_difference(own.detach(), expected) > bound:
        raise MuRewriteError(
            f"'{own_name}' is no longer {factor:g} x '{tied_to}' (trained after folding?), but the plan ties them; "
            "the muP model cannot be restored exactly: keep training the folded model as SP, or restore "
            "from the muP checkpoint")


def _set_tie_config(model: nn.Module, tied: bool) -> None:
    """Hugging Face configs say whether the readout is tied: from_pretrained (and vLLM) tie it again
    unless told otherwise."""
    config = getattr(model, "config", None)
    configs = [config, getattr(config, "get_text_config", lambda **_: None)(decoder=True)]
    for item in configs:
        if item is not None and hasattr(item, "tie_word_embeddings"):
            item.tie_word_embeddings = tied


def _target_words(target: dict) -> str:
    if target.get("untie"):
        return f"{target['param']} (untied from {target['untie']})"
    if target.get("offset"):
        return f"{target['param']} (used as {target['offset']:g} + it)"
    if target["ranges"] is None:
        return target["param"]
    along = {0: "rows", 1: "columns"}.get(target["dim"], f"dim {target['dim']} entries")
    pieces = ", ".join(f"{start}:{stop}" for start, stop in target["ranges"][:4])
    more = f" and {len(target['ranges']) - 4} more" if len(target["ranges"]) > 4 else ""
    return f"{target['param']} {along} {pieces}{more}"

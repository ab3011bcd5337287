"""foldable: decide where each edit of the plan goes when the muP model is folded back to SP.

Reads:  `Dataflow`, the plan's edits and parameters (their use sites), the width `at` (a captured
        width's name; at a width that was not captured, the graph is walked at each captured width
        and every row range predicted from theirs by `muprewrite.widths.record_at`).
Returns: each edit's `fold` (the pipeline sets it; passes/fold.py reads it): {"into": [target, ...]}, the parameter
        slices whose multiplication by the edit's factor makes the plain model compute what the
        edit computes, or {"error": one line naming the edit and what to do}. A target is
        {"param", "node" (the use it scales), "dim", "ranges" ([[start, stop], ...] along `dim`;
        None: the whole tensor), for a tied weight "untie": the name of the tensor it is tied to
        (this name gets a tensor of its own, that tensor times the factor), for a gain used as
        `offset + w` (Gemma's norms) "offset"}.
        * weight multiplier: its parameter (realize divided the stored tensor by it);
        * readout multiplier c on a contraction's input: y = W (c x) = (cW) x, the readout weight.
          A weight tied to the input embedding is untied when the readout is an nn.Linear reading
          its own attribute (HF `lm_head`); otherwise c goes back along the readout's input, as:
        * attention scale r = new/old: r (q·k) = (r q)·k, so r goes back along q through ops
          homogeneous of degree 1 in q — views, splits of a fused qkv (only the query rows), rotary
          embeddings (q cos + rotate_half(q) sin), constant factors — to the rows of the projection
          that computes q, or to the gain (and bias) of a norm on q (QK-norm): passes/fold_walk.py.
        Exact or refused: a walk that meets any other op, a tensor that also feeds something the
        edit does not scale, or a parameter that another use reads unscaled records an error.
"""

from __future__ import annotations

import math
from collections import defaultdict

from torch import fx

from ..plan import Edit
from ..widths import WIDTH_NAMES, record_at
from . import ops
from .dims import Dataflow
from .fold_walk import BackWalk, Refusal, first_input, fold_target

_ADVICE = {
    "attention_scale": "compute q with a projection followed only by views, splits, rotary embeddings, constant "
                       "factors or a norm with a gain, or keep this model in its muP form (apply_plan)",
    "readout_multiplier": "give the readout an nn.Linear of its own (tied: lm_head.weight = wte.weight) so fold "
                          "can untie it, or keep this model in its muP form (apply_plan)",
    "weight_multiplier": "keep this model in its muP form (apply_plan)",
}


def place_folds(flow: Dataflow, edits: list, parameters: dict, at: str | int) -> list:
    """The `fold` of every edit, in the edits' order."""
    if isinstance(at, str):
        return _folds_at(flow, edits, parameters, at)
    walked = {name: _folds_at(flow, edits, parameters, name) for name in WIDTH_NAMES}
    return [record_at({name: folds[i] for name, folds in walked.items()}, flow.widths, at,
                      f"the fold of the {edit.kind} edit at {edit.node}") for i, edit in enumerate(edits)]


def _folds_at(flow: Dataflow, edits: list, parameters: dict, at: str) -> list:
    """The `fold` of every edit, walking the graph captured at width `at`."""
    finder = FoldFinder(flow, parameters, at, edits)
    folds = [_fold(finder, edit) for edit in edits]
    for i, reason in finder.unscaled_uses(edits, folds):
        folds[i] = {"error": _message(edits[i], reason)}
    return folds


def _fold(finder, edit: Edit) -> dict:
    try:
        return {"into": finder.targets(edit)}
    except Refusal as refusal:
        return {"error": _message(edit, str(refusal))}
    except Exception as exc:  # a bug here must not stop the rewrite; folding this edit is refused
        return {"error": _message(edit, f"muprewrite could not analyse it ({type(exc).__name__}: {exc}; "
                                        "please report this model)")}


def _message(edit: Edit, reason: str) -> str:
    where = f"module '{edit.module}'" if edit.module else "the root module"
    return f"the {edit.kind} edit at {where} ({edit.node}) cannot be folded exactly: {reason}; {_ADVICE[edit.kind]}"


class FoldFinder:
    """The analysis for one plan: the graph at width `at`, the parameters' uses, the readout factors."""

    def __init__(self, flow: Dataflow, parameters: dict, at: str, edits: list):
        self.flow, self.parameters, self.walk = flow, parameters, BackWalk(flow, at)
        self.readout_factors = {e.node: e.factor for e in edits if e.kind == "readout_multiplier"}

    # ------------------------------------------------------------------ per edit kind

    def targets(self, edit: Edit) -> list:
        if edit.kind == "weight_multiplier":
            return [fold_target(edit.param, edit.node)]
        if edit.kind == "readout_multiplier":
            return self._readout(edit)
        slot = ops.spec(self.walk.node_of(edit.node)).query if edit.apply_to == "scale_kwarg" else edit.operand
        return self.walk.targets(edit.node, slot, "its query")

    def _readout(self, edit: Edit) -> list:
        weights = self._weights(edit)
        shared = [w for w in weights or () if self._unscaled(w, self._same_factor_nodes(edit))]
        if weights and not shared:
            return [fold_target(w, edit.node) for w in weights]
        own_name = self._untie_name(edit, weights)
        if own_name is not None:
            names = [weights[0], *self.parameters[weights[0]].aliases]
            return [{**fold_target(own_name, edit.node), "untie": next(n for n in names if n != own_name)}]
        why = (f"'{shared[0]}' is also read by {self._unscaled(shared[0], {edit.node})} and the readout has no "
               "attribute of its own to untie it" if shared else "its weight is computed, not a parameter")
        try:
            return self.walk.targets(edit.node, edit.operand, "its input")
        except Refusal as refusal:
            raise Refusal(f"{why}, and {refusal}") from None

    def _same_factor_nodes(self, edit: Edit) -> set:
        return {n for n, f in self.readout_factors.items() if math.isclose(f, edit.factor, rel_tol=1e-12)}

    def _weights(self, edit: Edit) -> list | None:
        """The parameters that make up the readout's weight operand (through views and cat)."""
        node = self.walk.node_of(edit.node)
        slots = ops.node_slots(node)
        if ops.op_name(node) == "einsum":
            weight_slot = f"tensors.{1 - int(edit.operand.split('.')[1])}"
        else:
            partner = ops.spec(node).partner if ops.spec(node) else {}
            weight_slot = next((w for w, a in partner.items() if a == edit.operand), None)
        return self._params_in(slots.get(weight_slot))

    def _params_in(self, value) -> list | None:
        if not isinstance(value, fx.Node):
            return None
        param = self.flow.graph.nodes[value.name]["param"]
        if param:
            return [param]
        if ops.kind(value) != ops.VIEW or ops.op_name(value) in ops.PLACING:
            return None
        inputs = value.all_input_nodes if ops.op_name(value) in ops.CONCATENATING else [first_input(value)]
        found = []
        for item in inputs:
            params = self._params_in(item)
            if params is None:
                return None
            found += params
        return found

    def _untie_name(self, edit: Edit, weights) -> str | None:
        """The readout's own name of a tied weight, when the readout is an nn.Linear reading it."""
        if not weights or len(weights) != 1 or self.flow.module_type(edit.node) not in ops.LINEAR_MODULES:
            return None
        names = [weights[0], *self.parameters[weights[0]].aliases]
        own = f"{edit.module}.weight" if edit.module else "weight"
        return own if own in names and len(names) > 1 else None

    def unscaled_uses(self, edits: list, folds: list):
        """(index, reason) for every edit with an in-place target whose parameter is also read where its
        edits do not scale it, or is scaled by different factors at different uses."""
        groups = defaultdict(list)
        for i, (edit, fold) in enumerate(zip(edits, folds)):
            for target in fold.get("into", []):
                if not target.get("untie"):
                    key = (edit.kind, target["param"], target["dim"], str(target["ranges"]), target.get("offset", 0.0))
                    groups[key].append((i, target["node"]))
        for (kind, param, *_), members in groups.items():
            factors = {round(edits[i].factor, 12) for i, _ in members}
            missing = self._unscaled(param, {node for _, node in members})
            if len(factors) > 1:
                reason = f"'{param}' would be scaled by different factors ({', '.join(map(str, sorted(factors)))})"
            elif missing:
                reason = f"'{param}' is also read by {missing}, which the edit does not scale"
            else:
                continue
            for i, _ in members:
                if "error" not in folds[i]:
                    yield i, reason

    def _unscaled(self, param: str, nodes: set) -> str | None:
        """A use of `param` outside `nodes`, in words, or None."""
        for use in self.parameters[param].uses:
            if use["node"] not in nodes:
                return f"{use['op']} at {use['node']} ({self.walk.where(use['node'])})"
        return None

    # ------------------------------------------------------------------ small helpers

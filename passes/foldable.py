"""foldable: decide where each edit of the plan goes when the muP model is folded back to SP.

Reads:  `Dataflow`, the plan's edits and parameters (their use sites), the width `at` (a captured
        width's name; at a width that was not captured, the graph is walked at each captured width
        and every row range predicted from theirs by `muprewrite.widths.record_at`).
Writes: each edit's `fold` (read by `passes/fold.py`): {"into": [target, ...]}, the parameter
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
          that computes q, or to the gain (and bias) of a norm on q (QK-norm).
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
from .element_ids import as_ranges, features_held, ids_of_views

# a projection whose output's last dim is a dim of its 2-D weight: op -> (weight slot, that dim)
_ROWS = {"linear": ("weight", 0), "matmul": ("other", 1), "mm": ("mat2", 1), "addmm": ("mat2", 1)}
_JOINS = {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}
_SHAPED_LIKE = {"expand_as", "view_as", "reshape_as", "type_as"}  # the second operand lends only a shape or dtype
_AUXILIARY = {"native_dropout", "native_layer_norm", "_fused_rms_norm", "native_group_norm", "native_batch_norm",
              "_native_batch_norm_legit", "_native_batch_norm_legit_no_training"}  # outputs past the first
_NOT_READING = {"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_numel"}
_ADVICE = {
    "attention_scale": "compute q with a projection followed only by views, splits, rotary embeddings, constant "
                       "factors or a norm with a gain, or keep this model in its muP form (apply_plan)",
    "readout_multiplier": "give the readout an nn.Linear of its own (tied: lm_head.weight = wte.weight) so fold "
                          "can untie it, or keep this model in its muP form (apply_plan)",
    "weight_multiplier": "keep this model in its muP form (apply_plan)",
}


class Refusal(Exception):
    """Why an edit cannot be folded exactly (one clause)."""


def place_folds(flow: Dataflow, edits: list, parameters: dict, at: str | int) -> None:
    """Set `fold` on every edit."""
    if isinstance(at, str):
        _place_at(flow, edits, parameters, at)
        return
    walked = {}
    for name in WIDTH_NAMES:
        _place_at(flow, edits, parameters, name)
        walked[name] = [edit.fold for edit in edits]
    for i, edit in enumerate(edits):
        edit.fold = record_at({name: folds[i] for name, folds in walked.items()}, flow.widths, at,
                              f"the fold of the {edit.kind} edit at {edit.node}")


def _place_at(flow: Dataflow, edits: list, parameters: dict, at: str) -> None:
    """Set `fold` on every edit, walking the graph captured at width `at`."""
    finder = FoldFinder(flow, parameters, at, edits)
    for edit in edits:
        try:
            edit.fold = {"into": finder.targets(edit)}
        except Refusal as refusal:
            edit.fold = {"error": _message(edit, str(refusal))}
        except Exception as exc:  # a bug here must not stop the rewrite; folding this edit is refused
            edit.fold = {"error": _message(edit, f"muprewrite could not analyse it ({type(exc).__name__}: {exc}; "
                                                 "please report this model)")}
    for edit, reason in finder.unscaled_uses(edits):
        edit.fold = {"error": _message(edit, reason)}


def _message(edit: Edit, reason: str) -> str:
    where = f"module '{edit.module}'" if edit.module else "the root module"
    return f"the {edit.kind} edit at {where} ({edit.node}) cannot be folded exactly: {reason}; {_ADVICE[edit.kind]}"


class FoldFinder:
    """The analysis for one plan: the graph at width `at`, the parameters' uses, the readout factors."""

    def __init__(self, flow: Dataflow, parameters: dict, at: str, edits: list):
        self.flow, self.parameters, self.at = flow, parameters, at
        self.dependent = _parameter_dependent(flow)
        self.readout_factors = {e.node: e.factor for e in edits if e.kind == "readout_multiplier"}

    # ------------------------------------------------------------------ per edit kind

    def targets(self, edit: Edit) -> list:
        if edit.kind == "weight_multiplier":
            return [_target(edit.param, edit.node)]
        if edit.kind == "readout_multiplier":
            return self._readout(edit)
        slot = ops.spec(self._fx(edit.node)).query if edit.apply_to == "scale_kwarg" else edit.operand
        return self._walk(edit.node, slot, "its query")

    def _readout(self, edit: Edit) -> list:
        weights = self._weights(edit)
        shared = [w for w in weights or () if self._unscaled(w, self._same_factor_nodes(edit))]
        if weights and not shared:
            return [_target(w, edit.node) for w in weights]
        own_name = self._untie_name(edit, weights)
        if own_name is not None:
            names = [weights[0], *self.parameters[weights[0]].aliases]
            return [{**_target(own_name, edit.node), "untie": next(n for n in names if n != own_name)}]
        why = (f"'{shared[0]}' is also read by {self._unscaled(shared[0], {edit.node})} and the readout has no "
               "attribute of its own to untie it" if shared else "its weight is computed, not a parameter")
        try:
            return self._walk(edit.node, edit.operand, "its input")
        except Refusal as refusal:
            raise Refusal(f"{why}, and {refusal}") from None

    def _same_factor_nodes(self, edit: Edit) -> set:
        return {n for n, f in self.readout_factors.items() if math.isclose(f, edit.factor, rel_tol=1e-12)}

    def _weights(self, edit: Edit) -> list | None:
        """The parameters that make up the readout's weight operand (through views and cat)."""
        node = self._fx(edit.node)
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
        inputs = value.all_input_nodes if ops.op_name(value) in _JOINS else [_first_input(value)]
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

    # ------------------------------------------------------------------ the walk back from an operand

    def _walk(self, site: str, slot: str, what: str) -> list:
        """Targets that scale the value feeding `site` at `slot` by the edit's factor, and nothing else."""
        start = ops.node_slots(self._fx(site)).get(slot)
        if not isinstance(start, fx.Node):
            raise Refusal(f"{what} is not a tensor of the graph")
        walk = _Walk()
        stack = [start.name]
        while stack:
            name = stack.pop()
            if name not in walk.region:
                walk.region.add(name)
                stack += self._step(name, walk, what)
        targets, views = walk.targets, set()
        for projection, entries in walk.entries.items():
            ids = ids_of_views(self._fx(projection))
            targets += self._projection_rows(projection, entries, ids, what)
            views |= set(ids)
        self._check_contained(walk.region, views, start.name, site, slot, what)
        return targets

    def _step(self, name: str, walk: "_Walk", what: str) -> list:
        """What must be scaled for node `name` to be scaled: its inputs, or targets (recorded)."""
        node = self._fx(name)
        op = ops.op_name(node)
        projection = self._projection_behind(node)
        if projection is not None:
            walk.entries[projection].append(name)
            return []
        if ops.kind(node) == ops.VIEW:
            return self._through_view(node, op, what)
        if ops.kind(node) == ops.NORM:
            walk.targets += self._norm_gain(node, what)
            return []
        if op in ("add", "sub"):
            operands = [ops.node_slots(node).get(s) for s in ("input", "other")]
            if all(isinstance(o, fx.Node) and o.name in self.dependent for o in operands):
                return [o.name for o in operands]
            raise Refusal(f"{what} has a constant added at {name} ({self._where(name)}), which is not linear in it")
        if op in ops.SCALAR_ARITH:
            return self._through_product(node, op, walk, what)
        if node.op == "placeholder":
            param = self.flow.graph.nodes[name]["param"]
            raise Refusal(f"{what} is {f'the parameter {param!r}' if param else 'a model input'} itself, not the "
                          "output of a projection")
        raise Refusal(f"{what} passes through {op or node.op} at {name} ({self._where(name)}), which is not linear in it")

    def _through_view(self, node: fx.Node, op: str, what: str) -> list:
        if op in ops.PLACING:
            raise Refusal(f"{what} is placed into another tensor by {op} at {node.name} ({self._where(node.name)})")
        if op in _JOINS:
            return [n.name for n in node.all_input_nodes]
        first = _first_input(node)
        others = [n for n in node.all_input_nodes if n is not first]
        if others and op not in _SHAPED_LIKE:
            raise Refusal(f"{what} meets another tensor in {op} at {node.name} ({self._where(node.name)})")
        return [first.name]

    def _through_product(self, node: fx.Node, op: str, walk: "_Walk", what: str) -> list:
        slots = ops.node_slots(node)
        a, b = slots.get("input"), slots.get("other")
        tensors = [t for t in (a, b) if isinstance(t, fx.Node) and t.name in self.dependent]
        if op == "div":
            if isinstance(a, fx.Node) and tensors == [a]:
                return [a.name]
            raise Refusal(f"{what} is divided by a computed tensor at {node.name} ({self._where(node.name)})")
        gains = [g for g in (self._gain_of(a), self._gain_of(b)) if g]
        if gains:  # g * x (a hand-written norm's gain, a learnt scale): scaling g scales the product
            param, offset = gains[0]
            walk.targets.append({**_target(param, node.name), **({"offset": offset} if offset else {})})
            return []
        if len(tensors) == 1:
            return [tensors[0].name]
        raise Refusal(f"{what} is a product of two computed tensors at {node.name} ({self._where(node.name)})")

    def _gain_of(self, value) -> tuple | None:
        """(parameter, offset) when `value` is a parameter (or a view of one), or a parameter plus a
        constant (Gemma's `1 + weight`: then r g = (r (w + 1)) - 1 + 1)."""
        param = self._param_of(value)
        if param:
            return param, 0.0
        if not isinstance(value, fx.Node) or ops.op_name(value) != "add" or ops.node_slots(value).get("alpha", 1) != 1:
            return None
        slots = ops.node_slots(value)
        for tensor, constant in ((slots.get("input"), slots.get("other")), (slots.get("other"), slots.get("input"))):
            if isinstance(constant, (int, float)) and not isinstance(constant, bool) and self._param_of(tensor):
                return self._param_of(tensor), float(constant)
        return None

    def _norm_gain(self, node: fx.Node, what: str) -> list:
        spec, slots = ops.spec(node), ops.node_slots(node)
        gain = self._param_of(slots.get(spec.gain)) if spec.gain else None
        if gain is None:
            raise Refusal(f"{what} comes out of {ops.op_name(node)} at {node.name} ({self._where(node.name)}), "
                          "a norm without a gain to fold into")
        targets = [_target(gain, node.name)]
        for bias_slot in spec.bias:
            bias = slots.get(bias_slot)
            if bias is not None and self._param_of(bias) is None:
                raise Refusal(f"the norm at {node.name} ({self._where(node.name)}) adds a computed bias")
            if bias is not None:
                targets.append(_target(self._param_of(bias), node.name))
        return targets

    # ------------------------------------------------------------------ projections and their rows

    def _projection_behind(self, node: fx.Node) -> str | None:
        """The projection (a contraction with one parameter operand) that `node` is, or is a view of
        through single-input views."""
        while True:
            if self._weight_operand(node) is not None:
                return node.name
            if ops.kind(node) != ops.VIEW or len(node.all_input_nodes) != 1 or ops.op_name(node) in ops.PLACING:
                return None
            node = node.all_input_nodes[0]

    def _weight_operand(self, node: fx.Node):
        """(slot, parameter) of a contraction's single parameter operand, else None."""
        spec = ops.spec(node)
        if spec is None or spec.kind != ops.CONTRACTION:
            return None
        found = [(slot, self._param_of(value)) for slot, value in ops.node_slots(node).items()
                 if slot not in spec.bias and isinstance(value, fx.Node) and self._param_of(value)]
        return found[0] if len(found) == 1 else None

    def _projection_rows(self, projection: str, entries: list, ids: dict, what: str) -> list:
        """Targets scaling the output features of `projection` that reach q (its entries), after
        checking that nothing else reads those features (`ids`: the projection's views)."""
        node = self._fx(projection)
        features = node.meta["val"].shape[-1]
        if any(e not in ids for e in entries):
            raise Refusal(f"muprewrite cannot follow which outputs of {projection} ({self._where(projection)}) "
                          f"make up {what}")
        scaled = set().union(*(features_held(ids[e], features) for e in entries))
        for name in ids:
            if name in entries:
                continue
            for user in self._fx(name).users:
                if user.name not in ids and not _not_reading(user) and features_held(ids[name], features) & scaled:
                    raise Refusal(f"the outputs of {projection} ({self._where(projection)}) that make up {what} "
                                  f"also feed {user.name} ({self._where(user.name)})")
        slot, weight = self._weight_operand(node)
        biases = [self._param_of(v) for s, v in ops.node_slots(node).items() if s in ops.spec(node).bias and v is not None]
        if None in biases:
            raise Refusal(f"the projection {projection} ({self._where(projection)}) adds a computed bias")
        shape = lambda param: self.flow.shape(self.flow.parameters()[param]).at(self.at)  # noqa: E731
        if len(scaled) == features:
            return [_target(p, projection) for p in (weight, *biases)]
        op = ops.op_name(node)
        if _ROWS.get(op, (None,))[0] != slot or len(shape(weight)) != 2 or any(len(shape(b)) != 1 for b in biases):
            raise Refusal(f"only part of the outputs of {projection} ({self._where(projection)}) make up {what}, "
                          f"and muprewrite knows the rows of a 2-D linear or matmul weight only")
        ranges = as_ranges(scaled)
        return [_target(weight, projection, _ROWS[op][1], ranges), *(_target(b, projection, 0, ranges) for b in biases)]

    # ------------------------------------------------------------------ checks

    def _check_contained(self, region: set, views: set, start: str, site: str, slot: str, what: str) -> None:
        """Every scaled tensor feeds only other scaled tensors (the start: only the site, at its slot);
        views of a projection are judged by the rows they read (`_projection_rows`)."""
        for name in region:
            for user in self._fx(name).users:
                if user.name in region or user.name in views or _not_reading(user) or _auxiliary_output(user):
                    continue
                if user.name == site and name == start and ops.slots_of(user, self._fx(name)) == [slot]:
                    continue
                target = "the model's output" if user.op == "output" else f"{user.name} ({self._where(user.name)})"
                raise Refusal(f"{what} (through {name}) also feeds {target}, which the edit does not scale")

    def unscaled_uses(self, edits: list):
        """(edit, reason) for every in-place target whose parameter is also read where its edits do
        not scale it, or is scaled by different factors at different uses."""
        groups = defaultdict(list)
        for edit in edits:
            for target in edit.fold.get("into", []):
                if not target.get("untie"):
                    key = (edit.kind, target["param"], target["dim"], str(target["ranges"]), target.get("offset", 0.0))
                    groups[key].append((edit, target["node"]))
        for (kind, param, *_), members in groups.items():
            factors = {round(e.factor, 12) for e, _ in members}
            missing = self._unscaled(param, {node for _, node in members})
            if len(factors) > 1:
                reason = f"'{param}' would be scaled by different factors ({', '.join(map(str, sorted(factors)))})"
            elif missing:
                reason = f"'{param}' is also read by {missing}, which the edit does not scale"
            else:
                continue
            for edit, _ in members:
                if "error" not in edit.fold:
                    yield edit, reason

    def _unscaled(self, param: str, nodes: set) -> str | None:
        """A use of `param` outside `nodes`, in words, or None."""
        for use in self.parameters[param].uses:
            if use["node"] not in nodes:
                return f"{use['op']} at {use['node']} ({self._where(use['node'])})"
        return None

    # ------------------------------------------------------------------ small helpers

    def _fx(self, name: str) -> fx.Node:
        return self.flow.fx(name, self.at)

    def _param_of(self, value) -> str | None:
        """The parameter `value` is, or a view of."""
        while isinstance(value, fx.Node):
            param = self.flow.graph.nodes[value.name]["param"]
            if param:
                return param
            if ops.kind(value) != ops.VIEW or len(value.all_input_nodes) != 1 or ops.op_name(value) in _JOINS:
                return None
            value = value.all_input_nodes[0]
        return None

    def _where(self, name: str) -> str:
        module = self.flow.module(name)
        return f"module '{module}'" if module else "the root module"


class _Walk:
    def __init__(self):
        self.region = set()  # nodes whose whole value is scaled
        self.targets = []
        self.entries = defaultdict(list)  # projection -> the scaled nodes that are (views of) its output


def _target(param: str, node: str, dim: int | None = None, ranges: list | None = None) -> dict:
    return {"param": param, "node": node, "dim": dim, "ranges": ranges}


def _first_input(node: fx.Node) -> fx.Node:
    value = ops.node_slots(node).get("input")
    return value if isinstance(value, fx.Node) else node.all_input_nodes[0]


def _not_reading(user: fx.Node) -> bool:
    return ops.op_name(user) in _NOT_READING


def _auxiliary_output(user: fx.Node) -> bool:
    """getitem(native_layer_norm, 1) and the like: a statistic or mask that scaling does not change."""
    return ops.op_name(user) == "getitem" and ops.op_name(user.args[0]) in _AUXILIARY and user.args[1] != 0


def _parameter_dependent(flow: Dataflow) -> set:
    """Nodes computed (also) from a parameter."""
    dependent = set()
    for name in flow.graph.nodes:
        if flow.graph.nodes[name]["param"] or any(p in dependent for p in flow.graph.predecessors(name)):
            dependent.add(name)
    return dependent

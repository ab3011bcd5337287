"""fold_walk: the walk back from an edited operand to the parameters that scale it (for foldable).

Reads:  `Dataflow` at one captured width, and an operand of one op (a node and its slot).
Writes: the targets (`target`: {"param", "node", "dim", "ranges", "offset"?}) whose multiplication by a
        factor r scales that operand by r and nothing else — back through ops homogeneous of degree 1
        in it: views, splits of a fused qkv (only the query rows), rotary embeddings (q cos +
        rotate_half(q) sin), constant factors, sums of such — to the rows of the projection that
        computes it, to a norm's gain (and bias), or to a learnt gain; `Refusal` naming the first op
        on the way that is not such, or a tensor on the way that feeds something else.
"""

from __future__ import annotations

from collections import defaultdict

from torch import fx

from . import ops
from .dims import Dataflow
from .element_ids import as_ranges, features_held, ids_of_views



class Refusal(Exception):
    """Why an edit cannot be folded exactly (one clause)."""


class BackWalk:
    """Walks back over the graph captured at width `at` (`targets`: one walk)."""

    def __init__(self, flow: Dataflow, at: str):
        self.flow, self.at = flow, at
        self.dependent = _parameter_dependent(flow)

    def targets(self, site: str, slot: str, what: str) -> list:
        """Targets that scale the value feeding `site` at `slot` by the edit's factor, and nothing else."""
        start = ops.node_slots(self.node_of(site)).get(slot)
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
            ids = ids_of_views(self.node_of(projection))
            targets += self._projection_rows(projection, entries, ids, what)
            views |= set(ids)
        self._check_contained(walk.region, views, start.name, site, slot, what)
        return targets

    def _step(self, name: str, walk: "_Walk", what: str) -> list:
        """What must be scaled for node `name` to be scaled: its inputs, or targets (recorded)."""
        node = self.node_of(name)
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
        if op in ops.ADDITIVE:
            operands = [ops.node_slots(node).get(s) for s in ("input", "other")]
            if all(isinstance(o, fx.Node) and o.name in self.dependent for o in operands):
                return [o.name for o in operands]
            raise Refusal(f"{what} has a constant added at {name} ({self.where(name)}), which is not linear in it")
        if op in ops.SCALAR_ARITH:
            return self._through_product(node, op, walk, what)
        if node.op == "placeholder":
            param = self.flow.graph.nodes[name]["param"]
            raise Refusal(f"{what} is {f'the parameter {param!r}' if param else 'a model input'} itself, not the "
                          "output of a projection")
        raise Refusal(f"{what} passes through {op or node.op} at {name} ({self.where(name)}), which is not linear in it")

    def _through_view(self, node: fx.Node, op: str, what: str) -> list:
        if op in ops.PLACING:
            raise Refusal(f"{what} is placed into another tensor by {op} at {node.name} ({self.where(node.name)})")
        if op in ops.CONCATENATING:
            return [n.name for n in node.all_input_nodes]
        first = first_input(node)
        others = [n for n in node.all_input_nodes if n is not first]
        if others and op not in ops.METADATA_SLOTS:
            raise Refusal(f"{what} meets another tensor in {op} at {node.name} ({self.where(node.name)})")
        return [first.name]

    def _through_product(self, node: fx.Node, op: str, walk: "_Walk", what: str) -> list:
        slots = ops.node_slots(node)
        a, b = slots.get("input"), slots.get("other")
        tensors = [t for t in (a, b) if isinstance(t, fx.Node) and t.name in self.dependent]
        if op == "div":
            if isinstance(a, fx.Node) and tensors == [a]:
                return [a.name]
            raise Refusal(f"{what} is divided by a computed tensor at {node.name} ({self.where(node.name)})")
        gains = [g for g in (self._gain_of(a), self._gain_of(b)) if g]
        if gains:  # g * x (a hand-written norm's gain, a learnt scale): scaling g scales the product
            param, offset = gains[0]
            walk.targets.append({**fold_target(param, node.name), **({"offset": offset} if offset else {})})
            return []
        if len(tensors) == 1:
            return [tensors[0].name]
        raise Refusal(f"{what} is a product of two computed tensors at {node.name} ({self.where(node.name)})")

    def _gain_of(self, value) -> tuple | None:
        """(parameter, offset) when `value` is a parameter (or a view of one), or a parameter plus a
        constant (Gemma's `1 + weight`: then r g = (r (w + 1)) - 1 + 1)."""
        param = self.param_of(value)
        if param:
            return param, 0.0
        if not isinstance(value, fx.Node) or ops.op_name(value) != "add" or ops.node_slots(value).get("alpha", 1) != 1:
            return None
        slots = ops.node_slots(value)
        for tensor, constant in ((slots.get("input"), slots.get("other")), (slots.get("other"), slots.get("input"))):
            if isinstance(constant, (int, float)) and not isinstance(constant, bool) and self.param_of(tensor):
                return self.param_of(tensor), float(constant)
        return None

    def _norm_gain(self, node: fx.Node, what: str) -> list:
        spec, slots = ops.spec(node), ops.node_slots(node)
        gain = self.param_of(slots.get(spec.gain)) if spec.gain else None
        if gain is None:
            raise Refusal(f"{what} comes out of {ops.op_name(node)} at {node.name} ({self.where(node.name)}), "
                          "a norm without a gain to fold into")
        targets = [fold_target(gain, node.name)]
        for bias_slot in spec.bias:
            bias = slots.get(bias_slot)
            if bias is not None and self.param_of(bias) is None:
                raise Refusal(f"the norm at {node.name} ({self.where(node.name)}) adds a computed bias")
            if bias is not None:
                targets.append(fold_target(self.param_of(bias), node.name))
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
        found = [(slot, self.param_of(value)) for slot, value in ops.node_slots(node).items()
                 if slot not in spec.bias and isinstance(value, fx.Node) and self.param_of(value)]
        return found[0] if len(found) == 1 else None

    def _projection_rows(self, projection: str, entries: list, ids: dict, what: str) -> list:
        """Targets scaling the output features of `projection` that reach q (its entries), after
        checking that nothing else reads those features (`ids`: the projection's views)."""
        node = self.node_of(projection)
        features = node.meta["val"].shape[-1]
        if any(e not in ids for e in entries):
            raise Refusal(f"muprewrite cannot follow which outputs of {projection} ({self.where(projection)}) "
                          f"make up {what}")
        scaled = set().union(*(features_held(ids[e], features) for e in entries))
        for name in ids:
            if name in entries:
                continue
            for user in self.node_of(name).users:
                if user.name not in ids and not _not_reading(user) and features_held(ids[name], features) & scaled:
                    raise Refusal(f"the outputs of {projection} ({self.where(projection)}) that make up {what} "
                                  f"also feed {user.name} ({self.where(user.name)})")
        slot, weight = self._weight_operand(node)
        biases = [self.param_of(v) for s, v in ops.node_slots(node).items() if s in ops.spec(node).bias and v is not None]
        if None in biases:
            raise Refusal(f"the projection {projection} ({self.where(projection)}) adds a computed bias")
        shape = lambda param: self.flow.shape(self.flow.parameters()[param]).at(self.at)  # noqa: E731
        if len(scaled) == features:
            return [fold_target(p, projection) for p in (weight, *biases)]
        rows = getattr(ops.spec(node), "rows", None) or (None, None)
        if rows[0] != slot or len(shape(weight)) != 2 or any(len(shape(b)) != 1 for b in biases):
            raise Refusal(f"only part of the outputs of {projection} ({self.where(projection)}) make up {what}, "
                          f"and muprewrite knows the rows of a 2-D linear or matmul weight only")
        ranges = as_ranges(scaled)
        return [fold_target(weight, projection, rows[1], ranges), *(fold_target(b, projection, 0, ranges) for b in biases)]

    def _check_contained(self, region: set, views: set, start: str, site: str, slot: str, what: str) -> None:
        """Every scaled tensor feeds only other scaled tensors (the start: only the site, at its slot);
        views of a projection are judged by the rows they read (`_projection_rows`)."""
        for name in region:
            for user in self.node_of(name).users:
                if user.name in region or user.name in views or _not_reading(user) or _auxiliary_output(user):
                    continue
                if user.name == site and name == start and ops.slots_of(user, self.node_of(name)) == [slot]:
                    continue
                target = "the model's output" if user.op == "output" else f"{user.name} ({self.where(user.name)})"
                raise Refusal(f"{what} (through {name}) also feeds {target}, which the edit does not scale")

    # ------------------------------------------------------------------ small helpers

    def node_of(self, name: str) -> fx.Node:
        return self.flow.fx(name, self.at)

    def param_of(self, value) -> str | None:
        """The parameter `value` is, or a view of."""
        while isinstance(value, fx.Node):
            param = self.flow.graph.nodes[value.name]["param"]
            if param:
                return param
            if ops.kind(value) != ops.VIEW or len(value.all_input_nodes) != 1 or ops.op_name(value) in ops.CONCATENATING:
                return None
            value = value.all_input_nodes[0]
        return None

    def where(self, name: str) -> str:
        module = self.flow.module(name)
        return f"module '{module}'" if module else "the root module"


class _Walk:
    def __init__(self):
        self.region = set()  # nodes whose whole value is scaled
        self.targets = []
        self.entries = defaultdict(list)  # projection -> the scaled nodes that are (views of) its output


def fold_target(param: str, node: str, dim: int | None = None, ranges: list | None = None) -> dict:
    return {"param": param, "node": node, "dim": dim, "ranges": ranges}


def first_input(node: fx.Node) -> fx.Node:
    value = ops.node_slots(node).get("input")
    return value if isinstance(value, fx.Node) else node.all_input_nodes[0]


def _not_reading(user: fx.Node) -> bool:
    return ops.op_name(user) in ops.SHAPE_READS


def _auxiliary_output(user: fx.Node) -> bool:
    """getitem(native_layer_norm, 1) and the like: a statistic or mask that scaling does not change."""
    return ops.op_name(user) == "getitem" and ops.op_name(user.args[0]) in ops.AUXILIARY_OUTPUTS and user.args[1] != 0


def _parameter_dependent(flow: Dataflow) -> set:
    """Nodes computed (also) from a parameter."""
    dependent = set()
    for name in flow.graph.nodes:
        if flow.graph.nodes[name]["param"] or any(p in dependent for p in flow.graph.predecessors(name)):
            dependent.add(name)
    return dependent

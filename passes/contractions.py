"""contractions: every product of two activations over a width-growing dim gets a decision.

Reads:  `Dataflow`.
Writes: nothing; answers, for each contraction (matmul, bmm, einsum, ...) with no parameter operand
        whose contracted dim grows with width:
        * `score_path` — the path to a non-linear score function its result reaches through ops
          affine in it (exp over a logsumexp, sigmoid or ReLU scores: attention without a softmax
          op), when every such op leads to one; `attention.find_attention` makes it a site;
        * `scale_free` — its size cancels: followed forward as a degree in a common factor s
          (ops.DEGREE_*), together with every other such product sharing an operand with it (linear
          attention's numerator and normaliser), nothing it reaches depends on s (a ratio, a norm);
        * `undecided` — what is neither, with the reason: muP makes such a product grow as d where
          the model expects sqrt(d), so a plan that left it alone would be wrong without a word;
          decide refuses it, naming the op and its source line. A product of an activation with a
          constant tensor (a buffer of random features) over a growing dim is undecided too: muP has
          no rule for a fixed matrix of the width.
"""

from __future__ import annotations

import networkx as nx
from torch import fx

from . import ops
from .degree import all_zeros, behind_constant_factors, behind_views, degree_of
from .dims import Dataflow


def growing_products(flow: Dataflow) -> list:
    """Contractions of two non-parameter operands, at least one computed from the inputs, over a
    dim that grows with width, in graph order (found once per graph: every pass asks)."""
    cached = flow.graph.graph.get("growing_products")
    if cached is None:
        cached = flow.graph.graph["growing_products"] = _growing_products(flow)
    return cached


def _growing_products(flow: Dataflow) -> list:
    data = data_dependent(flow)
    found = []
    for name in flow.graph.nodes:
        node = flow.fx(name)
        spec = ops.spec(node)
        if spec is not None and spec.kind == ops.CONTRACTION and spec.query is not None:
            if not grows(flow, name):
                continue
        elif not summed_product_grows(flow, name):
            continue
        operands = operands_of(flow, name)
        if any(all_zeros(a) for a in operands):
            continue  # a state that starts at zero: the product is zero at every width
        if any(param_behind(flow, a) for a in operands) or not any(a.name in data for a in operands):
            continue
        if all(a.name in data or flow.is_constant(a.name) for a in operands):
            found.append(name)
    return found


def of_activations(flow: Dataflow, contraction: str) -> bool:
    """Whether every operand of the contraction is computed from the model's inputs."""
    data = data_dependent(flow)
    return all(a.name in data for a in operands_of(flow, contraction))


def operands_of(flow: Dataflow, name: str) -> list:
    """The tensors a contraction multiplies: its inputs, or the factors of a summed product."""
    node = flow.fx(name)
    if ops.kind(node) != ops.CONTRACTION:
        node = node.args[0]
    return [a for a in node.all_input_nodes if ops.kind(a) != ops.IGNORED]


def summed_product_grows(flow: Dataflow, name: str) -> bool:
    """`(q * k).sum(-1)`: a sum over a growing dim of an elementwise product of two tensors."""
    node = flow.fx(name)
    if ops.op_name(node) not in ops.SUMMING or not node.args or not isinstance(node.args[0], fx.Node) \
            or ops.op_name(node.args[0]) != "mul" or len(node.args[0].all_input_nodes) != 2:
        return False
    sizes = set()
    for at in ("base", "delta"):
        summed, product = flow.fx(name, at), flow.fx(name, at).args[0]
        shape = tuple(product.meta["val"].shape) if product.meta.get("val") is not None else None
        dims = ops.node_slots(summed).get("dim")
        if shape is None or dims is None:
            return False
        dims = [dims] if isinstance(dims, int) else list(dims)
        sizes.add(tuple(shape[d] for d in dims))
    return len(sizes) > 1


def undecided(flow: Dataflow, decided: set) -> list:
    """(contraction, reason) for every growing product that is no attention site and not scale-free."""
    found = []
    for name in growing_products(flow):
        if name in decided:
            continue
        if not of_activations(flow, name) and scale_free_blocker(flow, name) is not None:
            found.append((name, "one operand is a constant tensor (a buffer, random features), and muP has no rule "
                                "for a fixed matrix of the width"))
        elif (blocker := scale_free_blocker(flow, name)) is not None:
            found.append((name, blocker))
    return found


def scale_free_products(flow: Dataflow) -> list:
    """The growing products of activations whose size cancels (they need no edit), in graph order."""
    return [name for name in growing_products(flow)
            if of_activations(flow, name) and score_path(flow, name) is None and scale_free_blocker(flow, name) is None]


def score_path(flow: Dataflow, contraction: str) -> list | None:
    """The path from the contraction to the first score function its logits reach, when every op
    past the ops affine in the logits is a score function; None otherwise."""
    paths = score_paths(flow, contraction)
    return paths[0] if paths else None


def score_paths(flow: Dataflow, contraction: str) -> list:
    """A path to each op past the ops affine in the logits, in graph order; [] unless all are score functions."""
    region, ends = _affine_region(flow, contraction)
    if not ends or not all(ops.is_score_function(flow.fx(end)) for end in ends):
        return []
    paths = []
    for end in sorted(ends, key=_graph_order(flow)):
        on_path = nx.subgraph_view(flow.graph, filter_node=lambda n, end=end: n in region or n in (contraction, end))
        paths.append(nx.shortest_path(on_path, contraction, end))
    return paths


def scale_free_blocker(flow: Dataflow, contraction: str) -> str | None:
    """None when the contraction's size cancels, or cannot grow (an operand is a softmax over the
    contracted dim: the product is a weighted average); else why it does not, naming the op it reaches."""
    if _averages(flow, contraction) or between_unit_vectors(flow, contraction):
        return None
    seeds = _sharing_an_operand(flow, contraction)
    units = {u.name for seed in seeds for u in _unit_factors(flow, seed)}
    degree = {}
    order = list(flow.graph.nodes)
    for name in order[min(order.index(s) for s in seeds):]:
        node = flow.fx(name)
        inputs = {a.name: degree.get(a.name, 0.0) for a in node.all_input_nodes}
        if name not in seeds and not any(inputs.values()):
            continue
        found = degree_of(node, degree)
        if name in seeds and found is not None:
            found += 1.0
        elif found is not None and any(v > 0 for v in inputs.values()) and _projects_back(flow, node, units):
            found -= 1.0  # (a·u) u: a projected onto the unit direction u it was measured along
        if found is None:
            module = f"module '{flow.module(name)}'" if flow.module(name) else "the root module"
            return f"its size reaches {ops.op_name(node) or node.op} in {module}, which does not cancel it (under " \
                   "muP a product of two activations grows as d, not sqrt(d))"
        if found and ops.op_name(node) == "output":
            return "its size reaches the model's output"
        degree[name] = found
    return None


def _averages(flow: Dataflow, contraction: str) -> bool:
    """Whether an operand is a softmax over the dim the contraction sums (through views and constant
    factors): attention weights times values, a feature map normalised over d."""
    node = flow.fx(contraction)
    if ops.kind(node) != ops.CONTRACTION:
        return False
    for slot, operand in ops.node_slots(node).items():
        if not isinstance(operand, fx.Node) or ops.contracted_dims(node, slot, len(_shape(operand))) is None:
            continue
        softmax = behind_constant_factors(operand)
        if ops.kind(softmax) != ops.SOFTMAX:
            continue
        summed, normalised = set(), set()
        for at in ("base", "delta"):
            here = flow.fx(contraction, at)
            value = ops.node_slots(here)[slot]
            dims = ops.contracted_dims(here, slot, len(_shape(value)))
            summed.add(tuple(_shape(value)[d] for d in dims))
            source = flow.fx(softmax.name, at)
            source_shape = _shape(source)
            normalised.add((source_shape[ops.node_slots(source)["dim"] % len(source_shape)],))
        if summed == normalised and len(summed) == 2:
            return True
    return False


def between_unit_vectors(flow: Dataflow, name: str) -> bool:
    """Whether two factors of the product are normalised to unit length along the summed dim
    (`F.normalize`, `x / sqrt((x * x).sum(-1))`): by Cauchy-Schwarz the product is then bounded by
    the other factors' largest entry, whatever the width (cosine attention, a delta rule's q·k)."""
    return len(_unit_factors(flow, name)) >= 2


def _unit_factors(flow: Dataflow, name: str) -> list:
    """The factors of the product of unit length along its summed dim (behind views and factors that
    do not grow with width)."""
    summed = _summed_sizes(flow, name)
    found = []
    for factor in _factors(flow, name) if summed else ():
        behind = _behind_shrinking_factors(flow, factor)
        if behind is not None and _unit_sizes(flow, behind) == summed:
            found.append(behind)
    return found


def _projects_back(flow: Dataflow, node: fx.Node, units: set) -> bool:
    """`p * u` with u a unit vector some product was summed along: the RMS of (a·u) u is at most a's
    (an orthogonal projection), whatever the width (NeoMME's removal of the value direction)."""
    return ops.op_name(node) == "mul" and any(
        (behind := _behind_shrinking_factors(flow, a)) is not None and behind.name in units
        for a in node.all_input_nodes)


def _summed_sizes(flow: Dataflow, name: str) -> tuple | None:
    """(size at base, size at delta) of the dim the product sums, when it is one dim."""
    sizes = []
    for at in ("base", "delta"):
        node = flow.fx(name, at)
        if ops.kind(node) == ops.CONTRACTION:
            slot = ops.spec(node).query
            operand = ops.node_slots(node).get(slot)
            dims = ops.contracted_dims(node, slot, len(_shape(operand))) if isinstance(operand, fx.Node) else None
            shape = _shape(operand) if isinstance(operand, fx.Node) else ()
        else:
            dims, shape = ops.node_slots(node).get("dim"), _shape(node.args[0])
            dims = [dims] if isinstance(dims, int) else dims
        if not dims or len(dims) != 1:
            return None
        sizes.append(shape[dims[0]])
    return tuple(sizes)


def _factors(flow: Dataflow, name: str) -> list:
    """The tensors multiplied: the leaves of the elementwise products (through views) that make a
    contraction's operands, or a summed product."""
    node = flow.fx(name)
    found, frontier = [], operands_of(flow, name) if ops.kind(node) == ops.CONTRACTION else [node.args[0]]
    while frontier:
        current = behind_views(frontier.pop())  # k_beta.unsqueeze(-2): the mul behind the view
        if ops.op_name(current) == "mul" and all(isinstance(a, fx.Node) for a in current.args[:2]) \
                and not _normalises_itself(flow, current, of_data=True):
            frontier += list(current.args[:2])
        else:
            found.append(current)
    return found


def _unit_sizes(flow: Dataflow, node: fx.Node) -> tuple | None:
    """(base, delta) size of the dim along which `node` is normalised to unit length, or None."""
    if not _normalises_itself(flow, node, of_data=True):
        return None
    by = node.args[1]
    for reduction in nx.ancestors(flow.graph, by.name) | {by.name}:
        reducing = flow.fx(reduction)
        if ops.op_name(reducing) not in ops.SIZE_GROWING_REDUCTIONS or not reducing.args:
            continue
        sizes = []
        for at in ("base", "delta"):
            here = flow.fx(reduction, at)
            dims = ops.node_slots(here).get("dim")
            dims = [dims] if isinstance(dims, int) else dims
            shape = _shape(here.args[0])
            if not dims or len(dims) != 1 or not shape:
                break
            sizes.append(shape[dims[0]])
        if len(sizes) == 2:
            return tuple(sizes)
    return None


def _shape(node: fx.Node) -> tuple:
    value = node.meta.get("val")
    return tuple(value.shape) if value is not None and hasattr(value, "shape") else ()


def _behind_shrinking_factors(flow: Dataflow, node: fx.Node) -> fx.Node | None:
    """The tensor behind views and constant factors that do not grow with width (qwen3_next's
    `query * d**-0.5`); None past a factor that grows (`* d**0.5` makes a unit vector's length grow)."""
    while node.args and isinstance(node.args[0], fx.Node):
        if ops.op_name(node) in ops.SCALAR_ARITH and not isinstance(node.args[1], fx.Node):
            base, delta = (flow.fx(node.name, at).args[1] for at in ("base", "delta"))
            grow = abs(delta / base) if ops.op_name(node) == "mul" else abs(base / delta)
            if not base or not delta or grow > 1.0:
                return None
        elif ops.kind(node) != ops.VIEW or ops.op_name(node) in ops.JOINING:
            break
        node = node.args[0]
    return node


def _sharing_an_operand(flow: Dataflow, contraction: str) -> set:
    """The contraction and every growing product that reads one of its operands (through views):
    products of the same q, whose sizes grow together."""
    roots = {_root(a) for a in operands_of(flow, contraction)}
    return {name for name in growing_products(flow)
            if name == contraction or (roots & {_root(a) for a in operands_of(flow, name)} and not _logits(flow, name))}


def _logits(flow: Dataflow, name: str) -> bool:
    """Attention logits (a softmax or score functions follow): decided as attention, whatever else reads q."""
    _, ends = _affine_region(flow, name)
    return bool(score_paths(flow, name)) or any(ops.kind(flow.fx(end)) == ops.SOFTMAX for end in ends)


def _root(node: fx.Node) -> str:
    while ops.kind(node) == ops.VIEW and node.args and isinstance(node.args[0], fx.Node) \
            and ops.op_name(node) not in ops.CONCATENATING:
        node = node.args[0]
    return node.name


def _affine_region(flow: Dataflow, contraction: str) -> tuple:
    """(nodes computed from the contraction by ops affine in it, the first ops past them)."""
    region, ends, frontier = set(), set(), [contraction]
    while frontier:
        source = frontier.pop()
        for user in flow.graph.successors(source):
            node = flow.fx(user)
            if user in region or ops.kind(node) == ops.IGNORED or _reads_only_metadata(node, flow.fx(source)):
                continue
            if ops.kind(node) == ops.VIEW or ops.op_name(node) in ops.LOGIT_AFFINE:
                region.add(user)
                frontier.append(user)
            else:
                ends.add(user)
    return region, ends


def _reads_only_metadata(node: fx.Node, source: fx.Node) -> bool:
    """`p.type_as(logits)`: the logits enter only for their dtype or shape."""
    slots = ops.slots_of(node, source)
    return bool(slots) and all(slot in ops.METADATA_SLOTS.get(ops.op_name(node), ()) for slot in slots)


def grows(flow: Dataflow, name: str) -> bool:
    node = flow.fx(name)
    slot = ops.spec(node).query
    sizes = set()
    for at in ("base", "delta"):
        operand = ops.node_slots(flow.fx(name, at)).get(slot)
        if not isinstance(operand, fx.Node) or operand.meta.get("val") is None:
            return False
        shape = tuple(operand.meta["val"].shape)
        dims = ops.contracted_dims(flow.fx(name, at), slot, len(shape)) or ()
        sizes.add(tuple(shape[d] for d in dims))
    return len(sizes) > 1


def param_behind(flow: Dataflow, node) -> str | None:
    """The parameter a node is (a view of, or a normalisation of: `F.normalize(w)`), if any: a weight,
    not an activation."""
    while isinstance(node, fx.Node):
        if flow.graph.nodes[node.name]["param"]:
            return flow.graph.nodes[node.name]["param"]
        if _normalises_itself(flow, node):
            node = node.args[0]
            continue
        if ops.kind(node) != ops.VIEW or not node.args or ops.op_name(node) in ops.CONCATENATING:
            return None
        node = node.args[0]
    return None


def _normalises_itself(flow: Dataflow, node: fx.Node, of_data: bool = False) -> bool:
    """`w / norm(w)` or `w * rsqrt(...)`: a tensor divided (multiplied) by a root of something computed
    from it (alone, unless `of_data`: an activation normalised by its own norm)."""
    if ops.op_name(node) not in ops.SCALAR_ARITH or len(node.args) < 2 or not all(
            isinstance(a, fx.Node) for a in node.args[:2]):
        return False
    tensor, by = node.args[0], node.args[1]
    sources = nx.ancestors(flow.graph, by.name) | {by.name}
    divides = ops.op_name(node) == "div" or any(ops.op_name(flow.fx(n)) in ops.RECIPROCALS for n in sources)
    return tensor.name in sources and (of_data or not (sources & data_dependent(flow))) and divides and \
        any(ops.op_name(flow.fx(n)) in ops.NORMALIZING for n in sources)


def data_dependent(flow: Dataflow) -> set:
    """Nodes computed from the model's inputs."""
    graph = flow.graph
    cached = graph.graph.get("data_dependent")
    if cached is None:
        starts = [n for n, d in graph.nodes(data=True) if d["user_input"]]
        cached = set(starts).union(*(nx.descendants(graph, n) for n in starts)) if starts else set()
        graph.graph["data_dependent"] = cached
    return cached


def _graph_order(flow: Dataflow):
    index = {name: i for i, name in enumerate(flow.graph.nodes)}
    return lambda name: index[name]

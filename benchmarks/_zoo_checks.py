"""The model-agnostic checks of a muprewrite plan against what the model does at run time, shared
by benchmarks/hf_zoo.py and benchmarks/third_party.py (moved here from hf_zoo.py unchanged, except
that the model is called with a tuple of positional inputs too, not only a dict of keyword inputs).

- `weight_products` / `readouts`: the readout found from the data (walking back from the logits to
  the first weight product whose fan-in differs between base and delta);
- `attention_modules` / `growing_attention`: the modules running attention (a 4-D softmax, SDPA or
  multi-head attention) whose d_head differs between base and delta;
- `plan_failures`: (a) no unclassified role, (b) the hidden rule, (c) the readout has role output,
  (d) attention-scale edits per growing attention module.
"""
from __future__ import annotations

import collections
import math


def call(model, inputs):
    """The model on its inputs: a dict is keyword arguments, a tuple or list positional ones, a tensor one."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


CONTRACTIONS = {"linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "baddbmm", "einsum",
                "conv1d", "conv2d", "conv3d"}


def weight_products(model, inputs) -> tuple:
    """(products, logits): every weight product of one forward in order, as (parameter names, fan-in,
    the products upstream of its activation operand), and the last products upstream of the logits.
    Activations are the inputs and what is computed from them; a weight is a parameter, a view of one
    or a tensor computed from parameters alone (mobilebert's cat of two weights); "upstream" follows
    the data flow back to the nearest weight products."""
    from torch.overrides import TorchFunctionMode

    by_storage = collections.defaultdict(set)
    for name, param in model.named_parameters(remove_duplicate=False):
        by_storage[param.untyped_storage().data_ptr()].add(name)
    sources = {id(t): frozenset() for t in _tensors(inputs)}  # activation -> nearest products upstream
    weights, products, keep = {}, [], list(_tensors(inputs))  # keep: no id is reused during the forward

    def weight_names(tensor) -> set:
        if id(tensor) in weights:
            return weights[id(tensor)]
        try:
            return by_storage.get(tensor.untyped_storage().data_ptr(), set())
        except (RuntimeError, NotImplementedError):  # a tensor without storage
            return set()

    class Trace(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            operands = list(_tensors((args, kwargs)))
            activations = [t for t in operands if id(t) in sources]
            names = set().union(*(weight_names(t) for t in operands if id(t) not in sources))
            results = list(_tensors(out))
            keep.extend(results)
            if not activations:
                weights.update({id(t): names for t in results if names})
                return out
            upstream = frozenset().union(*(sources[id(t)] for t in activations))
            fan_in = _fan_in(getattr(func, "__name__", ""), args, kwargs) if names else None
            if fan_in is not None:
                products.append((tuple(sorted(names)), fan_in, upstream))
                upstream = frozenset({len(products) - 1})
            sources.update({id(t): upstream for t in results})
            return out

    with Trace():
        output = call(model, inputs)
    logits = getattr(output, "logits", None)
    logits = logits if logits is not None else next(_tensors(output), None)
    return products, sources.get(id(logits), frozenset()) if logits is not None else frozenset()


def _tensors(value):
    """The tensors in a value (nested lists, tuples, dicts and model outputs)."""
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _fan_in(name: str, args, kwargs):
    """The contracted size of a weight product (None when `name` is no contraction)."""
    def operand(index: int, *keys):
        return args[index] if len(args) > index else next((kwargs[k] for k in keys if k in kwargs), None)

    if name not in CONTRACTIONS:
        return None
    if name == "einsum":
        return _einsum_fan_in(args[0], list(_tensors(args[1:]))) if args and isinstance(args[0], str) else None
    if name == "linear" or name.startswith("conv"):
        weight = operand(1, "weight")
        return math.prod(weight.shape[1:]) if weight is not None else None
    first = operand(1, "mat1", "batch1") if name in ("addmm", "baddbmm") else operand(0, "input")
    return first.shape[-1] if first is not None and first.dim() else None


def _einsum_fan_in(equation: str, operands: list):
    """The product of the sizes of the indices an einsum sums over."""
    inputs, arrow, output = equation.replace(" ", "").partition("->")
    terms = inputs.split(",")
    sizes = {}
    for term, operand in zip(terms, operands):
        letters = term.replace("...", "")
        offset = operand.dim() - len(letters)
        sizes.update({letter: operand.shape[offset + i] for i, letter in enumerate(letters)})
    if not arrow:
        output = "".join(sorted(c for c in sizes if inputs.count(c) == 1))
    return math.prod(size for letter, size in sizes.items() if letter not in output)


def readouts(at_base: tuple, at_delta: tuple) -> list | None:
    """The parameter names of each readout: walking the data flow back from the logits, the first
    weight products whose fan-in differs between base and delta (products with a fixed fan-in, like
    RemBERT's decoder from output_embedding_size, are passed through); None when the two forwards
    make different products."""
    (products, logits), (delta_products, _) = at_base, at_delta
    if len(products) != len(delta_products):
        return None
    frontier, seen, found = list(logits), set(), set()
    while frontier:
        index = frontier.pop()
        if index in seen:
            continue
        seen.add(index)
        names, fan_in, upstream = products[index]
        if fan_in != delta_products[index][1]:
            found.add(names)
        else:
            frontier.extend(upstream)
    return sorted(list(names) for names in found)


def growing_attention(at_base: dict, at_delta: dict) -> dict:
    """{module: attention calls} of the modules whose q·k contracted size differs between the
    two widths (those need muP's attention scale; a fixed d_head does not)."""
    return {m: len(sizes) for m, sizes in at_base.items() if at_delta.get(m) and sizes != at_delta[m]
            and "unit" not in sizes}


def attention_modules(model, inputs, softmax_sizes: dict | None = None) -> dict:
    """{module path: [d_head of each attention call in one forward]}: the innermost module running
    each scaled_dot_product_attention (d_head: the query's last dim) or multi-head attention function
    (embed_dim / num_heads), or each softmax (or logsumexp) over attention scores (4-D, or 3-D square; d_head: the
    last dim of the latest product of two activations before it), once per product: GraniteSWA's sink takes a
    logsumexp of the logits its softmax normalises."""
    import torch
    from torch.overrides import TorchFunctionMode

    names = {id(m): n for n, m in model.named_modules()}
    stack, calls, last_product = [], collections.defaultdict(list), [None]
    products_seen, normalised = [0], set()  # a product normalised twice (a softmax and a sink's logsumexp) is one call
    # a softmax written out as exp(x - logsumexp(x)) (Reformer) normalises scores as one does
    softmaxes = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax, torch.logsumexp,
                 torch.Tensor.logsumexp}
    products = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm,
                torch.baddbmm, torch.Tensor.baddbmm, torch.einsum}

    class Calls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            flat = [x for a in (*args, *kwargs.values()) for x in (a if isinstance(a, (list, tuple)) else [a])]
            tensors = [a for a in flat if isinstance(a, torch.Tensor)]  # einsum(eq, [q, k]) too
            # under no_grad only a parameter (or a view of one) requires grad: a projection, not q·k
            if func in products and len(tensors) >= 2 and not any(t.requires_grad for t in tensors):
                # cosine attention (q and k of unit length, as Swin v2's): bounded logits, no size that grows
                equation = next((a for a in args if isinstance(a, str)), None)
                last_product[0] = "unit" if unit_length(func, tensors, equation) else tuple(t.shape[-1] for t in tensors)
                products_seen[0] += 1
            if stack and is_attention(func, args, softmaxes, kwargs) and not (
                    func in softmaxes and products_seen[0] in normalised):
                if func in softmaxes:
                    normalised.add(products_seen[0])
                calls[stack[-1]].append(head_size(func, args) or last_product[0])
                if softmax_sizes is not None:  # the size the softmax normalises over (None: not a softmax)
                    softmax_sizes.setdefault(stack[-1], []).append(args[0].shape[-1] if func in softmaxes else None)
            return func(*args, **kwargs)

    def enter(module, args):
        stack.append(names[id(module)])

    def leave(module, args, output):
        stack.pop()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        with Calls():
            call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return dict(calls)


def unit_length(func, tensors, equation: str | None = None) -> bool:
    """Whether a matmul's two operands have unit length along the dim it sums (observed, not assumed)."""
    import torch

    ones = lambda norms: torch.allclose(norms, torch.ones_like(norms), atol=1e-3)  # noqa: E731
    if func is torch.einsum and len(tensors) == 2 and isinstance(equation, str):
        dims = summed_dims(equation)
        return dims is not None and all(t.is_floating_point() and ones(t.norm(dim=d)) for t, d in zip(tensors, dims))
    if func not in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm):
        return False
    a, b = tensors[:2]
    if a.dim() < 2 or b.dim() < 2 or not a.is_floating_point():
        return False
    return ones(a.norm(dim=-1)) and ones(b.norm(dim=-2))


def summed_dims(equation: str):
    """For a two-operand einsum summing one letter: that letter's dim in each operand, else None."""
    lhs, _, out = equation.replace(" ", "").partition("->")
    operands = lhs.split(",")
    if len(operands) != 2 or "." in lhs:
        return None
    summed = [c for c in operands[0] if c in operands[1] and c not in out]
    return (operands[0].index(summed[0]), operands[1].index(summed[0])) if len(summed) == 1 else None


def multi_head_attentions() -> set:
    """nn.MultiheadAttention's functions: the slow path, and the fast path it takes in eval under no_grad
    (either runs its softmax where a TorchFunctionMode does not see it)."""
    import torch

    return {torch.nn.functional.multi_head_attention_forward, torch._native_multi_head_attention}


def head_size(func, args):
    """The d_head of an attention call that names it (scaled_dot_product_attention: the query's last dim;
    multi-head attention: embed_dim / num_heads); None for a softmax."""
    import torch

    if func is torch.nn.functional.scaled_dot_product_attention:
        return args[0].shape[-1]
    if func in multi_head_attentions():
        return args[3] // args[4]  # (query, key, value, embed_dim, num_heads, ...)
    return None


def is_attention(func, args, softmaxes, kwargs=None) -> bool:
    import torch

    if func is torch.nn.functional.scaled_dot_product_attention or func in multi_head_attentions():
        return True
    if func in (torch.logsumexp, torch.Tensor.logsumexp):
        dim = args[1] if len(args) > 1 else (kwargs or {}).get("dim")
        dim = dim[0] if isinstance(dim, (list, tuple)) and len(dim) == 1 else dim
        if not isinstance(dim, int) or dim % args[0].dim() != args[0].dim() - 1:
            return False  # normalising over keys is over the last dim (Reformer also combines hash rounds over dim 1)
    if func in softmaxes and args and isinstance(args[0], torch.Tensor):
        shape = args[0].shape
        return len(shape) >= 4 or (len(shape) == 3 and shape[-1] == shape[-2])
    return False


def plan_failures(plan: dict, readouts, attention: dict, grow: str) -> list:
    """The checks (a)-(d) of the module docstring that the plan fails, one line each."""
    params = plan.get("parameters", {})
    failures = []
    unclassified = [n for n, p in params.items() if p.get("role") == "unclassified" or
                    any(u.get("role") == "unclassified" for u in p.get("uses", []))]
    if unclassified:
        failures.append(f"unclassified: {len(unclassified)} parameters ({', '.join(unclassified[:3])})")
    wrong_hidden = [n for n, p in params.items() if not hidden_rule_holds(p)]
    if wrong_hidden:
        failures.append(f"hidden rule: {len(wrong_hidden)} infinite x infinite matrices ({', '.join(wrong_hidden[:3])})")
    failures += readout_failures(params, readouts)
    failures += attention_failures(plan.get("edits", []),
                                   collections.Counter(attention) if grow == "head_dim" else collections.Counter())
    return failures


def readout_failures(params: dict, readouts) -> list:
    """Check (c): each readout (a list of parameter names, see `readouts`) has a parameter with a use
    of role output."""
    if readouts is None:
        return ["output: the forwards at base and delta make different weight products"]
    if not readouts:
        return ["output: no weight product with an infinite fan-in computes the logits"]
    roles = {n: {u.get("role") for u in p.get("uses", [])} for name, p in params.items()
             for n in (name, *p.get("aliases", []))}
    missing = [names for names in readouts if not any("output" in roles.get(n, ()) for n in names)]
    return [f"output: no parameter of the readout {', '.join(names)} has a use with role output" for names in missing]


def attention_failures(edits: list, expected: collections.Counter) -> list:
    """Every attention module gets edits on at least as many q·k contractions as it makes attention
    calls (one softmax can have several: content and position terms), no other module does, and
    no contraction is edited twice."""
    def related(a: str, b: str) -> bool:  # the q·k contraction may run in the softmax's parent, child or sibling
        return a == b or a.startswith(b + ".") or b.startswith(a + ".") or a.rpartition(".")[0] == b.rpartition(".")[0]

    # a learned query (a parameter) contracted with the keys is a readout, whose 1/m multiplier (with the
    # model's own width-dependent scale held at base) gives the logits the same 1/d
    scaled = [e for e in edits if e.get("kind") in ("attention_scale", "readout_multiplier")]
    missing = sorted(m for m in expected if sum(1 for e in scaled if related(e.get("module", ""), m)) < expected[m])
    edits = [e for e in edits if e.get("kind") == "attention_scale"]
    extra = sorted({e.get("module") for e in edits if not any(related(e.get("module", ""), m) for m in expected)})
    # a contraction is a node run by a call of a module (a repeated block's copy names its representative's nodes)
    twice = len(edits) - len({(e.get("module"), e.get("call"), e.get("node")) for e in edits})
    if missing or extra or twice:
        return [f"attention_scale: {len(edits)} edits for {sum(expected.values())} attention calls (missing "
                f"{', '.join(missing[:2]) or '-'}; unexpected {', '.join(extra[:2]) or '-'}; edited twice {twice})"]
    return []


def hidden_rule_holds(param: dict) -> bool:
    """A 2-D tensor with both dims infinite is hidden with Adam LR x 1/m (m: its fan_in multiplier)."""
    if len(param.get("shape", [])) != 2 or not all(param.get("infinite", [])):
        return True
    mults = [u.get("fan_in_mult") for u in param.get("uses", []) if u.get("fan_in_mult")]
    if param.get("role") != "hidden" or not mults:
        return False
    return math.isclose(param.get("lr_mult", {}).get("adam", 0.0), 1 / mults[0], rel_tol=1e-6)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

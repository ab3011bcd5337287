"""The op registry: everything the passes and the realization know about an op, one entry per op.

Reads and writes nothing. Each `OpSpec` says what an op is to muP: which argument slots hold a
weight and which of their dims it contracts, which slot is the activation a weight meets, the
bias and gain slots, where a multiplicative scale lives, which slot is q when the op is a q·k
contraction, how the op behaves on an attention-logit path, and which Python callables run it
(the realization intercepts those). Slots are argument names as the op's schema spells them
(an einsum operand is "tensors.I"), and arguments are bound *by schema* both in the captured
graph and at run time, so `alibi.baddbmm(batch1=q, batch2=k)` and `torch.baddbmm(alibi, q, k)`
are the same call. Adding an op is one entry in `REGISTRY`.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx
from torch.fx.operator_schemas import get_signature_for_torch_op

# How an op behaves to the analysis.
CONTRACTION = "contraction"  # sums a weight over some dims (linear, matmul, conv, grouped mm)
LOOKUP = "lookup"  # reads rows of a table (embedding, indexing): the table's fan_in is its rows
NORM = "norm"  # normalizes its input over the width; may carry a gain and a bias
SDPA = "sdpa"  # fused attention, scale in an argument
SOFTMAX = "softmax"
VIEW = "view"  # moves, copies, selects or places coordinates without mixing them
POINTWISE = "pointwise"  # coordinate by coordinate (also what torch tags pointwise)
IGNORED = "ignored"  # no tensor flows through (assertions, sizes)


@dataclass(frozen=True)
class OpSpec:
    kind: str
    family: str | None = None  # what a run-time call is counted as by the realization
    runtime: tuple = ()  # the Python callables that produce this op
    contracts: dict = field(default_factory=dict)  # weight slot -> fn(ndim) -> contracted dims
    partner: dict = field(default_factory=dict)  # weight slot -> slot of the activation it meets
    bias: tuple = ()  # slots added to the result (not contracted)
    gain: str | None = None  # slot of a normalization's gain
    query: str | None = None  # slot of q when the op contracts q with k
    scale: str | None = None  # slot of a multiplicative scale on the result (alpha, scale=)
    runtime_names: dict = field(default_factory=dict)  # callable -> its positional slot names, when not its schema's


def _last(ndim):
    return (ndim - 1,)


def _fixed(*dims):
    return lambda ndim: dims


def _second_last_or_first(ndim):
    return (0,) if ndim == 1 else (ndim - 2,)


def _conv_weight(transposed: bool):
    return lambda ndim: (0, *range(2, ndim)) if transposed else tuple(range(1, ndim))


def _norm(gain="weight", bias=("bias",), runtime=(), family=None):
    return OpSpec(NORM, family=family, runtime=runtime, gain=gain, bias=bias)


_T = torch.Tensor
_CONV = {name: OpSpec(CONTRACTION, "conv", (getattr(F, name),), {"weight": _conv_weight("transpose" in name)},
                      {"weight": "input"}, ("bias",))
         for name in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")}
_VIEWS = (
    "view", "reshape", "_unsafe_view", "t", "numpy_T", "mT", "mH", "adjoint", "transpose", "swapaxes", "swapdims",
    "permute", "unsqueeze", "squeeze", "expand", "expand_as", "contiguous", "clone", "detach", "alias",
    "lift_fresh_copy", "_to_copy", "to", "type_as", "slice", "select", "narrow", "split", "split_with_sizes",
    "chunk", "unbind", "flatten", "unflatten", "view_as", "reshape_as", "movedim",
    "dropout", "native_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
    "neg", "repeat", "tile", "repeat_interleave", "flip", "roll", "as_strided", "getitem",
    # placing a tensor into a larger one (a ViT's cls token, a fused weight built by cat)
    "cat", "concat", "concatenate", "stack", "hstack", "vstack", "index_put", "slice_scatter", "select_scatter",
    "constant_pad_nd", "pad",
    # resampling over finite (spatial) dims: each channel keeps its identity
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_linear1d", "upsample_bilinear2d",
    "upsample_bicubic2d", "upsample_trilinear3d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa",
    "_upsample_nearest_exact2d",
)

REGISTRY = {
    "linear": OpSpec(CONTRACTION, "linear", (F.linear,), {"weight": _fixed(1)}, {"weight": "input"}, ("bias",)),
    "matmul": OpSpec(
        CONTRACTION, "matmul",
        (torch.matmul, _T.matmul, _T.__matmul__, _T.__rmatmul__),
        {"input": _last, "other": _second_last_or_first}, {"input": "other", "other": "input"}, query="input",
        runtime_names={_T.__rmatmul__: ("other", "input")},
    ),
    "mm": OpSpec(CONTRACTION, "matmul", (torch.mm, _T.mm), {"input": _fixed(1), "mat2": _fixed(0)},
                 {"input": "mat2", "mat2": "input"}, query="input"),
    "bmm": OpSpec(CONTRACTION, "matmul", (torch.bmm, _T.bmm), {"input": _fixed(2), "mat2": _fixed(1)},
                  {"input": "mat2", "mat2": "input"}, query="input"),
    "addmm": OpSpec(CONTRACTION, "matmul", (torch.addmm, _T.addmm), {"mat1": _fixed(1), "mat2": _fixed(0)},
                    {"mat1": "mat2", "mat2": "mat1"}, ("input",), query="mat1", scale="alpha"),
    "baddbmm": OpSpec(CONTRACTION, "matmul", (torch.baddbmm, _T.baddbmm), {"batch1": _fixed(2), "batch2": _fixed(1)},
                      {"batch1": "batch2", "batch2": "batch1"}, ("input",), query="batch1", scale="alpha"),
    "einsum": OpSpec(CONTRACTION, "matmul", (torch.einsum,), query="tensors.0"),  # dims from the equation
    # stacked experts: input [tokens, in] x weight [experts, in, out] (transformers' fallback op, torch's own)
    "grouped_mm_fallback": OpSpec(CONTRACTION, None, (), {"weight": _second_last_or_first}, {"weight": "input"}),
    "_grouped_mm": OpSpec(CONTRACTION, None, (), {"mat2": _second_last_or_first}, {"mat2": "input"}),
    **_CONV,
    "convolution": OpSpec(CONTRACTION, "conv", (), {"weight": _conv_weight(False)}, {"weight": "input"}, ("bias",)),
    "embedding": OpSpec(LOOKUP, "embedding", (F.embedding,), {"weight": _fixed(0)}),
    "index": OpSpec(LOOKUP),  # table[ids]: the indexed dims, see `contracted_dims`
    "_unsafe_index": OpSpec(LOOKUP),
    "index_select": OpSpec(LOOKUP),
    "layer_norm": _norm(runtime=(F.layer_norm,), family="norm"),
    "native_layer_norm": _norm(),
    "rms_norm": _norm(bias=(), runtime=(F.rms_norm,), family="norm"),
    "_fused_rms_norm": _norm(bias=()),
    "group_norm": _norm(runtime=(F.group_norm,), family="norm"),
    "native_group_norm": _norm(),
    "batch_norm": _norm(),
    "native_batch_norm": _norm(),
    "_native_batch_norm_legit": _norm(),
    "_native_batch_norm_legit_no_training": _norm(),
    "instance_norm": _norm(),
    # no kind (to the analysis a reduction is an op it does not know); registered so that the realization
    # counts its calls: a sum of an elementwise product q * k is an attention site (passes/attention.py)
    "sum": OpSpec(None, "sum", (torch.sum, _T.sum)),
    "scaled_dot_product_attention": OpSpec(SDPA, "sdpa", (F.scaled_dot_product_attention,), query="query",
                                           scale="scale"),
    **dict.fromkeys(("softmax", "_softmax", "_safe_softmax"), OpSpec(SOFTMAX)),
    **dict.fromkeys(_VIEWS, OpSpec(VIEW)),
    # pointwise, though some overloads carry no pointwise tag (masked_fill.Tensor, masked_fill_)
    **dict.fromkeys(("masked_fill", "triu", "tril"), OpSpec(POINTWISE)),
    **dict.fromkeys(("sym_size", "_assert_tensor_metadata", "_assert_scalar", "sym_numel", "output",
                     "_set_grad_enabled", "_enter_autocast", "_exit_autocast"), OpSpec(IGNORED)),
    # read only their input's shape, dtype and device (`A_log.new_zeros(...)`): no value flows, no use
    **dict.fromkeys(("new_zeros", "new_empty", "new_full", "new_ones", "new_empty_strided", "zeros_like",
                     "empty_like", "ones_like", "full_like", "rand_like", "randn_like", "randint_like"),
                    OpSpec(IGNORED)),
}
# Python functions that make family calls of their own (the interception stays active inside).
COMPOSITES = {F.multi_head_attention_forward}
RUNTIME = {func: name for name, spec in REGISTRY.items() for func in spec.runtime}
RUNTIME_NAMES: dict = {}  # filled below, once the binding helpers exist
SCALAR_ARITH = {"mul", "div"}  # by a constant: keeps a tensor's identity, may carry a width-dependent constant
# roots of a variance or norm, and their reciprocals: a normalization written out by hand
NORMALIZING = {"rsqrt", "sqrt", "var", "std", "var_mean", "std_mean", "linalg_vector_norm", "norm", "reciprocal"}
RECIPROCALS = {"rsqrt", "reciprocal"}  # grow exactly when their input shrinks
# views that place a tensor into another (q written into a larger tensor): not a view of it alone
PLACING = {"index_put", "slice_scatter", "select_scatter", "constant_pad_nd", "pad"}  # q into another tensor
# views that join several tensors into one (a fused weight built by cat; bias_k appended to the keys)
JOINING = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "index_put", "slice_scatter",
           "select_scatter"}
# Ops on an attention-logit path that keep the logits a linear function of q·k (their constant
# factors are the model's scale); past any other op (tanh soft-capping, clamps) the scale is not read on.
LOGIT_AFFINE = {"add", "sub", "mul", "div", "masked_fill", "where", "dropout", "native_dropout", "_to_copy", "to",
                "type_as", "float"}
# argument slots read only for their dtype or shape: no value of that tensor flows through them
METADATA_SLOTS = dict.fromkeys(("type_as", "expand_as", "view_as", "reshape_as"), ("other",))
# How an op's result scales when a tensor flowing into it is multiplied by a common factor s: its
# degree in s (passes/contractions.py asks whether the size of a product of two activations cancels).
# "alike": every scaled input has one degree and the result has it (views, sums, adds, clamps; a plain
# number added, an eps, is taken as negligible); "product": degrees add (mul, a contraction);
# "quotient": the input's minus the other's; a number: that multiple of the input's degree.
DEGREE_ALIKE = {"add", "sub", "where", "masked_fill", "clamp", "clamp_min", "clamp_max", "maximum", "minimum",
                "abs", "sum", "mean", "cumsum", "amax", "amin", "max", "min", "linalg_vector_norm", "norm", "std",
                "triu", "tril"}
ZEROS = {"zeros", "new_zeros", "zeros_like"}  # a tensor of zeros, whatever it is multiplied with
SUMMING = {"sum", "mean"}  # over given dims: with an elementwise product inside, a contraction written out
# the larger of its operands: one growing in s against a floor that does not (xLSTM's max(|n|, exp(-m))) has its degree
DEGREE_LARGER = {"maximum", "clamp_min"}
# what does not change when its input is multiplied by a positive factor (LSH hashing's argmax of random rotations)
SCALE_INVARIANT = {"argmax", "argmin", "argsort"}
DEGREE_FACTOR = {"reciprocal": -1.0, "rsqrt": -0.5, "sqrt": 0.5, "var": 2.0, "square": 2.0}
# non-linear functions of an attention score (attention whose logits meet no softmax op: exp over a
# logsumexp, sigmoid or ReLU scores): what q·k reaches when its scale matters
SCORE_FUNCTIONS = {"exp", "sigmoid", "relu", "gelu", "silu", "elu", "tanh", "softplus", "logsumexp", "amax", "max",
                   "log_sigmoid", "hardtanh", "leaky_relu", "relu6", "special_expit", "exp2"}
# scatter reductions taking a maximum per group (torch_geometric's softmax over each node's edges
# subtracts it, as a softmax subtracts amax): reduce slot -> the values that make one a score function
SCATTER_MAXIMA = {"scatter_reduce": {"amax", "amin"}, "scatter_reduce_": {"amax", "amin"}}


def is_score_function(node: fx.Node) -> bool:
    name = op_name(node)
    return name in SCORE_FUNCTIONS or node_slots(node).get("reduce") in SCATTER_MAXIMA.get(name, ())


# nn.Linear classes whose forward is F.linear(input, weight, bias) and nothing else (hooks on the
# module's input scale exactly that call; the weight attribute is the one the call reads)
LINEAR_MODULES = {"torch.nn.modules.linear.Linear", "torch.nn.modules.linear.NonDynamicallyQuantizableLinear"}


def op_name(node: fx.Node) -> str:
    """'linear' for aten.linear.default, 'add' for aten.add_.Tensor, 'getitem', '' for non-calls."""
    if node.op != "call_function":
        return node.op if node.op == "output" else ""
    if node.target is operator.getitem:
        return "getitem"
    schema = getattr(node.target, "_schema", None)
    name = schema.name.split("::")[-1] if schema is not None else getattr(node.target, "__name__", str(node.target))
    return name[:-1] if name.endswith("_") and not name.startswith("_") and name[:-1] in _INPLACE_BASES else name


def spec(node_or_name) -> OpSpec | None:
    name = node_or_name if isinstance(node_or_name, str) else op_name(node_or_name)
    return REGISTRY.get(name)


def kind(node: fx.Node) -> str | None:
    found = spec(node)
    if found is not None:
        return found.kind
    return POINTWISE if is_pointwise(node) else None


def family(name: str) -> str | None:
    found = REGISTRY.get(name)
    return found.family if found else None


def is_pointwise(node: fx.Node) -> bool:
    return torch.Tag.pointwise in getattr(node.target, "tags", ())


# ---------------------------------------------------------------- binding arguments by schema

def node_slots(node: fx.Node) -> dict:
    """{slot: value} of a captured op's arguments by its schema ("self" is called "input")."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {str(i): a for i, a in enumerate(node.args)} | dict(node.kwargs)
    names = [_canonical(a.name) for a in schema.arguments]
    slots = dict(zip(names, node.args))
    slots.update({_canonical(k): v for k, v in node.kwargs.items()})
    for i, tensor in enumerate(slots.get("tensors") or ()) if isinstance(slots.get("tensors"), (list, tuple)) else ():
        slots[f"tensors.{i}"] = tensor
    return slots


def slots_of(node: fx.Node, source: fx.Node) -> list:
    """The slots at which `source` feeds `node`."""
    return [slot for slot, value in node_slots(node).items() if value is source]


def node_location(node: fx.Node, slot: str) -> tuple:
    """Where a slot sits in a captured node: ("args", i), ("kwargs", key) or ("list", i, j)."""
    return _location(node.target, node.args, node.kwargs, slot, _node_names(node))


def call_location(func, args, kwargs, slot: str) -> tuple | None:
    """Where a slot sits in a run-time call `func(*args, **kwargs)`, or None if it is absent."""
    names = RUNTIME_NAMES.get(func)  # read at import, so torch.compile traces this without a graph break
    return _location(func, args, kwargs, slot, names) if names is not None else None


def read(location: tuple, args, kwargs):
    if location[0] == "args":
        return args[location[1]]
    if location[0] == "kwargs":
        return kwargs[location[1]]
    return args[location[1]][location[2]]


def replace(location: tuple, args, kwargs, value) -> tuple:
    """(args, kwargs) with the argument at `location` replaced."""
    args, kwargs = list(args), dict(kwargs)
    if location[0] == "args":
        args[location[1]] = value
    elif location[0] == "kwargs":
        kwargs[location[1]] = value
    else:
        items = list(args[location[1]])
        items[location[2]] = value
        args[location[1]] = type(args[location[1]])(items) if isinstance(args[location[1]], tuple) else items
    return args, kwargs


def _location(target, args, kwargs, slot: str, names: list):
    head, _, index = slot.partition(".")
    if index:  # an operand of a list argument (einsum's tensors), or of *operands at run time
        position = names.index(head) if head in names else 1
        if position < len(args) and isinstance(args[position], (list, tuple)):
            return ("list", position, int(index))
        return ("args", position + int(index))
    for key in kwargs:
        if _canonical(key) == slot:
            return ("kwargs", key)
    if slot in names and names.index(slot) < len(args):
        return ("args", names.index(slot))
    return None


def _node_names(node: fx.Node) -> list:
    schema = getattr(node.target, "_schema", None)
    return [_canonical(a.name) for a in schema.arguments] if schema is not None else []


def _positional_names(func, name: str) -> tuple:
    """From the callable's own signature or schema ("self" and "input" are one slot)."""
    override = REGISTRY[name].runtime_names.get(func)
    if override:
        return tuple(override)
    if name == "einsum":
        return ("equation", "tensors")
    for signature in _signatures(func):
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return tuple(_canonical(p.name) for p in signature.parameters.values() if p.kind in kinds)
    raise TypeError(f"no signature for {func}")  # a registry entry without a bindable callable


def _signatures(func) -> list:
    found = None
    try:
        found = get_signature_for_torch_op(func)
    except Exception:  # not a torch.* builtin
        found = None
    name = getattr(func, "__name__", "")
    if not found and getattr(torch.Tensor, name, None) is func:  # Tensor.mm binds like torch.mm(input, mat2)
        torch_twin = getattr(torch, name.strip("_"), None)
        found = get_signature_for_torch_op(torch_twin) if torch_twin is not None else None
    if not found:
        found = [inspect.signature(func)]
    return found


def _canonical(name: str) -> str:
    return "input" if name == "self" else name


# ---------------------------------------------------------------- what a contraction sums over

def contracted_dims(node: fx.Node, slot: str, ndim: int):
    """Dims of the operand at `slot` that `node` sums over as a weight, or None."""
    name = op_name(node)
    found = REGISTRY.get(name)
    if name == "einsum" and slot.startswith("tensors."):
        return _einsum_contracted(node_slots(node)["equation"], int(slot.split(".")[1]), ndim)
    if name in ("index", "_unsafe_index") and slot == "input":
        return tuple(i for i, ix in enumerate(node_slots(node)["indices"]) if ix is not None) or None
    if name == "index_select" and slot == "input":
        return (node_slots(node)["dim"] % ndim,)
    if found is None or slot not in found.contracts:
        return None
    return tuple(found.contracts[slot](ndim))


def activation_slot(node: fx.Node, weight_slot: str) -> str | None:
    """The slot of the activation a weight at `weight_slot` is contracted with."""
    name = op_name(node)
    if name == "einsum":
        count = len(node_slots(node)["tensors"])
        return f"tensors.{1 - int(weight_slot.split('.')[1])}" if count == 2 else None
    found = REGISTRY.get(name)
    return found.partner.get(weight_slot) if found else None


def infer_contraction(node: fx.Node, slot: str, shapes: dict) -> tuple | None:
    """For an op with no entry: the dims of the weight at `slot` that match a dim of another
    tensor operand and appear in no output dim, at every width (the only unambiguous case)."""
    weight, others, output = shapes["operand"], shapes["others"], shapes["output"]
    if not others or output is None:
        return None
    sizes = lambda shape, d: tuple(shape.at(w)[d] for w in ("base", "delta", "target"))  # noqa: E731
    out_sizes = {sizes(output, d) for d in range(len(output.base))}
    other_sizes = {sizes(o, d) for o in others for d in range(len(o.base))}
    dims = tuple(d for d in range(len(weight.base))
                 if sizes(weight, d) in other_sizes and sizes(weight, d) not in out_sizes)
    return dims or None


def _einsum_contracted(equation: str, index: int, ndim: int):
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if not arrow:
        letters = [c for c in lhs if c.isalpha()]
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    head, ellipsis, tail = inputs[index].partition("...")
    dims = {c: i for i, c in enumerate(head)}
    if ellipsis:
        dims.update({c: ndim - len(tail) + i for i, c in enumerate(tail)})
    return tuple(sorted(d for c, d in dims.items() if c not in rhs)) or None


# in-place spellings (add_, masked_fill_, index_put_) are the out-of-place op to the analysis
_INPLACE_BASES = {"add", "sub", "mul", "div", "masked_fill", "clamp", "clamp_min", "clamp_max", "tanh", "index_put",
                  "copy", "fill", "where", "exp", "neg", "relu", "sigmoid", "t", "transpose", "unsqueeze", "squeeze",
                  "maximum", "minimum", "pow", "silu", "gelu", "masked_scatter", "scatter"}

RUNTIME_NAMES.update({func: _positional_names(func, name) for func, name in RUNTIME.items()})

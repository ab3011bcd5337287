"""The op registry: everything the passes and the realization know about an op, one entry per op,
and the kinds of op (sets of names) the passes ask about; passes/ops.py reads it for them.

Reads and writes nothing. Each `OpSpec` says what an op is to muP: which argument slots hold a
weight and which of their dims it contracts, which slot is the activation a weight meets, the
bias and gain slots, where a multiplicative scale lives, which slot is q when the op is a q·k
contraction, how the op behaves on an attention-logit path, and which Python callables run it
(the realization intercepts those). Slots are argument names as the op's schema spells them
(an einsum operand is "tensors.I"), and arguments are bound *by schema* both in the captured
graph and at run time, so `alibi.baddbmm(batch1=q, batch2=k)` and `torch.baddbmm(alibi, q, k)`
are the same call. Adding an op is one entry in `REGISTRY`
(and its name in the sets it belongs to); no other file names an op (tests/test_op_facts.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

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
    rows: tuple | None = None  # a projection: (its 2-D weight's slot, the weight dim that is the output's last dim)


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
    "linear": OpSpec(CONTRACTION, "linear", (F.linear,), {"weight": _fixed(1)}, {"weight": "input"}, ("bias",),
                     rows=("weight", 0)),
    "matmul": OpSpec(
        CONTRACTION, "matmul",
        (torch.matmul, _T.matmul, _T.__matmul__, _T.__rmatmul__),
        {"input": _last, "other": _second_last_or_first}, {"input": "other", "other": "input"}, query="input",
        runtime_names={_T.__rmatmul__: ("other", "input")}, rows=("other", 1),
    ),
    "mm": OpSpec(CONTRACTION, "matmul", (torch.mm, _T.mm), {"input": _fixed(1), "mat2": _fixed(0)},
                 {"input": "mat2", "mat2": "input"}, query="input", rows=("mat2", 1)),
    "bmm": OpSpec(CONTRACTION, "matmul", (torch.bmm, _T.bmm), {"input": _fixed(2), "mat2": _fixed(1)},
                  {"input": "mat2", "mat2": "input"}, query="input"),
    "addmm": OpSpec(CONTRACTION, "matmul", (torch.addmm, _T.addmm), {"mat1": _fixed(1), "mat2": _fixed(0)},
                    {"mat1": "mat2", "mat2": "mat1"}, ("input",), query="mat1", scale="alpha",
                    rows=("mat2", 1)),
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
    # counted by the realization too: a residual branch's depth multiplier is an edit of its add
    "add": OpSpec(POINTWISE, "add", (torch.add, _T.add, _T.add_, _T.__add__, _T.__radd__, _T.__iadd__),
                  runtime_names={_T.__radd__: ("other", "input"), _T.__iadd__: ("input", "other")}),
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
# views that put several tensors side by side (a fused weight built by cat; bias_k appended to the keys)
CONCATENATING = {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}
# views that join several tensors into one: side by side, or one written into another
JOINING = CONCATENATING | {"index_put", "slice_scatter", "select_scatter"}
# views that cut one tensor into pieces (a fused qkv projection split into q, k and v)
SPLITTING = {"split", "split_with_sizes", "chunk"}
# views whose result holds the same elements in the same places (element ids go through unchanged)
ID_PRESERVING = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "neg"}
CASTS = {"_to_copy", "to"}  # a copy (strides kept) that changes only the dtype or device
ADDITIVE = {"add", "sub"}
# ops whose outputs past the first are auxiliary (a dropout mask, a norm's mean and rstd): not the value
AUXILIARY_OUTPUTS = {"native_dropout", "native_layer_norm", "_fused_rms_norm", "native_group_norm", "native_batch_norm",
                     "_native_batch_norm_legit", "_native_batch_norm_legit_no_training"}
INDEXING = {"index", "_unsafe_index"}  # table[ids]: the indexed dims are the ones looked up
SHAPE_READS = {"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_numel"}  # read a tensor's size, not its values
# checks export adds on values the trace assumed (a branch taken, a size's range): no computation
RUNTIME_CHECKS = {"_assert_scalar", "_assert_async", "sym_constrain_range_for_size", "sym_constrain_range"}
SQUASHING = {"tanh", "sigmoid"}  # bounded activations, which saturate when pre-activations grow
# reductions whose result grows with the reduced dim's size (a norm written out: sqrt(sum(x^2)))
SIZE_GROWING_REDUCTIONS = {"sum", "linalg_vector_norm", "norm"}
OPERATOR_SPELLING = {"matmul": "@"}  # ops written as an operator in Python source, where the name finds no line
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


# nn.Linear classes whose forward is F.linear(input, weight, bias) and nothing else (hooks on the
# module's input scale exactly that call; the weight attribute is the one the call reads)
LINEAR_MODULES = {"torch.nn.modules.linear.Linear", "torch.nn.modules.linear.NonDynamicallyQuantizableLinear"}


# in-place spellings (add_, masked_fill_, index_put_) are the out-of-place op to the analysis
INPLACE_BASES = {"add", "sub", "mul", "div", "masked_fill", "clamp", "clamp_min", "clamp_max", "tanh", "index_put",
                  "copy", "fill", "where", "exp", "neg", "relu", "sigmoid", "t", "transpose", "unsqueeze", "squeeze",
                  "maximum", "minimum", "pow", "silu", "gelu", "masked_scatter", "scatter"}

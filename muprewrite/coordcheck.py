"""The coordinate check of Tensor Programs V (§D.1, Fig. 5), on the captured graph.

For each width, the model is captured as an FX graph (the same capture the compiler uses) and
trained for a few steps on one fixed batch, twice:

* **sp** — the model as the factory builds it, with a plain optimizer (one LR for everything);
* **mup** — the graph edited by `rewrite` with the plan `mupify` makes for that width, the
  plan's init (the weights `mupify(...).model` would have) and the plan's optimizer groups.
  With `parametrization="sp"` (or another table) this side is that parametrization instead.
  The model is analysed once (captured at base, delta and the largest width) and every width's
  plan made from that analysis (`Analysis.plan_for`), the same plan `mupify` would make.

At every step t = 0..steps (t = 0 is the initial model; record t is a forward pass after t
updates) an `fx.Interpreter` records mean |x| of every floating-point tensor a `call_function`
node produces: functional ops included, a module called twice is two nodes, the mean taken over
the finite entries (a mask's -inf is not a size) and averaged over `seeds` initialisations.
A tensor whose only use is the model's own multiplication or division by a constant (q @ k^T
before `/ sqrt(d)`) is recorded but not judged: the scaled tensor is the activation, and it is.

Per node, step and side, the least-squares slope of log(mean |x|) against log(width) says how
the activation scales with width. muP is right when, once training has started (t >= 1), no
activation grows with width: the check PASSES when, for every judged node of the rewritten side,
the slope pooled over steps 1..steps and the seeds (one common slope, an intercept per seed and
step; `coordcheck_result.pooled_slope`) is at most `threshold`. The verdict line gives the worst
node's pooled slope with its 95% interval, its module and the step where it grows most. Under SP the logits (and the attention logits, where the
model materialises them) grow with width after one step, which is what the check catches.

    result = coordcheck(make_model, base=32, multipliers=(1, 2, 4, 8))
    result.passed, result.failing      # the verdict and the nodes that grow, worst first
    rich.print(result.table()); result.plot("coordcheck.png"); result.to_json()

Loss (on the fixed batch, see `default_loss`): next-token cross-entropy when the model maps
integer tokens (B, T) to logits (B, T, V); otherwise cross-entropy of the last dim against
fixed random class targets; for a 0-d or 1-d output the mean of its square. Dropout masks are
the same at every step (the RNG is reseeded before each forward).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import fx
from torch.utils import _pytree as pytree

from .coordcheck_result import SIDES, CoordCheckResult, make_trace
from .errors import MuRewriteError
from .passes import ops
from .passes.capture import build_model, export_model, inputs_at, split_inputs, to_device
from .passes.dims import _innermost_module
from .optimizers import NAMES
from .passes.emit import build_optimizer
from .passes.rewrite import rewrite_graph

DEFAULT_MULTIPLIERS = (1, 2, 4, 8, 16)
DEFAULT_STEPS = 4
DEFAULT_LR = {name: family.coordcheck_lr for name, family in NAMES.items()}
# The verdict: a node grows when its slope of log mean|x| vs log width, pooled over steps 1..T and the
# seeds, exceeds DEFAULT_THRESHOLD (growth by 16**0.125 = 1.4x over the default 16x range of widths).
# Calibrated by benchmarks/coordcheck_calibration.py (results/coordcheck_calibration.md): with these
# defaults (3 seeds, 4 Adam steps at 1e-2, base x 1..16), 20 disjoint runs each of the rewrites of every
# bundled example, of hf llama and gpt2, and of the `mup` package's own twins of the GPTs reach at most
# +0.093 (a CNN with a 10-class readout on a batch of 4; the twins +0.087): 0 false FAILs in 260; the
# mildest mistake (SP attention scale with materialised logits) at least +0.138 (20 of 20 caught), the
# others +0.63 or more. The old verdict (the worst per-step slope) false-FAILed the mup twins in 20 of 20.
DEFAULT_THRESHOLD = 0.125
DEFAULT_SEEDS = 3
ADAM_EPS = 1e-8  # torch's default
OPTIMIZERS = tuple(NAMES)


def coordcheck(factory, *, base: int, widths=None, multipliers=DEFAULT_MULTIPLIERS, delta: int | None = None,
               example_inputs=None, steps: int = DEFAULT_STEPS, optimizer: str = "adam", lr: float | None = None,
               weight_decay: float = 0.0, threshold: float = DEFAULT_THRESHOLD, parametrization: str = "mup",
               options: dict | None = None, compare_sp: bool = True, seed: int = 0, seeds: int = DEFAULT_SEEDS,
               device=None, loss_fn=None, plan_transform=None, progress: bool = False,
               name: str = "", reuse_analysis: bool = True) -> CoordCheckResult:
    """Run the coordinate check of `factory(width) -> nn.Module`.

    widths: explicit widths, else `base * m` for m in `multipliers`. Each width's muP side is
    the plan of `mupify(factory, base=base, delta=delta, target=width, ...)` applied to the
    captured graph (`rewrite`) and to `factory(width)` for its init (what `mupify` returns as
    `result.model`); the SP side (skipped with `compare_sp=False`) is `factory(width)` with the
    same seed. mean |x| is averaged over `seeds` initialisations (seed, seed + 1, ...) before
    the fit. `loss_fn(outputs, inputs) -> scalar` replaces `default_loss`;
    `plan_transform(plan) -> plan` edits each width's plan before it is applied (to see what a
    wrong rule does). `reuse_analysis=False` runs `mupify` (its capture included) for every
    width instead of planning each from one analysis: the same plans, slower.
    """
    from .api import apply_plan  # api imports the passes; keep this module importable on its own
    from .pipeline import guess_inputs

    widths = _check_widths(base, widths, multipliers)
    if optimizer not in OPTIMIZERS:
        raise MuRewriteError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not isinstance(steps, int) or steps < 1:
        raise MuRewriteError(f"steps must be an integer >= 1 (the verdict reads steps 1..steps), got {steps!r}")
    if not isinstance(seeds, int) or seeds < 1:
        raise MuRewriteError(f"seeds must be an integer >= 1, got {seeds!r}")
    lr = DEFAULT_LR[optimizer] if lr is None else float(lr)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if example_inputs is None:
        example_inputs = guess_inputs(factory, base)
    sides = SIDES if compare_sp else ("mup",)
    seed_list = [seed + k for k in range(seeds)]
    raw = {side: {} for side in sides}  # side -> node -> [step][width] size
    per_seed = {side: {} for side in sides}  # side -> node -> [seed][step][width] size
    meta = {side: {} for side in sides}  # side -> node -> (op, module, module_type, judged)
    losses = {side: [[None] * len(widths) for _ in range(steps + 1)] for side in sides}
    loss_name = None
    bar = Progress(TextColumn("coordinate check {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True, disable=not progress)
    rng_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with bar, torch.random.fork_rng(devices=rng_devices):
        task = bar.add_task("", total=len(widths) * len(sides) * seeds)
        if "mup" in sides:
            bar.update(task, description="analysing the model")
            planner = _planner(factory, base, delta, widths, example_inputs, parametrization, options, reuse_analysis)
        for i, width in enumerate(widths):
            bar.update(task, description=f"width {width}: capturing")
            torch.manual_seed(seed)
            inputs = to_device(inputs_at(example_inputs, width), device)
            graph = export_model(build_model(factory, width).to(device), inputs, device).module()
            plan = None
            if "mup" in sides:
                bar.update(task, description=f"width {width}: planning")
                plan = planner(width)
                plan = plan_transform(plan) if plan_transform is not None else plan
            for side in sides:
                runs = []
                for run_seed in seed_list:
                    bar.update(task, description=f"width {width}: {side if side == 'sp' else parametrization}"
                                                 f"{f', seed {run_seed}' if seeds > 1 else ''}")
                    torch.manual_seed(run_seed)
                    model = build_model(factory, width)
                    if side == "sp":  # one LR for everything (muon: Muon for the same matrices)
                        gm = _copy(graph)
                        gm.load_state_dict(model.state_dict())
                        side_plan = _as_sp(plan)
                    else:  # = mupify(...).model, whose init the plan decides, as a rewritten graph
                        model = apply_plan(model, plan, reinit=True, inplace=True)
                        gm = rewrite_graph(_copy(graph), plan)
                        gm.load_state_dict(model.state_dict())
                        _check_names(gm, plan)
                        side_plan = plan
                    # the plan may scale eps per tensor
                    opt = build_optimizer(gm, side_plan, optimizer, lr=lr, weight_decay=weight_decay, eps=ADAM_EPS)
                    runs.append(_train_and_record(gm, inputs, opt, steps, run_seed, loss_fn))
                    loss_name = runs[-1][2]
                    bar.advance(task)
                for node, info in _node_info(gm).items():
                    meta[side].setdefault(node, info)
                for t in range(steps + 1):
                    for node in runs[0][0][t]:
                        row = raw[side].setdefault(node, [[None] * len(widths) for _ in range(steps + 1)])
                        row[t][i] = _average([run[0][t].get(node) for run in runs])
                        seed_rows = per_seed[side].setdefault(
                            node, [[[None] * len(widths) for _ in range(steps + 1)] for _ in runs])
                        for k, run in enumerate(runs):
                            seed_rows[k][t][i] = run[0][t].get(node)
                    losses[side][t][i] = _average([run[1][t] for run in runs])
    traces = {side: {node: make_trace(node, widths, rows, *meta[side].get(node, ("", "", "", True)),
                                      seed_sizes=per_seed[side][node])
                     for node, rows in raw[side].items()} for side in sides}
    return CoordCheckResult(widths=widths, base_width=base, steps=steps, optimizer=optimizer, lr=lr,
                            threshold=threshold, parametrization=parametrization, loss=loss_name or "",
                            device=str(device), traces=traces, losses=losses, model=name, seeds=seed_list)


def _planner(factory, base, delta, widths, example_inputs, parametrization, options, reuse_analysis: bool):
    """width -> the plan `mupify(factory, base=base, delta=delta, target=width, ...)` makes: from one
    analysis captured at base, delta and the largest width, or (`reuse_analysis=False`) by mupify.
    Every block is analysed (share_blocks=False): the plan edits this check's own capture of every
    block, so it must name every block's graph nodes."""
    from .api import analyse_widths, mupify

    if not reuse_analysis:
        return lambda width: mupify(factory, base=base, delta=delta, target=width, example_inputs=example_inputs,
                                    parametrization=parametrization, options=options, verify_width=False,
                                    materialize=False, share_blocks=False).plan
    analysis = analyse_widths(factory, base=base, delta=delta, target=max(widths), example_inputs=example_inputs,
                              share_blocks=False)
    return lambda width: analysis.plan_for(width, parametrization, options)


def _average(values):
    """Mean over seeds; None when some seed lacks the node."""
    return None if any(v is None for v in values) else sum(values) / len(values)


def _check_widths(base, widths, multipliers) -> list:
    if not isinstance(base, int) or base <= 0:
        raise MuRewriteError(f"base width must be a positive integer, got {base!r}")
    if widths is None:
        if not multipliers or any(not isinstance(m, (int, float)) or m <= 0 for m in multipliers):
            raise MuRewriteError(f"multipliers must be positive numbers, got {multipliers!r}")
        widths = [base * m for m in multipliers]
        if any(w != int(w) for w in widths):
            raise MuRewriteError(f"base {base} x multipliers {list(multipliers)} are not all whole widths")
    widths = sorted({int(w) for w in widths})
    if any(w <= 0 for w in widths):
        raise MuRewriteError(f"widths must be positive integers, got {widths}")
    if len(widths) < 2:
        raise MuRewriteError(f"a slope needs at least two different widths, got {widths}; e.g. --multipliers 1,2,4,8")
    return widths


def _copy(graph):
    """A deep copy with its own parameters (`ExportedProgram.module()` shares the model's)."""
    with warnings.catch_warnings():  # pytree's LeafSpec deprecation, from copying the in/out specs
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(graph)


def _check_names(gm, plan) -> None:
    """The plan's LR multipliers are looked up by parameter name: every name must be in the plan."""
    missing = [n for n, p in gm.named_parameters() if p.requires_grad and plan.param(n) is None]
    if missing:
        raise MuRewriteError(f"the captured graph has parameters the plan does not know: {', '.join(missing[:3])}; "
                             "please report this model (run with --debug)")


def _node_info(gm) -> dict:
    """node name -> (op, module path, module type, judged).

    Nodes the rewrite inserted take their user's module. A node whose every use is the model's
    own multiplication or division by a constant (q @ k^T before `/ sqrt(d)`) is not judged:
    it is not an activation, the scaled tensor is (and is judged). Nor is a reciprocal (a
    hand-written norm's rsqrt): it grows exactly when its input shrinks, which is not a blow-up.
    """
    info = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        op = ops.op_name(node) or getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if _inserted(node) and node.users:
            module, module_type = _innermost_module(next(iter(node.users)))
            op = f"{op} (muprewrite edit)"
        else:
            module, module_type = _innermost_module(node)
        judged = ops.op_name(node) not in ops.RECIPROCALS and (
            not node.users or not all(_scales_by_constant(user, node) for user in node.users))
        info[node.name] = (op, module, module_type, judged)
    return info


def _inserted(node) -> bool:
    """Nodes `rewrite` inserts carry no export metadata."""
    return "nn_module_stack" not in node.meta and "val" not in node.meta


def _scales_by_constant(user, node) -> bool:
    """`user` is the model's own `node * c`, `c * node` or `node / c` with a Python number c."""
    name = ops.op_name(user) if user.op == "call_function" else ""
    if name not in ops.SCALAR_ARITH or _inserted(user) or len(user.args) != 2:
        return False
    slots = ops.node_slots(user)
    number = lambda slot: isinstance(slots.get(slot), (int, float))  # noqa: E731
    if name == "div":
        return slots.get("input") is node and number("other") and slots.get("rounding_mode") is None
    return (slots.get("input") is node and number("other")) or (slots.get("other") is node and number("input"))


class _Recorder(fx.Interpreter):
    """Runs the graph node by node and keeps mean |x| of every floating tensor a call_function makes."""

    def __init__(self, module):
        super().__init__(module)
        self.sizes = {}

    def run_node(self, node):
        out = super().run_node(node)
        if node.op == "call_function" and isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
            self.sizes[node.name] = mean_abs(out)
        return out


def mean_abs(x: torch.Tensor) -> torch.Tensor:
    """mean |x| over the finite entries (a mask's -inf is not a size); NaN when none is finite."""
    x = x.detach().abs().float()
    finite = torch.isfinite(x)
    return torch.where(finite, x, 0.0).sum() / finite.sum()


def _forward(gm, inputs, seed):
    """One forward through the recorder; dropout masks are the same at every step (fixed seed)."""
    args, kwargs = split_inputs(inputs)
    flat, spec = pytree.tree_flatten((args, kwargs))
    if hasattr(gm, "_in_spec") and spec != gm._in_spec:
        kwargs = {key: kwargs[key] for key in gm._in_spec.children_specs[1].context}
        flat, _ = pytree.tree_flatten((args, kwargs))
    recorder = _Recorder(gm)
    torch.manual_seed(seed + 1)
    out = recorder.run(*flat, enable_io_processing=False)
    out = gm.graph.process_outputs(out)
    names = list(recorder.sizes)
    values = torch.stack(list(recorder.sizes.values())).tolist() if names else []
    return out, dict(zip(names, values))


def _as_sp(plan):
    """The plan's tensors, each with every optimizer multiplier 1: a plain optimizer of its family."""
    def plain(p):
        ones = {family: 1.0 for family in p.lr_mult}
        return dataclasses.replace(p, lr_mult=ones, wd_mult=dict(ones), eps_mult=1.0, trainable=True)
    return dataclasses.replace(plan, parameters={n: plain(p) for n, p in plan.parameters.items()})


def _train_and_record(gm, inputs, opt, steps, seed, loss_fn):
    gm.train()
    records, losses, name = [], [], None
    for t in range(steps + 1):
        with torch.enable_grad():
            out, sizes = _forward(gm, inputs, seed)
            if loss_fn is not None:
                loss, name = loss_fn(out, inputs), "custom"
            else:
                loss, name = default_loss(out, inputs, seed)
        records.append(sizes)
        losses.append(float(loss.detach()))
        if t == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return records, losses, name


def default_loss(outputs, inputs, seed: int = 0) -> tuple:
    """(loss, description) for the first floating-point output.

    * logits (..., V) of integer token inputs (...): next-token cross-entropy, targets = the
      tokens rolled by one along the last dim (the fixed batch is its own target);
    * another output with 2+ dims: cross-entropy over its last dim against fixed random classes;
    * a 0-d or 1-d output: mean of its square.
    """
    leaves = [x for x in pytree.tree_leaves(outputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    if not leaves:
        raise MuRewriteError("the model returns no floating-point tensor to train on; pass loss_fn=...")
    out = leaves[0]
    tokens = [x for x in pytree.tree_leaves(inputs) if isinstance(x, torch.Tensor) and not x.is_floating_point()
              and x.dtype != torch.bool and out.dim() >= 2 and tuple(x.shape) == tuple(out.shape[:-1])]
    if tokens and int(tokens[0].max()) < out.shape[-1] and int(tokens[0].min()) >= 0:
        targets = tokens[0].roll(-1, dims=-1)
        return F.cross_entropy(out.flatten(0, -2).float(), targets.flatten()), "next-token cross-entropy"
    if out.dim() >= 2:
        generator = torch.Generator().manual_seed(seed + 2)
        targets = torch.randint(0, out.shape[-1], tuple(out.shape[:-1]), generator=generator).to(out.device)
        return (F.cross_entropy(out.flatten(0, -2).float(), targets.flatten()),
                "cross-entropy against fixed random classes")
    return out.float().pow(2).mean(), "mean of output squared"

"""Every Hugging Face model type through muprewrite: does the plan come out right?

For every model type of transformers' causal LM, masked LM, seq2seq LM and image classification
auto mappings, in a fresh subprocess with a timeout, the factory `muprewrite.hf.factory(TYPE)`
(the type's default config made small, target hidden 256) is compiled with

    base, delta, target = hf.widths(factory)        # 64, 128, 256
    muprewrite.mupify(factory, base=base, delta=delta, target=target,
                      example_inputs=hf.example_inputs(factory), materialize=False)   # verification on

and the plan is checked: (a) no parameter or use with role "unclassified"; (b) every 2-D
parameter with both dims infinite is "hidden" with Adam LR multiplier 1/m (m: its use's
fan_in_mult); (c) the readout has a use with role "output": the readout is the last weight
product (a linear, matmul, einsum or convolution with a parameter, or a tensor made of parameters)
with an infinite fan-in on the data path of the logits, found by running the model at base and
delta width (the LM head, a classifier, a tied input embedding; where the last layer's fan-in is
fixed, as RemBERT's output_embedding_size, the layer before it); (d) one "attention_scale" edit
per attention module (a module that runs a 4-D softmax, scaled_dot_product_attention or
multi_head_attention_forward itself, found by running the model at base and delta width) when
d_head grows, none when heads grow.

Outcomes: ok (plan made, every check passes), wrong (some check fails), error (a MuRewriteError:
its one-line message), crash (any other exception, or the timeout), build (not counted against
muprewrite; its stage says where: "factory", hf.factory raised; "meta build", the model could not
be built at base, delta or target on meta, or its hidden size is not the width; "forward", the
model does not run at base on its example inputs). Analysis seconds are mupify's wall time.

    python benchmarks/hf_zoo.py                                   # the whole zoo (about an hour on 2 cores)
    python benchmarks/hf_zoo.py --only gpt2,llama,bert --out /tmp/zoo
    python benchmarks/hf_zoo.py --build-only                      # the factory alone, in this process

`--build-only` builds every type at base, delta and target on the meta device and runs one forward
on meta at base (under FakeTensorMode, so that transformers skips its value checks as it does when
traced); a forward that fails there is retried with real tensors at base: "meta-only".
Writes OUT/hf_zoo.json and OUT/hf_zoo.md (OUT/hf_zoo_build.* with --build-only).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import env_md, environment, mark_end, md_table  # noqa: E402

OUTCOMES = ("ok", "wrong", "error", "crash", "build", "meta-only")


# The per-model worker ------------------------------------------------------------------------


def check_model(model_type: str, grow: str = "head_dim") -> dict:
    """Compile one model type and check its plan; a record with `outcome` (see the module docstring)."""
    import muprewrite
    from muprewrite.errors import MuRewriteError

    record = {"model_type": model_type, "grow": grow}
    try:
        built = build_model_type(model_type, grow, forward="real")
    except Exception as exc:  # noqa: BLE001  the factory or the model's own code: not muprewrite's
        return {**record, "outcome": "build", "stage": exc.zoo_stage, "message": one_line(exc)}
    record.update(task=built["task"], widths=built["widths"])
    base, delta, target = built["widths"]
    start = time.perf_counter()
    try:
        result = muprewrite.mupify(built["factory"], base=base, delta=delta, target=target,
                                   example_inputs=built["inputs"], materialize=False)
    except MuRewriteError as exc:
        return {**record, "outcome": "error", "message": one_line(exc), "seconds": time.perf_counter() - start}
    except Exception as exc:  # noqa: BLE001
        return {**record, "outcome": "crash", "message": one_line(exc), "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    failures = plan_failures(result.plan.to_dict(), built["readouts"], built["attention"], grow)
    return {**record, "outcome": "wrong" if failures else "ok", "failures": failures, "seconds": seconds,
            "parameters": len(result.plan.parameters), "edits": len(result.plan.edits)}


def build_model_type(model_type: str, grow: str = "head_dim", forward: str = "real") -> dict:
    """The factory, its widths and inputs; the model built at base, delta and target on meta (hidden
    size == width), then one forward: on meta (`forward="meta"`) or with real tensors at base.
    An exception raised here carries `zoo_stage`: "factory", "meta build" or "forward"."""
    try:
        return _build_model_type(model_type, grow, forward)
    except Exception as exc:
        exc.zoo_stage = getattr(exc, "zoo_stage", "factory")
        raise


def _build_model_type(model_type: str, grow: str, forward: str) -> dict:
    import torch

    from muprewrite import hf
    from muprewrite.passes.capture import inputs_at, to_device

    factory = hf.factory(model_type, grow=grow)
    widths = hf.widths(factory)
    inputs = hf.example_inputs(factory)
    with staged("meta build"), torch.device("meta"):
        models = {width: factory(width) for width in widths}
        for width, model in models.items():
            hidden = hidden_size(model.config, factory.width_rule["hidden_field"])
            if hidden != factory.rule.hidden_at(width):  # a width multiplier is width / its unit
                raise AssertionError(f"hidden size {hidden} at width {width}")
    if forward == "meta":
        # Fake tensors on meta: transformers skips its value checks on them, as under tracing.
        from torch._subclasses.fake_tensor import FakeTensorMode

        with staged("forward"), FakeTensorMode(allow_non_fake_inputs=True):
            models[widths[0]].eval()(**to_device(inputs_at(inputs, widths[0]), "meta"))
        return {"factory": factory, "widths": widths, "inputs": inputs, "task": factory.task}
    with staged("forward"):
        observed, traced = {}, {}
        for width in widths[:2]:
            torch.manual_seed(0)
            model = factory(width).eval()
            with torch.no_grad():
                observed[width] = attention_modules(model, inputs_at(inputs, width))
                traced[width] = weight_products(model, inputs_at(inputs, width))
    attention = growing_attention(*observed.values())
    return {"factory": factory, "widths": widths, "inputs": inputs, "task": factory.task,
            "readouts": readouts(*traced.values()), "attention": attention}


class staged:
    """Marks an exception raised inside with the stage it happened in."""

    def __init__(self, stage: str):
        self.stage = stage

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback):
        if exc is not None and not hasattr(exc, "zoo_stage"):
            exc.zoo_stage = self.stage
        return False


def hidden_size(config, hidden_field: str):
    node = config
    for name in hidden_field.split("."):
        node = getattr(node, name)
    return max(node) if isinstance(node, (list, tuple)) else node


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
        output = model(**inputs)
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
    return {m: len(sizes) for m, sizes in at_base.items() if at_delta.get(m) and sizes != at_delta[m]}


def attention_modules(model, inputs) -> dict:
    """{module path: [d_head of each attention call in one forward]}: the innermost module running
    each scaled_dot_product_attention (d_head: the query's last dim) or multi-head attention function
    (embed_dim / num_heads), or each softmax over attention scores (4-D, or 3-D square; d_head: the
    last dim of the latest product of two activations before it)."""
    import torch
    from torch.overrides import TorchFunctionMode

    names = {id(m): n for n, m in model.named_modules()}
    stack, calls, last_product = [], collections.defaultdict(list), [None]
    softmaxes = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax}
    products = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm,
                torch.baddbmm, torch.Tensor.baddbmm, torch.einsum}

    class Calls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            flat = [x for a in (*args, *kwargs.values()) for x in (a if isinstance(a, (list, tuple)) else [a])]
            tensors = [a for a in flat if isinstance(a, torch.Tensor)]  # einsum(eq, [q, k]) too
            # under no_grad only a parameter (or a view of one) requires grad: a projection, not q·k
            if func in products and len(tensors) >= 2 and not any(t.requires_grad for t in tensors):
                last_product[0] = tuple(t.shape[-1] for t in tensors)
            if stack and is_attention(func, args, softmaxes):
                calls[stack[-1]].append(head_size(func, args) or last_product[0])
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
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return dict(calls)


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


def is_attention(func, args, softmaxes) -> bool:
    import torch

    if func is torch.nn.functional.scaled_dot_product_attention or func in multi_head_attentions():
        return True
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


def check_build(model_type: str, grow: str = "head_dim") -> dict:
    """Build-only: the factory at base, delta and target on meta, one forward on meta (retried with
    real tensors at base when meta fails)."""
    record = {"model_type": model_type, "grow": grow}
    start = time.perf_counter()
    try:
        built = build_model_type(model_type, grow, forward="meta")
        record.update(outcome="ok", task=built["task"], widths=built["widths"])
    except Exception as meta_exc:  # noqa: BLE001
        record.update(outcome="build", stage=meta_exc.zoo_stage, message=one_line(meta_exc))
        if meta_exc.zoo_stage == "forward":
            try:
                built = build_model_type(model_type, grow, forward="real")
                record.update(outcome="meta-only", task=built["task"], widths=built["widths"],
                              message=f"on meta: {one_line(meta_exc)}")
            except Exception as exc:  # noqa: BLE001
                record["message"] = one_line(exc)
    record["seconds"] = time.perf_counter() - start
    return record


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# Running the zoo -----------------------------------------------------------------------------


def run_in_subprocess(model_type: str, args) -> dict:
    """One model in a fresh interpreter (a crash or a hang takes only that model down)."""
    command = [sys.executable, __file__, "--worker", model_type, "--grow", args.grow]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model_type": model_type, "outcome": "crash", "message": f"Timeout: more than {args.timeout:g} s",
                "seconds": time.perf_counter() - start}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model_type": model_type, "outcome": "crash",
                "message": f"worker exited with status {proc.returncode}: {tail}"[:300]}


def run_in_process(model_type: str, args) -> dict:
    """Build-only: one model in this process, with a SIGALRM timeout."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"more than {args.timeout:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(args.timeout)))
    try:
        return check_build(model_type, args.grow)
    except TimeoutError as exc:
        return {"model_type": model_type, "outcome": "build", "message": one_line(exc)}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_zoo(types: list, args) -> list:
    """Every type's record; each is appended to OUT/NAME.partial.jsonl as it comes, so a long run
    can be read while it goes and resumed (--resume) after an interruption."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    journal = Path(args.out) / f"{'hf_zoo_build' if args.build_only else 'hf_zoo'}.partial.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)
    results = [json.loads(line) for line in journal.read_text().splitlines()] if args.resume and journal.exists() else []
    if not args.resume:
        journal.write_text("")
    finished = {r["model_type"] for r in results}
    types = [t for t in types if t not in finished]
    counts = collections.Counter(r["outcome"] for r in results)
    run_one = run_in_process if args.build_only else run_in_subprocess
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[counts]}")) as progress:
        task = progress.add_task("hf zoo", total=len(types), counts="")

        def done(record):
            results.append(record)
            with journal.open("a") as file:
                file.write(json.dumps(record) + "\n")
            counts[record["outcome"]] += 1
            progress.update(task, advance=1, description=f"{record['model_type']:<28}",
                            counts=" ".join(f"{k} {counts[k]}" for k in OUTCOMES if counts[k]))

        if args.build_only or args.jobs == 1:
            for model_type in types:
                done(run_one(model_type, args))
        else:
            with ThreadPoolExecutor(args.jobs) as pool:
                for record in pool.map(lambda t: run_one(t, args), types):
                    done(record)
    return sorted(results, key=lambda r: r["model_type"])


def failure_causes(results: list) -> collections.Counter:
    """How often each cause of failure occurs: a failed check's name, or an exception's type and message
    with numbers and quoted names blanked."""
    causes = collections.Counter()
    for record in results:
        if record["outcome"] == "wrong":
            causes.update(f"wrong: {f.split(':')[0]}" for f in record.get("failures", []))
        elif record["outcome"] not in ("ok",):
            message = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", record.get("message", ""))
            stage = f" ({record['stage']})" if "stage" in record else ""
            causes[f"{record['outcome']}{stage}: {re.sub(r'[0-9]+', 'N', message)[:110]}"] += 1
    return causes


def markdown(results: list, env: dict, args) -> str:
    counts = collections.Counter(r["outcome"] for r in results)
    title = "hf_zoo (build only)" if args.build_only else "hf_zoo"
    rows = [[r["model_type"], r.get("task", ""), r["outcome"] + (f" ({r['stage']})" if "stage" in r else ""),
             f"{r['seconds']:.1f}" if "seconds" in r else "", "; ".join(r.get("failures", [])) or r.get("message", "")]
            for r in results]
    return "\n\n".join([
        f"# {title}: every Hugging Face model type through muprewrite",
        f"{len(results)} model types, grow={args.grow}; see the docstring of `benchmarks/hf_zoo.py` for the checks.",
        env_md(env),
        "## Outcomes",
        md_table(["outcome", "model types"], [[k, counts[k]] for k in OUTCOMES if counts[k]]),
        "## Causes of failure",
        md_table(["cause", "model types"], failure_causes(results).most_common()),
        "## Per model",
        md_table(["model type", "task", "outcome", "seconds", "details"], rows),
    ])


def write(results: list, env: dict, args) -> tuple:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "hf_zoo_build" if args.build_only else "hf_zoo"
    md_path, json_path = out / f"{name}.md", out / f"{name}.json"
    md_path.write_text(markdown(results, env, args).rstrip() + "\n")
    json_path.write_text(json.dumps({"env": env, "grow": args.grow, "results": results}, indent=2) + "\n")
    return md_path, json_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated model types (default: every type of the four mappings)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model (default 120)")
    parser.add_argument("--jobs", type=int, default=1, help="models compiled at once (default 1)")
    parser.add_argument("--grow", choices=["head_dim", "heads"], default="head_dim")
    parser.add_argument("--build-only", action="store_true", help="only build every model (on meta), in this process")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for hf_zoo.json and hf_zoo.md")
    parser.add_argument("--resume", action="store_true", help="keep the records of OUT's partial journal, run the rest")
    parser.add_argument("--worker", metavar="TYPE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(check_model(args.worker, args.grow)))
        return
    from muprewrite import hf

    types = args.only.split(",") if args.only else sorted(hf.model_types())
    env = environment()
    results = run_zoo(types, args)
    mark_end(env)
    for path in write(results, env, args):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

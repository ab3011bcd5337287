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
d_head grows, none when heads grow, and none for cosine attention (q and k observed to have unit
length along d_head, as Swin v2's: its logits are bounded at any width).

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
from _zoo_checks import (  # noqa: E402,F401  the shared checks (moved from here)
    CONTRACTIONS, attention_failures, attention_modules, growing_attention, head_size, hidden_rule_holds,
    is_attention, multi_head_attentions, one_line, plan_failures, readout_failures, readouts, weight_products,
    _einsum_fan_in, _fan_in, _tensors,
)

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
